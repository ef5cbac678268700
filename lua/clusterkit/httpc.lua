--- HTTP/1.1 client: clusterkit.http.request{method, url, headers, body,
-- timeout, tls} -> res {status, headers, body} | nil, err.
--
-- https:// URLs are TLS (clusterkit.core's TLS under the TCP connection):
-- the server's certificate is checked against the URL's host, with the
-- client context `tls` (core.tls_context{role = "client", ca =, cert =,
-- key =}: a cluster's own CA and, for mutual TLS, a client certificate);
-- without one, against the system's CA store.
--
-- Waits by yielding the calling coroutine (or running the loop on a plain
-- luajit's main thread). Keeps idle keep-alive connections per host:port
-- and reuses them; a reused connection that turns out closed is retried
-- once on a fresh one for idempotent methods. Responses may be
-- Content-Length, chunked or close-delimited. Errors carry a code:
-- TIMEOUT, CONNECT, PROTOCOL, CLOSED, INVALID.
local core = require "clusterkit.core"
local sched = require "clusterkit.sched"
local errors = require "clusterkit.errors"

local M = {}

local find, sub, lower, concat = string.find, string.sub, string.lower, table.concat
local tonumber, type, pairs = tonumber, type, pairs

local MAX_HEADER = 64 * 1024
local MAX_BODY = 64 * 1024 * 1024
local MAX_IDLE_PER_HOST = 16

local idle = {} -- "scheme://host:port" -> {conn, ...} (a TLS connection is per context too)
local system_tls -- The client context for https:// without opts.tls, made once.

--- Splits "http://host:port/path?q" into host, port, target.
M.parse_url = require("clusterkit.url").parse

-- A connection: the TCP handle plus a receive buffer and a waiter.
local Conn = {}
Conn.__index = Conn

local function connect(host, port, deadline, key, tls)
  local c = setmetatable({buf = {}, buflen = 0, eof = false, err = nil, key = key}, Conn)
  local ok, msg = sched.wait_timeout(deadline, function(resume)
    local tcp, err = core.tcp_connect(host, port, function(ev, data, emsg)
      if ev == "connect" then
        if emsg then
          resume(nil, emsg)
        else
          resume(true)
        end
      elseif ev == "data" then
        c.buf[#c.buf + 1] = data
        c.buflen = c.buflen + #data
        c:_wake()
      elseif ev == "eof" then
        c.eof = true
        c:_wake()
      elseif ev == "error" then
        c.err = data or emsg
        c.eof = true
        c:_wake()
      end
    end, tls)
    if not tcp then
      resume(nil, err)
      return
    end
    c.tcp = tcp
  end)
  if not ok then
    if c.tcp then c.tcp:close() end
    local where = host .. ":" .. port
    return nil, msg == "timeout" and errors.new("TIMEOUT", "connect to " .. where .. " timed out")
      or errors.new("CONNECT", "connect to " .. where .. ": " .. tostring(msg))
  end
  return c
end

function Conn:_wake()
  local w = self.waiter
  if w then
    self.waiter = nil
    w(true)
  end
end

-- Waits until more bytes arrive or the peer closes; false on timeout.
function Conn:_more(deadline)
  if self.eof then return false, "eof" end
  local left = deadline - core.hrtime() / 1e9
  if left <= 0 then return false, "timeout" end
  local ok, why = sched.wait_timeout(left, function(resume) self.waiter = resume end)
  self.waiter = nil
  if not ok then return false, why end
  return true
end

function Conn:_data()
  local s = concat(self.buf)
  self.buf = {s}
  return s
end

function Conn:_consume(n)
  local s = concat(self.buf)
  self.buf = {sub(s, n + 1)}
  self.buflen = #s - n
end

function Conn:close()
  if self.tcp then
    self.tcp:close()
    self.tcp = nil
  end
end

-- Reads one response; returns res or nil, err, retryable.
function Conn:read_response(deadline, head_only)
  -- Head
  local head_end
  while true do
    local s = self:_data()
    head_end = find(s, "\r\n\r\n", 1, true)
    if head_end then break end
    if #s > MAX_HEADER then
      return nil, errors.new("PROTOCOL", "response header too large")
    end
    local ok, why = self:_more(deadline)
    if not ok then
      if why == "timeout" then return nil, errors.new("TIMEOUT", "no response within the timeout") end
      return nil, errors.new("CLOSED", "connection closed before a response" ..
        (self.err and (": " .. self.err) or "")), #s == 0
    end
  end
  local s = self:_data()
  local head = sub(s, 1, head_end - 1)
  self:_consume(head_end + 3)
  local status = tonumber(head:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then
    return nil, errors.new("PROTOCOL", "malformed status line")
  end
  local headers = {}
  for line in head:gmatch("\r\n([^\r\n]+)") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = lower(k)
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  local res = {status = status, headers = headers}
  local keep = not (headers.connection and lower(headers.connection) == "close")
  -- Body
  local body
  if head_only or status == 204 or status == 304 or (status >= 100 and status < 200) then
    body = ""
  elseif headers["transfer-encoding"] and find(lower(headers["transfer-encoding"]), "chunked", 1, true) then
    local parts = {}
    while true do
      local d = self:_data()
      local eol = find(d, "\r\n", 1, true)
      if eol then
        local size = tonumber(d:match("^(%x+)"), 16)
        if not size then return nil, errors.new("PROTOCOL", "bad chunk size") end
        if size == 0 then
          -- Trailer section ends with an empty line.
          local tend = find(d, "\r\n\r\n", eol - 2 > 0 and eol - 2 or 1, true)
          if tend then
            self:_consume(tend + 3)
            break
          end
        elseif #d >= eol + 1 + size + 2 then
          parts[#parts + 1] = sub(d, eol + 2, eol + 1 + size)
          self:_consume(eol + 1 + size + 2)
          goto continue
        end
      end
      if self.buflen > MAX_BODY then return nil, errors.new("PROTOCOL", "body too large") end
      do
        local ok, why = self:_more(deadline)
        if not ok then
          return nil, errors.new(why == "timeout" and "TIMEOUT" or "CLOSED", "incomplete chunked body")
        end
      end
      ::continue::
    end
    body = concat(parts)
  elseif headers["content-length"] then
    local n = tonumber(headers["content-length"])
    if not n or n < 0 or n > MAX_BODY then
      return nil, errors.new("PROTOCOL", "bad Content-Length")
    end
    while self.buflen < n do
      local ok, why = self:_more(deadline)
      if not ok then
        return nil, errors.new(why == "timeout" and "TIMEOUT" or "CLOSED", "incomplete body")
      end
    end
    local d = self:_data()
    body = sub(d, 1, n)
    self:_consume(n)
  else
    while not self.eof do
      local ok, why = self:_more(deadline)
      if not ok and why == "timeout" then
        return nil, errors.new("TIMEOUT", "incomplete body")
      end
      if self.buflen > MAX_BODY then return nil, errors.new("PROTOCOL", "body too large") end
    end
    body = self:_data()
    keep = false
  end
  res.body = body
  return res, nil, nil, keep and not self.eof
end

local function checkout(key)
  local list = idle[key]
  while list and #list > 0 do
    local c = table.remove(list)
    if not c.eof and c.buflen == 0 then
      c.tcp:ref(true)
      return c
    end
    c:close()
  end
end

local function checkin(c)
  local list = idle[c.key]
  if not list then
    list = {}
    idle[c.key] = list
  end
  if #list >= MAX_IDLE_PER_HOST then
    c:close()
    return
  end
  c.tcp:ref(false) -- An idle pooled connection does not keep the loop alive.
  list[#list + 1] = c
end

local IDEMPOTENT = {GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true}

--- Performs one request. opts: method (GET), url, headers (table), body
-- (string), timeout (seconds, default 10), idempotent (default: by method).
-- Returns res or nil, err.
function M.request(opts)
  if type(opts) ~= "table" then
    error("clusterkit.http.request: argument must be a table", 2)
  end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not method:match("^%u+$") then
    error("clusterkit.http.request: method must be an upper-case word", 2)
  end
  local host, port, target, scheme = M.parse_url(opts.url)
  if not host then
    return nil, errors.new("INVALID", "url must look like http://host:port/path: " .. tostring(opts.url))
  end
  local tls = opts.tls
  if scheme == "https" and not tls then
    if not system_tls then
      local msg
      system_tls, msg = core.tls_context {role = "client"}
      if not system_tls then return nil, errors.new("CONNECT", "TLS: " .. tostring(msg)) end
    end
    tls = system_tls
  elseif scheme == "http" then
    tls = nil
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then
    error("clusterkit.http.request: body must be a string", 2)
  end
  local timeout = opts.timeout or 10
  -- A reused connection that the server had closed is retried once on a
  -- fresh one when the request is idempotent: by method, unless the caller
  -- says otherwise (clusterkit.client passes false for a write whose
  -- repetition could land after a newer one).
  local idempotent = opts.idempotent
  if idempotent == nil then idempotent = IDEMPOTENT[method] end
  local deadline = core.hrtime() / 1e9 + timeout
  local lines = {method, " ", target, " HTTP/1.1\r\nHost: ", host, ":", tostring(port), "\r\n"}
  local has_len = false
  for k, v in pairs(opts.headers or {}) do
    k, v = tostring(k), tostring(v)
    if find(k, "[\r\n:]") or find(v, "[\r\n]") then
      return nil, errors.new("INVALID", "header " .. k .. " contains a line break")
    end
    if lower(k) == "content-length" then has_len = true end
    lines[#lines + 1] = k .. ": " .. v .. "\r\n"
  end
  if body and not has_len then
    lines[#lines + 1] = "Content-Length: " .. #body .. "\r\n"
  end
  lines[#lines + 1] = "\r\n"
  if body then lines[#lines + 1] = body end
  local wire = concat(lines)
  local key = tls and ("https://" .. host .. ":" .. port .. "#" .. tostring(tls)) or (host .. ":" .. port)

  for attempt = 1, 2 do
    local c = attempt == 1 and checkout(key)
    local reused = c ~= nil and c ~= false
    if not reused then
      local err
      c, err = connect(host, port, deadline - core.hrtime() / 1e9, key, tls)
      if not c then return nil, err end
    end
    local ok, werr = c.tcp:write(wire)
    if ok then
      local res, err, retryable, keep = c:read_response(deadline, method == "HEAD")
      if res then
        if keep then checkin(c) else c:close() end
        return res
      end
      c:close()
      if not (reused and retryable and idempotent) then
        return nil, err
      end
    else
      c:close()
      if not reused then
        return nil, errors.new("CLOSED", "write failed: " .. tostring(werr))
      end
    end
  end
  return nil, errors.new("CLOSED", "connection closed")
end

--- Closes every idle connection (tests, shutdown).
function M.close_idle()
  for key, list in pairs(idle) do
    for _, c in ipairs(list) do c:close() end
    idle[key] = nil
  end
end

return M
