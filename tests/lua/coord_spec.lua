-- Sessions, locks and elections through the Lua API on a real single-node
-- raft cluster: TTL sessions that live while kept alive and end (with their
-- keys) when keep-alives stop, locks served in order with strictly growing
-- fencing tokens, timeouts that leave the queue, lost() when the session
-- ends, elections with leader_of and resign.
local clusterkit = require "clusterkit"
local sched = require "clusterkit.sched"
local core = require "clusterkit.core"

local testnode = require "testnode"

local node, opts
setup(function()
  node, opts = testnode.new("co1", {heartbeat_interval = 0.05})
  assert(node:start())
end)

teardown(function()
  node:stop()
  os.execute("rm -rf '" .. opts.data_dir .. "'")
end)

-- Runs the loop until pred() holds, at most `bound` seconds.
local function wait_for(pred, bound)
  local deadline = core.hrtime() + bound * 1e9
  while not pred() and core.hrtime() < deadline do clusterkit.sleep(0.01) end
  return pred()
end

describe("sessions", function()
  it("keep a TTL session alive, and end it with its keys when keep-alives stop", function()
    local s = assert(node:session{ttl = 0.6})
    assert(node:kv_txn{ops = {{type = "put", key = "eph/a", value = "1", session = s.id}}})
    -- Kept alive by this process for several TTLs.
    clusterkit.sleep(1.5) -- The condition under test is that nothing happens in this time.
    assert.is_true(s:alive())
    assert.are.equal("1", node:kv_get("eph/a").value)
    -- Stop the keep-alives (as a crashed client would): it ends.
    s._closed = true
    assert.is_true(s:lost(5))
    assert.is_nil((node:kv_get("eph/a")))
    local _, err = s:keepalive()
    assert.are.equal("NOT_FOUND", err.code)
    -- A put into an ended session is refused.
    _, err = node:kv_txn{ops = {{type = "put", key = "eph/b", value = "1", session = s.id}}}
    assert.are.equal("NOT_FOUND", err.code)
  end)

  it("closes a session at once, and calls on_lost", function()
    local s = assert(node:session{ttl = 30})
    local called
    s:on_lost(function() called = true end)
    assert(s:close())
    assert.is_true(s:lost(5))
    assert.is_true(wait_for(function() return called end, 5))
  end)

  it("refuses a bad ttl", function()
    local _, err = node:session{ttl = 0}
    assert.are.equal("INVALID", err.code)
  end)
end)

describe("locks", function()
  it("serve waiters in order with growing fencing tokens", function()
    local a = assert(node:lock("res"))
    local order, tokens = {}, {a.token}
    for i = 1, 3 do
      sched.spawn(function()
        local l = assert(node:lock("res", {value = "w" .. i}))
        order[#order + 1] = i
        tokens[#tokens + 1] = l.token
        clusterkit.sleep(0.02)
        assert(l:release())
      end)
      -- Each waiter queues before the next is spawned.
      assert.is_true(wait_for(function() return node:lock_holder("res").waiters == i end, 5))
    end
    assert.is_false(a:is_lost())
    assert(a:release())
    assert.is_true(wait_for(function() return #order == 3 end, 10))
    assert.are.same({1, 2, 3}, order)
    for i = 2, #tokens do assert.is_true(tokens[i] > tokens[i - 1]) end
    assert.is_true(wait_for(function() return node:lock_holder("res") == nil end, 5))
  end)

  it("gives up after its timeout and leaves the queue", function()
    local a = assert(node:lock("busy"))
    local _, err = node:lock("busy", {timeout = 0.2})
    assert.are.equal("TIMEOUT", err.code)
    assert.are.equal(0, node:lock_holder("busy").waiters)
    assert(a:release())
  end)

  it("is lost when its session ends, and the next holder gets a newer token", function()
    local s = assert(node:session{ttl = 30})
    local l = assert(node:lock("fenced", {session = s}))
    local got
    sched.spawn(function() got = assert(node:lock("fenced")) end)
    assert.is_true(wait_for(function() return node:lock_holder("fenced").waiters == 1 end, 5))
    assert(s:close())
    assert.is_true(l:lost(5))
    assert.is_true(l:is_lost())
    assert.is_true(wait_for(function() return got ~= nil end, 5))
    assert.is_true(got.token > l.token)
    assert(got:release())
  end)

  it("refuses bad names", function()
    for _, bad in ipairs({"", "a/b", string.rep("n", 300), 42}) do
      local _, err = node:lock(bad)
      assert.are.equal("INVALID", err.code)
    end
  end)
end)

describe("elections", function()
  it("elects one leader, shows it, and hands over on resign", function()
    assert.is_nil(node:leader_of("sched"))
    local first = assert(node:elect("sched", {value = "first"}))
    assert.are.same("first", node:leader_of("sched").value)
    assert.are.equal(first.token, node:leader_of("sched").token)
    local second
    sched.spawn(function() second = assert(node:elect("sched", {value = "second"})) end)
    clusterkit.sleep(0.05)
    assert.is_nil(second)
    assert(first:resign())
    assert.is_true(wait_for(function() return second ~= nil end, 5))
    assert.are.equal("second", node:leader_of("sched").value)
    assert.is_true(second.token > first.token)
    assert(second:resign())
  end)
end)
