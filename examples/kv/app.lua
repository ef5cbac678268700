-- A node of the distributed KV store (see README.md beside this file):
--
--   NODE_ID=node-1 HTTP_ADDR=127.0.0.1:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true build/ckrun examples/kv/app.lua
--
-- Configured like any clusterkit node, from the seed's environment variables
-- (NODE_ID, HTTP_ADDR, RAFT_ADDR, JOIN_ADDR, BOOTSTRAP, DATA_DIR,
-- REPLICATION_FACTOR, ...). The store itself lives in kv/init.lua, so that
-- other programs (examples/demo.lua) can run it on their own nodes.

-- ckrun puts this script's directory (examples/kv) on package.path; the
-- store is the module "kv" (kv/init.lua, which requires kv.storage), so its
-- parent, examples/, goes there too.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/../?.lua;" .. here .. "/../?/init.lua;" .. package.path

local clusterkit = require "clusterkit"
local kv = require "kv"

local ck = clusterkit.new()
local store = kv.install(ck)
local ok, err = store:start()
if not ok then
  error("kv node failed to start: " .. tostring(err))
end
ck.log:info("kv: serving PUT/GET/DELETE http://%s/kv/<key>", ck:me().http_addr)
-- ckrun keeps running the loop until SIGINT/SIGTERM stops the node.
