-- /metrics' histograms: C counts into fixed buckets (core.histogram),
-- clusterkit.metrics writes them in the Prometheus text format.
local core = require "clusterkit.core"
local metrics = require "clusterkit.metrics"

local function lines_of(out)
  local set = {}
  for _, l in ipairs(out) do set[l] = true end
  return set
end

describe("histograms", function()
  it("share one set of ascending bounds, 10 us to 30 s", function()
    local b = metrics.BOUNDS
    assert.are.equal(20, #b)
    assert.are.equal(1e-5, b[1])
    assert.are.equal(30, b[#b])
    for i = 2, #b do assert.is_true(b[i] > b[i - 1]) end
  end)

  it("file a duration in the first bucket whose bound holds it, and above every bound in +Inf only", function()
    local h = core.histogram()
    h:observe(0.00002) -- in (10 us, 25 us]
    h:observe(0.001)   -- a bound itself belongs to its bucket
    h:observe(100)     -- above 30 s
    h:observe(-1)      -- a clock that went back counts as 0
    local r = h:read()
    assert.are.equal(4, r.count)
    assert.are.equal(21, #r.counts)
    assert.are.equal(1, r.counts[1])
    assert.are.equal(1, r.counts[2])
    assert.are.equal(1, r.counts[7]) -- le = 0.001
    assert.are.equal(1, r.counts[21])
    assert.is_true(math.abs(r.sum - 100.00102) < 1e-9)
  end)

  it("are written cumulative, per label value in order, with +Inf equal to the count", function()
    local f = metrics.family("route")
    f:get("/b\"x"):observe(0.00002)
    f:get("/a"):observe(0.5)
    f:get("/a"):observe(100)
    f:get("/never") -- made, never observed: a series of zeros
    local out = {}
    metrics.histogram(out, "t_seconds", "Test.", f)
    assert.are.equal("# HELP t_seconds Test.", out[1])
    assert.are.equal("# TYPE t_seconds histogram", out[2])
    local l = lines_of(out)
    assert.is_true(l['t_seconds_bucket{route="/a",le="0.25"} 0'])
    assert.is_true(l['t_seconds_bucket{route="/a",le="0.5"} 1'])
    assert.is_true(l['t_seconds_bucket{route="/a",le="30"} 1'])
    assert.is_true(l['t_seconds_bucket{route="/a",le="+Inf"} 2'])
    assert.is_true(l['t_seconds_sum{route="/a"} 100.500000000'])
    assert.is_true(l['t_seconds_count{route="/a"} 2'])
    assert.is_true(l['t_seconds_bucket{route="/b\\"x",le="1e-05"} 0'])
    assert.is_true(l['t_seconds_bucket{route="/b\\"x",le="2.5e-05"} 1'])
    assert.is_true(l['t_seconds_count{route="/never"} 0'])
    -- One block per series, in label order: /a, /b"x, /never.
    assert.matches('route="/a"', out[3])
    assert.matches('route="/never"', out[#out])
    assert.are.equal(2 + 3 * (20 + 3), #out)
  end)

  it("are written without labels from one reading", function()
    local h = core.histogram()
    h:observe(2)
    local out = {}
    metrics.histogram(out, "u_seconds", "Unlabelled.", h:read())
    local l = lines_of(out)
    assert.is_true(l['u_seconds_bucket{le="1"} 0'])
    assert.is_true(l['u_seconds_bucket{le="2.5"} 1'])
    assert.is_true(l['u_seconds_bucket{le="+Inf"} 1'])
    assert.is_true(l["u_seconds_sum 2.000000000"])
    assert.is_true(l["u_seconds_count 1"])
  end)

  it("time from a core.hrtime() start under a label", function()
    local f = metrics.family("hook")
    f:since("x", core.hrtime())
    assert.are.equal(1, f:get("x"):read().count)
    assert.has_error(function() f:get("x"):observe("slow") end)
  end)
end)

describe("api.cert_time", function()
  local api = require "clusterkit.api"
  it("reads OpenSSL's notAfter as Unix time, leap days and all", function()
    assert.are.equal(1798911377, api.cert_time("Jan  2 17:36:17 2027 GMT"))
    assert.are.equal(1709164800, api.cert_time("Feb 29 00:00:00 2024 GMT"))
    assert.are.equal(946684799, api.cert_time("Dec 31 23:59:59 1999 GMT"))
    assert.is_nil(api.cert_time("not a date"))
    assert.is_nil(api.cert_time(nil))
  end)
end)
