-- clusterkit.client on a fake world: a fake clock and scheduler (coroutines
-- resumed in fake-time order) and fake nodes that answer GET /cluster
-- (blocking queries included) and application requests. No sockets, no
-- wall clock: every step is deterministic.
local client = require "clusterkit.client"
local json = require "clusterkit.json"

-- ---------------------------------------------------------------------------
-- The fake world
-- ---------------------------------------------------------------------------

local function World()
  local w = {t = 0, queue = {}, seq = 0, nodes = {}, log = {}, app = nil}

  -- Resume co with ... at fake time `at` (FIFO among equal times).
  function w.at(at, co, ...)
    w.seq = w.seq + 1
    w.queue[#w.queue + 1] = {at = at, seq = w.seq, co = co, args = {n = select("#", ...), ...}}
  end

  function w.now() return w.t end

  -- A resumer that counts only its first call (like sched.wait's resume).
  local function once(co)
    local done = false
    return function(...)
      if done then return end
      done = true
      w.at(w.t, co, ...)
    end
  end

  function w.sleep(s)
    w.at(w.t + s, coroutine.running())
    return coroutine.yield()
  end

  function w.spawn(fn)
    w.at(w.t, coroutine.create(fn))
  end

  function w.cond()
    local c = {waiters = {}}
    function c.wait(_, seconds)
      local r = once(coroutine.running())
      c.waiters[#c.waiters + 1] = r
      if seconds then
        w.at(w.t + seconds, coroutine.running(), "__timer", r)
      end
      return coroutine.yield()
    end
    function c.signal(_, v)
      local ws = c.waiters
      c.waiters = {}
      for _, r in ipairs(ws) do r(v) end
    end
    return c
  end

  -- The cluster: one JSON body per state index; nodes[addr] = {up, index
  -- (what this node has applied)}.
  w.bodies = {}
  w.index = 0
  w.blocked = {}

  function w.body_at(index)
    return w.bodies[index]
  end

  local function cluster_answer(n)
    return {status = 200, headers = {["x-ck-known-leader"] = n.leaderless and "false" or "true"},
            body = json.encode(w.body_at(n.index))}
  end

  -- Commits a new table (cluster body) and lets every up node apply it.
  function w.commit(body, lagging)
    w.index = w.index + 1
    body.state_index = w.index
    w.bodies[w.index] = body
    for addr, n in pairs(w.nodes) do
      if n.up and not (lagging and lagging[addr]) then n.index = w.index end
    end
    w.settle()
  end

  function w.kill(addr)
    w.nodes[addr].up = false
    w.settle()
  end

  -- Answers every held query whose node moved past its index, and fails
  -- those whose node is down; keeps the rest held.
  function w.settle()
    local still = {}
    for _, b in ipairs(w.blocked) do
      local n = w.nodes[b.addr]
      if not n.up then
        b.resume(nil, {code = "CLOSED", message = "connection closed"})
      elseif n.index > b.index then
        b.resume(cluster_answer(n))
      else
        still[#still + 1] = b
      end
    end
    w.blocked = still
  end

  function w.request(opts)
    local addr, target = opts.url:match("^http://([^/]+)(/.*)$")
    w.log[#w.log + 1] = {method = opts.method, addr = addr, target = target, headers = opts.headers,
                         body = opts.body}
    local n = w.nodes[addr]
    if not n or not n.up then
      return nil, {code = "CONNECT", message = "connect to " .. tostring(addr) .. ": connection refused"}
    end
    local path, query = target:match("^([^?]*)%??(.*)$")
    if path == "/cluster" then
      if not w.body_at(n.index) then
        return {status = 503, headers = {},
                body = json.encode({error = {code = "NOT_READY", message = "no table"}})}
      end
      local index = tonumber(query:match("index=(%d+)"))
      if index and n.index <= index then
        local co = coroutine.running()
        local r = once(co)
        w.blocked[#w.blocked + 1] = {addr = addr, index = index, resume = r}
        local wait = tonumber(query:match("wait=(%d+)ms")) / 1000
        w.at(w.t + wait, co, "__timer", function() r(cluster_answer(n)) end)
        return coroutine.yield()
      end
      return cluster_answer(n)
    end
    return w.app(addr, opts)
  end

  -- Runs fn in a coroutine and the fake loop until fn returns; bounded in
  -- steps and in fake time. Returns fn's results.
  function w.run(fn, max_t)
    max_t = max_t or 1e6
    local out, done
    w.at(w.t, coroutine.create(function() out = {fn()}; done = true end))
    for _ = 1, 100000 do
      if done then return unpack(out) end
      table.sort(w.queue, function(a, b) return a.at < b.at or (a.at == b.at and a.seq < b.seq) end)
      local e = table.remove(w.queue, 1)
      assert(e, "the fake loop ran dry before the test's function returned")
      assert(e.at <= max_t, "fake time ran past " .. max_t)
      w.t = math.max(w.t, e.at)
      if e.args[1] == "__timer" then
        e.args[2]("__timeout") -- a timer fires a resumer (the first caller wins)
      elseif coroutine.status(e.co) == "suspended" then
        local args = e.args
        if args[1] == "__timeout" then args = {n = 2, nil, "timeout"} end
        local ok, err = coroutine.resume(e.co, unpack(args, 1, args.n))
        assert(ok, err)
      end
    end
    error("the fake loop did not finish in 100000 steps")
  end

  return w
end

-- A /cluster body: nodes {id -> addr}, rows {partition index -> {owners...}}
-- with epochs.
local function body(nodes, rows, epochs, P)
  local list, parts = {}, {}
  for id, addr in pairs(nodes) do
    list[#list + 1] = {id = id, name = id, ip = addr, status = "active"}
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  for i = 0, P - 1 do
    local r = rows[i] or {}
    local reps = {}
    for k = 2, #r do reps[#reps + 1] = r[k] end
    parts["partition-" .. i] = {id = "partition-" .. i, primary_node = r[1], replica_nodes = reps,
                                epoch = epochs and epochs[i] or 1}
  end
  return {cluster = {id = "c1", name = "test", nodes = list, partition_map = {partitions = parts},
                     config = {partition_count = P}},
          hash_config = {algorithm = "fake", partition_count = P, hash_tags = false}}
end

-- The fake hasher: keys "k<N>" go to partition N mod P.
local function fake_hash(_, P, _, key)
  local n = tonumber(key:match("^k(%d+)$"))
  if not n then return nil, "not a test key" end
  return n % P
end

local NODES = {a = "10.0.0.1:1", b = "10.0.0.2:1", c = "10.0.0.3:1"}

local function setup(opts)
  local w = World()
  for _, addr in pairs(NODES) do w.nodes[addr] = {up = true, index = 0} end
  w.commit(body(NODES, {[0] = {"a", "b"}, [1] = {"b", "c"}, [2] = {"c", "a"}, [3] = {"a", "c"}}, nil, 4))
  local ctx = {request = w.request, now = w.now, sleep = w.sleep, spawn = w.spawn, cond = w.cond,
               hash = fake_hash, env = function() return nil end}
  opts = opts or {}
  opts.addrs = opts.addrs or {NODES.a}
  opts.wait = opts.wait or 10
  local c = assert(client.new(opts, ctx))
  return w, c
end

describe("clusterkit.client", function()
  it("refuses bad options with nil, err", function()
    local ctx = {env = function() return nil end, cond = function() return {} end}
    for _, o in ipairs({{}, {addrs = {}}, {addrs = "nohost"}, {addrs = {1}},
                        {addrs = "h:1", wait = 0}, {addrs = "h:1", wait = 601}, {addrs = "h:1", timeout = -1},
                        {addrs = "h:1", retries = 1.5}, {addrs = "h:1", on_change = 3}}) do
      local c, err = client.new(o, ctx)
      assert.is_nil(c)
      assert.are.equal("INVALID", err.code)
    end
    local c = assert(client.new({addrs = "h1:1, http://h2:2/"}, ctx))
    assert.are.same({"h1:1", "h2:2"}, c.seeds)
  end)

  it("routes keys locally from the first table: partition, epoch, owners, member entries", function()
    local w, c = setup()
    w.run(function() assert(c:start()) end)
    local r = assert(c:route("k5"))
    assert.are.same({partition = "partition-1", index = 1, epoch = 1, primary = "b", owners = {"b", "c"}}, r)
    assert.are.equal(NODES.b, c:primary_for_key("k5").ip)
    local ns = c:nodes_for_key("k2")
    assert.are.same({"c", "a"}, {ns[1].id, ns[2].id})
    assert.are.equal(1, c:state_index())
    local _, err = c:route(42)
    assert.are.equal("INVALID", err.code)
    c:close()
  end)

  it("learns a new table by push, one blocking query after the commit, with no polling", function()
    local changes = {}
    local w, c = setup({on_change = function(_, t, old) changes[#changes + 1] = {t.index, old and old.index} end})
    w.run(function()
      assert(c:start())
      w.sleep(3)                          -- idle: the query is held, nothing is asked again
      local asked = #w.log
      w.commit(body(NODES, {[0] = {"b", "a"}, [1] = {"b", "c"}, [2] = {"c", "a"}, [3] = {"a", "c"}},
        {[0] = 2}, 4))
      local t0 = w.now()
      assert(c:wait_for_change(1, 1))
      assert.are.equal(t0, w.now())       -- in the same fake instant: pushed, not polled
      assert.are.equal(asked + 1, #w.log) -- one new query, held again
    end)
    assert.are.same({{1}, {2, 1}}, changes)
    assert.are.same({partition = "partition-0", index = 0, epoch = 2, primary = "b", owners = {"b", "a"}},
      c:route("k4"))
    c:close()
  end)

  it("moves to another member when the node it watches dies, learning members from the table", function()
    local w, c = setup({addrs = {NODES.a}}) -- one seed only
    w.run(function()
      assert(c:start())
      w.kill(NODES.a)
      w.sleep(1)
      w.commit(body({b = NODES.b, c = NODES.c}, {[0] = {"b"}, [1] = {"b", "c"}, [2] = {"c"}, [3] = {"c"}},
        {[0] = 2, [2] = 2, [3] = 2}, 4))
      assert(c:wait_for_change(1, 5))
    end)
    assert.are.equal(2, c:state_index())
    assert.are.equal("b", c:route("k0").primary)
    assert.is_true(c.stats.watch_errors >= 1)
    c:close()
  end)

  it("never goes back in time: a lagging node's older table is not installed", function()
    local w, c = setup({addrs = {NODES.a, NODES.b}})
    w.run(function()
      assert(c:start())
      -- a applies index 2; b lags behind at 1.
      w.commit(body(NODES, {[0] = {"b", "a"}}, {[0] = 2}, 4), {[NODES.b] = true})
      assert(c:wait_for_change(1, 1))
      -- a dies; the client moves to b, which answers index 1 when its wait
      -- ends: dropped, and the client moves on.
      w.kill(NODES.a)
      w.sleep(25)
    end)
    assert.are.equal(2, c:state_index())
    assert.are.equal("b", c:route("k0").primary)
    c:close()
  end)

  it("leaves a node that knows no leader (a minority) for one that follows the cluster", function()
    local w, c = setup({addrs = {NODES.a}})
    w.run(function()
      assert(c:start())
      -- a is cut off from the majority: it stops applying and, after an
      -- election timeout, knows no leader. b and c go on.
      w.nodes[NODES.a].leaderless = true
      w.commit(body(NODES, {[0] = {"b", "c"}}, {[0] = 2}, 4), {[NODES.a] = true})
      assert(c:wait_for_change(1, 15)) -- a's held query ends within wait (10 s)
    end)
    assert.are.equal(2, c:state_index())
    assert.are.equal("b", c:route("k0").primary)
    assert.are_not.equal(NODES.a, c.addrs[c.cur])
    c:close()
  end)

  it("takes a first table from a node without a leader, then watches another one", function()
    local w, c = setup({addrs = {NODES.a, NODES.b}})
    w.nodes[NODES.a].leaderless = true
    w.run(function() assert(c:start()) end)
    assert.are.equal(1, c:state_index())
    assert.are.equal(NODES.b, c.addrs[c.cur])
    c:close()
  end)

  it("keeps following with every node down for a while, backing off, and resumes", function()
    local w, c = setup({addrs = {NODES.a}})
    w.run(function()
      assert(c:start())
      for _, a in pairs(NODES) do w.kill(a) end
      w.sleep(30)
      local asked = #w.log
      w.sleep(10)
      -- backed off: at most a few attempts per second across three nodes
      assert.is_true(#w.log - asked <= 3 * 10 + 3, tostring(#w.log - asked))
      w.nodes[NODES.c].up = true
      w.commit(body(NODES, {[0] = {"c"}}, {[0] = 5}, 4))
      assert(c:wait_for_change(1, 5))
    end)
    assert.are.equal("c", c:route("k0").primary)
    c:close()
  end)

  it("sends a request to the key's primary with the partition and epoch it routed with", function()
    local w, c = setup()
    w.app = function(addr) return {status = 200, headers = {}, body = "served by " .. addr} end
    local res = w.run(function()
      assert(c:start())
      return c:request({key = "k6", method = "PUT", path = "/kv/k6", body = "v"})
    end)
    assert.are.equal("served by " .. NODES.c, res.body)
    assert.are.equal("c", res.node)
    local last = w.log[#w.log]
    assert.are.equal("partition-2", last.headers["X-CK-Partition"])
    assert.are.equal("1", last.headers["X-CK-Epoch"])
    c:close()
  end)

  it("on 421 or 409 STALE_EPOCH waits for the newer table and goes to the new primary", function()
    for _, refusal in ipairs({{421, "NOT_PRIMARY"}, {409, "STALE_EPOCH"}}) do
      local w, c = setup()
      local served = {}
      w.app = function(addr)
        if addr == NODES.a then
          return {status = refusal[1], headers = {}, body = json.encode({error = {code = refusal[2]}})}
        end
        served[#served + 1] = addr
        return {status = 200, headers = {}, body = "ok"}
      end
      local res = w.run(function()
        assert(c:start())
        -- The primary of partition 0 moved from a to b; the commit reaches
        -- the client half a second after the request went out.
        w.spawn(function()
          w.sleep(0.5)
          w.commit(body(NODES, {[0] = {"b", "a"}, [1] = {"b", "c"}, [2] = {"c", "a"}, [3] = {"a", "c"}},
            {[0] = 2}, 4))
        end)
        return c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"})
      end)
      assert.are.equal(200, res.status, refusal[2])
      assert.are.same({NODES.b}, served)
      assert.are.equal("2", w.log[#w.log].headers["X-CK-Epoch"])
      c:close()
    end
  end)

  it("follows a 307 Location (NOT_LEADER) with the same method and body", function()
    local w, c = setup()
    w.app = function(addr, opts)
      if addr == NODES.a then
        return {status = 307, headers = {location = "http://" .. NODES.b .. "/v1/kv/x"}, body = "{}"}
      end
      return {status = 200, headers = {}, body = opts.method .. " " .. opts.body}
    end
    local res = w.run(function()
      assert(c:start())
      return c:request({key = "k0", method = "POST", path = "/v1/kv/x", body = "payload"})
    end)
    assert.are.equal("POST payload", res.body)
    c:close()
  end)

  it("does not retry a write whose outcome is unknown, and retries a read on the next owner", function()
    local w, c = setup()
    local calls = 0
    w.app = function(addr)
      calls = calls + 1
      if addr == NODES.a then return nil, {code = "TIMEOUT", message = "timed out"} end
      return {status = 200, headers = {}, body = "from " .. addr}
    end
    local res, err = w.run(function()
      assert(c:start())
      return c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"})
    end)
    assert.is_nil(res)
    assert.are.equal("TIMEOUT", err.code)
    assert.are.equal(1, calls)
    res = w.run(function() return c:request({key = "k0", path = "/kv/k0"}) end)
    assert.are.equal("from " .. NODES.b, res.body)
    -- A write that was never sent (connection refused) goes to the next owner.
    w.kill(NODES.a)
    res = w.run(function() return c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"}) end)
    assert.are.equal("from " .. NODES.b, res.body)
    c:close()
  end)

  it("sends a write on after a 503 that did nothing, and hands back one whose outcome is unknown", function()
    local w, c = setup()
    local calls = {}
    local answer = "SYNCING"
    w.app = function(addr)
      calls[#calls + 1] = addr
      if addr == NODES.a then
        return {status = 503, headers = {}, body = json.encode({error = {code = answer, message = "x"}})}
      end
      return {status = 200, headers = {}, body = "from " .. addr}
    end
    local res = w.run(function()
      assert(c:start())
      return c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"})
    end)
    assert.are.equal("from " .. NODES.b, res.body)
    assert.are.same({NODES.a, NODES.b}, calls)
    -- QUORUM: some replicas may hold the write; sending it again elsewhere
    -- could land it after a newer one.
    answer, calls = "QUORUM", {}
    res = w.run(function() return c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"}) end)
    assert.are.equal(503, res.status)
    assert.are.same({NODES.a}, calls)
    -- A read may go on.
    calls = {}
    res = w.run(function() return c:request({key = "k0", path = "/kv/k0"}) end)
    assert.are.equal(200, res.status)
    assert.are.same({NODES.a, NODES.b}, calls)
    c:close()
  end)

  it("reads the code of clusterkit's JSON errors", function()
    assert.are.equal("STALE_EPOCH", (client.error_of({body = '{"error":{"code":"STALE_EPOCH","epoch":3}}'})))
    assert.are.equal("X", (client.error_of({body = '{"code":"X"}'})))
    assert.is_nil(client.error_of({body = "<html>"}))
    assert.is_nil(client.error_of({body = '{"error":"text"}'}))
  end)

  it("tells httpc a write is not idempotent, so a stale pooled connection does not replay it", function()
    local w, c = setup()
    local seen = {}
    w.app = function(_, opts)
      seen[#seen + 1] = opts.idempotent
      return {status = 200, headers = {}, body = ""}
    end
    w.run(function()
      assert(c:start())
      c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v"})
      c:request({key = "k0", path = "/kv/k0"})
      c:request({key = "k0", method = "PUT", path = "/kv/k0", body = "v", idempotent = true})
    end)
    assert.are.same({false, true, true}, seen)
    c:close()
  end)

  it("gives up within its timeout when no owner answers", function()
    local w, c = setup({timeout = 2})
    w.app = function() return {status = 503, headers = {}, body = json.encode({error = {code = "SYNCING"}})} end
    local res, err = w.run(function()
      assert(c:start())
      return c:request({key = "k0", path = "/kv/k0"})
    end, 100)
    assert.is_nil(res)
    assert.is_truthy(err.code == "TIMEOUT" or err.code == "SYNCING", tostring(err.code))
    assert.is_true(w.now() <= 2 + 1e-9 + 10) -- bounded by the fake clock
    c:close()
  end)

  it("start fails clearly when no node answers, and sends the read token", function()
    local w, c = setup({addrs = {"10.9.9.9:1"}, timeout = 1, read_token = "rt"})
    local ok, err = w.run(function() return c:start() end)
    assert.is_nil(ok)
    assert.are.equal("UNAVAILABLE", err.code)
    assert.matches("connection refused", err.message)
    local w2, c2 = setup({read_token = "rt", token = "wt"})
    w2.run(function() assert(c2:start()) end)
    assert.are.equal("Bearer rt", w2.log[1].headers.Authorization)
    c2:close()
  end)
end)
