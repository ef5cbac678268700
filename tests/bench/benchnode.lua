-- What the in-process Lua benchmarks share: one real node (a raft member
-- of its own cluster, quiet, the detector slowed so that nobody is judged
-- during a run) and proposals through its core.
local clusterkit = require "clusterkit"

local M = {}

--- Starts the node: returns ck, propose(bytes), settle(), stop(). settle()
-- waits until raft answered every proposal and this node's view caught up
-- with the core (at most 20 s; raises otherwise).
function M.start(partitions, replication)
  local dir = os.tmpname()
  os.remove(dir)
  local ck = clusterkit.new {
    node_id = "n1", http_addr = "127.0.0.1:0", log_level = "warn",
    raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()), data_dir = dir,
    partition_count = partitions, replication_factor = replication,
    suspect_after = 600, down_after = 1200,
  }
  assert(ck:start())
  local c = ck._core
  local pending, cond = 0, clusterkit.cond()
  local function answered() pending = pending - 1; cond:signal() end
  local function propose(bytes)
    pending = pending + 1
    assert(c:propose(bytes, answered))
  end
  local function settle()
    for _ = 1, 2000 do
      if pending == 0 and ck:_view().index == c:index() then return end
      cond:wait(0.01)
    end
    error("commits did not apply")
  end
  local function stop()
    ck:stop()
    os.execute("rm -rf '" .. dir .. "'")
  end
  return ck, propose, settle, stop
end

--- The median of a list of numbers (sorts it).
function M.median(xs)
  table.sort(xs)
  return xs[math.floor(#xs / 2) + 1]
end

return M
