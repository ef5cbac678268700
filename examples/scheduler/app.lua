-- A job scheduler that runs each job on exactly one node: every node
-- campaigns for the role "scheduler" (ck:elect); the one elected runs the
-- jobs. Run three of these like any node and kill the leader: another
-- takes over within about a second (once the dead one is marked down).
--
--   NODE_ID=node-1 HTTP_ADDR=127.0.0.1:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true \
--     build/ckrun examples/scheduler/app.lua
--   NODE_ID=node-2 HTTP_ADDR=127.0.0.1:8081 RAFT_ADDR=127.0.0.1:9002 JOIN_ADDR=127.0.0.1:8080 \
--     build/ckrun examples/scheduler/app.lua
--   curl 127.0.0.1:8081/scheduler        # who schedules, and the last runs
--
-- Exactly once, even against a paused leader: each run is recorded by a
-- transaction that also checks that this node's election key is still the
-- one with the token it won with. A leader that lost its role (paused past
-- its session, say) fails that check and runs nothing more. Job work that
-- leaves the cluster should carry the token the same way (a fencing token:
-- the receiver refuses any token older than the newest it has seen).
local clusterkit = require "clusterkit"
local json = require "cjson.safe"

local ck = clusterkit.new()
assert(ck:start())

local INTERVAL = tonumber(os.getenv("JOB_INTERVAL") or "0.2")
local state = {role = "follower", runs = 0}

-- One run of the job, fenced by the leadership.
local function run_once(lead, seq)
  local record = json.encode({seq = seq, node = ck.id, token = lead.token})
  local index, err = ck:kv_txn{
    compares = {{key = lead.key, target = "create", op = "==", value = lead.token}},
    ops = {{type = "put", key = "jobs/last", value = record},
           {type = "put", key = string.format("jobs/run/%08d", seq), value = record}},
  }
  if not index then return nil, err end
  state.runs = state.runs + 1
  return true
end

clusterkit.spawn(function()
  while true do
    local lead, err = ck:elect("scheduler", {value = ck.id})
    if lead then
      state.role, state.token = "leader", lead.token
      ck.log:info("scheduler: elected (token %d)", lead.token)
      local last = ck:kv_get("jobs/last")
      local seq = last and (json.decode(last.value) or {}).seq or 0
      while true do
        seq = seq + 1
        local ok, rerr = run_once(lead, seq)
        if not ok then
          ck.log:warn("scheduler: run %d refused (%s): no longer the scheduler", seq, tostring(rerr))
          break
        end
        clusterkit.sleep(INTERVAL)
      end
      state.role = "follower"
    else
      ck.log:warn("scheduler: campaign failed: %s", tostring(err))
      clusterkit.sleep(0.5)
    end
  end
end)

ck:route("GET", "/scheduler", function(_, res)
  local l = ck:leader_of("scheduler")
  local last = ck:kv_get("jobs/last")
  return res:json({node = ck.id, role = state.role, runs_here = state.runs,
                   leader = l and l.value or json.null, token = l and l.token or json.null,
                   last = last and json.decode(last.value) or json.null})
end)
