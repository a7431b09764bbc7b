-- Benchmark of util.async against a bare coroutine (the floor) and against
-- Prosody's pure-Lua algorithm (re-implemented below, "prosody-algorithm").
--
--   build/actor tests/bench/bench_async.lua      full run, C waiter (actor.asynccore)
--   ACTOR_ASYNC_PURE_LUA=1 build/actor tests/bench/bench_async.lua
--                                                the pure-Lua waiter, same state
--   lua5.4 tests/bench/bench_async.lua            stock Lua, pure-Lua module
--   ... --smoke                                   tiny run (CI smoke test)
--
-- Measures, each as the median of several runs:
--   cycle       one wait()/done() park/resume inside a runner item, against
--               a bare coroutine.resume/yield round trip;
--   item cycle  r:run(item) where the item waits once, then done();
--   create+run  runner(func) + r:run(item), against coroutine.create+resume;
--   memory      bytes per parked runner (50k parked; the same per-runner figure as with 100k: both fill the bookkeeping tables to the same load), against a bare
--               parked coroutine.
-- Goals (issue 5): cycle <= 3x floor, create+run <= 10x, <= 1.5 KB/runner.

local smoke = false
for _, a in ipairs(arg or {}) do
  if a == "--smoke" then smoke = true end
end

-- Find the module next to this file when run from anywhere.
do
  local dir = (arg and arg[0] or ""):match("^(.*)/tests/bench/[^/]*$")
  if dir then
    package.path = dir .. "/bindings/lua/?.lua;" .. package.path
  else
    package.path = "bindings/lua/?.lua;" .. package.path
  end
end

local async = require "util.async"
local clock = os.clock
local co_create, co_resume, co_yield, co_wrap = coroutine.create, coroutine.resume, coroutine.yield, coroutine.wrap

---------------------------------------------------------------------------
-- Prosody's algorithm (0.12/trunk util.async), written out here as the
-- baseline: thread-per-runner reused across items, the runner found with
-- debug.getlocal on error, a closure handed to next_tick on every
-- completion, watchers called through xpcall on the resume path, every
-- field created at construction, a per-runner logger closure and id.
---------------------------------------------------------------------------
local function prosody_algorithm()
  local function noop_log() end
  local function make_logger() return function() end end
  local function short_id()
    local t = {}
    for i = 1, 8 do t[i] = string.char(math.random(65, 90)) end
    return table.concat(t)
  end
  local schedule_task
  local next_tick = function(f) f() end
  local waiting_runners = {}

  local function checkthread()
    local th, main = coroutine.running()
    if not th or main then error("Not running in an async context") end
    return th
  end

  local function runner_from_thread(th)
    local level = 0
    while debug.getinfo(th, level, "") do level = level + 1 end
    local name, r = debug.getlocal(th, level - 1, 1)
    if name ~= "self" or type(r) ~= "table" or r.thread ~= th then return nil end
    return r
  end

  local function call_watcher(r, which, ...)
    local w = r.watchers[which]
    if not w then return false end
    r:log("debug", "Calling '%s' watcher", which)
    local ok, err = xpcall(w, debug.traceback, r, ...)
    if not ok then r:log("error", "watcher failed: %s", err); return nil, err end
    return true
  end

  local function runner_continue(th)
    if coroutine.status(th) ~= "suspended" then
      noop_log("error", "thread not suspended")
      local r = runner_from_thread(th)
      if r then r.state = "error"; call_watcher(r, "error", "thread not suspended") end
      return false
    end
    local ok, state, r = coroutine.resume(th)
    if not ok then
      r = runner_from_thread(th)
      if not r then return false end
      call_watcher(r, "error", debug.traceback(th, state))
      r.state = "ready"
      return r:run()
    elseif state == "ready" then
      next_tick(function() r.state = "ready"; r:run() end)
    end
    return true
  end

  local function waiter(num, allow_many)
    local th = checkthread()
    num = num or 1
    local waiting
    return function()
      if num == 0 then return end
      waiting = true
      coroutine.yield("wait")
    end, function()
      num = num - 1
      if num == 0 and waiting then
        runner_continue(th)
      elseif not allow_many and num < 0 then
        error("done() called too many times")
      end
    end
  end

  local mt = {}
  mt.__index = mt

  local function create_thread(func, self)
    local th = coroutine.create(function(self) -- luacheck: ignore 432
      while true do func(coroutine.yield("ready", self)) end
    end)
    debug.sethook(th, debug.gethook())
    assert(coroutine.resume(th, self))
    return th
  end

  local function default_error_watcher(r, err) r:log("error", "%s", err); error(err) end
  local function default_func(f) f() end

  local function runner(func, watchers, data)
    local id = short_id()
    return setmetatable({ func = func or default_func, thread = false, state = "ready",
      notified_state = "ready", queue = {}, watchers = watchers or { error = default_error_watcher },
      data = data, id = id, _log = make_logger("runner" .. id) }, mt)
  end

  function mt:run(input)
    if input ~= nil then table.insert(self.queue, input) end
    if self.state ~= "ready" then return true, self.state, #self.queue end
    local q, th = self.queue, self.thread
    if not th or coroutine.status(th) == "dead" then
      if th and coroutine.close then coroutine.close(th) end
      self:log("debug", "creating new coroutine")
      th = create_thread(self.func, self)
      self.thread = th
    end
    local n, state, err = #q, self.state, nil
    self.state = "running"
    while n > 0 and state == "ready" and not err do
      local consumed
      for i = 1, n do
        local ok, new_state = coroutine.resume(th, q[i])
        if not ok then
          consumed, state, err = i, "ready", debug.traceback(th, new_state)
          self.thread = nil
          break
        elseif new_state == "wait" then
          consumed, state = i, "waiting"
          break
        end
      end
      if not consumed then consumed = n end
      if q[n + 1] ~= nil then n = #q end
      for i = 1, n do q[i] = q[consumed + i] end
      n = #q
    end
    self.state = state
    if err or state ~= self.notified_state then
      self:log("debug", "changed state from %s to %s", self.notified_state, err and "error" or state)
      if err then state = "error" else self.notified_state = state end
      local h = self.watchers[state]
      if h then h(self, err) end
    end
    if n > 0 then return self:run() end
    waiting_runners[self] = state == "waiting" and os.time() or nil
    return true, state, n
  end
  function mt:log(level, fmt, ...) return self._log(level, fmt, ...) end

  return {
    runner = runner, waiter = waiter,
    set_nexttick = function(f) next_tick = f end,
    set_schedule_function = function(f) schedule_task = f end,
  }
end

local prosody = prosody_algorithm()

---------------------------------------------------------------------------
-- Measurements
---------------------------------------------------------------------------
local RUNS = 5
local N_CYCLE = smoke and 2000 or 1000000
local N_CREATE = smoke and 2000 or 200000
local N_MEM = smoke and 2000 or 50000

local function median(t)
  table.sort(t)
  local n = #t
  if n % 2 == 1 then return t[(n + 1) // 2] end
  return (t[n // 2] + t[n // 2 + 1]) / 2
end

-- Runs `f(n)` RUNS times; returns the median seconds per operation.
local function per_op(f, n)
  local t = {}
  f(math.max(1, n // 10)) -- warm up
  for i = 1, RUNS do
    collectgarbage()
    local t0 = clock()
    f(n)
    t[i] = (clock() - t0) / n
  end
  return median(t)
end

-- floor: a bare resume/yield round trip
local function floor_cycle(n)
  local co = co_create(function() while true do co_yield() end end)
  for _ = 1, n do co_resume(co) end
end

-- one park/resume cycle of a waiter in a runner
local function waiter_cycle(mod)
  return function(n)
    local done
    local r = mod.runner(function()
      for _ = 1, n + 1 do
        local wait, d = mod.waiter()
        done = d
        wait()
      end
    end, {})
    r:run(true)
    for _ = 1, n do done() end
    done()
  end
end

-- r:run(item) where the item waits once, then done()
local function item_cycle(mod)
  return function(n)
    local done
    local function item() local wait; wait, done = mod.waiter(); wait() end
    local r = mod.runner(nil, {})
    for _ = 1, n do r:run(item); done() end
  end
end

local function noop() end
local function floor_create(n)
  for _ = 1, n do local co = co_create(noop); co_resume(co) end
end
local function runner_create(mod)
  return function(n)
    for _ = 1, n do local r = mod.runner(noop); r:run(1) end
  end
end

-- Bytes per parked object: `make(i, keep)` parks one and keeps a reference.
local function mem_per(make, n)
  local t = {}
  for run = 1, 3 do
    local keep = {}
    for i = 1, n do keep[i] = false end -- preallocate the array part
    collectgarbage(); collectgarbage()
    local before = collectgarbage("count")
    for i = 1, n do make(i, keep) end
    collectgarbage(); collectgarbage()
    local after = collectgarbage("count")
    t[run] = (after - before) * 1024 / n
    keep = nil -- luacheck: ignore 311
    collectgarbage(); collectgarbage()
  end
  return median(t)
end

local function bare_parked(i, keep)
  local co = co_create(function() co_yield() end)
  co_resume(co)
  keep[i] = co
end
local function runner_parked(mod)
  return function(i, keep)
    local r = mod.runner(function()
      local wait, done = mod.waiter()
      keep[i] = done
      wait()
    end)
    r:run(true)
  end
end

-- The same with one function shared by every runner (the usual shape of a
-- server: one handler, items passed to run()), so that no per-runner
-- closure of the benchmark's own is counted.
local function runner_parked_shared(mod)
  local keep_now
  local function handler(i)
    local wait, done = mod.waiter()
    keep_now[i] = done
    wait()
  end
  return function(i, keep)
    keep_now = keep
    mod.runner(handler):run(i)
  end
end

local function us(s) return string.format("%8.3f us", s * 1e6) end
local function ratio(a, b) return string.format("%6.2fx", a / b) end

print(string.format("util.async bench (%s, %s run, median of %d, waiter: %s)",
  _VERSION, smoke and "smoke" or "full", RUNS, async._impl or "lua"))

local floor_c = per_op(floor_cycle, N_CYCLE)
local ours_c = per_op(waiter_cycle(async), N_CYCLE)
local pros_c = per_op(waiter_cycle(prosody), N_CYCLE)
print(string.format("cycle       floor %s | ours %s (%s floor) | prosody-algorithm %s (%s floor) | ours/prosody %s",
  us(floor_c), us(ours_c), ratio(ours_c, floor_c), us(pros_c), ratio(pros_c, floor_c), ratio(ours_c, pros_c)))

local ours_i = per_op(item_cycle(async), N_CYCLE // 2)
local pros_i = per_op(item_cycle(prosody), N_CYCLE // 2)
print(string.format("item cycle  floor %s | ours %s (%s floor) | prosody-algorithm %s (%s floor) | ours/prosody %s",
  us(floor_c), us(ours_i), ratio(ours_i, floor_c), us(pros_i), ratio(pros_i, floor_c), ratio(ours_i, pros_i)))

local floor_cr = per_op(floor_create, N_CREATE)
local ours_cr = per_op(runner_create(async), N_CREATE)
local pros_cr = per_op(runner_create(prosody), N_CREATE)
print(string.format("create+run  floor %s | ours %s (%s floor) | prosody-algorithm %s (%s floor) | ours/prosody %s",
  us(floor_cr), us(ours_cr), ratio(ours_cr, floor_cr), us(pros_cr), ratio(pros_cr, floor_cr), ratio(ours_cr, pros_cr)))

local bare_m = mem_per(bare_parked, N_MEM)
local ours_m = mem_per(runner_parked(async), N_MEM)
local pros_m = mem_per(runner_parked(prosody), N_MEM)
print(string.format("memory      bare %7.0f B | ours %7.0f B (%s bare) | prosody-algorithm %7.0f B (%s bare) | ours/prosody %s",
  bare_m, ours_m, ratio(ours_m, bare_m), pros_m, ratio(pros_m, bare_m), ratio(ours_m, pros_m)))
local ours_ms = mem_per(runner_parked_shared(async), N_MEM)
print(string.format("memory, one shared function: ours %7.0f B", ours_ms))

-- Machine-readable figures (tests/bench/run.sh convention).
local impl = async._impl or "lua"
print(("RESULT async_%s_cycle_ratio %.3f x"):format(impl, ours_c / floor_c))
print(("RESULT async_%s_create_run_ratio %.3f x"):format(impl, ours_cr / floor_cr))
print(("RESULT async_%s_parked_bytes %.0f B"):format(impl, ours_m))
print(("RESULT async_%s_parked_shared_bytes %.0f B"):format(impl, ours_ms))

local goals = {
  { "cycle <= 3x floor", ours_c <= 3 * floor_c },
  { "create+run <= 10x floor", ours_cr <= 10 * floor_cr },
  { "memory <= 1.5 KB per parked runner", ours_m <= 1536 },
  { "the same, one shared function", ours_ms <= 1536 },
}
for _, g in ipairs(goals) do
  print(string.format("goal %-36s %s", g[1], g[2] and "met" or "MISSED"))
end
