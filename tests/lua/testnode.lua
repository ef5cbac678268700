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

--- A node started for a spec (see new): stopped, and its data dir
-- removed, when the spec ends (busted's `finally`, passed in).
function M.started(finally, node_id, extra)
  local ck, opts = M.new(node_id, extra)
  assert(ck:start())
  finally(function()
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)
  return ck, opts
end

--- Proposals through core handle `c` (node._core): propose(bytes), and
-- settle(), which waits until raft answered every one of them (at most
-- 10 s) and returns how many are still unanswered (0).
function M.proposer(c)
  local pending, cond = 0, clusterkit.cond()
  local function answered()
    pending = pending - 1
    cond:signal()
  end
  local function propose(bytes)
    pending = pending + 1
    assert(c:propose(bytes, answered))
  end
  local function settle()
    for _ = 1, 200 do
      if pending == 0 then break end
      cond:wait(0.05)
    end
    return pending
  end
  return propose, settle
end

return M
