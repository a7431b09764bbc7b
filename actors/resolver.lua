-- actors/resolver.lua -- an actor script: a DNS resolver service. Lookups
-- (getaddrinfo, which blocks) run on the IO pool through actor.net; the
-- scheduler only keeps a small shared cache.
--
-- Handlers (see docs/actor-scripts.md):
--   resolver:resolve(name [, "A"|"AAAA"]) -> { addresses }  (raises on failure)
--   resolver:resolve_many(names [, type]) -> { name = { addresses } | false },
--                                            every lookup in flight at once
--   resolver:stats()                      -> lookups, cache hits (this session)
--   resolver:flush()                      -> empties the shared cache
--
-- Serve it:   actor serve actors/resolver.lua --listen ipc:///tmp/resolver
-- Ask it:     [ "resolve", "localhost", "A" ]  ->  [ true, [ "127.0.0.1" ] ]
local actor = require "actor"
local async = require "util.async"

local TTL = 60       -- seconds an answer stays in the cache
local MAX_CACHE = 1000

local resolver = {}
local cache, cached = {}, 0   -- "type name" -> { addrs =, expires = }

local function lookup_in_pool(name, rtype)
  -- runs on an IO thread: blocking is fine there
  return require("actor.net").resolve(name, rtype)
end

local function check(name, rtype)
  if type(name) ~= "string" or name == "" then error("resolve: host name expected", 3) end
  if rtype ~= nil and rtype ~= "A" and rtype ~= "AAAA" then
    error("resolve: type must be \"A\", \"AAAA\" or nil", 3)
  end
end

local function from_cache(self, key)
  local e = cache[key]
  if e and e.expires > actor.now() then
    self.hits = (self.hits or 0) + 1
    return e.addrs
  end
end

local function remember(key, addrs)
  if cached >= MAX_CACHE then cache, cached = {}, 0 end
  if not cache[key] then cached = cached + 1 end
  cache[key] = { addrs = addrs, expires = actor.now() + TTL }
end

function resolver:resolve(name, rtype)
  check(name, rtype)
  self.lookups = (self.lookups or 0) + 1
  local key = (rtype or "*") .. " " .. name
  local hit = from_cache(self, key)
  if hit then return hit end
  local ok, addrs, err = msys.runInPool("IO", function() return lookup_in_pool(name, rtype) end)
  if not ok then error(addrs, 0) end
  if not addrs then error(("cannot resolve %s: %s"):format(name, tostring(err)), 0) end
  remember(key, addrs)
  return addrs
end

function resolver:resolve_many(names, rtype)
  if type(names) ~= "table" then error("resolve_many: array of host names expected", 2) end
  local out = {}
  local wait, done = async.waiter(#names)
  for _, name in ipairs(names) do
    check(name, rtype)
    self.lookups = (self.lookups or 0) + 1
    local key = (rtype or "*") .. " " .. name
    local hit = from_cache(self, key)
    if hit then
      out[name] = hit
      done()
    else
      actor.cast({ pool = "IO", sched = true, completion = function(ok, addrs)
        if ok and addrs then remember(key, addrs) end
        out[name] = ok and addrs or false
        done()
      end }, function() return lookup_in_pool(name, rtype) end)
    end
  end
  wait()
  return out
end

function resolver:stats()
  return self.lookups or 0, self.hits or 0
end

function resolver:flush()
  cache, cached = {}, 0
end

return resolver
