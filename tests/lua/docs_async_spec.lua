-- Runs every ```lua block of docs/async.md with the actor program and
-- compares its output with the ```text block that follows it. The network
-- examples find actors/examples/netcb.lua through LUA_PATH and only use
-- localhost and servers they start themselves.
local build = os.getenv("ACTOR_BUILD") or "build"
local src = os.getenv("ACTOR_SRC") or "."
local ACTOR = build .. "/actor"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- { {code=, expected=, line=}, ... } in page order.
local function examples(doc)
  local list, lines = {}, {}
  for l in (doc .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local i = 1
  while i <= #lines do
    if lines[i] == "```lua" then
      local start, code = i, {}
      i = i + 1
      while lines[i] ~= "```" do code[#code + 1] = lines[i]; i = i + 1 end
      i = i + 1
      while lines[i] == "" do i = i + 1 end
      assert(lines[i] == "```text", "docs/async.md:" .. start .. ": a lua block must be followed by a text block")
      local out = {}
      i = i + 1
      while lines[i] ~= "```" do out[#out + 1] = lines[i]; i = i + 1 end
      list[#list + 1] = { code = table.concat(code, "\n") .. "\n", expected = table.concat(out, "\n"), line = start }
    end
    i = i + 1
  end
  return list
end

local function run(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(code)
  f:close()
  local cmd = ("LUA_PATH='%s/actors/examples/?.lua;;' timeout 30 %s %s 2>&1"):format(src, ACTOR, path)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  os.remove(path)
  return (out:gsub("\n$", ""))
end

describe("docs/async.md", function()
  local list = examples(read(src .. "/docs/async.md"))

  it("has examples", function()
    assert.is_true(#list >= 10)
  end)

  for _, ex in ipairs(list) do
    it("example at line " .. ex.line .. " prints what the page says", function()
      assert.are.equal(ex.expected, run(ex.code))
    end)
  end
end)
