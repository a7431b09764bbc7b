-- codec_spec.lua: every kind of value makes a round trip through a real pool
-- thread (actor.call), plus the codec's error messages and actor.codec on
-- its own. Run by `busted --lua=build/actor`.
local actor = require "actor"
local codec = actor.codec

local function echo(...) return ... end

-- Sends values to a CPU thread and back; returns the call's results.
local function through_pool(...)
  return actor.call("CPU", echo, ...)
end

local function same(a, b)
  if math.type(a) ~= math.type(b) then return false end
  if a ~= a then return b ~= b end
  if a == 0 and b == 0 and math.type(a) == "float" then return 1 / a == 1 / b end
  return a == b
end

describe("actor.codec through a pool thread", function()
  it("keeps scalars exact", function()
    local values = { 0, 1, -1, 1.0, -0.0, 1 / 0, -1 / 0, 0 / 0, math.maxinteger, math.mininteger,
      math.pi, 2 ^ 53, 1e-300, true, false, "", "a\0b", "\255\254invalid utf8" }
    local r = table.pack(through_pool(table.unpack(values)))
    assert.is_true(r[1])
    for i, v in ipairs(values) do
      assert.is_true(same(v, r[i + 1]), "value #" .. i .. " " .. tostring(v))
    end
  end)

  it("keeps nil arguments and several results", function()
    local r = table.pack(through_pool(nil, 2, nil))
    assert.are.equal(4, r.n)
    assert.is_true(r[1])
    assert.is_nil(r[2]); assert.are.equal(2, r[3]); assert.is_nil(r[4])
  end)

  it("carries a string of several MB byte for byte", function()
    local s = {}
    for i = 1, 4096 do s[i] = string.char(i % 256) end
    s = string.rep(table.concat(s), 1024)
    local ok, r = through_pool(s)
    assert.is_true(ok)
    assert.are.equal(#s, #r)
    assert.is_true(s == r)
  end)

  it("sends sequences as arrays and other tables as maps, nested", function()
    local k = { "key" }
    local t = { 1, 2, { 3, { 4 } }, map = { a = 1, [1.5] = "f", [true] = "t", [k] = "tablekey" },
      holes = { [1] = 1, [3] = 3 } }
    local ok, r = through_pool(t)
    assert.is_true(ok)
    assert.are.equal(2, r[2]); assert.are.equal(4, r[3][2][1])
    assert.are.equal("f", r.map[1.5]); assert.are.equal("t", r.map[true])
    assert.are.equal(3, r.holes[3]); assert.is_nil(r.holes[2])
    local tk = next(r.map, nil)
    local found
    for key, v in pairs(r.map) do
      if type(key) == "table" then found = key; assert.are.equal("tablekey", v) end
    end
    assert.are.same({ "key" }, found)
    assert.is_truthy(tk ~= nil)
  end)

  it("preserves shared references and cycles", function()
    local shared = { 1 }
    local t = { a = shared, b = shared }
    t.self = t
    local ok, r = through_pool(t, shared)
    assert.is_true(ok)
    assert.are.equal(r.a, r.b)
    assert.are.equal(r, r.self)
  end)

  it("runs a closure with upvalues, tables of closures and _ENV on the worker", function()
    local n, name = 40, "worker"
    local helpers = { add = function(a, b) return a + b end }
    local f = function()
      return helpers.add(n, 2), name, type(print), string.format("%d", 7)
    end
    local ok, a, b, c, d = actor.call("CPU", f)
    assert.is_true(ok)
    assert.are.equal(42, a); assert.are.equal("worker", b)
    assert.are.equal("function", c); assert.are.equal("7", d)
  end)

  it("keeps upvalues shared between closures of one message", function()
    local count = 0
    local obj = { inc = function() count = count + 1 end, get = function() return count end }
    local ok, v = actor.call("CPU", function(o) o.inc(); o.inc(); return o.get() end, obj)
    assert.is_true(ok)
    assert.are.equal(2, v)
  end)

  it("sends C functions by name", function()
    local ok, f, g = through_pool(string.format, math.floor)
    assert.is_true(ok)
    assert.are.equal(string.format, f)
    assert.are.equal(math.floor, g)
  end)

  it("keeps line numbers in remote errors", function()
    local ok, err = actor.call("CPU", function() error("remote boom") end)
    assert.is_false(ok)
    assert.matches("codec_spec.lua:%d+: remote boom", err)
  end)

  it("carries registered metatables: each side uses its own registration", function()
    local Point = { __index = { norm = function(p) return p.x + p.y end } }
    codec.register("spec.Point", Point)
    actor.pool("codec_spec1", { threads = 1 })
    local ok = actor.call("codec_spec1", function()
      local mt = { __index = { norm = function(q) return q.x * q.y end } }
      require("actor.codec").register("spec.Point", mt)
    end)
    assert.is_true(ok)
    local ok2, n, p = actor.call("codec_spec1", function(pt) return pt:norm(), pt end,
      setmetatable({ x = 3, y = 4 }, Point))
    assert.is_true(ok2)
    assert.are.equal(12, n)            -- the worker's metatable
    assert.are.equal(Point, getmetatable(p))
    assert.are.equal(7, p:norm())      -- ours again on the way back
    local Other = {}
    codec.register("spec.Other", Other)
    local ok3, err = actor.call("codec_spec1", echo, setmetatable({}, Other))
    assert.is_false(ok3)
    assert.matches("unknown metatable 'spec.Other' (not registered)", err, 1, true)
  end)

  it("carries userdata and tables through serialize/deserialize hooks", function()
    local Box = {}
    local hooks = {
      serialize = function(b) return { v = b.v } end,
      deserialize = function(t) return setmetatable({ v = t.v, restored = true }, Box) end,
    }
    codec.register("spec.Box", Box, hooks)
    local b = setmetatable({ v = 9 }, Box)
    local r = codec.decode(codec.encode({ b, b }))
    assert.is_true(r[1].restored)
    assert.are.equal(9, r[1].v)
    assert.are.equal(r[1], r[2])
    -- through a worker that registered the same name with its own hooks
    actor.pool("codec_spec1", { threads = 1 })
    assert.is_true((actor.call("codec_spec1", function()
      local WBox = { __index = { twice = function(self) return self.v * 2 end } }
      require("actor.codec").register("spec.Box", WBox, {
        serialize = function(x) return { v = x.v } end,
        deserialize = function(t) return setmetatable({ v = t.v }, WBox) end,
      })
    end)))
    local ok, twice, same_obj, back = actor.call("codec_spec1", function(x, y) return x:twice(), x == y, x end, b, b)
    assert.is_true(ok)
    assert.are.equal(18, twice)
    assert.is_true(same_obj)
    assert.is_true(back.restored)
    assert.are.equal(Box, getmetatable(back))
  end)

  it("decodes timestamps and unknown ext values into documented tables", function()
    local ts = codec.decode("\xd6\xff\x00\x00\x00\x05")
    assert.are.equal(5, ts.sec); assert.are.equal(0, ts.nsec)
    local ok, r = through_pool(ts, codec.ext(42, "raw"))
    assert.is_true(ok)
    assert.are.equal(5, r.sec)
    assert.are.equal("msgpack.timestamp", getmetatable(r).__name)
  end)
end)

describe("actor.codec errors", function()
  it("names a thread in an upvalue", function()
    local co = coroutine.create(print)
    local ok, err = actor.call("CPU", function() return co end)
    assert.is_false(ok)
    assert.are.equal("cannot send upvalue 'co' of closure (argument #2 to call): a thread", err)
  end)

  it("names a userdata in an argument", function()
    local ok, err = actor.call("CPU", echo, { conn = io.stdout })
    assert.is_false(ok)
    assert.are.equal("cannot send args[1].conn: userdata (FILE*)", err)
  end)

  it("refuses unregistered metatables and unknown C functions", function()
    local ok, err = through_pool({ x = setmetatable({}, {}) })
    assert.is_false(ok)
    assert.are.equal("cannot send args[1].x: table with unregistered metatable", err)
    ok, err = through_pool(io.stdout.write)
    assert.is_false(ok)
    assert.are.equal("cannot send args[1]: a C function not known by name", err)
  end)

  it("returns results that cannot cross as false, msg and the worker keeps going", function()
    local ok, err = actor.call("CPU", function() return coroutine.create(print) end)
    assert.is_false(ok)
    assert.matches("cannot send result #1: a thread", err, 1, true)
    local ok2, v = actor.call("CPU", function() return 1 end)
    assert.is_true(ok2)
    assert.are.equal(1, v)
  end)

  it("raises from encode and decode with clear messages", function()
    assert.has_error(function() codec.encode(coroutine.create(print)) end, "cannot send value: a thread")
    assert.has_error(function() codec.decode("\xdb\x00\x00\x00\x64ab") end,
      "truncated msgpack: str32 needs 100 bytes at offset 0, 2 left")
    assert.has_error(function() codec.decode("\xdd\xff\xff\xff\xff\x00") end,
      "truncated msgpack: array of 4294967295 elements at offset 0, only 1 bytes left")
    local s = codec.encode(function() return 1 end)
    assert.has_error(function() codec.decode(s) end,
      "function refused from an untrusted channel at offset 0")
    assert.are.equal(1, codec.decode(s, { trusted = true })())
  end)

  it("enforces limits", function()
    local old = codec.limits()
    codec.limits { max_depth = 5, max_size = 1000 }
    assert.has_error(function() codec.encode({ { { { { { {} } } } } } }) end,
      "cannot send value[1][1][1][1][1]: nesting deeper than 5")
    assert.has_error(function() codec.encode(string.rep("x", 2000)) end,
      "cannot send value: message too large: 2003 bytes exceeds limit of 1000 bytes")
    codec.limits(old)
    assert.are.same(old, codec.limits())
  end)

  it("refuses a 1 GB string before copying it", function()
    local ok, big = pcall(string.rep, "x", 1 << 30)
    if not ok then return end -- not enough memory on this machine to build it
    local ok2, err = pcall(codec.encode, big)
    big = nil
    collectgarbage()
    assert.is_false(ok2)
    assert.matches("exceeds limit of 268435456 bytes", err, 1, true)
  end)

  it("can drop unregistered metatables when asked", function()
    local s = codec.encode_with({ drop_metatables = true }, setmetatable({ a = 1 }, {}))
    local r = codec.decode(s)
    assert.are.equal(1, r.a)
    assert.is_nil(getmetatable(r))
  end)
end)
