--- The leader's reconciler: makes the committed state what it should be
-- (the cluster initialised, this node registered as it is configured, a
-- table placed over the nodes that may hold partitions), one command at a
-- time, on the leader only.
--
-- It owns its state (the placement's inputs last time, the grace deadline
-- of down nodes, the join-burst hold, the policy and its counters) and
-- touches nothing else. Everything it needs from outside comes in `deps`,
-- so that a test drives it with a fake clock and a fake core
-- (tests/lua/reconciler_spec.lua):
--
--   core         {view = fn() -> the committed state as node:view() returns
--                it, leading = fn() -> true while this node leads, plan =
--                fn(now_ms, grace_ms, force) -> node:plan()'s answer (the
--                built-in placement in one call; optional: without it, the
--                Lua path below computes the same)}
--   submit       fn(cmd) -> index | nil, msg, code: proposes a command and
--                yields until it is committed. cmd.op is "init" (the fields
--                of core.encode_init), "node" (cmd.entry: core.encode_node's)
--                or "table" (partitions, replication, ids, owners:
--                core.encode_table's arguments, or `bytes`: the command as
--                node:plan() encoded it)
--   clock        {time_ms = wall milliseconds (the clock of status_since),
--                hrtime = monotonic nanoseconds (durations only)}
--   spawn        fn(f): runs f in its own coroutine
--   entry        fn(raw) -> this node's entry as it should be committed
--   admissions   fn() -> joiners in flight (a burst holds the table back)
--   upgrade      fn() -> true when it proposed a feature-level step
--   running      fn() -> false once the node stops (ends a reconcile run)
--   fire, log    hook events (rebalance_start/_complete) and logging
--   opts         id, cluster_name, partition_count, replication_factor,
--                hash_algorithm, hash_tags, rebalance_delay, policy_timeout,
--                feature_level (the level this build applies)
--   place, histogram, random_id   pure helpers (default: the C core's)
local placement = require "clusterkit.placement"
local is_down = require("clusterkit.detector").is_down
local attrs = require "clusterkit.attrs"

local M = {}

local ipairs, xpcall, tostring = ipairs, xpcall, tostring
local traceback = debug.traceback

local Reconciler = {}
Reconciler.__index = Reconciler
M.Reconciler = Reconciler

-- While joiners are being admitted, how long the table may wait for the
-- burst to end (admit reconciles when the last one is in: membership.admit).
M.JOIN_BURST_MS = 1000

function M.new(deps)
  local self = setmetatable({}, Reconciler)
  for k, v in pairs(deps) do self[k] = v end
  if not (self.place and self.histogram and self.random_id) then
    local core = require "clusterkit.core"
    self.place = self.place or core.place
    self.histogram = self.histogram or core.histogram
    self.random_id = self.random_id or function() return core.random_hex(16) end
  end
  self.admissions = self.admissions or function() return 0 end
  self.upgrade = self.upgrade or function() return false end
  self.running = self.running or function() return true end
  self.fire = self.fire or function() end
  self.policy_gen = 0
  -- For /metrics (clusterkit.api): policy runs, their failures by kind,
  -- runs that fell back to the built-in policy, and slots moved.
  self.policy_time = self.histogram()
  self.policy_errors = {error = 0, timeout = 0, yielded = 0, invalid = 0}
  self.policy_fallbacks = 0
  self.rebalance_moves = 0
  return self
end

--- Sets the Lua placement policy (nil: the built-in one) and reconciles.
function Reconciler:set_policy(fn)
  self.policy = fn
  self.policy_gen = self.policy_gen + 1
  self:poke()
end

local function same_entry(a, b)
  if a.name ~= b.name or a.http_addr ~= b.http_addr or a.raft_addr ~= b.raft_addr
    or a.zone ~= b.zone or a.weight ~= b.weight or a.status ~= b.status or not attrs.same(a, b) then
    return false
  end
  for k, x in pairs(a.services) do
    if b.services[k] ~= x then return false end
  end
  for k in pairs(b.services) do
    if a.services[k] == nil then return false end
  end
  return true
end

--- One pass; returns true when it proposed something (then the caller
-- runs another pass). Yields while a proposal commits.
function Reconciler:pass()
  if not self.core.leading() then return false end
  local raw = self.core.view()
  local o = self.opts
  local ok, msg, code
  if not raw.initialized then
    self.log:info("initialising cluster %s (P=%d, RF=%d, hash %s)", o.cluster_name,
      o.partition_count, o.replication_factor, o.hash_algorithm)
    ok, msg, code = self.submit {
      op = "init", cluster_id = self.random_id(), name = o.cluster_name,
      partitions = o.partition_count, replication = o.replication_factor,
      hash_algo = o.hash_algorithm, hash_tags = o.hash_tags,
    }
  else
    local cur
    for _, n in ipairs(raw.nodes) do
      if n.id == o.id then cur = n end
    end
    local mine = self.entry(raw)
    -- A leader whose own status is left was asked to leave before it was
    -- elected: registering itself as active would undo the leave. It
    -- moves the table off itself and hands over (membership.leader_tick).
    if cur and cur.status == "left" then
      return self:rebalance(raw, false)
    elseif raw.feature_level < o.feature_level and self.upgrade() then
      -- A new cluster (its only member) is raised right after INIT;
      -- upgraded members are raised once they all reported (leader tick).
      return true
    elseif not cur or not same_entry(cur, mine) then
      mine.time_ms = self.clock.time_ms()
      ok, msg, code = self.submit {op = "node", entry = mine}
    else
      return self:rebalance(raw, false)
    end
  end
  if not ok then
    self.log:warn("proposal failed: %s (%s)", tostring(msg), tostring(code))
    return false
  end
  return true
end

--- Runs passes in a coroutine of their own until nothing is left to do
-- (every applied event and every change of the inputs calls it). Runs never
-- overlap: a poke during a run makes the run go round once more.
function Reconciler:poke()
  if self.busy then
    self.again = true
    return
  end
  if not self.core.leading() then return end
  self.busy = true
  self.spawn(function()
    repeat
      self.again = false
      local ok, more = xpcall(self.pass, traceback, self)
      if not ok then
        self.log:error("reconcile: %s", tostring(more))
        more = false
      end
    until not (more or self.again) or not self.running()
    self.busy = false
  end)
end

--- Every leader tick: when a down node's grace period has ended, its
-- replica slots move now.
function Reconciler:tick()
  if self.grace_deadline and self.clock.time_ms() >= self.grace_deadline then
    self:poke()
  end
end

-- The built-in policy (C, ck_place) over the holders, starting from the
-- committed table: rows of node ids, or nil, reason.
local function builtin(self, raw, holders, paused)
  local pos, pnodes = {}, {}
  local domain = attrs.domain and attrs.domain.name -- Within a zone (ck_place.h).
  for i, h in ipairs(holders) do
    pos[h.node.id] = i
    local d = domain and h.node[domain]
    pnodes[i] = {zone = h.node.zone, weight = h.node.weight, lead = h.lead, domain = d ~= "" and d or nil}
  end
  local raw_pos = {}
  for i, n in ipairs(raw.nodes) do
    raw_pos[i] = pos[n.id] or 0
  end
  local flat, w = {}, raw.width
  local owners = raw.owners
  for i = 1, raw.partitions * w do
    local at = owners[i]
    flat[i] = at > 0 and raw_pos[at] or 0
  end
  -- Rows that lost an owner to a non-holder keep the others in order.
  for p = 0, raw.partitions - 1 do
    local k = 1
    for j = 1, w do
      local v = flat[p * w + j]
      flat[p * w + j] = 0
      if v > 0 then
        flat[p * w + k] = v
        k = k + 1
      end
    end
  end
  local out, width, st = self.place(pnodes, raw.partitions, raw.replication, flat, w, paused)
  if not out then
    return nil, tostring(width)
  end
  return placement.rows_from(out, width, raw.partitions, function(at) return holders[at].node.id end), st
end

-- The Lua policy's rows, or nil when it failed (counted and logged: the
-- caller falls back to the built-in policy, since a policy that fails must
-- never stop failover).
local function run_policy(self, holders, current, cfg)
  local nodes = {}
  for i, h in ipairs(holders) do
    local n = h.node
    nodes[i] = {id = n.id, zone = n.zone, weight = n.weight, status = n.status,
                services = n.services, can_lead = h.lead}
    attrs.to_view(n, nodes[i], attrs.operator)
  end
  local t0 = self.clock.hrtime()
  local ok, out, kind = placement.run_policy(self.policy, nodes, current, cfg, self.opts.policy_timeout)
  self.policy_time:observe((self.clock.hrtime() - t0) / 1e9)
  local why
  if ok then
    ok, why = placement.validate(out, nodes, cfg)
    if not ok then kind = "invalid" end
  else
    why = out
  end
  if ok then return out end
  self.policy_fallbacks = self.policy_fallbacks + 1
  self.policy_errors[kind] = self.policy_errors[kind] + 1
  self.log:warn("placement policy failed, using the built-in policy: %s", tostring(why))
end

--- The placement for a committed state: {rows, current, moves,
-- moved_slots, moved_primaries, min_moves, deadline} or nil, reason.
-- `force` ignores maintenance mode. Holders are active/suspect nodes, and
-- down or stopped nodes within their grace period, which keep their replica
-- slots but may not lead (a quick restart moves nothing, whether after a
-- crash or a planned stop); `deadline` is when the first grace ends.
function Reconciler:plan(raw, force)
  local cfg = {partitions = raw.partitions, replication = raw.replication}
  local now_ms = self.clock.time_ms()
  local grace_ms = self.opts.rebalance_delay * 1000
  local holders, deadline = {}, nil
  for _, n in ipairs(raw.nodes) do
    if n.weight > 0 then
      if n.status == "active" or n.status == "suspect" then
        holders[#holders + 1] = {node = n, lead = true}
      elseif is_down(n.status) and now_ms < n.status_since + grace_ms then
        holders[#holders + 1] = {node = n, lead = false}
        local d = n.status_since + grace_ms
        deadline = deadline and math.min(deadline, d) or d
      end
    end
  end
  table.sort(holders, function(a, b) return a.node.id < b.node.id end)
  if #holders == 0 then
    return nil, "no eligible node"
  end
  local current = placement.rows_of(raw)
  local rows = self.policy and run_policy(self, holders, current, cfg)
  local stats -- The built-in policy's (min_moves), when it ran.
  if not rows then
    rows, stats = builtin(self, raw, holders, raw.rebalance_paused and not force)
    if not rows then return nil, stats end
  end
  local moved, moved_primaries, moves = 0, 0, {}
  for p = 1, raw.partitions do
    local old, new = current[p], rows[p]
    local had = {}
    for _, id in ipairs(old) do had[id] = true end
    local gained = 0
    for _, id in ipairs(new) do
      if not had[id] then gained = gained + 1 end
    end
    if gained > 0 or old[1] ~= new[1] or #old ~= #new then
      moves[#moves + 1] = {partition = "partition-" .. (p - 1), index = p - 1, from = old, to = new}
    end
    moved = moved + gained
    if old[1] and old[1] ~= new[1] then moved_primaries = moved_primaries + 1 end
  end
  return {rows = rows, current = current, moves = moves, changed = #moves, moved_slots = moved,
          moved_primaries = moved_primaries, min_moves = stats and stats.min_moves, deadline = deadline}
end

-- The built-in policy's plan from the core in one call (node:plan): the
-- rules of Reconciler:plan, the placement and the encoded TABLE command,
-- without copying the table into Lua and back. The same shape as plan's,
-- without rows and moves (bytes: the command, nil when nothing changes).
local function quick_plan(self, force)
  local bytes, st = self.core.plan(self.clock.time_ms(), self.opts.rebalance_delay * 1000, force)
  if bytes == nil then return nil, tostring(st) end
  return {bytes = bytes or nil, changed = st.moves, moved_slots = st.moved_slots,
          moved_primaries = st.moved_primaries, min_moves = st.min_moves, deadline = st.deadline}
end

-- True when every partition's primary is on a member in service (active or
-- suspect): holding a table back then delays only new members' share.
local function primaries_serving(raw)
  local w, owners, nodes = raw.width, raw.owners, raw.nodes
  for p = 1, raw.partitions do
    local at = owners[(p - 1) * w + 1]
    local n = at ~= 0 and nodes[at]
    if not n or (n.status ~= "active" and n.status ~= "suspect") then return false end
  end
  return true
end

--- Commits a new table when placement says the current one should change
-- (raw: the committed state; nil: read it now). Skips the computation when
-- nothing it depends on changed. Returns true, plan when it proposed one.
function Reconciler:rebalance(raw, force)
  raw = raw or self.core.view()
  local now_ms = self.clock.time_ms()
  if not force and raw.index == self.placed_index and self.policy_gen == self.placed_gen
    and not (self.grace_deadline and now_ms >= self.grace_deadline) then
    return false
  end
  -- A cluster forming (or a join storm) placed one table per joiner: 100
  -- joins made 100 tables, each a commit that every member applies, and a
  -- placement the leader computed. While joiners queue, and no primary
  -- needs a new home, the table waits for the burst (at most JOIN_BURST_MS).
  if not force and self.admissions() > 0 and raw.initialized and primaries_serving(raw) then
    self.held_since = self.held_since or now_ms
    if now_ms - self.held_since < M.JOIN_BURST_MS then return false end
  end
  self.held_since = nil
  local t0 = self.clock.hrtime()
  local plan, err
  if self.policy or not self.core.plan then
    plan, err = self:plan(raw, force)
  else
    plan, err = quick_plan(self, force)
  end
  self.placed_index, self.placed_gen = raw.index, self.policy_gen
  if not plan then
    self.log:warn("placement refused, keeping the current table: %s", err)
    return false
  end
  self.grace_deadline = plan.deadline
  if plan.changed == 0 then
    return false
  end
  local cmd = {op = "table", partitions = raw.partitions, replication = raw.replication, bytes = plan.bytes}
  if not plan.bytes then cmd.ids, cmd.owners = placement.flatten(plan.rows, raw.replication) end
  local info = {moves = plan.changed, moved_slots = plan.moved_slots, moved_primaries = plan.moved_primaries}
  self.fire("rebalance_start", info)
  local index, msg = self.submit(cmd)
  local ms = (self.clock.hrtime() - t0) / 1e6
  if not index then
    self.log:warn("table proposal failed: %s", tostring(msg))
    return false
  end
  self.rebalance_moves = self.rebalance_moves + plan.moved_slots
  self.log:info("new table at index %d: %d partitions changed, %d slots moved, %d primaries moved (%.1f ms)",
    index, plan.changed, plan.moved_slots, plan.moved_primaries, ms)
  self.fire("rebalance_complete", {index = index, moves = plan.changed, moved_slots = plan.moved_slots,
                                   moved_primaries = plan.moved_primaries, duration_ms = ms})
  return true, plan
end

return M
