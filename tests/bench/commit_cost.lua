-- What one commit costs every node besides raft: the applied event's work
-- in Lua (the view updated from the core's change record, hooks' diff,
-- health, the leader lookup), at N = 10, 100 and 1000 members. One process,
-- one real raft member holding N entries (the other N-1 are entries only:
-- the work measured is what every follower does per commit, which depends
-- on the state, not on the processes). Prints the median µs per applied
-- event for a status change and for a table change of one row, updated from
-- the record and, for comparison in the same run, rebuilt from the whole
-- state (what every node did before the record drove the view).
--   ckrun tests/bench/commit_cost.lua
local core = require "clusterkit.core"
local benchnode = require "benchnode"

local P, RF, ROUNDS = 1024, 3, 200

local median = benchnode.median

local function bench(N)
  local ck, propose, settle, stop = benchnode.start(P, RF)
  assert(ck:pause_rebalance()) -- Tables come from this script only.
  local ids = {"n1"}
  for i = 2, N do
    local id = "m" .. i
    ids[i] = id
    propose(core.encode_node {
      id = id, name = id, http_addr = "127.0.0.1:" .. (10000 + i), raft_addr = "127.0.0.1:" .. (30000 + i),
      zone = "z" .. (i % 3), weight = 1, services = {}, raft_id = core.raft_id(id), status = "active",
      time_ms = core.time_ms(),
    })
    if i % 256 == 0 then settle() end
  end
  settle()
  -- One table over all of them, then one row at a time.
  local owners = {}
  for p = 1, P do
    for k = 1, RF do owners[(p - 1) * RF + k] = ((p + k * 7) % N) + 1 end
  end
  propose(core.encode_table(P, RF, ids, owners))
  settle()

  -- What a follower does: no reconciler (the leader's own pass reads the
  -- whole state to plan placement; followers return at once).
  ck._reconcile = function() end
  local times, on_event = {}, ck._on_event
  ck._on_event = function(self, ev)
    local t0 = core.hrtime()
    on_event(self, ev)
    if ev == "applied" then times[#times + 1] = (core.hrtime() - t0) / 1e3 end
  end
  local function measure(kind, rebuild)
    times = {}
    for r = 1, ROUNDS do
      if rebuild then ck.view:forget() end -- The update has no base: a rebuild.
      if kind == "status" then
        local id = ids[(r % (N - 1)) + 2]
        propose(core.encode_status(id, r % 2 == 0 and "active" or "suspect", core.time_ms()))
      else
        local p = (r % P) + 1
        owners[(p - 1) * RF + 1], owners[(p - 1) * RF + 2] = owners[(p - 1) * RF + 2], owners[(p - 1) * RF + 1]
        propose(core.encode_table(P, RF, ids, owners))
      end
      settle()
    end
    return median(times)
  end
  -- A table command carries every row; the record then holds the rows
  -- whose owners changed (one here).
  local s_inc, t_inc = measure("status"), measure("table")
  local s_full, t_full = measure("status", true), measure("table", true)
  print(string.format("N=%-5d P=%d  per applied event: status change %7.1f us (rebuild %8.1f us), "
    .. "one-row table change %7.1f us (rebuild %8.1f us)", N, P, s_inc, s_full, t_inc, t_full))
  ck._on_event = on_event
  stop()
end

for _, n in ipairs({10, 100, 1000}) do bench(n) end
