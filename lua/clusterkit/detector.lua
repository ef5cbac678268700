--- The leader's failure detector, as a pure step over heartbeat times.
--
-- Nothing here reads a clock, a socket or raft: the caller passes `now`
-- (seconds, monotonic), the nodes with their committed statuses and the raft
-- voters, and gets back the status changes to commit. So tests drive it on a
-- fake clock through stalls, partitions and leader changes.
--
--   active -> suspect (silent for suspect_after)
--          -> down    (silent for down_after)  -> active on the next heartbeat
--
-- Two rules the first fault campaign taught us:
--
-- * A stalled loop judges nobody. When a step comes much later than the
--   ticker's interval (the process was stopped, the VM froze, the CPU was
--   starved), the heartbeats that peers sent meanwhile were never read, so
--   every silence clock restarts and this step changes nothing.
-- * A leader that has not heard from a quorum of voters recently (within
--   suspect_after) commits no liveness change that takes a node out of
--   service: it may be the one that is cut off. Recoveries (a node that
--   heartbeats again) are always committed.
local M = {}

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
    since = {},     -- id -> start of the current silence (heartbeat or grace)
    term = nil,
    last_step = nil,
    stalls = 0,     -- steps that found the loop had stalled
    held = 0,       -- changes not committed for want of a quorum
  }, Detector)
end

--- A heartbeat from `id` arrived at `now`.
function Detector:heard(id, now)
  self.heard_at[id] = now
  self.since[id] = now
end

--- `id` said it is stopping: it is down at the next step.
function Detector:stopping(id, now)
  self.heard_at[id] = nil
  self.since[id] = now - self.down_after
end

--- Seconds since `id` was last heard from, or nil if never (by this leader).
function Detector:silence(id, now)
  local t = self.heard_at[id]
  return t and now - t or nil
end

-- True when self plus the voters heard from within suspect_after make a
-- majority of `voters` (a list of node ids). No voter list: true.
function Detector:has_quorum(now, voters)
  if not voters or #voters == 0 then return true end
  local n = 0
  for _, id in ipairs(voters) do
    local t = self.heard_at[id]
    if id == self.self_id or (t and now - t < self.suspect_after) then n = n + 1 end
  end
  return n * 2 > #voters
end

--- One step. nodes: list of {id, status}; voters: node ids of raft voters;
-- term: the leader's raft term. Returns a list of {id = , status = } to
-- commit, and a second value: "stalled", "no_quorum" or nil.
function Detector:step(now, term, nodes, voters)
  local since = self.since
  if term ~= self.term then
    -- A new leader starts with a clean slate: every node that is not
    -- already down gets a grace period; a down node stays down until it
    -- heartbeats (no flapping back to active on a leader change).
    since, self.heard_at = {}, {}
    self.since, self.term = since, term
    for _, n in ipairs(nodes) do
      if n.status ~= "down" then since[n.id] = now end
    end
  end
  local last = self.last_step
  self.last_step = now
  if last and now - last > self.stall_after then
    self.stalls = self.stalls + 1
    -- A down node keeps its clock: restarting it would read as a fresh
    -- heartbeat and flap the node back to active.
    for _, n in ipairs(nodes) do
      if since[n.id] and n.status ~= "down" then since[n.id] = now end
    end
    return {}, "stalled"
  end
  self.heard_at[self.self_id], since[self.self_id] = now, now
  local quorum = self:has_quorum(now, voters)
  local changes, held = {}, false
  for _, n in ipairs(nodes) do
    local start = since[n.id]
    if start == nil and n.status ~= "down" then
      since[n.id], start = now, now -- Newly seen in the state: grace period.
    end
    if n.status ~= "left" and start ~= nil then
      local age = now - start
      local want
      if age >= self.down_after then
        want = "down"
      elseif age >= self.suspect_after then
        want = n.status == "down" and "down" or "suspect"
      else
        want = "active"
      end
      if want ~= n.status then
        if want == "active" or quorum then
          changes[#changes + 1] = {id = n.id, status = want}
        else
          held = true
        end
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
