/*
 * actor.h -- the public C API of libactor: embed the actor runtime in a C
 * program, load actor scripts and post events for sessions from any thread.
 *
 * This header is the contract. For every function it says who owns what
 * after the call, which thread may call it, which thread runs a callback,
 * and how the call fails. Everything else in the library is internal.
 *
 * Design notes.
 * - A runtime is one scheduler lua_State plus its pools of worker threads
 *   (each with its own lua_State). Lua values never cross threads; the host
 *   talks to scripts in msgpack bytes.
 * - A runtime handle (actor_runtime) is a small value holding an id, like
 *   nng's sockets. Using a handle after actor_close() returns ACTOR_ECLOSED;
 *   it never touches freed memory.
 * - Two ways to run a runtime:
 *     ACTOR_OPEN_THREAD  the runtime starts its own scheduler thread; the host
 *                        never drives anything and may call every function
 *                        from any thread;
 *     ACTOR_OPEN_HOSTED  the thread that calls actor_open() becomes the
 *                        scheduler thread: the host polls actor_fd() in its
 *                        own loop and calls actor_step() on that thread. The
 *                        "scheduler-thread" functions below must then be
 *                        called on that thread (others: ACTOR_ETHREAD).
 * - Events: actor_post() queues "call handler H of session S with these
 *   arguments". Events of one session run in order, one at a time; sessions
 *   run concurrently (a handler that waits on a pool or a timer parks, and
 *   other sessions go on). Each accepted post gets exactly one completion.
 * - Errors: every function that can fail returns 0 or one ACTOR_E* code;
 *   actor_strerror() describes it. Nothing aborts on bad input.
 *
 * Threading summary:
 *   any thread            actor_open, actor_post, actor_session_end,
 *                         actor_strerror, actor_fd
 *   scheduler thread      actor_step, actor_timeout (hosted mode only)
 *   any thread (THREAD) / actor_pool_config, actor_register_module,
 *   scheduler (HOSTED)    actor_load_file, actor_load_string, actor_close
 */
#ifndef ACTOR_ACTOR_H
#define ACTOR_ACTOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ACTOR_VERSION_MAJOR 0
#define ACTOR_VERSION_MINOR 1
#define ACTOR_VERSION_PATCH 0

struct lua_State;

/* A runtime. Copy it freely; it is only an id. Zero-initialised
 * (ACTOR_RUNTIME_INITIALIZER) it names no runtime. */
typedef struct actor_runtime {
  uint32_t id;
} actor_runtime;
#define ACTOR_RUNTIME_INITIALIZER {0}

/* Error codes. 0 is success. */
enum actor_errno {
  ACTOR_OK = 0,
  ACTOR_EINVAL = 1,     /* a NULL pointer, an empty name, a bad option */
  ACTOR_ENOMEM = 2,     /* out of memory; nothing was changed */
  ACTOR_ECLOSED = 3,    /* the runtime is closed or closing (or never was) */
  ACTOR_ENOHANDLER = 4, /* no such script or no such handler in it */
  ACTOR_EPROTO = 5,     /* malformed msgpack, or not an array */
  ACTOR_EHANDLER = 6,   /* the handler raised an error (message given) */
  ACTOR_ESCRIPT = 7,    /* a script failed to load or did not give a module */
  ACTOR_ETHREAD = 8,    /* called on a thread that may not make this call */
  ACTOR_ESYSTEM = 9,    /* a system call failed (threads, eventfd, nng) */
  ACTOR_ERESULT = 10,   /* the handler's results cannot be sent as msgpack */
};

/* A static English description of `err`. Never NULL; unknown codes give
 * "unknown error". Any thread. */
const char *actor_strerror(int err);

/* ------------------------------------------------------------- lifecycle */

enum actor_open_flags {
  ACTOR_OPEN_HOSTED = 0, /* the calling thread drives the loop */
  ACTOR_OPEN_THREAD = 1, /* the runtime runs its own scheduler thread */
};

/* Opens a runtime: a scheduler state with the standard libraries, the
 * `actor` module, `msys` and `util.async`, and the default pools (CPU: one
 * thread per core, IO: 8 threads; threads start on first use).
 *
 * flags: one of actor_open_flags. On success *rtp names the runtime and the
 * caller owns it until actor_close(). In hosted mode the calling thread
 * becomes the scheduler thread.
 *
 * Fails with ACTOR_EINVAL (rtp NULL or unknown flags), ACTOR_ENOMEM,
 * ACTOR_ESYSTEM (eventfd, thread). On failure *rtp is left unchanged and
 * nothing is allocated. Any thread. */
int actor_open(actor_runtime *rtp, int flags);

/* Closes the runtime. In this order: new posts are refused (ACTOR_ECLOSED);
 * every post not yet completed -- queued, running or parked -- is answered
 * with ACTOR_ECLOSED exactly once (callbacks run on the thread that closes,
 * in hosted mode, or on the runtime's thread); the pools stop (running jobs
 * get a grace period of 2 s, then are interrupted), every thread is joined,
 * every state closed and everything freed. Afterwards every call with this
 * handle returns ACTOR_ECLOSED.
 *
 * Must not be called from a completion callback of the same runtime.
 * Threaded mode: any other thread. Hosted mode: the scheduler thread.
 * Fails with ACTOR_ECLOSED (not open, or already closed) or ACTOR_ETHREAD
 * (wrong thread; nothing is done). */
int actor_close(actor_runtime rt);

/* ------------------------------------------------------- the host's loop */

/* A descriptor that becomes readable when actor_step() has work (a post, a
 * reply from a pool). Owned by the runtime: do not read or close it. Valid
 * until actor_close(). Returns -1 if rt is not open. Any thread. In threaded
 * mode the runtime's own thread polls it; the host has no use for it. */
int actor_fd(actor_runtime rt);

/* Hosted mode: one turn of the loop on the scheduler thread. Runs posted
 * events, delivers pool replies, fires due timers; may run completion
 * callbacks (on this thread, before returning). Waits at most timeout_ms
 * (0: do not wait; -1: wait until something happens, or return at once if
 * nothing is pending). *handled, if not NULL, gets the number of events
 * handled.
 *
 * Fails with ACTOR_ECLOSED, ACTOR_ETHREAD (threaded mode, or not the
 * scheduler thread), ACTOR_EINVAL (timeout_ms < -1). */
int actor_step(actor_runtime rt, int timeout_ms, int *handled);

/* Hosted mode, scheduler thread: how long the host may sleep before it must
 * call actor_step() again even if actor_fd() stays quiet (the next timer).
 * *timeout_ms gets -1 (no timer), 0 (call now) or milliseconds. Fails like
 * actor_step(). */
int actor_timeout(actor_runtime rt, int *timeout_ms);

/* Nonzero while something keeps the runtime busy: a session with queued or
 * running events, a job in a pool, a timer. Hosted mode, scheduler thread;
 * returns 0 when rt is not open or the thread is wrong. */
int actor_pending(actor_runtime rt);

/* -------------------------------------------------------- configuration */

/* Options of a pool. A field left 0 (or NULL) keeps the pool's current
 * setting; a new pool starts with 1 thread and no limits. */
typedef struct actor_pool_opts {
  int threads;         /* threads (1..1024); resizes at run time */
  int backlog;         /* queued jobs before callers park; 0: keep */
  size_t memory_limit; /* bytes per worker state; 0: keep */
  double timeout;      /* default seconds per job; 0: keep */
  const char *init;    /* module name or .lua file run in each worker state;
                          copied */
} actor_pool_opts;

/* Creates the pool `name` (1..63 bytes) or reconfigures it. opts may be
 * NULL (defaults). Copies what it needs; the caller keeps its strings.
 * Fails with ACTOR_EINVAL (bad name or option values), ACTOR_ENOMEM,
 * ACTOR_ECLOSED, ACTOR_ETHREAD (hosted mode, not the scheduler thread).
 * Threaded mode: blocks until the runtime's thread applied it. */
int actor_pool_config(actor_runtime rt, const char *name, const actor_pool_opts *opts);

/* Where actor_register_module() makes a module available (flags). */
enum actor_module_where {
  ACTOR_MODULE_SCHEDULER = 1, /* the scheduler state (scripts, handlers) */
  ACTOR_MODULE_WORKERS = 2,   /* every worker state of every pool */
  ACTOR_MODULE_ALL = 3,
};

/* Registers a host C module, e.g. registers luaopen_mymod as "mymod", so
 * that `require "mymod"` works in the chosen states (it is put in
 * package.preload; nothing runs until a script requires it). `open` is
 * called with the requiring state on the thread that owns it: the
 * scheduler thread, or a pool thread, possibly several at once; it must be
 * safe for that. `name` is copied. Worker states made before the call do
 * not see the module: register before the first job runs (or resize).
 * Fails with ACTOR_EINVAL (NULL, empty name, where not in 1..3),
 * ACTOR_ENOMEM, ACTOR_ECLOSED, ACTOR_ETHREAD. */
int actor_register_module(actor_runtime rt, const char *name,
                          int (*open)(struct lua_State *L), int where);

/* Loads an actor script and makes its handlers available under `name`
 * (1..63 bytes of letters, digits, '_' or '-'). The script runs once on
 * the scheduler state; it must return its module table (or call
 * msys.registerModule(name, table)). Loading a name again replaces the
 * module; sessions see the new handlers from their next event on.
 * The first script loaded is the default one (see actor_post()).
 *
 * errbuf, if not NULL, receives a NUL-terminated message on failure
 * (truncated to errlen bytes).
 * Fails with ACTOR_EINVAL, ACTOR_ESCRIPT (cannot read, syntax error, the
 * chunk raised, no module table), ACTOR_ECLOSED, ACTOR_ETHREAD, ACTOR_ENOMEM.
 * The main chunk runs outside any runner, like the main chunk of the
 * `actor` program: a synchronous msys.runInPool there drives the loop
 * until it returns. Threaded mode: blocks until the chunk has run. */
int actor_load_file(actor_runtime rt, const char *name, const char *path,
                    char *errbuf, size_t errlen);

/* Like actor_load_file() with the source in memory (copied; src need not
 * be NUL-terminated). */
int actor_load_string(actor_runtime rt, const char *name, const char *src,
                      size_t len, char *errbuf, size_t errlen);

/* ------------------------------------------------------------- events */

/* What a completion callback receives. Everything it points to belongs to
 * the runtime and is valid only during the callback: copy what you keep. */
typedef struct actor_result {
  int err;             /* 0, or an ACTOR_E* code */
  const char *data;    /* err == 0: a msgpack array of the handler's results
                          (an empty array when it returned nothing) */
  size_t len;          /* bytes at data */
  const char *message; /* err != 0: NUL-terminated description, e.g. the
                          handler's error with its traceback; "" when ok */
  uint64_t session;    /* the session the event was posted to */
} actor_result;

/* A completion callback. Runs on the scheduler thread (the runtime's own
 * thread, or the host's thread inside actor_step()), or, for events
 * answered by actor_close(), on the thread running the close. It must not
 * block for long (it holds up every session) and must not call
 * actor_close() for this runtime; it may call actor_post(). */
typedef void (*actor_done_fn)(const actor_result *res, void *ud);

/* Posts an event: call handler `handler` of session `session` with the
 * arguments in `args`, a msgpack array of `len` bytes ([] when args is NULL
 * and len is 0). `handler` is "method" for the default script or
 * "script:method"; the method is called as module:method(...) in the
 * session, with `self` the session's table. A session is created by its
 * first event and lives until actor_session_end(); any 64-bit id works.
 *
 * The handler, args and their bytes are copied: the caller keeps them.
 * cb may be NULL (fire and forget). On success (0) cb(res, ud) will be
 * called exactly once: with the results, or with an error (ACTOR_ENOHANDLER,
 * ACTOR_EHANDLER, ACTOR_ERESULT, ACTOR_EPROTO, ACTOR_ECLOSED). On failure cb
 * is never called.
 *
 * Any thread, including a completion callback. Never blocks on the loop.
 * Fails with ACTOR_EINVAL (handler NULL or empty, args NULL with len > 0),
 * ACTOR_EPROTO (args are not exactly one well-formed msgpack array),
 * ACTOR_ECLOSED, ACTOR_ENOMEM. */
int actor_post(actor_runtime rt, uint64_t session, const char *handler,
               const void *args, size_t len, actor_done_fn cb, void *ud);

/* Ends a session once its queued events have run: every script the
 * session used that has a handler `session_end` gets it called (as a last
 * event, results ignored), then the session's tables (self, _TLS) are
 * dropped. An event posted with the same id after this call starts a fresh
 * session at once. Ending an unknown session does nothing. Any thread.
 * Fails with ACTOR_ECLOSED, ACTOR_ENOMEM. */
int actor_session_end(actor_runtime rt, uint64_t session);

#ifdef __cplusplus
}
#endif

#endif /* ACTOR_ACTOR_H */
