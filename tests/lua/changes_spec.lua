-- partition_change events from the core's record of row changes: one per
-- change, in apply order, also when the view before and after look alike.
-- Drives clusterkit.view's diff with built views and change lists (no loop, no raft), and
-- once through a real node's core.
local clusterkit = require "clusterkit"
local testnode = require "testnode"
local viewm = require "clusterkit.view"

local function node_t(id)
  return {id = id, status = "active"}
end

-- A ready view of one-partition rows: rows[p] = {ids...}, epochs[p].
local function view(rows, epochs)
  local nodes, by_id = {}, {}
  for _, id in ipairs({"a", "b", "c"}) do
    local n = node_t(id)
    nodes[#nodes + 1], by_id[id] = n, n
  end
  local v = {ready = true, nodes = nodes, by_id = by_id, partitions = #rows, replication = 3,
             pnodes = {}, parts = {}}
  for p, ids in ipairs(rows) do
    local row = {}
    for k, id in ipairs(ids) do row[k] = by_id[id] end
    v.pnodes[p] = row
    v.parts[p] = {id = "partition-" .. (p - 1), index = p - 1, epoch = epochs[p]}
  end
  return v
end

local function events(me, old, new, changes, gap)
  local got = {}
  for _, e in ipairs((viewm.diff(old, new, changes, gap, nil, {me = me, rows = true}))) do
    if e[1] == "partition_change" then got[#got + 1] = e[2] end
  end
  return got
end

describe("partition_change from the change record", function()
  local before = view({{"a", "b", "c"}, {"b", "c", "a"}}, {1, 1})

  it("fires a lose and a gain for a row that lost this node and got it back", function()
    -- The views before and after are the same; only the record knows.
    local after = view({{"a", "b", "c"}, {"b", "c", "a"}}, {3, 1})
    local got = events("a", before, after, {
      {index = 0, epoch = 2, owners = {"b", "c"}},
      {index = 0, epoch = 3, owners = {"a", "b", "c"}},
    }, false)
    assert.are.equal(2, #got)
    assert.are.same({"lose", 2, 1, "a", "b"}, {got[1].role, got[1].epoch, got[1].old_epoch,
                                             got[1].old_primary, got[1].new_primary})
    assert.are.same({"b", "c"}, got[1].old_replicas)
    assert.are.same({"c"}, got[1].new_replicas)
    assert.are.same({"gain", 3, 2, "b", "a"}, {got[2].role, got[2].epoch, got[2].old_epoch,
                                             got[2].old_primary, got[2].new_primary})
    assert.is_nil(got[1].resync)
  end)

  it("keeps the order of changes across rows and skips no-op entries", function()
    local after = view({{"b", "a", "c"}, {"b", "c", "a"}}, {2, 1})
    local got = events("a", before, after, {
      {index = 1, epoch = 1, owners = {"b", "c", "a"}}, -- same ids: no event
      {index = 0, epoch = 2, owners = {"b", "a", "c"}},
    }, false)
    assert.are.equal(1, #got)
    assert.are.same({"partition-0", "demote"}, {got[1].partition, got[1].role})
  end)

  it("without the record, flags rows whose epoch moved more than the views show", function()
    local after = view({{"a", "b", "c"}, {"c", "b", "a"}}, {3, 2})
    local got = events("a", before, after, nil, true)
    assert.are.equal(2, #got)
    assert.are.same({"partition-0", "none", 3, 1, true},
      {got[1].partition, got[1].role, got[1].epoch, got[1].old_epoch, got[1].resync})
    -- One epoch and a visible change: an ordinary event.
    assert.are.same({"partition-1", "none", 2}, {got[2].partition, got[2].role, got[2].epoch})
    assert.is_nil(got[2].resync)
  end)

  it("a real core hands over every row change with the applied event", function()
    local ck = testnode.started(finally, "n1", {partition_count = 4, replication_factor = 1})
    local seen, fire = {}, ck._fire_changes
    ck._fire_changes = function(self, old, new, changes, gap, ...)
      assert.is_false(gap)
      for _, ch in ipairs(changes) do seen[#seen + 1] = ch end
      return fire(self, old, new, changes, gap, ...)
    end
    local e0 = ck:partition(0).epoch
    -- Two tables proposed in one go (often applied in one loop turn): every
    -- row emptied, then given back to n1.
    local core = require "clusterkit.core"
    local done, c = 0, clusterkit.cond()
    local function cb(index)
      assert.is_number(index)
      done = done + 1
      c:signal()
    end
    local empty, full = {}, {}
    for p = 1, 4 do empty[p], full[p] = 0, 1 end
    assert(ck._core:propose(core.encode_table(4, 1, {"n1"}, empty), cb))
    assert(ck._core:propose(core.encode_table(4, 1, {"n1"}, full), cb))
    for _ = 1, 100 do
      if done == 2 then break end
      c:wait(0.1)
    end
    assert.are.equal(2, done)
    for _ = 1, 100 do
      if #seen >= 8 then break end
      clusterkit.sleep(0.01)
    end
    local zero = {}
    for _, ch in ipairs(seen) do
      if ch.index == 0 then zero[#zero + 1] = {ch.epoch, ch.owners} end
    end
    assert.are.same({e0 + 1, {}}, zero[1])
    assert.are.same({e0 + 2, {"n1"}}, zero[2])
  end)

  it("fires cluster_health_change through a node whose hook was set before it started", function()
    local ck, opts = testnode.new("n1", {partition_count = 4, replication_factor = 1,
                                         suspect_after = 30, down_after = 60})
    local seen, c = {}, clusterkit.cond()
    ck:on("cluster_health_change", function(ev)
      seen[#seen + 1] = ev.health .. "<" .. tostring(ev.previous)
      c:signal()
    end)
    assert(ck:start())
    finally(function()
      ck:stop()
      os.execute("rm -rf '" .. opts.data_dir .. "'")
    end)
    -- A second member, down: the cluster is degraded from then on.
    local core = require "clusterkit.core"
    assert(ck._core:propose(core.encode_node {
      id = "ghost", name = "ghost", http_addr = "127.0.0.1:9", raft_addr = "127.0.0.1:9", zone = "", weight = 1,
      services = {}, raft_id = core.raft_id("ghost"), status = "down", time_ms = 1,
    }, function() end))
    for _ = 1, 100 do
      if #seen >= 2 then break end
      c:wait(0.05)
    end
    assert.are.same({"healthy<unavailable", "degraded<healthy"}, seen)
  end)
end)
