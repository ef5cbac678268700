--- Membership: joining, heartbeats, failure detection, raft roles, leaving.
--
-- Who is in the cluster is replicated state; the one thing a node learns
-- outside raft is liveness, which the leader observes (heartbeats over
-- HTTP) and then commits as status changes:
--
--   active -> suspect (no heartbeat for suspect_after)
--          -> down    (none for down_after)      -> active on the next heartbeat
--   any    -> stopped (it announced a graceful stop) -> active on the next heartbeat
--
-- The cluster never removes a node on its own: only ck:leave() (or an
-- operator) does. Raft roles: up to `voters` voters; the others are
-- standbys that receive the log. When a voter is down (or stopped) and a
-- healthy standby exists, the leader promotes the standby and demotes the
-- dead voter, one raft configuration change at a time.
local auth = require "clusterkit.auth"
local core = require "clusterkit.core"
local sched = require "clusterkit.sched"
local errors = require "clusterkit.errors"
local httpc = require "clusterkit.httpc"
local json = require "clusterkit.json"
local config = require "clusterkit.config"
local detector = require "clusterkit.detector"
local roles = require "clusterkit.roles"
local attrs = require "clusterkit.attrs"

local M = {}

local hrtime = core.hrtime
local format = string.format
local is_down = detector.is_down
local function now() return hrtime() / 1e9 end

-- ---------------------------------------------------------------------------
-- Authorization (shared by every mutating endpoint)
-- ---------------------------------------------------------------------------

-- This node's calls to its peers carry the cluster token (clusterkit.auth).
local auth_headers = auth.headers

-- Answers NOT_LEADER with the leader's HTTP address so the caller can follow.
-- Location keeps the request's path and query: `curl -L -X POST
-- follower/rebalance` must end at the leader's /rebalance, not at its /.
local function not_leader(node, res)
  local l = node:leader()
  if l and l.leader_ip ~= "" then
    local req = res.request and res:request()
    res:header("Location", node.scheme .. "://" .. l.leader_ip .. (req and req:target() or "/"))
    return res:error(307, "NOT_LEADER", "this node is not the leader", {leader = l.leader_ip})
  end
  return res:error(503, "NO_LEADER", "no leader is known yet; retry")
end

-- ---------------------------------------------------------------------------
-- Leader side: one raft configuration change at a time
-- ---------------------------------------------------------------------------

local function raft_call(node, method, ...)
  local c = node._core
  local args = {...}
  return sched.wait(function(resume)
    args[#args + 1] = resume
    local ok, msg, code = c[method](c, unpack(args))
    if not ok then resume(nil, msg, code) end
  end)
end

-- What this module keeps per node (weak keys: it goes with the node): the
-- change lock (changing, its cond), the members' build reports, whether a
-- leader tick runs, and whether the missing quorum was warned about.
local states = setmetatable({}, {__mode = "k"})

local function state(node)
  local s = states[node]
  if not s then
    s = {changing = false, cond = sched.cond(), reports = {}, ticking = false, quorum_warned = false}
    states[node] = s
  end
  return s
end

local upgrade_locked -- Below, with the rest of rolling upgrades.

--- Runs fn() while holding the node's change lock (FIFO): one raft
-- configuration or membership change at a time.
local function with_lock(node, fn)
  local s = state(node)
  while s.changing do
    s.cond:wait(5)
  end
  s.changing = true
  local ok, a, b, c = xpcall(fn, debug.traceback)
  s.changing = false
  s.cond:signal()
  if not ok then
    node.log:error("membership change failed: %s", tostring(a))
    return nil, errors.new("INTERNAL", "membership change failed")
  end
  return a, b, c
end

-- Admissions waiting for the change lock or under it, per node (the
-- reconciler holds back a table while more joiners queue: see
-- M.admissions).
local admitting = setmetatable({}, {__mode = "k"})

--- How many admissions are in flight on this leader.
function M.admissions(node)
  return admitting[node] or 0
end

local admit_locked

--- Adds or re-admits a node (leader only). info: {id, name, http_addr,
-- raft_addr, zone, weight, services}. Returns true, or nil, err (err.status
-- is the HTTP status to answer with).
function M.admit(node, info)
  admitting[node] = (admitting[node] or 0) + 1
  local ok, a, b = pcall(admit_locked, node, info)
  admitting[node] = admitting[node] - 1
  -- The table held back for this burst of joins is placed now.
  if admitting[node] == 0 then node:_reconcile() end
  if not ok then error(a, 0) end
  return a, b
end

function admit_locked(node, info)
  return with_lock(node, function()
    if not node:is_leader() then
      return nil, errors.new("NOT_LEADER", "leadership moved", {status = 307})
    end
    local v = node:_view()
    local cur = v.by_id[info.id]
    local raft_id = core.raft_id(info.id)
    local level = info.features or 1
    if level < v.feature_level then
      return nil, errors.new("FEATURE_LEVEL", format("%s runs a build that applies feature level %d, and the "
        .. "cluster is at level %d (raised once every member ran a newer build; it is never lowered): "
        .. "start %s with clusterkit %s or newer", info.id, level, v.feature_level, info.id, core.version),
        {status = 409})
    end
    if cur and cur.raft_addr ~= info.raft_addr then
      -- The same id at a new address replaces the old entry only when the
      -- old one is down or stopped, gone silent past down_after, or has not
      -- answered raft at its old address for down_after (a node restarted
      -- with its data at a new address still heartbeats over HTTP under the
      -- same id).
      -- raft's own recent flag is no proof of silence: the leader clears
      -- it every election timeout, so a live node looks silent for up to a
      -- heartbeat, and a duplicate id joining in that moment took over a
      -- live member (found by the fault suite). The leader's own id is
      -- never free.
      if info.id == node.id then
        return nil, errors.new("CONFLICT", "node id " .. info.id .. " is the leader's own", {status = 409})
      end
      local quiet = node.detector:silence(info.id, now())
      local silent = not quiet or quiet > node.opts.down_after
      local old = node.roles:entry(raft_id)
      local raft_silent = old ~= nil and old.address == cur.raft_addr and old.recent == false
        and node.roles:silence(raft_id) > node.opts.down_after
      if not is_down(cur.status) and cur.status ~= "left" and not silent and not raft_silent then
        return nil, errors.new("CONFLICT", "node id " .. info.id .. " is taken by a live node at "
          .. cur.raft_addr, {status = 409})
      end
    end
    -- Another id already using this raft address would make raft refuse.
    for _, n in ipairs(v.nodes) do
      if n.id ~= info.id and n.raft_addr == info.raft_addr and not is_down(n.status) and n.status ~= "left" then
        return nil, errors.new("CONFLICT", "raft address " .. info.raft_addr .. " belongs to live node "
          .. n.id, {status = 409})
      end
    end
    local entry = node.roles:entry(raft_id)
    if entry and entry.address ~= info.raft_addr then
      local ok, msg = raft_call(node, "remove", raft_id)
      if not ok then
        return nil, errors.new("RAFT", "removing the old address: " .. tostring(msg), {status = 503})
      end
      entry = nil
    end
    -- A spare gets no log: a join whose leader died between raft_add and
    -- raft_assign left one behind, and re-admitting it as it was let the
    -- node wait forever (found by the fault suite). Assign it a role now.
    if not entry or entry.role == "spare" then
      if not entry then
        local ok, msg = raft_call(node, "add", raft_id, info.raft_addr)
        if not ok then
          return nil, errors.new("RAFT", "raft add: " .. tostring(msg), {status = 503})
        end
      end
      local role = node.roles:role_for_joiner()
      local ok, msg = raft_call(node, "assign", raft_id, role)
      if not ok then
        -- Do not leave a spare behind that can never catch up (an
        -- unreachable address): take the half-added server out again.
        if node.roles:entry(raft_id) and node:is_leader() then
          raft_call(node, "remove", raft_id)
        end
        return nil, errors.new("RAFT", "raft assign " .. role .. ": " .. tostring(msg), {status = 503})
      end
      node.log:info("added %s (%s) as %s", info.id, info.raft_addr, role)
    end
    node.detector:heard(info.id, now())
    M.note_report(node, info.id, level, info.build)
    if level >= core.FEATURE_LEVEL and node:_view().feature_level < core.FEATURE_LEVEL then
      -- A new cluster is raised right after INIT, but its first joiners
      -- hold the change lock back to back, and the ticker never waits for
      -- it: a 30-node cluster formed at level 1 and then recorded 30
      -- builds, one entry a tick. Under this lock, with this joiner of the
      -- current build, raise now when every member reported (it fails, and
      -- changes nothing, when one of them has not).
      upgrade_locked(node)
    end
    local e = {
      id = info.id, name = info.name, http_addr = info.http_addr, raft_addr = info.raft_addr,
      zone = info.zone, weight = info.weight, services = info.services,
      raft_id = raft_id, status = "active", time_ms = core.time_ms(),
    }
    -- Optional attributes are trailing fields: from feature level 2 on.
    if node:_view().feature_level >= 2 then
      for k, x in pairs(info.attrs) do e[k] = x end
      e.build = info.build
    end
    local ok, msg = node:_propose(core.encode_node(e))
    if not ok then
      return nil, errors.new("RAFT", "registering the node: " .. tostring(msg), {status = 503})
    end
    return true
  end)
end

-- Removing node `id` may shrink the quorum too far: an error, or nil
-- (roles.quorum_refusal; `heard`: count only voters raft heard from).
local function quorum_refusal(node, v, id, heard)
  return roles.quorum_refusal(node._core:configuration(), v.nodes, core.raft_id(id), id, node.raft_id, heard)
end

-- True while some partition of view v names node `id` as an owner.
local function in_table(v, id)
  for _, p in ipairs(v.parts or {}) do
    if p.primary_node == id then return true end
    for _, r in ipairs(p.replica_nodes) do
      if r == id then return true end
    end
  end
  return false
end

--- Removes a node for good (leader only): status left, table without it,
-- raft_remove, entry removed. A leader that dies between these steps
-- leaves the rest to the next one (finish_leaves, every leader tick).
function M.remove(node, id)
  return with_lock(node, function()
    if not node:is_leader() then
      return nil, errors.new("NOT_LEADER", "leadership moved", {status = 307})
    end
    local v = node:_view()
    local cur = v.by_id[id]
    if not cur then
      return nil, errors.new("NOT_FOUND", "no node " .. id, {status = 404})
    end
    if id == node.id then
      return nil, errors.new("INVALID", "the leader cannot remove itself; transfer leadership first",
        {status = 409})
    end
    local refused = quorum_refusal(node, v, id)
    if refused then return nil, refused end
    local ok, msg = node:_propose(core.encode_status(id, "left", core.time_ms()))
    if not ok then return nil, errors.new("RAFT", tostring(msg), {status = 503}) end
    -- Let the reconciler move the table off the node before it goes.
    node:_wait_until(function() return not in_table(node:_view(), id) end, 5)
    local raft_id = core.raft_id(id)
    node.roles:promote_before_removing(raft_id, true)
    if node.roles:entry(raft_id) then
      ok, msg = raft_call(node, "remove", raft_id)
      if not ok then return nil, errors.new("RAFT", "raft remove: " .. tostring(msg), {status = 503}) end
    end
    ok, msg = node:_propose(core.encode_remove(id))
    if not ok then return nil, errors.new("RAFT", tostring(msg), {status = 503}) end
    node.log:info("removed %s", id)
    return true
  end)
end

-- ---------------------------------------------------------------------------
-- Leader side: failure detection and role repair (runs every tick)
-- ---------------------------------------------------------------------------

local function set_status(node, id, status, why)
  local ok, msg = node:_propose(core.encode_status(id, status, core.time_ms()))
  if not ok then
    node.log:warn("status %s -> %s not committed: %s", id, status, tostring(msg))
  else
    node.log:info("marked %s %s (%s)", id, status, why)
  end
end

-- A node whose status is left but which is still in raft's configuration
-- or in the state is a leave that an earlier leader began and did not
-- finish: it died between the steps of M.remove. (The leaving node keeps
-- voting meanwhile, so that this survivor could be elected; see
-- standing.lua.) Finish it, one step per tick, never waiting for
-- the change lock: the ticker must not stall behind a POST /leave.
local function finish_leaves(node, v)
  if state(node).changing then return end
  for _, n in ipairs(v.nodes) do
    if n.status == "left" and n.id ~= node.id and not in_table(v, n.id) then
      local raft_id = core.raft_id(n.id)
      if node.roles:entry(raft_id) then
        if not quorum_refusal(node, v, n.id, true) then
          with_lock(node, function()
            if not node.roles:promote_before_removing(raft_id, false) then return end -- the next tick asks again
            node.log:info("finishing the leave of %s: removing it from raft", n.id)
            return raft_call(node, "remove", raft_id)
          end)
        end
      else
        node.log:info("finishing the leave of %s: removing its entry", n.id)
        local ok, msg = node:_propose(core.encode_remove(n.id))
        if not ok then node.log:warn("removing %s not committed: %s", n.id, tostring(msg)) end
      end
      return
    end
  end
end

-- ---------------------------------------------------------------------------
-- Leader side: the cluster's feature level (rolling upgrades, ck_state.h)
-- ---------------------------------------------------------------------------

-- How long a member's report (join or heartbeat) counts: a node replaced
-- by an older build meanwhile reports again (level 1) within a heartbeat.
local REPORT_TTL = 5

--- Records what node `id` said of its build (leader only, in memory: a new
-- leader hears every member again within a heartbeat interval).
function M.note_report(node, id, level, build)
  state(node).reports[id] = {level = level, build = build, at = now()}
end

-- Raises the committed feature level when every member (every node in the
-- state but those that left: voters, standbys, and down or stopped ones,
-- which may come back) reported a build that applies the next level; then,
-- from level 2 on, writes the builds members reported into their entries
-- (a trailing field), one per tick. Returns true when it proposed.
function upgrade_locked(node)
  local v = node:_view()
  local reports, t = state(node).reports, now()
  local target = core.FEATURE_LEVEL
  if v.feature_level < target then
    for _, n in ipairs(v.nodes) do
      local r = reports[n.id]
      if n.id ~= node.id and n.status ~= "left" and not (r and r.level >= target and t - r.at < REPORT_TTL) then
        return false
      end
    end
    local ok, msg = node:_propose(core.encode_features(target))
    if ok then
      node.log:info("cluster feature level %d -> %d: every member runs a build that applies it", v.feature_level,
        target)
    else
      node.log:warn("raising the feature level: %s", tostring(msg))
    end
    return true
  end
  for _, n in ipairs(v.nodes) do
    local r = reports[n.id]
    if n.id ~= node.id and n.status ~= "left" and r and r.build and r.build ~= (n.version or "") then
      local entry = attrs.to_cmd(n, {
        id = n.id, name = n.name, http_addr = n.http_addr, raft_addr = n.raft_addr, zone = n.zone,
        weight = n.weight, services = n.services, raft_id = n.raft_id, status = n.status,
        time_ms = n.status_since,
      })
      entry.build = r.build
      local ok, msg = node:_propose(core.encode_node(entry))
      if not ok then node.log:warn("recording %s's build: %s", n.id, tostring(msg)) end
      return true
    end
  end
  return false
end

function M.upgrade_step(node)
  -- Under the change lock: admit checks a joiner's level against the
  -- committed one, so a raise must not pass it in flight (an old joiner
  -- admitted at level 1 behind a raise to 2), and an upsert rewrites a
  -- whole entry, so it must not land behind a status (left) that remove
  -- has in flight. The ticker never waits for the lock.
  if state(node).changing then return false end
  return with_lock(node, function() return upgrade_locked(node) end)
end

function M.leader_tick(node)
  local s = state(node)
  if s.ticking then return end
  s.ticking = true
  local ok, err = xpcall(function()
    local v = node:_view()
    if not v.ready then return end
    local det = node.detector
    local term = node._core:raft().term
    local replicated, voters, contacts = node.roles:sample(term, v.nodes)
    local t = now()
    for _, c in ipairs(contacts) do det:contact(c[1], t - c[2]) end
    det.stop_status = v.feature_level >= 2 and "stopped" or "down"
    local changes, why = det:step(now(), term, v.nodes, voters, replicated)
    if why == "stalled" then
      node.log:warn("the loop stalled (no tick for over %.2fs): every node's grace period restarts",
        det.stall_after)
    elseif why == "no_quorum" and not s.quorum_warned then
      node.log:warn("not heard from a quorum of voters: holding liveness changes")
    end
    s.quorum_warned = why == "no_quorum"
    for _, c in ipairs(changes) do
      if node:is_leader() then set_status(node, c.id, c.status, c.why) end
    end
    if node:is_leader() then
      node.roles:repair()
      if node:_gone() == "leaving" then
        -- This leader's own status is left (it was asked to leave, and
        -- the leader that began it died): another voter must lead.
        node:_handover()
      else
        finish_leaves(node, node:_view())
        M.upgrade_step(node)
      end
      node.reconciler:tick() -- A down node's grace period may have ended.
    end
  end, debug.traceback)
  s.ticking = false
  if not ok then
    node.log:error("leader tick: %s", tostring(err))
  end
end

-- ---------------------------------------------------------------------------
-- Every node: heartbeats to the leader, and joining
-- ---------------------------------------------------------------------------

-- What every heartbeat and join tells the leader about this build: the
-- feature level it applies and its version. v0.1.0 sends neither (level 1).
local FEATURES_JSON = ',"features":' .. core.FEATURE_LEVEL .. ',"build":' .. json.encode(core.version)

-- A member that replicates the log (a voter or standby) is judged by raft
-- contact (detector.lua), so it heartbeats over HTTP only every
-- REPORT_EVERY intervals: to report its build, and as the announcement a
-- node coming back needs. It heartbeats every interval while its own view
-- shows it out of service (so that it comes back within an interval), and
-- at once under a new leader. At 100 nodes this takes the leader from 500
-- heartbeat requests a second to about 100.
local REPORT_EVERY = 5
local last_beat = setmetatable({}, {__mode = "k"}) -- node -> {leader = raft id, at = seconds}

local function beat_due(node, r)
  if r.role ~= "voter" and r.role ~= "standby" then return true end
  local me, b = node:_view().by_id[node.id], last_beat[node]
  return not (me and me.status == "active" and b and b.leader == r.leader_id
    and now() - b.at < REPORT_EVERY * node.opts.heartbeat_interval)
end

--- Heartbeats the leader (stopping: announces a graceful stop instead),
-- when one is due. Returns httpc's answer (res or nil, err), or nothing
-- when there is no other node known to lead or none is due.
function M.heartbeat(node, stopping)
  local r = node._core:raft()
  if r.state == "leader" or not r.leader_id then return end
  if not stopping and not beat_due(node, r) then return end
  local leader
  for _, n in ipairs(node:_view().nodes) do
    if n.raft_id == r.leader_id then leader = n end
  end
  if not leader then return end
  local res, err = httpc.request {
    tls = node._tls_client, method = "POST", url = node.scheme .. "://" .. leader.http_addr .. "/heartbeat",
    headers = auth_headers(node),
    body = '{"id":' .. json.encode(node.id) .. FEATURES_JSON .. (stopping and ',"stopping":true}' or "}"),
    timeout = stopping and 0.5 or node.opts.heartbeat_interval * 4,
  }
  if res and res.status == 200 and not stopping then
    last_beat[node] = {leader = r.leader_id, at = now()}
  end
  return res, err
end

-- The settings a cluster fixes when it is created: {option, environment
-- variable, field of the committed view, JSON type}.
local FIXED = {
  {"cluster_name", "CLUSTER_NAME", "name", "string"},
  {"partition_count", "PARTITION_COUNT", "partitions", "number"},
  {"replication_factor", "REPLICATION_FACTOR", "replication", "number"},
  {"hash_algorithm", "HASH_ALGORITHM", "hash_algo", "string"},
}

-- This node's fixed settings as its operator set them (option or
-- environment), or nil. Defaults are left out: a node started with only a
-- JOIN_ADDR takes whatever the cluster has, as the Go library's nodes do;
-- a value the operator wrote down and the cluster does not have is a
-- mistake worth refusing.
local function join_config(node)
  local o, cfg = node.opts, nil
  for _, f in ipairs(FIXED) do
    if o.explicit and o.explicit[f[1]] then
      cfg = cfg or {}
      cfg[f[1]] = o[f[1]]
    end
  end
  return cfg
end

--- The join request body: the Go library's shape plus our fields.
function M.join_body(node)
  local me = node:_my_entry()
  local _, port = config.parse_addr(me.http_addr)
  return json.encode {
    node = attrs.join_fields(node.opts, {id = me.id, name = me.name, ip = me.http_addr, port = port,
            status = "active", services = next(me.services) and me.services or json.null, zone = me.zone,
            weight = me.weight}),
    raft_addr = me.raft_addr,
    config = join_config(node),
    features = core.FEATURE_LEVEL, build = core.version,
  }
end

-- ---------------------------------------------------------------------------
-- HTTP endpoints: /join, /heartbeat, /leave
-- ---------------------------------------------------------------------------

-- The feature level and build a join or heartbeat body reports: 1 and nil
-- when it reports none (v0.1.0), or nonsense.
local function reported(body)
  local f = body.features
  local level = type(f) == "number" and f >= 1 and f <= 1e6 and f == math.floor(f) and f or 1
  local b = body.build
  return level, type(b) == "string" and #b > 0 and #b <= 64 and not b:find("[%c]") and b or nil
end

local function check_join(body)
  if type(body) ~= "table" or type(body.node) ~= "table" then
    return nil, "body must be {\"node\": {...}, \"raft_addr\": \"host:port\"}"
  end
  local n = body.node
  if type(n.id) ~= "string" or n.id == "" or #n.id > 256 or n.id:find("[%c%s]") then
    return nil, "node.id must be 1..256 characters without spaces"
  end
  local raft_addr = body.raft_addr or n.raft_addr
  if type(raft_addr) ~= "string" or not config.parse_addr(raft_addr) then
    return nil, "raft_addr must look like host:port"
  end
  local http_addr = n.http_addr or n.ip
  if type(http_addr) ~= "string" then
    return nil, "node.ip must be the node's HTTP address"
  end
  if http_addr:sub(1, 1) == ":" then -- The Go library sends ":8080".
    http_addr = raft_addr:match("^(.*):%d+$") .. http_addr
  end
  if not config.parse_addr(http_addr) then
    return nil, "node.ip must look like host:port"
  end
  local services = {}
  if type(n.services) == "table" then
    for k, v in pairs(n.services) do
      if type(k) ~= "string" or type(v) ~= "string" then
        return nil, "node.services must map names to addresses"
      end
      services[k] = v
    end
  end
  local weight = n.weight == nil and 1 or n.weight
  if type(weight) ~= "number" or weight < 0 or weight > 1000000 or weight ~= math.floor(weight) then
    return nil, "node.weight must be an integer from 0 to 1000000"
  end
  if n.name ~= nil and type(n.name) ~= "string" then return nil, "node.name must be a string" end
  if n.zone ~= nil and type(n.zone) ~= "string" then return nil, "node.zone must be a string" end
  -- The joiner's fixed settings (optional: older versions send none, and
  -- are admitted as before). Unknown fields are a newer joiner's business.
  local cfg
  if body.config ~= nil and body.config ~= json.null then
    if type(body.config) ~= "table" then
      return nil, "config must be an object of the joining node's settings"
    end
    cfg = {}
    for _, f in ipairs(FIXED) do
      local val = body.config[f[1]]
      if val ~= nil and val ~= json.null then
        if type(val) ~= f[4] or (f[4] == "number" and val ~= math.floor(val)) then
          return nil, "config." .. f[1] .. " must be " .. (f[4] == "number" and "an integer" or "a string")
        end
        cfg[f[1]] = val
      end
    end
  end
  local extra, bad = attrs.from_join(n)
  if not extra then return nil, bad end
  local features, build = reported(body)
  return {id = n.id, name = n.name or n.id, http_addr = http_addr, raft_addr = raft_addr,
          zone = n.zone or "", weight = weight, services = services, config = cfg,
          features = features, build = build, attrs = extra}
end

-- The joiner's settings that differ from the cluster's: a list of
-- {setting (the environment variable), option, joining, cluster}. Before
-- the cluster is initialised, "the cluster's" are this leader's own: its
-- reconciler creates the cluster with them.
local function config_mismatches(node, cfg)
  local v, out = node:_view(), {}
  for _, f in ipairs(FIXED) do
    local theirs = cfg and cfg[f[1]]
    local ours = v.ready and v[f[3]] or node.opts[f[1]]
    if theirs ~= nil and theirs ~= ours then
      out[#out + 1] = {setting = f[2], option = f[1], joining = theirs, cluster = ours}
    end
  end
  return out
end

local function mismatch_message(node, bad)
  local parts = {}
  for i, m in ipairs(bad) do
    parts[i] = format("%s is %s on the joining node but %s in the cluster", m.setting, tostring(m.joining),
      tostring(m.cluster))
  end
  local name = node:_view().name or node.opts.cluster_name
  return format("cluster %s refuses the join: %s. These are fixed when a cluster is created: set them to "
    .. "the cluster's values on the joining node, or leave them unset there", tostring(name),
    table.concat(parts, "; "))
end

function M.install(node)
  local srv = node.http
  srv:route("POST", "/join", function(req, res)
    local body, jerr = req:json()
    if body == nil then return res:error(400, "BAD_REQUEST", jerr) end
    local info, why = check_join(body)
    if not info then return res:error(400, "BAD_REQUEST", why) end
    if node.joiner.active and info.id == node.id then
      -- This node is joining too and receives a join for its own id: its
      -- JOIN_ADDR reaches itself. 503, not a refusal: a shared address (a
      -- load balancer, a DNS name) may reach a member on the next try.
      return res:error(503, "JOIN_SELF", "node " .. node.id .. " is not a member yet; it is the joining node itself")
    end
    if not node:is_leader() then return not_leader(node, res) end
    local bad = config_mismatches(node, info.config)
    if #bad > 0 then
      return res:error(409, "CONFIG_MISMATCH", mismatch_message(node, bad), {
        setting = bad[1].setting, joining = bad[1].joining, cluster = bad[1].cluster, mismatches = bad})
    end
    local ok, err = M.admit(node, info)
    if not ok then
      if err.code == "NOT_LEADER" then return not_leader(node, res) end
      return res:error(err.status or 500, err.code, err.message)
    end
    local l = node:leader()
    return res:json({status = "ok", node_id = info.id, leader = l and l.leader_id or json.null,
                     cluster_id = node:cluster().id, state_index = node:state_index()})
  end, {auth = "write"})

  srv:route("POST", "/heartbeat", function(req, res)
    local body = req:json()
    if type(body) ~= "table" or type(body.id) ~= "string" then
      return res:error(400, "BAD_REQUEST", 'body must be {"id": "<node id>"}')
    end
    if not node:is_leader() then return not_leader(node, res) end
    if not node:_view().by_id[body.id] then
      return res:error(404, "NOT_FOUND", "unknown node " .. body.id)
    end
    if body.stopping == true then
      -- A graceful stop: the node is going away now, so take it out of
      -- handover choices and commit it stopped without waiting for silence.
      node.detector:stopping(body.id, node._core:raft().term)
      sched.spawn(M.leader_tick, node)
      return res:json({status = "ok", state_index = node:state_index()})
    end
    node.detector:heard(body.id, now())
    M.note_report(node, body.id, reported(body))
    local n = node:_view().by_id[body.id]
    if n.status ~= "active" and n.status ~= "left" then
      -- Recovery is committed by the next leader tick; run it now.
      sched.spawn(M.leader_tick, node)
    end
    return res:json({status = "ok", state_index = node:state_index()})
  end, {auth = "write"})

  srv:route("POST", "/leave", function(req, res)
    local body = req:json()
    local id = type(body) == "table" and body.id or req.query.id
    if type(id) ~= "string" or id == "" then
      return res:error(400, "BAD_REQUEST", 'body must be {"id": "<node id>"}')
    end
    if not node:is_leader() then return not_leader(node, res) end
    if id == node.id then
      -- The leader is asked to leave: it hands leadership to a live voter,
      -- then passes the request on to the new leader (an operator need not
      -- know which node leads; the fault suite's leave rounds hit this).
      if not node:_handover() then
        return res:error(409, "NO_HANDOVER", "the leader cannot leave: no live voter took over leadership")
      end
      local l = node:leader()
      if not (l and l.leader_ip ~= "") then
        return res:error(503, "NO_LEADER", "leadership moved but the new leader is not known yet; retry")
      end
      local r, rerr = httpc.request {
        tls = node._tls_client, method = "POST", url = node.scheme .. "://" .. l.leader_ip .. "/leave",
        headers = auth_headers(node),
        body = json.encode({id = id}), timeout = 10,
      }
      if not r then
        return res:error(502, "LEAVE_FORWARD", "passing the leave on to " .. l.leader_ip .. ": "
          .. tostring(rerr))
      end
      return res:status(r.status):header("Content-Type", "application/json"):send(r.body)
    end
    local ok, err = M.remove(node, id)
    if not ok then
      if err.code == "NOT_LEADER" then return not_leader(node, res) end
      return res:error(err.status or 500, err.code, err.message)
    end
    return res:json({status = "ok", node_id = id})
  end, {auth = "write"})
end

M.not_leader = not_leader
M.check_join = check_join
M.with_lock = with_lock

--- Takes the change lock if it is free and keeps it for good: true when
-- taken. For tests that must hold membership changes back on a leader
-- they kill next.
function M.try_lock(node)
  local s = state(node)
  if s.changing then return false end
  s.changing = true
  return true
end
M.raft_call = raft_call
return M
