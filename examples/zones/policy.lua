--- A zone-aware placement policy for clusterkit (see README "Placement").
--
-- Rules, in order of importance:
--
--   1. Every primary is in the primary zone (PRIMARY_ZONE, or the
--      `primary_zone` option), as long as a node there can lead; otherwise any
--      node that can lead takes it (the partition must have a primary).
--   2. The owners of a partition are in distinct zones whenever there are
--      enough zones (strict spreading); only then do two owners share one.
--   3. Load is balanced: a node takes at most its fair share of primaries
--      (among the primary zone's nodes) and of all slots, plus one.
--   4. Few moves: a current owner keeps its place when rules 1-3 allow it, so
--      a topology change moves only the partitions it has to.
--
-- Zones come from each node's ZONE (the `zone` option); nodes without one
-- form the zone "". Weights are not used here (the built-in policy does use
-- them).
--
-- A policy is fn(nodes, current, config) -> rows: nodes are the eligible
-- nodes sorted by id ({id, zone, weight, status, can_lead}), current[p] the
-- committed owner ids of partition p (1-based, primary first), config
-- {partitions, replication}. The leader validates the rows before it commits
-- them, and keeps the old table if the policy raises.
--
--   ck:set_placement(require("zones.policy").new{primary_zone = "zone-a"})
--   -- or, with examples/ on package.path: PLACEMENT=zones.policy PRIMARY_ZONE=zone-a
local M = {}

local ceil, min = math.ceil, math.min

--- A policy function with the given options: {primary_zone = "..."}.
function M.new(opts)
  opts = opts or {}
  local primary_zone = opts.primary_zone

  return function(nodes, current, cfg)
    local P, want = cfg.partitions, min(cfg.replication, #nodes)
    local zone_of, load, leads = {}, {}, {}
    local leaders_in_zone, can_lead_anywhere = 0, 0
    for _, n in ipairs(nodes) do
      zone_of[n.id] = n.zone or ""
      load[n.id], leads[n.id] = 0, 0
      if n.can_lead ~= false then
        can_lead_anywhere = can_lead_anywhere + 1
        if zone_of[n.id] == primary_zone then leaders_in_zone = leaders_in_zone + 1 end
      end
    end
    local zone_rule = primary_zone ~= nil and leaders_in_zone > 0
    -- Fair shares (rule 3).
    local max_leads = ceil(P / (zone_rule and leaders_in_zone or math.max(can_lead_anywhere, 1)))
    local max_load = ceil(P * want / #nodes)

    local rows = {}
    for p = 1, P do
      local was = {}
      for k, id in ipairs(current[p] or {}) do was[id] = k end
      local row, taken, zones_used = {}, {}, {}

      -- The best node among those `ok` accepts: one in `prefer` (a current
      -- owner) within its share first (rule 4), then the least loaded, then
      -- the lowest id (nodes come sorted by id, and only a strictly better
      -- node replaces `best`).
      local function pick(ok, share, count, prefer)
        local best, best_key
        for _, n in ipairs(nodes) do
          if not taken[n.id] and ok(n) then
            local keep = prefer[n.id] and count[n.id] < share and 0 or 1
            local key = keep * 1e9 + count[n.id]
            if not best or key < best_key then best, best_key = n, key end
          end
        end
        return best
      end

      local function add(n)
        row[#row + 1] = n.id
        taken[n.id], zones_used[zone_of[n.id]] = true, true
        load[n.id] = load[n.id] + 1
      end

      -- Primary (rule 1): only the current primary counts as "current" here,
      -- so that replicas are not promoted without need.
      local was_primary = current[p] and current[p][1]
      local primary = pick(function(n)
        return n.can_lead ~= false and (not zone_rule or zone_of[n.id] == primary_zone)
      end, max_leads, leads, was_primary and {[was_primary] = true} or {})
      if primary then
        add(primary)
        leads[primary.id] = leads[primary.id] + 1
      end

      -- Replicas: a zone not in the row yet while there is one (rule 2).
      while #row < want do
        local n = pick(function(x) return not zones_used[zone_of[x.id]] end, max_load, load, was)
          or pick(function() return true end, max_load, load, was)
        if not n then break end
        add(n)
      end
      rows[p] = row
    end
    return rows
  end
end

--- The policy configured from the environment (PRIMARY_ZONE), so that the
-- module can be named in the PLACEMENT option.
M.place = M.new {primary_zone = os.getenv("PRIMARY_ZONE")}

return M
