/*
 * actorctl -- inspect and steer a running actor runtime through its control
 * socket (docs/actorctl.md).
 *
 *   actorctl [-p PID | --url URL] [--json] [--timeout S] COMMAND [ARGS]
 *
 * Design notes.
 * - Runtimes are found from the <pid>.json files next to their sockets, in
 *   $ACTOR_CONTROL_DIR when set, else in $XDG_RUNTIME_DIR/actor and
 *   /tmp/actor-<uid> (both, so a runtime started with another environment
 *   is still found). An entry whose process is gone, or whose socket
 *   refuses connections, is stale: its files are removed.
 * - One req0 socket, one pipe. A request waits at most --timeout seconds
 *   (default 5). A pipe-removal callback aborts the wait at once when the
 *   runtime goes away, so a runtime that exits while we wait is reported
 *   right away, not after the timeout. req0's resend is off: gc and resize
 *   are not repeated behind the user's back.
 * - Exit status: 0 done, 1 the runtime answered an error or could not be
 *   reached, 2 bad command line.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#define USAGE \
  "usage: actorctl [-p PID | --url URL] [--json] [--timeout S] COMMAND [ARGS]\n" \
  "commands:\n" \
  "  ls                 runtimes running now\n" \
  "  pools              a row per pool\n" \
  "  pool NAME          a row per thread of the pool\n" \
  "  runners            a row per runner\n" \
  "  trace ID           the traceback of a runner\n" \
  "  resize NAME N      change a pool's thread count\n" \
  "  gc [POOL]          full collection in each state (or the pool's)\n" \
  "  top [-d S] [-n N]  live view; q or Ctrl-C quits\n" \
  "  metrics            pool figures in the Prometheus text format\n" \
  "  ping [-c N]        round trip to the control thread and the scheduler\n" \
  "  info               the runtime's summary\n"

static int opt_json = 0;
static double opt_timeout = 5.0;
static const char *opt_url = NULL;
static long opt_pid = 0;

static void die_usage(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "actorctl: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n%s", USAGE);
  va_end(ap);
  exit(2);
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "actorctl: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

/* Rounds to milliseconds (no libm needed). */
static double r3(double x) { return (double)(long long)(x * 1000 + (x < 0 ? -0.5 : 0.5)) / 1000; }

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ output */

static void print_json(json_t *v) {
  char *s = json_dumps(v, JSON_INDENT(2) | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
  if (s) {
    puts(s);
    free(s);
  }
}

static const char *jstr(json_t *o, const char *k, const char *dflt) {
  json_t *v = json_object_get(o, k);
  return json_is_string(v) ? json_string_value(v) : dflt;
}

static double jnum(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  return json_is_number(v) ? json_number_value(v) : 0;
}

static long long jint(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  return json_is_integer(v) ? (long long)json_integer_value(v) : (long long)jnum(o, k);
}

static const char *fmt_bytes(double b, char *buf, size_t cap) {
  if (b < 1024) snprintf(buf, cap, "%.0f B", b);
  else if (b < 1024 * 1024) snprintf(buf, cap, "%.1f KiB", b / 1024);
  else if (b < 1024.0 * 1024 * 1024) snprintf(buf, cap, "%.1f MiB", b / (1024 * 1024));
  else snprintf(buf, cap, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  return buf;
}

static const char *fmt_dur(double s, char *buf, size_t cap) {
  if (s < 0) s = 0;
  if (s < 1) snprintf(buf, cap, "%.0fms", s * 1000);
  else if (s < 60) snprintf(buf, cap, "%.1fs", s);
  else if (s < 3600) snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else if (s < 86400) snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else snprintf(buf, cap, "%dd%02dh", (int)(s / 86400), (int)(s / 3600) % 24);
  return buf;
}

/* ------------------------------------------------------- discovery */

typedef struct entry {
  long pid;
  char name[128];
  char url[PATH_MAX + 16];
  char info_path[PATH_MAX];
  double started;
} entry;

typedef struct entries {
  entry *v;
  int n, cap;
  char dirs[2][PATH_MAX];
  int ndirs;
} entries;

static int dir_ok(const char *d) {
  struct stat st;
  return lstat(d, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid();
}

static void find_dirs(entries *es) {
  const char *d = getenv("ACTOR_CONTROL_DIR");
  if (d && *d) {
    snprintf(es->dirs[es->ndirs++], PATH_MAX, "%s", d);
    return;
  }
  const char *x = getenv("XDG_RUNTIME_DIR");
  if (x && *x == '/') snprintf(es->dirs[es->ndirs++], PATH_MAX, "%s/actor", x);
  snprintf(es->dirs[es->ndirs++], PATH_MAX, "/tmp/actor-%lu", (unsigned long)geteuid());
}

/* Whether something listens at url: a dial that is refused means stale. */
static int url_alive(const char *url) {
  nng_socket s;
  if (nng_req0_open(&s) != 0) return 1;
  int rv = nng_dial(s, url, NULL, 0);
  nng_close(s);
  return rv == 0 || (rv != NNG_ECONNREFUSED && rv != NNG_ENOENT);
}

static void remove_stale(const entry *e) {
  unlink(e->info_path);
  if (strncmp(e->url, "ipc://", 6) == 0) unlink(e->url + 6);
}

static void load_entries(entries *es, int check_alive) {
  find_dirs(es);
  for (int d = 0; d < es->ndirs; d++) {
    if (!dir_ok(es->dirs[d])) continue;
    DIR *dir = opendir(es->dirs[d]);
    if (!dir) continue;
    struct dirent *de;
    while ((de = readdir(dir))) {
      size_t l = strlen(de->d_name);
      if (l < 6 || strcmp(de->d_name + l - 5, ".json") != 0) continue;
      entry e;
      memset(&e, 0, sizeof e);
      if (strlen(es->dirs[d]) + l + 2 > sizeof e.info_path) continue;
      snprintf(e.info_path, sizeof e.info_path, "%.*s/%s", (int)(sizeof e.info_path - 258), es->dirs[d], de->d_name);
      json_error_t je;
      json_t *o = json_load_file(e.info_path, 0, &je);
      if (!o) continue;
      e.pid = (long)jint(o, "pid");
      snprintf(e.name, sizeof e.name, "%s", jstr(o, "name", "?"));
      snprintf(e.url, sizeof e.url, "%s", jstr(o, "url", ""));
      e.started = jnum(o, "started");
      json_decref(o);
      if (e.pid <= 0 || !e.url[0]) continue;
      if (kill((pid_t)e.pid, 0) != 0 && errno == ESRCH) {
        remove_stale(&e);
        continue;
      }
      if (check_alive && !url_alive(e.url)) {
        remove_stale(&e); /* the pid was reused by another process */
        continue;
      }
      int dup = 0;
      for (int i = 0; i < es->n; i++) dup |= strcmp(es->v[i].url, e.url) == 0;
      if (dup) continue;
      if (es->n == es->cap) {
        es->cap = es->cap ? es->cap * 2 : 8;
        es->v = realloc(es->v, sizeof(entry) * (size_t)es->cap);
        if (!es->v) die("out of memory");
      }
      es->v[es->n++] = e;
    }
    closedir(dir);
  }
}

static int entry_cmp(const void *a, const void *b) {
  const entry *x = a, *y = b;
  return x->pid < y->pid ? -1 : x->pid > y->pid;
}

/* The URL of the runtime to talk to, chosen from -p, --url or the only one. */
static void choose_target(char *url, size_t cap, long *pid, char *name, size_t ncap) {
  *pid = 0;
  snprintf(name, ncap, "?");
  if (opt_url) {
    snprintf(url, cap, "%s", opt_url);
    snprintf(name, ncap, "%s", opt_url);
    return;
  }
  entries es;
  memset(&es, 0, sizeof es);
  load_entries(&es, 1);
  if (es.n > 1) qsort(es.v, (size_t)es.n, sizeof(entry), entry_cmp);
  const entry *pick = NULL;
  if (opt_pid) {
    for (int i = 0; i < es.n && !pick; i++)
      if (es.v[i].pid == opt_pid) pick = &es.v[i];
    if (!pick) {
      free(es.v);
      die("no actor runtime with pid %ld serves a control socket (looked in %s%s%s)", opt_pid, es.dirs[0],
          es.ndirs > 1 ? " and " : "", es.ndirs > 1 ? es.dirs[1] : "");
    }
  } else if (es.n == 0) {
    free(es.v);
    die("no actor runtime is running (looked in %s%s%s)", es.dirs[0], es.ndirs > 1 ? " and " : "",
        es.ndirs > 1 ? es.dirs[1] : "");
  } else if (es.n > 1) {
    fprintf(stderr, "actorctl: %d actor runtimes are running; choose one with -p PID or --url URL:\n", es.n);
    for (int i = 0; i < es.n; i++) fprintf(stderr, "  -p %-8ld %s\n", es.v[i].pid, es.v[i].name);
    free(es.v);
    exit(1);
  } else {
    pick = &es.v[0];
  }
  snprintf(url, cap, "%s", pick->url);
  snprintf(name, ncap, "%s", pick->name);
  *pid = pick->pid;
  free(es.v);
}

/* ------------------------------------------------------- connection */

typedef struct conn {
  nng_socket sock;
  nng_aio *aio;
  pthread_mutex_t mu;
  int gone;    /* the runtime's pipe went away */
  int waiting; /* aio is receiving */
  char url[PATH_MAX + 16];
  char who[200];
} conn;

/* nng thread: the runtime closed the connection (it exited or closed its
 * control socket). Abort a pending wait at once. */
static void on_pipe_gone(nng_pipe p, nng_pipe_ev ev, void *arg) {
  (void)p;
  (void)ev;
  conn *c = arg;
  pthread_mutex_lock(&c->mu);
  c->gone = 1;
  if (c->waiting) nng_aio_abort(c->aio, NNG_ECONNSHUT);
  pthread_mutex_unlock(&c->mu);
}

static void conn_open(conn *c, const char *url, long pid, const char *name) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  snprintf(c->url, sizeof c->url, "%s", url);
  if (pid) snprintf(c->who, sizeof c->who, "runtime %ld (%.120s)", pid, name);
  else snprintf(c->who, sizeof c->who, "runtime at %.170s", url);
  int rv;
  if ((rv = nng_req0_open(&c->sock)) != 0) die("cannot open a socket: %s", nng_strerror(rv));
  nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
  nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, (nng_duration)(opt_timeout * 1000));
  nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, 0);
  nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, on_pipe_gone, c);
  if ((rv = nng_aio_alloc(&c->aio, NULL, NULL)) != 0) die("out of memory");
  if ((rv = nng_dial(c->sock, url, NULL, 0)) != 0) die("cannot connect to %s: %s", c->who, nng_strerror(rv));
}

static void conn_close(conn *c) {
  nng_close(c->sock);
  nng_aio_stop(c->aio);
  nng_aio_free(c->aio);
  pthread_mutex_destroy(&c->mu);
}

/* Sends req and waits for the reply. Returns the reply (caller frees) or
 * NULL with *rv set (NNG_ETIMEDOUT, NNG_ECONNSHUT, ...). */
static json_t *conn_try(conn *c, const char *text, double timeout, int *rv) {
  pthread_mutex_lock(&c->mu);
  int gone = c->gone;
  pthread_mutex_unlock(&c->mu);
  if (gone) {
    *rv = NNG_ECONNSHUT;
    return NULL;
  }
  if ((*rv = nng_send(c->sock, (void *)text, strlen(text), 0)) != 0) return NULL;
  nng_aio_set_timeout(c->aio, (nng_duration)(timeout * 1000));
  pthread_mutex_lock(&c->mu);
  c->waiting = 1;
  nng_recv_aio(c->sock, c->aio);
  if (c->gone) nng_aio_abort(c->aio, NNG_ECONNSHUT);
  pthread_mutex_unlock(&c->mu);
  nng_aio_wait(c->aio);
  pthread_mutex_lock(&c->mu);
  c->waiting = 0;
  pthread_mutex_unlock(&c->mu);
  if ((*rv = nng_aio_result(c->aio)) != 0) return NULL;
  nng_msg *m = nng_aio_get_msg(c->aio);
  json_error_t je;
  json_t *r = json_loadb(nng_msg_body(m), nng_msg_len(m), 0, &je);
  nng_msg_free(m);
  if (!r || !json_is_object(r)) {
    json_decref(r);
    *rv = NNG_EPROTO;
    return NULL;
  }
  return r;
}

/* A request that must succeed: any failure ends the program with a clear
 * message. Returns the reply object with "ok": true. */
static json_t *conn_call(conn *c, json_t *req) {
  char *text = json_dumps(req, JSON_COMPACT);
  json_decref(req);
  if (!text) die("out of memory");
  int rv;
  json_t *r = conn_try(c, text, opt_timeout, &rv);
  free(text);
  if (!r) {
    if (rv == NNG_ECONNSHUT || rv == NNG_ECLOSED || rv == NNG_ECONNRESET || rv == NNG_ECONNREFUSED)
      die("the %s closed the connection before answering (it exited or turned its control socket off)", c->who);
    if (rv == NNG_ETIMEDOUT) {
      /* Tell a stuck scheduler from a dead runtime: the control thread
       * answers a plain ping without the scheduler. */
      int prv;
      json_t *p = conn_try(c, "{\"cmd\":\"ping\"}", 1.0, &prv);
      json_decref(p);
      if (p)
        die("the %s did not answer within %g s: its control thread is alive, but its scheduler is busy "
            "(a long-running Lua call on the scheduler?)", c->who, opt_timeout);
      if (prv == NNG_ECONNSHUT || prv == NNG_ECONNRESET) die("the %s went away while we were waiting for it", c->who);
      die("the %s did not answer within %g s", c->who, opt_timeout);
    }
    if (rv == NNG_EPROTO) die("the %s sent a reply that is not a JSON object", c->who);
    die("request to the %s failed: %s", c->who, nng_strerror(rv));
  }
  if (!json_is_true(json_object_get(r, "ok"))) {
    const char *e = jstr(r, "error", "unknown error");
    fprintf(stderr, "actorctl: %s\n", e);
    json_decref(r);
    exit(1);
  }
  return r;
}

static json_t *request(conn *c, const char *cmd) {
  json_t *q = json_object();
  json_object_set_new(q, "cmd", json_string(cmd));
  return conn_call(c, q);
}

/* ------------------------------------------------------------ tables */

static void print_pools_table(json_t *pools, json_t *prev, double dt) {
  printf("%-12s %7s %5s %7s %12s %7s %8s %9s %9s %9s %10s", "POOL", "THREADS", "BUSY", "QUEUED", "INVOCATIONS",
         "ERRORS", "TIMEOUTS", "AVG_MS", "P50_MS", "P99_MS", "SATURATION");
  if (prev) printf(" %8s", "JOBS/S");
  printf("\n");
  size_t i;
  json_t *row;
  json_array_foreach(pools, i, row) {
    printf("%-12s %7lld %5lld %7lld %12lld %7lld %8lld %9.3f %9.3f %9.3f %10.2f", jstr(row, "name", "?"),
           jint(row, "threads"), jint(row, "busy"), jint(row, "queued"), jint(row, "invocations"),
           jint(row, "errors"), jint(row, "timeouts"), jnum(row, "avg_ms"), jnum(row, "p50_ms"),
           jnum(row, "p99_ms"), jnum(row, "saturation"));
    if (prev) {
      double rate = 0;
      size_t k;
      json_t *pr;
      json_array_foreach(prev, k, pr) {
        if (strcmp(jstr(pr, "name", ""), jstr(row, "name", "?")) == 0 && dt > 0)
          rate = (double)(jint(row, "completed") - jint(pr, "completed")) / dt;
      }
      printf(" %8.0f", rate);
    }
    printf("\n");
  }
}

/* Only the documented row fields, in their order, for --json. */
static json_t *pool_rows(json_t *pools) {
  static const char *fields[] = {"name", "threads", "busy", "queued", "invocations", "errors",
                                 "timeouts", "avg_ms", "p50_ms", "p99_ms", "saturation"};
  json_t *a = json_array();
  size_t i;
  json_t *row;
  json_array_foreach(pools, i, row) {
    json_t *o = json_object();
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
      json_t *v = json_object_get(row, fields[f]);
      json_object_set(o, fields[f], v ? v : json_null());
    }
    /* then whatever else the runtime reports */
    const char *k;
    json_t *v;
    json_object_foreach(row, k, v) if (!json_object_get(o, k)) json_object_set(o, k, v);
    json_array_append_new(a, o);
  }
  return a;
}

/* ---------------------------------------------------------- commands */

static int cmd_ls(void) {
  entries es;
  memset(&es, 0, sizeof es);
  load_entries(&es, 1);
  if (es.n > 1) qsort(es.v, (size_t)es.n, sizeof(entry), entry_cmp);
  double now = now_wall();
  if (opt_json) {
    json_t *a = json_array();
    for (int i = 0; i < es.n; i++) {
      json_t *o = json_object();
      json_object_set_new(o, "pid", json_integer(es.v[i].pid));
      json_object_set_new(o, "name", json_string(es.v[i].name));
      json_object_set_new(o, "url", json_string(es.v[i].url));
      json_object_set_new(o, "uptime", json_real(r3((now - es.v[i].started))));
      json_array_append_new(a, o);
    }
    print_json(a);
    json_decref(a);
  } else if (es.n == 0) {
    printf("no actor runtime is running\n");
  } else {
    printf("%-8s %-28s %-9s %s\n", "PID", "NAME", "UPTIME", "URL");
    for (int i = 0; i < es.n; i++) {
      char d[32];
      printf("%-8ld %-28s %-9s %s\n", es.v[i].pid, es.v[i].name, fmt_dur(now - es.v[i].started, d, sizeof d), es.v[i].url);
    }
  }
  free(es.v);
  return 0;
}

static int cmd_pools(conn *c) {
  json_t *r = request(c, "pools");
  json_t *pools = json_object_get(r, "pools");
  if (opt_json) {
    json_t *a = pool_rows(pools);
    print_json(a);
    json_decref(a);
  } else {
    print_pools_table(pools, NULL, 0);
  }
  json_decref(r);
  return 0;
}

static int cmd_pool(conn *c, const char *name) {
  json_t *q = json_object();
  json_object_set_new(q, "cmd", json_string("pool"));
  json_object_set_new(q, "pool", json_string(name));
  json_t *r = conn_call(c, q);
  json_t *threads = json_object_get(r, "threads");
  if (opt_json) {
    print_json(threads);
  } else {
    printf("pool %s: %zu threads (target %lld)\n", jstr(r, "pool", name), json_array_size(threads), jint(r, "target_threads"));
    printf("%-7s %-9s %-36s %9s %10s %10s\n", "THREAD", "STATE", "JOB", "RUNNING", "MEMORY", "JOBS_DONE");
    size_t i;
    json_t *t;
    json_array_foreach(threads, i, t) {
      char d[32] = "-", m[32];
      json_t *rs = json_object_get(t, "running_s");
      if (json_is_number(rs)) fmt_dur(json_number_value(rs), d, sizeof d);
      printf("%-7lld %-9s %-36s %9s %10s %10lld\n", jint(t, "thread"), jstr(t, "state", "?"), jstr(t, "job", "-"), d,
             fmt_bytes(jnum(t, "memory"), m, sizeof m), jint(t, "jobs_done"));
    }
    if (json_array_size(threads) == 0) printf("(no thread started yet: threads start with the first job)\n");
  }
  json_decref(r);
  return 0;
}

static int cmd_runners(conn *c) {
  json_t *r = request(c, "runners");
  json_t *rs = json_object_get(r, "runners");
  if (opt_json) {
    print_json(rs);
  } else {
    printf("%-10s %-8s %5s %-10s %s\n", "ID", "STATE", "QUEUE", "WAITING", "WHERE");
    size_t i;
    json_t *o;
    json_array_foreach(rs, i, o) {
      char d[32] = "-";
      json_t *w = json_object_get(o, "waiting_s");
      if (json_is_number(w)) fmt_dur(json_number_value(w), d, sizeof d);
      printf("%-10s %-8s %5lld %-10s %s\n", jstr(o, "id", "?"), jstr(o, "state", "?"), jint(o, "queue"), d,
             jstr(o, "where", "-"));
    }
    if (json_array_size(rs) == 0) printf("(no runner)\n");
  }
  json_decref(r);
  return 0;
}

static int cmd_trace(conn *c, const char *id) {
  json_t *q = json_object();
  json_object_set_new(q, "cmd", json_string("trace"));
  json_object_set_new(q, "id", json_string(id));
  json_t *r = conn_call(c, q);
  if (opt_json) {
    json_object_del(r, "ok");
    json_object_del(r, "cmd");
    print_json(r);
  } else {
    printf("%s\n", jstr(r, "traceback", ""));
  }
  json_decref(r);
  return 0;
}

static int cmd_resize(conn *c, const char *name, const char *n) {
  char *end;
  long t = strtol(n, &end, 10);
  if (*end || t < 1 || t > 1024) die_usage("resize: N must be a thread count from 1 to 1024, got '%s'", n);
  json_t *q = json_object();
  json_object_set_new(q, "cmd", json_string("resize"));
  json_object_set_new(q, "pool", json_string(name));
  json_object_set_new(q, "threads", json_integer(t));
  json_t *r = conn_call(c, q);
  if (opt_json) {
    json_object_del(r, "ok");
    json_object_del(r, "cmd");
    print_json(r);
  } else {
    printf("pool %s: %lld -> %lld threads%s\n", jstr(r, "pool", name), jint(r, "before"), jint(r, "threads"),
           json_is_true(json_object_get(r, "started")) ? "" : " (threads start with the first job)");
  }
  json_decref(r);
  return 0;
}

static int cmd_gc(conn *c, const char *pool) {
  json_t *q = json_object();
  json_object_set_new(q, "cmd", json_string("gc"));
  if (pool) json_object_set_new(q, "pool", json_string(pool));
  json_t *r = conn_call(c, q);
  if (opt_json) {
    json_object_del(r, "ok");
    json_object_del(r, "cmd");
    print_json(r);
  } else {
    printf("%-16s %12s %12s %12s\n", "STATE", "BEFORE", "AFTER", "FREED");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(r, "states"), i, s) {
      char b[32], a[32], f[32];
      if (json_is_true(json_object_get(s, "pending"))) {
        printf("%-16s %12s %12s %12s\n", jstr(s, "state", "?"), "busy", "-", "(after its job)");
        continue;
      }
      double bb = jnum(s, "before"), aa = jnum(s, "after");
      printf("%-16s %12s %12s %12s\n", jstr(s, "state", "?"), fmt_bytes(bb, b, sizeof b), fmt_bytes(aa, a, sizeof a),
             fmt_bytes(bb > aa ? bb - aa : 0, f, sizeof f));
    }
    char b[32], a[32], f[32];
    double bb = jnum(r, "before"), aa = jnum(r, "after");
    printf("%-16s %12s %12s %12s\n", "total", fmt_bytes(bb, b, sizeof b), fmt_bytes(aa, a, sizeof a),
           fmt_bytes(bb > aa ? bb - aa : 0, f, sizeof f));
  }
  json_decref(r);
  return 0;
}

static int cmd_metrics(conn *c) {
  json_t *r = request(c, "metrics");
  if (opt_json) {
    json_t *o = json_object();
    json_object_set(o, "metrics", json_object_get(r, "text"));
    print_json(o);
    json_decref(o);
  } else {
    fputs(jstr(r, "text", ""), stdout);
  }
  json_decref(r);
  return 0;
}

static int cmd_info(conn *c) {
  json_t *r = request(c, "info");
  json_object_del(r, "ok");
  json_object_del(r, "cmd");
  if (opt_json) {
    print_json(r);
  } else {
    char d[32], m[32];
    printf("pid %lld (%s), up %s, %s %s\n", jint(r, "pid"), jstr(r, "name", "?"), fmt_dur(jnum(r, "uptime"), d, sizeof d),
           jstr(r, "version", "?"), jstr(r, "lua", ""));
    printf("scheduler state %s, %lld pools, %lld runners (%lld waiting), %lld pending\n",
           fmt_bytes(jnum(r, "memory"), m, sizeof m), jint(r, "pools"), jint(r, "runners"), jint(r, "waiting"),
           jint(r, "pending"));
    printf("url %s\n", jstr(r, "url", "?"));
  }
  json_decref(r);
  return 0;
}

static int cmd_ping(conn *c, int count) {
  double best_c = 1e9, best_s = 1e9, sum_c = 0, sum_s = 0;
  long long pid = 0;
  for (int i = 0; i < count; i++) {
    double t0 = now_mono();
    json_t *r = request(c, "ping");
    double t1 = now_mono();
    pid = jint(r, "pid");
    json_decref(r);
    json_t *q = json_object();
    json_object_set_new(q, "cmd", json_string("ping"));
    json_object_set_new(q, "via", json_string("scheduler"));
    r = conn_call(c, q);
    double t2 = now_mono();
    json_decref(r);
    double a = (t1 - t0) * 1000, b = (t2 - t1) * 1000;
    sum_c += a;
    sum_s += b;
    if (a < best_c) best_c = a;
    if (b < best_s) best_s = b;
    if (!opt_json) printf("pong from %lld: control %.3f ms, scheduler %.3f ms\n", pid, a, b);
    if (count > 1 && i + 1 < count) usleep(200000);
  }
  if (opt_json) {
    json_t *o = json_object();
    json_object_set_new(o, "pid", json_integer(pid));
    json_object_set_new(o, "count", json_integer(count));
    json_object_set_new(o, "rtt_ms", json_real(r3(sum_c / count)));
    json_object_set_new(o, "scheduler_rtt_ms", json_real(r3(sum_s / count)));
    json_object_set_new(o, "min_rtt_ms", json_real(r3(best_c)));
    json_object_set_new(o, "min_scheduler_rtt_ms", json_real(r3(best_s)));
    print_json(o);
    json_decref(o);
  }
  return 0;
}

/* --------------------------------------------------------------- top */

static volatile sig_atomic_t top_stop = 0;
static struct termios saved_tio;
static int tio_saved = 0;

static void on_sigint(int sig) {
  (void)sig;
  top_stop = 1;
}

static void restore_tty(void) {
  if (tio_saved) tcsetattr(0, TCSANOW, &saved_tio);
  tio_saved = 0;
}

static int cmd_top(conn *c, double delay, long iterations) {
  int tty_in = isatty(0), tty_out = isatty(1) && !opt_json;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  if (tty_in && tcgetattr(0, &saved_tio) == 0) {
    struct termios raw = saved_tio;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tio_saved = 1;
    atexit(restore_tty);
    tcsetattr(0, TCSANOW, &raw);
  }
  json_t *prev = NULL;
  double prev_t = 0;
  for (long it = 0; !top_stop && (iterations <= 0 || it < iterations); it++) {
    json_t *info = request(c, "info");
    json_t *pr = request(c, "pools");
    double t = now_mono();
    json_t *pools = json_object_get(pr, "pools");
    if (opt_json) {
      json_t *o = json_object();
      json_object_set_new(o, "time", json_real(r3(now_wall())));
      json_object_del(info, "ok");
      json_object_del(info, "cmd");
      json_object_set(o, "info", info);
      json_object_set_new(o, "pools", pool_rows(pools));
      char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
      if (s) puts(s);
      free(s);
      json_decref(o);
    } else {
      char d[32], m[32];
      if (tty_out) printf("\033[H\033[2J");
      else if (it > 0) printf("\n");
      printf("actor top - pid %lld (%s), up %s, scheduler %s, runners %lld (%lld waiting), pending %lld\n\n",
             jint(info, "pid"), jstr(info, "name", "?"), fmt_dur(jnum(info, "uptime"), d, sizeof d),
             fmt_bytes(jnum(info, "memory"), m, sizeof m), jint(info, "runners"), jint(info, "waiting"),
             jint(info, "pending"));
      print_pools_table(pools, prev ? prev : pools, prev ? t - prev_t : 0);
      if (tty_in) printf("\n(q or Ctrl-C quits; refresh every %g s)\n", delay);
    }
    fflush(stdout);
    json_decref(info);
    json_t *keep = json_deep_copy(pools);
    json_decref(pr);
    json_decref(prev);
    prev = keep;
    prev_t = t;
    if (iterations > 0 && it + 1 >= iterations) break;
    /* Wait for the next refresh, a key, or a signal. */
    double until = now_mono() + delay;
    while (!top_stop) {
      double left = until - now_mono();
      if (left <= 0) break;
      struct pollfd pfd = {0, POLLIN, 0};
      int n = poll(&pfd, tty_in ? 1 : 0, (int)(left * 1000) + 1);
      if (n > 0 && (pfd.revents & POLLIN)) {
        char ch;
        ssize_t k = read(0, &ch, 1);
        if (k == 1 && (ch == 'q' || ch == 'Q' || ch == 3)) top_stop = 1;
        if (k <= 0) tty_in = 0; /* stdin closed: stop watching it */
      }
    }
  }
  json_decref(prev);
  restore_tty();
  return 0;
}

/* -------------------------------------------------------------- main */

static double parse_seconds(const char *opt, const char *v) {
  char *end;
  double d = v ? strtod(v, &end) : 0;
  if (!v || *end || !(d > 0) || d > 86400) die_usage("%s needs a number of seconds, got '%s'", opt, v ? v : "");
  return d;
}

int main(int argc, char **argv) {
  const char *pos[8];
  int npos = 0;
  double top_delay = 1.0;
  long top_n = 0, ping_n = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--json") == 0 || strcmp(a, "-j") == 0) opt_json = 1;
    else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(USAGE, stdout);
      return 0;
    } else if (strcmp(a, "-p") == 0 || strcmp(a, "--pid") == 0) {
      if (i + 1 >= argc) die_usage("%s needs a pid", a);
      char *end;
      opt_pid = strtol(argv[++i], &end, 10);
      if (*end || opt_pid <= 0) die_usage("bad pid '%s'", argv[i]);
    } else if (strcmp(a, "--url") == 0) {
      if (i + 1 >= argc) die_usage("--url needs a URL");
      opt_url = argv[++i];
    } else if (strcmp(a, "--timeout") == 0 || strcmp(a, "-t") == 0) {
      opt_timeout = parse_seconds(a, i + 1 < argc ? argv[++i] : NULL);
    } else if (strcmp(a, "-d") == 0) {
      top_delay = parse_seconds(a, i + 1 < argc ? argv[++i] : NULL);
    } else if (strcmp(a, "-n") == 0 || strcmp(a, "-c") == 0) {
      if (i + 1 >= argc) die_usage("%s needs a count", a);
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1) die_usage("%s needs a positive count, got '%s'", a, argv[i]);
      top_n = ping_n = v;
    } else if (a[0] == '-' && a[1]) {
      die_usage("unknown option '%s'", a);
    } else {
      if (npos == 8) die_usage("too many arguments");
      pos[npos++] = a;
    }
  }
  if (opt_url && opt_pid) die_usage("-p and --url cannot be used together");
  if (npos == 0) die_usage("a command is needed");
  const char *cmd = pos[0];
  struct {
    const char *name;
    int min, max;
  } arity[] = {{"ls", 0, 0}, {"pools", 0, 0}, {"pool", 1, 1}, {"runners", 0, 0}, {"trace", 1, 1}, {"resize", 2, 2},
               {"gc", 0, 1}, {"top", 0, 0}, {"metrics", 0, 0}, {"ping", 0, 0}, {"info", 0, 0}};
  size_t k;
  for (k = 0; k < sizeof arity / sizeof arity[0]; k++)
    if (strcmp(arity[k].name, cmd) == 0) break;
  if (k == sizeof arity / sizeof arity[0]) die_usage("unknown command '%s'", cmd);
  if (npos - 1 < arity[k].min || npos - 1 > arity[k].max) die_usage("wrong number of arguments for '%s'", cmd);
  if (strcmp(cmd, "ls") == 0) return cmd_ls();

  char url[PATH_MAX + 16], name[128];
  long pid;
  choose_target(url, sizeof url, &pid, name, sizeof name);
  conn c;
  conn_open(&c, url, pid, name);
  int rc = 0;
  if (strcmp(cmd, "pools") == 0) rc = cmd_pools(&c);
  else if (strcmp(cmd, "pool") == 0) rc = cmd_pool(&c, pos[1]);
  else if (strcmp(cmd, "runners") == 0) rc = cmd_runners(&c);
  else if (strcmp(cmd, "trace") == 0) rc = cmd_trace(&c, pos[1]);
  else if (strcmp(cmd, "resize") == 0) rc = cmd_resize(&c, pos[1], pos[2]);
  else if (strcmp(cmd, "gc") == 0) rc = cmd_gc(&c, npos > 1 ? pos[1] : NULL);
  else if (strcmp(cmd, "top") == 0) rc = cmd_top(&c, top_delay, top_n);
  else if (strcmp(cmd, "metrics") == 0) rc = cmd_metrics(&c);
  else if (strcmp(cmd, "ping") == 0) rc = cmd_ping(&c, (int)ping_n);
  else if (strcmp(cmd, "info") == 0) rc = cmd_info(&c);
  conn_close(&c);
  return rc;
}
