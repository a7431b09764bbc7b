-- actor.session: actor scripts and the sessions that call their handlers.
--
-- An actor script is a Lua file whose main chunk returns its module table
-- (or calls msys.registerModule(name, table)). Its handlers are methods:
--
--   local mod = {}
--   function mod:validate_data(msg, ac, vctx) ... end
--   return mod
--
-- An event "call handler H of session S with args..." runs
-- module.H(self, args...) inside S's runner, where
--   self  is S's table for this script; it falls back to the module table
--         (__index), so self:other_method() works and fields set on self
--         stay with the session;
--   _TLS  is S's storage (one table per session, shared by every script the
--         session calls; pool closures see a copy, merged back).
-- Events of one session run one at a time, in the order they were posted;
-- different sessions run concurrently (a handler that parks on a pool call
-- or a sleep lets the others go on).
--
-- Threading: scheduler state only. Used by the C API (runtime/api.c), by
-- `actor serve` (bindings/lserve.c) and directly by Lua code.
--
-- The completion protocol: every event carries `done` and a `token`; done is
-- called exactly once as
--   done(token, true, results...)    the handler returned
--   done(token, false, message)      the handler raised (message has the
--                                    traceback); or the session was ended
--   done(token, nil, message)        no such script or handler
-- unless the module was closed (M.close) before the event ran.

local async = require "util.async"

local type, tostring, setmetatable, getmetatable, rawget, select, pcall, xpcall =
      type, tostring, setmetatable, getmetatable, rawget, select, pcall, xpcall
local pack, unpack = table.pack, table.unpack
local traceback = debug.traceback
local set_tls = async._set_tls

local M = {}

local scripts = {}        -- name -> module table
local default_name = nil  -- first script loaded
local sessions = {}       -- key -> session record
local nsessions = 0
local closed = false

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function report(_, err)
  io.stderr:write("actor: error in session runner: ", tostring(err), "\n")
end

-- The error message of a handler: strings get the runner's traceback.
local function msgh(e)
  if type(e) == "string" then return traceback(e, 2) end
  return e
end

---------------------------------------------------------------- scripts

-- register(name, module): makes a module's handlers available as "name:h"
-- (and as "h" when it is the default script). Sessions that already have a
-- table for `name` fall back to the new module from now on.
function M.register(name, mod)
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'register' (script name expected)", 2)
  end
  if type(mod) ~= "table" then
    error("bad argument #2 to 'register' (module table expected, got " .. type(mod) .. ")", 2)
  end
  scripts[name] = mod
  if default_name == nil then default_name = name end
  for _, s in pairs(sessions) do
    local self = s.selves[name]
    if self then getmetatable(self).__index = mod end
  end
  return mod
end

-- load(name, chunk [, ...]): runs a loaded chunk (a function) as an actor
-- script: its first result, or the table it gave msys.registerModule, is
-- the module. Returns the module, or nil, message.
function M.load(name, chunk, ...)
  if type(chunk) ~= "function" then return nil, "script chunk expected" end
  local msys = rawget(_G, "msys")
  local registered
  local prev
  if type(msys) == "table" then
    prev = rawget(msys, "registerModule")
    msys.registerModule = function(_, t)
      registered = t
      return t
    end
  end
  local res = pack(xpcall(chunk, msgh, ...))
  if type(msys) == "table" then msys.registerModule = prev end
  if not res[1] then return nil, tostring(res[2]) end
  local mod = res[2]
  if type(mod) ~= "table" then mod = registered end
  if type(mod) ~= "table" then
    return nil, "script " .. name .. " did not return a module table"
  end
  return M.register(name, mod)
end

-- loadfile(name, path): load() of a file.
function M.loadfile(name, path)
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  return M.load(name, chunk, name)
end

function M.script(name) return scripts[name or default_name] end
function M.default() return default_name end

-- Finds the function for "h" or "script:h". Returns fn, script name, or
-- nil, message.
local function resolve(handler)
  local sname, method = handler:match("^([%w_%-]+):(.+)$")
  if not sname then sname, method = default_name, handler end
  local mod = sname and scripts[sname]
  if not mod then
    if sname then return nil, "no such script: " .. sname end
    return nil, "no actor script is loaded"
  end
  local f = mod[method]
  if not is_callable(f) then
    return nil, ("no handler '%s' in script %s"):format(method, sname)
  end
  return f, sname
end
M.resolve = resolve

---------------------------------------------------------------- sessions

local current_key = setmetatable({}, { __mode = "k" }) -- runner -> key

local function new_session(key)
  local s = { key = key, tls = {}, selves = {}, queued = 0 }
  s.runner = async.runner(nil, { error = report })
  set_tls(s.runner, s.tls)
  current_key[s.runner] = key
  sessions[key] = s
  nsessions = nsessions + 1
  return s
end

local function self_of(s, sname)
  local self = s.selves[sname]
  if not self then
    self = setmetatable({}, { __index = scripts[sname] })
    s.selves[sname] = self
  end
  return self
end

-- The key of the session whose event is running, or nil.
function M.current()
  local co = coroutine.running()
  local r = async._runner_of(co)
  return r and current_key[r]
end

-- dispatch(key, handler, done, token, args...): queues an event in session
-- `key` (created on first use). See the completion protocol above.
function M.dispatch(key, handler, done, token, ...)
  if closed then return end
  local f, sname = resolve(handler)
  if not f then return done(token, nil, sname) end
  local s = sessions[key] or new_session(key)
  local self = self_of(s, sname)
  local args = pack(...)
  s.queued = s.queued + 1
  s.runner:run(function()
    s.queued = s.queued - 1
    if closed then return end
    done(token, xpcall(f, msgh, self, unpack(args, 1, args.n)))
  end)
end

-- post(key, handler, callback, args...): dispatch for Lua callers;
-- callback(ok, ...) gets done's values (ok nil: no handler).
function M.post(key, handler, callback, ...)
  return M.dispatch(key, handler, function(_, ...)
    if callback then return callback(...) end
  end, nil, ...)
end

-- finish(key): ends a session after its queued events. Every script the
-- session used that has a `session_end` handler gets it called (results
-- ignored); then the session's tables are dropped. A later event for the
-- same key starts a new session at once.
function M.finish(key)
  local s = sessions[key]
  if not s then return false end
  sessions[key] = nil
  nsessions = nsessions - 1
  s.runner:run(function()
    if closed then return end
    for sname, self in pairs(s.selves) do
      local mod = scripts[sname]
      local f = mod and rawget(mod, "session_end")
      if is_callable(f) then
        local ok, err = xpcall(f, msgh, self)
        if not ok then report(nil, err) end
      end
    end
    s.selves = {}
  end)
  return true
end

-- Number of live sessions, and of events queued or running in them.
function M.count()
  local events = 0
  for _, s in pairs(sessions) do events = events + s.queued end
  return nsessions, events
end

function M.exists(key) return sessions[key] ~= nil end

-- close(): no event runs after this; used before the runtime closes.
function M.close()
  closed = true
end

return M
