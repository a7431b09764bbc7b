-- The foundation (issue 2): a closure travels to a pool thread with its
-- upvalues, runs in that thread's own state, and the reply resumes the
-- parked caller; the main chunk drives the loop itself.
local actor = require "actor"

describe("runInPool (sync)", function()
  it("runs the closure on another OS thread, in another state", function()
    local here = actor.thread_id()
    local ok, tid, g = msys.runInPool("CPU", function() return actor.thread_id(), tostring(_G) end)
    assert.is_true(ok)
    assert.are_not.equal(here, tid)
    assert.are_not.equal(tostring(_G), g)
  end)

  it("returns true, results... like pcall", function()
    assert.are.same({ true, 1, "two", { 3 } },
      { msys.runInPool("CPU", function() return 1, "two", { 3 } end) })
  end)

  it("carries plain upvalues and resolves globals in the worker", function()
    local n, s, t = 41, "str", { a = { 1, 2 }, b = true }
    local ok, r1, r2, r3, gtype = msys.runInPool("IO", function()
      return n + 1, s .. "!", t.a[2] + (t.b and 1 or 0), type(msys)
    end)
    assert.is_true(ok)
    assert.are.same({ 42, "str!", 3, "table" }, { r1, r2, r3, gtype })
  end)

  it("accepts a pool id as well as a name", function()
    local id = msys.threadpool.find("CPU")
    assert.is_number(id)
    assert.are.same({ true, "x" }, { msys.runInPool(id, function() return "x" end) })
  end)

  it("returns false, message, traceback for an error and the thread survives", function()
    local p = actor.pool("ONE", { threads = 1 })
    local ok1, tid1 = p:call(function() return actor.thread_id() end)
    local ok, err, tb = msys.runInPool("ONE", function() error("boom") end)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.matches("stack traceback", tb)
    local ok2, tid2 = p:call(function() return actor.thread_id() end)
    assert.is_true(ok1 and ok2)
    assert.are.equal(tid1, tid2)
  end)

  it("passes non-string error values unchanged", function()
    local ok, err = msys.runInPool("CPU", function() error({ code = 7 }) end)
    assert.is_false(ok)
    assert.are.same({ code = 7 }, err)
  end)

  it("raises for misuse, naming the argument", function()
    assert.has_error(function() msys.runInPool("NOPE", function() end) end,
      "bad argument #1 to 'runInPool' (no such pool: NOPE)")
    assert.has_error(function() msys.runInPool("CPU", 42) end,
      "bad argument #2 to 'runInPool' (function expected, got number)")
    assert.has_error(function() msys.runInPool({}, function() end) end,
      "bad argument #1 to 'runInPool' (pool name or id expected, got table)")
  end)

  it("raises inside a coroutine that is not a runner", function()
    local co = coroutine.create(function() return msys.runInPool("CPU", function() end) end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("not a runner", err)
  end)
end)

describe("runners park on pool replies", function()
  it("two runners each waiting on a 0.6 s job finish together", function()
    local t0 = actor.now()
    local done = 0
    for _ = 1, 2 do
      actor.spawn(function()
        local ok = msys.runInPool("IO", function() actor.sleep(0.6) return true end)
        assert(ok)
        done = done + 1
      end)
    end
    actor.loop()
    local dt = actor.now() - t0
    assert.are.equal(2, done)
    assert.is_true(dt >= 0.59, "too fast: " .. dt)
    assert.is_true(dt < 1.0, "not concurrent: " .. dt)
  end)

  it("the main chunk keeps serving runners while it waits", function()
    local ticks = 0
    actor.spawn(function()
      for _ = 1, 5 do actor.sleep(0.02) ticks = ticks + 1 end
    end)
    local ok = msys.runInPool("IO", function() actor.sleep(0.3) return true end)
    assert.is_true(ok)
    assert.are.equal(5, ticks)
  end)

  it("actor.run returns the function's results", function()
    assert.are.same({ 3, "a" }, { actor.run(function(x)
      local _, v = actor.call("CPU", function(y) return y + 1 end, x)
      return v, "a"
    end, 2) })
  end)

  it("actor.run raises the function's error", function()
    assert.has_error(function() actor.run(function() error("inner", 0) end) end)
  end)
end)

describe("_OSTLS", function()
  it("set on the scheduler thread is not seen in a pool thread", function()
    _OSTLS.async_t_marker = 42
    local ok, v = msys.runInPool("CPU", function() return _OSTLS.async_t_marker end)
    assert.is_true(ok)
    assert.is_nil(v)
    assert.are.equal(42, _OSTLS.async_t_marker)
  end)

  it("persists across jobs on the same worker thread", function()
    local p = actor.pool("OSTLS1", { threads = 1 })
    p:call(function() _OSTLS.count = (_OSTLS.count or 0) + 1 end)
    local ok, c = p:call(function() _OSTLS.count = (_OSTLS.count or 0) + 1 return _OSTLS.count end)
    assert.is_true(ok)
    assert.are.equal(2, c)
  end)
end)

describe("many sync calls", function()
  it("100k sequential calls from the main chunk all answer (and leak nothing: see the asan preset)", function()
    local sum = 0
    for i = 1, 100000 do
      local ok, v = actor.call("CPU", function(x) return x * 2 end, i)
      assert(ok)
      sum = sum + v
    end
    assert.are.equal(100000 * 100001, sum)
  end)
end)

describe("a call where the runner cannot yield", function()
  -- A table.sort comparator is a C call without continuation: the caller
  -- cannot park there. The call raises, and nothing is left behind that
  -- would resume the runner later at another place where it waits.
  it("raises, and a later sleep of the same runner is not cut short", function()
    local err, slept, runs = nil, nil, 0
    actor.run(function()
      runs = runs + 1
      local ok, e = pcall(table.sort, { 2, 1, 3 }, function(a, b)
        actor.call("CPU", function() return 1 end)
        return a < b
      end)
      assert(not ok)
      err = e
      local t0 = actor.now()
      actor.sleep(0.2)
      slept = actor.now() - t0
    end)
    assert.matches("attempt to yield across a C%-call boundary", err)
    assert.is_true(slept >= 0.19, "sleep cut short: " .. tostring(slept))
    assert.are.equal(1, runs)
  end)
end)

describe("misuse errors", function()
  it("name the caller's line, from a runner and from the main chunk", function()
    local errs = {}
    local function try(f) local ok, e = pcall(f); assert(not ok); errs[#errs + 1] = e end
    actor.run(function()
      try(function() local r = actor.call("CPU", 42) return r end)
      try(function() local r = msys.runInPool("CPU", 42) return r end)
      try(function() local r = actor.cast("CPU", 42) return r end)
      try(function() local r = actor.call("NOPE", print) return r end)
    end)
    try(function() local r = actor.call("CPU", 42) return r end)
    assert.are.equal(5, #errs)
    for _, e in ipairs(errs) do
      assert.matches("^[^:]*runtime_spec%.lua:%d+: bad argument #%d to '%a+'", e)
    end
  end)
end)
