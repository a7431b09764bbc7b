/*
 * lserve.c -- `actor serve`: an actor script's handlers served on nng
 * sockets.
 *
 *   actor serve [options] script.lua [more.lua...]
 *     --listen URL       rep0 socket: request/reply (repeatable)
 *     --pull URL         pull0 socket: one-way messages (repeatable)
 *     --contexts N       requests served at once per rep socket (default 64)
 *     --pool NAME=N      create or resize a pool before loading scripts
 *
 * A request is one msgpack value:
 *   [handler, args...]                         array form
 *   {handler = h, args = [...], session = id}  map form ("h", "s" also work)
 * The reply (rep0 only) is [true, results...] or [false, message].
 * Events of one connection (nng pipe) form one session, unless the map form
 * names a session: then every connection that names it shares it. A pipe's
 * session ends when its connection closes. See docs/actor-scripts.md.
 *
 * Design notes.
 * - Everything but the nng callbacks runs on the scheduler thread. An aio
 *   callback (nng's thread) only posts an srv_ev to the loop with
 *   actor__post; the loop then decodes, dispatches to actor.session,
 *   encodes the reply and starts the next nng operation.
 * - A rep socket has N contexts, each cycling recv -> handler -> send ->
 *   recv, so N requests (from any connections) are in progress at once.
 *   A pull socket has one aio that is re-armed as soon as a message
 *   arrives: messages enter their sessions in arrival order.
 * - Shutdown (SIGINT/SIGTERM): the sockets close (their aios complete with
 *   NNG_ECLOSED), every aio is stopped, then the state closes; events that
 *   reach the loop meanwhile see srv->closing and only free their message.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/reqrep0/rep.h>

#include "rt.h"

int luaopen_actor(lua_State *L);
int actor_serve_main(int argc, char **argv);

#define SERVE_USAGE                                                                                 \
  "usage: actor serve [--listen URL]... [--pull URL]... [--contexts N] [--pool NAME=N] script.lua " \
  "[more.lua...]"

typedef struct srv srv;

enum { OP_NONE, OP_RECV, OP_SEND };

typedef struct srv_ctx {
  srv *s;
  nng_socket sock;
  int is_rep;
  nng_ctx ctx; /* rep only */
  nng_aio *aio;
  int op;      /* the operation in progress: set before it starts */
} srv_ctx;

struct srv {
  lua_State *L;
  actor_rt *rt;
  nng_socket *socks;
  int nsocks;
  srv_ctx **ctxs;
  int nctxs;
  int closing;
  int dispatch_ref, finish_ref, done_ref;
  codec_buf out;
  unsigned long served, failed;
  pthread_mutex_t pipe_mu;
  int pipes_open; /* pipe_mu */
};

typedef struct srv_ev {
  srv *s;
  srv_ctx *c;    /* NULL for a pipe event */
  int op;
  int result;
  nng_msg *m;
  uint32_t pipe; /* pipe event: the connection that closed */
} srv_ev;

static volatile sig_atomic_t g_stop;
static int g_efd = -1;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
  if (g_efd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(g_efd, &one, sizeof one);
    (void)n;
  }
}

/* ------------------------------------------------------- nng callbacks */

static void ev_run(actor_rt *rt, void *ud);

/* nng's thread: hand the completion to the loop. */
static void aio_cb(void *arg) {
  srv_ctx *c = arg;
  srv_ev *ev = calloc(1, sizeof *ev);
  nng_msg *m = NULL;
  int rv = nng_aio_result(c->aio);
  if (c->op == OP_RECV && rv == 0) m = nng_aio_get_msg(c->aio);
  else if (c->op == OP_SEND && rv != 0) m = nng_aio_get_msg(c->aio); /* not sent: ours */
  if (!ev) {
    if (m) nng_msg_free(m); /* out of memory: the context stays idle */
    return;
  }
  ev->s = c->s;
  ev->c = c;
  ev->op = c->op;
  ev->result = rv;
  ev->m = m;
  if (actor__post(c->s->rt, ev_run, ev) != 0) {
    if (m) nng_msg_free(m);
    free(ev);
  }
}

/* nng's thread: a connection went away; its session ends. */
static void pipe_cb(nng_pipe p, nng_pipe_ev what, void *arg) {
  srv *s = arg;
  if (what != NNG_PIPE_EV_REM_POST) return;
  srv_ev *ev = calloc(1, sizeof *ev);
  if (!ev) return;
  ev->s = s;
  ev->pipe = (uint32_t)nng_pipe_id(p);
  /* pipes may close after the socket did: post only while the runtime is
   * known to be up (pipe_mu orders this against the shutdown) */
  pthread_mutex_lock(&s->pipe_mu);
  int posted = s->pipes_open && actor__post(s->rt, ev_run, ev) == 0;
  pthread_mutex_unlock(&s->pipe_mu);
  if (!posted) free(ev);
}

/* ------------------------------------------------------------- the loop */

static void start_recv(srv_ctx *c) {
  c->op = OP_RECV;
  if (c->is_rep) nng_ctx_recv(c->ctx, c->aio);
  else nng_recv_aio(c->sock, c->aio);
}

static void send_reply(srv_ctx *c, codec_buf *b) {
  nng_msg *m;
  if (nng_msg_alloc(&m, b->len) != 0) {
    start_recv(c); /* the requester will time out; keep serving */
    return;
  }
  memcpy(nng_msg_body(m), b->data, b->len);
  nng_aio_set_msg(c->aio, m);
  c->op = OP_SEND;
  nng_ctx_send(c->ctx, c->aio);
}

/* [false, message] */
static void reply_error(srv *s, srv_ctx *c, const char *msg) {
  s->failed++;
  if (!c || !c->is_rep) {
    fprintf(stderr, "actor serve: %s\n", msg);
    return;
  }
  codec_buf *b = &s->out;
  b->len = 0;
  size_t n = strlen(msg);
  unsigned char h[6] = {0x92, 0xc2, 0xdb, (unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8)};
  codec_buf_append(b, h, sizeof h);
  unsigned char last = (unsigned char)n;
  codec_buf_append(b, &last, 1);
  codec_buf_append(b, msg, n);
  send_reply(c, b);
}

/* done(token, status, ...): the completion of actor.session (see there).
 * token is the rep context, or nil for one-way messages. */
static int serve_done_l(lua_State *L) {
  srv *s = lua_touserdata(L, lua_upvalueindex(1));
  srv_ctx *c = lua_touserdata(L, 1);
  int top = lua_gettop(L);
  if (s->closing) return 0;
  int ok = lua_toboolean(L, 2);
  if (!ok) {
    const char *m = lua_tostring(L, 3);
    reply_error(s, c, m ? m : "handler failed");
    return 0;
  }
  s->served++;
  if (!c) return 0; /* one-way: results are dropped */
  codec_buf *b = &s->out;
  b->len = 0;
  uint32_t n = (uint32_t)(top - 1); /* true + results */
  unsigned char h[5];
  if (n < 16) {
    h[0] = (unsigned char)(0x90 | n);
    codec_buf_append(b, h, 1);
  } else {
    h[0] = 0xdc; h[1] = (unsigned char)(n >> 8); h[2] = (unsigned char)n;
    codec_buf_append(b, h, 3);
  }
  unsigned char t = 0xc3;
  codec_buf_append(b, &t, 1);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, b, NULL);
  char where[32];
  for (int i = 3; i <= top; i++) {
    snprintf(where, sizeof where, "result #%d", i - 2);
    if (codec_enc_value(e, L, i, where) != 0) {
      s->served--;
      reply_error(s, c, lua_tostring(L, -1));
      return 0;
    }
  }
  send_reply(c, b);
  return 0;
}

/* Protected: decodes the request at (body, len) and dispatches it.
 * Upvalue-free; args: srv, ctx (or NULL), pipe id, body, len. Raises a
 * string for a request that cannot be served. */
static int dispatch_l(lua_State *L) {
  srv *s = lua_touserdata(L, 1);
  srv_ctx *c = lua_touserdata(L, 2);
  lua_Integer pipe = lua_tointeger(L, 3);
  size_t len;
  const char *body = lua_tolstring(L, 4, &len); /* stays at 4: anchors body */
  lua_settop(L, 4);
  int b0 = 4; /* everything below is relative to b0 */
  codec_dec_opts o = {0, {0, 0}};
  codec_limits_of(L, &o.lim);
  const unsigned char *p = (const unsigned char *)body;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref); /* b0+1 */
  if (len > 0 && ((p[0] >= 0x90 && p[0] <= 0x9f) || p[0] == 0xdc || p[0] == 0xdd)) {
    /* [handler, args...]: decode the elements one by one, so nils count */
    size_t pos, n;
    if (p[0] <= 0x9f) { n = p[0] & 0x0f; pos = 1; }
    else if (p[0] == 0xdc && len >= 3) { n = ((size_t)p[1] << 8) | p[2]; pos = 3; }
    else if (p[0] == 0xdd && len >= 5) { n = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4]; pos = 5; }
    else return luaL_error(L, "malformed request: truncated array");
    if (n == 0) return luaL_error(L, "malformed request: empty array (expected [handler, args...])");
    if (n > 10001 || n > len) return luaL_error(L, "malformed request: too many arguments");
    lua_pushinteger(L, pipe);                          /* b0+2: session key */
    if (codec_decode_one(L, body, len, &pos, &o) != 1) /* b0+3: handler */
      return luaL_error(L, "malformed request: %s", lua_tostring(L, -1));
    if (lua_type(L, b0 + 3) != LUA_TSTRING) return luaL_error(L, "malformed request: the handler name must be a string");
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->done_ref); /* b0+4 */
    lua_pushlightuserdata(L, c);                    /* b0+5 */
    luaL_checkstack(L, (int)n + 4, "too many arguments");
    for (size_t i = 1; i < n; i++) {
      if (codec_decode_one(L, body, len, &pos, &o) != 1)
        return luaL_error(L, "malformed request: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "missing argument");
    }
    if (pos != len) return luaL_error(L, "malformed request: trailing bytes");
  } else {
    /* {handler=, args=, session=} */
    size_t pos = 0;
    int r = codec_decode_one(L, body, len, &pos, &o);
    if (r != 1) return luaL_error(L, "malformed request: %s", r < 0 ? lua_tostring(L, -1) : "empty message");
    if (pos != len) return luaL_error(L, "malformed request: trailing bytes");
    if (!lua_istable(L, b0 + 2)) return luaL_error(L, "malformed request: expected [handler, args...] or a map");
    int t = b0 + 2;
    if (lua_getfield(L, t, "handler") == LUA_TNIL) { lua_pop(L, 1); lua_getfield(L, t, "h"); }
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "malformed request: the map needs a string 'handler'");
    int h = lua_gettop(L);
    if (lua_getfield(L, t, "session") == LUA_TNIL) { lua_pop(L, 1); lua_getfield(L, t, "s"); }
    int skey = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);
    if (lua_isnil(L, skey)) lua_pushinteger(L, pipe);
    else if (lua_type(L, skey) == LUA_TSTRING || lua_type(L, skey) == LUA_TNUMBER)
      lua_pushfstring(L, "s:%s", lua_tostring(L, skey));
    else return luaL_error(L, "malformed request: 'session' must be a string or a number");
    lua_pushvalue(L, h);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->done_ref);
    lua_pushlightuserdata(L, c);
    int base = lua_gettop(L) - 4;
    lua_getfield(L, t, "args");
    if (lua_istable(L, -1)) {
      int a = lua_gettop(L);
      lua_Integer n = (lua_Integer)lua_rawlen(L, a);
      luaL_checkstack(L, (int)n + 4, "too many arguments");
      for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, a, i);
      lua_remove(L, a);
    } else if (!lua_isnil(L, -1)) {
      return luaL_error(L, "malformed request: 'args' must be an array");
    } else {
      lua_pop(L, 1);
    }
    lua_call(L, lua_gettop(L) - base, 0);
    return 0;
  }
  lua_call(L, lua_gettop(L) - b0 - 1, 0);
  return 0;
}

static void handle_request(srv *s, srv_ctx *c, nng_msg *m) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  nng_pipe p = nng_msg_get_pipe(m);
  lua_pushcfunction(L, dispatch_l);
  lua_pushlightuserdata(L, s);
  lua_pushlightuserdata(L, c->is_rep ? c : NULL);
  lua_pushinteger(L, (lua_Integer)nng_pipe_id(p));
  lua_pushlstring(L, nng_msg_body(m), nng_msg_len(m));
  nng_msg_free(m);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    const char *e = lua_tostring(L, -1);
    reply_error(s, c->is_rep ? c : NULL, e ? e : "malformed request");
  }
  lua_settop(L, top);
}

static void ev_run(actor_rt *rt, void *ud) {
  srv_ev *ev = ud;
  srv *s = ev->s;
  srv_ctx *c = ev->c;
  if (rt->shutting_down || s->closing) goto done;
  if (!c) {
    /* a connection closed: end its session after its queued events */
    lua_State *L = s->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->finish_ref);
    lua_pushinteger(L, (lua_Integer)ev->pipe);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) fprintf(stderr, "actor serve: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
    goto done;
  }
  if (ev->op == OP_RECV) {
    if (ev->result != 0) {
      if (ev->result != NNG_ECLOSED && ev->result != NNG_ECANCELED) start_recv(c);
      goto done;
    }
    nng_msg *m = ev->m;
    ev->m = NULL;
    if (!c->is_rep) start_recv(c); /* one-way: take the next message now */
    handle_request(s, c, m);
  } else if (ev->op == OP_SEND) {
    if (ev->result == NNG_ECLOSED || ev->result == NNG_ECANCELED) goto done;
    start_recv(c);
  }
done:
  if (ev->m) nng_msg_free(ev->m);
  free(ev);
}

/* --------------------------------------------------------------- setup */

static int add_ctx(srv *s, nng_socket sock, int is_rep) {
  srv_ctx *c = calloc(1, sizeof *c);
  srv_ctx **nc = realloc(s->ctxs, sizeof(*nc) * (size_t)(s->nctxs + 1));
  if (!c || !nc) { free(c); if (nc) s->ctxs = nc; return NNG_ENOMEM; }
  s->ctxs = nc;
  c->s = s;
  c->sock = sock;
  c->is_rep = is_rep;
  int rv;
  if (is_rep && (rv = nng_ctx_open(&c->ctx, sock)) != 0) { free(c); return rv; }
  if ((rv = nng_aio_alloc(&c->aio, aio_cb, c)) != 0) { free(c); return rv; }
  s->ctxs[s->nctxs++] = c;
  return 0;
}

static int open_socket(srv *s, const char *url, int is_rep, int contexts) {
  nng_socket sock;
  int rv = is_rep ? nng_rep0_open(&sock) : nng_pull0_open(&sock);
  if (rv != 0) return rv;
  nng_socket *ns = realloc(s->socks, sizeof(*ns) * (size_t)(s->nsocks + 1));
  if (!ns) { nng_close(sock); return NNG_ENOMEM; }
  s->socks = ns;
  s->socks[s->nsocks++] = sock;
  nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, pipe_cb, s);
  if ((rv = nng_listen(sock, url, NULL, 0)) != 0) return rv;
  for (int i = 0; i < (is_rep ? contexts : 1); i++) {
    if ((rv = add_ctx(s, sock, is_rep)) != 0) return rv;
    start_recv(s->ctxs[s->nctxs - 1]);
  }
  return 0;
}

/* Protected: libraries, actor, actor.session; loads the scripts. */
static int serve_setup(lua_State *L) {
  srv *s = lua_touserdata(L, 1);
  char **scripts = lua_touserdata(L, 2);
  int nscripts = (int)lua_tointeger(L, 3);
  char **pools = lua_touserdata(L, 4);
  int npools = (int)lua_tointeger(L, 5);
  luaL_openlibs(L);
  luaL_requiref(L, "actor", luaopen_actor, 0);
  int actor = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "actor.runtime");
  actor_rt **u = lua_touserdata(L, -1);
  if (!u || !*u) return luaL_error(L, "the actor runtime did not start");
  s->rt = *u;
  lua_pop(L, 1);
  for (int i = 0; i < npools; i++) {
    const char *eq = strchr(pools[i], '=');
    lua_getfield(L, actor, "pool");
    lua_pushlstring(L, pools[i], (size_t)(eq - pools[i]));
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, strtol(eq + 1, NULL, 10));
    lua_setfield(L, -2, "threads");
    lua_call(L, 2, 0);
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor.session");
  lua_call(L, 1, 1);
  int sess = lua_gettop(L);
  lua_getfield(L, sess, "dispatch");
  s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, sess, "finish");
  s->finish_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, serve_done_l, 1);
  s->done_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  for (int i = 0; i < nscripts; i++) {
    /* the script's name is its file name without directory and .lua */
    const char *path = scripts[i];
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 4 && strcmp(base + n - 4, ".lua") == 0) n -= 4;
    lua_getfield(L, sess, "loadfile");
    lua_pushlstring(L, base, n);
    lua_pushstring(L, path);
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) return luaL_error(L, "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  return 0;
}

static int serve_usage(const char *what, const char *arg) {
  fprintf(stderr, "actor serve: ");
  fprintf(stderr, what, arg);
  fprintf(stderr, " (%s)\n", SERVE_USAGE);
  return 2;
}

/* argv[0] is "serve". Returns the process's exit status. */
int actor_serve_main(int argc, char **argv) {
  char **scripts = calloc((size_t)argc + 1, sizeof(char *));
  char **urls = calloc((size_t)argc + 1, sizeof(char *));
  int *kinds = calloc((size_t)argc + 1, sizeof(int));
  char **pools = calloc((size_t)argc + 1, sizeof(char *));
  int nscripts = 0, nurls = 0, npools = 0, contexts = 64, status = 0;
  srv s;
  memset(&s, 0, sizeof s);
  codec_buf_init(&s.out);
  pthread_mutex_init(&s.pipe_mu, NULL);
  if (!scripts || !urls || !kinds || !pools) { status = 1; goto out; }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      printf("%s\n", SERVE_USAGE);
      goto out;
    }
    if (strcmp(a, "--listen") == 0 || strcmp(a, "--pull") == 0 || strcmp(a, "--contexts") == 0 ||
        strcmp(a, "--pool") == 0) {
      if (i + 1 >= argc) { status = serve_usage("'%s' needs an argument", a); goto out; }
      const char *v = argv[++i];
      if (strcmp(a, "--listen") == 0 || strcmp(a, "--pull") == 0) {
        urls[nurls] = (char *)v;
        kinds[nurls++] = strcmp(a, "--listen") == 0;
      } else if (strcmp(a, "--contexts") == 0) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 4096) { status = serve_usage("bad --contexts '%s' (1..4096)", v); goto out; }
        contexts = (int)n;
      } else {
        const char *eq = strchr(v, '=');
        char *end = NULL;
        long n = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || eq == v || !end || *end || n < 1 || n > 1024 || eq - v >= 64) {
          status = serve_usage("bad --pool '%s' (NAME=THREADS)", v);
          goto out;
        }
        pools[npools++] = (char *)v;
      }
      continue;
    }
    if (a[0] == '-') { status = serve_usage("unrecognized option '%s'", a); goto out; }
    if (access(a, R_OK) != 0) { status = serve_usage("cannot open script '%s'", a); goto out; }
    scripts[nscripts++] = (char *)a;
  }
  if (nscripts == 0) { status = serve_usage("%s", "no script given"); goto out; }
  if (nurls == 0) { status = serve_usage("%s", "nothing to serve: give --listen URL or --pull URL"); goto out; }

  s.L = luaL_newstate();
  if (!s.L) { fprintf(stderr, "actor serve: not enough memory\n"); status = 1; goto out; }
  lua_pushcfunction(s.L, serve_setup);
  lua_pushlightuserdata(s.L, &s);
  lua_pushlightuserdata(s.L, scripts);
  lua_pushinteger(s.L, nscripts);
  lua_pushlightuserdata(s.L, pools);
  lua_pushinteger(s.L, npools);
  if (lua_pcall(s.L, 5, 0, 0) != LUA_OK) {
    fprintf(stderr, "actor serve: %s\n", lua_tostring(s.L, -1));
    status = 1;
    goto close;
  }
  s.pipes_open = 1;
  for (int i = 0; i < nurls; i++) {
    int rv = open_socket(&s, urls[i], kinds[i], contexts);
    if (rv != 0) {
      fprintf(stderr, "actor serve: cannot listen on %s: %s\n", urls[i], nng_strerror(rv));
      status = 1;
      goto close;
    }
    fprintf(stderr, "actor serve: %s on %s\n", kinds[i] ? "rep0" : "pull0", urls[i]);
  }
  g_efd = s.rt->efd;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  s.rt->pending_extra++;
  while (!g_stop) actor__step(s.rt, -1);
  s.rt->pending_extra--;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  fprintf(stderr, "actor serve: stopping (%lu served, %lu failed)\n", s.served, s.failed);
close:
  s.closing = 1;
  if (s.L && s.rt) {
    lua_getglobal(s.L, "require");
    lua_pushliteral(s.L, "actor.session");
    if (lua_pcall(s.L, 1, 1, 0) == LUA_OK) {
      lua_getfield(s.L, -1, "close");
      lua_pcall(s.L, 0, 0, 0);
    }
    lua_settop(s.L, 0);
  }
  pthread_mutex_lock(&s.pipe_mu);
  s.pipes_open = 0;
  pthread_mutex_unlock(&s.pipe_mu);
  for (int i = 0; i < s.nsocks; i++) nng_close(s.socks[i]);
  for (int i = 0; i < s.nctxs; i++) nng_aio_stop(s.ctxs[i]->aio);
  g_efd = -1;
  if (s.L) lua_close(s.L); /* runs the events still queued: they only free */
  for (int i = 0; i < s.nctxs; i++) {
    nng_aio_free(s.ctxs[i]->aio);
    free(s.ctxs[i]);
  }
  free(s.ctxs);
  free(s.socks);
out:
  codec_buf_fini(&s.out);
  pthread_mutex_destroy(&s.pipe_mu);
  free(scripts);
  free(urls);
  free(kinds);
  free(pools);
  return status;
}
