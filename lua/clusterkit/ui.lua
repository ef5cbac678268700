--- The web dashboard: ui/'s static files (embedded in the binary at build
-- time, see cmake/embed.cmake) served at /ui on every node. The page itself
-- holds no cluster data; it reads the same JSON endpoints as everyone else
-- (/cluster through blocking queries, /health/detailed, /consensus/...).
--
-- With a READ_TOKEN the page answers 401 with a Basic challenge, so that a
-- browser prompts once (any user name, the token as password) and then
-- sends the same credentials with the page's own requests, which
-- clusterkit.auth accepts beside Bearer (the routes' auth = "read_basic").
local core = require "clusterkit.core"
local http = require "clusterkit.http"

local M = {}

-- The page may load only its own files and talk only to its own node.
local SECURITY = {
  ["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
  ["X-Content-Type-Options"] = "nosniff",
  ["Referrer-Policy"] = "no-referrer",
}

local function serve(node, asset, etag)
  return function(req, res)
    for k, v in pairs(SECURITY) do res:header(k, v) end
    -- Revalidate on every load: a node upgraded in place serves new files.
    res:header("Cache-Control", "no-cache"):header("ETag", etag)
    if req:header("If-None-Match") ~= nil and http.etag_matches(req.headers["if-none-match"], etag) then
      return res:status(304):send("")
    end
    res:header("Content-Type", asset.type)
    return res:send(asset.body)
  end
end

function M.install(node)
  local srv = node.http
  local assets = core.ui_assets()
  for name, asset in pairs(assets) do
    -- The version and the size tell builds apart well enough for a cache.
    local etag = string.format('"ui-%s-%d"', core.version, #asset.body)
    srv:route("GET", "/ui/" .. name, serve(node, asset, etag), {auth = "read_basic"})
  end
  local index = assets["index.html"]
  if index then
    local page = serve(node, index, string.format('"ui-%s-%d"', core.version, #index.body))
    srv:route("GET", "/ui", page, {auth = "read_basic"})
    srv:route("GET", "/ui/", page, {auth = "read_basic"})
  end
end

return M
