/*
 * lnet.c -- the actor.net module: DNS lookups and an HTTP GET.
 *
 * Both functions BLOCK the calling thread (getaddrinfo; an nng aio that is
 * waited for). They are meant for a pool such as IO:
 *
 *   local ok, addrs = msys.runInPool("IO", function()
 *     return require("actor.net").resolve("example.com", "A")
 *   end)
 *
 * The runtime puts this module in package.preload of the scheduler state and
 * of every worker state (rt.h: luaopen_actor_net is a weak symbol). Calling
 * them on the scheduler thread works too, but stalls the loop meanwhile.
 *
 *   resolve(name [, "A"|"AAAA"]) -> { "addr", ... } | nil, err
 *   http_get(url [, timeout | opts]) -> status, body, headers | nil, err
 *   _test_http_server(port, body [, content_type [, path]]) -> server
 *   _test_poll(fd, seconds) -> readable                 (both: tests only)
 *
 * See docs/async.md ("actor.net").
 */
#include <lauxlib.h>
#include <lua.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>

#include "rt.h"

/* ------------------------------------------------------------- resolve */

static int net_resolve(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *type = luaL_optstring(L, 2, NULL);
  int family = AF_UNSPEC;
  if (type) {
    if (strcmp(type, "A") == 0) family = AF_INET;
    else if (strcmp(type, "AAAA") == 0) family = AF_INET6;
    else return luaL_argerror(L, 2, "\"A\", \"AAAA\" or nil expected");
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  hints.ai_socktype = SOCK_STREAM; /* one entry per address */
  int rc = getaddrinfo(name, NULL, &hints, &res);
  if (rc != 0) {
    luaL_pushfail(L);
    if (rc == EAI_SYSTEM)
      lua_pushfstring(L, "cannot resolve %s (%s): system error", name, type ? type : "any");
    else
      lua_pushfstring(L, "cannot resolve %s (%s): %s", name, type ? type : "any", gai_strerror(rc));
    return 2;
  }
  lua_newtable(L);      /* result list */
  lua_newtable(L);      /* seen set */
  lua_Integer n = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN];
    const void *src;
    if (ai->ai_family == AF_INET) src = &((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    else if (ai->ai_family == AF_INET6) src = &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    else continue;
    if (!inet_ntop(ai->ai_family, src, buf, sizeof buf)) continue;
    if (lua_getfield(L, -1, buf) != LUA_TNIL) { lua_pop(L, 1); continue; }
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, buf);
    lua_pushstring(L, buf);
    lua_rawseti(L, -3, ++n);
  }
  freeaddrinfo(res);
  lua_pop(L, 1);
  if (n == 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot resolve %s (%s): no address", name, type ? type : "any");
    return 2;
  }
  return 1;
}

/* ------------------------------------------------------------ http_get */

/* Response headers reported by default (nng 1.5 has no way to list the
 * headers of a response, so only named ones can be read). */
static const char *const default_headers[] = {
    "Content-Type", "Content-Length", "Content-Encoding", "Location", "Server", "Date",
    "Last-Modified", "ETag", "Cache-Control", "Transfer-Encoding", "Connection", NULL};

typedef struct http_ctx {
  nng_url *url;
  nng_http_client *client;
  nng_http_req *req;
  nng_http_res *res;
  nng_aio *aio;
  nng_tls_config *tls;
} http_ctx;

static void http_ctx_free(http_ctx *c) {
  if (c->aio) nng_aio_free(c->aio);
  if (c->res) nng_http_res_free(c->res);
  if (c->req) nng_http_req_free(c->req);
  if (c->client) nng_http_client_free(c->client);
  if (c->tls) nng_tls_config_free(c->tls);
  if (c->url) nng_url_free(c->url);
  memset(c, 0, sizeof *c);
}

static int http_fail(lua_State *L, http_ctx *c, const char *url, const char *what, int rv) {
  http_ctx_free(c);
  luaL_pushfail(L);
  lua_pushfstring(L, "http_get %s: %s: %s", url, what, nng_strerror(rv));
  return 2;
}

static const char *system_ca_file(void) {
  static const char *const cands[] = {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                                      "/etc/ssl/cert.pem", NULL};
  for (int i = 0; cands[i]; i++)
    if (access(cands[i], R_OK) == 0) return cands[i];
  return NULL;
}

/* Lowercase copy of a header name, for the result table's keys. */
static void push_lower(lua_State *L, const char *s) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (; *s; s++) luaL_addchar(&b, (*s >= 'A' && *s <= 'Z') ? (char)(*s + 32) : *s);
  luaL_pushresult(&b);
}

/* http_get(url [, timeout | opts])
 * opts: timeout (seconds, default 30), headers = { name = value } sent with
 * the request, want = { "Header-Name", ... } response headers to report
 * besides the default ones, verify (https: check the server's certificate;
 * default true), ca_file (https: default the system bundle). */
static int net_http_get(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  double timeout = 30;
  int verify = 1;
  const char *ca_file = NULL;
  int opts = 0;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    timeout = lua_tonumber(L, 2);
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    opts = 2;
    if (lua_getfield(L, 2, "timeout") != LUA_TNIL) {
      if (!lua_isnumber(L, -1)) return luaL_argerror(L, 2, "option 'timeout' must be a number");
      timeout = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "verify") != LUA_TNIL) verify = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "ca_file") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "option 'ca_file' must be a string");
      ca_file = lua_tostring(L, -1); /* stays anchored in the opts table */
    }
    lua_pop(L, 1);
  } else if (!lua_isnoneornil(L, 2)) {
    return luaL_typeerror(L, 2, "number or table");
  }
  if (!(timeout > 0)) return luaL_argerror(L, 2, "timeout must be positive");

  http_ctx c;
  memset(&c, 0, sizeof c);
  int rv;
  if ((rv = nng_url_parse(&c.url, url)) != 0) return http_fail(L, &c, url, "bad URL", rv);
  int https = strcmp(c.url->u_scheme, "https") == 0;
  if (!https && strcmp(c.url->u_scheme, "http") != 0) {
    http_ctx_free(&c);
    luaL_pushfail(L);
    lua_pushfstring(L, "http_get %s: unsupported scheme (http or https expected)", url);
    return 2;
  }
  if ((rv = nng_http_client_alloc(&c.client, c.url)) != 0) return http_fail(L, &c, url, "client", rv);
  if (https) {
    if ((rv = nng_tls_config_alloc(&c.tls, NNG_TLS_MODE_CLIENT)) != 0) return http_fail(L, &c, url, "TLS", rv);
    if ((rv = nng_tls_config_server_name(c.tls, c.url->u_hostname)) != 0) return http_fail(L, &c, url, "TLS", rv);
    if (verify) {
      if (!ca_file) ca_file = system_ca_file();
      if (ca_file && (rv = nng_tls_config_ca_file(c.tls, ca_file)) != 0)
        return http_fail(L, &c, url, "TLS CA file", rv);
      rv = nng_tls_config_auth_mode(c.tls, NNG_TLS_AUTH_MODE_REQUIRED);
    } else {
      rv = nng_tls_config_auth_mode(c.tls, NNG_TLS_AUTH_MODE_NONE);
    }
    if (rv != 0) return http_fail(L, &c, url, "TLS", rv);
    if ((rv = nng_http_client_set_tls(c.client, c.tls)) != 0) return http_fail(L, &c, url, "TLS", rv);
  }
  if ((rv = nng_http_req_alloc(&c.req, c.url)) != 0) return http_fail(L, &c, url, "request", rv);
  if ((rv = nng_http_res_alloc(&c.res)) != 0) return http_fail(L, &c, url, "response", rv);
  nng_http_req_set_header(c.req, "User-Agent", "actor.net");
  if (opts && lua_getfield(L, opts, "headers") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
        nng_http_req_set_header(c.req, lua_tostring(L, -2), lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  if (opts) lua_pop(L, 1);
  if ((rv = nng_aio_alloc(&c.aio, NULL, NULL)) != 0) return http_fail(L, &c, url, "aio", rv);
  double ms = timeout * 1000.0;
  nng_aio_set_timeout(c.aio, ms > 2e9 ? (nng_duration)2000000000 : (nng_duration)(ms < 1 ? 1 : ms));
  nng_http_client_transact(c.client, c.req, c.res, c.aio);
  nng_aio_wait(c.aio);
  if ((rv = nng_aio_result(c.aio)) != 0) return http_fail(L, &c, url, "transaction", rv);

  lua_pushinteger(L, nng_http_res_get_status(c.res));
  void *body = NULL;
  size_t len = 0;
  nng_http_res_get_data(c.res, &body, &len);
  lua_pushlstring(L, body ? (const char *)body : "", body ? len : 0);
  lua_newtable(L);
  for (int i = 0; default_headers[i]; i++) {
    const char *v = nng_http_res_get_header(c.res, default_headers[i]);
    if (!v) continue;
    push_lower(L, default_headers[i]);
    lua_pushstring(L, v);
    lua_rawset(L, -3);
  }
  if (opts && lua_getfield(L, opts, "want") == LUA_TTABLE) {
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) == LUA_TSTRING; i++) {
      const char *v = nng_http_res_get_header(c.res, lua_tostring(L, -1));
      if (v) {
        push_lower(L, lua_tostring(L, -1));
        lua_pushstring(L, v);
        lua_rawset(L, -5);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (opts) lua_pop(L, 1);
  lua_pushstring(L, nng_http_res_get_reason(c.res));
  lua_setfield(L, -2, ":reason");
  http_ctx_free(&c);
  return 3;
}

/* --------------------------------------------- test helper: HTTP server */

/* A static HTTP server served by nng's own threads, so it answers while the
 * state that made it is busy or parked. For tests and examples only. */
typedef struct test_server {
  nng_http_server *srv;
  char *body;
  int port;
} test_server;

#define TEST_SERVER_MT "actor.net.test_server"

static void test_server_stop(test_server *s) {
  if (s->srv) {
    nng_http_server_stop(s->srv);
    nng_http_server_release(s->srv);
    s->srv = NULL;
  }
  free(s->body);
  s->body = NULL;
}

static int ts_close(lua_State *L) {
  test_server_stop(luaL_checkudata(L, 1, TEST_SERVER_MT));
  return 0;
}

static int ts_port(lua_State *L) {
  test_server *s = luaL_checkudata(L, 1, TEST_SERVER_MT);
  lua_pushinteger(L, s->port);
  return 1;
}

static int ts_url(lua_State *L) {
  test_server *s = luaL_checkudata(L, 1, TEST_SERVER_MT);
  lua_pushfstring(L, "http://127.0.0.1:%d/", s->port);
  return 1;
}

/* _test_http_server(port, body [, content_type [, path]]): serves `body`
 * for GET on 127.0.0.1:port (0: a free port; see :port()), for any path
 * under "/", or only for `path` when given (other paths get 404). Other
 * methods get 405. Stop it with :close() (also on collection). */
static int net_test_http_server(lua_State *L) {
  lua_Integer port = luaL_checkinteger(L, 1);
  size_t blen;
  const char *body = luaL_checklstring(L, 2, &blen);
  const char *ctype = luaL_optstring(L, 3, "text/plain");
  const char *path = luaL_optstring(L, 4, NULL);
  luaL_argcheck(L, port >= 0 && port <= 65535, 1, "port out of range");
  test_server *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  if (luaL_newmetatable(L, TEST_SERVER_MT)) {
    static const luaL_Reg m[] = {{"close", ts_close}, {"port", ts_port}, {"url", ts_url},
                                 {"__gc", ts_close}, {"__close", ts_close}, {NULL, NULL}};
    luaL_setfuncs(L, m, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  s->body = malloc(blen ? blen : 1);
  if (!s->body) return luaL_error(L, "out of memory");
  memcpy(s->body, body, blen);

  char addr[64];
  snprintf(addr, sizeof addr, "http://127.0.0.1:%d", (int)port);
  nng_url *u = NULL;
  nng_http_handler *h = NULL;
  int rv = nng_url_parse(&u, addr);
  if (rv == 0) rv = nng_http_server_hold(&s->srv, u);
  nng_url_free(u);
  if (rv == 0) rv = nng_http_handler_alloc_static(&h, path ? path : "/", s->body, blen, ctype);
  if (rv == 0) {
    if (!path) nng_http_handler_set_tree(h);
    rv = nng_http_server_add_handler(s->srv, h);
    if (rv != 0) nng_http_handler_free(h);
  }
  if (rv == 0) rv = nng_http_server_start(s->srv);
  nng_sockaddr sa;
  if (rv == 0) rv = nng_http_server_get_addr(s->srv, &sa);
  if (rv != 0) {
    test_server_stop(s);
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start the test HTTP server on %s: %s", addr, nng_strerror(rv));
    return 2;
  }
  s->port = sa.s_family == NNG_AF_INET ? ntohs(sa.s_in.sa_port) : (int)port;
  return 1;
}

/* _test_poll(fd, seconds) -> readable: poll(2) one descriptor for input,
 * e.g. actor.fd(), as a host with its own loop would. Tests only. */
static int net_test_poll(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  double t = luaL_optnumber(L, 2, 0);
  struct pollfd p = {fd, POLLIN, 0};
  int rv = poll(&p, 1, t <= 0 ? 0 : (int)(t * 1000 + 0.5));
  if (rv < 0) return luaL_error(L, "poll: %s", strerror(errno));
  lua_pushboolean(L, rv > 0 && (p.revents & POLLIN));
  return 1;
}

int luaopen_actor_net(lua_State *L) {
  static const luaL_Reg f[] = {{"resolve", net_resolve}, {"http_get", net_http_get},
                               {"_test_http_server", net_test_http_server},
                               {"_test_poll", net_test_poll}, {NULL, NULL}};
  luaL_newlib(L, f);
  lua_pushstring(L, nng_tls_engine_name());
  lua_setfield(L, -2, "tls_engine");
  return 1;
}
