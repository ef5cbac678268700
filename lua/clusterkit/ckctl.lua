--- ckctl: the operator CLI (embedded in the ckctl binary, like ckrun's).
--
--   ckctl [--addr HOST:PORT] [--json] [--timeout S] COMMAND [ARGS]
--
-- Talks HTTP to any node (--addr, else CK_ADDR, else 127.0.0.1:8080) with
-- clusterkit's own client, follows NOT_LEADER answers to the leader, sends
-- CLUSTER_TOKEN on mutations and READ_TOKEN (else CLUSTER_TOKEN) on reads.
-- Tables for people, --json for scripts (the node's answer, unchanged, one
-- JSON document per line for `watch`). Exit codes: 0 done, 1 the cluster
-- said no or could not be reached (the message says which), 2 usage.
--
-- The program is M.main(argv, ctx) with every effect in ctx (request, out,
-- err, env, now, sleep), so tests drive it without sockets
-- (tests/lua/ckctl_spec.lua); M.run is the real-world ctx.
local json = require "clusterkit.json"

local M = {}

local format, concat, rep = string.format, table.concat, string.rep

local USAGE = [==[
usage: ckctl [options] COMMAND [ARGS]

commands:
  status                  cluster, leader, term, state index, nodes by status
  members                 every node: id, status, zone, HTTP and raft address
  partitions [--node ID]  the partition table (only ID's partitions with --node)
  where KEY               the partition of KEY, its primary and replicas
  leader                  the leader, its address and term
  watch [--count N] [--for S]
                          print every change as it is committed (blocking
                          queries); stops after N changes or S seconds
  leave NODE              remove NODE from the cluster (its partitions move)
  rebalance [--plan]      run placement now (--plan: only show the moves)
  pause | resume          stop / restart automatic rebalancing (maintenance)
  snapshot save FILE [--stale]
                          back up the replicated state (the leader's; --stale:
                          the node's own, e.g. without quorum)
  snapshot restore FILE   commit a backup's partition table, flags and KV keys (into
                          this or a new cluster with the same partition count,
                          replication factor and hash)
  recover --data-dir DIR --node-id ID [--voters ID,ID...] --yes
                          after a quorum loss: force the raft configuration in
                          the stopped node's DIR to ID alone (or to --voters);
                          read the warning it prints first

options:
  --addr HOST:PORT   a node's HTTP address (default $CK_ADDR, else 127.0.0.1:8080);
                     https://HOST:PORT for a TLS cluster
  --json             print the node's JSON answers instead of tables
  --timeout S        per-request timeout in seconds (default 10)
  -h, --help         this help

environment: CK_ADDR, CLUSTER_TOKEN (mutations), READ_TOKEN (reads; default
CLUSTER_TOKEN), NODE_ID and DATA_DIR (defaults of recover); TLS_CA (the CA
that signs the nodes' certificates: turns HTTPS on), TLS_CERT and TLS_KEY
(a client certificate, for nodes with TLS_VERIFY_PEERS) as the nodes use.
]==]

local RECOVER_WARNING = [==[
WARNING: ckctl recover rewrites the raft configuration of one node's data
directory. Use it only when a majority of the voters is gone for good and
the cluster cannot elect a leader. Entries that only the lost voters stored
are lost (changes the cluster acknowledged may be undone), and if a lost
voter comes back with its old data dir there may be two clusters. Run it
once, on the stopped survivor with the highest raft term and the longest
log (GET /consensus/stats: term, last_log_index), never on a running node.
]==]

M.USAGE = USAGE

local MAX_REDIRECTS = 3

-- ---------------------------------------------------------------------------
-- Formatting (pure)
-- ---------------------------------------------------------------------------

--- Renders rows (lists of strings) under headers as aligned columns.
function M.table(headers, rows)
  local width = {}
  for i, h in ipairs(headers) do width[i] = #h end
  for _, r in ipairs(rows) do
    for i = 1, #headers do
      local s = tostring(r[i] == nil and "" or r[i])
      r[i] = s
      if #s > width[i] then width[i] = #s end
    end
  end
  local lines = {}
  local function line(cells)
    local out = {}
    for i = 1, #headers do
      out[i] = i < #headers and cells[i] .. rep(" ", width[i] - #cells[i]) or cells[i]
    end
    lines[#lines + 1] = concat(out, "  ")
  end
  line(headers)
  for _, r in ipairs(rows) do line(r) end
  return concat(lines, "\n") .. "\n"
end

local function partition_index(id)
  return tonumber(tostring(id):match("(%d+)$")) or 0
end

--- The partitions of a /cluster answer as a list sorted by index.
function M.sorted_partitions(cluster)
  local list = {}
  for _, p in pairs(((cluster or {}).partition_map or {}).partitions or {}) do
    list[#list + 1] = p
  end
  table.sort(list, function(a, b) return partition_index(a.id) < partition_index(b.id) end)
  return list
end

local function owners_of(p)
  local t = {p.primary_node}
  for _, r in ipairs(p.replica_nodes or {}) do t[#t + 1] = r end
  return t
end

--- What changed between two /cluster answers, as lines of text (pure).
-- Node arrivals, departures and status changes; partitions whose primary or
-- replicas changed (with the new epoch); config changes.
function M.diff(old, new)
  local out = {}
  local oc, nc = old and old.cluster or {}, new.cluster or {}
  local before = {}
  for _, n in ipairs(oc.nodes or {}) do before[n.id] = n end
  local now_ids = {}
  for _, n in ipairs(nc.nodes or {}) do
    now_ids[n.id] = true
    local b = before[n.id]
    if not b then
      out[#out + 1] = format("node %s joined (%s, %s)", n.id, n.ip or "?", n.status or "?")
    elseif b.status ~= n.status then
      out[#out + 1] = format("node %s %s -> %s", n.id, b.status or "?", n.status or "?")
    elseif b.ip ~= n.ip or b.raft_addr ~= n.raft_addr then
      out[#out + 1] = format("node %s moved to %s (raft %s)", n.id, n.ip or "?", n.raft_addr or "?")
    end
  end
  for _, n in ipairs(oc.nodes or {}) do
    if not now_ids[n.id] then out[#out + 1] = format("node %s left", n.id) end
  end
  local prev = ((oc.partition_map or {}).partitions) or {}
  for _, p in ipairs(M.sorted_partitions(nc)) do
    local q = prev[p.id]
    local was, is = q and concat(owners_of(q), ",") or "-", concat(owners_of(p), ",")
    if was ~= is then
      out[#out + 1] = format("%s %s -> %s (epoch %s)", p.id, was, is, tostring(p.epoch))
    end
  end
  local ocfg, ncfg = oc.config or {}, nc.config or {}
  for _, k in ipairs({"cluster_name", "partition_count", "replication_factor"}) do
    if old and ocfg[k] ~= ncfg[k] then
      out[#out + 1] = format("config %s %s -> %s", k, tostring(ocfg[k]), tostring(ncfg[k]))
    end
  end
  return out
end

-- ---------------------------------------------------------------------------
-- Talking to a node
-- ---------------------------------------------------------------------------

local Ctl = {}
Ctl.__index = Ctl

local function fail(msg)
  error({ckctl = msg}, 0)
end

-- One request, following NOT_LEADER (307) to the leader. Returns the status
-- and the decoded body (or the raw body when it is not JSON).
function Ctl:call(method, path, body, mutation)
  local token = mutation and self.env.CLUSTER_TOKEN or (self.env.READ_TOKEN or self.env.CLUSTER_TOKEN)
  local headers = {Accept = "application/json"}
  if token and token ~= "" then headers.Authorization = "Bearer " .. token end
  if body ~= nil then
    headers["Content-Type"] = "application/json"
    if type(body) ~= "string" then body = json.encode(body) end -- A string is JSON already.
  end
  local addr = self.addr
  for _ = 0, MAX_REDIRECTS do
    local res, err = self.request {method = method, url = self.scheme .. "://" .. addr .. path, headers = headers,
                                   body = body, timeout = self.timeout}
    if not res then
      fail(format("%s %s: %s", addr, path, tostring(err and err.message or err)))
    end
    local decoded = json.decode(res.body)
    local e = type(decoded) == "table" and type(decoded.error) == "table" and decoded.error or nil
    if res.status == 307 and e and e.code == "NOT_LEADER" and type(e.leader) == "string" and e.leader ~= "" then
      addr = e.leader -- Keep method, path and body: the Location header may lack the path.
    else
      if e then
        local hint = ""
        if res.status == 401 then
          hint = mutation and " (set CLUSTER_TOKEN)" or " (set READ_TOKEN or CLUSTER_TOKEN)"
        end
        fail(format("%s %s: %d %s: %s%s", addr, path, res.status, tostring(e.code), tostring(e.message), hint))
      end
      if res.status >= 400 then
        fail(format("%s %s: HTTP %d", addr, path, res.status))
      end
      return res.status, decoded ~= nil and decoded or res.body, res.body
    end
  end
  fail(format("%s: more than %d NOT_LEADER redirects (is the leader changing?)", path, MAX_REDIRECTS))
end

function Ctl:get(path) return self:call("GET", path) end
function Ctl:post(path, body) return self:call("POST", path, body, true) end

function Ctl:print(s) self.out(s) end

-- Prints a node's JSON answer as it came, one document per line.
function Ctl:print_json(raw)
  self:print((raw:gsub("%s+$", "")) .. "\n")
end

-- Prints the raw JSON answer (--json) or the table that render(v) makes.
function Ctl:show(raw, v, render)
  if self.json then
    self:print_json(raw)
  else
    self:print(render(v))
  end
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end

-- ---------------------------------------------------------------------------
-- Commands
-- ---------------------------------------------------------------------------

local commands = {}

-- Options of the form --name value from args; returns {name = value}.
local function options(args, known)
  local o, i = {}, 1
  while args[i] do
    local name = args[i]:match("^%-%-([%w%-]+)$")
    if not name or not known[name] then fail("unknown argument " .. args[i]) end
    if known[name] == "flag" then
      o[name], i = true, i + 1
    else
      o[name] = args[i + 1] or fail("--" .. name .. " needs a value")
      i = i + 2
    end
  end
  return o
end

-- A JSON value for people: strings and numbers as they are, null as "none".
local function shown(v)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then return tostring(v) end
  return "none"
end

function commands.status(c)
  local _, h, raw = c:get("/health/detailed")
  local _, cl = c:get("/cluster")
  if c.json then return c:print_json(raw) end
  local raft = h.raft or {}
  local by = {}
  for k, n in pairs((h.nodes or {}).by_status or {}) do by[#by + 1] = k .. " " .. n end
  table.sort(by)
  local cfg = (cl.cluster or {}).config or {}
  c:print(format("cluster     %s (%s)\n", shown((cl.cluster or {}).name), shown((cl.cluster or {}).id)))
  c:print(format("health      %s (asked %s)\n", shown(h.status), shown(h.node_id)))
  c:print(format("leader      %s, term %s\n", shown(h.leader), shown(raft.term)))
  c:print(format("state index %s (commit %s, applied %s)\n", shown(h.state_index),
    shown(raft.commit_index), shown(raft.applied_index)))
  c:print(format("nodes       %d: %s\n", (h.nodes or {}).total or 0, concat(by, ", ")))
  c:print(format("voters      %s, standbys %s\n", shown(raft.voters), shown(raft.standbys)))
  c:print(format("partitions  %s, replication factor %s\n", shown(cfg.partition_count),
    shown(cfg.replication_factor)))
end

function commands.members(c)
  local _, cl, raw = c:get("/cluster")
  local _, ld = pcall(function() return select(2, c:get("/consensus/leader")) end)
  local leader = type(ld) == "table" and ld.leader_id or nil
  c:show(raw, cl, function(v)
    local rows = {}
    for _, n in ipairs((v.cluster or {}).nodes or {}) do
      rows[#rows + 1] = {n.id .. (n.id == leader and " *" or ""), n.status, n.zone ~= "" and n.zone or "-",
                         n.ip, n.raft_addr or ""}
    end
    return M.table({"ID", "STATUS", "ZONE", "HTTP", "RAFT"}, rows) .. (leader and "(* leader)\n" or "")
  end)
end

function commands.partitions(c, args)
  local only = options(args, {node = "value"}).node
  local _, cl, raw = c:get("/cluster")
  c:show(raw, cl, function(v)
    local rows = {}
    for _, p in ipairs(M.sorted_partitions(v.cluster)) do
      local role
      if only then
        if p.primary_node == only then role = "primary" end
        for _, r in ipairs(p.replica_nodes or {}) do
          if r == only then role = "replica" end
        end
      end
      if not only or role then
        local row = {p.id, p.primary_node ~= "" and p.primary_node or "-",
                     #(p.replica_nodes or {}) > 0 and concat(p.replica_nodes, ",") or "-", tostring(p.epoch)}
        if only then row[5] = role end
        rows[#rows + 1] = row
      end
    end
    local headers = {"PARTITION", "PRIMARY", "REPLICAS", "EPOCH"}
    if only then headers[5] = "ROLE" end
    return M.table(headers, rows)
  end)
end

function commands.where(c, args)
  local key = args[1] or fail("where needs a KEY")
  local _, v, raw = c:get("/partitions/key?key=" .. urlencode(key))
  c:show(raw, v, function(x)
    local rows = {}
    for _, n in ipairs(x.nodes or {}) do
      rows[#rows + 1] = {n.role, n.id, n.status, n.ip}
    end
    return format("key %s -> %s (epoch %s)\n", key, tostring(x.partition_id), tostring((x.partition or {}).epoch))
      .. M.table({"ROLE", "NODE", "STATUS", "HTTP"}, rows)
  end)
end

function commands.leader(c)
  local _, l, raw = c:get("/consensus/leader")
  c:show(raw, l, function(x)
    return format("%s (http %s, raft %s), term %s\n", tostring(x.leader_id), tostring(x.leader_ip),
      tostring(x.raft_addr), tostring(x.term))
  end)
end

function commands.watch(c, args)
  local o = options(args, {count = "value", ["for"] = "value"})
  local count = o.count and (tonumber(o.count) or fail("--count needs a number"))
  local seconds = o["for"] and (tonumber(o["for"]) or fail("--for needs seconds"))
  local stop_at = seconds and c.now() + seconds
  local _, cur = c:get("/cluster")
  local index = cur.state_index or 0
  if not c.json then
    c:print(format("watching %s from state index %d (Ctrl-C stops)\n", c.addr, index))
  end
  local seen = 0
  -- Bounded by --count / --for; without them it runs until interrupted.
  while not (count and seen >= count) do
    local wait = 30
    if stop_at then
      wait = stop_at - c.now()
      if wait <= 0 then break end
      wait = math.max(0.001, math.min(30, wait))
    end
    -- pcall gives ok, then c:get's status, body, raw (or the error).
    local ok, e, v, raw = pcall(c.get, c, format("/cluster?index=%d&wait=%dms", index, math.ceil(wait * 1000)))
    if not ok then
      -- The node went away: say so and try again (another node may be given).
      c.err("ckctl: " .. tostring(type(e) == "table" and e.ckctl or e) .. "; retrying\n")
      c.sleep(1)
    elseif type(v) == "table" and (v.state_index or 0) > index then
      if c.json then
        c:print_json(raw)
      else
        for _, line in ipairs(M.diff(cur, v)) do
          c:print(format("%s index %d: %s\n", c.clock(), v.state_index, line))
        end
      end
      cur, index, seen = v, v.state_index, seen + 1
    end
  end
end

function commands.leave(c, args)
  local id = args[1] or fail("leave needs a NODE id")
  local _, v, raw = c:post("/leave", {id = id})
  c:show(raw, v, function() return format("%s left the cluster\n", id) end)
end

function commands.rebalance(c, args)
  if args[1] == "--plan" then
    local _, plan, raw = c:get("/rebalance/plan")
    return c:show(raw, plan, function(p)
      local rows = {}
      for _, m in ipairs(p.moves or {}) do
        rows[#rows + 1] = {m.partition or m.id or "?", concat(m.from or {}, ","), concat(m.to or {}, ",")}
      end
      return format("%d moves, %s slots, %s primaries would change\n", #(p.moves or {}),
        tostring(p.moved_slots), tostring(p.moved_primaries)) .. (#rows > 0 and M.table({"PARTITION", "FROM", "TO"},
        rows) or "")
    end)
  elseif args[1] then
    fail("rebalance: unknown argument " .. args[1])
  end
  local _, v, raw = c:post("/rebalance")
  c:show(raw, v, function(x)
    return format("rebalanced: %s\n", json.encode(x))
  end)
end

local function flag(action)
  return function(c)
    local _, v, raw = c:post("/rebalance/" .. action)
    c:show(raw, v, function()
      return action == "pause" and "rebalancing paused (maintenance mode)\n" or "rebalancing resumed\n"
    end)
  end
end
commands.pause, commands.resume = flag("pause"), flag("resume")

function commands.snapshot(c, args)
  local action, file = args[1], args[2]
  if action ~= "save" and action ~= "restore" then fail("snapshot needs save FILE or restore FILE") end
  if not file then fail("snapshot " .. action .. " needs a FILE") end
  if action == "save" then
    local o = options({unpack(args, 3)}, {stale = "flag"})
    local _, snap, raw = c:get(o.stale and "/snapshot?stale=1" or "/snapshot")
    if type(snap) ~= "table" or snap.format ~= "clusterkit-snapshot" then
      fail("the node did not answer with a snapshot")
    end
    local ok, err = c.write_file(file, raw)
    if not ok then fail(format("writing %s: %s", file, tostring(err))) end
    return c:show(raw, snap, function(x)
      local keys = type(x.kv) == "table" and type(x.kv.entries) == "table" and #x.kv.entries or 0
      return format("saved the state at index %s (%d partitions, %d nodes, %d keys) to %s\n",
        shown(x.state_index), #(x.partitions or {}), #(x.nodes or {}), keys, file)
    end)
  end
  if args[3] then fail("unknown argument " .. args[3]) end
  local text, rerr = c.read_file(file)
  if not text then fail(format("reading %s: %s", file, tostring(rerr))) end
  local snap = json.decode(text)
  if type(snap) ~= "table" or snap.format ~= "clusterkit-snapshot" then
    fail(file .. " is not a clusterkit snapshot (made by ckctl snapshot save)")
  end
  local _, out, raw = c:post("/snapshot/restore", text)
  c:show(raw, out, function(x)
    local missing = x.missing or {}
    local left_out = #missing > 0 and format("not members here, left out: %s (placement fills "
      .. "their slots unless rebalancing is paused)\n", concat(missing, ", ")) or ""
    return format("restored %s: %s partitions committed at state index %s, %s keys\n", file,
      shown(x.partitions), shown(x.state_index), shown(x.keys or 0)) .. left_out
  end)
end

function commands.recover(c, args)
  local o = options(args, {["data-dir"] = "value", ["node-id"] = "value", voters = "value", yes = "flag"})
  local dir = o["data-dir"] or c.env.DATA_DIR or fail("recover needs --data-dir DIR (the stopped node's DATA_DIR)")
  local id = o["node-id"] or c.env.NODE_ID or fail("recover needs --node-id ID (the node that owns the data dir)")
  c.err(RECOVER_WARNING)
  local text, rerr = c.read_file(dir .. "/cluster-state.json")
  if not text then
    fail(format("%s/cluster-state.json: %s (is %s a clusterkit DATA_DIR?)", dir, tostring(rerr), dir))
  end
  local st = json.decode(text)
  local nodes = type(st) == "table" and type(st.cluster) == "table" and st.cluster.nodes
  if type(nodes) ~= "table" then fail(dir .. "/cluster-state.json is not a clusterkit state") end
  local by_id = {}
  for _, n in ipairs(nodes) do by_id[n.id] = n end
  local me = by_id[id] or fail(format("%s is not a member in %s/cluster-state.json", id, dir))
  local wanted = {id}
  if o.voters then
    wanted = {}
    for v in o.voters:gmatch("[^,]+") do wanted[#wanted + 1] = v end
    local has_me = false
    for _, v in ipairs(wanted) do has_me = has_me or v == id end
    if not has_me then fail("--voters must include " .. id .. " (the node whose data dir is recovered)") end
  end
  local voters = {}
  for _, v in ipairs(wanted) do
    local n = by_id[v] or fail(format("voter %s is not a member in %s/cluster-state.json", v, dir))
    if not n.raft_addr or n.raft_addr == "" then fail("voter " .. v .. " has no raft address in the state") end
    voters[#voters + 1] = {node_id = v, raft_addr = n.raft_addr}
  end
  -- Never under a running node: its raft would overwrite what we write.
  if me.ip and me.ip ~= "" then
    local res = c.request {method = "GET", url = c.scheme .. "://" .. me.ip .. "/health", timeout = 2}
    if res then
      fail(format("%s answers on %s: stop it first (recover works on a stopped node's data dir)", id, me.ip))
    end
  end
  if not o.yes then
    fail("nothing done; re-run with --yes once you have read the warning above")
  end
  local ok, err = c.raft_recover {dir = dir .. "/raft", node_id = id, raft_addr = me.raft_addr, voters = voters}
  if not ok then fail(tostring(err)) end
  local names = {}
  for _, v in ipairs(voters) do names[#names + 1] = v.node_id end
  c:print(format("recovered %s: the raft configuration is now %s (voters)\n", dir, concat(names, ", ")))
  c:print(format("next: start %s again with the same DATA_DIR; it leads once %s of these voters run.\n", id,
    tostring(math.floor(#voters / 2) + 1)))
  c:print("then, for every other surviving node not in that list: stop it, empty its DATA_DIR and start it\n"
    .. format("with JOIN_ADDR=%s; remove the lost nodes with `ckctl leave NODE`.\n", tostring(me.ip)))
end

-- ---------------------------------------------------------------------------
-- Entry points
-- ---------------------------------------------------------------------------

--- Runs ckctl with argv (a list) in ctx = {request, out, err, env, now,
-- sleep, clock}; returns the exit code.
function M.main(argv, ctx)
  local c = setmetatable({request = ctx.request, out = ctx.out, err = ctx.err, env = ctx.env or {},
                          now = ctx.now, sleep = ctx.sleep, clock = ctx.clock or function() return "" end,
                          read_file = ctx.read_file, write_file = ctx.write_file,
                          raft_recover = ctx.raft_recover,
                          timeout = 10, json = false}, Ctl)
  -- HTTPS when the address says so or a CA for the nodes' certificates is given.
  c.scheme = ((c.env.TLS_CA or "") ~= "" or (c.env.TLS_CERT or "") ~= "") and "https" or "http"
  local function set_addr(v)
    local scheme, rest = v:match("^(https?)://(.*)$")
    if scheme then c.scheme, v = scheme, rest end
    c.addr = v:gsub("/$", "")
  end
  set_addr(c.env.CK_ADDR ~= nil and c.env.CK_ADDR ~= "" and c.env.CK_ADDR or "127.0.0.1:8080")
  local i, cmd, args = 1, nil, {}
  while i <= #argv do
    local a = argv[i]
    if cmd then
      args[#args + 1] = a
      i = i + 1
    elseif a == "-h" or a == "--help" or a == "help" then
      c.out(USAGE)
      return 0
    elseif a == "--json" then
      c.json, i = true, i + 1
    elseif a == "--addr" or a == "--timeout" then
      local v = argv[i + 1]
      if not v then
        c.err("ckctl: " .. a .. " needs a value\n" .. USAGE)
        return 2
      end
      if a == "--addr" then
        set_addr(v)
      else
        c.timeout = tonumber(v)
        if not c.timeout or c.timeout <= 0 then
          c.err("ckctl: --timeout needs a positive number of seconds\n")
          return 2
        end
      end
      i = i + 2
    elseif a:sub(1, 1) == "-" then
      c.err("ckctl: unknown option " .. a .. "\n" .. USAGE)
      return 2
    else
      cmd, i = a, i + 1
    end
  end
  if not cmd then
    c.err(USAGE)
    return 2
  end
  local fn = commands[cmd]
  if not fn then
    c.err("ckctl: unknown command " .. cmd .. " (ckctl --help lists them)\n")
    return 2
  end
  local ok, e = pcall(fn, c, args)
  if not ok then
    if type(e) == "table" and e.ckctl then
      c.err("ckctl: " .. e.ckctl .. "\n")
      return 1
    end
    c.err("ckctl: internal error: " .. tostring(e) .. "\n")
    return 1
  end
  return 0
end

--- The real world: clusterkit's HTTP client on the loop, stdout, stderr,
-- the process environment.
function M.run(argv)
  local http = require "clusterkit.httpc"
  local core = require "clusterkit.core"
  local sched = require "clusterkit.sched"
  local env = {}
  for _, k in ipairs({"CK_ADDR", "CLUSTER_TOKEN", "READ_TOKEN", "NODE_ID", "DATA_DIR", "TLS_CA", "TLS_CERT",
                      "TLS_KEY"}) do
    env[k] = os.getenv(k)
  end
  local request = http.request
  if (env.TLS_CA or "") ~= "" or (env.TLS_CERT or "") ~= "" then
    local tls, msg = core.tls_context {ca = env.TLS_CA ~= "" and env.TLS_CA or nil,
                                       cert = env.TLS_CERT ~= "" and env.TLS_CERT or nil,
                                       key = env.TLS_KEY ~= "" and env.TLS_KEY or nil, role = "client"}
    if not tls then
      io.stderr:write("ckctl: ", msg, "\n")
      return 2
    end
    request = function(o)
      o.tls = tls
      return http.request(o)
    end
  end
  local code = M.main(argv, {
    request = request, env = env,
    out = function(s) io.stdout:write(s); io.stdout:flush() end,
    err = function(s) io.stderr:write(s) end,
    now = function() return core.hrtime() / 1e9 end,
    sleep = function(s) sched.sleep(s) end,
    clock = function() return os.date("!%H:%M:%S") end,
    read_file = function(path)
      local f, err = io.open(path, "rb")
      if not f then return nil, err end
      local text = f:read("*a")
      f:close()
      return text
    end,
    write_file = function(path, text)
      local f, err = io.open(path, "wb")
      if not f then return nil, err end
      local ok, werr = f:write(text)
      local closed, cerr = f:close()
      if not ok or not closed then return nil, werr or cerr end
      return true
    end,
    raft_recover = core.raft_recover,
  })
  http.close_idle()
  return code
end

return M
