--- Sessions, leases, locks and elections on the replicated key-value store.
--
-- A session is a row of the store (runtime/ck_kv.c), created through raft:
--
--   * a node's own session (ck:session()) has no TTL: it ends when the
--     cluster marks this node down, stopped or left, or removes it (the FSM ends it
--     on every node in the same step). A node that starts again first ends
--     the sessions its earlier process left behind.
--   * a TTL session (ck:session{ttl = 10}) lives while keep-alives reach a
--     majority: a keep-alive is a committed renewal. The leader ends a
--     session whose last renewal is older than its TTL, by committing that.
--
-- Lease timing (what etcd gets wrong in #9395, #15247): every node notes,
-- on its own monotonic clock, when it applied each session's last renewal.
-- A new leader counts the TTL from there, so it neither resets a lease to a
-- full TTL nor ends it early: its extension is its apply lag behind the old
-- leader, one heartbeat for a healthy follower and at most about one
-- election timeout when the old leader died before its followers learned
-- of the commit. A leader expires nothing unless it has heard from a
-- majority within the last election timeout, and after its own loop stalls
-- (a SIGSTOP, a swap storm) it waits one election timeout first, which lets
-- raft depose it if someone else leads now. A node restarted from its data
-- dir counts from its restart (it cannot know better): the known limit.
--
-- Locks and elections (the etcd recipe): a contender puts a key under
-- "_ck/lock/<name>/" (or "_ck/elect/<name>/") attached to its session, only
-- if absent. The key with the lowest create index holds the lock; the others
-- wait, in order, each for the one just before it to go. The holder's create
-- index is its fencing token: a raft index, so it strictly increases from
-- holder to holder. A resource that refuses tokens older than the newest it
-- has seen is safe even against a holder that was paused past its session.
local core = require "clusterkit.core"
local errors = require "clusterkit.errors"
local json = require "clusterkit.json"
local sched = require "clusterkit.sched"

local M = {}

local format = string.format
local hrtime = core.hrtime
local function now() return hrtime() / 1e9 end

local LOCK_PREFIX, ELECT_PREFIX = "_ck/lock/", "_ck/elect/"
local MIN_TTL, MAX_TTL = 0.5, 86400
local MAX_NAME = 256

local function invalid(msg) return nil, errors.new("INVALID", msg) end

local function commit_ops(node, ops, timeout)
  return node:kv_txn({ops = ops}, {timeout = timeout})
end

-- ---------------------------------------------------------------------------
-- Per-node bookkeeping: when this node applied each session's last renewal
-- ---------------------------------------------------------------------------

local function book(node)
  local b = node._coord
  if not b then
    b = {seen = {}, renewed = {}, last_tick = nil, hold_until = 0, own = nil, handles = {}}
    node._coord = b
  end
  return b
end

-- On every applied KV transaction (kv.on_applied): note renewals, wake
-- whoever waits on a session.
function M.on_applied(node)
  local c = node._core
  if not c or c:closed() then return end
  local b, t = book(node), now()
  local live = {}
  for _, s in ipairs(c:kv_sessions()) do
    live[s.id] = true
    if b.renewed[s.id] ~= s.renewed then
      b.renewed[s.id] = s.renewed
      b.seen[s.id] = t
    end
  end
  for id in pairs(b.renewed) do
    if not live[id] then
      b.renewed[id], b.seen[id] = nil, nil
      local h = b.handles[id]
      if h then
        b.handles[id] = nil
        h:_ended()
      end
    end
  end
end

-- Whether raft on this leader heard from a majority of voters within the
-- last election timeout (raft's own per-follower "recent" flags; the
-- leader counts itself).
local function quorum_recent(node, c)
  local voters, heard = 0, 1
  for _, s in ipairs(c:configuration()) do
    if s.role == "voter" then
      voters = voters + 1
      if s.id ~= node.raft_id and s.recent then heard = heard + 1 end
    end
  end
  return heard >= math.floor(voters / 2) + 1
end

--- Every heartbeat_interval on every node (from the node's ticker): the
-- leader ends the TTL sessions whose renewals stopped.
function M.tick(node, r)
  local b, t = book(node), now()
  local et = node.opts.election_timeout
  if b.last_tick and t - b.last_tick > et + node.opts.heartbeat_interval then
    -- This loop stalled: hold expiries for one election timeout, so that
    -- raft can learn of a newer leader first.
    b.hold_until = t + et
  end
  b.last_tick = t
  if r.state ~= "leader" then
    b.leader_since = nil
    return
  end
  if not b.leader_since then
    -- New leader: keep-alives that clients sent during the election are
    -- still on their way (retried towards it). One election timeout of
    -- grace, which is what the leases promise at most.
    b.leader_since = t
    b.hold_until = math.max(b.hold_until, t + et)
  end
  if t < b.hold_until or b.expiring then return end
  -- The FSM may have applied renewals this node has not noted yet (the
  -- "kv" event comes on the next loop turn, and this tick can run first,
  -- as right after catching up and winning an election): note them now,
  -- or they would count from an older renewal. (Seen in the fault suite:
  -- a new leader ended sessions 80 ms after they were renewed.)
  M.on_applied(node)
  local c = node._core
  local expired = {}
  for _, s in ipairs(c:kv_sessions()) do
    if s.ttl_ms > 0 then
      local seen = b.seen[s.id]
      if t > seen + s.ttl_ms / 1000 then
        expired[#expired + 1] = {type = "session_destroy", number = s.id}
        if #expired == 128 then break end
      end
    end
  end
  if #expired == 0 or not quorum_recent(node, c) then return end
  b.expiring = true
  sched.spawn(function()
    local index, err = commit_ops(node, expired, et * 4)
    b.expiring = false
    if index then
      node.log:info("ended %d session(s) whose keep-alives stopped (first: %d)", #expired, expired[1].number)
    else
      node.log:warn("could not end expired sessions: %s", tostring(err))
    end
  end)
end

-- ---------------------------------------------------------------------------
-- Sessions
-- ---------------------------------------------------------------------------

local Session = {}
Session.__index = Session

local function session_exists(node, id)
  local c = node._core
  if not c or c:closed() then return false end
  for _, s in ipairs(c:kv_sessions()) do
    if s.id == id then return true end
  end
  return false
end

function Session:_ended()
  self._gone = true
  self._cond:signal()
  for _, fn in ipairs(self._on_lost) do
    sched.spawn(fn, self)
  end
end

--- True while the session exists (this node's view).
function Session:alive()
  return not self._gone and session_exists(self.node, self.id)
end

--- Waits until the session ends (at most `timeout` seconds; nil: forever).
-- Returns true when it has ended, false when the wait ended first.
function Session:lost(timeout)
  local deadline = timeout and now() + timeout
  while self:alive() do
    local left = deadline and deadline - now()
    if left and left <= 0 then return false end
    self._cond:wait(left)
  end
  return true
end

--- Calls fn(session) once the session ends.
function Session:on_lost(fn)
  self._on_lost[#self._on_lost + 1] = fn
end

--- One keep-alive (a committed renewal): true, or nil, err (NOT_FOUND: the
-- session has ended).
function Session:keepalive(timeout)
  local index, err = commit_ops(self.node, {{type = "session_renew", number = self.id}}, timeout)
  if not index then return nil, err end
  return true
end

--- Ends the session now (its keys go with it).
function Session:close()
  self._closed = true
  local index, err = commit_ops(self.node, {{type = "session_destroy", number = self.id}})
  if not index then return nil, err end
  return true
end

local function keepalive_loop(s)
  local period = s.ttl / 3
  while not s._closed and not s._gone do
    local ok, err = s:keepalive(period)
    if not ok and err.code == "NOT_FOUND" then
      s:_ended()
      return
    end
    -- After a failure (an election), try again soon: the TTL counts.
    sched.sleep(ok and period or math.min(0.1, period))
  end
end

local function new_session(node, id, ttl)
  local s = setmetatable({node = node, id = id, ttl = ttl, _cond = sched.cond(), _on_lost = {}}, Session)
  book(node).handles[id] = s
  return s
end

--- A session: opts.ttl (seconds) for one kept alive by this process (it
-- ends when keep-alives stop reaching a majority for ttl), or none for this
-- node's own (it ends when the cluster marks the node down or left).
-- Returns the session or nil, err.
local function session(node, opts)
  opts = opts or {}
  local ttl = opts.ttl
  if ttl ~= nil and (type(ttl) ~= "number" or ttl < MIN_TTL or ttl > MAX_TTL) then
    return invalid(format("ttl must be %g to %d seconds", MIN_TTL, MAX_TTL))
  end
  local id, err = commit_ops(node, {{type = "session_create", key = ttl and "" or node.id,
                                     number = ttl and math.floor(ttl * 1000) or 0}}, opts.timeout)
  if not id then return nil, err end
  local s = new_session(node, id, ttl)
  if ttl then sched.spawn(keepalive_loop, s) end
  return s
end

-- This node's own session, made on first use; a fresh one after it ended.
local function own_session(node)
  local b = book(node)
  if b.own and b.own:alive() then return b.own end
  local s, err = session(node)
  if not s then return nil, err end
  b.own = s
  return s
end

--- At start, once this node is a member: end the sessions an earlier
-- process of this node left (they would hold its old locks forever).
function M.clean_own(node)
  local c = node._core
  if not c or c:closed() then return end
  local ops = {}
  for _, s in ipairs(c:kv_sessions()) do
    if s.owner == node.id and not book(node).handles[s.id] then
      ops[#ops + 1] = {type = "session_destroy", number = s.id}
    end
  end
  if #ops > 0 then
    local ok, err = commit_ops(node, ops)
    if ok then
      node.log:info("ended %d session(s) of this node's earlier process", #ops)
    else
      node.log:warn("could not end this node's earlier sessions: %s", tostring(err))
    end
  end
end

-- ---------------------------------------------------------------------------
-- Locks and elections
-- ---------------------------------------------------------------------------

local Held = {}
Held.__index = Held

--- True when the lock (or leadership) is no longer held: released, or its
-- session ended, or its key was deleted.
function Held:is_lost()
  if self._released then return true end
  local e = self.node:kv_get(self.key)
  return not e or e.create_index ~= self.token
end

--- Waits until the lock is lost (at most `timeout` seconds; nil: forever):
-- true when lost, false when the wait ended first.
function Held:lost(timeout)
  local deadline = timeout and now() + timeout
  local since = self.node:kv_info().index
  while not self:is_lost() do
    local left = deadline and deadline - now() or 30
    if left <= 0 then return false end
    local evs, nxt = self.node:kv_watch(self.key, since, math.min(left, 30))
    if not evs then return true end -- COMPACTED: is_lost() decides next turn.
    since = nxt
  end
  return true
end

--- Releases the lock (resigns the leadership): deletes its key, only if it
-- is still ours. true, or nil, err.
function Held:release()
  self._released = true
  local index, err = self.node:kv_delete(self.key, {prev_index = self.mod_index})
  if not index and err.code ~= "CONFLICT" then return nil, err end
  return true
end
Held.resign = Held.release

local function check_name(name)
  if type(name) ~= "string" or #name == 0 or #name > MAX_NAME or name:find("/", 1, true) then
    return invalid(format("name must be 1 to %d bytes without '/'", MAX_NAME))
  end
  return true
end

-- The contenders under prefix, in create order.
local function contenders(node, prefix)
  local items = node:kv_list(prefix, {limit = 100000})
  table.sort(items, function(a, b) return a.create_index < b.create_index end)
  return items
end

-- Contends under prefix with session s: waits until our key is first.
local function contend(node, prefix, s, value, timeout)
  -- One key per contender (a session may contend twice: two coroutines on
  -- one node), named after the session so that a client can find its own.
  local b = book(node)
  b.seq = (b.seq or 0) + 1
  local key = prefix .. format("%016x.%s.%d", s.id, node.id, b.seq)
  local index, err = node:kv_txn{
    compares = {{key = key, target = "create", op = "==", value = 0}},
    ops = {{type = "put", key = key, value = value, session = s.id}},
  }
  if not index and err.code ~= "UNKNOWN_OUTCOME" then return nil, err end
  -- After an unknown outcome, a consistent read says whether we queued.
  local mine, at = node:kv_get(key, {consistent = not index})
  if not mine then
    if type(at) == "table" then return nil, at end
    return nil, errors.new(index and "NOT_FOUND" or "UNKNOWN_OUTCOME",
      index and "the session ended while contending" or "could not queue for it (the leader changed); retry")
  end
  local deadline = timeout and now() + timeout
  local since = node:kv_info().index
  while true do
    local ahead
    for _, e in ipairs(contenders(node, prefix)) do
      if e.create_index < mine.create_index then ahead = e end
    end
    if not node:kv_get(key) then
      return nil, errors.new("NOT_FOUND", "the session ended while waiting")
    end
    if not ahead then
      return setmetatable({node = node, key = key, token = mine.create_index, mod_index = mine.mod_index,
                           session = s, value = value}, Held)
    end
    local left = deadline and deadline - now() or 30
    if left <= 0 then
      -- Leave the queue (a compare-and-delete: safe to try again).
      for _ = 1, 3 do
        local ok, derr = node:kv_delete(key, {prev_index = mine.mod_index})
        if ok or derr.code == "CONFLICT" then break end
      end
      return nil, errors.new("TIMEOUT", format("not acquired within %gs (%s holds it)", timeout, ahead.value))
    end
    -- Wait for a change under the prefix (the one ahead going, above all).
    local evs, nxt = node:kv_watch(prefix, since, math.min(left, 30))
    if evs then
      since = nxt
    else
      since = node:kv_info().index -- COMPACTED: re-read the contenders.
    end
  end
end

local function session_of(node, opts)
  if opts.session ~= nil then
    if getmetatable(opts.session) ~= Session then return invalid("session must be a ck:session()") end
    return opts.session
  end
  return own_session(node)
end

local Methods = {}

function Methods:session(opts)
  if opts ~= nil and type(opts) ~= "table" then return invalid("options must be a table") end
  return session(self, opts)
end

-- Contends for `name` under prefix with opts.session (default: this node's own).
local function campaign(node, prefix, name, opts)
  opts = opts or {}
  local ok, err = check_name(name)
  if not ok then return nil, err end
  local s
  s, err = session_of(node, opts)
  if not s then return nil, err end
  return contend(node, prefix .. name .. "/", s, opts.value or node.id, opts.timeout)
end

--- Acquires the lock `name`: a held lock {token, key, release(), lost(),
-- is_lost()}, or nil, err (TIMEOUT after opts.timeout seconds; by default
-- it waits as long as it takes). opts.session: a ck:session() (default:
-- this node's own); opts.value: shown to observers (default: the node id).
function Methods:lock(name, opts)
  return campaign(self, LOCK_PREFIX, name, opts)
end

--- Campaigns for the role `name` and returns the leadership once won
-- ({token, resign(), lost(), is_lost()}), or nil, err (TIMEOUT).
function Methods:elect(name, opts)
  return campaign(self, ELECT_PREFIX, name, opts)
end

local function holder(node, prefix)
  local first = contenders(node, prefix)[1]
  if not first then return nil end
  return {value = first.value, token = first.create_index, session = first.session, key = first.key}
end

--- Who holds the role `name`: {value, token, session} or nil.
function Methods:leader_of(name)
  local ok, err = check_name(name)
  if not ok then return nil, err end
  return holder(self, ELECT_PREFIX .. name .. "/")
end

--- Who holds the lock `name` and how many wait: {value, token, session,
-- waiters} or nil.
function Methods:lock_holder(name)
  local ok, err = check_name(name)
  if not ok then return nil, err end
  local all = contenders(self, LOCK_PREFIX .. name .. "/")
  if not all[1] then return nil end
  return {value = all[1].value, token = all[1].create_index, session = all[1].session, waiters = #all - 1}
end

function M.extend(Node)
  for k, f in pairs(Methods) do Node[k] = f end
end

-- ---------------------------------------------------------------------------
-- HTTP: sessions, locks and elections for clients in other processes. An
-- HTTP client owns a TTL session and keeps it alive itself.
-- ---------------------------------------------------------------------------

local STATUS = {INVALID = 400, NOT_FOUND = 404, CONFLICT = 409, TIMEOUT = 504, NO_LEADER = 503,
                UNKNOWN_OUTCOME = 503,
                NOT_READY = 503, TOO_BIG = 413}

local function fail(res, err)
  return res:error(STATUS[err.code] or 500, err.code, err.message)
end

local function duration(v, default)
  if v == nil then return default end
  if type(v) == "number" then return v end
  local n, unit = tostring(v):match("^(%d+%.?%d*)(%a*)$")
  local scale = ({[""] = 1, s = 1, ms = 0.001, m = 60})[unit or ""]
  return n and scale and tonumber(n) * scale or nil
end

-- The session named in a request (?session= or the JSON body's "session"):
-- a handle on this node for an existing TTL session.
local function request_session(node, id)
  id = tonumber(id)
  if not id or id < 1 or id ~= math.floor(id) then return invalid("session must be a session id") end
  if not session_exists(node, id) then return nil, errors.new("NOT_FOUND", "no such session (it ended?)") end
  local h = book(node).handles[id]
  return h or new_session(node, id, nil)
end

function M.install(node)
  local srv = node.http

  srv:route("POST", "/v1/sessions", function(req, res)
    local body = req:body() ~= "" and req:json() or {}
    if type(body) ~= "table" then return res:error(400, "BAD_REQUEST", "body must be a JSON object") end
    local ttl = duration(body.ttl, 10)
    if not ttl then return res:error(400, "BAD_REQUEST", "ttl must be a duration (e.g. 10s)") end
    if ttl < MIN_TTL or ttl > MAX_TTL then
      return res:error(400, "BAD_REQUEST", format("ttl must be %g to %d seconds", MIN_TTL, MAX_TTL))
    end
    local id, err = commit_ops(node, {{type = "session_create", key = "", number = math.floor(ttl * 1000)}})
    if not id then return fail(res, err) end
    return res:json({id = id, ttl_ms = math.floor(ttl * 1000)})
  end, {auth = "write"})

  srv:route("GET", "/v1/sessions", function(req, res)
    local c = node._core
    local out = c and not c:closed() and c:kv_sessions() or {}
    for _, s in ipairs(out) do s.owner = s.owner ~= "" and s.owner or json.null end
    return res:json({sessions = json.array(out)})
  end, {auth = "read"})

  -- PUT /v1/sessions/<id>: a keep-alive (committed before the answer).
  srv:route("PUT", "/v1/sessions/:id", function(req, res)
    local id = tonumber(req.params.id)
    if not id then return res:error(400, "BAD_REQUEST", "session id must be a number") end
    local index, err = commit_ops(node, {{type = "session_renew", number = id}})
    if not index then return fail(res, err) end
    return res:json({index = index})
  end, {auth = "write"})

  srv:route("DELETE", "/v1/sessions/:id", function(req, res)
    local id = tonumber(req.params.id)
    if not id or id < 1 then return res:error(400, "BAD_REQUEST", "session id must be a number") end
    local index, err = commit_ops(node, {{type = "session_destroy", number = id}})
    if not index then return fail(res, err) end
    return res:json({index = index})
  end, {auth = "write"})

  for _, kind in ipairs({"locks", "elections"}) do
    local prefix = kind == "locks" and LOCK_PREFIX or ELECT_PREFIX
    -- POST /v1/locks/<name> {"session": id, "timeout": "5s", "value": "..."}:
    -- waits until held, then {"token", "key"}.
    srv:route("POST", "/v1/" .. kind .. "/:name", function(req, res)
      local ok, err = check_name(req.params.name)
      if not ok then return fail(res, err) end
      local body = req:json()
      if type(body) ~= "table" then return res:error(400, "BAD_REQUEST", "body must be {\"session\": id, ...}") end
      local s
      s, err = request_session(node, body.session)
      if not s then return fail(res, err) end
      local timeout = duration(body.timeout, 30)
      if not timeout or timeout > 600 then return res:error(400, "BAD_REQUEST", "timeout must be up to 600s") end
      local value = body.value == nil and "" or body.value
      if type(value) ~= "string" then return res:error(400, "BAD_REQUEST", "value must be a string") end
      local held
      held, err = contend(node, prefix .. req.params.name .. "/", s, value, timeout)
      if not held then return fail(res, err) end
      return res:json({token = held.token, key = held.key, session = s.id})
    end, {auth = "write"})

    srv:route("GET", "/v1/" .. kind .. "/:name", function(req, res)
      local ok, err = check_name(req.params.name)
      if not ok then return fail(res, err) end
      local all = contenders(node, prefix .. req.params.name .. "/")
      if not all[1] then return res:error(404, "NOT_FOUND", "nobody holds " .. req.params.name) end
      return res:json({value = json.utf8_safe(all[1].value), token = all[1].create_index,
                       session = all[1].session, waiters = #all - 1})
    end, {auth = "read"})

    -- DELETE /v1/locks/<name>?session=id: release (resign); only that
    -- session's own key goes.
    srv:route("DELETE", "/v1/" .. kind .. "/:name", function(req, res)
      local ok, err = check_name(req.params.name)
      if not ok then return fail(res, err) end
      local id = tonumber(req.query.session)
      if not id then return res:error(400, "BAD_REQUEST", "?session= is required") end
      local ops = {}
      for _, e in ipairs(contenders(node, prefix .. req.params.name .. "/")) do
        if e.session == id then ops[#ops + 1] = {type = "delete", key = e.key} end
      end
      if #ops == 0 then return res:error(404, "NOT_FOUND", "that session neither holds nor waits for it") end
      local index
      index, err = node:kv_txn({ops = ops})
      if not index then return fail(res, err) end
      return res:json({index = index, released = #ops})
    end, {auth = "write"})
  end
end

M.quorum_recent = quorum_recent
M.Session = Session
return M
