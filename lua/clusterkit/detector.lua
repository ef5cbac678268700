--- The leader's failure detector, as a pure step over heartbeat times.
--
-- Nothing here reads a clock, a socket or raft: the caller passes `now`
-- (seconds, monotonic), the nodes with their committed statuses and the raft
-- voters, and gets back the status changes to commit. So tests drive it on a
-- fake clock through stalls, partitions and leader changes.
--
--   active -> suspect (silent for suspect_after)
--          -> down    (silent for down_after)     -> active on the next heartbeat
--   any    -> stopped (it announced a graceful stop) -> active on the next heartbeat
--
-- Down and stopped are both out of service (see M.is_down); only the cause
-- differs, which operators need to tell a crash from a planned stop.
--
-- Two rules the first fault campaign taught us:
--
-- * A stalled loop judges nobody. When a step comes much later than the
--   ticker's interval (the process was stopped, the VM froze, the CPU was
--   starved), the heartbeats that peers sent meanwhile were never read, so
--   the silence clock of every node in service restarts and this step
--   changes nothing.
-- * A leader that has not heard from a quorum of voters recently (within
--   suspect_after) commits no liveness change that takes a node out of
--   service on the strength of silence: it may be the one that is cut off.
--   Recoveries (a node that heartbeats again) and announced stops are
--   always committed.
--
-- Two sources of evidence, for scale (issue 10, item 6):
--
-- * Raft members that replicate the log (voters and standbys: the
--   `replicated` set a step is given) are judged by raft's own traffic: when
--   each last answered the leader's AppendEntries (`contact`, fed from C
--   every tick; see node_note_contact in ck_node.c). Raft sends those every
--   heartbeat_timeout anyway, so these members heartbeat over HTTP only
--   every few intervals, to report their build (and to come back). An HTTP
--   heartbeat keeps none of them in service: a node whose HTTP answers but
--   whose raft does not (stuck as a candidate in another term, its raft
--   port cut off) falls behind the log, and serving its partitions as
--   current would be wrong (the fault suite saw a node marked active by a
--   late heartbeat serve copies from an ownership it had lost). Such a node
--   comes back only when both hold: an HTTP heartbeat (a restart
--   announces itself) and raft contact within suspect_after.
-- * Every other member (spares, nodes raft does not have yet) is judged by
--   HTTP heartbeats alone, as before.
local M = {}

--- Every committed node status, in the order /metrics lists them.
M.STATUSES = {"active", "suspect", "down", "stopped", "left"}

local OUT = {down = true, stopped = true}

--- True for a member that serves nothing until it heartbeats again (down
-- or stopped): every rule about dead nodes (failover, voter repair, a
-- taken id or address) treats both alike.
function M.is_down(status)
  return OUT[status] == true
end

local Detector = {}
Detector.__index = Detector

--- detector.new{self_id, suspect_after, down_after, stall_after}
function M.new(o)
  assert(type(o.self_id) == "string", "detector.new: self_id")
  assert(o.suspect_after > 0 and o.down_after > o.suspect_after, "detector.new: timings")
  return setmetatable({
    self_id = o.self_id,
    suspect_after = o.suspect_after,
    down_after = o.down_after,
    stall_after = o.stall_after or o.suspect_after / 2,
    heard_at = {},  -- id -> time of the last heartbeat actually received
    raft_at = {},   -- id -> time it last answered raft replication (contact)
    grace = {},     -- id -> start of its grace period (replicated members)
    since = {},     -- id -> start of the current silence (heartbeat or grace)
    stops = {},     -- id -> raft term in which it announced a graceful stop
    term = nil,
    last_step = nil,
    stalls = 0,     -- steps that found the loop had stalled
    held = 0,       -- changes not committed for want of a quorum
  }, Detector)
end

--- A heartbeat from `id` arrived at `now`. It also cancels a stop that
-- `id` announced: a node that still heartbeats has not stopped.
function Detector:heard(id, now)
  self.heard_at[id] = now
  self.since[id] = now
  self.stops[id] = nil
end

--- Raft evidence: `id` answered this leader's replication at `at`. Unlike
-- a heartbeat, it cancels no announced stop: a stopping node's raft answers
-- until its process exits.
function Detector:contact(id, at)
  local t = self.raft_at[id]
  if not t or at > t then self.raft_at[id] = at end
end

-- The latest evidence of either kind, or nil.
local function latest(self, id)
  local h, r = self.heard_at[id], self.raft_at[id]
  if h and r then return math.max(h, r) end
  return h or r
end

--- `id` announced a graceful stop to this leader, in raft term `term`: it
-- is stopped at the next step (no silence to wait for).
function Detector:stopping(id, term)
  if id == self.self_id then return end -- A leader never announces to itself.
  self.heard_at[id], self.since[id] = nil, nil
  self.stops[id] = term
end

--- True while `id`'s announced stop is not committed yet.
function Detector:is_stopping(id)
  return self.stops[id] ~= nil
end

--- Seconds since `id` was last heard from, or nil if never (by this leader).
function Detector:silence(id, now)
  local t = latest(self, id)
  return t and now - t or nil
end

-- True when self plus the voters heard from within suspect_after make a
-- majority of `voters` (a list of node ids). No voter list: true.
function Detector:has_quorum(now, voters)
  if not voters or #voters == 0 then return true end
  local n = 0
  for _, id in ipairs(voters) do
    local t = latest(self, id)
    if id == self.self_id or (t and now - t < self.suspect_after) then n = n + 1 end
  end
  return n * 2 > #voters
end

--- One step. nodes: list of {id, status}; voters: node ids of raft voters;
-- term: the leader's raft term; replicated: set of node ids judged by raft
-- contact (see the top; nil: none). Returns a list of {id = , status = ,
-- why = } to commit (why: for the log), and a second value: "stalled",
-- "no_quorum" or nil.
function Detector:step(now, term, nodes, voters, replicated)
  local since, stops = self.since, self.stops
  replicated = replicated or {}
  if term ~= self.term then
    -- A new leader starts with a clean slate: every node that is not
    -- already out of service gets a grace period; a down or stopped node
    -- stays so until it heartbeats (no flapping back to active on a leader
    -- change). Stops announced to this leader in this term are kept (a
    -- leader that hands over announces its stop to its successor, maybe
    -- before the successor's first step); older ones are stale: that node
    -- may have come back meanwhile, heartbeating to another leader.
    since, self.heard_at, self.grace = {}, {}, {}
    self.since, self.term = since, term
    for _, n in ipairs(nodes) do
      if not OUT[n.status] then since[n.id], self.grace[n.id] = now, now end
    end
    for id, t in pairs(stops) do
      if t ~= term then stops[id] = nil end
    end
  end
  local last = self.last_step
  self.last_step = now
  if last and now - last > self.stall_after then
    self.stalls = self.stalls + 1
    -- A down node keeps its clock: restarting it would read as a fresh
    -- heartbeat and flap the node back to active.
    for _, n in ipairs(nodes) do
      if since[n.id] and not OUT[n.status] then since[n.id] = now end
      if not OUT[n.status] then self.grace[n.id] = now end
    end
    return {}, "stalled"
  end
  self.heard_at[self.self_id], since[self.self_id] = now, now
  local grace, raft_at, sa = self.grace, self.raft_at, self.suspect_after
  local quorum = self:has_quorum(now, voters)
  local changes, held = {}, false
  -- The status an announced stop commits: "stopped", or "down" while the
  -- cluster's feature level is 1 (v0.1.0 members cannot apply stopped).
  local stop_as = self.stop_status or "stopped"
  for _, n in ipairs(nodes) do
    local id, st = n.id, n.status
    local want, why
    local announced = false
    if stops[id] then
      if st == stop_as or st == "left" then
        -- Committed (or gone): the status remembers it now. No silence
        -- clock either (a grace period may have started one), or it would
        -- read as a heartbeat: it stays stopped until it really heartbeats.
        stops[id], since[id] = nil, nil
      else
        want, why, announced = stop_as, "graceful stop", true
      end
    elseif st ~= "left" and replicated[id] and id ~= self.self_id then
      local start
      if OUT[st] then
        -- Back only with both: an HTTP heartbeat and raft contact.
        local h, r = self.heard_at[id], raft_at[id]
        if h and r and now - h < sa and now - r < sa then start = math.max(h, r) end
      else
        if grace[id] == nil then grace[id] = now end -- Newly seen: grace period.
        start = math.max(grace[id], raft_at[id] or grace[id])
      end
      if start ~= nil then
        local age = now - start
        if age < sa then
          want, why = "active", OUT[st] and "heartbeat" or "raft contact"
        else
          want = OUT[st] and st or (age >= self.down_after and "down" or "suspect")
          why = string.format("silent for %.1fs", age)
        end
      end
    elseif st ~= "left" then
      local start = since[id]
      if start == nil and not OUT[st] then
        since[id], start = now, now -- Newly seen in the state: grace period.
      end
      if start ~= nil then
        local age = now - start
        if age < self.suspect_after then
          want, why = "active", "heartbeat"
        else
          -- Silence never turns stopped into down: the node said why.
          want = OUT[st] and st or (age >= self.down_after and "down" or "suspect")
          why = string.format("silent for %.1fs", age)
        end
      end
    end
    if want and want ~= st then
      -- A recovery, or a stop the node announced itself, is a fact, not a
      -- guess from silence: it needs no quorum of voters heard from.
      if want == "active" or announced or quorum then
        changes[#changes + 1] = {id = id, status = want, why = why}
      else
        held = true
      end
    end
  end
  if held then
    self.held = self.held + 1
    return changes, "no_quorum"
  end
  return changes
end

return M
