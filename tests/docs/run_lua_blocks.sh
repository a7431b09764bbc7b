#!/usr/bin/env bash
# Runs every ```lua block of README.md and docs/*.md with the `actor`
# program; each must exit 0 within 60 s. A block that is only a fragment
# (not runnable on its own) is fenced as ```lua-fragment instead.
# If a block is followed by a ```output block, its stdout must equal it.
set -u
ACTOR=$(realpath "${1:?usage: run_lua_blocks.sh path/to/actor [files...]}")
shift
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(README.md docs/*.md)
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
pass=0; fail=0
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  # split into numbered blocks: block.N.lua and optional block.N.out
  awk -v dir="$t" -v base="$(basename "$f" .md)" '
    /^```lua[[:space:]]*$/ { n++; inlua=1; file=sprintf("%s/%s.%03d.lua", dir, base, n); next }
    /^```output[[:space:]]*$/ && last==n && n>0 { inout=1; file=sprintf("%s/%s.%03d.out", dir, base, n); printf "" > file; next }
    /^```/ && (inlua||inout) { if (inlua) last=n; inlua=0; inout=0; next }
    /^```/ { last=-1; next }
    inlua || inout { print >> file; next }
    NF { last=-1 }
  ' "$f"
done
# blocks may use the example modules (netcb) and the ready actors
export LUA_PATH="$PWD/actors/examples/?.lua;$PWD/actors/?.lua;;"
for lua in "$t"/*.lua; do
  [ -e "$lua" ] || continue
  name=$(basename "$lua" .lua)
  out=$(cd "$t" && timeout 60 "$ACTOR" "$lua" 2>"$t/$name.err"); rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL $name (exit $rc)"; sed -n 1,15p "$t/$name.err"; fail=$((fail+1)); continue
  fi
  if [ -f "$t/$name.out" ] && [ "$out" != "$(cat "$t/$name.out")" ]; then
    echo "FAIL $name: output differs"; diff <(printf '%s\n' "$out") "$t/$name.out" | head -20; fail=$((fail+1)); continue
  fi
  echo "ok   $name"; pass=$((pass+1))
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
