-- Baseline: luv's thread pool (Debian's lua-luv on libuv), run by stock lua5.4.
--
--  1. 200k trivial jobs queued at once with `uv.new_work`, completions
--     counted in the loop's after-work callback; jobs per second.
--     The runtime's scheduler-completion throughput (issue 8, rows a and b)
--     is compared with this figure.
--  2. one job at a time: queue a job, and queue the next one from the
--     previous job's after-work callback; microseconds per round trip.
--
-- The pool size comes from UV_THREADPOOL_SIZE, as libuv reads it; when it is
-- not set this script sets it to 2 (libuv's own default would be 4), so the
-- comparison uses the same thread count as the runtime's benchmarks.
--
-- Output lines:
--   RESULT luv_queue_jobs_per_s <v> jobs/s
--   RESULT luv_seq_rtt_us <v> us
--
-- Usage: lua5.4 baseline_luv.lua [--smoke]

local uv = require "luv"

local smoke = false
for _, a in ipairs(arg or {}) do
  if a == "--smoke" then
    smoke = true
  else
    io.stderr:write("usage: lua5.4 baseline_luv.lua [--smoke]\n")
    os.exit(2)
  end
end

-- libuv reads the variable once, when the first job is queued.
local threads = os.getenv("UV_THREADPOOL_SIZE")
if threads == nil or threads == "" then
  threads = "2"
  uv.os_setenv("UV_THREADPOOL_SIZE", threads)
end

local QUEUED = smoke and 200 or 200000
local SEQUENTIAL = smoke and 100 or 20000
local WARMUP = smoke and 10 or 1000

-- A trivial job: the work runs in a pool thread's own Lua state.
local function work(x)
  return x + 1
end

-- 1. Everything queued at once.
local function bench_queued(n)
  local done, sum = 0, 0
  local ctx = uv.new_work(work, function(r)
    done = done + 1
    sum = sum + r
  end)
  local t0 = uv.hrtime()
  for i = 1, n do
    assert(ctx:queue(i))
  end
  uv.run("default")
  local t1 = uv.hrtime()
  assert(done == n, "lost jobs")
  assert(sum == n * (n + 1) // 2 + n, "wrong results")
  return n / ((t1 - t0) / 1e9)
end

-- 2. One job at a time.
local function bench_sequential(warmup, n)
  local total = warmup + n
  local done, t0 = 0, nil
  local ctx
  ctx = uv.new_work(work, function(r)
    assert(r == done + 1, "wrong result")
    done = done + 1
    if done == warmup then
      t0 = uv.hrtime()
    end
    if done < total then
      assert(ctx:queue(done))
    end
  end)
  assert(ctx:queue(0))
  uv.run("default")
  local t1 = uv.hrtime()
  assert(done == total, "lost jobs")
  if warmup == 0 then error("warmup must be > 0") end
  return (t1 - t0) / 1e3 / n
end

-- Start the pool's threads and their Lua states before timing anything.
bench_queued(smoke and 10 or 1000)

print(string.format("RESULT luv_queue_jobs_per_s %.0f jobs/s", bench_queued(QUEUED)))
io.stdout:flush()
print(string.format("RESULT luv_seq_rtt_us %.3f us", bench_sequential(WARMUP, SEQUENTIAL)))
io.stdout:flush()
io.stderr:write(string.format("baseline_luv: UV_THREADPOOL_SIZE=%s\n", threads))
