-- The `make demo` app: starts a local cluster of the KV store example
-- (examples/kv) on loopback, in this one ckrun process (each node with its
-- own raft, HTTP server and data dir), prints what it knows, writes a key
-- through node 1, reads it through node 2, shows where the key lives, then
-- stops it gracefully.
--
--   ckrun examples/demo.lua [--nodes N] [--serve]
--
-- With --serve the cluster keeps running until Ctrl-C, so that you can
-- query it: curl http://127.0.0.1:<port>/cluster, curl -X PUT -d hi
-- http://127.0.0.1:<port>/kv/greeting
local clusterkit = require "clusterkit"
io.stdout:setvbuf("line") -- with --serve, show the addresses at once even in a pipe

local kv = require "kv" -- examples/kv/init.lua: ckrun puts the script's directory on package.path

local nodes_wanted, serve = 3, false
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

local nodes, stores = {}, {}
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
    -- Warnings at the end (the last nodes lose their quorum as the others
    -- stop) are expected here; errors still show.
    log_level = "error",
  }
  stores[n] = kv.install(ck)   -- the KV routes and hooks, on this node
  local ok, err = stores[n]:start()
  if not ok then
    error("node-" .. n .. " failed to start: " .. tostring(err))
  end
  nodes[n] = ck
end

-- Let the table settle (the leader rebalances right after the last join)
-- and every node apply the same state, so that they all print the same table.
local ck = nodes[1]
for _ = 1, 100 do
  local same, settled = true, true
  for _, other in ipairs(nodes) do
    same = same and other:state_index() == ck:state_index()
    if other:is_leader() then
      local plan = other:plan_rebalance()
      settled = plan ~= nil and #plan.moves == 0
    end
  end
  if same and settled then break end
  clusterkit.sleep(0.05)
end
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

-- The KV store: a write through node 1 and a read through node 2, over HTTP
-- like any client; each node routes the request to the key's primary.
local function call(method, node, key, body)
  local res, err = clusterkit.http.request {
    method = method, url = "http://" .. node.advertise_http .. "/kv/" .. key, body = body, timeout = 10,
  }
  if not res then
    error(method .. " /kv/" .. key .. " via " .. node.id .. ": " .. tostring(err))
  end
  return res
end
local reader = nodes[math.min(2, #nodes)]
-- A key that neither node 1 nor node 2 leads (when there are 3 nodes), so
-- that both requests are forwarded to its primary.
local key, value = "user:123", "Ada Lovelace"
for n = 123, 200 do
  local primary = ck:primary_for_key("user:" .. n).id
  if #nodes < 3 or (primary ~= ck.id and primary ~= reader.id) then
    key = "user:" .. n
    break
  end
end
print("KV store (examples/kv):")
local put = call("PUT", ck, key, value)
print(("  PUT /kv/%s via %s -> %d %s"):format(key, ck.id, put.status, put.body))
local got = call("GET", reader, key)
print(("  GET /kv/%s via %s -> %d %q (served by %s)")
  :format(key, reader.id, got.status, got.body, tostring(got.headers["x-kv-served-by"])))
local p = ck:partition_for_key(key)
print(("  %s lives in %s (epoch %d): primary %s, replicas %s"):format(key, p.id, p.epoch, p.primary_node,
  #p.replica_nodes > 0 and table.concat(p.replica_nodes, ", ") or "none"))
if put.status ~= 200 or got.status ~= 200 or got.body ~= value then
  error("the KV store did not return what was written")
end

if serve then
  print("serving; Ctrl-C stops the cluster")
  return
end
for n = #nodes, 1, -1 do
  nodes[n]:stop()
end
os.execute("rm -rf '" .. base .. "'")
print("cluster stopped")
