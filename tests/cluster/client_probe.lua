-- A clusterkit.client in its own process (ckrun client_probe.lua), for
-- test_client.py: prints one JSON object per line.
--   {"event":"table", index, watching, routes = {key: [owners]}, epochs}
--     on every table the client installs (PROBE_KEYS keys "key-1".. routed);
--   {"event":"put", key, value, status, node, attempts, err} per write when
--     PROBE_PUTS=N: N writes of examples/kv's PUT /kv/<key>, one at a time.
-- CK_ADDR names the seed(s).
local client = require "clusterkit.client"
local json = require "clusterkit.json"
local clusterkit = require "clusterkit"

local nkeys = tonumber(os.getenv("PROBE_KEYS") or "32")
local puts = tonumber(os.getenv("PROBE_PUTS") or "0")

local function emit(t)
  io.stdout:write(json.encode(t), "\n")
  io.stdout:flush()
end

-- A TLS cluster: CK_ADDR https://..., PROBE_TLS_CA (and a client
-- certificate in PROBE_TLS_CERT/PROBE_TLS_KEY for mutual TLS).
local tls
if os.getenv("PROBE_TLS_CA") then
  tls = assert(require("clusterkit.core").tls_context {
    ca = os.getenv("PROBE_TLS_CA"), cert = os.getenv("PROBE_TLS_CERT"), key = os.getenv("PROBE_TLS_KEY"),
    role = "client",
  })
end

local c = assert(client.new {
  wait = 5, timeout = 10, tls = tls,
  on_change = function(self, t)
    local routes, epochs = {}, {}
    for i = 1, nkeys do
      local k = "key-" .. i
      local r = self:route(k)
      routes[k], epochs[k] = r.owners, r.epoch
    end
    emit({event = "table", index = t.index, watching = self.addrs[self.cur], routes = routes, epochs = epochs})
  end,
})
assert(c:start())
emit({event = "started", index = c:state_index()})

for i = 1, puts do
  local key, value = "w-" .. i, "v-" .. i
  local res, err = c:request({key = key, method = "PUT", path = "/kv/" .. key, body = value})
  emit({event = "put", key = key, value = value, status = res and res.status or json.null,
        node = res and res.node or json.null, attempts = res and res.attempts or json.null,
        err = err and tostring(err) or json.null})
end
if puts > 0 then
  emit({event = "done"})
  c:close()
  clusterkit.stop()
end
