/*
 * rt.h -- internal structures shared by the scheduler, the pools and the
 * Lua bindings. Not installed.
 *
 * Design notes.
 * - One actor_rt per scheduler state. Every field without "atomic" or
 *   "inbox_mu" in its comment is touched by the scheduler thread only.
 * - A pool owns N workers. Each worker is one OS thread that creates, uses
 *   and closes its own lua_State. Scheduler and worker talk over one nng
 *   pair1 socket pair on inproc://actor/<rt>/<pool>/<worker>; only bytes
 *   (nng_msg) cross, never a lua_State or a Lua value.
 * - Jobs wait in the pool's FIFO on the scheduler until dispatch hands them
 *   to a worker in batches (several jobs per nng message). A worker replies
 *   in batches too, flushing early when jobs take long, so a caller never
 *   waits for its neighbours' work.
 * - nng aio callbacks (on nng's threads) only append the message to the
 *   inbox under inbox_mu and write the eventfd. The scheduler drains the
 *   inbox from its loop and resumes callers there.
 * - A job is found from its reply by id: the low 32 bits index a slot
 *   table, the high 32 bits are a generation, so a stale reply (after a
 *   timeout) never matches a reused slot.
 *
 * Lock order: inbox_mu is a leaf; nothing else is locked while holding it.
 */
#ifndef ACTOR_RT_H
#define ACTOR_RT_H

#include <lua.h>
#include <nng/nng.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "codec.h"

#define WIRE_VERSION 1

enum wire_type {
  MSG_JOBS = 1,         /* scheduler -> worker: a batch of jobs */
  MSG_STOP = 2,         /* scheduler -> worker: exit after this */
  MSG_REPLIES = 3,      /* worker -> scheduler: a batch of replies */
  MSG_NESTED_CALL = 4,  /* worker -> scheduler: a sync call made in a pool */
  MSG_NESTED_REPLY = 5, /* scheduler -> worker: the reply to it */
  MSG_GC = 6,           /* scheduler -> worker: full collection (control.c) */
};

/* Every message starts with this header; records follow back to back.
 * Fields are host-endian: the transport is in-process only. */
typedef struct wire_hdr {
  uint8_t version;
  uint8_t type;
  uint16_t reserved;
  uint32_t count;
} wire_hdr;

typedef struct wire_job {
  uint64_t id;
  uint32_t flags;      /* JOB_F_* */
  uint32_t timeout_ms; /* 0: none */
  uint32_t len;        /* payload bytes that follow */
  uint32_t reserved;
} wire_job;

/* MSG_GC body after the header: the worker collects its state, then calls
 * done(ud, bytes before, bytes after) on its own thread, exactly once. */
typedef struct wire_gc {
  void (*done)(void *ud, size_t before, size_t after);
  void *ud;
} wire_gc;

typedef struct wire_reply {
  uint64_t id;
  uint8_t status; /* ST_* */
  uint8_t flags;  /* JOB_F_TLS if a _TLS table leads the payload */
  uint16_t reserved;
  uint32_t wall_us; /* time the closure ran */
  uint32_t len;
  uint32_t reserved2;
} wire_reply;

enum job_flags {
  JOB_F_TLS = 1,       /* payload leads with a copy of the caller's _TLS */
  JOB_F_WCOMPLETE = 2, /* then a completion run on the worker */
  JOB_F_NOREPLY = 4,   /* fire and forget: the reply is an ack */
};

enum reply_status {
  ST_OK = 0,
  ST_ERR = 1,      /* payload: message [, traceback] */
  ST_ACK = 2,      /* fire and forget finished (or its completion ran) */
  ST_SHUTDOWN = 3, /* not run: the pool is stopping */
  ST_NOPOOL = 4,   /* nested call to an unknown pool */
  ST_ACKERR = 5,   /* fire and forget raised an error (counted) */
};

typedef struct actor_rt actor_rt;
typedef struct pool pool;
typedef struct worker worker;
typedef struct job job;

enum job_kind {
  JOB_CALL = 0,   /* reply goes to a Lua callback (sync callers, SCHED completions) */
  JOB_CAST = 1,   /* nothing to deliver */
  JOB_NESTED = 2, /* reply is forwarded to the worker that asked */
};

#define JOB_INLINE 192

/* How a JOB_CALL's answer reaches Lua (bindings/lhot.c). */
enum job_hot {
  JOB_HOT_NONE = 0,   /* cbref is a function(ok, ...), called protected */
  JOB_HOT_SCHED = 1,  /* cbref is a scheduler completion: run in a pooled runner */
  JOB_HOT_RESUME = 2, /* cbref is a runner's thread parked in a sync call: resume it */
};

struct job {
  uint64_t id;
  pool *p;
  worker *w;      /* worker it was sent to, once sent */
  int kind;
  int cbref;      /* registry ref of function(ok, ...); with `hot`, of the
                     completion (JOB_HOT_SCHED) or the parked thread
                     (JOB_HOT_RESUME) */
  int tlsref;     /* registry ref of the caller's _TLS table, or LUA_NOREF */
  uint8_t hot;    /* JOB_HOT_*: delivered by bindings/lhot.c, not by a callback */
  uint8_t hotcfg; /* lhot.c: which util.async instance the runner belongs to */
  uint32_t flags;
  uint32_t timeout_ms;
  char *payload;  /* malloc'ed encoding; freed once sent */
  size_t len;
  double t_submit;
  int abandoned;  /* caller already answered (timeout/shutdown); drop the reply */
  worker *origin; /* JOB_NESTED: who asked */
  uint64_t origin_id;
  job *next;      /* pool FIFO link; free-list link when recycled */
  char inline_payload[JOB_INLINE]; /* small payloads live here, not malloc'ed */
};

/* Worker figures read by the control socket: atomics, written by the worker. */
struct worker {
  pool *p;
  int index;
  nng_socket ssock; /* scheduler side */
  nng_socket wsock; /* worker side; used by the worker thread only */
  nng_aio *raio;    /* scheduler-side receive */
  pthread_t th;
  int started;      /* thread created */
  int inflight;     /* jobs sent and not replied (scheduler thread) */
  int retiring;     /* no new jobs; stop once drained (scheduler thread) */
  int stop_sent;
  atomic_int exited;
  atomic_int abort_now;    /* interrupt running Lua at the next hook */
  atomic_int stopping;     /* answer remaining batch with ST_SHUTDOWN */
  atomic_int busy;
  atomic_ullong jobs_done;
  atomic_size_t mem_used;
  atomic_llong job_started_us;
  char cur_fn[128];        /* source of the running function; cur_mu */
  int cur_line;            /* its first line; cur_mu */
  const void *cur_ptr;     /* worker thread only: function last recorded */
  pthread_mutex_t cur_mu;
  uint64_t nested_seq;     /* worker thread */
  size_t memory_limit;     /* copied at start */
  lua_State *L;            /* worker thread only; stored for debug asserts */
};

#define POOL_HIST 64

struct pool {
  actor_rt *rt;
  int id;
  char name[64];
  int target_threads;
  worker **workers;
  int nworkers, cap_workers;
  unsigned rr; /* round-robin start */
  job *qhead, *qtail;
  int queued;
  int inflight;
  int abandoned_queued; /* abandoned jobs still in the FIFO */
  int backlog;          /* 0: unlimited */
  size_t memory_limit;  /* 0: unlimited */
  int fn_cache;         /* loaded functions cached per worker; 0: off */
  double timeout;       /* seconds, 0: none */
  char *init;           /* module name or file run in each worker state */
  char **preload;       /* C module names (resolved with package.cpath) */
  int npreload;
  int room_waiters;     /* registry ref to a Lua table (FIFO) of callbacks */
  int closing;
  /* figures */
  uint64_t invocations, errors, timeouts, completed;
  uint64_t batches; /* MSG_JOBS messages sent (jobs per message = dispatched / batches) */
  double total_wall;
  double created_at;
  double busy_integral; /* sum over time of busy threads, for avg_concurrency */
  double last_sample;
  uint32_t hist[POOL_HIST]; /* log2 buckets of wall time in µs */
};

/* A function posted from any thread to run on the scheduler thread. */
typedef void (*actor_post_fn)(actor_rt *rt, void *ud);
typedef struct post_item {
  actor_post_fn fn;
  void *ud;
  struct post_item *next;
} post_item;

/* api.c: a C module a host registered for every worker state. The list
 * only grows while the runtime lives; a node is immutable once published,
 * so pool threads read it without a lock. api.c frees it after close. */
typedef struct actor_cmod {
  const char *name;
  lua_CFunction open;
  struct actor_cmod *next;
} actor_cmod;

typedef struct timer timer;
struct timer {
  double when;
  double period; /* 0: one shot */
  uint64_t seq;
  int heap_idx;  /* -1 when not armed */
  int cbref;     /* registry ref of the callback */
  int selfref;   /* anchors the userdata while armed */
  actor_rt *rt;
};

struct actor_rt {
  lua_State *L; /* scheduler state */
  pthread_t owner;
  int id;
  int efd;      /* eventfd: replies and posts wake the loop */
  int tfd;      /* timerfd armed at the earliest timer, or -1 */
  int pfd;      /* epoll of efd and tfd: what actor.fd() gives hosts, or -1 */
  double tfd_when; /* deadline tfd is armed at; 0 disarmed, -1 unknown */
  int in_step;  /* actor__step is running (timer changes re-arm at its end) */
  pthread_mutex_t inbox_mu;
  nng_msg **inbox; /* inbox_mu */
  worker **inbox_from;
  int inbox_n, inbox_cap; /* inbox_mu */
  int inbox_signaled;     /* inbox_mu */
  post_item *posts_head, *posts_tail; /* inbox_mu */
  nng_msg **drain;
  worker **drain_from;
  int drain_cap;
  pool **pools;
  int npools;
  job **slots;
  uint32_t *gen;
  int nslots, cap_slots;
  int *free_slots;
  int nfree;
  int live_jobs; /* jobs whose caller still waits for an answer */
  timer **heap;
  int nheap, cap_heap;
  uint64_t timer_seq;
  int ticks_ref;   /* registry ref: Lua table of next-tick functions */
  int pending_extra; /* services etc. that keep the loop alive */
  int shutting_down;
  int closed;
  double grace;    /* seconds running jobs get at shutdown */
  void *control;   /* control.c's server, if any */
  double started_at;
  codec_buf encbuf;   /* payload being encoded by submit */
  job *free_jobs;     /* recycled job records */
  int nfree_jobs;
  int msgh;           /* stack index of the message handler while draining */
  int no_lua;         /* closing from inside a coroutine: run no Lua callbacks */
  int traceback_ref;
  int hot_ref;        /* lhot.c: registry ref of its configurations; 0 until set */
  _Atomic(actor_cmod *) cmods; /* api.c: host C modules for worker states */
};

/* runtime.c */
/* Queues fn(rt, ud) to run on the scheduler thread during its next loop
 * turn, and wakes the loop. Safe from any thread, including nng callbacks.
 * Returns 0, or ENOMEM (fn will not run). If the runtime closes first, fn
 * runs during the close with rt->shutting_down set, so ud is never leaked. */
int actor__post(actor_rt *rt, actor_post_fn fn, void *ud);
double actor__now(void);
int actor__push_thread_id(lua_State *L);
actor_rt *actor__rt_open(lua_State *L, int *err);
void actor__rt_close(actor_rt *rt);
pool *actor__pool_find(actor_rt *rt, const char *name, int id);
pool *actor__pool_create(actor_rt *rt, const char *name, int threads);
int actor__pool_resize(pool *p, int threads);
int actor__submit(actor_rt *rt, job *j);
int actor__step(actor_rt *rt, double timeout);
int actor__pending(actor_rt *rt);
/* The descriptor a host polls: readable when replies or posts wait, when a
 * timer is due, or when a next-tick function is queued. */
int actor__poll_fd(actor_rt *rt);
/* Wakes the loop (writes the eventfd). Any thread. */
void actor__wake(actor_rt *rt);
void actor__pool_stat(actor_rt *rt, pool *p, lua_State *L);
timer *actor__timer_new(actor_rt *rt, lua_State *L, double after, double period, int fnidx);
void actor__timer_cancel(actor_rt *rt, timer *t);
void actor__shutdown(actor_rt *rt);
job *actor__job_new(actor_rt *rt, pool *p);
void actor__job_free(actor_rt *rt, job *j);
/* Gives a job its payload (copied from p[0..n)). Returns 0 or -1 (ENOMEM). */
int actor__job_set_payload(job *j, const char *p, size_t n);
int actor__job_abandon(actor_rt *rt, uint64_t id, const char *msg, int is_timeout);

/* worker.c */
void *actor__worker_main(void *arg);
int actor__worker_start(worker *w);
void actor__worker_interrupt(worker *w);
/* "source:line" of the job a worker runs; any thread. */
void actor__worker_current(worker *w, char *buf, size_t n);

/* Optional parts, linked when present (weak symbols):
 * control.c serves the control socket (docs/actorctl.md); lnet.c is the
 * actor.net module (DNS, HTTP) opened in every state. */
int actor__control_open(actor_rt *rt) __attribute__((weak));   /* scheduler thread, after pools exist */
void actor__control_close(actor_rt *rt) __attribute__((weak)); /* scheduler thread, before shutdown */
int luaopen_actor_net(lua_State *L) __attribute__((weak));

/* Calls the function below nargs arguments on the scheduler state's stack,
 * protected; errors are reported on stderr as "actor: error in <what>". */
void actor__call_protected(actor_rt *rt, int nargs, const char *what);

/* bindings */
/* lactor.c: what actor__lua_submit encodes. Stack indices; 0 is none. */
typedef struct actor_submit_req {
  int kind;         /* JOB_CALL or JOB_CAST */
  int tls_mode;     /* 0 never send _TLS, 1 when the closure names it, 2 always */
  double timeout;   /* seconds; <= 0: the pool's */
  int cb;           /* JOB_CALL: the value kept in cbref */
  int tls;          /* the caller's _TLS table */
  int wcomp;        /* a completion run on the worker */
  int fn, arg0, nargs; /* the closure and its arguments */
  const char *where;   /* label of the closure in error messages */
} actor_submit_req;
job *actor__lua_submit(lua_State *L, actor_rt *rt, pool *p, const actor_submit_req *q);
/* lhot.c: answers a job whose `hot` is set. The stack holds the value of
 * j->cbref and the nargs values of the answer (ok, results...); all of it
 * is popped. */
void actor__hot_deliver(actor_rt *rt, job *j, int nargs);
/* lhot.c: core.hot_setup (upvalue 1: the runtime's userdata). */
int actor__hot_setup(lua_State *L);
int actor__open_core(lua_State *L, actor_rt *rt);
int actor__load_embedded(lua_State *L, const char *name);
void actor__install_searcher(lua_State *L);
void actor__preload_optional(lua_State *L);

#endif
