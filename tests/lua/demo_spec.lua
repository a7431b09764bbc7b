-- actors/demo.lua is the first thing a newcomer runs: it must work.
local build = os.getenv("ACTOR_BUILD") or "build"

describe("actors/demo.lua", function()
  it("runs CPU and IO jobs on other threads and states and prints the results", function()
    local p = assert(io.popen(build .. "/actor actors/demo.lua 2>&1"))
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
    local sched = out:match("scheduler thread (%d+)")
    assert.is_not_nil(sched, out)
    local n = 0
    for kind, tid in out:gmatch("runner %d: (%u+) job[^\n]- on thread (%d+)") do
      assert.are_not.equal(sched, tid, kind .. " job ran on the scheduler thread")
      n = n + 1
    end
    assert.are.equal(6, n, out)
    assert.matches("upvalue round trip: true, HELLO FROM THE SCHEDULER", out)
    assert.matches("error round trip:   false, [^\n]*boom", out)
    assert.matches("all done in", out)
  end)
end)
