/*
 * test_embed.c -- the public C API (actor.h) as a host uses it (cmocka).
 *
 * Linked against libactor.so only through the public header, like a host.
 * Arguments are built and results read with msgpack-c.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>

#include <actor/actor.h>

/* An actor script used by most tests. */
static const char *SCRIPT =
    "local M = {}\n"
    "function M:seq(n)\n"
    "  local last = self.last or 0\n"
    "  if n ~= last + 1 then error(('out of order: %d after %d'):format(n, last)) end\n"
    "  self.last = n\n"
    "  _TLS.count = (_TLS.count or 0) + 1\n"
    "  if n % 25 == 0 then actor.sleep(0.001) end\n"
    "  if n % 40 == 0 then\n"
    "    local ok, v = msys.runInPool('CPU', function() return _TLS.count end)\n"
    "    assert(ok and v == _TLS.count, 'pool call saw ' .. tostring(v))\n"
    "  end\n"
    "  return n, self.last\n"
    "end\n"
    "function M:echo(...) return ... end\n"
    "function M:fail(msg) error(msg) end\n"
    "function M:nap(s) actor.sleep(s) return 'woke' end\n"
    "function M:coroutine() return coroutine.create(print) end\n"
    "function M:count() self.n = (self.n or 0) + 1; return self.n, _TLS.n end\n"
    "function M:twice(x)\n"
    "  local h = require 'hostmod'\n"
    "  local ok, y = msys.runInPool('CPU', function() return require('hostmod').twice(x) end)\n"
    "  return h.twice(x), ok and y\n"
    "end\n"
    "function M:helper() return 'helper' end\n"
    "function M:method() return self:helper(), self == M end\n"
    "actor = require 'actor'\n"
    "return M\n";

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  assert_non_null(p);
  return p;
}

/* msgpack [i] */
static size_t pack_int(char *buf, int64_t v) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 1);
  msgpack_pack_int64(&pk, v);
  memcpy(buf, sb.data, sb.size);
  size_t n = sb.size;
  msgpack_sbuffer_destroy(&sb);
  return n;
}

/* Reads result #i (0-based) of a result array as an integer. */
static int64_t result_int(const actor_result *r, int i) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int64_t v = INT64_MIN;
  if (msgpack_unpack_next(&u, r->data, r->len, &off) == MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_ARRAY && (uint32_t)i < u.data.via.array.size) {
    msgpack_object o = u.data.via.array.ptr[i];
    if (o.type == MSGPACK_OBJECT_POSITIVE_INTEGER) v = (int64_t)o.via.u64;
    else if (o.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) v = o.via.i64;
  }
  msgpack_unpacked_destroy(&u);
  return v;
}

static int result_count(const actor_result *r) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int n = -1;
  if (msgpack_unpack_next(&u, r->data, r->len, &off) == MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_ARRAY)
    n = (int)u.data.via.array.size;
  msgpack_unpacked_destroy(&u);
  return n;
}

/* ------------------------------------------------ a single synchronous call */

typedef struct waitbox {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  int err;
  char msg[2048];
  char data[4096];
  size_t len;
} waitbox;

static void box_init(waitbox *b) {
  memset(b, 0, sizeof *b);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
}

static void box_fini(waitbox *b) {
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
}

static void box_cb(const actor_result *r, void *ud) {
  waitbox *b = ud;
  pthread_mutex_lock(&b->mu);
  b->done++;
  b->err = r->err;
  snprintf(b->msg, sizeof b->msg, "%s", r->message);
  b->len = r->len < sizeof b->data ? r->len : 0;
  if (r->data && b->len) memcpy(b->data, r->data, b->len);
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

static void box_wait(waitbox *b) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 20;
  pthread_mutex_lock(&b->mu);
  while (!b->done) {
    if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) != 0) break;
  }
  pthread_mutex_unlock(&b->mu);
  assert_int_equal(b->done, 1);
}

/* Posts and waits (threaded runtime). Returns the error code. */
static int call(actor_runtime rt, uint64_t s, const char *h, const void *args, size_t len, waitbox *b) {
  box_init(b);
  int rv = actor_post(rt, s, h, args, len, box_cb, b);
  if (rv != 0) return -rv;
  box_wait(b);
  return b->err;
}

static actor_runtime open_loaded(int flags) {
  actor_runtime rt;
  char err[512] = "";
  assert_int_equal(actor_open(&rt, flags), 0);
  int rv = actor_load_string(rt, "test", SCRIPT, strlen(SCRIPT), err, sizeof err);
  if (rv) fprintf(stderr, "load: %s\n", err);
  assert_int_equal(rv, 0);
  return rt;
}

/* ------------------------------------------------ 10k events, 4 threads */

#define NTHREADS 4
#define NSESSIONS 100
#define PER_SESSION 100 /* 100 sessions x 100 = 10k events */

typedef struct many {
  actor_runtime rt;
  atomic_int completions[NSESSIONS][PER_SESSION];
  atomic_int next_expected[NSESSIONS];
  atomic_int errors, disorder, total;
} many;

typedef struct many_ud {
  many *m;
  int session, n;
} many_ud;

static many_ud uds[NSESSIONS][PER_SESSION];

static void many_cb(const actor_result *r, void *ud) {
  many_ud *u = ud;
  many *m = u->m;
  atomic_fetch_add(&m->completions[u->session][u->n - 1], 1);
  if (r->err) {
    if (atomic_fetch_add(&m->errors, 1) < 3) fprintf(stderr, "event error: %s\n", r->message);
  } else if (result_int(r, 0) != u->n || result_int(r, 1) != u->n) {
    atomic_fetch_add(&m->errors, 1);
  }
  /* completions of one session arrive in posting order */
  int want = atomic_load(&m->next_expected[u->session]);
  if (want != u->n) atomic_fetch_add(&m->disorder, 1);
  atomic_store(&m->next_expected[u->session], u->n + 1);
  if (r->session != (uint64_t)(1000 + u->session)) atomic_fetch_add(&m->errors, 1);
  atomic_fetch_add(&m->total, 1);
}

typedef struct poster_arg {
  many *m;
  int index;
} poster_arg;

static void *poster(void *arg) {
  poster_arg *pa = arg;
  many *m = pa->m;
  char buf[32];
  /* each thread owns the sessions s with s % NTHREADS == index, and posts
   * their events interleaved */
  for (int n = 1; n <= PER_SESSION; n++) {
    for (int s = pa->index; s < NSESSIONS; s += NTHREADS) {
      many_ud *u = &uds[s][n - 1];
      u->m = m;
      u->session = s;
      u->n = n;
      size_t len = pack_int(buf, n);
      int rv = actor_post(m->rt, (uint64_t)(1000 + s), "seq", buf, len, many_cb, u);
      if (rv != 0) atomic_fetch_add(&m->errors, 1000000);
    }
  }
  return NULL;
}

static void run_many(int flags) {
  many *m = xmalloc(sizeof *m);
  memset(m, 0, sizeof *m);
  for (int s = 0; s < NSESSIONS; s++) atomic_store(&m->next_expected[s], 1);
  m->rt = open_loaded(flags);
  pthread_t th[NTHREADS];
  poster_arg pa[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    pa[i].m = m;
    pa[i].index = i;
    assert_int_equal(pthread_create(&th[i], NULL, poster, &pa[i]), 0);
  }
  double t0 = (double)clock() / CLOCKS_PER_SEC;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  if (flags == ACTOR_OPEN_HOSTED) {
    /* drive the loop from this thread with poll() on actor_fd() */
    int fd = actor_fd(m->rt);
    assert_true(fd >= 0);
    while (atomic_load(&m->total) < NSESSIONS * PER_SESSION) {
      int tmo = -1;
      assert_int_equal(actor_timeout(m->rt, &tmo), 0);
      if (tmo < 0 || tmo > 100) tmo = 100;
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, tmo);
      assert_int_equal(actor_step(m->rt, 0, NULL), 0);
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec > 60) break;
    }
  } else {
    while (atomic_load(&m->total) < NSESSIONS * PER_SESSION) {
      struct timespec ts = {0, 2000000};
      nanosleep(&ts, NULL);
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec > 60) break;
    }
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &now);
  double secs = (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) * 1e-9;
  fprintf(stderr, "# %s: %d events in %.3f s (%.0f events/s, cpu %.2f s)\n",
          flags == ACTOR_OPEN_HOSTED ? "hosted" : "threaded", atomic_load(&m->total), secs,
          atomic_load(&m->total) / secs, (double)clock() / CLOCKS_PER_SEC - t0);
  assert_int_equal(actor_close(m->rt), 0);
  assert_int_equal(atomic_load(&m->errors), 0);
  assert_int_equal(atomic_load(&m->disorder), 0);
  assert_int_equal(atomic_load(&m->total), NSESSIONS * PER_SESSION);
  for (int s = 0; s < NSESSIONS; s++)
    for (int n = 0; n < PER_SESSION; n++) assert_int_equal(atomic_load(&m->completions[s][n]), 1);
  free(m);
}

static void test_many_threaded(void **st) {
  (void)st;
  run_many(ACTOR_OPEN_THREAD);
}

static void test_many_hosted(void **st) {
  (void)st;
  run_many(ACTOR_OPEN_HOSTED);
}

/* ------------------------------------------------ shutdown while pending */

typedef struct counted {
  atomic_int calls, closed, ok, other;
} counted;

static void counted_cb(const actor_result *r, void *ud) {
  counted *c = ud;
  atomic_fetch_add(&c->calls, 1);
  if (r->err == ACTOR_ECLOSED) atomic_fetch_add(&c->closed, 1);
  else if (r->err == 0) atomic_fetch_add(&c->ok, 1);
  else atomic_fetch_add(&c->other, 1);
}

static void test_shutdown_pending(void **st) {
  (void)st;
  for (int mode = 0; mode < 2; mode++) {
    actor_runtime rt = open_loaded(mode ? ACTOR_OPEN_THREAD : ACTOR_OPEN_HOSTED);
    counted c;
    memset(&c, 0, sizeof c);
    char buf[32];
    size_t len = pack_int(buf, 0);
    len = 0;
    /* [0.2]: each event naps 0.2 s, so none of them finishes before close */
    const char nap[] = {(char)0x91, (char)0xcb, 0x3f, (char)0xc9, (char)0x99, (char)0x99,
                        (char)0x99, (char)0x99, (char)0x99, (char)0x9a};
    int posted = 0;
    for (int i = 0; i < 500; i++) {
      if (actor_post(rt, (uint64_t)(i % 50), "nap", nap, sizeof nap, counted_cb, &c) == 0) posted++;
    }
    (void)buf;
    (void)len;
    assert_int_equal(posted, 500);
    if (mode == 0) {
      /* hosted: let some start (and park on their timers) first */
      actor_step(rt, 0, NULL);
    } else {
      struct timespec ts = {0, 20000000};
      nanosleep(&ts, NULL);
    }
    assert_int_equal(actor_close(rt), 0);
    assert_int_equal(atomic_load(&c.calls), 500);
    assert_int_equal(atomic_load(&c.closed), 500);
    /* a closed runtime refuses everything */
    assert_int_equal(actor_post(rt, 1, "nap", nap, sizeof nap, counted_cb, &c), ACTOR_ECLOSED);
    assert_int_equal(actor_close(rt), ACTOR_ECLOSED);
    assert_int_equal(atomic_load(&c.calls), 500);
  }
}

/* A pool job running at close: its event is answered once, with ECLOSED. */
static void test_shutdown_pool_job(void **st) {
  (void)st;
  actor_runtime rt = open_loaded(ACTOR_OPEN_THREAD);
  const char *src = "return { spin = function(self) return msys.runInPool('CPU', function() "
                    "local t = os.clock() + 0.3 while os.clock() < t do end return 1 end) end }";
  assert_int_equal(actor_load_string(rt, "spin", src, strlen(src), NULL, 0), 0);
  counted c;
  memset(&c, 0, sizeof c);
  for (int i = 0; i < 8; i++) assert_int_equal(actor_post(rt, (uint64_t)i, "spin:spin", NULL, 0, counted_cb, &c), 0);
  struct timespec ts = {0, 50000000};
  nanosleep(&ts, NULL);
  assert_int_equal(actor_close(rt), 0);
  assert_int_equal(atomic_load(&c.calls), 8);
  assert_int_equal(atomic_load(&c.closed), 8);
}

/* ------------------------------------------------ bad input */

static void never_cb(const actor_result *r, void *ud) {
  (void)r;
  atomic_fetch_add((atomic_int *)ud, 1);
}

static void test_bad_input(void **st) {
  (void)st;
  actor_runtime zero = ACTOR_RUNTIME_INITIALIZER;
  actor_runtime rt;
  atomic_int never = 0;
  assert_int_equal(actor_open(NULL, ACTOR_OPEN_THREAD), ACTOR_EINVAL);
  assert_int_equal(actor_open(&rt, 42), ACTOR_EINVAL);
  assert_int_equal(actor_post(zero, 1, "echo", NULL, 0, NULL, NULL), ACTOR_ECLOSED);
  assert_int_equal(actor_close(zero), ACTOR_ECLOSED);
  assert_int_equal(actor_fd(zero), -1);
  assert_int_equal(actor_step(zero, 0, NULL), ACTOR_ECLOSED);
  assert_int_equal(actor_session_end(zero, 1), ACTOR_ECLOSED);
  assert_int_equal(actor_pool_config(zero, "X", NULL), ACTOR_ECLOSED);
  assert_int_equal(actor_load_string(zero, "x", "return {}", 9, NULL, 0), ACTOR_ECLOSED);
  assert_string_equal(actor_strerror(12345), "unknown error");
  assert_string_equal(actor_strerror(ACTOR_ECLOSED), "runtime is closed");
  for (int e = 0; e <= ACTOR_ERESULT; e++) assert_non_null(actor_strerror(e));

  rt = open_loaded(ACTOR_OPEN_THREAD);
  /* NULL and empty arguments */
  assert_int_equal(actor_post(rt, 1, NULL, NULL, 0, never_cb, &never), ACTOR_EINVAL);
  assert_int_equal(actor_post(rt, 1, "", NULL, 0, never_cb, &never), ACTOR_EINVAL);
  assert_int_equal(actor_post(rt, 1, "echo", NULL, 3, never_cb, &never), ACTOR_EINVAL);
  /* malformed msgpack */
  static const struct { const char *b; size_t n; } bad[] = {
      {"", 0},                          /* empty with a pointer */
      {"\x01", 1},                      /* not an array */
      {"\x81\x01\x02", 3},              /* a map */
      {"\x92\x01", 2},                  /* truncated array */
      {"\x91\x01\x02", 3},              /* trailing bytes */
      {"\x91\xc1", 2},                  /* reserved byte */
      {"\x91\xa5hel", 5},               /* truncated string */
      {"\xdd\xff\xff\xff\xff", 5},      /* 4G elements in 5 bytes */
      {"\x91\xdf\x7f\xff\xff\xff", 6},  /* huge nested map */
      {"\x91\xc6\xff\xff\xff\xff", 6},  /* bin32 longer than the input */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(actor_post(rt, 1, "echo", bad[i].b, bad[i].n, never_cb, &never), ACTOR_EPROTO);
  /* nested 100k deep arrays are well-formed msgpack but too deep to decode:
   * refused in the completion, not a crash */
  size_t deep_n = 100001;
  char *deep = xmalloc(deep_n + 1);
  memset(deep, 0x91, deep_n);
  deep[deep_n] = (char)0xc0;
  waitbox b;
  assert_int_equal(call(rt, 1, "echo", deep, deep_n + 1, &b), ACTOR_EPROTO);
  free(deep);
  box_fini(&b);
  /* unknown handler, unknown script: reported in the completion */
  assert_int_equal(call(rt, 1, "nosuch", NULL, 0, &b), ACTOR_ENOHANDLER);
  assert_non_null(strstr(b.msg, "nosuch"));
  box_fini(&b);
  assert_int_equal(call(rt, 1, "other:echo", NULL, 0, &b), ACTOR_ENOHANDLER);
  assert_non_null(strstr(b.msg, "no such script"));
  box_fini(&b);
  /* handler errors carry the message and a traceback */
  assert_int_equal(call(rt, 1, "fail", "\x91\xa4" "boom", 6, &b), ACTOR_EHANDLER);
  assert_non_null(strstr(b.msg, "boom"));
  assert_non_null(strstr(b.msg, "traceback"));
  box_fini(&b);
  /* results that cannot be msgpack */
  assert_int_equal(call(rt, 1, "coroutine", NULL, 0, &b), ACTOR_ERESULT);
  box_fini(&b);
  /* scripts that do not load */
  char err[256];
  assert_int_equal(actor_load_string(rt, "bad", "return {", 8, err, sizeof err), ACTOR_ESCRIPT);
  assert_non_null(strstr(err, "bad"));
  assert_int_equal(actor_load_string(rt, "bad", "return 42", 9, err, sizeof err), ACTOR_ESCRIPT);
  assert_non_null(strstr(err, "module table"));
  assert_int_equal(actor_load_string(rt, "bad", "error('nope')", 13, err, sizeof err), ACTOR_ESCRIPT);
  assert_non_null(strstr(err, "nope"));
  assert_int_equal(actor_load_file(rt, "bad", "/nonexistent/x.lua", err, sizeof err), ACTOR_ESCRIPT);
  assert_int_equal(actor_load_file(rt, "bad name", "x.lua", err, sizeof err), ACTOR_EINVAL);
  assert_int_equal(actor_load_file(rt, NULL, "x.lua", NULL, 0), ACTOR_EINVAL);
  assert_int_equal(actor_load_string(rt, "x", NULL, 0, NULL, 0), ACTOR_EINVAL);
  /* pools and modules */
  actor_pool_opts o = {0};
  o.threads = -1;
  assert_int_equal(actor_pool_config(rt, "P", &o), ACTOR_EINVAL);
  assert_int_equal(actor_pool_config(rt, NULL, NULL), ACTOR_EINVAL);
  assert_int_equal(actor_pool_config(rt, "", NULL), ACTOR_EINVAL);
  o.threads = 2;
  o.init = "/nonexistent/init.lua";
  assert_int_equal(actor_pool_config(rt, "P", &o), 0); /* init runs (and fails) in the workers */
  assert_int_equal(actor_register_module(rt, NULL, NULL, ACTOR_MODULE_ALL), ACTOR_EINVAL);
  assert_int_equal(actor_register_module(rt, "m", luaopen_base, 7), ACTOR_EINVAL);
  /* host-loop calls on a threaded runtime */
  assert_int_equal(actor_step(rt, 0, NULL), ACTOR_ETHREAD);
  assert_int_equal(actor_step(rt, -5, NULL), ACTOR_EINVAL);
  assert_int_equal(actor_close(rt), 0);
  assert_int_equal(actor_post(rt, 1, "echo", NULL, 0, never_cb, &never), ACTOR_ECLOSED);
  assert_int_equal(actor_session_end(rt, 1), ACTOR_ECLOSED);
  assert_int_equal(atomic_load(&never), 0);
}

/* Hosted runtimes answer only their own thread for loop and configuration calls. */
typedef struct other_arg {
  actor_runtime rt;
  int step, load, post, close;
} other_arg;

static void *other_thread(void *p) {
  other_arg *o = p;
  o->step = actor_step(o->rt, 0, NULL);
  o->load = actor_load_string(o->rt, "x", "return {}", 9, NULL, 0);
  o->post = actor_post(o->rt, 7, "echo", "\x91\x01", 2, NULL, NULL);
  o->close = actor_close(o->rt);
  return NULL;
}

static void test_hosted_threads(void **st) {
  (void)st;
  actor_runtime rt = open_loaded(ACTOR_OPEN_HOSTED);
  other_arg o = {rt, 0, 0, 0, 0};
  pthread_t th;
  pthread_create(&th, NULL, other_thread, &o);
  pthread_join(th, NULL);
  assert_int_equal(o.step, ACTOR_ETHREAD);
  assert_int_equal(o.load, ACTOR_ETHREAD);
  assert_int_equal(o.post, 0); /* posting is fine from anywhere */
  assert_int_equal(o.close, ACTOR_ETHREAD);
  int tmo = 5;
  assert_int_equal(actor_timeout(rt, &tmo), 0);
  assert_int_equal(tmo, 0); /* the post is waiting */
  while (actor_pending(rt)) actor_step(rt, 100, NULL);
  assert_int_equal(actor_close(rt), 0);
}

/* ------------------------------------------------ sessions, self, _TLS, modules */

static int twice(lua_State *L) {
  lua_pushinteger(L, 2 * luaL_checkinteger(L, 1));
  return 1;
}

static int luaopen_hostmod(lua_State *L) {
  static const luaL_Reg f[] = {{"twice", twice}, {NULL, NULL}};
  luaL_newlib(L, f);
  return 1;
}

static void test_sessions(void **st) {
  (void)st;
  actor_runtime rt;
  assert_int_equal(actor_open(&rt, ACTOR_OPEN_THREAD), 0);
  assert_int_equal(actor_register_module(rt, "hostmod", luaopen_hostmod, ACTOR_MODULE_ALL), 0);
  assert_int_equal(actor_load_string(rt, "test", SCRIPT, strlen(SCRIPT), NULL, 0), 0);
  const char *src = "local M = {}\n"
                    "function M:count() self.n = (self.n or 0) + 1; _TLS.n = (_TLS.n or 0) + 10; return self.n, _TLS.n end\n"
                    "function M:session_end() _G.ended = (_G.ended or 0) + 1 end\n"
                    "function M:ended() return _G.ended or 0 end\n"
                    "return M\n";
  assert_int_equal(actor_load_string(rt, "counter", src, strlen(src), NULL, 0), 0);
  waitbox b;
  /* self keeps per-session fields; _TLS is per session and shared by scripts */
  for (int i = 1; i <= 3; i++) {
    assert_int_equal(call(rt, 5, "counter:count", NULL, 0, &b), 0);
    actor_result r = {0, b.data, b.len, "", 5};
    assert_int_equal(result_int(&r, 0), i);
    assert_int_equal(result_int(&r, 1), 10 * i);
    box_fini(&b);
  }
  assert_int_equal(call(rt, 6, "counter:count", NULL, 0, &b), 0);
  actor_result r = {0, b.data, b.len, "", 6};
  assert_int_equal(result_int(&r, 0), 1);
  box_fini(&b);
  /* the other script sees the same _TLS, its own self */
  assert_int_equal(call(rt, 5, "count", NULL, 0, &b), 0);
  r.data = b.data;
  r.len = b.len;
  assert_int_equal(result_int(&r, 0), 1);
  assert_int_equal(result_int(&r, 1), 30);
  box_fini(&b);
  /* methods through self */
  assert_int_equal(call(rt, 5, "method", NULL, 0, &b), 0);
  assert_true(b.len > 8 && memcmp(b.data, "\x92\xa6helper\xc2", 9) == 0);
  box_fini(&b);
  /* ending: session_end runs, the next event starts afresh */
  assert_int_equal(actor_session_end(rt, 5), 0);
  assert_int_equal(actor_session_end(rt, 999), 0); /* unknown: nothing */
  assert_int_equal(call(rt, 5, "counter:count", NULL, 0, &b), 0);
  r.data = b.data;
  r.len = b.len;
  assert_int_equal(result_int(&r, 0), 1);
  assert_int_equal(result_int(&r, 1), 10);
  box_fini(&b);
  assert_int_equal(call(rt, 1, "counter:ended", NULL, 0, &b), 0);
  r.data = b.data;
  r.len = b.len;
  assert_int_equal(result_int(&r, 0), 1);
  box_fini(&b);
  /* a host module in the scheduler and in a pool thread */
  assert_int_equal(call(rt, 1, "twice", "\x91\x15", 2, &b), 0);
  r.data = b.data;
  r.len = b.len;
  assert_int_equal(result_int(&r, 0), 42);
  assert_int_equal(result_int(&r, 1), 42);
  box_fini(&b);
  /* echo keeps msgpack types; no results is an empty array */
  assert_int_equal(call(rt, 1, "echo", "\x93\xc0\xa2hi\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", 14, &b), 0);
  assert_int_equal(b.len, 14);
  assert_memory_equal(b.data, "\x93\xc0\xa2hi\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", 14);
  box_fini(&b);
  assert_int_equal(call(rt, 1, "echo", NULL, 0, &b), 0);
  r.data = b.data;
  r.len = b.len;
  assert_int_equal(result_count(&r), 0);
  box_fini(&b);
  /* pools from C */
  actor_pool_opts o = {0};
  o.threads = 3;
  o.timeout = 5;
  assert_int_equal(actor_pool_config(rt, "HOST", &o), 0);
  const char *p = "return { where = function(self) return msys.runInPool('HOST', function() return require('actor').pool_name end) end }";
  assert_int_equal(actor_load_string(rt, "where", p, strlen(p), NULL, 0), 0);
  assert_int_equal(call(rt, 1, "where:where", NULL, 0, &b), 0);
  assert_true(b.len >= 7 && memcmp(b.data, "\x92\xc3\xa4HOST", 7) == 0);
  box_fini(&b);
  assert_int_equal(actor_close(rt), 0);
}

/* Completions may post again; fire-and-forget posts (cb NULL) are fine. */
typedef struct chain {
  actor_runtime rt;
  atomic_int left;
} chain;

static void chain_cb(const actor_result *r, void *ud) {
  chain *c = ud;
  assert_int_equal(r->err, 0);
  if (atomic_fetch_sub(&c->left, 1) > 1) {
    assert_int_equal(actor_post(c->rt, 3, "echo", "\x91\x01", 2, chain_cb, c), 0);
    assert_int_equal(actor_post(c->rt, 4, "echo", "\x91\x01", 2, NULL, NULL), 0);
  }
}

static void test_post_from_callback(void **st) {
  (void)st;
  chain c;
  c.rt = open_loaded(ACTOR_OPEN_THREAD);
  atomic_store(&c.left, 100);
  assert_int_equal(actor_post(c.rt, 3, "echo", "\x91\x01", 2, chain_cb, &c), 0);
  for (int i = 0; i < 2000 && atomic_load(&c.left) > 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(atomic_load(&c.left), 0);
  assert_int_equal(actor_close(c.rt), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_sessions),
      cmocka_unit_test(test_hosted_threads),
      cmocka_unit_test(test_post_from_callback),
      cmocka_unit_test(test_many_threaded),
      cmocka_unit_test(test_many_hosted),
      cmocka_unit_test(test_shutdown_pending),
      cmocka_unit_test(test_shutdown_pool_job),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
