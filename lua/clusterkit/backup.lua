--- Backups of the replicated state over HTTP (ckctl snapshot save/restore):
--
--   GET  /snapshot            the leader's state as one document (Node:snapshot);
--                             ?stale=1 takes this node's, leader or not (a
--                             cluster without quorum can still be backed up)
--   POST /snapshot/restore    commits a snapshot's table and flags (leader,
--                             CLUSTER_TOKEN; Node:restore_snapshot)
--
-- Followers answer 307 NOT_LEADER with the leader's address, like the other
-- leader-only endpoints.
local json = require "clusterkit.json"
local membership = require "clusterkit.membership"

local M = {}

local STATUS = {NOT_READY = 503, SNAPSHOT_MISMATCH = 409, BAD_SNAPSHOT = 400, RAFT = 503}

function M.install(node)
  local srv = node.http

  srv:route("GET", "/snapshot", function(req, res)
    local stale = req.query.stale ~= nil and req.query.stale ~= "0" and req.query.stale ~= "false"
    if not stale and not node:is_leader() then
      return membership.not_leader(node, res)
    end
    local snap, err = node:snapshot()
    if not snap then return res:error(503, err.code, err.message) end
    snap.nodes, snap.partitions = json.array(snap.nodes), json.array(snap.partitions)
    for _, p in ipairs(snap.partitions) do p.replica_nodes = json.array(p.replica_nodes) end
    res:header("Content-Disposition", 'attachment; filename="clusterkit-snapshot-' .. snap.state_index .. '.json"')
    return res:json(snap)
  end, {auth = "read"})

  srv:route("POST", "/snapshot/restore", function(req, res)
    local snap, derr = req:json()
    if type(snap) ~= "table" then
      return res:error(400, "BAD_SNAPSHOT", "the body must be a snapshot (JSON): " .. tostring(derr))
    end
    local out, err = node:restore_snapshot(snap)
    if not out then
      if err.code == "NOT_LEADER" then return membership.not_leader(node, res) end
      return res:error(STATUS[err.code] or 500, err.code, err.message)
    end
    out.missing = json.array(out.missing)
    return res:json(out)
  end, {auth = "write"})
end

return M
