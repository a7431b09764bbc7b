/*
 * codec_bench.c -- encode+decode cost of the codec against msgpack-c doing
 * the equivalent work directly from C (the floor).
 *
 *   codec_bench [--smoke] [--only a|b|c] [runs]
 *
 * Payloads: (a) an array of 1000 small maps, (b) a closure with 5 upvalues,
 * (c) a 1 MB string. Each figure is the median over `runs` runs (default 5)
 * of the mean time of one encode+decode round, in microseconds. Prints
 * `RESULT <name> <value> <unit>` lines (tests/bench/run.sh convention) and
 * the ratio codec/floor for each payload.
 *
 * Two extra figures explain the floors:
 * - (c) "owned": msgpack-c's unpack references the string inside the input
 *   buffer (zero copy), while a Lua string must own its bytes. The owned
 *   floor adds the malloc+memcpy that any decoder producing an owned string
 *   needs, which is what lua_pushlstring does.
 * - (a) "Lua API floor": the least work any codec on Lua's public API must
 *   do for (a) with no msgpack at all: walk the 1001 tables with lua_next
 *   reading every key and value, and build the copy with lua_createtable,
 *   lua_rawset and lua_pushlstring (new "itemN" strings) from C values, the
 *   keys already made. It bounds how close to msgpack-c the codec can get.
 * - (b) "fresh": a new closure object for every message (the usual
 *   `runInPool(pool, function() ... end)` pattern), so the sender's dump
 *   cache cannot help; (b) itself sends the same closure object again, as
 *   `actor.call(pool, fn, args)` with a module-level fn does.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- codec side ---------------------------------------------------------- */

static void codec_round(lua_State *L, codec_enc *e, codec_buf *b, int trusted) {
  b->len = 0;
  codec_enc_begin(e, b, NULL);
  if (codec_enc_value(e, L, -1, "payload") != 0) {
    fprintf(stderr, "encode: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  codec_dec_opts o;
  o.trusted = trusted;
  codec_limits_default(&o.lim);
  if (codec_decode(L, b->data, b->len, &o) != 1) {
    fprintf(stderr, "decode: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  lua_pop(L, 1);
}

/* ---- msgpack-c side (the floor) ----------------------------------------- */

/* The names exist before packing, as the Lua strings do for the codec. */
static char names_a[1001][16];
static size_t names_a_len[1001];

__attribute__((noinline)) static void floor_a(msgpack_sbuffer *sb, msgpack_unpacked *u) {
  msgpack_sbuffer_clear(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 1000);
  for (int i = 1; i <= 1000; i++) {
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_int64(&pk, i);
    msgpack_pack_str_with_body(&pk, "name", 4);
    msgpack_pack_str_with_body(&pk, names_a[i], names_a_len[i]);
    msgpack_pack_str_with_body(&pk, "score", 5);
    msgpack_pack_double(&pk, i * 0.5);
    msgpack_pack_str_with_body(&pk, "ok", 2);
    msgpack_pack_true(&pk);
  }
  size_t off = 0;
  if (msgpack_unpack_next(u, sb->data, sb->size, &off) != MSGPACK_UNPACK_SUCCESS) exit(2);
}

/* The closure's equivalent: its bytecode as bin plus the five values. */
static void floor_b(msgpack_sbuffer *sb, msgpack_unpacked *u, const char *bc, size_t bn) {
  msgpack_sbuffer_clear(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 2);
  msgpack_pack_bin_with_body(&pk, bc, bn);
  msgpack_pack_array(&pk, 5);
  msgpack_pack_int64(&pk, 1);
  msgpack_pack_str_with_body(&pk, "two", 3);
  msgpack_pack_array(&pk, 1);
  msgpack_pack_int64(&pk, 3);
  msgpack_pack_double(&pk, 4.5);
  msgpack_pack_true(&pk);
  size_t off = 0;
  if (msgpack_unpack_next(u, sb->data, sb->size, &off) != MSGPACK_UNPACK_SUCCESS) exit(2);
}

__attribute__((noinline)) /* The Lua API floor of (a) (see the top). The payload is at `a`, the four
 * key strings at keys..keys+3. */
__attribute__((noinline)) static void api_floor_a(lua_State *L, int a, int keys) {
  size_t sink = 0, n;
  lua_pushnil(L);
  while (lua_next(L, a)) {
    int m = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, m)) {
      if (lua_type(L, -2) == LUA_TSTRING) sink += (size_t)lua_tolstring(L, -2, &n)[0];
      int t = lua_type(L, -1);
      if (t == LUA_TNUMBER) sink += lua_isinteger(L, -1) ? (size_t)lua_tointeger(L, -1) : (size_t)lua_tonumber(L, -1);
      else if (t == LUA_TSTRING) sink += (size_t)lua_tolstring(L, -1, &n)[0];
      else sink += (size_t)lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  __asm__ volatile("" : : "r"(sink) : "memory");
  lua_createtable(L, 1000, 0);
  for (int i = 1; i <= 1000; i++) {
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, keys);
    lua_pushinteger(L, i);
    lua_rawset(L, -3);
    lua_pushvalue(L, keys + 1);
    lua_pushlstring(L, names_a[i], names_a_len[i]);
    lua_rawset(L, -3);
    lua_pushvalue(L, keys + 2);
    lua_pushnumber(L, i * 0.5);
    lua_rawset(L, -3);
    lua_pushvalue(L, keys + 3);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_rawseti(L, -2, i);
  }
  lua_pop(L, 1);
}

__attribute__((noinline)) static void floor_c(msgpack_sbuffer *sb, msgpack_unpacked *u, const char *s, size_t n) {
  msgpack_sbuffer_clear(sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_str_with_body(&pk, s, n);
  size_t off = 0;
  if (msgpack_unpack_next(u, sb->data, sb->size, &off) != MSGPACK_UNPACK_SUCCESS) exit(2);
}

__attribute__((noinline)) static void floor_c_owned(msgpack_sbuffer *sb, msgpack_unpacked *u, const char *s, size_t n) {
  floor_c(sb, u, s, n);
  msgpack_object_str *o = &u->data.via.str;
  char *own = malloc(o->size);
  if (own == NULL) exit(3);
  memcpy(own, o->ptr, o->size);
  __asm__ volatile("" : : "r"(own) : "memory");
  free(own);
}

static int dump_to_buf(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  return codec_buf_append(ud, p, sz);
}

int main(int argc, char **argv) {
  int smoke = 0, runs = 5, only = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--smoke") == 0) smoke = 1;
    else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i][0] - 'a';
    else runs = atoi(argv[i]);
  }
  if (runs < 3) runs = 3;
  if (smoke) runs = 3;
  int iters[3] = {smoke ? 3 : 300, smoke ? 3 : 20000, smoke ? 2 : 300};

  for (int i = 1; i <= 1000; i++) names_a_len[i] = (size_t)snprintf(names_a[i], sizeof names_a[i], "item%d", i);
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "actor.codec", luaopen_actor_codec, 0);
  lua_pop(L, 1);
  codec_index_cfunctions(L);
  const char *setup =
      "A = {} for i = 1, 1000 do A[i] = {id = i, name = 'item' .. i, score = i * 0.5, ok = true} end\n"
      "local a, b, c, d, e = 1, 'two', {3}, 4.5, true\n"
      "B = function(x) return a + x, b, c[1], d, e end\n"
      "C = string.rep('x', 1 << 20)\n"
      "function MAKE() local a, b, c, d, e = 1, 'two', {3}, 4.5, true\n"
      "  return function(x) return a + x, b, c[1], d, e end end\n";
  if (luaL_dostring(L, setup) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  codec_enc *e = codec_enc_get(L);
  codec_buf b, bc;
  codec_buf_init(&b);
  codec_buf_init(&bc);
  lua_getglobal(L, "B");
  lua_dump(L, dump_to_buf, &bc, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "C");
  size_t cn;
  const char *cs = lua_tolstring(L, -1, &cn);
  lua_pop(L, 1); /* C stays alive as a global */

  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);

  static const char *const names[3] = {"a", "b", "c"};
  static const char *const globals[3] = {"A", "B", "C"};
  double *codec_t[3], *floor_t[3], *api_t = calloc((size_t)runs, sizeof(double));
  for (int p = 0; p < 3; p++) {
    codec_t[p] = calloc((size_t)runs, sizeof(double));
    floor_t[p] = calloc((size_t)runs, sizeof(double));
  }
  /* Runs are interleaved so drift hits both sides alike; one warm-up round
   * each first. */
  for (int r = -1; r < runs; r++) {
    for (int p = 0; p < 3; p++) {
      if (only >= 0 && p != only) continue;
      int n = r < 0 ? 1 : iters[p];
      lua_getglobal(L, globals[p]);
      double t0 = now_us();
      for (int i = 0; i < n; i++) codec_round(L, e, &b, p == 1);
      double t1 = now_us();
      lua_pop(L, 1);
      for (int i = 0; i < n; i++) {
        if (p == 0) floor_a(&sb, &u);
        else if (p == 1) floor_b(&sb, &u, bc.data, bc.len);
        else floor_c(&sb, &u, cs, cn);
      }
      double t2 = now_us(), ta = t2, t3 = t2;
      if (p == 0) {
        lua_getglobal(L, "A");
        int a = lua_gettop(L);
        lua_pushliteral(L, "id");
        lua_pushliteral(L, "name");
        lua_pushliteral(L, "score");
        lua_pushliteral(L, "ok");
        ta = now_us();
        for (int i = 0; i < n; i++) api_floor_a(L, a, a + 1);
        t3 = now_us();
        lua_settop(L, a - 1);
        lua_gc(L, LUA_GCSTEP, 0);
      }
      if (r >= 0) {
        codec_t[p][r] = (t1 - t0) / n;
        floor_t[p][r] = (t2 - t1) / n;
        if (p == 0) api_t[r] = (t3 - ta) / n;
      }
      lua_gc(L, LUA_GCSTEP, 0);
    }
  }
  /* Extra figures: (b) with a fresh closure per message, (c) owned floor. */
  double *bf = calloc((size_t)runs, sizeof(double)), *make = calloc((size_t)runs, sizeof(double));
  double *co = calloc((size_t)runs, sizeof(double)), *bc_on = calloc((size_t)runs, sizeof(double));
  for (int r = 0; r < runs && (only < 0 || only == 2); r++) {
    int n = iters[2];
    double t0 = now_us();
    for (int i = 0; i < n; i++) floor_c_owned(&sb, &u, cs, cn);
    co[r] = (now_us() - t0) / n;
  }
  for (int r = 0; r < runs && (only < 0 || only == 1); r++) {
    int n = iters[1];
    lua_gc(L, LUA_GCCOLLECT);
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
      lua_getglobal(L, "MAKE");
      lua_call(L, 0, 1);
      codec_round(L, e, &b, 1);
      lua_pop(L, 1);
    }
    double t1 = now_us();
    for (int i = 0; i < n; i++) {
      lua_getglobal(L, "MAKE");
      lua_call(L, 0, 1);
      lua_pop(L, 1);
    }
    double t2 = now_us();
    bf[r] = (t1 - t0 - (t2 - t1)) / n; /* minus making the closure */
    make[r] = (t2 - t1) / n;
    /* (b) with the receiving side's function cache on. Collect first: the
     * fresh-closure loop left garbage (closures, dump cache entries) whose
     * collection would otherwise be charged to this loop. */
    lua_gc(L, LUA_GCCOLLECT);
    codec_fn_cache_enable(L, 64);
    lua_getglobal(L, "B");
    n = iters[1];
    t0 = now_us();
    for (int i = 0; i < n; i++) codec_round(L, e, &b, 1);
    bc_on[r] = (now_us() - t0) / n;
    lua_pop(L, 1);
    codec_fn_cache_enable(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
  }
  static const char *const what[3] = {"1000-element array of small maps", "closure with 5 upvalues",
                                      "1 MB string"};
  for (int p = 0; p < 3; p++) {
    if (only >= 0 && p != only) {
      free(codec_t[p]);
      free(floor_t[p]);
      continue;
    }
    double c = median(codec_t[p], runs), f = median(floor_t[p], runs);
    printf("# (%s) %s: codec %.2f us, msgpack-c %.2f us, ratio %.2f (median of %d runs)\n", names[p], what[p],
           c, f, c / f, runs);
    printf("RESULT codec_%s_us %.3f us\n", names[p], c);
    printf("RESULT codec_%s_floor_us %.3f us\n", names[p], f);
    printf("RESULT codec_%s_ratio %.3f x\n", names[p], c / f);
    if (p == 0) {
      double x = median(api_t, runs);
      printf("# (a) Lua API floor (lua_next walk + building the copy, no msgpack): %.2f us = %.2fx msgpack-c; "
             "codec / API floor %.2f\n", x, x / f, c / x);
      printf("RESULT codec_a_api_floor_us %.3f us\n", x);
      printf("RESULT codec_a_api_floor_ratio %.3f x\n", x / f);
    }
    if (p == 1) {
      double x = median(bf, runs);
      printf("# (b) fresh closure per message (dump cache cannot help): codec %.2f us, ratio %.2f\n", x, x / f);
      printf("RESULT codec_b_fresh_us %.3f us\n", x);
      double y = median(bc_on, runs);
      printf("# (b) with the receiver's function cache on (no lua_load): codec %.2f us, ratio %.2f\n", y, y / f);
      printf("RESULT codec_b_fncache_us %.3f us\n", y);
    }
    if (p == 2) {
      double o = median(co, runs);
      printf("# (c) vs a floor that also copies the string out (owned, as a Lua string must be): "
             "floor %.2f us, ratio %.2f\n", o, c / o);
      printf("RESULT codec_c_owned_floor_us %.3f us\n", o);
      printf("RESULT codec_c_owned_ratio %.3f x\n", c / o);
    }
    free(codec_t[p]);
    free(floor_t[p]);
  }
  free(api_t);
  free(bf);
  free(make);
  free(co);
  free(bc_on);
  msgpack_unpacked_destroy(&u);
  msgpack_sbuffer_destroy(&sb);
  codec_buf_fini(&b);
  codec_buf_fini(&bc);
  lua_close(L);
  return 0;
}
