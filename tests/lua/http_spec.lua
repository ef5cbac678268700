-- HTTP details of the router (clusterkit.http), without a socket: HEAD
-- falling back to GET routes, and the Allow list of a 405.
local http = require "clusterkit.http"

describe("the router's HEAD and 405", function()
  local function server()
    local srv = http.server({opts = {}, log = {}})
    local get, post, put = function() end, function() end, function() end
    srv:route("GET", "/health", get)
    srv:route("POST", "/rebalance", post)
    srv:route("GET", "/kv/:key", get)
    srv:route("PUT", "/kv/:key", put)
    return srv, get, post, put
  end

  it("runs the GET route's handler for HEAD", function()
    local srv, get = server()
    assert.are.equal(get, (srv:find("HEAD", "/health")))
    local fn, params, route = srv:find("HEAD", "/kv/a%2Fb")
    assert.are.equal(get, fn)
    assert.are.equal("a/b", params.key)
    assert.are.equal("/kv/:key", route)
  end)

  it("prefers an explicit HEAD route", function()
    local srv = server()
    local head = function() end
    srv:route("HEAD", "/health", head)
    assert.are.equal(head, (srv:find("HEAD", "/health")))
  end)

  it("does not serve HEAD where there is no GET", function()
    local srv = server()
    local none, other = srv:find("HEAD", "/rebalance")
    assert.is_nil(none)
    assert.is_true(other)
  end)

  it("lists the allowed methods, HEAD wherever GET is", function()
    local srv = server()
    assert.are.equal("GET, HEAD", srv:allow("/health"))
    assert.are.equal("POST", srv:allow("/rebalance"))
    assert.are.equal("GET, HEAD, PUT", srv:allow("/kv/x"))
    assert.is_nil(srv:allow("/nope"))
  end)
end)
