--- JSON through lua-cjson, plus empty arrays.
--
-- The lua-cjson that Debian ships encodes every empty table as {}; JSON
-- fields that are lists (replica_nodes, nodes) must stay lists when empty,
-- so builders wrap them with json.array(t), which swaps an empty table for
-- a marker string that encode() turns back into [].
local cjson = require "cjson.safe"

local M = {}

local MARK = "\0[]"
local MARK_JSON = '"\\u0000[]"'
local find, gsub = string.find, string.gsub
local encode = cjson.encode

cjson.encode_sparse_array(true)

--- `t` itself, or the empty-array marker when t is empty.
function M.array(t)
  if t == nil or next(t) == nil then
    return MARK
  end
  return t
end

--- Encodes `v`; returns the JSON text or nil, err.
function M.encode(v)
  local s, err = encode(v)
  if not s then
    return nil, err
  end
  if find(s, MARK_JSON, 1, true) then
    s = gsub(s, '"\\u0000%[%]"', "[]")
  end
  return s
end

--- Decodes `s`; returns the value or nil, err.
M.decode = cjson.decode
M.null = cjson.null

return M
