-- This node's standing (clusterkit.standing) alone: views are plain
-- tables, time is a number the test moves, and the peer asked for its
-- /cluster is a function.
local standing = require "clusterkit.standing"

local ET = 1 -- election timeout, seconds

local function view(statuses, ready)
  local nodes, by_id = {}, {}
  for _, e in ipairs(statuses) do
    local n = {id = e[1], status = e[2] or "active"}
    nodes[#nodes + 1], by_id[n.id] = n, n
  end
  return {ready = ready ~= false, cluster_id = "c1", nodes = nodes, by_id = by_id}
end

local function setup(answer)
  local f = {t = 0, removed = {}, asked = {}}
  f.s = standing.new {
    id = "me",
    clock = {now = function() return f.t end},
    probe = function(peer)
      f.asked[#f.asked + 1] = peer.id
      return answer and answer(peer)
    end,
    spawn = function(fn) fn() end,
    removed = function(reason) f.removed[#f.removed + 1] = reason end,
    log = {info = function() end, warn = function() end, error = function() end},
    opts = {election_timeout = ET},
  }
  return f
end

local FOLLOWER = {state = "follower", leader_id = 7, role = "voter"}
local LEADERLESS_VOTER = {state = "candidate", role = "voter"}

-- Ticks every 0.2 s from f.t to `until_t` with raft state r.
local function run(f, r, v, until_t)
  while f.t < until_t - 1e-9 do
    f.t = f.t + 0.2
    f.s:tick(r, v)
  end
end

describe("this node's standing", function()
  local members = view({{"me"}, {"a"}, {"b"}})

  it("is a member once registered, and leaving once its status is left", function()
    local f = setup()
    assert.is_nil(f.s:gone())
    f.s:saw(view({{"a"}})) -- not registered yet: a joiner's first views
    assert.is_nil(f.s:gone())
    assert.are.same({}, f.removed)
    f.s:saw(members)
    f.s:saw(view({{"me", "left"}, {"a"}, {"b"}}))
    assert.are.equal("leaving", f.s:gone())
    f.s:saw(members) -- re-admitted
    assert.is_nil(f.s:gone())
  end)

  it("is removed when its entry disappears from the state", function()
    local f = setup()
    f.s:saw(members)
    f.s:saw(view({{"a"}, {"b"}}))
    assert.are.equal("removed", f.s:gone())
    assert.are.same({"its entry was removed from the cluster state"}, f.removed)
    f.s:saw(view({{"a"}}))
    assert.are.equal(1, #f.removed, "said once")
  end)

  it("asks a peer after ten election timeouts (at least 5 s) without a leader, every 2 s, in turn", function()
    local f = setup(function() return {id = "c1", nodes = {{id = "me"}, {id = "a"}}} end)
    f.s:saw(members)
    run(f, FOLLOWER, members, 3)
    -- Leaderless from the tick at 3.2 s.
    run(f, LEADERLESS_VOTER, members, 3 + 9.9)
    assert.are.same({}, f.asked)
    run(f, LEADERLESS_VOTER, members, 3 + 10.5)
    assert.are.same({"a"}, f.asked)
    run(f, LEADERLESS_VOTER, members, 3 + 12.5)
    assert.are.same({"a", "b"}, f.asked)
    assert.are.same({}, f.removed, "both still list this node")
    -- A leader again: the count starts over.
    f.s:tick(FOLLOWER, members)
    run(f, LEADERLESS_VOTER, members, f.t + 9)
    assert.are.equal(2, #f.asked)
  end)

  it("is removed when a peer of the same cluster no longer lists it, not by another cluster's peer", function()
    local other = true
    local f = setup(function()
      return {id = other and "c2" or "c1", nodes = {{id = "a"}, {id = "b"}}}
    end)
    f.s:saw(members)
    run(f, LEADERLESS_VOTER, members, 10.5)
    assert.are.equal(1, #f.asked)
    assert.are.same({}, f.removed)
    other = false
    run(f, LEADERLESS_VOTER, members, 12.5)
    assert.are.same({"the cluster (as b sees it) no longer lists this node"}, f.removed)
  end)

  it("keeps a leaving voter voting, and lets it ask a peer after three election timeouts", function()
    local f = setup(function() return nil end) -- nobody answers
    f.s:saw(members)
    local leaving = view({{"me", "left"}, {"a"}, {"b"}})
    f.s:saw(leaving)
    run(f, LEADERLESS_VOTER, leaving, 30)
    assert.are.same({}, f.removed, "a voter goes on voting while the survivors may need it")
    assert.is_true(#f.asked >= 10)
  end)

  it("stops a leaving standby after three leaderless election timeouts, and one raft removed at once", function()
    local f = setup()
    f.s:saw(members)
    local leaving = view({{"me", "left"}, {"a"}, {"b"}})
    f.s:saw(leaving)
    run(f, {state = "follower", role = "standby"}, leaving, 2.9)
    assert.are.same({}, f.removed)
    run(f, {state = "follower", role = "standby"}, leaving, 3.3)
    assert.are.equal(1, #f.removed)
    local g = setup()
    g.s:saw(members)
    g.s:saw(leaving)
    g.t = 0.2
    g.s:tick({state = "follower"}, leaving) -- no leader, no role: out of raft
    g.t = 0.4
    g.s:tick({state = "follower"}, leaving)
    assert.are.same({"it left the cluster and no leader sends it the log any more"}, g.removed)
  end)

  it("does nothing on the leader", function()
    local f = setup()
    f.s:saw(members)
    run(f, {state = "leader", leader_id = 1, role = "voter"}, members, 30)
    assert.are.same({}, f.asked)
  end)
end)
