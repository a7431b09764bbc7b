/*
 * runtime.c -- the scheduler: its loop, timers, job table, pools and the
 * dispatch of jobs to workers.
 *
 * Design notes.
 * - Everything here runs on the scheduler thread except inbox_cb(), which
 *   nng runs on one of its task threads: it only appends the message to the
 *   inbox under inbox_mu and wakes the loop through the eventfd.
 * - Dispatch hands a worker at most `cap` jobs at a time, where cap is the
 *   pool's outstanding work divided by its live threads (at least 1, at most
 *   2 batches). Long jobs therefore spread over every thread (8 jobs on 2
 *   threads: 4 each), while trivial jobs travel BATCH_MAX to a message and a
 *   worker already holds its next batch when it finishes the current one.
 * - Callers are answered exactly once: a job is either answered by its reply,
 *   or abandoned (timeout, shutdown) and its late reply dropped by id.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>

#include "rt.h"

#define BATCH_MAX 256

static atomic_int rt_counter;

/* Pushes the calling OS thread's id as a string (actor.thread_id()). */
int actor__push_thread_id(lua_State *L) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lu", (unsigned long)pthread_self());
  lua_pushstring(L, buf);
  return 1;
}

double actor__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- inbox */

/* Runs on an nng task thread. Must not block or touch Lua. */
static void inbox_cb(void *arg) {
  worker *w = arg;
  actor_rt *rt = w->p->rt;
  int rv = nng_aio_result(w->raio);
  if (rv != 0) return; /* closed or stopped: do not re-arm */
  nng_msg *m = nng_aio_get_msg(w->raio);
  int wake = 0;
  pthread_mutex_lock(&rt->inbox_mu);
  if (rt->inbox_n == rt->inbox_cap) {
    int ncap = rt->inbox_cap ? rt->inbox_cap * 2 : 64;
    nng_msg **ni = realloc(rt->inbox, sizeof(*ni) * ncap);
    worker **nf = ni ? realloc(rt->inbox_from, sizeof(*nf) * ncap) : NULL;
    if (ni) rt->inbox = ni;
    if (nf) rt->inbox_from = nf;
    if (ni && nf) rt->inbox_cap = ncap;
  }
  if (rt->inbox_n < rt->inbox_cap) {
    rt->inbox[rt->inbox_n] = m;
    rt->inbox_from[rt->inbox_n] = w;
    rt->inbox_n++;
    m = NULL;
    if (!rt->inbox_signaled) rt->inbox_signaled = wake = 1;
  }
  pthread_mutex_unlock(&rt->inbox_mu);
  if (m) {
    /* Out of memory for the inbox itself: nothing sane can be done with the
     * replies; dropping them would lose callers, so retry shortly by
     * re-arming with the message still in hand is impossible. Report. */
    fprintf(stderr, "actor: out of memory queueing a reply; reply lost\n");
    nng_msg_free(m);
  }
  if (wake) actor__wake(rt);
  nng_recv_aio(w->ssock, w->raio);
}

int actor__post(actor_rt *rt, actor_post_fn fn, void *ud) {
  post_item *it = malloc(sizeof *it);
  if (!it) return ENOMEM;
  it->fn = fn;
  it->ud = ud;
  it->next = NULL;
  int wake = 0;
  pthread_mutex_lock(&rt->inbox_mu);
  if (rt->posts_tail) rt->posts_tail->next = it;
  else rt->posts_head = it;
  rt->posts_tail = it;
  if (!rt->inbox_signaled) rt->inbox_signaled = wake = 1;
  pthread_mutex_unlock(&rt->inbox_mu);
  if (wake) actor__wake(rt);
  return 0;
}

static int run_posts(actor_rt *rt) {
  pthread_mutex_lock(&rt->inbox_mu);
  post_item *it = rt->posts_head;
  rt->posts_head = rt->posts_tail = NULL;
  pthread_mutex_unlock(&rt->inbox_mu);
  int n = 0;
  while (it) {
    post_item *next = it->next;
    it->fn(rt, it->ud);
    free(it);
    it = next;
    n++;
  }
  return n;
}

/* --------------------------------------------------------------- timers */

static void heap_swap(actor_rt *rt, int a, int b) {
  timer *t = rt->heap[a];
  rt->heap[a] = rt->heap[b];
  rt->heap[b] = t;
  rt->heap[a]->heap_idx = a;
  rt->heap[b]->heap_idx = b;
}

static int timer_less(const timer *a, const timer *b) {
  return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_up(actor_rt *rt, int i) {
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (!timer_less(rt->heap[i], rt->heap[parent])) break;
    heap_swap(rt, i, parent);
    i = parent;
  }
}

static void heap_down(actor_rt *rt, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < rt->nheap && timer_less(rt->heap[l], rt->heap[m])) m = l;
    if (r < rt->nheap && timer_less(rt->heap[r], rt->heap[m])) m = r;
    if (m == i) break;
    heap_swap(rt, i, m);
    i = m;
  }
}

static int heap_push(actor_rt *rt, timer *t) {
  if (rt->nheap == rt->cap_heap) {
    int ncap = rt->cap_heap ? rt->cap_heap * 2 : 64;
    timer **nh = realloc(rt->heap, sizeof(*nh) * ncap);
    if (!nh) return -1;
    rt->heap = nh;
    rt->cap_heap = ncap;
  }
  t->heap_idx = rt->nheap;
  rt->heap[rt->nheap++] = t;
  heap_up(rt, t->heap_idx);
  return 0;
}

static void heap_remove(actor_rt *rt, timer *t) {
  int i = t->heap_idx;
  if (i < 0) return;
  int last = --rt->nheap;
  if (i != last) {
    heap_swap(rt, i, last);
    heap_down(rt, i);
    heap_up(rt, i);
  }
  t->heap_idx = -1;
}

/* Arms the timerfd at the earliest timer (or disarms it), so that the
 * descriptor hosts poll becomes readable when a timer is due. Only when
 * the earliest deadline changed: one syscall per change, not per timer. */
static void timerfd_sync(actor_rt *rt) {
  if (rt->tfd < 0) return;
  double want = rt->nheap > 0 ? rt->heap[0]->when : 0;
  if (want == rt->tfd_when) return;
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  if (want > 0) {
    its.it_value.tv_sec = (time_t)want;
    its.it_value.tv_nsec = (long)((want - (double)its.it_value.tv_sec) * 1e9);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  }
  if (timerfd_settime(rt->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0) rt->tfd_when = want;
  else rt->tfd_when = -1;
}

/* Reads an expired timerfd so it stops being readable. */
static void timerfd_clear(actor_rt *rt) {
  if (rt->tfd < 0 || rt->tfd_when == 0) return;
  uint64_t n;
  if (read(rt->tfd, &n, sizeof n) == (ssize_t)sizeof n) rt->tfd_when = -1; /* fired: re-arm */
}

int actor__poll_fd(actor_rt *rt) {
  return rt->pfd >= 0 ? rt->pfd : rt->efd;
}

void actor__wake(actor_rt *rt) {
  uint64_t one = 1;
  ssize_t n = write(rt->efd, &one, sizeof one);
  (void)n;
}

static int timer_gc(lua_State *L) {
  (void)L;
  return 0;
}

static int timer_cancel_l(lua_State *L) {
  timer *t = luaL_checkudata(L, 1, "actor.timer");
  if (t->rt && t->heap_idx >= 0) actor__timer_cancel(t->rt, t);
  return 0;
}

static int timer_active_l(lua_State *L) {
  timer *t = luaL_checkudata(L, 1, "actor.timer");
  lua_pushboolean(L, t->heap_idx >= 0);
  return 1;
}

/* Pushes a new timer userdata. Raises on memory errors only. */
timer *actor__timer_new(actor_rt *rt, lua_State *L, double after, double period, int fnidx) {
  fnidx = lua_absindex(L, fnidx);
  timer *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->heap_idx = -1;
  t->cbref = t->selfref = LUA_NOREF;
  t->rt = rt;
  if (luaL_newmetatable(L, "actor.timer")) {
    static const luaL_Reg m[] = {{"cancel", timer_cancel_l}, {"active", timer_active_l}, {"__gc", timer_gc}, {NULL, NULL}};
    luaL_setfuncs(L, m, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  if (after < 0 || after != after) after = 0;
  t->when = actor__now() + after;
  t->period = period;
  t->seq = ++rt->timer_seq;
  if (heap_push(rt, t) != 0) luaL_error(L, "out of memory arming a timer");
  if (!rt->in_step) timerfd_sync(rt); /* inside a step, its end re-arms */
  lua_pushvalue(L, fnidx);
  t->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  t->selfref = luaL_ref(L, LUA_REGISTRYINDEX);
  return t;
}

void actor__timer_cancel(actor_rt *rt, timer *t) {
  heap_remove(rt, t);
  if (!rt->in_step) timerfd_sync(rt);
  luaL_unref(rt->L, LUA_REGISTRYINDEX, t->cbref);
  luaL_unref(rt->L, LUA_REGISTRYINDEX, t->selfref);
  t->cbref = t->selfref = LUA_NOREF;
}

static void report_error(lua_State *L, const char *what) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "actor: error in %s: %s\n", what, msg ? msg : luaL_typename(L, -1));
  lua_pop(L, 1);
}

static int traceback_msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg)
    luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below nargs arguments on the stack, protected. */
static void call_protected(actor_rt *rt, int nargs, const char *what);
void actor__call_protected(actor_rt *rt, int nargs, const char *what) {
  call_protected(rt, nargs, what);
}
static void call_protected(actor_rt *rt, int nargs, const char *what) {
  lua_State *L = rt->L;
  if (rt->no_lua) { /* the state's main thread is not running: drop the call */
    lua_pop(L, nargs + 1);
    return;
  }
  if (rt->msgh > 0) { /* while draining, one handler serves every call */
    if (lua_pcall(L, nargs, 0, rt->msgh) != LUA_OK) report_error(L, what);
    return;
  }
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback_msgh);
  lua_insert(L, base);
  if (lua_pcall(L, nargs, 0, base) != LUA_OK) report_error(L, what);
  lua_remove(L, base);
}

static int fire_timers(actor_rt *rt) {
  int n = 0;
  double now = actor__now();
  lua_State *L = rt->L;
  while (rt->nheap > 0 && rt->heap[0]->when <= now) {
    timer *t = rt->heap[0];
    heap_remove(rt, t);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->cbref);
    if (t->period > 0) {
      t->when += t->period;
      if (t->when < now) t->when = now + t->period;
      t->seq = ++rt->timer_seq;
      heap_push(rt, t);
    } else {
      int cb = t->cbref, self = t->selfref;
      t->cbref = t->selfref = LUA_NOREF;
      luaL_unref(L, LUA_REGISTRYINDEX, cb);
      luaL_unref(L, LUA_REGISTRYINDEX, self);
    }
    call_protected(rt, 0, "timer callback");
    n++;
  }
  return n;
}

/* ------------------------------------------------------------ job table */

#define MAX_FREE_JOBS 4096

job *actor__job_new(actor_rt *rt, pool *p) {
  job *j;
  if (rt->free_jobs) {
    j = rt->free_jobs;
    rt->free_jobs = j->next;
    rt->nfree_jobs--;
    memset(j, 0, offsetof(job, inline_payload));
  } else {
    j = calloc(1, sizeof *j);
    if (!j) return NULL;
  }
  int slot;
  if (rt->nfree > 0) {
    slot = rt->free_slots[--rt->nfree];
  } else {
    if (rt->nslots == rt->cap_slots) {
      int ncap = rt->cap_slots ? rt->cap_slots * 2 : 256;
      job **ns = realloc(rt->slots, sizeof(*ns) * ncap);
      if (!ns) { free(j); return NULL; }
      rt->slots = ns;
      uint32_t *ng = realloc(rt->gen, sizeof(*ng) * ncap);
      if (!ng) { free(j); return NULL; }
      rt->gen = ng;
      int *nf = realloc(rt->free_slots, sizeof(*nf) * ncap);
      if (!nf) { free(j); return NULL; }
      rt->free_slots = nf;
      rt->cap_slots = ncap;
    }
    slot = rt->nslots++;
    rt->gen[slot] = 0;
  }
  rt->gen[slot]++;
  rt->slots[slot] = j;
  j->id = ((uint64_t)rt->gen[slot] << 32) | (uint32_t)slot;
  j->p = p;
  j->cbref = j->tlsref = LUA_NOREF;
  j->hot = JOB_HOT_NONE;
  return j;
}

static job *job_lookup(actor_rt *rt, uint64_t id) {
  uint32_t slot = (uint32_t)id;
  if (slot >= (uint32_t)rt->nslots) return NULL;
  job *j = rt->slots[slot];
  if (!j || j->id != id) return NULL;
  return j;
}

void actor__job_free(actor_rt *rt, job *j) {
  uint32_t slot = (uint32_t)j->id;
  if (slot < (uint32_t)rt->nslots && rt->slots[slot] == j) {
    rt->slots[slot] = NULL;
    rt->free_slots[rt->nfree++] = (int)slot;
  }
  if (rt->L) {
    luaL_unref(rt->L, LUA_REGISTRYINDEX, j->cbref);
    luaL_unref(rt->L, LUA_REGISTRYINDEX, j->tlsref);
  }
  if (j->payload != j->inline_payload) free(j->payload);
  if (rt->nfree_jobs < MAX_FREE_JOBS && !rt->closed) {
    j->next = rt->free_jobs;
    rt->free_jobs = j;
    rt->nfree_jobs++;
  } else {
    free(j);
  }
}

int actor__job_set_payload(job *j, const char *p, size_t n) {
  char *dst = j->inline_payload;
  if (n > JOB_INLINE) {
    dst = malloc(n);
    if (!dst) return -1;
  }
  memcpy(dst, p, n);
  j->payload = dst;
  j->len = n;
  return 0;
}

/* Answers a worker's nested call with one error string (status ST_ERR or
 * ST_NOPOOL). Best effort: if no message can be built, the worker's call
 * stays unanswered until shutdown closes its socket. */
static void send_nested_error(actor_rt *rt, worker *w, uint64_t id, int status, const char *msg) {
  lua_State *L = rt->L;
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  lua_pushstring(L, msg);
  codec_enc_value(e, L, -1, "error");
  lua_pop(L, 1);
  wire_hdr h = {WIRE_VERSION, MSG_NESTED_REPLY, 0, 1};
  wire_reply r = {id, (uint8_t)status, 0, 0, 0, (uint32_t)b.len, 0};
  nng_msg *m;
  if (nng_msg_alloc(&m, 0) == 0) {
    nng_msg_append(m, &h, sizeof h);
    nng_msg_append(m, &r, sizeof r);
    nng_msg_append(m, b.data, b.len);
    if (nng_sendmsg(w->ssock, m, 0) != 0) nng_msg_free(m);
  }
  codec_buf_fini(&b);
}

/* Answers a caller without a reply from a worker: (false, msg). */
static void job_answer_error(actor_rt *rt, job *j, const char *msg) {
  if (j->abandoned) return;
  j->abandoned = 1;
  rt->live_jobs--;
  if (j->kind == JOB_CALL && j->cbref != LUA_NOREF) {
    lua_State *L = rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->cbref);
    lua_pushboolean(L, 0);
    lua_pushstring(L, msg);
    if (j->hot) actor__hot_deliver(rt, j, 2);
    else call_protected(rt, 2, "completion");
  } else if (j->kind == JOB_NESTED && j->origin) {
    send_nested_error(rt, j->origin, j->origin_id, ST_ERR, msg);
  }
}

/* ---------------------------------------------------------------- pools */

pool *actor__pool_find(actor_rt *rt, const char *name, int id) {
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    if (name ? strcmp(p->name, name) == 0 : p->id == id) return p;
  }
  return NULL;
}

pool *actor__pool_create(actor_rt *rt, const char *name, int threads) {
  pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  pool **np = realloc(rt->pools, sizeof(*np) * (rt->npools + 1));
  if (!np) { free(p); return NULL; }
  rt->pools = np;
  p->rt = rt;
  p->id = rt->npools + 1;
  snprintf(p->name, sizeof p->name, "%s", name);
  p->target_threads = threads < 1 ? 1 : threads;
  p->room_waiters = LUA_NOREF;
  p->fn_cache = 256;
  p->created_at = actor__now();
  rt->pools[rt->npools++] = p;
  return p;
}

static int worker_live(const worker *w) { return w->started && !w->retiring; }

static void worker_free(worker *w) {
  if (w->raio) {
    nng_aio_stop(w->raio);
    nng_aio_free(w->raio);
  }
  nng_close(w->ssock);
  nng_close(w->wsock);
  pthread_mutex_destroy(&w->cur_mu);
  free(w);
}

/* Creates sockets and the thread. Returns 0 or an nng/errno code. */
static int worker_spawn(pool *p) {
  actor_rt *rt = p->rt;
  worker *w = calloc(1, sizeof *w);
  if (!w) return ENOMEM;
  w->p = p;
  w->memory_limit = p->memory_limit;
  pthread_mutex_init(&w->cur_mu, NULL);
  char url[128];
  static atomic_uint seq;
  snprintf(url, sizeof url, "inproc://actor/%d/%s/%u", rt->id, p->name, atomic_fetch_add(&seq, 1));
  int rv;
  if ((rv = nng_pair1_open(&w->ssock)) != 0) goto fail;
  if ((rv = nng_pair1_open(&w->wsock)) != 0) goto fail;
  nng_socket_set_int(w->ssock, NNG_OPT_SENDBUF, 64);
  nng_socket_set_int(w->wsock, NNG_OPT_SENDBUF, 64);
  nng_socket_set_int(w->ssock, NNG_OPT_RECVBUF, 64);
  nng_socket_set_int(w->wsock, NNG_OPT_RECVBUF, 64);
  if ((rv = nng_listen(w->ssock, url, NULL, 0)) != 0) goto fail;
  if ((rv = nng_dial(w->wsock, url, NULL, 0)) != 0) goto fail;
  if ((rv = nng_aio_alloc(&w->raio, inbox_cb, w)) != 0) goto fail;
  if (p->nworkers == p->cap_workers) {
    int ncap = p->cap_workers ? p->cap_workers * 2 : 8;
    worker **nw = realloc(p->workers, sizeof(*nw) * ncap);
    if (!nw) { rv = ENOMEM; goto fail; }
    p->workers = nw;
    p->cap_workers = ncap;
  }
  w->index = p->nworkers;
  if ((rv = actor__worker_start(w)) != 0) goto fail;
  w->started = 1;
  p->workers[p->nworkers++] = w;
  nng_recv_aio(w->ssock, w->raio);
  return 0;
fail:
  worker_free(w);
  return rv;
}

static void worker_send_stop(worker *w) {
  if (w->stop_sent) return;
  wire_hdr h = {WIRE_VERSION, MSG_STOP, 0, 0};
  nng_msg *m;
  if (nng_msg_alloc(&m, 0) != 0) return;
  nng_msg_append(m, &h, sizeof h);
  if (nng_sendmsg(w->ssock, m, 0) != 0) {
    nng_msg_free(m);
    return;
  }
  w->stop_sent = 1;
}

/* Joins a worker whose thread has exited (or is about to) and frees it. */
static void worker_reap(pool *p, int i) {
  worker *w = p->workers[i];
  pthread_join(w->th, NULL);
  worker_free(w);
  memmove(&p->workers[i], &p->workers[i + 1], sizeof(worker *) * (p->nworkers - i - 1));
  p->nworkers--;
  for (int k = 0; k < p->nworkers; k++) p->workers[k]->index = k;
}

static int pool_live_threads(pool *p) {
  int n = 0;
  for (int i = 0; i < p->nworkers; i++) n += worker_live(p->workers[i]);
  return n;
}

/* Starts or retires threads until the live count matches the target.
 * Retiring workers finish what they hold, then exit; no job is lost. */
static int pool_reconcile(pool *p) {
  int live = pool_live_threads(p);
  while (live < p->target_threads) {
    int rv = worker_spawn(p);
    if (rv != 0) return rv;
    live++;
  }
  for (int i = p->nworkers - 1; i >= 0 && live > p->target_threads; i--) {
    worker *w = p->workers[i];
    if (!worker_live(w)) continue;
    w->retiring = 1;
    live--;
  }
  return 0;
}

int actor__pool_resize(pool *p, int threads) {
  if (threads < 1) threads = 1;
  p->target_threads = threads;
  if (p->nworkers == 0) return 0; /* started lazily on first job */
  return pool_reconcile(p);
}

/* Retiring workers with nothing in flight get STOP; exited ones are reaped. */
static void pool_reap_retired(pool *p) {
  for (int i = p->nworkers - 1; i >= 0; i--) {
    worker *w = p->workers[i];
    if (!w->retiring) continue;
    if (w->inflight == 0 && !w->stop_sent) worker_send_stop(w);
    if (w->stop_sent && atomic_load(&w->exited) && w->inflight == 0) worker_reap(p, i);
  }
}

/* ------------------------------------------------------------- dispatch */

static void notify_room(actor_rt *rt, pool *p) {
  if (p->room_waiters == LUA_NOREF) return;
  lua_State *L = rt->L;
  while (p->backlog <= 0 || p->queued < p->backlog) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->room_waiters);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if (n == 0) { lua_pop(L, 1); break; }
    lua_rawgeti(L, -1, 1);
    /* shift the FIFO down */
    for (lua_Integer k = 1; k < n; k++) {
      lua_rawgeti(L, -2, k + 1);
      lua_rawseti(L, -3, k);
    }
    lua_pushnil(L);
    lua_rawseti(L, -3, n);
    lua_remove(L, -2);
    call_protected(rt, 0, "backlog waiter");
    /* the woken caller submits in its own time; wake one per free slot */
    if (p->backlog > 0) break;
  }
}

static int dispatch_pool(actor_rt *rt, pool *p) {
  if (!p->qhead) return 0;
  if (p->nworkers == 0 || pool_live_threads(p) < p->target_threads) {
    if (pool_reconcile(p) != 0 && pool_live_threads(p) == 0) {
      /* cannot start any thread: answer the queue */
      while (p->qhead) {
        job *j = p->qhead;
        p->qhead = j->next;
        p->queued--;
        job_answer_error(rt, j, "cannot start a thread for the pool");
        actor__job_free(rt, j);
      }
      p->qtail = NULL;
      return 0;
    }
  }
  int live = pool_live_threads(p);
  if (live == 0) return 0;
  if (p->abandoned_queued > 0) {
    /* callers that timed out before their job left: drop those jobs */
    job **pp = &p->qhead, *last = NULL;
    while (*pp) {
      job *j = *pp;
      if (j->abandoned) {
        *pp = j->next;
        p->queued--;
        actor__job_free(rt, j);
      } else {
        last = j;
        pp = &j->next;
      }
    }
    p->qtail = last;
    p->abandoned_queued = 0;
    if (!p->qhead) return 0;
  }
  int total = p->queued + p->inflight;
  int cap = (total + live - 1) / live;
  if (cap < 1) cap = 1;
  if (cap > 2 * BATCH_MAX) cap = 2 * BATCH_MAX;
  int sent = 0;
  for (int k = 0; k < p->nworkers && p->qhead; k++) {
    worker *w = p->workers[(p->rr + k) % p->nworkers];
    if (!worker_live(w)) continue;
    while (p->qhead && w->inflight < cap) {
      int room = cap - w->inflight;
      if (room > BATCH_MAX) room = BATCH_MAX;
      size_t bytes = sizeof(wire_hdr);
      int n = 0;
      for (job *j = p->qhead; j && n < room; j = j->next, n++) bytes += sizeof(wire_job) + j->len;
      nng_msg *m;
      if (nng_msg_alloc(&m, bytes) != 0) return sent;
      char *out = nng_msg_body(m);
      wire_hdr h = {WIRE_VERSION, MSG_JOBS, 0, (uint32_t)n};
      memcpy(out, &h, sizeof h);
      out += sizeof h;
      job *j = p->qhead;
      for (int i = 0; i < n; i++, j = j->next) {
        wire_job wj = {j->id, j->flags, j->timeout_ms, (uint32_t)j->len, 0};
        memcpy(out, &wj, sizeof wj);
        out += sizeof wj;
        memcpy(out, j->payload, j->len);
        out += j->len;
      }
      if (nng_sendmsg(w->ssock, m, NNG_FLAG_NONBLOCK) != 0) {
        nng_msg_free(m);
        break; /* this worker's buffer is full; try the next one */
      }
      for (int i = 0; i < n; i++) {
        j = p->qhead;
        p->qhead = j->next;
        if (j->payload != j->inline_payload) free(j->payload);
        j->payload = NULL;
        j->w = w;
        j->next = NULL;
      }
      if (!p->qhead) p->qtail = NULL;
      p->queued -= n;
      p->batches++;
      p->inflight += n;
      w->inflight += n;
      sent += n;
    }
  }
  p->rr++;
  return sent;
}

static void dispatch_all(actor_rt *rt) {
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    if (p->qhead) dispatch_pool(rt, p);
    pool_reap_retired(p);
    if (p->room_waiters != LUA_NOREF) notify_room(rt, p);
  }
}

int actor__submit(actor_rt *rt, job *j) {
  pool *p = j->p;
  if (rt->shutting_down || p->closing) return -1;
  j->t_submit = actor__now();
  if (p->qtail) p->qtail->next = j;
  else p->qhead = j;
  p->qtail = j;
  p->queued++;
  p->invocations++;
  rt->live_jobs++;
  return 0;
}

/* Answers a caller now (its timeout fired) and drops the late reply.
 * Returns 1 if the job was still waiting. */
int actor__job_abandon(actor_rt *rt, uint64_t id, const char *msg, int is_timeout) {
  job *j = job_lookup(rt, id);
  if (!j || j->abandoned) return 0;
  if (is_timeout) j->p->timeouts++;
  job_answer_error(rt, j, msg);
  if (!j->w) j->p->abandoned_queued++;
  return 1;
}

/* --------------------------------------------------------------- replies */

static void pool_account(pool *p, const wire_reply *r) {
  double s = r->wall_us * 1e-6;
  p->total_wall += s;
  p->completed++;
  uint32_t us = r->wall_us, b = 0;
  while (us > 1 && b < POOL_HIST - 1) { us >>= 1; b++; }
  p->hist[b]++;
  if (r->status == ST_ERR || r->status == ST_ACKERR) p->errors++;
}

/* Moves the _TLS copy that leads the decoded values into the caller's table:
 * the caller's table keeps its identity and gets exactly the copy's keys. */
static void merge_tls(lua_State *L, int dst, int src) {
  dst = lua_absindex(L, dst);
  src = lua_absindex(L, src);
  if (!lua_istable(L, dst) || !lua_istable(L, src)) return;
  /* remove keys the closure cleared */
  lua_pushnil(L);
  while (lua_next(L, dst)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawget(L, src);
    int gone = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (gone) {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, dst); /* clearing an existing field during next is allowed */
    }
  }
  lua_pushnil(L);
  while (lua_next(L, src)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, dst);
  }
}

static void forward_nested(actor_rt *rt, job *j, const wire_reply *r, const char *payload) {
  wire_hdr h = {WIRE_VERSION, MSG_NESTED_REPLY, 0, 1};
  wire_reply fr = *r;
  fr.id = j->origin_id;
  nng_msg *m;
  if (nng_msg_alloc(&m, sizeof h + sizeof fr + r->len) != 0) return;
  char *o = nng_msg_body(m);
  memcpy(o, &h, sizeof h);
  memcpy(o + sizeof h, &fr, sizeof fr);
  memcpy(o + sizeof h + sizeof fr, payload, r->len);
  if (nng_sendmsg(j->origin->ssock, m, 0) != 0) nng_msg_free(m);
  (void)rt;
}

static void deliver(actor_rt *rt, job *j, const wire_reply *r, const char *payload) {
  lua_State *L = rt->L;
  if (j->kind == JOB_NESTED) {
    forward_nested(rt, j, r, payload);
    return;
  }
  if (j->kind != JOB_CALL || j->cbref == LUA_NOREF) return;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->cbref);
  codec_dec_opts o = {1, {0, 0}};
  codec_limits_default(&o.lim);
  o.lim.max_size = (size_t)-1;
  if (r->status == ST_SHUTDOWN) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "pool %s is shutting down", j->p->name);
  } else {
    lua_pushboolean(L, r->status == ST_OK);
    int n = codec_decode(L, payload, r->len, &o);
    if (n < 0) {
      /* stack: cb, ok, error string -> cb, false, error string */
      lua_pushboolean(L, 0);
      lua_replace(L, top + 2);
    } else if ((r->flags & JOB_F_TLS) && n >= 1) {
      if (j->tlsref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, j->tlsref);
        merge_tls(L, -1, top + 3);
        lua_pop(L, 1);
      }
      lua_remove(L, top + 3);
    }
  }
  if (j->hot) actor__hot_deliver(rt, j, lua_gettop(L) - top - 1);
  else call_protected(rt, lua_gettop(L) - top - 1, "completion");
  lua_settop(L, top);
}

static void process_replies(actor_rt *rt, worker *w, const char *body, size_t len) {
  size_t off = sizeof(wire_hdr);
  wire_hdr h;
  memcpy(&h, body, sizeof h);
  for (uint32_t i = 0; i < h.count; i++) {
    wire_reply r;
    if (off + sizeof r > len) break;
    memcpy(&r, body + off, sizeof r);
    off += sizeof r;
    if (off + r.len > len) break;
    const char *payload = body + off;
    off += r.len;
    job *j = job_lookup(rt, r.id);
    if (!j) continue;
    pool *p = j->p;
    if (j->w) {
      j->w->inflight--;
      p->inflight--;
    }
    pool_account(p, &r);
    if (!j->abandoned) {
      j->abandoned = 1;
      rt->live_jobs--;
      deliver(rt, j, &r, payload);
    }
    actor__job_free(rt, j);
  }
  (void)w;
}

/* A worker asks for a sync call into another pool. */
static void process_nested(actor_rt *rt, worker *w, const char *body, size_t len) {
  lua_State *L = rt->L;
  size_t off = sizeof(wire_hdr);
  wire_job wj;
  if (off + sizeof wj > len) return;
  memcpy(&wj, body + off, sizeof wj);
  off += sizeof wj;
  if (off + wj.len > len) return;
  const char *payload = body + off;
  /* the payload leads with the pool name (a string) */
  size_t pos = 0;
  codec_dec_opts o = {0, {0, 0}};
  codec_limits_default(&o.lim);
  int top = lua_gettop(L);
  if (codec_decode_one(L, payload, wj.len, &pos, &o) != 1) {
    lua_settop(L, top);
    return;
  }
  pool *p = NULL;
  if (lua_type(L, -1) == LUA_TSTRING) p = actor__pool_find(rt, lua_tostring(L, -1), 0);
  else if (lua_isinteger(L, -1)) p = actor__pool_find(rt, NULL, (int)lua_tointeger(L, -1));
  if (!p) {
    const char *nm = lua_tostring(L, -1);
    send_nested_error(rt, w, wj.id, ST_NOPOOL, lua_pushfstring(L, "no such pool: %s", nm ? nm : "?"));
    lua_settop(L, top);
    return;
  }
  lua_settop(L, top);
  job *j = actor__job_new(rt, p);
  if (!j) return;
  j->kind = JOB_NESTED;
  j->origin = w;
  j->origin_id = wj.id;
  j->flags = wj.flags;
  j->timeout_ms = wj.timeout_ms;
  if (actor__job_set_payload(j, payload + pos, wj.len - pos) != 0) { actor__job_free(rt, j); return; }
  if (actor__submit(rt, j) != 0) {
    job_answer_error(rt, j, "pool is shutting down");
    actor__job_free(rt, j);
  }
}

static int drain_inbox(actor_rt *rt) {
  pthread_mutex_lock(&rt->inbox_mu);
  int n = rt->inbox_n;
  if (n > rt->drain_cap) {
    nng_msg **nd = realloc(rt->drain, sizeof(*nd) * n);
    worker **nf = nd ? realloc(rt->drain_from, sizeof(*nf) * n) : NULL;
    if (nd) rt->drain = nd;
    if (nf) rt->drain_from = nf;
    if (!nd || !nf) { pthread_mutex_unlock(&rt->inbox_mu); return 0; }
    rt->drain_cap = n;
  }
  if (n > 0) {
    memcpy(rt->drain, rt->inbox, sizeof(nng_msg *) * n);
    memcpy(rt->drain_from, rt->inbox_from, sizeof(worker *) * n);
  }
  rt->inbox_n = 0;
  rt->inbox_signaled = 0;
  pthread_mutex_unlock(&rt->inbox_mu);
  int saved_msgh = rt->msgh;
  lua_pushcfunction(rt->L, traceback_msgh);
  rt->msgh = lua_gettop(rt->L);
  for (int i = 0; i < n; i++) {
    nng_msg *m = rt->drain[i];
    const char *body = nng_msg_body(m);
    size_t len = nng_msg_len(m);
    wire_hdr h;
    if (len >= sizeof h) {
      memcpy(&h, body, sizeof h);
      if (h.version == WIRE_VERSION && h.type == MSG_REPLIES) process_replies(rt, rt->drain_from[i], body, len);
      else if (h.version == WIRE_VERSION && h.type == MSG_NESTED_CALL) process_nested(rt, rt->drain_from[i], body, len);
    }
    nng_msg_free(m);
  }
  lua_settop(rt->L, rt->msgh - 1);
  rt->msgh = saved_msgh;
  return n + run_posts(rt);
}

/* ------------------------------------------------------------------ loop */

static void run_ticks(actor_rt *rt) {
  lua_State *L = rt->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ticks_ref);
  if (lua_rawlen(L, -1) == 0) { lua_pop(L, 1); return; }
  /* swap in a fresh queue so ticks queued now run next time */
  lua_newtable(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, rt->ticks_ref);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    call_protected(rt, 0, "next-tick function");
  }
  lua_pop(L, 1);
}

static int ticks_pending(actor_rt *rt) {
  lua_rawgeti(rt->L, LUA_REGISTRYINDEX, rt->ticks_ref);
  int n = (int)lua_rawlen(rt->L, -1);
  lua_pop(rt->L, 1);
  return n;
}

int actor__pending(actor_rt *rt) {
  int n = rt->live_jobs + rt->nheap + rt->pending_extra + ticks_pending(rt);
  return n;
}

/* One turn of the loop. timeout < 0 waits as long as something is pending.
 * Returns the number of events handled. */
int actor__step(actor_rt *rt, double timeout) {
  int events = 0;
  rt->in_step++;
  run_ticks(rt);
  dispatch_all(rt);
  double wait = timeout;
  pthread_mutex_lock(&rt->inbox_mu);
  int ready = rt->inbox_n > 0 || rt->posts_head != NULL;
  pthread_mutex_unlock(&rt->inbox_mu);
  if (ready || ticks_pending(rt)) wait = 0;
  else if (rt->nheap > 0) {
    double d = rt->heap[0]->when - actor__now();
    if (d < 0) d = 0;
    if (wait < 0 || d < wait) wait = d;
  }
  if (wait < 0 && rt->live_jobs == 0 && rt->pending_extra == 0) wait = 0;
  struct pollfd pfd = {rt->efd, POLLIN, 0};
  struct timespec ts, *tsp = NULL;
  if (wait >= 0) {
    ts.tv_sec = (time_t)wait;
    ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
    tsp = &ts;
  }
  if (!ready) {
    int rv = ppoll(&pfd, 1, tsp, NULL);
    if (rv > 0) ready = 1;
  }
  if (ready) {
    uint64_t v;
    ssize_t r = read(rt->efd, &v, sizeof v);
    (void)r;
    events += drain_inbox(rt);
  }
  timerfd_clear(rt);
  events += fire_timers(rt);
  dispatch_all(rt);
  if (--rt->in_step == 0) timerfd_sync(rt);
  return events;
}

/* ------------------------------------------------------------- figures */

static double hist_quantile(const pool *p, double q) {
  uint64_t total = 0;
  for (int i = 0; i < POOL_HIST; i++) total += p->hist[i];
  if (total == 0) return 0;
  uint64_t want = (uint64_t)ceil(q * (double)total), acc = 0;
  for (int i = 0; i < POOL_HIST; i++) {
    acc += p->hist[i];
    if (acc >= want) return (double)(1ull << i) / 1000.0; /* bucket upper bound, ms */
  }
  return 0;
}

/* Pushes a table of the pool's figures (Momentum's stat fields and ours). */
void actor__pool_stat(actor_rt *rt, pool *p, lua_State *L) {
  (void)rt;
  double now = actor__now();
  double elapsed = now - p->created_at;
  int busy = 0, live = 0;
  for (int i = 0; i < p->nworkers; i++) {
    busy += atomic_load(&p->workers[i]->busy);
    live += worker_live(p->workers[i]);
  }
  int threads = p->nworkers ? live : p->target_threads;
  double avg_conc = elapsed > 0 ? p->total_wall / elapsed : 0;
  lua_createtable(L, 0, 20);
  lua_pushstring(L, p->name); lua_setfield(L, -2, "name");
  lua_pushinteger(L, p->id); lua_setfield(L, -2, "id");
  lua_pushinteger(L, (lua_Integer)p->invocations); lua_setfield(L, -2, "invocations");
  lua_pushnumber(L, avg_conc); lua_setfield(L, -2, "avg_concurrency");
  lua_pushnumber(L, threads ? avg_conc / threads : 0); lua_setfield(L, -2, "saturation");
  lua_pushnumber(L, p->completed ? p->total_wall / (double)p->completed : 0);
  lua_setfield(L, -2, "avg_wallclock_time_per_op");
  lua_pushinteger(L, p->queued); lua_setfield(L, -2, "queue_sz");
  lua_pushinteger(L, threads); lua_setfield(L, -2, "num_threads");
  lua_pushinteger(L, busy); lua_setfield(L, -2, "num_active_threads");
  lua_pushinteger(L, p->queued); lua_setfield(L, -2, "job_num_queued");
  lua_pushinteger(L, p->inflight); lua_setfield(L, -2, "job_num_running");
  lua_pushinteger(L, (lua_Integer)p->errors); lua_setfield(L, -2, "errors");
  lua_pushinteger(L, (lua_Integer)p->timeouts); lua_setfield(L, -2, "timeouts");
  lua_pushinteger(L, (lua_Integer)p->completed); lua_setfield(L, -2, "completed");
  lua_pushinteger(L, (lua_Integer)p->batches); lua_setfield(L, -2, "batches");
  lua_pushnumber(L, hist_quantile(p, 0.5)); lua_setfield(L, -2, "p50_ms");
  lua_pushnumber(L, hist_quantile(p, 0.99)); lua_setfield(L, -2, "p99_ms");
  lua_pushnumber(L, p->completed ? 1000.0 * p->total_wall / (double)p->completed : 0);
  lua_setfield(L, -2, "avg_ms");
  lua_pushinteger(L, p->backlog); lua_setfield(L, -2, "backlog");
  lua_pushnumber(L, p->timeout); lua_setfield(L, -2, "timeout");
  lua_pushinteger(L, (lua_Integer)p->memory_limit); lua_setfield(L, -2, "memory_limit");
}

/* ------------------------------------------------------ open / shutdown */

actor_rt *actor__rt_open(lua_State *L, int *err) {
  actor_rt *rt = calloc(1, sizeof *rt);
  if (!rt) { *err = ENOMEM; return NULL; }
  rt->L = L;
  rt->owner = pthread_self();
  rt->id = atomic_fetch_add(&rt_counter, 1) + 1;
  rt->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (rt->efd < 0) { *err = errno; free(rt); return NULL; }
  /* What hosts poll: one epoll descriptor over the eventfd and a timerfd.
   * Without them (no such syscalls) actor.fd() falls back to the eventfd
   * and hosts rely on actor.timeout() for timers. */
  rt->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  rt->pfd = rt->tfd >= 0 ? epoll_create1(EPOLL_CLOEXEC) : -1;
  if (rt->pfd >= 0) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = rt->efd;
    int ok = epoll_ctl(rt->pfd, EPOLL_CTL_ADD, rt->efd, &ev) == 0;
    ev.data.fd = rt->tfd;
    ok = ok && epoll_ctl(rt->pfd, EPOLL_CTL_ADD, rt->tfd, &ev) == 0;
    if (!ok) { close(rt->pfd); rt->pfd = -1; }
  }
  if (rt->pfd < 0 && rt->tfd >= 0) { close(rt->tfd); rt->tfd = -1; }
  pthread_mutex_init(&rt->inbox_mu, NULL);
  rt->grace = 2.0;
  rt->started_at = actor__now();
  codec_buf_init(&rt->encbuf);
  lua_newtable(L);
  rt->ticks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return rt;
}

/* Stops every pool: queued jobs are answered at once, running ones get the
 * grace period, then every caller still waiting is answered, every thread
 * joined and every socket closed. Idempotent. */
void actor__shutdown(actor_rt *rt) {
  if (rt->shutting_down) return;
  if (actor__control_close) actor__control_close(rt);
  rt->shutting_down = 1;
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    p->closing = 1;
    while (p->qhead) {
      job *j = p->qhead;
      p->qhead = j->next;
      p->queued--;
      char msg[128];
      snprintf(msg, sizeof msg, "pool %s is shutting down", p->name);
      job_answer_error(rt, j, msg);
      actor__job_free(rt, j);
    }
    p->qtail = NULL;
    for (int k = 0; k < p->nworkers; k++) {
      atomic_store(&p->workers[k]->stopping, 1);
      worker_send_stop(p->workers[k]);
    }
  }
  /* Let running jobs finish within the grace period; their replies are
   * delivered as usual. */
  double deadline = actor__now() + rt->grace;
  for (;;) {
    int inflight = 0;
    for (int i = 0; i < rt->npools; i++) inflight += rt->pools[i]->inflight;
    if (inflight == 0 || actor__now() >= deadline) break;
    actor__step(rt, 0.01);
  }
  /* Interrupt Lua still running after the grace, answer everyone left. */
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    for (int k = 0; k < p->nworkers; k++) {
      worker *w = p->workers[k];
      if (w->inflight > 0 || atomic_load(&w->busy)) actor__worker_interrupt(w);
    }
  }
  for (int s = 0; s < rt->nslots; s++) {
    job *j = rt->slots[s];
    if (!j) continue;
    char msg[128];
    snprintf(msg, sizeof msg, "pool %s is shutting down", j->p->name);
    job_answer_error(rt, j, msg);
  }
  /* Every caller is answered: forget which worker holds which job, so the
   * replies drained below never touch a worker freed by the joins. */
  for (int s = 0; s < rt->nslots; s++) {
    if (rt->slots[s]) {
      rt->slots[s]->w = NULL;
      rt->slots[s]->origin = NULL;
    }
  }
  /* Join threads. A thread stuck in C past the grace is waited for a little
   * longer, then left detached: its state cannot be closed from here. */
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    while (p->nworkers > 0) {
      worker *w = p->workers[p->nworkers - 1];
      double until = actor__now() + 5.0;
      while (!atomic_load(&w->exited) && actor__now() < until) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
      if (atomic_load(&w->exited)) {
        worker_reap(p, p->nworkers - 1);
      } else {
        fprintf(stderr, "actor: a thread of pool %s did not stop; leaving it detached\n", p->name);
        pthread_detach(w->th);
        p->nworkers--;
      }
    }
  }
  /* Replies that arrived after the answers above are dropped with the jobs. */
  drain_inbox(rt);
  for (int s = 0; s < rt->nslots; s++)
    if (rt->slots[s]) actor__job_free(rt, rt->slots[s]);
}

void actor__rt_close(actor_rt *rt) {
  if (!rt || rt->closed) return;
  actor__shutdown(rt);
  rt->closed = 1;
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    free(p->workers);
    free(p->init);
    for (int k = 0; k < p->npreload; k++) free(p->preload[k]);
    free(p->preload);
    free(p);
  }
  free(rt->pools);
  for (int i = 0; i < rt->nheap; i++) rt->heap[i]->heap_idx = -1;
  free(rt->heap);
  free(rt->slots);
  free(rt->gen);
  free(rt->free_slots);
  for (int i = 0; i < rt->inbox_n; i++) nng_msg_free(rt->inbox[i]);
  run_posts(rt); /* posted work sees shutting_down and answers with an error */
  free(rt->inbox);
  free(rt->inbox_from);
  free(rt->drain);
  free(rt->drain_from);
  codec_buf_fini(&rt->encbuf);
  while (rt->free_jobs) {
    job *j = rt->free_jobs;
    rt->free_jobs = j->next;
    free(j);
  }
  close(rt->efd);
  if (rt->pfd >= 0) close(rt->pfd);
  if (rt->tfd >= 0) close(rt->tfd);
  pthread_mutex_destroy(&rt->inbox_mu);
  free(rt);
}
