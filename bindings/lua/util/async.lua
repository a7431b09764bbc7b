-- util.async: runners, waiters and guards.
--
-- A drop-in replacement for Prosody's util.async (0.12/trunk API): same
-- exports, same observable behaviour. The algorithm is re-implemented here
-- with the hot paths tuned for the actor runtime:
--
--  * a runner finds out which runner owns a coroutine through a weak map
--    (thread -> runner), never through debug.getlocal;
--  * rarely used runner fields (queue, watchers, id, func when defaulted)
--    are created on first access by the metatable, so an idle or parked
--    runner is a small table;
--  * an item handed to an idle runner with nothing queued is resumed at once
--    without going through the queue table (the queue still shows the item
--    if someone looks at it while it runs, exactly as with a queued item);
--  * while a runner's coroutine runs, the global _TLS is that runner's
--    session table; the previous value is put back when it yields or ends.
--
-- Hooks for the runtime (not part of Prosody's API, hidden by a leading
-- underscore): _install_defaults, _runner_of, _tls_of, _set_tls,
-- _set_tls_factory, _set_logger. See the bottom of this file.

local coroutine, debug, table, string, math, os, io, package =
      coroutine, debug, table, string, math, os, io, package
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_running, co_close = coroutine.status, coroutine.running, coroutine.close
local co_isyieldable = coroutine.isyieldable
local traceback, gethook, sethook = debug.traceback, debug.gethook, debug.sethook
local rawget, rawset, setmetatable, type, error, select, xpcall, tostring, pcall =
      rawget, rawset, setmetatable, type, error, select, xpcall, tostring, pcall
local t_insert, t_remove = table.insert, table.remove
local s_format = string.format

-- The table that holds the global _TLS (the state's globals).
local G = _ENV

local NOT_ASYNC = "Not running in an async context, see https://prosody.im/doc/developers/util/async"

---------------------------------------------------------------- logging

-- log_sink(source, level, fmt, ...). Debug/info are dropped unless the
-- runtime installs a logger; warnings and errors go to stderr.
local function default_sink(source, level, fmt, ...)
  if level ~= "error" and level ~= "warn" then return end
  local ok, msg = pcall(s_format, fmt, ...)
  if not ok then msg = tostring(fmt) end
  io.stderr:write(source, "\t", level, "\t", msg, "\n")
end
local log_sink = default_sink

local function log(level, fmt, ...)
  return log_sink("util.async", level, fmt, ...)
end

---------------------------------------------------------------- configuration

local function immediate_tick(f) f() end

-- Defaults (the runtime may install its own), and what is in force.
local default_next_tick, default_schedule = immediate_tick, nil
local next_tick, schedule_task = immediate_tick, nil
local user_next_tick, user_schedule = false, false

local package_loaded = package.loaded
local os_time = os.time
local time_now_hook = nil
-- The time a runner began to wait: the runtime's clock when there is one.
local function time_now()
  if time_now_hook then return time_now_hook() end
  local a = package_loaded.actor
  local f = type(a) == "table" and a.now
  if f then return f() end
  return os_time()
end

---------------------------------------------------------------- bookkeeping

-- thread -> runner that owns it (weak keys: a dead thread is forgotten).
local runner_of = setmetatable({}, { __mode = "k" })
-- A runner's session table (_TLS while its coroutine runs) lives in the
-- runner's own slot 1: resuming a runner then costs one array access
-- instead of a lookup in a weak map, and a runner is about 20 bytes
-- smaller (an array slot instead of a map entry). Prosody's runner fields
-- are all named, so the slot is free. bindings/lasync.c and
-- bindings/lhot.c read it too.
local TLS_SLOT = 1
local tls_factory = nil
-- runner -> function used to resume it from next_tick (made once per runner).
local tick_fn_of = setmetatable({}, { __mode = "k" })

-- runner -> time it began waiting.
local waiting_runners = {}

-- Items being run by the fast path of run() (no queue table yet): the
-- runner and its item, innermost last. Used only if the queue is looked at
-- while the item runs.
local fs_r, fs_i, fs_n = {}, {}, 0

local function get_tls(r)
  local t = rawget(r, TLS_SLOT)
  if t == nil then
    if tls_factory then t = tls_factory(r) end
    if t == nil then t = {} end
    rawset(r, TLS_SLOT, t)
  end
  return t
end

local function find_runner(thread)
  local r = runner_of[thread]
  if r ~= nil and r.thread == thread then return r end
  return nil
end

---------------------------------------------------------------- ids

local ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local random = math.random
-- Like util.id.short(): 8 characters of base64url (48 random bits).
local function new_id()
  local a, b = random(0, 0xFFFFFF), random(0, 0xFFFFFF)
  local function c(v, shift)
    local i = ((v >> shift) & 63) + 1
    return ID_CHARS:sub(i, i)
  end
  return c(a, 18) .. c(a, 12) .. c(a, 6) .. c(a, 0) .. c(b, 18) .. c(b, 12) .. c(b, 6) .. c(b, 0)
end

---------------------------------------------------------------- watchers

local function default_error_watcher(runner, err)
  runner:log("error", "Encountered error: %s", err)
  error(err)
end

local function default_func(f) f() end

-- The watcher registered under `name`. A runner created without watchers has
-- its default table made only when someone reads r.watchers; until then it
-- behaves as { error = default_error_watcher }. Only the keys "ready",
-- "waiting" and "error" are ever looked up.
local function get_watcher(r, name)
  local w = rawget(r, "watchers")
  if w == nil then
    if name == "error" then return default_error_watcher end
    return nil
  end
  return w[name]
end

-- Calls a watcher, catching and logging its errors.
local function call_watcher(r, name, ...)
  local watcher = get_watcher(r, name)
  if not watcher then return false end
  local ok, err = xpcall(watcher, traceback, r, ...)
  if not ok then
    r:log("error", "Error in '%s' watcher: %s", name, err)
    return nil, err
  end
  return true
end

---------------------------------------------------------------- runner

local methods = {}

-- Lazily created fields of a runner.
local function runner_index(r, k)
  local m = methods[k]
  if m ~= nil then return m end
  if k == "queue" then
    local q = {}
    -- If the runner is running an item that never went through the queue,
    -- the queue shows it (a queued item stays in the queue while it runs).
    for i = fs_n, 1, -1 do
      if fs_r[i] == r then q[1] = fs_i[i]; break end
    end
    rawset(r, "queue", q)
    return q
  elseif k == "watchers" then
    local w = { error = default_error_watcher }
    rawset(r, "watchers", w)
    return w
  elseif k == "id" then
    local id = new_id()
    rawset(r, "id", id)
    return id
  elseif k == "func" then
    return default_func
  elseif k == "_tls" then
    return get_tls(r)
  end
  return nil
end

local runner_mt = { __index = runner_index }

-- The body of a runner's coroutine: it is resumed with (runner, item) for
-- every item and yields "ready" between items ("wait" while parked).
local function runner_body(self, input)
  local func = self.func
  local _
  while true do
    func(input)
    _, input = co_yield("ready", self)
  end
end

local function new_thread(self)
  local thread = co_create(runner_body)
  local hook, mask, count = gethook()
  if hook then sethook(thread, hook, mask, count) end
  runner_of[thread] = self
  return thread
end

-- Removes the first `consumed` of the queue's `n` items (items queued while
-- they ran are kept), returns the new count.
local function compact(q, n, consumed)
  if q[n + 1] ~= nil then n = #q end
  for i = 1, n do q[i] = q[consumed + i] end
  return #q
end

local function run(self, input)
  local q = rawget(self, "queue")
  local state = self.state
  local fast = false
  if input ~= nil then
    if q == nil and state == "ready" then
      fast = true
    else
      if q == nil then q = self.queue end
      q[#q + 1] = input
    end
  end
  if state ~= "ready" then
    -- Busy: the item was queued.
    return true, state, q and #q or 0
  end

  local thread = self.thread
  if not thread or co_status(thread) == "dead" then
    if thread then
      runner_of[thread] = nil
      if co_close then co_close(thread) end
    end
    thread = new_thread(self)
    self.thread = thread
  end

  local tls = rawget(self, TLS_SLOT) or get_tls(self)
  local n, err = 0, nil
  self.state = "running"

  if fast then
    -- An idle runner with nothing queued: run the item straight away.
    local k = fs_n + 1
    fs_n = k; fs_r[k] = self; fs_i[k] = input
    local prev = G._TLS
    G._TLS = tls
    local ok, new_state = co_resume(thread, self, input)
    G._TLS = prev
    fs_r[k] = nil; fs_i[k] = nil; fs_n = k - 1
    if not ok then
      state, err = "ready", traceback(thread, new_state)
      runner_of[thread] = nil
      self.thread = nil
    elseif new_state == "wait" then
      state = "waiting"
    end
    q = rawget(self, "queue")
    if q ~= nil then
      -- The queue was created while the item ran; it starts with the item.
      n = compact(q, 1, 1)
    end
  elseif q ~= nil then
    n = #q
  end

  while n > 0 and state == "ready" and not err do
    local consumed
    for i = 1, n do
      local prev = G._TLS
      G._TLS = tls
      local ok, new_state = co_resume(thread, self, q[i])
      G._TLS = prev
      if not ok then
        consumed, state, err = i, "ready", traceback(thread, new_state)
        runner_of[thread] = nil
        self.thread = nil
        break
      elseif new_state == "wait" then
        consumed, state = i, "waiting"
        break
      end
    end
    n = compact(q, n, consumed or n)
  end

  self.state = state
  if err or state ~= self.notified_state then
    if err then
      state = "error"
    else
      self.notified_state = state
    end
    local handler = get_watcher(self, state)
    if handler then handler(self, err) end
  end
  if n > 0 then
    return self:run()
  end
  if state == "waiting" then
    waiting_runners[self] = time_now()
  else
    waiting_runners[self] = nil
  end
  return true, state, n
end
methods.run = run

-- A function that marks the runner ready and runs it: what next_tick gets.
local function tick_fn(r)
  local f = tick_fn_of[r]
  if f == nil then
    f = function()
      r.state = "ready"
      r:run()
    end
    tick_fn_of[r] = f
  end
  return f
end

-- What happens after a parked item was resumed: it finished (the runner is
-- ready again and may have more queued), or it raised.
local function after_ready(r)
  if next_tick == immediate_tick then
    r.state = "ready"
    r:run()
  else
    next_tick(tick_fn(r))
  end
end

local function after_error(r, thread, err)
  if r == nil or r.thread ~= thread then
    log("warn", "unexpected async state: unable to locate runner during error handling")
    return false
  end
  call_watcher(r, "error", traceback(thread, err))
  r.state = "ready"
  return r:run()
end

-- Resumes a coroutine parked by wait() or a guard.
local function continue(thread)
  if co_status(thread) ~= "suspended" then
    log("error", "unexpected async state: thread not suspended (%s, %s)", tostring(thread), co_status(thread))
    local r = find_runner(thread)
    if r then
      r.state = "error"
      call_watcher(r, "error", "unexpected async state: thread not suspended")
    end
    return false
  end
  local r = runner_of[thread]
  local ok, state
  if r ~= nil then
    local prev = G._TLS
    G._TLS = rawget(r, TLS_SLOT) or get_tls(r)
    ok, state = co_resume(thread)
    G._TLS = prev
  else
    ok, state = co_resume(thread)
  end
  if not ok then
    return after_error(r, thread, state)
  elseif state == "ready" and r ~= nil then
    after_ready(r)
  end
  return true
end

function methods:enqueue(input)
  local q = self.queue
  q[#q + 1] = input
  return self
end

function methods:log(level, fmt, ...)
  return log_sink("runner" .. self.id, level, fmt, ...)
end

function methods:onready(f)
  self.watchers.ready = f
  return self
end

function methods:onwaiting(f)
  self.watchers.waiting = f
  return self
end

function methods:onerror(f)
  self.watchers.error = f
  return self
end

local function runner(func, watchers, data)
  local r = { state = "ready", notified_state = "ready", thread = false, func = func }
  if watchers ~= nil then r.watchers = watchers end
  if data ~= nil then r.data = data end
  return setmetatable(r, runner_mt)
end

---------------------------------------------------------------- waiter, guarder

-- A waiter keeps its count and whether wait() was called in one number, so
-- that its two closures share two upvalues instead of three: the count of
-- done() calls still expected, plus WAITING once wait() has been called.
local WAITING = 1 << 40
local HALF = WAITING >> 1

-- The plain form, for counts the packed form cannot hold.
local function waiter_wide(thread, num, allow_many)
  local waiting = false
  local function wait()
    if num == 0 then return end
    -- where no yield is possible, raise before marking the waiter waiting:
    -- done() must not resume the coroutine wherever it parks later
    if not co_isyieldable() then co_yield("wait") end
    waiting = true
    co_yield("wait")
  end
  return wait, function()
    num = num - 1
    if num == 0 and waiting then
      continue(thread)
    elseif not allow_many and num < 0 then
      error("done() called too many times", 0)
    end
  end
end

local function waiter(num, allow_many)
  local thread, main = co_running()
  if not thread or main then error(NOT_ASYNC, 0) end
  local s = num or 1
  if type(s) ~= "number" or s >= HALF or s <= -HALF then
    return waiter_wide(thread, s, allow_many)
  end
  local function wait()
    if s == 0 or s == WAITING then return end -- already done
    if not co_isyieldable() then co_yield("wait") end -- raises; see waiter_wide
    if s < HALF then s = s + WAITING end
    co_yield("wait")
  end
  if allow_many then
    return wait, function()
      s = s - 1
      if s == WAITING then continue(thread) end
    end
  end
  return wait, function()
    s = s - 1
    if s == WAITING then
      continue(thread)
    elseif s < 0 or (s > HALF and s < WAITING) then
      error("done() called too many times", 0)
    end
  end
end

-- The C hot path (bindings/lasync.c, module actor.asynccore) when the
-- runtime provides it: the same waiter, with wait/done as C closures and the
-- common resume done in C; the rules above stay the only ones (it calls
-- continue, after_ready, after_error and waiter_wide for everything else).
-- ACTOR_ASYNC_PURE_LUA=1 in the environment keeps the Lua waiter.
local lua_waiter = waiter
do
  local getenv = os.getenv
  local ok, core = false, nil
  if not (getenv and getenv("ACTOR_ASYNC_PURE_LUA") == "1") then
    ok, core = pcall(require, "actor.asynccore")
  end
  if ok and type(core) == "table" and core.setup then
    waiter = core.setup {
      runner_of = runner_of, G = G, get_tls = get_tls,
      continue = continue, after_ready = after_ready, after_error = after_error,
      waiter_wide = waiter_wide, not_async = NOT_ASYNC,
    }
  end
end

local function guarder()
  local guards = {}
  local default_id = {}
  return function(id, func)
    id = id or default_id
    local thread, main = co_running()
    if not thread or main then error(NOT_ASYNC, 0) end
    local guard = guards[id]
    if not guard then
      guard = {}
      guards[id] = guard
    else
      if not co_isyieldable() then co_yield("wait") end -- raises before queueing
      t_insert(guard, thread)
      co_yield("wait")
    end
    local function exit()
      local next_waiting = t_remove(guard, 1)
      if next_waiting then
        continue(next_waiting)
      else
        guards[id] = nil
      end
    end
    if func then
      func()
      exit()
      return
    end
    return exit
  end
end

---------------------------------------------------------------- helpers

local function ready()
  local thread, main = co_running()
  if not thread or main then return false, NOT_ASYNC end
  return true, thread
end

local function sleep(seconds)
  local schedule = schedule_task
  if not schedule then
    error("async.sleep() is not available - configure schedule function")
  end
  local wait, done = waiter()
  schedule(seconds, done)
  wait()
end

local function wait_for(promise)
  local async_wait, async_done = waiter()
  local ret, err = nil, nil
  promise:next(function(r) ret = r end, function(e) err = e end):finally(async_done)
  async_wait()
  if ret then
    return ret
  else
    return nil, err
  end
end

---------------------------------------------------------------- module

local M = {
  ready = ready,
  waiter = waiter,
  guarder = guarder,
  runner = runner,
  wait = wait_for, -- old name of wait_for, kept as Prosody does
  wait_for = wait_for,
  sleep = sleep,
  waiting_runners = waiting_runners,
  default_runner_func = default_func,
}

-- Which waiter is in use ("c" or "lua"), and the pure-Lua one (for tests).
M._impl = waiter == lua_waiter and "lua" or "c"
M._lua_waiter = lua_waiter

-- nil restores the default (the runtime's if it installed one).
function M.set_nexttick(f)
  user_next_tick = f ~= nil
  next_tick = f or default_next_tick
end

function M.set_schedule_function(f)
  user_schedule = f ~= nil
  schedule_task = f or default_schedule
end

-- Runtime hooks ------------------------------------------------------------

-- _install_defaults(nexttick, schedule [, now]): the runtime's next-tick and
-- timer become the defaults; they take effect unless the user has set their
-- own with set_nexttick / set_schedule_function. `now` (optional) is the
-- clock used for waiting_runners.
function M._install_defaults(nt, sched, now)
  if nt ~= nil then
    nt = nt or immediate_tick
    default_next_tick = nt
    if not user_next_tick then next_tick = nt end
  end
  if sched ~= nil then
    default_schedule = sched
    if not user_schedule then schedule_task = sched end
  end
  if now ~= nil then time_now_hook = now end
end

-- _runner_of(thread): the runner whose coroutine `thread` is, or nil.
M._runner_of = find_runner

-- _tls_of(runner): the runner's session table (created on first use).
M._tls_of = get_tls

-- _set_tls(runner, t): gives the runner `t` as its session table.
function M._set_tls(r, t) rawset(r, TLS_SLOT, t) end

-- _set_tls_factory(f): f(runner) makes a runner's session table (nil: {}).
function M._set_tls_factory(f) tls_factory = f end

-- _runners(): every runner that has a coroutine or is parked, as a list
-- (for the control socket's `runners` and `trace`; see docs/actorctl.md).
function M._runners()
  local list, seen = {}, {}
  for r in pairs(waiting_runners) do
    seen[r] = true
    list[#list + 1] = r
  end
  for thread, r in pairs(runner_of) do
    if not seen[r] and r.thread == thread then
      seen[r] = true
      list[#list + 1] = r
    end
  end
  return list
end

-- _hot(): what the runtime's C paths (bindings/lhot.c) need to run pooled
-- runners and resume runners parked in sync calls with util.async's own
-- rules: the bookkeeping tables, and the steps run() and continue() take
-- after an item finished, parked or raised.
function M._hot()
  return {
    runner_of = runner_of, G = G, get_tls = get_tls,
    after_ready = after_ready, after_error = after_error,
    -- attach(r, body): r's thread becomes a coroutine running body
    attach = function(r, body)
      local thread = co_create(body)
      local hook, mask, count = gethook()
      if hook then sethook(thread, hook, mask, count) end
      runner_of[thread] = r
      r.thread = thread
      return thread
    end,
    -- what run() does when the item it resumed yields "wait"
    parked = function(r)
      r.state = "waiting"
      if r.notified_state ~= "waiting" then
        r.notified_state = "waiting"
        local handler = get_watcher(r, "waiting")
        if handler then handler(r) end
      end
      waiting_runners[r] = time_now()
    end,
    -- what run() does when the item it resumed raises
    failed = function(r, thread, e)
      local err = traceback(thread, e)
      runner_of[thread] = nil
      r.thread = nil
      r.state = "ready"
      local handler = get_watcher(r, "error")
      if handler then handler(r, err) end
      waiting_runners[r] = nil
    end,
  }
end

-- _set_logger(f): f(source, level, fmt, ...) receives every log message
-- (nil restores the default: warnings and errors to stderr).
function M._set_logger(f) log_sink = f or default_sink end

-- A runtime that set up a global _ACTOR_HOOKS table before loading us.
local hooks = rawget(G, "_ACTOR_HOOKS")
if type(hooks) == "table" then
  M._install_defaults(hooks.nexttick, hooks.schedule, hooks.now)
end

return M
