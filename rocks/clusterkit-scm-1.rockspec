-- LuaRocks package for clusterkit: the Lua modules (clusterkit.*,
-- resty.clusterkit), clusterkit/core.so and the ckrun and ckctl programs,
-- built with CMake against LuaJIT (pkg-config luajit). From a checkout, on
-- Debian (node-llhttp keeps llhttp's header and C sources under /usr/share):
--
--   luarocks --lua-version=5.1 make rocks/clusterkit-scm-1.rockspec \
--     LUA_INCDIR=/usr/include/luajit-2.1 LLHTTP_INCDIR=/usr/share/include/llhttp
--
-- The build runs in a temporary directory (rocks/build.sh), so `luarocks
-- make` leaves no file in the checkout. tests/rock/run.sh (make test-rock)
-- installs it into a temporary tree and uses it; rocks/release.sh writes the
-- release rockspec (a version, the repository's URL and a tag) from this one.
rockspec_format = "3.0"
package = "clusterkit"
version = "scm-1"
source = {
  -- Not a real address: the project has no public repository yet. `luarocks
  -- make` builds the checkout and never reads this; `luarocks build` of this
  -- rockspec fails here until the published URL replaces it. A release
  -- rockspec gets the real URL and a tag from rocks/release.sh.
  url = "git+https://example.invalid/clusterkit.git",
  branch = "main",
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
-- lua-cjson: Debian's lua-cjson package provides it without LuaRocks knowing;
-- say so in the LuaRocks configuration (rocks_provided, see README) rather
-- than have LuaRocks build a second copy.
dependencies = {
  "lua ~> 5.1",
  "lua-cjson >= 2.1.0",
}
external_dependencies = {
  LIBUV = { header = "uv.h", library = "uv" },
  RAFT = { header = "raft.h", library = "raft" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  -- llhttp is compiled from its C sources (its strict mode is a compile-time
  -- switch), so only the header is looked for, and CMake finds the sources
  -- beside it: ../../llhttp in Debian's layout (LLHTTP_INCDIR=
  -- /usr/share/include/llhttp), src/ in an unpacked llhttp release
  -- (LLHTTP_DIR=its root), or LLHTTP_SRCDIR in the environment.
  LLHTTP = { header = "llhttp.h" },
}
supported_platforms = { "linux" }
build = {
  -- Not type "cmake": LuaRocks' cmake backend always builds in
  -- ./build.luarocks, inside the checkout. build.sh configures, builds and
  -- installs in one command, because its build tree lives only as long as
  -- that command; the first argument tells it whether LuaRocks is installing
  -- (it has made the rock's bin directory) or was given --no-install.
  type = "command",
  build_command = [[sh rocks/build.sh "$(BINDIR)" \
    -DCMAKE_INSTALL_PREFIX="$(PREFIX)" \
    -DCK_INSTALL_BINDIR="$(BINDIR)" \
    -DCK_INSTALL_LUADIR="$(LUADIR)" \
    -DCK_INSTALL_LIBDIR="$(LIBDIR)" \
    -DLIBUV_INCDIR="$(LIBUV_INCDIR)" -DLIBUV_LIBDIR="$(LIBUV_LIBDIR)" \
    -DRAFT_INCDIR="$(RAFT_INCDIR)" -DRAFT_LIBDIR="$(RAFT_LIBDIR)" \
    -DOPENSSL_INCDIR="$(OPENSSL_INCDIR)" -DOPENSSL_LIBDIR="$(OPENSSL_LIBDIR)" \
    -DLLHTTP_DIR="$(LLHTTP_DIR)" -DLLHTTP_INCDIR="$(LLHTTP_INCDIR)"]],
}
