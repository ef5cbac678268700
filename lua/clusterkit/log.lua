--- Logging: one line per event on stderr, with time, level, node id and
-- raft term.
--
--   text (default): 2026-11-26T04:50:00.123Z INFO [node-1 t=3] leader elected
--   json:           {"time":"2026-11-26T04:50:00.123Z","level":"info","node":"node-1","term":3,
--                    "msg":"leader elected"}
--
-- Level from the option log_level or CK_LOG_LEVEL (debug, info, warn,
-- error). The format belongs to the process, not to a node: every logger
-- writes to the same stderr, and a stream that mixed text and JSON lines
-- could not be parsed. It comes from LOG_FORMAT, and clusterkit.new with a
-- log_format option (or LOG_FORMAT) sets it (config.resolve calls
-- set_format once the options are valid).
--
-- logger:log(level, fields, fmt, ...) adds structured fields: keys of the
-- JSON object (the fixed keys time, level, node, term and msg win), or
-- ` key=value` pairs after the text message.
local core = require "clusterkit.core"
local json = require "clusterkit.json"

local M = {}

local levels = {debug = 1, info = 2, warn = 3, error = 4}
M.levels = levels

--- The formats set_format accepts.
M.formats = {text = true, json = true}

local floor, date, format = math.floor, os.date, string.format
local concat, sort, tostring, type, pairs = table.concat, table.sort, tostring, type, pairs
local encode, utf8_safe = json.encode, json.utf8_safe
local stderr = io.stderr

-- The process's format; LOG_FORMAT when it names one (clusterkit.new
-- refuses an unknown one; a logger made before any node falls back to text).
local current = (os.getenv("LOG_FORMAT") or ""):lower()
if not M.formats[current] then current = "text" end

--- Sets the format of every logger in the process ("text" or "json").
-- Raises on an unknown format.
function M.set_format(f)
  if not M.formats[f] then
    error("clusterkit.log.set_format: format must be text or json, got " .. tostring(f), 2)
  end
  current = f
end

--- The process's log format.
function M.format()
  return current
end

local function stamp()
  local ms = core.time_ms()
  local s = floor(ms / 1000)
  return date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", ms - s * 1000)
end

-- A JSON string for any Lua string, valid UTF-8 (messages may carry bytes
-- from the network: a path, a header).
local function jstr(s)
  return encode(utf8_safe(tostring(s)))
end

local function jvalue(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return jstr(v) end
    return encode(v)
  elseif t == "boolean" then
    return v and "true" or "false"
  elseif t == "string" then
    return jstr(v)
  end
  local s = t == "table" and encode(v)
  return s or jstr(v)
end

local FIXED = {time = true, level = true, node = true, term = true, msg = true}

-- The string keys of fields, sorted (stable lines for people and diffs).
local function sorted_keys(fields)
  local keys = {}
  for k in pairs(fields) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  sort(keys)
  return keys
end

local function text_value(v)
  local s = type(v) == "table" and (encode(v) or tostring(v)) or tostring(v)
  if s == "" or s:find("[%s\"=]") then
    return jstr(s)
  end
  return s
end

local Logger = {}
Logger.__index = Logger

--- A logger. context() (optional) returns the bracketed prefix: the node
-- id, with " t=<term>" once the raft term is known ("node-1 t=3"); JSON
-- splits it into node and term.
function M.new(level, context)
  level = level or os.getenv("CK_LOG_LEVEL") or "info"
  return setmetatable({min = levels[level:lower()] or 2, context = context}, Logger)
end

-- Writes one line, whatever the level (callers filter).
function Logger:_emit(level, msg, fields)
  local ctx = self.context and self.context()
  if current == "json" then
    local node, term
    if ctx then
      node, term = ctx:match("^(%S+) t=(%d+)$")
      node = node or ctx
    end
    local out = {'{"time":"', stamp(), '","level":"', level, '"'}
    if node then out[#out + 1] = ',"node":' .. jstr(node) end
    if term then out[#out + 1] = ',"term":' .. term end
    out[#out + 1] = ',"msg":' .. jstr(msg)
    if fields then
      for _, k in ipairs(sorted_keys(fields)) do
        if not FIXED[k] then
          out[#out + 1] = "," .. jstr(k) .. ":" .. jvalue(fields[k])
        end
      end
    end
    out[#out + 1] = "}\n"
    stderr:write(concat(out))
    return
  end
  if fields then
    local out = {msg}
    for _, k in ipairs(sorted_keys(fields)) do
      out[#out + 1] = k .. "=" .. text_value(fields[k])
    end
    msg = concat(out, " ")
  end
  stderr:write(stamp(), " ", level:upper(), " [", ctx or "clusterkit", "] ", msg, "\n")
end

function Logger:write(level, fmt, ...)
  if levels[level] < self.min then
    return
  end
  self:_emit(level, select("#", ...) > 0 and format(fmt, ...) or fmt)
end

--- Logs with structured fields (a table, or nil): logger:log("info",
-- {partition = 3, keys = 120}, "copied %s", what).
function Logger:log(level, fields, fmt, ...)
  if not levels[level] then
    error("log: unknown level " .. tostring(level), 2)
  end
  if levels[level] < self.min then
    return
  end
  self:_emit(level, select("#", ...) > 0 and format(fmt, ...) or fmt, fields)
end

for name in pairs(levels) do
  Logger[name] = function(self, fmt, ...)
    return self:write(name, fmt, ...)
  end
end

--- The access log of `node`'s HTTP server: a function(res, body) that
-- writes one line per answered request, whatever the log level (the
-- access log was asked for explicitly). res carries _req and _t0 (the
-- hrtime when the request was dispatched).
--   text: ... INFO [node-1 t=3] GET /cluster 200 0.42 ms 1834 bytes
--   json: {..., "msg":"GET /cluster 200", "method":"GET", "path":"/cluster",
--          "status":200, "duration_ms":0.42, "bytes":1834}
function M.access(node)
  local hrtime = core.hrtime
  return function(res, body)
    local req = res._req
    local path = req.path:find("%c") and req.path:gsub("%c", "?") or req.path
    local ms = floor((hrtime() - res._t0) / 1e4) / 100
    local bytes = body and #body or 0
    if current == "json" then
      node.log:_emit("info", format("%s %s %d", req.method, path, res._status), {
        access = true, method = req.method, path = req.path, status = res._status,
        duration_ms = ms, bytes = bytes,
      })
    else
      node.log:_emit("info", format("%s %s %d %.2f ms %d bytes", req.method, path, res._status, ms, bytes))
    end
  end
end

--- The process's own logger (no node): lines carry [clusterkit].
M.default = M.new(nil, nil)

return M
