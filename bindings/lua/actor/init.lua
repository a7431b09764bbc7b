-- actor.init: the public `actor` module and the `msys` global on the
-- scheduler state, built on the C core (bindings/lactor.c).
--
-- Threading: everything here runs on the scheduler thread. A caller that
-- waits parks its runner (a util.async runner) and is resumed by the loop
-- when the reply arrives; the main chunk instead drives the loop itself.
local core = ...

local async = require "util.async"

local type, select, error, pcall, tostring = type, select, error, pcall, tostring
local co_running = coroutine.running
local pack, unpack = table.pack, table.unpack
local now, step, submit, pending = core.now, core.step, core.submit, core.pending
local runner_of = async._runner_of

local M = { _VERSION = "actor " .. core.versions().actor, core = core }

---------------------------------------------------------------- loop hooks

-- util.async works out of the box: its schedule function is the runtime's
-- timer. Its next-tick runs the function at once, as Prosody's default
-- does: deferring it to the loop would change what a Prosody user observes
-- (a runner's state right after done()). The loop is what calls done() for
-- replies and timers, so no deep recursion builds up. core.tick remains
-- available to defer work explicitly (actor.nexttick).
local function nexttick(f) f() end
M.nexttick = core.tick
local function schedule(seconds, f)
  return core.timer(seconds, 0, f)
end
if async._install_defaults then async._install_defaults(nexttick, schedule) end

-- The main session's storage; runners swap _TLS for their own.
_OSTLS = _OSTLS or {}
if _TLS == nil then _TLS = {} end

-- Where is the caller? Returns the runner, or nil and "main"/"coroutine".
local function context()
  local co, main = co_running()
  if main then return nil, "main" end
  local r = runner_of and runner_of(co)
  if r then return r end
  return nil, "coroutine"
end
M.context = context

local function not_here(fname, level)
  error(fname .. ": called inside a coroutine that is not a runner "
    .. "(start it with actor.spawn or util.async.runner)", level + 1)
end

-------------------------------------------------------------------- runners

local function report(_, err)
  io.stderr:write("actor: error in runner: ", tostring(err), "\n")
end

local set_tls = async._set_tls

-- Starts fn(args...) in a new runner whose session table is `tls` (a fresh
-- one when nil).
local function spawn_in(tls, fn, args)
  local item
  if args then
    item = function() return fn(unpack(args, 1, args.n)) end
  else
    item = fn
  end
  local r = async.runner(nil, { error = report })
  if tls and set_tls then set_tls(r, tls) end
  r:run(item)
  return r
end

-- Internal callbacks (scheduler completions, timer callbacks) run in
-- runners taken from a free list: a runner whose item finished without
-- parking is ready for the next one, and its coroutine is reused. A runner
-- that parks is simply not returned; it is collected once done.
local free_runners, nfree = {}, 0
local MAX_FREE = 256

local function pooled_body(item) return item[1](unpack(item, 2, item.n)) end
local run_method = async.runner().run -- the method, looked up once

local function run_pooled(tls, fn, ...)
  local r
  if nfree > 0 then
    r = free_runners[nfree]
    free_runners[nfree] = nil
    nfree = nfree - 1
  else
    r = async.runner(pooled_body, { error = report })
  end
  if set_tls then set_tls(r, tls) end -- nil: a fresh table on first use
  local _, state = run_method(r, { n = select("#", ...) + 1, fn, ... })
  if state == "ready" and nfree < MAX_FREE then
    nfree = nfree + 1
    free_runners[nfree] = r
  end
end
M._run_pooled = run_pooled

-- spawn(fn, ...): runs fn(...) in a new runner; returns the runner.
function M.spawn(fn, ...)
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  return spawn_in(nil, fn, select("#", ...) > 0 and pack(...) or nil)
end

-- Drives the loop until nothing is pending, or `timeout` seconds passed.
function M.loop(timeout)
  local deadline = timeout and now() + timeout
  while pending() > 0 do
    local t = -1
    if deadline then
      t = deadline - now()
      if t <= 0 then break end
    end
    step(t)
  end
  return pending() == 0
end

-- One turn of the loop; waits at most `timeout` seconds (default 0).
function M.step(timeout)
  return step(timeout or 0)
end

-- run(fn, ...): fn in a new runner, loop until idle; fn's results or error.
function M.run(fn, ...)
  local res, err, failed
  local args = pack(...)
  local r = async.runner(function() res = pack(fn(unpack(args, 1, args.n))) end,
    { error = function(_, e) failed, err = true, e end })
  r:run(true)
  M.loop()
  if failed then error(err, 0) end
  if res then return unpack(res, 1, res.n) end
end

M.now = now
M.fd = core.fd
M.timeout = core.timeout
M.pending = pending

-- Parks the caller until `until_fn()` is true, serving the loop meanwhile.
-- In a runner it parks on a waiter that `wake` releases.
local function drive_main(is_done)
  while not is_done() do step(-1) end
end

function M.sleep(s)
  if type(s) ~= "number" then
    error("bad argument #1 to 'sleep' (number expected, got " .. type(s) .. ")", 2)
  end
  local r, where = context()
  if r then
    local wait, done = async.waiter()
    core.timer(s, 0, done)
    wait()
  elseif where == "main" then
    local fired = false
    core.timer(s, 0, function() fired = true end)
    drive_main(function() return fired end)
  else
    not_here("sleep", 2)
  end
end

local function timer_api(fname, period_of)
  return function(s, fn)
    if type(s) ~= "number" or s < 0 then
      error("bad argument #1 to '" .. fname .. "' (non-negative number expected, got " .. tostring(s) .. ")", 2)
    end
    if type(fn) ~= "function" then
      error("bad argument #2 to '" .. fname .. "' (function expected, got " .. type(fn) .. ")", 2)
    end
    -- the callback runs in its own runner, so it may park
    return core.timer(s, period_of(s), function() run_pooled(nil, fn) end)
  end
end
M.timer = timer_api("timer", function() return 0 end)
M.every = timer_api("every", function(s)
  if s <= 0 then error("bad argument #1 to 'every' (period must be positive)", 3) end
  return s
end)

---------------------------------------------------------------------- pools

-- Frames between the user's call and the Lua implementation of call, cast
-- and runInPool: their C fronts (bindings/lhot.c) call it. Error levels
-- below count that frame so messages still name the user's line. (call_impl
-- and cast_impl are tail-called, so they sit where the Lua function was.)
local F = core.hot_setup and 1 or 0

-- name or id -> id, name; pools are never removed, so this only grows.
local pool_ids, pool_names = {}, {}
-- id -> true when the pool has a backlog (callers may have to park)
local bounded = {}

local function pool_of(fname, p, argn)
  local id = pool_ids[p]
  if id then return id, pool_names[id] end
  local tp = type(p)
  if tp ~= "string" and math.type(p) ~= "integer" then
    error(("bad argument #%d to '%s' (pool name or id expected, got %s)"):format(argn, fname, tp), 3 + F)
  end
  local id, name = core.pool_find(p)
  if not id then
    error(("bad argument #%d to '%s' (no such pool: %s)"):format(argn, fname, tostring(p)), 3 + F)
  end
  pool_ids[p], pool_names[id] = id, name
  return id, name
end

-- Parks until the pool's backlog has room (backpressure).
local function wait_room(id, r)
  if not bounded[id] then return end
  while not core.room(id) do
    if r then
      local wait, done = async.waiter()
      core.wait_room(id, done)
      wait()
    else
      local ok = false
      core.wait_room(id, function() ok = true end)
      drive_main(function() return ok end)
    end
  end
end

local function call_impl(fname, pool, opts, fn, label, ...)
  local r, where = context()
  if not r and where ~= "main" then not_here(fname, 2 + F) end
  local id, name = pool_of(fname, pool, 1)
  if type(fn) ~= "function" then
    error(("bad argument #2 to '%s' (function expected, got %s)"):format(fname, type(fn)), 2 + F)
  end
  wait_room(id, r)
  local timeout = opts and opts.timeout or 0
  local tlsmode = opts and opts.tls ~= nil and (opts.tls and 2 or 0) or 1
  local res
  local wait, done
  if r then wait, done = async.waiter() end
  local function cb(...)
    res = pack(...)
    if done then done() end
  end
  local jid, err = submit(id, 0, tlsmode, timeout, cb, _TLS, nil, label, fn, ...)
  if not jid then return false, err end
  local t
  if timeout <= 0 then timeout = core.pool_timeout(id) end
  if timeout > 0 then
    t = core.timer(timeout, 0, function()
      core.abandon(jid, ("timed out after %g s in pool %s"):format(timeout, name), true)
    end)
  end
  if r then
    if not res then wait() end
  else
    drive_main(function() return res ~= nil end)
  end
  if t then t:cancel() end
  return unpack(res, 1, res.n)
end

local function split_opts(p)
  if type(p) == "table" then return p.pool, p end
  return p, nil
end

-- call(pool, fn, ...): runs fn(...) on a thread of the pool; the caller
-- parks. Returns true, results... or false, err [, traceback].
-- `pool` may be an options table {pool=, timeout=, tls=}.
function M.call(pool, fn, ...)
  local p, opts = split_opts(pool)
  return call_impl("call", p, opts, fn, "closure (argument #2 to call)", ...)
end


-- A scheduler completion runs in a new runner that shares the caller's
-- session (_TLS), after the closure's _TLS writes were merged into it.
local function spawn_completion(completion, tls)
  return function(...)
    run_pooled(tls, completion, ...)
  end
end

local function cast_impl(fname, pool, opts, fn, label, ...)
  local r = context()
  local id = pool_of(fname, pool, 1)
  if type(fn) ~= "function" then
    error(("bad argument #2 to '%s' (function expected, got %s)"):format(fname, type(fn)), 2 + F)
  end
  wait_room(id, r)
  local completion = opts and opts.completion
  local jid, err
  if completion and opts.sched then
    local tls = _TLS
    jid, err = submit(id, 0, 1, opts.timeout or 0, spawn_completion(completion, tls), tls, nil, label, fn, ...)
    if not jid then spawn_completion(completion, tls)(false, err) end
    return
  elseif completion then
    jid, err = submit(id, 1, 0, opts.timeout or 0, nil, nil, completion, label, fn, ...)
  else
    jid, err = submit(id, 1, 0, opts and opts.timeout or 0, nil, nil, nil, label, fn, ...)
  end
  if not jid then return false, err end
end

-- cast(pool, fn, ...): fire and forget. Sent when the caller returns to the
-- loop. Options: {pool=, completion=f, sched=true, timeout=}.
function M.cast(pool, fn, ...)
  local p, opts = split_opts(pool)
  return cast_impl("cast", p, opts, fn, "closure (argument #2 to cast)", ...)
end

local Pool = {}
Pool.__index = Pool
function Pool:resize(n)
  core.pool_resize(self.id, n)
  return self
end
function Pool:stat() return core.pool_stat(self.id) end
function Pool:threads() return core.pool_threads(self.id) end
function Pool:call(fn, ...) return M.call(self.name, fn, ...) end
function Pool:cast(fn, ...) return M.cast(self.name, fn, ...) end

-- pool(name [, opts]): creates or reconfigures a pool; returns its handle.
function M.pool(name, opts)
  if type(name) ~= "string" and math.type(name) ~= "integer" then
    error("bad argument #1 to 'pool' (pool name expected, got " .. type(name) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'pool' (table expected, got " .. type(opts) .. ")", 2)
  end
  local id, pname = core.pool_find(name)
  if not id or opts then
    if type(name) ~= "string" then
      error("bad argument #1 to 'pool' (no such pool: " .. tostring(name) .. ")", 2)
    end
    local threads = opts and opts.threads
    if threads ~= nil and (math.type(threads) ~= "integer" or threads < 1) then
      error("bad argument #2 to 'pool' (threads must be a positive integer, got " .. tostring(threads) .. ")", 2)
    end
    id = core.pool_create(pname or name, threads or 0, opts)
    id, pname = core.pool_find(id)
    bounded[id] = (core.pool_stat(id).backlog or 0) > 0
  end
  return setmetatable({ id = id, name = pname }, Pool)
end

-- configure(t | path): applies a configuration table, or a config file
-- (Lua syntax, run in an empty environment) that sets `pools = {...}` and
-- optionally `grace = seconds`. See docs/pools.md.
function M.configure(cfg)
  if type(cfg) == "string" then
    local env = {}
    local chunk, err = loadfile(cfg, "t", env)
    if not chunk then error("actor config: " .. err, 2) end
    local ok, ret = pcall(chunk)
    if not ok then error("actor config " .. cfg .. ": " .. tostring(ret), 2) end
    cfg = type(ret) == "table" and ret or env
  end
  if type(cfg) ~= "table" then
    error("bad argument #1 to 'configure' (table or file name expected, got " .. type(cfg) .. ")", 2)
  end
  if cfg.pools ~= nil and type(cfg.pools) ~= "table" then
    error("actor config: 'pools' must be a table of pool options", 2)
  end
  for name, opts in pairs(cfg.pools or {}) do
    if type(name) ~= "string" or type(opts) ~= "table" then
      error("actor config: pools." .. tostring(name) .. " must be a table of options", 2)
    end
    M.pool(name, opts)
  end
  if cfg.grace ~= nil then core.set_grace(cfg.grace) end
end

function M.pools()
  return core.pool_list()
end

function M.shutdown(grace)
  core.shutdown(grace)
end

M.codec = require "actor.codec"
M.versions = core.versions
M.thread_id = core.thread_id

----------------------------------------------------------------------- msys

local ECTP_COMPLETE_CALLBACK, ECTP_COMPLETE_CALLBACK_SCHED = 1, 2

local msys = rawget(_G, "msys") or {}
msys.core = msys.core or {}
msys.core.ECTP_COMPLETE_CALLBACK = ECTP_COMPLETE_CALLBACK
msys.core.ECTP_COMPLETE_CALLBACK_SCHED = ECTP_COMPLETE_CALLBACK_SCHED
msys.core.VALIDATE_CONT = msys.core.VALIDATE_CONT or 0
msys.core.VALIDATE_DONE = msys.core.VALIDATE_DONE or 1

local RUN_LABEL = "closure (argument #2 to runInPool)"

-- msys.runInPool(pool, closure [, async | completion [, mode]])
function msys.runInPool(pool, closure, mode, cmode)
  if mode == nil or mode == false then
    return call_impl("runInPool", pool, nil, closure, RUN_LABEL)
  elseif mode == true then
    return cast_impl("runInPool", pool, nil, closure, RUN_LABEL)
  elseif type(mode) == "function" or (getmetatable(mode) or {}).__call then
    local sched = cmode == ECTP_COMPLETE_CALLBACK_SCHED
    if not sched and type(mode) ~= "function" then
      error("bad argument #3 to 'runInPool' (a completion run in the pool must be a function)", 2 + F)
    end
    return cast_impl("runInPool", pool, { completion = mode, sched = sched }, closure, RUN_LABEL)
  else
    error("bad argument #3 to 'runInPool' (boolean or completion function expected, got " .. type(mode) .. ")", 2 + F)
  end
end

-- The plain cases of call, cast and runInPool run in C (bindings/lhot.c):
-- a sync caller parks and is resumed from C, a scheduler completion runs in
-- a pooled runner resumed from C. Everything else comes back to the Lua
-- functions above.
if core.hot_setup and async._hot then
  local h = async._hot()
  local attach = h.attach
  h.new_pooled = function(body)
    local r = async.runner(nil, { error = report })
    attach(r, body)
    return r
  end
  local run_in_pool, call, cast = core.hot_setup(h, msys.runInPool, M.call, M.cast)
  msys.runInPool, M.call, M.cast = run_in_pool, call, cast
else
  F = 0
end

msys.sleep = M.sleep
msys.threadpool = msys.threadpool or {}
function msys.threadpool.count() return #core.pool_list() end
function msys.threadpool.find(p)
  local id = core.pool_find(p)
  return id
end
function msys.threadpool.stat(p)
  local id = core.pool_find(p)
  if not id then return nil, "no such pool: " .. tostring(p) end
  return core.pool_stat(id)
end
_G.msys = msys
M.msys = msys

-- The runtime's own module tables cross by name: a closure that uses
-- `actor` (or util.async, actor.codec) as an upvalue gets the destination
-- state's module, not a copy of this one. See docs/codec.md.
local by_name = require "actor.byname"
by_name(M.codec, "actor", M)
by_name(M.codec, "util.async", async)
by_name(M.codec, "actor.codec", M.codec)

package.loaded.actor = M
return M
