#!/usr/bin/env bash
# The one benchmark command (issue 8):
#
#   tests/bench/run.sh [--smoke] [build-dir] [runs]
#
#   build-dir  a configured and built tree (default: ./build of the repository)
#   runs       how many times each benchmark runs (default 5)
#   --smoke    pass --smoke to every benchmark (tiny N; the figures mean
#              nothing) and fail if any benchmark fails; ctest runs this.
#
# Convention for benchmarks
# -------------------------
# * A benchmark is one of
#     - an executable named baseline_* or bench_* (or *_bench) in
#       <build-dir>/tests/bench/  (C, built by tests/bench/CMakeLists.txt);
#     - a script tests/bench/bench_*.lua, run as `<build-dir>/actor <script>`;
#     - tests/bench/baseline_luv.lua, run by stock lua5.4 with lua-luv.
#   Anything that does not exist (yet) is skipped with a note.
# * Every benchmark accepts --smoke and prints, on stdout, one line per figure:
#       RESULT <name> <value> <unit>
#   e.g. `RESULT nng_pair1_rtt_us 39.2 us`. Other lines are ignored. Result
#   names are global: two benchmarks must not print the same name.
# * Runs are interleaved (run 1 of every benchmark, then run 2 of every
#   benchmark, ...) so that drift of the machine hits all of them alike.
#   The table shows the median of each name over all runs, with min and max.
# * Thread count: BENCH_THREADS (default 2) is exported, and so is
#   UV_THREADPOOL_SIZE=$BENCH_THREADS for luv. Runtime benchmarks should size
#   their pools from BENCH_THREADS so the comparisons use equal thread counts.
# * Ratios are configured in RATIOS below: result, baseline, which direction
#   is better, and the goal for value/baseline. A baseline of "-" checks the
#   value itself against the goal. Rows whose figures are missing are shown
#   as "not measured".
# * BENCH_TIMEOUT (seconds, default 120) bounds each single run.
#
# The output is a markdown table, ready to paste into docs/performance.md;
# it is also saved, with the raw RESULT lines, in <build-dir>/bench-results/.

set -u

# ---- ratios ----------------------------------------------------------------
# result                    baseline                better   goal     what
RATIOS='
sched_jobs_per_s            luv_queue_jobs_per_s    higher   >=1.5    (a) 200k jobs, scheduler completion, vs luv
runners_sync_jobs_per_s     luv_queue_jobs_per_s    higher   >=1.2    (b) 1000 runners x 200 sync calls, vs luv
sync_rtt_us                 nng_pair1_rtt_us        lower    <=1.25   (c) sequential sync round trip, vs raw nng
sync_rtt_us                 condvar_rtt_us          lower    -        (c) the same, vs the condvar floor
async_c_cycle_ratio         -                       lower    <=3      (d) wait/done cycle / bare resume+yield (same run)
async_c_create_run_ratio    -                       lower    <=10     (d) create+run / bare create+resume (same run)
async_c_parked_bytes        -                       lower    <=1536   (d) memory per parked runner (each with its own closure)
async_c_parked_shared_bytes -                       lower    <=1536   (d) memory per parked runner (one shared function)
cpu_speedup_2t              -                       higher   >=1.8    (e) 2 threads vs 1 (0.9 x threads)
parked_caller_rss_bytes     -                       lower    <=4096   (f) peak RSS per parked caller
nng_pair1_rtt_us            condvar_rtt_us          lower    -        baseline: raw nng vs condvar floor
luv_seq_rtt_us              nng_pair1_rtt_us        lower    -        baseline: luv sequential vs raw nng
nng_pool_k1_jobs_per_s      luv_queue_jobs_per_s    higher   -        baseline: 1 job/message vs luv
nng_pool_k8_jobs_per_s      luv_queue_jobs_per_s    higher   -        baseline: 8 jobs/message vs luv
nng_pool_k32_jobs_per_s     luv_queue_jobs_per_s    higher   -        baseline: 32 jobs/message vs luv
nng_pool_k128_jobs_per_s    luv_queue_jobs_per_s    higher   -        baseline: 128 jobs/message vs luv
'

# ---- arguments -------------------------------------------------------------
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SMOKE=0
POS=()
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) POS+=("$a") ;;
  esac
done
BUILD=${POS[0]:-$SRC/build}
RUNS=${POS[1]:-5}
if [ ! -d "$BUILD" ]; then
  echo "run.sh: build directory $BUILD not found; configure and build first" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
case "$RUNS" in ''|*[!0-9]*|0) echo "run.sh: runs must be a positive integer" >&2; exit 2 ;; esac

export BENCH_THREADS=${BENCH_THREADS:-2}
export UV_THREADPOOL_SIZE=$BENCH_THREADS
TIMEOUT=${BENCH_TIMEOUT:-120}
OUT=$BUILD/bench-results
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: > "$RAW"
NOTES=()
FAILED=0

# ---- the benchmarks --------------------------------------------------------
# Each entry: a label, then the command, separated by a tab.
BENCHES=()
add_bench() { BENCHES+=("$1"$'\t'"$2"); }

BDIR=$BUILD/tests/bench
for b in baseline_condvar baseline_nng; do
  if [ -x "$BDIR/$b" ]; then add_bench "$b" "$BDIR/$b"
  else NOTES+=("skipped $b: $BDIR/$b not built"); fi
done
if command -v lua5.4 >/dev/null 2>&1 && lua5.4 -e 'require "luv"' >/dev/null 2>&1; then
  add_bench baseline_luv "lua5.4 $SRC/tests/bench/baseline_luv.lua"
else
  NOTES+=("skipped baseline_luv: lua5.4 with lua-luv not available")
fi
shopt -s nullglob
for f in "$BDIR"/bench_* "$BDIR"/*_bench; do
  if [ -f "$f" ] && [ -x "$f" ]; then add_bench "$(basename "$f")" "$f"; fi
done
lua_benches=("$SRC"/tests/bench/bench_*.lua)
if [ ${#lua_benches[@]} -eq 0 ]; then
  NOTES+=("no tests/bench/bench_*.lua yet: runtime benchmarks skipped")
elif [ ! -x "$BUILD/actor" ]; then
  NOTES+=("skipped ${#lua_benches[@]} tests/bench/bench_*.lua: $BUILD/actor not built")
else
  for f in "${lua_benches[@]}"; do
    add_bench "$(basename "$f" .lua)" "$BUILD/actor $f"
  done
fi

# ---- running ---------------------------------------------------------------
TO=()
if command -v timeout >/dev/null 2>&1; then TO=(timeout "$TIMEOUT"); fi
EXTRA=()
[ "$SMOKE" = 1 ] && EXTRA=(--smoke)

for ((r = 1; r <= RUNS; r++)); do
  for e in "${BENCHES[@]}"; do
    label=${e%%$'\t'*}
    cmd=${e#*$'\t'}
    echo "run $r/$RUNS: $label" >&2
    # shellcheck disable=SC2086 # cmd is a word list by construction
    out=$("${TO[@]}" $cmd "${EXTRA[@]}" 2>"$OUT/$label.stderr")
    rc=$?
    printf '%s\n' "$out" | awk -v b="$label" -v r="$r" \
      '$1 == "RESULT" && NF >= 4 && $3 ~ /^[-+0-9.eE]+$/ { print $2, $3, $4, b, r }' >> "$RAW"
    if [ $rc -ne 0 ]; then
      FAILED=1
      NOTES+=("$label run $r failed (exit $rc); see $OUT/$label.stderr")
      echo "run.sh: $label run $r failed (exit $rc):" >&2
      tail -n 5 "$OUT/$label.stderr" >&2
    fi
  done
done

# ---- tables ----------------------------------------------------------------
MED=$OUT/medians.txt
# name median unit min max count, in the order the names first appeared
awk '
  !($1 in cnt) { order[++names] = $1; unit[$1] = $3 }
  { cnt[$1]++; val[$1, cnt[$1]] = $2 + 0 }
  END {
    for (i = 1; i <= names; i++) {
      k = order[i]; n = cnt[k]
      for (a = 1; a <= n; a++) v[a] = val[k, a]
      for (a = 2; a <= n; a++) {          # insertion sort, n is small
        x = v[a]
        for (b = a - 1; b >= 1 && v[b] > x; b--) v[b + 1] = v[b]
        v[b + 1] = x
      }
      med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
      print k, med, unit[k], v[1], v[n], n
    }
  }' "$RAW" > "$MED"

fmt() { awk -v x="$1" 'BEGIN {
  a = (x < 0) ? -x : x
  if (a >= 1000) printf "%.0f", x; else if (a >= 100) printf "%.1f", x
  else if (a >= 1) printf "%.2f", x; else printf "%.3g", x }'; }

declare -A MEDIAN
while read -r name med unit lo hi n; do MEDIAN[$name]=$med; done < "$MED"

{
  if [ "$SMOKE" = 1 ]; then echo "**Smoke run: tiny N, the figures mean nothing.**"; echo; fi
  echo "Benchmarks: medians of $RUNS run(s), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')"
  echo "- source: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$SRC" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "- command: \`tests/bench/run.sh$([ "$SMOKE" = 1 ] && echo ' --smoke') $BUILD $RUNS\`, BENCH_THREADS=$BENCH_THREADS"
  echo
  echo "| result | median | unit | min | max | runs |"
  echo "|---|---:|---|---:|---:|---:|"
  while read -r name med unit lo hi n; do
    echo "| $name | $(fmt "$med") | $unit | $(fmt "$lo") | $(fmt "$hi") | $n |"
  done < "$MED"
  echo
  echo "| result | compared with | ratio | better | goal | met | what |"
  echo "|---|---|---:|---|---|---|---|"
  printf '%s\n' "$RATIOS" | while read -r res base dir goal what; do
    [ -z "$res" ] && continue
    v=${MEDIAN[$res]:-}
    if [ "$base" = "-" ]; then b=1; else b=${MEDIAN[$base]:-}; fi
    if [ -z "$v" ] || [ -z "$b" ]; then
      echo "| $res | $base | not measured | $dir | $goal | | $what |"
      continue
    fi
    if [ "$base" = "-" ]; then ratio=$v; else ratio=$(awk -v a="$v" -v b="$b" 'BEGIN { printf "%.3g", (b == 0) ? 0 : a / b }'); fi
    met=""
    if [ "$goal" != "-" ]; then
      met=$(awk -v r="$ratio" -v g="$goal" 'BEGIN {
        op = substr(g, 1, 2); x = substr(g, 3) + 0
        ok = (op == ">=") ? (r >= x) : (op == "<=") ? (r <= x) : 0
        print ok ? "yes" : "**no**" }')
    fi
    [ "$base" = "-" ] && ratio="$(fmt "$v") (value)"
    echo "| $res | $base | $ratio | $dir | $goal | $met | $what |"
  done
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    for n in "${NOTES[@]}"; do echo "- note: $n"; done
  fi
} | tee "$OUT/table.md"

exit $FAILED
