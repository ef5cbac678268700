-- HTTP details of the router (clusterkit.http), without a socket: the
-- If-None-Match parser and matcher, HEAD falling back to GET routes, the
-- Allow list of a 405, and the request target a redirect keeps.
local http = require "clusterkit.http"

describe("If-None-Match", function()
  local parse, matches = http.parse_etags, http.etag_matches

  it("parses one tag, weak tags, lists and *", function()
    assert.are.same({'"1"'}, parse('"1"'))
    assert.are.same({'"1"'}, parse('W/"1"'))
    assert.are.same({'"1"', '"2"', '"3"'}, parse('"1", W/"2",\t"3"'))
    assert.are.same({'""'}, parse('""'))
    assert.are.same({'"a,b"'}, parse('"a,b"'))       -- a comma inside a tag is part of it
    assert.are.same({'"\200x"'}, parse('"\200x"'))     -- obs-text is allowed
    assert.are.equal("*", parse("*"))
    assert.are.equal("*", parse("  *  "))
  end)

  it("accepts the empty list elements that RFC 9110 §5.6.1 asks recipients to skip", function()
    assert.are.same({'"1"', '"2"'}, parse(' , "1" ,, "2",'))
    assert.are.same({}, parse(""))
    assert.are.same({}, parse(" , "))
  end)

  it("refuses malformed values", function()
    for _, bad in ipairs({'1', '"1', '1"', 'W/1', 'w/"1"', 'W/ "1"', '"1" "2"', '"1",2', '"a b"',
                          '"a\1"', '*, "1"', '"1", *', '**', 'W/*'}) do
      local v, err = parse(bad)
      assert.is_nil(v, bad)
      assert.is_string(err, bad)
    end
  end)

  it("compares weakly: W/ on either side does not matter", function()
    assert.is_true(matches('"7"', '"7"'))
    assert.is_true(matches('W/"7"', '"7"'))
    assert.is_true(matches('"7"', 'W/"7"'))
    assert.is_true(matches('"1", "7"', '"7"'))
    assert.is_true(matches('"1",W/"7"', '"7"'))
    assert.is_true(matches("*", '"7"'))
    assert.is_false(matches('"70"', '"7"'))
    assert.is_false(matches('"1", "2"', '"7"'))
    assert.is_false(matches('7', '"7"'))       -- unquoted: malformed, so no match
    assert.is_false(matches('"7", 8', '"7"'))  -- a malformed list never matches
    assert.is_false(matches("", '"7"'))
    assert.is_false(matches(nil, '"7"'))
  end)
end)

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

  it("runs the GET route's handler for HEAD, only where GET is, unless HEAD has a route", function()
    local srv, get = server()
    assert.are.equal(get, (srv:find("HEAD", "/health")))
    local fn, params, route = srv:find("HEAD", "/kv/a%2Fb")
    assert.are.equal(get, fn)
    assert.are.equal("a/b", params.key)
    assert.are.equal("/kv/:key", route)
    -- Where there is no GET, a HEAD is a 405 (the path exists) or a 404.
    local none, other = srv:find("HEAD", "/rebalance")
    assert.is_nil(none)
    assert.is_true(other)
    none, other = srv:find("HEAD", "/nope")
    assert.is_nil(none)
    assert.is_false(other)
    -- An explicit HEAD route wins.
    local head = function() end
    srv:route("HEAD", "/health", head)
    assert.are.equal(head, (srv:find("HEAD", "/health")))
  end)

  it("lists the allowed methods, HEAD wherever GET is", function()
    local srv = server()
    assert.are.equal("GET, HEAD", srv:allow("/health"))
    assert.are.equal("POST", srv:allow("/rebalance"))
    assert.are.equal("GET, HEAD, PUT", srv:allow("/kv/x"))
    assert.is_nil(srv:allow("/nope"))
  end)
end)

describe("the router's path matching", function()
  it("splits paths as gmatch('[^/]+') does, empty segments skipped", function()
    local function parts(p)
      local t = {}
      local n = http.split(p, t)
      local want = {}
      for seg in p:gmatch("[^/]+") do want[#want + 1] = seg end
      assert.are.equal(#want, n)
      for i = 1, n do assert.are.equal(want[i], t[i]) end
    end
    for _, p in ipairs({"/", "", "//", "/a", "a", "/a/", "//a///b//", "/a/b/c/d/e/f", "/%2F/x"}) do parts(p) end
  end)

  it("captures segments, the rest after *, and checks the segment count with a reused scratch", function()
    local srv = http.server({opts = {}, log = {}})
    local kv, files, deep = function() end, function() end, function() end
    srv:route("GET", "/kv/:key", kv)
    srv:route("GET", "/files/*", files)
    srv:route("GET", "/a/:x/c/:y", deep)
    -- A long path first leaves stale segments in the scratch table.
    assert.is_nil((srv:find("GET", "/kv/a/b/c/d/e")))
    local fn, params = srv:find("GET", "/kv/x%7By%7D")
    assert.are.equal(kv, fn)
    assert.are.equal("x{y}", params.key)
    fn, params = srv:find("GET", "//kv//k//")
    assert.are.equal(kv, fn)
    assert.are.equal("k", params.key)
    assert.is_nil((srv:find("GET", "/kv")))
    fn, params = srv:find("GET", "/files/a//b/c")
    assert.are.equal(files, fn)
    assert.are.equal("a/b/c", params["*"])
    fn, params = srv:find("GET", "/files")
    assert.are.equal(files, fn)
    assert.are.equal("", params["*"])
    fn, params = srv:find("GET", "/a/1/c/2")
    assert.are.equal(deep, fn)
    assert.are.same({x = "1", y = "2"}, params)
    assert.is_nil((srv:find("GET", "/a/1/d/2")))
    assert.is_nil((srv:find("GET", "/a/1/c")))
  end)

  it("percent-decodes with either case of hex digit and leaves other % alone", function()
    assert.are.equal("{}", http.unescape("%7b%7D"))
    assert.are.equal("\255\0", http.unescape("%Ff%00"))
    assert.are.equal("%zz %4 %", http.unescape("%zz %4 %"))
    assert.are.equal("a b+c", http.unescape("a+b%2Bc", true))
    assert.are.equal("a+b", http.unescape("a+b"))
  end)

  it("ignores fast-path resets and puts once the server is closed (events still come during a stop)", function()
    local srv = http.server({opts = {header_timeout = 10, body_timeout = 30, idle_timeout = 60}, log = {}})
    srv:route("GET", "/partitions/key", function() end)
    srv:fast_key("/partitions/key")
    srv:route("GET", "/cluster", function() end)
    srv:fast_body("/cluster")
    assert(srv:listen("127.0.0.1", 0))
    srv:fast_reset()
    local closed = false
    srv:close(function() closed = true end)
    assert.has_no.errors(function()
      srv:fast_reset()
      srv:fast_put({index = 3, hash_algo = "fnv1a64", partitions = 8, hash_tags = true}, 0, "}")
      srv:fast_put_body("/cluster", 3, "{}", true)
      srv:route("GET", "/cluster", function() end)
    end)
    local deadline = require("clusterkit.core").hrtime() + 5e9
    while not closed and require("clusterkit.core").hrtime() < deadline do require("clusterkit").sleep(0.01) end
    assert.is_true(closed)
  end)

  it("lets a later route of the application replace the built-in key lookup answered in C", function()
    local srv = http.server({opts = {}, log = {}})
    srv:route("GET", "/partitions/key", function() end)
    srv:fast_key("/partitions/key")
    assert.is_truthy(srv._fast)
    srv:route("GET", "/partitions/key", function() end)
    assert.is_nil(srv._fast)
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

describe("clusterkit.url", function()
  local parse = require("clusterkit.url").parse
  it("splits http and https URLs, with each scheme's default port", function()
    assert.are.same({"10.0.0.1", 8080, "/x?y=1", "http"}, {parse("http://10.0.0.1:8080/x?y=1")})
    assert.are.same({"h", 80, "/", "http"}, {parse("http://h")})
    assert.are.same({"h", 443, "/p", "https"}, {parse("https://h/p")})
    assert.are.same({"::1", 8443, "/", "https"}, {parse("https://[::1]:8443")})
  end)
  it("refuses anything else", function()
    for _, bad in ipairs({"ftp://h/", "h:80/x", "http://", "https://h:0/", "https://h:70000/", 42}) do
      assert.is_nil(parse(bad), tostring(bad))
    end
  end)
end)
