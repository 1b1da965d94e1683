//! Nothing but tests: see `tests/core.rs`, which `make test-wasm` runs under Node's V8.
