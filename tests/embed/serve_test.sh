#!/usr/bin/env bash
# serve_test.sh ACTOR SERVE_CLIENT SOURCE_DIR
# `actor serve` as a client we did not write sees it: nngcat (nng-utils)
# and serve_client.c (nng + msgpack-c only), over ipc:// and tcp://.
set -euo pipefail
actor=$1 client=$2 src=$3
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + $$ % 20000))
fail() { echo "FAIL: $*"; [ -f "$work/serve.err" ] && cat "$work/serve.err"; exit 1; }

# req FILE URL -> hex of the reply
req() { timeout 10 nngcat --req0 --dial "$2" --file "$1" --raw | od -An -tx1 | tr -d ' \n'; }
bin() { printf "$2" > "$work/$1"; }

echo "== usage errors"
set +e
"$actor" serve >/dev/null 2>&1; [ $? -eq 2 ] || fail "no arguments should exit 2"
"$actor" serve "$src/tests/embed/serve_fixture.lua" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no --listen should exit 2"
"$actor" serve --listen ipc://x /nonexistent.lua >/dev/null 2>&1; [ $? -eq 2 ] || fail "missing script should exit 2"
"$actor" serve --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown option should exit 2"
set -e

echo "== serving serve_fixture.lua and actors/hasher.lua"
rep=ipc://$work/rep tcp=tcp://127.0.0.1:$port pull=ipc://$work/pull
"$actor" serve --listen "$rep" --listen "$tcp" --pull "$pull" --contexts 16 \
  "$src/tests/embed/serve_fixture.lua" "$src/actors/hasher.lua" 2>"$work/serve.err" &
pids+=($!)
server=$!
bin ping '\x91\xa4echo'
for i in $(seq 100); do
  [ "$(req "$work/ping" "$rep" 2>/dev/null)" = "91c3" ] && break
  sleep 0.1
done

echo "== nngcat"
bin echo '\x93\xa4echo\xa2hi\xc0'
[ "$(req "$work/echo" "$rep")" = "93c3a26869c0" ] || fail "echo: $(req "$work/echo" "$rep")"
[ "$(req "$work/echo" "$tcp")" = "93c3a26869c0" ] || fail "echo over tcp"
bin square '\x92\xa6square\x07'
[ "$(req "$work/square" "$rep")" = "92c331" ] || fail "square"
# one connection = one session (several requests on one connection are
# checked by serve_client below; nngcat opens a new connection each run)
bin count '\x91\xa5count'
# a new connection is a new session
[ "$(req "$work/count" "$rep")" = "92c301" ] || fail "new connection, new session"
# the map form names a session that outlives connections
bin named '\x82\xa7handler\xa5count\xa7session\xa4mail'
[ "$(req "$work/named" "$rep")" = "92c301" ] || fail "named session 1"
[ "$(req "$work/named" "$tcp")" = "92c302" ] || fail "named session 2 (other connection, other transport)"
bin short '\x82\xa1h\xa5count\xa1s\x07'
[ "$(req "$work/short" "$rep")" = "92c301" ] || fail "short map form"
# errors: [false, message]
bin failing '\x92\xa4fail\xa4oops'
case $(req "$work/failing" "$rep") in 92c2*) ;; *) fail "handler error";; esac
timeout 10 nngcat --req0 --dial "$rep" --file "$work/failing" --raw | grep -q oops || fail "error message"
bin nosuch '\x91\xa6nosuch'
case $(req "$work/nosuch" "$rep") in 92c2*) ;; *) fail "unknown handler";; esac
for bad in '\xc1' '\x90' '\x92\x01\x02' '\x91' '\x82\xa1x\x01\xa1y\x02' '\x91\xa4echo\x00' '\x01'; do
  bin bad "$bad"
  case $(req "$work/bad" "$rep") in 92c2*) ;; *) fail "malformed request $bad";; esac
done
# the hasher example: "script:handler" addresses the second script
bin abc '\x92\xadhasher:sha256\xa3abc'
timeout 10 nngcat --req0 --dial "$rep" --file "$work/abc" --raw | grep -q ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad || fail "sha256(abc)"
bin long '\x92\xadhasher:sha256\xd9\x38abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'
timeout 10 nngcat --req0 --dial "$rep" --file "$work/long" --raw | grep -q 248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1 || fail "sha256(448 bits)"
bin many '\x92\xb2hasher:sha256_many\x92\xa0\xa3abc'
timeout 10 nngcat --req0 --dial "$rep" --file "$work/many" --raw | grep -q e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 || fail "sha256_many"
bin verify '\x93\xadhasher:verify\xa3abc\xd9\x40ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
[ "$(req "$work/verify" "$rep")" = "92c3c3" ] || fail "verify"
bin stats '\x92\xa4echo\x01'
# one-way: push0 to the pull socket; nothing comes back
bin rec '\x92\xa6record\x01'
nngcat --push0 --dial "$pull" --file "$work/rec"
bin recorded '\x91\xa8recorded'
for i in $(seq 50); do [ "$(req "$work/recorded" "$rep")" = "92c301" ] && break; sleep 0.1; done
[ "$(req "$work/recorded" "$rep")" = "92c301" ] || fail "one-way message"

echo "== serve_client (4 connections, ordered sessions, a shared session, 100 one-way messages)"
# the fixture counts one-way messages from 1: restart the count by using a new server
kill -TERM "$server"; wait "$server" || fail "exit status after SIGTERM"
grep -q "stopping" "$work/serve.err" || fail "no stop message"
"$actor" serve --listen "$rep" --listen "$tcp" --pull "$pull" "$src/tests/embed/serve_fixture.lua" 2>"$work/serve.err" &
pids+=($!)
server=$!
for i in $(seq 100); do
  [ "$(req "$work/ping" "$rep" 2>/dev/null)" = "91c3" ] && break
  sleep 0.1
done
timeout 120 "$client" "$tcp" "$pull"
# clients that vanish mid-request do not hurt the server
bin nap '\x92\xa3nap\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00'
for i in 1 2 3; do timeout 0.2 nngcat --req0 --dial "$rep" --file "$work/nap" --raw >/dev/null 2>&1 || true; done
sleep 0.6
bin square '\x92\xa6square\x07'
[ "$(req "$work/square" "$rep")" = "92c331" ] || fail "server still serves"
kill -TERM "$server"; wait "$server" || fail "exit status after SIGTERM"
echo "serve test: ok"
