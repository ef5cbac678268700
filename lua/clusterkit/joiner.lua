--- Joining a cluster: asks a member to admit this node, follows redirects
-- to the leader, and retries with backoff until admitted, refused, or the
-- node stops. Owns its state (whether a join runs, why the last attempt
-- failed, the refusal) and reaches the network only through `deps`, so that
-- tests/lua/joiner_spec.lua drives it with a fake transport and clock:
--
--   request  fn(target, body) -> res ({status, body}) | nil, err: one POST
--            /join to `target` (host:port)
--   body     fn() -> the join request's body
--   join_addr  where to ask (JOIN_ADDR; nil: the `via` of run)
--   clock    {now = fn() -> monotonic seconds}
--   sleep    fn(seconds) (yields)
--   running  fn() -> false once the node stops (ends the loop)
--   decode   fn(s) -> a JSON value or nil
--   done     fn(err): called once it ends (err: the refusal, or nil)
--   log      logger
--   opts     election_timeout (seconds)
local errors = require "clusterkit.errors"

local M = {}

local format, type, tostring = string.format, type, tostring

local Joiner = {}
Joiner.__index = Joiner
M.Joiner = Joiner

function M.new(deps)
  local self = setmetatable({}, Joiner)
  for k, v in pairs(deps) do self[k] = v end
  self.done = self.done or function() end
  -- active: a join runs; error: the refusal that ended it; cause: why the
  -- last attempt failed (start's TIMEOUT names it).
  self.active, self.error, self.cause = false, nil, nil
  return self
end

-- A short, printable excerpt of a foreign answer's body.
local function excerpt(s)
  s = tostring(s or ""):gsub("[%c]+", " ")
  return #s > 80 and s:sub(1, 80) .. "..." or s
end

--- Why one join attempt failed: a cause (warned about once per cause and
-- target) and a sentence for the operator. `e` is the answer's clusterkit
-- error object (empty when there is none).
function M.failure(target, res, err, body, e)
  if not res then
    local m = tostring(err and err.message or err)
    if m:find("TLS", 1, true) then
      return "tls", format("TLS with %s failed (%s): do this node's TLS_CERT and the cluster's TLS_CA come "
        .. "from the same CA, and is JOIN_ADDR an https node?", target, m)
    elseif m:find("refused", 1, true) then
      return "refused", format("nothing accepts connections at %s (connection refused): is the node "
        .. "there running, and is this its HTTP address?", target)
    elseif err and err.code == "TIMEOUT" then
      return "timeout", format("%s did not answer in time (%s)", target, m)
    elseif err and (err.code == "CLOSED" or err.code == "PROTOCOL") then
      return "foreign", format("%s gave no HTTP answer (%s): is it a clusterkit node's HTTP address, "
        .. "not its raft port or another service?", target, m)
    end
    return "unreachable", format("cannot reach %s: %s", target, m)
  end
  if e.code == "JOIN_SELF" then
    return "self", format("%s is this node itself, which is not a member yet: JOIN_ADDR must reach a "
      .. "member of the cluster", target)
  end
  if type(body) ~= "table" or (res.status ~= 200 and type(e.code) ~= "string") or res.status == 200 then
    return "foreign", format("%s answered HTTP %d with something that is not clusterkit's (%s): is it a "
      .. "clusterkit node's HTTP address?", target, res.status, excerpt(res.body))
  end
  return "answer " .. tostring(e.code), format("%s answered %d %s: %s", target, res.status, tostring(e.code),
    tostring(e.message))
end

--- Runs the join through join_addr, or `via` (the peer a node whose raft
-- address moved rejoins through). Yields; returns true once admitted, nil,
-- err when refused, nothing when the node stopped first. Each distinct cause of a
-- failed attempt (nothing listening, a foreign answer, this node's own
-- address) is logged once at WARN. `readdress`: the node's raft address
-- changed under its data dir; the leader re-admits it once raft stops
-- hearing the old address (within an election timeout or two), so a
-- conflict is retried for a while.
function Joiner:run(readdress, via)
  local start = self.join_addr or via
  local target = start
  local delay = 0.05
  local warned = {}
  local conflict_until = readdress and self.clock.now() + 10 or 0
  self.active = true
  while self.running() do
    local res, err = self.request(target, self.body())
    local body = res and self.decode(res.body)
    local e = type(body) == "table" and type(body.error) == "table" and body.error or {}
    if res and res.status == 200 and type(body) == "table" and body.status == "ok" then
      self.log:info("admitted by %s", target)
      self.active, self.cause = false, nil
      self.done(nil)
      return true
    end
    if res and (res.status == 307 or e.code == "NOT_LEADER") and type(e.leader) == "string" then
      target = e.leader
      delay = 0.05
    elseif res and res.status == 409 and e.code ~= "CONFIG_MISMATCH" and self.clock.now() < conflict_until then
      self.log:debug("join via %s: %s; retrying until raft lets go of the old address", target, res.body)
      self.sleep(self.opts.election_timeout)
    elseif res and type(e.code) == "string" and (res.status == 409 or res.status == 401 or res.status == 400) then
      self.error = errors.new(e.code, tostring(e.message or res.body))
      self.log:error("join refused by %s: %s", target, tostring(self.error))
      self.active = false
      self.done(self.error)
      return nil, self.error
    else
      local cause, why = M.failure(target, res, err, body, e)
      self.cause = why
      -- Network trouble and foreign answers are what an operator must see;
      -- clusterkit's own "not now" answers (no leader yet) are routine.
      if not warned[cause .. " " .. target] and not cause:find("^answer ") then
        warned[cause .. " " .. target] = true
        self.log:warn("join via %s failed: %s; retrying", target, why)
      else
        self.log:debug("join via %s failed: %s; retrying", target, why)
      end
      target = start
      self.sleep(delay)
      delay = math.min(delay * 2, 1)
    end
  end
  self.active = false
  self.done(nil)
end

return M
