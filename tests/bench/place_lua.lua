-- Placement compute time through the Lua policy interface (what a custom
-- policy costs): the built-in policy called from Lua (placement.default:
-- rows in, rows out) and a plain Lua round-robin policy, at
-- (P, N) = (64, 3), (4096, 50), (65536, 1000), RF = 3.
--   ckrun tests/bench/place_lua.lua
local placement = require "clusterkit.placement"
local core = require "clusterkit.core"

local function nodes_of(n)
  local t = {}
  for i = 1, n do
    t[i] = {id = string.format("node-%04d", i), zone = "z" .. (i % 5), weight = 1, status = "active"}
  end
  return t
end

-- A deliberately simple Lua policy: owners p, p+1, ... round the ring.
local function round_robin(nodes, _, cfg)
  local rows, n = {}, #nodes
  local w = math.min(cfg.replication, n)
  for p = 1, cfg.partitions do
    local row = {}
    for k = 0, w - 1 do row[k + 1] = nodes[(p - 1 + k) % n + 1].id end
    rows[p] = row
  end
  return rows
end

local function time(fn, runs)
  local best = math.huge
  for _ = 1, runs do
    collectgarbage("collect")
    local t0 = core.hrtime()
    fn()
    best = math.min(best, (core.hrtime() - t0) / 1e6)
  end
  return best
end

for _, shape in ipairs({{64, 3}, {4096, 50}, {65536, 1000}}) do
  local P, N = shape[1], shape[2]
  local cfg = {partitions = P, replication = 3}
  local nodes = nodes_of(N)
  local runs = P >= 65536 and 3 or 10
  local fresh = time(function() placement.default(nodes, {}, cfg) end, runs)
  local current = placement.default(nodes, {}, cfg)
  local joined = nodes_of(N + 1)
  local join = time(function() placement.default(joined, current, cfg) end, runs)
  local rr = time(function() round_robin(nodes, current, cfg) end, runs)
  local check = time(function() assert(placement.validate(current, nodes, cfg)) end, runs)
  print(string.format("lua-interface P=%-5d N=%-4d default fresh %8.2f ms, default join %8.2f ms, "
    .. "round-robin Lua policy %8.2f ms, leader's validation %8.2f ms", P, N, fresh, join, rr, check))
end
