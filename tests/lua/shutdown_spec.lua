-- Shutdown answers every waiting caller, runs no completion twice, joins
-- every thread. Each case runs in its own `actor` process.
local build = os.getenv("ACTOR_BUILD") or "build"
local ACTOR = build .. "/actor"

local function run(script)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local p = assert(io.popen(ACTOR .. " " .. path .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  os.remove(path)
  return out, ok and 0 or code
end

describe("shutdown", function()
  it("answers parked callers with 'pool X is shutting down'", function()
    local out, code = run [[
      local actor = require "actor"
      actor.pool("LONG", { threads = 1 })
      local answers = {}
      for i = 1, 5 do
        actor.spawn(function()
          local ok, err = actor.call("LONG", function() actor.sleep(0.3) return i end)
          answers[#answers + 1] = tostring(ok) .. ":" .. tostring(err)
        end)
      end
      actor.timer(0.05, function()
        actor.shutdown(0.5)
        table.sort(answers)
        print(#answers, table.concat(answers, ","))
      end)
    ]]
    assert.are.equal(0, code)
    -- the running job finishes within the grace; the queued ones are answered
    assert.matches("5\t", out)
    assert.matches("false:pool LONG is shutting down", out)
    assert.matches("true:1", out)
  end)

  it("interrupts a runaway closure after the grace period", function()
    local out, code = run [[
      local actor = require "actor"
      actor.pool("SPIN", { threads = 1 })
      actor.spawn(function()
        print("answer", actor.call("SPIN", function() while true do end end))
      end)
      actor.timer(0.05, function() actor.shutdown(0.1) end)
    ]]
    assert.are.equal(0, code)
    assert.matches("answer\tfalse\tpool SPIN is shutting down", out)
  end)

  it("new calls after shutdown get false, message", function()
    local out = run [[
      local actor = require "actor"
      actor.shutdown()
      print(actor.call("CPU", function() return 1 end))
    ]]
    assert.matches("false\tpool CPU is shutting down", out)
  end)

  it("the program exits cleanly while pool threads are busy", function()
    local out, code = run [[
      for i = 1, 20 do msys.runInPool("IO", function() require("actor").sleep(0.05) end, true) end
      print("end of main")
    ]]
    assert.are.equal(0, code)
    assert.matches("end of main", out)
  end)
end)
