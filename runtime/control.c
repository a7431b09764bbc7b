/*
 * control.c -- the control socket every runtime serves (docs/actorctl.md).
 *
 * Design notes.
 * - One nng rep0 socket per runtime, listening on ipc://<dir>/<pid>.sock,
 *   where <dir> is $ACTOR_CONTROL_DIR, else $XDG_RUNTIME_DIR/actor, else
 *   /tmp/actor-<uid>; the directory is created 0700 and refused when another
 *   user owns it or it is a symlink. The socket file is 0600, and a pipe
 *   whose peer uid differs from ours is closed before it is used. A tcp://
 *   listener is added only when ACTOR_CONTROL_URL or actor.control{listen=}
 *   asks for one. ACTOR_CONTROL=0 turns the socket off. Next to the socket,
 *   <pid>.json ({pid, name, url, started}) lets `actorctl ls` list runtimes
 *   without connecting; both files are removed on close.
 * - CTL_SLOTS rep0 contexts serve that many requests at once, each with its
 *   own aio. A slot cycles RECV -> (SCHED) -> SEND -> RECV.
 * - The aio callbacks run on nng's task threads. They parse and validate
 *   the request there (ctlproto.c) and answer errors and plain pings
 *   directly. Everything that reads the runtime goes to the scheduler
 *   thread through actor__post: the snapshot is taken there, between two
 *   turns of the loop, and the reply is started from there with
 *   nng_ctx_send (asynchronous: the scheduler never waits on a client). A
 *   scheduler stuck in Lua therefore delays the answer, but never the
 *   other way round; `ping` still answers, which tells the two apart.
 * - Pool states are collected on their own threads: `gc` sends each live
 *   worker a MSG_GC (non-blocking send) carrying a callback. The last
 *   worker to finish posts the reply to the scheduler; a 2 s timer answers
 *   with what finished when a worker is held by a long job.
 * - Lifetime. actor__control_close (scheduler thread) closes the socket,
 *   stops and frees every aio, and removes the files. A slot already
 *   posted to the scheduler keeps the server alive: `posts` counts them and
 *   the last one frees it (post functions always run, at the latest during
 *   the runtime's close). A gc operation is reference-counted on its own
 *   (owner, each worker, each post), so a worker finishing after the
 *   server closed only drops its reference.
 *
 * Lock order: none held across calls here; gc entries are published with
 * release/acquire atomics.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <lauxlib.h>
#include <lualib.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "control.h"
#include "rt.h"

#define CTL_SLOTS 4
#define GC_TIMEOUT_MS 2000
#define INSPECT_KEY "actor.control.inspect"

enum slot_state { S_IDLE = 0, S_RECV, S_SCHED, S_SEND };

typedef struct ctl_server ctl_server;
typedef struct gcop gcop;

typedef struct ctl_slot {
  ctl_server *srv;
  nng_ctx ctx;
  nng_aio *aio;
  int state; /* enum slot_state; owned by whoever holds the slot */
  ctl_req req;
} ctl_slot;

struct ctl_server {
  actor_rt *rt;
  nng_socket sock;
  ctl_slot slots[CTL_SLOTS];
  atomic_int posts; /* slots handed to the scheduler and not yet run */
  int closed;
  gcop *gcs;        /* gc operations not yet answered (scheduler thread) */
  double started_wall;
  char name[128];
  char url[PATH_MAX + 16];
  char sock_path[PATH_MAX];
  char info_path[PATH_MAX];
  char extra_url[256]; /* a tcp:// listener, if configured */
};

/* ------------------------------------------------------------ helpers */

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A JSON string from arbitrary bytes: invalid UTF-8 becomes '?'. */
static json_t *json_bytes(const char *s, size_t len) {
  json_t *v = json_stringn(s, len);
  if (v) return v;
  char *c = malloc(len + 1);
  if (!c) return json_null();
  for (size_t i = 0; i < len; i++) c[i] = ((unsigned char)s[i] < 0x80 && s[i] != 0) ? s[i] : '?';
  v = json_stringn(c, len);
  free(c);
  return v ? v : json_null();
}

/* Numbers are rounded to a microsecond (or a millionth) so replies stay
 * short; dumped with 15 significant digits, timestamps keep milliseconds. */
static json_t *json_num(double d) {
  if (!isfinite(d)) return json_null();
  if (fabs(d) < 1e9) d = round(d * 1e6) / 1e6;
  return json_real(d);
}

static json_t *reply_error(const char *fmt, const char *arg) {
  char msg[512];
  snprintf(msg, sizeof msg, fmt, arg ? arg : "");
  json_t *r = json_object();
  json_object_set_new(r, "ok", json_false());
  json_object_set_new(r, "error", json_bytes(msg, strlen(msg)));
  return r;
}

static json_t *reply_ok(int cmd) {
  json_t *r = json_object();
  json_object_set_new(r, "ok", json_true());
  json_object_set_new(r, "cmd", json_string(ctl_cmd_name(cmd)));
  return r;
}

/* ------------------------------------------------------------ replies */

static void slot_cb(void *arg);

/* Starts sending `reply` (consumed) on the slot. Any thread that owns the
 * slot (its aio idle). On failure the slot goes back to receiving. */
static void slot_reply(ctl_slot *s, json_t *reply) {
  char *text = reply ? json_dumps(reply, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
  json_decref(reply);
  if (!text) text = strdup("{\"ok\":false,\"error\":\"out of memory\"}");
  nng_msg *m = NULL;
  size_t len = text ? strlen(text) : 0;
  if (text && nng_msg_alloc(&m, len) == 0) {
    memcpy(nng_msg_body(m), text, len);
  }
  free(text);
  if (!m) {
    s->state = S_RECV;
    nng_ctx_recv(s->ctx, s->aio);
    return;
  }
  s->state = S_SEND;
  nng_aio_set_msg(s->aio, m);
  nng_ctx_send(s->ctx, s->aio);
}

static void server_free(ctl_server *srv) { free(srv); }

/* ------------------------------------------------ scheduler-side work */

/* Every field of a pool row (docs/actorctl.md). Scheduler thread. */
static json_t *pool_row(actor_rt *rt, pool *p) {
  lua_State *L = rt->L;
  json_t *row = json_object();
  lua_checkstack(L, 4);
  actor__pool_stat(rt, p, L);
  struct {
    const char *from, *to;
    int integer;
  } map[] = {
      {"num_threads", "threads", 1}, {"num_active_threads", "busy", 1}, {"job_num_queued", "queued", 1},
      {"job_num_running", "running", 1}, {"invocations", "invocations", 1}, {"errors", "errors", 1},
      {"timeouts", "timeouts", 1}, {"completed", "completed", 1}, {"avg_ms", "avg_ms", 0},
      {"p50_ms", "p50_ms", 0}, {"p99_ms", "p99_ms", 0}, {"saturation", "saturation", 0},
      {"avg_concurrency", "avg_concurrency", 0}, {"backlog", "backlog", 1},
  };
  json_object_set_new(row, "name", json_bytes(p->name, strlen(p->name)));
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
    lua_getfield(L, -1, map[i].from);
    if (map[i].integer) json_object_set_new(row, map[i].to, json_integer((json_int_t)lua_tointeger(L, -1)));
    else json_object_set_new(row, map[i].to, json_num(lua_tonumber(L, -1)));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  size_t mem = 0;
  for (int i = 0; i < p->nworkers; i++) mem += atomic_load_explicit(&p->workers[i]->mem_used, memory_order_relaxed);
  json_object_set_new(row, "memory", json_integer((json_int_t)mem));
  json_object_set_new(row, "target_threads", json_integer(p->target_threads));
  return row;
}

static json_t *do_pools(actor_rt *rt) {
  json_t *r = reply_ok(CTL_POOLS);
  json_t *a = json_array();
  for (int i = 0; i < rt->npools; i++) json_array_append_new(a, pool_row(rt, rt->pools[i]));
  json_object_set_new(r, "pools", a);
  return r;
}

static json_t *do_pool(actor_rt *rt, const ctl_req *q) {
  pool *p = actor__pool_find(rt, q->pool, 0);
  if (!p) return reply_error("no such pool: '%s'", q->pool);
  double now = actor__now();
  json_t *r = reply_ok(CTL_POOL);
  json_object_set_new(r, "pool", json_bytes(p->name, strlen(p->name)));
  json_t *a = json_array();
  for (int i = 0; i < p->nworkers; i++) {
    worker *w = p->workers[i];
    json_t *t = json_object();
    int busy = atomic_load(&w->busy);
    const char *state = w->retiring ? "retiring" : !w->started ? "starting" : busy ? "busy" : "idle";
    json_object_set_new(t, "thread", json_integer(i + 1));
    json_object_set_new(t, "state", json_string(state));
    if (busy) {
      char buf[sizeof w->cur_fn + 16];
      actor__worker_current(w, buf, sizeof buf);
      double started = (double)atomic_load(&w->job_started_us) * 1e-6;
      json_object_set_new(t, "job", json_bytes(buf, strlen(buf)));
      json_object_set_new(t, "running_s", json_num(started > 0 && now >= started ? now - started : 0));
    } else {
      json_object_set_new(t, "job", json_null());
      json_object_set_new(t, "running_s", json_null());
    }
    json_object_set_new(t, "memory", json_integer((json_int_t)atomic_load(&w->mem_used)));
    json_object_set_new(t, "jobs_done", json_integer((json_int_t)atomic_load(&w->jobs_done)));
    json_object_set_new(t, "inflight", json_integer(w->inflight));
    json_array_append_new(a, t);
  }
  json_object_set_new(r, "threads", a);
  json_object_set_new(r, "target_threads", json_integer(p->target_threads));
  return r;
}

/* The Lua side of `runners` and `trace`: enumerates util.async's runners
 * through its hidden _runners(). Arguments: mode, arg, loaded, debug, now,
 * wall. Runner ids are given out here when a runner has none yet (not
 * from math.random, so inspecting never disturbs a script's sequence). */
static const char inspect_src[] =
    "local mode, arg, loaded, debug, now, wall = ...\n"
    "local getinfo, traceback = debug.getinfo, debug.traceback\n"
    "local list, seen = {}, {}\n"
    "for _, name in ipairs({'util.async', 'actor.async'}) do\n"
    "  local m = loaded[name]\n"
    "  if type(m) == 'table' and type(m._runners) == 'function' and not seen[m] then\n"
    "    seen[m] = true\n"
    "    local waiting = m.waiting_runners or {}\n"
    "    for _, r in ipairs(m._runners()) do\n"
    "      if not seen[r] then seen[r] = true; list[#list + 1] = { r, waiting[r] } end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local reg = debug.getregistry()\n"
    "local function id_of(r)\n"
    "  local id = rawget(r, 'id')\n"
    "  if id == nil then\n"
    "    local n = (reg['actor.control.nextid'] or 0) + 1\n"
    "    reg['actor.control.nextid'] = n\n"
    "    id = string.format('c%07x', n)\n"
    "    rawset(r, 'id', id)\n"
    "  end\n"
    "  return tostring(id)\n"
    "end\n"
    "local function where(th, state)\n"
    "  if type(th) ~= 'thread' or state == 'ready' then return nil end\n"
    "  local first\n"
    "  for level = 0, 200 do\n"
    "    local info = getinfo(th, level, 'Sl')\n"
    "    if not info then break end\n"
    "    if info.what ~= 'C' and (info.currentline or -1) > 0 then\n"
    "      local loc = info.short_src .. ':' .. info.currentline\n"
    "      first = first or loc\n"
    "      if info.source:sub(1, 9) ~= '@[actor]/' then return loc end\n"
    "    end\n"
    "  end\n"
    "  return first\n"
    "end\n"
    "local function row(r, since)\n"
    "  local th, q = rawget(r, 'thread'), rawget(r, 'queue')\n"
    "  local state = tostring(rawget(r, 'state'))\n"
    "  local t = { id = id_of(r), state = state, queue = type(q) == 'table' and #q or 0,\n"
    "              where = where(th, state) }\n"
    "  if since then t.waiting_s = now - since; t.waiting_since = wall - (now - since) end\n"
    "  return t\n"
    "end\n"
    "if mode == 'runners' then\n"
    "  local out = {}\n"
    "  for i, e in ipairs(list) do out[i] = row(e[1], e[2]) end\n"
    "  table.sort(out, function(a, b)\n"
    "    local wa, wb = a.waiting_s or -1, b.waiting_s or -1\n"
    "    if wa ~= wb then return wa > wb end\n"
    "    return a.id < b.id\n"
    "  end)\n"
    "  return out\n"
    "elseif mode == 'trace' then\n"
    "  for _, e in ipairs(list) do\n"
    "    local r = e[1]\n"
    "    if id_of(r) == arg then\n"
    "      local t, th = row(r, e[2]), rawget(r, 'thread')\n"
    "      if type(th) == 'thread' then\n"
    "        t.traceback = traceback(th, 'runner ' .. arg .. ' (' .. t.state .. ')')\n"
    "      else\n"
    "        t.traceback = 'runner ' .. arg .. ' (' .. t.state .. '): no coroutine'\n"
    "      end\n"
    "      return t\n"
    "    end\n"
    "  end\n"
    "  return nil, \"no runner with id '\" .. arg .. \"'\"\n"
    "else\n"
    "  local n, w = 0, 0\n"
    "  for _, e in ipairs(list) do n = n + 1; if e[2] then w = w + 1 end end\n"
    "  return { runners = n, waiting = w }\n"
    "end\n";

/* A Lua table of scalar fields as a JSON object. */
static json_t *lua_row_to_json(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  json_t *o = json_object();
  if (!lua_istable(L, idx)) return o;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, -2, &kl);
      json_t *v = NULL;
      switch (lua_type(L, -1)) {
      case LUA_TBOOLEAN: v = json_boolean(lua_toboolean(L, -1)); break;
      case LUA_TNUMBER:
        v = lua_isinteger(L, -1) ? json_integer((json_int_t)lua_tointeger(L, -1)) : json_num(lua_tonumber(L, -1));
        break;
      case LUA_TSTRING: {
        size_t sl;
        const char *s = lua_tolstring(L, -1, &sl);
        v = json_bytes(s, sl);
        break;
      }
      default: break;
      }
      if (v) {
        json_t *key = json_bytes(k, kl);
        if (json_is_string(key)) json_object_set_new(o, json_string_value(key), v);
        else json_decref(v);
        json_decref(key);
      }
    }
    lua_pop(L, 1);
  }
  return o;
}

/* Runs the inspection chunk protected; leaves its results on the stack
 * (nres of them) or returns -1 with the message on the stack. */
static int inspect_call(actor_rt *rt, const char *mode, const char *arg, int nres) {
  lua_State *L = rt->L;
  if (!lua_checkstack(L, 10)) return -2;
  if (lua_getfield(L, LUA_REGISTRYINDEX, INSPECT_KEY) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, inspect_src, sizeof inspect_src - 1, "=[actor control]", "t") != LUA_OK) return -1;
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, INSPECT_KEY);
  }
  lua_pushstring(L, mode);
  lua_pushstring(L, arg ? arg : "");
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luaL_requiref(L, "debug", luaopen_debug, 0); /* the library, even if the global was removed */
  lua_pushnumber(L, actor__now());
  lua_pushnumber(L, wall_now());
  if (lua_pcall(L, 6, nres, 0) != LUA_OK) return -1;
  return 0;
}

static json_t *do_runners(actor_rt *rt) {
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  int rc = inspect_call(rt, "runners", NULL, 1);
  json_t *r;
  if (rc != 0) {
    r = reply_error("cannot list runners: %s", rc == -1 ? lua_tostring(L, -1) : "stack overflow");
  } else {
    r = reply_ok(CTL_RUNNERS);
    json_t *a = json_array();
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      json_t *raw = lua_row_to_json(L, -1);
      lua_pop(L, 1);
      /* The documented fields first, in order, null when they do not apply. */
      const char *fields[] = {"id", "state", "queue", "waiting_since", "where", "waiting_s"};
      json_t *row = json_object();
      for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        json_t *v = json_object_get(raw, fields[f]);
        json_object_set(row, fields[f], v ? v : json_null());
      }
      json_decref(raw);
      json_array_append_new(a, row);
    }
    json_object_set_new(r, "runners", a);
  }
  lua_settop(L, top);
  return r;
}

static json_t *do_trace(actor_rt *rt, const ctl_req *q) {
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  int rc = inspect_call(rt, "trace", q->id, 2);
  json_t *r;
  if (rc != 0) {
    r = reply_error("cannot trace: %s", rc == -1 ? lua_tostring(L, -1) : "stack overflow");
  } else if (lua_isnil(L, -2)) {
    r = reply_error("%s", lua_tostring(L, -1));
  } else {
    r = lua_row_to_json(L, -2);
    json_object_set_new(r, "ok", json_true());
    json_object_set_new(r, "cmd", json_string("trace"));
  }
  lua_settop(L, top);
  return r;
}

static size_t sched_mem(lua_State *L) {
  return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

static json_t *do_info(ctl_server *srv) {
  actor_rt *rt = srv->rt;
  lua_State *L = rt->L;
  json_t *r = reply_ok(CTL_INFO);
  json_object_set_new(r, "pid", json_integer((json_int_t)getpid()));
  json_object_set_new(r, "name", json_bytes(srv->name, strlen(srv->name)));
  json_object_set_new(r, "url", json_bytes(srv->url, strlen(srv->url)));
  json_object_set_new(r, "started", json_num(srv->started_wall));
  json_object_set_new(r, "uptime", json_num(actor__now() - rt->started_at));
#ifdef ACTOR_VERSION
  json_object_set_new(r, "version", json_string(ACTOR_VERSION));
#endif
  json_object_set_new(r, "lua", json_string(LUA_RELEASE));
  json_object_set_new(r, "memory", json_integer((json_int_t)sched_mem(L)));
  json_object_set_new(r, "pools", json_integer(rt->npools));
  json_object_set_new(r, "pending", json_integer(actor__pending(rt)));
  int top = lua_gettop(L);
  if (inspect_call(rt, "count", NULL, 1) == 0 && lua_istable(L, -1)) {
    lua_getfield(L, -1, "runners");
    json_object_set_new(r, "runners", json_integer((json_int_t)lua_tointeger(L, -1)));
    lua_getfield(L, -2, "waiting");
    json_object_set_new(r, "waiting", json_integer((json_int_t)lua_tointeger(L, -1)));
  }
  lua_settop(L, top);
  return r;
}

static json_t *do_resize(actor_rt *rt, const ctl_req *q) {
  pool *p = actor__pool_find(rt, q->pool, 0);
  if (!p) return reply_error("no such pool: '%s'", q->pool);
  if (p->closing) return reply_error("pool %s is shutting down", p->name);
  int before = p->target_threads;
  int rv = actor__pool_resize(p, q->threads);
  if (rv != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "cannot resize pool %s: %s", p->name, nng_strerror(rv));
    return reply_error("%s", msg);
  }
  json_t *r = reply_ok(CTL_RESIZE);
  json_object_set_new(r, "pool", json_bytes(p->name, strlen(p->name)));
  json_object_set_new(r, "before", json_integer(before));
  json_object_set_new(r, "threads", json_integer(p->target_threads));
  json_object_set_new(r, "started", json_boolean(p->nworkers > 0));
  return r;
}

/* Prometheus label value: \ " and newline escaped. */
static void prom_label(char *out, size_t cap, const char *s) {
  size_t o = 0;
  for (; *s && o + 3 < cap; s++) {
    if (*s == '\\' || *s == '"') { out[o++] = '\\'; out[o++] = *s; }
    else if (*s == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
    else out[o++] = *s;
  }
  out[o] = 0;
}

typedef struct sbuf {
  char *s;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if (b->s && (size_t)n < b->cap - b->len) { b->len += (size_t)n; return; }
    size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
    char *ns = realloc(b->s, ncap);
    if (!ns) { b->oom = 1; return; }
    b->s = ns;
    b->cap = ncap;
  }
}

static json_t *do_metrics(ctl_server *srv) {
  actor_rt *rt = srv->rt;
  lua_State *L = rt->L;
  sbuf b = {0};
  struct {
    const char *metric, *field, *type, *help;
  } g[] = {
      {"actor_pool_threads", "num_threads", "gauge", "Threads of the pool."},
      {"actor_pool_busy_threads", "num_active_threads", "gauge", "Threads running a job now."},
      {"actor_pool_queued_jobs", "job_num_queued", "gauge", "Jobs waiting for a thread."},
      {"actor_pool_running_jobs", "job_num_running", "gauge", "Jobs handed to a thread and not answered."},
      {"actor_pool_invocations_total", "invocations", "counter", "Jobs submitted to the pool."},
      {"actor_pool_errors_total", "errors", "counter", "Jobs that raised an error."},
      {"actor_pool_timeouts_total", "timeouts", "counter", "Jobs whose caller timed out."},
      {"actor_pool_saturation", "saturation", "gauge", "Average concurrency over the pool's life divided by its threads."},
      {"actor_pool_job_p50_seconds", "p50_ms", "gauge", "Median wall time of a job (log2 bucket bound)."},
      {"actor_pool_job_p99_seconds", "p99_ms", "gauge", "99th percentile wall time of a job (log2 bucket bound)."},
  };
  int np = rt->npools;
  char (*labels)[160] = calloc(np ? (size_t)np : 1, sizeof *labels);
  if (!labels) return reply_error("out of memory", NULL);
  for (int i = 0; i < np; i++) prom_label(labels[i], sizeof labels[i], rt->pools[i]->name);
  lua_checkstack(L, 4);
  for (size_t k = 0; k < sizeof g / sizeof g[0]; k++) {
    sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", g[k].metric, g[k].help, g[k].metric, g[k].type);
    int ms = strstr(g[k].field, "_ms") != NULL;
    for (int i = 0; i < np; i++) {
      actor__pool_stat(rt, rt->pools[i], L);
      lua_getfield(L, -1, g[k].field);
      if (lua_isinteger(L, -1)) sb_printf(&b, "%s{pool=\"%s\"} %lld\n", g[k].metric, labels[i], (long long)lua_tointeger(L, -1));
      else sb_printf(&b, "%s{pool=\"%s\"} %.9g\n", g[k].metric, labels[i], lua_tonumber(L, -1) / (ms ? 1000.0 : 1.0));
      lua_pop(L, 2);
    }
  }
  sb_printf(&b, "# HELP actor_pool_memory_bytes Bytes held by the pool's Lua states.\n# TYPE actor_pool_memory_bytes gauge\n");
  for (int i = 0; i < np; i++) {
    pool *p = rt->pools[i];
    size_t mem = 0;
    for (int w = 0; w < p->nworkers; w++) mem += atomic_load(&p->workers[w]->mem_used);
    sb_printf(&b, "actor_pool_memory_bytes{pool=\"%s\"} %zu\n", labels[i], mem);
  }
  /* The pool's log2 histogram of job wall time, as a Prometheus histogram:
   * bucket b holds jobs of fewer than 2^(b+1) microseconds. */
  sb_printf(&b, "# HELP actor_pool_job_duration_seconds Wall time of the jobs a pool ran.\n"
                "# TYPE actor_pool_job_duration_seconds histogram\n");
  for (int i = 0; i < np; i++) {
    pool *p = rt->pools[i];
    int last = 0;
    for (int h = 0; h < POOL_HIST; h++)
      if (p->hist[h]) last = h;
    uint64_t acc = 0;
    for (int h = 0; h <= last && h < POOL_HIST - 1; h++) {
      acc += p->hist[h];
      sb_printf(&b, "actor_pool_job_duration_seconds_bucket{pool=\"%s\",le=\"%.9g\"} %llu\n", labels[i],
                (double)(1ull << (h + 1)) * 1e-6, (unsigned long long)acc);
    }
    sb_printf(&b, "actor_pool_job_duration_seconds_bucket{pool=\"%s\",le=\"+Inf\"} %llu\n", labels[i], (unsigned long long)p->completed);
    sb_printf(&b, "actor_pool_job_duration_seconds_sum{pool=\"%s\"} %.9g\n", labels[i], p->total_wall);
    sb_printf(&b, "actor_pool_job_duration_seconds_count{pool=\"%s\"} %llu\n", labels[i], (unsigned long long)p->completed);
  }
  sb_printf(&b, "# HELP actor_scheduler_memory_bytes Bytes held by the scheduler's Lua state.\n"
                "# TYPE actor_scheduler_memory_bytes gauge\nactor_scheduler_memory_bytes %zu\n", sched_mem(L));
  sb_printf(&b, "# HELP actor_uptime_seconds Seconds since the runtime started.\n"
                "# TYPE actor_uptime_seconds gauge\nactor_uptime_seconds %.3f\n", actor__now() - rt->started_at);
  free(labels);
  (void)srv;
  if (b.oom) {
    free(b.s);
    return reply_error("out of memory", NULL);
  }
  json_t *r = reply_ok(CTL_METRICS);
  json_object_set_new(r, "text", json_bytes(b.s ? b.s : "", b.len));
  free(b.s);
  return r;
}

/* ---------------------------------------------------------------- gc */

typedef struct gc_ent {
  gcop *op;
  char pool[64];
  int thread;
  size_t before, after;
  atomic_int done; /* release: before/after are written */
} gc_ent;

struct gcop {
  atomic_int refs;
  atomic_int remaining;
  actor_rt *rt;
  ctl_server *srv; /* valid while !answered */
  ctl_slot *slot;
  nng_aio *taio;
  int answered;
  json_t *states; /* scheduler entry, built before the workers are asked */
  size_t before, after;
  int n;
  gcop *next;
  gc_ent ents[];
};

static void gcop_unref(gcop *op) {
  if (atomic_fetch_sub(&op->refs, 1) != 1) return;
  if (op->taio) nng_aio_free(op->taio); /* stopped by whoever answered */
  json_decref(op->states);
  free(op);
}

static void gc_finish(actor_rt *rt, void *ud);

/* Worker thread (worker.c, MSG_GC), after its collection. */
static void gc_worker_done(void *ud, size_t before, size_t after) {
  gc_ent *e = ud;
  gcop *op = e->op;
  e->before = before;
  e->after = after;
  atomic_store_explicit(&e->done, 1, memory_order_release);
  if (atomic_fetch_sub(&op->remaining, 1) == 1) {
    atomic_fetch_add(&op->refs, 1);
    if (actor__post(op->rt, gc_finish, op) != 0) gcop_unref(op); /* the timer answers */
  }
  gcop_unref(op);
}

/* nng thread: the wait for workers is over. */
static void gc_timeout_cb(void *arg) {
  gcop *op = arg;
  if (nng_aio_result(op->taio) != NNG_ETIMEDOUT) return; /* stopped */
  atomic_fetch_add(&op->refs, 1);
  if (actor__post(op->rt, gc_finish, op) != 0) gcop_unref(op);
}

static void gc_unlink(ctl_server *srv, gcop *op) {
  for (gcop **pp = &srv->gcs; *pp; pp = &(*pp)->next)
    if (*pp == op) {
      *pp = op->next;
      return;
    }
}

/* Scheduler thread: answers once, with every entry that finished. */
static void gc_finish(actor_rt *rt, void *ud) {
  gcop *op = ud;
  (void)rt;
  if (!op->answered) {
    op->answered = 1;
    nng_aio_stop(op->taio);
    gc_unlink(op->srv, op);
    json_t *states = op->states;
    op->states = NULL;
    size_t before = op->before, after = op->after;
    int pending = 0;
    for (int i = 0; i < op->n; i++) {
      gc_ent *e = &op->ents[i];
      json_t *s = json_object();
      char nm[96];
      snprintf(nm, sizeof nm, "%s/%d", e->pool, e->thread);
      json_object_set_new(s, "state", json_bytes(nm, strlen(nm)));
      json_object_set_new(s, "pool", json_bytes(e->pool, strlen(e->pool)));
      json_object_set_new(s, "thread", json_integer(e->thread));
      if (atomic_load_explicit(&e->done, memory_order_acquire)) {
        json_object_set_new(s, "before", json_integer((json_int_t)e->before));
        json_object_set_new(s, "after", json_integer((json_int_t)e->after));
        before += e->before;
        after += e->after;
      } else {
        json_object_set_new(s, "before", json_null());
        json_object_set_new(s, "after", json_null());
        json_object_set_new(s, "pending", json_true()); /* busy with a job; collects after it */
        pending++;
      }
      json_array_append_new(states, s);
    }
    json_t *r = reply_ok(CTL_GC);
    json_object_set_new(r, "states", states);
    json_object_set_new(r, "before", json_integer((json_int_t)before));
    json_object_set_new(r, "after", json_integer((json_int_t)after));
    json_object_set_new(r, "pending", json_integer(pending));
    slot_reply(op->slot, r);
    gcop_unref(op); /* the owner's reference */
  }
  gcop_unref(op); /* this post's reference */
}

static json_t *gc_state_row(const char *state, const char *pool, int thread, size_t before, size_t after) {
  json_t *s = json_object();
  json_object_set_new(s, "state", json_bytes(state, strlen(state)));
  json_object_set_new(s, "pool", pool ? json_bytes(pool, strlen(pool)) : json_null());
  json_object_set_new(s, "thread", thread ? json_integer(thread) : json_null());
  json_object_set_new(s, "before", json_integer((json_int_t)before));
  json_object_set_new(s, "after", json_integer((json_int_t)after));
  return s;
}

/* Collects the scheduler state (no pool given) at once and asks the
 * workers; returns NULL when the reply will come from gc_finish. */
static json_t *do_gc(ctl_slot *slot) {
  ctl_server *srv = slot->srv;
  actor_rt *rt = srv->rt;
  const ctl_req *q = &slot->req;
  pool *only = NULL;
  if (q->pool[0]) {
    only = actor__pool_find(rt, q->pool, 0);
    if (!only) return reply_error("no such pool: '%s'", q->pool);
  }
  int n = 0;
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    if (only && p != only) continue;
    for (int k = 0; k < p->nworkers; k++) n++;
  }
  gcop *op = calloc(1, sizeof *op + (size_t)n * sizeof(gc_ent));
  if (!op) return reply_error("out of memory", NULL);
  op->rt = rt;
  op->srv = srv;
  op->slot = slot;
  op->states = json_array();
  atomic_init(&op->refs, 1);
  atomic_init(&op->remaining, 1); /* held while the workers are asked */
  if (!only) {
    size_t b = sched_mem(rt->L);
    lua_gc(rt->L, LUA_GCCOLLECT, 0);
    size_t a = sched_mem(rt->L);
    json_array_append_new(op->states, gc_state_row("scheduler", NULL, 0, b, a));
    op->before += b;
    op->after += a;
  }
  if (nng_aio_alloc(&op->taio, gc_timeout_cb, op) != 0) {
    gcop_unref(op);
    return reply_error("out of memory", NULL);
  }
  for (int i = 0; i < rt->npools; i++) {
    pool *p = rt->pools[i];
    if (only && p != only) continue;
    for (int k = 0; k < p->nworkers; k++) {
      worker *w = p->workers[k];
      if (!w->started || w->retiring || w->stop_sent || atomic_load(&w->exited)) continue;
      gc_ent *e = &op->ents[op->n];
      e->op = op;
      snprintf(e->pool, sizeof e->pool, "%s", p->name);
      e->thread = k + 1;
      atomic_init(&e->done, 0);
      struct {
        wire_hdr h;
        wire_gc g;
      } body = {{WIRE_VERSION, MSG_GC, 0, 1}, {gc_worker_done, e}};
      nng_msg *m;
      if (nng_msg_alloc(&m, sizeof body) != 0) continue;
      memcpy(nng_msg_body(m), &body, sizeof body);
      atomic_fetch_add(&op->refs, 1);
      atomic_fetch_add(&op->remaining, 1);
      op->n++;
      if (nng_sendmsg(w->ssock, m, NNG_FLAG_NONBLOCK) != 0) {
        /* The worker's queue is full: report it as pending. */
        nng_msg_free(m);
        atomic_fetch_sub(&op->remaining, 1);
        atomic_fetch_sub(&op->refs, 1);
      }
    }
  }
  op->next = srv->gcs;
  srv->gcs = op;
  nng_sleep_aio(GC_TIMEOUT_MS, op->taio);
  /* Drop the guard; if every worker already finished (or none was asked),
   * answer now, holding a reference as a post would. */
  if (atomic_fetch_sub(&op->remaining, 1) == 1) {
    atomic_fetch_add(&op->refs, 1);
    gc_finish(rt, op);
  }
  return NULL;
}

/* ------------------------------------------------------ dispatching */

static json_t *ping_reply(ctl_server *srv, int via_sched) {
  json_t *r = reply_ok(CTL_PING);
  json_object_set_new(r, "pid", json_integer((json_int_t)getpid()));
  json_object_set_new(r, "via", json_string(via_sched ? "scheduler" : "control"));
  json_object_set_new(r, "time", json_num(wall_now()));
  (void)srv;
  return r;
}

/* Scheduler thread: runs a request posted by slot_cb. */
static void slot_run(actor_rt *rt, void *ud) {
  ctl_slot *s = ud;
  ctl_server *srv = s->srv;
  if (srv->closed || rt->shutting_down) {
    /* The socket is gone; no reply can be sent. */
    if (atomic_fetch_sub(&srv->posts, 1) == 1 && srv->closed) server_free(srv);
    return;
  }
  atomic_fetch_sub(&srv->posts, 1);
  json_t *r = NULL;
  switch (s->req.cmd) {
  case CTL_PING: r = ping_reply(srv, 1); break;
  case CTL_INFO: r = do_info(srv); break;
  case CTL_POOLS: r = do_pools(rt); break;
  case CTL_POOL: r = do_pool(rt, &s->req); break;
  case CTL_RUNNERS: r = do_runners(rt); break;
  case CTL_TRACE: r = do_trace(rt, &s->req); break;
  case CTL_RESIZE: r = do_resize(rt, &s->req); break;
  case CTL_METRICS: r = do_metrics(srv); break;
  case CTL_GC:
    r = do_gc(s);
    if (!r) return; /* answered by gc_finish */
    break;
  default: r = reply_error("unknown command", NULL); break;
  }
  slot_reply(s, r);
}

/* nng task thread. Must not touch Lua or block. */
static void slot_cb(void *arg) {
  ctl_slot *s = arg;
  ctl_server *srv = s->srv;
  int rv = nng_aio_result(s->aio);
  if (s->state == S_SEND) {
    if (rv != 0) {
      nng_msg_free(nng_aio_get_msg(s->aio));
      nng_aio_set_msg(s->aio, NULL);
      if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    }
    s->state = S_RECV;
    nng_ctx_recv(s->ctx, s->aio);
    return;
  }
  if (s->state != S_RECV) return;
  if (rv != 0) {
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    nng_ctx_recv(s->ctx, s->aio); /* e.g. a peer went away */
    return;
  }
  nng_msg *m = nng_aio_get_msg(s->aio);
  nng_aio_set_msg(s->aio, NULL);
  char err[256];
  int prc = ctl_parse_request(nng_msg_body(m), nng_msg_len(m), &s->req, err, sizeof err);
  nng_msg_free(m);
  if (prc != 0) {
    slot_reply(s, reply_error("%s", err));
    return;
  }
  if (s->req.cmd == CTL_PING && !s->req.via_sched) {
    slot_reply(s, ping_reply(srv, 0));
    return;
  }
  s->state = S_SCHED;
  atomic_fetch_add(&srv->posts, 1);
  if (actor__post(srv->rt, slot_run, s) != 0) {
    atomic_fetch_sub(&srv->posts, 1);
    slot_reply(s, reply_error("out of memory", NULL));
  }
  /* From here on the slot belongs to the scheduler: do not touch it. */
}

/* Pipes from another user are closed before use (ipc only; a tcp peer
 * has no uid and is allowed: tcp is opt-in). */
static void pipe_check(nng_pipe p, nng_pipe_ev ev, void *arg) {
  (void)ev;
  (void)arg;
  uint64_t uid;
  if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_UID, &uid) == 0 && uid != (uint64_t)geteuid()) nng_pipe_close(p);
}

/* ------------------------------------------------------ files & dirs */

/* Creates (or checks) a 0700 directory owned by us. Returns 0 or errno. */
static int ensure_dir(const char *dir) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) return errno;
  struct stat st;
  if (lstat(dir, &st) != 0) return errno;
  if (!S_ISDIR(st.st_mode)) return ENOTDIR;
  if (st.st_uid != geteuid()) return EPERM;
  if ((st.st_mode & 077) != 0 && chmod(dir, 0700) != 0) return errno;
  return 0;
}

/* The directory every runtime of this user serves its socket in. */
static int control_dir(char *out, size_t cap) {
  const char *d = getenv("ACTOR_CONTROL_DIR");
  if (d && *d) {
    if ((size_t)snprintf(out, cap, "%s", d) >= cap) return ENAMETOOLONG;
    return ensure_dir(out);
  }
  const char *x = getenv("XDG_RUNTIME_DIR");
  struct stat st;
  if (x && *x == '/' && stat(x, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid()) {
    if ((size_t)snprintf(out, cap, "%s/actor", x) < cap && ensure_dir(out) == 0) return 0;
  }
  if ((size_t)snprintf(out, cap, "/tmp/actor-%lu", (unsigned long)geteuid()) >= cap) return ENAMETOOLONG;
  return ensure_dir(out);
}

/* Program name plus the first argument that names a Lua file. */
static void default_name(char *out, size_t cap) {
  const char *env = getenv("ACTOR_NAME");
  if (env && *env) {
    snprintf(out, cap, "%s", env);
    return;
  }
  snprintf(out, cap, "actor");
  FILE *f = fopen("/proc/self/cmdline", "rb");
  if (!f) return;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *prog = NULL, *script = NULL;
  for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
    const char *a = buf + i;
    if (!prog) {
      prog = a;
      continue;
    }
    size_t l = strlen(a);
    if (l > 4 && strcmp(a + l - 4, ".lua") == 0) {
      script = a;
      break;
    }
  }
  if (!prog) return;
  const char *pb = strrchr(prog, '/');
  pb = pb ? pb + 1 : prog;
  if (script) {
    const char *sb = strrchr(script, '/');
    snprintf(out, cap, "%.60s %.60s", pb, sb ? sb + 1 : script);
  } else {
    snprintf(out, cap, "%.120s", pb);
  }
}

/* Writes <pid>.json atomically (temporary file, then rename). */
static int write_info(ctl_server *srv) {
  json_t *o = json_object();
  json_object_set_new(o, "pid", json_integer((json_int_t)getpid()));
  json_object_set_new(o, "name", json_bytes(srv->name, strlen(srv->name)));
  json_object_set_new(o, "url", json_bytes(srv->url, strlen(srv->url)));
  json_object_set_new(o, "started", json_real(round(srv->started_wall * 1000) / 1000));
  if (srv->extra_url[0]) json_object_set_new(o, "tcp", json_bytes(srv->extra_url, strlen(srv->extra_url)));
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", srv->info_path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = -1;
  if (fd >= 0) {
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (text) {
      size_t len = strlen(text);
      rc = write(fd, text, len) == (ssize_t)len ? 0 : -1;
      free(text);
    }
    close(fd);
    if (rc == 0) rc = rename(tmp, srv->info_path);
    if (rc != 0) unlink(tmp);
  }
  json_decref(o);
  return rc;
}

/* ------------------------------------------------------ open / close */

static int listen_ipc(ctl_server *srv, const char *dir, const char *stem) {
  int n = snprintf(srv->sock_path, sizeof srv->sock_path, "%s/%s.sock", dir, stem);
  if (n < 0 || (size_t)n >= sizeof srv->sock_path || (size_t)n > 100) return NNG_EADDRINVAL;
  snprintf(srv->info_path, sizeof srv->info_path, "%s/%s.json", dir, stem);
  snprintf(srv->url, sizeof srv->url, "ipc://%s", srv->sock_path);
  nng_listener l;
  int rv = nng_listener_create(&l, srv->sock, srv->url);
  if (rv != 0) return rv;
  nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
  rv = nng_listener_start(l, 0);
  if (rv != 0) nng_listener_close(l);
  return rv;
}

static int lcontrol(lua_State *L);

/* actor.control: set into the module table (the registry's actor.module). */
static void install_lua_api(actor_rt *rt) {
  lua_State *L = rt->L;
  lua_checkstack(L, 4);
  if (lua_getfield(L, LUA_REGISTRYINDEX, "actor.module") == LUA_TTABLE) {
    lua_getfield(L, LUA_REGISTRYINDEX, "actor.runtime"); /* actor_rt ** userdata */
    lua_pushcclosure(L, lcontrol, 1);
    lua_setfield(L, -2, "control");
  }
  lua_pop(L, 1);
}

static int control_disabled(void) {
  const char *e = getenv("ACTOR_CONTROL");
  return e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "no") == 0 || strcmp(e, "false") == 0);
}

/* Opens the server; on failure returns nonzero with a reason in err. */
static int server_open(actor_rt *rt, const char *name, const char *extra, char *err, size_t errlen) {
  ctl_server *srv = calloc(1, sizeof *srv);
  if (!srv) return ENOMEM;
  srv->rt = rt;
  srv->started_wall = wall_now() - (actor__now() - rt->started_at);
  atomic_init(&srv->posts, 0);
  if (name) snprintf(srv->name, sizeof srv->name, "%s", name);
  else default_name(srv->name, sizeof srv->name);
  char dir[PATH_MAX];
  int rv = control_dir(dir, sizeof dir);
  if (rv != 0) {
    snprintf(err, errlen, "directory %s: %s", dir, strerror(rv));
    free(srv);
    return rv;
  }
  if ((rv = nng_rep0_open(&srv->sock)) != 0) {
    snprintf(err, errlen, "%s", nng_strerror(rv));
    free(srv);
    return rv;
  }
  nng_socket_set_size(srv->sock, NNG_OPT_RECVMAXSZ, CTL_MAX_MESSAGE);
  nng_pipe_notify(srv->sock, NNG_PIPE_EV_ADD_PRE, pipe_check, NULL);
  char stem[64];
  snprintf(stem, sizeof stem, "%ld", (long)getpid());
  rv = listen_ipc(srv, dir, stem);
  if (rv == NNG_EADDRINUSE) {
    /* A second runtime in this process. */
    snprintf(stem, sizeof stem, "%ld-%d", (long)getpid(), rt->id);
    rv = listen_ipc(srv, dir, stem);
  }
  if (rv != 0) {
    snprintf(err, errlen, "%s: %s", srv->url, nng_strerror(rv));
    goto fail;
  }
  if (!extra) extra = getenv("ACTOR_CONTROL_URL");
  if (extra && *extra) {
    if ((rv = nng_listen(srv->sock, extra, NULL, 0)) != 0) {
      snprintf(err, errlen, "cannot listen on %s: %s", extra, nng_strerror(rv));
      goto fail;
    }
    snprintf(srv->extra_url, sizeof srv->extra_url, "%s", extra);
  }
  for (int i = 0; i < CTL_SLOTS; i++) {
    ctl_slot *s = &srv->slots[i];
    s->srv = srv;
    if ((rv = nng_ctx_open(&s->ctx, srv->sock)) != 0 || (rv = nng_aio_alloc(&s->aio, slot_cb, s)) != 0) {
      snprintf(err, errlen, "%s", nng_strerror(rv));
      goto fail;
    }
  }
  write_info(srv);
  rt->control = srv;
  for (int i = 0; i < CTL_SLOTS; i++) {
    srv->slots[i].state = S_RECV;
    nng_ctx_recv(srv->slots[i].ctx, srv->slots[i].aio);
  }
  return 0;
fail:
  nng_close(srv->sock);
  for (int i = 0; i < CTL_SLOTS; i++)
    if (srv->slots[i].aio) nng_aio_free(srv->slots[i].aio);
  if (srv->info_path[0]) unlink(srv->info_path);
  free(srv);
  return rv;
}

int actor__control_open(actor_rt *rt) {
  install_lua_api(rt);
  if (control_disabled()) return 0;
  char err[PATH_MAX + 64];
  int rv = server_open(rt, NULL, NULL, err, sizeof err);
  /* Only an explicit tcp:// request that fails is worth a word: the
   * runtime runs on without inspection either way. */
  if (rv != 0 && getenv("ACTOR_CONTROL_URL")) fprintf(stderr, "actor: control socket disabled: %s\n", err);
  return rv;
}

void actor__control_close(actor_rt *rt) {
  ctl_server *srv = rt->control;
  if (!srv) return;
  rt->control = NULL;
  srv->closed = 1;
  nng_close(srv->sock); /* aborts every pending receive and send */
  for (int i = 0; i < CTL_SLOTS; i++) nng_aio_stop(srv->slots[i].aio);
  for (int i = 0; i < CTL_SLOTS; i++) {
    nng_msg *m = nng_aio_get_msg(srv->slots[i].aio);
    if (srv->slots[i].state == S_SEND && m) nng_msg_free(m);
    nng_aio_free(srv->slots[i].aio);
    srv->slots[i].aio = NULL;
  }
  while (srv->gcs) {
    gcop *op = srv->gcs;
    srv->gcs = op->next;
    op->answered = 1;
    nng_aio_stop(op->taio);
    gcop_unref(op); /* the owner's; workers and posts hold their own */
  }
  unlink(srv->info_path);
  unlink(srv->sock_path); /* nng removes it too; a second unlink is harmless */
  if (atomic_load(&srv->posts) == 0) server_free(srv);
}

/* actor.control([opts]) -> info table, or nil when the socket is off.
 *   opts.enabled = false closes the socket, true opens it again;
 *   opts.name renames the runtime in `actorctl ls`;
 *   opts.listen = "tcp://127.0.0.1:7070" adds a tcp listener (reopens).
 * Raises only for misuse; a socket that cannot open returns nil, message. */
static int lcontrol(lua_State *L) {
  actor_rt **u = lua_touserdata(L, lua_upvalueindex(1));
  if (!u || !*u || (*u)->closed || (*u)->shutting_down) return luaL_error(L, "the actor runtime is closed");
  actor_rt *rt = *u;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "enabled");
    int has_enabled = !lua_isnil(L, -1), enabled = lua_toboolean(L, -1);
    lua_getfield(L, 1, "name");
    const char *name = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
    if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TSTRING || !*name || strlen(name) >= 128))
      luaL_argerror(L, 1, "option 'name' must be a string of 1 to 127 bytes");
    lua_getfield(L, 1, "listen");
    const char *listen = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "option 'listen' must be a URL string");
    ctl_server *srv = rt->control;
    if (has_enabled && !enabled) {
      actor__control_close(rt);
    } else if ((has_enabled && !srv) || listen) {
      char keep_name[128] = "";
      char keep_extra[256] = "";
      if (srv) {
        snprintf(keep_name, sizeof keep_name, "%s", srv->name);
        snprintf(keep_extra, sizeof keep_extra, "%s", srv->extra_url);
        actor__control_close(rt);
      }
      const char *nm = name ? name : keep_name[0] ? keep_name : NULL;
      char err[PATH_MAX + 64];
      int rv = server_open(rt, nm, listen ? listen : keep_extra[0] ? keep_extra : NULL, err, sizeof err);
      if (rv != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot open the control socket: %s", err);
        return 2;
      }
    } else if (name && srv) {
      snprintf(srv->name, sizeof srv->name, "%s", name);
      write_info(srv);
    }
  }
  ctl_server *srv = rt->control;
  if (!srv) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)getpid());
  lua_setfield(L, -2, "pid");
  lua_pushstring(L, srv->name);
  lua_setfield(L, -2, "name");
  lua_pushstring(L, srv->url);
  lua_setfield(L, -2, "url");
  lua_pushstring(L, srv->sock_path);
  lua_setfield(L, -2, "path");
  if (srv->extra_url[0]) {
    lua_pushstring(L, srv->extra_url);
    lua_setfield(L, -2, "tcp");
  }
  return 1;
}
