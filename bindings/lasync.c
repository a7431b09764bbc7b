/*
 * lasync.c -- the hot path of util.async in C (module "actor.asynccore").
 *
 * util.async (bindings/lua/util/async.lua) uses this module when it can be
 * required and keeps its pure-Lua code otherwise (stock lua5.4 without the
 * runtime); both behave the same, and tests/lua/async_spec.lua runs against
 * both. What is here:
 *
 *   waiter(num, allow_many) -> wait, done
 *
 * The pair are two C closures: done holds the runner's coroutine, one
 * integer (the count of done() calls still expected, times 4, plus two flag
 * bits: wait() was called, allow_many) and the configuration; wait holds done and reads and writes
 * that integer through lua_getupvalue / lua_setupvalue. That is two
 * allocations per waiter and no Lua frame between the item and the yield.
 *
 * done() resumes the parked coroutine itself when the count reaches zero
 * (the common case: the coroutine is suspended and belongs to a runner):
 * it swaps the global _TLS for the runner's session table around
 * lua_resume, as util.async's continue() does. Everything else (a thread
 * that is not suspended, a thread without a runner, an error, an item that
 * finished and makes the runner ready again) is handed to the Lua functions
 * given to setup(), so the rules live in one place.
 *
 * Threading: per lua_State. The configuration table is an upvalue of
 * waiter and of every done (not in the registry: a module loaded twice in
 * one state, as busted's insulation does, keeps its own tables). Nothing
 * static is written.
 */
#include <lauxlib.h>
#include <lua.h>

#include <string.h>

enum {
  CFG_RUNNER_OF = 1, /* weak table: thread -> runner */
  CFG_G,             /* the globals table that holds _TLS */
  CFG_GET_TLS,       /* get_tls(runner) -> session table (creates it) */
  CFG_CONTINUE,      /* continue(thread): util.async's generic resume */
  CFG_AFTER_READY,   /* after_ready(runner): the item finished */
  CFG_AFTER_ERROR,   /* after_error(runner, thread, err): the item raised */
  CFG_WIDE,          /* waiter_wide(thread, num, allow_many): other counts */
  CFG_NOT_ASYNC,     /* error message outside a runner */
  CFG_N = CFG_NOT_ASYNC,
  CFG_TLS_KEY,       /* the string "_TLS" */
  CFG_LAST = CFG_TLS_KEY
};

/* A runner keeps its session table in its own slot 1 (util.async's
 * TLS_SLOT): one array access instead of a weak map lookup per resume. */
#define TLS_SLOT 1

#define F_WAITING 1
#define F_MANY 2
#define COUNT_LIMIT ((lua_Integer)1 << 50)

static int finish_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

/* Pushes field i of the configuration table at upvalue `up`. */
static void cfg_get(lua_State *L, int up, int i) {
  lua_rawgeti(L, lua_upvalueindex(up), i);
}

/* Calls a Lua helper with the n values on top (helper pushed below them),
 * allowing it to yield; done() returns nothing afterwards. */
static int call_helper(lua_State *L, int nargs) {
  lua_callk(L, nargs, 0, 0, finish_k);
  return 0;
}

/* Resumes the coroutine at upvalue 1 of done(): count reached zero.
 * Upvalues of done: 1 thread, 2 packed count, 3 configuration. */
static int resume_parked(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  lua_settop(L, 0);
  if (lua_status(co) != LUA_YIELD) goto generic;
  lua_rawgeti(L, lua_upvalueindex(3), CFG_RUNNER_OF); /* 1 */
  lua_pushvalue(L, lua_upvalueindex(1));
  if (lua_rawget(L, 1) == LUA_TNIL) goto generic;     /* 2: runner */
  if (lua_rawgeti(L, 2, TLS_SLOT) == LUA_TNIL) {      /* 3: session table */
    lua_pop(L, 1);
    lua_rawgeti(L, lua_upvalueindex(3), CFG_GET_TLS);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
  }
  lua_rawgeti(L, lua_upvalueindex(3), CFG_G);         /* 4: G */
  lua_rawgeti(L, lua_upvalueindex(3), CFG_TLS_KEY);   /* 5: "_TLS" */
  lua_pushvalue(L, 5);
  /* 6: the previous _TLS. A raw access is the same as G._TLS while the key
   * is present (no metamethod is consulted then); otherwise go through
   * the metamethods as util.async's Lua code does. */
  int raw = lua_rawget(L, 4) != LUA_TNIL;
  if (!raw) {
    lua_pop(L, 1);
    lua_pushvalue(L, 5);
    lua_gettable(L, 4);
  }
  lua_pushvalue(L, 5);
  lua_pushvalue(L, 3);
  if (raw) lua_rawset(L, 4); else lua_settable(L, 4);
  int nres = 0;
  int st = lua_resume(co, L, 0, &nres);
  lua_pushvalue(L, 5);
  lua_pushvalue(L, 6);
  if (raw) lua_rawset(L, 4); else lua_settable(L, 4);
  if (st == LUA_YIELD || st == LUA_OK) {
    int ready = 0;
    if (st == LUA_YIELD && nres >= 1 && lua_type(co, -nres) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(co, -nres, &len);
      ready = len == 5 && memcmp(s, "ready", 5) == 0;
    }
    lua_pop(co, nres);
    if (!ready) return 0;
    lua_rawgeti(L, lua_upvalueindex(3), CFG_AFTER_READY);
    lua_pushvalue(L, 2);
    return call_helper(L, 1);
  }
  /* the item raised: the error object is on top of co */
  lua_rawgeti(L, lua_upvalueindex(3), CFG_AFTER_ERROR);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_xmove(co, L, 1);
  return call_helper(L, 3);

generic: /* not suspended, or no runner: util.async's continue() */
  lua_settop(L, 0);
  lua_rawgeti(L, lua_upvalueindex(3), CFG_CONTINUE);
  lua_pushvalue(L, lua_upvalueindex(1));
  return call_helper(L, 1);
}

static int l_done(lua_State *L) {
  lua_Integer v = lua_tointeger(L, lua_upvalueindex(2));
  lua_Integer flags = v & 3;
  lua_Integer count = (v - flags) / 4 - 1;
  lua_pushinteger(L, count * 4 + flags);
  lua_replace(L, lua_upvalueindex(2));
  if (count == 0 && (flags & F_WAITING)) return resume_parked(L);
  if (count < 0 && !(flags & F_MANY)) {
    lua_pushliteral(L, "done() called too many times");
    return lua_error(L);
  }
  return 0;
}

static int l_wait(lua_State *L) {
  lua_getupvalue(L, lua_upvalueindex(1), 2); /* left on the stack: cleared below */
  lua_Integer v = lua_tointeger(L, -1);
  lua_Integer flags = v & 3;
  if ((v - flags) == 0) return 0; /* every done() already came */
  /* Where no yield is possible (a C call without continuation, such as a
   * table.sort comparator) lua_yield raises; the waiter must not be marked
   * waiting then, or done() would later resume the coroutine wherever it
   * is parked by then. */
  if (!lua_isyieldable(L)) return lua_yield(L, 0);
  if (!(flags & F_WAITING)) {
    lua_pushinteger(L, v | F_WAITING);
    lua_setupvalue(L, lua_upvalueindex(1), 2);
  }
  lua_settop(L, 0);
  lua_pushliteral(L, "wait");
  return lua_yield(L, 1);
}

/* waiter(num, allow_many) -> wait, done */
static int l_waiter(lua_State *L) {
  /* read the arguments before pushing anything: either may be absent */
  lua_Integer n = 1;
  int wide = 0;
  if (!lua_isnoneornil(L, 1)) {
    int isint = 0;
    n = lua_tointegerx(L, 1, &isint);
    wide = !isint || lua_type(L, 1) != LUA_TNUMBER || n >= COUNT_LIMIT || n <= -COUNT_LIMIT;
  }
  int many = lua_toboolean(L, 2);
  if (wide) lua_settop(L, 2);
  if (lua_pushthread(L)) { /* the calling thread */
    cfg_get(L, 1, CFG_NOT_ASYNC);
    return lua_error(L);
  }
  if (wide) { /* 3: the thread */
    cfg_get(L, 1, CFG_WIDE);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 3, 2);
    return 2;
  }
  lua_pushinteger(L, n * 4 + (many ? F_MANY : 0));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_done, 3); /* done (took the thread) */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_wait, 1); /* wait */
  lua_pushvalue(L, -2);           /* done again: return wait, done */
  return 2;
}

/* setup{ runner_of=, G=, get_tls=, continue=, after_ready=,
 *        after_error=, waiter_wide=, not_async= } -> waiter */
static int l_setup(lua_State *L) {
  static const char *const names[] = {"runner_of", "G", "get_tls", "continue",
                                      "after_ready", "after_error", "waiter_wide", "not_async"};
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_createtable(L, CFG_LAST, 0);
  for (int i = 0; i < CFG_N; i++) {
    if (lua_getfield(L, 1, names[i]) == LUA_TNIL) return luaL_error(L, "asynccore.setup: '%s' missing", names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushliteral(L, "_TLS");
  lua_rawseti(L, -2, CFG_TLS_KEY);
  lua_pushcclosure(L, l_waiter, 1);
  return 1;
}

int luaopen_actor_asynccore(lua_State *L) {
  static const luaL_Reg f[] = {{"setup", l_setup}, {NULL, NULL}};
  luaL_newlib(L, f);
  return 1;
}
