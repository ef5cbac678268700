-- ckctl driven without sockets: M.main(argv, ctx) with a fake transport
-- (the answers a node would give), a fake clock and captured output.
local ckctl = require "clusterkit.ckctl"
local json = require "clusterkit.json"

local CLUSTER = {
  state_index = 7,
  cluster = {
    id = "c1", name = "demo", config = {cluster_name = "demo", partition_count = 3, replication_factor = 2},
    nodes = {
      {id = "n1", ip = "127.0.0.1:1", raft_addr = "127.0.0.1:11", status = "active", zone = ""},
      {id = "n2", ip = "127.0.0.1:2", raft_addr = "127.0.0.1:12", status = "active", zone = "b"},
    },
    partition_map = {partitions = {
      ["partition-0"] = {id = "partition-0", primary_node = "n1", replica_nodes = {"n2"}, epoch = 2},
      ["partition-1"] = {id = "partition-1", primary_node = "n2", replica_nodes = {"n1"}, epoch = 3},
      ["partition-10"] = {id = "partition-10", primary_node = "n2", replica_nodes = {}, epoch = 1},
    }},
  },
}

-- A fake cluster of nodes by address: routes[addr][method .. " " .. path]
-- gives {status, body} (or a function of the request); every request is
-- recorded.
local function world(routes, env)
  local w = {calls = {}, out = {}, err = {}, t = 0}
  w.ctx = {
    env = env or {CK_ADDR = "127.0.0.1:2"},
    request = function(req)
      w.calls[#w.calls + 1] = req
      local addr, path = req.url:match("^http://([^/]+)(/.*)$")
      local node = routes[addr]
      if not node then
        return nil, {code = "CONNECT", message = "connect to " .. addr .. ": connection refused"}
      end
      local r = node[req.method .. " " .. path] or node[req.method .. " " .. path:gsub("%?.*$", "")]
      if type(r) == "function" then r = r(req) end
      if not r then
        return {status = 404, headers = {}, body = json.encode({error = {code = "NOT_FOUND", message = "no route"}})}
      end
      local body = type(r[2]) == "string" and r[2] or json.encode(r[2])
      return {status = r[1], headers = {}, body = body}
    end,
    out = function(s) w.out[#w.out + 1] = s end,
    err = function(s) w.err[#w.err + 1] = s end,
    now = function() return w.t end,
    sleep = function(s) w.t = w.t + s end,
    clock = function() return "T" end,
  }
  function w.run(...)
    return ckctl.main({...}, w.ctx)
  end
  function w.stdout() return table.concat(w.out) end
  function w.stderr() return table.concat(w.err) end
  return w
end

local NOT_LEADER = {307, {error = {code = "NOT_LEADER", message = "this node is not the leader",
                                   leader = "127.0.0.1:1"}}}

describe("ckctl", function()
  it("renders aligned tables", function()
    assert.equal("A    BB\nxyz  1\n", ckctl.table({"A", "BB"}, {{"xyz", 1}}))
  end)

  it("sorts partitions by index, not by name", function()
    local ids = {}
    for _, p in ipairs(ckctl.sorted_partitions(CLUSTER.cluster)) do ids[#ids + 1] = p.id end
    assert.same({"partition-0", "partition-1", "partition-10"}, ids)
  end)

  it("describes what changed between two states", function()
    local new = json.decode(json.encode(CLUSTER))
    new.cluster.nodes[2].status = "down"
    new.cluster.nodes[3] = {id = "n3", ip = "127.0.0.1:3", status = "active"}
    new.cluster.partition_map.partitions["partition-1"] = {id = "partition-1", primary_node = "n1",
                                                           replica_nodes = {"n3"}, epoch = 4}
    table.remove(new.cluster.nodes, 1)
    assert.same({
      "node n2 active -> down",
      "node n3 joined (127.0.0.1:3, active)",
      "node n1 left",
      "partition-1 n2,n1 -> n1,n3 (epoch 4)",
    }, ckctl.diff(CLUSTER, new))
    assert.same({}, ckctl.diff(CLUSTER, CLUSTER))
  end)

  it("prints members with the leader marked", function()
    local w = world({["127.0.0.1:2"] = {
      ["GET /cluster"] = {200, CLUSTER},
      ["GET /consensus/leader"] = {200, {leader_id = "n1", term = 4}},
    }})
    assert.equal(0, w.run("members"))
    assert.matches("n1 %*%s+active%s+%-%s+127.0.0.1:1", w.stdout())
    assert.matches("n2%s+active%s+b%s+127.0.0.1:2", w.stdout())
  end)

  it("filters partitions by node and prints the role", function()
    local w = world({["127.0.0.1:2"] = {["GET /cluster"] = {200, CLUSTER}}})
    assert.equal(0, w.run("partitions", "--node", "n1"))
    local out = w.stdout()
    assert.matches("partition%-0%s+n1%s+n2%s+2%s+primary", out)
    assert.matches("partition%-1%s+n2%s+n1%s+3%s+replica", out)
    assert.is_nil(out:find("partition-10", 1, true))
  end)

  it("--json prints the node's answer unchanged", function()
    local w = world({["127.0.0.1:2"] = {["GET /consensus/leader"] = {200, '{"leader_id":"n1","term":4}'}}})
    assert.equal(0, w.run("--json", "leader"))
    assert.equal('{"leader_id":"n1","term":4}\n', w.stdout())
  end)

  it("follows NOT_LEADER to the leader with the same method, path and body, and the cluster token", function()
    local w = world({
      ["127.0.0.1:2"] = {["POST /leave"] = NOT_LEADER},
      ["127.0.0.1:1"] = {["POST /leave"] = {200, {status = "ok", node_id = "n2"}}},
    }, {CK_ADDR = "127.0.0.1:2", CLUSTER_TOKEN = "s3cret", READ_TOKEN = "r"})
    assert.equal(0, w.run("leave", "n2"))
    assert.equal(2, #w.calls)
    assert.equal("http://127.0.0.1:1/leave", w.calls[2].url)
    assert.equal("POST", w.calls[2].method)
    assert.same({id = "n2"}, json.decode(w.calls[2].body))
    assert.equal("Bearer s3cret", w.calls[2].headers.Authorization)
    assert.matches("n2 left the cluster", w.stdout())
  end)

  it("reads with READ_TOKEN when it is set", function()
    local w = world({["127.0.0.1:2"] = {["GET /consensus/leader"] = {200, {leader_id = "n1"}}}},
      {CK_ADDR = "127.0.0.1:2", CLUSTER_TOKEN = "s3cret", READ_TOKEN = "r"})
    assert.equal(0, w.run("leader"))
    assert.equal("Bearer r", w.calls[1].headers.Authorization)
  end)

  it("gives up after a few redirects", function()
    local w = world({["127.0.0.1:1"] = {["POST /rebalance"] = NOT_LEADER}}, {CK_ADDR = "127.0.0.1:1"})
    assert.equal(1, w.run("rebalance"))
    assert.matches("NOT_LEADER redirects", w.stderr())
    assert.equal(4, #w.calls)
  end)

  it("exits 1 with the node's error, and says which token is missing", function()
    local w = world({["127.0.0.1:2"] = {["POST /rebalance/pause"] = {401, {error = {code = "UNAUTHORIZED",
      message = "a valid cluster token is required"}}}}})
    assert.equal(1, w.run("pause"))
    assert.matches("401 UNAUTHORIZED: a valid cluster token is required %(set CLUSTER_TOKEN%)", w.stderr())
  end)

  it("exits 1 when the node cannot be reached, naming the address", function()
    local w = world({}, {CK_ADDR = "127.0.0.1:9"})
    assert.equal(1, w.run("status"))
    assert.matches("127.0.0.1:9 /health/detailed: connect to 127.0.0.1:9: connection refused", w.stderr())
  end)

  it("exits 2 on usage errors", function()
    local w = world({})
    assert.equal(2, w.run())
    assert.equal(2, w.run("frobnicate"))
    assert.matches("unknown command frobnicate", w.stderr())
    assert.equal(2, w.run("--addr"))
    assert.equal(2, w.run("--timeout", "-1", "status"))
    assert.equal(1, w.run("where"))
    assert.matches("where needs a KEY", w.stderr())
    assert.equal(0, w.run("--help"))
  end)

  it("--addr wins over CK_ADDR and may carry http://", function()
    local w = world({["127.0.0.1:1"] = {["GET /consensus/leader"] = {200, {leader_id = "n1"}}}})
    assert.equal(0, w.run("--addr", "http://127.0.0.1:1/", "leader"))
    assert.equal("http://127.0.0.1:1/consensus/leader", w.calls[1].url)
  end)

  it("where percent-encodes the key", function()
    local w = world({["127.0.0.1:2"] = {["GET /partitions/key"] = function(req)
      assert.equal("http://127.0.0.1:2/partitions/key?key=a%2Fb%20c", req.url)
      return {200, {partition_id = "partition-1", partition = {epoch = 3},
                    nodes = {{role = "primary", id = "n2", status = "active", ip = "127.0.0.1:2"}}}}
    end}})
    assert.equal(0, w.run("where", "a/b c"))
    assert.matches("key a/b c %-> partition%-1 %(epoch 3%)", w.stdout())
  end)

  it("watch prints each change once, follows the state index, and stops after --count", function()
    local step = 0
    local new = json.decode(json.encode(CLUSTER))
    new.state_index = 9
    new.cluster.nodes[2].status = "suspect"
    local w = world({["127.0.0.1:2"] = {["GET /cluster"] = function(req)
      if not req.url:find("index=", 1, true) then return {200, CLUSTER} end
      step = step + 1
      if step == 1 then
        assert.matches("index=7&", req.url)
        return {200, CLUSTER} -- The wait ended without a change.
      end
      assert.matches("index=" .. (step == 2 and 7 or 9) .. "&", req.url)
      return {200, new}
    end}})
    assert.equal(0, w.run("watch", "--count", "1"))
    assert.matches("T index 9: node n2 active %-> suspect\n$", w.stdout())
  end)

  it("watch --for stops when the time is up, and survives a node that goes away", function()
    local calls = 0
    local w = world({["127.0.0.1:2"] = {["GET /cluster"] = function(req)
      if not req.url:find("index=", 1, true) then return {200, CLUSTER} end
      calls = calls + 1
      return nil
    end}})
    -- Every blocking query fails (404 here): the watcher says so, waits a
    -- second (the fake clock) and tries again until --for is over.
    assert.equal(0, w.run("watch", "--for", "3"))
    assert.equal(3, calls)
    assert.matches("retrying", w.stderr())
  end)

  describe("recover", function()
    local STATE = json.encode(CLUSTER)
    local function recovering(running)
      local w = world(running and {["127.0.0.1:1"] = {["GET /health"] = {200, {status = "healthy"}}}} or {})
      w.recovered = {}
      w.ctx.read_file = function(path)
        if path == "/d/cluster-state.json" then return STATE end
        return nil, path .. ": No such file or directory"
      end
      w.ctx.raft_recover = function(o)
        w.recovered[#w.recovered + 1] = o
        return true
      end
      return w
    end

    it("warns, and does nothing without --yes", function()
      local w = recovering()
      assert.equal(1, w.run("recover", "--data-dir", "/d", "--node-id", "n1"))
      assert.matches("WARNING", w.stderr())
      assert.matches("re%-run with %-%-yes", w.stderr())
      assert.equal(0, #w.recovered)
    end)

    it("refuses a node that still answers", function()
      local w = recovering(true)
      assert.equal(1, w.run("recover", "--data-dir", "/d", "--node-id", "n1", "--yes"))
      assert.matches("n1 answers on 127.0.0.1:1: stop it first", w.stderr())
      assert.equal(0, #w.recovered)
    end)

    it("forces the configuration to the node alone, or to --voters that include it", function()
      local w = recovering()
      assert.equal(0, w.run("recover", "--data-dir", "/d", "--node-id", "n1", "--yes"))
      assert.same({dir = "/d/raft", node_id = "n1", raft_addr = "127.0.0.1:11",
                   voters = {{node_id = "n1", raft_addr = "127.0.0.1:11"}}}, w.recovered[1])
      assert.equal(0, w.run("recover", "--data-dir", "/d", "--node-id", "n1", "--voters", "n1,n2", "--yes"))
      assert.same({{node_id = "n1", raft_addr = "127.0.0.1:11"}, {node_id = "n2", raft_addr = "127.0.0.1:12"}},
        w.recovered[2].voters)
      assert.equal(1, w.run("recover", "--data-dir", "/d", "--node-id", "n1", "--voters", "n2", "--yes"))
      assert.matches("must include n1", w.stderr())
      assert.equal(1, w.run("recover", "--data-dir", "/d", "--node-id", "n1", "--voters", "n1,n9", "--yes"))
      assert.matches("voter n9 is not a member", w.stderr())
      assert.equal(2, #w.recovered)
    end)

    it("says what is wrong with the data dir or the node id", function()
      local w = recovering()
      assert.equal(1, w.run("recover", "--data-dir", "/nope", "--node-id", "n1", "--yes"))
      assert.matches("is /nope a clusterkit DATA_DIR", w.stderr())
      assert.equal(1, w.run("recover", "--data-dir", "/d", "--node-id", "zz", "--yes"))
      assert.matches("zz is not a member", w.stderr())
      assert.equal(1, w.run("recover", "--data-dir", "/d"))
      assert.matches("needs %-%-node%-id", w.stderr())
      assert.equal(1, w.run("recover", "--bogus"))
      assert.matches("unknown argument %-%-bogus", w.stderr())
    end)
  end)

  describe("snapshot", function()
    local SNAP = '{"format":"clusterkit-snapshot","version":1,"state_index":5,"partitions":[{}],"nodes":[]}'

    it("save writes the node's answer as it is, from the leader", function()
      local w = world({["127.0.0.1:2"] = {["GET /snapshot"] = NOT_LEADER},
                       ["127.0.0.1:1"] = {["GET /snapshot"] = {200, SNAP}}})
      local written = {}
      w.ctx.write_file = function(path, text) written[path] = text; return true end
      assert.equal(0, w.run("snapshot", "save", "/b.json"))
      assert.equal(SNAP, written["/b.json"])
      assert.matches("saved the state at index 5 %(1 partitions, 0 nodes, 0 keys%) to /b.json", w.stdout())
      local before = #w.calls
      assert.equal(0, w.run("snapshot", "save", "/c.json", "--stale"))
      assert.equal("http://127.0.0.1:2/snapshot?stale=1", w.calls[before + 1].url)
    end)

    it("restore posts the file unchanged and refuses what is not a snapshot", function()
      local w = world({["127.0.0.1:2"] = {["POST /snapshot/restore"] = function(req)
        assert.equal(SNAP, req.body)
        return {200, {state_index = 9, partitions = 1, missing = {"x"}}}
      end}})
      w.ctx.read_file = function(path)
        if path == "/b.json" then return SNAP end
        if path == "/junk" then return "[1,2]" end
        return nil, "No such file"
      end
      assert.equal(0, w.run("snapshot", "restore", "/b.json"))
      assert.matches("1 partitions committed at state index 9", w.stdout())
      assert.matches("left out: x", w.stdout())
      assert.equal(1, w.run("snapshot", "restore", "/junk"))
      assert.matches("not a clusterkit snapshot", w.stderr())
      assert.equal(1, w.run("snapshot", "restore", "/missing"))
      assert.matches("reading /missing: No such file", w.stderr())
      assert.equal(1, w.run("snapshot", "frob"))
    end)
  end)
end)
