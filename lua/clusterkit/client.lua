--- clusterkit.client: a smart client that is not a member.
--
-- It follows a cluster through blocking queries on GET /cluster (push: a
-- change reaches it one HTTP round trip after the node it watches applied
-- it; the Go library's smart client polls every 30 s), routes keys locally
-- with the hash configuration the cluster advertises (the same hasher as the
-- nodes: runtime/ck_hash.c), knows each partition's epoch, and sends an
-- application's requests straight to a key's primary:
--
--   local client = require "clusterkit.client"
--   local c = assert(client.new {addrs = {"127.0.0.1:8080", "127.0.0.1:8081"}})
--   assert(c:start())                          -- the first table (waits)
--   local r = c:route("user:42")               -- {partition, epoch, primary, owners}
--   local res = c:request {key = "user:42", method = "PUT", path = "/kv/user:42", body = "v"}
--
-- Watching. One coroutine holds a blocking query (?index=I&wait=W) on one
-- node. When that node fails (connection error, 5xx, a table older than one
-- already seen), the client moves to the next address it knows: the ones it
-- was given plus every member's HTTP address from the table, so losing the
-- node it watches, or every seed, does not lose the cluster. Tables only move
-- forward: an answer whose state index is below the one held is dropped
-- (a lagging or partitioned node), so routing never goes back in time. A
-- node that answers X-CK-Known-Leader: false (it knows no leader: the
-- minority side of a split, or a cluster without quorum) is left for the
-- next one too, after its newer table, if any, is taken: a node cut off
-- from the majority is left within one `wait`.
--
-- Requests. request() resolves the key's partition, sends to its primary
-- with X-CK-Partition and X-CK-Epoch (the epoch it routed with: a server can
-- fence on it), and retries (at most `retries` more times, within `timeout`):
--   - 307 with Location (NOT_LEADER): follows it once per try;
--   - 421 (NOT_PRIMARY / NOT_OWNER) and 409 STALE_EPOCH: the server refused
--     without acting; the client waits (bounded) for a newer table, then
--     routes again;
--   - a connection refused (nothing was sent), and a 503 that says nothing
--     was done (NOT_READY, SYNCING, NO_LEADER, NO_OWNER): the next owner;
-- A request whose outcome is unknown (the connection broke after it was
-- sent, or timed out) is retried only when it is idempotent (GET, HEAD, or
-- `idempotent = true`): a blind retry of a write can apply it twice or
-- reorder it after a newer one.
--
-- Every side effect comes through ctx (request, now, sleep, spawn, cond,
-- hash, and optionally env and exiting), so tests/lua/client_spec.lua drives it with a fake cluster and no
-- clock; M.new without ctx uses clusterkit's loop (clusterkit.httpc, sched),
-- and resty.clusterkit gives it nginx's cosockets, timers and semaphores.
-- Only lua-cjson and errors (pure Lua): resty.clusterkit runs this file
-- inside nginx, where clusterkit.core (and so clusterkit.json) is absent.
local decode = require("cjson.safe").decode
local errors = require "clusterkit.errors"

local M = {}

local Client = {}
Client.__index = Client

local format, type, tonumber, ipairs, pairs = string.format, type, tonumber, ipairs, pairs

local MAX_WAIT = 600         -- the nodes' own bound on ?wait
local BACKOFF_MIN, BACKOFF_MAX = 0.05, 1.0

local function real_ctx()
  local core = require "clusterkit.core"
  local sched = require "clusterkit.sched"
  local httpc = require "clusterkit.httpc"
  return {
    request = httpc.request,
    now = function() return core.hrtime() / 1e9 end,
    sleep = sched.sleep,
    spawn = sched.spawn,
    cond = sched.cond,
    hash = core.hash_partition,
  }
end

local function parse_addrs(a)
  local list = {}
  if type(a) == "string" then
    for part in a:gmatch("[^,%s]+") do list[#list + 1] = part end
  elseif type(a) == "table" then
    for _, part in ipairs(a) do
      if type(part) ~= "string" then return nil end
      list[#list + 1] = part
    end
  else
    return nil
  end
  local scheme = "http"
  for i, part in ipairs(list) do
    local s, rest = part:match("^(https?)://(.*)$")
    if s then scheme, part = s, rest end
    part = part:gsub("/$", "")
    if not part:match("^%[?[%w%.%-:]*%]?:%d+$") then return nil, part end
    list[i] = part
  end
  if #list == 0 then return nil end
  return list, nil, scheme
end

local function positive(v, name, max)
  if v == nil then return true end
  if type(v) ~= "number" or v <= 0 or (max and v > max) then
    return nil, errors.new("INVALID", format("client: %s must be a positive number of seconds%s", name,
      max and format(" up to %d", max) or ""))
  end
  return true
end

--- Creates a client (not started). opts: addrs (a list of "host:port" or
-- one comma-separated string; default CK_ADDR), token (CLUSTER_TOKEN: sent
-- as Bearer on requests), read_token (READ_TOKEN: used for /cluster when
-- set), wait (seconds a blocking query is held, default 30), timeout
-- (seconds for each call, default 5), retries (default 4), on_change
-- (fn(client, table, old_table) after a newer table is installed).
-- TLS clusters: addresses written https://host:port (then every node is
-- reached over HTTPS), and tls, a core.tls_context{role = "client", ca =,
-- cert =, key =} that trusts the cluster's CA (and presents a client
-- certificate when the nodes require one); resty.clusterkit verifies with
-- nginx's lua_ssl_trusted_certificate instead, and there tls is a table
-- {server_name = "..."}: the name to check the nodes' certificates against
-- (nginx matches DNS names only, so nodes reached by IP need one).
-- Returns the client, or nil, err (INVALID).
function M.new(opts, ctx)
  opts = opts or {}
  if type(opts) ~= "table" then
    return nil, errors.new("INVALID", "client: options must be a table")
  end
  local env = ctx and ctx.env or os.getenv
  local raw = opts.addrs or env("CK_ADDR")
  local addrs, bad, scheme = parse_addrs(raw)
  if not addrs then
    return nil, errors.new("INVALID", bad and format("client: address %q is not host:port", bad)
      or "client: addrs must list at least one node's HTTP host:port (or set CK_ADDR)")
  end
  for _, o in ipairs({{"wait", MAX_WAIT}, {"timeout"}}) do
    local ok, err = positive(opts[o[1]], o[1], o[2])
    if not ok then return nil, err end
  end
  local retries = opts.retries or 4
  if type(retries) ~= "number" or retries < 0 or retries ~= math.floor(retries) then
    return nil, errors.new("INVALID", "client: retries must be a non-negative integer")
  end
  if opts.on_change ~= nil and type(opts.on_change) ~= "function" then
    return nil, errors.new("INVALID", "client: on_change must be a function")
  end
  ctx = ctx or real_ctx()
  local token = opts.token or env("CLUSTER_TOKEN")
  local read_token = opts.read_token or env("READ_TOKEN")
  local self = setmetatable({
    ctx = ctx, seeds = addrs, token = token ~= "" and token or nil, scheme = scheme, tls = opts.tls,
    read_token = read_token ~= "" and read_token or nil,
    wait = opts.wait or 30, timeout = opts.timeout or 5, retries = retries, on_change = opts.on_change,
    tbl = nil, cur = 1, changed = ctx.cond(), running = false, closed = false,
    stats = {tables = 0, watch_errors = 0, moves = 0, retries = 0},
  }, Client)
  self.addrs = self:_candidates()
  return self
end

-- ---------------------------------------------------------------------------
-- The table: parsing GET /cluster into what routing reads
-- ---------------------------------------------------------------------------

--- Builds a routing table from a decoded GET /cluster body. Pure; returns
-- the table or nil, err (PROTOCOL) for a body that is not one.
function M.parse_cluster(body)
  if type(body) ~= "table" or type(body.cluster) ~= "table" then
    return nil, errors.new("PROTOCOL", "not a /cluster answer")
  end
  local hc, c = body.hash_config, body.cluster
  if type(hc) ~= "table" or type(hc.partition_count) ~= "number" or type(hc.algorithm) ~= "string" then
    return nil, errors.new("NOT_READY", "the cluster has no table yet")
  end
  local P = hc.partition_count
  local nodes = {}
  for _, n in ipairs(c.nodes or {}) do
    if type(n) == "table" and type(n.id) == "string" then nodes[n.id] = n end
  end
  local parts = {}
  local map = c.partition_map and c.partition_map.partitions or {}
  for i = 0, P - 1 do
    local id = "partition-" .. i
    local p = map[id]
    local owners = {}
    if type(p) == "table" then
      if type(p.primary_node) == "string" and p.primary_node ~= "" then owners[1] = p.primary_node end
      for _, r in ipairs(p.replica_nodes or {}) do owners[#owners + 1] = r end
    end
    parts[i + 1] = {partition = id, index = i, epoch = type(p) == "table" and p.epoch or 0,
                    primary = owners[1], owners = owners}
  end
  return {
    index = tonumber(body.state_index) or 0, nodes = nodes, parts = parts, partition_count = P,
    algorithm = hc.algorithm, hash_tags = hc.hash_tags and true or false,
    name = c.name, id = c.id,
  }
end

--- The error code and object of a JSON error answer: clusterkit's
-- {"error": {"code", "message", ...}} (a bare {"code", ...} is accepted
-- too), or nil.
function M.error_of(res)
  local e = decode(res.body or "")
  if type(e) ~= "table" then return nil end
  if type(e.error) == "table" then e = e.error end
  if type(e.code) ~= "string" then return nil end
  return e.code, e
end

-- Seeds first, then every member's HTTP address that is not a seed.
function Client:_candidates()
  local list, seen = {}, {}
  for _, a in ipairs(self.seeds) do
    if not seen[a] then list[#list + 1], seen[a] = a, true end
  end
  local t = self.tbl
  if t then
    local ids = {}
    for id in pairs(t.nodes) do ids[#ids + 1] = id end
    table.sort(ids) -- a stable order: the same table gives the same rotation
    for _, id in ipairs(ids) do
      local ip = t.nodes[id].ip
      if type(ip) == "string" and ip:match(":%d+$") and not ip:match("^:") and not seen[ip] then
        list[#list + 1], seen[ip] = ip, true
      end
    end
  end
  return list
end

-- Installs t if it is newer than the one held; true when it was.
function Client:_install(t)
  local old = self.tbl
  if old and t.index <= old.index then return false end
  local keep = self.addrs[self.cur]
  self.tbl = t
  self.stats.tables = self.stats.tables + 1
  self.addrs = self:_candidates()
  self.cur = 1
  for i, a in ipairs(self.addrs) do
    if a == keep then self.cur = i end
  end
  self.changed:signal(t)
  if self.on_change then
    local ok, err = pcall(self.on_change, self, t, old)
    if not ok then io.stderr:write("clusterkit.client: on_change failed: ", tostring(err), "\n") end
  end
  return true
end

function Client:_headers(read)
  local tok = read and (self.read_token or self.token) or self.token
  if tok then return {Authorization = "Bearer " .. tok} end
  return {}
end

-- One GET /cluster on addr (blocking when index is given). Returns the
-- parsed table, or nil, err.
function Client:_fetch(addr, index, timeout)
  local target = "/cluster"
  timeout = timeout or self.timeout
  if index then
    target = format("/cluster?index=%d&wait=%dms", index, math.ceil(self.wait * 1000))
    timeout = self.wait + self.timeout
  end
  local res, err = self.ctx.request({method = "GET", url = self.scheme .. "://" .. addr .. target, tls = self.tls,
                                     headers = self:_headers(true), timeout = timeout})
  if not res then return nil, err end
  if res.status ~= 200 then
    local code, e = M.error_of(res)
    return nil, errors.new(code or "HTTP_" .. res.status, format("%s answered %d: %s", addr, res.status,
      e and tostring(e.message) or tostring(res.body):sub(1, 200)))
  end
  local body = decode(res.body or "")
  if type(body) ~= "table" then
    return nil, errors.new("PROTOCOL", addr .. " sent a /cluster body that is not a JSON object")
  end
  local t, perr = M.parse_cluster(body)
  if t then
    -- The node knows no leader: its table may be behind the cluster's.
    t.no_leader = res.headers ~= nil and res.headers["x-ck-known-leader"] == "false"
  end
  return t, perr
end

function Client:_next_addr()
  self.cur = self.cur % #self.addrs + 1
  self.stats.moves = self.stats.moves + 1
end

--- Fetches the first table (trying every known address, within timeout)
-- and starts following the cluster. Returns true, or nil, err. Waits, so it
-- runs in a coroutine or on a plain luajit's main thread.
function Client:start()
  if self.closed then return nil, errors.new("CLOSED", "client: closed") end
  if self.running then return true end
  local deadline = self.ctx.now() + self.timeout
  local last
  local backoff = BACKOFF_MIN
  while true do
    for _ = 1, #self.addrs do
      local left = deadline - self.ctx.now()
      if left <= 0 then break end
      local t, err = self:_fetch(self.addrs[self.cur], nil, math.min(self.timeout, left))
      if t then
        self:_install(t)
        -- A table from a node that knows no leader is better than none, but
        -- the watch starts on another node.
        if t.no_leader then self:_next_addr() end
        self.running = true
        self.ctx.spawn(function() self:_watch() end)
        return true
      end
      last = err
      self:_next_addr()
    end
    if self.ctx.now() + backoff >= deadline then break end
    self.ctx.sleep(backoff)
    backoff = math.min(BACKOFF_MAX, backoff * 2)
  end
  return nil, errors.new(last and last.code == "UNAUTHORIZED" and "UNAUTHORIZED" or "UNAVAILABLE",
    "client: no node answered with a table: " .. tostring(last and last.message or last))
end

-- The watch loop: a blocking query at a time on the current address.
function Client:_watch()
  local backoff, failed_in_row = BACKOFF_MIN, 0
  local exiting = self.ctx.exiting -- nginx: the worker is shutting down
  while not self.closed and not (exiting and exiting()) do
    local t, err = self:_fetch(self.addrs[self.cur], self.tbl.index)
    if self.closed then break end
    if t and t.index >= self.tbl.index and not t.no_leader then
      self:_install(t) -- an equal index is the wait ending with no change
      backoff, failed_in_row = BACKOFF_MIN, 0
    else
      if t and t.no_leader and t.index > self.tbl.index then self:_install(t) end
      -- A failed node, or one behind what we hold (lagging, or on the
      -- minority side of a split): watch another one.
      self.stats.watch_errors = self.stats.watch_errors + 1
      self.last_error = t and (t.no_leader and errors.new("NO_LEADER", self.addrs[self.cur] .. " knows no leader")
        or errors.new("STALE", format("%s is at state index %d, behind %d", self.addrs[self.cur], t.index,
          self.tbl.index))) or err
      self:_next_addr()
      failed_in_row = failed_in_row + 1
      if failed_in_row >= #self.addrs then
        -- Every address failed once: back off before the next round.
        self.ctx.sleep(backoff)
        backoff, failed_in_row = math.min(BACKOFF_MAX, backoff * 2), 0
      end
    end
  end
  self.running = false
end

--- Stops following the cluster. The blocking query in flight ends within
-- `wait`; nothing is called back after close.
function Client:close()
  self.closed = true
  self.on_change = nil
  self.changed:signal(nil)
end

-- ---------------------------------------------------------------------------
-- Routing (local, no I/O)
-- ---------------------------------------------------------------------------

--- The routing table held (read-only), or nil before start.
function Client:table() return self.tbl end

--- The state index of the table held (0 before start).
function Client:state_index() return self.tbl and self.tbl.index or 0 end

--- key -> {partition = "partition-N", index = N, epoch, primary = id,
-- owners = {id, ...} primary first}, or nil, err (NOT_READY, INVALID).
function Client:route(key)
  local t = self.tbl
  if not t then return nil, errors.new("NOT_READY", "client: not started") end
  if type(key) ~= "string" then return nil, errors.new("INVALID", "client: key must be a string") end
  local p, err = self.ctx.hash(t.algorithm, t.partition_count, t.hash_tags, key)
  if not p then return nil, errors.new("INVALID", tostring(err)) end
  return t.parts[p + 1]
end

--- The member entries ({id, ip, status, zone, ...}) owning key, primary first.
function Client:nodes_for_key(key)
  local r, err = self:route(key)
  if not r then return nil, err end
  local out = {}
  for i, id in ipairs(r.owners) do out[i] = self.tbl.nodes[id] or {id = id} end
  return out
end

--- The primary's member entry for key.
function Client:primary_for_key(key)
  local r, err = self:route(key)
  if not r then return nil, err end
  if not r.primary then return nil, errors.new("NO_OWNER", r.partition .. " has no owner") end
  return self.tbl.nodes[r.primary] or {id = r.primary}
end

--- Waits (at most `timeout` seconds) until the table's state index exceeds
-- `index`. Returns the new index, or nil, err (TIMEOUT, CLOSED).
function Client:wait_for_change(index, timeout)
  local deadline = self.ctx.now() + (timeout or self.timeout)
  while self:state_index() <= index do
    if self.closed then return nil, errors.new("CLOSED", "client: closed") end
    local left = deadline - self.ctx.now()
    if left <= 0 then return nil, errors.new("TIMEOUT", "client: no newer table") end
    self.changed:wait(left)
  end
  return self:state_index()
end

-- ---------------------------------------------------------------------------
-- Requests to a key's owners
-- ---------------------------------------------------------------------------

local IDEMPOTENT = {GET = true, HEAD = true}
-- Errors that mean the request was never sent, so any method may go again.
local NOT_SENT = {CONNECT = true}

-- A 503 that says nothing was done: any method may go to the next owner.
-- Other 503s (examples/kv's QUORUM after some replicas stored the write,
-- the KV store's UNKNOWN_OUTCOME) go back to the caller unless the request
-- is idempotent.
local NOTHING_DONE = {NOT_READY = true, SYNCING = true, NO_LEADER = true, NO_OWNER = true}

--- Sends an application request to key's primary. opts: key (required),
-- method (GET), path (required, e.g. "/kv/user:42"), body, headers,
-- idempotent (retry a request whose outcome is unknown), to ("primary",
-- default, or "any": the first owner that answers, for reads a replica may
-- serve). Returns res {status, headers, body, node = id, attempts}, or nil,
-- err (the last failure; TIMEOUT when the retries ran out of time).
function Client:request(opts)
  if type(opts) ~= "table" or type(opts.key) ~= "string" or type(opts.path) ~= "string"
      or opts.path:sub(1, 1) ~= "/" then
    return nil, errors.new("INVALID", "client:request needs key and a path that starts with /")
  end
  local method = opts.method or "GET"
  local idempotent = (opts.idempotent or IDEMPOTENT[method]) and true or false
  local deadline = self.ctx.now() + (opts.timeout or self.timeout)
  local last
  local skip = {} -- owners that failed before the request was sent, this table
  for attempt = 1, self.retries + 1 do
    local seen = self:state_index() -- the table this try routes by
    local r, err = self:route(opts.key)
    if not r then return nil, err end
    local id
    for _, o in ipairs(r.owners) do
      if not skip[o] and (opts.to == "any" or o == r.primary or skip[r.primary]) then id = o break end
    end
    if not id then
      -- Every owner failed: wait for the table to change, then start over.
      last = last or errors.new("NO_OWNER", r.partition .. " has no owner that answers")
      local left = deadline - self.ctx.now()
      if left <= 0 or not self:wait_for_change(seen, left) then break end
      skip = {}
    else
      local n = self.tbl.nodes[id]
      local headers = self:_headers(false)
      for k, v in pairs(opts.headers or {}) do headers[k] = v end
      headers["X-CK-Partition"], headers["X-CK-Epoch"] = r.partition, format("%d", r.epoch or 0)
      local left = deadline - self.ctx.now()
      if left <= 0 then break end
      local url = self.scheme .. "://" .. (n and n.ip or "") .. opts.path
      local res, rerr = self.ctx.request({method = method, url = url, headers = headers, body = opts.body,
                                          tls = self.tls,
                                          timeout = left, idempotent = idempotent})
      if res and res.status == 307 and res.headers and res.headers.location then
        res, rerr = self.ctx.request({method = method, url = res.headers.location, headers = headers, tls = self.tls,
                                      body = opts.body, timeout = math.max(0.001, deadline - self.ctx.now()),
                                      idempotent = idempotent})
      end
      local last_try = attempt > self.retries
      if res then
        local code = (res.status == 421 or res.status == 409 or res.status == 503) and M.error_of(res)
        if not last_try and (res.status == 421 or (res.status == 409 and code == "STALE_EPOCH")) then
          -- Refused without acting: our table is behind. Wait for a newer
          -- one than this try routed by (the watch brings it; it may have
          -- come while the request was out), then route again.
          last = errors.new(code or "MISROUTED", format("%s answered %d for %s at epoch %d", id, res.status,
            r.partition, r.epoch or 0))
          local left2 = deadline - self.ctx.now()
          if left2 <= 0 then break end
          self:wait_for_change(seen, math.min(left2, 1))
          skip = {}
        elseif not last_try and res.status == 503 and (idempotent or NOTHING_DONE[code]) then
          last = errors.new(code or "UNAVAILABLE", format("%s answered 503", id))
          skip[id] = true
        else
          res.node, res.attempts = id, attempt
          return res
        end
      else
        last = rerr
        if not (NOT_SENT[rerr and rerr.code] or idempotent) then
          return nil, rerr -- the outcome is unknown: the caller decides
        end
        skip[id] = true
      end
      self.stats.retries = self.stats.retries + 1
    end
  end
  if last and self.ctx.now() >= deadline then
    return nil, errors.new("TIMEOUT", "client: out of time; last: " .. tostring(last.message or last))
  end
  return nil, last or errors.new("TIMEOUT", "client: out of time")
end

return M
