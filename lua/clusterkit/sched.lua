--- Coroutines over the libuv loop: spawn, wait, sleep.
--
-- Everything that waits (start, join, wait_for_leader, an HTTP call) is
-- built on `wait`. Inside a coroutine it yields until its callback fires;
-- on the main thread of a plain luajit process (loop not running) it runs
-- the loop until the callback fires, so top-level scripts can call
-- `ck:start()` directly.
local core = require "clusterkit.core"

local M = {}

local co_running, co_create, co_resume, co_yield =
  coroutine.running, coroutine.create, coroutine.resume, coroutine.yield
local traceback = debug.traceback
local unpack, select = unpack, select

local log_error = function(msg) io.stderr:write(msg, "\n") end

--- The graceful stop under way (clusterkit.stop): {why = signal name or
-- nil, done = bool}, or nil. clusterkit.run clears it when it returns.
M.stopping = nil

--- Sets the function that reports errors in spawned coroutines.
function M.set_error_logger(fn)
  log_error = fn
end

local function finish(ok, err)
  if not ok then
    log_error(err)
  end
end

local function body(fn, ...)
  return xpcall(fn, traceback, ...)
end

--- Runs fn(...) in a new coroutine now; errors are logged with a traceback
-- (prefixed with `what` when given). Returns the coroutine.
function M.spawn(fn, ...)
  local co = co_create(function(...)
    local ok, err = body(fn, ...)
    if not ok then
      log_error(tostring(err))
    end
  end)
  local ok, err = co_resume(co, ...)
  finish(ok, err)
  return co
end

--- True when the caller can yield (it runs in a coroutine that is not the
-- main thread).
function M.in_coroutine()
  local co, main = co_running()
  return co ~= nil and not main
end

local pack = function(...) return {n = select("#", ...), ...} end

--- Suspends the caller until the function passed to setup(resume) is
-- called; returns what resume was called with. resume may be called
-- before setup returns, and only its first call counts.
--
-- On the main thread, a stop that a signal asked for (clusterkit.stop via
-- on_signal) interrupts the wait: the loop runs until every node is
-- stopped, then cleanup() (optional: it releases what setup took) runs and
-- the wait raises "clusterkit: interrupted (SIGINT) ...", as Ctrl-C
-- interrupts a plain luajit.
function M.wait(setup, cleanup)
  local co = M.in_coroutine() and co_running() or nil
  if co then
    local state, early = "setup", nil
    setup(function(...)
      if state == "setup" then
        state, early = "done", pack(...)
      elseif state == "waiting" then
        state = "done"
        local ok, err = co_resume(co, ...)
        finish(ok, err)
      end
    end)
    if state == "done" then
      return unpack(early, 1, early.n)
    end
    state = "waiting"
    return co_yield()
  end
  if core.running() then
    error("clusterkit: a waiting call must run in a coroutine (a handler, a hook, "
      .. "clusterkit.spawn or a ckrun app) while the loop runs", 3)
  end
  local result
  setup(function(...)
    if not result then result = pack(...) end
  end)
  while true do
    local s = M.stopping
    local interrupted = s and s.why
    if interrupted and s.done then
      M.stopping = nil
      if cleanup then cleanup() end
      error("clusterkit: interrupted (" .. s.why .. "): every node was stopped gracefully", 0)
    elseif result and not interrupted then
      break
    end
    local alive = core.run("once")
    if not alive and not result and not interrupted then
      error("clusterkit: nothing left on the loop to wake this wait", 3)
    elseif not alive and interrupted then
      s.done = true -- Nothing left that could finish the stop: report it now.
    end
  end
  return unpack(result, 1, result.n)
end

--- Sleeps `seconds` (a number, fractions allowed).
function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 then
    error("clusterkit.sleep: seconds must be a non-negative number", 2)
  end
  local t = core.timer()
  M.wait(function(resume)
    t:start(seconds * 1000, 0, resume)
  end, function() t:close() end)
  t:close()
end

--- Like wait, but gives up after `seconds`: returns nil, "timeout" then.
function M.wait_timeout(seconds, setup)
  local t = core.timer()
  local res = pack(M.wait(function(resume)
    t:start(seconds * 1000, 0, function() resume(nil, "timeout") end)
    setup(resume)
  end, function() t:close() end))
  t:close()
  return unpack(res, 1, res.n)
end

--- A condition that many coroutines can wait on until it is signalled.
local Cond = {}
Cond.__index = Cond

function M.cond()
  return setmetatable({waiters = {}}, Cond)
end

--- Waits for the next signal, at most `seconds` (nil: forever). Returns the
-- signal's value, or nil, "timeout".
function Cond:wait(seconds)
  local waiters = self.waiters
  local function setup(resume)
    waiters[#waiters + 1] = resume
  end
  if seconds then
    return M.wait_timeout(seconds, setup)
  end
  return M.wait(setup)
end

function Cond:signal(...)
  local ws = self.waiters
  self.waiters = {}
  for i = 1, #ws do
    ws[i](...)
  end
end

return M
