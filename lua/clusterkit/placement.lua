--- Partition placement: which nodes own which partition.
--
-- A policy is a pure function policy(nodes, current, config) -> rows, where
-- nodes are the holders sorted by id (active or suspect nodes with a
-- weight, and down nodes within rebalance_delay, which have can_lead =
-- false), each {id, zone, weight, status, services, can_lead} and the
-- operator attributes that are set (clusterkit.attrs: rack, say); current is the committed table as
-- rows (rows[p] = {owner ids}, primary first; p is 1-based); config has
-- partitions and replication. rows[p] lists distinct owner ids, primary
-- first. The leader validates what a policy returns before proposing it.
local M = {}

local min = math.min


--- The built-in policy (C, see runtime/ck_place.h) behind the policy
-- interface, so that a Lua policy can start from it and adjust. Nodes with
-- can_lead == false keep slots but are never primary.
function M.default(nodes, current, cfg)
  local core = require "clusterkit.core"
  local domain = require("clusterkit.attrs").domain -- Within a zone (ck_place.h).
  local pos, pnodes = {}, {}
  for i, nd in ipairs(nodes) do
    pos[nd.id] = i
    pnodes[i] = {zone = nd.zone or "", weight = nd.weight or 1, lead = nd.can_lead ~= false,
                 domain = domain and nd[domain.json]}
  end
  local width = cfg.replication
  local flat
  if current and #current > 0 then
    flat = {}
    for p = 1, cfg.partitions do
      local row, k = current[p] or {}, 0
      for j = 1, width do flat[(p - 1) * width + j] = 0 end
      for _, id in ipairs(row) do
        if pos[id] and k < width then
          k = k + 1
          flat[(p - 1) * width + k] = pos[id]
        end
      end
    end
  end
  local out, w = core.place(pnodes, cfg.partitions, cfg.replication, flat, flat and width or nil)
  if not out then
    error("placement: " .. tostring(w))
  end
  return M.rows_from(out, w, cfg.partitions, function(at) return nodes[at].id end)
end

--- Rows of ids from core.place's answer: `out` (flat, width w, 1-based
-- positions, 0 = empty) over `partitions` rows, id_of(position) -> id.
function M.rows_from(out, w, partitions, id_of)
  local rows = {}
  for p = 1, partitions do
    local row = {}
    for k = 1, w do
      local at = out[(p - 1) * w + k]
      if at == 0 then break end
      row[k] = id_of(at)
    end
    rows[p] = row
  end
  return rows
end

--- Runs a Lua policy with a time limit (seconds). Returns true, rows or
-- false, reason, kind ("error", "timeout" or "yielded": the reason label of
-- clusterkit_placement_policy_errors_total). The limit is checked by a count
-- hook, which the JIT does not run inside compiled loops: it bounds
-- interpreted policies, and jit.off() is applied to the policy function for
-- that reason.
--
-- LuaJIT note: debug.sethook(co, ...) ignores the coroutine argument, hooks
-- are global to the VM. A hook left behind fired in every coroutine that ran
-- after the policy (heartbeat handlers, the leader's ticker) and raised
-- "ran longer than" there. So the hook only acts inside the policy's own
-- coroutine, and the previous hook is put back as soon as the policy returns,
-- raises or yields.
function M.run_policy(fn, nodes, current, cfg, limit)
  local core = require "clusterkit.core"
  limit = limit or 2
  local deadline = core.hrtime() + limit * 1e9
  pcall(function() require("jit").off(fn, true) end)
  local co = coroutine.create(fn)
  local running = coroutine.running
  local prev_fn, prev_mask, prev_count = debug.gethook()
  local timed_out = false
  debug.sethook(co, function()
    if running() == co and core.hrtime() > deadline then
      timed_out = true
      error("placement policy ran longer than " .. limit .. "s", 2)
    end
  end, "", 10000)
  local ok, rows = coroutine.resume(co, nodes, current, cfg)
  if prev_fn then
    debug.sethook(prev_fn, prev_mask, prev_count)
  else
    debug.sethook()
  end
  if not ok then
    return false, "policy error: " .. tostring(rows), timed_out and "timeout" or "error"
  end
  if coroutine.status(co) ~= "dead" then
    return false, "policy yielded", "yielded"
  end
  return true, rows
end

--- Checks rows from a policy against the eligible nodes and config.
-- Returns true, or nil and the reason.
function M.validate(rows, nodes, cfg)
  if type(rows) ~= "table" then
    return nil, "policy returned " .. type(rows) .. ", not a table of rows"
  end
  local known, lead = {}, {}
  for _, nd in ipairs(nodes) do
    known[nd.id] = true
    lead[nd.id] = nd.can_lead ~= false
  end
  local want = min(cfg.replication, #nodes)
  for p = 1, cfg.partitions do
    local row = rows[p]
    if type(row) ~= "table" then
      return nil, "partition " .. (p - 1) .. " has no row"
    end
    if #row > cfg.replication then
      return nil, "partition " .. (p - 1) .. " has more than " .. cfg.replication .. " owners"
    end
    if #row < want then
      return nil, "partition " .. (p - 1) .. " has " .. #row .. " owners, " .. want .. " possible"
    end
    local seen = {}
    for _, id in ipairs(row) do
      if not known[id] then
        return nil, "partition " .. (p - 1) .. " names unknown or ineligible node " .. tostring(id)
      end
      if seen[id] then
        return nil, "partition " .. (p - 1) .. " lists " .. id .. " twice"
      end
      seen[id] = true
    end
    if row[1] and not lead[row[1]] then
      return nil, "partition " .. (p - 1) .. " has primary " .. row[1] .. ", which is down"
    end
  end
  return true
end

--- Rows of a committed view (as returned by the core's node:view()).
function M.rows_of(view)
  local rows, owners, nodes, w = {}, view.owners, view.nodes, view.width
  for p = 1, view.partitions do
    local row = {}
    for k = 1, w do
      local at = owners[(p - 1) * w + k]
      if at == 0 then break end
      row[#row + 1] = nodes[at].id
    end
    rows[p] = row
  end
  return rows
end

--- Encodes rows into the (ids, flat owners) form that core.encode_table takes.
function M.flatten(rows, width)
  local ids, pos, owners = {}, {}, {}
  local i = 0
  for p = 1, #rows do
    local row = rows[p]
    for k = 1, width do
      local id = row[k]
      local at = 0
      if id then
        at = pos[id]
        if not at then
          ids[#ids + 1] = id
          at = #ids
          pos[id] = at
        end
      end
      i = i + 1
      owners[i] = at
    end
  end
  return ids, owners
end

return M
