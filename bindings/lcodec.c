/*
 * lcodec.c -- Lua module actor.codec (public API, see docs/codec.md).
 *
 *   codec.encode(v...)            -> string        raises on values that cannot cross
 *   codec.encode_with(opts, v...) -> string        opts: drop_metatables, max_depth, max_size
 *   codec.decode(s [, opts])      -> v...          raises on bad input; opts: trusted,
 *                                                  max_depth, max_size
 *   codec.register(name, mt [, {serialize=f, deserialize=f}])
 *   codec.limits([{max_depth=, max_size=}]) -> {max_depth=, max_size=}
 *   codec.timestamp(sec [, nsec]) -> timestamp value (msgpack ext -1)
 *   codec.ext(type, data)         -> raw ext value
 *   codec.cache_functions(n)      receiving-side function cache of this state
 *                                 (n entries; 0 = off), see codec.h
 *
 * Threading: the functions use the calling state's encoder and registry
 * only; every state loads its own copy of the module.
 */
#include "codec.h"

#include <lauxlib.h>
#include <string.h>

/* Scratch buffers above this size are freed after use. */
#define SCRATCH_KEEP ((size_t)4 << 20)

static void opt_limits(lua_State *L, int t, codec_limits *lim) {
  if (lua_getfield(L, t, "max_depth") != LUA_TNIL) {
    lua_Integer v = luaL_checkinteger(L, -1);
    luaL_argcheck(L, v >= 1, t, "max_depth must be >= 1");
    lim->max_depth = v > 1000 ? 1000 : (int)v;
  }
  lua_pop(L, 1);
  if (lua_getfield(L, t, "max_size") != LUA_TNIL) {
    lua_Integer v = luaL_checkinteger(L, -1);
    luaL_argcheck(L, v >= 1, t, "max_size must be >= 1");
    lim->max_size = (size_t)v;
  }
  lua_pop(L, 1);
}

/* Encodes arguments first..top into one message and pushes it as a string.
 * Raises the codec's error message on failure. */
static int encode_args(lua_State *L, int first, const codec_limits *lim, unsigned flags) {
  codec_enc *e = codec_enc_get(L);
  if (codec_enc_in_hook(e)) return luaL_error(L, "actor.codec.encode cannot be called from a serialize hook");
  codec_buf *b = codec__enc_scratch(e);
  b->len = 0;
  int top = lua_gettop(L);
  int n = top - first + 1;
  codec_enc_begin(e, b, lim);
  codec_enc_set_flags(e, flags);
  for (int i = first; i <= top; i++) {
    char where[32];
    if (n == 1) strcpy(where, "value");
    else snprintf(where, sizeof where, "value #%d", i - first + 1);
    if (codec_enc_value(e, L, i, where) != 0) {
      if (b->cap > SCRATCH_KEEP) codec_buf_fini(b);
      return lua_error(L);
    }
  }
  lua_pushlstring(L, b->data ? b->data : "", b->len);
  if (b->cap > SCRATCH_KEEP) codec_buf_fini(b);
  return 1;
}

static int l_encode(lua_State *L) {
  codec_limits lim;
  codec_limits_of(L, &lim);
  return encode_args(L, 1, &lim, 0);
}

static int l_encode_with(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  codec_limits lim;
  codec_limits_of(L, &lim);
  opt_limits(L, 1, &lim);
  unsigned flags = 0;
  lua_getfield(L, 1, "drop_metatables");
  if (lua_toboolean(L, -1)) flags |= CODEC_DROP_METATABLES;
  lua_pop(L, 1);
  return encode_args(L, 2, &lim, flags);
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  codec_dec_opts o;
  o.trusted = 0;
  codec_limits_of(L, &o.lim);
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "trusted");
    o.trusted = lua_toboolean(L, -1);
    lua_pop(L, 1);
    opt_limits(L, 2, &o.lim);
  }
  lua_settop(L, 1); /* keeps s alive while decoding */
  int n = codec_decode(L, s, len, &o);
  if (n < 0) return lua_error(L);
  return n;
}

static int l_register(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int hooks = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    /* Read raw, as the codec reads them. */
    lua_pushliteral(L, "serialize");
    lua_rawget(L, 3);
    lua_pushliteral(L, "deserialize");
    lua_rawget(L, 3);
    luaL_argcheck(L, lua_isfunction(L, -2) && lua_isfunction(L, -1), 3,
                  "hooks need both serialize and deserialize functions");
    lua_pop(L, 2);
    hooks = 3;
  }
  if (codec__register(L, name, 2, hooks) != 0)
    return luaL_argerror(L, 1, "names starting with \"msgpack.\" are reserved");
  lua_settop(L, 2);
  return 1;
}

static int l_limits(lua_State *L) {
  codec_limits lim;
  codec_limits_of(L, &lim);
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    opt_limits(L, 1, &lim);
    codec_limits_set(L, &lim);
  }
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, lim.max_depth);
  lua_setfield(L, -2, "max_depth");
  lua_pushinteger(L, (lua_Integer)lim.max_size);
  lua_setfield(L, -2, "max_size");
  return 1;
}

static int l_timestamp(lua_State *L) {
  lua_Integer sec = luaL_checkinteger(L, 1);
  lua_Integer nsec = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, nsec >= 0 && nsec <= 999999999, 2, "nsec must be in 0..999999999");
  codec__registry_init(L);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, sec);
  lua_setfield(L, -2, "sec");
  lua_pushinteger(L, nsec);
  lua_setfield(L, -2, "nsec");
  lua_getfield(L, LUA_REGISTRYINDEX, CODEC_MT_TIMESTAMP);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_ext(lua_State *L) {
  lua_Integer t = luaL_checkinteger(L, 1);
  luaL_checkstring(L, 2);
  luaL_argcheck(L, t >= -128 && t <= 127, 1, "ext type must be in -128..127");
  luaL_argcheck(L, t < CODEC_EXT_RESERVED_MIN || t > CODEC_EXT_RESERVED_MAX, 1,
                "ext types 1..15 are reserved by the codec");
  codec__registry_init(L);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, t);
  lua_setfield(L, -2, "type");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "data");
  lua_getfield(L, LUA_REGISTRYINDEX, CODEC_MT_EXT);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_cache_functions(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 1000000, 1, "0..1000000 expected");
  codec_fn_cache_enable(L, (int)n);
  return 0;
}

static const luaL_Reg codec_funcs[] = {
    {"cache_functions", l_cache_functions},
    {"encode", l_encode},   {"encode_with", l_encode_with}, {"decode", l_decode},
    {"register", l_register}, {"limits", l_limits},         {"timestamp", l_timestamp},
    {"ext", l_ext},         {NULL, NULL}};

int luaopen_actor_codec(lua_State *L) {
  codec_enc_get(L); /* creates the encoder and the built-in metatables */
  luaL_newlib(L, codec_funcs);
  return 1;
}
