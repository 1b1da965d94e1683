//! The proxy-wasm ABI 0.2.1 as the host sees it: status codes, enumerations and the full
//! list of host functions with their wasm signatures.
//!
//! The values are the spec's (`abi-versions/v0.2.1`), which the `proxy-wasm` SDK's
//! `types.rs` and `hostcalls.rs` also follow.

/// `WasmResult` status codes returned by every host function.
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const PARSE_FAILURE: u32 = 4;
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_u32(v: u32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// What a stream callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub fn from_u32(v: u32) -> Option<Action> {
        match v {
            0 => Some(Action::Continue),
            1 => Some(Action::Pause),
            _ => None,
        }
    }
}

pub mod buffer {
    pub const HTTP_REQUEST_BODY: u32 = 0;
    pub const HTTP_RESPONSE_BODY: u32 = 1;
    pub const DOWNSTREAM_DATA: u32 = 2;
    pub const UPSTREAM_DATA: u32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const GRPC_RECEIVE_BUFFER: u32 = 5;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
    pub const CALL_DATA: u32 = 8;
}

pub mod map {
    pub const HTTP_REQUEST_HEADERS: u32 = 0;
    pub const HTTP_REQUEST_TRAILERS: u32 = 1;
    pub const HTTP_RESPONSE_HEADERS: u32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: u32 = 3;
    pub const GRPC_RECEIVE_INITIAL_METADATA: u32 = 4;
    pub const GRPC_RECEIVE_TRAILING_METADATA: u32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricType {
    pub fn from_u32(v: u32) -> Option<MetricType> {
        match v {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

pub mod stream_type {
    pub const REQUEST: u32 = 0;
    pub const RESPONSE: u32 = 1;
    pub const DOWNSTREAM: u32 = 2;
    pub const UPSTREAM: u32 = 3;
}

/// A wasm value type in a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    I32,
    I64,
}

use Ty::{I32, I64};

/// One host function: module, name, parameters, results.
pub struct HostFn {
    pub module: &'static str,
    pub name: &'static str,
    pub params: &'static [Ty],
    pub results: &'static [Ty],
}

const fn env(name: &'static str, params: &'static [Ty]) -> HostFn {
    HostFn {
        module: "env",
        name,
        params,
        results: &[I32],
    }
}

/// Every host function of proxy-wasm ABI 0.2.1 (pointers and sizes are i32 on wasm32).
pub const PROXY_ABI: &[HostFn] = &[
    env("proxy_log", &[I32, I32, I32]),
    env("proxy_get_log_level", &[I32]),
    env("proxy_get_current_time_nanoseconds", &[I32]),
    env("proxy_set_tick_period_milliseconds", &[I32]),
    env("proxy_get_buffer_bytes", &[I32, I32, I32, I32, I32]),
    env("proxy_set_buffer_bytes", &[I32, I32, I32, I32, I32]),
    env("proxy_get_header_map_pairs", &[I32, I32, I32]),
    env("proxy_set_header_map_pairs", &[I32, I32, I32]),
    env("proxy_get_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_remove_header_map_value", &[I32, I32, I32]),
    env("proxy_replace_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_add_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_get_property", &[I32, I32, I32, I32]),
    env("proxy_set_property", &[I32, I32, I32, I32]),
    env("proxy_get_shared_data", &[I32, I32, I32, I32, I32]),
    env("proxy_set_shared_data", &[I32, I32, I32, I32, I32]),
    env("proxy_register_shared_queue", &[I32, I32, I32]),
    env("proxy_resolve_shared_queue", &[I32, I32, I32, I32, I32]),
    env("proxy_dequeue_shared_queue", &[I32, I32, I32]),
    env("proxy_enqueue_shared_queue", &[I32, I32, I32]),
    env("proxy_continue_stream", &[I32]),
    env("proxy_close_stream", &[I32]),
    env(
        "proxy_send_local_response",
        &[I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env(
        "proxy_http_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env(
        "proxy_grpc_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env(
        "proxy_grpc_stream",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env("proxy_grpc_send", &[I32, I32, I32, I32]),
    env("proxy_grpc_cancel", &[I32]),
    env("proxy_grpc_close", &[I32]),
    env("proxy_get_status", &[I32, I32, I32]),
    env("proxy_set_effective_context", &[I32]),
    env(
        "proxy_call_foreign_function",
        &[I32, I32, I32, I32, I32, I32],
    ),
    env("proxy_done", &[]),
    env("proxy_define_metric", &[I32, I32, I32, I32]),
    env("proxy_get_metric", &[I32, I32]),
    env("proxy_record_metric", &[I32, I64]),
    env("proxy_increment_metric", &[I32, I64]),
];

const fn wasi(name: &'static str, params: &'static [Ty]) -> HostFn {
    HostFn {
        module: "wasi_snapshot_preview1",
        name,
        params,
        results: &[I32],
    }
}

/// Every function of WASI preview 1 (`wasi_snapshot_preview1`).
pub const WASI_PREVIEW1: &[HostFn] = &[
    wasi("args_get", &[I32, I32]),
    wasi("args_sizes_get", &[I32, I32]),
    wasi("environ_get", &[I32, I32]),
    wasi("environ_sizes_get", &[I32, I32]),
    wasi("clock_res_get", &[I32, I32]),
    wasi("clock_time_get", &[I32, I64, I32]),
    wasi("fd_advise", &[I32, I64, I64, I32]),
    wasi("fd_allocate", &[I32, I64, I64]),
    wasi("fd_close", &[I32]),
    wasi("fd_datasync", &[I32]),
    wasi("fd_fdstat_get", &[I32, I32]),
    wasi("fd_fdstat_set_flags", &[I32, I32]),
    wasi("fd_fdstat_set_rights", &[I32, I64, I64]),
    wasi("fd_filestat_get", &[I32, I32]),
    wasi("fd_filestat_set_size", &[I32, I64]),
    wasi("fd_filestat_set_times", &[I32, I64, I64, I32]),
    wasi("fd_pread", &[I32, I32, I32, I64, I32]),
    wasi("fd_prestat_get", &[I32, I32]),
    wasi("fd_prestat_dir_name", &[I32, I32, I32]),
    wasi("fd_pwrite", &[I32, I32, I32, I64, I32]),
    wasi("fd_read", &[I32, I32, I32, I32]),
    wasi("fd_readdir", &[I32, I32, I32, I64, I32]),
    wasi("fd_renumber", &[I32, I32]),
    wasi("fd_seek", &[I32, I64, I32, I32]),
    wasi("fd_sync", &[I32]),
    wasi("fd_tell", &[I32, I32]),
    wasi("fd_write", &[I32, I32, I32, I32]),
    wasi("path_create_directory", &[I32, I32, I32]),
    wasi("path_filestat_get", &[I32, I32, I32, I32, I32]),
    wasi(
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
    ),
    wasi("path_link", &[I32, I32, I32, I32, I32, I32, I32]),
    wasi("path_open", &[I32, I32, I32, I32, I32, I64, I64, I32, I32]),
    wasi("path_readlink", &[I32, I32, I32, I32, I32, I32]),
    wasi("path_remove_directory", &[I32, I32, I32]),
    wasi("path_rename", &[I32, I32, I32, I32, I32, I32]),
    wasi("path_symlink", &[I32, I32, I32, I32, I32]),
    wasi("path_unlink_file", &[I32, I32, I32]),
    wasi("poll_oneoff", &[I32, I32, I32, I32]),
    HostFn {
        module: "wasi_snapshot_preview1",
        name: "proc_exit",
        params: &[I32],
        results: &[],
    },
    wasi("proc_raise", &[I32]),
    wasi("sched_yield", &[]),
    wasi("random_get", &[I32, I32]),
    wasi("sock_accept", &[I32, I32, I32]),
    wasi("sock_recv", &[I32, I32, I32, I32, I32, I32]),
    wasi("sock_send", &[I32, I32, I32, I32, I32]),
    wasi("sock_shutdown", &[I32, I32]),
];

/// WASI errno values the harness answers with.
pub mod errno {
    pub const SUCCESS: u32 = 0;
    pub const BADF: u32 = 8;
    pub const INVAL: u32 = 28;
}
