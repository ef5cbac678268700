--- Who may call what over HTTP: the cluster token (CLUSTER_TOKEN) for
-- anything that changes the cluster, the read token (READ_TOKEN, or the
-- cluster token) for reads. A route says which it needs when it is added
-- (`srv:route(method, pattern, fn, {auth = "write"})`, also ck:route); the
-- router checks before the handler runs, so no handler has to remember.
local base64 = require "clusterkit.base64"

local M = {}

-- Constant-time comparison of two strings of equal length.
local function same(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then
    return false
  end
  local bx, acc = string.byte, 0
  for i = 1, #a do
    acc = bit.bor(acc, bit.bxor(bx(a, i), bx(b, i)))
  end
  return acc == 0
end

-- The token a request carries: "Authorization: Bearer <token>", or Basic
-- credentials whose password is the token (any user name), which is what a
-- browser sends after its login prompt for the dashboard (/ui).
local function bearer(req)
  local h = req:header("Authorization") or ""
  local t = h:match("^Bearer%s+(.+)$")
  if t then return t end
  local cred = h:match("^[Bb]asic%s+([%w+/=]+)%s*$")
  local plain = cred and base64.decode(cred)
  return plain and plain:match("^[^:]*:(.*)$") or ""
end

local function deny(res, what, challenge)
  res:header("WWW-Authenticate", challenge or "Bearer")
  res:error(401, "UNAUTHORIZED", "a valid " .. what .. " is required")
  return false
end

--- The levels a route may ask for: "write" (the cluster token), "read"
-- (the read token or the cluster token), "read_basic" (as read, but the
-- 401 asks a browser for Basic credentials: the dashboard).
M.LEVELS = {write = true, read = true, read_basic = true}

--- True when `req` may go on at `level` on `node`; otherwise answers 401
-- on `res` and returns false. Without the token that level needs, anyone
-- may.
function M.check(node, level, req, res)
  local o = node.opts
  if level == "write" then
    if not o.token or same(bearer(req), o.token) then return true end
    return deny(res, "cluster token")
  end
  local rt = o.read_token
  if not rt then return true end
  local given = bearer(req)
  if same(given, rt) or (o.token and same(given, o.token)) then return true end
  return deny(res, "read token", level == "read_basic" and 'Basic realm="clusterkit", charset="UTF-8"' or nil)
end

--- Headers for this node's own calls to its peers (JSON, and the cluster
-- token when there is one).
function M.headers(node)
  local h = {["Content-Type"] = "application/json"}
  if node.opts.token then
    h.Authorization = "Bearer " .. node.opts.token
  end
  return h
end

return M
