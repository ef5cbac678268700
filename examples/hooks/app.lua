-- Registers every clusterkit hook and prints one line per event, as this
-- node sees it. Hooks fire on every node when it applies the change (the
-- rebalance ones on the leader, which computes tables).
--
--   NODE_ID=node-1 HTTP_ADDR=127.0.0.1:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true \
--     build/ckrun examples/hooks/app.lua
--   NODE_ID=node-2 HTTP_ADDR=127.0.0.1:8081 RAFT_ADDR=127.0.0.1:9002 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/hooks/app.lua
--   NODE_ID=node-3 HTTP_ADDR=127.0.0.1:8082 RAFT_ADDR=127.0.0.1:9003 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/hooks/app.lua
--
-- Then kill node-3 (Ctrl-C or kill -9), start it again, and watch node-1's
-- output. (With only two nodes, losing one loses raft's quorum: nothing
-- more is committed, so no node_leave.)
-- HOOKS_QUIET=state_change,partition_change leaves those events out.
io.stdout:setvbuf("line")

local clusterkit = require "clusterkit"

local ck = clusterkit.new()
local me = ck:me().id

local quiet = {}
for name in (os.getenv("HOOKS_QUIET") or ""):gmatch("[^,%s]+") do quiet[name] = true end

local function list(ids)
  return #ids > 0 and table.concat(ids, ",") or "-"
end

local function node(n)
  return ("%s (%s, %s)"):format(n.id, n.http_addr or "?", n.status or "?")
end

-- event -> function(payload) returning the line's text.
local describe = {
  node_join = function(ev)
    return "node " .. node(ev.node) .. " joined"
  end,
  node_leave = function(ev)
    return ("node %s left: %s"):format(node(ev.node), ev.reason)
  end,
  node_rejoin = function(ev)
    return ("node %s is back after %d ms"):format(node(ev.node), ev.offline_ms)
  end,
  leader_change = function(ev)
    return ("leader is %s at %s, term %d%s"):format(ev.leader_id, ev.leader_addr, ev.term,
      ev.is_me and " (this node)" or "")
  end,
  cluster_health_change = function(ev)
    return ("health %s -> %s"):format(tostring(ev.previous), ev.health)
  end,
  partition_change = function(ev)
    return ("%s epoch %d: primary %s -> %s, replicas %s -> %s, this node: %s"):format(ev.partition, ev.epoch,
      ev.old_primary ~= "" and ev.old_primary or "-", ev.new_primary ~= "" and ev.new_primary or "-",
      list(ev.old_replicas), list(ev.new_replicas), ev.role)
  end,
  rebalance_start = function(ev)
    return ("rebalance starts: %d partitions change, %d slots move, %d primaries move"):format(
      ev.moves or 0, ev.moved_slots or 0, ev.moved_primaries or 0)
  end,
  rebalance_complete = function(ev)
    return ("rebalance committed at index %d (%d partitions changed)"):format(ev.index, ev.moves or 0)
  end,
  state_change = function(ev)
    return ("state index %d"):format(ev.index)
  end,
}

for _, event in ipairs({"node_join", "node_leave", "node_rejoin", "leader_change", "cluster_health_change",
                        "partition_change", "rebalance_start", "rebalance_complete", "state_change"}) do
  ck:on(event, function(ev)
    if not quiet[event] then
      print(("[%s] %-21s %s"):format(me, event, describe[event](ev)))
    end
  end)
end

local ok, err = ck:start()
if not ok then
  error("node failed to start: " .. tostring(err))
end
print(("[%s] %-21s listening on http://%s"):format(me, "started", ck:me().http_addr))
