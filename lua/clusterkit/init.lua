--- clusterkit: cluster coordination for LuaJIT.
--
--   local clusterkit = require "clusterkit"
--   local ck = clusterkit.new{node_id = "node-1", bootstrap = true}
--   assert(ck:start())
--   print(ck:primary_for_key("user:123").id)
--   clusterkit.run()          -- in a plain luajit; ckrun runs the loop itself
local core = require "clusterkit.core"
local sched = require "clusterkit.sched"
local node = require "clusterkit.node"
local errors = require "clusterkit.errors"
local log = require "clusterkit.log"

local M = {
  version = core.version,
  errors = errors,
  json = require "clusterkit.json",
  http = require "clusterkit.httpc",
}

core.set_error_handler(function(msg)
  log.default:error("%s", tostring(msg))
end)
sched.set_error_logger(function(msg)
  log.default:error("%s", tostring(msg))
end)

--- A node (not started). See README for the options.
M.new = node.new

--- Runs the loop until nothing is left on it (or clusterkit.stop_loop()).
function M.run()
  return core.run("default")
end

--- Makes clusterkit.run() return after the current iteration.
function M.stop_loop()
  core.stop()
end

--- Runs fn(...) in a new coroutine; waiting calls inside it yield.
M.spawn = sched.spawn

--- Sleeps `seconds` (yields inside a coroutine).
M.sleep = sched.sleep

--- A condition many coroutines can wait on: c:wait([timeout]) -> value or
-- nil, "timeout"; c:signal(value) wakes every waiter.
M.cond = sched.cond

--- Monotonic time in seconds (for deadlines).
function M.monotime()
  return core.hrtime() / 1e9
end

--- The partition of `key` under a given hash configuration, computed
-- without a node (what a routing client does).
function M.partition_of(key, partition_count, algorithm, hash_tags)
  if type(key) ~= "string" then
    error("clusterkit.partition_of: key must be a string", 2)
  end
  algorithm = algorithm or "fnv1a64"
  if hash_tags == nil then hash_tags = algorithm == "fnv1a64" end
  return core.hash_partition(algorithm, partition_count, hash_tags, key)
end

--- A TCP port that is free on `host` (default 127.0.0.1) right now: the
-- kernel picks it for a listener that is then closed. For tests and demos
-- that must give raft a fixed address. Waits (yields) for the close.
function M.free_port(host)
  local srv = core.http_server(nil, function(req) req:respond(503) end)
  local port, msg = srv:listen(host or "127.0.0.1", 0)
  sched.wait(function(resume) srv:close(resume) end)
  if not port then
    return nil, errors.new("LISTEN", tostring(msg))
  end
  return port
end

--- Stops every running node (gracefully); used on SIGINT/SIGTERM.
function M.shutdown()
  local list = {}
  for n in pairs(node.running) do
    list[#list + 1] = n
  end
  for _, n in ipairs(list) do
    n:stop()
  end
end

return M
