#!/usr/bin/env bash
# The control socket and actorctl against live runtimes (issue 7): figures
# move under load, resize takes effect, trace shows the real file:line,
# nngcat as an independent client, malformed and oversized requests, a
# runtime that exits while actorctl waits, discovery (none, one, several,
# stale), the directory's permissions, and `require "actor"` from lua5.4.
#
#   ctl_live.sh ACTOR ACTORCTL LUAMOD_DIR
set -u
ACTOR=${1:?usage: ctl_live.sh actor actorctl luamod_dir}
CTL=${2:?}
LUAMOD=${3:?}
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE" # scripts run by relative name, so frames read load.lua:N
fail=0; pass=0
t=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$t"; }
trap cleanup EXIT
export ACTOR_CONTROL_DIR=$t/ctl # isolated from every other runtime on the machine
unset ACTOR_CONTROL ACTOR_CONTROL_URL

ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; shift; [ $# -gt 0 ] && printf '%s\n' "$@" | head -30; fail=$((fail+1)); }
# check NAME WANT_STATUS REGEX CMD...: runs CMD, checks status and output
check() {
  local name=$1 want=$2 re=$3; shift 3
  local out rc
  out=$(timeout 30 "$@" 2>&1); rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name: exit $rc, wanted $want" "$out"; return 1; fi
  if [ -n "$re" ] && ! printf '%s' "$out" | grep -Eq -- "$re"; then bad "$name: output does not match /$re/" "$out"; return 1; fi
  ok "$name"
}
wait_file() { for _ in $(seq 1 100); do [ -e "$1" ] && return 0; sleep 0.05; done; return 1; }
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# ------------------------------------------------------------ no runtime
check none-running 1 "no actor runtime is running \(looked in $t/ctl\)" "$CTL" pools
check none-ls 0 "no actor runtime is running" "$CTL" ls
check usage 2 "unknown command 'bogus'" "$CTL" bogus
check usage-args 2 "wrong number of arguments for 'resize'" "$CTL" resize CPU

# ------------------------------------------------------------ one runtime
"$ACTOR" load.lua "$t/ready1" >"$t/load1.out" 2>&1 &
p1=$!; pids+=("$p1")
wait_file "$t/ready1" || bad "runtime did not start" "$(cat "$t/load1.out")"
sock=$t/ctl/$p1.sock
[ -S "$sock" ] && ok "socket named by pid" || bad "no socket at $sock" "$(ls -la "$t/ctl")"
[ "$(stat -c %a "$t/ctl")" = 700 ] && ok "directory mode 0700" || bad "directory mode $(stat -c %a "$t/ctl")"
[ "$(stat -c %a "$sock")" = 600 ] && ok "socket mode 0600" || bad "socket mode $(stat -c %a "$sock")"
check ls-one 0 "^PID +NAME +UPTIME +URL" "$CTL" ls
n=$("$CTL" ls --json | jget 'len(d)'); [ "$n" = 1 ] && ok "ls --json: one runtime" || bad "ls --json: $n"
keys=$("$CTL" ls --json | jget 'sorted(d[0].keys())')
[ "$keys" = "['name', 'pid', 'uptime', 'url']" ] && ok "ls fields" || bad "ls fields: $keys"
check auto-pick 0 "^CPU +[0-9]+" "$CTL" pools
check pick-pid 0 "^CPU +[0-9]+" "$CTL" -p "$p1" pools
check pick-url 0 "^CPU +[0-9]+" "$CTL" --url "ipc://$sock" pools
check pick-bad-pid 1 "no actor runtime with pid 999999" "$CTL" -p 999999 pools

# pools: documented fields, and figures that move under load
fields=$("$CTL" pools --json | jget '",".join(list(d[0].keys())[:11])')
[ "$fields" = "name,threads,busy,queued,invocations,errors,timeouts,avg_ms,p50_ms,p99_ms,saturation" ] \
  && ok "pools --json fields" || bad "pools --json fields: $fields"
inv1=$("$CTL" pools --json | jget '[r for r in d if r["name"]=="CPU"][0]["invocations"]')
sleep 0.6
inv2=$("$CTL" pools --json | jget '[r for r in d if r["name"]=="CPU"][0]["invocations"]')
[ "$inv2" -gt "$inv1" ] && ok "invocations move ($inv1 -> $inv2)" || bad "invocations did not move: $inv1 -> $inv2"
busy=0
for _ in $(seq 1 20); do
  b=$("$CTL" pools --json | jget '[r for r in d if r["name"]=="CPU"][0]["busy"]')
  [ "$b" -gt 0 ] && { busy=$b; break; }
  sleep 0.05
done
[ "$busy" -gt 0 ] && ok "busy threads seen under load ($busy)" || bad "never saw a busy thread"
avg=$("$CTL" pools --json | jget '[r for r in d if r["name"]=="CPU"][0]["avg_ms"] > 0 and [r for r in d if r["name"]=="CPU"][0]["p99_ms"] > 0')
[ "$avg" = True ] && ok "avg_ms and p99_ms above zero" || bad "avg_ms/p99_ms still zero"
check pool-threads 0 "load\.lua:7|idle|busy" "$CTL" pool CPU
check pool-busy-job 0 "busy +load\.lua:7" bash -c "for i in \$(seq 1 40); do \"$CTL\" pool CPU | grep -E 'busy +\S*load\.lua:7' && exit 0; sleep 0.05; done; exit 1"
check pool-unknown 1 "no such pool: 'NOPE'" "$CTL" pool NOPE

# resize takes effect
check resize 0 "pool CPU: [0-9]+ -> 3 threads" "$CTL" resize CPU 3
sleep 0.3
thr=$("$CTL" pools --json | jget '[r for r in d if r["name"]=="CPU"][0]["threads"]')
rows=$("$CTL" pool CPU --json | jget 'len(d)')
[ "$thr" = 3 ] && [ "$rows" = 3 ] && ok "resize took effect (3 threads, 3 rows)" || bad "after resize: threads=$thr rows=$rows"
check resize-down 0 "pool CPU: 3 -> 1 threads" "$CTL" resize CPU 1
sleep 0.5
rows=$("$CTL" pool CPU --json | jget 'len([t for t in d if t["state"]!="retiring"])')
[ "$rows" = 1 ] && ok "resize down took effect" || bad "after resize down: $rows live threads"
check resize-bad 2 "N must be a thread count" "$CTL" resize CPU 0

# runners and trace: the real file and line
park=$(grep -n 'sleep(3600) -- PARK_LINE' "$HERE/load.lua" | cut -d: -f1)
check runners 0 "waiting +0 +[0-9.]+(ms|s) +load\.lua:$park" "$CTL" runners
id=$("$CTL" runners --json | jget "[r['id'] for r in d if (r['where'] or '').endswith('load.lua:$park')][0]")
check trace 0 "load\.lua:$park: in " "$CTL" trace "$id"
check trace-json 0 "\"where\": \"load\.lua:$park\"" "$CTL" trace "$id" --json
check trace-unknown 1 "no runner with id 'zzz'" "$CTL" trace zzz
rfields=$("$CTL" runners --json | jget 'sorted(set(k for r in d for k in r) & {"id","state","queue","waiting_since","where"})')
[ "$rfields" = "['id', 'queue', 'state', 'waiting_since', 'where']" ] && ok "runners fields" || bad "runners fields: $rfields"

# gc, metrics, ping, top
check gc 0 "^scheduler .*KiB" "$CTL" gc
check gc-pool 0 "^CPU/1 " "$CTL" gc CPU
check gc-json 0 "\"state\": \"CPU/1\"" "$CTL" gc --json
check metrics 0 "^actor_pool_invocations_total\{pool=\"CPU\"\} [0-9]+$" "$CTL" metrics
check metrics-hist 0 "actor_pool_job_duration_seconds_bucket\{pool=\"CPU\",le=\"\+Inf\"\}" "$CTL" metrics
check ping 0 "^pong from $p1: control [0-9.]+ ms, scheduler [0-9.]+ ms" "$CTL" ping
check ping-json 0 "\"scheduler_rtt_ms\"" "$CTL" ping --json
check top 0 "actor top - pid $p1" "$CTL" top -n 2 -d 0.2
check top-json 0 "^\{\"time\":" "$CTL" top -n 1 --json

# nngcat: an independent client speaks the documented protocol
if command -v nngcat >/dev/null; then
  check nngcat-pools 0 '^\{"ok":true,"cmd":"pools","pools":\[\{"name":"CPU"' nngcat --req0 --dial "ipc://$sock" --data '{"cmd":"pools"}' --ascii
  check nngcat-malformed 0 '^\{"ok":false,"error":"malformed JSON' nngcat --req0 --dial "ipc://$sock" --data '{"cmd"' --ascii
  check nngcat-notobject 0 '"ok":false,"error":"request must be a JSON object' nngcat --req0 --dial "ipc://$sock" --data '[1,2]' --ascii
  check nngcat-unknown 0 '"ok":false,"error":"unknown command .bogus.' nngcat --req0 --dial "ipc://$sock" --data '{"cmd":"bogus"}' --ascii
  check nngcat-badfield 0 '"ok":false,"error":"command .pools. takes no field .x.' nngcat --req0 --dial "ipc://$sock" --data '{"cmd":"pools","x":1}' --ascii
  check nngcat-badtype 0 '"ok":false,"error":"field .threads. must be an integer' nngcat --req0 --dial "ipc://$sock" --data '{"cmd":"resize","pool":"CPU","threads":"9"}' --ascii
  check nngcat-dupkey 0 '"ok":false,"error":"malformed JSON.*duplicate' nngcat --req0 --dial "ipc://$sock" --data '{"cmd":"pools","cmd":"pools"}' --ascii
  check nngcat-empty 0 '"ok":false,"error":"empty request' nngcat --req0 --dial "ipc://$sock" --data '' --ascii
  head -c 70000 /dev/zero | tr '\0' ' ' >"$t/big"
  check nngcat-oversized 0 '"ok":false,"error":"request too large \(70000 bytes, limit 65536\)' nngcat --req0 --dial "ipc://$sock" --file "$t/big" --ascii
  head -c 4096 /dev/urandom >"$t/garbage"
  check nngcat-garbage 0 '"ok":false' nngcat --req0 --dial "ipc://$sock" --file "$t/garbage" --ascii
  # Above 1 MiB nng drops the message (and the pipe) before it reaches us.
  head -c 2000000 /dev/zero >"$t/huge"
  timeout 5 nngcat --req0 --dial "ipc://$sock" --file "$t/huge" --ascii --recv-timeout 1 >/dev/null 2>&1
  check alive-after-abuse 0 "^pong from $p1" "$CTL" ping
else
  echo "skip nngcat (not installed)"
fi

# ------------------------------------------------------- several runtimes
"$ACTOR" load.lua "$t/ready2" >"$t/load2.out" 2>&1 &
p2=$!; pids+=("$p2")
wait_file "$t/ready2" || bad "second runtime did not start"
check several 1 "2 actor runtimes are running; choose one with -p PID or --url URL" "$CTL" pools
check several-pick 0 "^CPU " "$CTL" -p "$p2" pools
# lua5.4 with require "actor" serves one too
# (skipped when the module cannot load into lua5.4, e.g. a sanitizer build)
if command -v lua5.4 >/dev/null && ACTOR_CONTROL=0 LUA_CPATH="$LUAMOD/?.so;;" lua5.4 -e "require 'actor'" >/dev/null 2>&1; then
  LUA_CPATH="$LUAMOD/?.so;;" lua5.4 -e "local a = require 'actor'; local f = io.open('$t/ready3','w') f:write('x') f:close(); a.spawn(function() a.sleep(3600) end); a.loop()" &
  p3=$!; pids+=("$p3")
  wait_file "$t/ready3" && sleep 0.2
  check lua54-serves 0 "lua5\.4" "$CTL" ls
  check lua54-pools 0 "^CPU " "$CTL" -p "$p3" pools
  kill "$p3"; wait "$p3" 2>/dev/null
fi

# stale entries: a runtime killed with SIGKILL leaves files; ls removes them
kill -9 "$p2"; wait "$p2" 2>/dev/null
[ -e "$t/ctl/$p2.json" ] && ok "SIGKILL leaves files behind" || bad "no files left after SIGKILL?"
check stale-skipped 0 "^CPU " "$CTL" pools
[ ! -e "$t/ctl/$p2.json" ] && [ ! -e "$t/ctl/$p2.sock" ] && ok "stale files removed" || bad "stale files still there" "$(ls "$t/ctl")"

# A signal that kills the process leaves files (cleaned up by the next
# actorctl); a clean exit removes its own.
kill -TERM "$p1"; wait "$p1" 2>/dev/null
"$CTL" ls >/dev/null
[ -z "$(ls "$t/ctl")" ] && ok "killed runtime cleaned up by ls" || bad "files left after ls" "$(ls -la "$t/ctl")"
"$ACTOR" -e "local a = require 'actor'; assert(a.control().url)" && [ -z "$(ls "$t/ctl")" ] && ok "clean exit removes its files" || bad "files left after a clean exit" "$(ls -la "$t/ctl")"

# ---------------------------------------- runtime exits while we wait
"$ACTOR" busy_exit.lua "$t/ready4" 2 >"$t/busy.out" 2>&1 &
p4=$!; pids+=("$p4")
wait_file "$t/ready4" && sleep 0.2
start=$(date +%s.%N)
out=$("$CTL" --timeout 20 pools 2>&1); rc=$?
took=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
if [ "$rc" = 1 ] && printf '%s' "$out" | grep -q "closed the connection before answering" && python3 -c "import sys; sys.exit(0 if $took < 10 else 1)"; then
  ok "runtime exits while actorctl waits: told in ${took}s"
else
  bad "runtime exit while waiting: rc=$rc took=${took}s" "$out"
fi
wait "$p4" 2>/dev/null

# a busy scheduler: ping answers, pools times out with a clear message
"$ACTOR" busy_exit.lua "$t/ready5" 4 >/dev/null 2>&1 &
p5=$!; pids+=("$p5")
wait_file "$t/ready5" && sleep 0.2
check busy-ping-control 0 "\"via\":\"control\"" nngcat --req0 --dial "ipc://$t/ctl/$p5.sock" --data '{"cmd":"ping"}' --ascii
check busy-timeout 1 "control thread is alive, but its scheduler is busy" "$CTL" --timeout 0.5 pools
wait "$p5" 2>/dev/null

# ------------------------------------------------------- turned off, tcp
ACTOR_CONTROL=0 "$ACTOR" -e "require 'actor'; local f = io.open('$t/ready6','w') f:close(); require('actor').sleep(1)" &
p6=$!; pids+=("$p6")
wait_file "$t/ready6" && sleep 0.1
[ ! -e "$t/ctl/$p6.sock" ] && ok "ACTOR_CONTROL=0 turns it off" || bad "socket exists with ACTOR_CONTROL=0"
kill "$p6" 2>/dev/null; wait "$p6" 2>/dev/null
port=$((20000 + RANDOM % 20000))
ACTOR_CONTROL_URL=tcp://127.0.0.1:$port "$ACTOR" -e "local a = require 'actor'; local f = io.open('$t/ready7','w') f:close(); a.sleep(30)" &
p7=$!; pids+=("$p7")
wait_file "$t/ready7" && sleep 0.1
check tcp-when-configured 0 "^CPU " "$CTL" --url "tcp://127.0.0.1:$port" pools
kill "$p7" 2>/dev/null; wait "$p7" 2>/dev/null
check lua-api 0 "^true\s+true\s+myname\s+nil$" "$ACTOR" -e "
local a = require 'actor'
local i = a.control()
local j = a.control{name = 'myname'}
local k = a.control{enabled = false}
print(i.url:match('^ipc://') ~= nil, j.url == i.url, j.name, k)"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
