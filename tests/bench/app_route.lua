-- An application route in Lua for tests/bench/http_bench.sh: what an app
-- built on clusterkit answers per request (router, handler coroutine, a
-- lookup, JSON). `ckrun app_route.lua` with the node's usual env vars.
--   GET /app/:key -> {"key":..., "partition":..., "primary":..., "owners":N}
local clusterkit = require "clusterkit"

local ck = clusterkit.new {}
ck:route("GET", "/app/:key", function(req, res)
  local key = req.params.key
  local nodes, err = ck:nodes_for_key(key)
  if not nodes then return res:error(503, "NOT_READY", tostring(err)) end
  res:json({key = key, partition = ck:partition_for_key(key).index, primary = nodes[1] and nodes[1].id,
            owners = #nodes})
end)
assert(ck:start())
