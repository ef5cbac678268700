-- The leader's reconciler (clusterkit.reconciler) alone: a fake core holds
-- the committed state as plain tables and applies what the reconciler
-- submits at once (as the FSM would once it committed), time is a number
-- the test moves, and runs are synchronous. The placement itself is the
-- real one (C, pure).
local reconciler = require "clusterkit.reconciler"

local P, RF, GRACE = 8, 2, 30

local quiet = {info = function() end, warn = function() end, error = function() end}

-- A cluster as its leader `self_id` sees it: `c.raw` is the committed state
-- in node:view()'s shape, `c.log` the ops applied, `c.clock` the fake clock.
local function cluster(self_id, extra)
  local c = {
    raw = {index = 0, table_index = 0, initialized = false, rebalance_paused = false, feature_level = 2,
           nodes = {}},
    leading = true, ops = {}, now_ms = 1e6, admissions = 0, events = {},
  }
  local raw = c.raw

  local function pos_of(id)
    for i, n in ipairs(raw.nodes) do
      if n.id == id then return i end
    end
  end

  --- Commits a node entry (as an admission or a status change would).
  function c.upsert(e)
    local n = {id = e.id, name = e.name or e.id, http_addr = e.http_addr or (e.id .. ":80"),
               raft_addr = e.raft_addr or (e.id .. ":90"), zone = e.zone or "", weight = e.weight or 1,
               services = e.services or {}, status = e.status or "active",
               status_since = e.time_ms or c.now_ms, raft_id = e.raft_id or e.id, build = e.build or ""}
    local at = pos_of(e.id)
    raw.index = raw.index + 1
    if at then raw.nodes[at] = n else raw.nodes[#raw.nodes + 1] = n end
  end

  function c.status(id, status)
    local n = raw.nodes[pos_of(id)]
    local e = {}
    for k, v in pairs(n) do e[k] = v end
    e.status, e.time_ms = status, c.now_ms
    c.upsert(e)
  end

  --- The committed table as rows of ids.
  function c.rows()
    local rows = {}
    for p = 1, raw.partitions do
      local row = {}
      for k = 1, raw.width do
        local at = raw.owners[(p - 1) * raw.width + k]
        if at ~= 0 then row[#row + 1] = raw.nodes[at].id end
      end
      rows[p] = row
    end
    return rows
  end

  local apply = {
    init = function(cmd)
      raw.initialized, raw.cluster_id, raw.name = true, cmd.cluster_id, cmd.name
      raw.partitions, raw.replication, raw.width = cmd.partitions, cmd.replication, cmd.replication
      raw.owners, raw.epochs = {}, {}
      for i = 1, cmd.partitions * cmd.replication do raw.owners[i] = 0 end
      for p = 1, cmd.partitions do raw.epochs[p] = 0 end
    end,
    node = function(cmd) c.upsert(cmd.entry) end,
    table = function(cmd)
      for i = 1, raw.partitions * raw.width do
        local at = cmd.owners[i]
        raw.owners[i] = at > 0 and pos_of(cmd.ids[at]) or 0
      end
      raw.table_index = raw.index + 1
    end,
  }

  c.r = reconciler.new {
    opts = {id = self_id, cluster_name = "test", partition_count = P, replication_factor = RF,
            hash_algorithm = "fnv1a", hash_tags = false, rebalance_delay = GRACE, policy_timeout = 1,
            feature_level = 2},
    core = {view = function() return raw end, leading = function() return c.leading end},
    submit = function(cmd)
      assert(#c.ops < 100, "the reconciler never settles")
      c.ops[#c.ops + 1] = cmd.op
      apply[cmd.op](cmd)
      if cmd.op ~= "node" then raw.index = raw.index + 1 end
      return raw.index
    end,
    clock = {time_ms = function() return c.now_ms end, hrtime = function() return c.now_ms * 1e6 end},
    spawn = function(fn) fn() end,
    entry = function()
      return {id = self_id, name = self_id, http_addr = self_id .. ":80", raft_addr = self_id .. ":90", zone = "",
              weight = 1, services = {}, raft_id = self_id, status = "active"}
    end,
    admissions = function() return c.admissions end,
    upgrade = extra and extra.upgrade,
    fire = function(event, info) c.events[#c.events + 1] = {event, info} end,
    log = quiet,
    histogram = function() return {observe = function() end} end,
  }
  return c
end

-- A settled three-node cluster led by "a".
local function three()
  local c = cluster("a")
  c.r:poke()
  c.upsert {id = "b"}
  c.upsert {id = "c"}
  c.r:poke()
  c.ops = {}
  return c
end

local function owns(rows, id)
  local n, primaries = 0, 0
  for _, row in ipairs(rows) do
    for k, x in ipairs(row) do
      if x == id then
        n = n + 1
        if k == 1 then primaries = primaries + 1 end
      end
    end
  end
  return n, primaries
end

describe("the reconciler", function()
  it("initialises an empty cluster, registers its leader and places the table, then settles", function()
    local c = cluster("a")
    c.r:poke()
    assert.are.same({"init", "node", "table"}, c.ops)
    for _, row in ipairs(c.rows()) do assert.are.same({"a"}, row) end
    c.ops = {}
    c.upsert {id = "b"}
    c.upsert {id = "c"}
    c.r:poke()
    assert.are.same({"table"}, c.ops)
    for p, row in ipairs(c.rows()) do
      assert.are.equal(RF, #row, "partition " .. p)
    end
    local start, done = c.events[#c.events - 1], c.events[#c.events]
    assert.are.same({"rebalance_start", "rebalance_complete"}, {start[1], done[1]})
    -- Settled: another run proposes nothing.
    c.ops = {}
    c.r:poke()
    assert.are.same({}, c.ops)
  end)

  it("proposes nothing on a node that does not lead", function()
    local c = cluster("a")
    c.leading = false
    c.r:poke()
    assert.are.same({}, c.ops)
    assert.is_false(c.r:pass())
  end)

  it("re-registers its leader when the committed entry differs from the configured one", function()
    local c = three()
    c.upsert {id = "a", http_addr = "elsewhere:80"}
    c.r:poke()
    assert.are.same({"node"}, c.ops)
    assert.are.equal("a:80", c.raw.nodes[1].http_addr)
  end)

  it("moves a down node's primaries at once and its replica slots only after the grace period", function()
    local c = three()
    c.status("c", "down")
    c.r:poke()
    local rows = c.rows()
    local slots, primaries = owns(rows, "c")
    assert.are.equal(0, primaries)
    assert.is_true(slots > 0, "c keeps its replica slots while it may come back")
    -- The grace period runs on the clock: ticks before its end move nothing.
    c.ops = {}
    c.now_ms = c.now_ms + (GRACE - 1) * 1000
    c.r:tick()
    assert.are.same({}, c.ops)
    c.now_ms = c.now_ms + 2000
    c.r:tick()
    assert.are.same({"table"}, c.ops)
    assert.are.equal(0, (owns(c.rows(), "c")))
  end)

  it("keeps everything in place when the down node comes back within its grace period", function()
    local c = three()
    c.status("c", "down")
    c.r:poke()
    c.ops = {}
    c.now_ms = c.now_ms + 5000
    c.status("c", "active")
    c.r:poke()
    -- Primaries may come back to c; no replica slot moved away meanwhile.
    local slots = owns(c.rows(), "c")
    assert.is_true(slots >= P * RF / 3 - 1)
    c.ops = {}
    c.now_ms = c.now_ms + GRACE * 1000
    c.r:tick()
    assert.are.same({}, c.ops)
  end)

  it("holds the table while a burst of joins is admitted, for at most JOIN_BURST_MS", function()
    local c = three()
    c.admissions = 2
    c.upsert {id = "d"}
    c.r:poke()
    assert.are.same({}, c.ops)
    c.now_ms = c.now_ms + reconciler.JOIN_BURST_MS / 2
    c.upsert {id = "e"}
    c.r:poke()
    assert.are.same({}, c.ops)
    c.now_ms = c.now_ms + reconciler.JOIN_BURST_MS / 2
    c.r:poke()
    assert.are.same({"table"}, c.ops)
    assert.is_true(owns(c.rows(), "d") > 0 and owns(c.rows(), "e") > 0)
  end)

  it("places at once when the burst ends", function()
    local c = three()
    c.admissions = 1
    c.upsert {id = "d"}
    c.r:poke()
    assert.are.same({}, c.ops)
    c.admissions = 0 -- membership.admit reconciles as its last admission ends
    c.r:poke()
    assert.are.same({"table"}, c.ops)
  end)

  it("never holds a failover for a join burst", function()
    local c = three()
    c.admissions = 3
    c.status("b", "down")
    c.r:poke()
    assert.are.same({"table"}, c.ops)
    local _, primaries = owns(c.rows(), "b")
    assert.are.equal(0, primaries)
  end)

  it("moves nothing in maintenance mode but primaries off a down node, and all when forced", function()
    local c = three()
    c.raw.rebalance_paused = true
    c.upsert {id = "d"}
    c.r:poke()
    assert.are.same({}, c.ops)
    assert.are.equal(0, (owns(c.rows(), "d")))
    c.status("c", "suspect") -- a suspect still leads its partitions: nothing moves
    c.r:poke()
    assert.are.same({}, c.ops)
    c.status("b", "down")
    c.r:poke()
    assert.are.same({"table"}, c.ops)
    assert.are.equal(0, select(2, owns(c.rows(), "b")))
    assert.are.equal(0, (owns(c.rows(), "d")))
    local ok, plan = c.r:rebalance(nil, true)
    assert.is_true(ok)
    assert.is_true(plan.moved_slots > 0)
    assert.is_true(owns(c.rows(), "d") > 0)
  end)

  it("skips placement when nothing it depends on changed", function()
    local c = three()
    local runs = 0
    local place = c.r.place
    c.r.place = function(...)
      runs = runs + 1
      return place(...)
    end
    c.r:poke()
    c.r:poke()
    assert.are.equal(0, runs)
    c.upsert {id = "d"}
    c.r:poke()
    assert.are.equal(2, runs) -- The new table, then the check that it settled.
  end)

  it("uses the Lua policy, and falls back to the built-in one when it fails", function()
    local c = three()
    c.r:set_policy(function(nodes, _, cfg)
      local rows = {}
      for p = 1, cfg.partitions do rows[p] = {nodes[1].id, nodes[2].id} end
      return rows
    end)
    for _, row in ipairs(c.rows()) do assert.are.same({"a", "b"}, row) end
    assert.are.equal(0, c.r.policy_fallbacks)
    -- Each placement runs the policy: the failed one, then the check that
    -- the built-in policy's table settled.
    c.r:set_policy(function() error("boom") end)
    assert.is_true(c.r.policy_fallbacks >= 1)
    assert.are.equal(c.r.policy_fallbacks, c.r.policy_errors.error)
    assert.is_true(owns(c.rows(), "c") > 0, "the built-in policy placed the table")
    c.r:set_policy(function() return {{"nobody"}} end)
    assert.are.equal(1, c.r.policy_errors.invalid)
    c.r:set_policy(function() coroutine.yield() end)
    assert.are.equal(1, c.r.policy_errors.yielded)
    assert.are.equal(c.r.policy_fallbacks, c.r.policy_errors.error + 2)
  end)

  it("moves the table off a leader whose own status is left, and does not register it again", function()
    local c = three()
    c.status("a", "left")
    c.r:poke()
    assert.are.same({"table"}, c.ops)
    assert.are.equal(0, (owns(c.rows(), "a")))
    assert.are.equal("left", c.raw.nodes[1].status)
  end)

  it("raises the feature level before registering its leader", function()
    local c
    c = cluster("a", {upgrade = function()
      if c.raw.feature_level >= 2 then return false end
      c.ops[#c.ops + 1] = "features"
      c.raw.feature_level, c.raw.index = 2, c.raw.index + 1
      return true
    end})
    c.raw.feature_level = 1
    c.r:poke()
    assert.are.same({"init", "features", "node", "table"}, c.ops)
  end)

  it("refuses to place when no node may hold partitions, and keeps the table", function()
    local c = three()
    local before = c.rows()
    for _, id in ipairs({"a", "b", "c"}) do c.status(id, "down") end
    c.now_ms = c.now_ms + (GRACE + 1) * 1000
    c.r:tick()
    assert.are.same({}, c.ops)
    assert.are.same(before, c.rows())
    local plan, err = c.r:plan(c.raw, true)
    assert.is_nil(plan)
    assert.are.equal("no eligible node", err)
  end)
end)
