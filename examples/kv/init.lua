--- A distributed key-value store on clusterkit (the example the Go
-- ClusterKit README sketches as DistributedKV, done properly).
--
--   local kv = require "kv"
--   local ck = clusterkit.new()          -- options or the seed's env vars
--   local store = kv.install(ck)         -- routes and hooks (before start)
--   assert(store:start())                -- ck:start(), then copy owned partitions
--
-- clusterkit says where each key lives: ck:nodes_for_key(key) lists the
-- owners of the key's partition, primary first, from the table every node
-- applies through Raft. Everything else is this file's job:
--
-- Routing. PUT, GET and DELETE /kv/:key work on any node. The node that gets
-- the request forwards it (ck:request: clusterkit.http.request, keep-alive, HTTPS on a TLS cluster) to the
-- key's primary, or handles it itself when it is the primary. GET ?stale=1 may
-- be answered by any owner (this node first when it owns the key). When the
-- table is changing (the primary just died, a partition is being copied) the
-- routing node retries for a few seconds with a fresh lookup.
--
-- Replication and quorum. The primary stamps the write {epoch, seq} (the
-- partition's epoch and a hybrid logical clock that never goes backwards, see
-- storage.lua), sends it to every replica at once (PUT/DELETE
-- /internal/kv/:key) and, once floor(N/2) of the N-1 replicas applied it,
-- applies it itself and answers: a quorum of floor(N/2) + 1 owners, itself
-- included (2 of 3). Only then does the write become visible on the primary,
-- so a read never returns a value that a quorum does not hold. A replica that
-- did not apply the write (it holds an equal or newer stamp: 409 STALE_STAMP
-- with that stamp; a newer epoch: 409 STALE_EPOCH; the deadline passed: 504
-- DEADLINE_EXCEEDED) is not an ack. On STALE_STAMP the primary raises its seq
-- above the replica's stamp, so the retry that the routing node makes gets a
-- higher stamp and succeeds. A write that fails may have reached some owners:
-- like a timed-out write in any quorum store, its outcome is unknown until it
-- is read, but it never lands after its deadline (below).
--
-- Deadlines. The routing node gives every write an absolute deadline (wall
-- clock ms, X-KV-Deadline: now + route_timeout) and the epoch it routed with
-- (X-KV-Epoch). The primary refuses a forwarded write whose epoch is not its
-- current one (409 STALE_EPOCH) or whose deadline passed (504
-- DEADLINE_EXCEEDED), and replicates with the same deadline; every node checks
-- the deadline immediately before it applies (no yield in between), so no
-- node applies the write after the deadline. The routing node answers a
-- failed write only once the deadline (plus max_clock_skew) has passed on its
-- own clock: after that answer the write can no longer land anywhere.
-- Assumption: the nodes' wall clocks differ by at most max_clock_skew (0 by
-- default: the tests run every node on one machine, one clock).
--
-- Reads. The primary takes the value it holds, then asks the replicas whether
-- they have seen a newer epoch of the partition (GET /internal/kv-epoch/:p);
-- it answers once floor(N/2) of them confirmed its epoch. A primary that was
-- replaced cannot get that confirmation (the new primary fenced a majority of
-- the old owners before it served), so it cannot serve a stale read.
--
local clusterkit = require "clusterkit"
local storage = require "kv.storage"
-- The wall clock in ms, for deadlines that travel between nodes and for the
-- seq clock (the public API only has a monotonic clock, which is per host).
local time_ms = require("clusterkit.core").time_ms

local json = clusterkit.json
local format, floor, max, tonumber = string.format, math.floor, math.max, tonumber

local M = {}

local RETRY_DELAY = 0.1   -- seconds between routing retries
local SYNC_ATTEMPTS = 8   -- rounds of copy requests before a copy asks every member for everything

local now = clusterkit.monotime

local function wall_ms()
  return floor(time_ms())
end

-- ---------------------------------------------------------------------------
-- Answers. Local operations and forwarded ones both produce
-- {status, headers, body, code}, so that the router treats them alike.
-- ---------------------------------------------------------------------------

local function answer(status, body, headers)
  return {status = status, body = body or "", headers = headers or {}}
end

local function fail(status, code, message, extra)
  local e = {code = code, message = json.utf8_safe(message)}
  for k, v in pairs(extra or {}) do e[k] = v end
  local r = answer(status, json.encode({error = e}), {["Content-Type"] = "application/json"})
  r.code = code
  return r
end

local function ok_json(v)
  return answer(200, json.encode(v), {["Content-Type"] = "application/json"})
end

-- The answer of another node, keeping its status, body, Content-Type and
-- X-KV-* headers (the client gives header names in lower case), and its
-- error code.
local function from_http(res)
  local h = {}
  for k, v in pairs(res.headers) do
    if k == "content-type" then
      h["Content-Type"] = v
    elseif k:sub(1, 5) == "x-kv-" then
      h["X-KV-" .. k:sub(6):gsub("^%l", string.upper):gsub("%-%l", string.upper)] = v
    end
  end
  local r = answer(res.status, res.body, h)
  if res.status >= 400 then
    local body = json.decode(res.body)
    if type(body) == "table" and type(body.error) == "table" then
      r.code = body.error.code
    end
  end
  return r
end

local function send(res, r)
  res:status(r.status)
  for k, v in pairs(r.headers) do res:header(k, v) end
  return res:send(r.body)
end

-- Keys are arbitrary bytes: percent-encode them into a path segment.
local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end

local function int(s)
  if type(s) ~= "string" or not s:match("^%d+$") or #s > 15 then return nil end
  return tonumber(s)
end

local function stamp_str(epoch, seq)
  return format("%d.%d", epoch, seq)
end

local function truthy(s)
  return s ~= nil and s ~= "0" and s ~= "false" and s ~= "no"
end

-- Errors that a fresh lookup a moment later can cure: the table is moving, a
-- partition is being copied, a node died and its slots are not re-homed yet.
-- STALE_STAMP: the primary raised its seq above a replica's, the next try
-- gets a higher stamp.
local RETRY = {NOT_PRIMARY = true, NOT_OWNER = true, SYNCING = true, STALE_EPOCH = true, STALE_STAMP = true,
               QUORUM = true, NOT_READY = true, NO_OWNER = true, CONNECT = true, CLOSED = true}

-- Answers to a write that every try would get (the request itself is
-- refused): nothing was applied, no need to wait for the deadline.
local FINAL = {[400] = true, [401] = true, [413] = true}

-- ---------------------------------------------------------------------------
-- The store
-- ---------------------------------------------------------------------------

local Store = {}
Store.__index = Store

--- Adds the KV routes and hooks to node `ck` (not started yet). opts:
-- route_timeout (5 s: how long the routing node keeps retrying),
-- replication_timeout (2 s per request to a replica or copy source),
-- linger (60 s: how long a partition that moved away is kept for the new
-- owners to copy), max_clock_skew (0 s: how far the nodes' wall clocks may
-- differ; a routing node waits that much past a failed write's deadline
-- before it answers), copy_give_up (30 s: how long a copy waits for members
-- that do not answer, down ones included, before it serves without them; see
-- Store:_sync). Returns the store.
function M.install(ck, opts)
  opts = opts or {}
  local self = setmetatable({
    ck = ck,
    id = ck:me().id,
    data = storage.new(),
    route_timeout = opts.route_timeout or 5,
    replication_timeout = opts.replication_timeout or 2,
    linger = opts.linger or 60,
    max_clock_skew = opts.max_clock_skew or 0,
    copy_give_up = opts.copy_give_up or 30,
    late_refused = 0, -- writes and replications refused because their deadline had passed
    started = false,
  }, Store)
  self:_install_routes()
  self:_install_hooks()
  return self
end

function Store:_log(level, fmt, ...)
  self.ck.log[level](self.ck.log, "kv: " .. fmt, ...)
end

-- Internal endpoints require the cluster token when one is configured.
function Store:_auth_headers()
  local token = self.ck.opts.token
  return token and {Authorization = "Bearer " .. token} or {}
end

function Store:_authorized(req)
  local token = self.ck.opts.token
  return not token or req:header("Authorization") == "Bearer " .. token
end

-- Whether the node still runs (background copies end when it stops). The
-- public API has no call for it; ck.status is the node's own field.
function Store:_running()
  return self.ck.status == "running"
end

function Store:_addr(id)
  if not self:_running() then return nil end
  for _, n in ipairs(self.ck:cluster().nodes) do
    if n.id == id then return n.http_addr end
  end
end

-- Whether this node is among the owners of partition `index` in its table.
function Store:_owns(index)
  local p = self.ck:partition(index)
  if not p then return false end
  if p.primary_node == self.id then return true end
  for _, r in ipairs(p.replica_nodes) do
    if r == self.id then return true end
  end
  return false
end

-- ---------------------------------------------------------------------------
-- The primary's side: writes and reads of keys this node leads
-- ---------------------------------------------------------------------------

-- The error of a JSON error answer ({} when there is none).
local function error_of(res)
  local body = json.decode(res.body)
  return type(body) == "table" and type(body.error) == "table" and body.error or {}
end

-- Sends one request to each node of `nodes` at once: make(n) gives the
-- request, judge(n, res, err) says whether the answer counts. Returns the
-- number that counted, once `need` of them did or every node answered.
function Store:_fanout(nodes, need, timeout, make, judge)
  local oks, done = 0, 0
  local answered = clusterkit.cond()
  for _, n in ipairs(nodes) do
    clusterkit.spawn(function()
      local req = make(n)
      req.timeout = timeout
      local res, err = self.ck:request(req)
      if judge(n, res, err) then oks = oks + 1 end
      done = done + 1
      answered:signal()
    end)
  end
  -- Bounded even if a request outlived its timeout.
  local limit = now() + timeout + 1
  while oks < need and done < #nodes and now() < limit do
    answered:wait(limit - now())
  end
  return oks
end

-- Sends a stamped write to the replicas at once; returns when `need` of them
-- applied it or all answered. Returns the number of acks, the highest epoch
-- a replica reported when it refused the write as stale (or nil), and the
-- newest stamp a replica reported holding for the key (or nil). Only a
-- replica that applied the write (or already held exactly this write) acks.
function Store:_replicate(part, replicas, key, value, epoch, seq, need, deadline_ms)
  local headers = self:_auth_headers()
  headers["X-KV-Epoch"], headers["X-KV-Seq"] = format("%d", epoch), format("%d", seq)
  headers["X-KV-Deadline"] = format("%d", deadline_ms)
  local newer, stale = nil, nil
  local timeout = math.min(self.replication_timeout, math.max(0.05, (deadline_ms - wall_ms()) / 1000))
  local acks = self:_fanout(replicas, need, timeout, function(n)
    return {method = value and "PUT" or "DELETE", url = self.ck:url(n, "/internal/kv/" .. escape(key)),
            headers = headers, body = value}
  end, function(n, res, err)
    if res and res.status == 200 then return true end
    if res and res.status == 409 then
      local e = error_of(res)
      if e.code == "STALE_EPOCH" and type(e.epoch) == "number" then
        newer = max(newer or 0, e.epoch)
      elseif e.code == "STALE_STAMP" and type(e.epoch) == "number" and type(e.seq) == "number" then
        -- Continue above it: the next write of this partition wins.
        part:observe(e.seq)
        if not stale or storage.newer(e.epoch, e.seq, stale.epoch, stale.seq) then
          stale = {epoch = e.epoch, seq = e.seq}
        end
      end
    end
    self:_log("debug", "replication of %q to %s: %s", key, n.id,
      res and (res.status .. " " .. res.body) or tostring(err))
    return false
  end)
  return acks, newer, stale
end

-- The checks every operation on the primary starts with: this node is the
-- primary of key's partition at an epoch no peer has seen superseded, and
-- its copy is complete. Returns p, part or nil, the failure.
function Store:_as_primary(key)
  local p, err = self.ck:partition_for_key(key)
  if not p then return nil, fail(503, "NOT_READY", tostring(err)) end
  if p.primary_node ~= self.id then
    return nil, fail(421, "NOT_PRIMARY", self.id .. " is not the primary of " .. p.id, {primary = p.primary_node})
  end
  local part = self.data:part(p.index)
  if part.seen_epoch > p.epoch then
    -- A peer has seen a newer table: we are about to learn we were replaced.
    return nil, fail(409, "STALE_EPOCH", format("%s is at epoch %d here, a peer has seen %d",
      p.id, p.epoch, part.seen_epoch), {epoch = part.seen_epoch})
  end
  if not part.ready then
    return nil, fail(503, "SYNCING", p.id .. " is being copied to " .. self.id)
  end
  return p, part
end

function Store:_past_deadline(deadline_ms)
  self.late_refused = self.late_refused + 1
  return fail(504, "DEADLINE_EXCEEDED", format("the write's deadline passed %d ms ago", wall_ms() - deadline_ms))
end

--- PUT (value) or DELETE (value == nil) of key, on its primary. routed_epoch:
-- the partition's epoch in the routing node's table; deadline_ms: the wall
-- clock (ms) after which the write must not be applied anywhere.
function Store:_write(key, value, routed_epoch, deadline_ms)
  local p, part = self:_as_primary(key)
  if not p then return part end
  if routed_epoch ~= p.epoch then
    -- The routing node's table is older (it routed to a former primary) or
    -- newer (this node is about to learn it was replaced): not this epoch's
    -- write.
    part:see(routed_epoch)
    return fail(409, "STALE_EPOCH", format("%s is at epoch %d here, the write was routed at epoch %d",
      p.id, p.epoch, routed_epoch), {epoch = max(p.epoch, routed_epoch)})
  end
  if wall_ms() >= deadline_ms then return self:_past_deadline(deadline_ms) end
  -- The owners as this node's table has them now (the table may change while
  -- we wait for the replicas; the stamp says which table the write belongs to).
  local owners = self.ck:nodes_for_key(key)
  local replicas = {}
  for i = 2, #owners do replicas[#replicas + 1] = owners[i] end
  local quorum = floor(#owners / 2) + 1
  local epoch, seq = p.epoch, part:next_seq(wall_ms())
  local existed = part:get(key) ~= nil
  local acks, newer, stale = self:_replicate(part, replicas, key, value, epoch, seq, quorum - 1, deadline_ms)
  if newer then
    part:see(newer)
    return fail(409, "STALE_EPOCH", format("%s has a newer epoch (%d) than this primary's %d", p.id, newer, epoch),
      {epoch = newer})
  end
  if acks < quorum - 1 then
    if wall_ms() >= deadline_ms then return self:_past_deadline(deadline_ms) end
    if stale then
      return fail(409, "STALE_STAMP", format("a replica holds %s, newer than the write's %s; retry",
        stamp_str(stale.epoch, stale.seq), stamp_str(epoch, seq)), {epoch = stale.epoch, seq = stale.seq})
    end
    return fail(503, "QUORUM", format("%d of %d owners acknowledged, %d needed", acks + 1, #owners, quorum))
  end
  -- A quorum of the replicas has it: apply here, last, and answer. The
  -- checks and the apply run without yielding.
  if wall_ms() >= deadline_ms then return self:_past_deadline(deadline_ms) end
  if part.seen_epoch > epoch then
    return fail(409, "STALE_EPOCH", format("%s: a peer has seen epoch %d during the write", p.id, part.seen_epoch),
      {epoch = part.seen_epoch})
  end
  local applied, held = part:apply(key, value, epoch, seq)
  if not applied then
    return fail(409, "STALE_STAMP", format("this primary holds %s, newer than the write's %s",
      stamp_str(held.epoch, held.seq), stamp_str(epoch, seq)), {epoch = held.epoch, seq = held.seq})
  end
  local out = {key = json.utf8_safe(key), partition = p.id, epoch = epoch,
               version = stamp_str(epoch, seq), acks = acks + 1, quorum = quorum, owners = #owners}
  if value == nil then out.deleted = existed end
  return ok_json(out)
end

--- GET of key on this node: on its primary, or (stale) on any owner.
function Store:_read(key, stale)
  local ck = self.ck
  local p, part
  if stale then
    local err
    p, err = ck:partition_for_key(key)
    if not p then return fail(503, "NOT_READY", tostring(err)) end
    if not ck:am_i_responsible_for(key) then
      return fail(421, "NOT_OWNER", self.id .. " does not own " .. p.id)
    end
    part = self.data:part(p.index)
    if not part.ready then
      return fail(503, "SYNCING", p.id .. " is being copied to " .. self.id)
    end
  else
    p, part = self:_as_primary(key)
    if not p then return part end
  end
  -- The value first, then the confirmation that it was current.
  local e = part:get(key)
  if not stale then
    local owners = ck:nodes_for_key(key)
    local replicas = {}
    for i = 2, #owners do replicas[#replicas + 1] = owners[i] end
    local need, newer = floor(#owners / 2), nil
    local path = format("/internal/kv-epoch/%d?epoch=%d", p.index, p.epoch)
    local confirmed = self:_fanout(replicas, need, self.replication_timeout, function(n)
      return {url = self.ck:url(n, path), headers = self:_auth_headers()}
    end, function(_, res)
      if res and res.status == 409 then
        local x = error_of(res)
        if type(x.epoch) == "number" then newer = max(newer or 0, x.epoch) end
      end
      return res ~= nil and res.status == 200
    end)
    if newer then part:see(newer) end
    if confirmed < need then
      if newer then
        return fail(409, "STALE_EPOCH", format("%s: a replica has seen epoch %d", p.id, newer), {epoch = newer})
      end
      return fail(503, "QUORUM", format("%d of %d replicas confirmed epoch %d, %d needed", confirmed,
        #replicas, p.epoch, need))
    end
  end
  local r
  if e then
    r = answer(200, e.value, {["Content-Type"] = "application/octet-stream",
                              ["X-KV-Version"] = stamp_str(e.epoch, e.seq)})
  else
    r = fail(404, "NOT_FOUND", "no key " .. key)
  end
  r.headers["X-KV-Partition"], r.headers["X-KV-Served-By"] = p.id, self.id
  return r
end

-- ---------------------------------------------------------------------------
-- The receiving node's side: route to the owners
-- ---------------------------------------------------------------------------

-- Runs the operation on node n: here, or forwarded over HTTP. Writes carry
-- the epoch they were routed with and their deadline.
function Store:_at(n, method, key, body, stale, timeout, epoch, deadline_ms)
  local write = method ~= "GET"
  if n.id == self.id then
    if not write then return self:_read(key, stale) end
    return self:_write(key, method == "PUT" and body or nil, epoch, deadline_ms)
  end
  -- A forwarded write carries an epoch and a deadline that the receiver
  -- trusts, so it needs the cluster token like every internal request.
  local headers = self:_auth_headers()
  headers["X-KV-Forwarded"] = self.id
  if write then
    headers["X-KV-Epoch"], headers["X-KV-Deadline"] = format("%d", epoch), format("%d", deadline_ms)
    timeout = math.max(0.05, (deadline_ms - wall_ms()) / 1000)
  end
  local res, err = self.ck:request {
    method = method, url = self.ck:url(n, "/kv/" .. escape(key) .. (stale and "?stale=1" or "")),
    headers = headers, body = method == "PUT" and body or nil, timeout = timeout,
  }
  if not res then
    local r = fail(err.code == "TIMEOUT" and 504 or 502, err.code, "forwarding to " .. n.id .. ": " .. err.message)
    return r
  end
  return from_http(res)
end

function Store:_route(method, key, body, stale)
  local deadline = now() + self.route_timeout
  local write = method ~= "GET"
  local deadline_ms = wall_ms() + floor(self.route_timeout * 1000)
  local r, tried
  while true do
    local owners, err = self.ck:nodes_for_key(key)
    local p = owners and self.ck:partition_for_key(key)
    if not owners or not p then
      r = fail(503, "NOT_READY", tostring(err))
    elseif #owners == 0 then
      r = fail(503, "NO_OWNER", "the key's partition has no owner")
    else
      -- Writes and reads go to the primary; a stale read to any owner, this
      -- node first when it is one.
      local targets = {owners[1]}
      if stale then
        targets = {}
        for _, n in ipairs(owners) do
          if n.id == self.id then table.insert(targets, 1, n) else targets[#targets + 1] = n end
        end
      end
      for _, n in ipairs(targets) do
        tried = true
        r = self:_at(n, method, key, body, stale, max(0.5, deadline - now()), p.epoch, deadline_ms)
        if not RETRY[r.code] then break end
      end
      if not RETRY[r.code] then break end
    end
    if now() + RETRY_DELAY >= deadline or (write and wall_ms() + RETRY_DELAY * 1000 >= deadline_ms) then break end
    clusterkit.sleep(RETRY_DELAY)
  end
  if write and tried and r.status ~= 200 and not FINAL[r.status] then
    -- The outcome is unknown and a try (this one or an earlier one) may still
    -- be on its way somewhere: answer only when no node can apply it any more
    -- (every node checks the deadline right before applying; clocks differ by
    -- at most max_clock_skew).
    local until_ms = deadline_ms + floor(self.max_clock_skew * 1000)
    for _ = 1, 1000 do
      local left = until_ms - wall_ms()
      if left < 0 then break end
      clusterkit.sleep(left / 1000 + 0.001)
    end
  end
  return r
end

-- ---------------------------------------------------------------------------
-- Copying partitions between nodes
-- ---------------------------------------------------------------------------

-- Fetches partition `index` from node `id` and merges it (unless a newer
-- ownership change superseded copy `gen`). Asking with `epoch` fences the
-- source. Returns true when the source answered with its complete copy (with
-- `partial`: with whatever it holds, complete or not; with `dropped` as well,
-- also what it set aside when it regained the partition, see Store:_sync).
function Store:_fetch(index, id, epoch, gen, partial, dropped, since)
  local addr = self:_addr(id)
  if not addr then return false end
  local res, err = self.ck:request {
    url = self.ck:url(addr, format("/internal/partition/%d?epoch=%d%s%s%s", index, epoch,
      partial and "&partial=1" or "", partial and dropped and "&dropped=1" or "",
      since and format("&since=%d", since) or "")),
    headers = self:_auth_headers(), timeout = self.replication_timeout,
  }
  if not res or res.status ~= 200 then
    self:_log("debug", "copy of partition-%d from %s: %s", index, id,
      res and (res.status .. " " .. res.body) or tostring(err))
    return false
  end
  local part = self.data:part(index)
  if part.gen ~= gen then return false end
  local changed, why = part:merge(json.decode(res.body))
  if not changed then
    self:_log("warn", "copy of partition-%d from %s: %s", index, id, why)
    return false
  end
  return true
end

-- Asks every member of the cluster but this node that has not answered yet
-- (`heard`) for whatever it holds of partition `index` (with `dropped`: and
-- what it set aside), and merges it. Returns true once every one of them has
-- answered, else false and the ids of those that have not.
--
-- Members marked down are asked too: "down" is the failure detector's
-- verdict, not a fact. A split marks the nodes on its minority side down while
-- they are alive with their data, and they may be the only holders of writes
-- that were acknowledged before the split (a majority of some partition's
-- owners can sit on the smaller side). Leaving them out made a copy complete
-- with the older values of the majority side, and the node then served them
-- as current (a stale read after the heal: the fault suite's
-- partition-plus-kill). A node that really is gone blocks the union until
-- Store:_sync gives up on it (copy_give_up) or it leaves the cluster.
function Store:_fetch_everyone(index, epoch, gen, heard, dropped)
  local missing = {}
  for _, n in ipairs(self.ck:cluster().nodes) do
    if n.id ~= self.id and not heard[n.id] then
      if self:_fetch(index, n.id, epoch, gen, true, dropped) then
        heard[n.id] = true
      else
        missing[#missing + 1] = n.id
      end
    end
  end
  return #missing == 0, missing
end

-- Makes partition `index` complete on this node. plan = {epoch, primary (id
-- or nil), others = {ids}, need, drop_before (epoch or nil), everyone, why}:
-- done when the primary answered or `need` of the others did, or (with
-- `everyone`) when every member of the cluster answered with what it holds.
--
-- `everyone` is for a node that starts: it knows only the table as it is
-- now, not who owned its partitions before. A node that joins usually
-- applies its first table only after the leader has already placed
-- partitions on it (the join and the rebalance commit before it catches up),
-- so it gets no `gain` event for them, and the other owners in that table
-- may be new as well (several nodes joined at once): copying only from them,
-- each waits for the others, none has the data, and the copy gives up with
-- nothing. The previous owners still hold the partition (a node that lost
-- one keeps it for `linger` seconds): every write that was acknowledged is
-- held by some member, so the union of what every member holds is complete.
function Store:_sync(index, plan)
  local part = self.data:part(index)
  -- A change that interrupts such a copy before it completed keeps asking
  -- everyone: the previous owners it names may be those new nodes.
  local everyone = plan.everyone or (part.everyone and not part.ready)
  part.gen = part.gen + 1
  local gen = part.gen
  part.ready, part.lost_at, part.everyone, part.waiting = false, nil, everyone, nil
  part:see(plan.epoch)
  if plan.drop_before then part:drop_before(plan.drop_before) end
  if not plan.primary and #plan.others == 0 and not everyone then
    part.ready = true -- Nobody to copy from: a new partition, or its only owner.
    return
  end
  local answered, count, from, heard, heard_all = {}, 0, nil, {}, {}
  local give_up_at = now() + self.copy_give_up
  -- Bounded by copy_give_up (every round sleeps at least 0.1 s) and by the
  -- count, should the clock misbehave.
  for attempt = 1, 100000 do
    if not self:_running() then return end
    local all, missing
    if plan.primary and self:_fetch(index, plan.primary, plan.epoch, gen, false, false, plan.since) then
      from = plan.primary
    else
      for _, id in ipairs(plan.others) do
        if count >= plan.need then break end
        if not answered[id] and self:_fetch(index, id, plan.epoch, gen, false, false, plan.since) then
          answered[id], count = true, count + 1
        end
      end
      if count >= plan.need and (count > 0 or not everyone) then
        from = count > 0 and (count .. " other owner(s)") or "its own copy (enough for a quorum)"
      elseif everyone and part.gen == gen and self:_running() then
        all, missing = self:_fetch_everyone(index, plan.epoch, gen, heard)
        if all then from = "every member" end
      end
      if not from and attempt >= SYNC_ATTEMPTS and part.gen == gen and self:_running() then
        -- The sources that do not answer with a complete copy may be
        -- incomplete copies themselves, each waiting for the others: owners
        -- that regained the partition (drop_before set their old copy
        -- aside) and owners that never completed theirs, so that none is
        -- ever ready (a split that cut off a majority of its owners, healed
        -- while the table still moved). Every acknowledged write is still
        -- held by some member, possibly only in what it set aside: once
        -- every member answered with all it holds, set-aside entries
        -- included, the union is complete.
        all, missing = self:_fetch_everyone(index, plan.epoch, gen, heard_all, true)
        if all then
          part:restore_dropped()
          from = "every member (set-aside entries included)"
        end
      end
    end
    if part.gen ~= gen then return end -- A newer change took over.
    if from then break end
    if missing then
      if not part.waiting then
        self:_log("info", "partition-%d (%s, epoch %d): waiting for %s to answer before it serves", index,
          plan.why, plan.epoch, table.concat(missing, ", "))
      end
      part.waiting = missing
    end
    if now() >= give_up_at then break end
    clusterkit.sleep(math.min(0.1 * 2 ^ (attempt - 1), 1))
  end
  if part.gen ~= gen or not self:_running() then return end
  part.waiting = nil
  if from then
    part:forget_dropped() -- The fresh copy replaced what drop_before set aside.
    self:_log("info", "partition-%d (%s, epoch %d): copied from %s, %d keys", index, plan.why, plan.epoch,
      from, part.keys)
  else
    -- Giving up: some members never answered within copy_give_up. They may
    -- hold acknowledged writes that nobody else has (then those are lost:
    -- the majority of a partition's owners is gone, which the store does not
    -- survive); serve the union of what the others hold, set aside included,
    -- rather than nothing at all.
    part:restore_dropped()
    self:_log("warn", "partition-%d (%s, epoch %d): no complete copy reachable within %gs; serving the %d keys "
      .. "that the reachable members hold", index, plan.why, plan.epoch, self.copy_give_up, part.keys)
  end
  part.ready = true
end

-- How many of n owners must answer so that the answers include every write a
-- quorum (floor(n/2)+1) of them acknowledged.
local function overlap(n)
  return n - floor(n / 2)
end

local function without(list, ...)
  local drop, out = {}, {}
  for _, id in ipairs({...}) do drop[id] = true end
  for _, id in ipairs(list) do
    if id ~= "" and not drop[id] then out[#out + 1] = id end
  end
  return out
end

-- Drops partitions that moved away more than `linger` seconds ago.
function Store:_sweep()
  for index, part in pairs(self.data.parts) do
    if part.lost_at and os.time() - part.lost_at >= self.linger and not self:_owns(index) then
      part:clear()
      part.lost_at = nil
    end
  end
end

function Store:_on_partition_change(ev)
  self:_sweep()
  local part = self.data:part(ev.index)
  local old = {ev.old_primary}
  for _, r in ipairs(ev.old_replicas) do old[#old + 1] = r end
  old = without(old)
  if ev.resync and (ev.new_primary == self.id or self:_owns(ev.index)) then
    -- The row went through changes this node did not see one by one (it
    -- installed a snapshot): it may have been no owner for a while and
    -- missed writes. Copy as a starting node does: the union of what every
    -- member holds, its own copy included (newer stamps win, tombstones
    -- included, so what it holds that is stale loses to what it missed).
    local owners = without({ev.new_primary, unpack(ev.new_replicas)}, self.id)
    self:_sync(ev.index, {why = "resync", epoch = ev.epoch, since = ev.epoch, others = owners,
      need = overlap(#owners + 1), everyone = true})
  elseif ev.role == "gain" then
    -- New here: whatever an earlier ownership left behind is replaced by a
    -- copy from the previous owners.
    self:_sync(ev.index, {why = "gain", epoch = ev.epoch, since = ev.old_epoch, drop_before = ev.epoch,
      primary = ev.old_primary ~= "" and ev.old_primary or nil,
      others = without(old, ev.old_primary), need = overlap(#old)})
  elseif ev.role == "promote" then
    -- A replica became primary (usually: the primary died). It may have
    -- missed writes that a quorum without it acknowledged: merge the other
    -- previous owners' copies. Its own copy counts when it was complete.
    local need = overlap(#old) - (part.ready and 1 or 0)
    self:_sync(ev.index, {why = "promote", epoch = ev.epoch, since = ev.old_epoch,
      primary = ev.old_primary ~= "" and ev.old_primary or nil,
      others = without(old, ev.old_primary, self.id), need = need})
  elseif ev.role == "lose" then
    -- Keep the data for a while: the new owners copy it from here.
    part.gen = part.gen + 1
    part.lost_at = os.time()
  end
end

function Store:_install_hooks()
  self.ck:on("partition_change", function(ev)
    -- Before store:start() returns, start() itself copies what the node owns.
    if self.started and self:_running() then self:_on_partition_change(ev) end
  end)
end

--- Starts the node (ck:start()), then copies every partition it owns from
-- the other owners (in the background; until a partition is complete it
-- answers 503 SYNCING and routing nodes retry). Returns true or nil, err.
function Store:start()
  local ok, err = self.ck:start()
  if not ok then return nil, err end
  self.started = true
  for _, p in ipairs(self.ck:partitions()) do
    if self:_owns(p.index) then
      local owners = {p.primary_node}
      for _, r in ipairs(p.replica_nodes) do owners[#owners + 1] = r end
      local primary = p.primary_node ~= self.id and p.primary_node or nil
      clusterkit.spawn(self._sync, self, p.index, {why = "start", epoch = p.epoch, since = p.epoch, primary = primary,
        others = without(owners, self.id, p.primary_node), need = overlap(#owners), everyone = true})
    end
  end
  return true
end

--- {partitions, keys, ready, late_refused} of this node: what it holds right now.
function Store:stats()
  local parts, keys, ready = {}, 0, true
  for index, part in pairs(self.data.parts) do
    local owns = self.started and self:_owns(index)
    if owns or part.keys > 0 then
      parts[#parts + 1] = {partition = "partition-" .. index, index = index, keys = part.keys,
                           ready = part.ready, owner = owns, seen_epoch = part.seen_epoch,
                           seq = part.seq, waiting_for = part.waiting and json.array(part.waiting) or nil}
      keys = keys + (owns and part.keys or 0)
      if owns and not part.ready then ready = false end
    end
  end
  table.sort(parts, function(a, b) return a.index < b.index end)
  return {node = self.id, keys = keys, ready = ready and self.started, late_refused = self.late_refused,
          partitions = json.array(parts)}
end

-- ---------------------------------------------------------------------------
-- HTTP routes
-- ---------------------------------------------------------------------------

function Store:_install_routes()
  local ck = self.ck

  -- The client API, on every node. A request that another node forwarded
  -- (X-KV-Forwarded) is handled here and never forwarded again, so nodes
  -- whose tables disagree for a moment cannot bounce a request around. A
  -- forwarded write must say which epoch it was routed with (X-KV-Epoch) and
  -- until when it may be applied (X-KV-Deadline, wall-clock ms).
  local function forwarded_write(req, res, value)
    if not self:_authorized(req) then
      return res:error(401, "UNAUTHORIZED", "the cluster token is required")
    end
    local epoch, deadline_ms = int(req:header("X-KV-Epoch")), int(req:header("X-KV-Deadline"))
    if not epoch or not deadline_ms then
      return res:error(400, "BAD_REQUEST", "a forwarded write needs X-KV-Epoch and X-KV-Deadline (integers)")
    end
    return send(res, self:_write(req.params.key, value, epoch, deadline_ms))
  end
  ck:route("GET", "/kv/:key", function(req, res)
    local key, stale = req.params.key, truthy(req.query.stale)
    if req:header("X-KV-Forwarded") then return send(res, self:_read(key, stale)) end
    return send(res, self:_route("GET", key, nil, stale))
  end)
  ck:route("PUT", "/kv/:key", function(req, res)
    local key, value = req.params.key, req:body()
    if req:header("X-KV-Forwarded") then return forwarded_write(req, res, value) end
    return send(res, self:_route("PUT", key, value))
  end)
  ck:route("DELETE", "/kv/:key", function(req, res)
    local key = req.params.key
    if req:header("X-KV-Forwarded") then return forwarded_write(req, res, nil) end
    return send(res, self:_route("DELETE", key))
  end)

  -- Replication from a primary: the write, its stamp and its deadline.
  -- Refused when the stamp's epoch is older than the newest this node knows
  -- for the partition (409 STALE_EPOCH), when the deadline passed (504
  -- DEADLINE_EXCEEDED), or when this node holds the key with a newer stamp,
  -- or another write with the same one (409 STALE_STAMP with that stamp): a
  -- refused write is not an ack. The checks and the apply do not yield.
  local function replicated(req, res, value)
    if not self:_authorized(req) then
      return res:error(401, "UNAUTHORIZED", "the cluster token is required")
    end
    local epoch, seq = int(req:header("X-KV-Epoch")), int(req:header("X-KV-Seq"))
    local deadline_ms = int(req:header("X-KV-Deadline"))
    if not epoch or not seq or not deadline_ms then
      return res:error(400, "BAD_REQUEST", "X-KV-Epoch, X-KV-Seq and X-KV-Deadline must be non-negative integers")
    end
    local key = req.params.key
    local p, err = ck:partition_for_key(key)
    if not p then return res:error(503, "NOT_READY", tostring(err)) end
    local part = self.data:part(p.index)
    local current = max(p.epoch, part.seen_epoch)
    if epoch < current then
      return res:error(409, "STALE_EPOCH", format("%s is at epoch %d, the write was stamped %d", p.id, current, epoch),
        {epoch = current})
    end
    if wall_ms() >= deadline_ms then
      return send(res, self:_past_deadline(deadline_ms))
    end
    part:see(epoch)
    local applied, held = part:apply(key, value, epoch, seq)
    if not applied and not (held.epoch == epoch and held.seq == seq and held.value == value) then
      return send(res, fail(409, "STALE_STAMP", format("%s holds %s for the key, the write was stamped %s", self.id,
        stamp_str(held.epoch, held.seq), stamp_str(epoch, seq)), {epoch = held.epoch, seq = held.seq}))
    end
    return res:json({applied = applied, epoch = epoch})
  end
  ck:route("PUT", "/internal/kv/:key", function(req, res) return replicated(req, res, req:body()) end)
  ck:route("DELETE", "/internal/kv/:key", function(req, res) return replicated(req, res, nil) end)

  -- A primary's read asks: have you seen a newer epoch of partition p than
  -- E? 200 (and this node now knows E) or 409 STALE_EPOCH with the newer one.
  ck:route("GET", "/internal/kv-epoch/:p", function(req, res)
    if not self:_authorized(req) then
      return res:error(401, "UNAUTHORIZED", "the cluster token is required")
    end
    local index, epoch = int(req.params.p), int(req.query.epoch)
    local p = index and ck:partition(index)
    if not p or not epoch then
      return res:error(400, "BAD_REQUEST", "a partition index and ?epoch= are required")
    end
    local part = self.data:part(index)
    local current = max(p.epoch, part.seen_epoch)
    if current > epoch then
      return res:error(409, "STALE_EPOCH", format("partition-%d is at epoch %d here", index, current),
        {epoch = current})
    end
    part:see(epoch)
    return res:json({epoch = epoch})
  end)

  -- A partition's whole content, for a node that gained it. ?epoch=E (the
  -- asker's epoch) fences this node first: from now on it refuses writes
  -- stamped with older epochs.
  ck:route("GET", "/internal/partition/:p", function(req, res)
    if not self:_authorized(req) then
      return res:error(401, "UNAUTHORIZED", "the cluster token is required")
    end
    local index = int(req.params.p)
    if not index or not ck:partition(index) then
      return res:error(404, "NOT_FOUND", "no partition " .. req.params.p)
    end
    local epoch = req.query.epoch and int(req.query.epoch)
    if req.query.epoch and not epoch then
      return res:error(400, "BAD_REQUEST", "epoch must be a non-negative integer")
    end
    self:_sweep() -- Never hand out a copy that outlived its linger time.
    local part = self.data:part(index)
    if epoch then part:see(epoch) end
    if not part.ready and not truthy(req.query.partial) then
      return res:error(503, "SYNCING", "partition-" .. index .. " is not complete on " .. self.id)
    end
    -- ?since=S: the asker counts on this node being complete as an owner of row S. A table
    -- behind S (not applied yet, raft stuck) may have `ready` from an older ownership.
    local since = int(req.query.since)
    if since and not truthy(req.query.partial) and ck:partition(index).epoch < since then
      return res:error(503, "SYNCING", format("partition-%d is at epoch %d on %s, the copy needs epoch %d",
        index, ck:partition(index).epoch, self.id, since))
    end
    -- ?partial=1: what this node holds, complete or not (a starting node asks
    -- every member, see Store:_sync).
    -- ?dropped=1 (with ?partial=1): also what drop_before set aside (a copy
    -- that gives up asks for it, see Store:_sync).
    local copy = part:export(truthy(req.query.partial) and truthy(req.query.dropped))
    copy.complete = part.ready
    return res:json(copy)
  end)

  ck:route("GET", "/internal/kv-stats", function(req, res)
    if not self:_authorized(req) then
      return res:error(401, "UNAUTHORIZED", "the cluster token is required")
    end
    return res:json(self:stats())
  end)
end

return M
