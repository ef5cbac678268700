#!/bin/sh
# The rockspec's build command: configures, builds and installs clusterkit
# with CMake in a temporary directory, removed on exit, so that `luarocks
# make` leaves no file in the checkout.
#
#   sh rocks/build.sh BINDIR [CMake -D options...]
#
# LuaRocks runs build_command and install_command in separate shells, and the
# build tree lives only as long as this one, so the install happens here too,
# into the rock's directories (the -D options). LuaRocks makes BINDIR before
# building unless it was given --no-install: without it, this only builds.
# CK_CMAKE_ARGS (environment) adds CMake options, e.g. -DCK_EMBED_CJSON=OFF.
set -eu
bindir=$1
shift
build=$(mktemp -d "${TMPDIR:-/tmp}/clusterkit-rock.XXXXXX")
trap 'rm -rf "$build"' EXIT
trap 'exit 1' HUP INT TERM
# shellcheck disable=SC2086 # CK_CMAKE_ARGS is a list of options
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCK_TESTS=OFF "$@" ${CK_CMAKE_ARGS:-}
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)"
if [ -d "$bindir" ]; then
  cmake --install "$build"
else
  echo "rocks/build.sh: $bindir does not exist (luarocks --no-install): built, not installed"
fi
