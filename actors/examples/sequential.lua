-- Sequential example (Prosody's util.async docs): wait, then a DNS lookup,
-- then an HTTP GET, one after the other.
--
--   actor actors/examples/sequential.lua [--callbacks] [--delay S] [--url URL]
--
-- Defaults: delay $EXAMPLE_DELAY or 5 seconds, URL $EXAMPLE_URL or
-- http://example.com/. The lookup is of the URL's host. With --callbacks
-- the same task runs written with nested callbacks (the "pyramid of
-- doom"). Both print the same lines; the exit status is 1 on failure.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local async = require "util.async"
local actor = require "actor"
local netcb = require "netcb"

local opts = netcb.args(arg, {
  callbacks = false,
  delay = os.getenv("EXAMPLE_DELAY") or "5",
  url = os.getenv("EXAMPLE_URL") or "http://example.com/",
})
local delay = assert(tonumber(opts.delay), "--delay: a number of seconds expected")
local url = opts.url
local host = assert(url:match("^%a+://%[?([^/:%]]+)"), "--url: cannot find the host")

local t0 = actor.now()
local function report_wait()
  print(("waited %g s"):format(delay) .. (actor.now() - t0 >= delay - 0.01 and "" or " (too early!)"))
end
local function report_lookup(addrs, err)
  if not addrs then
    print(host .. " A: error: " .. tostring(err)); os.exit(1)
  end
  print(host .. " A: " .. table.concat(addrs, " "))
end
local function report_http(body, code)
  if not body then
    print("GET " .. url .. ": error: " .. tostring(code)); os.exit(1)
  end
  print(("GET %s: %d, %d bytes"):format(url, code, #body))
  print(body)
end

if opts.callbacks then
  -- The pyramid of doom.
  netcb.add_task(delay, function()
    report_wait()
    netcb.lookup(function(addrs, err)
      report_lookup(addrs, err)
      netcb.request(url, nil, function(body, code)
        report_http(body, code)
      end)
    end, host, "A")
  end)
else
  -- util.async: flat.
  local function sleep(s)
    local wait, done = async.waiter()
    netcb.add_task(s, done)
    wait()
  end
  local function lookup(name, qtype)
    local wait, done = async.waiter()
    local addrs, err
    netcb.lookup(function(a, e) addrs, err = a, e; done() end, name, qtype)
    wait()
    return addrs, err
  end
  local function request(u)
    local wait, done = async.waiter()
    local body, code
    netcb.request(u, nil, function(b, c) body, code = b, c; done() end)
    wait()
    return body, code
  end
  async.runner(function()
    sleep(delay)
    report_wait()
    report_lookup(lookup(host, "A"))
    report_http(request(url))
  end):run(true)
end
