/*
 * fuzz_decode.c -- libFuzzer target: codec_decode over arbitrary bytes with
 * untrusted options (as for bytes from outside the process), then re-encodes
 * what was decoded and decodes it again, so the encoder meets every shape
 * the decoder can produce.
 *
 * Built only with -DACTOR_FUZZ=ON and clang; tests/fuzz/run.sh does both.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "codec.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "actor.codec", luaopen_actor_codec, 0);
    lua_pop(L, 1);
    codec_index_cfunctions(L);
  }
  codec_dec_opts o;
  o.trusted = 0;
  codec_limits_default(&o.lim);
  o.lim.max_size = 1 << 20;
  int top = lua_gettop(L);
  int n = codec_decode(L, (const char *)data, size, &o);
  if (n < 0) {
    if (lua_gettop(L) != top + 1 || !lua_isstring(L, -1)) abort();
  } else {
    if (lua_gettop(L) != top + n) abort();
    codec_enc *e = codec_enc_get(L);
    codec_buf b;
    codec_buf_init(&b);
    codec_enc_begin(e, &b, NULL);
    int ok = 1;
    for (int i = top + 1; i <= top + n && ok; i++) ok = codec_enc_value(e, L, i, "v") == 0;
    if (ok) {
      int m = codec_decode(L, b.data, b.len, &o);
      if (m != n) abort(); /* what we decoded must survive a round trip */
    }
    codec_buf_fini(&b);
  }
  lua_settop(L, top);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
