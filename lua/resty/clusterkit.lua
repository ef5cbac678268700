--- resty.clusterkit: clusterkit.client inside OpenResty / nginx-lua.
--
-- The same client (lua/clusterkit/client.lua) on nginx's cosockets, timers
-- and semaphores, with the pure-LuaJIT hasher (clusterkit.hash; md5 through
-- ngx.md5_bin). Each worker follows the cluster on its own:
--
--   init_worker_by_lua_block {
--     ck = require("resty.clusterkit").follow {addrs = "10.0.0.1:8080,10.0.0.2:8080"}
--   }
--   balancer_by_lua_block {                       -- no I/O: routing is local
--     local n = ck:primary_for_key(ngx.var.kv_key)
--     ...set_current_peer(host, port)
--   }
--
-- Needs lua-cjson and clusterkit's Lua files on lua_package_path; not
-- clusterkit.core (nothing here loads C beyond what nginx-lua provides).
local client = require "clusterkit.client"
local hash = require "clusterkit.hash"
local errors = require "clusterkit.errors"
local parse_url = require("clusterkit.url").parse
local semaphore = require "ngx.semaphore"

local ngx = ngx
local M = {}

local concat, lower, find, format = table.concat, string.lower, string.find, string.format
local tonumber, pairs = tonumber, pairs

local MAX_BODY = 64 * 1024 * 1024
local KEEPALIVE_MS, POOL = 60000, 16

-- Reads a chunked body; nil, err on a malformed or oversized one.
local function read_chunked(sock)
  local parts, total = {}, 0
  for _ = 1, 1e6 do
    local line, err = sock:receive("*l")
    if not line then return nil, err end
    local n = tonumber(line:match("^%s*(%x+)"), 16)
    if not n then return nil, "bad chunk size" end
    if n == 0 then
      repeat line = sock:receive("*l") until not line or line == ""
      return concat(parts)
    end
    total = total + n
    if total > MAX_BODY then return nil, "body too large" end
    local data
    data, err = sock:receive(n)
    if not data then return nil, err end
    parts[#parts + 1] = data
    sock:receive("*l")
  end
  return nil, "too many chunks"
end

-- One exchange on sock. Returns res, or nil, err, sent_nothing_back (the
-- server closed before the status line: a stale pooled connection).
local function exchange(sock, wire, head_only)
  local ok, err = sock:send(wire)
  if not ok then return nil, err, true end
  local line
  line, err = sock:receive("*l")
  if not line then return nil, err, err == "closed" end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "bad status line" end
  local headers = {}
  for _ = 1, 200 do
    local h
    h, err = sock:receive("*l")
    if not h then return nil, err end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = lower(k)
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  local body, keep = "", not (headers.connection and find(lower(headers.connection), "close", 1, true))
  if head_only or status == 204 or status == 304 then
    body = ""
  elseif headers["transfer-encoding"] and find(lower(headers["transfer-encoding"]), "chunked", 1, true) then
    body, err = read_chunked(sock)
    if not body then return nil, err end
  elseif headers["content-length"] then
    local n = tonumber(headers["content-length"])
    if not n or n < 0 or n > MAX_BODY then return nil, "bad content-length" end
    if n > 0 then
      body, err = sock:receive(n)
      if not body then return nil, err end
    end
  else
    body, err = sock:receive("*a")
    if not body then return nil, err end
    keep = false
  end
  return {status = status, headers = headers, body = body}, nil, nil, keep
end

--- An HTTP/1.1 request on a cosocket, in clusterkit.httpc's shape:
-- opts {method, url, headers, body, timeout (s), idempotent} -> res
-- {status, headers (lower-case names), body} or nil, err {code = CONNECT |
-- TIMEOUT | CLOSED | INVALID | PROTOCOL}. Keep-alive through nginx's
-- connection pool; a pooled connection the server had closed is retried
-- once on a fresh one when the request is idempotent (default: GET, HEAD).
function M.request(opts)
  local method = opts.method or "GET"
  local host, port, target, scheme = parse_url(opts.url)
  if not host then return nil, errors.new("INVALID", "url must look like http://host:port/path") end
  local lines = {method, " ", target, " HTTP/1.1\r\nHost: ", host, ":", tostring(port), "\r\n"}
  for k, v in pairs(opts.headers or {}) do
    k, v = tostring(k), tostring(v)
    if find(k, "[\r\n:]") or find(v, "[\r\n]") then
      return nil, errors.new("INVALID", "header " .. k .. " contains a line break")
    end
    lines[#lines + 1] = k .. ": " .. v .. "\r\n"
  end
  if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body .. "\r\n" end
  lines[#lines + 1] = "\r\n"
  if opts.body then lines[#lines + 1] = opts.body end
  local wire = concat(lines)
  local ms = math.max(1, math.floor((opts.timeout or 10) * 1000))
  local idempotent = opts.idempotent
  if idempotent == nil then idempotent = method == "GET" or method == "HEAD" end
  for _ = 1, 2 do
    local sock = ngx.socket.tcp()
    sock:settimeouts(ms, ms, ms)
    local ok, err = sock:connect(host, port)
    if not ok then
      -- Nothing was sent, whatever the cause: the client may try elsewhere.
      return nil, errors.new("CONNECT", format("connect to %s:%d: %s", host, port, tostring(err)))
    end
    local reused = (sock:getreusedtimes() or 0) > 0
    if scheme == "https" and not reused then
      -- Verified against lua_ssl_trusted_certificate (nginx.conf) and a
      -- name: opts.tls.server_name when given, else the URL's host. nginx
      -- checks names only (X509_check_host), never IP SANs, so nodes
      -- reached by IP need a name their certificates carry. A pooled
      -- connection is already past its handshake.
      local name = opts.tls and opts.tls.server_name or host
      local sess, serr = sock:sslhandshake(nil, name, true)
      if not sess then
        sock:close()
        return nil, errors.new("CONNECT", format("TLS with %s:%d: %s", host, port, tostring(serr)))
      end
    end
    local res, xerr, stale, keep = exchange(sock, wire, method == "HEAD")
    if res then
      if keep then sock:setkeepalive(KEEPALIVE_MS, POOL) else sock:close() end
      return res
    end
    sock:close()
    -- A pooled connection the server had closed: the request may have been
    -- received before the close, so only an idempotent one goes again.
    if not (reused and stale and idempotent) then
      return nil, errors.new(xerr == "timeout" and "TIMEOUT" or "CLOSED",
        format("%s %s:%d: %s", method, host, port, tostring(xerr)))
    end
  end
  return nil, errors.new("CLOSED", "connection closed")
end

-- A condition on ngx.semaphore: wait(seconds) -> value or nil, "timeout";
-- signal(value) wakes every waiter.
local function cond()
  local sema = semaphore.new(0)
  local c = {value = nil}
  function c.wait(_, seconds)
    local ok, err = sema:wait(seconds or 1e6)
    if not ok then return nil, err end
    return c.value
  end
  function c.signal(_, v)
    c.value = v
    local waiting = -sema:count()
    if waiting > 0 then sema:post(waiting) end
  end
  return c
end

local ctx = {
  request = M.request,
  now = function() ngx.update_time(); return ngx.now() end,
  sleep = ngx.sleep,
  spawn = function(fn)
    local ok, err = ngx.timer.at(0, function(premature)
      if not premature then fn() end
    end)
    if not ok then ngx.log(ngx.ERR, "resty.clusterkit: cannot start a timer: ", err) end
  end,
  cond = cond,
  hash = function(algorithm, count, tags, key)
    return hash.partition(algorithm, count, tags, key, ngx.md5_bin)
  end,
  env = os.getenv,
  exiting = ngx.worker.exiting,
}
M.ctx = ctx

--- A client on nginx's primitives (not started): clusterkit.client.new's
-- options. Returns the client, or nil, err.
function M.new(opts)
  return client.new(opts, ctx)
end

--- Creates a client and starts it from a timer (init_worker cannot yield),
-- retrying with a back-off until the cluster answers or the worker exits.
-- Returns the client at once; until its first table, route() answers
-- NOT_READY. Errors in opts raise (a configuration error).
function M.follow(opts)
  local c, err = M.new(opts)
  if not c then error("resty.clusterkit: " .. tostring(err), 2) end
  ctx.spawn(function()
    local backoff = 0.1
    while not ngx.worker.exiting() and not c.closed do
      local ok, serr = c:start()
      if ok then return end
      ngx.log(ngx.WARN, "resty.clusterkit: ", tostring(serr), "; retrying in ", backoff, " s")
      ngx.sleep(backoff)
      backoff = math.min(5, backoff * 2)
    end
  end)
  return c
end

return M
