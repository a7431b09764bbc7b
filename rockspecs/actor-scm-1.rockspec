-- LuaRocks package of the `actor` Lua module (the runtime as a C module for
-- stock Lua 5.4). Builds offline with the project's CMake build:
--   luarocks --lua-version=5.4 make rockspecs/actor-scm-1.rockspec
-- Needs cmake, a C compiler and Debian's liblua5.4-dev, libnng-dev and
-- libmsgpack-dev; nothing is downloaded.
rockspec_format = "3.0"
package = "actor"
version = "scm-1"
source = {
  url = "git+file:///dev/null", -- `luarocks make` builds the checked-out tree
}
description = {
  summary = "Actor-style multi-state runtime for Lua 5.4: pools of worker threads, util.async, msys.runInPool",
  detailed = [[
`require "actor"` turns any Lua 5.4 state into a scheduler: closures run on
named pools of OS threads (each with its own lua_State) and callers park in
util.async runners until their results come back. Includes msys.runInPool,
util.async (Prosody-compatible), actor.session (actor scripts with self and
_TLS) and the msgpack codec.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    ACTOR_LUA_CMOD_DIR = "$(LIBDIR)",
    ACTOR_INSTALL_LUA_ONLY = "ON",
    BUILD_TESTING = "OFF",
  },
}
