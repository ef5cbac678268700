-- What planning a rebalance costs the leader, at N = 10, 100 and 1000
-- members and P = 1024, RF = 3, in the same run: the built-in placement
-- through the reconciler's Lua path (copy the state into Lua, derive the
-- holders and the current table, place in C, map back, compare, encode)
-- against one call to C (node:plan: ck_place_plan.c). The state: every
-- member in service, a balanced table, one member just down (its primaries
-- move). Prints the median ms of each.
--   ckrun tests/bench/plan_cost.lua
local core = require "clusterkit.core"
local placement = require "clusterkit.placement"
local benchnode = require "benchnode"

local P, RF, RUNS = 1024, 3, 21

local median = benchnode.median

local function bench(N)
  local ck, propose, settle, stop = benchnode.start(P, RF)
  local c = ck._core
  assert(ck:pause_rebalance()) -- Tables come from this script only.
  for i = 2, N do
    local id = "m" .. i
    propose(core.encode_node {
      id = id, name = id, http_addr = "127.0.0.1:" .. (10000 + i), raft_addr = "127.0.0.1:" .. (30000 + i),
      zone = "z" .. (i % 3), weight = 1, services = {}, raft_id = core.raft_id(id),
      status = i == 2 and "down" or "active", time_ms = core.time_ms() - 1000,
    })
    if i % 256 == 0 then settle() end
  end
  settle()
  local bytes = assert(c:plan(core.time_ms(), 0, true)) -- Balanced over everyone but m2.
  propose(bytes)
  settle()
  local r, grace = ck.reconciler, 30000
  local lua_t, c_t = {}, {}
  for _ = 1, RUNS do
    local t0 = core.hrtime()
    local plan = assert(r:plan(c:view(), true))
    local ids, owners = placement.flatten(plan.rows, RF)
    core.encode_table(P, RF, ids, owners)
    lua_t[#lua_t + 1] = (core.hrtime() - t0) / 1e6
    t0 = core.hrtime()
    assert(c:plan(core.time_ms(), grace, true))
    c_t[#c_t + 1] = (core.hrtime() - t0) / 1e6
  end
  print(string.format("N=%-5d P=%d RF=%d  plan a rebalance: Lua path %7.2f ms, one call to C %7.2f ms",
    N, P, RF, median(lua_t), median(c_t)))
  stop()
end

for _, n in ipairs({10, 100, 1000}) do bench(n) end
