--- The built-in HTTP API: the Go ClusterKit's endpoints, same paths and JSON
-- field names, served by every node from its own committed state.
--
-- Reads whose body is a function of the replicated state (/cluster, /nodes,
-- /partitions, /partitions/stats, /partitions/key) carry ETag = the state
-- index (the raft index of the last change), and answer 304 to a matching
-- If-None-Match (weak comparison: W/"N", lists and * match too). Reads that
-- also depend on this node's own view carry no ETag: a state-index ETag
-- would let a cache keep an answer that changed with the index unchanged.
-- Large bodies (/cluster, /partitions) are encoded once per state index.
-- Every GET route answers HEAD too (clusterkit.http).
local http = require "clusterkit.http"
local json = require "clusterkit.json"
local attrs = require "clusterkit.attrs"
local membership = require "clusterkit.membership"
local detector = require "clusterkit.detector"
local core = require "clusterkit.core"
local metrics = require "clusterkit.metrics"
local procstat = require "clusterkit.procstat"

local M = {}

local MAX_WAIT = 600

-- Blocking queries (like Consul's): ?index=N&wait=30s holds the request
-- until the state index exceeds N or the wait ends. Returns true to go on,
-- false when it answered 400.
local function block(node, req, res)
  local q = req.query
  if q.index == nil then
    if q.wait ~= nil then
      res:error(400, "BAD_REQUEST", "wait needs index")
      return false
    end
    return true
  end
  local index = tonumber(q.index)
  if not index or index < 0 or index ~= math.floor(index) or index > 2 ^ 53 then
    res:error(400, "BAD_REQUEST", "index must be a non-negative integer")
    return false
  end
  local wait = 30
  if q.wait ~= nil then
    local n, unit = tostring(q.wait):match("^(%d+%.?%d*)(%a*)$")
    local scale = ({[""] = 1, s = 1, ms = 0.001, m = 60})[unit or ""]
    wait = n and scale and tonumber(n) * scale
    if not wait or wait > MAX_WAIT then
      res:error(400, "BAD_REQUEST", "wait must be a duration up to " .. MAX_WAIT .. "s (e.g. 30s, 500ms)")
      return false
    end
  end
  if node:state_index() <= index then
    node:wait_for_change(index, wait)
  end
  return true
end

local tonumber, ipairs, format = tonumber, ipairs, string.format

local function etag_of(node)
  return '"' .. format("%d", node:state_index()) .. '"'
end

-- The current ETag, or nil after answering 304 to a matching If-None-Match.
-- Call it only once the answer would otherwise be a 200 (RFC 9110 §13.2.1),
-- so that "*" is not answered 304 when there is nothing to send.
local function fresh_etag(node, req, res)
  local etag = etag_of(node)
  -- req:header gives the first line only; repeated lines are one list, and
  -- req.headers joins them (built only when the header is there at all).
  if req:header("If-None-Match") ~= nil and http.etag_matches(req.headers["if-none-match"], etag) then
    res:header("ETag", etag):status(304):send("")
    return nil
  end
  return etag
end

-- Serves a cached JSON body for the current state index, with ETag; C
-- serves it too (http.lua fast_body) until the state or the leader changes.
local function cached(node, name, build)
  local cache = node._api_cache
  if not cache then
    cache = {}
    node._api_cache = cache
  end
  return function(req, res)
    if not block(node, req, res) then
      return
    end
    local etag = etag_of(node)
    local hit = cache[name]
    if not hit or hit.etag ~= etag then
      local v, err = build(req)
      if not v then
        return res:error(503, err.code, err.message)
      end
      hit = {etag = etag, body = json.encode(v)}
      cache[name] = hit
    end
    if not fresh_etag(node, req, res) then return end
    -- Like Consul's X-Consul-KnownLeader: a node that knows no leader (the
    -- minority side of a split) may hold a table the cluster has moved past;
    -- clusterkit.client moves to another node when it reads "false".
    local leader = node:_knows_leader()
    res:header("X-CK-Known-Leader", leader and "true" or "false")
    res:header("ETag", etag):header("Content-Type", "application/json")
    node.http:fast_put_body(name, node:_view().index, hit.body, leader)
    return res:send(hit.body)
  end
end

local function node_json(n)
  return attrs.to_json(n, {
    id = n.id, name = n.name, ip = n.ip, status = n.status, services = n.services,
    zone = n.zone, weight = n.weight, raft_addr = n.raft_addr,
  })
end

local function partition_json(p)
  return {id = p.id, primary_node = p.primary_node, replica_nodes = json.array(p.replica_nodes), epoch = p.epoch}
end

local function cluster_json(node)
  local c = node:cluster()
  local nodes = {}
  for i, n in ipairs(c.nodes) do
    nodes[i] = node_json(n)
  end
  local parts = {}
  for id, p in pairs(c.partition_map.partitions) do
    parts[id] = partition_json(p)
  end
  local hc = node:hash_config()
  return {
    cluster = {
      id = c.id, name = c.name, nodes = json.array(nodes),
      partition_map = {partitions = parts}, config = c.config, feature_level = c.feature_level,
    },
    hash_config = hc or json.null,
    state_index = c.state_index,
  }
end
M.cluster_json = cluster_json

local function ready_state(node)
  local v = node:_view()
  return node:_ready(), v, v.by_id[node.id], node:leader()
end

function M.install(node)
  local srv = node.http
  local key_cache = {}

  -- No ETag: liveness is this process's own (leaving, removed), not a
  -- function of the state index.
  srv:route("GET", "/health", function(_, res)
    local gone = node:_gone()
    if gone then
      -- Removed (or leaving): a load balancer must stop sending traffic here.
      return res:json({status = gone, node_id = node.id,
                       reason = node.standing.removed_why or "leaving the cluster"}, 503)
    end
    return res:json({status = "healthy", node_id = node.id})
  end)

  -- No ETag: readiness includes whether a leader is known, which changes
  -- without a state change.
  srv:route("GET", "/ready", function(_, res)
    local ok, v, me, leader = ready_state(node)
    local body = {ready = ok, node_id = node.id, initialized = v.ready, registered = me ~= nil,
                  leader = leader and leader.leader_id or json.null, membership = node:_gone() or "member"}
    return res:json(body, ok and 200 or 503)
  end)

  -- No ETag: raft's term and indexes move without a state change.
  srv:route("GET", "/health/detailed", function(req, res)
    local ok, v, me, leader = ready_state(node)
    local stats = node:consensus_stats()
    local counts = {}
    for _, n in ipairs(v.nodes) do
      counts[n.status] = (counts[n.status] or 0) + 1
    end
    return res:json({
      status = ok and "healthy" or "degraded", node_id = node.id,
      me = me and node_json(me) or json.null,
      leader = leader and leader.leader_id or json.null,
      raft = stats, nodes = {total = #v.nodes, by_status = counts},
      partitions = v.partitions or 0, state_index = v.index,
      rebalance_paused = node:rebalance_paused(),
    })
  end, {auth = "read"})

  srv:route("GET", "/cluster", cached(node, "/cluster", function()
    return cluster_json(node)
  end), {auth = "read"})

  srv:route("GET", "/partitions", cached(node, "/partitions", function()
    local parts, err = node:partitions()
    if not parts then return nil, err end
    local out = {}
    for i, p in ipairs(parts) do
      out[i] = partition_json(p)
    end
    return {partitions = json.array(out), total = #out}
  end), {auth = "read"})

  srv:route("GET", "/partitions/stats", cached(node, "/partitions/stats", function()
    return node:partition_stats()
  end), {auth = "read"})
  if not node.opts.read_token then
    for _, path in ipairs({"/cluster", "/partitions", "/partitions/stats"}) do srv:fast_body(path) end
  end

  srv:route("GET", "/partitions/key", function(req, res)
    local key = req.query.key
    if key == nil or key == "" then
      return res:error(400, "BAD_REQUEST", "query parameter 'key' is required")
    end
    if #key > 4096 then
      return res:error(400, "BAD_REQUEST", "key longer than 4096 bytes")
    end
    local p, err = node:partition_for_key(key)
    if not p then
      return res:error(503, err.code, err.message)
    end
    -- Everything but the key depends only on the partition: encode it once
    -- per state index and partition, and splice the key in. The answer is a
    -- function of the state (and of the key, which is in the URL).
    local v = node:_view()
    local cache = key_cache
    if cache.index ~= v.index or cache.view ~= v then
      cache = {index = v.index, view = v,
               headers = {["Content-Type"] = "application/json", ETag = etag_of(node)}}
      key_cache = cache
    end
    if not fresh_etag(node, req, res) then return end
    local tail = cache[p.index]
    if not tail then
      local list = {}
      for i, n in ipairs(node:nodes_for_key(key)) do
        list[i] = {id = n.id, name = n.name, ip = n.ip, status = n.status,
                   role = i == 1 and "primary" or "replica"}
      end
      tail = json.encode({
        partition = partition_json(p), partition_id = p.id, primary = p.primary_node,
        replicas = json.array(p.replica_nodes), nodes = json.array(list),
      }):sub(2) -- Without its "{": the key goes first.
      cache[p.index] = tail
    end
    srv:fast_put(v, p.index, tail) -- C answers this partition's keys from now on.
    res._headers = cache.headers
    return res:send('{"key":' .. json.encode(json.utf8_safe(key)) .. "," .. tail)
  end, {auth = "read"})
  -- A read token is checked here in Lua; without one, C answers what it can
  -- (runtime/ck_keyroute.h) and node.lua resets it on every state change.
  if not node.opts.read_token then srv:fast_key("/partitions/key") end

  srv:route("GET", "/nodes", function(req, res)
    local q = req.query
    local limit, offset = 100, 0
    if q.limit ~= nil then
      limit = tonumber(q.limit)
      if not limit or limit ~= math.floor(limit) or limit < 1 or limit > 10000 then
        return res:error(400, "BAD_REQUEST", "limit must be an integer from 1 to 10000")
      end
    end
    if q.offset ~= nil then
      offset = tonumber(q.offset)
      if not offset or offset ~= math.floor(offset) or offset < 0 or offset > 1e9 then
        return res:error(400, "BAD_REQUEST", "offset must be a non-negative integer")
      end
    end
    if not block(node, req, res) then return end
    local etag = fresh_etag(node, req, res)
    if not etag then return end
    local all = node:cluster().nodes
    local out = {}
    for i = offset + 1, math.min(#all, offset + limit) do
      out[#out + 1] = node_json(all[i])
    end
    res:header("ETag", etag)
    return res:json({nodes = json.array(out), total = #all, limit = limit, offset = offset})
  end, {auth = "read"})

  -- No ETag: leadership and the term change without a state change.
  srv:route("GET", "/consensus/leader", function(req, res)
    local l, err = node:leader()
    if not l then
      return res:error(503, err.code, err.message)
    end
    return res:json(l)
  end, {auth = "read"})

  -- No ETag: raft's own counters.
  srv:route("GET", "/consensus/stats", function(req, res)
    return res:json(node:consensus_stats())
  end, {auth = "read"})

  -- The raft configuration as this node knows it: every server's role
  -- (voter, standby, spare) by node id. On the leader, "recent" says whether
  -- the server answered within the last election timeout. No ETag: the
  -- configuration changes through raft, not through the state index.
  srv:route("GET", "/consensus/configuration", function(req, res)
    local c = node._core
    if not c or c:closed() then
      return res:error(503, "NOT_READY", "raft is not running on this node")
    end
    local ids = {}
    for _, n in ipairs(node:_view().nodes) do ids[n.raft_id] = n.id end
    local out = {}
    for i, s in ipairs(c:configuration()) do
      out[i] = {node_id = ids[s.id] or json.null, raft_id = s.id, raft_addr = s.address, role = s.role,
                recent = s.recent == nil and json.null or s.recent}
    end
    return res:json({servers = json.array(out), node_id = node.id})
  end, {auth = "read"})

  -- Rebalancing (leader only; followers answer like /join: 307 with the
  -- leader's address).
  local function leader_only(res, err)
    if err.code == "NOT_LEADER" then
      return membership.not_leader(node, res)
    end
    return res:error(500, err.code, err.message)
  end
  srv:route("POST", "/rebalance", function(req, res)
    local out, err = node:rebalance()
    if not out then return leader_only(res, err) end
    return res:json(out)
  end, {auth = "write"})
  -- No ETag: the plan is what this node's placement policy (Lua, with a
  -- time limit and a built-in fallback) answers now; a slow policy or a
  -- restart with another policy changes it at the same state index.
  srv:route("GET", "/rebalance/plan", function(req, res)
    local plan, err = node:plan_rebalance()
    if not plan then return res:error(503, err.code, err.message) end
    for _, m in ipairs(plan.moves) do
      m.from, m.to = json.array(m.from), json.array(m.to)
    end
    plan.moves = json.array(plan.moves)
    plan.min_moves = plan.min_moves or json.null
    return res:json(plan)
  end, {auth = "read"})
  for _, action in ipairs({"pause", "resume"}) do
    srv:route("POST", "/rebalance/" .. action, function(req, res)
      local ok, err = node[action .. "_rebalance"](node)
      if not ok then return leader_only(res, err) end
      return res:json({status = "ok", rebalance_paused = action == "pause"})
    end, {auth = "write"})
  end

  -- POST /sync: in the Go library nodes push state to each other; here the
  -- state travels through raft, so sync answers with the state index that
  -- a caller can compare or wait on.
  srv:route("POST", "/sync", function(_, res)
    return res:json({status = "ok", state_index = node:state_index(), node_id = node.id})
  end, {auth = "read"})

  -- No ETag: counters and raft indexes move with every request and tick.
  srv:route("GET", "/metrics", function(req, res)
    return res:header("Content-Type", "text/plain; version=0.0.4"):send(M.metrics(node))
  end, {auth = "read"})
end

local raft_states = {unavailable = 0, follower = 1, candidate = 2, leader = 3}

-- Samples {labels, value} of a counter kept as {[label value] = n}, sorted.
local function labelled(label, counts)
  local keys, samples = {}, {}
  for k in pairs(counts) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do
    samples[i] = {"{" .. label .. '="' .. metrics.escape(k) .. '"}', counts[k]}
  end
  return samples
end

local MONTHS = {Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
  Nov = 11, Dec = 12}

--- Unix time of OpenSSL's "Mon DD HH:MM:SS YYYY GMT" (a certificate's
-- notAfter), or nil. Pure: days from the civil date, no local time zone.
function M.cert_time(s)
  local mon, d, hh, mm, ss, y = tostring(s):match("^(%a%a%a) +(%d+) (%d%d):(%d%d):(%d%d) (%d%d%d%d) GMT$")
  local m = MONTHS[mon]
  if not m then return nil end
  y = tonumber(y) - (m <= 2 and 1 or 0)
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m + (m > 2 and -3 or 9)) + 2) / 5) + tonumber(d) - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

--- Prometheus text format.
function M.metrics(node)
  local s = node:consensus_stats()
  local out = {}
  local function add(name, help, kind, samples)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for _, x in ipairs(samples) do
      out[#out + 1] = name .. (x[1] or "") .. " " .. format("%.17g", x[2])
    end
  end
  add("clusterkit_raft_term", "Current raft term.", "gauge", {{nil, s.term}})
  add("clusterkit_raft_state", "Raft state (0 unavailable, 1 follower, 2 candidate, 3 leader).", "gauge",
    {{nil, raft_states[s.state] or 0}})
  add("clusterkit_raft_commit_index", "Raft commit index.", "gauge", {{nil, s.commit_index}})
  add("clusterkit_raft_applied_index", "Raft last applied index.", "gauge", {{nil, s.applied_index}})
  add("clusterkit_raft_last_log_index", "Raft last log index.", "gauge", {{nil, s.last_log_index}})
  add("clusterkit_state_index", "Raft index of the last state change.", "gauge", {{nil, s.state_index}})
  local v = node:_view()
  local by = {}
  for _, n in ipairs(v.nodes) do
    by[n.status] = (by[n.status] or 0) + 1
  end
  local samples = {}
  for _, st in ipairs(detector.STATUSES) do
    samples[#samples + 1] = {'{status="' .. st .. '"}', by[st] or 0}
  end
  add("clusterkit_nodes", "Nodes by status.", "gauge", samples)
  local ps = node:partition_stats()
  samples = {}
  if ps then
    for id, c in pairs(ps.partitions_per_node) do
      samples[#samples + 1] = {'{node="' .. id .. '",role="primary"}', c}
      samples[#samples + 1] = {'{node="' .. id .. '",role="replica"}', ps.replicas_per_node[id] or 0}
    end
  end
  add("clusterkit_partitions", "Partitions per node and role.", "gauge", samples)
  samples = {}
  for route, by_status in pairs(node.http:route_counts()) do
    for code, c in pairs(by_status) do
      samples[#samples + 1] = {'{route="' .. route .. '",code="' .. code .. '"}', c}
    end
  end
  add("clusterkit_http_requests_total", "HTTP requests by route and status.", "counter", samples)
  metrics.histogram(out, "clusterkit_http_request_duration_seconds",
    "HTTP request latency by route, from dispatch to the answer (blocking queries include their wait).",
    node.http.latency)
  -- raft's figures are kept in C (ck_node_counters): no Lua runs in raft's callbacks.
  local c = node._core
  local rc = c and not c:closed() and c:counters()
  if not rc then
    local none = core.histogram():read()
    rc = {commit = none, apply = none, elections = 0, elections_won = 0, votes_after_lease = 0,
      leaders_lost = 0, resends = 0, results_held = 0}
  end
  metrics.histogram(out, "clusterkit_raft_commit_duration_seconds",
    "Leader: time from proposing a command to raft reporting it committed and applied.", rc.commit)
  metrics.histogram(out, "clusterkit_raft_apply_duration_seconds",
    "Time the replicated state machine spent applying one committed command.", rc.apply)
  add("clusterkit_raft_elections_total", "Times this node became a raft candidate (a single voter too).",
    "counter", {{nil, rc.elections}})
  add("clusterkit_raft_elections_won_total", "Times this node became the raft leader.", "counter",
    {{nil, rc.elections_won}})
  add("clusterkit_raft_votes_after_lease_total", "Vote requests this follower answered although it knew a "
    .. "leader, because it had not heard from that leader for an election timeout (leader presumed lost).",
    "counter", {{nil, rc.votes_after_lease}})
  add("clusterkit_raft_leaders_lost_total", "Times the leader closed this follower's raft connection to it "
    .. "(its process died): the follower then starts an election without waiting the election timeout.",
    "counter", {{nil, rc.leaders_lost}})
  add("clusterkit_raft_resends_total", "Small raft messages (votes, append results) sent again because their "
    .. "write failed on a connection the peer had closed.", "counter", {{nil, rc.resends}})
  add("clusterkit_raft_results_held_total", "Leader: replication answers held back until it stored the first "
    .. "entry of its term, so that raft 0.15 commits no entry of an older term by counting replicas.",
    "counter", {{nil, rc.results_held}})
  add("clusterkit_raft_refused_connections_total", "Raft connections refused by the token handshake (auth) "
    .. "or by TLS (a certificate not from TLS_CA, a wrong name, plaintext on a TLS port).", "counter",
    {{'{reason="auth"}', rc.auth_failures or 0}, {'{reason="tls"}', rc.tls_failures or 0}})
  local hs = node.http:stats()
  add("clusterkit_http_fast_path_total", "GET /partitions/key requests answered in C from the cached answers "
    .. "of the current state (answered; also in clusterkit_http_requests_total), or handed to the Lua handler "
    .. "(passed: nothing cached for the partition yet, a conditional request, an unusual key).", "counter",
    {{'{result="answered"}', hs.fast_answered or 0}, {'{result="passed"}', hs.fast_passed or 0}})
  local t = node._tls
  if t then
    add("clusterkit_http_tls_handshakes_total", "HTTPS handshakes completed.", "counter",
      {{nil, hs.tls_handshakes or 0}})
    add("clusterkit_http_tls_failures_total", "HTTPS connections refused by TLS (bad handshake, no or "
      .. "untrusted client certificate, plain HTTP on the HTTPS port).", "counter", {{nil, hs.tls_failures or 0}})
    add("clusterkit_tls_certificate_expiry_timestamp_seconds", "When the node's TLS certificate (TLS_CERT, "
      .. "as last loaded) expires, in Unix time.", "gauge", {{nil, M.cert_time(t.info.not_after) or 0}})
  end
  add("clusterkit_membership_changes_total", "Committed membership changes this node applied: members that "
    .. "joined, left (status left), were removed, changed status, or changed raft role (voter, standby).",
    "counter", labelled("kind", node.membership_changes))
  metrics.histogram(out, "clusterkit_hook_duration_seconds", "Hook handler runs by event, start to end "
    .. "(waits included).", node.hook_time)
  add("clusterkit_hook_errors_total", "Hook handlers that raised, by event.", "counter",
    labelled("hook", node.hook_errors))
  metrics.histogram(out, "clusterkit_placement_policy_duration_seconds", "Runs of the Lua placement policy.",
    node.reconciler.policy_time:read())
  add("clusterkit_placement_policy_errors_total", "Lua placement policy runs that failed (error, timeout, "
    .. "yielded, invalid answer); each one fell back to the built-in policy.", "counter",
    labelled("reason", node.reconciler.policy_errors))
  local det = node.detector
  add("clusterkit_detector_stalls_total",
    "Leader ticks that found the loop had stalled (every grace period restarted).", "counter",
    {{nil, det and det.stalls or 0}})
  add("clusterkit_detector_held_total",
    "Leader ticks that held liveness changes for want of a quorum of voters heard from.", "counter",
    {{nil, det and det.held or 0}})
  add("clusterkit_placement_fallbacks_total",
    "Placements where the Lua policy failed (error, timeout, invalid answer) and the built-in one was used.",
    "counter", {{nil, node.reconciler.policy_fallbacks}})
  add("clusterkit_rebalance_moved_slots_total", "Partition slots moved by tables this node committed as leader.",
    "counter", {{nil, node.reconciler.rebalance_moves}})
  add("clusterkit_rebalance_paused", "1 while rebalancing is paused (maintenance mode).", "gauge",
    {{nil, node:rebalance_paused() and 1 or 0}})
  add("clusterkit_feature_level", "The cluster's committed feature level (raised once every member's build "
    .. "applies it; see README, Rolling upgrades).", "gauge", {{nil, node:_view().feature_level}})
  add("clusterkit_leader_changes_total", "Leaders this node has seen take over (a new leader id).", "counter",
    {{nil, node.leader_changes or 0}})
  add("clusterkit_build_info", "clusterkit's version (the value is always 1).", "gauge",
    {{'{version="' .. tostring(core.version):gsub('[\\"\n]', "") .. '",luajit="'
      .. tostring(jit and jit.version or ""):gsub('[\\"\n]', "") .. '"}', 1}})
  local p = procstat.read()
  for _, m in ipairs({
    {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter", p.cpu_seconds},
    {"process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", p.resident_bytes},
    {"process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", p.virtual_bytes},
    {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge",
     p.start_time_seconds},
    {"process_open_fds", "Number of open file descriptors.", "gauge", p.open_fds},
    {"process_max_fds", "Maximum number of open file descriptors.", "gauge", p.max_fds},
  }) do
    if m[4] then add(m[1], m[2], m[3], {{nil, m[4]}}) end
  end
  return table.concat(out, "\n") .. "\n"
end

return M
