-- A node that places partitions with the zone-aware policy in policy.lua
-- (primaries in PRIMARY_ZONE, each partition's owners in distinct zones) and
-- prints the partition table by zone whenever it changes.
--
-- Three zones on one machine:
--
--   export PRIMARY_ZONE=zone-a
--   ZONE=zone-a NODE_ID=a1 HTTP_ADDR=127.0.0.1:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true \
--     build/ckrun examples/zones/app.lua
--   ZONE=zone-b NODE_ID=b1 HTTP_ADDR=127.0.0.1:8081 RAFT_ADDR=127.0.0.1:9002 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/zones/app.lua
--   ZONE=zone-c NODE_ID=c1 HTTP_ADDR=127.0.0.1:8082 RAFT_ADDR=127.0.0.1:9003 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/zones/app.lua
--   ZONE=zone-a NODE_ID=a2 HTTP_ADDR=127.0.0.1:8083 RAFT_ADDR=127.0.0.1:9004 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/zones/app.lua
--
-- Every node sets the policy, because whichever node leads computes the
-- table. Instead of ck:set_placement, a plain node can name the module:
--   LUA_PATH="$PWD/examples/?.lua;;" PLACEMENT=zones.policy PRIMARY_ZONE=zone-a ZONE=zone-a ... build/ckrun

io.stdout:setvbuf("line")

local clusterkit = require "clusterkit"
local policy = require "policy" -- policy.lua beside this file (ckrun puts its directory on package.path)

local primary_zone = os.getenv("PRIMARY_ZONE")
local ck = clusterkit.new()
ck:set_placement(policy.new {primary_zone = primary_zone})
local ok, err = ck:start()
if not ok then
  error("node failed to start: " .. tostring(err))
end

local function zone_name(z)
  return (z == nil or z == "") and "(no zone)" or z
end

-- Prints the table: per zone, its nodes with their primaries and replicas;
-- then each partition's owners with their zones.
local function print_table()
  local zone_of, zones, members = {}, {}, {}
  for _, n in ipairs(ck:cluster().nodes) do
    local z = zone_name(n.zone)
    zone_of[n.id] = z
    if not members[z] then
      members[z] = {}
      zones[#zones + 1] = z
    end
    table.insert(members[z], n)
  end
  table.sort(zones)
  local stats = ck:partition_stats()
  local lines = {("partition table at state index %d (primary zone %s, seen by %s):")
    :format(ck:state_index(), zone_name(primary_zone), ck:me().id)}
  for _, z in ipairs(zones) do
    local prim, repl, list = 0, 0, {}
    for _, n in ipairs(members[z]) do
      local np, nr = stats.partitions_per_node[n.id] or 0, stats.replicas_per_node[n.id] or 0
      prim, repl = prim + np, repl + nr
      list[#list + 1] = ("%s %s (%d primaries, %d replicas)"):format(n.id, n.status, np, nr)
    end
    lines[#lines + 1] = ("  zone %-10s %3d primaries %3d replicas: %s"):format(z, prim, repl, table.concat(list, ", "))
  end
  for _, p in ipairs(ck:partitions()) do
    local owners = {("%s[%s]"):format(p.primary_node, zone_of[p.primary_node] or "?")}
    for _, r in ipairs(p.replica_nodes) do
      owners[#owners + 1] = ("%s[%s]"):format(r, zone_of[r] or "?")
    end
    lines[#lines + 1] = ("  %-13s %s"):format(p.id, table.concat(owners, " "))
  end
  print(table.concat(lines, "\n"))
end

print_table()
-- A table change fires partition_change once per partition that moved:
-- print once per burst, a moment after it.
local pending = false
ck:on("partition_change", function()
  if pending then return end
  pending = true
  clusterkit.sleep(0.2)
  pending = false
  if ck.status == "running" then print_table() end -- (not after a stop)
end)
