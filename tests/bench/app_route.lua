-- An application route in Lua for tests/bench/http_bench.sh: what an app
-- built on clusterkit answers per request (router, handler coroutine, a
-- lookup, JSON). `ckrun app_route.lua` with the node's usual env vars.
--   GET /app/:key -> {"key":..., "partition":..., "primary":..., "owners":N}
local clusterkit = require "clusterkit"

local ck = clusterkit.new {}
require("app_handler")(ck) -- ckrun puts this file's directory on package.path.
assert(ck:start())
