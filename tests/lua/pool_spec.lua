-- Pools (issue 4): async and completion modes, _TLS, configuration,
-- backpressure, timeouts, memory limits, nested calls, batching, shutdown.
local actor = require "actor"

local scale = tonumber(os.getenv("ACTOR_TEST_SCALE") or "1")

describe("fire and forget", function()
  it("returns nothing and runs the closure after the caller yields", function()
    local n = select("#", msys.runInPool("CPU", function() end, true))
    assert.are.equal(0, n)
  end)

  it("holds the job until the script returns to the loop", function()
    local p = actor.pool("HOLD", { threads = 1 })
    local started = false
    actor.run(function()
      -- the closure records the time it ran; we compare with our own clock
      local t_send = actor.now()
      actor.cast({ pool = "HOLD", completion = function() end, sched = true },
        function() return actor.now() end)
      -- busy for 50 ms without yielding: the job must not have started
      local t_end = t_send + 0.05
      while actor.now() < t_end do end
      local st = p:stat()
      started = st.job_num_running > 0 or st.completed > 0
    end)
    assert.is_false(started)
  end)

  it("jobs held together travel together: many jobs per nng message", function()
    local p = actor.pool("BATCH", { threads = 2 })
    local n = 0
    actor.run(function()
      for i = 1, 1000 do
        msys.runInPool("BATCH", function() return i end, function() n = n + 1 end,
          msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
      end
    end)
    local st = p:stat()
    assert.are.equal(1000, n)
    assert.are.equal(1000, st.completed)
    -- 1000 jobs queued at once leave in batches of up to 256, not one by one
    assert.is_true(st.batches <= 16, "messages: " .. st.batches)
  end)

  it("1M fire-and-forget jobs with scheduler completions: none lost, none twice", function()
    local N = math.floor(1000000 * scale)
    local seen, count = {}, 0
    local twice = 0
    actor.run(function()
      for i = 1, N do
        msys.runInPool("CPU", function() return i end, function(ok, v)
          assert(ok)
          if seen[v] then twice = twice + 1 end
          seen[v] = true
          count = count + 1
        end, msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
        if i % 10000 == 0 then actor.sleep(0) end
      end
    end)
    assert.are.equal(N, count)
    assert.are.equal(0, twice)
  end)
end)

describe("completion mode", function()
  it("runs the completion on the pool thread by default", function()
    local main_tid = actor.thread_id()
    local ok, tids = actor.call("IO", function() return true end)
    assert.is_true(ok)
    -- the completion sends its observation back through a nested call to another pool
    actor.pool("SINK", { threads = 1 })
    actor.run(function()
      msys.runInPool("CPU", function() return actor.thread_id() end, function(ok2, job_tid)
        _OSTLS.seen = { ok2, job_tid, actor.thread_id() }
      end)
    end)
    -- read what the completion stored in the CPU threads' _OSTLS
    local found
    for _ = 1, 50 do
      local _, s = actor.call("CPU", function() return _OSTLS.seen end)
      if s then found = s break end
    end
    assert.is_table(found)
    assert.is_true(found[1])
    assert.are.equal(found[2], found[3]) -- same OS thread as the closure
    assert.are_not.equal(main_tid, found[3])
    _ = tids
  end)

  it("any mode other than SCHED means ECTP_COMPLETE_CALLBACK", function()
    local got
    actor.run(function()
      msys.runInPool("CPU", function() return 5 end, function(ok, v) _OSTLS.m = v end, "whatever")
    end)
    for _ = 1, 50 do
      local _, v = actor.call("CPU", function() return _OSTLS.m end)
      if v then got = v break end
    end
    assert.are.equal(5, got)
  end)

  it("with ECTP_COMPLETE_CALLBACK_SCHED runs on the scheduler in a new runner that may park", function()
    local here = actor.thread_id()
    local res
    actor.run(function()
      msys.runInPool("CPU", function() return 7 end, function(ok, v)
        local tid = actor.thread_id()
        actor.sleep(0.01) -- parks: it is a runner
        local ok2, w = actor.call("IO", function() return "io" end)
        res = { ok, v, tid, ok2, w }
      end, msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
    end)
    assert.are.same({ true, 7, here, true, "io" }, res)
  end)

  it("the completion gets false, err when the closure fails", function()
    local res
    actor.run(function()
      msys.runInPool("CPU", function() error("nope") end, function(ok, err) res = { ok, err } end,
        msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
    end)
    assert.is_false(res[1])
    assert.matches("nope", res[2])
  end)
end)

describe("_TLS", function()
  it("each runner has its own _TLS", function()
    local a, b
    actor.run(function()
      actor.spawn(function() _TLS.who = "a" actor.sleep(0.01) a = _TLS.who end)
      actor.spawn(function() _TLS.who = "b" actor.sleep(0.01) b = _TLS.who end)
    end)
    assert.are.equal("a", a)
    assert.are.equal("b", b)
  end)

  it("a closure sees a copy of its caller's _TLS and its writes merge back (sync)", function()
    local res
    actor.run(function()
      _TLS.user = "alice"
      _TLS.gone = true
      local ok, seen = msys.runInPool("CPU", function()
        local s = _TLS.user
        _TLS.count = 3
        _TLS.gone = nil
        return s
      end)
      res = { ok, seen, _TLS.count, _TLS.gone, _TLS.user }
    end)
    assert.are.same({ true, "alice", 3, nil, "alice" }, res)
  end)

  it("merges before a scheduler completion runs", function()
    local res
    actor.run(function()
      _TLS.n = 1
      msys.runInPool("CPU", function() _TLS.n = _TLS.n + 1 end, function()
        res = _TLS.n
      end, msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
    end)
    assert.are.equal(2, res)
  end)

  it("discards writes of fire-and-forget jobs", function()
    local res
    actor.run(function()
      _TLS.v = "kept"
      msys.runInPool("CPU", function() _TLS.v = "changed" end, true)
      actor.sleep(0.1)
      res = _TLS.v
    end)
    assert.are.equal("kept", res)
  end)

  it("is not sent to closures that do not name it", function()
    local res
    actor.run(function()
      _TLS.big = string.rep("x", 1000)
      local ok, t = msys.runInPool("CPU", function() return _G["_T" .. "LS"].big end)
      res = { ok, t }
    end)
    assert.are.same({ true, nil }, res)
  end)
end)

describe("pool configuration", function()
  it("creates pools with options and finds them by name and id", function()
    local p = actor.pool("CONF", { threads = 2, backlog = 10, timeout = 5, memory_limit = 64 * 1024 * 1024 })
    local st = msys.threadpool.stat("CONF")
    assert.are.equal("CONF", st.name)
    assert.are.equal(2, st.num_threads)
    assert.are.equal(10, st.backlog)
    assert.are.equal(p.id, msys.threadpool.find("CONF"))
    assert.are.equal("CONF", msys.threadpool.stat(p.id).name)
    assert.is_true(msys.threadpool.count() >= 3)
    for _, k in ipairs { "name", "invocations", "avg_concurrency", "saturation", "avg_wallclock_time_per_op",
      "queue_sz", "num_threads", "num_active_threads", "job_num_queued", "job_num_running",
      "p50_ms", "p99_ms", "errors", "timeouts" } do
      assert.is_not_nil(st[k], k)
    end
  end)

  it("rejects bad options with a clear error", function()
    assert.has_error(function() actor.pool("BAD", { threads = 0 }) end)
    assert.has_error(function() actor.pool("BAD2", { backlog = -1 }) end,
      "pool BAD2: option 'backlog' must be a non-negative integer")
  end)

  it("runs init in each worker state and opens preloaded modules", function()
    local dir = os.tmpname()
    os.remove(dir)
    local f = assert(io.open(dir .. ".lua", "w"))
    f:write("INIT_MARK = 'ready'\n")
    f:close()
    actor.pool("INIT", { threads = 2, init = dir .. ".lua", preload = { "lpeg" } })
    local ok, mark, lp = actor.call("INIT", function() return INIT_MARK, package.loaded.lpeg ~= nil end)
    os.remove(dir .. ".lua")
    assert.is_true(ok)
    assert.are.equal("ready", mark)
    assert.is_true(lp)
  end)

  it("answers every job with the init error when a worker state cannot be set up", function()
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write('error("init exploded")\n')
    f:close()
    actor.pool("BADINIT", { threads = 1, init = path })
    for _ = 1, 2 do
      local ok, err = actor.call("BADINIT", function() return 1 end)
      assert.is_false(ok)
      assert.matches("pool BADINIT: worker state setup failed: .*init exploded", err)
    end
    os.remove(path)
  end)

  it("counts invocations and errors", function()
    local p = actor.pool("STATS", { threads = 1 })
    for _ = 1, 3 do p:call(function() end) end
    p:call(function() error("x") end)
    local st = p:stat()
    assert.are.equal(4, st.invocations)
    assert.are.equal(1, st.errors)
  end)
end)

describe("resize", function()
  it("grows and shrinks under load without losing a job", function()
    local p = actor.pool("RESIZE", { threads = 1 })
    local done = 0
    actor.run(function()
      for i = 1, 200 do
        actor.spawn(function()
          local ok = p:call(function() actor.sleep(0.005) return i end)
          if ok then done = done + 1 end
        end)
      end
      actor.sleep(0.05)
      p:resize(4)
      actor.sleep(0.05)
      assert.are.equal(4, p:stat().num_threads)
      p:resize(2)
    end)
    assert.are.equal(200, done)
    assert.are.equal(2, p:stat().num_threads)
  end)
end)

describe("backpressure", function()
  it("100 callers through a backlog of 4 all complete", function()
    local p = actor.pool("BP", { threads = 1, backlog = 4 })
    local done, max_q = 0, 0
    actor.run(function()
      for i = 1, 100 do
        actor.spawn(function()
          local ok, v = p:call(function() return i end)
          assert(ok and v == i)
          done = done + 1
          max_q = math.max(max_q, p:stat().queue_sz)
        end)
      end
    end)
    assert.are.equal(100, done)
    assert.is_true(max_q <= 4)
  end)

  it("the main chunk parks too", function()
    local p = actor.pool("BP2", { threads = 1, backlog = 2 })
    for i = 1, 10 do msys.runInPool("BP2", function() return i end, true) end
    assert.is_true(p:stat().queue_sz <= 2)
    actor.loop()
  end)
end)

describe("timeouts", function()
  it("a caller that times out gets false, 'timed out after 0.3 s in pool SLOW'", function()
    actor.pool("SLOW", { threads = 1 })
    local ok, err = actor.call({ pool = "SLOW", timeout = 0.3 }, function()
      local x = 0
      while true do x = x + 1 end
    end)
    assert.is_false(ok)
    assert.are.equal("timed out after 0.3 s in pool SLOW", err)
    -- the runaway closure was interrupted: the thread serves the next job
    local ok2, v = actor.call("SLOW", function() return "alive" end)
    assert.are.same({ true, "alive" }, { ok2, v })
    assert.are.equal(1, msys.threadpool.stat("SLOW").timeouts)
  end)

  it("a pool's timeout applies to every call", function()
    actor.pool("SLOW2", { threads = 1, timeout = 0.2 })
    local ok, err = actor.call("SLOW2", function() actor.sleep(1) end)
    assert.is_false(ok)
    assert.are.equal("timed out after 0.2 s in pool SLOW2", err)
    -- the late reply is dropped; the thread comes back
    local ok2 = actor.call({ pool = "SLOW2", timeout = 5 }, function() return 1 end)
    assert.is_true(ok2)
  end)
end)

describe("memory limit", function()
  it("gives 'not enough memory in pool SMALL (limit 16 MB)' and the state stays usable", function()
    actor.pool("SMALL", { threads = 1, memory_limit = 16 * 1024 * 1024 })
    local ok, err = actor.call("SMALL", function()
      local t = {}
      for i = 1, 1e8 do t[i] = ("x"):rep(64) .. i end
    end)
    assert.is_false(ok)
    assert.are.equal("not enough memory in pool SMALL (limit 16 MB)", err)
    local ok2, v = actor.call("SMALL", function() return #("y"):rep(1000) end)
    assert.are.same({ true, 1000 }, { ok2, v })
  end)
end)

describe("nested calls", function()
  it("a pool thread calls another pool synchronously", function()
    local ok, a, b = actor.call("CPU", function()
      local ok2, v = msys.runInPool("IO", function() return actor.thread_id() end)
      return ok2, v ~= actor.thread_id()
    end)
    assert.are.same({ true, true, true }, { ok, a, b })
  end)

  it("a sync call to its own pool never deadlocks, even with every thread busy", function()
    local p = actor.pool("SELF", { threads = 2 })
    local results = {}
    actor.run(function()
      for i = 1, 4 do
        actor.spawn(function()
          local ok, v = p:call(function()
            local ok2, w = msys.runInPool("SELF", function() return i * 10 end)
            return ok2 and w
          end)
          results[i] = ok and v
        end)
      end
    end)
    assert.are.same({ 10, 20, 30, 40 }, results)
  end)

  it("a nested call to an unknown pool raises in the closure", function()
    local ok, err = actor.call("CPU", function() return msys.runInPool("NOWHERE", function() end) end)
    assert.is_false(ok)
    assert.matches("no such pool", err)
  end)
end)

describe("batching without starvation", function()
  it("8 jobs of 0.5 s on a 2-thread pool finish in about 2 s", function()
    actor.pool("PAIR", { threads = 2 })
    local t0 = actor.now()
    local n = 0
    actor.run(function()
      for _ = 1, 8 do
        msys.runInPool("PAIR", function() actor.sleep(0.5) end, function() n = n + 1 end,
          msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
      end
    end)
    local dt = actor.now() - t0
    assert.are.equal(8, n)
    assert.is_true(dt < 3.0, "took " .. dt)
  end)
end)

describe("a job that sleeps or calls out after others of its batch finished", function()
  -- Regression: the worker flushes finished replies when a job sleeps or
  -- makes a nested sync call. The flush used to carry the running job's
  -- half-written reply header and reset the buffer under it, so that job's
  -- reply was lost and its caller never answered.
  local function batch_of_two(second)
    actor.pool("SOLO", { threads = 1 })
    local got = {}
    -- The worker also flushes between jobs once 200 µs passed since its
    -- last flush; a tiny sleep first makes that flush happen now, so the
    -- first job's reply is still in the buffer when the second one runs.
    local first = function() actor.sleep(1e-6); return "first" end
    actor.spawn(function()
      -- both jobs are submitted before the loop dispatches: one batch
      msys.runInPool("SOLO", first, function(ok, v) got[#got + 1] = tostring(ok) .. " " .. v end,
        msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
      msys.runInPool("SOLO", second, function(ok, v) got[#got + 1] = tostring(ok) .. " " .. v end,
        msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
    end)
    actor.loop(5) -- bounded: a lost reply must fail the test, not hang it
    table.sort(got)
    return got
  end

  it("answers a job that calls actor.sleep", function()
    assert.are.same({ "true first", "true slept" },
      batch_of_two(function() actor.sleep(0.01); return "slept" end))
  end)

  it("answers a job that makes a nested sync call", function()
    assert.are.same({ "true first", "true nested CPU" },
      batch_of_two(function()
        local ok, v = actor.call("CPU", function() return "CPU" end)
        return "nested " .. tostring(ok and v)
      end))
  end)
end)
