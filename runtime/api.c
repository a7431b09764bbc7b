/*
 * api.c -- the public C API (include/actor/actor.h).
 *
 * Design notes.
 * - A handle is an id. Open runtimes sit in a small global table guarded by
 *   g_mu; every call looks its id up there. actor_post() does its whole
 *   hand-over (actor__post) while holding g_mu, and actor_close() removes
 *   the entry under g_mu before tearing anything down, so a post either
 *   reaches the loop before the close starts or sees ACTOR_ECLOSED. Nothing
 *   slow runs under g_mu (a lookup, a malloc'ed item queued).
 * - Events cross threads as malloc'ed api_event records posted with
 *   actor__post; the scheduler thread decodes the msgpack arguments into its
 *   state and hands them to actor.session (bindings/lua/actor/session.lua),
 *   which runs the handler in the session's runner and calls api_done_l.
 * - Exactly-once completion: an event on the scheduler is linked in
 *   a->live until answered. actor_close answers everything still linked
 *   with ACTOR_ECLOSED (marking it answered but keeping the record, since
 *   Lua may still hold its token while the state closes), then closes the
 *   state, then frees the records. A post that reaches the loop only during
 *   the close sees rt->shutting_down and is answered there.
 * - Threaded mode: the scheduler thread owns the lua_State from creation to
 *   lua_close. Configuration calls from other threads become commands run
 *   there (posted, then waited for on a condition variable).
 *
 * Lock order: g_mu, then rt->inbox_mu (inside actor__post); cmd->mu is a
 * leaf. No lock is held while Lua or a host callback runs.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "actor/actor.h"
#include "rt.h"

int luaopen_actor(lua_State *L);

#define MAX_ARGS 10000

typedef struct api api;

typedef struct api_event {
  api *a;
  uint64_t session;
  actor_done_fn cb;
  void *ud;
  char *handler;   /* NUL-terminated copy */
  char *args;      /* msgpack array (copy), or NULL */
  size_t len;
  int answered;
  struct api_event *prev, *next; /* a->live, scheduler thread */
} api_event;

struct api {
  uint32_t id;
  int threaded;
  actor_rt *rt;       /* valid until the state closes */
  lua_State *L;       /* scheduler thread only */
  pthread_t owner;    /* the scheduler thread */
  pthread_t th;       /* threaded mode: that thread */
  int stop;           /* scheduler thread: leave the loop */
  int closing;        /* scheduler thread */
  int depth;          /* scheduler thread: inside a step or a command */
  api_event *live;    /* events handed to Lua, not yet answered */
  int dispatch_ref;   /* actor.session.dispatch */
  int finish_ref;     /* actor.session.finish */
  int done_ref;       /* api_done_l */
  codec_buf out;      /* results of the current completion */
  /* threaded start-up handshake */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, start_err;
};

/* ------------------------------------------------------------- registry */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static api **g_tab;
static int g_n, g_cap;
static uint32_t g_next_id;

/* Caller holds g_mu. */
static api *find_locked(uint32_t id) {
  if (id == 0) return NULL;
  for (int i = 0; i < g_n; i++)
    if (g_tab[i]->id == id) return g_tab[i];
  return NULL;
}

static int add_locked(api *a) {
  if (g_n == g_cap) {
    int ncap = g_cap ? g_cap * 2 : 8;
    api **nt = realloc(g_tab, sizeof(*nt) * (size_t)ncap);
    if (!nt) return ACTOR_ENOMEM;
    g_tab = nt;
    g_cap = ncap;
  }
  if (++g_next_id == 0) g_next_id = 1;
  a->id = g_next_id;
  g_tab[g_n++] = a;
  return 0;
}

static void remove_locked(api *a) {
  for (int i = 0; i < g_n; i++) {
    if (g_tab[i] == a) {
      g_tab[i] = g_tab[--g_n];
      break;
    }
  }
  if (g_n == 0) {
    free(g_tab);
    g_tab = NULL;
    g_cap = 0;
  }
}

const char *actor_strerror(int err) {
  switch (err) {
  case ACTOR_OK: return "no error";
  case ACTOR_EINVAL: return "invalid argument";
  case ACTOR_ENOMEM: return "out of memory";
  case ACTOR_ECLOSED: return "runtime is closed";
  case ACTOR_ENOHANDLER: return "no such handler";
  case ACTOR_EPROTO: return "malformed msgpack arguments";
  case ACTOR_EHANDLER: return "handler raised an error";
  case ACTOR_ESCRIPT: return "script failed to load";
  case ACTOR_ETHREAD: return "not allowed on this thread";
  case ACTOR_ESYSTEM: return "system error";
  case ACTOR_ERESULT: return "results cannot be sent";
  default: return "unknown error";
  }
}

static void set_errbuf(char *buf, size_t len, const char *msg) {
  if (buf && len > 0) snprintf(buf, len, "%s", msg ? msg : "");
}

/* ------------------------------------------------------- msgpack checks */

/* Checks that data[0..len) is exactly one well-formed msgpack object whose
 * outer type is an array, without building it. Returns the number of
 * elements, or -1. An iterative walk with a count of objects still owed, so
 * deep nesting costs no C stack. */
static long long mp_check_array(const unsigned char *p, size_t len, size_t *hdr) {
  size_t off = 0;
  unsigned long long owed = 1;
  long long top_count = -1;
  int first = 1;
#define NEED(n) do { if (len - off < (size_t)(n)) return -1; } while (0)
#define BE16(q) (((size_t)(q)[0] << 8) | (q)[1])
#define BE32(q) (((size_t)(q)[0] << 24) | ((size_t)(q)[1] << 16) | ((size_t)(q)[2] << 8) | (q)[3])
  while (owed > 0) {
    NEED(1);
    unsigned c = p[off++];
    owed--;
    size_t skip = 0;
    unsigned long long add = 0;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) skip = 0;
    else if (c >= 0x80 && c <= 0x8f) add = 2ull * (c & 0x0f);
    else if (c >= 0x90 && c <= 0x9f) add = c & 0x0f;
    else if (c >= 0xa0 && c <= 0xbf) skip = c & 0x1f;
    else switch (c) {
      case 0xc4: NEED(1); skip = p[off]; off += 1; break;
      case 0xc5: NEED(2); skip = BE16(p + off); off += 2; break;
      case 0xc6: NEED(4); skip = BE32(p + off); off += 4; break;
      case 0xc7: NEED(2); skip = (size_t)p[off] + 1; off += 1; break;
      case 0xc8: NEED(3); skip = BE16(p + off) + 1; off += 2; break;
      case 0xc9: NEED(5); skip = BE32(p + off) + 1; off += 4; break;
      case 0xca: skip = 4; break;
      case 0xcb: skip = 8; break;
      case 0xcc: skip = 1; break;
      case 0xcd: skip = 2; break;
      case 0xce: skip = 4; break;
      case 0xcf: skip = 8; break;
      case 0xd0: skip = 1; break;
      case 0xd1: skip = 2; break;
      case 0xd2: skip = 4; break;
      case 0xd3: skip = 8; break;
      case 0xd4: skip = 2; break;
      case 0xd5: skip = 3; break;
      case 0xd6: skip = 5; break;
      case 0xd7: skip = 9; break;
      case 0xd8: skip = 17; break;
      case 0xd9: NEED(1); skip = p[off]; off += 1; break;
      case 0xda: NEED(2); skip = BE16(p + off); off += 2; break;
      case 0xdb: NEED(4); skip = BE32(p + off); off += 4; break;
      case 0xdc: NEED(2); add = BE16(p + off); off += 2; break;
      case 0xdd: NEED(4); add = BE32(p + off); off += 4; break;
      case 0xde: NEED(2); add = 2ull * BE16(p + off); off += 2; break;
      case 0xdf: NEED(4); add = 2ull * BE32(p + off); off += 4; break;
      default: return -1; /* 0xc1 is never used */
    }
    if (first) {
      if (!((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd)) return -1;
      top_count = (long long)add;
      *hdr = off;
      first = 0;
    }
    NEED(skip);
    off += skip;
    /* every element needs at least one byte: reject counts the input cannot hold */
    if (add > len - off) return -1;
    owed += add;
  }
#undef NEED
#undef BE16
#undef BE32
  if (off != len) return -1;
  return top_count;
}

/* --------------------------------------------------------------- events */

static void event_free(api_event *ev) {
  free(ev->handler);
  free(ev->args);
  free(ev);
}

static void live_link(api *a, api_event *ev) {
  ev->prev = NULL;
  ev->next = a->live;
  if (a->live) a->live->prev = ev;
  a->live = ev;
}

static void live_unlink(api *a, api_event *ev) {
  if (ev->prev) ev->prev->next = ev->next;
  else a->live = ev->next;
  if (ev->next) ev->next->prev = ev->prev;
  ev->prev = ev->next = NULL;
}

/* Calls the host's callback once. */
static void event_answer(api_event *ev, int err, const char *data, size_t len, const char *msg) {
  if (ev->answered) return;
  ev->answered = 1;
  if (!ev->cb) return;
  static const char empty_array[1] = {(char)0x90};
  actor_result r;
  r.err = err;
  r.data = err == 0 ? (data ? data : empty_array) : NULL;
  r.len = err == 0 ? (data ? len : 1) : 0;
  r.message = err == 0 ? "" : (msg ? msg : actor_strerror(err));
  r.session = ev->session;
  ev->cb(&r, ev->ud);
}

static void put_array_header(codec_buf *b, uint32_t n) {
  unsigned char h[5];
  size_t hl;
  if (n < 16) {
    h[0] = (unsigned char)(0x90 | n);
    hl = 1;
  } else if (n <= 0xffff) {
    h[0] = 0xdc; h[1] = (unsigned char)(n >> 8); h[2] = (unsigned char)n;
    hl = 3;
  } else {
    h[0] = 0xdd; h[1] = (unsigned char)(n >> 24); h[2] = (unsigned char)(n >> 16);
    h[3] = (unsigned char)(n >> 8); h[4] = (unsigned char)n;
    hl = 5;
  }
  codec_buf_append(b, h, hl);
}

/* done(token, status, ...): the completion of actor.session. status true:
 * results follow; false: the handler's error; nil: no such handler. */
static int api_done_l(lua_State *L) {
  api_event *ev = lua_touserdata(L, 1);
  if (!ev) return 0;
  api *a = ev->a;
  if (ev->answered) return 0; /* answered by actor_close already */
  int top = lua_gettop(L);
  if (lua_isnil(L, 2)) {
    event_answer(ev, ACTOR_ENOHANDLER, NULL, 0, lua_tostring(L, 3));
  } else if (!lua_toboolean(L, 2)) {
    const char *m = lua_tostring(L, 3);
    if (!m) m = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 3));
    event_answer(ev, ACTOR_EHANDLER, NULL, 0, m);
  } else {
    codec_buf *b = &a->out;
    b->len = 0;
    put_array_header(b, (uint32_t)(top - 2));
    codec_enc *e = codec_enc_get(L);
    codec_enc_begin(e, b, NULL);
    int bad = 0;
    char where[32];
    for (int i = 3; i <= top && !bad; i++) {
      snprintf(where, sizeof where, "result #%d", i - 2);
      bad = codec_enc_value(e, L, i, where) != 0;
    }
    if (bad) event_answer(ev, ACTOR_ERESULT, NULL, 0, lua_tostring(L, -1));
    else event_answer(ev, 0, b->data, b->len, NULL);
  }
  live_unlink(a, ev);
  event_free(ev);
  return 0;
}

static int traceback_msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg) luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Pushes the values of the event's array: decoded on the scheduler state. */
static int push_args(lua_State *L) {
  api_event *ev = lua_touserdata(L, 1);
  lua_pop(L, 1);
  if (!ev->args) return 0;
  size_t hdr = 0;
  long long n = mp_check_array((const unsigned char *)ev->args, ev->len, &hdr);
  if (n < 0) return luaL_error(L, "malformed msgpack arguments");
  if (n > MAX_ARGS) return luaL_error(L, "too many arguments (%d at most)", MAX_ARGS);
  luaL_checkstack(L, (int)n + 8, "too many arguments");
  codec_dec_opts o = {0, {0, 0}};
  codec_limits_of(L, &o.lim);
  int got = codec_decode(L, ev->args + hdr, ev->len - hdr, &o);
  if (got < 0) return lua_error(L);
  return got;
}

/* Scheduler thread: the event reaches the loop. */
static void event_run(actor_rt *rt, void *ud) {
  api_event *ev = ud;
  api *a = ev->a;
  if (rt->shutting_down || a->closing || !a->L) {
    event_answer(ev, ACTOR_ECLOSED, NULL, 0, "the runtime is closing");
    event_free(ev);
    return;
  }
  lua_State *L = a->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, push_args);
  lua_pushlightuserdata(L, ev);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    event_answer(ev, ACTOR_EPROTO, NULL, 0, lua_tostring(L, -1));
    lua_settop(L, top);
    event_free(ev);
    return;
  }
  int nargs = lua_gettop(L) - top;
  live_link(a, ev);
  lua_pushcfunction(L, traceback_msgh);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->dispatch_ref);
  lua_pushinteger(L, (lua_Integer)ev->session);
  lua_pushstring(L, ev->handler);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->done_ref);
  lua_pushlightuserdata(L, ev);
  for (int i = 1; i <= nargs; i++) lua_pushvalue(L, top + i);
  if (lua_pcall(L, 4 + nargs, 0, top + nargs + 1) != LUA_OK) {
    /* dispatch itself failed (out of memory): the event never ran */
    if (!ev->answered) {
      event_answer(ev, ACTOR_EHANDLER, NULL, 0, lua_tostring(L, -1));
      live_unlink(a, ev);
      event_free(ev);
    }
  }
  lua_settop(L, top);
}

typedef struct end_item {
  api *a;
  uint64_t session;
} end_item;

static void end_run(actor_rt *rt, void *ud) {
  end_item *it = ud;
  api *a = it->a;
  if (!rt->shutting_down && !a->closing && a->L) {
    lua_State *L = a->L;
    int top = lua_gettop(L);
    lua_pushcfunction(L, traceback_msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->finish_ref);
    lua_pushinteger(L, (lua_Integer)it->session);
    if (lua_pcall(L, 1, 0, top + 1) != LUA_OK)
      fprintf(stderr, "actor: ending session: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
  }
  free(it);
}

int actor_post(actor_runtime rt, uint64_t session, const char *handler, const void *args, size_t len,
               actor_done_fn cb, void *ud) {
  if (!handler || !*handler || (!args && len > 0)) return ACTOR_EINVAL;
  if (args) {
    size_t hdr;
    if (len == 0 || mp_check_array(args, len, &hdr) < 0) return ACTOR_EPROTO;
  }
  api_event *ev = calloc(1, sizeof *ev);
  if (!ev) return ACTOR_ENOMEM;
  ev->session = session;
  ev->cb = cb;
  ev->ud = ud;
  ev->handler = strdup(handler);
  if (args) {
    ev->args = malloc(len);
    if (ev->args) memcpy(ev->args, args, len);
    ev->len = len;
  }
  if (!ev->handler || (args && !ev->args)) {
    event_free(ev);
    return ACTOR_ENOMEM;
  }
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  int rv = ACTOR_ECLOSED;
  if (a && a->rt) {
    ev->a = a;
    rv = actor__post(a->rt, event_run, ev) == 0 ? 0 : ACTOR_ENOMEM;
  }
  pthread_mutex_unlock(&g_mu);
  if (rv != 0) event_free(ev);
  return rv;
}

int actor_session_end(actor_runtime rt, uint64_t session) {
  end_item *it = malloc(sizeof *it);
  if (!it) return ACTOR_ENOMEM;
  it->session = session;
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  int rv = ACTOR_ECLOSED;
  if (a && a->rt) {
    it->a = a;
    rv = actor__post(a->rt, end_run, it) == 0 ? 0 : ACTOR_ENOMEM;
  }
  pthread_mutex_unlock(&g_mu);
  if (rv != 0) free(it);
  return rv;
}

/* ----------------------------------------------------- the scheduler state */

/* Protected: builds the scheduler state (libraries, actor, actor.session). */
static int state_setup(lua_State *L) {
  api *a = lua_touserdata(L, 1);
  luaL_openlibs(L);
  luaL_requiref(L, "actor", luaopen_actor, 0);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "actor.runtime");
  actor_rt **u = lua_touserdata(L, -1);
  if (!u || !*u) return luaL_error(L, "the actor runtime did not start");
  a->rt = *u;
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor.session");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "dispatch");
  a->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "finish");
  a->finish_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  lua_pushcfunction(L, api_done_l);
  a->done_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* On the thread that will own the state. Returns 0 or an ACTOR_E* code. */
static int state_open(api *a) {
  a->owner = pthread_self();
  lua_State *L = luaL_newstate();
  if (!L) return ACTOR_ENOMEM;
  lua_pushcfunction(L, state_setup);
  lua_pushlightuserdata(L, a);
  int st = lua_pcall(L, 1, 0, 0);
  if (st != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    int err = st == LUA_ERRMEM ? ACTOR_ENOMEM : ACTOR_ESYSTEM;
    if (st != LUA_ERRMEM) fprintf(stderr, "actor: cannot open a runtime: %s\n", m ? m : "?");
    a->rt = NULL;
    lua_close(L);
    return err;
  }
  a->L = L;
  codec_buf_init(&a->out);
  return 0;
}

/* On the owner thread: answers every live event, closes the state (which
 * stops the pools), frees what is left. */
static void state_close(api *a) {
  lua_State *L = a->L;
  a->closing = 1;
  /* no event runs from now on, even when a parked handler is resumed */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor.session");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
    lua_getfield(L, -1, "close");
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  lua_pop(L, 1);
  for (api_event *ev = a->live; ev; ev = ev->next)
    event_answer(ev, ACTOR_ECLOSED, NULL, 0, "the runtime is closing");
  actor_cmod *mods = a->rt ? atomic_load(&a->rt->cmods) : NULL;
  if (a->rt && a->threaded && a->rt->pending_extra > 0) a->rt->pending_extra--;
  lua_close(L); /* rt_gc: pools stop, late posts are answered, rt is freed */
  a->L = NULL;
  a->rt = NULL;
  while (a->live) {
    api_event *ev = a->live;
    live_unlink(a, ev);
    event_free(ev);
  }
  while (mods) {
    actor_cmod *next = mods->next;
    free((char *)mods->name);
    free(mods);
    mods = next;
  }
  codec_buf_fini(&a->out);
}

static void *sched_main(void *arg) {
  api *a = arg;
  int err = state_open(a);
  pthread_mutex_lock(&a->mu);
  a->started = 1;
  a->start_err = err;
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
  if (err) return NULL;
  a->rt->pending_extra++; /* the loop stays up until actor_close */
  while (!a->stop) actor__step(a->rt, -1);
  state_close(a);
  return NULL;
}

static void stop_run(actor_rt *rt, void *ud) {
  (void)rt;
  api *a = ud;
  a->stop = 1;
}

static void api_free(api *a) {
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->cv);
  free(a);
}

int actor_open(actor_runtime *rtp, int flags) {
  if (!rtp || (flags != ACTOR_OPEN_HOSTED && flags != ACTOR_OPEN_THREAD)) return ACTOR_EINVAL;
  api *a = calloc(1, sizeof *a);
  if (!a) return ACTOR_ENOMEM;
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  a->threaded = flags == ACTOR_OPEN_THREAD;
  int err;
  if (a->threaded) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 4 * 1024 * 1024);
    int rv = pthread_create(&a->th, &attr, sched_main, a);
    pthread_attr_destroy(&attr);
    if (rv != 0) {
      api_free(a);
      return rv == ENOMEM || rv == EAGAIN ? ACTOR_ENOMEM : ACTOR_ESYSTEM;
    }
    pthread_mutex_lock(&a->mu);
    while (!a->started) pthread_cond_wait(&a->cv, &a->mu);
    err = a->start_err;
    pthread_mutex_unlock(&a->mu);
    if (err) {
      pthread_join(a->th, NULL);
      api_free(a);
      return err;
    }
  } else {
    err = state_open(a);
    if (err) {
      api_free(a);
      return err;
    }
  }
  pthread_mutex_lock(&g_mu);
  err = add_locked(a);
  pthread_mutex_unlock(&g_mu);
  if (err) {
    if (a->threaded) {
      actor__post(a->rt, stop_run, a);
      pthread_join(a->th, NULL);
    } else {
      state_close(a);
    }
    api_free(a);
    return err;
  }
  rtp->id = a->id;
  return 0;
}

int actor_close(actor_runtime rt) {
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  if (!a) {
    pthread_mutex_unlock(&g_mu);
    return ACTOR_ECLOSED;
  }
  int self = pthread_equal(a->owner, pthread_self());
  if ((a->threaded && self) || (!a->threaded && (!self || a->depth > 0))) {
    pthread_mutex_unlock(&g_mu);
    return ACTOR_ETHREAD;
  }
  remove_locked(a);
  pthread_mutex_unlock(&g_mu);
  if (a->threaded) {
    /* The runtime's thread lives until it sees the stop, so rt is valid
     * here. Out of memory for the stop item: retry shortly. */
    while (actor__post(a->rt, stop_run, a) != 0) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
    pthread_join(a->th, NULL);
  } else {
    state_close(a);
  }
  api_free(a);
  return 0;
}

/* ------------------------------------------------------------- commands */

typedef int (*cmd_fn)(api *a, void *arg);

typedef struct cmd {
  api *a;
  cmd_fn fn;
  void *arg;
  int rc;
  int done;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} cmd;

static void cmd_run(actor_rt *rt, void *ud) {
  cmd *c = ud;
  int rc;
  if (rt->shutting_down || c->a->closing || !c->a->L) rc = ACTOR_ECLOSED;
  else {
    c->a->depth++;
    rc = c->fn(c->a, c->arg);
    c->a->depth--;
  }
  pthread_mutex_lock(&c->mu);
  c->rc = rc;
  c->done = 1;
  pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

/* Runs fn on the scheduler thread: directly when the caller is on it,
 * else (threaded mode) posted and waited for. */
static int run_cmd(actor_runtime rt, cmd_fn fn, void *arg) {
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  if (!a || !a->rt) {
    pthread_mutex_unlock(&g_mu);
    return ACTOR_ECLOSED;
  }
  if (pthread_equal(a->owner, pthread_self())) {
    pthread_mutex_unlock(&g_mu);
    /* the owner thread: the runtime cannot close under us */
    a->depth++;
    int rc = fn(a, arg);
    a->depth--;
    return rc;
  }
  if (!a->threaded) {
    pthread_mutex_unlock(&g_mu);
    return ACTOR_ETHREAD;
  }
  cmd c = {a, fn, arg, 0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
  if (actor__post(a->rt, cmd_run, &c) != 0) {
    pthread_mutex_unlock(&g_mu);
    return ACTOR_ENOMEM;
  }
  pthread_mutex_unlock(&g_mu);
  pthread_mutex_lock(&c.mu);
  while (!c.done) pthread_cond_wait(&c.cv, &c.mu);
  int rc = c.rc;
  pthread_mutex_unlock(&c.mu);
  pthread_mutex_destroy(&c.mu);
  pthread_cond_destroy(&c.cv);
  return rc;
}

/* ------------------------------------------------------- configuration */

typedef struct pool_args {
  const char *name;
  const actor_pool_opts *o;
} pool_args;

static int pool_cfg_l(lua_State *L) {
  pool_args *pa = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "pool");
  lua_pushstring(L, pa->name);
  lua_newtable(L);
  const actor_pool_opts *o = pa->o;
  if (o) {
    if (o->threads) { lua_pushinteger(L, o->threads); lua_setfield(L, -2, "threads"); }
    if (o->backlog) { lua_pushinteger(L, o->backlog); lua_setfield(L, -2, "backlog"); }
    if (o->memory_limit) { lua_pushinteger(L, (lua_Integer)o->memory_limit); lua_setfield(L, -2, "memory_limit"); }
    if (o->timeout) { lua_pushnumber(L, o->timeout); lua_setfield(L, -2, "timeout"); }
    if (o->init) { lua_pushstring(L, o->init); lua_setfield(L, -2, "init"); }
  }
  lua_call(L, 2, 0);
  return 0;
}

static int pool_cmd(api *a, void *arg) {
  lua_State *L = a->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, pool_cfg_l);
  lua_pushlightuserdata(L, arg);
  int st = lua_pcall(L, 1, 0, 0);
  lua_settop(L, top);
  return st == LUA_OK ? 0 : st == LUA_ERRMEM ? ACTOR_ENOMEM : ACTOR_EINVAL;
}

int actor_pool_config(actor_runtime rt, const char *name, const actor_pool_opts *opts) {
  if (!name || !*name || strlen(name) >= 64) return ACTOR_EINVAL;
  if (opts && (opts->threads < 0 || opts->threads > 1024 || opts->backlog < 0 || opts->timeout < 0 ||
               opts->timeout != opts->timeout))
    return ACTOR_EINVAL;
  pool_args pa = {name, opts};
  return run_cmd(rt, pool_cmd, &pa);
}

typedef struct mod_args {
  const char *name;
  lua_CFunction open;
  int where;
} mod_args;

static int mod_cmd(api *a, void *arg) {
  mod_args *m = arg;
  if (m->where & ACTOR_MODULE_WORKERS) {
    actor_cmod *node = malloc(sizeof *node);
    char *nm = strdup(m->name);
    if (!node || !nm) {
      free(node);
      free(nm);
      return ACTOR_ENOMEM;
    }
    node->name = nm;
    node->open = m->open;
    node->next = atomic_load(&a->rt->cmods);
    atomic_store(&a->rt->cmods, node); /* only this thread writes the list */
  }
  if (m->where & ACTOR_MODULE_SCHEDULER) {
    lua_State *L = a->L;
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    if (lua_istable(L, -1)) {
      lua_pushcfunction(L, m->open);
      lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
  }
  return 0;
}

int actor_register_module(actor_runtime rt, const char *name, int (*open)(struct lua_State *L), int where) {
  if (!name || !*name || !open || where < 1 || where > 3) return ACTOR_EINVAL;
  mod_args m = {name, open, where};
  return run_cmd(rt, mod_cmd, &m);
}

static int valid_script_name(const char *s) {
  size_t n = 0;
  for (; s[n]; n++) {
    char c = s[n];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return 0;
  }
  return n > 0 && n < 64;
}

typedef struct load_args {
  const char *name;
  const char *path; /* or */
  const char *src;
  size_t len;
  char *errbuf;
  size_t errlen;
} load_args;

static int load_cmd(api *a, void *arg) {
  load_args *la = arg;
  lua_State *L = a->L;
  int top = lua_gettop(L);
  int st;
  if (la->path) {
    st = luaL_loadfilex(L, la->path, NULL);
  } else {
    char chunk[80];
    snprintf(chunk, sizeof chunk, "=%s", la->name);
    st = luaL_loadbufferx(L, la->src, la->len, chunk, NULL);
  }
  if (st != LUA_OK) {
    set_errbuf(la->errbuf, la->errlen, lua_tostring(L, -1));
    lua_settop(L, top);
    return st == LUA_ERRMEM ? ACTOR_ENOMEM : ACTOR_ESCRIPT;
  }
  int chunk = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor.session");
  st = lua_pcall(L, 1, 1, 0);
  if (st == LUA_OK) {
    lua_getfield(L, -1, "load");
    lua_pushstring(L, la->name);
    lua_pushvalue(L, chunk);
    lua_pushstring(L, la->name);
    st = lua_pcall(L, 3, 2, 0);
  }
  int rc = 0;
  if (st != LUA_OK) {
    set_errbuf(la->errbuf, la->errlen, lua_tostring(L, -1));
    rc = st == LUA_ERRMEM ? ACTOR_ENOMEM : ACTOR_ESCRIPT;
  } else if (lua_isnil(L, -2)) {
    set_errbuf(la->errbuf, la->errlen, lua_tostring(L, -1));
    rc = ACTOR_ESCRIPT;
  }
  lua_settop(L, top);
  return rc;
}

int actor_load_file(actor_runtime rt, const char *name, const char *path, char *errbuf, size_t errlen) {
  if (!name || !path || !valid_script_name(name)) {
    set_errbuf(errbuf, errlen, "invalid script name or path");
    return ACTOR_EINVAL;
  }
  load_args la = {name, path, NULL, 0, errbuf, errlen};
  int rc = run_cmd(rt, load_cmd, &la);
  if (rc == ACTOR_ECLOSED || rc == ACTOR_ETHREAD) set_errbuf(errbuf, errlen, actor_strerror(rc));
  return rc;
}

int actor_load_string(actor_runtime rt, const char *name, const char *src, size_t len, char *errbuf,
                      size_t errlen) {
  if (!name || !src || !valid_script_name(name)) {
    set_errbuf(errbuf, errlen, "invalid script name or source");
    return ACTOR_EINVAL;
  }
  load_args la = {name, NULL, src, len, errbuf, errlen};
  int rc = run_cmd(rt, load_cmd, &la);
  if (rc == ACTOR_ECLOSED || rc == ACTOR_ETHREAD) set_errbuf(errbuf, errlen, actor_strerror(rc));
  return rc;
}

/* ------------------------------------------------------- the host's loop */

/* Hosted mode, owner thread. Returns the api or NULL with *err set. */
static api *hosted_get(actor_runtime rt, int *err) {
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  pthread_mutex_unlock(&g_mu);
  if (!a) { *err = ACTOR_ECLOSED; return NULL; }
  /* a cannot be closed concurrently: only its owner thread closes it */
  if (a->threaded || !pthread_equal(a->owner, pthread_self())) { *err = ACTOR_ETHREAD; return NULL; }
  return a;
}

int actor_fd(actor_runtime rt) {
  pthread_mutex_lock(&g_mu);
  api *a = find_locked(rt.id);
  int fd = a && a->rt ? actor__poll_fd(a->rt) : -1;
  pthread_mutex_unlock(&g_mu);
  return fd;
}

int actor_step(actor_runtime rt, int timeout_ms, int *handled) {
  if (timeout_ms < -1) return ACTOR_EINVAL;
  int err = 0;
  api *a = hosted_get(rt, &err);
  if (!a) return err;
  a->depth++;
  int n = actor__step(a->rt, timeout_ms < 0 ? -1.0 : timeout_ms / 1000.0);
  a->depth--;
  if (handled) *handled = n;
  return 0;
}

int actor_timeout(actor_runtime rt, int *timeout_ms) {
  if (!timeout_ms) return ACTOR_EINVAL;
  int err = 0;
  api *a = hosted_get(rt, &err);
  if (!a) return err;
  actor_rt *r = a->rt;
  int t = -1;
  if (r->nheap > 0) {
    double d = r->heap[0]->when - actor__now();
    t = d <= 0 ? 0 : d * 1000.0 > INT_MAX - 1 ? INT_MAX - 1 : (int)(d * 1000.0) + 1;
  }
  lua_rawgeti(a->L, LUA_REGISTRYINDEX, r->ticks_ref);
  if (lua_rawlen(a->L, -1) > 0) t = 0;
  lua_pop(a->L, 1);
  pthread_mutex_lock(&r->inbox_mu);
  if (r->inbox_n > 0 || r->posts_head) t = 0;
  pthread_mutex_unlock(&r->inbox_mu);
  *timeout_ms = t;
  return 0;
}

int actor_pending(actor_runtime rt) {
  int err = 0;
  api *a = hosted_get(rt, &err);
  if (!a) return 0;
  int n = actor__pending(a->rt);
  pthread_mutex_lock(&a->rt->inbox_mu);
  if (a->rt->inbox_n > 0 || a->rt->posts_head) n++;
  pthread_mutex_unlock(&a->rt->inbox_mu);
  return n > 0 || a->live != NULL;
}
