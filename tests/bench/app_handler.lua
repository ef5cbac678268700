-- The application route the HTTP benchmarks measure (tests/bench/app_route.lua
-- serves it over sockets, tests/bench/http_dispatch.lua without): router,
-- handler coroutine, two lookups, JSON.
--   GET /app/:key -> {"key":..., "partition":..., "primary":..., "owners":N}
return function(ck)
  ck:route("GET", "/app/:key", function(req, res)
    local key = req.params.key
    local nodes, err = ck:nodes_for_key(key)
    if not nodes then return res:error(503, "NOT_READY", tostring(err)) end
    res:json({key = key, partition = ck:partition_for_key(key).index, primary = nodes[1] and nodes[1].id,
              owners = #nodes})
  end)
end
