--- Partition placement: which nodes own which partition.
--
-- A policy is a pure function policy(nodes, current, config) -> rows, where
-- nodes are the eligible nodes (active or suspect, weight > 0) sorted by id, each
-- {id, zone, weight, status, services}; current is the committed table as
-- rows (rows[p] = {owner ids}, primary first; p is 1-based); config has
-- partitions and replication. rows[p] lists distinct owner ids, primary
-- first. The leader validates what a policy returns before proposing it.
local M = {}

local min, sort = math.min, table.sort

--- The built-in policy: round-robin over the eligible nodes, so primaries
-- and owned partitions per node differ by at most one. (Issue #4 replaces
-- it with a minimal-movement, zone- and weight-aware policy.)
function M.default(nodes, current, cfg)
  local n = #nodes
  local rows = {}
  local width = min(cfg.replication, n)
  for p = 1, cfg.partitions do
    local row = {}
    for k = 0, width - 1 do
      row[k + 1] = nodes[(p - 1 + k) % n + 1].id
    end
    rows[p] = row
  end
  return rows
end

--- The nodes a policy may place partitions on, sorted by id: active or
-- suspect (a node that missed a few heartbeats keeps its data until it is
-- declared down), with a weight.
function M.eligible(all)
  local out = {}
  for _, nd in ipairs(all) do
    if (nd.status == "active" or nd.status == "suspect") and nd.weight > 0 then
      out[#out + 1] = nd
    end
  end
  sort(out, function(a, b) return a.id < b.id end)
  return out
end

--- Checks rows from a policy against the eligible nodes and config.
-- Returns true, or nil and the reason.
function M.validate(rows, nodes, cfg)
  if type(rows) ~= "table" then
    return nil, "policy returned " .. type(rows) .. ", not a table of rows"
  end
  local known = {}
  for _, nd in ipairs(nodes) do
    known[nd.id] = true
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

--- True when two sets of rows are identical (same owners, same order).
function M.same(a, b)
  for p = 1, #a do
    local x, y = a[p], b[p]
    if #x ~= #y then return false end
    for k = 1, #x do
      if x[k] ~= y[k] then return false end
    end
  end
  return #a == #b
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
