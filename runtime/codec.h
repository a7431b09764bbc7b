/*
 * codec.h -- Lua values <-> msgpack bytes (internal).
 *
 * Design notes.
 * - Plain data is plain msgpack. Lua-only values (functions, back references,
 *   registered metatables/userdata, C functions by name, the globals table)
 *   use ext types whose codes are listed in docs/codec.md.
 * - Encoding appends to a codec_buf (growable, with a hard size limit) using
 *   msgpack-c's packer. Decoding is our own bounds-checked reader, because
 *   msgpack-c's unpacker caps nesting at 32 levels and allocates a zone per
 *   object; ours never reads past `len` and honours a configurable depth.
 * - Every "reference object" (table or Lua function) gets an implicit index
 *   in the order it is first met; a later occurrence is written as a REF ext
 *   with that index. The decoder numbers objects the same way, so shared
 *   references and cycles survive within one message, and a message without
 *   sharing stays plain msgpack.
 * - One message may hold several values (encode is called once per value on
 *   the same codec_enc); sharing spans the whole message.
 * - Threading: a codec_enc and a codec_dec belong to one lua_State and are
 *   used by the thread that owns that state only.
 */
#ifndef ACTOR_CODEC_H
#define ACTOR_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

typedef struct codec_buf {
  char *data;   /* malloc'ed, owned by the buffer */
  size_t len;   /* bytes used */
  size_t cap;   /* bytes allocated */
} codec_buf;

void codec_buf_init(codec_buf *b);
void codec_buf_fini(codec_buf *b);               /* frees data; b reusable after init */
int codec_buf_append(codec_buf *b, const void *p, size_t n); /* 0 or -1 (ENOMEM) */

typedef struct codec_limits {
  int max_depth;        /* nesting of tables/functions; default 200 */
  size_t max_size;      /* bytes in one message; default 256 MiB */
} codec_limits;

void codec_limits_default(codec_limits *lim);

/* Encoder. One per lua_State, reused across messages (no per-message
 * allocation once warm). Obtain it with codec_enc_get(); it is freed when the
 * state closes. */
typedef struct codec_enc codec_enc;

/* Returns the state's encoder, creating it on first use. Raises a Lua memory
 * error if it cannot be allocated. */
codec_enc *codec_enc_get(lua_State *L);

/* Starts a message that appends to `out` (not owned; must outlive the
 * message). Resets the sharing tables. */
void codec_enc_begin(codec_enc *e, codec_buf *out, const codec_limits *lim);

/* Appends the value at stack index `idx` as one msgpack object. `where` names
 * the value for error messages, e.g. "closure (argument #2 to runInPool)" or
 * "args[1]". Returns 0 on success. On failure returns -1 and pushes onto L an
 * error string of the form
 *   "cannot send <path>: <what>"
 * e.g. "cannot send upvalue 'co' of closure (argument #2 to runInPool): a thread"
 *      "cannot send args[1].conn: userdata (FILE*)"
 * The buffer is left with a partial message; the caller discards it.
 * Does not call Lua code except registered userdata hooks. May raise only on
 * Lua stack/memory exhaustion. */
int codec_enc_value(codec_enc *e, lua_State *L, int idx, const char *where);

/* Decoder options: trusted channels may carry bytecode; untrusted ones (any
 * bytes from outside the process) refuse function values. */
typedef struct codec_dec_opts {
  int trusted;
  codec_limits lim;
} codec_dec_opts;

/* Decodes every msgpack object in data[0..len) and pushes them in order.
 * Returns the number of values pushed (>= 0). On malformed, truncated or
 * refused input returns -1 and pushes one error string (nothing else stays on
 * the stack), e.g. "truncated msgpack: str32 needs 100 bytes at offset 3, 2 left".
 * Never reads outside data[0..len). May raise only on Lua memory errors. */
int codec_decode(lua_State *L, const char *data, size_t len, const codec_dec_opts *o);

/* Like codec_decode, but decodes at most one object starting at *pos and
 * advances *pos. Returns 1 (one value pushed), 0 at end of data, -1 with an
 * error string pushed. */
int codec_decode_one(lua_State *L, const char *data, size_t len, size_t *pos,
                     const codec_dec_opts *o);

/* Call once per state after its libraries (and the runtime's own modules)
 * are open: builds the name <-> C function tables used to send C functions by
 * name ("string.format"). Scans package.loaded for the standard libraries and
 * every module whose name starts with "actor" plus the globals "msys". Safe to
 * call again to pick up modules loaded later. */
void codec_index_cfunctions(lua_State *L);

/* Lua module actor.codec: encode, decode, register(name, mt [, hooks]),
 * limits(...). Defined in bindings/lcodec.c. */
int luaopen_actor_codec(lua_State *L);

#endif
