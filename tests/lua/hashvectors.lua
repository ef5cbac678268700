-- tests/vectors/hash.json for the specs (run from the source tree): the
-- cases, and a case's key as bytes (key_hex for keys that are not UTF-8).
local json = require "clusterkit.json"

local M = {}

function M.cases()
  local f = assert(io.open("tests/vectors/hash.json", "rb"))
  local v = json.decode(f:read("*a"))
  f:close()
  return v.cases
end

function M.bytes(case)
  if case.key_hex then
    return (case.key_hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
  return case.key
end

return M
