--- The view: Lua tables derived from the committed state, for lookups,
-- the HTTP answers and the hooks; and the events a change of view fires.
--
-- A view is built once from the whole state (M.build) and then follows
-- the core's record of what each commit changed (M.update, O(changes)).
-- M.diff turns two views and that record into the hook events, as a list:
-- it fires nothing itself. The View object (M.new) caches the current view
-- of one core and moves it on at each "applied" event.
--
-- A view's shape:
--   index, table_index, ready, feature_level, nodes[i], by_id[id];
--   once ready: cluster_id, name, partitions, replication, hash_algo,
--   hash_tags, hasher (cdata owned by the view), pnodes[p] = {primary,
--   replicas...} (node tables), replicas[p], parts[p] = {id, index,
--   primary_node, replica_nodes, epoch}; rows_of (see below), lazily.
local ffi = require "ffi"
local is_down = require("clusterkit.detector").is_down
local attrs = require "clusterkit.attrs"
local new_table = require "table.new" -- LuaJIT's presized tables.

local M = {}

local ipairs, pairs, type, next, unpack = ipairs, pairs, type, next, unpack

ffi.cdef [[
struct ck_hasher { uint32_t algo; uint32_t partitions; bool tags; };
]]
local hasher_ptr_t = ffi.typeof("const struct ck_hasher *")
local hasher_t = ffi.typeof("struct ck_hasher")

--- A committed node entry as views and the API show it.
-- Its optional attributes (clusterkit.attrs) under their JSON names.
local function public_node(n)
  return attrs.to_view(n, {
    id = n.id, name = n.name, ip = n.http_addr, http_addr = n.http_addr,
    raft_addr = n.raft_addr, status = n.status, zone = n.zone, weight = n.weight,
    services = n.services, status_since = n.status_since, raft_id = n.raft_id,
  })
end

-- Builds the lookup structures for one committed state:
--   nodes[i], by_id[id], pnodes[p+1] = {primary, replicas...} (node tables),
--   parts[p+1] = {id, index, primary_node, replica_nodes, epoch}.
function M.build(raw, hasher)
  local v = {index = raw.index, table_index = raw.table_index, ready = raw.initialized,
             feature_level = raw.feature_level or 1}
  local nodes, by_id = {}, {}
  for i, n in ipairs(raw.nodes) do
    local pn = public_node(n)
    nodes[i], by_id[n.id] = pn, pn
  end
  v.nodes, v.by_id = nodes, by_id
  if not raw.initialized then
    return v
  end
  v.cluster_id, v.name = raw.cluster_id, raw.name
  v.partitions, v.replication = raw.partitions, raw.replication
  v.hash_algo, v.hash_tags = raw.hash_algo, raw.hash_tags
  -- A copy the view owns: the core's hasher lives in the replicated state,
  -- which close frees while a hook or handler may still hold this view
  -- (lookups during stop read freed memory when this was a pointer).
  v.hasher = hasher and hasher_t(ffi.cast(hasher_ptr_t, hasher)[0])
  local pnodes, parts, replicas = {}, {}, {}
  local owners, w, epochs = raw.owners, raw.width, raw.epochs
  for p = 1, raw.partitions do
    local row, rids, rnodes = {}, {}, {}
    for k = 1, w do
      local at = owners[(p - 1) * w + k]
      if at == 0 then break end
      row[k] = nodes[at]
      if k > 1 then
        rids[k - 1] = nodes[at].id
        rnodes[k - 1] = nodes[at]
      end
    end
    pnodes[p], replicas[p] = row, rnodes
    parts[p] = {
      id = "partition-" .. (p - 1), index = p - 1,
      primary_node = row[1] and row[1].id or "", replica_nodes = rids, epoch = epochs[p],
    }
  end
  v.pnodes, v.parts, v.replicas = pnodes, parts, replicas
  return v
end

local function shallow(t, nhash)
  local c = new_table(0, nhash or 16)
  for k, x in pairs(t) do c[k] = x end
  return c
end

local function copy_list(t)
  local n = #t
  local c = new_table(n, 0)
  for i = 1, n do c[i] = t[i] end
  return c
end

-- The partitions each node holds, by node id: {[id] = {[p] = true}}, for
-- the rows of view v. Built once from the rows (P x RF), then kept up to
-- date by M.update from the record.
local function index_row(idx, p, row)
  for k = 1, #row do
    local set = idx[row[k].id]
    if not set then set = {}; idx[row[k].id] = set end
    set[p] = true
  end
end

local function rows_of(v)
  local idx = v.rows_of
  if idx then return idx end
  idx = {}
  for p = 1, #(v.pnodes or {}) do index_row(idx, p, v.pnodes[p]) end
  v.rows_of = idx
  return idx
end

-- A row of node tables and its replicas from a list of owners (ids, or
-- the node tables of an older row), each resolved by lookup(id); nil when
-- one is unknown.
local function resolve_row(owners, lookup)
  local row, rnodes = {}, {}
  for k = 1, #owners do
    local o = owners[k]
    local n = lookup(type(o) == "table" and o.id or o)
    if not n then return nil end
    row[k] = n
    if k > 1 then rnodes[k - 1] = n end
  end
  return row, rnodes
end

-- The owners' ids of a row of node tables.
local function row_ids(row)
  local ids = {}
  for k = 1, #row do ids[k] = row[k].id end
  return ids
end

-- The view of the next committed state, from the previous one and the
-- core's record of what changed in between (node:changes()): only the node
-- entries and rows that changed are read from C and built again. Before,
-- every commit copied the whole state into Lua and rebuilt every derived
-- structure on every node: O(cluster size) per commit, most of a
-- follower's work while a 100-node cluster formed.
--
-- What a commit costs here does not grow with the number of nodes: the
-- node list and the id index are shared with `old` and patched in place
-- (a changed entry gets a new table; `old` then answers with the new
-- entries too), the rows that hold a changed node are found through
-- rows_of, and the three per-partition lists are copied (P pointers, so
-- that `old`'s rows stay as they were for the hooks' diff). Returns the new
-- view and the list of {new = entry, old = entry or nil} for the diff, or
-- nil when the record cannot be applied; then nothing was touched and the
-- caller builds the view from scratch.
function M.update(old, c, rows, changed)
  local index, table_index = c:index()
  local nodes, by_id = old.nodes, old.by_id
  -- First everything that can fail, touching nothing shared.
  local patch, entries, order = {}, {}, {} -- position -> new entry; id -> {new, old}; ids
  for _, i in ipairs(changed) do
    local raw = c:node_at(i)
    if not raw then return nil end
    local pn, was = public_node(raw), nodes[i]
    if was and was.id ~= pn.id then return nil end -- Positions moved: not ours to patch.
    if not was and i ~= #nodes + 1 and not patch[i - 1] then return nil end
    patch[i] = pn
    local e = entries[pn.id]
    if e then
      e.new = pn
    else
      entries[pn.id], order[#order + 1] = {new = pn, old = was}, pn.id
    end
  end
  local function lookup(id)
    local e = entries[id]
    return e and e.new or by_id[id]
  end
  local v = shallow(old)
  v.index, v.table_index = index, table_index
  local pnodes, replicas, parts
  local moved = {} -- p -> the row's old owner ids, for rows_of
  if old.ready and (#rows > 0 or next(entries)) then
    pnodes, replicas, parts = copy_list(old.pnodes), copy_list(old.replicas), copy_list(old.parts)
    local idx = rows_of(old)
    -- Rows holding a node whose entry changed point at its new table.
    for id, e in pairs(entries) do
      if e.old then
        for p in pairs(idx[id] or {}) do
          pnodes[p], replicas[p] = resolve_row(pnodes[p], lookup)
        end
      end
    end
    for _, ch in ipairs(rows) do
      local p = ch.index + 1
      moved[p] = moved[p] or row_ids(old.pnodes[p] or {})
      local row, rnodes = resolve_row(ch.owners, lookup)
      if not row then return nil end -- Not in this view: the caller rebuilds.
      pnodes[p], replicas[p] = row, rnodes
      parts[p] = {id = "partition-" .. (p - 1), index = p - 1, primary_node = row[1] and row[1].id or "",
                  replica_nodes = {unpack(ch.owners, 2)}, epoch = ch.epoch}
    end
    v.pnodes, v.replicas, v.parts = pnodes, replicas, parts
  end
  -- Then the shared structures.
  for i, pn in pairs(patch) do
    nodes[i], by_id[pn.id] = pn, pn
  end
  local idx = old.rows_of
  if idx and next(moved) then
    for p, was in pairs(moved) do
      for _, id in ipairs(was) do
        local set = idx[id]
        if set then set[p] = nil end
      end
      index_row(idx, p, pnodes[p])
    end
  end
  v.rows_of = idx
  local list = {}
  for k, id in ipairs(order) do list[k] = entries[id] end
  return v, list
end

-- For tests/lua/view_spec.lua: the two ways a view comes to be.

M.public_node = public_node

--- The view of a state that has none yet (no core, or before start).
function M.empty()
  return {ready = false, nodes = {}, by_id = {}, index = 0, feature_level = 1}
end

-- ---------------------------------------------------------------------------
-- What changed: the hook events between two views
-- ---------------------------------------------------------------------------

--- The health of the cluster in view v: "healthy" when every node is
-- active and every partition has min(RF, eligible nodes) owners;
-- "degraded" otherwise; "unavailable" when some partition has no owner.
function M.health(v)
  if not v.ready then return "unavailable" end
  local eligible = 0
  local ok = true
  for _, n in ipairs(v.nodes) do
    if n.status == "active" or n.status == "suspect" then eligible = eligible + 1 end
    if n.status ~= "active" and n.status ~= "left" then ok = false end
  end
  local want = math.min(v.replication, eligible)
  for p = 1, v.partitions do
    local row = v.pnodes[p]
    if #row == 0 then return "unavailable" end
    for k = 1, #row do
      if is_down(row[k].status) then ok = false end
    end
    if #row < want then ok = false end
  end
  return ok and "healthy" or "degraded"
end

-- This node's part in a row change: gain, lose, promote, demote or none.
local function role_in(me, was_ids, is_ids)
  local was, is = "", ""
  for k = 1, #was_ids do if was_ids[k] == me then was = k == 1 and "primary" or "replica" end end
  for k = 1, #is_ids do if is_ids[k] == me then is = k == 1 and "primary" or "replica" end end
  if was == "" and is ~= "" then return "gain"
  elseif was ~= "" and is == "" then return "lose"
  elseif was == "replica" and is == "primary" then return "promote"
  elseif was == "primary" and is == "replica" then return "demote"
  end
  return "none"
end

local function same_ids(a, b)
  if #a ~= #b then return false end
  for k = 1, #a do
    if a[k] ~= b[k] then return false end
  end
  return true
end

--- The partition_change event of row p (1-based) going from owners `was`
-- to `is` (ids, primary first), as node `me` sees it.
function M.row_event(me, p, was, is, epoch, old_epoch, resync)
  local old_replicas, new_replicas = {}, {}
  for k = 2, #was do old_replicas[k - 1] = was[k] end
  for k = 2, #is do new_replicas[k - 1] = is[k] end
  return {
    partition = "partition-" .. (p - 1), index = p - 1, epoch = epoch, old_epoch = old_epoch,
    old_primary = was[1] or "", new_primary = is[1] or "",
    old_replicas = old_replicas, new_replicas = new_replicas, role = role_in(me, was, is),
    resync = resync or nil,
  }
end

-- One partition_change per row change, in apply order, from the core's
-- record of the rows (node:changes()). Several commits are often applied
-- before this node looks (a follower catching up after a pause, a batch of
-- entries in one append): comparing only the view before and after would miss
-- a row that lost this node and got it back (no event at all, yet the node
-- was no owner for an epoch and missed that epoch's writes: the fault suite's
-- pause-lock-holder caught a stale read through it) or see a lose and a
-- gain as one promote.
local function replay_rows(out, me, old, new, changes)
  local rows, epochs = {}, {}
  for _, ch in ipairs(changes) do
    local p = ch.index + 1
    if p <= new.partitions then
      local was = rows[p] or row_ids(old.pnodes[p])
      local old_epoch = epochs[p] or old.parts[p].epoch
      if not same_ids(was, ch.owners) then
        out[#out + 1] = {"partition_change", M.row_event(me, p, was, ch.owners, ch.epoch, old_epoch)}
      end
      rows[p], epochs[p] = ch.owners, ch.epoch
    end
  end
end

-- Without the record (a snapshot was installed, or the record outgrew its
-- bound): one event per row that differs between the two views. A row whose
-- epoch moved further than the owners' difference explains (more than one
-- epoch, or a new epoch with the same owners) went through changes that are
-- not known here: its event says resync = true (treat what this node holds
-- of it as possibly stale, as after a gain).
local function compare_rows(out, me, old, new)
  for p = 1, new.partitions do
    local was, is = row_ids(old.pnodes[p]), row_ids(new.pnodes[p])
    local e0, e1 = old.parts[p].epoch, new.parts[p].epoch
    local same = same_ids(was, is)
    if not same or e0 ~= e1 then
      out[#out + 1] = {"partition_change", M.row_event(me, p, was, is, e1, e0, e1 > e0 + 1 or (same and e1 ~= e0))}
    end
  end
end

--- The hook events for a change from view `old` to view `new`, in order,
-- as {name, info} pairs; and the membership changes by kind (join, leave,
-- remove, status: clusterkit_membership_changes_total).
--   changes, gap  the core's record of the rows (node:changes())
--   entries       the node entries that changed, {new =, old = (nil: it
--                 joined)}, when `new` was updated from the record (nil:
--                 compare every entry, and look for removals; `old` then
--                 still holds its own entries)
--   want          {me = this node's id, rows = true to compute
--                 partition_change events, health = the last health
--                 reported (nil: nobody follows health)}
-- Returns events, counts, health (the new one when followed).
function M.diff(old, new, changes, gap, entries, want)
  local out, counts = {}, {join = 0, leave = 0, remove = 0, status = 0}
  local following = want.health ~= nil
  if not old then
    return out, counts, following and M.health(new) or nil
  end
  local list = entries
  if not list then
    list = {}
    for i, n in ipairs(new.nodes) do list[i] = {new = n, old = old.by_id[n.id]} end
  end
  for _, e in ipairs(list) do
    local n, o = e.new, e.old
    if not o then
      counts.join = counts.join + 1
      out[#out + 1] = {"node_join", {node = n}}
    elseif o.status ~= n.status then
      local kind = n.status == "left" and "leave" or "status"
      counts[kind] = counts[kind] + 1
      if is_down(n.status) or n.status == "left" then
        out[#out + 1] = {"node_leave", {node = n, reason = n.status}}
      elseif n.status == "active" and is_down(o.status) then
        out[#out + 1] = {"node_rejoin", {node = n, previous = o.status,
          offline_ms = math.max(0, (n.status_since or 0) - (o.status_since or 0))}}
      end
    end
  end
  -- A removal always comes without positions (the record says `whole`).
  if not entries then
    for _, o in ipairs(old.nodes) do
      if not new.by_id[o.id] then
        counts.remove = counts.remove + 1
        out[#out + 1] = {"node_leave", {node = o, reason = "removed"}}
      end
    end
  end
  if want.rows and new.ready and old.ready and new.partitions == old.partitions then
    if changes and not gap then
      replay_rows(out, want.me, old, new, changes)
    else
      compare_rows(out, want.me, old, new)
    end
  end
  -- O(nodes + slots): only for those who listen.
  if not following then return out, counts, nil end
  local h = M.health(new)
  if h ~= want.health then
    out[#out + 1] = {"cluster_health_change", {health = h, previous = want.health or nil}}
  end
  return out, counts, h
end

-- ---------------------------------------------------------------------------
-- The View: the current view of one core
-- ---------------------------------------------------------------------------

local View = {}
View.__index = View
M.View = View

--- A View over core(): a function that returns the core handle
-- (node:view(), :hasher(), :index(), :node_at(i), :changes()), or nil
-- while there is none or it is closed.
function M.new(core)
  return setmetatable({core = core}, View)
end

--- The current view: cached until the next commit applies, built from the
-- core when there is none; without a core, the last one (or M.empty()).
function View:current()
  local v = self.cached
  if v then return v end
  local c = self.core()
  if not c then
    return self.last or M.empty()
  end
  v = M.build(c:view(), c:hasher())
  self.cached, self.last = v, v
  return v
end

--- After the core applied commits: takes the core's record of what
-- changed and moves the view on from it (rebuilt when the record cannot
-- be applied). Returns the new view, the previous one (nil the first
-- time), and the record for M.diff: changes, gap, entries. Nothing may
-- yield between the commit and this call (the core applies on this loop
-- only), so that the record and the state agree.
function View:advance()
  local c = self.core()
  local changes, gap, nodes_changed, whole
  if c then changes, gap, nodes_changed, whole = c:changes() end
  local old = self.shown
  local v, entries
  if old and old == self.cached and changes and not gap and not whole then
    v, entries = M.update(old, c, changes, nodes_changed)
  end
  if v then
    self.cached, self.last = v, v
  else
    self.cached = nil
    v = self:current()
  end
  self.shown = v
  return v, old, changes, gap, entries
end

--- The view hooks last saw (nil before the first commit applied).
function View:previous()
  return self.shown
end

--- Drops the cache (the node stopped: its core is gone).
function View:forget()
  self.cached = nil
end

return M
