-- netcb: a callback-style network API in the manner of Prosody's net.adns,
-- net.http and util.timer, built on the actor runtime. The examples use it
-- to show the same task written with callbacks and with util.async.
--
--   netcb.lookup(handler, name, qtype)   handler(addresses | nil, err)
--   netcb.request(url, options, handler) handler(body, code | nil, err)
--   netcb.add_task(delay, handler)       handler() after `delay` seconds
--
-- The blocking work (getaddrinfo, the HTTP transaction) runs in the IO pool
-- through actor.net; the handler runs on the scheduler, in its own runner
-- (msys.core.ECTP_COMPLETE_CALLBACK_SCHED), so it may itself wait.
local actor = require "actor"

local SCHED = msys.core.ECTP_COMPLETE_CALLBACK_SCHED
local M = {}

function M.lookup(handler, name, qtype)
  msys.runInPool("IO", function()
    return require("actor.net").resolve(name, qtype)
  end, function(ok, addrs, err)
    if ok then handler(addrs, err) else handler(nil, addrs) end
  end, SCHED)
end

function M.request(url, options, handler)
  local timeout = options and options.timeout or 30
  msys.runInPool("IO", function()
    return require("actor.net").http_get(url, timeout)
  end, function(ok, code, body)
    if not ok then return handler(nil, code) end     -- the job itself failed
    if code == nil then return handler(nil, body) end -- http_get: nil, err
    handler(body, code)
  end, SCHED)
end

function M.add_task(delay, handler)
  return actor.timer(delay, handler)
end

-- Command line: --name value or --name=value, then positional arguments.
function M.args(argv, defaults)
  local o, pos = {}, {}
  for k, v in pairs(defaults) do o[k] = v end
  local i = 1
  while argv and argv[i] do
    local a = argv[i]
    local k, v = a:match("^%-%-([%w_]+)=(.*)$")
    if k then o[k] = v
    elseif a:match("^%-%-[%w_]+$") then
      k = a:sub(3)
      if type(defaults[k]) == "boolean" then o[k] = true
      else i = i + 1; o[k] = argv[i] end
    else pos[#pos + 1] = a end
    i = i + 1
  end
  return o, pos
end

return M
