-- Joining (clusterkit.joiner) alone: the network is a script of answers,
-- time moves only when the joiner sleeps, and the log is recorded.
local joiner = require "clusterkit.joiner"
local json = require "clusterkit.json"

local function err_body(code, extra)
  local e = {code = code, message = code:lower()}
  for k, v in pairs(extra or {}) do e[k] = v end
  return json.encode({error = e})
end

local OK = {status = 200, body = '{"status":"ok"}'}

-- answers: a list of {res} or {nil, err}, or a function(target, n) that
-- returns res, err. Returns the joiner and what it saw.
local function setup(answers, extra)
  local f = {t = 0, sent = {}, slept = {}, logged = {warn = {}, error = {}, info = {}}, stops_after = 50}
  local n = 0
  local deps = {
    join_addr = "seed:80",
    request = function(target)
      n = n + 1
      f.sent[#f.sent + 1] = target
      if type(answers) == "function" then return answers(target, n) end
      local a = answers[n]
      if not a then return nil, {code = "REFUSED", message = "connection refused"} end
      return a[1], a[2]
    end,
    body = function() return "{}" end,
    decode = json.decode,
    clock = {now = function() return f.t end},
    sleep = function(s)
      f.slept[#f.slept + 1] = s
      f.t = f.t + s
    end,
    running = function() return #f.sent < f.stops_after end,
    done = function(err) f.done = {err} end,
    log = {
      info = function(_, ...) table.insert(f.logged.info, string.format(...)) end,
      warn = function(_, ...) table.insert(f.logged.warn, string.format(...)) end,
      error = function(_, ...) table.insert(f.logged.error, string.format(...)) end,
      debug = function() end,
    },
    opts = {election_timeout = 1},
  }
  for k, v in pairs(extra or {}) do deps[k] = v end
  f.j = joiner.new(deps)
  return f
end

describe("the joiner", function()
  it("follows the redirect to the leader and is admitted there", function()
    local f = setup({
      {{status = 307, body = err_body("NOT_LEADER", {leader = "leader:80"})}},
      {OK},
    })
    assert.is_true(f.j:run(false))
    assert.are.same({"seed:80", "leader:80"}, f.sent)
    assert.is_false(f.j.active)
    assert.are.same({}, f.slept, "a redirect is followed at once")
    assert.are.same({nil}, f.done)
  end)

  it("retries an unreachable seed with a doubling delay capped at a second, warning once", function()
    local f = setup(function(_, n)
      if n < 9 then return nil, {code = "REFUSED", message = "connection refused"} end
      return OK
    end)
    assert.is_true(f.j:run(false))
    assert.are.same({0.05, 0.1, 0.2, 0.4, 0.8, 1, 1, 1}, f.slept)
    assert.are.equal(1, #f.logged.warn)
    assert.matches("nothing accepts connections at seed:80", f.logged.warn[1])
    assert.is_nil(f.j.cause, "admitted: no failure to report")
  end)

  it("goes back to the seed after a redirect target fails", function()
    local f = setup({
      {{status = 307, body = err_body("NOT_LEADER", {leader = "old-leader:80"})}},
      {nil, {code = "TIMEOUT", message = "timed out"}},
      {OK},
    })
    assert.is_true(f.j:run(false))
    assert.are.same({"seed:80", "old-leader:80", "seed:80"}, f.sent)
  end)

  it("stops at a refusal and says why", function()
    local f = setup({{{status = 409, body = err_body("CONFIG_MISMATCH")}}})
    local ok, err = f.j:run(false)
    assert.is_nil(ok)
    assert.are.equal("CONFIG_MISMATCH", err.code)
    assert.are.equal(err, f.j.error)
    assert.are.same({err}, f.done)
    assert.is_false(f.j.active)
  end)

  it("retries a conflict for a while when its raft address moved, then gives up on it", function()
    local f = setup(function() return {status = 409, body = err_body("CONFLICT")} end)
    local ok, err = f.j:run(true, "peer:80")
    assert.is_nil(ok)
    assert.are.equal("CONFLICT", err.code)
    -- One election timeout between tries, for the 10 s the leader needs.
    assert.are.equal(10, #f.slept)
    for _, s in ipairs(f.slept) do assert.are.equal(1, s) end
  end)

  it("rejoins through the given peer when it has no JOIN_ADDR", function()
    local f = setup({{OK}}, {join_addr = false})
    assert.is_true(f.j:run(true, "peer:80"))
    assert.are.same({"peer:80"}, f.sent)
  end)

  it("keeps the last cause for start's timeout, and tells foreign answers apart from routine ones", function()
    local f = setup(function(_, n)
      if n % 2 == 1 then return {status = 503, body = err_body("NO_LEADER")} end
      return {status = 200, body = "<html>hello</html>"}
    end)
    f.stops_after = 6
    assert.is_nil(f.j:run(false))
    assert.matches("not clusterkit's", f.j.cause)
    assert.are.equal(1, #f.logged.warn, "a routine NO_LEADER is not warned about, the foreign answer once")
    assert.are.same({nil}, f.done)
    assert.is_false(f.j.active)
  end)

  it("names its own address as the cause when the seed is itself", function()
    local f = setup(function() return {status = 503, body = err_body("JOIN_SELF")} end)
    f.stops_after = 2
    f.j:run(false)
    assert.matches("this node itself", f.j.cause)
  end)
end)
