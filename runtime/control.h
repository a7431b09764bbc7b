/*
 * control.h -- the control socket's request format (docs/actorctl.md).
 * Internal; not installed.
 *
 * Threading: ctl_parse_request() is pure (no globals, no Lua), so it may run
 * on any thread; the server calls it on nng's task threads.
 */
#ifndef ACTOR_CONTROL_H
#define ACTOR_CONTROL_H

#include <stddef.h>

/* Requests above this size get {"ok":false,"error":"request too large"}. */
#define CTL_MAX_REQUEST (64 * 1024)
/* Messages above this size are dropped by nng before they reach us. */
#define CTL_MAX_MESSAGE (1024 * 1024)

enum ctl_cmd {
  CTL_PING = 1, /* answered on nng's thread, or on the scheduler with "via" */
  CTL_INFO,
  CTL_POOLS,
  CTL_POOL,
  CTL_RUNNERS,
  CTL_TRACE,
  CTL_RESIZE,
  CTL_GC,
  CTL_METRICS,
};

typedef struct ctl_req {
  int cmd;        /* enum ctl_cmd */
  int via_sched;  /* ping: answer from the scheduler thread */
  char pool[64];  /* pool, resize, gc ("" for every state) */
  char id[65];    /* trace: runner id */
  int threads;    /* resize: 1..1024 */
} ctl_req;

/* Parses and validates one request of len bytes (not NUL-terminated; one
 * trailing NUL is tolerated). Returns 0 and fills *req, or -1 with a
 * one-line reason in err (always NUL-terminated). Never fails otherwise. */
int ctl_parse_request(const void *buf, size_t len, ctl_req *req, char *err, size_t errlen);

/* The name of a command, for replies ("pools"). */
const char *ctl_cmd_name(int cmd);

#endif
