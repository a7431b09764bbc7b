/*
 * lhot.c -- the hot paths of msys.runInPool, actor.call and actor.cast, and
 * the delivery of their answers, in C.
 *
 * Why: a job with a scheduler completion cost about 20k instructions on the
 * scheduler thread when the façade (context lookup, pool lookup, a closure
 * per job) and the completion's runner (util.async's run(): resume, _TLS
 * swap, state bookkeeping) were Lua; luv pays one Lua callback per job.
 * docs/performance.md has the measurements.
 *
 * What is here:
 *
 *  - Fronts. actor__hot_setup(t, slow_runInPool, slow_call, slow_cast)
 *    returns three C closures. Each handles the plain cases itself and
 *    hands everything else (options tables, bounded pools, pools with a
 *    timeout, the main chunk, misuse and its error messages) to the Lua
 *    function it was given, so the rules live in one place
 *    (bindings/lua/actor/init.lua).
 *
 *  - A sync call from a runner (JOB_HOT_RESUME) yields "wait" from C, as a
 *    util.async waiter does; the job keeps the runner's thread, and
 *    actor__hot_deliver resumes it with (ok, results...), which become the
 *    call's results. The rest of the runner's life (ready again, errors)
 *    goes through util.async's own after_ready / after_error.
 *
 *  - A scheduler completion (JOB_HOT_SCHED) runs in a pooled runner: a
 *    util.async runner whose thread's body is the C function pooled_body,
 *    resumed with (completion, ok, results...) straight from
 *    actor__hot_deliver. When the completion returns, the body yields
 *    "ready" and the runner goes back to the free list. When it parks
 *    (yields "wait"), util.async's bookkeeping for a waiting runner is
 *    applied (parked()) and the runner leaves the pool for good; its
 *    waiter resumes it as any other. When it raises, failed() does what
 *    util.async's run() does with an error.
 *
 * Threading: scheduler state only. The configuration (util.async's tables
 * and helpers) is an upvalue of every front and is also listed in the
 * registry (rt->hot_ref) so that a job can name it by a small index: a
 * state that loads the modules twice (busted's insulation) keeps each
 * runner with its own util.async. Nothing static is written.
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "rt.h"

/* A runner keeps its session table in its own slot 1 (util.async's
 * TLS_SLOT). */
#define TLS_SLOT 1

enum {
  H_RUNNER_OF = 1, /* weak table: thread -> runner */
  H_G,             /* the globals table that holds _TLS */
  H_GET_TLS,       /* get_tls(runner) -> session table (creates it) */
  H_AFTER_READY,   /* after_ready(runner): a parked item finished */
  H_AFTER_ERROR,   /* after_error(runner, thread, err): a parked item raised */
  H_NEW_POOLED,    /* new_pooled(body) -> runner whose thread runs body */
  H_PARKED,        /* parked(runner): a pooled runner's item yielded "wait" */
  H_FAILED,        /* failed(runner, thread, err): a pooled runner's item raised */
  H_GIVEN = H_FAILED,
  H_FREE,          /* free list of pooled runners (a sequence) */
  H_BODY,          /* pooled_body, as a closure over "ready" */
  H_S_TLS,         /* "_TLS" */
  H_S_WAIT,        /* "wait" */
  H_S_STATE,       /* "state" */
  H_S_RUNNING,     /* "running" */
  H_S_READY,       /* "ready" */
  H_S_THREAD,      /* "thread" */
  H_ID,            /* this configuration's index in rt->hot_ref's table */
  H_LAST = H_ID
};

#define MAX_FREE 256 /* pooled runners kept for reuse */
#define MAX_CFG 64   /* configurations listed at once (reused cyclically) */

/* ------------------------------------------------------ pooled runners */

static int pooled_body(lua_State *co);

static int pooled_next_k(lua_State *co, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return pooled_body(co); /* resumed with (completion, ok, results...) */
}

static int pooled_done_k(lua_State *co, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_settop(co, 0);
  lua_pushvalue(co, lua_upvalueindex(1)); /* "ready" */
  return lua_yieldk(co, 1, 0, pooled_next_k);
}

/* The body of a pooled runner's thread: calls f(...) for every
 * (f, ...) it is resumed with, yielding "ready" in between, as
 * util.async's runner body yields between items. */
static int pooled_body(lua_State *co) {
  lua_callk(co, lua_gettop(co) - 1, 0, 0, pooled_done_k);
  return pooled_done_k(co, LUA_OK, 0);
}

/* Whether the first of the nres values co yielded is the string s. */
static int yielded(lua_State *co, int nres, const char *s, size_t n) {
  if (nres < 1 || lua_type(co, -nres) != LUA_TSTRING) return 0;
  size_t len;
  const char *v = lua_tolstring(co, -nres, &len);
  return len == n && memcmp(v, s, n) == 0;
}

/* Swaps G._TLS for the value on top (popped); pushes what is needed to put
 * the previous value back with restore_tls: G, previous, raw flag. A raw
 * access is what util.async's G._TLS does while the key is present (no
 * metamethod is consulted then); otherwise go through the metamethods. */
static int swap_tls(lua_State *L, int cfg, int *raw) {
  int tls = lua_gettop(L);
  lua_rawgeti(L, cfg, H_G);     /* tls G */
  lua_rawgeti(L, cfg, H_S_TLS); /* tls G "_TLS" */
  *raw = lua_rawget(L, -2) != LUA_TNIL;
  if (!*raw) {
    lua_pop(L, 1);
    lua_rawgeti(L, cfg, H_S_TLS);
    lua_gettable(L, -2);
  } /* tls G prev */
  lua_rawgeti(L, cfg, H_S_TLS);
  lua_pushvalue(L, tls);
  if (*raw) lua_rawset(L, -4); else lua_settable(L, -4);
  lua_remove(L, tls); /* G prev */
  return lua_gettop(L) - 1;
}

static void restore_tls(lua_State *L, int cfg, int at, int raw) {
  lua_rawgeti(L, cfg, H_S_TLS);
  lua_pushvalue(L, at + 1);
  if (raw) lua_rawset(L, at); else lua_settable(L, at);
}

static void set_state(lua_State *L, int cfg, int r, int which) {
  lua_rawgeti(L, cfg, H_S_STATE);
  lua_rawgeti(L, cfg, which);
  lua_rawset(L, r);
}

/* Pushes the session table of the runner at r: its slot TLS_SLOT, or what
 * util.async's get_tls makes. Returns 0, or -1 (reported) on error. */
static int push_session(lua_State *L, int cfg, int r) {
  if (lua_rawgeti(L, r, TLS_SLOT) != LUA_TNIL) return 0;
  lua_pop(L, 1);
  lua_rawgeti(L, cfg, H_GET_TLS);
  lua_pushvalue(L, r);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) return 0;
  fprintf(stderr, "actor: session table for a runner: %s\n", lua_tostring(L, -1));
  return -1;
}

/* Resumes co with copies of the n values from index `first`; with
 * `session`, G._TLS is the session table on top of L (popped) while co
 * runs. Returns lua_resume's status, or -1 (reported) when co has no room
 * for the values. */
static int resume_with(lua_State *L, int cfg, lua_State *co, int session, int first, int n, int *nres) {
  int raw = 0, at = 0;
  if (session) at = swap_tls(L, cfg, &raw);
  int st = -1;
  if (lua_checkstack(co, n + 1)) {
    for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
    lua_xmove(L, co, n);
    st = lua_resume(co, L, n, nres);
  } else {
    fprintf(stderr, "actor: no stack to resume a runner with %d values; dropped\n", n);
  }
  if (session) restore_tls(L, cfg, at, raw);
  return st;
}

/* Hands the error on top of co to util.async's helper `which`, called as
 * which(runner, thread, err). */
static void hand_error(actor_rt *rt, int cfg, int which, int r, int thread, lua_State *co) {
  lua_State *L = rt->L;
  lua_rawgeti(L, cfg, which);
  lua_pushvalue(L, r);
  lua_pushvalue(L, thread);
  lua_xmove(co, L, 1);
  actor__call_protected(rt, 3, "runner");
}

/* Runs the completion at `base` with the nargs values above it in a pooled
 * runner. */
static void run_completion(actor_rt *rt, job *j, int cfg, int base, int nargs) {
  lua_State *L = rt->L;
  lua_rawgeti(L, cfg, H_FREE);
  int freel = lua_gettop(L);
  lua_Integer nf = (lua_Integer)lua_rawlen(L, freel);
  if (nf > 0) {
    lua_rawgeti(L, freel, nf);
    lua_pushnil(L);
    lua_rawseti(L, freel, nf);
  } else {
    lua_rawgeti(L, cfg, H_NEW_POOLED);
    lua_rawgeti(L, cfg, H_BODY);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
      fprintf(stderr, "actor: cannot make a runner for a completion: %s\n",
              lua_isstring(L, -1) ? lua_tostring(L, -1) : "no runner");
      return;
    }
  }
  int r = lua_gettop(L);
  lua_rawgeti(L, cfg, H_S_THREAD);
  lua_rawget(L, r);
  lua_State *co = lua_tothread(L, -1);
  int coidx = lua_gettop(L);
  if (!co || (lua_status(co) != LUA_YIELD && lua_gettop(co) != 1)) {
    fprintf(stderr, "actor: a pooled runner lost its thread; completion dropped\n");
    return;
  }
  /* its session table: the caller's, or a fresh one */
  if (j->tlsref != LUA_NOREF) lua_rawgeti(L, LUA_REGISTRYINDEX, j->tlsref);
  else lua_pushnil(L);
  lua_rawseti(L, r, TLS_SLOT);
  if (push_session(L, cfg, r) != 0) return;
  set_state(L, cfg, r, H_S_RUNNING);
  int nres = 0;
  int st = resume_with(L, cfg, co, 1, base, nargs + 1, &nres);
  if (st < 0) {
    set_state(L, cfg, r, H_S_READY);
  } else if (st == LUA_YIELD) {
    int ready = yielded(co, nres, "ready", 5);
    int wait = !ready && yielded(co, nres, "wait", 4);
    lua_pop(co, nres);
    if (ready) {
      set_state(L, cfg, r, H_S_READY);
      /* the length again: the completion may have taken or returned
       * runners meanwhile (a caller answered from inside it) */
      lua_Integer n = (lua_Integer)lua_rawlen(L, freel);
      if (n < MAX_FREE) {
        lua_pushvalue(L, r);
        lua_rawseti(L, freel, n + 1);
      }
    } else if (wait) {
      lua_rawgeti(L, cfg, H_PARKED);
      lua_pushvalue(L, r);
      actor__call_protected(rt, 1, "runner");
    } else {
      /* a bare coroutine.yield(): util.async's run() leaves such a runner
       * "ready" with its item suspended; it is not reused here */
      set_state(L, cfg, r, H_S_READY);
    }
  } else if (st == LUA_OK) { /* the body never returns; be safe */
    lua_pop(co, nres);
    set_state(L, cfg, r, H_S_READY);
  } else {
    hand_error(rt, cfg, H_FAILED, r, coidx, co);
  }
}

/* Resumes the runner thread at `base`, parked in a sync call, with the
 * nargs values above it. */
static void resume_caller(actor_rt *rt, int cfg, int base, int nargs) {
  lua_State *L = rt->L;
  lua_State *co = lua_tothread(L, base);
  if (!co || lua_status(co) != LUA_YIELD) {
    fprintf(stderr, "actor: a reply came for a runner that is no longer parked; dropped\n");
    return;
  }
  lua_rawgeti(L, cfg, H_RUNNER_OF);
  lua_pushvalue(L, base);
  lua_rawget(L, -2);
  int r = lua_gettop(L);
  int has_r = lua_istable(L, r);
  if (has_r && push_session(L, cfg, r) != 0) return;
  int nres = 0;
  int st = resume_with(L, cfg, co, has_r, base + 1, nargs, &nres);
  if (st < 0) return;
  if (st == LUA_YIELD || st == LUA_OK) {
    int ready = yielded(co, nres, "ready", 5);
    lua_pop(co, nres);
    if (ready && has_r) {
      lua_rawgeti(L, cfg, H_AFTER_READY);
      lua_pushvalue(L, r);
      actor__call_protected(rt, 1, "runner");
    }
  } else {
    hand_error(rt, cfg, H_AFTER_ERROR, r, base, co);
  }
}

void actor__hot_deliver(actor_rt *rt, job *j, int nargs) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nargs;
  if (rt->no_lua || rt->hot_ref == 0 || !lua_checkstack(L, 24)) {
    lua_settop(L, base - 1);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->hot_ref);
  lua_rawgeti(L, -1, j->hotcfg);
  if (lua_istable(L, -1)) {
    int cfg = lua_gettop(L);
    if (j->hot == JOB_HOT_SCHED) run_completion(rt, j, cfg, base, nargs);
    else resume_caller(rt, cfg, base, nargs);
  }
  lua_settop(L, base - 1);
}

/* -------------------------------------------------------------- fronts */

enum { API_RUNINPOOL, API_CALL, API_CAST };

static const char *const LABEL[] = {"closure (argument #2 to runInPool)",
                                    "closure (argument #2 to call)",
                                    "closure (argument #2 to cast)"};

static int all_results_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/* The Lua implementation, with every argument: it may park (yield). */
static int slow(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_insert(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, all_results_k);
  return lua_gettop(L);
}

/* The pool at argument 1 when the fast path may use it: it exists, is not
 * closing, has no backlog limit (callers may have to wait for room) and
 * no timeout (a timer must watch the call). */
static pool *fast_pool(lua_State *L, actor_rt *rt) {
  pool *p;
  int t = lua_type(L, 1);
  if (t == LUA_TSTRING) p = actor__pool_find(rt, lua_tostring(L, 1), 0);
  else if (t == LUA_TNUMBER && lua_isinteger(L, 1)) p = actor__pool_find(rt, NULL, (int)lua_tointeger(L, 1));
  else return NULL;
  if (!p || rt->shutting_down || p->closing || p->backlog > 0 || p->timeout > 0) return NULL;
  return p;
}

/* Whether L is the thread of a util.async runner (find_runner's test). */
static int in_runner(lua_State *L, int cfg) {
  if (lua_pushthread(L)) { /* the main thread */
    lua_pop(L, 1);
    return 0;
  }
  lua_rawgeti(L, cfg, H_RUNNER_OF);
  lua_insert(L, -2);
  int ok = 0;
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_rawgeti(L, cfg, H_S_THREAD);
    lua_rawget(L, -2);
    ok = lua_tothread(L, -1) == L;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return ok;
}

static int front(lua_State *L, int api) {
  actor_rt **u = lua_touserdata(L, lua_upvalueindex(1));
  int cfg = lua_upvalueindex(2);
  if (!u || !*u || (*u)->closed) return slow(L);
  actor_rt *rt = *u;
  int n = lua_gettop(L);
  if (n < 2 || lua_type(L, 2) != LUA_TFUNCTION) return slow(L);
  pool *p = fast_pool(L, rt);
  if (!p) return slow(L);
  actor_submit_req q;
  memset(&q, 0, sizeof q);
  q.fn = 2;
  q.where = LABEL[api];
  enum { SYNC, CAST, SCHED, WCOMP } mode;
  if (api == API_RUNINPOOL) {
    if (n > 4) return slow(L);
    int t3 = lua_type(L, 3);
    if (t3 == LUA_TNONE || t3 == LUA_TNIL || (t3 == LUA_TBOOLEAN && !lua_toboolean(L, 3))) mode = SYNC;
    else if (t3 == LUA_TBOOLEAN) mode = CAST;
    else if (t3 == LUA_TFUNCTION && lua_type(L, 4) == LUA_TNUMBER && lua_tonumber(L, 4) == 2) mode = SCHED;
    else if (t3 == LUA_TFUNCTION && !lua_iscfunction(L, 3)) mode = WCOMP;
    else return slow(L);
    q.arg0 = n + 1;
    q.nargs = 0;
  } else {
    mode = api == API_CALL ? SYNC : CAST;
    q.arg0 = 3;
    q.nargs = n - 2;
  }
  lua_rawgeti(L, cfg, H_ID);
  int id = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  job *j;
  switch (mode) {
  case SYNC: {
    /* the main chunk drives the loop; a runner that cannot yield here
     * (inside a metamethod or a C call without continuation) must not
     * leave a job behind that would resume it later: the Lua path raises */
    if (!lua_isyieldable(L) || !in_runner(L, cfg)) return slow(L);
    lua_pushthread(L);
    int th = lua_gettop(L);
    lua_getglobal(L, "_TLS");
    q.kind = JOB_CALL;
    q.tls_mode = 1;
    q.cb = th;
    q.tls = lua_istable(L, -1) ? lua_gettop(L) : 0;
    j = actor__lua_submit(L, rt, p, &q);
    if (!j) {
      lua_pushboolean(L, 0);
      lua_insert(L, -2);
      return 2;
    }
    j->hot = JOB_HOT_RESUME;
    j->hotcfg = (uint8_t)id;
    lua_settop(L, 0);
    lua_rawgeti(L, cfg, H_S_WAIT);
    return lua_yieldk(L, 1, 0, all_results_k); /* resumed with (ok, results...) */
  }
  case SCHED: {
    lua_getglobal(L, "_TLS");
    q.kind = JOB_CALL;
    q.tls_mode = 1;
    q.cb = 3;
    q.tls = lua_istable(L, -1) ? lua_gettop(L) : 0;
    j = actor__lua_submit(L, rt, p, &q);
    if (!j) { /* the Lua path answers the completion with the error */
      lua_settop(L, n);
      return slow(L);
    }
    j->hot = JOB_HOT_SCHED;
    j->hotcfg = (uint8_t)id;
    if (q.tls && j->tlsref == LUA_NOREF) {
      lua_pushvalue(L, q.tls);
      j->tlsref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
  }
  case CAST:
  case WCOMP:
    q.kind = JOB_CAST;
    q.tls_mode = 0;
    if (mode == WCOMP) q.wcomp = 3;
    j = actor__lua_submit(L, rt, p, &q);
    if (!j) {
      lua_pushboolean(L, 0);
      lua_insert(L, -2);
      return 2;
    }
    return 0;
  }
  return slow(L);
}

static int front_runinpool(lua_State *L) { return front(L, API_RUNINPOOL); }
static int front_call(lua_State *L) { return front(L, API_CALL); }
static int front_cast(lua_State *L) { return front(L, API_CAST); }

/* hot_setup(t, slow_runInPool, slow_call, slow_cast) -> runInPool, call, cast
 * t: { runner_of=, G=, get_tls=, after_ready=, after_error=,
 *      new_pooled=, parked=, failed= } (util.async's, see _hot there).
 * Upvalue 1: the runtime's userdata. */
int actor__hot_setup(lua_State *L) {
  static const char *const names[] = {"runner_of", "G", "get_tls", "after_ready",
                                      "after_error", "new_pooled", "parked", "failed"};
  actor_rt **u = lua_touserdata(L, lua_upvalueindex(1));
  if (!u || !*u || (*u)->closed) return luaL_error(L, "the actor runtime is closed");
  actor_rt *rt = *u;
  luaL_checktype(L, 1, LUA_TTABLE);
  for (int i = 2; i <= 4; i++) luaL_checktype(L, i, LUA_TFUNCTION);
  lua_settop(L, 4);
  lua_createtable(L, H_LAST, 0);
  int cfg = lua_gettop(L);
  for (int i = 0; i < H_GIVEN; i++) {
    if (lua_getfield(L, 1, names[i]) == LUA_TNIL) return luaL_error(L, "hot_setup: '%s' missing", names[i]);
    lua_rawseti(L, cfg, i + 1);
  }
  lua_newtable(L);
  lua_rawseti(L, cfg, H_FREE);
  lua_pushliteral(L, "ready");
  lua_pushcclosure(L, pooled_body, 1);
  lua_rawseti(L, cfg, H_BODY);
  static const char *const strs[] = {"_TLS", "wait", "state", "running", "ready", "thread"};
  for (int i = 0; i < 6; i++) {
    lua_pushstring(L, strs[i]);
    lua_rawseti(L, cfg, H_S_TLS + i);
  }
  if (rt->hot_ref == 0) {
    lua_newtable(L);
    rt->hot_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->hot_ref);
  lua_getfield(L, -1, "n");
  int id = (int)(lua_tointeger(L, -1) % MAX_CFG) + 1;
  lua_pop(L, 1);
  lua_pushinteger(L, id);
  lua_setfield(L, -2, "n");
  lua_pushvalue(L, cfg);
  lua_rawseti(L, -2, id);
  lua_pop(L, 1);
  lua_pushinteger(L, id);
  lua_rawseti(L, cfg, H_ID);
  lua_CFunction fronts[] = {front_runinpool, front_call, front_cast};
  for (int i = 0; i < 3; i++) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, cfg);
    lua_pushvalue(L, 2 + i);
    lua_pushcclosure(L, fronts[i], 3);
  }
  return 3;
}
