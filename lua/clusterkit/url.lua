--- URL splitting shared by clusterkit.httpc (the loop's HTTP client) and
-- resty.clusterkit (nginx's cosockets): pure Lua, no clusterkit.core.
local M = {}

local type, tonumber = type, tonumber

--- Splits "http://host:port/path?q" (or https://) into host, port
-- (default 80, or 443), target (default "/") and the scheme ("http" or
-- "https"); nil for anything else.
function M.parse(url)
  if type(url) ~= "string" then return nil end
  local scheme, rest = url:match("^(https?)://(.+)$")
  if not rest then return nil end
  local authority, target = rest:match("^([^/]+)(/.*)$")
  if not authority then
    authority, target = rest, "/"
  end
  local host, port = authority:match("^%[([%x:%.]+)%]:?(%d*)$")
  if not host then
    host, port = authority:match("^([^:]+):?(%d*)$")
  end
  if not host then return nil end
  port = port ~= "" and tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then return nil end
  return host, port, target, scheme
end

return M
