-- The runtime's hasher (runtime/ck_hash.c, through core.hash_partition and
-- a started node's key lookups) against tests/vectors/hash.json, the vectors
-- that tests/vectors/hash_vectors.py derives from README's spec. If one
-- fails, either the hasher or the spec changed: clients in other languages
-- would route differently.
local core = require "clusterkit.core"
local vectors = require "hashvectors"

local bytes = vectors.bytes

describe("key -> partition vectors", function()
  local cases = vectors.cases()

  it("cover both algorithms, both tag settings and edge keys", function()
    local seen = {}
    for _, c in ipairs(cases) do
      seen[c.algorithm .. tostring(c.hash_tags)] = true
      seen.count65536 = seen.count65536 or c.partition_count == 65536
      seen.binary = seen.binary or c.key_hex ~= nil
    end
    for _, k in ipairs({"fnv1a64true", "fnv1a64false", "md5true", "md5false", "count65536", "binary"}) do
      assert.is_true(seen[k], k)
    end
    assert.is_true(#cases > 1000)
  end)

  it("are what the C hasher answers", function()
    local bad = {}
    for _, c in ipairs(cases) do
      local got = core.hash_partition(c.algorithm, c.partition_count, c.hash_tags, bytes(c))
      if got ~= c.partition then
        bad[#bad + 1] = string.format("%s P=%d tags=%s %q: %s, want %d", c.algorithm, c.partition_count,
          tostring(c.hash_tags), bytes(c), tostring(got), c.partition)
      end
    end
    assert.are.same({}, bad)
  end)
end)
