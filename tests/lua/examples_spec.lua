-- The seeds' three examples (actors/examples/) run as actor scripts against
-- localhost and a local HTTP server started here (actor.net's test helper,
-- served by nng's own threads, so it answers while this state waits on
-- io.popen). Each run is bounded by timeout(1).
local build = os.getenv("ACTOR_BUILD") or "build"
local src = os.getenv("ACTOR_SRC") or "."
local ACTOR = build .. "/actor"
local EX = src .. "/actors/examples/"

-- Runs an example; returns its output lines, its exit status and the time.
local function run(script, args, env)
  local cmd = (env or "") .. " timeout 30 " .. ACTOR .. " " .. EX .. script .. " " .. (args or "")
    .. " 2>&1; echo \"exit=$?\""
  local w0 = require("actor").now()
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local lines = {}
  for l in out:gmatch("[^\n]*") do if l ~= "" then lines[#lines + 1] = l end end
  local status = tonumber(table.remove(lines):match("exit=(%d+)"))
  return lines, status, require("actor").now() - w0
end

describe("actors/examples/basic.lua", function()
  it("looks up localhost (A) in a runner", function()
    local lines, status = run("basic.lua", "localhost")
    assert.are.same({ "localhost A: 127.0.0.1" }, lines)
    assert.are.equal(0, status)
  end)

  it("takes the name from EXAMPLE_HOST and reports a failed lookup", function()
    local lines, status = run("basic.lua", "", "EXAMPLE_HOST=no-such-host.invalid")
    assert.are.equal(1, #lines)
    assert.matches("^no%-such%-host%.invalid A: error: cannot resolve no%-such%-host%.invalid", lines[1])
    assert.are.equal(1, status)
  end)
end)

describe("actors/examples/concurrent.lua", function()
  local function check(lines, status)
    assert.are.equal(0, status)
    assert.are.equal(3, #lines, table.concat(lines, "\n"))
    assert.are.equal("localhost A: 127.0.0.1", lines[1])
    -- whether localhost has an AAAA record depends on /etc/hosts
    assert.is_truthy(lines[2] == "localhost AAAA: ::1" or lines[2]:match("^localhost AAAA: error: "), lines[2])
    assert.are.equal("done", lines[3])
  end

  it("joins an A and an AAAA lookup with waiter(2)", function()
    check(run("concurrent.lua", "localhost"))
  end)

  it("prints the same with callbacks only", function()
    local a = run("concurrent.lua", "localhost")
    local b, status = run("concurrent.lua", "--callbacks localhost")
    check(b, status)
    assert.are.same(a, b)
  end)

  it("answers both for a numeric IPv6 address", function()
    local lines, status = run("concurrent.lua", "::1")
    assert.are.equal(0, status)
    assert.matches("^::1 A: error: ", lines[1])
    assert.are.equal("::1 AAAA: ::1", lines[2])
  end)
end)

describe("actors/examples/sequential.lua", function()
  local net = require "actor.net"
  local server
  local BODY = "hello from the examples spec\n"
  setup(function() server = assert(net._test_http_server(0, BODY)) end)
  teardown(function() server:close() end)

  local function expect(url, delay)
    return {
      ("waited %g s"):format(delay),
      "localhost A: 127.0.0.1",
      ("GET %s: 200, %d bytes"):format(url, #BODY),
      (BODY:gsub("\n$", "")),
    }
  end

  it("waits, looks up, then GETs, flat with util.async", function()
    local url = ("http://localhost:%d/hello.txt"):format(server:port())
    local lines, status, took = run("sequential.lua", "--delay 0.3 --url " .. url)
    assert.are.same(expect(url, 0.3), lines)
    assert.are.equal(0, status)
    assert.is_true(took >= 0.3)
    assert.is_true(took < 10)
  end)

  it("prints the same written as a pyramid of callbacks", function()
    local url = ("http://localhost:%d/"):format(server:port())
    local lines, status = run("sequential.lua", "--callbacks --delay=0.2 --url=" .. url)
    assert.are.same(expect(url, 0.2), lines)
    assert.are.equal(0, status)
  end)

  it("reads the delay and the URL from the environment", function()
    local url = ("http://localhost:%d/x"):format(server:port())
    local lines, status = run("sequential.lua", "", "EXAMPLE_DELAY=0.1 EXAMPLE_URL=" .. url)
    assert.are.same(expect(url, 0.1), lines)
    assert.are.equal(0, status)
  end)

  it("fails with exit status 1 when the server is not there", function()
    local lines, status = run("sequential.lua", "--delay 0 --url http://localhost:1/")
    assert.are.equal(1, status)
    assert.matches("^GET http://localhost:1/: error: .*Connection refused", lines[#lines])
  end)
end)

describe("actor.net in a pool state", function()
  it("resolves and fetches from the IO pool", function()
    local server = assert(require("actor.net")._test_http_server(0, "pong"))
    local url = server:url()
    local ok, addrs = msys.runInPool("IO", function() return require("actor.net").resolve("localhost", "A") end)
    assert.is_true(ok)
    assert.are.same({ "127.0.0.1" }, addrs)
    local ok2, code, body, headers = msys.runInPool("IO", function() return require("actor.net").http_get(url, 5) end)
    server:close()
    assert.is_true(ok2)
    assert.are.equal(200, code)
    assert.are.equal("pong", body)
    assert.are.equal("text/plain", headers["content-type"])
    assert.are.equal("4", headers["content-length"])
  end)

  it("returns nil, err for bad input and unsupported schemes", function()
    local net = require "actor.net"
    assert.has_error(function() net.resolve("localhost", "MX") end)
    local r, err = net.http_get("ftp://localhost/")
    assert.is_nil(r)
    assert.matches("unsupported scheme", err)
    r, err = net.http_get("http://localhost:1/", 2)
    assert.is_nil(r)
    assert.matches("Connection refused", err)
  end)

  it("reports a status that is not 200 as a status, with the body", function()
    local server = assert(require("actor.net")._test_http_server(0, "x", "text/plain", "/only"))
    local net = require("actor.net")
    local code, body = net.http_get(server:url() .. "only", 5)
    local code2, _, headers = net.http_get(server:url() .. "missing", 5)
    server:close()
    assert.are.same({ 200, "x" }, { code, body })
    assert.are.equal(404, code2)
    assert.are.equal("Not Found", headers[":reason"])
  end)
end)
