--- JSON through lua-cjson, plus empty arrays.
--
-- The lua-cjson that Debian ships encodes every empty table as {}; JSON
-- fields that are lists (replica_nodes, nodes) must stay lists when empty,
-- so builders wrap them with json.array(t), which swaps an empty table for
-- a marker string that encode() turns back into [].
local cjson = require "cjson.safe"

local M = {}

-- The marker carries a per-process random nonce, so that no string coming
-- from a request (a key, a path parameter) can be mistaken for it.
local core = require "clusterkit.core"
local NONCE = core.random_hex(8)
local MARK = "\0[]" .. NONCE
local MARK_JSON = '"\\u0000[]' .. NONCE .. '"'
local MARK_PATTERN = '"\\u0000%[%]' .. NONCE .. '"'
local find, gsub, byte = string.find, string.gsub, string.byte
local encode = cjson.encode

cjson.encode_sparse_array(true)
-- Only standard JSON numbers: no 0x10, NaN or Infinity from the network.
cjson.decode_invalid_numbers(false)

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
    s = gsub(s, MARK_PATTERN, "[]")
  end
  return s
end

--- `s` with every byte sequence that is not valid UTF-8 replaced by U+FFFD,
-- so that it can be echoed in JSON (lua-cjson passes bytes through as they
-- are, which would put invalid UTF-8 on the wire).
function M.utf8_safe(s)
  if not find(s, "[\128-\255]") then
    return s
  end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = byte(s, i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
      or (c >= 0xF0 and c <= 0xF4) and 4 or 0
    local ok = len > 0 and i + len - 1 <= n
    if ok and len > 1 then
      local c2 = byte(s, i + 1)
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
      elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      ok = c2 >= lo and c2 <= hi
      for k = 2, len - 1 do
        local ck = byte(s, i + k)
        ok = ok and ck >= 0x80 and ck <= 0xBF
      end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\239\191\189"
      i = i + 1
    end
  end
  return table.concat(out)
end

--- Decodes `s`; returns the value or nil, err.
M.decode = cjson.decode
M.null = cjson.null

return M
