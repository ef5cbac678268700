-- Option checks behind the loud operator errors (issue 12, item 5): node
-- ids are safe path components, raft_addr names a reachable host, and the
-- options an operator set are told apart from defaults.
local config = require "clusterkit.config"

local function resolve(opts, env)
  env = env or {}
  return config.resolve(opts, "t", function(k) return env[k] end)
end

describe("node_id", function()
  it("must be one safe path component", function()
    for _, bad in ipairs({"../../x", "a/b", "a\\b", ".", "..", ".hidden", "tab\there", "nul\0x",
                          string.rep("x", 256)}) do
      local ok, err = pcall(resolve, {node_id = bad})
      assert.is_false(ok, bad)
      assert.matches("node_id %(NODE_ID%)", err)
    end
    for _, good in ipairs({"node-1", "node.1", "n_1", "a..b", string.rep("x", 255)}) do
      assert.are.equal(good, resolve({node_id = good}).node_id)
    end
  end)

  it("from the environment is checked too, and the message shows control characters escaped", function()
    local ok, err = pcall(resolve, nil, {NODE_ID = "a\1b"})
    assert.is_false(ok)
    assert.matches('got "a\\001b"', err, 1, true)
  end)
end)

describe("raft_addr", function()
  it("refuses the wildcard addresses 0.0.0.0 and ::", function()
    for _, bad in ipairs({"0.0.0.0:9001", "[::]:9001", ":9001"}) do
      local ok, err = pcall(resolve, {raft_addr = bad})
      assert.is_false(ok, bad)
      assert.matches("RAFT_ADDR", err)
    end
    assert.are.equal("::1", resolve({raft_addr = "[::1]:9001"}).raft_host)
  end)
end)

describe("explicit options", function()
  it("lists what the operator set, by option or environment, and not defaults", function()
    local o = resolve({partition_count = 8}, {HASH_ALGORITHM = "md5", CLUSTER_NAME = ""})
    assert.is_true(o.explicit.partition_count)
    assert.is_true(o.explicit.hash_algorithm)
    assert.is_nil(o.explicit.cluster_name) -- empty means unset
    assert.is_nil(o.explicit.replication_factor)
    assert.are.equal(3, o.replication_factor)
  end)
end)

describe("TLS options", function()
  it("come from TLS_CERT, TLS_KEY, TLS_CA and TLS_VERIFY_PEERS", function()
    local o = resolve(nil, {TLS_CERT = "/c.pem", TLS_KEY = "/c.key", TLS_CA = "/ca.pem", TLS_VERIFY_PEERS = "true"})
    assert.are.same({"/c.pem", "/c.key", "/ca.pem", true}, {o.tls_cert, o.tls_key, o.tls_ca, o.tls_verify_peers})
    assert.is_false(resolve().tls_verify_peers)
    assert.is_nil(resolve().tls_cert)
  end)

  it("refuse combinations that cannot work, saying which variable to set", function()
    local cases = {
      {{tls_cert = "/c.pem"}, "TLS_CERT%) and tls_key %(TLS_KEY%) go together"},
      {{tls_key = "/c.key"}, "go together"},
      {{tls_ca = "/ca.pem"}, "TLS_CA%) needs tls_cert"},
      {{tls_cert = "/c.pem", tls_key = "/c.key", tls_verify_peers = true}, "TLS_VERIFY_PEERS%) needs tls_ca"},
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(resolve, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    local ok, err = pcall(resolve, nil, {TLS_VERIFY_PEERS = "maybe"})
    assert.is_false(ok)
    assert.matches("TLS_VERIFY_PEERS", err)
  end)
end)
