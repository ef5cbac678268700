--- Key -> partition in pure LuaJIT, for processes without clusterkit.core
-- (resty.clusterkit inside nginx). The spec is README's "Key -> partition";
-- tests/vectors/hash.json holds the cases both this and runtime/ck_hash.c
-- must answer (tests/lua/hash_spec.lua, and the nginx test for md5).
--
-- FNV-1a and fmix64 run on uint64_t cdata: LuaJIT's 64-bit arithmetic and
-- bit operations on cdata wrap modulo 2^64, as the C code's do. md5 needs a
-- function that returns the 16-byte digest (ngx.md5_bin in nginx).
local bit = require "bit"

local M = {}

local bxor, rshift = bit.bxor, bit.rshift
local byte, find, sub = string.byte, string.find, string.sub
local tonumber = tonumber

local OFFSET = 0xcbf29ce484222325ULL
local PRIME = 0x100000001b3ULL
local C1, C2 = 0xff51afd7ed558ccdULL, 0xc4ceb9fe1a85ec53ULL

--- The bytes that are hashed: a hash tag's content (the bytes between the
-- first "{" and the first "}" after it, when at least one lies between), or
-- the whole key.
function M.tag(key)
  local s = find(key, "{", 1, true)
  if s then
    local e = find(key, "}", s + 1, true)
    if e and e > s + 1 then return sub(key, s + 1, e - 1) end
  end
  return key
end

--- fmix64(fnv1a64(key)) as a uint64_t cdata.
function M.fnv1a64(key)
  local h = OFFSET
  for i = 1, #key do
    h = bxor(h, byte(key, i)) * PRIME
  end
  h = bxor(h, rshift(h, 33)) * C1
  h = bxor(h, rshift(h, 33)) * C2
  return bxor(h, rshift(h, 33))
end

--- The 0-based partition of key, or nil, err for an unknown algorithm or a
-- missing md5 function.
function M.partition(algorithm, partition_count, hash_tags, key, md5_bin)
  if hash_tags then key = M.tag(key) end
  if algorithm == "fnv1a64" then
    return tonumber(M.fnv1a64(key) % partition_count)
  elseif algorithm == "md5" then
    if not md5_bin then return nil, "md5 routing needs an md5 function" end
    local a, b, c, d = byte(md5_bin(key), 1, 4)
    return ((a * 16777216) + b * 65536 + c * 256 + d) % partition_count
  end
  return nil, "unknown hash algorithm " .. tostring(algorithm)
end

return M
