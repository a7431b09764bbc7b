-- actors/hasher.lua -- an actor script: SHA-256 digests computed on the CPU
-- pool, with per-session statistics.
--
-- Handlers (see docs/actor-scripts.md):
--   hasher:sha256(data)      -> hex digest of the string `data`
--   hasher:sha256_many(list) -> { hex digests }, one pool job per item, all
--                               in flight at once
--   hasher:verify(data, hex) -> true/false
--   hasher:stats()           -> calls, bytes hashed in this session
--
-- Serve it:   actor serve actors/hasher.lua --listen tcp://127.0.0.1:5555
-- Ask it:     [ "sha256", "abc" ]  ->  [ true, "ba7816bf..." ]
--
-- The digest function is pure Lua 5.4 (integer arithmetic). It travels to
-- the pool threads as a closure: the scheduler never computes a digest, so
-- a big input does not hold up other sessions.
local actor = require "actor"
local async = require "util.async"

local hasher = {}

-- SHA-256 (FIPS 180-4) of a string, as 64 hex characters.
local function sha256(msg)
  local k = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  }
  local M = 0xffffffff
  local function rotr(x, n) return ((x >> n) | (x << (32 - n))) & M end
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local len = #msg
  msg = msg .. "\128" .. string.rep("\0", (55 - len) % 64) .. string.pack(">I8", len * 8)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 1, 16 do w[i] = string.unpack(">I4", msg, chunk + (i - 1) * 4) end
    for i = 17, 64 do
      local a, b = w[i - 15], w[i - 2]
      local s0 = rotr(a, 7) ~ rotr(a, 18) ~ (a >> 3)
      local s1 = rotr(b, 17) ~ rotr(b, 19) ~ (b >> 10)
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 1, 64 do
      local S1 = rotr(e, 6) ~ rotr(e, 11) ~ rotr(e, 25)
      local ch = (e & f) ~ (~e & g)
      local t1 = (h + S1 + ch + k[i] + w[i]) & M
      local S0 = rotr(a, 2) ~ rotr(a, 13) ~ rotr(a, 22)
      local maj = (a & b) ~ (a & c) ~ (b & c)
      local t2 = (S0 + maj) & M
      h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M, c, b, a, (t1 + t2) & M
    end
    h0, h1, h2, h3 = (h0 + a) & M, (h1 + b) & M, (h2 + c) & M, (h3 + d) & M
    h4, h5, h6, h7 = (h4 + e) & M, (h5 + f) & M, (h6 + g) & M, (h7 + h) & M
  end
  return string.format(string.rep("%08x", 8), h0, h1, h2, h3, h4, h5, h6, h7)
end
hasher.digest = sha256 -- for callers that want it in-process

local function account(self, data)
  self.calls = (self.calls or 0) + 1
  self.bytes = (self.bytes or 0) + #data
end

local function check_string(data, what)
  if type(data) ~= "string" then
    error(("%s: string expected, got %s"):format(what, type(data)), 3)
  end
end

function hasher:sha256(data)
  check_string(data, "sha256")
  account(self, data)
  local ok, hex = msys.runInPool("CPU", function() return sha256(data) end)
  if not ok then error(hex, 0) end
  return hex
end

-- All digests in flight at once: one scheduler-side completion per item,
-- the handler parks once until every item is back.
function hasher:sha256_many(list)
  if type(list) ~= "table" then error("sha256_many: array of strings expected", 2) end
  local out, err = {}, nil
  local wait, done = async.waiter(#list)
  for i, data in ipairs(list) do
    check_string(data, "sha256_many")
    account(self, data)
    actor.cast({ pool = "CPU", sched = true, completion = function(ok, hex)
      if ok then out[i] = hex else err = err or hex end
      done()
    end }, function() return sha256(data) end)
  end
  wait()
  if err then error(err, 0) end
  return out
end

function hasher:verify(data, hex)
  return self:sha256(data) == hex
end

function hasher:stats()
  return self.calls or 0, self.bytes or 0
end

return hasher
