-- The view updated from the core's change record (node:changes(): rows,
-- node positions, `whole`) must equal the view built from scratch from the
-- same state, after any sequence of commands. Drives a real core (one node,
-- real raft) with random batches of upserts, status changes, tables and
-- removals, proposed together so that several apply in one loop turn, and
-- compares the two views at every applied event.
local clusterkit = require "clusterkit"
local core = require "clusterkit.core"
local viewm = require "clusterkit.view"
local testnode = require "testnode"

local P, RF = 8, 2

-- What a view says, in plain tables (node tables by value).
local function canon(v)
  local function node(n)
    return n and {n.id, n.status, n.status_since, n.http_addr, n.zone, n.weight, n.version} or false
  end
  local out = {index = v.index, table_index = v.table_index, ready = v.ready, nodes = {}, by_id = {},
               rows = {}, replicas = {}, parts = {}}
  for i, n in ipairs(v.nodes) do out.nodes[i] = node(n) end
  for id, n in pairs(v.by_id) do out.by_id[id] = node(n) end
  for p = 1, #(v.pnodes or {}) do
    local row, reps = {}, {}
    for k, n in ipairs(v.pnodes[p]) do row[k] = node(n) end
    for k, n in ipairs(v.replicas[p]) do reps[k] = node(n) end
    out.rows[p], out.replicas[p] = row, reps
    local part = v.parts[p]
    out.parts[p] = {part.id, part.index, part.primary_node, part.replica_nodes, part.epoch}
  end
  return out
end

describe("the view updated from the change record", function()
  it("equals the view built from scratch after random batches of commands", function()
    local ck = testnode.started(finally, "n1", {partition_count = P, replication_factor = RF,
                                                -- The leader's own reconciler and detector add commands
                                                -- of their own; slow them so that the test's dominate.
                                                suspect_after = 30, down_after = 60})
    local c = ck._core
    local events, incremental, mismatches = 0, 0, {}
    local fire = ck._fire_changes
    ck._fire_changes = function(self, old, new, changes, gap, changed)
      events = events + 1
      if changed then incremental = incremental + 1 end
      local full = viewm.build(c:view(), c:hasher())
      local a, b = canon(new), canon(full)
      if not pcall(assert.are.same, b, a) then mismatches[#mismatches + 1] = {events, changed ~= nil} end
      return fire(self, old, new, changes, gap, changed)
    end

    math.randomseed(4242)
    local ids, known = {"n1"}, {n1 = true}
    local statuses = {"active", "suspect", "down", "stopped", "active"}
    local propose, settle = testnode.proposer(c)
    for round = 1, 60 do
      for _ = 1, math.random(1, 4) do
        local r = math.random()
        if r < 0.3 or #ids < 3 then
          local id = "x" .. math.random(1, 12)
          propose(core.encode_node {
            id = id, name = id, http_addr = "127.0.0.1:" .. (20000 + #id), raft_addr = "127.0.0.1:1",
            zone = "z" .. math.random(1, 3), weight = math.random(1, 3), services = {},
            raft_id = core.raft_id(id), status = statuses[math.random(#statuses)], time_ms = round,
          })
          if not known[id] then known[id], ids[#ids + 1] = true, id end
        elseif r < 0.55 and #ids > 1 then
          propose(core.encode_status(ids[math.random(2, #ids)], statuses[math.random(#statuses)], round))
        elseif r < 0.62 and #ids > 2 then
          -- A removal renumbers the entries: the record says so (whole).
          local at = math.random(2, #ids)
          propose(core.encode_remove(ids[at]))
          known[ids[at]] = nil
          table.remove(ids, at)
        else
          local owners = {}
          for p = 1, P do
            local a, b = math.random(1, #ids), math.random(0, #ids)
            owners[(p - 1) * RF + 1], owners[(p - 1) * RF + 2] = a, (b ~= a) and b or 0
          end
          propose(core.encode_table(P, RF, ids, owners))
        end
      end
      assert.are.equal(0, settle())
    end
    -- The last batch's event, then compare once more with what is there now.
    for _ = 1, 100 do
      if ck:_view().index == c:index() then break end
      clusterkit.sleep(0.01)
    end
    assert.are.same({}, mismatches)
    assert.are.same(canon(viewm.build(c:view(), c:hasher())), canon(ck:_view()))
    -- Most events took the incremental path (removals and the start do not).
    assert.is_true(events >= 30, "events: " .. events)
    assert.is_true(incremental * 2 > events, ("incremental %d of %d"):format(incremental, events))
  end)
end)
