/*
 * lactor.c -- luaopen_actor: loads the runtime into any Lua 5.4 state.
 *
 * Design notes.
 * - The state that requires "actor" becomes the scheduler state; the thread
 *   that drives its loop is the scheduler thread. The runtime lives in a
 *   full userdata anchored in the registry; its __gc (when the state
 *   closes) shuts every pool down, joins every thread and frees everything.
 * - This file holds the small C core (submit, step, timers, pools). The
 *   public API -- actor.*, msys, util.async -- is Lua code compiled into the
 *   library (bindings/lua/), built on this core, so the façades are thin
 *   and there is one implementation.
 * - The runtime reaches these functions as an upvalue, never a global.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <msgpack.h>

#include "rt.h"

#define RT_KEY "actor.runtime"

struct actor_embedded_lua {
  const char *name;
  const char *src;
  size_t len;
};
extern const struct actor_embedded_lua actor__embedded_lua[];

/* ------------------------------------------------- embedded Lua modules */

int actor__load_embedded(lua_State *L, const char *name) {
  for (const struct actor_embedded_lua *m = actor__embedded_lua; m->name; m++) {
    if (strcmp(m->name, name) == 0) {
      char chunk[128];
      snprintf(chunk, sizeof chunk, "@[actor]/%s.lua", name);
      return luaL_loadbufferx(L, m->src, m->len, chunk, "t");
    }
  }
  lua_pushfstring(L, "no embedded module '%s'", name);
  return LUA_ERRRUN;
}

static int embedded_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *real = name;
  if (strcmp(name, "actor.async") == 0) real = "util.async";
  for (const struct actor_embedded_lua *m = actor__embedded_lua; m->name; m++) {
    if (strcmp(m->name, real) == 0) {
      if (actor__load_embedded(L, real) != LUA_OK) return lua_error(L);
      lua_pushstring(L, ":actor:");
      return 2;
    }
  }
  lua_pushfstring(L, "no embedded module '%s' in actor", name);
  return 1;
}

/* Adds a searcher (after package.preload) that serves the modules compiled
 * into the library, e.g. util.async. */
void actor__install_searcher(lua_State *L) {
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return; }
  lua_getfield(L, -1, "searchers");
  if (lua_istable(L, -1)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = n; i >= 2; i--) {
      lua_rawgeti(L, -1, i);
      if (lua_tocfunction(L, -1) == embedded_searcher) { lua_pop(L, 3); return; }
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, embedded_searcher);
    lua_rawseti(L, -2, 2);
  }
  lua_pop(L, 2);
}

/* issue 5 (bindings/lasync.c): util.async's C hot path, when linked. */
int luaopen_actor_asynccore(lua_State *L) __attribute__((weak));

/* package.preload entries for the optional C modules linked in. */
void actor__preload_optional(lua_State *L) {
  if (luaopen_actor_asynccore) { /* issue 5: actor.asynccore */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_actor_asynccore);
    lua_setfield(L, -2, "actor.asynccore");
    lua_pop(L, 1);
  } /* end issue 5 */
  if (!luaopen_actor_net) return;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_actor_net);
  lua_setfield(L, -2, "actor.net");
  lua_pop(L, 1);
}

/* ------------------------------------------------------------ helpers */

static actor_rt *get_rt(lua_State *L) {
  actor_rt **u = lua_touserdata(L, lua_upvalueindex(1));
  if (!u || !*u || (*u)->closed) luaL_error(L, "the actor runtime is closed");
  return *u;
}

static pool *check_pool(lua_State *L, actor_rt *rt, int arg) {
  pool *p = NULL;
  if (lua_type(L, arg) == LUA_TSTRING) p = actor__pool_find(rt, lua_tostring(L, arg), 0);
  else if (lua_isinteger(L, arg)) p = actor__pool_find(rt, NULL, (int)lua_tointeger(L, arg));
  else luaL_argerror(L, arg, lua_pushfstring(L, "pool name or id expected, got %s", luaL_typename(L, arg)));
  if (!p) {
    if (lua_type(L, arg) == LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "no such pool: '%s'", lua_tostring(L, arg)));
    else
      luaL_argerror(L, arg, lua_pushfstring(L, "no such pool: %I", lua_tointeger(L, arg)));
  }
  return p;
}

/* Whether the closure (or a function nested in it) names _TLS: the
 * constant "_TLS" appears in its bytecode. The bytecode comes from the
 * codec's dump cache, so the encode that follows reuses the dump; the
 * answer is kept per closure (weak keys), so sending the same closure again
 * costs one table lookup. */
static int closure_uses_tls(lua_State *L, int fn) {
  fn = lua_absindex(L, fn);
  if (lua_iscfunction(L, fn)) return 0;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "actor.tlsclosures") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "actor.tlsclosures");
  }
  lua_pushvalue(L, fn);
  if (lua_rawget(L, -2) != LUA_TNIL) {
    int r = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return r;
  }
  lua_pop(L, 1);
  codec_function_bytecode(L, fn);
  size_t n = 0;
  const char *bc = lua_tolstring(L, -1, &n);
  int r = bc && n >= 4 && memmem(bc, n, "_TLS", 4) != NULL;
  lua_pop(L, 1);
  lua_pushvalue(L, fn);
  lua_pushboolean(L, r);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return r;
}

/* ----------------------------------------------------------- core API */

/* Encodes and queues one job (see actor_submit_req in rt.h). Returns the
 * job, or NULL with an error message pushed when a value cannot be sent or
 * the pool is shutting down. Raises only when out of memory. */
job *actor__lua_submit(lua_State *L, actor_rt *rt, pool *p, const actor_submit_req *q) {
  if (rt->shutting_down || p->closing) {
    lua_pushfstring(L, "pool %s is shutting down", p->name);
    return NULL;
  }
  uint32_t flags = 0;
  int send_tls = 0;
  if (q->tls && lua_istable(L, q->tls) &&
      (q->tls_mode == 2 || (q->tls_mode == 1 && closure_uses_tls(L, q->fn))))
    send_tls = 1;
  if (send_tls) flags |= JOB_F_TLS;
  if (q->wcomp) flags |= JOB_F_WCOMPLETE;
  if (q->kind == JOB_CAST) flags |= JOB_F_NOREPLY;
  codec_buf *bp = &rt->encbuf; /* reused: no allocation per job once warm */
  bp->len = 0;
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, bp, NULL);
  int err = 0;
  if (send_tls) err = codec_enc_value(e, L, q->tls, "_TLS");
  if (!err && q->wcomp) err = codec_enc_value(e, L, q->wcomp, "completion");
  if (!err) err = codec_enc_value(e, L, q->fn, q->where);
  static const char *const argl[] = {"args[1]", "args[2]", "args[3]", "args[4]"};
  for (int i = 0; i < q->nargs && !err; i++) {
    char lbl[48];
    const char *l = lbl;
    if (i < 4) l = argl[i];
    else snprintf(lbl, sizeof lbl, "args[%d]", i + 1);
    err = codec_enc_value(e, L, q->arg0 + i, l);
  }
  if (err) {
    if (bp->cap > (1u << 20)) codec_buf_fini(bp); /* do not keep a huge buffer */
    return NULL; /* the codec pushed its message */
  }
  job *j = actor__job_new(rt, p);
  if (!j || actor__job_set_payload(j, bp->data, bp->len) != 0) {
    if (j) actor__job_free(rt, j);
    luaL_error(L, "out of memory");
    return NULL;
  }
  if (bp->cap > (1u << 20)) codec_buf_fini(bp);
  j->kind = q->kind;
  j->flags = flags;
  double timeout = q->timeout;
  if (timeout <= 0) timeout = p->timeout;
  j->timeout_ms = timeout > 0 ? (uint32_t)(timeout * 1000 + 0.5) : 0;
  if (j->timeout_ms == 0 && timeout > 0) j->timeout_ms = 1;
  if (q->kind == JOB_CALL && q->cb) {
    lua_pushvalue(L, q->cb);
    j->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (send_tls) {
    lua_pushvalue(L, q->tls);
    j->tlsref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (actor__submit(rt, j) != 0) {
    actor__job_free(rt, j);
    lua_pushfstring(L, "pool %s is shutting down", p->name);
    return NULL;
  }
  return j;
}

/* submit(pool, kind, tls_mode, timeout_s, cb, tls, wcomp, where, fn, ...)
 *   kind: 0 call (cb gets ok, ...), 1 cast (no reply)
 *   tls_mode: 0 never, 1 when the closure names _TLS, 2 always
 * Returns the job id, or false, message when a value cannot be sent.
 * Raises only for misuse. */
static int core_submit(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  actor_submit_req q;
  q.kind = (int)luaL_checkinteger(L, 2);
  q.tls_mode = (int)luaL_checkinteger(L, 3);
  q.timeout = luaL_optnumber(L, 4, 0);
  q.where = luaL_optstring(L, 8, "closure");
  luaL_checktype(L, 9, LUA_TFUNCTION);
  q.cb = lua_isnoneornil(L, 5) ? 0 : 5;
  q.tls = lua_istable(L, 6) ? 6 : 0;
  q.wcomp = lua_isnoneornil(L, 7) ? 0 : 7;
  q.fn = 9;
  q.arg0 = 10;
  q.nargs = lua_gettop(L) - 9;
  job *j = actor__lua_submit(L, rt, p, &q);
  if (!j) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)j->id);
  return 1;
}

/* The loop runs on the state's main thread: callbacks resume runners from
 * there. Raises when called from inside a coroutine. */
static void check_main(lua_State *L, const char *what) {
  if (!lua_pushthread(L)) luaL_error(L, "%s must be called from the main chunk, not inside a coroutine", what);
  lua_pop(L, 1);
}

static int core_step(lua_State *L) {
  actor_rt *rt = get_rt(L);
  check_main(L, "actor.step/actor.loop");
  double t = luaL_optnumber(L, 1, -1);
  lua_pushinteger(L, actor__step(rt, t));
  return 1;
}

static int core_pending(lua_State *L) {
  lua_pushinteger(L, actor__pending(get_rt(L)));
  return 1;
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, actor__now());
  return 1;
}

/* Seconds until the loop has timer work (0: now), or nil with no timer. */
static int core_timeout(lua_State *L) {
  actor_rt *rt = get_rt(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ticks_ref);
  int ticks = lua_rawlen(L, -1) > 0;
  lua_pop(L, 1);
  if (ticks) { lua_pushnumber(L, 0); return 1; }
  if (rt->nheap == 0) return 0;
  double d = rt->heap[0]->when - actor__now();
  lua_pushnumber(L, d > 0 ? d : 0);
  return 1;
}

static int core_fd(lua_State *L) {
  lua_pushinteger(L, actor__poll_fd(get_rt(L)));
  return 1;
}

static int core_timer(lua_State *L) {
  actor_rt *rt = get_rt(L);
  double after = luaL_checknumber(L, 1);
  double period = luaL_optnumber(L, 2, 0);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  actor__timer_new(rt, L, after, period, 3);
  return 1;
}

static int core_tick(lua_State *L) {
  actor_rt *rt = get_rt(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ticks_ref);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  if (!rt->in_step) actor__wake(rt); /* a polling host learns there is work */
  return 0;
}

static int core_pool_find(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = NULL;
  if (lua_type(L, 1) == LUA_TSTRING) p = actor__pool_find(rt, lua_tostring(L, 1), 0);
  else if (lua_isinteger(L, 1)) p = actor__pool_find(rt, NULL, (int)lua_tointeger(L, 1));
  if (!p) return 0;
  lua_pushinteger(L, p->id);
  lua_pushstring(L, p->name);
  return 2;
}

static void free_strv(char **v, int n) {
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

/* Applies the options table at idx to the pool. Raises on bad values. */
static void pool_apply_opts(lua_State *L, pool *p, int idx) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  if (lua_getfield(L, idx, "backlog") != LUA_TNIL) {
    lua_Integer v = lua_tointeger(L, -1);
    if (!lua_isinteger(L, -1) || v < 0) luaL_error(L, "pool %s: option 'backlog' must be a non-negative integer", p->name);
    p->backlog = (int)v;
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
    if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < 0) luaL_error(L, "pool %s: option 'timeout' must be a non-negative number", p->name);
    p->timeout = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "memory_limit") != LUA_TNIL) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) luaL_error(L, "pool %s: option 'memory_limit' must be a byte count", p->name);
    p->memory_limit = (size_t)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "function_cache") != LUA_TNIL) {
    if (lua_isboolean(L, -1)) p->fn_cache = lua_toboolean(L, -1) ? 256 : 0;
    else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0 && lua_tointeger(L, -1) <= 1000000)
      p->fn_cache = (int)lua_tointeger(L, -1);
    else luaL_error(L, "pool %s: option 'function_cache' must be a boolean or an entry count", p->name);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "init") != LUA_TNIL) {
    if (!lua_isstring(L, -1)) luaL_error(L, "pool %s: option 'init' must be a module name or file", p->name);
    free(p->init);
    p->init = strdup(lua_tostring(L, -1));
  }
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "preload") != LUA_TNIL) {
    if (!lua_istable(L, -1)) luaL_error(L, "pool %s: option 'preload' must be a list of module names", p->name);
    int n = (int)lua_rawlen(L, -1);
    char **v = calloc((size_t)n + 1, sizeof *v);
    for (int i = 0; v && i < n; i++) {
      lua_rawgeti(L, -1, i + 1);
      const char *s = lua_tostring(L, -1);
      v[i] = s ? strdup(s) : NULL;
      lua_pop(L, 1);
      if (!s) { free_strv(v, i); luaL_error(L, "pool %s: preload[%d] must be a string", p->name, i + 1); }
    }
    free_strv(p->preload, p->npreload);
    p->preload = v;
    p->npreload = v ? n : 0;
  }
  lua_pop(L, 1);
}

/* pool_create(name, threads, opts) -> id; reconfigures an existing pool. */
static int core_pool_create(lua_State *L) {
  actor_rt *rt = get_rt(L);
  const char *name = luaL_checkstring(L, 1);
  if (!*name || strlen(name) >= 64) luaL_argerror(L, 1, "pool name must have 1 to 63 bytes");
  lua_Integer threads = luaL_optinteger(L, 2, 0);
  if (threads < 0 || threads > 1024) luaL_argerror(L, 2, "threads must be between 1 and 1024");
  pool *p = actor__pool_find(rt, name, 0);
  if (!p) {
    p = actor__pool_create(rt, name, threads ? (int)threads : 1);
    if (!p) return luaL_error(L, "out of memory");
  }
  pool_apply_opts(L, p, 3);
  if (threads > 0 && threads != p->target_threads) actor__pool_resize(p, (int)threads);
  lua_pushinteger(L, p->id);
  return 1;
}

static int core_pool_resize(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  if (n < 1 || n > 1024) luaL_argerror(L, 2, "threads must be between 1 and 1024");
  int rv = actor__pool_resize(p, (int)n);
  if (rv != 0) return luaL_error(L, "cannot resize pool %s: %s", p->name, nng_strerror(rv));
  return 0;
}

static int core_pool_stat(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  actor__pool_stat(rt, p, L);
  return 1;
}

static int core_pool_list(lua_State *L) {
  actor_rt *rt = get_rt(L);
  lua_createtable(L, rt->npools, 0);
  for (int i = 0; i < rt->npools; i++) {
    lua_pushstring(L, rt->pools[i]->name);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* pool_threads(pool) -> list of {index, busy, jobs, mem, current, running_s} */
static int core_pool_threads(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  double now = actor__now();
  lua_createtable(L, p->nworkers, 0);
  for (int i = 0; i < p->nworkers; i++) {
    worker *w = p->workers[i];
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, i + 1); lua_setfield(L, -2, "index");
    int busy = atomic_load(&w->busy);
    lua_pushstring(L, w->retiring ? "retiring" : busy ? "busy" : "idle"); lua_setfield(L, -2, "state");
    lua_pushinteger(L, (lua_Integer)atomic_load(&w->jobs_done)); lua_setfield(L, -2, "jobs");
    lua_pushinteger(L, (lua_Integer)atomic_load(&w->mem_used)); lua_setfield(L, -2, "mem");
    lua_pushinteger(L, w->inflight); lua_setfield(L, -2, "inflight");
    if (busy) {
      char buf[160];
      actor__worker_current(w, buf, sizeof buf);
      lua_pushstring(L, buf); lua_setfield(L, -2, "current");
      lua_pushnumber(L, now - (double)atomic_load(&w->job_started_us) * 1e-6); lua_setfield(L, -2, "running_s");
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int core_pool_timeout(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  lua_pushnumber(L, p->timeout);
  return 1;
}

static int core_room(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  lua_pushboolean(L, p->backlog <= 0 || p->queued < p->backlog);
  return 1;
}

static int core_wait_room(lua_State *L) {
  actor_rt *rt = get_rt(L);
  pool *p = check_pool(L, rt, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (p->room_waiters == LUA_NOREF) {
    lua_newtable(L);
    p->room_waiters = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->room_waiters);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

static int core_abandon(lua_State *L) {
  actor_rt *rt = get_rt(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  lua_pushboolean(L, actor__job_abandon(rt, (uint64_t)id, msg, lua_toboolean(L, 3)));
  return 1;
}

static int core_shutdown(lua_State *L) {
  actor_rt *rt = get_rt(L);
  if (lua_isnumber(L, 1)) rt->grace = lua_tonumber(L, 1);
  /* Shutdown resumes the callers it answers. It must do so from the thread
   * that is running now (a runner, often), not from the main thread's
   * stack: the runtime works on L for the duration. */
  lua_State *saved = rt->L;
  rt->L = L;
  actor__shutdown(rt);
  rt->L = saved;
  return 0;
}

static int core_set_grace(lua_State *L) {
  actor_rt *rt = get_rt(L);
  double g = luaL_checknumber(L, 1);
  luaL_argcheck(L, g >= 0, 1, "grace must be >= 0");
  rt->grace = g;
  return 0;
}

static int core_keepalive(lua_State *L) {
  actor_rt *rt = get_rt(L);
  rt->pending_extra += (int)luaL_checkinteger(L, 1);
  return 0;
}

static int core_thread_id(lua_State *L) {
  return actor__push_thread_id(L);
}

static int core_versions(lua_State *L) {
  lua_createtable(L, 0, 4);
#ifdef ACTOR_VERSION
  lua_pushstring(L, ACTOR_VERSION);
#else
  lua_pushstring(L, "0");
#endif
  lua_setfield(L, -2, "actor");
  lua_pushstring(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua");
  lua_pushfstring(L, "nng %s", nng_version());
  lua_setfield(L, -2, "nng");
  lua_pushfstring(L, "msgpack-c %s", msgpack_version());
  lua_setfield(L, -2, "msgpack");
  return 1;
}

static int rt_gc(lua_State *L) {
  actor_rt **u = lua_touserdata(L, 1);
  if (u && *u) {
    actor__rt_close(*u);
    *u = NULL;
  }
  return 0;
}

/* Wraps os.exit so that exiting stops the pools first: no thread is left
 * running while the process tears down. */
static int os_exit_wrapper(lua_State *L) {
  actor_rt **u = lua_touserdata(L, lua_upvalueindex(1));
  if (u && *u && !(*u)->closed) {
    (*u)->grace = 0.5;
    (*u)->L = L; /* answer callers from the running thread (see core_shutdown) */
    actor__rt_close(*u);
    *u = NULL;
  }
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

int luaopen_actor(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, RT_KEY);
  if (!lua_isnil(L, -1)) {
    /* already loaded in this state: return the same module */
    lua_getfield(L, LUA_REGISTRYINDEX, "actor.module");
    return 1;
  }
  lua_pop(L, 1);
  int err = 0;
  actor_rt **u = lua_newuserdatauv(L, sizeof *u, 0);
  *u = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, rt_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  *u = actor__rt_open(L, &err);
  if (!*u) return luaL_error(L, "cannot open the actor runtime: %s", strerror(err));
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, RT_KEY);
  int rtidx = lua_gettop(L);

  luaL_requiref(L, "actor.codec", luaopen_actor_codec, 0);
  lua_pop(L, 1);
  actor__install_searcher(L);
  actor__preload_optional(L);

  /* default pools: CPU with one thread per core, IO with 8 */
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  actor__pool_create(*u, "CPU", ncpu > 0 ? (int)ncpu : 1);
  actor__pool_create(*u, "IO", 8);

  static const luaL_Reg core[] = {
      {"submit", core_submit}, {"hot_setup", actor__hot_setup}, {"step", core_step}, {"pending", core_pending},
      {"now", core_now}, {"fd", core_fd}, {"timeout", core_timeout}, {"timer", core_timer}, {"tick", core_tick},
      {"pool_find", core_pool_find}, {"pool_create", core_pool_create},
      {"pool_resize", core_pool_resize}, {"pool_stat", core_pool_stat},
      {"pool_list", core_pool_list}, {"pool_threads", core_pool_threads},
      {"room", core_room}, {"pool_timeout", core_pool_timeout}, {"wait_room", core_wait_room}, {"abandon", core_abandon},
      {"shutdown", core_shutdown}, {"keepalive", core_keepalive}, {"set_grace", core_set_grace},
      {"thread_id", core_thread_id}, {"versions", core_versions}, {NULL, NULL}};
  lua_newtable(L);
  lua_pushvalue(L, rtidx);
  luaL_setfuncs(L, core, 1);

  /* os.exit stops the pools first */
  lua_getglobal(L, "os");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "exit");
    if (lua_isfunction(L, -1)) {
      lua_pushvalue(L, rtidx);
      lua_insert(L, -2);
      lua_pushcclosure(L, os_exit_wrapper, 2);
      lua_setfield(L, -2, "exit");
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  if (actor__load_embedded(L, "actor.init") != LUA_OK) return lua_error(L);
  lua_insert(L, -2);
  lua_call(L, 1, 1); /* actor.init(core) -> module */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "actor.module");
  codec_index_cfunctions(L);
  if (actor__control_open) actor__control_open(*u); /* failure only disables inspection */
  return 1;
}
