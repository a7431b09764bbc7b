/*
 * worker.c -- a pool thread and the lua_State it owns.
 *
 * Design notes.
 * - The thread creates its state, runs every job of every batch it
 *   receives, and closes the state before it exits. The state pointer never
 *   leaves this thread (w->L is kept for debug assertions only).
 * - Replies are appended to one buffer and flushed as one nng message when
 *   the batch ends, or earlier once REPLY_FLUSH_US have passed since the
 *   last flush, so a long job never holds back the replies of short ones.
 * - A job's deadline is enforced with a count hook installed only for jobs
 *   that have one (a hook slows the interpreter down, so jobs without a
 *   timeout run without it). At shutdown the scheduler interrupts running
 *   Lua by signalling the thread; the handler (on this thread) installs the
 *   same hook, as lua.c does for SIGINT.
 * - A sync call from inside a job to another pool goes to the scheduler as a
 *   MSG_NESTED_CALL and this thread blocks until the MSG_NESTED_REPLY; job
 *   batches that arrive meanwhile are stashed and run afterwards. A sync call
 *   to the worker's own pool runs inline (see docs/pools.md): it can never
 *   deadlock, even when every thread of the pool is busy.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "rt.h"

#define REPLY_FLUSH_US 200

typedef struct wctx {
  worker *w;
  lua_State *L;
  codec_buf out;       /* pending replies, header first */
  uint32_t nout;
  double last_flush;
  size_t used;         /* bytes held by the state */
  double deadline;     /* current job; 0 = none */
  double timeout;
  nng_msg **stash;     /* batches received during a nested call */
  int nstash, capstash;
  const char *payload; /* current job, for job_prepare */
  size_t plen;
  int tb_ref;          /* registry slot for the last traceback */
  char setup_error[256]; /* non-empty: the state could not be set up; every
                          * job is answered with this instead of running */
} wctx;

static _Thread_local wctx *tl_ctx;
static int abort_signal = 0;

/* --------------------------------------------------------- allocator */

static void *worker_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  wctx *c = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    c->used -= old;
    atomic_store_explicit(&c->w->mem_used, c->used, memory_order_relaxed);
    return NULL;
  }
  if (c->w->memory_limit && nsize > old && c->used + (nsize - old) > c->w->memory_limit) return NULL;
  void *n = realloc(ptr, nsize);
  if (!n) return NULL;
  c->used = c->used - old + nsize;
  atomic_store_explicit(&c->w->mem_used, c->used, memory_order_relaxed);
  return n;
}

/* ------------------------------------------------------------- hooks */

static void job_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  wctx *c = tl_ctx;
  if (!c) return;
  if (atomic_load_explicit(&c->w->abort_now, memory_order_relaxed)) {
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "pool %s is shutting down", c->w->p->name);
  }
  if (c->deadline > 0 && actor__now() > c->deadline) {
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "timed out after %g s in pool %s", c->timeout, c->w->p->name);
  }
}

static void abort_handler(int sig) {
  (void)sig;
  wctx *c = tl_ctx;
  if (c && c->L) lua_sethook(c->L, job_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void install_abort_signal_once(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = abort_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  abort_signal = SIGRTMIN + 3;
  sigaction(abort_signal, &sa, NULL);
}

static void install_abort_signal(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, install_abort_signal_once);
}

/* Called by the scheduler at shutdown, after the grace period. */
void actor__worker_interrupt(worker *w) {
  atomic_store(&w->abort_now, 1);
  if (abort_signal && w->started && !atomic_load(&w->exited)) pthread_kill(w->th, abort_signal);
}

/* --------------------------------------------------------- replies */

static void out_reset(wctx *c) {
  c->out.len = 0;
  wire_hdr h = {WIRE_VERSION, MSG_REPLIES, 0, 0};
  codec_buf_append(&c->out, &h, sizeof h);
  c->nout = 0;
}

static void flush_replies(wctx *c) {
  c->last_flush = actor__now();
  if (c->nout == 0) return;
  wire_hdr h = {WIRE_VERSION, MSG_REPLIES, 0, c->nout};
  memcpy(c->out.data, &h, sizeof h);
  nng_msg *m;
  if (nng_msg_alloc(&m, c->out.len) == 0) {
    memcpy(nng_msg_body(m), c->out.data, c->out.len);
    if (nng_sendmsg(c->w->wsock, m, 0) != 0) nng_msg_free(m);
  }
  out_reset(c);
}

/* Starts a reply record; returns the offset of its header. */
static size_t reply_begin(wctx *c, uint64_t id) {
  size_t at = c->out.len;
  wire_reply r = {id, ST_OK, 0, 0, 0, 0, 0};
  codec_buf_append(&c->out, &r, sizeof r);
  return at;
}

static void reply_end(wctx *c, size_t at, int status, int flags, uint32_t wall_us) {
  wire_reply r;
  memcpy(&r, c->out.data + at, sizeof r);
  r.status = (uint8_t)status;
  r.flags = (uint8_t)flags;
  r.wall_us = wall_us;
  r.len = (uint32_t)(c->out.len - at - sizeof r);
  memcpy(c->out.data + at, &r, sizeof r);
  c->nout++;
}

/* Replaces a reply's payload with one error string. */
static void reply_error_str(wctx *c, size_t at, const char *msg) {
  lua_State *L = c->L;
  c->out.len = at + sizeof(wire_reply);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &c->out, NULL);
  lua_pushstring(L, msg);
  codec_enc_value(e, L, -1, "error");
  lua_pop(L, 1);
}

/* ----------------------------------------------------------- jobs */

static int msgh(lua_State *L) {
  wctx *c = tl_ctx;
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  lua_rawseti(L, LUA_REGISTRYINDEX, c->tb_ref);
  return 1; /* the error value itself */
}

static int job_prepare(lua_State *L) {
  wctx *c = tl_ctx;
  codec_dec_opts o = {1, {0, 0}};
  codec_limits_default(&o.lim);
  o.lim.max_size = (size_t)-1;
  int n = codec_decode(L, c->payload, c->plen, &o);
  if (n < 0) return lua_error(L);
  return n;
}

static const char *oom_message(lua_State *L, worker *w) {
  size_t lim = w->memory_limit;
  if (lim && lim % (1024 * 1024) == 0)
    return lua_pushfstring(L, "not enough memory in pool %s (limit %d MB)", w->p->name, (int)(lim / (1024 * 1024)));
  if (lim) return lua_pushfstring(L, "not enough memory in pool %s (limit %d bytes)", w->p->name, (int)lim);
  return lua_pushfstring(L, "not enough memory in pool %s", w->p->name);
}

/* Encodes the values at [first, top] as the reply payload (plus _TLS when
 * asked). Runs protected. */
typedef struct enc_args { wctx *c; int first; int tls; const char *what; } enc_args;
static int job_encode(lua_State *L) {
  enc_args *a = lua_touserdata(L, -1);
  lua_pop(L, 1);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &a->c->out, NULL);
  if (a->tls) {
    lua_getglobal(L, "_TLS");
    if (codec_enc_value(e, L, -1, "_TLS") != 0) return lua_error(L);
    lua_pop(L, 1);
  }
  int top = lua_gettop(L);
  /* labels only matter in error messages: built once, not per job */
  static const char *const results[] = {"result #1", "result #2", "result #3", "result #4"};
  char where[48];
  for (int i = a->first; i <= top; i++) {
    int k = i - a->first;
    const char *lbl = where;
    if (a->what[0] == 'r' && k < 4) lbl = results[k];
    else snprintf(where, sizeof where, "%s #%d", a->what, k + 1);
    if (codec_enc_value(e, L, i, lbl) != 0) return lua_error(L);
  }
  return 0;
}

/* Writes "source:line" of the function the worker runs (or ran last). */
void actor__worker_current(worker *w, char *buf, size_t n) {
  pthread_mutex_lock(&w->cur_mu);
  snprintf(buf, n, "%s:%d", w->cur_fn[0] ? w->cur_fn : "?", w->cur_line);
  pthread_mutex_unlock(&w->cur_mu);
}

/* Records which function runs, for inspection. Cheap on purpose (no
 * formatting): the source is copied only when the function changes. */
static void set_current(worker *w, lua_State *L, int fnidx) {
  const void *fp = lua_topointer(L, fnidx);
  if (fp == w->cur_ptr) return;
  lua_Debug ar;
  lua_pushvalue(L, fnidx);
  if (!lua_getinfo(L, ">S", &ar)) return;
  size_t n = strlen(ar.short_src);
  if (n > sizeof w->cur_fn - 12) n = sizeof w->cur_fn - 12;
  pthread_mutex_lock(&w->cur_mu);
  memcpy(w->cur_fn, ar.short_src, n);
  w->cur_fn[n] = 0;
  w->cur_line = ar.linedefined;
  pthread_mutex_unlock(&w->cur_mu);
  w->cur_ptr = fp;
}

static void run_job(wctx *c, const wire_job *wj, const char *payload) {
  lua_State *L = c->L;
  worker *w = c->w;
  size_t at = reply_begin(c, wj->id);
  if (atomic_load(&w->stopping)) {
    reply_end(c, at, ST_SHUTDOWN, 0, 0);
    return;
  }
  if (c->setup_error[0]) {
    if (L) {
      reply_error_str(c, at, c->setup_error);
    } else { /* no state to encode with: a msgpack str8 by hand */
      unsigned char hdr[2] = {0xd9, (unsigned char)strlen(c->setup_error)};
      codec_buf_append(&c->out, hdr, 2);
      codec_buf_append(&c->out, c->setup_error, hdr[1]);
    }
    reply_end(c, at, (wj->flags & JOB_F_NOREPLY) ? ST_ACKERR : ST_ERR, 0, 0);
    return;
  }
  /* The reply record is begun again once the job has run: the job may
   * flush the reply buffer while it runs (actor.sleep, a nested sync call),
   * and a flush must carry only finished replies, never this one's header
   * (which would then be written at an offset the flush has reset). */
  c->out.len = at;
  double t0 = actor__now();
  atomic_store(&w->busy, 1);
  atomic_store(&w->job_started_us, (long long)(t0 * 1e6));
  lua_settop(L, 0);
  lua_pushcfunction(L, msgh); /* 1: message handler */
  c->payload = payload;
  c->plen = wj->len;
  int status = ST_OK, rflags = 0;
  int noreply = (wj->flags & JOB_F_NOREPLY) != 0;
  lua_pushcfunction(L, job_prepare);
  int rc = lua_pcall(L, 0, LUA_MULTRET, 0);
  if (rc != LUA_OK) {
    const char *m = rc == LUA_ERRMEM ? oom_message(L, w) : lua_tostring(L, -1);
    at = reply_begin(c, wj->id);
    reply_error_str(c, at, m ? m : "cannot decode job");
    reply_end(c, at, noreply ? ST_ACKERR : ST_ERR, 0, 0);
    goto done;
  }
  int idx = 2;
  if (wj->flags & JOB_F_TLS) {
    lua_pushvalue(L, idx);
    lua_setglobal(L, "_TLS");
    idx++;
  }
  int comp = 0;
  if (wj->flags & JOB_F_WCOMPLETE) comp = idx++;
  int fn = idx;
  if (lua_type(L, fn) != LUA_TFUNCTION) {
    at = reply_begin(c, wj->id);
    reply_error_str(c, at, "job carries no function");
    reply_end(c, at, noreply ? ST_ACKERR : ST_ERR, 0, 0);
    goto done;
  }
  set_current(w, L, fn);
  if (wj->timeout_ms > 0) {
    c->timeout = wj->timeout_ms / 1000.0;
    c->deadline = t0 + c->timeout;
    lua_sethook(L, job_hook, LUA_MASKCOUNT, 1000);
  }
  int nargs = lua_gettop(L) - fn;
  int base = fn - 1; /* results start at fn after the call */
  rc = lua_pcall(L, nargs, LUA_MULTRET, 1);
  if (c->deadline > 0) {
    lua_sethook(L, NULL, 0, 0);
    c->deadline = 0;
  }
  uint32_t wall = (uint32_t)((actor__now() - t0) * 1e6);
  int ok = rc == LUA_OK;
  if (!ok) {
    /* stack: ..., err. Make it err, traceback. */
    if (rc == LUA_ERRMEM) {
      lua_pop(L, 1);
      oom_message(L, w);
      lua_gc(L, LUA_GCCOLLECT);
      lua_pushnil(L);
    } else {
      lua_rawgeti(L, LUA_REGISTRYINDEX, c->tb_ref);
    }
  }
  int nres = lua_gettop(L) - base; /* ok: results; else err, traceback|nil */
  if (comp) {
    /* completion(ok, results...) or completion(false, err) on this thread */
    int top = lua_gettop(L);
    lua_pushvalue(L, comp);
    lua_pushboolean(L, ok);
    int n = ok ? nres : 1;
    for (int i = 0; i < n; i++) lua_pushvalue(L, base + 1 + i);
    if (lua_pcall(L, n + 1, 0, 1) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      fprintf(stderr, "actor: error in completion (pool %s): %s\n", w->p->name, m ? m : "?");
      ok = 0;
    }
    lua_settop(L, top);
  }
  at = reply_begin(c, wj->id);
  if (noreply) {
    reply_end(c, at, ok ? ST_ACK : ST_ACKERR, 0, wall);
    goto done;
  }
  {
    enc_args a = {c, 1, (wj->flags & JOB_F_TLS) != 0, ok ? "result" : "error"};
    if (!ok && lua_isnil(L, -1)) { lua_pop(L, 1); nres--; }
    lua_pushcfunction(L, job_encode);
    lua_insert(L, base + 1);
    lua_pushlightuserdata(L, &a);
    c->out.len = at + sizeof(wire_reply);
    int erc = lua_pcall(L, nres + 1, 0, 0);
    if (erc != LUA_OK) {
      const char *m = erc == LUA_ERRMEM ? oom_message(L, w) : lua_tostring(L, -1);
      reply_error_str(c, at, m ? m : "cannot send results");
      status = ST_ERR;
    } else {
      status = ok ? ST_OK : ST_ERR;
      rflags = a.tls ? JOB_F_TLS : 0;
    }
    reply_end(c, at, status, rflags, wall);
  }
done:
  lua_settop(L, 0);
  atomic_store(&w->busy, 0);
  atomic_fetch_add(&w->jobs_done, 1);
}

/* --------------------------------------------------- nested sync calls */

static void stash_msg(wctx *c, nng_msg *m) {
  if (c->nstash == c->capstash) {
    int ncap = c->capstash ? c->capstash * 2 : 8;
    nng_msg **ns = realloc(c->stash, sizeof(*ns) * ncap);
    if (!ns) { nng_msg_free(m); return; } /* cannot happen in practice */
    c->stash = ns;
    c->capstash = ncap;
  }
  c->stash[c->nstash++] = m;
}

/* actor.call / msys.runInPool from inside a job: (pool, timeout, fn, ...)
 * Blocks this thread until the reply. Returns ok, values... */
static int w_call(lua_State *L) {
  wctx *c = tl_ctx;
  worker *w = c->w;
  int t = lua_type(L, 1);
  if (t != LUA_TSTRING && !lua_isinteger(L, 1))
    return luaL_argerror(L, 1, "pool name or id expected");
  double timeout = luaL_optnumber(L, 2, 0);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  codec_buf b;
  codec_buf_init(&b);
  wire_hdr h = {WIRE_VERSION, MSG_NESTED_CALL, 0, 1};
  wire_job wj = {++w->nested_seq, 0, (uint32_t)(timeout * 1000), 0, 0};
  codec_buf_append(&b, &h, sizeof h);
  codec_buf_append(&b, &wj, sizeof wj);
  size_t start = b.len;
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  int top = lua_gettop(L);
  int err = codec_enc_value(e, L, 1, "pool");
  char where[48];
  for (int i = 3; i <= top && err == 0; i++) {
    if (i == 3) snprintf(where, sizeof where, "closure (argument #3 to call)");
    else snprintf(where, sizeof where, "argument #%d to call", i);
    err = codec_enc_value(e, L, i, where);
  }
  if (err) {
    codec_buf_fini(&b);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  wj.len = (uint32_t)(b.len - start);
  memcpy(b.data + sizeof h, &wj, sizeof wj);
  /* replies already computed must not wait behind this call */
  flush_replies(c);
  nng_msg *m;
  if (nng_msg_alloc(&m, b.len) != 0) {
    codec_buf_fini(&b);
    return luaL_error(L, "out of memory");
  }
  memcpy(nng_msg_body(m), b.data, b.len);
  codec_buf_fini(&b);
  if (nng_sendmsg(w->wsock, m, 0) != 0) {
    nng_msg_free(m);
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "pool %s is shutting down", w->p->name);
    return 2;
  }
  for (;;) {
    nng_msg *r;
    int rv = nng_recvmsg(w->wsock, &r, 0);
    if (rv != 0) {
      lua_pushboolean(L, 0);
      lua_pushstring(L, "runtime is shutting down");
      return 2;
    }
    const char *body = nng_msg_body(r);
    size_t len = nng_msg_len(r);
    wire_hdr rh;
    wire_reply rr;
    if (len >= sizeof rh + sizeof rr) {
      memcpy(&rh, body, sizeof rh);
      memcpy(&rr, body + sizeof rh, sizeof rr);
      if (rh.type == MSG_NESTED_REPLY && rr.id == wj.id && sizeof rh + sizeof rr + rr.len <= len) {
        if (rr.status == ST_NOPOOL) {
          codec_dec_opts o = {0, {0, 0}};
          codec_limits_default(&o.lim);
          codec_decode(L, body + sizeof rh + sizeof rr, rr.len, &o);
          nng_msg_free(r);
          return lua_error(L);
        }
        int base = lua_gettop(L);
        lua_pushboolean(L, rr.status == ST_OK);
        if (rr.status == ST_SHUTDOWN) {
          lua_pushstring(L, "pool is shutting down");
        } else {
          codec_dec_opts o = {1, {0, 0}};
          codec_limits_default(&o.lim);
          o.lim.max_size = (size_t)-1;
          if (codec_decode(L, body + sizeof rh + sizeof rr, rr.len, &o) < 0) {
            lua_pushboolean(L, 0);
            lua_replace(L, base + 1);
          }
        }
        nng_msg_free(r);
        return lua_gettop(L) - base;
      }
    }
    stash_msg(c, r); /* a job batch or a stop: handled after this call */
  }
}

/* actor.sleep / msys.sleep in a pool: blocks this thread. */
static int w_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s > 0) {
    flush_replies(tl_ctx);
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      if (atomic_load(&tl_ctx->w->abort_now)) break;
    }
  }
  return 0;
}

static int w_now(lua_State *L) {
  lua_pushnumber(L, actor__now());
  return 1;
}

static int w_thread_id(lua_State *L) {
  return actor__push_thread_id(L);
}

/* ------------------------------------------------------- state setup */

/* Runs on the worker thread, in protected mode: builds the state's
 * environment (libraries, _OSTLS, actor, msys, preload, init). */
static int setup_state(lua_State *L) {
  wctx *c = tl_ctx;
  worker *w = c->w;
  luaL_openlibs(L);
  lua_newtable(L);
  lua_setglobal(L, "_OSTLS");
  lua_newtable(L);
  lua_setglobal(L, "_TLS");
  luaL_requiref(L, "actor.codec", luaopen_actor_codec, 0);
  lua_pop(L, 1);
  actor__install_searcher(L);
  actor__preload_optional(L);
  /* C modules the host registered with actor_register_module() (api.c) */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (actor_cmod *m = atomic_load(&w->p->rt->cmods); m; m = m->next) {
    lua_pushcfunction(L, m->open);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 1);
  /* the core table the Lua side of the worker builds on */
  lua_newtable(L);
  static const luaL_Reg core[] = {
      {"call", w_call}, {"sleep", w_sleep}, {"now", w_now}, {"thread_id", w_thread_id}, {NULL, NULL}};
  luaL_setfuncs(L, core, 0);
  lua_pushstring(L, w->p->name);
  lua_setfield(L, -2, "pool");
  lua_pushinteger(L, w->p->id);
  lua_setfield(L, -2, "pool_id");
  lua_pushinteger(L, w->index);
  lua_setfield(L, -2, "worker");
  if (actor__load_embedded(L, "actor.worker") != 0) return lua_error(L);
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  for (int i = 0; i < w->p->npreload; i++) {
    lua_getglobal(L, "require");
    lua_pushstring(L, w->p->preload[i]);
    lua_call(L, 1, 0);
  }
  if (w->p->init) {
    const char *init = w->p->init;
    size_t n = strlen(init);
    if ((n > 4 && strcmp(init + n - 4, ".lua") == 0) || strchr(init, '/')) {
      if (luaL_dofile(L, init) != LUA_OK) return lua_error(L);
    } else {
      lua_getglobal(L, "require");
      lua_pushstring(L, init);
      lua_call(L, 1, 0);
    }
  }
  codec_index_cfunctions(L);
  /* Later jobs of a function already loaded here only get fresh upvalues
   * (see docs/pools.md for what that means for closures kept past a job). */
  if (w->p->fn_cache > 0) codec_fn_cache_enable(L, w->p->fn_cache);
  return 0;
}

/* --------------------------------------------------------- main loop */

static int handle_msg(wctx *c, nng_msg *m) {
  const char *body = nng_msg_body(m);
  size_t len = nng_msg_len(m);
  wire_hdr h;
  if (len < sizeof h) return 0;
  memcpy(&h, body, sizeof h);
  if (h.version != WIRE_VERSION) return 0;
  if (h.type == MSG_STOP) return 1;
  if (h.type == MSG_GC && len >= sizeof h + sizeof(wire_gc)) {
    wire_gc g; /* actorctl gc (control.c): collect on this thread */
    memcpy(&g, body + sizeof h, sizeof g);
    size_t before = c->used;
    if (c->L) lua_gc(c->L, LUA_GCCOLLECT);
    g.done(g.ud, before, c->used);
    return 0;
  }
  if (h.type != MSG_JOBS) return 0;
  size_t off = sizeof h;
  for (uint32_t i = 0; i < h.count; i++) {
    wire_job wj;
    if (off + sizeof wj > len) break;
    memcpy(&wj, body + off, sizeof wj);
    off += sizeof wj;
    if (off + wj.len > len) break;
    run_job(c, &wj, body + off);
    off += wj.len;
    if (i + 1 == h.count || (actor__now() - c->last_flush) * 1e6 >= REPLY_FLUSH_US) flush_replies(c);
  }
  flush_replies(c);
  return 0;
}

void *actor__worker_main(void *arg) {
  worker *w = arg;
  wctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.w = w;
  tl_ctx = &ctx;
  codec_buf_init(&ctx.out);
  out_reset(&ctx);
  lua_State *L = lua_newstate(worker_alloc, &ctx);
  int stop = 0;
  if (!L) {
    /* keep serving: every job is answered with this error */
    snprintf(ctx.setup_error, sizeof ctx.setup_error, "pool %s: cannot create a Lua state (out of memory)", w->p->name);
    fprintf(stderr, "actor: %s\n", ctx.setup_error);
  } else {
    ctx.L = L;
    w->L = L;
    lua_pushboolean(L, 1);
    ctx.tb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushcfunction(L, setup_state);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      snprintf(ctx.setup_error, sizeof ctx.setup_error, "pool %s: worker state setup failed: %s", w->p->name,
               m ? m : "(error object is not a string)");
      if (!atomic_load(&w->abort_now)) fprintf(stderr, "actor: %s\n", ctx.setup_error);
      lua_pop(L, 1);
    }
  }
  ctx.last_flush = actor__now();
  while (!stop) {
    nng_msg *m;
    if (ctx.nstash > 0) {
      m = ctx.stash[0];
      memmove(ctx.stash, ctx.stash + 1, sizeof(nng_msg *) * --ctx.nstash);
    } else if (nng_recvmsg(w->wsock, &m, 0) != 0) {
      break;
    }
    stop = handle_msg(&ctx, m);
    nng_msg_free(m);
  }
  for (int i = 0; i < ctx.nstash; i++) nng_msg_free(ctx.stash[i]);
  free(ctx.stash);
  if (L) lua_close(L);
  codec_buf_fini(&ctx.out);
  w->L = NULL;
  tl_ctx = NULL;
  atomic_store(&w->exited, 1);
  return NULL;
}

int actor__worker_start(worker *w) {
  install_abort_signal();
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1024 * 1024);
  int rv = pthread_create(&w->th, &attr, actor__worker_main, w);
  pthread_attr_destroy(&attr);
  return rv;
}
