-- Profiling driver (not a benchmark): N sync round trips of a 32-byte echo
-- from a runner to a 1-thread pool. Run under callgrind, see docs/performance.md:
--   valgrind --tool=callgrind build/release/actor tests/bench/profile_rtt.lua 2010
local actor = require "actor"
actor.pool("B", {threads=1})
local payload = string.rep("x", 32)
local function echo(s) return s end
actor.run(function() for _ = 1, tonumber(arg[1]) do actor.call("B", echo, payload) end end)
