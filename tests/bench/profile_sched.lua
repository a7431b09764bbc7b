-- Profiling driver (not a benchmark): 20k trivial jobs with scheduler
-- completions on a 2-thread pool. See docs/performance.md:
--   valgrind --tool=callgrind build/release/actor tests/bench/profile_sched.lua
local actor = require "actor"
actor.pool("B", {threads=2})
local N = 20000
local count = 0
local function job() return 1 end
actor.call("B", job)
actor.run(function()
  local function done(ok) count = count + 1 end
  for _ = 1, N do msys.runInPool("B", job, done, msys.core.ECTP_COMPLETE_CALLBACK_SCHED) end
end)
assert(count == N)
