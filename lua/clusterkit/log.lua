--- Logging: one line per event on stderr, with time, level, node id and
-- raft term, e.g. `2026-11-26T04:50:00.123Z INFO [node-1 t=3] leader elected`.
-- Level from the option log_level or CK_LOG_LEVEL (debug, info, warn, error).
local core = require "clusterkit.core"

local M = {}

local levels = {debug = 1, info = 2, warn = 3, error = 4}
M.levels = levels

local floor, date, format = math.floor, os.date, string.format
local stderr = io.stderr

local function stamp()
  local ms = core.time_ms()
  local s = floor(ms / 1000)
  return date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", ms - s * 1000)
end

local Logger = {}
Logger.__index = Logger

--- A logger whose context() returns the bracketed prefix (node id, term).
function M.new(level, context)
  level = level or os.getenv("CK_LOG_LEVEL") or "info"
  return setmetatable({min = levels[level] or 2, context = context}, Logger)
end

function Logger:write(level, fmt, ...)
  if levels[level] < self.min then
    return
  end
  local msg = select("#", ...) > 0 and format(fmt, ...) or fmt
  local ctx = self.context and self.context() or "-"
  stderr:write(stamp(), " ", level:upper(), " [", ctx, "] ", msg, "\n")
end

for name in pairs(levels) do
  Logger[name] = function(self, fmt, ...)
    return self:write(name, fmt, ...)
  end
end

M.default = M.new(nil, function() return "clusterkit" end)

return M
