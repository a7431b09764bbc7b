-- The loop API (issue 5, point 3) and util.async on the runtime's loop:
-- actor.loop/step/run/spawn, actor.fd, now, sleep, timer/every/cancel,
-- timer callbacks in runners, 1M pending timers, 1000 concurrent sleepers,
-- guarder, wait_for, waiter(n). Every wait here is bounded.
local actor = require "actor"
local async = require "util.async"
local net = require "actor.net"

local now = actor.now

-- Drives the loop until `cond()` or `limit` seconds passed; returns cond().
local function drive(cond, limit)
  local deadline = now() + (limit or 5)
  while not cond() and now() < deadline do actor.step(0.01) end
  return cond()
end

describe("actor.now", function()
  it("is monotonic seconds", function()
    local a = now()
    assert.is_number(a)
    local b = now()
    assert.is_true(b >= a)
  end)
end)

describe("actor.run / spawn / step / loop", function()
  it("run() returns the function's results after the loop is idle", function()
    local t0 = now()
    local a, b = actor.run(function(x, y)
      actor.sleep(0.05)
      return x + y, "ok"
    end, 1, 2)
    assert.are.same({ 3, "ok" }, { a, b })
    assert.is_true(now() - t0 >= 0.05)
  end)

  it("run() raises the function's error", function()
    local ok, err = pcall(actor.run, function() error("boom", 0) end)
    assert.is_false(ok)
    -- a string error carries the runner's traceback, as util.async does
    assert.matches("^boom\nstack traceback:", err)
  end)

  it("spawn() starts a runner at once and returns it; loop() finishes it", function()
    local log = {}
    local r = actor.spawn(function(a)
      log[#log + 1] = "start " .. a
      actor.sleep(0.02)
      log[#log + 1] = "end"
    end, "x")
    assert.are.same({ "start x" }, log)
    assert.are.equal("waiting", r.state)
    assert.is_true(actor.loop(5))
    assert.are.same({ "start x", "end" }, log)
    assert.are.equal("ready", r.state)
  end)

  it("step(timeout) makes one turn and waits at most timeout", function()
    local fired = false
    local t = actor.timer(0.05, function() fired = true end)
    local t0 = now()
    actor.step(0) -- nothing due yet: returns at once
    assert.is_false(fired)
    assert.is_true(now() - t0 < 0.04)
    assert.is_true(drive(function() return fired end))
    t:cancel()
  end)

  it("loop(timeout) gives up after timeout while work is pending", function()
    local t = actor.timer(10, function() end)
    local t0 = now()
    assert.is_false(actor.loop(0.05))
    local took = now() - t0
    assert.is_true(took >= 0.04 and took < 2, tostring(took))
    t:cancel()
    assert.is_true(actor.loop(1))
  end)
end)

describe("actor.fd", function()
  it("is a descriptor that becomes readable when a reply waits for the loop", function()
    actor.loop(5)
    local fd = actor.fd()
    assert.is_number(fd)
    assert.is_false(net._test_poll(fd, 0))
    local got = false
    actor.cast({ pool = "IO", completion = function() got = true end, sched = true }, function() return 1 end)
    actor.step(0) -- sends the held submission
    -- a host polls the descriptor instead of blocking in the loop
    assert.is_true(got or net._test_poll(fd, 5))
    assert.is_true(drive(function() return got end))
    actor.loop(5)
    assert.is_false(net._test_poll(fd, 0))
  end)
end)

describe("actor.fd and timers", function()
  it("becomes readable when a timer is due, and quiet again once it fired", function()
    actor.loop(5)
    local fd = actor.fd()
    local fired = false
    local t0 = actor.now()
    local t = actor.timer(0.1, function() fired = true end)
    assert.is_false(net._test_poll(fd, 0))
    -- a host that only polls the descriptor still wakes for the timer
    assert.is_true(net._test_poll(fd, 5))
    local waited = actor.now() - t0
    assert.is_true(waited >= 0.09, "woke after " .. waited .. " s")
    actor.step(0)
    assert.is_true(fired)
    assert.is_false(net._test_poll(fd, 0))
    t:cancel()
  end)

  it("follows the earliest timer when timers are added and cancelled", function()
    actor.loop(5)
    local fd = actor.fd()
    local late = actor.timer(5, function() end)
    local early = actor.timer(0.05, function() end)
    early:cancel() -- the descriptor now waits for the late one only
    assert.is_false(net._test_poll(fd, 0.15))
    local soon = actor.timer(0.05, function() end)
    assert.is_true(net._test_poll(fd, 2))
    actor.step(0)
    assert.is_false(soon:active())
    late:cancel()
    actor.step(0)
    assert.is_false(net._test_poll(fd, 0))
  end)

  it("becomes readable when a next-tick function is queued from outside the loop", function()
    actor.loop(5)
    local fd = actor.fd()
    local ran = false
    actor.nexttick(function() ran = true end)
    assert.is_true(net._test_poll(fd, 0))
    actor.step(0)
    assert.is_true(ran)
    assert.is_false(net._test_poll(fd, 0))
  end)
end)

describe("actor.timeout", function()
  it("tells a polling host when the next timer is due", function()
    actor.loop(5)
    assert.is_nil(actor.timeout())
    local fired = false
    local t = actor.timer(0.2, function() fired = true end)
    local left = actor.timeout()
    assert.is_true(left > 0.1 and left <= 0.2, tostring(left))
    -- a host waits on the descriptor with that timeout, then steps
    net._test_poll(actor.fd(), left + 0.01)
    actor.step(0)
    assert.is_true(fired)
    assert.is_nil(actor.timeout())
    t:cancel()
  end)
end)

describe("actor.sleep", function()
  it("parks a runner and blocks the main chunk while serving the loop", function()
    local other = false
    actor.spawn(function() actor.sleep(0.02); other = true end)
    local t0 = now()
    actor.sleep(0.1) -- main chunk: drives the loop meanwhile
    assert.is_true(now() - t0 >= 0.1)
    assert.is_true(other)
  end)

  it("util.async.sleep works without configuration", function()
    local done = false
    actor.spawn(function() async.sleep(0.02); done = true end)
    assert.is_true(drive(function() return done end))
  end)
end)

describe("actor.timer / actor.every", function()
  it("timer fires once, after its delay", function()
    local t0, at, n = now(), nil, 0
    actor.timer(0.05, function() n = n + 1; at = now() end)
    assert.is_true(drive(function() return at ~= nil end))
    actor.loop(1)
    assert.are.equal(1, n)
    assert.is_true(at - t0 >= 0.05)
  end)

  it("a cancelled timer never fires", function()
    local fired = false
    local t = actor.timer(0.02, function() fired = true end)
    t:cancel()
    t:cancel() -- twice is harmless
    actor.sleep(0.06)
    assert.is_false(fired)
  end)

  it("every fires repeatedly until cancelled", function()
    local n = 0
    local t
    t = actor.every(0.01, function()
      n = n + 1
      if n == 3 then t:cancel() end
    end)
    assert.is_true(drive(function() return n >= 3 end))
    actor.sleep(0.05)
    assert.are.equal(3, n)
  end)

  it("timer callbacks run in runners, so they may park", function()
    local in_runner, parked_ok = nil, false
    actor.timer(0, function()
      local co, main = coroutine.running()
      in_runner = not main and async._runner_of(co) ~= nil
      actor.sleep(0.02)            -- parks this callback's runner
      local wait, done = async.waiter()
      actor.timer(0.01, done)
      wait()
      parked_ok = true
    end)
    assert.is_true(drive(function() return parked_ok end))
    assert.is_true(in_runner)
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() actor.timer(-1, function() end) end)
    assert.has_error(function() actor.timer(1, "x") end)
    assert.has_error(function() actor.every(0, function() end) end)
  end)

  it("holds 1M pending timers, then cancels them", function()
    local N = 1000000
    local base = actor.pending()
    collectgarbage(); collectgarbage()
    local kb0 = collectgarbage("count")
    local t0 = now()
    local timers, f = {}, function() error("must not fire") end
    for i = 1, N do timers[i] = actor.timer(3600 + i % 1000, f) end
    local created = now() - t0
    collectgarbage()
    local per = (collectgarbage("count") - kb0) * 1024 / N
    assert.is_true(actor.pending() >= base + N)
    actor.step(0) -- a loop turn with 1M armed timers
    t0 = now()
    for i = 1, N do timers[i]:cancel() end
    local cancelled = now() - t0
    assert.is_true(actor.pending() <= base)
    timers = nil -- luacheck: ignore 311
    collectgarbage()
    -- generous bounds: this is a functional check, not a benchmark
    assert.is_true(created < 20, "creating took " .. created)
    assert.is_true(cancelled < 20, "cancelling took " .. cancelled)
    assert.is_true(per < 1024, "bytes per timer: " .. per)
  end)
end)

describe("util.async on the loop", function()
  it("1000 runners sleeping 0.3 s at once finish in about 0.3 s", function()
    local finished = 0
    local t0 = now()
    for _ = 1, 1000 do
      actor.spawn(function() async.sleep(0.3); finished = finished + 1 end)
    end
    assert.is_true(drive(function() return finished == 1000 end, 10))
    local took = now() - t0
    assert.is_true(took >= 0.3, tostring(took))
    assert.is_true(took < 1.5, tostring(took))
  end)

  it("a guarder lets one runner in at a time", function()
    local guard = async.guarder()
    local inside, max_inside, order = 0, 0, {}
    local finished = 0
    for i = 1, 5 do
      actor.spawn(function()
        guard("key", function()
          inside = inside + 1
          if inside > max_inside then max_inside = inside end
          order[#order + 1] = i
          async.sleep(0.01)
          inside = inside - 1
        end)
        finished = finished + 1
      end)
    end
    assert.are.same({ 1 }, order) -- the others wait for the guard
    assert.is_true(drive(function() return finished == 5 end))
    assert.are.equal(1, max_inside)
    assert.are.same({ 1, 2, 3, 4, 5 }, order)
  end)

  it("a guarder with an exit function and distinct ids", function()
    local guard = async.guarder()
    local log = {}
    actor.spawn(function()
      local exit = guard("a"); log[#log + 1] = "a1 in"; async.sleep(0.02); log[#log + 1] = "a1 out"; exit()
    end)
    actor.spawn(function()
      local exit = guard("b"); log[#log + 1] = "b in"; exit()
    end)
    actor.spawn(function()
      local exit = guard("a"); log[#log + 1] = "a2 in"; exit()
    end)
    assert.is_true(actor.loop(5))
    assert.are.same({ "a1 in", "b in", "a1 out", "a2 in" }, log)
  end)

  -- A minimal promise: anything with :next and :finally.
  local function promise()
    local p = { cbs = {}, fin = {} }
    function p:next(ok, fail) self.ok, self.fail = ok, fail; return self end
    function p:finally(f) self.fin[#self.fin + 1] = f; return self end
    function p:resolve(v) if self.ok then self.ok(v) end; for _, f in ipairs(self.fin) do f() end end
    function p:reject(e) if self.fail then self.fail(e) end; for _, f in ipairs(self.fin) do f() end end
    return p
  end

  it("wait_for works with any object that has :next and :finally", function()
    local p1, p2 = promise(), promise()
    local r1, r2
    actor.spawn(function() r1 = { async.wait_for(p1) } end)
    actor.spawn(function() r2 = { async.wait_for(p2) } end)
    actor.timer(0.01, function() p1:resolve("value") end)
    actor.timer(0.02, function() p2:reject("bad") end)
    assert.is_true(drive(function() return r1 ~= nil and r2 ~= nil end))
    assert.are.same({ "value" }, r1)
    assert.are.same({ nil, "bad" }, r2)
  end)

  it("waiter(3) resumes only after the third done()", function()
    local resumed = false
    local wait, done
    local r = actor.spawn(function()
      wait, done = async.waiter(3)
      wait()
      resumed = true
    end)
    assert.are.equal("waiting", r.state)
    done(); actor.step(0); assert.is_false(resumed)
    done(); actor.step(0); assert.is_false(resumed)
    done() -- from the main chunk: resumes at once
    assert.is_true(resumed)
    assert.has_error(function() done() end, "done() called too many times")
  end)

  it("done() from a timer callback resumes a parked runner", function()
    local resumed = false
    actor.spawn(function()
      local wait, done = async.waiter(2)
      actor.timer(0.01, done)
      actor.timer(0.02, done)
      wait()
      resumed = true
    end)
    assert.is_true(drive(function() return resumed end))
  end)
end)
