-- Specs for util.async (bindings/lua/util/async.lua), the drop-in
-- replacement for Prosody's util.async.
--
-- Run with plain Lua:  LUA_PATH='bindings/lua/?.lua;;' busted tests/lua/async_spec.lua
-- or with the runtime: busted --lua=actor tests/lua/async_spec.lua
--
-- Tests tagged #ours cover our own additions (runtime hooks, _TLS, trunk-only
-- fields); the rest hold for Prosody's module too.

local async = require "util.async"
-- busted runs specs in their own environment: _TLS lives in the real globals.
local _G = _G

-- Keep the log quiet (default errors would go to stderr).
local log_lines = {}
if async._set_logger then
  async._set_logger(function(source, level, fmt, ...)
    log_lines[#log_lines + 1] = { source = source, level = level, msg = string.format(fmt, ...) }
  end)
end

-- A callable table recording every call (like a luassert spy).
local function recorder(fn)
  local calls = {}
  return setmetatable({ calls = calls }, {
    __call = function(_, ...)
      calls[#calls + 1] = table.pack(...)
      if fn then return fn(...) end
    end,
  })
end

-- Watchers that log events; any other key read from the table fails.
local function strict_watchers(events)
  local function w(name)
    return function(runner, ...)
      events[#events + 1] = { name = name, runner = runner, n = select("#", ...), err = (...) }
    end
  end
  return setmetatable({ ready = w("ready"), waiting = w("waiting"), error = w("error") }, {
    __index = function(_, k) error("unexpected watcher looked up: " .. tostring(k)) end,
  })
end

local function names(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.name end
  return table.concat(t, ",")
end

-- A runner with strict watchers, its events and collected items.
local function new(func)
  local events = {}
  local r = async.runner(func, strict_watchers(events))
  return r, events
end

local function errmsg(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  return err
end

describe("util.async", function()
  describe("exports", function()
    it("has Prosody's API", function()
      for _, name in ipairs { "runner", "waiter", "guarder", "ready", "sleep", "wait_for",
          "set_nexttick", "set_schedule_function" } do
        assert.is_function(async[name], name)
      end
    end)
    it("#ours has trunk's waiting_runners and default_runner_func", function()
      assert.is_table(async.waiting_runners)
      assert.is_function(async.default_runner_func)
      local called = false
      async.default_runner_func(function() called = true end)
      assert.is_true(called)
    end)
  end)

  describe("runner()", function()
    it("starts ready, with the fields as given", function()
      local f, w, d = function() end, { ready = function() end }, { x = 1 }
      local r = async.runner(f, w, d)
      assert.equal("ready", r.state)
      assert.equal(f, r.func)
      assert.equal(w, r.watchers)
      assert.equal(d, r.data)
      assert.is_table(r.queue)
      assert.equal(0, #r.queue)
      assert.is_not_nil(r.id)
      assert.not_equal(r.id, async.runner().id)
    end)

    it("defaults func to calling the item and has a default error watcher", function()
      local r = async.runner()
      assert.is_function(r.func)
      assert.is_table(r.watchers)
      assert.is_not_nil(r.watchers.error)
      local got
      r:run(function() got = "called" end)
      assert.equal("called", got)
      assert.is_nil(r.data)
    end)

    it("default error watcher re-raises the item's error", function()
      local r = async.runner()
      assert.error_matches(function() r:run(function() error("boom here") end) end, "boom here")
      -- and the runner survives
      local got
      r:run(function() got = 1 end)
      assert.equal(1, got)
      assert.equal("ready", r.state)
    end)

    it("runs items one at a time, in order, ignoring return values", function()
      local seen = {}
      local r = new(function(item) seen[#seen + 1] = item; return "ignored", 42 end)
      local ok, state, n = r:run(1)
      assert.same({ true, "ready", 0 }, { ok, state, n })
      r:run(2)
      r:run("three")
      assert.same({ 1, 2, "three" }, seen)
    end)

    it("nil input only drains the queue", function()
      local seen = {}
      local r = new(function(item) seen[#seen + 1] = item end)
      r:run()
      assert.same({}, seen)
      assert.equal("ready", r.state)
      assert.equal(r, r:enqueue("a"))
      r:enqueue("b"):enqueue("c")
      assert.same({}, seen)
      assert.equal(3, #r.queue)
      assert.same({ true, "ready", 0 }, { r:run() })
      assert.same({ "a", "b", "c" }, seen)
      assert.equal(0, #r.queue)
    end)

    it("passes every simple value type through", function()
      local seen = {}
      local r = new(function(item) seen[#seen + 1] = item end)
      local values = { {}, 123, "hello", true, false, 1.5 }
      for _, v in ipairs(values) do r:enqueue(v) end
      r:run()
      assert.equal(#values, #seen)
      for i, v in ipairs(values) do assert.equal(v, seen[i]) end
    end)

    it("accepts callable tables as func and as watchers", function()
      local func = recorder()
      local err_w = recorder()
      local r = async.runner(func, { error = err_w })
      r:run("x")
      assert.equal(1, #func.calls)
      assert.equal("x", func.calls[1][1])
      local failing = async.runner(recorder(function() error({ code = 7 }) end), { error = err_w })
      failing:run(1)
      assert.equal(1, #err_w.calls)
      assert.equal(failing, err_w.calls[1][1])
      assert.equal(7, err_w.calls[1][2].code)
    end)

    it("onready/onwaiting/onerror set the watcher and return the runner", function()
      local r = async.runner(function() end, {})
      local a, b, c = function() end, function() end, function() end
      assert.equal(r, r:onready(a))
      assert.equal(r, r:onwaiting(b))
      assert.equal(r, r:onerror(c))
      assert.equal(a, r.watchers.ready)
      assert.equal(b, r.watchers.waiting)
      assert.equal(c, r.watchers.error)
      -- on a runner with default watchers too
      local r2 = async.runner()
      assert.equal(r2, r2:onerror(c))
      assert.equal(c, r2.watchers.error)
    end)

    it("has log()", function()
      local r = async.runner()
      assert.is_function(r.log)
      r:log("debug", "hello %s", "there")
    end)

    it("returns at once when busy, queueing the item", function()
      local wait, done
      local seen = {}
      local r = new(function(item)
        seen[#seen + 1] = item
        if item == "park" then wait, done = async.waiter(); wait() end
      end)
      assert.same({ true, "waiting", 0 }, { r:run("park") })
      assert.same({ true, "waiting", 1 }, { r:run("next") })
      assert.same({ true, "waiting", 2 }, { r:run("last") })
      assert.same({ "park" }, seen)
      done()
      assert.same({ "park", "next", "last" }, seen)
      assert.equal("ready", r.state)
      assert.equal(0, #r.queue)
    end)

    it("re-entrant run() from inside an item queues behind it", function()
      local r
      local res, qlen
      local seen = {}
      r = async.runner(function(item)
        seen[#seen + 1] = item
        if item == 1 then
          res = { r:run(2) }
          qlen = #r.queue
        end
      end, {})
      r:run(1)
      -- the running item is still in the queue while it runs
      assert.same({ true, "running", 2 }, res)
      assert.equal(2, qlen)
      assert.same({ 1, 2 }, seen)
      assert.equal(0, #r.queue)
    end)

    it("shows the running item in the queue", function()
      local r
      local inside
      r = async.runner(function(item) inside = { #r.queue, r.queue[1], r.state } end, {})
      r:run("me")
      assert.same({ 1, "me", "running" }, inside)
      assert.equal(0, #r.queue)
    end)
  end)

  describe("watchers", function()
    it("are not called at creation nor for items that never wait", function()
      local r, events = new(function() end)
      r:run(1); r:run(2); r:run()
      assert.equal("", names(events))
    end)

    it("are called only when the notified state changes, with (runner, nil)", function()
      local wait, done
      local r, events = new(function(item)
        if item == "wait" then wait, done = async.waiter(); wait() end
      end)
      r:run("wait")
      assert.equal("waiting", names(events))
      assert.equal(r, events[1].runner)
      assert.equal(1, events[1].n)
      assert.is_nil(events[1].err)
      r:run("queued while waiting")
      assert.equal("waiting", names(events))
      done()
      assert.equal("waiting,ready", names(events))
      assert.equal(1, events[2].n)
      r:run("plain")
      assert.equal("waiting,ready", names(events))
      -- done() before wait(): never observed waiting
      r:run(function() end)
      assert.equal("waiting,ready", names(events))
    end)

    it("done() before wait() neither parks nor notifies", function()
      local r, events = new(function()
        local wait, done = async.waiter()
        done()
        wait()
      end)
      assert.same({ true, "ready", 0 }, { r:run(1) })
      assert.equal("", names(events))
    end)
  end)

  describe("errors", function()
    it("work with luassert spies and mocks as func and watchers", function()
      local wait, done, last
      local func = spy.new(function(item)
        if item == "wait-error" then
          wait, done = async.waiter()
          wait()
          error("test error")
        end
        last = item
      end)
      local watchers = setmetatable(mock {
        ready = function() end, waiting = function() end, error = function() end,
      }, { __index = function(_, k) error("unexpected watcher " .. tostring(k)) end })
      local r = async.runner(func, watchers)
      r:enqueue("one"):enqueue("wait-error"):enqueue("two")
      r:run()
      done()
      assert.equal("ready", r.state)
      assert.spy(func).was.called(3)
      assert.spy(r.watchers.error).was.called(1)
      assert.spy(r.watchers.waiting).was.called(1)
      assert.spy(r.watchers.ready).was.called(1)
      assert.spy(r.watchers.ready).was.called_with(r, nil)
      assert.equal("two", last)
    end)

    it("string errors get a traceback, the runner goes on with its queue", function()
      local seen = {}
      local r, events = new(function(item)
        if item == "bad" then error("bad item") end
        seen[#seen + 1] = item
      end)
      r:enqueue("one"):enqueue("bad"):enqueue("two")
      local thread_before
      r:run()
      assert.same({ "one", "two" }, seen)
      assert.equal("error", names(events))
      local err = events[1].err
      assert.is_string(err)
      assert.truthy(err:find("bad item", 1, true))
      assert.truthy(err:find("stack traceback", 1, true))
      assert.equal(1, err:find("[^\n]*bad item"))
      assert.equal("ready", r.state)
      assert.is_nil(thread_before)
    end)

    it("non-string errors are passed unchanged", function()
      local obj = { e = "test error" }
      local r, events = new(function() error(obj) end)
      r:run(1)
      assert.equal("error", names(events))
      assert.equal(obj, events[1].err)
      assert.equal(1, events[1].n)
      assert.equal("ready", r.state)
    end)

    it("run() reports the error state when its item failed", function()
      local r = new(function() error({}) end)
      assert.same({ true, "error", 0 }, { r:run(1) })
      assert.equal("ready", r.state)
    end)

    it("an error uses a fresh coroutine for the next item", function()
      local threads = {}
      local r = new(function(item)
        threads[#threads + 1] = coroutine.running()
        if item == "bad" then error("x") end
      end)
      r:run("a"); r:run("b")
      assert.equal(threads[1], threads[2]) -- the coroutine is reused
      r:run("bad"); r:run("c")
      assert.not_equal(threads[3], threads[4])
    end)

    it("without an error watcher, errors are dropped", function()
      local r = async.runner(function(item) if item then error("dropped") end end, {})
      assert.has_no.errors(function() r:run(true) end)
      assert.equal("ready", r.state)
    end)

    it("after a wait, the error watcher then the ready watcher are called", function()
      local wait, done
      local seen = {}
      local r, events = new(function(item)
        if item == "wait-error" then
          wait, done = async.waiter()
          wait()
          error({ e = "post wait error" })
        end
        seen[#seen + 1] = item
      end)
      r:enqueue("one"):enqueue("wait-error"):enqueue("two")
      r:run()
      assert.equal("waiting", r.state)
      assert.same({ "one" }, seen)
      done()
      assert.equal("ready", r.state)
      assert.equal("waiting,error,ready", names(events))
      assert.equal("post wait error", events[2].err.e)
      assert.same({ "one", "two" }, seen)
      r:run("three")
      assert.equal("waiting,error,ready", names(events))
      assert.same({ "one", "two", "three" }, seen)
    end)

    it("after a wait, a string error gets the traceback too", function()
      local done
      local r, events = new(function()
        local w
        w, done = async.waiter()
        w()
        error("late failure")
      end)
      r:run(1)
      done()
      local err = events[2].err
      assert.truthy(err:find("late failure", 1, true))
      assert.truthy(err:find("stack traceback", 1, true))
    end)

    it("a failing watcher on the resume path is contained", function()
      local done
      local r = async.runner(function()
        local w
        w, done = async.waiter()
        w()
        error("x")
      end, { error = function() error("watcher failed") end })
      r:run(1)
      assert.has_no.errors(function() done() end)
      assert.equal("ready", r.state)
    end)
  end)

  describe("waiter()", function()
    it("#ours fails outside a runner with 'Not running in an async context'", function()
      local err = errmsg(async.waiter)
      assert.is_string(err)
      assert.equal(1, err:find("Not running in an async context", 1, true))
    end)

    it("#ours a wait() where no yield is possible raises and leaves the waiter unarmed", function()
      local done, runs, caught = nil, 0, nil
      local r, events = new(function()
        runs = runs + 1
        local wait
        wait, done = async.waiter()
        -- a table.sort comparator is a C call without continuation
        local ok, err = pcall(table.sort, { 2, 1, 3 }, function(a, b) wait(); return a < b end)
        assert(not ok)
        caught = err
      end)
      r:run(1)
      assert.matches("attempt to yield across a C%-call boundary", caught)
      assert.equal("ready", r.state)
      done() -- must not resume the runner's coroutine where it is parked now
      assert.equal(1, runs)
      assert.equal("ready", r.state)
      assert.equal(0, #events)
    end)

    it("#ours a guard where no yield is possible raises without queueing the caller", function()
      local guard = async.guarder()
      local inside, second_err, later = false, nil, 0
      local release
      local r1 = new(function()
        guard("k", function()
          inside = true
          local wait
          wait, release = async.waiter()
          wait()
        end)
      end)
      local r2 = new(function()
        local ok, err = pcall(table.sort, { 2, 1 }, function(a, b) guard("k", function() end); return a < b end)
        second_err = not ok and err
        later = later + 1
      end)
      r1:run(1)
      assert.is_true(inside)
      r2:run(1)
      assert.matches("attempt to yield across a C%-call boundary", second_err)
      release() -- the guard passes to nobody: r2 was never queued
      assert.equal(1, later)
      assert.equal("ready", r1.state)
      assert.equal("ready", r2.state)
    end)

    it("parks the runner until done()", function()
      local done
      local after = false
      local r = new(function()
        local wait
        wait, done = async.waiter()
        wait()
        after = true
      end)
      r:run(1)
      assert.equal("waiting", r.state)
      assert.is_false(after)
      done()
      assert.is_true(after)
      assert.equal("ready", r.state)
    end)

    it("waiter(3) resumes only after the third done()", function()
      local done
      local after = false
      local r = new(function()
        local wait
        wait, done = async.waiter(3)
        wait()
        after = true
      end)
      r:run(1)
      done(); assert.is_false(after); assert.equal("waiting", r.state)
      done(); assert.is_false(after); assert.equal("waiting", r.state)
      done(); assert.is_true(after); assert.equal("ready", r.state)
    end)

    it("one done() too many raises, unless allow_many", function()
      local done
      local r = new(function()
        local wait
        wait, done = async.waiter(2)
        wait()
      end)
      r:run(1)
      done(); done()
      local err = errmsg(done)
      assert.is_string(err)
      assert.truthy(err:find("done() called too many times", 1, true))
      assert.equal("done() called too many times", (err:gsub("^.-:%d+: ", "")))
      assert.has_error(done, "done() called too many times")

      local done2
      local r2 = new(function()
        local wait
        wait, done2 = async.waiter(1, true)
        wait()
      end)
      r2:run(1)
      done2()
      assert.equal("ready", r2.state)
      assert.has_no.errors(function() done2(); done2() end)
    end)

    it("keeps runners independent", function()
      local d1, d2
      local log = {}
      local r1 = new(function(i) log[#log + 1] = "r1:" .. i; local w; w, d1 = async.waiter(); w(); log[#log + 1] = "r1 done" end)
      local r2 = new(function(i) log[#log + 1] = "r2:" .. i; local w; w, d2 = async.waiter(); w(); log[#log + 1] = "r2 done" end)
      r1:run(1); r2:run(1)
      assert.equal("waiting", r1.state); assert.equal("waiting", r2.state)
      d2()
      assert.equal("waiting", r1.state); assert.equal("ready", r2.state)
      d1()
      assert.equal("ready", r1.state)
      assert.same({ "r1:1", "r2:1", "r2 done", "r1 done" }, log)
    end)

    it("done() may be called from inside another runner", function()
      local d1
      local r1 = new(function() local w; w, d1 = async.waiter(); w() end)
      r1:run(1)
      local r2 = new(function() d1() end)
      r2:run(1)
      assert.equal("ready", r1.state)
      assert.equal("ready", r2.state)
    end)

    it("works in a plain coroutine inside a runner", function()
      local inner_state
      local r = new(function()
        local co = coroutine.create(function()
          local wait, done = async.waiter()
          done()
          wait()
          inner_state = "finished"
        end)
        assert(coroutine.resume(co))
      end)
      r:run(1)
      assert.equal("finished", inner_state)
    end)
  end)

  describe("guarder()", function()
    it("lets one runner in at a time per id", function()
      local guard = async.guarder()
      local inside, max_inside = 0, 0
      local releases = {}
      local order = {}
      local function body(name)
        guard("id", function()
          inside = inside + 1
          if inside > max_inside then max_inside = inside end
          order[#order + 1] = name .. " in"
          local wait, done = async.waiter()
          releases[#releases + 1] = done
          wait()
          order[#order + 1] = name .. " out"
          inside = inside - 1
        end)
      end
      local rs = {}
      for i = 1, 3 do
        rs[i] = async.runner(function() body("r" .. i) end, {})
        rs[i]:run(true)
      end
      assert.equal(1, #releases)
      assert.same({ "r1 in" }, order)
      assert.equal("waiting", rs[2].state)
      releases[1]()
      assert.equal(2, #releases)
      releases[2]()
      releases[3]()
      assert.equal(1, max_inside)
      assert.same({ "r1 in", "r1 out", "r2 in", "r2 out", "r3 in", "r3 out" }, order)
      for i = 1, 3 do assert.equal("ready", rs[i].state) end
    end)

    it("returns an exit function without func; other ids run concurrently", function()
      local guard = async.guarder()
      local exits, order = {}, {}
      local function make(id, name)
        return async.runner(function()
          local exit = guard(id)
          order[#order + 1] = name
          exits[name] = exit
        end, {})
      end
      local a, b, c = make("x", "a"), make("x", "b"), make("y", "c")
      a:run(1); b:run(1); c:run(1)
      assert.same({ "a", "c" }, order)
      assert.equal("ready", a.state)
      assert.equal("waiting", b.state)
      assert.is_function(exits.a)
      exits.a()
      assert.same({ "a", "c", "b" }, order)
      assert.equal("ready", b.state)
      exits.b(); exits.c()
      -- the guard is free again
      local d = make("x", "d")
      d:run(1)
      assert.same({ "a", "c", "b", "d" }, order)
    end)

    it("fails outside a runner", function()
      local guard = async.guarder()
      assert.truthy(tostring(errmsg(guard, "x")):find("Not running in an async context", 1, true))
    end)
  end)

  describe("ready()", function()
    it("is false on the main thread and true in a runner or coroutine", function()
      assert.falsy(async.ready())
      local inside, in_co
      local r = new(function() inside = async.ready() end)
      r:run(1)
      assert.is_true(inside)
      coroutine.wrap(function() in_co = async.ready() end)()
      assert.is_true(in_co)
    end)
  end)

  describe("sleep()", function()
    after_each(function() async.set_schedule_function(nil) end)

    it("uses the schedule function", function()
      local queue = {}
      async.set_schedule_function(function(t, f) queue[#queue + 1] = { t, f } end)
      local after
      local r, events = new(function(item) async.sleep(5); after = item end)
      r:run("test")
      assert.equal("waiting", r.state)
      assert.is_nil(after)
      assert.equal(1, #queue)
      assert.equal(5, queue[1][1])
      assert.is_function(queue[1][2])
      assert.equal("waiting", names(events))
      queue[1][2]()
      assert.equal("test", after)
      assert.equal("ready", r.state)
      assert.equal("waiting,ready", names(events))
    end)

    it("without a schedule function fails (plain Lua) or uses the runtime's", function()
      async.set_schedule_function(nil)
      local r, events = new(function() async.sleep(0.01) end)
      r:run(1)
      if package.loaded.actor then
        assert.equal("waiting", r.state)
      else
        assert.equal("error", names(events))
        assert.truthy(tostring(events[1].err):find("configure schedule function", 1, true))
      end
    end)
  end)

  describe("wait_for()", function()
    -- A minimal thenable: settle() later calls the callbacks.
    local function deferred()
      local p = { cbs = {} }
      function p:next(ok_cb, err_cb)
        local nextp = deferred()
        self.cbs[#self.cbs + 1] = function(ok, v)
          local f = ok and ok_cb or err_cb
          if f then f(v) end
          nextp:settle(ok, v)
        end
        if self.done then self.cbs[#self.cbs](self.ok, self.v) end
        return nextp
      end
      function p:finally(f)
        return self:next(function() f() end, function() f() end)
      end
      function p:settle(ok, v)
        self.done, self.ok, self.v = true, ok, v
        for _, cb in ipairs(self.cbs) do cb(ok, v) end
      end
      return p
    end

    it("returns the value of a resolved promise", function()
      local p = deferred()
      local res
      local r = new(function() res = table.pack(async.wait_for(p)) end)
      r:run(1)
      assert.equal("waiting", r.state)
      p:settle(true, "value")
      assert.equal("ready", r.state)
      assert.same({ n = 1, "value" }, res)
    end)

    it("returns nil, err for a rejected promise", function()
      local p = deferred()
      local res
      local r = new(function() res = table.pack(async.wait_for(p)) end)
      r:run(1)
      p:settle(false, "failure")
      assert.same({ n = 2, nil, "failure" }, res)
    end)

    it("does not park for a settled promise", function()
      local p = deferred()
      p:settle(true, 42)
      local res
      local r, events = new(function() res = async.wait_for(p) end)
      r:run(1)
      assert.equal(42, res)
      assert.equal("", names(events))
    end)
  end)

  describe("set_nexttick()", function()
    after_each(function() async.set_nexttick(nil) end)

    it("defers the runner's return to ready", function()
      local queue = {}
      async.set_nexttick(function(f) assert(type(f) == "function"); queue[#queue + 1] = f end)
      local done, after
      local r, events = new(function(item)
        local wait
        wait, done = async.waiter()
        wait()
        after = item
      end)
      r:run("x")
      r:run("y")
      assert.equal(0, #queue)
      done()
      assert.equal("x", after)
      assert.equal("waiting", r.state)
      assert.equal(1, #queue)
      queue[1]()
      -- "y" ran and parked again
      assert.equal("waiting", r.state)
      done()
      assert.equal(2, #queue)
      queue[2]()
      assert.equal("y", after)
      assert.equal("ready", r.state)
      assert.equal("waiting,ready", names(events))
    end)

    it("#ours nil restores running at once", function()
      async.set_nexttick(nil)
      local done
      local r = new(function() local w; w, done = async.waiter(); w() end)
      r:run(1)
      done()
      assert.equal("ready", r.state)
    end)
  end)

  describe("#ours runtime integration", function()
    it("waiting_runners holds the time a runner began waiting", function()
      local done
      local r = new(function() local w; w, done = async.waiter(); w() end)
      assert.is_nil(async.waiting_runners[r])
      r:run(1)
      assert.is_number(async.waiting_runners[r])
      done()
      assert.is_nil(async.waiting_runners[r])
    end)

    it("_runner_of finds the runner of a coroutine", function()
      local seen
      local r = new(function() seen = async._runner_of(coroutine.running()) end)
      r:run(1)
      assert.equal(r, seen)
      assert.is_nil(async._runner_of(coroutine.running()))
      local inner
      local r2 = new(function()
        coroutine.wrap(function() inner = async._runner_of(coroutine.running()) or false end)()
      end)
      r2:run(1)
      assert.is_false(inner)
    end)

    it("_G._TLS is the runner's session table while it runs", function()
      local outer = {}
      _G._TLS = outer
      local d1, d2
      local seen = {}
      local r1 = new(function(item)
        seen[#seen + 1] = _G._TLS
        _G._TLS.who = "r1"
        local w; w, d1 = async.waiter(); w()
        seen[#seen + 1] = _G._TLS
        assert.equal("r1", _G._TLS.who)
      end)
      local r2 = new(function()
        seen[#seen + 1] = _G._TLS
        local w; w, d2 = async.waiter(); w()
        d1() -- resumes r1 from inside r2
        seen[#seen + 1] = _G._TLS
      end)
      r1:run(1)
      assert.equal(outer, _G._TLS)
      r2:run(1)
      assert.equal(outer, _G._TLS)
      d2()
      assert.equal(outer, _G._TLS)
      assert.equal(4, #seen)
      assert.equal(seen[1], seen[3]) -- r1 before and after its wait
      assert.equal(seen[2], seen[4])     -- r2 before and after resuming r1
      assert.not_equal(seen[1], seen[2])
      assert.not_equal(outer, seen[1])
      assert.equal(async._tls_of(r1), seen[1])
      assert.is_nil(outer.who)
      _G._TLS = nil
    end)

    it("_G._TLS is restored after an error and with nested runners", function()
      _G._TLS = nil
      local r = async.runner(function() _G._TLS.x = 1; error("x") end, {})
      r:run(1)
      assert.is_nil(_G._TLS)
      local inner_tls, outer_tls, back
      local inner = async.runner(function() inner_tls = _G._TLS end, {})
      local outer = async.runner(function()
        outer_tls = _G._TLS
        inner:run(1)
        back = _G._TLS
      end, {})
      outer:run(1)
      assert.not_equal(inner_tls, outer_tls)
      assert.equal(outer_tls, back)
      assert.is_nil(_G._TLS)
    end)

    it("_set_tls and _set_tls_factory choose the session table", function()
      local mine = { tag = "mine" }
      local r = async.runner(function() assert.equal(mine, _G._TLS) end, { error = function(_, e) error(e) end })
      async._set_tls(r, mine)
      r:run(1)
      async._set_tls_factory(function(runner) return { made_for = runner } end)
      local got
      local r2 = async.runner(function() got = _G._TLS.made_for end, {})
      r2:run(1)
      async._set_tls_factory(nil)
      assert.equal(r2, got)
    end)

    it("_install_defaults applies unless the user set their own", function()
      local ticks, scheduled = {}, {}
      local nt = function(f) ticks[#ticks + 1] = f end
      local sch = function(t, f) scheduled[#scheduled + 1] = f end
      local user = function(f) f() end
      async.set_nexttick(user)
      async._install_defaults(nt, sch)
      local done
      local r = new(function() local w; w, done = async.waiter(); w() end)
      r:run(1); done()
      assert.equal(0, #ticks)            -- the user's next-tick won
      assert.equal("ready", r.state)
      async.set_nexttick(nil)             -- back to the (installed) default
      r:run(1); done()
      assert.equal(1, #ticks)
      ticks[1]()
      assert.equal("ready", r.state)
      -- the installed schedule function makes sleep() work
      local slept
      local r2 = new(function() async.sleep(1); slept = true end)
      r2:run(1)
      assert.equal(1, #scheduled)
      scheduled[1]()
      assert.is_true(slept)
      -- restore Prosody's defaults
      async._install_defaults(false, false)
      async.set_nexttick(nil)
      async.set_schedule_function(nil)
    end)
  end)
end)
