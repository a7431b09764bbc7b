-- Concurrent example (Prosody's util.async docs): an A and an AAAA lookup
-- at once, joined with waiter(2).
--
--   actor actors/examples/concurrent.lua [--callbacks] [name]
--
-- name defaults to $EXAMPLE_HOST or example.com. With --callbacks the same
-- task runs written with callbacks only (the completion check sits in both
-- callbacks). Both print the same lines.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local async = require "util.async"
local netcb = require "netcb"

local opts, pos = netcb.args(arg, { callbacks = false })
local name = pos[1] or os.getenv("EXAMPLE_HOST") or "example.com"

local function show(qtype, addrs, err)
  if addrs then
    print(name .. " " .. qtype .. ": " .. table.concat(addrs, " "))
  else
    print(name .. " " .. qtype .. ": error: " .. tostring(err))
  end
end

if opts.callbacks then
  -- Callbacks only: either answer may come first, so both check for
  -- completion; the "all done" part is factored out.
  local ipv4, ipv4_err, ipv6, ipv6_err
  local function all_done()
    show("A", ipv4, ipv4_err)
    show("AAAA", ipv6, ipv6_err)
    print("done")
  end
  netcb.lookup(function(addrs, err)
    ipv4, ipv4_err = addrs or false, err
    if ipv6 ~= nil then all_done() end
  end, name, "A")
  netcb.lookup(function(addrs, err)
    ipv6, ipv6_err = addrs or false, err
    if ipv4 ~= nil then all_done() end
  end, name, "AAAA")
else
  -- util.async: step by step.
  local function lookup(name)
    local wait, done = async.waiter(2)
    local ipv4, ipv4_err, ipv6, ipv6_err
    netcb.lookup(function(addrs, err) ipv4, ipv4_err = addrs, err; done() end, name, "A")
    netcb.lookup(function(addrs, err) ipv6, ipv6_err = addrs, err; done() end, name, "AAAA")
    wait()
    return ipv4, ipv4_err, ipv6, ipv6_err
  end
  async.runner(function(name)
    local ipv4, ipv4_err, ipv6, ipv6_err = lookup(name)
    show("A", ipv4, ipv4_err)
    show("AAAA", ipv6, ipv6_err)
    print("done")
  end):run(name)
end
