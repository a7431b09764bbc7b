#!/usr/bin/env bash
# install_test.sh BUILD_DIR SOURCE_DIR [SANITIZE]
# Installs BUILD_DIR into a fresh prefix, then uses it the way users do:
#  1. docs/embedding.md's host program, extracted from the page and built
#     with `gcc host.c $(pkg-config --cflags --libs actor)`, runs and exits 0;
#  2. a CMake project finds the package (find_package(actor)), shared and
#     static;
#  3. stock lua5.4 with LUA_CPATH at the installed actor.so runs actor.run,
#     msys.runInPool and an actor script session;
#  4. the rockspec builds with `luarocks make` (offline) into a fresh tree,
#     and stock lua5.4 loads that module too.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
sanitize=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cflags=() preload=""
case $sanitize in
  address) cflags=(-fsanitize=address,undefined); preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
           export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0 ;;
  thread) cflags=(-fsanitize=thread); preload=$(gcc -print-file-name=libtsan.so) ;;
esac

echo "== cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
for f in include/actor/actor.h lib/libactor.so lib/libactor.a lib/pkgconfig/actor.pc \
         lib/cmake/actor/actorConfig.cmake lib/lua/5.4/actor.so bin/actor; do
  [ -e "$prefix/$f" ] || { echo "missing $f"; exit 1; }
done
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib

echo "== docs/embedding.md host program"
awk '/^```c$/{f=1;next} /^```$/{f=0} f' "$src/docs/embedding.md" > "$work/host.c"
[ -s "$work/host.c" ] || { echo "no c block in docs/embedding.md"; exit 1; }
( cd "$work" && gcc "${cflags[@]}" -Wall -Wextra -Werror host.c $(pkg-config --cflags --libs actor) -o host )
timeout 120 "$work/host"

echo "== find_package(actor)"
cmake -S "$src/tests/embed/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_FLAGS="${cflags[*]}" -DCMAKE_EXE_LINKER_FLAGS="${cflags[*]}" >/dev/null
cmake --build "$work/consumer" >/dev/null
timeout 60 "$work/consumer/consumer"
timeout 60 "$work/consumer/consumer_static"

stock_lua() { # cpath-dir
  LUA_CPATH="$1/?.so;;" LD_PRELOAD="$preload" timeout 120 lua5.4 - <<'LUA'
local actor = require "actor"
assert(type(msys) == "table" and msys.runInPool, "require 'actor' sets up msys")
-- actor.run and msys.runInPool from a runner
local a, b = actor.run(function()
  local ok, v = msys.runInPool("CPU", function() return 6 * 7 end)
  assert(ok, v)
  return v, actor.thread_id()
end)
assert(a == 42, a)
-- sync runInPool from the main chunk drives the loop
local ok, where = msys.runInPool("IO", function() return require("actor").pool_name end)
assert(ok and where == "IO", where)
-- util.async from stock Lua
local async = require "util.async"
actor.run(function() async.sleep(0.01) end)
-- an actor script with sessions
local session = require "actor.session"
assert(session.load("counter", function()
  local M = {}
  function M:add(n)
    self.total = (self.total or 0) + n
    _TLS.calls = (_TLS.calls or 0) + 1
    local ok, sq = msys.runInPool("CPU", function() return n * n end)
    return self.total, _TLS.calls, sq
  end
  return M
end))
local got = {}
actor.run(function()
  for i = 1, 3 do
    session.post("s1", "add", function(ok, total, calls, sq) got[#got + 1] = { ok, total, calls, sq } end, i)
  end
end)
assert(#got == 3 and got[3][2] == 6 and got[3][3] == 3 and got[3][4] == 9, "session results")
print("stock lua5.4: ok (" .. actor._VERSION .. ")")
LUA
}

echo "== stock lua5.4 with LUA_CPATH at the installed actor.so"
stock_lua "$prefix/lib/lua/5.4"

if command -v luarocks >/dev/null && [ -z "$sanitize" ]; then
  echo "== luarocks make (offline)"
  mkdir -p "$work/rocksrc"
  cp -r "$src/CMakeLists.txt" "$src/cmake" "$src/runtime" "$src/bindings" "$src/tools" "$src/rockspecs" "$work/rocksrc/"
  ( cd "$work/rocksrc" && timeout 600 luarocks --lua-version=5.4 --tree="$work/rocks" make rockspecs/actor-scm-1.rockspec >"$work/luarocks.log" 2>&1 ) ||
    { tail -30 "$work/luarocks.log"; exit 1; }
  stock_lua "$work/rocks/lib/lua/5.4"
else
  if [ -n "$sanitize" ]; then why="a $sanitize sanitizer build"; else why="luarocks is not installed"; fi
  echo "== luarocks make: skipped ($why)"
fi
echo "install test: ok"
