-- Basic example (Prosody's util.async docs): one DNS lookup in a runner.
--
--   actor actors/examples/basic.lua [name]     (default: $EXAMPLE_HOST or example.com)
--
-- lookup() starts the query, parks the runner on a waiter and returns the
-- answer once the callback has called done(). The lookup itself
-- (getaddrinfo) runs on a thread of the IO pool.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local async = require "util.async"
local netcb = require "netcb"

local name = arg[1] or os.getenv("EXAMPLE_HOST") or "example.com"

local function lookup(name, qtype)
  local wait, done = async.waiter()
  local result, err
  netcb.lookup(function(addrs, e)
    result, err = addrs, e
    done()
  end, name, qtype)
  wait()
  return result, err
end

local r = async.runner(function(name)
  local addrs, err = lookup(name, "A")
  if addrs then
    print(name .. " A: " .. table.concat(addrs, " "))
  else
    print(name .. " A: error: " .. tostring(err))
    os.exit(1)
  end
end)
r:run(name)
