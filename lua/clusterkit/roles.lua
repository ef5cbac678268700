--- Raft roles on the leader: which servers vote, which stand by, and the
-- raft contact that decides whether a server counts as alive for a change
-- of the voters. Owns its state (when raft last heard from each server in
-- this term) and reaches raft and the cluster only through `deps`, so that
-- tests/lua/roles_spec.lua drives it on a fake clock with a fake raft:
--
--   raft    {configuration = fn() -> servers as node:configuration() lists
--           them ({id, address, role, recent, heard}), leading = fn() ->
--           true while this node leads, term = fn() -> raft's current
--           term, state = fn() -> node:raft() ({state, leader_id,
--           leader_addr, voters}), transfer = fn(id, timeout) (yields
--           until raft's transfer ended or the timeout), assign = fn(id,
--           role) -> ok, msg
--           (yields until raft applied it)}
--   nodes   fn() -> the committed node entries ({id, raft_id, status})
--   clock   {now = fn() -> monotonic seconds}
--   sleep   fn(seconds) (yields)
--   wait_until  fn(pred, seconds) -> true once pred() holds (yields,
--           woken by the core's events), false at the timeout
--   lock    fn(f) -> f's results, run under the membership change lock
--   log     logger
--   opts    voters (how many voters to keep), election_timeout (seconds),
--           self_raft_id
--
-- The decisions themselves are pure functions of the configuration and the
-- statuses (M.repair_action, M.quorum_refusal, M.successor).
local errors = require "clusterkit.errors"
local is_down = require("clusterkit.detector").is_down

local M = {}

local format = string.format
local ipairs = ipairs

local Roles = {}
Roles.__index = Roles
M.Roles = Roles

function M.new(deps)
  local self = setmetatable({}, Roles)
  for k, v in pairs(deps) do self[k] = v end
  self.heard, self.term, self.since = {}, nil, nil
  return self
end

local function status_by_raft(nodes)
  local status = {}
  for _, n in ipairs(nodes) do status[n.raft_id] = n.status end
  return status
end

--- How many servers changed role between voter and standby since the
-- last call (servers: the configuration now). A joiner's first role (raft
-- adds it as a spare) belongs to its join and is not counted.
function Roles:count_changes(servers)
  local was, now, n = self.last_roles, {}, 0
  for _, s in ipairs(servers) do
    now[s.id] = s.role
    local before = was and was[s.id]
    if before and before ~= "spare" and before ~= s.role then n = n + 1 end
  end
  self.last_roles = now
  return n
end

--- The configuration entry of raft server `raft_id`, or nil.
function Roles:entry(raft_id)
  for _, s in ipairs(self.raft.configuration()) do
    if s.id == raft_id then return s end
  end
end

--- The role a new member gets: a vote while the cluster has fewer voters
-- than it keeps, else standby.
function Roles:role_for_joiner()
  local voters = 0
  for _, s in ipairs(self.raft.configuration()) do
    if s.role == "voter" then voters = voters + 1 end
  end
  return voters < self.opts.voters and "voter" or "standby"
end

--- Raft-level contact, sampled every leader tick (term: raft's current
-- one). Remembers when raft said it heard from each server (its progress'
-- recent flag: raft 0.15 clears it every election timeout, so one sample
-- alone says little). Returns the set of node ids that replicate the log
-- (voters and standbys, which the failure detector judges by raft
-- contact), the voters' node ids (a voter not in the state yet by its raft
-- id), and {id, seconds ago} for every replicated member that answered
-- replication (`heard`: exact to the message; node_note_contact in
-- ck_node.c).
function Roles:sample(term, nodes)
  local t = self.clock.now()
  if self.term ~= term then
    self.term, self.heard, self.since = term, {}, t
  end
  local by_raft = {}
  for _, n in ipairs(nodes) do by_raft[n.raft_id] = n.id end
  local replicated, voters, contacts = {}, {}, {}
  for _, s in ipairs(self.raft.configuration()) do
    if s.recent then self.heard[s.id] = t end
    local id = by_raft[s.id]
    if s.role == "voter" then voters[#voters + 1] = id or s.id end
    if id and (s.role == "voter" or s.role == "standby") then
      replicated[id] = true
      if s.heard then contacts[#contacts + 1] = {id, s.heard} end
    end
  end
  return replicated, voters, contacts
end

--- Seconds for which this leader's raft has not heard from server
-- `raft_id` (counted from when it started leading, if never; 0 before the
-- first sample).
function Roles:silence(raft_id)
  if not self.since then return 0 end
  return self.clock.now() - (self.heard[raft_id] or self.since)
end

--- What role repair should do now, or nil: while fewer than `want` voters
-- are alive (active or suspect), promote a healthy standby; once enough
-- are alive, demote a voter that is down, stopped or left (it comes back
-- as a standby). A suspect voter is never touched. One change at a time.
-- Returns {id, address, role, live}.
function M.repair_action(servers, status, want)
  local live, total, dead, standby = 0, 0, nil, nil
  for _, s in ipairs(servers) do
    local st = status[s.id]
    if s.role == "voter" then
      total = total + 1
      if is_down(st) or st == "left" then
        dead = dead or s
      else
        live = live + 1
      end
    elseif s.role == "standby" and st == "active" then
      standby = standby or s
    end
  end
  if live < want and standby then
    return {id = standby.id, address = standby.address, role = "voter", live = live}
  elseif dead and total > want then
    return {id = dead.id, address = dead.address, role = "standby", live = live, was = status[dead.id]}
  end
end

--- Every leader tick: one role change, when one is due.
function Roles:repair()
  local want = self.opts.voters
  local a = M.repair_action(self.raft.configuration(), status_by_raft(self.nodes()), want)
  if not a then return false end
  if a.role == "voter" then
    self.log:info("promoting standby %s to voter (%d of %d voters alive)", a.address, a.live, want)
  else
    self.log:info("demoting %s voter %s to standby", a.was or "unknown", a.address)
  end
  self.lock(function() return self.raft.assign(a.id, a.role) end)
  return true
end

--- Removing voter `raft_id` shrinks the quorum: an error (QUORUM, 409)
-- when the voters left behind could not commit (more than half of them
-- must be alive), else nil. Alive means active in the state; with
-- `recent`, also heard from by raft within the last election timeout (the
-- status of a node that just died stays active for DOWN_AFTER, and a new
-- leader has seen nobody fail yet). self_raft_id: the leader, alive.
function M.quorum_refusal(servers, nodes, raft_id, name, self_raft_id, recent)
  local entry
  for _, s in ipairs(servers) do
    if s.id == raft_id then entry = s end
  end
  if not (entry and entry.role == "voter") then return nil end
  local active = {}
  for _, n in ipairs(nodes) do
    if n.status == "active" then active[n.raft_id] = true end
  end
  local live, total = 0, 0
  for _, s in ipairs(servers) do
    if s.role == "voter" and s.id ~= raft_id then
      total = total + 1
      if active[s.id] and (not recent or s.id == self_raft_id or s.recent == true) then live = live + 1 end
    end
  end
  if live * 2 <= total then
    return errors.new("QUORUM", format("removing %s would leave %d of %d voters alive", name, live, total),
      {status = 409})
  end
end

--- Before voter `raft_id` is removed, a live standby takes its vote when
-- the voters would otherwise fall below `voters`. Removing one of three
-- voters first leaves two, which need each other: the leader dying then
-- (before a standby was promoted) stops the cluster until it comes back,
-- and with the removal appended but not committed, even the survivors' old
-- configuration cannot elect anyone.
--
-- Live: active in the state and heard from by raft, now (its recent flag)
-- or at a leader tick less than an election timeout ago. A new leader has
-- heard from nobody yet: raft 0.15 starts every follower's recent flag
-- false when it takes office (progressBuildArray), and the successor of a
-- leader that was asked to leave removes it within milliseconds
-- (make test-faults FAULT_SCENARIO=kill-membership FAULT_SEED=174162: it
-- promoted nobody, and a kill then left one of two voters). So an active
-- standby not heard from yet is waited for, until two election timeouts
-- into the term: with `block` polling (bounded by that deadline), without
-- it returning false (ask again next tick). True: go ahead and remove.
function Roles:promote_before_removing(raft_id, block)
  local et = self.opts.election_timeout
  local deadline
  for _ = 1, 1000 do
    local entry = self:entry(raft_id)
    if not (entry and entry.role == "voter" and self.raft.leading()) then return true end
    local since = self.term == self.raft.term() and self.since or nil
    local heard = since and self.heard or {}
    local now = self.clock.now()
    deadline = deadline or (since or now) + 2 * et
    local status = status_by_raft(self.nodes())
    local voters, standby, pending = 0, nil, false
    for _, s in ipairs(self.raft.configuration()) do
      if s.role == "voter" and s.id ~= raft_id then
        voters = voters + 1
      elseif s.role == "standby" and status[s.id] == "active" then
        if s.recent or now - (heard[s.id] or -math.huge) < et then
          standby = standby or s
        else
          pending = true
        end
      end
    end
    if voters >= self.opts.voters then return true end
    if standby then
      self.log:info("promoting standby %s to voter before removing voter %s", standby.address, entry.address)
      local ok, msg = self.raft.assign(standby.id, "voter")
      if not ok then self.log:warn("promoting %s: %s", standby.address, tostring(msg)) end
      return true
    end
    if not pending or now >= deadline then return true end
    if not block then return false end
    self.sleep(0.02)
  end
  return true
end

--- Hands leadership to a live voter when this node leads and has one
-- (status: raft id -> status, "stopping" for a node that announced its
-- stop). raft_transfer(0) may pick a voter that is down or stopping (it
-- only looks at the log), so the target is chosen here (M.successor).
-- Returns true when another node leads afterwards.
function Roles:handover(status)
  local r = self.raft.state()
  if r.state ~= "leader" or r.voters < 2 then return false end
  local target = M.successor(self.raft.configuration(), status, self.opts.self_raft_id)
  if not target then
    self.log:warn("no live voter to hand leadership to")
    return false
  end
  local et, t0 = self.opts.election_timeout, self.clock.now()
  self.raft.transfer(target.id, et * 4)
  -- raft calls back when the transfer ends; the new leader may take a
  -- heartbeat longer to make itself known here.
  self.wait_until(function()
    local s = self.raft.state()
    return s.state ~= "leader" and s.leader_id ~= nil
  end, et * 2)
  r = self.raft.state()
  local ms = (self.clock.now() - t0) * 1000
  if r.state ~= "leader" and r.leader_id and r.leader_id ~= self.opts.self_raft_id then
    self.log:info("leadership handed over to %s in %.0f ms", tostring(r.leader_addr), ms)
    return true
  end
  self.log:warn("leadership handover to %s did not complete in %.0f ms", target.address, ms)
  return false
end

--- Whom a leader that steps down hands over to: a voter other than itself
-- that is active (status: raft id -> status, "stopping" for one that
-- announced its stop), preferring one raft heard from recently (a stopped
-- node may still look active in the state for a moment). Nil: none.
function M.successor(servers, status, self_raft_id)
  local target, fallback
  for _, s in ipairs(servers) do
    if s.role == "voter" and s.id ~= self_raft_id and status[s.id] == "active" then
      if s.recent ~= false then
        target = target or s
      else
        fallback = fallback or s
      end
    end
  end
  return target or fallback
end

return M
