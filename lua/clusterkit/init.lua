--- clusterkit: cluster coordination for LuaJIT.
--
--   local clusterkit = require "clusterkit"
--   local ck = clusterkit.new{node_id = "node-1", bootstrap = true}
--   assert(ck:start())
--   print(ck:primary_for_key("user:123").id)
--   clusterkit.run{signals = true}  -- in a plain luajit: the loop, and SIGINT/SIGTERM
--                                   -- stop the node gracefully (ckrun does both itself)
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

-- Signal numbers: the same on Linux, the BSDs and macOS.
local SIGNALS = {SIGHUP = 1, SIGINT = 2, SIGTERM = 15}
-- Handles from on_signal that are not closed: a handle the caller drops
-- must keep working (its __gc would close it).
local signal_handles = {} -- luacheck: ignore 241 (only a pin: written, never read)

local SignalHandle = {}
SignalHandle.__index = SignalHandle

--- Removes the handler (the signal's default action is back once no
-- handler is left for it).
function SignalHandle:close()
  if self._h then
    self._h:close()
    self._h = nil
    signal_handles[self] = nil
  end
end

--- Calls fn(name) in its own coroutine each time the process receives the
-- signal `name` ("SIGINT", "SIGTERM" or "SIGHUP"), instead of the signal's
-- default action. Delivered while the loop runs (clusterkit.run, ckrun, or a
-- waiting call on the main thread); the handler does not keep the loop
-- alive. Returns a handle (h:close() removes it), or nil, err.
--   clusterkit.on_signal("SIGINT", clusterkit.stop)  -- graceful stop, also while start() waits
function M.on_signal(name, fn)
  local num = SIGNALS[name]
  if not num then
    error("clusterkit.on_signal: signal must be SIGINT, SIGTERM or SIGHUP, got " .. tostring(name), 2)
  end
  if type(fn) ~= "function" then
    error("clusterkit.on_signal: handler must be a function", 2)
  end
  local h, msg, code = core.signal(num, function() sched.spawn(fn, name) end)
  if not h then
    return nil, errors.from_core("signal " .. name .. ": " .. tostring(msg), code)
  end
  h:unref() -- A handler alone does not keep the loop running.
  local obj = setmetatable({_h = h, name = name}, SignalHandle)
  signal_handles[obj] = true
  return obj
end

--- Stops every running node gracefully (a leader hands leadership over
-- first), then ends clusterkit.run(): what SIGINT and SIGTERM do under
-- clusterkit.run{signals = true} and ckrun. `why` is the signal's name
-- when a signal asked (on_signal passes it). Returns at once: the stop runs
-- in its own coroutine; a call while one is under way does nothing.
--
-- After a stop that a signal asked for, a waiting call on the main thread
-- of a plain luajit (ck:start() joining, clusterkit.sleep) raises
-- "clusterkit: interrupted (SIGINT) ..." once every node is stopped.
function M.stop(why)
  if sched.stopping then
    if why then log.default:info("%s: already stopping", why) end
    return
  end
  local s = {why = why, done = false}
  sched.stopping = s
  if why then log.default:info("%s: stopping every node gracefully", why) end
  sched.spawn(function()
    M.shutdown()
    s.done = true
    core.stop()
  end)
end

--- Reloads what a running node reads from files (its TLS certificate,
-- key and CA: Node:reload_tls) for every running node; what SIGHUP does
-- under ckrun and clusterkit.run{signals = true}. A node whose reload
-- fails keeps what it had and logs why.
function M.reload()
  for n in pairs(node.running) do
    if n._tls then n:reload_tls() end
  end
end

--- Runs the loop until nothing is left on it, clusterkit.stop_loop() or
-- clusterkit.stop(). With {signals = true}, SIGINT and SIGTERM call
-- clusterkit.stop while it runs, and SIGHUP clusterkit.reload. Returns the name of the signal that
-- stopped it, or nil.
function M.run(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("clusterkit.run: options must be a table", 2)
  end
  local handles = {}
  if opts and opts.signals then
    for _, name in ipairs({"SIGINT", "SIGTERM"}) do
      handles[#handles + 1] = M.on_signal(name, M.stop)
    end
    handles[#handles + 1] = M.on_signal("SIGHUP", M.reload)
  end
  core.run("default")
  -- Ended by a stop (or the loop stopped by hand while one ran): make sure
  -- it finished and no node is left running (one may have started meanwhile).
  local s = sched.stopping
  if s and (not s.done or next(node.running)) then
    sched.spawn(function()
      M.shutdown()
      s.done = true
      core.stop()
    end)
    core.run("default")
  end
  for _, h in ipairs(handles) do h:close() end
  sched.stopping = nil
  return s and s.why or nil
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

--- Stops every running node (gracefully) and waits until each is stopped,
-- also one whose stop someone else began; used on SIGINT/SIGTERM.
function M.shutdown()
  local list = {}
  for n in pairs(node.running) do
    list[#list + 1] = n
  end
  for _, n in ipairs(list) do
    n:stop()
  end
  -- stop() returns at once for a node already stopping: wait for it too
  -- (its own stop is bounded; so is this wait).
  for _, n in ipairs(list) do
    n:_wait_until(function() return n.status == "stopped" end, 30)
  end
end

return M
