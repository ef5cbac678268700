--- Node options: from the table given to clusterkit.new, else from the Go
-- ClusterKit's environment variables (same names), else defaults.
--
-- Misuse (a wrong type, an impossible value, a malformed address) raises
-- with the calling function's name; the message names the option and the
-- environment variable it may have come from.
local M = {}

-- name = {env, kind, default}
local spec = {
  node_id            = {"NODE_ID", "string", "node-1"},
  node_name          = {"NODE_NAME", "string", nil},       -- default: node_id
  http_addr          = {"HTTP_ADDR", "addr", ":8080"},
  raft_addr          = {"RAFT_ADDR", "addr", "127.0.0.1:9001"},
  join_addr          = {"JOIN_ADDR", "string", nil},
  bootstrap          = {"BOOTSTRAP", "boolean", nil},      -- default: no join_addr
  data_dir           = {"DATA_DIR", "string", nil},        -- default: ./data/<node_id>
  cluster_name       = {"CLUSTER_NAME", "string", "my-cluster"},
  partition_count    = {"PARTITION_COUNT", "integer", 16, 1, 65536},
  replication_factor = {"REPLICATION_FACTOR", "integer", 3, 1, 16},
  sync_interval      = {"SYNC_INTERVAL", "duration", 5},
  zone               = {"ZONE", "string", ""},
  weight             = {"WEIGHT", "integer", 1, 0, 1000000},
  services           = {"SERVICES", "services", nil},
  token              = {"CLUSTER_TOKEN", "string", nil},
  read_token         = {"READ_TOKEN", "string", nil},
  hash_algorithm     = {"HASH_ALGORITHM", "string", "fnv1a64"},
  hash_tags          = {"HASH_TAGS", "boolean", nil},     -- default: on for fnv1a64, off for md5
  advertise_http     = {"ADVERTISE_HTTP", "addr", nil},
  election_timeout   = {"ELECTION_TIMEOUT", "duration", 0.3},
  heartbeat_timeout  = {"HEARTBEAT_TIMEOUT", "duration", 0.05},
  start_timeout      = {"START_TIMEOUT", "duration", 30},
  voters             = {"VOTERS", "integer", 3, 1, 15},
  heartbeat_interval = {"HEARTBEAT_INTERVAL", "duration", 0.2},
  suspect_after      = {"SUSPECT_AFTER", "duration", 0.75},
  down_after         = {"DOWN_AFTER", "duration", 1.5},
  rebalance_delay    = {"REBALANCE_DELAY", "duration", 30},
  policy_timeout     = {"POLICY_TIMEOUT", "duration", 2},
  removed_linger     = {"REMOVED_LINGER", "duration", 10},
  -- Raft snapshots: taken every SNAPSHOT_THRESHOLD entries (default 8192),
  -- keeping SNAPSHOT_TRAILING entries after one (default 128) for
  -- followers that are only a little behind; one further behind gets the
  -- snapshot.
  snapshot_threshold = {"SNAPSHOT_THRESHOLD", "integer", nil, 16, 1000000000},
  snapshot_trailing  = {"SNAPSHOT_TRAILING", "integer", nil, 1, 1000000000},
  placement          = {"PLACEMENT", "string", nil},
  log_level          = {"CK_LOG_LEVEL", "string", "info"},
  log_format         = {"LOG_FORMAT", "string", "text"},
  access_log         = {"ACCESS_LOG", "boolean", false},
  kv_max_value       = {"KV_MAX_VALUE", "integer", 1048576, 0, 16777216},
  kv_max_bytes       = {"KV_MAX_BYTES", "integer", 67108864, 0, 1099511627776},
  -- 1 MiB + 64 KiB: room for a KV write of kv_max_value (1 MiB) forwarded
  -- from a follower with its framing.
  max_body_size      = {"MAX_BODY_SIZE", "integer", 1114112, 0, 1073741824},
  max_header_size    = {"MAX_HEADER_SIZE", "integer", 16384, 256, 1048576},
  max_connections    = {"MAX_CONNECTIONS", "integer", 1024, 1, 1000000},
  header_timeout     = {"HEADER_TIMEOUT", "duration", 10},
  body_timeout       = {"BODY_TIMEOUT", "duration", 30},
  idle_timeout       = {"IDLE_TIMEOUT", "duration", 60},
  -- TLS for HTTP and raft (clusterkit.tls): on when tls_cert is set.
  tls_cert           = {"TLS_CERT", "string", nil},
  tls_key            = {"TLS_KEY", "string", nil},
  tls_ca             = {"TLS_CA", "string", nil},
  tls_verify_peers   = {"TLS_VERIFY_PEERS", "boolean", false},
}
-- One option per operator attribute of a node (runtime/ck_node_attrs.h).
for _, a in ipairs(require("clusterkit.attrs").operator) do
  spec[a.name] = spec[a.name] or {a.env, "string", ""}
end
M.spec = spec

-- Options whose value is one of a few words (any case; resolved lower-case).
local choices = {
  log_level = {"debug", "info", "warn", "error"},
  log_format = {"text", "json"},
}

--- Parses "host:port", ":port" or "[v6]:port" into host, port (or nil, why).
function M.parse_addr(s)
  if type(s) ~= "string" then
    return nil, "must be a string like host:port"
  end
  local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then
    host, port = s:match("^([^:%[%]]*):(%d+)$")
  end
  port = tonumber(port)
  if not host or not port or port > 65535 then
    return nil, "must look like host:port (got " .. s .. ")"
  end
  return host, port
end

--- Why `id` cannot be a node id (a message), or nil. A node id names the
-- default data dir (./data/<node_id>) and appears in URLs and logs, so it
-- must be one safe path component: 1..255 bytes, no '/', '\\', spaces or
-- control characters, not starting with '.' (which also refuses . and ..).
function M.bad_node_id(id)
  if type(id) ~= "string" or id == "" then
    return "must not be empty"
  end
  if #id > 255 then
    return "must be at most 255 bytes long"
  end
  if id:find("[%c%s/\\]") then
    return "must not contain '/', '\\', spaces or control characters"
  end
  if id:sub(1, 1) == "." then
    return "must not start with '.'"
  end
end

local function parse_duration(v)
  if type(v) == "number" then
    return v >= 0 and v or nil
  end
  if type(v) ~= "string" then
    return nil
  end
  local n, unit = v:match("^(%d+%.?%d*)(%a*)$")
  n = tonumber(n)
  local scale = ({[""] = 1, s = 1, ms = 0.001, m = 60, h = 3600})[unit]
  if not n or not scale then
    return nil
  end
  return n * scale
end

local function parse_services(v)
  if type(v) == "table" then
    for k, a in pairs(v) do
      if type(k) ~= "string" or type(a) ~= "string" then
        return nil
      end
    end
    return v
  end
  if type(v) ~= "string" then
    return nil
  end
  local out = {}
  for item in v:gmatch("[^,]+") do
    local k, a = item:match("^%s*([^=%s]+)%s*=%s*(%S+)%s*$")
    if not k then
      return nil
    end
    out[k] = a
  end
  return out
end

local convert = {
  string = function(v) return type(v) == "string" and v or nil end,
  addr = function(v)
    if type(v) == "string" and M.parse_addr(v) then return v end
  end,
  boolean = function(v)
    if type(v) == "boolean" then return v end
    if v == "true" or v == "1" or v == "yes" then return true end
    if v == "false" or v == "0" or v == "no" or v == "" then return false end
  end,
  integer = function(v)
    v = tonumber(v)
    if v and v == math.floor(v) then return v end
  end,
  duration = parse_duration,
  services = parse_services,
}

--- Resolves `opts` (a table or nil) into a complete, checked option set.
-- `getenv` defaults to os.getenv; `fn` names the caller in errors.
function M.resolve(opts, fn, getenv)
  fn = fn or "clusterkit.new"
  getenv = getenv or os.getenv
  if opts ~= nil and type(opts) ~= "table" then
    error(fn .. ": options must be a table", 3)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not spec[k] then
      error(fn .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  -- Which options the operator gave (by option or environment), as
  -- opposed to defaults: a joining node reports only these to the cluster,
  -- so that a default never conflicts with a cluster created otherwise.
  local explicit = {}
  local o = {}
  for name, s in pairs(spec) do
    local env, kind, default, lo, hi = s[1], s[2], s[3], s[4], s[5]
    local raw, from = opts[name], "option " .. name
    if raw == nil then
      raw, from = getenv(env), "environment variable " .. env
      if raw == "" then raw = nil end
    end
    local v = default
    if raw ~= nil then
      explicit[name] = true
      v = convert[kind](raw)
      if v == nil then
        error(string.format("%s: %s has an invalid value (%s expected): %s", fn, from, kind, tostring(raw)), 3)
      end
      if lo and (v < lo or v > hi) then
        error(string.format("%s: %s must be between %d and %d", fn, from, lo, hi), 3)
      end
      local words = choices[name]
      if words then
        v = v:lower()
        local known = false
        for _, w in ipairs(words) do known = known or w == v end
        if not known then
          error(string.format("%s: %s must be %s or %s, got '%s'", fn, from,
            table.concat(words, ", ", 1, #words - 1), words[#words], tostring(raw)), 3)
        end
      end
    end
    o[name] = v
  end
  local why = M.bad_node_id(o.node_id)
  if why then
    local shown = o.node_id:sub(1, 64):gsub("%c", function(c) return string.format("\\%03d", c:byte()) end)
    error(string.format('%s: node_id (NODE_ID) %s, got "%s%s"', fn, why, shown, #o.node_id > 64 and "..." or ""), 3)
  end
  o.explicit = explicit
  o.node_name = o.node_name or o.node_id
  if o.bootstrap == nil then
    o.bootstrap = o.join_addr == nil
  end
  o.data_dir = o.data_dir or ("./data/" .. o.node_id)
  if o.hash_algorithm ~= "fnv1a64" and o.hash_algorithm ~= "md5" then
    error(fn .. ": hash_algorithm (HASH_ALGORITHM) must be fnv1a64 or md5", 3)
  end
  if o.hash_tags == nil then
    o.hash_tags = o.hash_algorithm == "fnv1a64"
  end
  o.services = o.services or {}
  o.http_host, o.http_port = M.parse_addr(o.http_addr)
  local raft_host = M.parse_addr(o.raft_addr)
  if raft_host == "" or raft_host == "0.0.0.0" or raft_host:match("^[0:]+$") then
    error(fn .. ": raft_addr (RAFT_ADDR) must be host:port with a host peers can reach (not empty, "
      .. "0.0.0.0 or ::), got " .. o.raft_addr, 3)
  end
  if o.http_host == "" then
    o.http_host = "0.0.0.0"
  end
  o.raft_host = raft_host
  if (o.tls_cert == nil) ~= (o.tls_key == nil) then
    error(fn .. ": tls_cert (TLS_CERT) and tls_key (TLS_KEY) go together: set both, or neither for plain HTTP", 3)
  end
  if o.tls_ca and not o.tls_cert then
    error(fn .. ": tls_ca (TLS_CA) needs tls_cert (TLS_CERT) and tls_key (TLS_KEY): "
      .. "a node's own certificate turns TLS on", 3)
  end
  if o.tls_verify_peers and not o.tls_ca then
    error(fn .. ": tls_verify_peers (TLS_VERIFY_PEERS) needs tls_ca (TLS_CA), the CA that signs peers' "
      .. "certificates", 3)
  end
  if not (o.heartbeat_interval > 0 and o.heartbeat_interval < o.suspect_after
          and o.suspect_after < o.down_after) then
    error(fn .. ": need 0 < heartbeat_interval < suspect_after < down_after", 3)
  end
  -- The log format is the process's (see clusterkit.log): a node that asks
  -- for one, by option or LOG_FORMAT, sets it once its options are valid.
  if opts.log_format ~= nil or (getenv("LOG_FORMAT") or "") ~= "" then
    require("clusterkit.log").set_format(o.log_format)
  end
  return o
end

return M
