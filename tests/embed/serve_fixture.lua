-- The actor script tests/embed/serve_test.sh serves.
local actor = require "actor"
local M = {}
local recorded = {}

function M:echo(...) return ... end
function M:nap(s) actor.sleep(s) return true end
function M:count() self.n = (self.n or 0) + 1 return self.n end
function M:fail(msg) error(msg or "boom") end
function M:square(x)
  local ok, v = msys.runInPool("CPU", function() return x * x end)
  if not ok then error(v, 0) end
  return v
end
-- one-way messages: `record` keeps them (in arrival order), `recorded`
-- says how many arrived in order 1..n
function M:record(i) recorded[#recorded + 1] = i end
function M:recorded()
  for k, v in ipairs(recorded) do if v ~= k then return -k end end
  return #recorded
end
return M
