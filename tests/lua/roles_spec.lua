-- Raft roles on the leader (clusterkit.roles) alone: a fake raft
-- configuration that assign() changes at once, committed statuses as plain
-- tables, and a clock the test moves (sleep moves it too).
local roles = require "clusterkit.roles"

local ET = 1 -- election timeout, seconds

local quiet = {info = function() end, warn = function() end, error = function() end}

-- servers: {{id, role, recent}...}; statuses: id -> status (default active).
local function setup(servers, statuses, voters)
  local f = {t = 100, term = 1, leading = true, assigned = {}, statuses = statuses or {},
             raft = {state = "leader", leader_id = "a", voters = 3}}
  f.servers = {}
  for i, s in ipairs(servers) do
    f.servers[i] = {id = s[1], address = s[1] .. ":90", role = s[2], recent = s[3], heard = s[4]}
  end
  f.roles = roles.new {
    raft = {
      configuration = function() return f.servers end,
      leading = function() return f.leading end,
      term = function() return f.term end,
      state = function() return f.raft end,
      transfer = function(id, timeout)
        f.transferred = {id, timeout}
        if f.moves then f.raft = {state = "follower", leader_id = id, leader_addr = id .. ":90", voters = 3} end
      end,
      assign = function(id, role)
        for _, s in ipairs(f.servers) do
          if s.id == id then s.role = role end
        end
        f.assigned[#f.assigned + 1] = id .. "=" .. role
        return true
      end,
    },
    nodes = function()
      local list = {}
      for _, s in ipairs(f.servers) do
        list[#list + 1] = {id = "n" .. s.id, raft_id = s.id, status = f.statuses[s.id] or "active"}
      end
      return list
    end,
    clock = {now = function() return f.t end},
    sleep = function(s) f.t = f.t + s end,
    wait_until = function(pred, timeout)
      local deadline = f.t + timeout
      while not pred() do
        if f.t >= deadline then return false end
        f.t = f.t + 0.05
      end
      return true
    end,
    lock = function(fn) return fn() end,
    log = quiet,
    opts = {voters = voters or 3, election_timeout = ET, self_raft_id = "a"},
  }
  return f
end

describe("role repair", function()
  it("promotes an active standby while fewer voters than wanted are alive", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby"}}, {c = "down"})
    assert.is_true(f.roles:repair())
    assert.are.same({"d=voter"}, f.assigned)
    -- Now three live voters and a dead fourth: the dead one is demoted.
    assert.is_true(f.roles:repair())
    assert.are.same({"d=voter", "c=standby"}, f.assigned)
    assert.is_false(f.roles:repair())
  end)

  it("never touches a suspect voter, and never promotes a standby that is not active", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby"}, {"e", "standby"}},
      {c = "suspect", d = "down", e = "suspect"})
    assert.is_false(f.roles:repair())
    f.statuses.c = "stopped"
    assert.is_false(f.roles:repair(), "no active standby to promote, and no voter to spare")
    f.statuses.e = "active"
    assert.is_true(f.roles:repair())
    assert.are.same({"e=voter"}, f.assigned)
  end)

  it("demotes a voter that left only while enough others are alive", function()
    local a = roles.repair_action({{id = 1, role = "voter"}, {id = 2, role = "voter"}, {id = 3, role = "voter"}},
      {[1] = "active", [2] = "active", [3] = "left"}, 3)
    assert.is_nil(a, "demoting would leave two voters of three wanted")
    a = roles.repair_action({{id = 1, role = "voter"}, {id = 2, role = "voter"}, {id = 3, role = "voter"}},
      {[1] = "active", [2] = "active", [3] = "left"}, 2)
    assert.are.same({3, "standby"}, {a.id, a.role})
  end)

  it("gives a joiner a vote only while the cluster has fewer voters than it keeps", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}})
    assert.are.equal("voter", f.roles:role_for_joiner())
    f.servers[#f.servers + 1] = {id = "c", role = "voter"}
    assert.are.equal("standby", f.roles:role_for_joiner())
  end)
end)

describe("the quorum check before a voter is removed", function()
  local servers = {{id = 1, role = "voter", recent = true}, {id = 2, role = "voter", recent = false},
                   {id = 3, role = "voter", recent = true}, {id = 4, role = "standby"}}
  local function nodes(st)
    local list = {}
    for i = 1, 4 do list[i] = {raft_id = i, status = st[i] or "active"} end
    return list
  end

  it("refuses when the voters left could not commit", function()
    local err = roles.quorum_refusal(servers, nodes({[2] = "down"}), 3, "n3", 1)
    assert.are.equal("QUORUM", err.code)
    assert.matches("1 of 2 voters alive", err.message)
    assert.is_nil(roles.quorum_refusal(servers, nodes({}), 3, "n3", 1))
  end)

  it("counts only voters raft heard from when asked to, the leader always", function()
    assert.is_nil(roles.quorum_refusal(servers, nodes({}), 3, "n3", 1, false))
    local err = roles.quorum_refusal(servers, nodes({}), 3, "n3", 1, true)
    assert.are.equal("QUORUM", err.code, "voter 2 is active but raft has not heard from it")
  end)

  it("has nothing to say about a server that does not vote", function()
    assert.is_nil(roles.quorum_refusal(servers, nodes({[1] = "down", [2] = "down"}), 4, "n4", 1))
    assert.is_nil(roles.quorum_refusal(servers, nodes({}), 9, "n9", 1))
  end)
end)

describe("promotion before a voter is removed", function()
  it("promotes a standby raft heard from, then lets the removal go", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby", true}})
    assert.is_true(f.roles:promote_before_removing("c", true))
    assert.are.same({"d=voter"}, f.assigned)
  end)

  it("needs no promotion when enough voters remain", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "voter"}, {"e", "standby", true}})
    assert.is_true(f.roles:promote_before_removing("d", true))
    assert.are.same({}, f.assigned)
  end)

  it("waits for a standby not heard from yet, up to two election timeouts into the term", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby", false}})
    f.roles:sample(1, f.roles.nodes()) -- This leader's first tick: nobody heard yet.
    -- Without blocking: ask again next tick.
    assert.is_false(f.roles:promote_before_removing("c", false))
    -- Heard at a tick less than an election timeout ago: promoted.
    f.t = f.t + 0.5
    f.servers[4].recent = true
    f.roles:sample(1, f.roles.nodes())
    f.servers[4].recent = false
    f.t = f.t + 0.4
    assert.is_true(f.roles:promote_before_removing("c", false))
    assert.are.same({"d=voter"}, f.assigned)
  end)

  it("gives up waiting at the deadline when blocking", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby", false}})
    f.roles:sample(1, f.roles.nodes())
    local t0 = f.t
    assert.is_true(f.roles:promote_before_removing("c", true))
    assert.are.same({}, f.assigned)
    assert.is_true(f.t - t0 >= 2 * ET - 1e-9 and f.t - t0 < 2 * ET + 0.1)
  end)

  it("forgets contact from an earlier term", function()
    local f = setup({{"a", "voter"}, {"b", "voter"}, {"c", "voter"}, {"d", "standby", true}})
    f.roles:sample(1, f.roles.nodes())
    f.servers[4].recent = false
    f.term = 2 -- A new term, not sampled yet: what term 1 heard does not count.
    f.t = f.t + 0.1
    local t0 = f.t
    assert.is_true(f.roles:promote_before_removing("c", true))
    assert.are.same({}, f.assigned)
    assert.is_true(f.t - t0 >= 2 * ET - 1e-9)
  end)
end)

describe("raft contact", function()
  it("reports replicated members, voters and answers, and silence since the term began", function()
    local f = setup({{"a", "voter", true, 0.01}, {"b", "standby", false, 0.3}, {"c", "spare", false, 0.1},
                     {"x", "voter", false}})
    local nodes = f.roles.nodes()
    table.remove(nodes) -- x: a voter not in the state yet
    local replicated, voters, contacts = f.roles:sample(1, nodes)
    assert.are.same({na = true, nb = true}, replicated)
    assert.are.same({"na", "x"}, voters)
    assert.are.same({{"na", 0.01}, {"nb", 0.3}}, contacts)
    assert.are.equal(0, f.roles:silence("a"))
    f.t = f.t + 2
    f.roles:sample(1, nodes) -- a is still recent, b never was
    f.t = f.t + 1
    assert.are.equal(1, f.roles:silence("a"))
    assert.are.equal(3, f.roles:silence("b"))
  end)
end)

describe("role changes", function()
  it("counts promotions and demotions, not a joiner's first role", function()
    local r = roles.new {}
    assert.are.equal(0, r:count_changes({{id = 1, role = "voter"}}))
    assert.are.equal(0, r:count_changes({{id = 1, role = "voter"}, {id = 2, role = "spare"}}))
    assert.are.equal(0, r:count_changes({{id = 1, role = "voter"}, {id = 2, role = "standby"}}))
    assert.are.equal(2, r:count_changes({{id = 1, role = "standby"}, {id = 2, role = "voter"}}))
    assert.are.equal(0, r:count_changes({{id = 1, role = "standby"}}))
  end)
end)

describe("the handover", function()
  local servers = {{"a", "voter", true}, {"b", "voter", false}, {"c", "voter", true}}

  it("hands leadership to a live voter raft heard from", function()
    local f = setup(servers)
    f.moves = true
    assert.is_true(f.roles:handover({a = "active", b = "active", c = "active"}))
    assert.are.same({"c", 4 * ET}, f.transferred)
  end)

  it("gives up, bounded, when leadership does not move", function()
    local f = setup(servers)
    local t0 = f.t
    assert.is_false(f.roles:handover({a = "active", b = "active", c = "active"}))
    assert.is_true(f.t - t0 <= 2 * ET + 0.1)
  end)

  it("does nothing without a live voter, or on a follower, or alone", function()
    local f = setup(servers)
    assert.is_false(f.roles:handover({a = "active", b = "down", c = "stopping"}))
    assert.is_nil(f.transferred)
    f.raft = {state = "follower", leader_id = "b", voters = 3}
    assert.is_false(f.roles:handover({a = "active", b = "active", c = "active"}))
    f.raft = {state = "leader", leader_id = "a", voters = 1}
    assert.is_false(f.roles:handover({a = "active", b = "active", c = "active"}))
    assert.is_nil(f.transferred)
  end)
end)

describe("the handover target", function()
  it("is an active voter other than the leader, preferring one raft heard from", function()
    local servers = {{id = 1, role = "voter"}, {id = 2, role = "voter", recent = false},
                     {id = 3, role = "voter", recent = true}, {id = 4, role = "standby", recent = true}}
    local st = {[1] = "active", [2] = "active", [3] = "active", [4] = "active"}
    assert.are.equal(3, roles.successor(servers, st, 1).id)
    st[3] = "stopping"
    assert.are.equal(2, roles.successor(servers, st, 1).id)
    st[2] = "down"
    assert.is_nil(roles.successor(servers, st, 1))
  end)
end)
