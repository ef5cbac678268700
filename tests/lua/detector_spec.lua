-- The failure detector (clusterkit.detector) on a fake clock: time is a
-- number the test moves, heartbeats are calls, so stalls, partitions and
-- leader changes are stepped exactly.
local detector = require "clusterkit.detector"

local TICK = 0.2

local function new()
  return detector.new {self_id = "a", suspect_after = 0.75, down_after = 1.5, stall_after = 0.4}
end

local function nodes(st)
  local list = {}
  for _, id in ipairs({"a", "b", "c"}) do list[#list + 1] = {id = id, status = st[id] or "active"} end
  return list
end

local VOTERS = {"a", "b", "c"}

local function none() return {} end

-- Runs ticks from t to t_end; `contacts(t)` lists who answered raft at t,
-- `beats(t)` who heartbeated over HTTP; `replicated` is the step's set of
-- members judged by raft contact. Applies every change to `st` (as
-- committing would) and returns all changes seen.
local function drive(d, st, t, t_end, contacts, beats, replicated)
  local seen = {}
  while t < t_end + 1e-9 do
    for _, id in ipairs(contacts(t)) do d:contact(id, t) end
    for _, id in ipairs(beats(t)) do d:heard(id, t) end
    for _, c in ipairs((d:step(t, 1, nodes(st), VOTERS, replicated))) do
      st[c.id] = c.status
      seen[#seen + 1] = {t = t, id = c.id, status = c.status, why = c.why}
    end
    t = t + TICK
  end
  return seen, t
end

-- Heartbeats only, nobody judged by raft contact.
local function run(d, st, t, t_end, beats)
  return drive(d, st, t, t_end, none, beats)
end

local function everyone() return {"b", "c"} end

describe("the failure detector", function()
  it("marks a silent node suspect, then down, and back active on its next heartbeat", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    assert.are.equal("active", st.c or "active")
    local changes
    changes, t = run(d, st, t, 3, function() return {"b"} end)
    assert.are.same({"suspect", "down"}, {changes[1].status, changes[2].status})
    assert.are.equal("c", changes[1].id)
    assert.are.equal("active", st.b or "active")
    run(d, st, t, t + 0.5, everyone)
    assert.are.equal("active", st.c or "active")
  end)

  it("judges nobody after its own loop stalled, and restarts every grace period", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    -- The leader is stopped for 7 s: no tick runs, no heartbeat is read.
    t = t + 7
    local changes, why = d:step(t, 1, nodes(st), VOTERS)
    assert.are.same({}, changes)
    assert.are.equal("stalled", why)
    assert.are.equal(1, d.stalls)
    -- Peers' heartbeats are read again from now on: nobody is ever marked.
    changes = run(d, st, t + TICK, t + 5, everyone)
    assert.are.same({}, changes)
    assert.are.equal("active", st.b or "active")
    assert.are.equal("active", st.c or "active")
  end)

  it("still detects a node that really died during the stall, after a full grace period", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    t = t + 7
    d:step(t, 1, nodes(st), VOTERS)
    local resumed = t
    local changes = run(d, st, t + TICK, t + 3, function() return {"b"} end)
    assert.are.equal("c", changes[1].id)
    assert.are.equal("suspect", changes[1].status)
    assert.is_true(changes[1].t - resumed >= 0.75)
    assert.are.equal("down", st.c or "active")
  end)

  it("keeps a node that was down before its loop stalled down", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    _, t = run(d, st, t, t + 2, function() return {"b"} end)
    assert.are.equal("down", st.c)
    t = t + 7
    assert.are.same({}, (d:step(t, 1, nodes(st), VOTERS)))
    local changes = run(d, st, t + TICK, t + 3, function() return {"b"} end)
    assert.are.same({}, changes)
    assert.are.equal("down", st.c)
  end)

  it("holds liveness changes while it has not heard from a quorum of voters", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    -- The leader is cut off: it hears nobody, so it must not mark anybody.
    local changes, t2 = run(d, st, t, t + 5, function() return {} end)
    assert.are.same({}, changes)
    assert.is_true(d.held > 0)
    -- One voter comes back: a quorum again (a and b), so c goes down.
    changes = run(d, st, t2, t2 + 3, function() return {"b"} end)
    assert.are.equal("c", changes[#changes].id)
    assert.are.equal("down", st.c or "active")
    assert.are.equal("active", st.b or "active")
  end)

  it("commits a recovery even without a quorum", function()
    local d = new()
    local st = {b = "down", c = "down"}
    d:step(0, 1, nodes(st), VOTERS)
    d:heard("b", 0.1)
    local changes = d:step(0.2, 1, nodes(st), {"a", "b", "c", "d", "e"})
    assert.are.same({{id = "b", status = "active", why = "heartbeat"}}, changes)
  end)

  it("gives every node a grace period in a new term, but keeps down nodes down", function()
    local d = new()
    local st = {c = "down"}
    local changes = d:step(10, 7, nodes(st), VOTERS)
    assert.are.same({}, changes)
    for t = 10.2, 11.2, TICK do
      d:heard("b", t)
      changes = d:step(t, 7, nodes(st), VOTERS)
      assert.are.same({}, changes)
    end
    assert.is_nil(d:silence("c", 11.2))
  end)

  it("marks a node that announced a graceful stop stopped at once, never down while it is away", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    d:stopping("c", 1)
    assert.is_true(d:is_stopping("c"))
    local changes = d:step(t, 1, nodes(st), VOTERS)
    assert.are.same({{id = "c", status = "stopped", why = "graceful stop"}}, changes)
    st.c = "stopped"
    -- Silent for long after, through a stall and a new term: still stopped.
    changes, t = run(d, st, t + TICK, t + 5, function() return {"b"} end)
    assert.are.same({}, changes)
    assert.is_false(d:is_stopping("c"))
    t = t + 7
    d:step(t, 1, nodes(st), VOTERS)
    changes, t = run(d, st, t + TICK, t + 3, function() return {"b"} end)
    assert.are.same({}, changes)
    assert.are.same({}, (d:step(t, 2, nodes(st), VOTERS)))
    changes, t = run(d, st, t + TICK, t + 3, function() return {"b"} end)
    assert.are.same({}, changes)
    -- Started again: its first heartbeat makes it active.
    d:heard("c", t)
    assert.are.same({{id = "c", status = "active", why = "heartbeat"}}, (d:step(t, 1, nodes(st), VOTERS)))
  end)

  it("commits an announced stop as down while the cluster is at feature level 1, once", function()
    local d, st = new(), {}
    d.stop_status = "down" -- what membership sets while a v0.1.0 member may apply it
    local _, t = run(d, st, 0, 1, everyone)
    d:stopping("c", 1)
    local changes = d:step(t, 1, nodes(st), VOTERS)
    assert.are.same({{id = "c", status = "down", why = "graceful stop"}}, changes)
    st.c = "down"
    -- Committed: the status remembers the stop, nothing more to say.
    changes, t = run(d, st, t + TICK, t + 3, function() return {"b"} end)
    assert.are.same({}, changes)
    assert.is_false(d:is_stopping("c"))
    d:heard("c", t)
    assert.are.same({{id = "c", status = "active", why = "heartbeat"}}, (d:step(t, 1, nodes(st), VOTERS)))
  end)

  it("commits an announced stop without a quorum of voters heard from", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    _, t = run(d, st, t, t + 1.2, function() return {} end)
    assert.is_true(d.held > 0)
    d:stopping("b", 1)
    local changes = d:step(t, 1, nodes(st), VOTERS)
    assert.are.same({{id = "b", status = "stopped", why = "graceful stop"}}, changes)
  end)

  it("does not keep a node stopped that still heartbeats after announcing its stop", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    -- Before the stop was committed: it is never marked stopped.
    d:stopping("c", 1)
    d:heard("c", t)
    local changes = run(d, st, t, t + 2, everyone)
    assert.are.same({}, changes)
    -- After: the next heartbeat makes it active again.
    d:stopping("c", 1)
    changes, t = run(d, st, t + 2, t + 2, function() return {"b"} end)
    assert.are.same("stopped", changes[1].status)
    d:heard("c", t)
    assert.are.same({{id = "c", status = "active", why = "heartbeat"}}, (d:step(t, 1, nodes(st), VOTERS)))
  end)

  it("keeps a stop announced to a new leader before its first step, and drops one from an older term", function()
    -- The old leader hands over, then announces its stop to the successor
    -- (term 5), whose detector has not stepped in term 5 yet.
    local d, st = new(), {}
    d:stopping("c", 5)
    assert.are.same({{id = "c", status = "stopped", why = "graceful stop"}}, (d:step(10, 5, nodes(st), VOTERS)))
    st.c = "stopped"
    for t = 10.2, 13, TICK do
      d:heard("b", t)
      assert.are.same({}, (d:step(t, 5, nodes(st), VOTERS)))
    end
    -- A stop announced while leading in term 5, not committed, then leading
    -- again in term 9: the node may have come back meanwhile, heartbeating
    -- to another leader, so it gets a grace period and is judged by silence.
    d, st = new(), {}
    d:step(10, 5, nodes(st), VOTERS)
    d:stopping("c", 5)
    local seen = {}
    for t = 20, 22, TICK do
      d:heard("b", t)
      for _, c in ipairs((d:step(t, 9, nodes(st), VOTERS))) do
        st[c.id] = c.status
        seen[#seen + 1] = c.status
      end
    end
    assert.are.same({"suspect", "down"}, seen)
  end)

  it("ignores a stop announced in its own name", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    d:stopping("a", 1)
    assert.are.same({}, (d:step(t, 1, nodes(st), VOTERS)))
  end)

  it("says why it marks a node down", function()
    local d, st = new(), {}
    local _, t = run(d, st, 0, 1, everyone)
    local changes = run(d, st, t, t + 2, function() return {"b"} end)
    assert.are.equal("down", changes[2].status)
    assert.truthy(changes[2].why:match("^silent for %d+%.%ds$"), changes[2].why)
  end)
end)

-- Raft members that replicate the log are judged by raft contact (the
-- leader's AppendEntries answered), HTTP heartbeats only bring them back.
describe("the failure detector with raft contact", function()
  local ALL = {b = true, c = true}
  local function drive_all(d, st, t, t_end, contacts, beats)
    return drive(d, st, t, t_end, contacts, beats, ALL)
  end

  it("keeps a member that answers raft active with no HTTP heartbeat at all", function()
    local d, st = new(), {}
    local seen = drive_all(d, st, 0, 10, everyone, none)
    assert.are.same({}, seen)
  end)

  it("marks down a member whose HTTP heartbeats go on while its raft is silent", function()
    -- A node stuck as a candidate in another term, or with its raft port
    -- cut off, still answers HTTP: it must not keep serving as current.
    local d, st = new(), {}
    local _, t = drive_all(d, st, 0, 1, everyone, none)
    local seen
    seen, t = drive_all(d, st, t, t + 3, function() return {"b"} end, everyone)
    assert.are.same({"suspect", "down"}, {seen[1].status, seen[2].status})
    assert.are.equal("c", seen[1].id)
    -- Heartbeats alone never bring it back...
    seen, t = drive_all(d, st, t, t + 3, function() return {"b"} end, everyone)
    assert.are.same({}, seen)
    assert.are.equal("down", st.c)
    -- ...raft contact with a heartbeat does.
    seen = drive_all(d, st, t, t + 1, everyone, everyone)
    assert.are.same({{t = seen[1].t, id = "c", status = "active", why = "heartbeat"}}, seen)
  end)

  it("brings a down member back only with an HTTP heartbeat besides raft contact", function()
    local d, st = new(), {}
    local _, t = drive_all(d, st, 0, 1, everyone, none)
    _, t = drive_all(d, st, t, t + 3, function() return {"b"} end, none)
    assert.are.equal("down", st.c)
    -- Raft answers again (a lingering connection, say), no heartbeat: stays down.
    local seen
    seen, t = drive_all(d, st, t, t + 2, everyone, none)
    assert.are.same({}, seen)
    d:heard("c", t)
    seen = drive_all(d, st, t, t, everyone, none)
    assert.are.same("active", seen[1] and seen[1].status)
  end)

  it("takes a suspect member back on raft contact alone", function()
    local d, st = new(), {}
    local _, t = drive_all(d, st, 0, 1, everyone, none)
    _, t = drive_all(d, st, t, t + 0.8, function() return {"b"} end, none)
    assert.are.equal("suspect", st.c)
    local seen = drive_all(d, st, t, t, everyone, none)
    assert.are.same({{t = t, id = "c", status = "active", why = "raft contact"}}, seen)
  end)

  it("lets raft contact cancel no announced stop, and revive no committed one", function()
    -- A stopping node's raft answers until its process exits.
    local d, st = new(), {}
    local _, t = drive_all(d, st, 0, 1, everyone, none)
    d:stopping("c", 1)
    local seen = drive_all(d, st, t, t + 2, everyone, none)
    assert.are.same({{t = seen[1].t, id = "c", status = "stopped", why = "graceful stop"}}, seen)
    assert.are.equal(1, #seen)
  end)

  it("counts voters heard by raft toward its quorum", function()
    local d, st = new(), {}
    local _, t = drive_all(d, st, 0, 1, everyone, none)
    -- b and c answer raft only: the leader has its quorum, so c's silence
    -- (when it stops answering) is judged.
    local seen = drive_all(d, st, t, t + 2, function() return {"b"} end, none)
    assert.are.same({"suspect", "down"}, {seen[1].status, seen[2].status})
  end)

  it("judges members outside the replicated set by HTTP heartbeats", function()
    local d, st = new(), {}
    local t, seen = 0, {}
    while t < 3 do
      d:contact("c", t) -- raft contact for c, but c is not replicated: ignored
      d:contact("b", t)
      for _, c in ipairs((d:step(t, 1, nodes(st), VOTERS, {b = true}))) do
        st[c.id] = c.status
        seen[#seen + 1] = c.status
      end
      t = t + TICK
    end
    assert.are.same({"suspect", "down"}, seen)
  end)
end)
