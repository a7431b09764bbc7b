/*
 * test_codec.c -- unit tests of runtime/codec.c (cmocka).
 *
 * Hand-written msgpack vectors from the spec check every format family;
 * round trips go between two separate lua_States, as they do between a
 * scheduler and a pool worker.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>
#include <msgpack.h>

#include "codec.h"

#ifndef ACTOR_SOURCE_DIR
#define ACTOR_SOURCE_DIR "."
#endif

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "actor.codec", luaopen_actor_codec, 0);
  lua_pop(L, 1);
  codec_index_cfunctions(L);
  return L;
}

static int setup(void **st) {
  lua_State **Ls = test_malloc(2 * sizeof *Ls);
  Ls[0] = new_state();
  Ls[1] = new_state();
  *st = Ls;
  return 0;
}

static int teardown(void **st) {
  lua_State **Ls = *st;
  lua_close(Ls[0]);
  lua_close(Ls[1]);
  test_free(Ls);
  return 0;
}

static codec_dec_opts untrusted(void) {
  codec_dec_opts o;
  o.trusted = 0;
  codec_limits_default(&o.lim);
  return o;
}

static codec_dec_opts trusted(void) {
  codec_dec_opts o = untrusted();
  o.trusted = 1;
  return o;
}

/* Runs Lua code; fails the test on error. */
static void run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) fail_msg("lua: %s", lua_tostring(L, -1));
}

/* Decodes exactly one value from a hand-written vector into L and checks
 * that the Lua expression `check` (with the value as `v`) is true. */
static void vec(lua_State *L, const char *bytes, size_t n, const char *check) {
  codec_dec_opts o = untrusted();
  int top = lua_gettop(L);
  int r = codec_decode(L, bytes, n, &o);
  if (r != 1) fail_msg("decode of %s returned %d: %s", check, r, r < 0 ? lua_tostring(L, -1) : "");
  lua_setglobal(L, "v");
  char code[512];
  snprintf(code, sizeof code, "assert(%s, [==[vector check failed: %s]==])", check, check);
  run(L, code);
  assert_int_equal(lua_gettop(L), top);
}

#define VEC(L, lit, check) vec(L, lit, sizeof(lit) - 1, check)

static void test_vectors_scalars(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  VEC(L, "\xc0", "v == nil");
  VEC(L, "\xc2", "v == false");
  VEC(L, "\xc3", "v == true");
  VEC(L, "\x00", "math.type(v) == 'integer' and v == 0");
  VEC(L, "\x7f", "v == 127");
  VEC(L, "\xe0", "v == -32");
  VEC(L, "\xff", "v == -1");
  VEC(L, "\xcc\xff", "v == 255");
  VEC(L, "\xcd\xff\xff", "v == 65535");
  VEC(L, "\xce\xff\xff\xff\xff", "v == 4294967295");
  VEC(L, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", "v == math.maxinteger");
  VEC(L, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "math.type(v) == 'float' and v == 2.0^64");
  VEC(L, "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", "math.type(v) == 'float' and v == 2.0^63");
  VEC(L, "\xd0\x80", "v == -128");
  VEC(L, "\xd1\x80\x00", "v == -32768");
  VEC(L, "\xd2\x80\x00\x00\x00", "v == -2147483648");
  VEC(L, "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", "v == math.mininteger");
  VEC(L, "\xca\x3f\xc0\x00\x00", "math.type(v) == 'float' and v == 1.5");
  VEC(L, "\xca\xff\x80\x00\x00", "v == -1/0");
  VEC(L, "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", "math.type(v) == 'float' and v == 1.0");
  VEC(L, "\xcb\x80\x00\x00\x00\x00\x00\x00\x00", "v == 0 and 1/v == -1/0");
  VEC(L, "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "v ~= v");
}

static void test_vectors_strings(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  VEC(L, "\xa0", "v == ''");
  VEC(L, "\xa3" "abc", "v == 'abc'");
  VEC(L, "\xd9\x03" "a\0c", "v == 'a\\0c'");
  VEC(L, "\xda\x00\x02" "\xff\xfe", "v == '\\xff\\xfe'");
  VEC(L, "\xdb\x00\x00\x00\x01" "z", "v == 'z'");
  VEC(L, "\xc4\x02" "\x00\x01", "v == '\\0\\1'");
  VEC(L, "\xc5\x00\x01" "q", "v == 'q'");
  VEC(L, "\xc6\x00\x00\x00\x00", "v == ''");
}

static void test_vectors_containers(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  VEC(L, "\x90", "type(v) == 'table' and next(v) == nil");
  VEC(L, "\x93\x01\x02\x03", "#v == 3 and v[3] == 3");
  VEC(L, "\xdc\x00\x02\xc3\xc2", "v[1] == true and v[2] == false");
  VEC(L, "\xdd\x00\x00\x00\x01\xa1x", "v[1] == 'x'");
  VEC(L, "\x81\xa1k\xa1v", "v.k == 'v'");
  VEC(L, "\xde\x00\x01\x01\x02", "v[1] == 2");
  VEC(L, "\xdf\x00\x00\x00\x01\xc3\x01", "v[true] == 1");
  VEC(L, "\x92\x91\x90\x80", "type(v[1][1]) == 'table' and type(v[2]) == 'table'");
}

static void test_vectors_ext(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  VEC(L, "\xd4\x20\x01", "v.type == 32 and v.data == '\\1' and getmetatable(v).__name == 'msgpack.ext'");
  VEC(L, "\xd5\x20\x01\x02", "v.type == 32 and #v.data == 2");
  VEC(L, "\xd6\x20" "abcd", "v.data == 'abcd'");
  VEC(L, "\xd7\x80" "abcdefgh", "v.type == -128 and v.data == 'abcdefgh'");
  VEC(L, "\xd8\x7f" "0123456789abcdef", "v.type == 127 and #v.data == 16");
  VEC(L, "\xc7\x00\x11", "v.type == 17 and v.data == ''");
  VEC(L, "\xc8\x00\x01\x11z", "v.data == 'z'");
  VEC(L, "\xc9\x00\x00\x00\x01\x11z", "v.data == 'z'");
  /* Timestamps in their three forms. */
  VEC(L, "\xd6\xff\x00\x00\x00\x05", "v.sec == 5 and v.nsec == 0 and getmetatable(v).__name == 'msgpack.timestamp'");
  /* 64-bit: nsec = 1 (<< 34), sec = 2. */
  VEC(L, "\xd7\xff\x00\x00\x00\x04\x00\x00\x00\x02", "v.sec == 2 and v.nsec == 1");
  VEC(L, "\xc7\x0c\xff\x00\x00\x00\x07\xff\xff\xff\xff\xff\xff\xff\xff", "v.sec == -1 and v.nsec == 7");
}

/* Encodes the Lua expression in L and compares the bytes. */
static void enc_is(lua_State *L, const char *expr, const char *want, size_t wn) {
  char code[256];
  snprintf(code, sizeof code, "return %s", expr);
  run(L, code);
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  if (codec_enc_value(e, L, -1, "x") != 0) fail_msg("%s: %s", expr, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (b.len != wn || memcmp(b.data, want, wn) != 0) fail_msg("encoding of %s differs (%zu bytes)", expr, b.len);
  codec_buf_fini(&b);
}

#define ENC(L, expr, lit) enc_is(L, expr, lit, sizeof(lit) - 1)

static void test_encode_forms(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  ENC(L, "0", "\x00");
  ENC(L, "-1", "\xff");
  ENC(L, "200", "\xcc\xc8");
  ENC(L, "-200", "\xd1\xff\x38");
  ENC(L, "70000", "\xce\x00\x01\x11\x70");
  ENC(L, "math.maxinteger", "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff");
  ENC(L, "math.mininteger", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00");
  ENC(L, "1.0", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00");
  ENC(L, "-0.0", "\xcb\x80\x00\x00\x00\x00\x00\x00\x00");
  ENC(L, "'ab'", "\xa2" "ab");
  ENC(L, "{}", "\x90");
  ENC(L, "{1, 'a'}", "\x92\x01\xa1" "a");
  ENC(L, "{[2] = 1}", "\x81\x02\x01");
  ENC(L, "{1, nil, 3}", "\x82\x01\x01\x03\x03");
  ENC(L, "require'actor.codec'.timestamp(1)", "\xd6\xff\x00\x00\x00\x01");
  ENC(L, "require'actor.codec'.ext(42, 'x')", "\xd4\x2a" "x");
  ENC(L, "(function() local t = {} return {t, t} end)()", "\x92\x90\xd6\x01\x00\x00\x00\x01");
}

/* Every strict prefix of a valid message must fail cleanly. */
static void test_truncated(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  static const struct {
    const char *b;
    size_t n;
  } msgs[] = {
      {"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9}, {"\xdb\x00\x00\x00\x03" "abc", 8},
      {"\xc6\x00\x00\x00\x01" "z", 6},             {"\xdd\x00\x00\x00\x02\x01\x02", 7},
      {"\xdf\x00\x00\x00\x01\xa1k\xa1v", 9},       {"\xc9\x00\x00\x00\x01\x11z", 7},
      {"\xd8\x7f" "0123456789abcdef", 18},         {"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 9},
      {"\x92\x91\x90\x81\x01\x02", 6},
  };
  codec_dec_opts o = untrusted();
  for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
    assert_int_equal(codec_decode(L, msgs[i].b, msgs[i].n, &o), 1);
    lua_pop(L, 1);
    for (size_t n = 1; n < msgs[i].n; n++) {
      int top = lua_gettop(L);
      assert_int_equal(codec_decode(L, msgs[i].b, n, &o), -1);
      assert_int_equal(lua_gettop(L), top + 1);
      assert_non_null(strstr(lua_tostring(L, -1), "truncated msgpack"));
      assert_non_null(strstr(lua_tostring(L, -1), "offset"));
      lua_pop(L, 1);
    }
  }
  assert_int_equal(codec_decode(L, "\xdb\x00\x00\x00\x64" "ab", 7, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "truncated msgpack: str32 needs 100 bytes at offset 0, 2 left");
  lua_pop(L, 1);
  assert_int_equal(codec_decode(L, "\xc1", 1, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "invalid msgpack: byte 0xc1 at offset 0");
  lua_pop(L, 1);
}

static void test_huge_counts_fail_fast(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  codec_dec_opts o = untrusted();
  const char a32[] = "\xdd\xff\xff\xff\xff\x01\x02\x03\x04\x05";
  assert_int_equal(codec_decode(L, a32, 10, &o), -1);
  assert_non_null(strstr(lua_tostring(L, -1), "array of 4294967295 elements"));
  lua_pop(L, 1);
  const char m32[] = "\xdf\x00\x00\x00\x03\x01\x02\x03\x04\x05";
  assert_int_equal(codec_decode(L, m32, 10, &o), -1);
  lua_pop(L, 1);
  const char s32[] = "\xdb\xff\xff\xff\xff\x00";
  assert_int_equal(codec_decode(L, s32, 6, &o), -1);
  lua_pop(L, 1);
}

/* Encodes the Lua expression in L[0], decodes it in L[1] as global `v` and
 * checks `check` there. Returns nothing; fails the test on error. */
static void cross(void **st, const char *expr, const char *check) {
  lua_State *A = ((lua_State **)*st)[0], *B = ((lua_State **)*st)[1];
  char code[1024];
  snprintf(code, sizeof code, "return %s", expr);
  run(A, code);
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(A);
  codec_enc_begin(e, &b, NULL);
  if (codec_enc_value(e, A, -1, "v") != 0) fail_msg("%s: %s", expr, lua_tostring(A, -1));
  lua_pop(A, 1);
  codec_dec_opts o = trusted();
  int n = codec_decode(B, b.data, b.len, &o);
  if (n != 1) fail_msg("%s: decode gave %d: %s", expr, n, n < 0 ? lua_tostring(B, -1) : "");
  lua_setglobal(B, "v");
  snprintf(code, sizeof code, "assert(%s, [==[check failed: %s]==])", check, check);
  run(B, code);
  codec_buf_fini(&b);
}

static void test_cross_state_data(void **st) {
  cross(st, "{1, 2.0, 'x\\0y', true, math.maxinteger, -0.0, 1/0}",
        "v[1] == 1 and math.type(v[2]) == 'float' and v[3] == 'x\\0y' and v[4] and v[5] == math.maxinteger "
        "and 1/v[6] == -1/0 and v[7] == 1/0");
  cross(st, "0/0", "v ~= v");
  cross(st, "string.rep('\\255', 3 << 20)", "#v == 3 << 20 and v:byte(-1) == 255");
  cross(st, "(function() local t = {a = {}} t.b = t.a t.self = t return t end)()",
        "v.a == v.b and v.self == v");
  cross(st, "(function() local k = {} return {[k] = 'x', k = k, [1.5] = 2, [false] = 3} end)()",
        "v[v.k] == 'x' and v[1.5] == 2 and v[false] == 3");
  cross(st, "{[1] = 1, [3] = 3}", "v[1] == 1 and v[3] == 3 and v[2] == nil");
}

static void test_cross_state_functions(void **st) {
  lua_State *A = ((lua_State **)*st)[0], *B = ((lua_State **)*st)[1];
  run(A, "marker = 'A'");
  run(B, "marker = 'B'");
  /* _ENV binds to the destination's globals; upvalues come along. */
  cross(st, "(function() local n, t = 40, {k = 2} return function() return marker, n + t.k end end)()",
        "select(1, v()) == 'B' and select(2, v()) == 42");
  /* Shared upvalues stay shared. */
  cross(st,
        "(function() local c = 0 return {inc = function() c = c + 1 end, get = function() return c end} end)()",
        "(function() v.inc() v.inc() return v.get() == 2 end)()");
  /* C functions by name, including nested library functions. */
  cross(st, "{string.format, print, math.floor}",
        "v[1] == string.format and v[2] == print and v[3] == math.floor");
  /* Recursion through an upvalue and line numbers in errors. */
  cross(st, "(function() local function f(n) if n == 0 then error('deep') end return f(n - 1) end return f end)()",
        "select(2, pcall(v, 3)):find(':1: deep') ~= nil");
}

static void expect_enc_error(lua_State *L, const char *expr, const char *where, const char *msg) {
  char code[512];
  snprintf(code, sizeof code, "return %s", expr);
  run(L, code);
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  int top = lua_gettop(L);
  assert_int_equal(codec_enc_value(e, L, -1, where), -1);
  assert_int_equal(lua_gettop(L), top + 1);
  assert_string_equal(lua_tostring(L, -1), msg);
  lua_pop(L, 2);
  codec_buf_fini(&b);
}

static void test_encode_errors(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  expect_enc_error(L, "(function() local co = coroutine.create(print) return function() return co end end)()",
                   "closure (argument #2 to runInPool)",
                   "cannot send upvalue 'co' of closure (argument #2 to runInPool): a thread");
  expect_enc_error(L, "{conn = io.stdout}", "args[1]", "cannot send args[1].conn: userdata (FILE*)");
  expect_enc_error(L, "{x = {setmetatable({}, {})}}", "r", "cannot send r.x[1]: table with unregistered metatable");
  expect_enc_error(L, "{[coroutine.create(print)] = 1}", "t", "cannot send a key of t: a thread");
  expect_enc_error(L, "{f = string.byte, g = (require'actor.codec').encode, h = io.stdout.write}", "t",
                   "cannot send t.h: a C function not known by name");
  expect_enc_error(L,
                   "(function() local t = {co = coroutine.running()} return function() return t end end)()",
                   "f", "cannot send upvalue 't.co' of f: a thread");
  /* The encoder is usable after a failure. */
  cross(st, "{1}", "v[1] == 1");
}

static void test_limits(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  codec_limits lim;
  codec_limits_default(&lim);
  assert_int_equal(lim.max_depth, 200);
  lim.max_size = 100;
  lim.max_depth = 3;
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  run(L, "return string.rep('x', 1000)");
  codec_enc_begin(e, &b, &lim);
  assert_int_equal(codec_enc_value(e, L, -1, "s"), -1);
  assert_string_equal(lua_tostring(L, -1), "cannot send s: message too large: 1003 bytes exceeds limit of 100 bytes");
  assert_true(b.len < 100);
  lua_pop(L, 2);
  run(L, "return {{{{}}}}");
  b.len = 0;
  codec_enc_begin(e, &b, &lim);
  assert_int_equal(codec_enc_value(e, L, -1, "t"), -1);
  assert_string_equal(lua_tostring(L, -1), "cannot send t[1][1][1]: nesting deeper than 3");
  lua_pop(L, 2);
  codec_buf_fini(&b);
  codec_dec_opts o = untrusted();
  o.lim = lim;
  assert_int_equal(codec_decode(L, "\x91\x91\x91\x91\x90", 5, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "nesting deeper than 3 at offset 3");
  lua_pop(L, 1);
  char big[101] = {0};
  assert_int_equal(codec_decode(L, big, sizeof big, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "message too large: 101 bytes exceeds limit of 100 bytes");
  lua_pop(L, 1);
}

static void test_untrusted_refuses_functions(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "local c = require'actor.codec' "
         "local s = c.encode(function() return 1 end) "
         "local ok, e = pcall(c.decode, s) "
         "assert(not ok and e:find('untrusted'), e) "
         "assert(c.decode(s, {trusted = true})() == 1) "
         "ok, e = pcall(c.decode, c.encode(print)) assert(not ok and e:find('untrusted')) "
         "ok, e = pcall(c.decode, c.encode(_G)) assert(not ok and e:find('untrusted'))");
}

static void test_multi_and_decode_one(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  codec_dec_opts o = untrusted();
  const char m[] = "\x01\xa1x\xc0";
  assert_int_equal(codec_decode(L, m, 4, &o), 3);
  assert_int_equal(lua_tointeger(L, -3), 1);
  assert_string_equal(lua_tostring(L, -2), "x");
  assert_true(lua_isnil(L, -1));
  lua_pop(L, 3);
  size_t pos = 0;
  assert_int_equal(codec_decode_one(L, m, 4, &pos, &o), 1);
  assert_int_equal(pos, 1);
  assert_int_equal(codec_decode_one(L, m, 4, &pos, &o), 1);
  assert_int_equal(codec_decode_one(L, m, 4, &pos, &o), 1);
  assert_int_equal(codec_decode_one(L, m, 4, &pos, &o), 0);
  lua_pop(L, 3);
  assert_int_equal(codec_decode(L, "", 0, &o), 0);
}

static void test_registered(void **st) {
  lua_State *A = ((lua_State **)*st)[0], *B = ((lua_State **)*st)[1];
  const char *reg = "local c = require'actor.codec' "
                    "P = {__index = {norm = function(p) return p.x + p.y end}} c.register('Point', P) "
                    "Box = {} c.register('Box', Box, {serialize = function(b) return b.v end, "
                    "deserialize = function(v) return setmetatable({v = v, back = true}, Box) end})";
  run(A, reg);
  run(B, reg);
  cross(st, "setmetatable({x = 1, y = 2}, P)", "v:norm() == 3 and getmetatable(v) == P");
  cross(st, "(function() local b = setmetatable({v = 9}, Box) return {b, b} end)()",
        "v[1].back and v[1].v == 9 and v[1] == v[2]");
  run(B, "require'actor.codec'.register('Point', {})");
  cross(st, "setmetatable({x = 1, y = 2}, P)", "getmetatable(v) ~= P");
}

static void test_enc_reuse_no_growth(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "T = {} for i = 1, 100 do T[i] = {a = i, b = {i}} end");
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  size_t cap = 0;
  for (int i = 0; i < 50; i++) {
    b.len = 0;
    lua_getglobal(L, "T");
    codec_enc_begin(e, &b, NULL);
    assert_int_equal(codec_enc_value(e, L, -1, "T"), 0);
    lua_pop(L, 1);
    if (i == 1) cap = b.cap;
    if (i > 1) assert_int_equal(b.cap, cap);
  }
  codec_buf_fini(&b);
}


static void test_paths_and_env(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  expect_enc_error(L,
                   "(function() local t = {conn = io.stdout} local function helper() return t end "
                   "return function() return helper() end end)()",
                   "closure (argument #2 to call)",
                   "cannot send upvalue 't.conn' of upvalue 'helper' of closure (argument #2 to call): "
                   "userdata (FILE*)");
  expect_enc_error(L, "{['a b'] = {[true] = {[2.5] = io.stdout}}}", "x",
                   "cannot send x[\"a b\"][true][2.5]: userdata (FILE*)");
  /* A sandbox _ENV (metatable falling back to _G) binds to the destination's
   * globals; a plain table _ENV travels as a value. */
  run(((lua_State **)*st)[1], "marker = 'B'");
  cross(st,
        "(function() local env = setmetatable({marker = 'sandbox'}, {__index = _G}) "
        "return load('return function() return marker end', 'x', 't', env)() end)()",
        "v() == 'B'");
  cross(st, "load('return function() return marker end', 'x', 't', {marker = 'own'})()", "v() == 'own'");
}

static void test_more_encode_forms(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  /* Timestamps choose the smallest form that holds them. */
  ENC(L, "require'actor.codec'.timestamp(2, 1)", "\xd7\xff\x00\x00\x00\x04\x00\x00\x00\x02");
  ENC(L, "require'actor.codec'.timestamp(-1, 7)",
      "\xc7\x0c\xff\x00\x00\x00\x07\xff\xff\xff\xff\xff\xff\xff\xff");
  ENC(L, "string.format", "\xc7\x0d\x03string.format");
  ENC(L, "next", "\xd6\x03next");
  ENC(L, "{[1] = true, n = 1}", "\x82\x01\xc3\xa1n\x01");
}

static void test_drop_metatables(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "return setmetatable({a = 1}, {})");
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  codec_enc_set_flags(e, CODEC_DROP_METATABLES);
  assert_int_equal(codec_enc_value(e, L, -1, "t"), 0);
  lua_pop(L, 1);
  assert_int_equal(b.len, 4);
  assert_memory_equal(b.data, "\x81\xa1" "a\x01", 4);
  /* The flag does not outlive the message. */
  run(L, "return setmetatable({a = 1}, {})");
  b.len = 0;
  codec_enc_begin(e, &b, NULL);
  assert_int_equal(codec_enc_value(e, L, -1, "t"), -1);
  lua_pop(L, 2);
  codec_buf_fini(&b);
}

static void test_hook_cannot_reenter(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "local c = require'actor.codec' local Bad = {} "
         "c.register('Bad', Bad, {serialize = function(b) return c.encode(1) end, deserialize = print}) "
         "local ok, e = pcall(c.encode, {x = setmetatable({}, Bad)}) "
         "assert(not ok and e:find('^cannot send value.x: serialize hook of .Bad. failed: .*serialize hook'), e) "
         "assert(c.decode(c.encode(5)) == 5)");
}

/* The codec reads raw: a strict _G (erroring __index) or proxies with
 * __index/__pairs never run while encoding. */
static void test_no_metamethods(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "setmetatable(_G, {__index = function(_, k) error('strict: ' .. tostring(k)) end})");
  expect_enc_error(L, "io.stdout.write", "f", "cannot send f: a C function not known by name");
  run(L, "local c = require'actor.codec' local P = {__pairs = function() error('pairs!') end, "
         "__index = function() error('index!') end, __len = function() error('len!') end} "
         "c.register('Proxy', P) "
         "local r = c.decode(c.encode(setmetatable({1, 2, x = 3}, P))) "
         "assert(rawget(r, 1) == 1 and rawget(r, 'x') == 3 and getmetatable(r) == P)");
}

static void test_function_cache(void **st) {
  lua_State *A = ((lua_State **)*st)[0], *B = ((lua_State **)*st)[1];
  codec_fn_cache_enable(B, 16);
  run(A, "function make(n) return function() return n end end "
         "function pair(c) return {inc = function() c = c + 1 end, get = function() return c end} end");
  run(B, "seen = {}");
  /* The same bytecode again: the same closure object, with fresh upvalues. */
  cross(st, "make(1)", "v() == 1 and (function() seen.f = v return true end)()");
  cross(st, "make(2)", "v() == 2 and v == seen.f");
  /* Twice in one message: two closures. */
  cross(st, "{make(3), make(4)}", "v[1]() == 3 and v[2]() == 4 and v[1] ~= v[2]");
  /* Once joined, never reused: a later message where the two closures do
   * not share must not see the old join. */
  cross(st, "pair(0)", "(function() v.inc() return v.get() == 1 end)()");
  cross(st, "(function() local a, b = pair(10), pair(20) return {inc = a.inc, get = b.get} end)()",
        "(function() v.inc() return v.get() == 20 end)()");
  cross(st, "(function() local a, b = pair(10), pair(20) return {inc = a.inc, get = b.get} end)()",
        "(function() v.inc() return v.get() == 20 end)()");
  codec_fn_cache_enable(B, 0);
  cross(st, "make(5)", "v() == 5 and v ~= seen.f");
}

static void test_refused_on_decode(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  codec_dec_opts o = trusted();
  assert_int_equal(codec_decode(L, "\xc7\x07\x03" "foo.bar", 10, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "unknown C function 'foo.bar' at offset 0");
  lua_pop(L, 1);
  assert_int_equal(codec_decode(L, "\xc9\x00\x00\x00\x05\x04\xa3" "Zzz\x80", 12, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "unknown metatable 'Zzz' (not registered) at offset 0");
  lua_pop(L, 1);
  assert_int_equal(codec_decode(L, "\xd6\x01\x00\x00\x00\x00", 6, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "invalid reference #0 at offset 0");
  lua_pop(L, 1);
  assert_int_equal(codec_decode(L, "\x81\xc0\x01", 3, &o), -1);
  assert_string_equal(lua_tostring(L, -1), "invalid map key nil at offset 1");
  lua_pop(L, 1);
  /* Bytecode that is not bytecode, on a trusted channel. */
  assert_int_equal(codec_decode(L, "\xc9\x00\x00\x00\x04\x02\xa2hi\x00", 10, &o), -1);
  assert_non_null(strstr(lua_tostring(L, -1), "invalid function at offset 0"));
  lua_pop(L, 1);
}

/* What the codec writes for plain data, msgpack-c (another implementation)
 * reads back with the same types. */
/* The encoder's inline writers produce exactly msgpack-c's bytes: integers
 * at every format boundary, doubles, strings at the header boundaries, and
 * array/map headers, at the top level and inside containers. */
static int sbuf_write(void *data, const char *buf, size_t len) {
  return codec_buf_append(data, buf, len);
}

static void test_inline_writers_match_msgpack_c(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  static const int64_t ints[] = {0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 4294967295LL,
                                 4294967296LL, INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769,
                                 -2147483648LL, -2147483649LL, INT64_MIN};
  static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536};
  codec_buf want, got;
  codec_buf_init(&want);
  codec_buf_init(&got);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &want, sbuf_write);
  size_t ni = sizeof ints / sizeof ints[0], ns = sizeof lens / sizeof lens[0];
  msgpack_pack_array(&pk, ni + ns + 3);
  lua_createtable(L, (int)(ni + ns + 3), 0);
  for (size_t i = 0; i < ni; i++) {
    msgpack_pack_int64(&pk, ints[i]);
    lua_pushinteger(L, (lua_Integer)ints[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  for (size_t i = 0; i < ns; i++) {
    char *s = test_malloc(lens[i] + 1);
    memset(s, 'k', lens[i]);
    msgpack_pack_str_with_body(&pk, s, lens[i]);
    lua_pushlstring(L, s, lens[i]);
    lua_rawseti(L, -2, (lua_Integer)(ni + i) + 1);
    test_free(s);
  }
  msgpack_pack_double(&pk, -2.5);
  lua_pushnumber(L, -2.5);
  lua_rawseti(L, -2, (lua_Integer)(ni + ns) + 1);
  msgpack_pack_map(&pk, 1); /* {k = 17 items} packs as a fixmap holding an array16 */
  msgpack_pack_str_with_body(&pk, "k", 1);
  msgpack_pack_array(&pk, 17);
  lua_createtable(L, 0, 1);
  lua_createtable(L, 17, 0);
  for (int i = 1; i <= 17; i++) {
    msgpack_pack_true(&pk);
    lua_pushboolean(L, 1);
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, -2, "k");
  lua_rawseti(L, -2, (lua_Integer)(ni + ns) + 2);
  msgpack_pack_nil(&pk); /* an empty table is an empty array, written as such */
  want.len--;
  msgpack_pack_array(&pk, 0);
  lua_newtable(L);
  lua_rawseti(L, -2, (lua_Integer)(ni + ns) + 3);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &got, NULL);
  assert_int_equal(codec_enc_value(e, L, -1, "v"), 0);
  lua_pop(L, 1);
  assert_int_equal(got.len, want.len);
  assert_memory_equal(got.data, want.data, want.len);
  codec_buf_fini(&want);
  codec_buf_fini(&got);
}

/* Decoding paths taken inside containers of long messages (map key cache,
 * inline leaves): many distinct short keys that collide in the cache, every
 * integer width, uint64 above math.maxinteger, and every strict prefix of
 * such a message fails cleanly. */
static void test_container_fast_paths(void **st) {
  cross(st,
        "(function() local t = {} for i = 1, 300 do local m = {} for j = 1, 40 do "
        "m['k' .. (i * 7 + j) % 97] = j * 1000003 - 2^40 // 1 end m[''] = i m[string.rep('z', 31)] = -i "
        "m.f = i + 0.25 m.s = 'item' .. i m.b = i % 2 == 0 t[i] = m end return t end)()",
        "(function() for i = 1, 300 do local m = v[i] local n = 0 for k in pairs(m) do n = n + 1 end "
        "for j = 1, 40 do if m['k' .. (i * 7 + j) % 97] == nil then return false end end "
        "if m[''] ~= i or m[string.rep('z', 31)] ~= -i or m.f ~= i + 0.25 or m.s ~= 'item' .. i "
        "or m.b ~= (i % 2 == 0) or math.type(m['']) ~= 'integer' then return false end end return true end)()");
  lua_State *L = ((lua_State **)*st)[1];
  codec_dec_opts o = untrusted();
  /* [{"a": 0xcc..0xd3 values, "b": uint64 max}] padded past 128 bytes */
  const char m[] =
      "\x92\x8a\xa1" "a" "\xcc\xff" "\xa1" "b" "\xcd\x01\x00" "\xa1" "c" "\xce\x00\x01\x00\x00"
      "\xa1" "d" "\xcf\xff\xff\xff\xff\xff\xff\xff\xff" "\xa1" "e" "\xd0\x80" "\xa1" "f" "\xd1\x80\x00"
      "\xa1" "g" "\xd2\x80\x00\x00\x00" "\xa1" "h" "\xd3\x80\x00\x00\x00\x00\x00\x00\x00"
      "\xa1" "i" "\xc0" "\xa1" "j" "\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"
      "\xdc\x00\x10" "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\xe0\xff\xc2\xc3"
      "\xa1" "1" "\xa1" "2" "\xa1" "3" "\xa1" "4" "\xa1" "5" "\xa1" "6" "\xa1" "7" "\xa1" "8"
      "\xa1" "a" "\xa1" "b" "\xa1" "c" "\xa1" "d" "\xa1" "e" "\xa1" "f" "\xa1" "g" "\xa1" "h"
      "\xa1" "i" "\xa1" "j" "\xa1" "k" "\xa1" "l";
  size_t mn = sizeof m - 1;
  /* the array16 holds 16 ints/booleans then 20 strings: fix its count;
   * the message is long enough (>= 128 bytes) for the key cache */
  char *buf = test_malloc(mn);
  memcpy(buf, m, mn);
  size_t at = 0;
  while (at + 3 <= mn && memcmp(m + at, "\xdc\x00\x10", 3) != 0) at++;
  assert_true(at + 3 <= mn);
  buf[at + 2] = 36;
  assert_true(mn >= 128);
  assert_int_equal(codec_decode(L, buf, mn, &o), 1);
  lua_setglobal(L, "v");
  run(L, "local m = v[1] assert(m.a == 255 and m.b == 256 and m.c == 65536 and m.d == 2.0^64 - 1 "
         "and math.type(m.d) == 'float' and m.e == -128 and m.f == -32768 and m.g == -2^31 "
         "and m.h == math.mininteger and m.i == nil and m.j == 1.5) "
         "local a = v[2] assert(#a == 36 and a[13] == -32 and a[14] == -1 and a[15] == false "
         "and a[16] == true and a[24] == '8' and a[36] == 'l')");
  for (size_t n = 1; n < mn; n++) {
    int top = lua_gettop(L);
    assert_int_equal(codec_decode(L, buf, n, &o), -1);
    assert_int_equal(lua_gettop(L), top + 1);
    assert_non_null(strstr(lua_tostring(L, -1), "truncated msgpack"));
    lua_pop(L, 1);
  }
  test_free(buf);
}

static void test_msgpack_c_reads_ours(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  run(L, "return {1, -200, 1.5, 'str', true, false, {k = 'v'}, math.maxinteger, "
         "string.rep('x', 70000), require'actor.codec'.timestamp(3, 4)}");
  codec_buf b;
  codec_buf_init(&b);
  codec_enc *e = codec_enc_get(L);
  codec_enc_begin(e, &b, NULL);
  assert_int_equal(codec_enc_value(e, L, -1, "v"), 0);
  lua_pop(L, 1);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(&u, b.data, b.len, &off), MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(off, b.len);
  msgpack_object *a = u.data.via.array.ptr;
  assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
  assert_int_equal(u.data.via.array.size, 10);
  assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
  assert_int_equal(a[0].via.u64, 1);
  assert_int_equal(a[1].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
  assert_int_equal(a[1].via.i64, -200);
  assert_int_equal(a[2].type, MSGPACK_OBJECT_FLOAT64);
  assert_true(a[2].via.f64 == 1.5);
  assert_int_equal(a[3].type, MSGPACK_OBJECT_STR);
  assert_memory_equal(a[3].via.str.ptr, "str", 3);
  assert_int_equal(a[4].type, MSGPACK_OBJECT_BOOLEAN);
  assert_true(a[4].via.boolean);
  assert_false(a[5].via.boolean);
  assert_int_equal(a[6].type, MSGPACK_OBJECT_MAP);
  assert_int_equal(a[6].via.map.size, 1);
  assert_int_equal(a[7].via.u64, (uint64_t)INT64_MAX);
  assert_int_equal(a[8].type, MSGPACK_OBJECT_STR);
  assert_int_equal(a[8].via.str.size, 70000);
  assert_int_equal(a[9].type, MSGPACK_OBJECT_EXT);
  assert_int_equal(a[9].via.ext.type, -1);
  msgpack_unpacked_destroy(&u);
  codec_buf_fini(&b);
}

/* Runs the Lua example of docs/codec.md (STYLE: every example in the docs
 * is run by a test). */
static void test_doc_example(void **st) {
  lua_State *L = ((lua_State **)*st)[0];
  const char *path = ACTOR_SOURCE_DIR "/docs/codec.md";
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) fail_msg("cannot open %s", path);
  static char doc[65536];
  size_t n = fread(doc, 1, sizeof doc - 1, fp);
  fclose(fp);
  doc[n] = '\0';
  char *start = strstr(doc, "```lua\n");
  assert_non_null(start);
  start += 7;
  char *end = strstr(start, "```");
  assert_non_null(end);
  if (luaL_loadbuffer(L, start, (size_t)(end - start), "=docs/codec.md") != LUA_OK ||
      lua_pcall(L, 0, 0, 0) != LUA_OK)
    fail_msg("docs/codec.md example: %s", lua_tostring(L, -1));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_vectors_scalars, setup, teardown),
      cmocka_unit_test_setup_teardown(test_vectors_strings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_vectors_containers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_vectors_ext, setup, teardown),
      cmocka_unit_test_setup_teardown(test_encode_forms, setup, teardown),
      cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
      cmocka_unit_test_setup_teardown(test_huge_counts_fail_fast, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cross_state_data, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cross_state_functions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_encode_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_untrusted_refuses_functions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_multi_and_decode_one, setup, teardown),
      cmocka_unit_test_setup_teardown(test_registered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_enc_reuse_no_growth, setup, teardown),
      cmocka_unit_test_setup_teardown(test_paths_and_env, setup, teardown),
      cmocka_unit_test_setup_teardown(test_more_encode_forms, setup, teardown),
      cmocka_unit_test_setup_teardown(test_drop_metatables, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_on_decode, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hook_cannot_reenter, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_metamethods, setup, teardown),
      cmocka_unit_test_setup_teardown(test_function_cache, setup, teardown),
      cmocka_unit_test_setup_teardown(test_doc_example, setup, teardown),
      cmocka_unit_test_setup_teardown(test_msgpack_c_reads_ours, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inline_writers_match_msgpack_c, setup, teardown),
      cmocka_unit_test_setup_teardown(test_container_fast_paths, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
