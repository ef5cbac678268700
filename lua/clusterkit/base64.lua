--- Standard base64 (RFC 4648 §4): Basic credentials (membership) and
-- key-value values that are not UTF-8 text in JSON (kv).
local bit = require "bit"

local M = {}

local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
local byte, char, sub, concat = string.byte, string.char, string.sub, table.concat

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC, ENC = {}, {}
for i = 1, 64 do
  DEC[byte(ALPHABET, i)] = i - 1
  ENC[i - 1] = sub(ALPHABET, i, i)
end

--- Encodes s, with "=" padding.
function M.encode(s)
  local out, n = {}, #s
  for i = 1, n - 2, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = bor(lshift(a, 16), lshift(b, 8), c)
    out[#out + 1] = ENC[rshift(v, 18)] .. ENC[band(rshift(v, 12), 63)] .. ENC[band(rshift(v, 6), 63)]
      .. ENC[band(v, 63)]
  end
  local rest = n % 3
  if rest == 1 then
    local v = lshift(byte(s, n), 16)
    out[#out + 1] = ENC[rshift(v, 18)] .. ENC[band(rshift(v, 12), 63)] .. "=="
  elseif rest == 2 then
    local v = bor(lshift(byte(s, n - 1), 16), lshift(byte(s, n), 8))
    out[#out + 1] = ENC[rshift(v, 18)] .. ENC[band(rshift(v, 12), 63)] .. ENC[band(rshift(v, 6), 63)] .. "="
  end
  return concat(out)
end

--- Decodes base64 with or without "=" padding; nil when s is not base64.
function M.decode(s)
  s = s:gsub("=+$", "")
  if #s % 4 == 1 then return nil end
  local out, acc, bits = {}, 0, 0
  for i = 1, #s do
    local v = DEC[byte(s, i)]
    if not v then return nil end
    acc, bits = bor(lshift(band(acc, 0xffff), 6), v), bits + 6
    if bits >= 8 then
      bits = bits - 8
      out[#out + 1] = char(band(rshift(acc, bits), 0xff))
    end
  end
  return concat(out)
end

return M
