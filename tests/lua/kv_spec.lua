-- The replicated key-value store through the Lua API, on a real
-- single-node raft cluster: puts and revisions, compare-and-swap,
-- transactions, deletes and listings, limits, watches (in order, with
-- COMPACTED when history is gone), consistent reads, the Go library's
-- custom-data names, clear errors for bad input, and that KV writes leave
-- the cluster's state index alone.
local clusterkit = require "clusterkit"
local sched = require "clusterkit.sched"

local testnode = require "testnode"

local node, opts
setup(function()
  node, opts = testnode.new("kv1", {kv_max_value = 64, kv_max_bytes = 4096})
  assert(node:start())
end)

teardown(function()
  node:stop()
  os.execute("rm -rf '" .. opts.data_dir .. "'")
end)

describe("kv", function()
  it("puts, gets and counts versions; a missing key gives the index", function()
    local i1 = assert(node:kv_put("a", "1"))
    local e, at = node:kv_get("a")
    assert.are.same({key = "a", value = "1", create_index = i1, mod_index = i1, version = 1}, e)
    assert.are.equal(i1, at)
    local i2 = assert(node:kv_put("a", "22"))
    assert.is_true(i2 > i1)
    e = node:kv_get("a")
    assert.are.equal(i1, e.create_index)
    assert.are.equal(i2, e.mod_index)
    assert.are.equal(2, e.version)
    local missing, index = node:kv_get("nope")
    assert.is_nil(missing)
    assert.are.equal(i2, index)
    -- Binary keys and values, empty values.
    assert(node:kv_put("bin\0key", "\0\255"))
    assert.are.equal("\0\255", node:kv_get("bin\0key").value)
    assert(node:kv_put("empty", ""))
    assert.are.equal("", node:kv_get("empty").value)
  end)

  it("compares and swaps on the modify index; 0 means must not exist", function()
    local i = assert(node:kv_cas("lock", "me", 0))
    local _, err = node:kv_cas("lock", "you", 0)
    assert.are.equal("CONFLICT", err.code)
    _, err = node:kv_put("lock", "stale", {prev_index = i - 1})
    assert.are.equal("CONFLICT", err.code)
    local j = assert(node:kv_put("lock", "next", {prev_index = i}))
    assert.are.equal("next", node:kv_get("lock").value)
    _, err = node:kv_delete("lock", {prev_index = i})
    assert.are.equal("CONFLICT", err.code)
    assert(node:kv_delete("lock", {prev_index = j}))
    assert.is_nil((node:kv_get("lock")))
  end)

  it("applies a transaction all or nothing", function()
    assert(node:kv_put("t/x", "1"))
    local x = node:kv_get("t/x")
    local _, err = node:kv_txn{
      compares = {{key = "t/x", target = "mod", op = "==", value = x.mod_index},
                  {key = "t/x", target = "value", op = "==", value = "other"}},
      ops = {{type = "put", key = "t/y", value = "2"}, {type = "delete", key = "t/x"}},
    }
    assert.are.equal("CONFLICT", err.code)
    assert.is_nil((node:kv_get("t/y")))
    assert(node:kv_txn{
      compares = {{key = "t/x", target = "version", op = "==", value = 1},
                  {key = "t/z", target = "create", op = "==", value = 0}},
      ops = {{type = "put", key = "t/y", value = "2"}, {type = "delete", key = "t/x"}},
    })
    assert.are.equal("2", node:kv_get("t/y").value)
    assert.is_nil((node:kv_get("t/x")))
  end)

  it("lists a prefix in key order, pages, and deletes a prefix", function()
    for _, k in ipairs({"p/b", "p/a", "p/c", "q", "p"}) do assert(node:kv_put(k, k)) end
    local items, info = node:kv_list("p/")
    local keys = {}
    for i, e in ipairs(items) do keys[i] = e.key end
    assert.are.same({"p/a", "p/b", "p/c"}, keys)
    assert.is_false(info.more)
    items, info = node:kv_list("p/", {limit = 2})
    assert.are.equal(2, #items)
    assert.is_true(info.more)
    items = node:kv_list("p/", {after = "p/b", keys_only = true})
    assert.are.same({{key = "p/c", create_index = items[1].create_index, mod_index = items[1].mod_index,
                      version = 1}}, items)
    assert(node:kv_delete("p/", {prefix = true}))
    assert.are.equal(0, #node:kv_list("p/"))
    assert.are.equal("p", node:kv_get("p").value)
  end)

  it("refuses values and stores over the limits with TOO_BIG and bad input with INVALID", function()
    local _, err = node:kv_put("big", string.rep("x", 65))
    assert.are.equal("TOO_BIG", err.code)
    assert.truthy(err.message:find("kv_max_value", 1, true))
    -- Fill the store to its 4 KiB, then one more is refused, atomically.
    local n = 0
    while true do
      local ok, e = node:kv_put("fill/" .. n, string.rep("f", 60))
      if not ok then err = e break end
      n = n + 1
      assert.is_true(n < 100)
    end
    assert.are.equal("TOO_BIG", err.code)
    assert.truthy(err.message:find("kv_max_bytes", 1, true))
    assert(node:kv_delete("fill/", {prefix = true})) -- Shrinking is always allowed.
    for _, bad in ipairs({
      function() return node:kv_put("", "v") end,
      function() return node:kv_put(string.rep("k", 1025), "v") end,
      function() return node:kv_put("k", 42) end,
      function() return node:kv_put("k", "v", {prev_index = -1}) end,
      function() return node:kv_get(nil) end,
      function() return node:kv_txn{ops = {{type = "upsert", key = "k", value = "v"}}} end,
      function() return node:kv_txn{compares = {{key = "k", target = "size", value = 1}}} end,
      function() return node:kv_watch("", -1) end,
      function() return node:kv_list("", {limit = 0}) end,
    }) do
      local v, e = bad()
      assert.is_nil(v)
      assert.are.equal("INVALID", e.code)
    end
  end)

  it("does not move the cluster's state index", function()
    local before = node:state_index()
    assert(node:kv_put("quiet", "1"))
    assert.are.equal(before, node:state_index())
  end)

  it("reads consistently through a barrier", function()
    local i = assert(node:kv_put("c", "1"))
    local e, at = node:kv_get("c", {consistent = true})
    assert.are.equal("1", e.value)
    assert.is_true(at >= i)
    local items = node:kv_list("c", {consistent = true})
    assert.are.equal(1, #items)
  end)

  it("serves concurrent consistent reads with shared barriers, not one each", function()
    assert(node:kv_put("shared", "v"))
    local before = node._core:raft().last_index
    local done = 0
    for _ = 1, 50 do
      sched.spawn(function()
        local e = assert(node:kv_get("shared", {consistent = true}))
        assert(e.value == "v")
        done = done + 1
      end)
    end
    local deadline = os.time() + 10
    while done < 50 and os.time() < deadline do clusterkit.sleep(0.01) end
    assert.are.equal(50, done)
    -- Two rounds (the first read's, then one for the 49 that came during
    -- it), each an empty transaction and the leader's commit flush.
    assert.is_true(node._core:raft().last_index - before <= 6)
  end)

  it("watches a prefix: every change after an index, in order", function()
    local start = node:kv_info().index
    local got
    sched.spawn(function()
      got = {node:kv_watch("w/", start, 10)}
    end)
    assert(node:kv_put("other", "x")) -- Not under the prefix: not delivered.
    assert(node:kv_put("w/1", "a"))
    local deadline = os.time() + 10
    while not got and os.time() < deadline do clusterkit.sleep(0.01) end
    local evs, nxt = got[1], got[2]
    assert.are.equal(1, #evs)
    assert.are.equal("put", evs[1].type)
    assert.are.equal("w/1", evs[1].key)
    assert.are.equal("a", evs[1].value)
    assert.are.equal(evs[1].index, nxt)
    -- From there: a transaction's events together, deletes included.
    assert(node:kv_txn{ops = {{type = "put", key = "w/2", value = "b"}, {type = "delete", key = "w/1"}}})
    evs, nxt = node:kv_watch("w/", nxt, 5)
    assert.are.equal(2, #evs)
    assert.are.same({"put", "w/2", "delete", "w/1"}, {evs[1].type, evs[1].key, evs[2].type, evs[2].key})
    assert.are.equal(evs[1].index, evs[2].index)
    -- Nothing new: an empty list when the wait ends.
    local none, again = node:kv_watch("w/", nxt, 0.05)
    assert.are.same({}, none)
    assert.is_true(again >= nxt)
  end)

  it("answers COMPACTED for history it no longer keeps", function()
    local first = node:kv_info()
    assert.are.equal(0, first.compacted)
    local _, err
    -- Force it: the history keeps 10,000 events; write more than that in
    -- transactions of 128 puts (of one key: the store stays small).
    for _ = 1, 80 do
      local ops = {}
      for k = 1, 128 do ops[k] = {type = "put", key = "h/k", value = tostring(k)} end
      assert(node:kv_txn{ops = ops})
    end
    local info = node:kv_info()
    assert.is_true(info.compacted > first.index)
    _, err = node:kv_watch("", first.index, 0)
    assert.are.equal("COMPACTED", err.code)
    assert.truthy(err.message:find("re-read", 1, true))
    local evs = node:kv_watch("", info.compacted, 0)
    assert.is_true(#evs > 0)
    assert(node:kv_delete("h/", {prefix = true}))
  end)

  it("keeps the Go library's custom-data names", function()
    assert.is_true(node:set_custom_data("feature/x", "on"))
    assert.are.equal("on", node:get_custom_data("feature/x"))
    local keys = node:list_custom_data_keys()
    local found = false
    for _, k in ipairs(keys) do found = found or k == "feature/x" end
    assert.is_true(found)
    assert.is_true(node:delete_custom_data("feature/x"))
    local v, err = node:get_custom_data("feature/x")
    assert.is_nil(v)
    assert.are.equal("NOT_FOUND", err.code)
  end)
end)
