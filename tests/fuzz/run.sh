#!/usr/bin/env bash
# Builds the codec fuzz target with clang and runs it for N seconds.
#
#   tests/fuzz/run.sh [seconds]        (default 60)
#
# The target is compiled directly with clang (no CMake configure of the whole
# project needed); `cmake -DACTOR_FUZZ=ON` with CC=clang builds the same
# target as `codec_fuzz`. New inputs found go to build-fuzz/corpus (the seed
# corpus in tests/fuzz/corpus is left untouched). Crashes are written to
# build-fuzz/ and make the script exit non-zero.
set -euo pipefail
secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${FUZZ_OUT:-$root/build-fuzz}
mkdir -p "$out/corpus"
clang -std=c11 -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer \
  -fno-sanitize-recover=undefined \
  -I"$root/runtime" $(pkg-config --cflags lua5.4 msgpack) \
  "$here/fuzz_decode.c" "$root/runtime/codec.c" "$root/bindings/lcodec.c" \
  $(pkg-config --libs lua5.4 msgpack) -lm -o "$out/codec_fuzz"
cd "$out"
exec ./codec_fuzz -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$out/" corpus "$here/corpus"
