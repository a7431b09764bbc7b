-- Runtime benchmarks of issue 8, run by the actor program:
--   build/actor tests/bench/bench_runtime.lua [--smoke] [a|b|c|e|f ...]
-- Prints RESULT lines (see tests/bench/run.sh). Pools are sized from
-- BENCH_THREADS (default 2) so luv gets the same thread count.
local actor = require "actor"

local smoke = false
local only = {}
for _, a in ipairs(arg) do
  if a == "--smoke" then smoke = true else only[a] = true end
end
local function want(k) return next(only) == nil or only[k] end
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")
local now = actor.now

actor.pool("BENCH", { threads = threads })

local function result(name, value, unit)
  print(("RESULT %s %.6g %s"):format(name, value, unit))
end

-- (a) N trivial jobs, each with a scheduler completion
if want("a") then
  local N = smoke and 2000 or 200000
  local count = 0
  local t0 = now()
  actor.run(function()
    local function job() return 1 end
    local function done(ok) if ok then count = count + 1 end end
    for _ = 1, N do
      msys.runInPool("BENCH", job, done, msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
    end
  end)
  local dt = now() - t0
  assert(count == N, "lost completions: " .. count)
  result("sched_jobs_per_s", N / dt, "jobs/s")
end

-- (b) R runners, each making K sync calls
if want("b") then
  local R, K = smoke and 20 or 1000, smoke and 10 or 200
  local count = 0
  local t0 = now()
  actor.run(function()
    local function job(x) return x end
    for _ = 1, R do
      actor.spawn(function()
        for k = 1, K do
          local ok, v = actor.call("BENCH", job, k)
          if ok and v == k then count = count + 1 end
        end
      end)
    end
  end)
  local dt = now() - t0
  assert(count == R * K, "lost calls: " .. count)
  result("runners_sync_jobs_per_s", R * K / dt, "jobs/s")
end

-- (c) sequential sync round trip, one job at a time, from a runner
if want("c") then
  local N = smoke and 200 or 20000
  local payload = string.rep("x", 32)
  local dt
  actor.run(function()
    local function echo(s) return s end
    for _ = 1, 100 do actor.call("BENCH", echo, payload) end -- warm
    local t0 = now()
    for _ = 1, N do actor.call("BENCH", echo, payload) end
    dt = now() - t0
  end)
  result("sync_rtt_us", dt / N * 1e6, "us")
end

-- (e) CPU-bound closure (~2 ms of arithmetic) on pools of 1..threads
if want("e") then
  local function spin()
    local x = 0
    for i = 1, 200000 do x = x + (i % 7) * 3 end
    return x
  end
  local jobs = smoke and 4 or 200
  local rate = {}
  for n = 1, threads do
    actor.pool("SPEED" .. n, { threads = n })
    actor.call("SPEED" .. n, spin) -- start the threads
    local t0 = now()
    local left = jobs
    actor.run(function()
      for _ = 1, jobs do
        msys.runInPool("SPEED" .. n, spin, function() left = left - 1 end,
          msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
      end
    end)
    assert(left == 0)
    rate[n] = jobs / (now() - t0)
  end
  result("cpu_job_ms_1t", 1000 / rate[1], "ms")
  for n = 2, threads do result("cpu_speedup_" .. n .. "t", rate[n] / rate[1], "x") end
end

-- (f) many runners, each parked on an in-flight sync call
if want("f") then
  local N = smoke and 1000 or 100000
  local function rss_kb()
    local f = io.open("/proc/self/status")
    local s = f:read("a")
    f:close()
    return tonumber(s:match("VmRSS:%s*(%d+)"))
  end
  actor.pool("PARK", { threads = threads })
  actor.call("PARK", function() end)
  collectgarbage()
  local before = rss_kb()
  local peak, done = before, 0
  actor.run(function()
    local function job(i) return i end
    for i = 1, N do
      actor.spawn(function()
        local ok, v = actor.call("PARK", job, i)
        if ok and v == i then done = done + 1 end
      end)
    end
    peak = math.max(peak, rss_kb())
  end)
  assert(done == N, "lost parked calls: " .. done)
  result("parked_caller_rss_bytes", (peak - before) * 1024 / N, "bytes")
end
