-- The Lua API of clusterkit on a real single-node raft cluster (real
-- sockets, real data dir), driven from busted on the main thread, where
-- waiting calls run the loop until they complete.
local clusterkit = require "clusterkit"
local core = require "clusterkit.core"

local testnode = require "testnode"

local function new_node(extra)
  return testnode.new("t1", extra)
end

-- Waits (running the loop) until pred() holds, at most `bound` seconds.
local function wait_for(pred, bound)
  local deadline = core.hrtime() + bound * 1e9
  while not pred() and core.hrtime() < deadline do clusterkit.sleep(0.01) end
  return pred()
end

-- The value of sample `name` (labels included) in ck's /metrics text, or nil.
local function sample(ck, name)
  for line in require("clusterkit.api").metrics(ck):gmatch("[^\n]+") do
    if line:sub(1, #name + 1) == name .. " " then return tonumber(line:sub(#name + 2)) end
  end
end

describe("clusterkit.new", function()
  it("raises with the function's name on misuse", function()
    assert.has_error(function() clusterkit.new("x") end, "clusterkit.new: options must be a table")
    assert.has_error(function() clusterkit.new{bogus = 1} end, "clusterkit.new: unknown option 'bogus'")
    assert.has_error(function() clusterkit.new{partition_count = 0} end)
    assert.has_error(function() clusterkit.new{partition_count = 70000} end)
    assert.has_error(function() clusterkit.new{replication_factor = "three"} end)
    assert.has_error(function() clusterkit.new{http_addr = "nope"} end)
    assert.has_error(function() clusterkit.new{raft_addr = "0.0.0.0:9000"} end)
    assert.has_error(function() clusterkit.new{node_id = "has space"} end)
    assert.has_error(function() clusterkit.new{hash_algorithm = "sha1"} end)
  end)

  it("takes defaults from the seed's environment variables", function()
    local config = require "clusterkit.config"
    local env = {NODE_ID = "env-node", PARTITION_COUNT = "64", REPLICATION_FACTOR = "2",
                 BOOTSTRAP = "false", JOIN_ADDR = "127.0.0.1:8080", CLUSTER_NAME = "c1",
                 SYNC_INTERVAL = "500ms", SERVICES = "kv=127.0.0.1:7000, admin=127.0.0.1:7001",
                 HTTP_ADDR = ":8081"}
    local o = config.resolve(nil, "t", function(k) return env[k] end)
    assert.are.equal("env-node", o.node_id)
    assert.are.equal("env-node", o.node_name)
    assert.are.equal(64, o.partition_count)
    assert.are.equal(2, o.replication_factor)
    assert.is_false(o.bootstrap)
    assert.are.equal("c1", o.cluster_name)
    assert.are.equal(0.5, o.sync_interval)
    assert.are.same({kv = "127.0.0.1:7000", admin = "127.0.0.1:7001"}, o.services)
    assert.are.equal("0.0.0.0", o.http_host)
    assert.are.equal(8081, o.http_port)
    assert.are.equal("./data/env-node", o.data_dir)
    -- An option given in the table wins over the environment.
    o = config.resolve({partition_count = 8}, "t", function(k) return env[k] end)
    assert.are.equal(8, o.partition_count)
    -- A malformed environment value is reported with the variable's name.
    assert.has_error(function()
      config.resolve(nil, "t", function(k) return k == "PARTITION_COUNT" and "many" or nil end)
    end, "t: environment variable PARTITION_COUNT has an invalid value (integer expected): many")
  end)

  it("bootstraps by default only when there is nothing to join", function()
    local config = require "clusterkit.config"
    assert.is_true(config.resolve({}, "t", function() end).bootstrap)
    assert.is_false(config.resolve({join_addr = "127.0.0.1:1"}, "t", function() end).bootstrap)
  end)
end)

describe("route authorization", function()
  -- Open to anyone, whatever the tokens: what a load balancer or an
  -- orchestrator probes.
  local OPEN = {["GET /health"] = true, ["GET /ready"] = true}
  -- POSTs that change nothing (they answer what a GET would).
  local READ_POSTS = {["POST /sync"] = true}

  it("is declared by every built-in route: reads need the read token, changes the cluster token", function()
    local ck, opts = new_node()
    local routes = ck.http:routes()
    assert.is_true(#routes > 30)
    for _, r in ipairs(routes) do
      local key = r.method .. " " .. r.pattern
      if OPEN[key] then
        assert.is_nil(r.auth, key)
      elseif r.method == "GET" or READ_POSTS[key] then
        assert.is_truthy(r.auth == "read" or r.auth == "read_basic", key .. ": " .. tostring(r.auth))
      else
        assert.are.equal("write", r.auth, key)
      end
    end
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("runs before the handler, for the application's routes too", function()
    local ck, opts = new_node({token = "s3cret", read_token = "r3ad"})
    local ran = 0
    ck:route("POST", "/app/write", function(_, res) ran = ran + 1 return res:json({ok = true}) end, {auth = "write"})
    ck:route("GET", "/app/read", function(_, res) ran = ran + 1 return res:json({ok = true}) end, {auth = "read"})
    assert.has_error(function() ck:route("GET", "/x", function() end, {auth = "admin"}) end,
      'clusterkit: route: auth must be "write", "read" or "read_basic"')
    assert(ck:start())
    local function call(method, path, token)
      return assert(ck:request({method = method, url = ck:url(ck:me(), path), timeout = 5,
                                headers = token and {Authorization = "Bearer " .. token} or nil}))
    end
    assert.are.equal(401, call("POST", "/app/write").status)
    assert.are.equal(401, call("POST", "/app/write", "r3ad").status)
    assert.are.equal(401, call("GET", "/app/read").status)
    assert.are.equal(0, ran)
    assert.are.equal(200, call("POST", "/app/write", "s3cret").status)
    assert.are.equal(200, call("GET", "/app/read", "r3ad").status)
    assert.are.equal(200, call("GET", "/app/read", "s3cret").status)
    assert.are.equal(3, ran)
    -- And the built-in ones: a read needs a token, a change the cluster's.
    assert.are.equal(401, call("GET", "/cluster").status)
    assert.are.equal(401, call("POST", "/rebalance", "r3ad").status)
    assert.are.equal(200, call("GET", "/health").status)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)
end)

describe("a started single node", function()
  local ck, opts
  setup(function()
    ck, opts = new_node({partition_count = 64, replication_factor = 3, zone = "z1",
                         services = {kv = "127.0.0.1:7000"}})
    local ok, err = ck:start()
    assert(ok, tostring(err))
  end)
  teardown(function()
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("is the leader and reports the real term and indexes", function()
    assert.is_true(ck:is_leader())
    local l = assert(ck:leader())
    assert.are.equal("t1", l.leader_id)
    assert.are.equal(opts.raft_addr, l.raft_addr)
    assert.is_true(l.term >= 1)
    local s = ck:consensus_stats()
    assert.are.equal("leader", s.state)
    assert.are.equal(l.term, s.term)
    assert.is_true(s.commit_index >= 4) -- bootstrap config, init, node, table
    assert.are.equal(s.commit_index, s.applied_index)
    assert.are.equal(1, s.voters)
  end)

  it("counts its own election and times the commands it commits and applies (/metrics)", function()
    -- The only voter elects itself once, at start.
    assert.are.equal(1, sample(ck, "clusterkit_raft_elections_total"))
    assert.are.equal(1, sample(ck, "clusterkit_raft_elections_won_total"))
    local commits = sample(ck, "clusterkit_raft_commit_duration_seconds_count")
    local applies = sample(ck, "clusterkit_raft_apply_duration_seconds_count")
    assert.is_true(commits >= 3) -- init, this node, the table: proposed by this leader
    assert.is_true(applies >= commits) -- each applied here (the bootstrap configuration is no command)
    assert.are.equal(commits, sample(ck, 'clusterkit_raft_commit_duration_seconds_bucket{le="+Inf"}'))
    assert(ck:pause_rebalance())
    assert(ck:resume_rebalance())
    assert.is_true(sample(ck, "clusterkit_raft_commit_duration_seconds_count") >= commits + 2)
    assert.is_true(sample(ck, "clusterkit_raft_apply_duration_seconds_count") >= applies + 2)
    assert.is_true(sample(ck, "clusterkit_raft_apply_duration_seconds_sum") > 0)
  end)

  it("maps keys the way partition_of does, with hash tags", function()
    for _, key in ipairs({"user:123", "", "a", "key-7", "\0binary\0"}) do
      local p = ck:partition_for_key(key)
      assert.are.equal(clusterkit.partition_of(key, 64), p.index)
      assert.are.equal("partition-" .. p.index, p.id)
    end
    assert.are.equal(ck:partition_for_key("user:{42}:cart").index, ck:partition_for_key("order:{42}").index)
    assert.are.equal(clusterkit.partition_of("42", 64), ck:partition_for_key("x{42}y").index)
  end)

  it("answers every lookup from the committed table", function()
    local nodes = assert(ck:nodes_for_key("user:123"))
    assert.are.equal(1, #nodes)
    assert.are.equal("t1", nodes[1].id)
    assert.are.equal("z1", nodes[1].zone)
    assert.are.same({kv = "127.0.0.1:7000"}, nodes[1].services)
    assert.are.equal(ck.advertise_http, nodes[1].ip)
    assert.are.equal("t1", ck:primary_for_key("user:123").id)
    assert.are.same({}, ck:replicas_for_key("user:123"))
    local responsible, role, all = ck:am_i_responsible_for("user:123")
    assert.is_true(responsible)
    assert.are.equal("primary", role)
    assert.are.equal(nodes, all)
    assert.is_true(ck:is_primary_for_key("anything"))
    local p = ck:partition(5)
    assert.are.equal("partition-5", p.id)
    assert.are.equal("t1", p.primary_node)
    assert.is_true(p.epoch >= 1)
    assert.are.equal(64, #ck:partitions())
    local st = ck:partition_stats()
    assert.are.equal(64, st.total_partitions)
    assert.are.equal(64, st.partitions_per_node.t1)
    assert.are.equal("t1", ck:me().id)
    local c = ck:cluster()
    assert.are.equal(32, #c.id)
    assert.are.equal(64, c.config.partition_count)
    assert.are.equal(3, c.config.replication_factor)
    assert.is_table(c.partition_map.partitions["partition-63"])
    local hc = ck:hash_config()
    assert.are.equal("fnv1a64", hc.algorithm)
    assert.is_true(hc.hash_tags)
  end)

  it("builds members' URLs with its own scheme and calls them with its TLS client context", function()
    assert.are.equal("http://10.0.0.1:80/x?y=1", ck:url({http_addr = "10.0.0.1:80"}, "/x?y=1"))
    assert.are.equal("http://h:1", ck:url("h:1"))
    assert.are.equal("http://" .. ck:me().http_addr .. "/health", ck:url(ck:me(), "/health"))
    assert.has_error(function() ck:url(nil) end, "clusterkit: url: member must be a node table or a host:port string")
    assert.has_error(function() ck:request("x") end, "clusterkit: request: options must be a table")
    local res = assert(ck:request({url = ck:url(ck:me(), "/health"), timeout = 5}))
    assert.are.equal(200, res.status)
  end)

  it("returns nil, err for operational failures and raises on misuse", function()
    local p, err = ck:partition(64)
    assert.is_nil(p)
    assert.are.equal("NOT_FOUND", err.code)
    assert.matches("NOT_FOUND: ", tostring(err))
    assert.has_error(function() ck:nodes_for_key(42) end, "clusterkit: nodes_for_key: key must be a string")
    assert.has_error(function() ck.nodes_for_key(nil, "k") end)
    assert.has_error(function() ck:on("no_such_event", print) end)
    assert.has_error(function() ck:on("leader_change", "not a function") end)
    assert.has_error(function() ck:route("FETCH", "/x", print) end)
    assert.has_error(function() ck:route("GET", "no-slash", print) end)
    assert.has_error(function() ck:start() end, "clusterkit: start: node already started")
  end)

  it("lookups allocate nothing", function()
    local keys = {}
    for i = 1, 64 do keys[i] = "user:" .. i end
    local calls = 0
    local function run()
      for _ = 1, 1000 do
        for i = 1, 64 do
          ck:nodes_for_key(keys[i])
          ck:primary_for_key(keys[i])
          ck:am_i_responsible_for(keys[i])
        end
      end
      calls = calls + 3 * 64 * 1000
    end
    run() -- Warm up: the JIT's traces are GC objects too.
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    calls = 0
    run()
    local grown = (collectgarbage("count") - before) * 1024
    collectgarbage("restart")
    -- Any allocation per lookup would be at least 16 bytes each, megabytes
    -- in all; the JIT may still add a trace or two (a few hundred bytes).
    assert.is_true(grown / calls < 0.05, ("%.0f bytes over %d lookups"):format(grown, calls))
  end)

  it("waits for a leader that is already there", function()
    local l = assert(ck:wait_for_leader(1))
    assert.are.equal("t1", l.leader_id)
  end)

  it("keeps cluster-state.json in step with the committed state", function()
    -- On busted's main thread the loop runs only inside waiting calls: run
    -- it until the file shows the current index (bounded), never a fixed time.
    local function saved()
      local f = io.open(opts.data_dir .. "/cluster-state.json")
      if not f then return nil end
      local body = f:read("*a")
      f:close()
      local st = clusterkit.json.decode(body)
      return type(st) == "table" and st.state_index == ck:state_index() and st or nil
    end
    local deadline = core.hrtime() + 10e9
    while not saved() and core.hrtime() < deadline do clusterkit.sleep(0.01) end
    local st = assert(saved(), "cluster-state.json never reached the current state index")
    assert.are.equal(ck:cluster().id, st.cluster.id)
    assert.are.equal("t1", st.cluster.partition_map.partitions["partition-0"].primary_node)
    assert.are.equal(ck:state_index(), st.state_index)
  end)
end)

describe("lifecycle", function()
  it("survives a restart from its data dir with the same cluster id and table", function()
    local ck, opts = new_node()
    assert(ck:start())
    local id, parts = ck:cluster().id, {}
    for i, p in ipairs(ck:partitions()) do parts[i] = p.primary_node .. "/" .. p.epoch end
    ck:stop()
    local again = clusterkit.new(opts)
    assert(again:start())
    assert.are.equal(id, again:cluster().id)
    for i, p in ipairs(again:partitions()) do
      assert.are.equal(parts[i], p.primary_node .. "/" .. p.epoch)
    end
    again:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("raises on lookups after stop, and stop is idempotent", function()
    local ck, opts = new_node()
    assert(ck:start())
    assert.is_true(ck:stop())
    assert.is_true(ck:stop())
    assert.has_error(function() ck:nodes_for_key("k") end, "clusterkit: nodes_for_key: node is stopped")
    assert.has_error(function() ck:cluster() end)
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("answers lookups from a coroutine while stop() closes the core, from memory it owns", function()
    -- Under ASan (make test-asan) a lookup that read the closed core's freed
    -- state is an error; here the answers must also stay right.
    local ck, opts = new_node()
    assert(ck:start())
    local want = ck:nodes_for_key("k")[1].id
    local after_close, wrong, raised = 0, 0, nil
    -- Hold the HTTP server's close until the poller below has looked keys up
    -- a few times after the core closed: the window in which a hook or a
    -- handler still runs while stop() waits.
    local close = ck.http.close
    ck.http.close = function(srv, cb)
      return close(srv, function()
        clusterkit.spawn(function()
          local deadline = core.hrtime() + 5e9
          while after_close < 3 and core.hrtime() < deadline do clusterkit.sleep(0.001) end
          cb()
        end)
      end)
    end
    clusterkit.spawn(function()
      while ck:state() ~= "stopped" do
        local ok, nodes = pcall(ck.nodes_for_key, ck, "k")
        if not ok then
          raised = nodes
        elseif ck._core_closed then
          after_close = after_close + 1
          if not (nodes and nodes[1] and nodes[1].id == want) then wrong = wrong + 1 end
        end
        clusterkit.sleep(0.001)
      end
    end)
    assert.is_true(ck:stop())
    assert.is_true(after_close >= 3)
    assert.are.equal(0, wrong)
    assert.is_nil(raised)
    assert.has_error(function() ck:nodes_for_key("k") end, "clusterkit: nodes_for_key: node is stopped")
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("fails to start with nil, err when its HTTP port is taken", function()
    local a, oa = new_node()
    assert(a:start())
    local b, ob = new_node({node_id = "t2", http_addr = a.advertise_http})
    local ok, err = b:start()
    assert.is_nil(ok)
    assert.is_truthy(err.code)
    assert.matches("http listen", err.message)
    a:stop()
    os.execute("rm -rf '" .. oa.data_dir .. "' '" .. ob.data_dir .. "'")
  end)

  it("fires leader_change in its own coroutine", function()
    local ck, opts = new_node()
    local seen
    ck:on("leader_change", function(info)
      seen = {info = info, yieldable = coroutine.running() ~= nil}
    end)
    assert(ck:start())
    assert.is_table(seen)
    assert.is_true(seen.yieldable)
    assert.are.equal("t1", seen.info.leader_id)
    assert.is_true(seen.info.is_me)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("times hook runs and counts the ones that raise, by hook (/metrics)", function()
    local ck, opts = new_node()
    ck:on("state_change", function() error("boom") end)
    ck:on("leader_change", function() end)
    assert(ck:start())
    local function errors(hook) return sample(ck, 'clusterkit_hook_errors_total{hook="' .. hook .. '"}') end
    local function runs(hook) return sample(ck, 'clusterkit_hook_duration_seconds_count{hook="' .. hook .. '"}') end
    assert.is_true(wait_for(function() return (errors("state_change") or 0) >= 1 end, 5))
    assert.is_true(runs("state_change") >= errors("state_change"))
    assert.are.equal(0, errors("leader_change"))
    assert.is_true(runs("leader_change") >= 1)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("uses a Lua placement policy and refuses an invalid one", function()
    local ck, opts = new_node({partition_count = 8})
    assert(ck:start())
    local calls = 0
    ck:set_placement(function(nodes, current, cfg)
      calls = calls + 1
      return {} -- invalid: no rows
    end)
    -- The policy runs from the reconciler, not from set_placement: wait
    -- (bounded) for its first call rather than a fixed time.
    local deadline = core.hrtime() + 10e9
    while calls == 0 and core.hrtime() < deadline do clusterkit.sleep(0.01) end
    assert.is_true(calls >= 1)
    assert.are.equal("t1", ck:partition(0).primary_node) -- old table kept
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)
end)

describe("Lua placement policies", function()
  it("remove their time limit afterwards: other code may run longer than it", function()
    local ck, opts = new_node({partition_count = 8, policy_timeout = 0.05})
    assert(ck:start())
    local placement = require "clusterkit.placement"
    local calls = 0
    ck:set_placement(function(nodes, current, cfg)
      calls = calls + 1
      return placement.default(nodes, current, cfg)
    end)
    assert.is_true(wait_for(function() return calls >= 1 end, 5))
    -- Interpreted code (count hooks run there) well past the policy's limit,
    -- as a heartbeat handler or the leader's ticker would be.
    local busy = function()
      local t0, x = core.hrtime(), 0
      while core.hrtime() - t0 < 0.3e9 do x = x + 1 end
      return x
    end
    require("jit").off(busy)
    local ok, err = pcall(busy)
    assert.is_true(ok, tostring(err))
    ok, err = pcall(coroutine.wrap(busy))
    assert.is_true(ok, tostring(err))
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("fall back to the built-in policy when they raise, time out or answer wrongly", function()
    local ck, opts = new_node({partition_count = 8, policy_timeout = 0.05, start_timeout = 10})
    local calls = 0
    ck:set_placement(function()
      calls = calls + 1
      error("boom")
    end)
    -- Without the fallback no table is ever placed and start times out.
    assert(ck:start())
    assert.is_true(calls >= 1)
    assert.are.equal("t1", ck:partition(0).primary_node)
    assert.is_true(ck.reconciler.policy_fallbacks >= 1)
    assert.matches("clusterkit_placement_fallbacks_total [1-9]", require("clusterkit.api").metrics(ck))
    local function failed(reason)
      return sample(ck, 'clusterkit_placement_policy_errors_total{reason="' .. reason .. '"}')
    end
    assert.is_true(failed("error") >= 1)
    local before = ck.reconciler.policy_fallbacks
    ck:set_placement(function()
      local t0 = core.hrtime()
      while core.hrtime() - t0 < 1e9 do end -- longer than policy_timeout
      return {}
    end)
    assert.is_true(wait_for(function() return ck.reconciler.policy_fallbacks > before end, 5))
    assert.is_true(failed("timeout") >= 1)
    before = ck.reconciler.policy_fallbacks
    ck:set_placement(function() return {{"nobody"}} end)
    assert.is_true(wait_for(function() return ck.reconciler.policy_fallbacks > before end, 5))
    assert.is_true(failed("invalid") >= 1)
    before = ck.reconciler.policy_fallbacks
    ck:set_placement(function() coroutine.yield() end)
    assert.is_true(wait_for(function() return ck.reconciler.policy_fallbacks > before end, 5))
    assert.is_true(failed("yielded") >= 1)
    -- Every run is timed, the failed ones included.
    assert.is_true(sample(ck, "clusterkit_placement_policy_duration_seconds_count") >= ck.reconciler.policy_fallbacks)
    assert.are.equal("t1", ck:partition(0).primary_node)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)
end)

describe("rebalancing on a single node", function()
  it("plans, rebalances, pauses and resumes, and waits for changes", function()
    local ck, opts = new_node({partition_count = 8})
    assert(ck:start())
    local plan = assert(ck:plan_rebalance())
    assert.are.equal(0, #plan.moves) -- the committed table is already the policy's
    local out = assert(ck:rebalance())
    assert.are.equal(0, out.moved_slots)
    local idx = ck:state_index()
    assert.is_false(ck:rebalance_paused())
    assert(ck:pause_rebalance())
    assert.is_true(ck:rebalance_paused())
    assert.is_true(ck:state_index() > idx)
    local v, err = ck:wait_for_change(ck:state_index(), 0.05)
    assert.is_nil(v)
    assert.are.equal("TIMEOUT", err.code)
    local before = ck:state_index()
    clusterkit.spawn(function() ck:resume_rebalance() end)
    local after = assert(ck:wait_for_change(before, 5))
    assert.is_true(after > before)
    assert.is_false(ck:rebalance_paused())
    assert.is_true(ck:create_partitions())
    assert.has_error(function() ck:wait_for_change(-1) end)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)

  it("exposes the default policy to Lua policies, which can adjust it", function()
    local placement = require "clusterkit.placement"
    local nodes = {{id = "a", zone = "z1", weight = 1}, {id = "b", zone = "z2", weight = 1},
                   {id = "c", zone = "z3", weight = 1}, {id = "d", zone = "z4", weight = 1}}
    local rows = placement.default(nodes, {}, {partitions = 16, replication = 3})
    assert.are.equal(16, #rows)
    local prim = {}
    for _, row in ipairs(rows) do
      assert.are.equal(3, #row)
      prim[row[1]] = (prim[row[1]] or 0) + 1
      local zones = {}
      for _, id in ipairs(row) do
        local z = ({a = "z1", b = "z2", c = "z3", d = "z4"})[id]
        assert.is_nil(zones[z]) -- four zones, RF 3: distinct zones
        zones[z] = true
      end
    end
    for _, id in ipairs({"a", "b", "c", "d"}) do
      assert.are.equal(4, prim[id])
    end
    assert.is_true(placement.validate(rows, nodes, {partitions = 16, replication = 3}))
    assert.is_nil((placement.validate({}, nodes, {partitions = 16, replication = 3})))
  end)
end)

describe("two nodes in one process", function()
  it("join, see each other, and one leaves for good with ck:leave()", function()
    local a, oa = new_node({node_id = "la", partition_count = 8, replication_factor = 2})
    assert(a:start())
    local b, ob = new_node({node_id = "lb", partition_count = 8, replication_factor = 2,
                            join_addr = a.advertise_http})
    local joined = {}
    a:on("node_join", function(ev) joined[#joined + 1] = ev.node.id end)
    local function changes(kind) return sample(a, 'clusterkit_membership_changes_total{kind="' .. kind .. '"}') end
    local before = {join = changes("join"), leave = changes("leave"), remove = changes("remove")}
    assert(b:start())
    assert.are.equal(2, #b:cluster().nodes)
    local ok = a:wait_for_change(0, 5) -- let a apply b's registration
    assert.is_truthy(ok)
    for _ = 1, 100 do
      if #a:nodes_for_key("k") == 2 then break end
      clusterkit.sleep(0.02)
    end
    assert.are.equal(2, #a:nodes_for_key("k")) -- RF 2 over two nodes
    assert.are.same({"lb"}, joined)
    assert.are.equal(before.join + 1, changes("join"))
    local left = {}
    a:on("node_leave", function(ev) left[#left + 1] = ev.reason end)
    assert(b:leave(10))
    assert.are.equal("stopped", b:state())
    for _ = 1, 100 do
      if #a:cluster().nodes == 1 then break end
      clusterkit.sleep(0.02)
    end
    assert.are.equal(1, #a:cluster().nodes)
    assert.are.equal("la", a:primary_for_key("k").id)
    assert.are.equal(1, a:consensus_stats().voters)
    assert.is_true(#left >= 1)
    -- lb's status "left", then its removal: two changes a applied.
    assert.are.equal(before.leave + 1, changes("leave"))
    assert.are.equal(before.remove + 1, changes("remove"))
    a:stop()
    os.execute("rm -rf '" .. oa.data_dir .. "' '" .. ob.data_dir .. "'")
  end)
end)

describe("md5 compatibility mode", function()
  it("routes exactly like the Go library: md5(key)[0..3] big-endian mod P", function()
    local ck, opts = new_node({hash_algorithm = "md5", partition_count = 64})
    assert(ck:start())
    -- Reference values from Python: int.from_bytes(md5(k).digest()[:4], "big") % 64
    local expect = {["user:123"] = 48, ["key-0"] = 62, ["hello"] = 42}
    for key, p in pairs(expect) do
      assert.are.equal(p, ck:partition_for_key(key).index)
      assert.are.equal(p, clusterkit.partition_of(key, 64, "md5"))
    end
    assert.is_false(ck:hash_config().hash_tags)
    ck:stop()
    os.execute("rm -rf '" .. opts.data_dir .. "'")
  end)
end)

describe("sched", function()
  local sched = require "clusterkit.sched"
  it("wait returns what resume passes, even when resumed before yielding", function()
    local a, b = sched.wait(function(resume) resume(1, 2) end)
    assert.are.equal(1, a)
    assert.are.equal(2, b)
    local x = sched.wait(function(resume)
      local t = core.timer()
      t:start(1, 0, function() t:close(); resume("late") end)
    end)
    assert.are.equal("late", x)
  end)

  it("spawned coroutines can sleep and their errors are reported, not raised", function()
    local order = {}
    local errs = {}
    sched.set_error_logger(function(m) errs[#errs + 1] = m end)
    sched.spawn(function() clusterkit.sleep(0.02); order[#order + 1] = "slow" end)
    sched.spawn(function() order[#order + 1] = "fast" end)
    sched.spawn(function() error("boom") end)
    clusterkit.sleep(0.05)
    sched.set_error_logger(function(m) io.stderr:write(m, "\n") end)
    assert.are.same({"fast", "slow"}, order)
    assert.are.equal(1, #errs)
    assert.matches("boom", errs[1])
    assert.matches("traceback", errs[1])
  end)

  it("wait_timeout gives nil, timeout", function()
    local v, e = sched.wait_timeout(0.01, function() end)
    assert.is_nil(v)
    assert.are.equal("timeout", e)
  end)
end)

describe("json", function()
  local json = require "clusterkit.json"
  it("keeps empty lists as lists", function()
    assert.are.equal('{"a":[]}', json.encode({a = json.array({})}))
    assert.are.equal('{"a":[1]}', json.encode({a = json.array({1})}))
    assert.are.equal('"\\u0000[]x"', json.encode("\0[]x"))
    assert.are.equal('{"a":"\\u0000[]"}', json.encode({a = "\0[]"})) -- not forgeable
  end)

  it("makes any byte string safe to echo as UTF-8", function()
    assert.are.equal("abc", json.utf8_safe("abc"))
    assert.are.equal("h\195\169", json.utf8_safe("h\195\169"))         -- é stays
    assert.are.equal("\239\191\189\239\191\189", json.utf8_safe("\255\254"))
    assert.are.equal("\239\191\189(", json.utf8_safe("\195("))        -- broken pair
    assert.are.equal("\239\191\189\239\191\189\239\191\189", json.utf8_safe("\237\160\128")) -- surrogate
    assert.are.equal("\240\159\152\128", json.utf8_safe("\240\159\152\128")) -- emoji stays
  end)
end)

describe("the HTTP router", function()
  local http = require "clusterkit.http"
  it("matches exact paths, parameters and tails, and tells 405 from 404", function()
    local srv = http.server({opts = {}, log = {}})
    local f1, f2, f3 = function() end, function() end, function() end
    srv:route("GET", "/kv/:key", f1)
    srv:route("GET", "/health", f2)
    srv:route("GET", "/files/*", f3)
    local fn, params = srv:find("GET", "/kv/a%20b")
    assert.are.equal(f1, fn)
    assert.are.equal("a b", params.key)
    assert.are.equal(f2, (srv:find("GET", "/health")))
    fn, params = srv:find("GET", "/files/a/b/c")
    assert.are.equal(f3, fn)
    assert.are.equal("a/b/c", params["*"])
    local none, other = srv:find("PUT", "/kv/x")
    assert.is_nil(none)
    assert.is_true(other)
    none, other = srv:find("GET", "/kv/x/y")
    assert.is_nil(none)
    assert.is_false(other)
  end)

  it("parses queries with percent-decoding", function()
    assert.are.same({key = "a b", x = "", y = "1&2"}, http.parse_query("key=a+b&x&y=1%262"))
  end)
end)
