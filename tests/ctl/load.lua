-- A runtime under load for tests/ctl/ctl_live.sh (and the samples in
-- docs/actorctl.md): three runners keep the CPU pool busy, one parks in
-- actor.sleep at a known line (PARK_LINE below), and a file tells the test
-- that everything started.
local actor = require "actor"
local ready = arg[1]
local function spin(n) local x = 0 for i = 1, n do x = x + i end return x end
for _ = 1, 3 do
  actor.spawn(function()
    while true do
      actor.call("CPU", spin, 2000000)
      actor.sleep(0.01)
    end
  end)
end
actor.spawn(function()
  actor.sleep(3600) -- PARK_LINE
end)
actor.timer(0.2, function()
  if ready then local f = io.open(ready, "w"); f:write("ready\n"); f:close() end
end)
