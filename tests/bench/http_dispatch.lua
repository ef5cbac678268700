-- The Lua side of an HTTP request, without sockets: the router, the
-- handler's coroutine, the handler and the response object, driven in a loop
-- with a request stub whose respond() does nothing. What remains of a
-- request's cost in tests/bench/http_bench.sh is C (llhttp, the write) and
-- the kernel.
--
--   build/ckrun tests/bench/http_dispatch.lua
--
-- Prints ns per request for /health (an exact route), the application route
-- of tests/bench/app_route.lua (a pattern route, two lookups, JSON) and the
-- Lua handler of /partitions/key (what C answers from its cache when it can).
-- A single-node cluster on loopback with free ports and a temporary data dir.
local clusterkit = require "clusterkit"
local core = require "clusterkit.core"

local dir = os.tmpname()
os.remove(dir)
local ck = clusterkit.new {
  node_id = "bench", http_addr = "127.0.0.1:0", raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()),
  data_dir = dir .. ".ck", log_level = "warn", partition_count = 64,
}
require("app_handler")(ck) -- The route of tests/bench/app_route.lua.
assert(ck:start())

-- The C request object's methods that the path uses.
local stub = setmetatable({}, {__index = {
  respond = function() return true end,
  finished = function() return false end,
  header = function() return nil end,
}})
local srv = ck.http
local paths, queries = {}, {}
for i = 1, 1000 do
  paths[i] = "/app/user:" .. i .. (i % 4 == 0 and "%7Bx%7D" or "")
  queries[i] = "key=user:" .. i
end

local function bench(name, f)
  for i = 1, 200000 do f(i) end -- Warm-up: let the JIT compile the path.
  local n = 1000000
  local t0 = core.hrtime()
  for i = 1, n do f(i) end
  print(string.format("%-32s %6.0f ns/request", name, (core.hrtime() - t0) / n))
end

bench("GET /health", function() srv:_dispatch(stub, "GET", "/health", "") end)
bench("GET /app/:key (app_route.lua)", function(i) srv:_dispatch(stub, "GET", paths[i % 1000 + 1], "") end)
bench("GET /partitions/key, Lua handler", function(i)
  srv:_dispatch(stub, "GET", "/partitions/key", queries[i % 1000 + 1])
end)
ck:stop()
os.execute("rm -rf '" .. dir .. ".ck'")
