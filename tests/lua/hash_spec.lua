-- clusterkit.hash (the pure-LuaJIT hasher resty.clusterkit uses inside
-- nginx) against tests/vectors/hash.json and the C hasher. Its md5 path
-- takes the digest from a function (ngx.md5_bin in nginx); the md5 vectors
-- run in the real nginx (tests/flavours/test_resty.py).
local hash = require "clusterkit.hash"
local vectors = require "hashvectors"
local core = require "clusterkit.core"

local cases, bytes = vectors.cases, vectors.bytes

describe("clusterkit.hash", function()
  it("answers every fnv1a64 vector", function()
    local bad, n = {}, 0
    for _, c in ipairs(cases()) do
      if c.algorithm == "fnv1a64" then
        n = n + 1
        local got = hash.partition(c.algorithm, c.partition_count, c.hash_tags, bytes(c))
        if got ~= c.partition then
          bad[#bad + 1] = string.format("P=%d tags=%s %q: %s, want %d", c.partition_count,
            tostring(c.hash_tags), bytes(c), tostring(got), c.partition)
        end
      end
    end
    assert.are.same({}, bad)
    assert.is_true(n > 500)
  end)

  it("agrees with the C hasher on random keys", function()
    math.randomseed(7)
    for _ = 1, 2000 do
      local t = {}
      for k = 1, math.random(0, 40) do t[k] = string.char(math.random(0, 255)) end
      local key = table.concat(t)
      local P = math.random(1, 65536)
      local tags = math.random() < 0.5
      assert.are.equal(core.hash_partition("fnv1a64", P, tags, key), hash.partition("fnv1a64", P, tags, key))
    end
  end)

  it("takes md5 from the function it is given, and refuses unknown algorithms", function()
    local calls = {}
    local p = hash.partition("md5", 1000, true, "a{tag}b", function(k)
      calls[#calls + 1] = k
      return "\0\0\1\2" .. string.rep("\0", 12)
    end)
    assert.are.equal(258, p)
    assert.are.same({"tag"}, calls)
    assert.is_nil((hash.partition("md5", 4, false, "k")))
    local none, err = hash.partition("crc32", 4, false, "k")
    assert.is_nil(none)
    assert.matches("unknown hash algorithm", err)
  end)

  it("finds hash tags as the spec says", function()
    assert.are.equal("42", hash.tag("user:{42}:cart"))
    assert.are.equal("a{}b", hash.tag("a{}b"))
    assert.are.equal("x", hash.tag("{x}{y}"))
    assert.are.equal("{", hash.tag("{{}"))
    assert.are.equal("no-tag", hash.tag("no-tag"))
  end)
end)
