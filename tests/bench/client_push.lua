-- The smart client's push latency (run by tests/bench/client_bench.py under
-- ckrun): a clusterkit.client follows the cluster through CK_ADDR (a
-- follower); ROUNDS times, a state change is committed through the leader
-- (LEADER: POST /rebalance/pause, then /resume, alternating) and the time
-- until the client has installed the new table is taken from just before
-- the POST is sent, and from when its answer arrived. Prints one JSON line.
local client = require "clusterkit.client"
local httpc = require "clusterkit.httpc"
local core = require "clusterkit.core"
local json = require "clusterkit.json"

local leader = assert(os.getenv("LEADER"), "LEADER=host:port of the leader")
local rounds = tonumber(os.getenv("ROUNDS") or "200")
local c = assert(client.new {wait = 30, timeout = 5})
assert(c:start())

local from_send, from_answer = {}, {}
for i = 1, rounds do
  local path = i % 2 == 1 and "/rebalance/pause" or "/rebalance/resume"
  local index = c:state_index()
  local t0 = core.hrtime()
  local res = assert(httpc.request {method = "POST", url = "http://" .. leader .. path, timeout = 5})
  local t1 = core.hrtime()
  assert(res.status == 200, path .. " answered " .. res.status)
  assert(c:wait_for_change(index, 5))
  local t2 = core.hrtime()
  from_send[i], from_answer[i] = (t2 - t0) / 1e6, (t2 - t1) / 1e6
end
c:close()

local function pct(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end
io.stdout:write(json.encode({
  rounds = rounds, tables = c.stats.tables, watch_errors = c.stats.watch_errors,
  send_p50 = pct(from_send, 0.5), send_p99 = pct(from_send, 0.99), send_max = pct(from_send, 1),
  answer_p50 = pct(from_answer, 0.5), answer_p99 = pct(from_answer, 0.99), answer_max = pct(from_answer, 1),
}), "\n")
os.exit(0)
