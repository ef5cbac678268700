--- An nginx front for an examples/kv cluster: every /kv/<key> request is
-- proxied straight to the key's primary, chosen in balancer_by_lua from the
-- table that resty.clusterkit keeps current by push (no hop through a node
-- that is not the primary, no per-request lookup over the network).
--
-- nginx.conf calls: init_worker -> M.init(addrs); access -> M.access()
-- (header_filter -> M.header(): X-CK-Routed-To names the owner it picked)
-- (routes once per request, answers 503 JSON before the first table);
-- balancer -> M.balance() (the primary first; when nginx retries a read
-- after a connection error, the next owner, which forwards to the primary).
local rck = require "resty.clusterkit"
local balancer = require "ngx.balancer"
local cjson = require "cjson.safe"

local M = {}

-- addrs: "host:port,..." or "https://host:port,..."; tls_name: for HTTPS,
-- the name the nodes' certificates are checked against ("" for plain HTTP).
function M.init(addrs, tls_name)
  M.client = rck.follow {addrs = addrs, wait = 30,
                         tls = tls_name and tls_name ~= "" and {server_name = tls_name} or nil}
end

local function fail(status, code, message)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode({code = code, message = message}))
  return ngx.exit(status)
end

function M.access()
  -- The key as examples/kv reads it: the raw path decoded once ($uri is
  -- decoded already and has its slashes merged).
  local raw = ngx.var.request_uri:match("^/kv/([^?]*)")
  local key = ngx.unescape_uri(raw or "")
  local r, err = M.client:route(key)
  if not r then return fail(503, err.code, err.message) end
  if not r.primary then return fail(503, "NO_OWNER", r.partition .. " has no owner") end
  local peers, nodes = {}, M.client:table().nodes
  for _, id in ipairs(r.owners) do
    local n = nodes[id]
    local host, port
    if n and type(n.ip) == "string" then host, port = n.ip:match("^(.+):(%d+)$") end
    if host then peers[#peers + 1] = {id = id, host = host, port = tonumber(port)} end
  end
  if #peers == 0 then return fail(503, "NO_OWNER", r.partition .. " has no reachable owner") end
  local m = ngx.req.get_method()
  ngx.ctx.ck = {peers = peers, tries = 0, retry = m == "GET" or m == "HEAD"}
  ngx.req.set_header("X-CK-Partition", r.partition)
  ngx.req.set_header("X-CK-Epoch", tostring(r.epoch))
end

function M.balance()
  local s = ngx.ctx.ck
  -- Only reads go to the next owner after a connection error: nginx counts
  -- PUT and DELETE as idempotent, but an examples/kv write that failed
  -- after it was sent may have been applied, and a copy sent elsewhere
  -- could land after a newer write.
  if s.tries == 0 and s.retry and #s.peers > 1 then balancer.set_more_tries(#s.peers - 1) end
  s.tries = s.tries + 1
  local p = s.peers[s.tries] or s.peers[#s.peers]
  local ok, err = balancer.set_current_peer(p.host, p.port)
  if not ok then
    ngx.log(ngx.ERR, "clusterkit front: set_current_peer ", p.host, ":", p.port, ": ", err)
    return ngx.exit(502)
  end
end

-- header_filter: which owner nginx sent the request to (X-CK-Routed-To).
function M.header()
  local s = ngx.ctx.ck
  local p = s and s.peers[math.max(1, math.min(s.tries, #s.peers))]
  if p then ngx.header["X-CK-Routed-To"] = p.id end
end

return M
