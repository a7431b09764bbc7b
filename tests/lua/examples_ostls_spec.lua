-- The seed's _OSTLS example (actors/examples/ostls.lua): the marker set on
-- the scheduler thread is nil in the pool threads, and visible again in a
-- completion that runs on the scheduler.
local build = os.getenv("ACTOR_BUILD") or "build"

describe("the seed's _OSTLS example", function()
  it("prints nil in the pools and 42 in the scheduler completion", function()
    local script = [[
      local actor = require "actor"
      local session = require "actor.session"
      assert(session.loadfile("ostls", "actors/examples/ostls.lua"))
      local results = {}
      session.post(1, "validate_data", function(...) results[#results + 1] = select(2, ...) end, "msg")
      session.post(1, "validate_data_spool", function(...) results[#results + 1] = select(2, ...) end, "msg")
      actor.loop()
      print("results", results[1], results[2], msys.core.VALIDATE_CONT)
    ]]
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(script)
    f:close()
    local p = assert(io.popen(build .. "/actor " .. path .. " 2>&1"))
    local out = p:read("a")
    p:close()
    os.remove(path)
    assert.matches("CPU\tin cpu\tnil", out)
    assert.matches("CB\tcb data spool\tnil", out)
    assert.matches("CB\tcb completing\t42", out)
    assert.matches("results\t0\t0\t0", out)
  end)
end)
