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

/* Pushes the bytecode of the Lua function at idx (nil for a C function),
 * from the per-state dump cache the encoder uses, dumping and caching it on
 * a miss: a caller that inspects a closure before sending it does not make
 * the encoder dump it a second time. May raise only on memory errors. */
void codec_function_bytecode(lua_State *L, int idx);

/* Lua module actor.codec: encode, decode, register(name, mt [, hooks]),
 * limits(...). Defined in bindings/lcodec.c. */
int luaopen_actor_codec(lua_State *L);

/* ---- Additions (beyond the original interface) ------------------------ */

/* Ext type codes used for Lua-only values (docs/codec.md). Codes 1..15 are
 * reserved by the codec; -1 is msgpack's timestamp. */
enum {
  CODEC_EXT_REF = 1,        /* fixext4: uint32 BE index of an earlier object */
  CODEC_EXT_FUNCTION = 2,   /* ext32: str bytecode, uint nups, nups values */
  CODEC_EXT_CFUNCTION = 3,  /* ext: the function's name, e.g. "string.format" */
  CODEC_EXT_METATABLE = 4,  /* ext32: str name, then the table */
  CODEC_EXT_SERIALIZED = 5, /* ext32: str name, then serialize(v)'s result */
  CODEC_EXT_GLOBALS = 6,    /* fixext1 (0): the destination's globals table */
  CODEC_EXT_UPREF = 7,      /* fixext4: uint32 BE index of an earlier upvalue */
  CODEC_EXT_LAST = 7,
  CODEC_EXT_RESERVED_MIN = 1,
  CODEC_EXT_RESERVED_MAX = 15
};

/* Names of the built-in metatables of decoded timestamps ({sec=, nsec=})
 * and unknown ext values ({type=, data=}). */
#define CODEC_MT_TIMESTAMP "msgpack.timestamp"
#define CODEC_MT_EXT "msgpack.ext"

/* Flags for the current message, set after codec_enc_begin (which clears
 * them). CODEC_DROP_METATABLES: send tables with an unregistered metatable
 * as plain tables instead of failing. */
#define CODEC_DROP_METATABLES 1u
void codec_enc_set_flags(codec_enc *e, unsigned flags);

/* Per-state limits, as set by actor.codec.limits{} (defaults otherwise).
 * Runtimes should use these when encoding/decoding for that state. Raise
 * only on memory errors. max_depth is capped at 1000. */
void codec_limits_of(lua_State *L, codec_limits *lim);
void codec_limits_set(lua_State *L, const codec_limits *lim);

/* Receiving-side function cache of this state (DESIGN §3), off by default.
 * With max_entries > 0, trusted decodes keep each loaded function keyed by
 * its bytecode and hand the same closure object out again for a later
 * message carrying the same bytecode, instead of loading it again; all of
 * its upvalues are set afresh from the message. A closure is reused at most
 * once per message and never once one of its upvalues was joined to share
 * with another closure. Consequence: a job that keeps its own closure (or a
 * closure created by it that captured its upvalues) past its end sees the
 * next job's upvalue values. Cached closures keep their last upvalues
 * alive until reused. When full the cache starts over. 0 disables it and
 * drops the cache. Raises only on memory errors. */
void codec_fn_cache_enable(lua_State *L, int max_entries);

/* Registers metatable at stack index mt under name; hooks is 0 or the stack
 * index of a table {serialize=f, deserialize=f}. Returns -1 for reserved
 * names ("msgpack.*"), else 0. Raises only on memory errors. */
int codec__register(lua_State *L, const char *name, int mt, int hooks);
void codec__registry_init(lua_State *L);
codec_buf *codec__enc_scratch(codec_enc *e);
/* Nonzero while one of this encoder's serialize hooks runs: the encoder is
 * in the middle of a message and must not be begun again (hooks must not
 * send messages or call actor.codec.encode). */
int codec_enc_in_hook(const codec_enc *e);

#endif
