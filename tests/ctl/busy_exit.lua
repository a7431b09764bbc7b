-- The scheduler is busy in Lua for a while, then the runtime exits: a
-- client that asked something meanwhile is told at once (ctl_live.sh).
require "actor"
local ready, secs = arg[1], tonumber(arg[2]) or 2
local f = io.open(ready, "w"); f:write("ready\n"); f:close()
local t = os.clock() + secs
while os.clock() < t do end
