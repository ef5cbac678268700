-- The control plane at N = 100 and 1000 members, in one process on a fake
-- clock: the leader's failure detector (clusterkit.detector) fed as the
-- runtime feeds it (voters and standbys answer raft every heartbeat_timeout,
-- heartbeat over HTTP every 5 intervals), and every follower's per-commit
-- work (the view updated from the core's change record) for the status
-- changes the detector commits. Deterministic: no sockets, no raft, no
-- wall clock in the simulated part; only the costs are measured in real time.
--   ckrun tests/bench/sim_control_plane.lua
-- Prints, per N: ticks until every crashed member is marked down (and the
-- simulated time), live members misjudged (must be 0), the leader's step
-- cost, and a follower's cost per committed status change.
local core = require "clusterkit.core"
local detector = require "clusterkit.detector"
local viewm = require "clusterkit.view"

local TICK, RAFT_HB, REPORT = 0.2, 0.05, 1.0 -- heartbeat_interval, heartbeat_timeout, 5 intervals
local SUSPECT, DOWN = 0.75, 1.5
local P, RF = 1024, 3

local median = require("benchnode").median

-- A view of N members and a P x RF table, as view.build makes it.
local function make_view(N)
  local nodes, by_id = {}, {}
  for i = 1, N do
    local n = {id = "m" .. i, status = "active", raft_id = string.format("%016x", i), weight = 1, zone = ""}
    nodes[i], by_id[n.id] = n, n
  end
  local pnodes, parts, replicas = {}, {}, {}
  for p = 1, P do
    local row, reps, rids = {}, {}, {}
    for k = 1, RF do
      row[k] = nodes[((p * 7 + k * 13) % N) + 1]
      if k > 1 then reps[k - 1], rids[k - 1] = row[k], row[k].id end
    end
    pnodes[p], replicas[p] = row, reps
    parts[p] = {id = "partition-" .. (p - 1), index = p - 1, primary_node = row[1].id, replica_nodes = rids,
                epoch = 1}
  end
  return {index = 1, table_index = 1, ready = true, feature_level = 2, nodes = nodes, by_id = by_id,
          partitions = P, replication = RF, pnodes = pnodes, parts = parts, replicas = replicas}
end

local function sim(N, crashed)
  local det = detector.new {self_id = "m1", suspect_after = SUSPECT, down_after = DOWN, stall_after = 2 * TICK}
  local view = make_view(N)
  local voters, replicated = {"m1", "m2", "m3"}, {}
  for i = 2, N do replicated["m" .. i] = true end
  local dead = {}
  for i = 1, crashed do dead["m" .. (N - i * 3)] = true end -- spread over the list
  local t, crash_at = 0, 10.0
  local steps, follower, misjudged = {}, {}, 0
  local marked_down, done_at = 0, nil
  local index = 1
  -- The core a follower's view reads entries from.
  local status = {}
  local fake = {
    index = function() return index, 1 end,
    node_at = function(_, i)
      local n = view.nodes[i]
      return {id = n.id, status = status[n.id] or n.status, raft_id = n.raft_id, weight = 1, zone = "",
              http_addr = "", raft_addr = "", name = n.id, build = ""}
    end,
  }
  local positions = {}
  for i, n in ipairs(view.nodes) do positions[n.id] = i end
  local ticks = 0
  while t < crash_at + 10 do
    -- Raft answers every heartbeat_timeout within the tick; HTTP every REPORT.
    for i = 2, N do
      local id = "m" .. i
      if not (dead[id] and t >= crash_at) then
        det:contact(id, t - (i % 4) * RAFT_HB / 4)
        if (i * 0.013 + t) % REPORT < TICK then det:heard(id, t) end
      end
    end
    local t0 = core.hrtime()
    local changes = det:step(t, 1, view.nodes, voters, replicated)
    steps[#steps + 1] = (core.hrtime() - t0) / 1e3
    ticks = ticks + 1
    for _, c in ipairs(changes) do
      if not dead[c.id] and c.status ~= "active" then misjudged = misjudged + 1 end
      -- Committed: every follower updates its view from the record.
      index = index + 1
      status[c.id] = c.status
      local t1 = core.hrtime()
      local v = viewm.update(view, fake, {}, {positions[c.id]})
      follower[#follower + 1] = (core.hrtime() - t1) / 1e3
      view = v
      if c.status == "down" and dead[c.id] then marked_down = marked_down + 1 end
    end
    if marked_down == crashed and not done_at then done_at = t end
    t = t + TICK
  end
  print(string.format("N=%-5d %d crashed at t=%.1fs: all down at t=%.1fs (%.1fs later), live members misjudged %d | "
    .. "leader step %.1f us (median of %d) | follower per status commit %.1f us (median of %d)",
    N, crashed, crash_at, done_at or -1, (done_at or 0) - crash_at, misjudged, median(steps), #steps,
    median(follower), #follower))
end

for _, n in ipairs({100, 1000}) do sim(n, 10) end
