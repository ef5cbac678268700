-- luacheck configuration: `make lint` (luacheck lua tests examples).
std = "luajit"
max_line_length = 120
-- Unused arguments are part of callback signatures (req, res, info, self).
unused_args = false
files["tests/lua/**/*_spec.lua"] = {std = "+busted"}
files["tests/bench/wrk_*.lua"] = {globals = {"wrk", "request", "response", "init", "setup", "done", "delay"}}
exclude_files = {"build/**", "build-*/**"}
