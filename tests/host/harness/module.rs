//! The engine, the compiled filter and its linked imports, made once per test binary.
//!
//! Compiling the filter (several MB of wasm) takes far longer than running a test, so the
//! compiled code is also kept on disk under the build's temporary directory, keyed by the
//! module file (path, size, modification time) and the engine's compatibility hash: every
//! test binary after the first, and every run until the filter is rebuilt, loads it instead.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wasmtime::{Config, Engine, InstancePre, Linker, Module, OptLevel};

use super::imports;
pub use super::imports::func_type;
use super::state::HostState;

pub struct Loaded {
    pub engine: Engine,
    pub module: Module,
    pub pre: InstancePre<HostState>,
    /// Host functions with real behaviour (the others trap when called).
    pub implemented: HashSet<&'static str>,
    pub path: PathBuf,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The built `tokenmeter.wasm`, as Envoy loads it.
pub fn wasm_path() -> PathBuf {
    tokenmeter_testkit::envoy::wasm_path()
}

pub fn loaded() -> &'static Loaded {
    LOADED.get_or_init(|| {
        let engine = engine();
        let path = wasm_path();
        let module = compile(&engine, &path);
        link(engine, module, path)
    })
}

fn engine() -> Engine {
    let mut config = Config::new();
    config.cranelift_opt_level(OptLevel::Speed);
    Engine::new(&config).expect("wasmtime engine")
}

fn link(engine: Engine, module: Module, path: PathBuf) -> Loaded {
    let mut linker = Linker::new(&engine);
    let implemented = imports::define(&mut linker).expect("host functions");
    let pre = linker.instantiate_pre(&module).unwrap_or_else(|e| {
        panic!(
            "{} cannot be linked against the test host: {e:#}",
            path.display()
        )
    });
    Loaded {
        engine,
        module,
        pre,
        implemented,
        path,
    }
}

/// Another guest, from its bytes (for tests of the host itself).
pub fn from_bytes(name: &str, bytes: &[u8]) -> Loaded {
    let engine = engine();
    let module = Module::new(&engine, bytes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    link(engine, module, PathBuf::from(name))
}

fn compile(engine: &Engine, path: &Path) -> Module {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (build it with `make wasm`)",
            path.display()
        )
    });
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    // The module's path, size and modification time name it: every build rewrites it.
    // (A digest of several MB costs a noticeable part of a second in a debug build.)
    path.hash(&mut h);
    bytes.len().hash(&mut h);
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .hash(&mut h);
    let key = format!("{:016x}", h.finish());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy-wasm-host");
    let cached = dir.join(format!("tokenmeter-{key}.cwasm"));
    if cached.exists() {
        // Safety: the file is one this code wrote with `Module::serialize` for this very
        // engine configuration (the name carries the engine's compatibility hash).
        if let Ok(m) = unsafe { Module::deserialize_file(engine, &cached) } {
            return m;
        }
    }
    let module = Module::new(engine, &bytes)
        .unwrap_or_else(|e| panic!("compiling {}: {e:#}", path.display()));
    // Code compiled for earlier builds of the filter is of no further use.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "cwasm") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(serialized) = module.serialize() {
        // Written aside then renamed, so that a binary running alongside never reads half.
        let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
        let _ = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&tmp, serialized))
            .and_then(|_| std::fs::rename(&tmp, &cached));
    }
    module
}
