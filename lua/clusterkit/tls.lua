--- A node's TLS contexts, made from its TLS_* options (clusterkit.config):
-- one for what it serves (HTTPS, incoming raft connections) and one for
-- what it dials (node-to-node HTTP, outgoing raft connections).
--
--   tls_cert, tls_key  the node's certificate and key (PEM); both, and TLS
--                      is on for HTTP and raft alike
--   tls_ca             the CA that signs the cluster's certificates: what
--                      the node checks the servers it dials against (the
--                      system's store when unset) and, with
--   tls_verify_peers   what a client of this node must present a
--                      certificate from (mutual TLS, for HTTP and raft)
--
-- The same certificate serves as the client certificate when dialling, so
-- one certificate per node (serverAuth and clientAuth) is enough. Made
-- anew on SIGHUP (Node:reload_tls); a reload that fails keeps the old ones.
local core = require "clusterkit.core"

local M = {}

--- {server = ctx, client = ctx, info = {serial, not_after}} for options
-- `o`, nil when TLS is off, or nil, msg (the message names the option's
-- file and what is wrong with it: missing, expired, key mismatch...).
function M.contexts(o)
  if not o.tls_cert then return nil end
  local server, err = core.tls_context {
    cert = o.tls_cert, key = o.tls_key, ca = o.tls_ca, verify_peers = o.tls_verify_peers, role = "server",
  }
  if not server then return nil, err end
  local client
  client, err = core.tls_context {cert = o.tls_cert, key = o.tls_key, ca = o.tls_ca, role = "client"}
  if not client then return nil, err end
  local info = server:info()
  return {server = server, client = client, info = {serial = info.serial, not_after = info.not_after}}
end

return M
