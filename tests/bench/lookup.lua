-- Key -> nodes lookup cost from Lua, on a real started node (one process,
-- one raft member). Prints ns/op for P = 64 and 4096 over varying keys.
--   ckrun tests/bench/lookup.lua
local clusterkit = require "clusterkit"
local core = require "clusterkit.core"

local function bench(P)
  local dir = os.tmpname()
  os.remove(dir)
  local ck = clusterkit.new {
    node_id = "bench", http_addr = "127.0.0.1:0", log_level = "warn",
    raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()),
    data_dir = dir, partition_count = P,
  }
  assert(ck:start())
  local keys = {}
  for i = 1, 100000 do keys[i] = "user:" .. i end
  local function run(fn, rounds)
    local n = #keys
    local sink
    for r = 1, rounds do
      for i = 1, n do sink = fn(ck, keys[i]) end
    end
    return sink
  end
  local results = {}
  for _, m in ipairs({"nodes_for_key", "primary_for_key", "am_i_responsible_for", "partition_for_key"}) do
    local fn = ck[m]
    run(fn, 2) -- warm up (JIT)
    local best = math.huge
    for _ = 1, 5 do
      collectgarbage("collect")
      local before = collectgarbage("count")
      local t0 = core.hrtime()
      run(fn, 10)
      local dt = (core.hrtime() - t0) / (10 * #keys)
      local alloc = (collectgarbage("count") - before) * 1024 / (10 * #keys)
      if dt < best then best = dt; results[m] = {ns = dt, bytes = alloc} end
    end
    print(string.format("lua %-22s P=%-5d %6.1f ns/op  %5.2f bytes/op", m, P, results[m].ns, results[m].bytes))
  end
  ck:stop()
  os.execute("rm -rf '" .. dir .. "'")
end

bench(64)
bench(4096)
