-- The C fronts of msys.runInPool, actor.call and actor.cast
-- (bindings/lhot.c): a sync call from a runner parks and is resumed from C;
-- a scheduler completion runs in a pooled runner resumed from C. Every
-- test runs its callers inside runners (actor.run / actor.spawn) so that
-- these paths, not the main chunk's, are the ones exercised; the last
-- groups check that what the fronts hand back to Lua still behaves.
local actor = require "actor"
local async = require "util.async"

local SCHED = msys.core.ECTP_COMPLETE_CALLBACK_SCHED
local POOLCB = msys.core.ECTP_COMPLETE_CALLBACK

-- In a runner: polls until pred() is true or `limit` seconds (default 3)
-- passed; returns pred()'s last value. Only a guard against hanging.
local function wait_until(pred, limit)
  local deadline = actor.now() + (limit or 3)
  while not pred() and actor.now() < deadline do actor.sleep(0.002) end
  return pred()
end

-- In a runner: runs fn in `pool` with a scheduler completion and waits for
-- the completion. Returns what the completion saw: its arguments (packed),
-- its coroutine, its runner, its _TLS, and inside() called in it.
local function complete(pool, fn, inside)
  local wait, done = async.waiter()
  local rec
  msys.runInPool(pool, fn, function(...)
    rec = {
      args = table.pack(...),
      co = coroutine.running(),
      runner = actor.context(),
      tls = _TLS,
      seen = inside and inside() or nil,
    }
    done()
  end, SCHED)
  wait()
  return rec
end

describe("the C fronts", function()
  it("are installed for runInPool, call and cast", function()
    -- otherwise every other test here would only test the Lua paths
    assert.are.equal("C", debug.getinfo(msys.runInPool, "S").what)
    assert.are.equal("C", debug.getinfo(actor.call, "S").what)
    assert.are.equal("C", debug.getinfo(actor.cast, "S").what)
  end)
end)

describe("sync call from a runner", function()
  it("returns true and every result, tables included, nils kept", function()
    local r1, r2, n
    actor.run(function()
      r1 = { actor.call("CPU", function(a, b) return a + b, "two", { 3, { x = 4 } } end, 1, 0) }
      r2 = { msys.runInPool("CPU", function() return { k = "v" }, false end) }
      n = select("#", actor.call("CPU", function() return nil, 2, nil end))
    end)
    assert.are.same({ true, 1, "two", { 3, { x = 4 } } }, r1)
    assert.are.same({ true, { k = "v" }, false }, r2)
    assert.are.equal(4, n)
  end)

  it("returns false, message, traceback for a closure that raises", function()
    local res, n
    actor.run(function()
      res = { actor.call("CPU", function() error("hot call boom") end) }
      n = select("#", msys.runInPool("CPU", function() error({ code = 9 }) end))
      local ok, e = msys.runInPool("CPU", function() error({ code = 9 }) end)
      res.tbl = { ok, e }
    end)
    assert.is_false(res[1])
    assert.matches("hot call boom", res[2], 1, true)
    assert.is_string(res[3])
    assert.matches("stack traceback", res[3], 1, true)
    assert.is_true(n >= 2)
    assert.are.same({ false, { code = 9 } }, res.tbl)
  end)

  it("ten sequential calls in one runner each get their own result", function()
    local got = {}
    actor.run(function()
      for i = 1, 10 do
        if i % 2 == 0 then
          got[i] = { actor.call("CPU", function(x) return x * x, { x } end, i) }
        else
          got[i] = { msys.runInPool("CPU", function() return i * i, { i } end) }
        end
      end
    end)
    for i = 1, 10 do assert.are.same({ true, i * i, { i } }, got[i]) end
  end)

  it("50 runners calling at once each get their own results", function()
    local got, finished = {}, 0
    actor.run(function()
      local wait, done = async.waiter(50)
      for i = 1, 50 do
        actor.spawn(function()
          local mine = {}
          for k = 1, 3 do
            -- uneven durations so that replies come back out of order
            local ok, a, t = actor.call("CPU", function(x, y)
              if (x + y) % 3 == 0 then actor.sleep(0.003) end
              return x * 100 + y, { x, y }
            end, i, k)
            mine[k] = { ok, a, t }
          end
          got[i] = mine
          done()
        end)
      end
      wait()
      finished = 50
    end)
    assert.are.equal(50, finished)
    for i = 1, 50 do
      for k = 1, 3 do assert.are.same({ true, i * 100 + k, { i, k } }, got[i][k]) end
    end
  end)

  it("an error raised after the runner was resumed reaches its error watcher", function()
    -- actor.run's runner: its error becomes actor.run's
    local ok, err = pcall(actor.run, function()
      local ok1, v = actor.call("CPU", function() return "fine" end)
      assert(ok1 and v == "fine")
      error("raised after the reply", 0)
    end)
    assert.is_false(ok)
    assert.matches("raised after the reply", tostring(err), 1, true)
    -- a runner of one's own: its "error" watcher, and it serves the next item
    local seen = {}
    actor.run(function()
      local r = async.runner(function(x)
        local _, v = actor.call("CPU", function(y) return y end, x)
        if v == "bad" then error("item failed: " .. v, 0) end
        seen[#seen + 1] = v
      end, { error = function(_, e) seen[#seen + 1] = "error: " .. tostring(e) end })
      r:run("bad")
      r:run("good") -- queued behind the failing item
      wait_until(function() return #seen >= 2 end)
    end)
    assert.are.equal(2, #seen)
    assert.matches("^error: .*item failed: bad", seen[1])
    assert.are.equal("good", seen[2])
  end)

  it("raises misuse errors, naming the caller's line where the Lua paths did", function()
    -- (no tail calls below: a tail call would hide the caller's line)
    local errs, line = {}, {}
    actor.run(function()
      local function try(k, f)
        local ok, e = pcall(f)
        errs[k] = ok and "no error" or e
      end
      try("call", function()
        line.call = debug.getinfo(1, "l").currentline + 1
        local r = actor.call("NOPE_HOT", function() end)
        return r
      end)
      try("rip", function()
        line.rip = debug.getinfo(1, "l").currentline + 1
        local r = msys.runInPool("NOPE_HOT", function() end)
        return r
      end)
      try("cast", function()
        line.cast = debug.getinfo(1, "l").currentline + 1
        local r = actor.cast(7777, function() end)
        return r
      end)
      try("mode", function()
        line.mode = debug.getinfo(1, "l").currentline + 1
        local r = msys.runInPool("CPU", function() end, 5)
        return r
      end)
      try("fn", function() local r = actor.call("CPU", 42) return r end)
      try("co", coroutine.wrap(function() local r = actor.call("CPU", function() end) return r end))
    end)
    local function at(k) return "^[^:]*runtime_hot_spec%.lua:" .. line[k] .. ": " end
    assert.matches(at("call") .. "bad argument #1 to 'call' %(no such pool: NOPE_HOT%)$", errs.call)
    assert.matches(at("rip") .. "bad argument #1 to 'runInPool' %(no such pool: NOPE_HOT%)$", errs.rip)
    assert.matches(at("cast") .. "bad argument #1 to 'cast' %(no such pool: 7777%)$", errs.cast)
    assert.matches(at("mode") .. "bad argument #3 to 'runInPool' %(boolean or completion function expected, got number%)$",
      errs.mode)
    assert.matches("bad argument #2 to 'call' (function expected, got number)", errs.fn, 1, true)
    assert.matches("not a runner", errs.co, 1, true)
  end)
end)

describe("_TLS and sync calls", function()
  it("a closure's _TLS writes merge into the caller's own table", function()
    local res
    actor.run(function()
      local before = _TLS
      _TLS.user = "alice"
      local ok, seen = actor.call("CPU", function() _TLS.k = "v" return _TLS.user end)
      local ok2 = msys.runInPool("CPU", function() _TLS.k2 = _TLS.k .. "2" end)
      res = { ok = ok and ok2, seen = seen, same = _TLS == before, k = _TLS.k, k2 = before.k2 }
    end)
    assert.are.same({ ok = true, seen = "alice", same = true, k = "v", k2 = "v2" }, res)
  end)

  it("two runners parked at once keep separate _TLS; the others' are untouched", function()
    local seen, main = {}, {}
    local outside = _TLS
    actor.run(function()
      local wait, done = async.waiter(2)
      local mine = _TLS
      for _, who in ipairs { "a", "b" } do
        actor.spawn(function()
          local t = _TLS
          _TLS.who = who
          local ok = actor.call("CPU", function(me)
            actor.sleep(0.01)
            _TLS.echo = _TLS.who .. me
            return true
          end, who)
          seen[who] = { tls = t, same = _TLS == t, who = _TLS.who, echo = _TLS.echo, ok = ok }
          done()
        end)
      end
      wait()
      main = { same = _TLS == mine, who = _TLS.who, echo = _TLS.echo }
    end)
    assert.are_not.equal(seen.a.tls, seen.b.tls)
    for _, who in ipairs { "a", "b" } do
      local s = seen[who]
      assert.are.same({ true, true, who, who .. who }, { s.ok, s.same, s.who, s.echo })
    end
    assert.are.same({ same = true }, main)
    -- resuming runners from C puts the global back
    assert.are.equal(outside, _TLS)
  end)
end)

describe("scheduler completion from a runner", function()
  it("runs in a runner with the caller's _TLS and gets true, results...", function()
    local rec, mine, ctx, after
    local outside = _TLS
    actor.run(function()
      mine, ctx = _TLS, actor.context()
      _TLS.n = 1
      rec = complete("CPU", function() _TLS.n = _TLS.n + 1 return "r", { 1, 2 }, nil end,
        function() _TLS.from_completion = true return _TLS.n end)
      after = { same = _TLS == mine, flag = _TLS.from_completion }
    end)
    assert.is_table(rec.runner)
    assert.are_not.equal(ctx, rec.runner)
    assert.are.equal(mine, rec.tls)
    assert.are.equal(4, rec.args.n)
    assert.are.same({ true, "r", { 1, 2 } }, { rec.args[1], rec.args[2], rec.args[3] })
    assert.are.equal(2, rec.seen) -- the closure's write was merged first
    assert.are.same({ same = true, flag = true }, after)
    -- the loop's _TLS was put back after the completion ran
    assert.are.equal(outside, _TLS)
  end)

  it("gets false, err for a closure that raises", function()
    local rec
    actor.run(function()
      rec = complete("CPU", function() error("hot sched boom") end)
    end)
    assert.is_table(rec.runner)
    assert.is_false(rec.args[1])
    assert.matches("hot sched boom", rec.args[2], 1, true)
  end)

  it("from the main chunk also runs in a runner with the main session", function()
    local rec
    local main_tls = _TLS
    msys.runInPool("CPU", function() return 5 end, function(ok, v)
      rec = { ok, v, actor.context() ~= nil, _TLS == main_tls }
    end, SCHED)
    actor.loop()
    assert.are.same({ true, 5, true, true }, rec)
  end)
end)

describe("pooled completion runners", function()
  it("completions issued one after another reuse one coroutine, each with its caller's _TLS", function()
    local recs, tls = {}, {}
    local outside = _TLS
    actor.run(function()
      tls.main = _TLS
      for i = 1, 5 do recs[i] = complete("CPU", function() return i end) end
      -- another runner, another session: same coroutine, its own _TLS
      local wait, done = async.waiter()
      actor.spawn(function()
        tls.other = _TLS
        recs[6] = complete("IO", function() return 6 end)
        done()
      end)
      wait()
      recs[7] = complete("CPU", function() return 7 end)
    end)
    for i = 1, 7 do
      assert.are.same({ true, i }, { recs[i].args[1], recs[i].args[2] })
      assert.are.equal(recs[1].co, recs[i].co)
      assert.are.equal(recs[1].runner, recs[i].runner)
    end
    assert.are_not.equal(tls.main, tls.other)
    assert.are.equal(tls.main, recs[5].tls)
    assert.are.equal(tls.other, recs[6].tls)
    assert.are.equal(tls.main, recs[7].tls)
    assert.are.equal(outside, _TLS)
  end)

  it("a completion that parks leaves the pool; one arriving meanwhile gets another coroutine", function()
    local A, B, C, obs = {}, {}, nil, {}
    actor.run(function()
      local mine = _TLS
      local started_wait, started = async.waiter()
      local both_wait, both_done = async.waiter(2)
      msys.runInPool("CPU", function() return "a" end, function(ok, v)
        A.co, A.r, A.args = coroutine.running(), actor.context(), { ok, v }
        A.call = { actor.call("CPU", function(x) return x .. "!" end, v) } -- parks
        A.tls_kept = _TLS == mine
        started() -- the caller runs (nested) and submits B
        actor.sleep(0.1) -- parks again; B most likely arrives now
        A.finished = true
        both_done()
      end, SCHED)
      started_wait()
      msys.runInPool("CPU", function() return "b" end, function(ok, v)
        B.co, B.args = coroutine.running(), { ok, v }
        both_done()
      end, SCHED)
      actor.sleep(0) -- A is parked in its sleep now
      obs.state = A.r.state
      obs.listed = async.waiting_runners[A.r] ~= nil
      both_wait()
      C = complete("CPU", function() return "c" end)
      obs.listed_after = async.waiting_runners[A.r] ~= nil
    end)
    assert.are.same({ true, "a" }, A.args)
    assert.are.same({ true, "a!" }, A.call)
    assert.is_true(A.tls_kept)
    assert.is_true(A.finished)
    assert.are.same({ true, "b" }, B.args)
    assert.are_not.equal(A.co, B.co)
    assert.are.same({ state = "waiting", listed = true, listed_after = false }, obs)
    assert.are.same({ true, "c" }, { C.args[1], C.args[2] })
    assert.are_not.equal(A.co, C.co) -- a runner that parked is never reused
    assert.are.equal(B.co, C.co) -- B returned without parking: reused
  end)

  it("a completion that raises is reported on stderr and later completions still run", function()
    local lines = {}
    local real = io.stderr
    io.stderr = {
      write = function(self, ...)
        for i = 1, select("#", ...) do lines[#lines + 1] = tostring((select(i, ...))) end
        return self
      end,
    }
    finally(function() io.stderr = real end)
    local bad_co, park_co, recs = nil, nil, {}
    actor.run(function()
      msys.runInPool("CPU", function() return 1 end, function()
        bad_co = coroutine.running()
        error("hot completion boom")
      end, SCHED)
      wait_until(function() return #lines > 0 end)
      for i = 1, 3 do recs[i] = complete("CPU", function() return "after" .. i end) end
      -- one that parks first, then raises once resumed
      msys.runInPool("CPU", function() return 1 end, function()
        park_co = coroutine.running()
        actor.call("CPU", function() end)
        error("hot boom after parking")
      end, SCHED)
      wait_until(function() return table.concat(lines):find("hot boom after parking", 1, true) end)
      recs[4] = complete("CPU", function() return "after4" end)
    end)
    io.stderr = real
    local text = table.concat(lines)
    assert.is_truthy(text:find("actor: error in runner: ", 1, true), text)
    assert.is_truthy(text:find("hot completion boom", 1, true), text)
    assert.is_truthy(text:find("hot boom after parking", 1, true), text)
    for i = 1, 4 do
      assert.are.same({ true, "after" .. i }, { recs[i].args[1], recs[i].args[2] })
      assert.are_not.equal(bad_co, recs[i].co) -- a runner that raised is dropped
    end
    assert.are.equal(recs[1].co, recs[2].co) -- the free list still works
    assert.are.equal(recs[1].co, recs[3].co)
    -- the one that parked had taken that runner (so it was reused) and
    -- then left the pool: the next completion got another
    assert.are.equal(recs[1].co, park_co)
    assert.are_not.equal(park_co, recs[4].co)
  end)
end)

describe("many completions at once", function()
  it("200 that return at once all run, one after another in one coroutine", function()
    local got, cos, ncos = {}, {}, 0
    actor.run(function()
      local wait, done = async.waiter(200)
      for i = 1, 200 do
        msys.runInPool("CPU", function() return i end, function(ok, v)
          got[v] = ok
          local co = coroutine.running()
          if not cos[co] then cos[co] = true ncos = ncos + 1 end
          done()
        end, SCHED)
      end
      wait()
    end)
    for i = 1, 200 do assert.is_true(got[i], i) end
    assert.are.equal(1, ncos)
  end)

  it("300 that all park at once (more than are kept for reuse) all finish, each with its own results", function()
    local got, tls_ok = {}, 0
    actor.run(function()
      local wait, done = async.waiter(300)
      for i = 1, 300 do
        actor.spawn(function()
          _TLS.i = i
          msys.runInPool("CPU", function() return i end, function(ok, v)
            local ok2, w = actor.call("IO", function(x) return x * 2 end, v) -- parks
            actor.sleep(0.001) -- parks again
            got[i] = { ok, v, ok2, w }
            if _TLS.i == i then tls_ok = tls_ok + 1 end
            done()
          end, SCHED)
        end)
      end
      wait()
    end)
    for i = 1, 300 do assert.are.same({ true, i, true, 2 * i }, got[i]) end
    assert.are.equal(300, tls_ok)
  end)

  it("after those, completions again reuse one coroutine", function()
    local recs = {}
    actor.run(function()
      for i = 1, 3 do recs[i] = complete("CPU", function() return i end) end
    end)
    assert.are.equal(recs[1].co, recs[2].co)
    assert.are.equal(recs[1].co, recs[3].co)
  end)
end)

describe("waiting bookkeeping of a parked sync caller", function()
  it("the caller is in waiting_runners while parked and leaves it when resumed", function()
    local res, now_, from_completion, after
    actor.run(function()
      local w = actor.spawn(function()
        res = { actor.call("CPU", function()
          local t = actor.now() + 0.2
          while actor.now() < t do end
          return "slow"
        end) }
      end)
      now_ = { listed = async.waiting_runners[w] ~= nil, state = w.state }
      -- another job finishes while the slow one runs; its completion looks
      from_completion = complete("IO", function() return 1 end, function()
        return { listed = async.waiting_runners[w] ~= nil, state = w.state }
      end).seen
      wait_until(function() return res ~= nil end)
      after = { listed = async.waiting_runners[w] ~= nil, state = w.state }
    end)
    assert.are.same({ true, "slow" }, res)
    assert.are.same({ listed = true, state = "waiting" }, now_)
    assert.are.same({ listed = true, state = "waiting" }, from_completion)
    assert.are.same({ listed = false, state = "ready" }, after)
  end)

  it("a user runner's waiting then ready watchers are called, queued items included", function()
    local function events_for(pool)
      local events = {}
      actor.run(function()
        local r = async.runner(function(x)
          local ok, v = actor.call(pool, function(y) return y * 3 end, x)
          events[#events + 1] = "result:" .. tostring(ok) .. ":" .. tostring(v)
        end, {
          waiting = function() events[#events + 1] = "waiting" end,
          ready = function() events[#events + 1] = "ready" end,
          error = function(_, e) events[#events + 1] = "error:" .. tostring(e) end,
        })
        r:run(7)
        wait_until(function() return events[#events] == "ready" end)
        r:run(1)
        r:run(2) -- queued behind 1
        wait_until(function() return events[#events] == "ready" end)
      end)
      return events
    end
    local expected = { "waiting", "result:true:21", "ready",
      "waiting", "result:true:3", "result:true:6", "ready" }
    assert.are.same(expected, events_for("CPU"))
    -- the Lua path (an options table) gives the same sequence
    assert.are.same(expected, events_for({ pool = "CPU" }))
  end)
end)

describe("cases handed back to the Lua paths", function()
  it("a pool with a timeout: a call that runs too long gets false, 'timed out'", function()
    actor.pool("HOT_TMO", { threads = 1, timeout = 0.05 })
    local res, res2
    actor.run(function()
      res = { actor.call("HOT_TMO", function()
        local t = actor.now() + 0.3
        while actor.now() < t do end
        return "late"
      end) }
      res2 = { actor.call({ pool = "HOT_TMO", timeout = 2 }, function() return "alive" end) }
    end)
    assert.is_false(res[1])
    assert.matches("timed out", res[2], 1, true)
    assert.are.same({ true, "alive" }, res2)
  end)

  it("a pool with a backlog answers 20 runners", function()
    local p = actor.pool("HOT_BL", { threads = 1, backlog = 2 })
    local got, finished, max_q = {}, false, 0
    local function look() max_q = math.max(max_q, p:stat().queue_sz) end
    actor.run(function()
      local wait, done = async.waiter(20)
      for i = 1, 20 do
        actor.spawn(function()
          got[i] = { actor.call("HOT_BL", function(x) return x, { x } end, i) }
          look()
          done()
        end)
        look()
      end
      wait()
      finished = true
    end)
    assert.is_true(finished)
    for i = 1, 20 do assert.are.same({ true, i, { i } }, got[i]) end
    -- the callers waited for room: the backlog was respected
    assert.is_true(max_q <= 2, "queue reached " .. max_q)
  end)

  it("call with an options table works from a runner", function()
    local res
    actor.run(function()
      _TLS.opt = "x"
      res = { actor.call({ pool = "CPU", timeout = 1 }, function(a) _TLS.opt = _TLS.opt .. a return a * 2 end, 21) }
      res.tls = _TLS.opt
    end)
    assert.are.same({ true, 42, tls = "x21" }, res)
  end)
end)

describe("cast and values that cannot be sent", function()
  it("cast returns nothing and the closure runs", function()
    actor.pool("HOT_CAST", { threads = 1 })
    local token = "cast-" .. tostring(actor.now())
    local n1, n2, seen
    actor.run(function()
      n1 = select("#", actor.cast("HOT_CAST", function(t) HOT_CAST_MARK = t end, token))
      n2 = select("#", msys.runInPool("HOT_CAST", function() HOT_CAST_MARK2 = token end, true))
      wait_until(function()
        local _, a, b = actor.call("HOT_CAST", function() return HOT_CAST_MARK, HOT_CAST_MARK2 end)
        seen = { a, b }
        return a ~= nil and b ~= nil
      end)
    end)
    assert.are.equal(0, n1)
    assert.are.equal(0, n2)
    assert.are.same({ token, token }, seen)
  end)

  it("call and runInPool return false, message; cast returns false, message", function()
    local res = {}
    actor.run(function()
      local co = coroutine.create(function() end)
      res.call = { pcall(actor.call, "CPU", function(x) return x end, co) }
      res.rip = { pcall(msys.runInPool, "CPU", function() return co end) }
      res.cast = { pcall(actor.cast, "CPU", function(x) return x end, co) }
      res.async = { pcall(msys.runInPool, "CPU", function() return co end, true) }
      res.sched = complete("CPU", function() return co end)
      res.still = { actor.call("CPU", function() return "fine" end) }
    end)
    for _, k in ipairs { "call", "rip", "cast", "async" } do
      local r = res[k]
      assert.is_true(r[1], k .. " raised: " .. tostring(r[2]))
      assert.is_false(r[2], k)
      assert.is_string(r[3], k)
      assert.matches("cannot send", r[3], 1, true)
    end
    assert.is_false(res.sched.args[1])
    assert.matches("cannot send", res.sched.args[2], 1, true)
    assert.is_table(res.sched.runner)
    assert.are.same({ true, "fine" }, res.still)
  end)
end)

describe("runInPool with ECTP_COMPLETE_CALLBACK from a runner", function()
  it("runs the completion in the worker state, after the closure", function()
    actor.pool("HOT_ONE", { threads = 1 })
    local token = "cb-" .. tostring(actor.now())
    local n, n2, got, err
    actor.run(function()
      n = select("#", msys.runInPool("HOT_ONE", function() return 21 end, function(ok, v)
        HOT_MARK = ok and (token .. ":" .. v * 2)
      end, POOLCB))
      n2 = select("#", msys.runInPool("HOT_ONE", function() error("hot wcomp boom") end, function(ok, e)
        HOT_ERR = { ok, tostring(e) }
      end, POOLCB))
      wait_until(function()
        local _, a, b = actor.call("HOT_ONE", function() return HOT_MARK, HOT_ERR end)
        got, err = a, b
        return a ~= nil and b ~= nil
      end)
    end)
    assert.are.equal(0, n)
    assert.are.equal(0, n2)
    assert.are.equal(token .. ":42", got)
    assert.is_false(err[1])
    assert.matches("hot wcomp boom", err[2], 1, true)
  end)
end)
