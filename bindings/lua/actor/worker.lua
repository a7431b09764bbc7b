-- actor.worker: the `actor` and `msys` of a pool thread's state.
--
-- Threading: this state belongs to one pool thread. Waiting here blocks the
-- thread (there is no loop to park on): actor.sleep sleeps, actor.call and
-- a synchronous msys.runInPool block until the reply. A call into the
-- thread's own pool runs inline, so it cannot deadlock.
local core = ...

local type, error, pcall, tostring = type, error, pcall, tostring

local actor = {
  now = core.now,
  sleep = core.sleep,
  thread_id = core.thread_id,
  codec = require "actor.codec",
  pool_name = core.pool,
  pool_id = core.pool_id,
  worker_index = core.worker,
  in_pool = true,
}

local function call(fname, pool, timeout, fn, ...)
  if type(pool) ~= "string" and math.type(pool) ~= "integer" then
    error(("bad argument #1 to '%s' (pool name or id expected, got %s)"):format(fname, type(pool)), 3)
  end
  if type(fn) ~= "function" then
    error(("bad argument #2 to '%s' (function expected, got %s)"):format(fname, type(fn)), 3)
  end
  if pool == core.pool or pool == core.pool_id then
    return pcall(fn, ...)
  end
  return core.call(pool, timeout or 0, fn, ...)
end

function actor.call(pool, fn, ...)
  local timeout
  if type(pool) == "table" then pool, timeout = pool.pool, pool.timeout end
  return call("call", pool, timeout, fn, ...)
end

function actor.cast()
  error("actor.cast is not available inside a pool thread; use actor.call", 2)
end

local msys = {
  core = {
    ECTP_COMPLETE_CALLBACK = 1,
    ECTP_COMPLETE_CALLBACK_SCHED = 2,
    VALIDATE_CONT = 0,
    VALIDATE_DONE = 1,
  },
  sleep = core.sleep,
  threadpool = {},
}

function msys.runInPool(pool, closure, mode)
  if mode == nil or mode == false then
    return call("runInPool", pool, 0, closure)
  end
  error("bad argument #3 to 'runInPool' (inside a pool thread only the synchronous form is available)", 2)
end

_G.msys = msys
actor.msys = msys
package.loaded.actor = actor

-- Module tables cross by name (see actor.init).
local by_name = require "actor.byname"
by_name(actor.codec, "actor", actor)
by_name(actor.codec, "util.async", nil)
by_name(actor.codec, "actor.codec", actor.codec)
return actor
