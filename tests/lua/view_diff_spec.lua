-- The events a change of view fires (clusterkit.view's diff), on views
-- built from plain tables: no core, no loop, no clock.
local viewm = require "clusterkit.view"

-- A committed state in node:view()'s shape: nodes {id = status}, in order
-- of `order`; rows[p] = {owner ids}; epochs[p].
local function raw(order, status, rows, epochs, index)
  local nodes, pos = {}, {}
  for i, id in ipairs(order) do
    local st = status[id] or "active"
    nodes[i] = {id = id, name = id, http_addr = id .. ":80", raft_addr = id .. ":90", zone = "", weight = 1,
                services = {}, status = type(st) == "table" and st[1] or st,
                status_since = type(st) == "table" and st[2] or 0, raft_id = i, build = ""}
    pos[id] = i
  end
  local w, owners = 2, {}
  for p, row in ipairs(rows) do
    for k = 1, w do owners[(p - 1) * w + k] = row[k] and pos[row[k]] or 0 end
  end
  local ep = {}
  for p = 1, #rows do ep[p] = epochs and epochs[p] or 1 end
  return {index = index or 1, table_index = 1, initialized = true, feature_level = 2, cluster_id = "c",
          name = "t", partitions = #rows, replication = w, hash_algo = "fnv1a", hash_tags = false, nodes = nodes,
          width = w, owners = owners, epochs = ep}
end

local function view(...) return viewm.build(raw(...), nil) end

local function names(events)
  local out = {}
  for i, e in ipairs(events) do
    local info = e[2]
    local what = info.node and info.node.id or info.partition or info.health
    out[i] = e[1] .. ":" .. tostring(what) .. (info.role and ("/" .. info.role) or "")
      .. (info.reason and ("/" .. info.reason) or "")
  end
  return out
end

local ALL = {me = "a", rows = true, health = "healthy"}

describe("the view's diff", function()
  local rows = {{"a", "b"}, {"b", "c"}, {"c", "a"}}

  it("fires nothing for the first view, and reports the health to follow", function()
    local events, _, health = viewm.diff(nil, view({"a", "b", "c"}, {}, rows), nil, nil, nil, ALL)
    assert.are.same({}, events)
    assert.are.equal("healthy", health)
  end)

  it("reports joins, leaves, comebacks and removals, and counts them", function()
    local old = view({"a", "b", "c"}, {c = {"down", 1000}}, rows)
    local new = view({"a", "b", "d"}, {b = "left"}, {{"a", "d"}, {"d", "a"}, {"a", "d"}})
    local events, counts = viewm.diff(old, new, nil, nil, nil, {me = "a"})
    assert.are.same({"node_leave:b/left", "node_join:d", "node_leave:c/removed"}, names(events))
    assert.are.same({join = 1, leave = 1, remove = 1, status = 0}, counts)
    -- A comeback says how long the node was out.
    local back = view({"a", "b", "c"}, {c = {"active", 4500}}, rows)
    events, counts = viewm.diff(old, back, nil, nil, nil, {me = "a"})
    assert.are.same({"node_rejoin:c"}, names(events))
    assert.are.equal(3500, events[1][2].offline_ms)
    assert.are.equal("down", events[1][2].previous)
    assert.are.equal(1, counts.status)
  end)

  it("uses the changed entries it is given instead of comparing every node", function()
    local old = view({"a", "b", "c"}, {}, rows)
    local new = view({"a", "b", "c"}, {b = "suspect", c = "down"}, rows)
    -- Only c's change is in the record: b's is not looked at.
    local events = viewm.diff(old, new, {}, false, {{new = new.by_id.c, old = old.by_id.c}}, {me = "a"})
    assert.are.same({"node_leave:c/down"}, names(events))
  end)

  it("replays every row change of the record in order, as this node's role", function()
    local old = view({"a", "b", "c"}, {}, rows, {1, 1, 1})
    -- Partition 0 lost a and got it back; partition 1 went b,c -> a,c.
    local record = {
      {index = 0, owners = {"b", "c"}, epoch = 2},
      {index = 0, owners = {"a", "b"}, epoch = 3},
      {index = 1, owners = {"a", "c"}, epoch = 2},
    }
    local new = view({"a", "b", "c"}, {}, {{"a", "b"}, {"a", "c"}, {"c", "a"}}, {3, 2, 1})
    local events = viewm.diff(old, new, record, false, {}, ALL)
    assert.are.same({"partition_change:partition-0/lose", "partition_change:partition-0/gain",
                     "partition_change:partition-1/gain"}, names(events))
    assert.are.same({1, 2}, {events[1][2].old_epoch, events[1][2].epoch})
    assert.are.same({2, 3}, {events[2][2].old_epoch, events[2][2].epoch})
    assert.are.same({"c"}, events[3][2].new_replicas)
  end)

  it("compares the rows without a record, and flags those that moved further than it can tell", function()
    local old = view({"a", "b", "c"}, {}, rows, {1, 1, 1})
    local new = view({"a", "b", "c"}, {}, {{"b", "a"}, {"b", "c"}, {"c", "a"}}, {2, 3, 1})
    local events = viewm.diff(old, new, nil, true, nil, ALL)
    assert.are.same({"partition_change:partition-0/demote", "partition_change:partition-1/none"}, names(events))
    assert.is_nil(events[1][2].resync)
    assert.is_true(events[2][2].resync, "same owners, a new epoch: something happened in between")
  end)

  it("leaves out partition events nobody listens to, and health nobody follows", function()
    local old = view({"a", "b", "c"}, {}, rows)
    local new = view({"a", "b", "c"}, {c = "down"}, {{"a", "b"}, {"b", "a"}, {"a", "b"}})
    local events, _, health = viewm.diff(old, new, nil, true, nil, {me = "a"})
    assert.are.same({"node_leave:c/down"}, names(events))
    assert.is_nil(health)
  end)

  it("reports health changes: degraded with a node down, unavailable with a row empty", function()
    local old = view({"a", "b", "c"}, {}, rows)
    local new = view({"a", "b", "c"}, {c = "down"}, rows)
    local events, _, health = viewm.diff(old, new, nil, true, nil, {me = "a", health = "healthy"})
    assert.are.equal("degraded", health)
    assert.are.same({"node_leave:c/down", "cluster_health_change:degraded"}, names(events))
    assert.are.equal("healthy", events[2][2].previous)
    local empty = view({"a", "b", "c"}, {c = "down"}, {{"a", "b"}, {}, {"a"}})
    events, _, health = viewm.diff(new, empty, nil, true, nil, {me = "a", health = "degraded"})
    assert.are.equal("unavailable", health)
    assert.are.same({"cluster_health_change:unavailable"}, names(events))
    -- Unchanged health fires nothing.
    events = viewm.diff(empty, empty, nil, true, nil, {me = "a", health = "unavailable"})
    assert.are.same({}, events)
  end)
end)
