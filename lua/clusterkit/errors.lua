--- Error values returned as the second result of `nil, err`.
--
-- An error is a table with a stable `code` (NOT_LEADER, TIMEOUT, NOT_READY,
-- INVALID, CLOSED, ...), a readable `message`, and optional hints (`leader`:
-- the leader's HTTP address for NOT_LEADER). tostring(err) gives
-- "CODE: message", so `assert(ck:start())` prints something useful.
local M = {}

local Error = {}
Error.__index = Error
Error.__tostring = function(e)
  return e.code .. ": " .. e.message
end

function M.new(code, message, extra)
  local e = {code = code, message = message or code}
  if extra then
    for k, v in pairs(extra) do
      e[k] = v
    end
  end
  return setmetatable(e, Error)
end

--- True when `v` is an error made by this module.
function M.is(v)
  return getmetatable(v) == Error
end

-- Codes from the C core (ck_errname) map onto the same names.
local from_core = {
  INVALID = "INVALID", NOT_LEADER = "NOT_LEADER", CLOSED = "CLOSED",
  NOT_READY = "NOT_READY", CANCELED = "CANCELED", NOT_FOUND = "NOT_FOUND",
  BUSY = "BUSY", TOO_BIG = "TOO_BIG", CORRUPT = "CORRUPT",
}

--- Turns a (msg, code) pair from the C core into an error value.
function M.from_core(msg, code, extra)
  return M.new(from_core[code] or code or "ERROR", msg, extra)
end

return M
