#!/usr/bin/env bash
# tools/setup.sh -- the Quick start: installs what is missing (Debian 12, as
# root), builds, then runs the demo (`demo`) or the whole test suite (`test`).
#   tools/setup.sh demo            build (release preset) and run actors/demo.lua
#   tools/setup.sh test            build and run every test with ctest
#   tools/setup.sh test asan|tsan  the same under the sanitizer presets
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-demo}
preset=${2:-release}

pkgs=(cmake make gcc pkg-config liblua5.4-dev lua5.4 libnng-dev nng-utils libmsgpack-dev
      libcmocka-dev lua-busted lua-lpeg libjansson-dev lua-luv clang libclang-rt-14-dev luarocks)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== building (preset $preset)"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j"$(nproc)"

case $what in
  demo)
    exec "build/$preset/actor" actors/demo.lua ;;
  test)
    exec ctest --preset "$preset" -j"$(nproc)" ;;
  *)
    echo "usage: tools/setup.sh demo|test [release|debug|asan|tsan]" >&2; exit 2 ;;
esac
