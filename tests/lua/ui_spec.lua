-- The dashboard's pieces that need no browser: the embedded files, the
-- base64 decoder behind Basic credentials, and which credentials a read
-- token accepts (a fake request and response stand in for HTTP).
local core = require "clusterkit.core"
local auth = require "clusterkit.auth"
local base64 = require "clusterkit.base64"

describe("embedded dashboard files", function()
  it("carries the page, its script and its style with their types", function()
    local a = core.ui_assets()
    assert.truthy(a["index.html"].body:find("<!doctype html>", 1, true))
    assert.truthy(a["index.html"].type:find("^text/html"))
    assert.truthy(a["app.js"].type:find("^text/javascript"))
    assert.truthy(a["app.css"].type:find("^text/css"))
    -- The page names only files it is served with (no CDN).
    for ref in a["index.html"].body:gmatch('[hrefsc]+="(/ui/[^"]+)"') do
      assert.truthy(a[ref:sub(5)], ref)
    end
    assert.is_nil(a["index.html"].body:find("https?://"))
  end)
end)

describe("base64", function()
  local d = base64.decode
  it("decodes RFC 4648's test vectors, padded or not", function()
    local vectors = {[""] = "", Zg = "f", Zm8 = "fo", Zm9v = "foo", Zm9vYg = "foob", Zm9vYmE = "fooba",
                     Zm9vYmFy = "foobar"}
    for enc, dec in pairs(vectors) do
      assert.are.equal(dec, d(enc), enc)
      assert.are.equal(dec, d(enc .. string.rep("=", (4 - #enc % 4) % 4)), enc)
    end
    assert.are.equal("\0\255\128", d("AP+A"))
  end)
  it("encodes what it decodes, every length and byte", function()
    for n = 0, 40 do
      local s = {}
      for i = 1, n do s[i] = string.char((i * 37 + n) % 256) end
      s = table.concat(s)
      local e = base64.encode(s)
      assert.are.equal(0, #e % 4)
      assert.are.equal(s, d(e))
    end
    assert.are.equal("Zm9vYmFy", base64.encode("foobar"))
    assert.are.equal("Zm9vYg==", base64.encode("foob"))
  end)
  it("refuses what is not base64", function()
    for _, bad in ipairs({"Z", "Zm9v!", "Zm 9v", "Zm9vY"}) do
      assert.is_nil(d(bad), bad)
    end
  end)
end)

describe("auth.check at read levels", function()
  local function b64(s)
    -- Test-side encoder, kept independent of the decoder under test.
    local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return ((s:gsub(".", function(c)
      local r, b = "", c:byte()
      for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
      return r
    end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
      if #x < 6 then return "" end
      local c = 0
      for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
      return chars:sub(c + 1, c + 1)
    end) .. ({"", "==", "="})[#s % 3 + 1])
  end
  local node = {opts = {read_token = "r3ad", token = "wr1te"}}
  local function try(given, basic)
    local res = {headers = {}}
    function res:header(k, v) self.headers[k] = v return self end
    function res:error(status, code) self.status, self.code = status, code end
    local req = {header = function(_, name) return name == "Authorization" and given or nil end}
    return auth.check(node, basic and "read_basic" or "read", req, res), res
  end

  it("accepts Bearer and Basic with the token as password, read or cluster token", function()
    assert.are.equal("Zm9vYmFy", b64("foobar"))
    for _, given in ipairs({"Bearer r3ad", "Bearer wr1te", "Basic " .. b64("ck:r3ad"), "Basic " .. b64(":r3ad"),
                           "basic " .. b64("any one:wr1te"), "Basic " .. b64("u:r3ad"):gsub("=", "")}) do
      assert.is_true((try(given)), given)
    end
  end)

  it("refuses anything else with 401 and the challenge asked for", function()
    for _, given in ipairs({false, "", "Bearer nope", "Basic " .. b64("r3ad"), "Basic " .. b64("r3ad:x"),
                           "Basic !!", "Basic " .. b64("ck:r3ad") .. " x", "Digest r3ad"}) do
      local ok, res = try(given or nil, true)
      assert.is_false(ok, tostring(given))
      assert.are.equal(401, res.status)
      assert.are.equal('Basic realm="clusterkit", charset="UTF-8"', res.headers["WWW-Authenticate"])
    end
    local _, res = try("Bearer nope")
    assert.are.equal("Bearer", res.headers["WWW-Authenticate"])
  end)
end)
