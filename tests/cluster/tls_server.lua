-- A bare HTTPS server on the C core (core.http_server + core.tls_context),
-- driven by test_tls.py: prints "port N" on stdout once listening, answers
-- every request with JSON naming the path, reloads its certificate from
-- TLS_CERT/TLS_KEY on SIGHUP (printing "reloaded SERIAL" or "reload failed:
-- MSG"), and exits on SIGTERM. TLS_OFF=1 serves plain HTTP from the same
-- process shape (tests/bench/https_bench.sh compares the two).
local core = require "clusterkit.core"

local function context()
  return core.tls_context {
    cert = os.getenv("TLS_CERT"), key = os.getenv("TLS_KEY"), ca = os.getenv("TLS_CA"),
    verify_peers = os.getenv("TLS_VERIFY_PEERS") == "true",
  }
end

local ctx, err = context()
if not ctx then
  io.stderr:write("tls_server: ", err, "\n")
  os.exit(2)
end
local srv = core.http_server({}, function(req, _, path)
  req:respond(200, {["Content-Type"] = "application/json"}, '{"path":"' .. path .. '"}')
end)
if os.getenv("TLS_OFF") ~= "1" then
  assert(srv:set_tls(ctx))
end
local port = assert(srv:listen("127.0.0.1", 0))
io.stdout:write("port ", port, " serial ", ctx:info().serial, "\n")
io.stdout:flush()

local hup, term
hup = core.signal(1, function()
  local new, msg = context()
  if new then
    srv:set_tls(new)
    io.stdout:write("reloaded ", new:info().serial, "\n")
  else
    io.stdout:write("reload failed: ", msg, "\n")
  end
  io.stdout:flush()
end)
term = core.signal(15, function()
  local st = srv:stats()
  io.stdout:write("stats handshakes ", st.tls_handshakes, " failures ", st.tls_failures,
                  " last ", st.tls_last_error, "\n")
  io.stdout:flush()
  hup:close()
  term:close()
  srv:close()
end)
core.run("default")
