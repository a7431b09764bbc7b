#!/usr/bin/env bash
# Checks the `actor` program's command line as a user meets it: exit
# statuses, usage errors, -v, -e, -l, arg, os.exit, --pool.
set -u
ACTOR=${1:?usage: actor_cli.sh path/to/actor}
fail=0; pass=0
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT

check() { # name expected_status expected_regex_in_output cmd...
  local name=$1 want=$2 re=$3; shift 3
  local out rc
  out=$(timeout 60 "$@" 2>&1); rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, wanted $want"; echo "$out" | head -20; fail=$((fail+1)); return
  fi
  if [ -n "$re" ] && ! printf '%s' "$out" | grep -Eq -- "$re"; then
    echo "FAIL $name: output does not match /$re/"; echo "$out" | head -20; fail=$((fail+1)); return
  fi
  echo "ok   $name"; pass=$((pass+1))
}

check version 0 "^actor [0-9.]+ \(Lua 5\.4\.[0-9]+, nng 1\.[0-9.]+, msgpack-c [0-9.]+\)" "$ACTOR" -v
check unknown-option 2 "^actor: unrecognized option '--bogus' \(usage: actor" "$ACTOR" --bogus
check missing-script 2 "cannot open script '$t/nope.lua'" "$ACTOR" "$t/nope.lua"
check bad-pool 2 "bad --pool value 'CPU=abc'" "$ACTOR" --pool CPU=abc -e "print(1)"
check bad-pool-noeq 2 "bad --pool value 'CPU'" "$ACTOR" --pool CPU -e "print(1)"
[ "$(printf '%s' "$("$ACTOR" --bogus 2>&1)" | wc -l)" -le 1 ] && { echo "ok   usage-one-line"; pass=$((pass+1)); } || { echo "FAIL usage-one-line"; fail=$((fail+1)); }
check dash-e 0 "^42$" "$ACTOR" -e "print(6*7)"
check dash-l 0 "^table$" "$ACTOR" -l string -e "print(type(string))"
check dash-l-alias 0 "^function$" "$ACTOR" -l A=actor -e "print(type(A.call))"
check globals 0 "^table[[:space:]]table[[:space:]]table$" "$ACTOR" -e "print(type(msys), type(_OSTLS), type(_TLS))"
check requires 0 "^function[[:space:]]function$" "$ACTOR" -e "print(type(require('actor').call), type(require('util.async').runner))"
want_paths=$(lua5.4 -e 'print(package.path) print(package.cpath)')
check same-paths 0 "" bash -c "[ \"\$(\"$ACTOR\" -e 'print(package.path) print(package.cpath)')\" = \"$want_paths\" ]"
cat >"$t/args.lua" <<'LUA'
print(arg[0], arg[1], arg[2], select('#', ...), ...)
LUA
check arg-table 0 "args.lua	a	b c	2	a	b c" "$ACTOR" "$t/args.lua" a "b c"
cat >"$t/err.lua" <<'LUA'
local function inner() error("kaboom") end
inner()
LUA
check script-error 1 "err.lua:1: kaboom" "$ACTOR" "$t/err.lua"
check script-traceback 1 "stack traceback:" "$ACTOR" "$t/err.lua"
cat >"$t/exit.lua" <<'LUA'
local actor = require "actor"
-- pool threads are alive and busy when os.exit is called
for i = 1, 4 do msys.runInPool("CPU", function() local x = 0 for j = 1, 1e6 do x = x + j end end, true) end
actor.step(0)
io.write("bye\n")
os.exit(3)
LUA
check os-exit 3 "^bye$" "$ACTOR" "$t/exit.lua"
cat >"$t/exit0.lua" <<'LUA'
msys.runInPool("IO", function() return 1 end)
os.exit(true, true)
LUA
check os-exit-close 0 "" "$ACTOR" "$t/exit0.lua"
cat >"$t/pool.lua" <<'LUA'
print(msys.threadpool.stat("CPU").num_threads, msys.threadpool.stat("IO").num_threads)
LUA
check pool-option 0 "^3[[:space:]]5$" "$ACTOR" --pool CPU=3 --pool IO=5 "$t/pool.lua"
check default-pools 0 "^$(nproc)[[:space:]]8$" "$ACTOR" "$t/pool.lua"
cat >"$t/loop.lua" <<'LUA'
local actor = require "actor"
actor.spawn(function() actor.sleep(0.05) io.write("after sleep\n") end)
io.write("main chunk returned; ")
LUA
check drives-loop 0 "main chunk returned.*after sleep" "$ACTOR" "$t/loop.lua"
cat >"$t/cfg.lua" <<'LUA'
pools = { CPU = { threads = 3 }, DB = { threads = 2, timeout = 5, backlog = 100 } }
LUA
check config-file 0 "^3[[:space:]]2[[:space:]]5(\.0)?[[:space:]]100$" "$ACTOR" --config "$t/cfg.lua" -e 'local s = msys.threadpool.stat("DB") print(msys.threadpool.stat("CPU").num_threads, s.num_threads, s.timeout, s.backlog)'
echo 'pools = { X = 5 }' > "$t/badcfg.lua"
check config-bad 1 "pools.X must be a table of options" "$ACTOR" --config "$t/badcfg.lua" -e 'print(1)'
check config-missing 2 "cannot open config file" "$ACTOR" --config "$t/none.lua" -e 'print(1)'
echo "print('from stdin')" > "$t/stdin.lua"
check stdin 0 "^from stdin$" bash -c "\"$ACTOR\" - < \"$t/stdin.lua\""

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
