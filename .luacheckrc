-- luacheck configuration: `make lint` (luacheck lua tests examples).
std = "luajit"
max_line_length = 120
-- Unused arguments are part of callback signatures (req, res, info, self).
unused_args = false
files["tests/lua/**/*_spec.lua"] = {std = "+busted"}
-- wrk scripts talk to wrk through globals (request, response, setup, ...).
files["tests/bench/wrk_*.lua"] = {ignore = {"1"}}
exclude_files = {"build/**", "build-*/**"}
-- Code that runs inside nginx (resty.clusterkit, examples/openresty).
files["lua/resty/**"] = {std = "+ngx_lua"}
files["examples/openresty/**"] = {std = "+ngx_lua"}
