--- ckrun's main program (embedded in the binary).
--
--   ckrun app.lua [args]   run app.lua in a coroutine, then the loop
--   ckrun -e CODE          run CODE the same way
--   ckrun                  a plain coordination node from the environment
--
-- SIGINT and SIGTERM stop every node gracefully (clusterkit.stop, the same
-- code that clusterkit.run{signals = true} uses in a plain luajit), then the
-- loop ends and ckrun exits 0 (also when the signal came while the app was
-- still starting: it says "interrupted"); 1 if the app raised, 3 if the
-- cluster removed a node, 4 if a node's raft storage failed.
--
-- The script's directory is put first on package.path, so that an app finds
-- the modules beside it (require "mymod" loads <dir>/mymod.lua or
-- <dir>/mymod/init.lua).
local core = require "clusterkit.core"

local M = {}

local USAGE = [==[
usage: ckrun [options] [script.lua [args...]]

Runs a clusterkit application: script.lua runs in a coroutine with
require "clusterkit" available (and modules beside script.lua on
package.path), then the event loop runs until the app's nodes stop or
SIGINT/SIGTERM arrives (nodes then stop gracefully).

With no script, runs a plain coordination node configured from the
environment (NODE_ID, NODE_NAME, HTTP_ADDR, RAFT_ADDR, JOIN_ADDR,
BOOTSTRAP, DATA_DIR, CLUSTER_NAME, PARTITION_COUNT, REPLICATION_FACTOR, ...).

options:
  -e CODE      run CODE instead of a script
  -h, --help   show this help
  -v, --version
]==]

local function default_app()
  local clusterkit = require "clusterkit"
  local made, ck = pcall(clusterkit.new)
  if not made then -- A configuration error: the message says it all.
    error({exit = tostring(ck):gsub("^[^:]*:%d+: ", "")})
  end
  local ok, err = ck:start()
  if not ok then
    error({exit = "clusterkit node failed to start: " .. tostring(err)})
  end
end

function M.main(argv)
  local code, script, args = nil, nil, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "-v" or a == "--version" then
      io.stdout:write("ckrun (clusterkit) ", core.version, "\n")
      return 0
    elseif a == "-e" then
      code = argv[i + 1]
      if not code then
        io.stderr:write("ckrun: -e needs an argument\n")
        return 2
      end
      i = i + 2
    elseif a == "--" then
      script = argv[i + 1]
      for k = i + 2, #argv do args[#args + 1] = argv[k] end
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      io.stderr:write("ckrun: unknown option ", a, "\n", USAGE)
      return 2
    else
      script = a
      for k = i + 1, #argv do args[#args + 1] = argv[k] end
      break
    end
  end

  local fn, err
  if code then
    fn, err = loadstring(code, "=(command line)")
  elseif script then
    fn, err = loadfile(script ~= "-" and script or nil)
    if fn and script ~= "-" then
      -- Modules beside the script come first (before LUA_PATH's).
      local dir = script:match("^(.*)/[^/]*$") or "."
      if dir == "" then dir = "/" end
      dir = dir:gsub("/$", "")
      package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
    end
  else
    fn = default_app
  end
  if not fn then
    io.stderr:write("ckrun: ", tostring(err), "\n")
    return 1
  end
  _G.arg = {[0] = script or "ckrun"}
  for k, v in ipairs(args) do _G.arg[k] = v end

  local clusterkit = require "clusterkit"
  local sched = require "clusterkit.sched"
  local status = 0
  -- A node the cluster removed has stopped itself; ckrun exits with 3 (the
  -- systemd unit does not restart on it: a restart would not rejoin).
  require("clusterkit.node").on_removed = function(node, reason)
    io.stderr:write("ckrun: node ", node.id, " was removed from the cluster (", reason, "); exiting. ",
      "To join again, start it with an empty DATA_DIR and a JOIN_ADDR.\n")
    status = 3
    clusterkit.stop()
  end
  -- A node whose raft storage failed cannot be closed safely: exit 4 at
  -- once (a supervisor restarts it; it recovers from its data dir).
  require("clusterkit.node").on_failed = function(node, why)
    io.stderr:write("ckrun: node ", node.id, " stopped: raft failed (", why, "); exiting. ",
      "Restart it once the cause is fixed.\n")
    io.stderr:flush()
    os.exit(4)
  end
  -- Before the app runs, so that a signal during its first steps (a join)
  -- stops it gracefully too.
  local sigs = {}
  for _, name in ipairs({"SIGINT", "SIGTERM", "SIGHUP"}) do
    local h, why = clusterkit.on_signal(name, name == "SIGHUP" and clusterkit.reload or clusterkit.stop)
    if h then
      sigs[#sigs + 1] = h
    else
      io.stderr:write("ckrun: cannot handle ", name, ": ", tostring(why), "\n")
    end
  end

  clusterkit.spawn(function()
    local ok, e = xpcall(fn, function(x)
      return type(x) == "table" and x.exit and x or debug.traceback(x, 2)
    end, unpack(args))
    if not ok then
      local msg = type(e) == "table" and tostring(e.exit) or tostring(e)
      local s = sched.stopping
      if s and s.why then
        -- The signal's stop made the app's waiting call fail (a start
        -- reports TIMEOUT when its node stops): that is no app error.
        io.stderr:write("ckrun: interrupted (", s.why, ") while the app was starting; its nodes stop gracefully\n")
        return
      end
      io.stderr:write("ckrun: ", msg, "\n")
      status = 1
      clusterkit.stop()
    end
  end)
  -- Until the app's nodes stop, or a stop (signal, error, removal) ends it;
  -- run makes sure every node is closed then.
  clusterkit.run()
  for _, h in ipairs(sigs) do h:close() end
  return status
end

return M
