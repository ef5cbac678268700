# clusterkit: a thin wrapper around CMake and CTest.
#
#   make demo    install what is missing, build, run a local cluster from examples/
#   make test    install what is missing, build, run the whole suite (CTest)
#   make test-deploy   examples/deploy's image under podman, a 3-node cluster (root)
#   make test-faults   the fault-injection suite (root: namespaces, iptables);
#                FAULT_SCENARIO=a,b FAULT_SEED=N to rerun, FAULT_MINUTES=60 for a long random run
#   make test-rock     the LuaRocks package: luarocks make into a temporary tree, then use it
#   make test-upgrade  a rolling upgrade of a 3-node cluster from v0.1.0 (c24f3d8, built first) to this build
#   make rock ROCK_URL=git+https://... ROCK_TAG=vX.Y.Z   the release rockspec and source rock
#
# Dependencies come from Debian's archive only. LuaJIT may be the upstream
# flavour (libluajit-5.1-dev + luajit) or OpenResty's (libluajit2-5.1-dev +
# luajit2): both provide pkg-config `luajit`, and they conflict, so whichever
# is installed is kept; on a machine with neither, the upstream one is added.

BUILD     ?= build
ASAN_BUILD?= build-asan
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages needed to build and test (LuaJIT handled separately).
PACKAGES := build-essential cmake pkg-config libuv1-dev libraft-dev libssl-dev node-llhttp \
            lua-cjson-dev lua-cjson libcmocka-dev lua-busted lua-check luarocks git python3 python3-pytest openssl \
            clang-format \
            clang libclang-rt-14-dev iptables iproute2 chromium chromium-driver

# The peers the benchmarks run beside clusterkit in the same run (make bench).
BENCH_PACKAGES := wrk nginx-light etcd-server

# make test-deploy: Debian's container engine (runc: the fallback runtime on
# cgroup-v1 hosts, see tests/deploy/run.sh) and the base-image builder.
DEPLOY_PACKAGES := podman runc debootstrap curl

.PHONY: all deps bench-deps deploy-deps build demo test test-faults test-asan test-openresty test-deploy test-rock test-upgrade rock bench lint format clean

all: build

# Shell fragments: collect the packages of $(1) that are not installed into
# $$missing; install whatever $$missing holds (after apt-get update).
find_missing = missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done
install_missing = if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps:
	@$(call find_missing,$(PACKAGES)); \
	if ! pkg-config --exists luajit 2>/dev/null; then missing="$$missing libluajit-5.1-dev"; fi; \
	if ! command -v luajit >/dev/null 2>&1; then \
	  if dpkg-query -W -f='$${Status}' libluajit2-5.1-dev 2>/dev/null | grep -q "install ok installed"; \
	  then missing="$$missing luajit2"; else missing="$$missing luajit"; fi; \
	fi; \
	$(install_missing)

bench-deps:
	@$(call find_missing,$(BENCH_PACKAGES)); $(install_missing)

deploy-deps:
	@$(call find_missing,$(DEPLOY_PACKAGES)); $(install_missing)

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	$(BUILD)/ckrun examples/demo.lua

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

# The fault-injection suite (tests/faults/run.py): nodes in their own network
# namespaces, faults as iptables rules and signals, checkers over the
# recorded history. Needs root. The checker's own unit tests run first.
FAULT_SCENARIO ?=
FAULT_SEED     ?=
FAULT_MINUTES  ?=
test-faults: build
	python3 -m unittest -q tests/faults/test_linearizability.py tests/faults/test_checks.py
	CK_BUILD_DIR=$(abspath $(BUILD)) FAULT_SCENARIO=$(FAULT_SCENARIO) FAULT_SEED=$(FAULT_SEED) \
	  FAULT_MINUTES=$(FAULT_MINUTES) python3 tests/faults/run.py

# The suite under AddressSanitizer + UndefinedBehaviorSanitizer: C unit
# tests, the Lua API tests (core.so instrumented, the sanitizer runtimes
# preloaded into luajit) and the process-level tests (ckrun instrumented).
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCK_SANITIZE=ON $(CMAKE_ARGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j$(JOBS) -L 'unit|lua|cluster'

# The suite built against OpenResty's LuaJIT (unpacked next to the installed
# upstream one; the two Debian -dev packages conflict), then resty.clusterkit
# and examples/openresty in Debian's nginx with libnginx-mod-http-lua
# (unpacked the same way: it needs OpenResty's LuaJIT).
test-openresty: deps
	tests/flavours/openresty.sh .

# examples/deploy's Dockerfile built and run as a 3-node cluster under
# rootful podman (host network, loopback ports), from a base image made with
# debootstrap (tests/deploy/run.sh). Needs root; CI runs it when
# CK_TEST_DEPLOY=1 is set.
test-deploy: deploy-deps
	tests/deploy/run.sh

# The rolling upgrade (tests/upgrade/test_upgrade.py) from the landed
# release v0.1.0. Its commit is named here, not its tag: a clone may lack
# tags. Its tree comes from this repository's history (git archive) and is
# built once into $(BUILD)/upgrade-<commit>; only ckrun is needed.
UPGRADE_FROM ?= c24f3d8d0072dc2923333d9f6c41c11aca6cea9d
UPGRADE_DIR  := $(abspath $(BUILD))/upgrade-$(UPGRADE_FROM)
test-upgrade: build
	@git cat-file -e $(UPGRADE_FROM)^{commit} 2>/dev/null || { echo "test-upgrade: commit $(UPGRADE_FROM)" \
	  "(v0.1.0) is not in this clone's history: fetch it (git fetch --unshallow) and run again" >&2; exit 2; }
	@if [ ! -x $(UPGRADE_DIR)/build/ckrun ]; then \
	  rm -rf $(UPGRADE_DIR) && mkdir -p $(UPGRADE_DIR)/src && \
	  git archive $(UPGRADE_FROM) | tar -x -C $(UPGRADE_DIR)/src && \
	  cmake -S $(UPGRADE_DIR)/src -B $(UPGRADE_DIR)/build -DCMAKE_BUILD_TYPE=Release >/dev/null && \
	  cmake --build $(UPGRADE_DIR)/build -j$(JOBS) --target ckrun >/dev/null; fi
	cd tests/upgrade && CK_OLD_CKRUN=$(UPGRADE_DIR)/build/ckrun CK_BUILD_DIR=$(abspath $(BUILD)) \
	  CK_SOURCE_DIR=$(CURDIR) pytest-3 -q -p no:cacheprovider test_upgrade.py

# The rock (tests/rock/run.sh): `luarocks make` from this checkout into a
# temporary tree must leave the checkout's git status as it was; the tree's
# ckrun, ckctl and module then run a one-node cluster, and a release rock for
# a throwaway tag (in a temporary clone) installs from its source rock.
# Offline: Debian's lua-cjson is declared provided to LuaRocks.
test-rock: deps
	tests/rock/run.sh .

# The release rockspec and source rock for a tag that exists at ROCK_URL
# (rocks/release.sh); nothing is tagged or pushed. The project has no public
# repository yet, so there is no default URL.
ROCK_URL ?=
ROCK_TAG ?=
ROCK_OUT ?= $(BUILD)/rock
rock:
	@if [ -z "$(ROCK_URL)" ] || [ -z "$(ROCK_TAG)" ]; then \
	  echo "usage: make rock ROCK_URL=git+https://<published repository>.git ROCK_TAG=vX.Y.Z [ROCK_OUT=dir]"; exit 2; fi
	rocks/release.sh "$(ROCK_URL)" "$(ROCK_TAG)" "$(ROCK_OUT)"

bench: build bench-deps
	tests/bench/run.sh $(BUILD)

# The C sources against the committed .clang-format (Debian 12's
# clang-format 14), and luacheck on every Lua file. `make format` rewrites the
# C sources in place.
C_FORMAT_FILES = $(wildcard runtime/*.c runtime/*.h tests/unit/*.c tests/bench/*.c tests/fuzz/*.c)

lint: deps
	luacheck lua tests examples
	clang-format --dry-run --Werror $(C_FORMAT_FILES)
	@echo "lint: luacheck and clang-format clean ($(words $(C_FORMAT_FILES)) C files)"

format: deps
	clang-format -i $(C_FORMAT_FILES)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
