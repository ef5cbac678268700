-- HTTP details of the router (clusterkit.http), without a socket: HEAD
-- falling back to GET routes, the Allow list of a 405, and the request
-- target a redirect keeps.
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

describe("the request target", function()
  it("is the raw path and query, as a redirect must keep them", function()
    assert.are.equal("/rebalance", http.target("/rebalance", ""))
    assert.are.equal("/rebalance?a=1&b=%20", http.target("/rebalance", "a=1&b=%20"))
    assert.are.equal("/kv/a%2Fb?x", http.target("/kv/a%2Fb", "x"))
  end)

  it("percent-encodes bytes that may not stand in a URI", function()
    assert.are.equal("/a%09b%7F%C3%A9?q=%22x%22", http.target("/a\tb\127\195\169", 'q="x"'))
  end)

  it("is / for a target that is not a path (absolute or asterisk form)", function()
    assert.are.equal("/", http.target("http://other/x", ""))
    assert.are.equal("/", http.target("*", ""))
  end)
end)
