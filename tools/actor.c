/*
 * actor -- runs Lua 5.4 scripts like lua5.4 does, on the actor runtime.
 *
 *   actor [options] [script [args]]
 *
 * The main chunk runs as in stock Lua, outside any runner. When it returns,
 * the program drives the loop until nothing is pending (no job in flight,
 * no timer, no service), then exits with status 0. A script error prints
 * the message and a traceback on stderr and exits with status 1. A bad
 * command line prints a one-line usage error and exits with status 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>
#include <nng/nng.h>

int luaopen_actor(lua_State *L);
int actor_serve_main(int argc, char **argv); /* bindings/lserve.c: `actor serve` */

static const char *progname = "actor";

#define USAGE "usage: actor [-v] [-e stat] [-l mod] [--pool NAME=THREADS] [--config FILE] [--grace S] [script [args]]"

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "%s: ", progname);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (%s)\n", USAGE);
  return 2;
}

static void print_version(void) {
#ifdef ACTOR_VERSION
  const char *v = ACTOR_VERSION;
#else
  const char *v = "0";
#endif
  printf("actor %s (%s, nng %s, msgpack-c %s)\n", v, LUA_RELEASE, nng_version(), msgpack_version());
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, narg, nres, base);
  lua_remove(L, base);
  return status;
}

typedef struct opt {
  char kind; /* 'e', 'l', 'p' */
  const char *val;
} opt;

typedef struct args {
  opt *opts;
  int nopts;
  int script; /* index in argv, 0 if none */
  int version;
  double grace;
  int serve;
} args;

/* Validates the whole command line before anything runs. Returns 0 or the
 * exit status for a usage error. */
static int parse_args(int argc, char **argv, args *a) {
  a->opts = calloc((size_t)argc + 1, sizeof(opt));
  a->grace = -1;
  if (!a->opts) return 1;
  int i = 1;
  for (; i < argc; i++) {
    const char *s = argv[i];
    if (s[0] != '-') break;
    if (strcmp(s, "-") == 0) break; /* stdin as script */
    if (strcmp(s, "--") == 0) { i++; break; }
    if (strcmp(s, "-v") == 0 || strcmp(s, "--version") == 0) { a->version = 1; continue; }
    if (strcmp(s, "-E") == 0 || strcmp(s, "-W") == 0) continue;
    if (strcmp(s, "--config") == 0) {
      if (i + 1 >= argc) return usage_error("'%s' needs an argument", s);
      if (access(argv[i + 1], R_OK) != 0) return usage_error("cannot open config file '%s'", argv[i + 1]);
      a->opts[a->nopts].kind = 'c';
      a->opts[a->nopts].val = argv[++i];
      a->nopts++;
      continue;
    }
    if (strcmp(s, "-e") == 0 || strcmp(s, "-l") == 0 || strcmp(s, "--pool") == 0 || strcmp(s, "--grace") == 0 ||
        strncmp(s, "-e", 2) == 0 || strncmp(s, "-l", 2) == 0 || strncmp(s, "--pool=", 7) == 0) {
      char kind = s[1] == '-' ? (s[2] == 'p' ? 'p' : 'g') : s[1];
      const char *val;
      if (strncmp(s, "--pool=", 7) == 0) val = s + 7;
      else if (s[1] != '-' && s[2] != 0) val = s + 2;
      else {
        if (i + 1 >= argc) return usage_error("'%s' needs an argument", s);
        val = argv[++i];
      }
      if (kind == 'p') {
        const char *eq = strchr(val, '=');
        char *end = NULL;
        long n = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || eq == val || !end || *end || eq[1] == 0 || n < 1 || n > 1024)
          return usage_error("bad --pool value '%s': expected NAME=THREADS with THREADS in 1..1024", val);
      }
      if (kind == 'g') {
        char *end;
        a->grace = strtod(val, &end);
        if (*end || a->grace < 0) return usage_error("bad --grace value '%s'", val);
        continue;
      }
      a->opts[a->nopts].kind = kind;
      a->opts[a->nopts].val = val;
      a->nopts++;
      continue;
    }
    return usage_error("unrecognized option '%s'", s);
  }
  if (i < argc) {
    a->script = i;
    if (strcmp(argv[i], "-") != 0 && access(argv[i], R_OK) != 0)
      return usage_error("cannot open script '%s'", argv[i]);
  }
  return 0;
}

/* The `arg` table as lua.c builds it. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  int narg = script ? argc - (script + 1) : 0;
  lua_createtable(L, narg, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - (script ? script : argc));
  }
  lua_setglobal(L, "arg");
}

static int apply_pool(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "pool");
  lua_pushlstring(L, spec, (size_t)(eq - spec));
  lua_createtable(L, 0, 1);
  lua_pushinteger(L, strtol(eq + 1, NULL, 10));
  lua_setfield(L, -2, "threads");
  int st = docall(L, 2, 0);
  lua_remove(L, st == LUA_OK ? -1 : -2); /* the actor module */
  return report(L, st);
}

static int apply_config(lua_State *L, const char *path) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "configure");
  lua_pushstring(L, path);
  int st = docall(L, 1, 0);
  lua_remove(L, st == LUA_OK ? -1 : -2); /* the actor module */
  return report(L, st);
}

static int run_library(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  char name[256];
  snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - spec) : (int)strlen(spec), spec);
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  int st = docall(L, 1, 1);
  if (st == LUA_OK) lua_setglobal(L, name);
  return report(L, st);
}

static int run_script(lua_State *L, char **argv, int argc, int script) {
  const char *fname = argv[script];
  if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0) fname = NULL;
  int st = luaL_loadfile(L, fname);
  if (st == LUA_OK) {
    int n = argc - script - 1;
    luaL_checkstack(L, n + 3, "too many arguments to script");
    for (int i = 1; i <= n; i++) lua_pushstring(L, argv[script + i]);
    st = docall(L, n, 0);
  }
  return report(L, st);
}

/* Drives the loop until nothing is pending. */
static int run_loop(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "actor");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "loop");
  lua_remove(L, -2);
  return report(L, docall(L, 0, 0));
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  args *a = lua_touserdata(L, 3);
  luaL_checkversion(L);
  luaL_openlibs(L);
  luaL_requiref(L, "actor", luaopen_actor, 0);
  lua_pop(L, 1);
  create_arg_table(L, argv, argc, a->script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (a->grace >= 0) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "actor");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "core");
    lua_getfield(L, -1, "set_grace");
    lua_pushnumber(L, a->grace);
    lua_call(L, 1, 0);
    lua_pop(L, 2);
  }
  for (int i = 0; i < a->nopts; i++) {
    int st = LUA_OK;
    if (a->opts[i].kind == 'p') st = apply_pool(L, a->opts[i].val);
    else if (a->opts[i].kind == 'c') st = apply_config(L, a->opts[i].val);
    else if (a->opts[i].kind == 'e') {
      st = luaL_loadbuffer(L, a->opts[i].val, strlen(a->opts[i].val), "=(command line)");
      if (st == LUA_OK) st = docall(L, 0, 0);
      st = report(L, st);
    } else if (a->opts[i].kind == 'l') st = run_library(L, a->opts[i].val);
    if (st != LUA_OK) return 0;
  }
  if (a->script) {
    if (run_script(L, argv, argc, a->script) != LUA_OK) return 0;
  } else if (a->nopts == 0 && !a->version) {
    /* like lua5.4 with stdin not a terminal: run stdin */
    int st = luaL_loadfile(L, NULL);
    if (st == LUA_OK) st = docall(L, 0, 0);
    if (report(L, st) != LUA_OK) return 0;
  }
  if (run_loop(L) != LUA_OK) return 0;
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "serve") == 0) return actor_serve_main(argc - 1, argv + 1);
  args a;
  memset(&a, 0, sizeof a);
  if (argv[0] && argv[0][0]) progname = "actor";
  int rc = parse_args(argc, argv, &a);
  if (rc != 0) {
    free(a.opts);
    return rc;
  }
  if (a.version) {
    print_version();
    if (!a.script && a.nopts == 0) {
      free(a.opts);
      return 0;
    }
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    free(a.opts);
    return 1;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 3, 1, 0);
  int ok = st == LUA_OK && lua_toboolean(L, -1);
  report(L, st);
  lua_close(L); /* stops the pools, joins threads, frees everything */
  free(a.opts);
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
