-- actor.byname: makes a module table cross states by name. The codec
-- sends such a table as its module name, and the receiving state answers
-- with its own `require(name)`: a closure that uses `actor` (or util.async,
-- actor.codec) as an upvalue gets the destination's module, not a copy.
-- Used by both the scheduler state (actor.init) and pool states
-- (actor.worker); see docs/codec.md.
local setmetatable, getmetatable, require = setmetatable, getmetatable, require

return function(codec, name, t)
  local mt = { __name = "module " .. name }
  codec.register("module:" .. name, mt, {
    serialize = function() return name end,
    deserialize = function(n) return require(n) end,
  })
  if t ~= nil and getmetatable(t) == nil then setmetatable(t, mt) end
end
