--- A node's optional attributes, as the C core declares them
-- (runtime/ck_node_attrs.h, exported as core.NODE_ATTRS): everything the
-- Lua side does with them follows from that list, so that adding one is a
-- line in C. Each is {name (the key of core.encode_node and of the core's
-- entries), json (the key of view entries, the API's JSON and snapshots),
-- env, operator, reported, domain}.
--
-- Operator attributes are options (config.lua adds one per attribute, read
-- from `env`), sent in a join and validated there; reported ones are the
-- node's own facts (its build). A `domain` attribute spreads a partition's
-- owners within a zone (ck_place.h).
local core = require "clusterkit.core"

local M = {}

local ipairs, type = ipairs, type

M.list = core.NODE_ATTRS
M.operator = {}
for _, a in ipairs(M.list) do
  if a.operator then M.operator[#M.operator + 1] = a end
  if a.domain then M.domain = a end
end

--- Copies the attributes of a core entry (names, "" when unset) into a
-- view entry `out` (json keys, nil when unset); `list`: only those (default
-- all).
function M.to_view(raw, out, list)
  for _, a in ipairs(list or M.list) do
    local v = raw[a.name]
    out[a.json] = v ~= "" and v or nil
  end
  return out
end

--- Copies the attributes of a view entry (json keys) into the argument
-- of core.encode_node `cmd` (names).
function M.to_cmd(entry, cmd)
  for _, a in ipairs(M.list) do
    cmd[a.name] = entry[a.json]
  end
  return cmd
end

--- Copies the JSON fields of the attributes from `from` (a view entry) to
-- `out` (the API's JSON of a node, a snapshot's node).
function M.to_json(from, out)
  for _, a in ipairs(M.list) do
    out[a.json] = from[a.json]
  end
  return out
end

--- True when two core-shaped entries (names) carry the same attributes.
function M.same(a, b)
  for _, x in ipairs(M.list) do
    if (a[x.name] or "") ~= (b[x.name] or "") then return false end
  end
  return true
end

-- The operator attributes set in options `o` (by name, "" when unset)
-- into `out` under each attribute's `key` ("name" or "json").
local function set_options(o, out, key)
  for _, a in ipairs(M.operator) do
    local v = o[a.name]
    out[a[key]] = v ~= "" and v or nil
  end
  return out
end

--- This node's operator attributes from its options, into `entry` (names).
function M.from_opts(o, entry)
  return set_options(o, entry, "name")
end

--- The operator attributes of a join request's node object (json keys):
-- a table by name, or nil, why.
function M.from_join(n)
  local out = {}
  for _, a in ipairs(M.operator) do
    local v = n[a.json]
    if v ~= nil then
      if type(v) ~= "string" or #v > 1024 or v:find("%c") then
        return nil, "node." .. a.json .. " must be a string of at most 1024 characters without control characters"
      end
      out[a.name] = v ~= "" and v or nil
    end
  end
  return out
end

--- The join request's fields for this node (json keys) from its options.
function M.join_fields(o, out)
  return set_options(o, out, "json")
end

return M
