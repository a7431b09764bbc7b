/*
 * codec.c -- Lua values <-> msgpack bytes.
 *
 * Design notes.
 * - The encoder writes through msgpack-c's packer into a codec_buf. Every
 *   write goes through enc_write(), which enforces the message size limit
 *   before copying, so a 1 GB string is refused without being copied.
 * - Lua-only values are ext objects whose payload is itself a sequence of
 *   msgpack objects. The encoder writes an ext32 header with a placeholder
 *   length, encodes the payload objects right after it and patches the
 *   length, so nothing is encoded twice or copied.
 * - Reference objects (tables, Lua functions, values made by serialize
 *   hooks) are numbered in the order they are first met; a second meeting is
 *   written as a REF ext. The encoder finds "already seen" objects with a
 *   small open-addressing hash keyed by lua_topointer(); upvalues shared by
 *   closures are found with a second hash keyed by lua_upvalueid(). Both
 *   hashes use a generation stamp so starting a message costs O(1) and a
 *   warm encoder does not allocate.
 * - Error paths are built only when an error happens: the encoder keeps a
 *   stack of frames (which key of which table, which upvalue of which
 *   function) whose keys still sit on the Lua stack, and turns it into text
 *   such as "upvalue 'co' of closure (argument #2 to runInPool)".
 * - The decoder is a recursive-descent reader over data[0..len). Every read
 *   is preceded by a bounds check, and element counts are checked against
 *   the bytes left before any table is allocated (each element takes at
 *   least one byte). The payload of an ext is decoded with `len` narrowed to
 *   the end of that ext. Errors are formatted into a fixed buffer and pushed
 *   once, after the stack is reset.
 * - Threading: a codec_enc belongs to the state that created it; the
 *   decoder keeps all its state on the C stack and in the Lua stack of the
 *   calling state.
 */
#include "codec.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Registry keys. */
#define REG_ENC "actor.codec.enc"
#define REG_CF2NAME "actor.codec.cf2name"
#define REG_NAME2CF "actor.codec.name2cf"
#define REG_MT2NAME "actor.codec.mt2name"
#define REG_NAME2MT "actor.codec.name2mt"
#define REG_HOOKS "actor.codec.hooks"

#define DEPTH_HARD_CAP 1000

/* ------------------------------------------------------------------------ */
/* Buffers and limits */

void codec_buf_init(codec_buf *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void codec_buf_fini(codec_buf *b) {
  free(b->data);
  codec_buf_init(b);
}

/* Makes room for n more bytes. Returns 0 or -1 (out of memory, b unchanged). */
static int buf_reserve(codec_buf *b, size_t n) {
  if (n <= b->cap - b->len) return 0;
  if (n > SIZE_MAX - b->len) return -1;
  size_t need = b->len + n;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

int codec_buf_append(codec_buf *b, const void *p, size_t n) {
  if (buf_reserve(b, n) != 0) return -1;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void codec_limits_default(codec_limits *lim) {
  lim->max_depth = 200;
  lim->max_size = (size_t)256 << 20;
}

/* ------------------------------------------------------------------------ */
/* Registry helpers shared by encoder, decoder and bindings */

/* Raw t[k] for a string key (never runs metamethods: the encoder must not
 * call Lua code other than hooks). Returns the value's type. */
static int rawfield(lua_State *L, int t, const char *k) {
  t = lua_absindex(L, t);
  lua_pushstring(L, k);
  return lua_rawget(L, t);
}

/* Pushes registry[key], creating an empty table there first if needed.
 * Raises only on memory errors. */
static void reg_table(lua_State *L, const char *key) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, key);
  }
}

static int ts_tostring(lua_State *L) {
  lua_getfield(L, 1, "sec");
  lua_getfield(L, 1, "nsec");
  lua_pushfstring(L, "timestamp(%s, %s)", luaL_tolstring(L, 2, NULL), luaL_tolstring(L, 3, NULL));
  return 1;
}

static int ext_tostring(lua_State *L) {
  lua_getfield(L, 1, "type");
  lua_getfield(L, 1, "data");
  size_t n = 0;
  if (lua_type(L, 3) == LUA_TSTRING) lua_tolstring(L, 3, &n);
  lua_pushfstring(L, "ext(%s, %d bytes)", luaL_tolstring(L, 2, NULL), (int)n);
  return 1;
}

/* Creates (once) the built-in metatables for timestamps and unknown ext
 * values and registers them under their names, so the encoder turns such
 * tables back into the same msgpack ext. */
void codec__registry_init(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_MT_TIMESTAMP) == LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  static const char *names[2] = {CODEC_MT_TIMESTAMP, CODEC_MT_EXT};
  for (int i = 0; i < 2; i++) {
    lua_newtable(L);                                   /* mt */
    lua_pushstring(L, names[i]);
    lua_setfield(L, -2, "__name");
    lua_pushcfunction(L, i == 0 ? ts_tostring : ext_tostring);
    lua_setfield(L, -2, "__tostring");
    reg_table(L, REG_MT2NAME);                          /* mt mt2name */
    lua_pushvalue(L, -2);
    lua_pushstring(L, names[i]);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    reg_table(L, REG_NAME2MT);                          /* mt name2mt */
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, names[i]);
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, names[i]);
  }
}

int codec__register(lua_State *L, const char *name, int mt, int hooks) {
  mt = lua_absindex(L, mt);
  if (hooks) hooks = lua_absindex(L, hooks);
  codec__registry_init(L);
  if (strcmp(name, CODEC_MT_TIMESTAMP) == 0 || strcmp(name, CODEC_MT_EXT) == 0) return -1;
  reg_table(L, REG_NAME2MT);                 /* name2mt */
  /* Forget the previous metatable of that name, if any. */
  if (lua_getfield(L, -1, name) == LUA_TTABLE) {
    reg_table(L, REG_MT2NAME);
    lua_pushvalue(L, -2);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, mt);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
  reg_table(L, REG_MT2NAME);
  lua_pushvalue(L, mt);
  lua_pushstring(L, name);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  reg_table(L, REG_HOOKS);
  if (hooks) lua_pushvalue(L, hooks);
  else lua_pushnil(L);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* C function index */

static void index_cf(lua_State *L, int cf2name, int name2cf, const char *name, int fn) {
  lua_pushvalue(L, fn);
  if (lua_rawget(L, cf2name) == LUA_TNIL) { /* first name wins */
    lua_pushvalue(L, fn);
    lua_pushstring(L, name);
    lua_rawset(L, cf2name);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, fn);
  lua_setfield(L, name2cf, name);
}

/* Indexes the C functions of the table at t under "prefix.key"; with
 * levels > 0 also subtables, one level deeper each. */
static void index_table(lua_State *L, int cf2name, int name2cf, const char *prefix, int t, int levels) {
  t = lua_absindex(L, t);
  lua_checkstack(L, 8);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2);
      if (lua_iscfunction(L, -1)) {
        if (prefix) lua_pushfstring(L, "%s.%s", prefix, k);
        else lua_pushstring(L, k);
        index_cf(L, cf2name, name2cf, lua_tostring(L, -1), lua_gettop(L) - 1);
        lua_pop(L, 1);
      } else if (levels > 0 && lua_istable(L, -1) && !lua_getmetatable(L, -1)) {
        if (prefix) lua_pushfstring(L, "%s.%s", prefix, k);
        else lua_pushstring(L, k);
        index_table(L, cf2name, name2cf, lua_tostring(L, -1), -2, levels - 1);
        lua_pop(L, 1);
      } else if (levels > 0 && lua_istable(L, -1)) {
        lua_pop(L, 1); /* the metatable pushed by lua_getmetatable */
      }
    }
    lua_pop(L, 1);
  }
}

void codec_index_cfunctions(lua_State *L) {
  static const char *const libs[] = {"string", "table", "math", "io", "os",
                                     "utf8", "coroutine", "debug", NULL};
  int top = lua_gettop(L);
  lua_checkstack(L, 16);
  reg_table(L, REG_CF2NAME);
  int cf2name = lua_gettop(L);
  reg_table(L, REG_NAME2CF);
  int name2cf = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  int g = lua_gettop(L);
  index_table(L, cf2name, name2cf, NULL, g, 0);
  for (int i = 0; libs[i]; i++) {
    if (rawfield(L, g, libs[i]) == LUA_TTABLE) index_table(L, cf2name, name2cf, libs[i], -1, 0);
    lua_pop(L, 1);
  }
  if (rawfield(L, g, "msys") == LUA_TTABLE) index_table(L, cf2name, name2cf, "msys", -1, 1);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_istable(L, -1)) {
    int loaded = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1) &&
          strncmp(lua_tostring(L, -2), "actor", 5) == 0)
        index_table(L, cf2name, name2cf, lua_tostring(L, -2), -1, 1);
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

/* ------------------------------------------------------------------------ */
/* Encoder */

typedef struct slot {
  const void *key;
  uint32_t gen;
  uint32_t val;
} slot;

typedef struct phash {
  slot *s;
  size_t cap; /* power of two or 0 */
  size_t n;
} phash;

enum { FR_ELEM, FR_KEY, FR_MAPKEY, FR_UPVAL, FR_META, FR_HOOK };

typedef struct frame {
  int kind;
  int idx;         /* Lua stack index of the key or the function */
  lua_Integer n;   /* array index or upvalue number */
} frame;

struct codec_enc {
  codec_buf *out;
  msgpack_packer pk;
  codec_limits lim;
  codec_limits cfg;     /* per-state defaults, set by actor.codec.limits */
  unsigned flags;
  uint32_t gen;
  phash seen;           /* object pointer -> reference index */
  phash upv;            /* upvalue id -> upvalue index */
  uint32_t nrefs, nupv;
  const void *globals;
  int reindexed;
  int toolarge, nomem;
  size_t want;          /* size the failed write would have reached */
  frame *fr;
  int nfr, capfr;
  codec_buf scratch;    /* used by actor.codec.encode */
  int in_hook;          /* > 0 while a serialize hook runs (protected) */
  int fcache_max;       /* receiving-side function cache: 0 = off */
  int fcache_n;         /* entries (bytecode -> closure) in the cache */
};

static uint32_t hash_ptr(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (uint32_t)x;
}

/* Returns 1 and sets *val if key was added in the current generation. */
static int ph_find(const phash *h, uint32_t gen, const void *key, uint32_t *val) {
  if (h->cap == 0) return 0;
  size_t mask = h->cap - 1;
  for (size_t i = hash_ptr(key) & mask;; i = (i + 1) & mask) {
    const slot *s = &h->s[i];
    if (s->gen != gen) return 0;
    if (s->key == key) {
      *val = s->val;
      return 1;
    }
  }
}

static void ph_put_raw(phash *h, uint32_t gen, const void *key, uint32_t val) {
  size_t mask = h->cap - 1;
  size_t i = hash_ptr(key) & mask;
  while (h->s[i].gen == gen) i = (i + 1) & mask;
  h->s[i].key = key;
  h->s[i].gen = gen;
  h->s[i].val = val;
}

/* Adds key (not present). Returns 0 or -1 on out of memory. */
static int ph_put(phash *h, uint32_t gen, const void *key, uint32_t val) {
  if ((h->n + 1) * 2 > h->cap) {
    size_t ncap = h->cap ? h->cap * 2 : 64;
    slot *ns = calloc(ncap, sizeof *ns);
    if (ns == NULL) return -1;
    phash old = *h;
    h->s = ns;
    h->cap = ncap;
    for (size_t i = 0; i < old.cap; i++)
      if (old.s[i].gen == gen) ph_put_raw(h, gen, old.s[i].key, old.s[i].val);
    free(old.s);
  }
  ph_put_raw(h, gen, key, val);
  h->n++;
  return 0;
}

static int enc_gc(lua_State *L) {
  codec_enc *e = lua_touserdata(L, 1);
  free(e->seen.s);
  free(e->upv.s);
  free(e->fr);
  codec_buf_fini(&e->scratch);
  memset(e, 0, sizeof *e);
  return 0;
}

codec_enc *codec_enc_get(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, REG_ENC) == LUA_TUSERDATA) {
    codec_enc *e = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return e;
  }
  lua_pop(L, 1);
  codec__registry_init(L);
  codec_enc *e = lua_newuserdatauv(L, sizeof *e, 0);
  memset(e, 0, sizeof *e);
  codec_limits_default(&e->cfg);
  e->lim = e->cfg;
  codec_buf_init(&e->scratch);
  lua_newtable(L);
  lua_pushcfunction(L, enc_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_ENC);
  return e;
}

void codec_limits_of(lua_State *L, codec_limits *lim) { *lim = codec_enc_get(L)->cfg; }

void codec_limits_set(lua_State *L, const codec_limits *lim) {
  codec_enc *e = codec_enc_get(L);
  e->cfg = *lim;
  if (e->cfg.max_depth < 1) e->cfg.max_depth = 1;
  if (e->cfg.max_depth > DEPTH_HARD_CAP) e->cfg.max_depth = DEPTH_HARD_CAP;
}

codec_buf *codec__enc_scratch(codec_enc *e) { return &e->scratch; }
int codec_enc_in_hook(const codec_enc *e) { return e->in_hook > 0; }

static int enc_write(void *data, const char *buf, size_t len) {
  codec_enc *e = data;
  codec_buf *b = e->out;
  /* Fast path: room in the buffer and far from the limit. */
  if (len <= b->cap - b->len && b->len + len <= e->lim.max_size) {
    memcpy(b->data + b->len, buf, len);
    b->len += len;
    return 0;
  }
  if (len > e->lim.max_size || b->len > e->lim.max_size - len) {
    e->toolarge = 1;
    e->want = b->len + len;
    return -1;
  }
  if (codec_buf_append(b, buf, len) != 0) {
    e->nomem = 1;
    return -1;
  }
  return 0;
}

/* Slow path of enc_room: the write would cross the size limit (sets
 * toolarge) or needs a bigger buffer (grown to exactly what is needed when
 * that is more than doubling, so one big string costs one realloc; sets
 * nomem on failure). */
static int enc_grow(codec_enc *e, size_t n) {
  codec_buf *b = e->out;
  if (n > e->lim.max_size || b->len > e->lim.max_size - n) {
    e->toolarge = 1;
    e->want = b->len + n;
    return -1;
  }
  if (n > b->cap - b->len && b->len + n > b->cap * 2 && b->len + n > 256) {
    char *q = realloc(b->data, b->len + n);
    if (q == NULL) {
      e->nomem = 1;
      return -1;
    }
    b->data = q;
    b->cap = b->len + n;
    return 0;
  }
  if (buf_reserve(b, n) != 0) {
    e->nomem = 1;
    return -1;
  }
  return 0;
}

/* Makes room for n more bytes within the message size limit. The inline
 * writers below use it and then store straight into the buffer (no packer
 * callback, no intermediate copy). */
static inline int enc_room(codec_enc *e, size_t n) {
  codec_buf *b = e->out;
  if (n <= b->cap - b->len && b->len + n <= e->lim.max_size) return 0;
  return enc_grow(e, n);
}

/* Stores the low n (2, 4 or 8) bytes of v big-endian at q (compilers turn
 * the unrolled shifts into one byte swap and store). */
static inline unsigned char *put_be(unsigned char *q, uint64_t v, int n) {
  if (n == 8) {
    q[0] = (unsigned char)(v >> 56), q[1] = (unsigned char)(v >> 48), q[2] = (unsigned char)(v >> 40);
    q[3] = (unsigned char)(v >> 32), q[4] = (unsigned char)(v >> 24), q[5] = (unsigned char)(v >> 16);
    q[6] = (unsigned char)(v >> 8), q[7] = (unsigned char)v;
  } else if (n == 4) {
    q[0] = (unsigned char)(v >> 24), q[1] = (unsigned char)(v >> 16);
    q[2] = (unsigned char)(v >> 8), q[3] = (unsigned char)v;
  } else {
    q[0] = (unsigned char)(v >> 8), q[1] = (unsigned char)v;
  }
  return q + n;
}

/* Same encodings as msgpack-c's msgpack_pack_int64 (smallest format). */
static inline int wr_int(codec_enc *e, int64_t d) {
  if (enc_room(e, 9)) return -1;
  unsigned char *q = (unsigned char *)e->out->data + e->out->len, *q0 = q;
  if (d < -(1LL << 5)) {
    if (d < -(1LL << 31)) *q++ = 0xd3, q = put_be(q, (uint64_t)d, 8);
    else if (d < -(1LL << 15)) *q++ = 0xd2, q = put_be(q, (uint64_t)d, 4);
    else if (d < -(1LL << 7)) *q++ = 0xd1, q = put_be(q, (uint64_t)d, 2);
    else *q++ = 0xd0, *q++ = (unsigned char)d;
  } else if (d < (1 << 7)) {
    *q++ = (unsigned char)d;
  } else if (d < (1LL << 8)) {
    *q++ = 0xcc, *q++ = (unsigned char)d;
  } else if (d < (1LL << 16)) {
    *q++ = 0xcd, q = put_be(q, (uint64_t)d, 2);
  } else if (d < (1LL << 32)) {
    *q++ = 0xce, q = put_be(q, (uint64_t)d, 4);
  } else {
    *q++ = 0xcf, q = put_be(q, (uint64_t)d, 8);
  }
  e->out->len += (size_t)(q - q0);
  return 0;
}

static inline int wr_double(codec_enc *e, double v) {
  if (enc_room(e, 9)) return -1;
  unsigned char *q = (unsigned char *)e->out->data + e->out->len;
  uint64_t u;
  memcpy(&u, &v, 8);
  q[0] = 0xcb;
  put_be(q + 1, u, 8);
  e->out->len += 9;
  return 0;
}

static inline int wr_byte(codec_enc *e, unsigned char v) {
  if (enc_room(e, 1)) return -1;
  e->out->data[e->out->len++] = (char)v;
  return 0;
}

/* str header and body in one reservation: a 1 MB string is one memcpy into
 * the message buffer. */
static inline int wr_str(codec_enc *e, const char *s, size_t n) {
  size_t h = n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5;
  if (n > SIZE_MAX - 5 || enc_room(e, h + n)) {
    if (n > SIZE_MAX - 5) e->toolarge = 1, e->want = SIZE_MAX;
    return -1;
  }
  unsigned char *q = (unsigned char *)e->out->data + e->out->len;
  if (h == 1) q[0] = (unsigned char)(0xa0 | n);
  else if (h == 2) q[0] = 0xd9, q[1] = (unsigned char)n;
  else if (h == 3) q[0] = 0xda, put_be(q + 1, n, 2);
  else q[0] = 0xdb, put_be(q + 1, n, 4);
  if (n) memcpy(q + h, s, n);
  e->out->len += h + n;
  return 0;
}

/* array (map = 0) or map (map = 1) header, as msgpack_pack_array/map. */
static inline int wr_count(codec_enc *e, size_t n, int map) {
  if (enc_room(e, 5)) return -1;
  unsigned char *q = (unsigned char *)e->out->data + e->out->len;
  if (n < 16) {
    q[0] = (unsigned char)((map ? 0x80 : 0x90) | n);
    e->out->len += 1;
  } else if (n < 65536) {
    q[0] = map ? 0xde : 0xdc;
    put_be(q + 1, n, 2);
    e->out->len += 3;
  } else {
    q[0] = map ? 0xdf : 0xdd;
    put_be(q + 1, n, 4);
    e->out->len += 5;
  }
  return 0;
}

void codec_enc_begin(codec_enc *e, codec_buf *out, const codec_limits *lim) {
  e->out = out;
  msgpack_packer_init(&e->pk, e, enc_write);
  e->lim = lim ? *lim : e->cfg;
  if (e->lim.max_depth > DEPTH_HARD_CAP) e->lim.max_depth = DEPTH_HARD_CAP;
  e->flags = 0;
  e->gen++;
  if (e->gen == 0) { /* wrapped: really clear the slots once */
    if (e->seen.s) memset(e->seen.s, 0, e->seen.cap * sizeof(slot));
    if (e->upv.s) memset(e->upv.s, 0, e->upv.cap * sizeof(slot));
    e->gen = 1;
  }
  e->seen.n = e->upv.n = 0;
  e->nrefs = e->nupv = 0;
  e->reindexed = 0;
  e->nfr = 0;
}

void codec_enc_set_flags(codec_enc *e, unsigned flags) { e->flags = flags; }

/* --- error text --------------------------------------------------------- */

typedef struct sbuf {
  char s[1024];
  size_t n;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) {
  if (b->n >= sizeof b->s - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int r = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
  va_end(ap);
  if (r < 0) return;
  b->n += (size_t)r;
  if (b->n > sizeof b->s - 1) b->n = sizeof b->s - 1;
}

static int is_ident(const char *s, size_t n) {
  if (n == 0 || n > 64) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i && c >= '0' && c <= '9')))
      return 0;
  }
  return 1;
}

/* Appends the accessor for the key at stack index k: ".name", "[3]",
 * "[\"a b\"]", "[true]", "[table]". */
static void sb_key(sbuf *b, lua_State *L, int k) {
  size_t n;
  switch (lua_type(L, k)) {
  case LUA_TSTRING: {
    const char *s = lua_tolstring(L, k, &n);
    if (is_ident(s, n)) sb_add(b, ".%s", s);
    else sb_add(b, "[\"%.40s%s\"]", s, n > 40 ? "..." : "");
    break;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, k)) sb_add(b, "[%lld]", (long long)lua_tointeger(L, k));
    else sb_add(b, "[%.14g]", (double)lua_tonumber(L, k));
    break;
  case LUA_TBOOLEAN: sb_add(b, "[%s]", lua_toboolean(L, k) ? "true" : "false"); break;
  default: sb_add(b, "[%s]", luaL_typename(L, k)); break;
  }
}

/* Builds "cannot send <path>: <what>" from the frame stack and pushes it.
 * The frames' stack slots must still be valid. */
static void enc_push_error(codec_enc *e, lua_State *L, const char *where, const char *what) {
  /* The path is "expr" followed by "ctx": an upvalue frame turns the current
   * expression into "upvalue 'name" and moves "' of <expr>" into ctx. */
  sbuf expr = {.n = 0}, ctx = {.n = 0}, tmp;
  sb_add(&expr, "%s", where ? where : "value");
  for (int i = 0; i < e->nfr; i++) {
    frame *f = &e->fr[i];
    switch (f->kind) {
    case FR_ELEM: sb_add(&expr, "[%lld]", (long long)f->n); break;
    case FR_KEY: sb_key(&expr, L, f->idx); break;
    case FR_MAPKEY: {
      tmp.n = 0;
      sb_add(&tmp, "a key of %s", expr.s);
      expr = tmp;
      break;
    }
    case FR_UPVAL: {
      const char *name = lua_getupvalue(L, f->idx, (int)f->n);
      if (name) lua_pop(L, 1);
      if (name == NULL || *name == '\0') name = "?";
      tmp.n = 0;
      sb_add(&tmp, "' of %s%s", expr.s, ctx.s);
      ctx = tmp;
      expr.n = 0;
      sb_add(&expr, "upvalue '%s", name);
      break;
    }
    case FR_HOOK: {
      tmp.n = 0;
      sb_add(&tmp, "serialized %s", expr.s);
      expr = tmp;
      break;
    }
    default: break;
    }
  }
  lua_pushfstring(L, "cannot send %s%s: %s", expr.s, ctx.s, what);
}

/* Frame stack. Returns 0 or -1 on out of memory. */
static int fr_push(codec_enc *e, int kind, int idx, lua_Integer n) {
  if (e->nfr == e->capfr) {
    int ncap = e->capfr ? e->capfr * 2 : 64;
    frame *nf = realloc(e->fr, (size_t)ncap * sizeof *nf);
    if (nf == NULL) return -1;
    e->fr = nf;
    e->capfr = ncap;
  }
  e->fr[e->nfr].kind = kind;
  e->fr[e->nfr].idx = idx;
  e->fr[e->nfr].n = n;
  e->nfr++;
  return 0;
}

/* Records an error; the message is built in codec_enc_value where the frame
 * stack is still intact. */
typedef struct encerr {
  char what[512];
} encerr;

typedef struct enc_ctx {
  codec_enc *e;
  lua_State *L;
  encerr err;
} enc_ctx;

static int fail(enc_ctx *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err.what, sizeof c->err.what, fmt, ap);
  va_end(ap);
  return -1;
}

static int fail_write(enc_ctx *c) {
  codec_enc *e = c->e;
  if (e->toolarge)
    return fail(c, "message too large: %zu bytes exceeds limit of %zu bytes", e->want, e->lim.max_size);
  return fail(c, "out of memory");
}

#define W(call)                                                                                    \
  do {                                                                                             \
    if ((call) != 0) return fail_write(c);                                                         \
  } while (0)

static int enc_any(enc_ctx *c, int idx, int depth);

/* fixext4 carrying a big-endian uint32: used for REF and UPREF. */
static int pack_fixext4(enc_ctx *c, int8_t type, uint32_t v) {
  unsigned char b[6] = {0xd6, (unsigned char)type, (unsigned char)(v >> 24), (unsigned char)(v >> 16),
                        (unsigned char)(v >> 8), (unsigned char)v};
  W(enc_write(c->e, (const char *)b, 6));
  return 0;
}

/* Starts an ext32 whose length is patched by ext_end(). */
static int ext_begin(enc_ctx *c, int8_t type, size_t *at) {
  unsigned char b[6] = {0xc9, 0, 0, 0, 0, (unsigned char)type};
  *at = c->e->out->len;
  W(enc_write(c->e, (const char *)b, 6));
  return 0;
}

static int ext_end(enc_ctx *c, size_t at) {
  codec_buf *b = c->e->out;
  size_t n = b->len - at - 6;
  if (n > UINT32_MAX) return fail(c, "message too large: ext payload of %zu bytes", n);
  unsigned char *p = (unsigned char *)b->data + at + 1;
  p[0] = (unsigned char)(n >> 24);
  p[1] = (unsigned char)(n >> 16);
  p[2] = (unsigned char)(n >> 8);
  p[3] = (unsigned char)n;
  return 0;
}

static int add_ref(enc_ctx *c, const void *p) {
  codec_enc *e = c->e;
  if (ph_put(&e->seen, e->gen, p, e->nrefs) != 0) return fail(c, "out of memory");
  e->nrefs++;
  return 0;
}

static int pack_name(enc_ctx *c, const char *s, size_t n) {
  W(msgpack_pack_str(&c->e->pk, n));
  W(msgpack_pack_str_body(&c->e->pk, s, n));
  return 0;
}

/* Fast path for the common leaves: writes the boolean, number or string at
 * idx (type t) straight into the buffer. Returns 1 when written, 0 when the
 * value needs enc_any (other types, strings too long for msgpack), -1 when
 * the write failed (e->toolarge or e->nomem set). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int enc_scalar(codec_enc *e, lua_State *L, int idx, int t) {
  switch (t) {
  case LUA_TBOOLEAN: return wr_byte(e, lua_toboolean(L, idx) ? 0xc3 : 0xc2) ? -1 : 1;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return wr_int(e, (int64_t)lua_tointeger(L, idx)) ? -1 : 1;
    return wr_double(e, (double)lua_tonumber(L, idx)) ? -1 : 1;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > UINT32_MAX) return 0;
    return wr_str(e, s, n) ? -1 : 1;
  }
  default: return 0;
  }
}

/* Writes the entries of the table at idx as map keys and values; counts
 * them into *count. With `started`, the first key and value are already on
 * top of the stack (pushed by the caller's lua_next). Scalar keys and
 * values are written inline; the frame (which the error path reads) is kept
 * up to date with two stores per entry. */
static int enc_map_entries(enc_ctx *c, int idx, int depth, size_t *count, int started) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  size_t n = 0;
  if (fr_push(e, FR_MAPKEY, 0, 0)) return fail(c, "out of memory");
  if (!started) {
    lua_pushnil(L);
    if (!lua_next(L, idx)) goto done;
  }
  int k = lua_gettop(L) - 1; /* enc_any restores the top: k stays valid */
  do {
    frame *f = &e->fr[e->nfr - 1]; /* the frame array may have moved */
    f->kind = FR_MAPKEY;
    f->idx = k;
    int r = enc_scalar(e, L, k, lua_type(L, k));
    if (r < 0) return fail_write(c);
    if (r == 0 && enc_any(c, k, depth + 1)) return -1;
    e->fr[e->nfr - 1].kind = FR_KEY;
    r = enc_scalar(e, L, k + 1, lua_type(L, k + 1));
    if (r < 0) return fail_write(c);
    if (r == 0 && enc_any(c, k + 1, depth + 1)) return -1;
    lua_settop(L, k);
    n++;
  } while (lua_next(L, idx));
done:
  e->nfr--;
  *count = n;
  return 0;
}

/* Plain table: array for a proper sequence 1..n, else a map. */
static int enc_table_body(enc_ctx *c, int idx, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  if (add_ref(c, lua_topointer(L, idx))) return -1;
  lua_Unsigned n = lua_rawlen(L, idx);
  if (n == 0) {
    /* No sequence part: an empty table (empty array) or a map. Write the map
     * in one pass behind a map32 header, then patch the count and, for small
     * maps, shrink the header to fixmap by moving the body. */
    lua_pushnil(L);
    if (!lua_next(L, idx)) {
      W(wr_count(e, 0, 0));
      return 0;
    }
    unsigned char h[5] = {0xdf, 0, 0, 0, 0};
    size_t at = e->out->len;
    W(enc_write(e, (const char *)h, 5));
    size_t count;
    if (enc_map_entries(c, idx, depth, &count, 1)) return -1;
    if (count > UINT32_MAX) return fail(c, "table too large");
    unsigned char *p = (unsigned char *)e->out->data + at;
    size_t body = e->out->len - at - 5;
    if (count <= 15 && body <= 4096) {
      p[0] = (unsigned char)(0x80 | count);
      memmove(p + 1, p + 5, body);
      e->out->len -= 4;
    } else {
      p[1] = (unsigned char)(count >> 24), p[2] = (unsigned char)(count >> 16);
      p[3] = (unsigned char)(count >> 8), p[4] = (unsigned char)count;
    }
    return 0;
  }
  /* A proper sequence has exactly the keys 1..n. lua_next walks the array
   * part first, in order, so the usual case sees 1, 2, ..., n. */
  size_t count = 0;
  int seq = 1;
  lua_pushnil(L);
  int kk = lua_gettop(L);
  while (lua_next(L, idx)) {
    count++;
    if (seq) {
      if (!lua_isinteger(L, kk)) {
        seq = 0;
      } else {
        lua_Integer k = lua_tointeger(L, kk);
        if (k < 1 || (lua_Unsigned)k > n) seq = 0;
      }
    }
    lua_settop(L, kk);
  }
  if (seq && count == n) {
    W(wr_count(e, (size_t)n, 0));
    if (fr_push(e, FR_ELEM, 0, 0)) return fail(c, "out of memory");
    int top = lua_gettop(L);
    for (lua_Unsigned i = 1; i <= n; i++) {
      int t = lua_rawgeti(L, idx, (lua_Integer)i);
      e->fr[e->nfr - 1].n = (lua_Integer)i;
      int r = enc_scalar(e, L, top + 1, t);
      if (r < 0) return fail_write(c);
      if (r == 0 && enc_any(c, top + 1, depth + 1)) return -1;
      lua_settop(L, top);
    }
    e->nfr--;
    return 0;
  }
  if (count > UINT32_MAX) return fail(c, "table too large");
  W(wr_count(e, count, 1));
  size_t written;
  return enc_map_entries(c, idx, depth, &written, 0);
}

static int enc_timestamp(enc_ctx *c, int idx) {
  lua_State *L = c->L;
  int ok1, ok2;
  rawfield(L, idx, "sec");
  rawfield(L, idx, "nsec");
  lua_Integer sec = lua_tointegerx(L, -2, &ok1);
  lua_Integer nsec = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &ok2);
  if (lua_isnil(L, -1)) ok2 = 1;
  lua_pop(L, 2);
  if (!ok1 || !ok2 || nsec < 0 || nsec > 999999999)
    return fail(c, "invalid timestamp (sec must be an integer, nsec an integer in 0..999999999)");
  unsigned char b[15];
  size_t n;
  if (sec >= 0 && (sec >> 34) == 0) {
    uint64_t v = ((uint64_t)nsec << 34) | (uint64_t)sec;
    if ((v >> 32) == 0) {
      b[0] = 0xd6, b[1] = 0xff;
      for (int i = 0; i < 4; i++) b[2 + i] = (unsigned char)(v >> (24 - 8 * i));
      n = 6;
    } else {
      b[0] = 0xd7, b[1] = 0xff;
      for (int i = 0; i < 8; i++) b[2 + i] = (unsigned char)(v >> (56 - 8 * i));
      n = 10;
    }
  } else {
    b[0] = 0xc7, b[1] = 12, b[2] = 0xff;
    for (int i = 0; i < 4; i++) b[3 + i] = (unsigned char)((uint32_t)nsec >> (24 - 8 * i));
    for (int i = 0; i < 8; i++) b[7 + i] = (unsigned char)((uint64_t)sec >> (56 - 8 * i));
    n = 15;
  }
  W(enc_write(c->e, (const char *)b, n));
  return 0;
}

static int enc_rawext(enc_ctx *c, int idx) {
  lua_State *L = c->L;
  int ok;
  rawfield(L, idx, "type");
  rawfield(L, idx, "data");
  lua_Integer t = lua_tointegerx(L, -2, &ok);
  if (!ok || t < -128 || t > 127 || lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 2);
    return fail(c, "invalid ext value (type must be an integer in -128..127, data a string)");
  }
  if (t >= CODEC_EXT_RESERVED_MIN && t <= CODEC_EXT_RESERVED_MAX) {
    lua_pop(L, 2);
    return fail(c, "ext type %d is reserved by the codec", (int)t);
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  W(msgpack_pack_ext(&c->e->pk, n, (int8_t)t));
  W(msgpack_pack_ext_body(&c->e->pk, s, n));
  lua_pop(L, 2);
  return 0;
}

/* Value at idx has a serialize hook (hooks table on top of the stack): writes
 * SERIALIZED(name, serialize(v)) and numbers v after its payload. */
static int enc_hooked(enc_ctx *c, int idx, const char *name, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  size_t at;
  if (depth >= e->lim.max_depth) return fail(c, "nesting deeper than %d", e->lim.max_depth);
  if (ext_begin(c, CODEC_EXT_SERIALIZED, &at)) return -1;
  if (pack_name(c, name, strlen(name))) return -1;
  rawfield(L, -1, "serialize");
  lua_pushvalue(L, idx);
  e->in_hook++;
  int st = lua_pcall(L, 1, 1, 0);
  e->in_hook--;
  if (st != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    return fail(c, "serialize hook of '%s' failed: %s", name, m ? m : "(error object is not a string)");
  }
  if (fr_push(e, FR_HOOK, 0, 0)) return fail(c, "out of memory");
  if (enc_any(c, lua_gettop(L), depth + 1)) return -1;
  e->nfr--;
  lua_pop(L, 1);
  if (ext_end(c, at)) return -1;
  return add_ref(c, lua_topointer(L, idx));
}

/* Looks up the metatable on top of the stack (popped). Returns its name
 * (kept alive by the registry) or NULL; when it has hooks they are left on
 * top of the stack and *hooked is set. */
static const char *mt_lookup(lua_State *L, int *hooked) {
  *hooked = 0;
  reg_table(L, REG_MT2NAME);
  lua_pushvalue(L, -2);
  if (lua_rawget(L, -2) != LUA_TSTRING) {
    lua_pop(L, 3);
    return NULL;
  }
  const char *name = lua_tostring(L, -1);
  lua_pushvalue(L, -1);
  lua_replace(L, -4);  /* name mt2name name */
  lua_pop(L, 2);       /* name (stays on the stack to keep it alive) */
  reg_table(L, REG_HOOKS);
  if (rawfield(L, -1, name) == LUA_TTABLE) {
    lua_remove(L, -2);
    *hooked = 1;       /* name hooks */
  } else {
    lua_pop(L, 2);     /* name */
  }
  return name;
}

static int enc_table(enc_ctx *c, int idx, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  const void *p = lua_topointer(L, idx);
  uint32_t ref;
  if (ph_find(&e->seen, e->gen, p, &ref)) return pack_fixext4(c, CODEC_EXT_REF, ref);
  if (p == e->globals) {
    unsigned char b[3] = {0xd4, CODEC_EXT_GLOBALS, 0};
    W(enc_write(e, (const char *)b, 3));
    return 0;
  }
  if (!lua_checkstack(L, 8)) return fail(c, "nesting too deep for the Lua stack");
  if (lua_getmetatable(L, idx)) {
    int hooked;
    const char *name = mt_lookup(L, &hooked);
    if (name == NULL) {
      if (!(e->flags & CODEC_DROP_METATABLES)) return fail(c, "table with unregistered metatable");
    } else if (hooked) {
      return enc_hooked(c, idx, name, depth);
    } else if (strcmp(name, CODEC_MT_TIMESTAMP) == 0) {
      return enc_timestamp(c, idx);
    } else if (strcmp(name, CODEC_MT_EXT) == 0) {
      return enc_rawext(c, idx);
    } else {
      size_t at;
      if (depth >= e->lim.max_depth) return fail(c, "nesting deeper than %d", e->lim.max_depth);
      if (ext_begin(c, CODEC_EXT_METATABLE, &at)) return -1;
      if (pack_name(c, name, strlen(name))) return -1;
      lua_pop(L, 1);
      if (enc_table_body(c, idx, depth + 1)) return -1;
      return ext_end(c, at);
    }
  }
  if (depth >= e->lim.max_depth) return fail(c, "nesting deeper than %d", e->lim.max_depth);
  return enc_table_body(c, idx, depth);
}

/* Pushes the per-state table closure -> bytecode (weak keys). */
static const char dump_cache_key = 0;
static void dump_cache(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &dump_cache_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &dump_cache_key);
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  return enc_write(ud, p, sz);
}

/* lua_dump into a luaL_Buffer started on the first write, once the
 * function is no longer needed on top (the way string.dump does it). */
typedef struct dump_st {
  int init;
  luaL_Buffer b;
} dump_st;

static int dump_to_luabuf(lua_State *L, const void *p, size_t sz, void *ud) {
  dump_st *st = ud;
  if (!st->init) {
    st->init = 1;
    luaL_buffinit(L, &st->b);
  }
  luaL_addlstring(&st->b, p, sz);
  return 0;
}

/* Pushes the bytecode of the Lua function at idx, from the per-state dump
 * cache (dumping and caching it on a miss), so that a later encode of the
 * same closure does not dump it again. Pushes nil for a C function. May
 * raise only on memory errors; holds no malloc'ed memory meanwhile. */
void codec_function_bytecode(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (!lua_isfunction(L, idx) || lua_iscfunction(L, idx)) {
    lua_pushnil(L);
    return;
  }
  dump_cache(L);                          /* cache */
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TSTRING) { /* cache bytecode */
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 1);                          /* cache */
  lua_pushvalue(L, idx);                  /* cache fn */
  dump_st st;
  st.init = 0;
  lua_dump(L, dump_to_luabuf, &st, 0);
  if (st.init) luaL_pushresult(&st.b);    /* cache fn bytecode */
  else lua_pushliteral(L, "");
  lua_pushvalue(L, -1);                   /* cache fn bc bc */
  lua_insert(L, -4);                      /* bc cache fn bc */
  lua_rawset(L, -3);                      /* bc cache */
  lua_pop(L, 1);                          /* bc */
}

static int enc_cfunction(enc_ctx *c, int idx) {
  lua_State *L = c->L;
  for (int attempt = 0; attempt < 2; attempt++) {
    reg_table(L, REG_CF2NAME);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);
      W(msgpack_pack_ext(&c->e->pk, n, CODEC_EXT_CFUNCTION));
      W(msgpack_pack_ext_body(&c->e->pk, s, n));
      lua_pop(L, 2);
      return 0;
    }
    lua_pop(L, 2);
    if (c->e->reindexed) break;
    c->e->reindexed = 1; /* modules may have been loaded since the last index */
    codec_index_cfunctions(L);
  }
  return fail(c, "a C function not known by name");
}

/* Is the `_ENV` upvalue value on top of the stack to be bound to the
 * destination's globals? Yes for the globals themselves (handled by
 * enc_table) and for environment tables with an unregistered metatable:
 * sandboxes (busted's, setfenv emulations) are proxies that fall back to the
 * globals through __index, and could not travel anyway. A plain table used
 * as _ENV, or one with a registered metatable, travels as a value. */
static int env_of_globals(lua_State *L, const void *globals) {
  if (!lua_istable(L, -1)) return 0;
  if (lua_topointer(L, -1) == globals) return 0; /* the plain case: enc_table */
  if (!lua_getmetatable(L, -1)) return 0;
  int hooked;
  const char *name = mt_lookup(L, &hooked); /* pops the metatable */
  if (name == NULL) return 1;
  lua_pop(L, hooked ? 2 : 1);
  return 0;
}

static int enc_function(enc_ctx *c, int idx, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  if (lua_iscfunction(L, idx)) return enc_cfunction(c, idx);
  const void *p = lua_topointer(L, idx);
  uint32_t ref;
  if (ph_find(&e->seen, e->gen, p, &ref)) return pack_fixext4(c, CODEC_EXT_REF, ref);
  if (depth >= e->lim.max_depth) return fail(c, "nesting deeper than %d", e->lim.max_depth);
  if (!lua_checkstack(L, 8)) return fail(c, "nesting too deep for the Lua stack");
  if (add_ref(c, p)) return -1;
  size_t at, sat;
  if (ext_begin(c, CODEC_EXT_FUNCTION, &at)) return -1;
  /* Bytecode, from the per-state dump cache when this closure was sent
   * before (a closure's bytecode never changes; the cache is weak-keyed, so
   * an entry goes with its closure). Otherwise lua_dump writes in place
   * behind a str32 header whose length is patched, and the result is
   * cached. */
  if (!lua_checkstack(L, 4)) return fail(c, "nesting too deep for the Lua stack");
  dump_cache(L);
  int cache = lua_gettop(L);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, cache) == LUA_TSTRING) {
    size_t bn;
    const char *bc = lua_tolstring(L, -1, &bn);
    W(msgpack_pack_str(&e->pk, bn));
    W(msgpack_pack_str_body(&e->pk, bc, bn));
    lua_pop(L, 2);
  } else {
    lua_pop(L, 1);
    unsigned char h[5] = {0xdb, 0, 0, 0, 0};
    sat = e->out->len;
    W(enc_write(e, (const char *)h, 5));
    lua_pushvalue(L, idx);
    int r = lua_dump(L, dump_writer, e, 0);
    lua_pop(L, 1);
    if (r != 0) return fail_write(c);
    size_t bn = e->out->len - sat - 5;
    if (bn > UINT32_MAX) return fail(c, "function too large");
    unsigned char *q = (unsigned char *)e->out->data + sat + 1;
    q[0] = (unsigned char)(bn >> 24), q[1] = (unsigned char)(bn >> 16);
    q[2] = (unsigned char)(bn >> 8), q[3] = (unsigned char)bn;
    lua_pushvalue(L, idx);
    lua_pushlstring(L, e->out->data + sat + 5, bn);
    lua_rawset(L, cache);
    lua_pop(L, 1);
  }
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  W(msgpack_pack_uint32(&e->pk, ar.nups));
  if (fr_push(e, FR_UPVAL, idx, 0)) return fail(c, "out of memory");
  int fi = e->nfr - 1;
  for (int i = 1; i <= ar.nups; i++) {
    const void *id = lua_upvalueid(L, idx, i);
    uint32_t k;
    if (id && ph_find(&e->upv, e->gen, id, &k)) {
      if (pack_fixext4(c, CODEC_EXT_UPREF, k)) return -1;
      continue;
    }
    if (id) {
      if (ph_put(&e->upv, e->gen, id, e->nupv)) return fail(c, "out of memory");
      e->nupv++;
    }
    const char *uname = lua_getupvalue(L, idx, i);
    e->fr[fi].n = i;
    if (uname && strcmp(uname, "_ENV") == 0 && env_of_globals(L, e->globals)) {
      unsigned char g[3] = {0xd4, CODEC_EXT_GLOBALS, 0};
      W(enc_write(e, (const char *)g, 3));
      lua_pop(L, 1);
      continue;
    }
    if (enc_any(c, lua_gettop(L), depth + 1)) return -1;
    lua_pop(L, 1);
  }
  e->nfr--;
  return ext_end(c, at);
}

static int enc_userdata(enc_ctx *c, int idx, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  const void *p = lua_topointer(L, idx);
  uint32_t ref;
  if (ph_find(&e->seen, e->gen, p, &ref)) return pack_fixext4(c, CODEC_EXT_REF, ref);
  if (!lua_checkstack(L, 8)) return fail(c, "nesting too deep for the Lua stack");
  if (lua_getmetatable(L, idx)) {
    rawfield(L, -1, "__name");
    const char *tn = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    char tname[128];
    snprintf(tname, sizeof tname, "%s", tn ? tn : "");
    lua_pop(L, 1);
    int hooked;
    const char *name = mt_lookup(L, &hooked);
    if (name && hooked) return enc_hooked(c, idx, name, depth);
    if (name) return fail(c, "userdata (%s) registered without serialize hook", name);
    if (tname[0]) return fail(c, "userdata (%s)", tname);
  }
  return fail(c, "userdata");
}

static int enc_any(enc_ctx *c, int idx, int depth) {
  lua_State *L = c->L;
  codec_enc *e = c->e;
  int t = lua_type(L, idx);
  switch (t) {
  case LUA_TNIL: W(wr_byte(e, 0xc0)); return 0;
  case LUA_TBOOLEAN: W(wr_byte(e, lua_toboolean(L, idx) ? 0xc3 : 0xc2)); return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) W(wr_int(e, (int64_t)lua_tointeger(L, idx)));
    else W(wr_double(e, (double)lua_tonumber(L, idx)));
    return 0;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > UINT32_MAX) {
      e->toolarge = 1;
      e->want = e->out->len + n;
      return fail_write(c);
    }
    W(wr_str(e, s, n));
    return 0;
  }
  case LUA_TTABLE:
  case LUA_TFUNCTION:
  case LUA_TUSERDATA: {
    /* These may leave helper values on the stack; on failure they stay,
     * because the error path still reads the keys below them. */
    int top = lua_gettop(L);
    int r = t == LUA_TTABLE ? enc_table(c, idx, depth)
            : t == LUA_TFUNCTION ? enc_function(c, idx, depth) : enc_userdata(c, idx, depth);
    if (r == 0) lua_settop(L, top);
    return r;
  }
  case LUA_TLIGHTUSERDATA: return fail(c, "a light userdata");
  case LUA_TTHREAD: return fail(c, "a thread");
  default: return fail(c, "a value of type %s", luaL_typename(L, idx));
  }
}

int codec_enc_value(codec_enc *e, lua_State *L, int idx, const char *where) {
  enc_ctx c;
  c.e = e;
  c.L = L;
  c.err.what[0] = '\0';
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->globals = lua_topointer(L, -1);
  lua_pop(L, 1);
  e->toolarge = e->nomem = 0;
  e->nfr = 0;
  if (enc_any(&c, idx, 0) == 0) {
    lua_settop(L, top);
    return 0;
  }
  enc_push_error(e, L, where, c.err.what);
  lua_copy(L, -1, top + 1);
  lua_settop(L, top + 1);
  e->nfr = 0;
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Decoder */

typedef struct dec {
  lua_State *L;
  const unsigned char *p;
  size_t len;  /* end of the current region (narrowed inside ext payloads) */
  size_t pos;
  const codec_dec_opts *o;
  int max_depth;
  int refs;    /* stack index of the reference table (nil until needed):
                * refs[i] is object #i-1, refs[-k] the code of upvalue #k-1
                * for k > 64 (see uvbuf) */
  lua_Integer nrefs, nuv;
  int reindexed;
  int fcache;  /* stack index of the function cache table, or 0 */
  /* Codes (function ref * 256 + upvalue number) of the first upvalues;
   * later ones go to refs[-k] (rehashing a Lua table for a few negative
   * keys per message cost more than the rest of decoding a closure). */
  lua_Integer uvbuf[64];
  /* Cached closures handed out in this message (reused at most once). */
  const void *fc_used[16];
  int nfc_used;
  codec_enc *fc_owner; /* holds the cache's counters */
  /* Map key cache: the last short string key seen in each of KC_SLOTS
   * slots (hashed on length and first/last byte), its Lua string held in
   * the stack slot kc + slot. A hit is a compare and a lua_pushvalue
   * instead of lua_pushlstring's hashing and interning; the same bytes
   * always make the same (interned) Lua string, so nothing changes for the
   * caller. kc is 0 when the cache is off (short messages). */
  int kc;
  struct kslot {
    unsigned char n; /* length + 1; 0 = empty */
    char s[31];
  } kcs[32];
  char err[512];
} dec;

#define KC_SLOTS 32

static int derr(dec *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->err, sizeof d->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* Checks that n bytes are available at d->pos; `what` names the item, `at`
 * the offset of its first byte. */
static int need(dec *d, size_t n, const char *what, size_t at) {
  if (n <= d->len - d->pos) return 0;
  return derr(d, "truncated msgpack: %s needs %zu bytes at offset %zu, %zu left", what, n, at,
              d->len - d->pos);
}

static uint64_t rd_be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* Makes sure the reference table exists (created on first use, so messages
 * without tables or functions do not allocate one). */
static void refs_need(dec *d) {
  if (lua_type(d->L, d->refs) == LUA_TTABLE) return;
  lua_createtable(d->L, 8, 0);
  lua_replace(d->L, d->refs);
}

static void reg_obj(dec *d) {
  refs_need(d);
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->refs, ++d->nrefs);
}

/* Pushes the short string s[0..n) (n < 32), from the key cache when on. */
static inline void push_key(dec *d, const char *s, size_t n) {
  lua_State *L = d->L;
  if (d->kc == 0 || n == 0) {
    lua_pushlstring(L, s, n);
    return;
  }
  unsigned h = (unsigned)(n * 7 + (unsigned char)s[0] * 3u + (unsigned char)s[n - 1]) & (KC_SLOTS - 1);
  struct kslot *k = &d->kcs[h];
  if (k->n == n + 1 && memcmp(k->s, s, n) == 0) {
    lua_pushvalue(L, d->kc + (int)h);
    return;
  }
  lua_pushlstring(L, s, n);
  lua_copy(L, -1, d->kc + (int)h);
  k->n = (unsigned char)(n + 1);
  memcpy(k->s, s, n);
}

/* Inline decoding of the commonest leaves (fixint, fixstr, nil, booleans,
 * float64) inside containers. Returns 1 when it pushed the value, 0 when
 * dec_any must handle it (other types, and anything truncated: dec_any
 * reports those). */
static inline int dec_leaf(dec *d) {
  lua_State *L = d->L;
  size_t pos = d->pos, left = d->len - pos;
  if (left == 0) return 0;
  unsigned b = d->p[pos];
  if (b <= 0x7f) {
    lua_pushinteger(L, (lua_Integer)b);
  } else if (b >= 0xe0) {
    lua_pushinteger(L, (lua_Integer)(int8_t)b);
  } else if (b >= 0xa0 && b <= 0xbf) {
    size_t n = b & 0x1f;
    if (n >= left) return 0;
    lua_pushlstring(L, (const char *)d->p + pos + 1, n);
    d->pos = pos + 1 + n;
    return 1;
  } else if (b == 0xcb) {
    if (left < 9) return 0;
    uint64_t u = rd_be(d->p + pos + 1, 8);
    double f;
    memcpy(&f, &u, 8);
    lua_pushnumber(L, (lua_Number)f);
    d->pos = pos + 9;
    return 1;
  } else if (b >= 0xcc && b <= 0xd3) {
    int w = 1 << ((b - 0xcc) & 3);
    if ((size_t)w >= left) return 0;
    uint64_t u = rd_be(d->p + pos + 1, w);
    if (b <= 0xcf) {
      if (u > (uint64_t)LUA_MAXINTEGER) lua_pushnumber(L, (lua_Number)u);
      else lua_pushinteger(L, (lua_Integer)u);
    } else {
      int64_t v = w == 1 ? (int8_t)u : w == 2 ? (int16_t)u : w == 4 ? (int32_t)u : (int64_t)u;
      lua_pushinteger(L, (lua_Integer)v);
    }
    d->pos = pos + 1 + (size_t)w;
    return 1;
  } else if (b == 0xc3 || b == 0xc2) {
    lua_pushboolean(L, b == 0xc3);
  } else if (b == 0xc0) {
    lua_pushnil(L);
  } else {
    return 0;
  }
  d->pos = pos + 1;
  return 1;
}

static int dec_any(dec *d, int depth);

/* Reads a str or bin header; *s points into the input. */
static int dec_rawstr(dec *d, const char **s, size_t *n, const char *what) {
  size_t at = d->pos;
  if (need(d, 1, what, at)) return -1;
  unsigned b = d->p[d->pos++];
  int w;
  if (b >= 0xa0 && b <= 0xbf) {
    *n = b & 0x1f;
    w = 0;
  } else if (b == 0xd9 || b == 0xc4) w = 1;
  else if (b == 0xda || b == 0xc5) w = 2;
  else if (b == 0xdb || b == 0xc6) w = 4;
  else return derr(d, "invalid msgpack: %s must be a string, found byte 0x%02x at offset %zu", what, b, at);
  if (w) {
    if (need(d, (size_t)w, what, at)) return -1;
    *n = (size_t)rd_be(d->p + d->pos, w);
    d->pos += (size_t)w;
  }
  if (need(d, *n, what, at)) return -1;
  *s = (const char *)d->p + d->pos;
  d->pos += *n;
  return 0;
}

static int dec_container(dec *d, int depth, size_t n, int map, size_t at) {
  lua_State *L = d->L;
  const char *what = map ? "map" : "array";
  if (depth >= d->max_depth) return derr(d, "nesting deeper than %d at offset %zu", d->max_depth, at);
  size_t left = d->len - d->pos;
  if (n > left || (map && n > left / 2))
    return derr(d, "truncated msgpack: %s of %zu elements at offset %zu, only %zu bytes left", what, n, at,
                left);
  if (!lua_checkstack(L, 6)) return derr(d, "nesting too deep for the Lua stack at offset %zu", at);
  if (map) lua_createtable(L, 0, n > 1024 ? 1024 : (int)n);
  else lua_createtable(L, n > (1u << 24) ? (1 << 24) : (int)n, 0);
  if (d->nrefs == 0 && lua_type(L, d->refs) != LUA_TTABLE) {
    /* First object of the message: when it is a container of containers,
     * size the reference table for its elements at once (no rehashing as
     * it grows one object at a time). */
    int hint = 8;
    if (!map && n > 8 && left > 0) {
      unsigned b = d->p[d->pos];
      if ((b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf)) hint = n >= 1024 ? 1024 : (int)n + 1;
    }
    lua_createtable(L, hint, 0);
    lua_replace(L, d->refs);
  }
  reg_obj(d);
  int t = lua_gettop(L);
  if (!map) {
    for (size_t i = 1; i <= n; i++) {
      if (!dec_leaf(d) && dec_any(d, depth + 1)) return -1;
      lua_rawseti(L, t, (lua_Integer)i);
    }
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    size_t kat = d->pos;
    /* Only nil and floats can be invalid keys; look at the first byte
     * rather than asking Lua about every key. */
    unsigned kb = kat < d->len ? d->p[kat] : 0;
    if (kb >= 0xa0 && kb <= 0xbf && (size_t)(kb & 0x1f) < d->len - kat) {
      size_t kn = kb & 0x1f; /* fixstr key, the usual case */
      push_key(d, (const char *)d->p + kat + 1, kn);
      d->pos = kat + 1 + kn;
    } else {
      if (dec_any(d, depth + 1)) return -1;
      if (kb == 0xc0) return derr(d, "invalid map key nil at offset %zu", kat);
      if ((kb == 0xca || kb == 0xcb) && isnan(lua_tonumber(L, -1)))
        return derr(d, "invalid map key NaN at offset %zu", kat);
    }
    if (!dec_leaf(d) && dec_any(d, depth + 1)) return -1;
    lua_rawset(L, t);
  }
  return 0;
}

static void push_meta_table(lua_State *L, const char *mtname) {
  codec__registry_init(L);
  lua_getfield(L, LUA_REGISTRYINDEX, mtname);
  lua_setmetatable(L, -2);
}

static int dec_timestamp(dec *d, const unsigned char *q, size_t n, size_t at) {
  lua_Integer sec, nsec;
  if (n == 4) {
    sec = (lua_Integer)rd_be(q, 4);
    nsec = 0;
  } else if (n == 8) {
    uint64_t v = rd_be(q, 8);
    nsec = (lua_Integer)(v >> 34);
    sec = (lua_Integer)(v & 0x3ffffffffULL);
  } else if (n == 12) {
    nsec = (lua_Integer)rd_be(q, 4);
    sec = (lua_Integer)(int64_t)rd_be(q + 4, 8);
  } else {
    return derr(d, "invalid msgpack: timestamp of %zu bytes at offset %zu (must be 4, 8 or 12)", n, at);
  }
  if (nsec > 999999999) return derr(d, "invalid msgpack: timestamp nanoseconds out of range at offset %zu", at);
  lua_createtable(d->L, 0, 2);
  lua_pushinteger(d->L, sec);
  lua_setfield(d->L, -2, "sec");
  lua_pushinteger(d->L, nsec);
  lua_setfield(d->L, -2, "nsec");
  push_meta_table(d->L, CODEC_MT_TIMESTAMP);
  return 0;
}

typedef struct rdctx {
  const char *s;
  size_t n;
} rdctx;

static const char *chunk_reader(lua_State *L, void *ud, size_t *sz) {
  (void)L;
  rdctx *r = ud;
  *sz = r->n;
  r->n = 0;
  return *sz ? r->s : NULL;
}

/* Receiving-side function cache (opt-in, see codec_fn_cache_enable).
 * The table maps bytecode -> closure and closure -> bytecode. A cached
 * closure is handed out again only if none of its upvalues was ever joined
 * (a join makes an UpVal shared, and the API cannot make a fresh one), and
 * at most once per message (tracked for the first 16 cached closures of a
 * message; later ones are loaded and not cached). Every upvalue of a reused closure is set again
 * by the message. */
static const char fcache_key = 0;

void codec_fn_cache_enable(lua_State *L, int max_entries) {
  codec_enc *e = codec_enc_get(L);
  e->fcache_max = max_entries > 0 ? max_entries : 0;
  e->fcache_n = 0;
  if (e->fcache_max) lua_newtable(L);
  else lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &fcache_key);
}

/* Removes the closure at stack index f from the cache (it had an upvalue
 * joined). */
static void fcache_taint(dec *d, int f) {
  lua_State *L = d->L;
  if (!d->fcache) return;
  f = lua_absindex(L, f);
  lua_pushvalue(L, f);
  if (lua_rawget(L, d->fcache) == LUA_TSTRING) {
    lua_pushnil(L);
    lua_rawset(L, d->fcache); /* cache[bytecode] = nil */
    lua_pushvalue(L, f);
    lua_pushnil(L);
    lua_rawset(L, d->fcache); /* cache[f] = nil */
    d->fc_owner->fcache_n--;
  } else {
    lua_pop(L, 1);
  }
}

/* Pushes the closure for bytecode bc: a cached one not yet used in this
 * message, or a freshly loaded one (cached when there is room). Returns 0
 * or -1 with d->err set. */
static int fcache_load(dec *d, const char *bc, size_t bn, size_t at);

static int dec_function(dec *d, int depth, size_t at) {
  lua_State *L = d->L;
  const char *bc;
  size_t bn;
  if (depth >= d->max_depth) return derr(d, "nesting deeper than %d at offset %zu", d->max_depth, at);
  if (!lua_checkstack(L, 8)) return derr(d, "nesting too deep for the Lua stack at offset %zu", at);
  if (dec_rawstr(d, &bc, &bn, "function bytecode")) return -1;
  if (d->fcache) {
    if (fcache_load(d, bc, bn, at)) return -1;
  } else {
    rdctx r = {bc, bn};
    if (lua_load(L, chunk_reader, &r, "=(codec)", "b") != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      return derr(d, "invalid function at offset %zu: %s", at, m ? m : "?");
    }
  }
  reg_obj(d);
  int f = lua_gettop(L);
  lua_Integer fref = d->nrefs;
  lua_Debug ar;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  size_t nat = d->pos;
  if (dec_any(d, depth + 1)) return -1;
  int isint;
  lua_Integer nups = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (!isint || nups != ar.nups)
    return derr(d, "invalid function at offset %zu: upvalue count at offset %zu does not match the bytecode",
                at, nat);
  for (int i = 1; i <= ar.nups; i++) {
    size_t uat = d->pos;
    if (d->len - d->pos >= 6 && d->p[d->pos] == 0xd6 && (int8_t)d->p[d->pos + 1] == CODEC_EXT_UPREF) {
      lua_Integer k = (lua_Integer)rd_be(d->p + d->pos + 2, 4);
      d->pos += 6;
      if (k >= d->nuv) return derr(d, "invalid upvalue reference #%lld at offset %zu", (long long)k, uat);
      lua_Integer code;
      if (k < 64) {
        code = d->uvbuf[k];
      } else {
        lua_rawgeti(L, d->refs, -(k + 1));
        code = lua_tointeger(L, -1);
        lua_pop(L, 1);
      }
      lua_rawgeti(L, d->refs, code >> 8);
      lua_upvaluejoin(L, f, i, -1, (int)(code & 0xff));
      fcache_taint(d, -1);
      fcache_taint(d, f);
      lua_pop(L, 1);
      continue;
    }
    if (d->nuv < 64) {
      d->uvbuf[d->nuv++] = fref * 256 + i;
    } else {
      lua_pushinteger(L, fref * 256 + i);
      lua_rawseti(L, d->refs, -(++d->nuv));
    }
    if (dec_any(d, depth + 1)) return -1;
    if (lua_setupvalue(L, f, i) == NULL) return derr(d, "invalid function at offset %zu: no upvalue %d", at, i);
  }
  return 0;
}

static int fcache_used(const dec *d, const void *f) {
  for (int i = 0; i < d->nfc_used; i++)
    if (d->fc_used[i] == f) return 1;
  return 0;
}

static int fcache_load(dec *d, const char *bc, size_t bn, size_t at) {
  lua_State *L = d->L;
  lua_pushlstring(L, bc, bn);              /* key */
  int key = lua_gettop(L);
  lua_pushvalue(L, key);
  int cached = lua_rawget(L, d->fcache) == LUA_TFUNCTION;
  if (cached && d->nfc_used < 16 && !fcache_used(d, lua_topointer(L, -1))) {
    d->fc_used[d->nfc_used++] = lua_topointer(L, -1);
    lua_remove(L, key);
    return 0;
  }
  lua_pop(L, 1);
  rdctx r = {bc, bn};
  if (lua_load(L, chunk_reader, &r, "=(codec)", "b") != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    return derr(d, "invalid function at offset %zu: %s", at, m ? m : "?");
  }
  int f = lua_gettop(L);
  codec_enc *e = d->fc_owner;
  if (!cached && d->nfc_used < 16) {
    d->fc_used[d->nfc_used++] = lua_topointer(L, f);
    if (e->fcache_n >= e->fcache_max) { /* full: start over */
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &fcache_key);
      lua_replace(L, d->fcache);
      e->fcache_n = 0;
    }
    lua_pushvalue(L, key);
    lua_pushvalue(L, f);
    lua_rawset(L, d->fcache);
    lua_pushvalue(L, f);
    lua_pushvalue(L, key);
    lua_rawset(L, d->fcache);
    e->fcache_n++;
  }
  lua_remove(L, key);
  return 0;
}

static int lookup_cfunction(dec *d, const char *s, size_t n) {
  lua_State *L = d->L;
  for (int attempt = 0; attempt < 2; attempt++) {
    reg_table(L, REG_NAME2CF);
    lua_pushlstring(L, s, n);
    if (lua_rawget(L, -2) == LUA_TFUNCTION) {
      lua_remove(L, -2);
      return 0;
    }
    lua_pop(L, 2);
    if (d->reindexed) break;
    d->reindexed = 1;
    codec_index_cfunctions(L);
  }
  return -1;
}

static int dec_ext(dec *d, int depth, int8_t type, size_t n, size_t at) {
  lua_State *L = d->L;
  const unsigned char *q = d->p + d->pos;
  if (type == -1) {
    d->pos += n;
    return dec_timestamp(d, q, n, at);
  }
  if (type < CODEC_EXT_RESERVED_MIN || type > CODEC_EXT_RESERVED_MAX || type > CODEC_EXT_LAST) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, type);
    lua_setfield(L, -2, "type");
    lua_pushlstring(L, (const char *)q, n);
    lua_setfield(L, -2, "data");
    push_meta_table(L, CODEC_MT_EXT);
    d->pos += n;
    return 0;
  }
  switch (type) {
  case CODEC_EXT_REF: {
    if (n != 4) return derr(d, "invalid msgpack: REF ext of %zu bytes at offset %zu", n, at);
    lua_Integer k = (lua_Integer)rd_be(q, 4);
    d->pos += 4;
    if (k >= d->nrefs) return derr(d, "invalid reference #%lld at offset %zu", (long long)k, at);
    lua_rawgeti(L, d->refs, k + 1);
    return 0;
  }
  case CODEC_EXT_GLOBALS:
    if (!d->o->trusted) return derr(d, "globals table refused from an untrusted channel at offset %zu", at);
    d->pos += n;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    return 0;
  case CODEC_EXT_CFUNCTION:
    if (!d->o->trusted) return derr(d, "function refused from an untrusted channel at offset %zu", at);
    d->pos += n;
    if (lookup_cfunction(d, (const char *)q, n))
      return derr(d, "unknown C function '%.*s' at offset %zu", (int)(n > 100 ? 100 : n), (const char *)q, at);
    return 0;
  case CODEC_EXT_UPREF: return derr(d, "invalid msgpack: upvalue reference outside a function at offset %zu", at);
  default: break;
  }
  /* Exts whose payload is a sequence of msgpack objects. */
  if (type == CODEC_EXT_FUNCTION && !d->o->trusted)
    return derr(d, "function refused from an untrusted channel at offset %zu", at);
  size_t saved = d->len;
  d->len = d->pos + n;
  int r;
  if (type == CODEC_EXT_FUNCTION) {
    r = dec_function(d, depth, at);
  } else { /* METATABLE or SERIALIZED */
    const char *s;
    size_t sn;
    if (depth >= d->max_depth) return derr(d, "nesting deeper than %d at offset %zu", d->max_depth, at);
    if (!lua_checkstack(L, 8)) return derr(d, "nesting too deep for the Lua stack at offset %zu", at);
    if (dec_rawstr(d, &s, &sn, "type name")) return -1;
    lua_pushlstring(L, s, sn);
    int name = lua_gettop(L);
    if (type == CODEC_EXT_METATABLE) {
      reg_table(L, REG_NAME2MT);
      lua_pushvalue(L, name);
      if (lua_rawget(L, -2) != LUA_TTABLE)
        return derr(d, "unknown metatable '%s' (not registered) at offset %zu", lua_tostring(L, name), at);
      size_t vat = d->pos;
      if (need(d, 1, "table", vat)) return -1;
      unsigned b = d->p[d->pos];
      if (!((b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf)))
        return derr(d, "invalid msgpack: metatable '%s' must apply to a table at offset %zu", lua_tostring(L, name),
                    vat);
      if (dec_any(d, depth + 1)) return -1;
      lua_pushvalue(L, -2);
      lua_setmetatable(L, -2);
      lua_replace(L, name);
      lua_settop(L, name);
    } else {
      reg_table(L, REG_HOOKS);
      lua_pushvalue(L, name);
      if (lua_rawget(L, -2) != LUA_TTABLE || rawfield(L, -1, "deserialize") != LUA_TFUNCTION)
        return derr(d, "no deserialize hook registered for '%s' at offset %zu", lua_tostring(L, name), at);
      if (dec_any(d, depth + 1)) return -1;
      if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        return derr(d, "deserialize hook of '%s' failed at offset %zu: %s", lua_tostring(L, name), at,
                    m ? m : "(error object is not a string)");
      }
      lua_replace(L, name);
      lua_settop(L, name);
      reg_obj(d);
    }
    r = 0;
  }
  if (r) return -1;
  if (d->pos != d->len)
    return derr(d, "invalid msgpack: %zu unused bytes in ext %d at offset %zu", d->len - d->pos, type, at);
  d->len = saved;
  return 0;
}

static int dec_any(dec *d, int depth) {
  lua_State *L = d->L;
  size_t at = d->pos;
  if (d->pos >= d->len) return derr(d, "truncated msgpack: value expected at offset %zu", at);
  unsigned b = d->p[d->pos++];
  if (b <= 0x7f) {
    lua_pushinteger(L, (lua_Integer)b);
    return 0;
  }
  if (b >= 0xe0) {
    lua_pushinteger(L, (lua_Integer)(int8_t)b);
    return 0;
  }
  if (b <= 0x8f) return dec_container(d, depth, b & 0x0f, 1, at);
  if (b <= 0x9f) return dec_container(d, depth, b & 0x0f, 0, at);
  if (b <= 0xbf) {
    size_t n = b & 0x1f;
    if (need(d, n, "fixstr", at)) return -1;
    lua_pushlstring(L, (const char *)d->p + d->pos, n);
    d->pos += n;
    return 0;
  }
  static const char *const names[32] = {
      "nil",     "(never used)", "false",   "true",    "bin8",     "bin16",    "bin32",    "ext8",
      "ext16",   "ext32",        "float32", "float64", "uint8",    "uint16",   "uint32",   "uint64",
      "int8",    "int16",        "int32",   "int64",   "fixext1",  "fixext2",  "fixext4",  "fixext8",
      "fixext16", "str8",        "str16",   "str32",   "array16",  "array32",  "map16",    "map32"};
  const char *what = names[b - 0xc0];
  const unsigned char *q = d->p + d->pos;
  switch (b) {
  case 0xc0: lua_pushnil(L); return 0;
  case 0xc1: return derr(d, "invalid msgpack: byte 0xc1 at offset %zu", at);
  case 0xc2: lua_pushboolean(L, 0); return 0;
  case 0xc3: lua_pushboolean(L, 1); return 0;
  case 0xc4: case 0xc5: case 0xc6: case 0xd9: case 0xda: case 0xdb: {
    int w = (b == 0xc4 || b == 0xd9) ? 1 : (b == 0xc5 || b == 0xda) ? 2 : 4;
    if (need(d, (size_t)w, what, at)) return -1;
    size_t n = (size_t)rd_be(q, w);
    d->pos += (size_t)w;
    if (need(d, n, what, at)) return -1;
    lua_pushlstring(L, (const char *)d->p + d->pos, n);
    d->pos += n;
    return 0;
  }
  case 0xc7: case 0xc8: case 0xc9: {
    int w = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
    if (need(d, (size_t)w + 1, what, at)) return -1;
    size_t n = (size_t)rd_be(q, w);
    int8_t type = (int8_t)q[w];
    d->pos += (size_t)w + 1;
    if (need(d, n, what, at)) return -1;
    return dec_ext(d, depth, type, n, at);
  }
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
    size_t n = (size_t)1 << (b - 0xd4);
    if (need(d, n + 1, what, at)) return -1;
    int8_t type = (int8_t)q[0];
    d->pos += 1;
    return dec_ext(d, depth, type, n, at);
  }
  case 0xca: {
    if (need(d, 4, what, at)) return -1;
    uint32_t u = (uint32_t)rd_be(q, 4);
    float f;
    memcpy(&f, &u, 4);
    d->pos += 4;
    lua_pushnumber(L, (lua_Number)f);
    return 0;
  }
  case 0xcb: {
    if (need(d, 8, what, at)) return -1;
    uint64_t u = rd_be(q, 8);
    double f;
    memcpy(&f, &u, 8);
    d->pos += 8;
    lua_pushnumber(L, (lua_Number)f);
    return 0;
  }
  case 0xcc: case 0xcd: case 0xce: case 0xcf: {
    int w = 1 << (b - 0xcc);
    if (need(d, (size_t)w, what, at)) return -1;
    uint64_t u = rd_be(q, w);
    d->pos += (size_t)w;
    if (u > (uint64_t)LUA_MAXINTEGER) lua_pushnumber(L, (lua_Number)u);
    else lua_pushinteger(L, (lua_Integer)u);
    return 0;
  }
  case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
    int w = 1 << (b - 0xd0);
    if (need(d, (size_t)w, what, at)) return -1;
    uint64_t u = rd_be(q, w);
    d->pos += (size_t)w;
    int64_t v;
    if (w == 1) v = (int8_t)u;
    else if (w == 2) v = (int16_t)u;
    else if (w == 4) v = (int32_t)u;
    else v = (int64_t)u;
    lua_pushinteger(L, (lua_Integer)v);
    return 0;
  }
  case 0xdc: case 0xdd: case 0xde: case 0xdf: {
    int w = (b == 0xdc || b == 0xde) ? 2 : 4;
    if (need(d, (size_t)w, what, at)) return -1;
    size_t n = (size_t)rd_be(q, w);
    d->pos += (size_t)w;
    return dec_container(d, depth, n, b >= 0xde, at);
  }
  default: return derr(d, "invalid msgpack: byte 0x%02x at offset %zu", b, at);
  }
}

/* Decodes objects from data[*pos..len), at most `max` of them. */
static int decode_n(lua_State *L, const char *data, size_t len, size_t *pos, const codec_dec_opts *o, int max) {
  codec_dec_opts dflt;
  if (o == NULL) {
    dflt.trusted = 0;
    codec_limits_default(&dflt.lim);
    o = &dflt;
  }
  int base = lua_gettop(L);
  if (len > o->lim.max_size) {
    lua_pushfstring(L, "message too large: %I bytes exceeds limit of %I bytes", (lua_Integer)len,
                    (lua_Integer)o->lim.max_size);
    return -1;
  }
  if (!lua_checkstack(L, 8)) {
    lua_pushliteral(L, "out of Lua stack");
    return -1;
  }
  dec d;
  d.L = L;
  d.p = (const unsigned char *)data;
  d.len = len;
  d.pos = *pos;
  d.o = o;
  d.max_depth = o->lim.max_depth > DEPTH_HARD_CAP ? DEPTH_HARD_CAP : o->lim.max_depth;
  d.nrefs = d.nuv = 0;
  d.reindexed = 0;
  lua_pushnil(L);
  d.refs = lua_gettop(L);
  d.fcache = 0;
  d.fc_owner = NULL;
  d.nfc_used = 0;
  if (o->trusted) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &fcache_key) == LUA_TTABLE) {
      d.fcache = lua_gettop(L);
      d.fc_owner = codec_enc_get(L);
    } else {
      lua_pop(L, 1);
    }
  }
  /* Key cache: only for messages long enough to repeat keys, and not for
   * one string (str/bin first byte). */
  d.kc = 0;
  if (len - d.pos >= 128) {
    unsigned b0 = (unsigned char)data[d.pos];
    int strlike = (b0 >= 0xa0 && b0 <= 0xbf) || (b0 >= 0xc4 && b0 <= 0xc6) || (b0 >= 0xd9 && b0 <= 0xdb);
    if (!strlike && lua_checkstack(L, KC_SLOTS + 8)) {
      d.kc = lua_gettop(L) + 1;
      lua_settop(L, d.kc + KC_SLOTS - 1);
      memset(d.kcs, 0, sizeof d.kcs);
    }
  }
  int helpers = lua_gettop(L) - base;
  int n = 0;
  while (d.pos < len && n < max) {
    if (!lua_checkstack(L, 4)) {
      lua_settop(L, base);
      lua_pushliteral(L, "too many values for the Lua stack");
      return -1;
    }
    if (dec_any(&d, 0)) {
      lua_settop(L, base);
      lua_pushstring(L, d.err);
      return -1;
    }
    n++;
  }
  *pos = d.pos;
  lua_rotate(L, base + 1, -helpers); /* refs, fcache, key cache slots */
  lua_pop(L, helpers);
  return n;
}

int codec_decode(lua_State *L, const char *data, size_t len, const codec_dec_opts *o) {
  size_t pos = 0;
  return decode_n(L, data, len, &pos, o, 0x7fffffff);
}

int codec_decode_one(lua_State *L, const char *data, size_t len, size_t *pos, const codec_dec_opts *o) {
  if (*pos >= len) return 0;
  return decode_n(L, data, len, pos, o, 1);
}
