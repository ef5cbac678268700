--- The clusterkit node object (what clusterkit.new returns).
--
-- State flows one way: the C core applies committed raft entries to the
-- replicated state and reports "applied"; the node's view (clusterkit.view)
-- then moves on from the core's record of what changed, and the hooks fire
-- from its diff. Lua never mutates the state: every change is a command
-- proposed through raft (the leader's reconciler, roles and membership).
--
-- This file is the composition root: it creates the control plane's
-- components (view, reconciler, detector, roles, standing, joiner) and wires
-- them to the core, the loop's clock and the HTTP client.
--
-- Lookups (nodes_for_key, ...) are synchronous: one FFI hash call and one
-- array read, no allocation. Calls that wait (start, stop,
-- wait_for_leader, rebalance) yield the calling coroutine.
local core = require "clusterkit.core"
local ffi = require "ffi"
local sched = require "clusterkit.sched"
local errors = require "clusterkit.errors"
local config = require "clusterkit.config"
local logm = require "clusterkit.log"
local placement = require "clusterkit.placement"
local json = require "clusterkit.json"
local http = require "clusterkit.http"
local kv = require "clusterkit.kv"
local coord = require "clusterkit.coord"
local tlsm = require "clusterkit.tls"
local metrics = require "clusterkit.metrics"
local detector = require "clusterkit.detector"
local apim = require "clusterkit.api"
local auth = require "clusterkit.auth"
local backup = require "clusterkit.backup"
local httpc = require "clusterkit.httpc"
local membership = require "clusterkit.membership"
local ui = require "clusterkit.ui"
local viewm = require "clusterkit.view" -- Before the FFI declarations: it declares struct ck_hasher.
local reconciler = require "clusterkit.reconciler"
local roles = require "clusterkit.roles"
local joiner = require "clusterkit.joiner"
local standing = require "clusterkit.standing"
local attrs = require "clusterkit.attrs"

local M = {}

ffi.cdef [[
struct ck_ffi_api {
  uint32_t (*partition)(const struct ck_hasher *h, const char *key, size_t len);
};
]]
local api = ffi.cast("const struct ck_ffi_api *", core.ffi_api())
local hash_partition = api.partition

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local format = string.format
local hrtime = core.hrtime

local HOOKS = {
  leader_change = true, state_change = true, partition_change = true,
  node_join = true, node_leave = true, node_rejoin = true,
  cluster_health_change = true, rebalance_start = true, rebalance_complete = true,
}

--- Nodes that are started and not yet stopped (ckrun stops them on signals).
M.running = {}

local Node = {}
Node.__index = Node
M.Node = Node
kv.extend(Node) -- ck:kv_*, the custom-data names (clusterkit.kv)
coord.extend(Node) -- ck:session, ck:lock, ck:elect, ck:leader_of (clusterkit.coord)

-- What the leader's reconciler proposes (clusterkit.reconciler), encoded.
local encode = {
  init = function(cmd) return core.encode_init(cmd) end,
  node = function(cmd) return core.encode_node(cmd.entry) end,
  table = function(cmd)
    return cmd.bytes or core.encode_table(cmd.partitions, cmd.replication, cmd.ids, cmd.owners)
  end,
}

-- The reconciler of node `self`, wired to its core, clock and hooks.
local function new_reconciler(self)
  local o = self.opts
  return reconciler.new {
    opts = {id = self.id, cluster_name = o.cluster_name, partition_count = o.partition_count,
            replication_factor = o.replication_factor, hash_algorithm = o.hash_algorithm,
            hash_tags = o.hash_tags, rebalance_delay = o.rebalance_delay, policy_timeout = o.policy_timeout,
            feature_level = core.FEATURE_LEVEL},
    core = {
      view = function() return self._core:view() end,
      plan = function(now_ms, grace_ms, force) return self._core:plan(now_ms, grace_ms, force) end,
      leading = function()
        local c = self._core
        return c ~= nil and not c:closed() and c:raft().state == "leader"
      end,
    },
    submit = function(cmd) return self:_propose(encode[cmd.op](cmd)) end,
    clock = {time_ms = core.time_ms, hrtime = hrtime},
    spawn = sched.spawn,
    entry = function() return self:_my_entry() end,
    admissions = function() return membership.admissions(self) end,
    upgrade = function() return membership.upgrade_step(self) end,
    running = function() return self.status == "running" end,
    fire = function(event, info) return self:_fire(event, info) end,
    log = self.log,
  }
end

-- The raft roles of node `self` (clusterkit.roles), wired to its core.
local function new_roles(self)
  return roles.new {
    raft = {
      configuration = function() return self._core:configuration() end,
      leading = function() return self:is_leader() end,
      term = function() return self._core:raft().term end,
      state = function() return self._core:raft() end,
      transfer = function(id, timeout)
        local c = self._core
        sched.wait_timeout(timeout, function(resume)
          local started, msg = c:transfer(id, resume)
          if not started then resume(nil, msg) end
        end)
      end,
      assign = function(id, role) return membership.raft_call(self, "assign", id, role) end,
    },
    nodes = function() return self:_view().nodes end,
    clock = {now = function() return hrtime() / 1e9 end},
    sleep = sched.sleep,
    wait_until = function(pred, timeout) return self:_wait_until(pred, timeout) end,
    lock = function(fn) return membership.with_lock(self, fn) end,
    log = self.log,
    opts = {voters = self.opts.voters, election_timeout = self.opts.election_timeout, self_raft_id = self.raft_id},
  }
end

--- clusterkit.new(opts): a node, not started. Raises on misuse.
function M.new(opts)
  local o = config.resolve(opts, "clusterkit.new")
  local self = setmetatable({
    opts = o,
    id = o.node_id,
    status = "new",
    _hooks = {},
    _cond = sched.cond(),
    _last_leader = false,
    raft_id = core.raft_id(o.node_id),
    -- For /metrics (clusterkit.api): hook runs by event, and committed
    -- membership changes as this node applied them.
    hook_time = metrics.family("hook"), hook_errors = {},
    membership_changes = {join = 0, leave = 0, remove = 0, status = 0, role = 0},
    -- Every node of a cluster speaks the same: HTTPS (and raft over TLS)
    -- when TLS_CERT is set (clusterkit.tls).
    scheme = o.tls_cert and "https" or "http",
  }, Node)
  self.log = logm.new(o.log_level, function()
    local r = self._core and not self._core:closed() and self._core:raft()
    return r and format("%s t=%d", self.id, r.term) or self.id
  end)
  self._kv_cond = sched.cond() -- Signalled when a KV transaction was applied.
  -- The control plane's components (each owns its state; node.lua wires
  -- them to the core, the clock and each other).
  self.view = viewm.new(function()
    local c = self._core
    return c and not c:closed() and c or nil
  end)
  self.reconciler = new_reconciler(self)
  self.detector = detector.new {
    self_id = self.id, suspect_after = o.suspect_after, down_after = o.down_after,
    -- A tick this late means heartbeats went unread (see detector.lua).
    stall_after = math.max(2 * o.heartbeat_interval, o.suspect_after / 2),
  }
  self.roles = new_roles(self)
  self.standing = standing.new {
    id = self.id, clock = {now = function() return hrtime() / 1e9 end},
    probe = function(peer) return self:_ask_peer(peer) end,
    spawn = sched.spawn,
    removed = function(reason) return self:_removed_now(reason) end,
    log = self.log, opts = {election_timeout = o.election_timeout},
  }
  self.joiner = joiner.new {
    join_addr = o.join_addr,
    request = function(target, body)
      return httpc.request {
        tls = self._tls_client, method = "POST", url = self.scheme .. "://" .. target .. "/join",
        headers = auth.headers(self), body = body, timeout = 5,
      }
    end,
    body = function() return membership.join_body(self) end,
    decode = json.decode,
    clock = {now = function() return hrtime() / 1e9 end},
    sleep = sched.sleep,
    running = function() return self.status == "running" end,
    done = function(err) if err then self._cond:signal("join_failed") end end,
    log = self.log,
    opts = {election_timeout = o.election_timeout},
  }
  if o.placement then
    local ok, mod = pcall(require, o.placement)
    local fn = ok and (type(mod) == "table" and mod.place or mod)
    if type(fn) ~= "function" then
      error("clusterkit.new: placement module " .. o.placement .. " must return a function or {place = fn}"
        .. (ok and "" or (": " .. tostring(mod))), 2)
    end
    self.reconciler.policy = fn
  end
  self.http = http.server(self)
  apim.install(self)
  membership.install(self)
  backup.install(self)
  ui.install(self)
  kv.install(self)
  coord.install(self)
  return self
end

local function check(self, fn)
  if getmetatable(self) ~= Node then
    error("clusterkit: " .. fn .. ": call it as ck:" .. fn .. "(...)", 3)
  end
  if self.status == "stopped" then
    error("clusterkit: " .. fn .. ": node is stopped", 3)
  end
end

-- ---------------------------------------------------------------------------
-- Views: Lua tables derived from the committed state, rebuilt lazily.
-- ---------------------------------------------------------------------------
-- The node's view of the committed state is clusterkit.view's (self.view):
-- lookups read its current view, hooks fire from its diff.
local public_node = viewm.public_node

function Node:_view()
  return self.view:current()
end

local not_ready = errors.new("NOT_READY", "the cluster state is not initialised yet")

-- The partition index (1-based) of key in view v.
local function slot(v, key)
  return hash_partition(v.hasher, key, #key) + 1
end

local function lookup(self, key, fn)
  if type(key) ~= "string" then
    error("clusterkit: " .. fn .. ": key must be a string", 3)
  end
  if self.status == "stopped" then
    error("clusterkit: " .. fn .. ": node is stopped", 3)
  end
  local v = self.view:current()
  if not v.ready then
    return nil
  end
  return v, slot(v, key)
end

-- ---------------------------------------------------------------------------
-- Lookups
-- ---------------------------------------------------------------------------

--- All nodes that own key's partition, primary first. The table is shared
-- and must not be modified.
function Node:nodes_for_key(key)
  local v, p = lookup(self, key, "nodes_for_key")
  if not v then return nil, not_ready end
  return v.pnodes[p]
end

--- The primary node of key's partition.
function Node:primary_for_key(key)
  local v, p = lookup(self, key, "primary_for_key")
  if not v then return nil, not_ready end
  local n = v.pnodes[p][1]
  if not n then
    return nil, errors.new("NO_OWNER", "partition " .. (p - 1) .. " has no owner")
  end
  return n
end

--- The replica nodes of key's partition (shared table).
function Node:replicas_for_key(key)
  local v, p = lookup(self, key, "replicas_for_key")
  if not v then return nil, not_ready end
  return v.replicas[p]
end

--- The partition object of key: {id, index, primary_node, replica_nodes, epoch}.
function Node:partition_for_key(key)
  local v, p = lookup(self, key, "partition_for_key")
  if not v then return nil, not_ready end
  return v.parts[p]
end

--- responsible, role ("primary", "replica" or ""), nodes.
function Node:am_i_responsible_for(key)
  local v, p = lookup(self, key, "am_i_responsible_for")
  if not v then return nil, not_ready end
  local row, me = v.pnodes[p], self.id
  for k = 1, #row do
    if row[k].id == me then
      return true, k == 1 and "primary" or "replica", row
    end
  end
  return false, "", row
end

--- True when this node is the key's primary.
function Node:is_primary_for_key(key)
  local v, p = lookup(self, key, "is_primary_for_key")
  if not v then return nil, not_ready end
  local n = v.pnodes[p][1]
  return n ~= nil and n.id == self.id
end

--- The partition with 0-based index i, or nil, err.
function Node:partition(i)
  check(self, "partition")
  if type(i) ~= "number" then
    error("clusterkit: partition: index must be a number", 2)
  end
  local v = self:_view()
  if not v.ready then return nil, not_ready end
  local p = v.parts[i + 1]
  if not p then
    return nil, errors.new("NOT_FOUND", "no partition " .. i)
  end
  return p
end

--- All partitions, in index order.
function Node:partitions()
  check(self, "partitions")
  local v = self:_view()
  if not v.ready then return nil, not_ready end
  return v.parts
end

--- {total_partitions, partitions_per_node, replicas_per_node, nodes}.
function Node:partition_stats()
  check(self, "partition_stats")
  local v = self:_view()
  if not v.ready then return nil, not_ready end
  local prim, repl = {}, {}
  for _, n in ipairs(v.nodes) do
    prim[n.id], repl[n.id] = 0, 0
  end
  for _, p in ipairs(v.parts) do
    if p.primary_node ~= "" then
      prim[p.primary_node] = (prim[p.primary_node] or 0) + 1
    end
    for _, r in ipairs(p.replica_nodes) do
      repl[r] = (repl[r] or 0) + 1
    end
  end
  return {total_partitions = v.partitions, partitions_per_node = prim, replicas_per_node = repl,
          replication_factor = v.replication, nodes = #v.nodes}
end

--- The cluster as the Go library's GetCluster returns it.
function Node:cluster()
  check(self, "cluster")
  local v = self:_view()
  local parts = {}
  for _, p in ipairs(v.parts or {}) do
    parts[p.id] = p
  end
  return {
    id = v.cluster_id or "", name = v.name or self.opts.cluster_name,
    nodes = v.nodes,
    partition_map = {partitions = parts},
    config = {
      cluster_name = v.name or self.opts.cluster_name,
      partition_count = v.partitions or self.opts.partition_count,
      replication_factor = v.replication or self.opts.replication_factor,
    },
    state_index = v.index,
    feature_level = v.feature_level,
  }
end

--- The hash configuration clients need to route keys themselves.
function Node:hash_config()
  check(self, "hash_config")
  local v = self:_view()
  if not v.ready then return nil, not_ready end
  return {algorithm = v.hash_algo, partition_count = v.partitions, hash_tags = v.hash_tags,
          modulo = "hash mod partition_count",
          spec = v.hash_algo == "md5"
            and "big-endian uint32 of md5(key)[0..3]"
            or "fmix64(fnv1a64(key))"}
end

--- This node as the cluster knows it (or as configured, before it joined).
function Node:me()
  check(self, "me")
  local v = self:_view()
  return v.by_id[self.id] or public_node(self:_my_entry())
end

--- The URL of `path` on member `n` (a node table from the cluster, or its
-- "host:port"): https when this node serves HTTPS (TLS_CERT; a cluster is
-- TLS throughout), else http. For calls between members of an application.
function Node:url(n, path)
  local addr = type(n) == "table" and (n.http_addr or n.ip) or n
  if type(addr) ~= "string" or addr == "" then
    error("clusterkit: url: member must be a node table or a host:port string", 2)
  end
  return self.scheme .. "://" .. addr .. (path or "")
end

--- clusterkit.http.request as the node makes its own calls to members: on a
-- TLS cluster with this node's client context (the cluster's CA, and its
-- certificate for peers that verify clients) unless opts.tls is given.
-- Returns the response, or nil, err.
function Node:request(opts)
  if type(opts) ~= "table" then
    error("clusterkit: request: options must be a table", 2)
  end
  if opts.tls == nil and self._tls_client then
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.tls = self._tls_client
    opts = o
  end
  return httpc.request(opts)
end

--- Waits until the state index exceeds `index` (at most `timeout`
-- seconds, default 30). Returns the new index, or nil, err (TIMEOUT).
function Node:wait_for_change(index, timeout)
  check(self, "wait_for_change")
  if type(index) ~= "number" or index < 0 then
    error("clusterkit: wait_for_change: index must be a non-negative number", 2)
  end
  timeout = timeout or 30
  if type(timeout) ~= "number" or timeout < 0 then
    error("clusterkit: wait_for_change: timeout must be seconds", 2)
  end
  local changed = self:_wait_until(function() return self:_view().index > index end, timeout)
  if not changed then
    return nil, errors.new("TIMEOUT", format("state index still %d after %gs", index, timeout))
  end
  return self:_view().index
end

--- The state index: the raft index of the last change (an ETag).
function Node:state_index()
  check(self, "state_index")
  return self:_view().index
end

-- ---------------------------------------------------------------------------
-- Consensus
-- ---------------------------------------------------------------------------

local function raft_info(self)
  local c = self._core
  if c and not c:closed() then
    return c:raft()
  end
  return {state = "unavailable", term = 0, commit_index = 0, last_applied = 0, last_index = 0}
end

function Node:is_leader()
  check(self, "is_leader")
  return raft_info(self).state == "leader"
end

-- The leader's node entry, found by raft id (before this node's own entry
-- is committed, it answers for itself).
local function leader_node(self, r)
  if not r.leader_id then return nil end
  local v = self:_view()
  -- The last answer, while this view still holds that very entry (views
  -- share unchanged entries): no scan over the nodes on every commit.
  local last = self._leader_entry
  if last and last.raft_id == r.leader_id and v.by_id[last.id] == last then return last end
  for _, n in ipairs(v.nodes) do
    if n.raft_id == r.leader_id then
      self._leader_entry = n
      return n
    end
  end
  if r.leader_id == self.raft_id then
    return public_node(self:_my_entry())
  end
end

--- {leader_id, leader_name, leader_ip, raft_addr, term} or nil, err.
function Node:leader()
  check(self, "leader")
  local r = raft_info(self)
  if not r.leader_id then
    return nil, errors.new("NO_LEADER", "no leader known")
  end
  local n = leader_node(self, r)
  return {
    leader_id = n and n.id or "", leader_name = n and n.name or "",
    leader_ip = n and n.http_addr or "", raft_addr = r.leader_addr, term = r.term,
    is_me = r.state == "leader",
  }
end

--- Waits until a leader is known (at most `timeout` seconds, default 10).
function Node:wait_for_leader(timeout)
  check(self, "wait_for_leader")
  timeout = timeout or 10
  if type(timeout) ~= "number" then
    error("clusterkit: wait_for_leader: timeout must be seconds", 2)
  end
  local ok = self:_wait_until(function()
    return raft_info(self).leader_id ~= nil
  end, timeout)
  if not ok then
    return nil, errors.new("TIMEOUT", format("no leader after %gs", timeout))
  end
  return self:leader()
end

--- Raft statistics (real term and indexes).
function Node:consensus_stats()
  check(self, "consensus_stats")
  local r = raft_info(self)
  local n = leader_node(self, r)
  return {
    state = r.state, term = r.term, last_log_index = r.last_index,
    commit_index = r.commit_index, applied_index = r.last_applied,
    snapshot_index = r.snapshot_index or 0, leader_id = n and n.id or "",
    leader_addr = r.leader_addr or "", voters = r.voters or 0,
    standbys = r.standbys or 0, spares = r.spares or 0, role = r.role or "",
    node_id = self.id, state_index = self:_view().index,
  }
end

-- ---------------------------------------------------------------------------
-- Hooks
-- ---------------------------------------------------------------------------

--- ck:on(event, fn): fn runs in its own coroutine each time the event fires.
function Node:on(event, fn)
  check(self, "on")
  if not HOOKS[event] then
    error("clusterkit: on: unknown event '" .. tostring(event) .. "'", 2)
  end
  if type(fn) ~= "function" then
    error("clusterkit: on: handler must be a function", 2)
  end
  local list = self._hooks[event] or {}
  list[#list + 1] = fn
  self._hooks[event] = list
  local shown = self.view:previous()
  if event == "cluster_health_change" and self._health == nil and shown then
    -- Health is followed only while someone listens (_fire_changes): from now.
    self._health = viewm.health(shown)
  end
  -- Series from the start: a hook that never failed shows 0, not nothing.
  self.hook_time:get(event)
  self.hook_errors[event] = self.hook_errors[event] or 0
  return self
end

function Node:_fire(event, info)
  local list = self._hooks[event]
  if not list then return end
  for _, fn in ipairs(list) do
    sched.spawn(function()
      local t0 = hrtime()
      local ok, err = xpcall(fn, debug.traceback, info, self)
      -- Start to end, waits included: a hook that copies data is slow here.
      self.hook_time:since(event, t0)
      if not ok then
        self.hook_errors[event] = self.hook_errors[event] + 1
        self.log:error("hook %s failed: %s", event, tostring(err))
      end
    end)
  end
end

-- ---------------------------------------------------------------------------
-- Events from the core
-- ---------------------------------------------------------------------------

function Node:_wait_until(pred, timeout)
  local deadline = hrtime() + timeout * 1e9
  while not pred() do
    local left = (deadline - hrtime()) / 1e9
    if left <= 0 or self.status == "stopped" then
      return false
    end
    self._cond:wait(left)
  end
  return true
end

-- Fires leader_change once the new leader's node id is known (a joining
-- node learns the leader from raft before it has the leader's entry).
function Node:_check_leader()
  local r = raft_info(self)
  local n = leader_node(self, r)
  local key = n and n.id or false
  if r.leader_id and not n then
    return -- Known to raft, not yet in our state: wait for the entry.
  end
  if key ~= self._last_leader then
    self._last_leader = key
    self.log:info("leader is %s (%s)", n and n.id or "unknown", r.state)
    if n then
      self.leader_changes = (self.leader_changes or 0) + 1 -- clusterkit_leader_changes_total
      self:_fire("leader_change", {leader_id = n.id, leader_addr = r.leader_addr or "",
                                   term = r.term, is_me = r.state == "leader"})
    end
  end
end

-- Counts raft role changes (clusterkit_membership_changes_total{kind="role"}):
-- a member promoted to voter or demoted to standby. The core reports "raft"
-- when a configuration change commits. A joiner's first role (raft adds it
-- as a spare) belongs to its join and is not counted.
function Node:_count_role_changes()
  local c = self._core
  if not c or c:closed() then return end
  local counts = self.membership_changes
  counts.role = counts.role + self.roles:count_changes(c:configuration())
end

function Node:_on_event(ev)
  if ev == "kv" then
    -- Only the store changed: no view rebuild, no hooks, no reconcile.
    coord.on_applied(self)
    return kv.on_applied(self)
  end
  if ev == "applied" then
    -- The record of what changed up to this state, taken in the same step
    -- as the view is updated (no yield in between, and the core applies
    -- only on this loop).
    self.http:fast_reset() -- Before anything can answer from the new state.
    local v, old, changes, gap, entries = self.view:advance()
    self:_persist()
    self:_fire_changes(old, v, changes, gap, entries)
    self:_fire("state_change", {index = v.index})
    if self.status == "running" then self.standing:saw(v) end
  end
  if ev == "raft" then
    -- X-CK-Known-Leader of the bodies C serves may have changed.
    self.http:fast_reset()
    self:_count_role_changes()
  end
  if ev == "raft" or ev == "applied" then
    self:_check_leader()
  elseif ev == "closed" then
    self._core_closed = true
  elseif ev == "failed" then
    -- raft's storage failed (a full disk, say): this process cannot go on
    -- as a member; restarted, the node recovers from what it stored.
    local why = self._core:errmsg()
    self._failed = why
    self.log:error("raft failed: %s. Stopping; restart the node once the cause is fixed "
      .. "(it recovers from its data dir)", why)
    -- raft 0.15 cannot be closed safely after its log writes failed (its
    -- log bookkeeping is broken and close double-frees): ckrun's on_failed
    -- exits the process at once, as a crash would, but with a message and a
    -- code; embedded, the node is stopped as well as it can be.
    if M.on_failed then return M.on_failed(self, why) end
    sched.spawn(function() self:stop() end)
  end
  self._cond:signal(ev)
  if ev ~= "closed" then
    self:_reconcile()
  end
end

-- Fires the hooks for what changed between two views (clusterkit.view's
-- diff) and counts the membership changes. Runs on every node, after the
-- state changed (never inside the apply).
function Node:_fire_changes(old, new, changes, gap, entries)
  local hooks = self._hooks
  local followed -- The health last reported; false: not yet; nil: nobody listens.
  if hooks.cluster_health_change then followed = self._health or false end
  local events, counts, health = viewm.diff(old, new, changes, gap, entries, {
    me = self.id, rows = hooks.partition_change ~= nil, health = followed,
  })
  if health then self._health = health end
  local total = self.membership_changes -- clusterkit_membership_changes_total
  for kind, n in pairs(counts) do total[kind] = total[kind] + n end
  for _, e in ipairs(events) do self:_fire(e[1], e[2]) end
end

local function ids_of(row)
  local t = {}
  for k = 2, #row do t[k - 1] = row[k].id end
  return t
end

-- ---------------------------------------------------------------------------
-- This node's own standing (clusterkit.standing: member, leaving, removed)
-- ---------------------------------------------------------------------------

--- "removed", "leaving" or nil (a member).
function Node:_gone()
  return self.standing:gone()
end

-- The cluster no longer counts this node as a member (self.standing
-- decided): fires `lose` for the partitions it still holds, lingers, stops,
-- and calls clusterkit.node.on_removed (ckrun sets it).
function Node:_removed_now(reason)
  local v = self.view:current()
  if v.ready then
    for p = 1, v.partitions do
      local row = v.pnodes[p]
      for k = 1, #row do
        if row[k].id == self.id then
          self:_fire("partition_change", {
            partition = v.parts[p].id, index = p - 1, epoch = v.parts[p].epoch,
            old_primary = row[1].id, new_primary = "", old_replicas = ids_of(row), new_replicas = {},
            role = "lose", removed = true,
          })
        end
      end
    end
  end
  sched.spawn(function()
    -- Linger before stopping: the nodes that gained this node's partitions
    -- may still be copying them from it (examples/kv does), and a source
    -- that vanished at once would make them serve incomplete copies.
    self:_wait_until(function() return self.status ~= "running" end, self.opts.removed_linger)
    self:stop()
    if M.on_removed then M.on_removed(self, reason) end
  end)
end

-- What a peer's /cluster says (its "cluster" object), or nil.
function Node:_ask_peer(peer)
  local res = httpc.request {
    tls = self._tls_client, method = "GET", url = self.scheme .. "://" .. peer.http_addr .. "/cluster",
    headers = auth.headers(self), timeout = 1,
  }
  local body = res and res.status == 200 and json.decode(res.body)
  return type(body) == "table" and type(body.cluster) == "table" and body.cluster or nil
end

-- cluster-state.json: the committed state, human-readable, replaced
-- atomically (tmp + fsync + rename) after each change, at most once per
-- PERSIST_DELAY: a change after a quiet spell is written at once, and the
-- changes of a burst coalesce into one write at the end of the delay.
-- Encoding the whole cluster and an fsync after every commit were the
-- largest part of a follower's work while a cluster formed: 100 nodes make
-- about 500 commits, each costing every node an encode of all 100 entries
-- and an fsync. With writes 0.1 s apart, formation took 4.3-4.5 s and the
-- nodes 6.5 s of CPU; 0.5 s apart, 2.8 s and 3.9 s (tests/bench/
-- cluster_scale.py). The file is for operators and for a restart's sanity
-- checks (saved_state: the cluster's id and name); the raft log is what a
-- node recovers from, and stop() writes the last state.
local PERSIST_DELAY = 0.5

function Node:_persist()
  if self._persist_due then return end -- The write due reads the state then.
  local t = hrtime() / 1e9
  local wait = (self._persisted_at or -math.huge) + PERSIST_DELAY - t
  if wait <= 0 then
    self._persisted_at = t
    return self:_write_state()
  end
  self._persist_due = true
  sched.spawn(function()
    sched.sleep(wait)
    if not self._persist_due then return end -- stop() wrote it.
    self._persist_due = false
    self._persisted_at = hrtime() / 1e9
    if self.status ~= "stopped" then self:_write_state() end
  end)
end

function Node:_write_state()
  if self._writing then
    self._write_again = true
    return
  end
  local v = self:_view()
  if not v.ready then return end
  local body = json.encode(apim.cluster_json(self))
  self._writing = true
  core.write_file(self.opts.data_dir .. "/cluster-state.json", body, function(ok, err)
    self._writing = false
    if not ok then
      self.log:warn("writing cluster-state.json failed: %s", tostring(err))
    end
    if self._write_again then
      self._write_again = false
      self:_write_state()
    else
      self._cond:signal("written")
    end
  end)
end

-- ---------------------------------------------------------------------------
-- The leader's reconciler: makes the committed state match what it should
-- be (initialised, every live node registered, table placed).
-- ---------------------------------------------------------------------------

function Node:_my_entry()
  local o = self.opts
  local e = {
    id = self.id, name = o.node_name, http_addr = self.advertise_http or o.http_addr,
    raft_addr = o.raft_addr, zone = o.zone, weight = o.weight, services = o.services,
    raft_id = core.raft_id(self.id), status = "active",
  }
  -- Optional attributes are trailing fields (ck_node_attrs.h): only once
  -- every member can read them.
  if self:_view().feature_level >= 2 then
    attrs.from_opts(o, e)
    e.build = core.version
  end
  return e
end

function Node:_propose(bytes)
  return sched.wait(function(resume)
    local ok, msg, code = self._core:propose(bytes, resume)
    if not ok then
      resume(nil, msg, code)
    end
  end)
end

local function leader_error(self)
  local l = self:leader()
  return errors.new("NOT_LEADER", "this node is not the leader",
    {leader = l and l.leader_ip ~= "" and l.leader_ip or nil})
end

--- Computes and commits a new table now (leader only; also in
-- maintenance mode). Returns {moves, moved_slots, moved_primaries} or
-- nil, err (NOT_LEADER carries the leader's address in err.leader).
function Node:rebalance()
  check(self, "rebalance")
  if not self:is_leader() then
    return nil, leader_error(self)
  end
  local raw = self._core:view()
  if not raw.initialized then return nil, not_ready end
  local ok, plan = self.reconciler:rebalance(raw, true)
  if ok then
    return {moves = plan.changed, moved_slots = plan.moved_slots, moved_primaries = plan.moved_primaries}
  end
  return {moves = 0, moved_slots = 0, moved_primaries = 0}
end

--- Dry run: the moves a rebalance would make now, on this node's state:
-- {moves = {{partition, index, from, to}...}, moved_slots, moved_primaries, min_moves}.
function Node:plan_rebalance()
  check(self, "plan_rebalance")
  local raw = self._core:view()
  if not raw.initialized then return nil, not_ready end
  local plan, err = self.reconciler:plan(raw, true)
  if not plan then
    return nil, errors.new("PLACEMENT", err)
  end
  return {moves = plan.moves, moved_slots = plan.moved_slots, moved_primaries = plan.moved_primaries,
          min_moves = plan.min_moves}
end

--- Places partitions if no table exists yet (the Go library's
-- CreatePartitions; clusterkit does it on its own). Leader only.
function Node:create_partitions()
  check(self, "create_partitions")
  if not self:is_leader() then
    return nil, leader_error(self)
  end
  local v = self:_view()
  if v.ready and v.parts[1].primary_node ~= "" then
    return true
  end
  local ok, err = self:rebalance()
  if not ok then return nil, err end
  return true
end

-- ---------------------------------------------------------------------------
-- Backups of the replicated state (ckctl snapshot save / restore)
-- ---------------------------------------------------------------------------

local SNAPSHOT_FORMAT, SNAPSHOT_VERSION = "clusterkit-snapshot", 1

--- The replicated state as one consistent document (a single state index):
-- {format, version, state_index, taken_at_ms, cluster_id, config =
-- {cluster_name, partition_count, replication_factor, hash_algorithm,
-- hash_tags}, flags = {rebalance_paused}, nodes = {...}, partitions =
-- {{id, primary_node, replica_nodes, epoch}, ...} in index order}.
function Node:snapshot()
  check(self, "snapshot")
  local v = self:_view()
  if not v.ready then return nil, not_ready end
  local parts = {}
  for i, p in ipairs(v.parts) do
    parts[i] = {id = p.id, primary_node = p.primary_node, replica_nodes = p.replica_nodes, epoch = p.epoch}
  end
  local nodes = {}
  for i, n in ipairs(v.nodes) do
    nodes[i] = attrs.to_json(n, {id = n.id, name = n.name, ip = n.ip, raft_addr = n.raft_addr, status = n.status,
                                 zone = n.zone, weight = n.weight, services = n.services})
  end
  return {
    format = SNAPSHOT_FORMAT, version = SNAPSHOT_VERSION, state_index = v.index, taken_at_ms = core.time_ms(),
    cluster_id = v.cluster_id, config = {cluster_name = v.name, partition_count = v.partitions,
      replication_factor = v.replication, hash_algorithm = v.hash_algo, hash_tags = v.hash_tags},
    flags = {rebalance_paused = self:rebalance_paused()}, nodes = nodes, partitions = parts,
    kv = kv.backup(self),
  }
end

-- Why snapshot `snap` cannot be restored here: an error code (BAD_SNAPSHOT:
-- not one this node reads; SNAPSHOT_MISMATCH: another cluster shape) and a
-- message; nil when it can.
local function snapshot_mismatch(snap, v)
  if type(snap) ~= "table" or snap.format ~= SNAPSHOT_FORMAT then
    return "BAD_SNAPSHOT", "not a clusterkit snapshot (no \"format\": \"" .. SNAPSHOT_FORMAT .. "\")"
  end
  if snap.version ~= SNAPSHOT_VERSION then
    return "BAD_SNAPSHOT", string.format("snapshot version %s; this node reads version %d",
      tostring(snap.version), SNAPSHOT_VERSION)
  end
  local cfg = type(snap.config) == "table" and snap.config or {}
  for _, k in ipairs({{"partition_count", v.partitions}, {"replication_factor", v.replication},
                      {"hash_algorithm", v.hash_algo}}) do
    if cfg[k[1]] ~= k[2] then
      return "SNAPSHOT_MISMATCH", string.format("the snapshot's %s is %s, this cluster's is %s (a table cannot "
        .. "change shape)", k[1], tostring(cfg[k[1]]), tostring(k[2]))
    end
  end
  if type(snap.partitions) ~= "table" or #snap.partitions ~= v.partitions then
    return "SNAPSHOT_MISMATCH", "the snapshot does not hold one row per partition"
  end
end

--- Restores a backup made by snapshot() (leader only): commits its
-- partition table (owners that are not members here are left out; the
-- reconciler fills their slots unless rebalancing is paused) and its flags.
-- Node entries are not restored: members are the nodes that run. Returns
-- {state_index, partitions, missing = {ids the snapshot names that are not
-- members}} or nil, err (NOT_LEADER, SNAPSHOT_MISMATCH, BAD_SNAPSHOT).
function Node:restore_snapshot(snap)
  check(self, "restore_snapshot")
  if not self:is_leader() then
    return nil, leader_error(self)
  end
  local raw = self._core:view()
  if not raw.initialized then return nil, not_ready end
  local v = self:_view()
  local code, why = snapshot_mismatch(snap, v)
  if code then return nil, errors.new(code, why) end
  local members, missing, seen = {}, {}, {}
  for _, n in ipairs(v.nodes) do
    if n.status ~= "left" then members[n.id] = true end
  end
  local rows = {}
  for i, p in ipairs(snap.partitions) do
    if type(p) ~= "table" or type(p.replica_nodes) ~= "table" then
      return nil, errors.new("BAD_SNAPSHOT", "partition row " .. i .. " is malformed")
    end
    local row, dup = {}, {}
    local owners = {p.primary_node}
    for _, r in ipairs(p.replica_nodes) do owners[#owners + 1] = r end
    for _, id in ipairs(owners) do
      if type(id) ~= "string" then
        return nil, errors.new("BAD_SNAPSHOT", "partition row " .. i .. " names a node that is not a string")
      end
      if id ~= "" and members[id] and not dup[id] and #row < raw.replication then
        row[#row + 1], dup[id] = id, true
      elseif id ~= "" and not members[id] and not seen[id] then
        missing[#missing + 1], seen[id] = id, true
      end
    end
    rows[i] = row
  end
  local ids, owners = placement.flatten(rows, raw.replication)
  local ok, encoded = pcall(core.encode_table, raw.partitions, raw.replication, ids, owners)
  if not ok then
    return nil, errors.new("BAD_SNAPSHOT", tostring(encoded))
  end
  local index, msg = self:_propose(encoded)
  if not index then return nil, errors.new("RAFT", tostring(msg)) end
  local paused = type(snap.flags) == "table" and snap.flags.rebalance_paused == true
  if paused ~= self:rebalance_paused() then
    local fi, fmsg = self:_propose(core.encode_flags({rebalance_paused = paused}))
    if not fi then return nil, errors.new("RAFT", tostring(fmsg)) end
    index = fi
  end
  local keys, kerr = kv.restore(self, snap.kv)
  if not keys then return nil, kerr end
  self.log:info("restored a snapshot taken at state index %s: %d partitions, %d keys%s", tostring(snap.state_index),
    #rows, keys, #missing > 0 and (", without " .. table.concat(missing, ", ") .. " (not members)") or "")
  return {state_index = index, partitions = #rows, missing = missing, keys = keys}
end

local function set_paused(self, fn, paused)
  check(self, fn)
  if not self:is_leader() then
    return nil, leader_error(self)
  end
  local ok, msg = self:_propose(core.encode_flags({rebalance_paused = paused}))
  if not ok then
    return nil, errors.new("RAFT", tostring(msg))
  end
  self.log:info("rebalancing %s", paused and "paused (maintenance mode)" or "resumed")
  return true
end

--- Maintenance mode: hold every data move (primaries still fail over).
function Node:pause_rebalance() return set_paused(self, "pause_rebalance", true) end
function Node:resume_rebalance() return set_paused(self, "resume_rebalance", false) end

--- True while rebalancing is paused.
function Node:rebalance_paused()
  check(self, "rebalance_paused")
  local c = self._core
  return c ~= nil and not c:closed() and (c:flags()) or false
end

function Node:_reconcile()
  return self.reconciler:poke()
end

-- ---------------------------------------------------------------------------
-- Lifecycle
-- ---------------------------------------------------------------------------

-- getaddrinfo through the FFI (the core has no resolver binding). The
-- struct stays opaque: only success matters here.
local resolver = pcall(ffi.cdef, [[
struct addrinfo;
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res);
void freeaddrinfo(struct addrinfo *res);
const char *gai_strerror(int errcode);
]])

-- Nil when peers can resolve `host` (the raft address's host), else why
-- not. Synchronous, once, before anything exists on disk: raft's transport
-- resolves it the same way when it starts listening, but only after the
-- data dir has been created and bootstrapped.
local function unresolvable(host)
  if not resolver then return nil end
  local out = ffi.new("struct addrinfo *[1]")
  local rc = ffi.C.getaddrinfo(host, nil, nil, out)
  if rc ~= 0 then return ffi.string(ffi.C.gai_strerror(rc)) end
  ffi.C.freeaddrinfo(out[0])
end

-- The "cluster" object of the data dir's last cluster-state.json, or nil.
local function saved_state(dir)
  local f = io.open(dir .. "/cluster-state.json", "r")
  if not f then return nil end
  local saved = json.decode(f:read("*a") or "")
  f:close()
  return type(saved) == "table" and type(saved.cluster) == "table" and saved.cluster or nil
end

-- The cluster id and name recorded in the data dir, when it holds raft
-- data (a node that was a member somewhere); nil for a new node.
local function saved_cluster(dir)
  local meta = io.open(dir .. "/raft/metadata1", "r") or io.open(dir .. "/raft/metadata2", "r")
  if not meta then return nil end
  meta:close()
  local c = saved_state(dir)
  if c and type(c.id) == "string" and c.id ~= "" then return c end
end

-- With a JOIN_ADDR and a data dir of some cluster: nil when they agree (or
-- the node at JOIN_ADDR cannot say), else an error. A restarted member does
-- not join, so without this check a JOIN_ADDR meant for another cluster is
-- ignored and two clusters run.
local function join_addr_mismatch(self)
  local o = self.opts
  local mine = o.join_addr and saved_cluster(o.data_dir)
  if not mine then return nil end
  local token = o.read_token or o.token
  local res = httpc.request {
    tls = self._tls_client, method = "GET", url = self.scheme .. "://" .. o.join_addr .. "/cluster", timeout = 3,
    headers = token and {Authorization = "Bearer " .. token} or nil,
  }
  local body = res and res.status == 200 and json.decode(res.body)
  local theirs = type(body) == "table" and type(body.cluster) == "table" and body.cluster
  if not theirs or type(theirs.id) ~= "string" or theirs.id == "" or theirs.id == mine.id then
    return nil
  end
  return errors.new("CLUSTER_MISMATCH", format("data dir %s belongs to cluster %s (id %s), but the node at "
    .. "JOIN_ADDR %s is in cluster %s (id %s); a member restarting with its data dir does not join, so "
    .. "JOIN_ADDR would be ignored. To join %s's cluster, empty %s and start again; to stay in the data "
    .. "dir's cluster, drop JOIN_ADDR", o.data_dir, tostring(mine.name), mine.id, o.join_addr,
    tostring(theirs.name), theirs.id, o.join_addr, o.data_dir))
end

--- Reads the TLS certificate, key and CA again from the same files (what
-- SIGHUP does under ckrun and clusterkit.run{signals = true}): new HTTPS
-- and raft connections, in and out, use them; open ones keep the old ones
-- until they close. A reload that fails changes nothing and says why.
-- Returns the new {serial, not_after}, or nil, err.
function Node:reload_tls()
  check(self, "reload_tls")
  if not self._tls then
    return nil, errors.new("INVALID", "TLS is off (no TLS_CERT): nothing to reload")
  end
  local t, msg = tlsm.contexts(self.opts)
  if not t then
    self.log:error("TLS reload failed, keeping certificate serial %s: %s", self._tls.info.serial, msg)
    return nil, errors.new("INVALID", msg)
  end
  self._tls, self._tls_client = t, t.client
  self.http:set_tls(t.server)
  if self._core and not self._core:closed() then
    self._core:set_tls(t.server, t.client)
  end
  self.log:info("TLS reloaded: certificate serial %s, expires %s", t.info.serial, t.info.not_after)
  return t.info
end

--- Starts raft and the HTTP server, then waits (yielding) until this node
-- holds the committed cluster state, is registered in it, and sees a
-- leader. Returns true, or nil, err (then the node is stopped again).
-- Refused before anything starts or is written: a RAFT_ADDR whose host does
-- not resolve (INVALID), a JOIN_ADDR into another cluster than the data
-- dir's (CLUSTER_MISMATCH).
function Node:start()
  check(self, "start")
  if self.status ~= "new" then
    error("clusterkit: start: node already started", 2)
  end
  local o = self.opts
  local why = unresolvable(o.raft_host)
  if why then
    return nil, errors.new("INVALID", format("RAFT_ADDR: cannot resolve %s (%s); it must be host:port "
      .. "with a host that this node and its peers resolve", o.raft_addr, why))
  end
  if o.tls_cert then
    local t, terr = tlsm.contexts(o)
    if not t then
      return nil, errors.new("INVALID", terr .. " (TLS is on because TLS_CERT is set)")
    end
    self._tls, self._tls_client = t, t.client
  end
  self.status = "starting"
  local mismatch = join_addr_mismatch(self)
  if mismatch then
    self.status = "new"
    return nil, mismatch
  end
  local port, msg, code = self.http:listen(o.http_host, o.http_port)
  if not port then
    self.status = "new"
    return nil, errors.from_core("http listen on " .. o.http_addr .. ": " .. tostring(msg), code)
  end
  local adv_host = o.http_host
  if adv_host == "0.0.0.0" or adv_host == "::" then
    adv_host = o.raft_host
  end
  self.http_port = port
  self.advertise_http = o.advertise_http or (adv_host:find(":") and "[" .. adv_host .. "]" or adv_host) .. ":" .. port
  if o.http_host ~= "127.0.0.1" and o.http_host ~= "::1" and not o.token then
    self.log:warn("HTTP on %s without a cluster token: anyone who can reach it can change the cluster", o.http_addr)
  end
  self._core = core.node_new({
    data_dir = o.data_dir, raft_addr = o.raft_addr, raft_id = core.raft_id(self.id),
    bootstrap = o.bootstrap, token = o.token,
    tls_server = self._tls and self._tls.server, tls_client = self._tls_client,
    election_timeout = math.floor(o.election_timeout * 1000),
    heartbeat_timeout = math.floor(o.heartbeat_timeout * 1000),
    snapshot_threshold = o.snapshot_threshold, snapshot_trailing = o.snapshot_trailing,
  }, function(ev) self:_on_event(ev) end)
  local ok
  ok, msg, code = self._core:start()
  if not ok then
    self:_shutdown()
    return nil, errors.from_core("raft: " .. tostring(msg), code)
  end
  self.status = "running"
  M.running[self] = true
  self.log:info("started: %s %s, raft %s%s, data %s%s", self.scheme, self.advertise_http, o.raft_addr,
    self._tls and format(" over TLS (certificate serial %s, expires %s%s)", self._tls.info.serial,
      self._tls.info.not_after, o.tls_verify_peers and ", peers must present one" or "") or "",
    o.data_dir, o.bootstrap and ", bootstrap" or "")
  self:_start_ticker()
  local r = self._core:raft()
  if r.voters + r.standbys + r.spares == 0 and not o.bootstrap then
    -- A new node: ask the cluster to admit it. (A node restarted with its
    -- data dir is already in the raft configuration and just catches up.)
    if not o.join_addr then
      self:stop()
      return nil, errors.new("INVALID", "a new node needs bootstrap = true or a join_addr")
    end
    sched.spawn(function() self.joiner:run(false) end)
  else
    -- Restarted with its data dir at a new raft address (a new pod IP, say):
    -- peers would keep dialling the old one, so ask to be re-admitted.
    local moved
    for _, srv in ipairs(self._core:configuration()) do
      if srv.id == self.raft_id and srv.address ~= o.raft_addr then moved = srv.address end
    end
    if moved then
      -- Whom to ask: join_addr, else a peer from the last cluster-state.json
      -- (after a restart, raft replays the log only once a leader is heard).
      local via = o.join_addr
      local nodes = (saved_state(o.data_dir) or {}).nodes
      for _, n in ipairs(type(nodes) == "table" and nodes or {}) do
        if not via and type(n) == "table" and n.id ~= self.id and type(n.ip) == "string" then via = n.ip end
      end
      if via then
        self.log:info("raft address changed from %s to %s: rejoining through %s", moved, o.raft_addr, via)
        sched.spawn(function() self.joiner:run(true, via) end)
      else
        self.log:warn("raft address changed from %s, and no other node is known to rejoin through", moved)
      end
    end
  end
  local ready = self:_wait_until(function() return self.joiner.error or self:_ready() end, o.start_timeout)
  if self.joiner.error then
    local err = self.joiner.error
    self:stop()
    return nil, err
  end
  if not ready and (self.status == "stopping" or self.status == "stopped") then
    -- stop() (a signal: clusterkit.stop, ckrun's SIGINT) ended the wait.
    return nil, errors.new("INTERRUPTED", "stopped while starting, before the node was part of a ready cluster")
  end
  if not ready then
    return nil, errors.new("TIMEOUT", format("not part of a ready cluster after %gs%s", o.start_timeout,
      self.joiner.cause and " (last join attempt: " .. self.joiner.cause .. ")" or ""))
  end
  sched.spawn(coord.clean_own, self)
  return true
end

--- True when this node holds an initialised state in which it is
-- registered and the table is placed, and it knows a leader.
function Node:_ready()
  if self:_gone() then return false end
  local v = self:_view()
  return v.ready and v.by_id[self.id] ~= nil and v.parts[1].primary_node ~= ""
    and self:_knows_leader()
end

--- True when raft knows a leader (cheap: no node lookup, for hot paths).
function Node:_knows_leader()
  return raft_info(self).leader_id ~= nil
end

-- Every heartbeat_interval: the leader checks liveness and roles, the
-- others heartbeat the leader. Each run is a coroutine; runs never overlap.
function Node:_start_ticker()
  local t = core.timer()
  self._ticker = t
  local ms = self.opts.heartbeat_interval * 1000
  local function tick()
    local c = self._core
    if c and not c:closed() then
      local r = c:raft()
      if self.status == "running" then self.standing:tick(r, self:_view()) end
      coord.tick(self, r)
      if r.state == "leader" then
        membership.leader_tick(self)
      else
        membership.heartbeat(self)
      end
    end
  end
  t:start(ms, ms, function()
    if self._tick_busy or self.status ~= "running" then return end
    self._tick_busy = true
    sched.spawn(function()
      -- Whatever a tick raises, the next one runs: a ticker left busy
      -- would stop failure detection for good.
      local ok, err = xpcall(tick, debug.traceback)
      self._tick_busy = false
      self._cond:signal("ticked")
      if not ok then
        self.log:error("tick: %s", tostring(err))
      end
    end)
  end)
end

-- Hands leadership to a live voter, if this node leads and has one.
-- Returns true when another node leads afterwards.
function Node:_handover()
  local c = self._core
  if not c or c:closed() then return false end
  local status, det = {}, self.detector
  for _, n in ipairs(self:_view().nodes) do
    status[n.raft_id] = not det:is_stopping(n.id) and n.status or "stopping"
  end
  return self.roles:handover(status)
end

--- Leaves the cluster for good: the leader moves this node's partitions
-- away and removes it from raft and from the state; then the node stops.
-- (stop() keeps the membership: the node is expected back.) Returns true
-- or nil, err.
function Node:leave(timeout)
  check(self, "leave")
  if self.status ~= "running" then
    error("clusterkit: leave: node is not running", 2)
  end
  timeout = timeout or 10
  local deadline = hrtime() + timeout * 1e9
  local v = self:_view()
  if #v.nodes <= 1 then
    self:stop()
    return true
  end
  self:_handover()
  local res, err
  while hrtime() < deadline do
    local l = self:leader()
    if l and not l.is_me and l.leader_ip ~= "" then
      res, err = httpc.request {
        tls = self._tls_client, method = "POST", url = self.scheme .. "://" .. l.leader_ip .. "/leave",
        headers = auth.headers(self), body = json.encode({id = self.id}),
        timeout = math.max(1, (deadline - hrtime()) / 1e9),
      }
      if res and res.status == 200 then break end
    elseif l and l.is_me then
      self:_handover()
    end
    sched.sleep(0.1)
  end
  self:stop()
  if not (res and res.status == 200) then
    return nil, errors.new("TIMEOUT", "leave not confirmed: " .. tostring(err or (res and res.body)))
  end
  return true
end

-- Closes the HTTP server and the raft node and waits for both.
function Node:_shutdown()
  if self._ticker then
    self._ticker:close()
    self._ticker = nil
  end
  local srv_closed = false
  self.http:close(function() srv_closed = true; self._cond:signal("http_closed") end)
  if self._core and not self._core:closed() then
    self._core:close()
  end
  self:_wait_until(function()
    return srv_closed and (self._core == nil or self._core_closed)
  end, 10)
end

-- Tells the leader (after a handover: the new one) that this node is
-- stopping, so that it commits it `stopped` at once instead of suspect and
-- down, and never hands leadership to it. Best effort and bounded: one
-- retry when the answer is not the leader's OK (leadership moving).
function Node:_announce_stop()
  for _ = 1, 2 do
    local ok, res, err = pcall(membership.heartbeat, self, true)
    if not ok then
      return self.log:warn("announcing the stop failed: %s", tostring(res))
    end
    if (res == nil and err == nil) or (res and res.status == 200) then
      return -- Told, or no other node leads.
    end
    sched.sleep(self.opts.heartbeat_interval / 2)
  end
end

--- Stops the node gracefully: HTTP server and raft closed, handles freed.
-- The node keeps its cluster membership (see leave). Returns true.
function Node:stop()
  if getmetatable(self) ~= Node then
    error("clusterkit: stop: call it as ck:stop()", 2)
  end
  if self.status == "stopped" or self.status == "stopping" then
    return true
  end
  local leading = self._core and not self._core:closed() and self._core:raft().state == "leader"
  self.status = "stopping"
  self.log:info("stopping")
  if not self.standing.removed_why and self._core and not self._core:closed() then
    -- A heartbeat still in flight could reach the leader after the stop
    -- announcement and read as an aborted stop: let the tick end first (a
    -- heartbeat times out after four intervals).
    self:_wait_until(function() return not self._tick_busy end, self.opts.heartbeat_interval * 5)
    if leading then
      self:_handover()
    end
    self:_announce_stop()
  end
  self:_shutdown()
  -- Let the last cluster-state.json write land before we report stopped.
  if self._persist_due then
    self._persist_due = false
    self:_write_state() -- The last state, not one PERSIST_DELAY short of it.
  end
  self:_wait_until(function() return not self._writing end, 5)
  self.status = "stopped"
  M.running[self] = nil
  self.view:forget()
  self._cond:signal("stopped")
  self.log:info("stopped")
  return true
end

--- The node's lifecycle state: "new", "starting", "running", "stopping"
-- or "stopped". Never raises (a hook that outlives the node can ask).
function Node:state()
  return self.status
end

--- Sets the placement policy (a function, see clusterkit.placement).
function Node:set_placement(fn)
  check(self, "set_placement")
  if type(fn) ~= "function" then
    error("clusterkit: set_placement: policy must be a function", 2)
  end
  self.reconciler:set_policy(fn)
  return self
end

--- Adds an HTTP route served by this node: ck:route("GET", "/kv/:key", fn).
function Node:route(method, pattern, fn, opts)
  check(self, "route")
  self.http:route(method, pattern, fn, opts)
  return self
end

return M
