-- LuaRocks package for clusterkit: the Lua module (clusterkit, clusterkit.core)
-- and the ckrun runtime, built with CMake against LuaJIT (pkg-config luajit).
--
--   luarocks --lua-version=5.1 make rocks/clusterkit-scm-1.rockspec LUA_INCDIR=/usr/include/luajit-2.1
rockspec_format = "3.0"
package = "clusterkit"
version = "scm-1"
source = {
  url = "git+file:///clusterkit",
}
description = {
  summary = "Cluster coordination for LuaJIT: membership, partitions, Raft leader election",
  detailed = [[
clusterkit tells an application that spreads data over many machines which
nodes are in the cluster, which partition a key belongs to, which nodes own it,
who leads and what changed. A C core runs Raft (canonical raft) and the
partition table on a libuv loop; placement policies, hooks and HTTP handlers
are Lua.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.2",
}
supported_platforms = {"linux"}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CK_TESTS = "OFF",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    CK_INSTALL_BINDIR = "$(BINDIR)",
    CK_INSTALL_LUADIR = "$(LUADIR)",
    CK_INSTALL_LIBDIR = "$(LIBDIR)",
  },
}
