-- The leader's plan in one call from C (node:plan, ck_place_plan.c) gives
-- what the reconciler's Lua path computes from a copy of the state
-- (Reconciler:plan): the same rows, the same counts and the same grace
-- deadline, on a real core driven through random states (members joining,
-- in and out of service, within and past their grace period, zones, racks,
-- weights, maintenance mode).
local core = require "clusterkit.core"
local testnode = require "testnode"

local GRACE = 30 -- seconds (rebalance_delay)

describe("the plan from C", function()
  it("equals the reconciler's Lua plan over random states", function()
    local ck = testnode.started(finally, "n1", {partition_count = 32, replication_factor = 3,
                                                rebalance_delay = GRACE, suspect_after = 30, down_after = 60})
    local c = ck._core
    local propose, settle = testnode.proposer(c)
    math.randomseed(77)
    local statuses = {"active", "active", "suspect", "down", "stopped"}
    local compared, changed = 0, 0
    for round = 1, 40 do
      for _ = 1, math.random(1, 3) do
        local id = "x" .. math.random(1, 9)
        local racks = {"", "r1", "r2", "r3"}
        propose(core.encode_node {
          id = id, name = id, http_addr = "127.0.0.1:9", raft_addr = "127.0.0.1:9",
          zone = "z" .. math.random(1, 2), weight = math.random(0, 3), services = {},
          raft_id = core.raft_id(id), status = statuses[math.random(#statuses)],
          -- Well inside or well past the grace period.
          time_ms = core.time_ms() - (math.random() < 0.5 and 1000 or 2 * GRACE * 1000),
          rack = racks[math.random(#racks)],
        })
      end
      if round % 10 == 5 then propose(core.encode_flags({rebalance_paused = round % 20 == 5})) end
      assert.are.equal(0, settle())
      for _, force in ipairs({false, true}) do
        -- Both from the same state: nothing yields in between.
        local lua_plan, lua_err = ck.reconciler:plan(c:view(), force)
        local bytes, st = c:plan(core.time_ms(), GRACE * 1000, force, true)
        if not lua_plan then
          assert.is_nil(bytes, lua_err)
        else
          assert.is_not_nil(bytes, st)
          local want = {lua_plan.changed, lua_plan.moved_slots, lua_plan.moved_primaries, lua_plan.deadline}
          assert.are.same(want, {st.moves, st.moved_slots, st.moved_primaries, st.deadline})
          if lua_plan.changed > 0 then
            assert.are.equal("string", type(bytes))
            assert.are.same(lua_plan.rows, st.rows)
            changed = changed + 1
          else
            assert.is_false(bytes)
          end
          compared = compared + 1
        end
      end
    end
    -- The random states gave both kinds of answer.
    assert.is_true(compared >= 40, "compared " .. compared)
    assert.is_true(changed >= 5, "changed " .. changed)
  end)
end)
