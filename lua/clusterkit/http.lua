--- HTTP serving: a router over the C server, and the req/res objects that
-- handlers see. Each request's handler runs in its own coroutine, so a
-- handler may wait (call another node, wait for a change) without holding
-- up other connections. A handler error becomes a 500 JSON answer and a log
-- line with the traceback; nothing a handler does can crash the node.
local auth = require "clusterkit.auth"
local core = require "clusterkit.core"
local json = require "clusterkit.json"
local metrics = require "clusterkit.metrics"

local M = {}

local co_create, co_resume, co_yield, co_running = coroutine.create, coroutine.resume, coroutine.yield,
  coroutine.running
local traceback = debug.traceback
local type, tostring, pairs = type, tostring, pairs
local byte, char, gsub, find, sub, format = string.byte, string.char, string.gsub, string.find, string.sub,
  string.format

local JSON_HEADERS = {["Content-Type"] = "application/json"}

-- "%41" -> "A" for every pair of hex digits, in both cases: gsub with a
-- table replaces without calling back into Lua from C. With a function,
-- `-jv` showed the caller's trace ending at every call ("NYI: return to
-- lower frame"); gsub itself is only stitched.
local HEX = {}
for b = 0, 255 do
  local lo, up = format("%02x", b), format("%02X", b)
  HEX[lo], HEX[up] = char(b), char(b)
  HEX[sub(lo, 1, 1) .. sub(up, 2, 2)], HEX[sub(up, 1, 1) .. sub(lo, 2, 2)] = char(b), char(b)
end

--- Percent-decodes s ("+" means a space in queries).
local function unescape(s, plus)
  if plus and find(s, "+", 1, true) then
    s = gsub(s, "+", " ")
  end
  if not find(s, "%", 1, true) then
    return s
  end
  return (gsub(s, "%%(%x%x)", HEX))
end
M.unescape = unescape

--- Parses a raw query string into {name = value} (the last repeat wins).
local function parse_query(q)
  local t = {}
  local n, i = #q, 1
  while i <= n do
    local amp = find(q, "&", i, true) or n + 1
    if amp > i then
      local eq = find(q, "=", i, true)
      if eq and eq < amp then
        t[unescape(sub(q, i, eq - 1), true)] = unescape(sub(q, eq + 1, amp - 1), true)
      else
        t[unescape(sub(q, i, amp - 1), true)] = ""
      end
    end
    i = amp + 1
  end
  return t
end
M.parse_query = parse_query

local function pct_byte(c)
  return format("%%%02X", byte(c))
end

--- The request target to repeat in a redirect: the raw path (not decoded)
-- and, when there is one, "?" and the raw query. Bytes that may not stand
-- in a URI (controls, space, quotes, non-ASCII) are percent-encoded, so the
-- result is always a valid header value. A target that is not a path
-- (absolute form "http://h/x", asterisk form "*") gives "/".
local function target(path, query)
  if byte(path, 1) ~= 47 then -- "/"
    return "/"
  end
  local t = query ~= "" and path .. "?" .. query or path
  return (gsub(t, "[^%w%-%._~:/?#%[%]@!$&'()*+,;=%%]", pct_byte))
end
M.target = target

--- Parses an If-None-Match value (RFC 9110 §13.1.2): "*", or a list of
-- entity tags, each "opaque" or W/"opaque". Returns "*", or an array of the
-- opaque tags with their quotes and without W/ (what weak comparison
-- compares); nil, msg when the value is malformed. Empty list elements
-- (", ,") are skipped, as RFC 9110 §5.6.1 asks of recipients.
local function parse_etags(v)
  local star = find(v, "^[ \t]*%*[ \t]*$")
  if star then return "*" end
  local tags, i = {}, 1
  while true do
    i = find(v, "[^ \t,]", i) -- Skips whitespace and empty elements.
    if not i then return tags end
    if sub(v, i, i + 1) == "W/" then i = i + 2 end
    -- etagc: %x21 / %x23-7E / obs-text, i.e. no controls, space, DEL or '"'.
    local s, e = find(v, '^"[^"%c ]*"', i)
    if not s then
      return nil, "malformed entity tag at byte " .. i
    end
    tags[#tags + 1] = sub(v, s, e)
    i = find(v, "[^ \t]", e + 1)
    if not i then return tags end
    if byte(v, i) ~= 44 then -- ","
      return nil, "expected ',' at byte " .. i
    end
  end
end
M.parse_etags = parse_etags

--- True when the If-None-Match value v (a string or nil) matches etag under
-- weak comparison: "*", or a listed tag with the same opaque part, W/ on
-- either side ignored. A malformed value matches nothing, so the client gets
-- the full answer, which is always correct.
function M.etag_matches(v, etag)
  if v == nil then return false end
  local tags = parse_etags(v)
  if tags == "*" then return true end
  if not tags then return false end
  if sub(etag, 1, 2) == "W/" then etag = sub(etag, 3) end
  for i = 1, #tags do
    if tags[i] == etag then return true end
  end
  return false
end

-- The segments of path between slashes, empty ones skipped (what
-- gmatch("[^/]+") gives) into t from t[1]; returns their count. A loop of
-- plain finds: gmatch is not compiled, and this runs on every request.
local function split(path, t)
  local n, i, len = 0, 1, #path
  while i <= len do
    if byte(path, i) == 47 then -- "/"
      i = i + 1
    else
      local e = find(path, "/", i, true) or len + 1
      n = n + 1
      t[n] = sub(path, i, e - 1)
      i = e + 1
    end
  end
  return n
end
M.split = split

-- Scratch for split: matching never yields, so one table serves all.
local parts_scratch = {}

-- ---------------------------------------------------------------------------
-- Request and response
-- ---------------------------------------------------------------------------

local Request = {}
Request.__index = function(self, k)
  if k == "query" then
    local q = parse_query(self.raw_query)
    self.query = q
    return q
  elseif k == "headers" then
    local h = self._c:finished() and {} or self._c:headers()
    self.headers = h
    return h
  end
  return Request[k]
end

function Request:header(name)
  if self._c:finished() then return nil end
  return self._c:header(name)
end

function Request:body()
  if self._body == nil then
    self._body = self._c:finished() and "" or self._c:body()
  end
  return self._body
end

--- The body decoded as JSON: value, or nil, err.
function Request:json()
  local b = self:body()
  if b == "" then
    return nil, "empty body"
  end
  local v, err = json.decode(b)
  if v == nil then
    return nil, "invalid JSON: " .. tostring(err)
  end
  return v
end

function Request:remote()
  return not self._c:finished() and self._c:remote() or nil
end

--- The raw path and query, as a redirect repeats them (see M.target).
function Request:target()
  return target(self.path, self.raw_query)
end

local Response = {}
Response.__index = Response

--- The request this response answers.
function Response:request()
  return self._req
end

function Response:status(code)
  if type(code) ~= "number" or code < 100 or code > 999 then
    error("res:status: status must be a number from 100 to 999", 2)
  end
  self._status = code
  return self
end

function Response:header(name, value)
  if type(name) ~= "string" then
    error("res:header: name must be a string", 2)
  end
  local h = self._headers
  if not h then
    h = {}
    self._headers = h
  elseif h == JSON_HEADERS then
    h = {["Content-Type"] = "application/json"}
    self._headers = h
  end
  h[name] = value ~= nil and tostring(value) or nil
  return self
end

--- Sends body (a string) with the status and headers set so far.
function Response:send(body)
  if self.sent then
    error("res:send: response already sent", 2)
  end
  if body ~= nil and type(body) ~= "string" then
    error("res:send: body must be a string", 2)
  end
  self.sent = true
  self._server:_count(self)
  -- For HEAD the body still goes to C, which sends its Content-Length and
  -- leaves the bytes out (ck_http_format_response, CK_HTTP_FMT_HEAD).
  local ok, err = self._c:respond(self._status, self._headers, body)
  if self._server.access_log then self._server.access_log(self, self._req.method ~= "HEAD" and body or nil) end
  return ok, err
end

--- Sends v as JSON (status optional).
function Response:json(v, status)
  if status then self:status(status) end
  local body, err = json.encode(v)
  if not body then
    self._status = 500
    body = json.encode({error = {code = "INTERNAL", message = "response not encodable: " .. tostring(err)}})
  end
  local h = self._headers
  if not h then
    self._headers = JSON_HEADERS -- Shared: Response:header copies it before a change.
  elseif not h["Content-Type"] then
    h["Content-Type"] = "application/json"
  end
  return self:send(body)
end

--- Sends {"error": {"code", "message", ...}} with the given status.
function Response:error(status, code, message, extra)
  local e = {code = code, message = message}
  if extra then
    for k, v in pairs(extra) do e[k] = v end
  end
  return self:json({error = e}, status)
end

-- ---------------------------------------------------------------------------
-- Router
-- ---------------------------------------------------------------------------

local Server = {}
Server.__index = Server

--- A router bound to `node` (whose opts give the limits). Not listening yet.
function M.server(node)
  return setmetatable({node = node, exact = {}, patterns = {}, counts = {}, latency = metrics.family("route"),
                       auth_of = {}}, Server)
end

local METHODS = {GET = true, POST = true, PUT = true, DELETE = true, PATCH = true, HEAD = true, OPTIONS = true}

--- Adds a route. pattern is a path whose segments may be ":name"
-- (captured into req.params) or a final "*" (the rest, in req.params["*"]).
-- opts.auth: "write", "read" or "read_basic" (clusterkit.auth): the token
-- checked before fn runs; a request without it gets 401 and never reaches
-- fn. Without opts.auth the route is open.
function Server:route(method, pattern, fn, opts)
  if not METHODS[method] then
    error("clusterkit: route: unknown method " .. tostring(method), 3)
  end
  if type(pattern) ~= "string" or sub(pattern, 1, 1) ~= "/" then
    error("clusterkit: route: pattern must be a path starting with /", 3)
  end
  if type(fn) ~= "function" then
    error("clusterkit: route: handler must be a function", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("clusterkit: route: options must be a table", 3)
  end
  local level = opts and opts.auth
  if level ~= nil and not auth.LEVELS[level] then
    error("clusterkit: route: auth must be \"write\", \"read\" or \"read_basic\"", 3)
  end
  self.auth_of[method .. " " .. pattern] = level or false
  if level then
    local node, handler = self.node, fn
    fn = function(req, res)
      if auth.check(node, level, req, res) then return handler(req, res) end
    end
  end
  local fast = self._fast
  if method == "GET" or method == "HEAD" then
    -- An application's own route replaces the built-in one: C must not
    -- answer it any more (a reset drops what it holds; nothing refills it).
    local was = (fast and pattern == fast.path) or (self._bodies and self._bodies[pattern])
    if fast and pattern == fast.path then self._fast = nil end
    if self._bodies then self._bodies[pattern] = nil end
    if was and self._fast_on and self.c then self.c:fast_key_reset() end
  end
  if not find(pattern, "[:*]") then
    local by_path = self.exact[method]
    if not by_path then
      by_path = {}
      self.exact[method] = by_path
    end
    by_path[pattern] = fn
    return
  end
  local segs = {}
  local n = split(pattern, segs)
  local star = false
  for i = 1, n do
    if segs[i] == "*" then star = true end
  end
  self.patterns[#self.patterns + 1] = {method = method, segs = segs, nsegs = n, star = star, fn = fn,
                                       pattern = pattern}
end

local function match(route, parts, n)
  local segs, nsegs = route.segs, route.nsegs
  if not route.star and n ~= nsegs then return nil end
  local params = {}
  for i = 1, nsegs do
    local s = segs[i]
    if s == "*" then
      params["*"] = table.concat(parts, "/", i, n)
      return params
    end
    local p = parts[i]
    if i > n then return nil end
    if byte(s, 1) == 58 then -- ":"
      params[sub(s, 2)] = unescape(p)
    elseif s ~= p then
      return nil
    end
  end
  if n ~= nsegs then return nil end
  return params
end

-- Finds the handler: fn, params, route name; or nil and whether the path
-- exists for another method (405 rather than 404). HEAD without a HEAD
-- route of its own runs the GET route's handler (RFC 9110 §9.3.2: the same
-- status and headers as GET); C leaves the body out.
--- Every route as {method, pattern, auth} (auth nil: open), sorted.
function Server:routes()
  local out = {}
  for key, level in pairs(self.auth_of) do
    local m, p = key:match("^(%S+) (.*)$")
    out[#out + 1] = {method = m, pattern = p, auth = level or nil}
  end
  table.sort(out, function(a, b) return a.pattern .. a.method < b.pattern .. b.method end)
  return out
end

function Server:find(method, path)
  local fn, params, route = self:_find(method, path)
  if not fn and method == "HEAD" then
    local gfn, gparams, groute = self:_find("GET", path)
    if gfn then return gfn, gparams, groute end
  end
  return fn, params, route
end

-- Every method with a route matching path, HEAD wherever GET is, as the
-- value of an Allow header ("GET, HEAD, PUT"); nil when none matches.
function Server:allow(path)
  local seen, list = {}, {}
  local function add(m)
    if not seen[m] then
      seen[m] = true
      list[#list + 1] = m
    end
  end
  for m, paths in pairs(self.exact) do
    if paths[path] then add(m) end
  end
  local parts = {}
  local n = split(path, parts)
  for _, r in ipairs(self.patterns) do
    if match(r, parts, n) then add(r.method) end
  end
  if seen.GET then add("HEAD") end
  if #list == 0 then return nil end
  table.sort(list)
  return table.concat(list, ", ")
end

function Server:_find(method, path)
  local by_path = self.exact[method]
  local fn = by_path and by_path[path]
  if fn then
    return fn, nil, path
  end
  local pats = self.patterns
  if #pats == 0 then
    for _, paths in pairs(self.exact) do
      if paths[path] then return nil, true end
    end
    return nil, false
  end
  local parts = parts_scratch
  local n = split(path, parts)
  local other = false
  for i = 1, #pats do
    local r = pats[i]
    local params = match(r, parts, n)
    if params then
      if r.method == method then
        return r.fn, params, r.pattern
      end
      other = true
    end
  end
  for _, paths in pairs(self.exact) do
    if paths[path] then other = true end
  end
  return nil, other
end

function Server:_count(res)
  local route = res._route
  local by_status = self.counts[route]
  if not by_status then
    by_status = {}
    self.counts[route] = by_status
  end
  by_status[res._status] = (by_status[res._status] or 0) + 1
  -- Time from dispatch to the answer (a blocking query's wait included):
  -- clusterkit_http_request_duration_seconds.
  if res._t0 then self.latency:since(route, res._t0) end
end

local function run(server, fn, req, res)
  local ok, err = xpcall(fn, traceback, req, res)
  if not ok then
    server.node.log:error("handler %s %s failed: %s", req.method, req.path, tostring(err))
    if not res.sent then
      res._headers = nil
      res:error(500, "INTERNAL", "handler error")
    end
    return
  end
  if not res.sent then
    res:send("")
  end
end

-- Handlers run in worker coroutines that are reused: a worker that
-- finished its request goes back to the pool (up to POOL_MAX) instead of a
-- new coroutine per request. A handler that waits keeps its worker until
-- it is done.
local POOL_MAX = 256
local NO_PARAMS = setmetatable({}, {__newindex = function() error("req.params is read-only here", 2) end})
local pool, npool = {}, 0

local function worker()
  while true do
    local server, fn, req, res = co_yield()
    run(server, fn, req, res)
    if npool >= POOL_MAX then
      return
    end
    npool = npool + 1
    pool[npool] = co_running()
  end
end

local function take_worker()
  if npool > 0 then
    local co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    return co
  end
  local co = co_create(worker)
  co_resume(co) -- Runs to the first yield: ready for a job.
  return co
end

function Server:_dispatch(c, method, path, raw_query)
  local fn, params, route = self:find(method, path)
  local req = setmetatable({_c = c, method = method, path = path, raw_query = raw_query,
                            params = params or NO_PARAMS, node = self.node}, Request)
  local res = setmetatable({_c = c, _server = self, _status = 200, sent = false,
                            _route = route or "unmatched", _req = req}, Response)
  res._t0 = core.hrtime() -- For the latency histogram and the access log.
  if not fn then
    if params then
      res:header("Allow", self:allow(path))
      return res:error(405, "METHOD_NOT_ALLOWED", method .. " is not allowed on " .. json.utf8_safe(path))
    end
    return res:error(404, "NOT_FOUND", "no route for " .. method .. " " .. json.utf8_safe(path))
  end
  local co = take_worker()
  local ok, err = co_resume(co, self, fn, req, res)
  if not ok then
    self.node.log:error("handler coroutine: %s", tostring(err))
  end
end

-- ---------------------------------------------------------------------------
-- The key-lookup fast path (runtime/ck_keyroute.h)
-- ---------------------------------------------------------------------------

--- Lets C answer GET `path`?key=K (the route registered just before) from
-- the answers' tails that its handler hands over with :fast_put. Not used
-- with an access log (every request must reach it), nor when a later route
-- replaces this one. The owner calls :fast_reset() on every state change.
function Server:fast_key(path)
  self._fast = {path = path}
end

--- Lets C answer GET `path` (no query; the route registered just before)
-- from the body its handler hands over with :fast_put_body for the current
-- state. Same conditions as fast_key.
function Server:fast_body(path)
  self._bodies = self._bodies or {}
  self._bodies[path] = {}
end

--- The state or raft's leader changed: C passes every request to Lua until
-- the handlers hand over answers for the new state.
function Server:fast_reset()
  local f = self._fast
  if f and f.on then f.index = nil end
  -- After close (a stop) events still come: there is nothing left to reset.
  if self._fast_on and self.c then self.c:fast_key_reset() end
end

--- Hands C the body of GET `path` at state index `index`, with whether a
-- leader is known (X-CK-Known-Leader).
function Server:fast_put_body(path, index, body, known_leader)
  local b = self._bodies and self._bodies[path]
  if not (b and b.slot and self.c) then return end
  self.c:fast_body_put(b.slot, index, body, known_leader)
end

--- Hands C the tail (the answer after `{"key":K,`) of partition pidx
-- (0-based) as view v has it.
function Server:fast_put(v, pidx, tail)
  local f = self._fast
  if not (f and f.on and self.c) then return end
  if f.index ~= v.index then
    if not self.c:fast_key_prime(v.index, v.hash_algo, v.partitions, v.hash_tags) then return end
    f.index = v.index
  end
  self.c:fast_key_put(v.index, pidx, tail)
end

--- Requests by route and status: Lua's counts and the fast path's answers.
function Server:route_counts()
  if not (self._fast_on and self.c) then return self.counts end
  local st = self.c:stats()
  local extra = {}
  local f = self._fast
  if f and f.on then extra[f.path] = st.fast_answered end
  for path, n in pairs(st.fast_bodies or {}) do extra[path] = n end
  local out = {}
  for route, by in pairs(self.counts) do out[route] = by end
  for path, n in pairs(extra) do
    if n > 0 then
      local by = {}
      for code, c in pairs(out[path] or {}) do by[code] = c end
      by[200] = (by[200] or 0) + n
      out[path] = by
    end
  end
  return out
end

--- Starts listening; returns the bound port or nil, msg, code.
function Server:listen(host, port)
  local o = self.node.opts
  self.c = core.http_server({
    max_header_size = o.max_header_size, max_body_size = o.max_body_size,
    max_connections = o.max_connections,
    header_timeout_ms = o.header_timeout * 1000, body_timeout_ms = o.body_timeout * 1000,
    idle_timeout_ms = o.idle_timeout * 1000,
  }, function(c, method, path, query)
    return self:_dispatch(c, method, path, query)
  end)
  self.access_log = o.access_log and require("clusterkit.log").access(self.node) or nil
  local f = self._fast
  if f and not self.access_log then
    self.c:fast_key(f.path, self.latency:get(f.path))
    f.on = true
    self._fast_on = true
  end
  if self._bodies and not self.access_log then
    for path, b in pairs(self._bodies) do
      b.slot = self.c:fast_body(path, self.latency:get(path))
      self._fast_on = true
    end
  end
  if self.node._tls then
    self.c:set_tls(self.node._tls.server)
  end
  local bound, msg, code = self.c:listen(host, port)
  if not bound then
    self.c:close()
    self.c = nil
  end
  return bound, msg, code
end

--- New connections use TLS context `ctx` (a certificate reload).
function Server:set_tls(ctx)
  if self.c then self.c:set_tls(ctx) end
end

function Server:stats()
  return self.c and self.c:stats() or {}
end

--- Closes the server; fn() runs once every connection is gone.
function Server:close(fn)
  local c = self.c
  self.c = nil
  if c then
    c:close(fn)
  elseif fn then
    fn()
  end
end

M.JSON_HEADERS = JSON_HEADERS
return M
