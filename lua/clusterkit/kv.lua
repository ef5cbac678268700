--- The replicated key-value store, Lua side: the ck:kv_* methods, the Go
-- library's custom-data names, and the HTTP API under /kv.
--
-- The store lives in C (runtime/ck_kv.c), inside the FSM: every write is a
-- transaction committed through raft; reads are local copies. Three paths:
--
--   write    the leader encodes and proposes; a follower sends the encoded
--            transaction to the leader (POST /v1/internal/kv, token-protected),
--            which re-imposes its own limits and proposes it.
--   read     local and possibly stale by default, with the store index it
--            reflects. With consistent = true, a read barrier first: an empty
--            transaction committed through the leader (so the leader proves it
--            still leads a majority), then this node waits until it has
--            applied that index and reads locally. That is linearizable on
--            any node, and costs one raft round trip.
--   watch    the events after an index, from the store's bounded history;
--            COMPACTED when some are gone, so that the watcher re-reads.
--
-- KV writes do not move the cluster's state index: hooks, ETags and
-- blocking queries on /cluster never wake up for them.
local core = require "clusterkit.core"
local errors = require "clusterkit.errors"
local json = require "clusterkit.json"
local base64 = require "clusterkit.base64"
local httpc = require "clusterkit.httpc"
local http = require "clusterkit.http"
local sched = require "clusterkit.sched"
local auth = require "clusterkit.auth"
local membership = require "clusterkit.membership"

local M = {}

local MAX_KEY = 1024
local MAX_ITEMS = 128          -- compares, and operations, per transaction
local FORWARD_ATTEMPTS = 5     -- a follower's write, through leader changes
local DEFAULT_TIMEOUT = 10     -- seconds for a write or a barrier
local MAX_WATCH_WAIT = 600

local format = string.format
local hrtime = core.hrtime

local TARGETS = {mod = true, create = true, version = true, value = true}
local CMP_OPS = {["=="] = true, ["!="] = true, ["<"] = true, [">"] = true}
local OP_TYPES = {put = true, delete = true, delete_prefix = true,
                  -- Sessions (clusterkit.coord makes these; they stand alone).
                  session_create = true, session_renew = true, session_destroy = true}

local function id_number(v)
  return type(v) == "number" and v >= 0 and v == math.floor(v) and v <= 2 ^ 53
end

local function invalid(msg)
  return nil, errors.new("INVALID", msg)
end

local function check_key(key, what)
  if type(key) ~= "string" or #key == 0 or #key > MAX_KEY then
    return invalid(format("%s must be a string of 1 to %d bytes", what or "key", MAX_KEY))
  end
  return true
end

local function running(self)
  local c = self._core
  if not c or c:closed() or self.status == "stopped" then
    return nil, errors.new("NOT_READY", "the node is not running")
  end
  return c
end

-- The transaction in the encoder's form, checked for users; or nil, err.
local function normalize(self, txn)
  if type(txn) ~= "table" then return invalid("transaction must be a table {compares =, ops =}") end
  local compares, ops = txn.compares or {}, txn.ops or {}
  if type(compares) ~= "table" or type(ops) ~= "table" then
    return invalid("compares and ops must be lists")
  end
  if #compares > MAX_ITEMS or #ops > MAX_ITEMS then
    return invalid(format("at most %d compares and %d operations", MAX_ITEMS, MAX_ITEMS))
  end
  local max_value = self.opts.kv_max_value
  local out = {max_value = max_value, max_bytes = self.opts.kv_max_bytes, compares = {}, ops = {}}
  for i, c in ipairs(compares) do
    if type(c) ~= "table" then return invalid("compare " .. i .. " must be a table") end
    local ok, err = check_key(c.key, "compare " .. i .. ": key")
    if not ok then return nil, err end
    local target = c.target or "mod"
    if not TARGETS[target] then
      return invalid(format("compare %d: target must be mod, create, version or value", i))
    end
    local op = c.op or "=="
    if not CMP_OPS[op] then return invalid(format("compare %d: op must be ==, !=, < or >", i)) end
    local e = {key = c.key, target = target, op = op}
    if target == "value" then
      if type(c.value) ~= "string" then return invalid(format("compare %d: value must be a string", i)) end
      e.value = c.value
    else
      local n = c.value
      if type(n) ~= "number" or n < 0 or n ~= math.floor(n) or n > 2 ^ 53 then
        return invalid(format("compare %d: value must be a non-negative integer (an index or version)", i))
      end
      e.number = n
    end
    out.compares[i] = e
  end
  for i, o in ipairs(ops) do
    if type(o) ~= "table" then return invalid("operation " .. i .. " must be a table") end
    local t = o.type or "put"
    if not OP_TYPES[t] then return invalid(format("operation %d: type must be put, delete or delete_prefix", i)) end
    if t:find("^session_") then
      if not id_number(o.number) or (o.key ~= nil and type(o.key) ~= "string") then
        return invalid(format("operation %d: a session operation needs a number (and a string key)", i))
      end
    elseif t == "delete_prefix" then
      if type(o.key) ~= "string" or #o.key > MAX_KEY then
        return invalid(format("operation %d: key (the prefix) must be a string of at most %d bytes", i, MAX_KEY))
      end
    else
      local ok, err = check_key(o.key, "operation " .. i .. ": key")
      if not ok then return nil, err end
    end
    if t == "put" then
      if type(o.value) ~= "string" then return invalid(format("operation %d: value must be a string", i)) end
      if #o.value > max_value then
        return nil, errors.new("TOO_BIG", format(
          "operation %d: value of %d bytes is over the limit of %d (kv_max_value)", i, #o.value, max_value))
      end
    end
    if o.session ~= nil and not id_number(o.session) then
      return invalid(format("operation %d: session must be a session id", i))
    end
    out.ops[i] = {type = t, key = o.key or "", value = o.value, number = o.session or o.number or 0}
  end
  return out
end

local RESULT = {
  CONFLICT = "a compare did not hold (the key changed, or exists, or does not)",
  TOO_BIG = "the store would exceed its size limit (kv_max_bytes)",
  NOT_FOUND = "no such session (it has ended)",
}

local function commit_error(msg, code)
  if RESULT[code] then return errors.new(code, RESULT[code]) end
  return errors.from_core(msg, code)
end

-- The leader's HTTP address, waiting (bounded) until one is known.
local function leader_addr(self, deadline)
  while true do
    local l = self:leader()
    if l and l.is_me then return "me" end
    if l and l.leader_ip ~= "" then return l.leader_ip end
    local left = (deadline - hrtime()) / 1e9
    if left <= 0 then return nil end
    self._cond:wait(math.min(left, 0.1))
  end
end

-- Waits until this node has applied raft index `index`.
local function wait_applied(self, index, deadline)
  local c = self._core
  while c:raft().last_applied < index do
    local left = (deadline - hrtime()) / 1e9
    if left <= 0 or c:closed() then
      return nil, errors.new("TIMEOUT", format("index %d not applied here in time", index))
    end
    self._kv_cond:wait(math.min(left, 0.5))
  end
  return true
end

-- Proposes on this node (the leader): index, or nil, msg, code, and
-- whether raft refused at once (then nothing was appended: safe to retry).
local function propose(self, bytes)
  local refused = false
  local index, msg, code = sched.wait(function(resume)
    local ok, m, k = self._core:propose(bytes, resume)
    if not ok then
      refused = true
      resume(nil, m, k)
    end
  end)
  return index, msg, code, refused
end

local function unknown_outcome(what)
  return errors.new("UNKNOWN_OUTCOME", what .. ": the write may or may not have been applied (read it to "
    .. "find out); it was not retried, since applying it twice would be wrong")
end

-- Commits an encoded transaction: index, or nil, err. Retries on another
-- leader only when the first attempt certainly did not append it (raft
-- refused at once, the forward could not connect, or the node reached was
-- not the leader), or when `idempotent` (a read barrier, a renewal, a
-- destroy): a proposal whose leader lost leadership may still be committed
-- by the next one, and retrying a compare-and-set then answers CONFLICT for
-- a write that happened (the fault suite's CAS checker caught it), or
-- applies a plain put twice. Such an outcome is UNKNOWN_OUTCOME.
local function commit(self, bytes, timeout, idempotent)
  local c, err = running(self)
  if not c then return nil, err end
  -- KV_TXN is a feature-level-2 command (ck_state.h): a v0.1.0 member
  -- could not apply it. Reads need it too (their barrier is one).
  -- A new cluster raises it right after INIT: wait that moment out (only
  -- then: this is every write's and every read barrier's path).
  local level = self:_view().feature_level
  if level < 2 then
    self:_wait_until(function() return self:_view().feature_level >= 2 end, 1)
    level = self:_view().feature_level
  end
  if level < 2 then
    return nil, errors.new("NOT_READY", format("the key-value store needs cluster feature level 2 and the "
      .. "cluster is at %d: some member runs an older build (a rolling upgrade is in progress). The "
      .. "leader raises the level once every member runs this build", level))
  end
  local deadline = hrtime() + (timeout or DEFAULT_TIMEOUT) * 1e9
  -- One forward waits at most a few election timeouts: a paused or cut-off
  -- leader must not hold the caller for the whole deadline.
  local hop = math.max(1, 4 * self.opts.election_timeout)
  local last
  for _ = 1, FORWARD_ATTEMPTS do
    local addr = leader_addr(self, deadline)
    if not addr then
      return nil, last or errors.new("NO_LEADER", "no leader is known; retry")
    end
    if addr == "me" then
      local index, msg, code, refused = propose(self, bytes)
      if index then return index end
      if code ~= "NOT_LEADER" then return nil, commit_error(msg, code) end
      if not refused and not idempotent then return nil, unknown_outcome("leadership was lost while committing") end
      last = errors.new("NOT_LEADER", "lost leadership while committing")
    else
      local headers = auth.headers(self)
      headers["Content-Type"] = "application/octet-stream"
      local left = math.max(0.1, math.min(hop, (deadline - hrtime()) / 1e9))
      local res, herr = httpc.request {tls = self._tls_client, method = "POST",
                                       url = self.scheme .. "://" .. addr .. "/v1/internal/kv",
                                       headers = headers, body = bytes, timeout = left}
      local body = res and json.decode(res.body)
      if res and res.status == 200 and type(body) == "table" and type(body.index) == "number" then
        -- Read your writes: a local read after this sees the write.
        local ok, werr = wait_applied(self, body.index, deadline)
        if not ok then return nil, werr end
        return body.index
      end
      local e = type(body) == "table" and type(body.error) == "table" and body.error
      if res and e and e.code ~= "NOT_LEADER" and e.code ~= "NO_LEADER" then
        -- The leader's own answer (CONFLICT, TOO_BIG, UNKNOWN_OUTCOME...).
        if e.code == "UNKNOWN_OUTCOME" and idempotent then
          last = errors.new(e.code, tostring(e.message))
        else
          return nil, errors.new(e.code, tostring(e.message))
        end
      elseif not res and herr.code ~= "CONNECT" and not idempotent then
        -- Sent, but no answer: the leader may have committed it.
        return nil, unknown_outcome(format("no answer from the leader %s (%s)", addr, tostring(herr)))
      else
        last = errors.new(e and e.code or "UNAVAILABLE",
          e and tostring(e.message) or format("leader %s: %s", addr, tostring(herr or (res and res.status))))
      end
      -- The leader moved or is unreachable: wait for news, then retry.
      self._cond:wait(math.min(0.2, math.max(0, (deadline - hrtime()) / 1e9)))
    end
    if hrtime() >= deadline then break end
  end
  return nil, last
end


-- Read barriers come in rounds: one empty transaction committed through
-- the leader serves every read that arrived before it was proposed. Reads
-- that arrive while a round is in flight join the next one, which starts
-- when the current one ends: its barrier is proposed after they arrived,
-- which is what makes their reads linearizable. With many concurrent reads
-- this costs one raft round trip per round, not per read.
local EMPTY_TXN = core.encode_kv_txn({max_value = 0, max_bytes = 0})

local function run_round(self, rounds)
  local round = rounds.next
  rounds.next, rounds.inflight = nil, round
  sched.spawn(function()
    local deadline = hrtime() + DEFAULT_TIMEOUT * 1e9
    local index, err = commit(self, EMPTY_TXN, DEFAULT_TIMEOUT, true)
    if index then
      round.ok, round.err = wait_applied(self, index, deadline)
    else
      round.ok, round.err = nil, err
    end
    round.done = true
    round.cond:signal()
    rounds.inflight = nil
    if rounds.next then run_round(self, rounds) end
  end)
end

-- The read barrier: after it, this node's store holds every write that was
-- committed before it began.
local function barrier(self, timeout)
  local rounds = self._read_rounds
  if not rounds then
    rounds = {}
    self._read_rounds = rounds
  end
  local round = rounds.next
  if not round then
    round = {cond = sched.cond()}
    rounds.next = round
  end
  if not rounds.inflight then run_round(self, rounds) end
  local deadline = hrtime() + (timeout or DEFAULT_TIMEOUT) * 1e9
  while not round.done do
    local left = (deadline - hrtime()) / 1e9
    if left <= 0 then return nil, errors.new("TIMEOUT", "read barrier not done in time") end
    round.cond:wait(left)
  end
  return round.ok, round.err
end

local function entry(key, value, create, mod, version)
  return {key = key, value = value, create_index = create, mod_index = mod, version = version}
end

local function read_opts(opts, fn)
  if opts ~= nil and type(opts) ~= "table" then
    error("clusterkit: " .. fn .. ": options must be a table", 3)
  end
  return opts or {}
end

-- ---------------------------------------------------------------------------
-- Node methods
-- ---------------------------------------------------------------------------

local Methods = {}

--- Commits a transaction {compares = {{key, target = "mod"|"create"|
-- "version"|"value", op = "=="|"!="|"<"|">", value}}, ops = {{type =
-- "put"|"delete"|"delete_prefix", key, value, session}}}: all compares hold
-- and every operation applies, or nothing does. A put with a session (an
-- id from ck:session()) attaches its key to it: the key goes when the
-- session ends (NOT_FOUND when it already has). Returns the raft index, or nil, err
-- (CONFLICT when a compare failed, TOO_BIG, INVALID, NO_LEADER, TIMEOUT).
function Methods:kv_txn(txn, opts)
  local t, err = normalize(self, txn)
  if not t then return nil, err end
  -- Renewals and destroys (and nothing) may be applied twice harmlessly.
  local idempotent = true
  for _, o in ipairs(t.ops) do
    idempotent = idempotent and (o.type == "session_renew" or o.type == "session_destroy")
  end
  return commit(self, core.encode_kv_txn(t), opts and opts.timeout, idempotent)
end

--- Puts value at key. opts: prev_index (compare-and-swap: the key's modify
-- index must be this; 0 = the key must not exist), timeout. Returns the
-- index of the write, or nil, err (CONFLICT when prev_index did not match).
function Methods:kv_put(key, value, opts)
  opts = read_opts(opts, "kv_put")
  local compares = {}
  if opts.prev_index ~= nil then
    compares[1] = {key = key, target = "mod", op = "==", value = opts.prev_index}
  end
  return self:kv_txn({compares = compares, ops = {{type = "put", key = key, value = value}}}, opts)
end

--- Compare-and-swap: puts value when key's modify index is prev_index (0:
-- only if absent). Returns the new index, or nil, err (CONFLICT).
function Methods:kv_cas(key, value, prev_index, opts)
  opts = read_opts(opts, "kv_cas")
  return self:kv_put(key, value, {prev_index = prev_index or 0, timeout = opts.timeout})
end

--- Deletes key (opts.prefix = true: every key starting with it; opts.prev_index:
-- only if its modify index is this). Returns the index, or nil, err.
function Methods:kv_delete(key, opts)
  opts = read_opts(opts, "kv_delete")
  local compares = {}
  if opts.prev_index ~= nil then
    compares[1] = {key = key, target = "mod", op = "==", value = opts.prev_index}
  end
  local op = {type = opts.prefix and "delete_prefix" or "delete", key = key}
  return self:kv_txn({compares = compares, ops = {op}}, opts)
end

--- Reads key: {key, value, create_index, mod_index, version} and the store
-- index the answer reflects, or nil and that index when the key is absent,
-- or nil, err. opts.consistent = true: linearizable (a raft round trip).
function Methods:kv_get(key, opts)
  opts = read_opts(opts, "kv_get")
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local c
  c, err = running(self)
  if not c then return nil, err end
  if opts.consistent then
    ok, err = barrier(self, opts.timeout)
    if not ok then return nil, err end
  end
  local value, create, mod, version = c:kv_get(key)
  local index = c:kv_info().index
  if value == nil then return nil, index end
  return entry(key, value, create, mod, version), index
end

--- The keys under prefix ("" = all), sorted: a list of entries and
-- {index =, more =}. opts: limit (1000), after (a key: resume a listing),
-- keys_only, consistent.
function Methods:kv_list(prefix, opts)
  opts = read_opts(opts, "kv_list")
  if type(prefix) ~= "string" or #prefix > MAX_KEY then
    return invalid("prefix must be a string of at most " .. MAX_KEY .. " bytes")
  end
  local limit = opts.limit or 1000
  if type(limit) ~= "number" or limit < 1 or limit ~= math.floor(limit) then
    return invalid("limit must be a positive integer")
  end
  if opts.after ~= nil and type(opts.after) ~= "string" then return invalid("after must be a key") end
  local c, err = running(self)
  if not c then return nil, err end
  if opts.consistent then
    local ok
    ok, err = barrier(self, opts.timeout)
    if not ok then return nil, err end
  end
  local items, more = c:kv_list(prefix, limit, opts.after, opts.keys_only)
  return items, {index = c:kv_info().index, more = more}
end

--- Waits for changes under prefix after store index `since` (at most
-- `timeout` seconds, default 30): returns the events in order ({type =
-- "put"|"delete", key, value, index, create_index, mod_index, version}) and
-- the index to pass next time; an empty list when the wait ended. nil, err
-- COMPACTED when some change after `since` is no longer kept (re-read with
-- kv_list, then watch from its index).
function Methods:kv_watch(prefix, since, timeout)
  if type(prefix) ~= "string" or #prefix > MAX_KEY then
    return invalid("prefix must be a string of at most " .. MAX_KEY .. " bytes")
  end
  if type(since) ~= "number" or since < 0 or since ~= math.floor(since) then
    return invalid("since must be a non-negative integer (a store index)")
  end
  timeout = timeout or 30
  if type(timeout) ~= "number" or timeout < 0 or timeout > MAX_WATCH_WAIT then
    return invalid("timeout must be 0 to " .. MAX_WATCH_WAIT .. " seconds")
  end
  local c, err = running(self)
  if not c then return nil, err end
  local deadline = hrtime() + timeout * 1e9
  local n = #prefix
  while true do
    local evs, msg, code = c:kv_events(since, 1000)
    if not evs then
      return nil, errors.new(code or "COMPACTED", format("changes after index %d are no longer kept (%s); "
        .. "re-read the keys and watch from the index of that read", since, tostring(msg)))
    end
    local out = {}
    for _, ev in ipairs(evs) do
      if n == 0 or ev.key:sub(1, n) == prefix then out[#out + 1] = ev end
    end
    if #evs > 0 then since = evs[#evs].index end
    if #out > 0 then return out, since end
    local left = (deadline - hrtime()) / 1e9
    if left <= 0 or c:closed() or self.status == "stopped" then
      return out, math.max(since, c:kv_info().index)
    end
    if #evs == 0 then self._kv_cond:wait(left) end
  end
end

--- The store's figures: {index, compacted, keys, bytes, events}.
function Methods:kv_info()
  local c, err = running(self)
  if not c then return nil, err end
  return c:kv_info()
end

-- The Go library's custom-data API (SetCustomData, GetCustomData,
-- DeleteCustomData, ListCustomDataKeys) on the same store. Writes go
-- through the leader from any node; reads are local.
function Methods:set_custom_data(key, value)
  local index, err = self:kv_put(key, value)
  if not index then return nil, err end
  return true
end

function Methods:get_custom_data(key)
  local e, err = self:kv_get(key)
  if e then return e.value end
  if type(err) == "number" then return nil, errors.new("NOT_FOUND", "no custom data for key " .. key) end
  return nil, err
end

function Methods:delete_custom_data(key)
  local index, err = self:kv_delete(key)
  if not index then return nil, err end
  return true
end

function Methods:list_custom_data_keys()
  local keys, after = {}, nil
  while true do
    local items, info = self:kv_list("", {keys_only = true, after = after, limit = 1000})
    if not items then return nil, info end
    for _, e in ipairs(items) do keys[#keys + 1] = e.key end
    if not info.more then return keys end
    after = items[#items].key
  end
end

-- ---------------------------------------------------------------------------
-- Backups (clusterkit.backup through Node:snapshot / restore_snapshot)
-- ---------------------------------------------------------------------------

local function text_or_b64(out, name, s)
  if json.utf8_safe(s) == s then out[name] = s else out[name .. "_base64"] = base64.encode(s) end
end

--- The store's durable keys for a backup: {index, entries = {{key | key_base64,
-- value | value_base64}, ...}}. Keys attached to a session are left out:
-- they live and die with a session, which a restored cluster does not have.
function M.backup(node)
  local c = node._core
  local out, after = {}, nil
  while true do
    local items, more = c:kv_list("", 10000, after, false)
    for _, e in ipairs(items) do
      if not e.session then
        local x = {}
        text_or_b64(x, "key", e.key)
        text_or_b64(x, "value", e.value)
        out[#out + 1] = x
      end
    end
    if not more or #items == 0 then break end
    after = items[#items].key
  end
  return {index = c:kv_info().index, entries = json.array(out)}
end

local function field(x, name)
  if x[name .. "_base64"] ~= nil then
    return type(x[name .. "_base64"]) == "string" and base64.decode(x[name .. "_base64"]) or nil
  end
  return type(x[name]) == "string" and x[name] or nil
end

--- Writes a backup's keys (over those of the same name; others stay), in
-- transactions of up to 128 puts. Returns the number of keys, or nil, err.
function M.restore(node, snap)
  if snap == nil then return 0 end
  if type(snap) ~= "table" or type(snap.entries) ~= "table" then
    return nil, errors.new("BAD_SNAPSHOT", "kv must be {\"entries\": [...]}")
  end
  local ops, n = {}, 0
  local function flush()
    if #ops == 0 then return true end
    local index, err = node:kv_txn({ops = ops})
    ops = {}
    return index, err
  end
  for i, x in ipairs(snap.entries) do
    local key, value = type(x) == "table" and field(x, "key"), type(x) == "table" and field(x, "value")
    if not key or not value then
      return nil, errors.new("BAD_SNAPSHOT", "kv entry " .. i .. " needs a key and a value")
    end
    ops[#ops + 1] = {type = "put", key = key, value = value}
    n = n + 1
    if #ops == MAX_ITEMS then
      local ok, err = flush()
      if not ok then return nil, err end
    end
  end
  local ok, err = flush()
  if not ok then return nil, err end
  return n
end

--- Adds the methods to the Node class (called by clusterkit.node).
function M.extend(Node)
  for k, f in pairs(Methods) do Node[k] = f end
end

-- Called by the node for its "kv" event (a KV transaction was applied).
function M.on_applied(node)
  if node._kv_cond then node._kv_cond:signal() end
end

-- ---------------------------------------------------------------------------
-- HTTP
-- ---------------------------------------------------------------------------

local STATUS = {INVALID = 400, BAD_REQUEST = 400, NOT_FOUND = 404, CONFLICT = 409, TOO_BIG = 413,
                COMPACTED = 410, NO_LEADER = 503, NOT_READY = 503, TIMEOUT = 504, UNAVAILABLE = 503,
                UNKNOWN_OUTCOME = 503}

local function fail(res, err)
  return res:error(STATUS[err.code] or 500, err.code, err.message)
end

-- A value in JSON: the string when it is UTF-8 text, else value_base64.
local function put_value(out, value)
  if json.utf8_safe(value) == value then
    out.value = value
  else
    out.value_base64 = base64.encode(value)
  end
  return out
end

local function entry_json(e)
  local out = {key = json.utf8_safe(e.key), create_index = e.create_index, mod_index = e.mod_index,
               version = e.version, type = e.type, index = e.index}
  if e.key ~= out.key then out.key_base64 = base64.encode(e.key) end
  if e.value ~= nil then put_value(out, e.value) end
  return out
end

local function query_index(q, name)
  local v = q[name]
  if v == nil then return nil end
  local n = tonumber(v)
  if not n or n < 0 or n ~= math.floor(n) or n > 2 ^ 53 then
    return false
  end
  return n
end

local function parse_wait(v)
  if v == nil then return 30 end
  local n, unit = tostring(v):match("^(%d+%.?%d*)(%a*)$")
  local scale = ({[""] = 1, s = 1, ms = 0.001, m = 60})[unit or ""]
  local w = n and scale and tonumber(n) * scale
  if not w or w > MAX_WATCH_WAIT then return nil end
  return w
end

local function bool_query(q, name)
  local v = q[name]
  return v ~= nil and v ~= "0" and v ~= "false"
end

function M.install(node)
  local srv = node.http

  -- The leader's end of a follower's write: the encoded transaction, checked
  -- and given this node's limits before it is proposed.
  srv:route("POST", "/v1/internal/kv", function(req, res)
    if not node:is_leader() then return membership.not_leader(node, res) end
    local bytes, msg, code = core.kv_txn_limit(req:body(), node.opts.kv_max_value, node.opts.kv_max_bytes)
    if not bytes then return res:error(400, "BAD_REQUEST", tostring(msg) .. " (" .. tostring(code) .. ")") end
    local index, err = commit(node, bytes)
    if not index then return fail(res, err) end
    return res:json({index = index})
  end, {auth = "write"})

  local function key_of(req)
    local k = http.unescape(req.params["*"] or "")
    return k
  end

  srv:route("GET", "/v1/kv/*", function(req, res)
    local key, q = key_of(req), req.query
    local since = query_index(q, "index")
    if since == false then return res:error(400, "BAD_REQUEST", "index must be a non-negative integer") end
    if since then
      -- A blocking read: until this key changes after `since`.
      local wait = parse_wait(q.wait)
      if not wait then return res:error(400, "BAD_REQUEST", "wait must be a duration up to 600s (e.g. 30s)") end
      local deadline = hrtime() + wait * 1e9
      local at = since
      while true do
        local left = (deadline - hrtime()) / 1e9
        local evs, nxt = node:kv_watch(key, at, math.max(0, left))
        if not evs then return fail(res, nxt) end
        local hit = #evs == 0 -- The wait ended.
        for _, ev in ipairs(evs) do
          hit = hit or ev.key == key -- Not a longer key under it.
        end
        if hit then break end
        at = nxt
      end
    end
    local e, idx = node:kv_get(key, {consistent = bool_query(q, "consistent")})
    if not e and type(idx) ~= "number" then
      if idx.code == "INVALID" then return res:error(400, "BAD_REQUEST", idx.message) end
      return fail(res, idx)
    end
    res:header("X-Clusterkit-Index", format("%d", idx))
    if not e then
      return res:error(404, "NOT_FOUND", "no such key", {index = idx})
    end
    if bool_query(q, "raw") then
      res:header("Content-Type", "application/octet-stream")
      return res:send(e.value)
    end
    local out = entry_json(e)
    out.index = idx
    return res:json(out)
  end, {auth = "read"})

  srv:route("PUT", "/v1/kv/*", function(req, res)
    local prev = query_index(req.query, "cas")
    if prev == false then return res:error(400, "BAD_REQUEST", "cas must be a non-negative integer") end
    local index, err = node:kv_put(key_of(req), req:body(), {prev_index = prev or nil})
    if not index then return fail(res, err) end
    return res:json({index = index})
  end, {auth = "write"})

  srv:route("DELETE", "/v1/kv/*", function(req, res)
    local q = req.query
    local prev = query_index(q, "cas")
    if prev == false then return res:error(400, "BAD_REQUEST", "cas must be a non-negative integer") end
    local index, err = node:kv_delete(key_of(req), {prev_index = prev or nil, prefix = bool_query(q, "prefix")})
    if not index then return fail(res, err) end
    return res:json({index = index})
  end, {auth = "write"})

  -- GET /v1/kv?prefix=&limit=&after=&keys=1&consistent=1: a sorted listing.
  srv:route("GET", "/v1/kv", function(req, res)
    local q = req.query
    local limit = q.limit and tonumber(q.limit) or 1000
    local items, info = node:kv_list(q.prefix or "", {limit = limit, after = q.after,
      keys_only = bool_query(q, "keys"), consistent = bool_query(q, "consistent")})
    if not items then return fail(res, info) end
    local out = {}
    for i, e in ipairs(items) do out[i] = entry_json(e) end
    res:header("X-Clusterkit-Index", format("%d", info.index))
    return res:json({entries = json.array(out), index = info.index, more = info.more})
  end, {auth = "read"})

  -- POST /v1/kv: a transaction in JSON, {"compares": [{"key", "target", "op",
  -- "value"}], "ops": [{"type", "key", "value" | "value_base64"}]}.
  srv:route("POST", "/v1/kv", function(req, res)
    local body, jerr = req:json()
    if type(body) ~= "table" then return res:error(400, "BAD_REQUEST", jerr or "body must be a JSON object") end
    for _, list in ipairs({body.compares or {}, body.ops or {}}) do
      if type(list) == "table" then
        for _, x in ipairs(list) do
          if type(x) == "table" and x.value_base64 ~= nil then
            x.value = type(x.value_base64) == "string" and base64.decode(x.value_base64) or nil
            if x.value == nil then return res:error(400, "BAD_REQUEST", "value_base64 is not base64") end
          end
        end
      end
    end
    local index, err = node:kv_txn(body)
    if not index then
      if err.code == "CONFLICT" then
        return res:json({succeeded = false, error = {code = err.code, message = err.message}}, 409)
      end
      return fail(res, err)
    end
    return res:json({succeeded = true, index = index})
  end, {auth = "write"})

  -- GET /v1/watch?prefix=&index=&wait=30s: the changes under prefix after
  -- index, in order, as soon as there are any (or none when the wait ends).
  srv:route("GET", "/v1/watch", function(req, res)
    local q = req.query
    local since = query_index(q, "index")
    if not since then return res:error(400, "BAD_REQUEST", "index must be a non-negative integer") end
    local wait = parse_wait(q.wait)
    if not wait then return res:error(400, "BAD_REQUEST", "wait must be a duration up to 600s (e.g. 30s)") end
    local evs, nxt = node:kv_watch(q.prefix or "", since, wait)
    if not evs then return fail(res, nxt) end
    local out = {}
    for i, ev in ipairs(evs) do out[i] = entry_json(ev) end
    return res:json({events = json.array(out), index = nxt})
  end, {auth = "read"})
end

M.normalize = normalize
return M
