--- This node's own standing in the cluster: a member, leaving, or removed.
--
-- A node that the cluster removed (POST /leave, ck:leave() on another node,
-- an operator) must stop acting as a member: it is no longer sent the log,
-- so it would otherwise stay a raft candidate forever, answer /health as
-- healthy and serve a state that no longer moves.
--
-- It learns of it in one of three ways: its own status "left" is committed
-- (then the leader moves its partitions and removes it from raft, after
-- which it hears no leader any more), its entry disappears from the state,
-- or, when it was removed while it was away, a peer's /cluster no longer
-- lists it. Then `removed(reason)` is called (the node fires `lose` for
-- the partitions it still holds, lingers, and stops).
--
-- Owns its state; what it needs comes in `deps`, so that
-- tests/lua/standing_spec.lua drives it on a fake clock with a fake peer:
--
--   id       this node's id
--   clock    {now = fn() -> monotonic seconds}
--   probe    fn(peer) -> the peer's /cluster answer's "cluster" object, or
--            nil (yields; a peer that does not answer says nothing)
--   spawn    fn(f): runs f in its own coroutine
--   removed  fn(reason): this node is no longer a member
--   log      logger
--   opts     election_timeout (seconds)
local M = {}

local ipairs, type = ipairs, type

local Standing = {}
Standing.__index = Standing
M.Standing = Standing

function M.new(deps)
  local self = setmetatable({}, Standing)
  for k, v in pairs(deps) do self[k] = v end
  -- registered: this node's entry was seen in the state; leaving: since
  -- when its status is left (seconds); removed: why it is no member now;
  -- leaderless: since when raft knows no leader.
  self.registered, self.leaving, self.removed_why, self.leaderless = false, nil, nil, nil
  self.probing, self.next_probe, self.probe_at = false, nil, 0
  return self
end

--- "removed", "leaving" or nil (a member).
function Standing:gone()
  return self.removed_why and "removed" or (self.leaving and "leaving") or nil
end

--- Declares this node removed (once): calls deps.removed(reason).
function Standing:remove(reason)
  if self.removed_why then return end
  self.removed_why = reason
  self.log:error("removed from the cluster: %s. Stopping; to join again, start it with an empty "
    .. "DATA_DIR and a JOIN_ADDR", reason)
  self.removed(reason)
end

--- After a commit applied: what view v says of this node.
function Standing:saw(v)
  if self.removed_why then return end
  local me = v.by_id[self.id]
  if me and me.status ~= "left" then
    self.registered, self.leaving = true, nil
    return
  end
  if not self.registered then return end
  if not me then
    return self:remove("its entry was removed from the cluster state")
  end
  if not self.leaving then
    self.leaving = self.clock.now()
    self.log:warn("this node's status is left: it is leaving the cluster and no longer serves as a member")
  end
end

--- Every tick, with raft's state r ({state, leader_id, role}) and the
-- current view v. On a node that does not lead: finishes a removal that
-- raft will never tell it about, and asks a peer whether it is still a
-- member after a long time without a leader.
function Standing:tick(r, v)
  local t = self.clock.now()
  if r.leader_id then
    self.leaderless = nil
  else
    self.leaderless = self.leaderless or t
  end
  if r.state == "leader" or self.removed_why or not self.leaderless then return end
  local quiet = t - self.leaderless
  local et = self.opts.election_timeout
  -- A leaving voter must go on voting until raft removes it: when the
  -- leader that began its leave dies, the survivors may need its vote to
  -- elect the one that finishes the leave (finish_leaves in
  -- membership.lua). Stopping after some leaderless time, as a standby
  -- may, once left a 3-voter cluster with one live voter and no leader.
  -- So a leaving voter asks a peer instead, soon.
  if self.leaving and (r.role == nil or (r.role ~= "voter" and quiet > 3 * et)) then
    return self:remove("it left the cluster and no leader sends it the log any more")
  end
  local probe_after = (self.leaving and 3 * et) or math.max(5, 10 * et)
  if quiet < probe_after or self.probing then return end
  if self.next_probe and t < self.next_probe then return end
  self.next_probe = t + 2
  if not v.ready then return end
  local peers = {}
  for _, n in ipairs(v.nodes) do
    if n.id ~= self.id and n.status ~= "left" then peers[#peers + 1] = n end
  end
  if #peers == 0 then return end
  self.probe_at = self.probe_at % #peers + 1
  local peer = peers[self.probe_at]
  self.log:info("no leader for %.1fs: asking %s whether this node is still a member", quiet, peer.id)
  self.probing = true
  self.spawn(function()
    local c = self.probe(peer)
    self.probing = false
    if type(c) ~= "table" or c.id ~= v.cluster_id or type(c.nodes) ~= "table" then return end
    for _, n in ipairs(c.nodes) do
      if type(n) == "table" and n.id == self.id then return end
    end
    self:remove("the cluster (as " .. peer.id .. " sees it) no longer lists this node")
  end)
end

return M
