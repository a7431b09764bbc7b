-- actors/demo.lua -- the first script to run.
--
-- Three runners start at once. Each sends a closure to a pool: the work runs
-- on another OS thread, in another lua_State, and the runner parks until the
-- reply arrives. Meanwhile the scheduler keeps serving the other runners.
local actor = require "actor"

local here = actor.thread_id()
print(("scheduler thread %s, pools: %s"):format(here, table.concat(actor.pools(), ", ")))

local function cpu_work(n)
  -- a CPU job: sum of squares, computed in a pool thread's own state
  local s = 0
  for i = 1, n do s = s + i * i end
  _OSTLS.jobs = (_OSTLS.jobs or 0) + 1 -- per OS thread, persists across jobs
  return s, actor.thread_id(), tostring(_G):match("0x%x+"), _OSTLS.jobs
end

local function io_work(path)
  -- an IO job: read a file in the IO pool, off the scheduler thread
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return #data, actor.thread_id(), tostring(_G):match("0x%x+")
end

local async = require "util.async"
local t0 = actor.now()
local results = {}

actor.run(function()
  -- four runners in parallel; waiter(4) joins them
  local wait, done = async.waiter(4)

  for i = 1, 3 do
    actor.spawn(function()
      local ok, sum, tid, state = msys.runInPool("CPU", function() return cpu_work(200000 * i) end)
      results[#results + 1] = ok and ("runner %d: CPU job  sum=%d  on thread %s, state %s"):format(i, sum, tid, state)
        or ("runner %d: CPU job failed: %s"):format(i, sum)
      local ok2, size, tid2, state2 = actor.call("IO", io_work, arg and arg[0] or "actors/demo.lua")
      results[#results + 1] = ok2 and ("runner %d: IO job   read %d bytes on thread %s, state %s"):format(i, size, tid2, state2)
        or ("runner %d: IO job failed: %s"):format(i, size)
      done()
    end)
  end

  -- A closure's upvalues travel with it; an error comes back as false, msg.
  local greeting = "hello from the scheduler"
  actor.spawn(function()
    local ok, msg = actor.call("CPU", function() return greeting:upper() end)
    results[#results + 1] = ("upvalue round trip: %s, %s"):format(ok, msg)
    local ok2, err = actor.call("CPU", function() error("boom") end)
    results[#results + 1] = ("error round trip:   %s, %s"):format(ok2, (tostring(err):gsub("\n.*", "")))
    done()
  end)

  wait() -- parks this runner until all four called done()
end)

table.sort(results)
for _, line in ipairs(results) do print(line) end
print(("all done in %.3f s; the scheduler thread was never blocked"):format(actor.now() - t0))
