-- The `make demo` app: starts a local cluster on loopback (in this one
-- ckrun process, each node with its own raft, HTTP server and data dir),
-- prints what it knows, then stops it gracefully.
--
--   ckrun examples/demo.lua [--nodes N] [--serve]
--
-- With --serve the cluster keeps running until Ctrl-C, so that you can
-- query it: curl http://127.0.0.1:<port>/cluster
local clusterkit = require "clusterkit"

local nodes_wanted, serve = 1, false
local i = 1
while arg[i] do
  if arg[i] == "--nodes" then
    nodes_wanted = tonumber(arg[i + 1]) or nodes_wanted
    i = i + 1
  elseif arg[i] == "--serve" then
    serve = true
  end
  i = i + 1
end

local base = os.getenv("DEMO_DIR") or ("/tmp/clusterkit-demo-" .. require("clusterkit.core").getpid())
os.execute("rm -rf '" .. base .. "'")

-- HTTP listens on a port the kernel picks; raft needs a fixed address
-- that peers can dial, so ask for a free one.
local function free_port()
  return assert(clusterkit.free_port("127.0.0.1"))
end

local nodes = {}
for n = 1, nodes_wanted do
  local ck = clusterkit.new {
    node_id = "node-" .. n,
    node_name = "Server-" .. n,
    http_addr = "127.0.0.1:0",
    raft_addr = "127.0.0.1:" .. free_port(),
    data_dir = base .. "/node-" .. n,
    cluster_name = "demo",
    partition_count = 16,
    replication_factor = 3,
    bootstrap = n == 1,
    join_addr = n > 1 and nodes[1].advertise_http or nil,
    log_level = "warn",
  }
  local ok, err = ck:start()
  if not ok then
    error("node-" .. n .. " failed to start: " .. tostring(err))
  end
  nodes[n] = ck
end

local ck = nodes[1]
local c = ck:cluster()
print(("cluster %q (id %s): %d node(s), %d partitions, replication factor %d")
  :format(c.name, c.id, #c.nodes, c.config.partition_count, c.config.replication_factor))
for _, n in ipairs(c.nodes) do
  print(("  %-8s %-9s http %-21s raft %-21s %s"):format(n.id, n.name, n.http_addr, n.raft_addr, n.status))
end
local leader = ck:leader()
print(("leader: %s (term %d)"):format(leader.leader_id, leader.term))
local stats = ck:partition_stats()
for id, count in pairs(stats.partitions_per_node) do
  print(("  %s: %d primaries, %d replicas"):format(id, count, stats.replicas_per_node[id]))
end
print("where keys live:")
for _, key in ipairs({"user:123", "user:456", "order:{42}:items", "order:{42}:total"}) do
  local p = ck:partition_for_key(key)
  local owners = {}
  for _, n in ipairs(ck:nodes_for_key(key)) do owners[#owners + 1] = n.id end
  print(("  %-18s -> %-13s primary %s, owners %s"):format(key, p.id, p.primary_node, table.concat(owners, ",")))
end
print("HTTP API of node-1: http://" .. ck.advertise_http .. "/cluster (also /partitions, "
  .. "/partitions/key?key=K, /consensus/leader, /consensus/stats, /metrics)")

if serve then
  print("serving; Ctrl-C stops the cluster")
  return
end
for n = #nodes, 1, -1 do
  nodes[n]:stop()
end
os.execute("rm -rf '" .. base .. "'")
print("cluster stopped")
