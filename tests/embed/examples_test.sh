#!/usr/bin/env bash
# examples_test.sh ACTOR SOURCE_DIR
# The example actors (actors/hasher.lua, actors/resolver.lua) and the Lua
# examples of docs/actor-scripts.md, run with the `actor` program.
set -euo pipefail
actor=$1 src=$2
cd "$src"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== docs/actor-scripts.md: the mail.lua module and the session example"
# the first ```lua block is mail.lua; the last ```lua-fragment block (it
# needs the source tree, so tests/docs does not run it) drives actors/hasher.lua
awk '/^```lua$/{n++; f=1; next} /^```$/{f=0} f && n==1' docs/actor-scripts.md > "$work/mail.lua"
awk '/^```lua-fragment$/{f=1; buf=""; next} /^```$/{if(f) last=buf; f=0} f{buf=buf $0 "\n"} END{printf "%s", last}' \
  docs/actor-scripts.md > "$work/session_example.lua"
out=$("$actor" "$work/session_example.lua")
echo "$out"
echo "$out" | grep -q "true	ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" || { echo "FAIL: session example"; exit 1; }
echo "$out" | grep -q "^1	3$" || { echo "FAIL: session example stats"; exit 1; }

cat > "$work/mail_test.lua" <<LUA
local actor = require "actor"
local session = require "actor.session"
assert(session.loadfile("mail", "$work/mail.lua"))
local got = {}
actor.run(function()
  for i = 1, 3 do
    session.post(7, "validate_data", function(ok, verdict, n) got[#got + 1] = { ok, verdict, n } end, "msg " .. i)
  end
  session.post(7, "summary", function(ok, n, last) got.summary = { n, last } end)
  session.post(8, "summary", function(ok, n, last) got.other = { n, last } end)
end)
assert(#got == 3 and got[3][1] == true and got[3][2] == "ok" and got[3][3] == 3)
assert(got.summary[1] == 3 and got.summary[2] == "ok", "self and _TLS per session")
assert(got.other[1] == 0 and got.other[2] == nil, "another session starts empty")
session.finish(7)
actor.loop()
print("mail.lua: ok")
LUA
"$actor" "$work/mail_test.lua" | tee "$work/mail.out"
grep -q "session done after 3 messages" "$work/mail.out" || { echo "FAIL: session_end"; exit 1; }

echo "== actors/hasher.lua"
cat > "$work/hasher_test.lua" <<'LUA'
local actor = require "actor"
local session = require "actor.session"
local hasher = assert(session.loadfile("hasher", "actors/hasher.lua"))
local vectors = {
  [""] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  ["abc"] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  ["abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"] =
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  [string.rep("a", 1000)] = "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3",
}
local list, want = {}, {}
for k, v in pairs(vectors) do
  assert(hasher.digest(k) == v, "digest of " .. #k .. " bytes")
  list[#list + 1], want[#want + 1] = k, v
end
local res = {}
actor.run(function()
  session.post("a", "sha256", function(ok, hex) res.one = hex end, "abc")
  session.post("a", "sha256_many", function(ok, hexes) res.many = hexes end, list)
  session.post("a", "verify", function(ok, v) res.verify = v end, "abc", vectors.abc)
  session.post("a", "stats", function(ok, calls, bytes) res.stats = { calls, bytes } end)
  session.post("b", "sha256", function(ok, err) res.bad = { ok, err } end, 42)
end)
assert(res.one == vectors.abc)
for i, v in ipairs(want) do assert(res.many[i] == v, "sha256_many #" .. i) end
assert(res.verify == true)
local bytes = 3 + 3
for _, k in ipairs(list) do bytes = bytes + #k end
assert(res.stats[1] == 2 + #list and res.stats[2] == bytes, "stats per session")
assert(res.bad[1] == false and res.bad[2]:find("string expected"), "bad input is an error, not a crash")
print("hasher.lua: ok")
LUA
"$actor" "$work/hasher_test.lua"

echo "== actors/resolver.lua"
cat > "$work/resolver_test.lua" <<'LUA'
local actor = require "actor"
local session = require "actor.session"
if not pcall(require, "actor.net") then print("resolver.lua: skipped (no actor.net)") return end
assert(session.loadfile("resolver", "actors/resolver.lua"))
local res = {}
actor.run(function()
  session.post(1, "resolve", function(ok, addrs) res.one = { ok, addrs } end, "localhost", "A")
  session.post(1, "resolve", function(ok, addrs) res.again = { ok, addrs } end, "localhost", "A")
  session.post(1, "resolve_many", function(ok, map) res.many = { ok, map } end, { "localhost", "nonexistent.invalid" }, "A")
  session.post(1, "stats", function(ok, lookups, hits) res.stats = { lookups, hits } end)
  session.post(2, "resolve", function(ok, err) res.bad = { ok, err } end, "nonexistent.invalid")
  session.post(3, "resolve", function(ok, err) res.badtype = { ok, err } end, "localhost", "MX")
end)
local function has(list, v) for _, x in ipairs(list) do if x == v then return true end end end
assert(res.one[1] and has(res.one[2], "127.0.0.1"), "localhost resolves")
assert(res.again[1] and has(res.again[2], "127.0.0.1"))
assert(res.many[1] and has(res.many[2].localhost, "127.0.0.1") and res.many[2]["nonexistent.invalid"] == false)
assert(res.stats[1] == 4 and res.stats[2] == 2, "two cache hits in four lookups")
assert(res.bad[1] == false and res.bad[2]:find("nonexistent.invalid"))
assert(res.badtype[1] == false and res.badtype[2]:find("type must be"))
print("resolver.lua: ok")
LUA
"$actor" "$work/resolver_test.lua"
echo "examples test: ok"
