-- What the Lua specs share: a fresh data dir path and a single-node
-- clusterkit node on loopback (free ports), quiet unless it errs.
local clusterkit = require "clusterkit"

local M = {}

function M.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  return d .. ".ck"
end

--- A new (not started) node with options `extra` over the defaults;
-- returns the node and its options (opts.data_dir to remove afterwards).
function M.new(node_id, extra)
  local opts = {
    node_id = node_id, http_addr = "127.0.0.1:0", raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()),
    data_dir = M.tmpdir(), log_level = "error",
  }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return clusterkit.new(opts), opts
end

return M
