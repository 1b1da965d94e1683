//! The host calls the filter makes, with every status handled.
//!
//! The SDK's own wrappers panic (a VM trap) on any status they do not expect and on
//! non-UTF-8 header values; a trap would take the request down with it. These wrappers
//! declare the ABI imports themselves, read statuses as plain integers, and turn anything
//! unexpected into `None` or `Err`.

use std::ptr::null_mut;

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

use tokenmeter_core::host_abi::headers::HeaderPairs;

const OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or point to `size` bytes the host allocated with the guest allocator.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    Some(Vec::from_raw_parts(data, size, size))
}

pub fn log(level: LogLevel, message: &str) {
    // A failed log is not worth failing anything for.
    unsafe {
        let _ = proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

pub fn buffer(kind: BufferType, start: usize, max_size: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let status = proxy_get_buffer_bytes(kind as u32, start, max_size, &mut data, &mut size);
        let bytes = take(data, size);
        (status == OK).then_some(bytes).flatten()
    }
}

/// A header's value; non-UTF-8 bytes are replaced, never fatal.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let status =
            proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size);
        let bytes = take(data, size);
        if status != OK {
            return None;
        }
        Some(match bytes {
            Some(b) => String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            None => String::new(),
        })
    }
}

/// A whole header map in one host call.
pub fn header_pairs(map: MapType) -> Option<HeaderPairs> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let status = proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
        let bytes = take(data, size);
        if status != OK {
            return None;
        }
        HeaderPairs::parse(bytes?)
    }
}

pub fn property(path: &[String]) -> Option<Vec<u8>> {
    property_of(path).ok().flatten()
}

/// A property, telling an answered empty value (`Ok(None)`) from an unanswered path.
pub fn property_of<S: AsRef<str>>(path: &[S]) -> Result<Option<Vec<u8>>, u32> {
    let mut serialized = Vec::with_capacity(path.iter().map(|p| p.as_ref().len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(part.as_ref().as_bytes());
    }
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let status =
            proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size);
        let bytes = take(data, size);
        if status == OK {
            Ok(bytes)
        } else {
            Err(status)
        }
    }
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    unsafe {
        (proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) == OK).then_some(id)
    }
}

pub fn increment_metric(id: u32, offset: i64) -> bool {
    // Hosts refuse increments of zero or less.
    offset > 0 && unsafe { proxy_increment_metric(id, offset) == OK }
}

pub fn record_metric(id: u32, value: u64) -> bool {
    unsafe { proxy_record_metric(id, value) == OK }
}

/// Replaces the whole current buffer, `size` bytes, with `data`.
///
/// In two steps when `data` is longer: the first `size` bytes replace the buffer, then the
/// rest is appended at its end. The ABI lets one call replace `size` bytes with data of any
/// length, and Envoy does, but ngx_wasm_module keeps only `size` of the new bytes (a
/// rewritten request would reach the upstream cut off); both hosts append at the end alike.
pub fn replace_buffer(kind: BufferType, size: usize, data: &[u8]) -> bool {
    let (head, tail) = data.split_at(size.min(data.len()));
    let write = |start: usize, size: usize, bytes: &[u8]| unsafe {
        proxy_set_buffer_bytes(kind as u32, start, size, bytes.as_ptr(), bytes.len()) == OK
    };
    if size == 0 || tail.is_empty() {
        return write(0, size, data);
    }
    write(0, size, head) && write(size, 0, tail)
}

/// Sets a header (adding it when absent).
pub fn set_header(map: MapType, name: &str, value: &str) -> bool {
    unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        ) == OK
    }
}

pub fn remove_header(map: MapType, name: &str) -> bool {
    unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) == OK }
}

/// The host's clock in milliseconds since the epoch (0 if the host will not say).
pub fn now_ms() -> u64 {
    let mut nanos: u64 = 0;
    unsafe {
        if proxy_get_current_time_nanoseconds(&mut nanos) != OK {
            return 0;
        }
    }
    nanos / 1_000_000
}

/// A shared-data entry (shared by every VM of the plugin in the process) and its version.
pub fn shared_data(key: &str) -> Option<(Vec<u8>, u32)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    unsafe {
        let status = proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas);
        let bytes = take(data, size);
        (status == OK).then(|| (bytes.unwrap_or_default(), cas))
    }
}

/// Outcome of a shared-data write.
#[derive(Debug, PartialEq, Eq)]
pub enum SetShared {
    Done,
    /// Another VM wrote the entry since `cas` was read.
    Conflict,
    Failed,
}

/// Writes a shared-data entry if its version is still `cas` (0: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> SetShared {
    const CAS_MISMATCH: u32 = 8;
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        OK => SetShared::Done,
        CAS_MISMATCH => SetShared::Conflict,
        _ => SetShared::Failed,
    }
}

/// Sets a property of the current stream (Envoy keeps it as filter state `wasm.NAME`).
pub fn set_property(name: &str, value: &[u8]) -> bool {
    unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) == OK }
}

pub fn set_tick_period_ms(period: u32) -> bool {
    unsafe { proxy_set_tick_period_milliseconds(period) == OK }
}
