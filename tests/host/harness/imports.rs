//! The functions the host gives the guest: every `env.proxy_*` of ABI 0.2.1 and every
//! `wasi_snapshot_preview1` function. Those the filter can reach behave as Envoy's do; the
//! rest exist with their exact signatures and trap, naming themselves, when called.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Result};
use wasmtime::{Caller, Engine, FuncType, Linker, Memory, ValType};

use super::abi::{self, buffer, errno, map, status, LogLevel, MetricType, Ty};
use super::state::{Headers, HostState, HttpCall, Manners, StreamState};

type C<'a> = Caller<'a, HostState>;

fn memory(c: &mut C<'_>) -> Result<Memory> {
    c.data()
        .memory
        .ok_or_else(|| anyhow!("the guest exports no memory"))
}

fn read(c: &mut C<'_>, ptr: u32, len: u32) -> Result<Vec<u8>> {
    let mem = memory(c)?;
    let mut out = vec![0; len as usize];
    mem.read(&*c, ptr as usize, &mut out)
        .map_err(|_| anyhow!("the guest passed {len} bytes at {ptr:#x}, outside its memory"))?;
    Ok(out)
}

fn read_string(c: &mut C<'_>, ptr: u32, len: u32) -> Result<String> {
    String::from_utf8(read(c, ptr, len)?)
        .map_err(|e| anyhow!("the guest passed non-UTF-8 text: {e}"))
}

fn write(c: &mut C<'_>, ptr: u32, bytes: &[u8]) -> Result<()> {
    let mem = memory(c)?;
    mem.write(&mut *c, ptr as usize, bytes)
        .map_err(|_| anyhow!("the guest's return pointer {ptr:#x} is outside its memory"))
}

fn write_u32(c: &mut C<'_>, ptr: u32, v: u32) -> Result<()> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands bytes to the guest the ABI's way: allocated with the guest's
/// `proxy_on_memory_allocate`, the pointer and size written where it asked. Empty values
/// come back as a null pointer and size 0, as Envoy returns them.
fn give(c: &mut C<'_>, bytes: &[u8], ptr_ptr: u32, size_ptr: u32) -> Result<()> {
    let mut ptr = 0;
    if !bytes.is_empty() {
        let alloc = c
            .data()
            .allocate
            .clone()
            .ok_or_else(|| anyhow!("the guest exports no proxy_on_memory_allocate"))?;
        ptr = alloc.call(&mut *c, bytes.len() as u32)?;
        if ptr == 0 {
            bail!("proxy_on_memory_allocate({}) returned null", bytes.len());
        }
        write(c, ptr, bytes)?;
    }
    write_u32(c, ptr_ptr, ptr)?;
    write_u32(c, size_ptr, bytes.len() as u32)
}

/// The part of a buffer a read asks for. Envoy does not over-read, and answers NotFound
/// when nothing is left.
fn window(bytes: &[u8], start: u32, max: u32) -> Result<&[u8], u32> {
    let start = start as usize;
    let end = start
        .checked_add(max as usize)
        .ok_or(status::BAD_ARGUMENT)?
        .min(bytes.len());
    if start >= end {
        return Err(status::NOT_FOUND);
    }
    Ok(&bytes[start..end])
}

/// Property paths are their segments joined by NUL bytes.
fn path(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn ty(t: &Ty) -> ValType {
    match t {
        Ty::I32 => ValType::I32,
        Ty::I64 => ValType::I64,
    }
}

pub fn func_type(engine: &Engine, f: &abi::HostFn) -> FuncType {
    FuncType::new(engine, f.params.iter().map(ty), f.results.iter().map(ty))
}

/// The header map a map type names, for the running context; `Err(status)` as Envoy
/// answers when the map does not exist (yet).
fn header_map(s: &mut HostState, map_type: u32) -> Result<&mut Headers, u32> {
    if matches!(
        map_type,
        map::HTTP_CALL_RESPONSE_HEADERS | map::HTTP_CALL_RESPONSE_TRAILERS
    ) {
        let r = s.callout_response.as_mut().ok_or(status::BAD_ARGUMENT)?;
        return Ok(if map_type == map::HTTP_CALL_RESPONSE_HEADERS {
            &mut r.headers
        } else {
            &mut r.trailers
        });
    }
    let stream = s.stream().ok_or(status::BAD_ARGUMENT)?;
    let m = match map_type {
        map::HTTP_REQUEST_HEADERS => stream.request_headers.as_mut(),
        map::HTTP_REQUEST_TRAILERS => stream.request_trailers.as_mut(),
        map::HTTP_RESPONSE_HEADERS => stream.response_headers.as_mut(),
        map::HTTP_RESPONSE_TRAILERS => stream.response_trailers.as_mut(),
        _ => None,
    };
    m.ok_or(status::BAD_ARGUMENT)
}

/// Notes an edit to a map that already went on: it cannot change what was sent.
fn note_edit(s: &mut HostState, map_type: u32, what: &str) {
    let Some(stream) = s.stream() else { return };
    let late = match map_type {
        map::HTTP_REQUEST_HEADERS => stream.request_headers_sent,
        map::HTTP_RESPONSE_HEADERS => stream.response_headers_sent,
        _ => false,
    };
    if late {
        stream.late_edits.push(format!("map {map_type}: {what}"));
    }
}

fn body_buffer(stream: &mut StreamState, buffer_type: u32) -> Option<&mut Vec<u8>> {
    match buffer_type {
        buffer::HTTP_REQUEST_BODY => stream.request_body.as_mut(),
        buffer::HTTP_RESPONSE_BODY => stream.response_body.as_mut(),
        _ => None,
    }
}

/// Adds every host function to `linker`. `implemented` receives the names that have real
/// behaviour (the rest trap).
/// ngx_wasm_module traps shared-data calls when no `shm_kv` zone is declared.
fn no_zone_trap(c: &C<'_>, call: &str, key: &str) -> Result<()> {
    let shared = &c.data().shared;
    if shared.manners == Manners::Ngx && !shared.kv_zone {
        bail!("{call}({key:?}): no shm_kv zone declared");
    }
    Ok(())
}

pub fn define(linker: &mut Linker<HostState>) -> Result<HashSet<&'static str>> {
    let mut implemented = HashSet::new();
    define_proxy(linker, &mut implemented)?;
    define_wasi(linker, &mut implemented)?;
    // Whatever is left of both lists exists, and fails the test when called.
    let engine = linker.engine().clone();
    for f in abi::PROXY_ABI.iter().chain(abi::WASI_PREVIEW1) {
        if implemented.contains(f.name) {
            continue;
        }
        let name = f.name;
        let module = f.module;
        linker.func_new(module, name, func_type(&engine, f), move |_, _, _| {
            Err(anyhow!(
                "the guest called {module}.{name}, which the test host does not implement"
            ))
        })?;
    }
    Ok(implemented)
}

fn define_proxy(linker: &mut Linker<HostState>, done: &mut HashSet<&'static str>) -> Result<()> {
    let m = "env";
    let mut add = |name: &'static str| {
        done.insert(name);
        name
    };

    linker.func_wrap(
        m,
        add("proxy_log"),
        |mut c: C<'_>, level: u32, ptr: u32, len: u32| -> Result<u32> {
            let message = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
            let Some(level) = LogLevel::from_u32(level) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let s = c.data_mut();
            let context = s.current_context;
            s.logs.push(super::state::LogLine {
                context,
                level,
                message,
            });
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_log_level"),
        |mut c: C<'_>, ret: u32| -> Result<u32> {
            let level = c.data().log_level as u32;
            write_u32(&mut c, ret, level)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_current_time_nanoseconds"),
        |mut c: C<'_>, ret: u32| -> Result<u32> {
            let now = c.data().shared.now_ns();
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_tick_period_milliseconds"),
        |mut c: C<'_>, period: u32| -> Result<u32> {
            c.data_mut().tick_period_ms = period;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_buffer_bytes"),
        |mut c: C<'_>,
         kind: u32,
         start: u32,
         max: u32,
         ptr_ptr: u32,
         size_ptr: u32|
         -> Result<u32> {
            let s = c.data();
            let source: Option<&[u8]> = match kind {
                buffer::VM_CONFIGURATION => Some(&s.vm_configuration),
                buffer::PLUGIN_CONFIGURATION => {
                    s.configuring.then_some(&s.plugin_configuration[..])
                }
                buffer::HTTP_CALL_RESPONSE_BODY => s.callout_response.as_ref().map(|r| &r.body[..]),
                buffer::HTTP_REQUEST_BODY => s
                    .streams
                    .get(&s.current_context)
                    .and_then(|st| st.request_body.as_deref()),
                buffer::HTTP_RESPONSE_BODY => s
                    .streams
                    .get(&s.current_context)
                    .and_then(|st| st.response_body.as_deref()),
                _ => None,
            };
            let Some(source) = source else {
                return Ok(status::NOT_FOUND);
            };
            let bytes = match window(source, start, max) {
                Ok(b) => b.to_vec(),
                Err(st) => return Ok(st),
            };
            give(&mut c, &bytes, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_buffer_bytes"),
        |mut c: C<'_>, kind: u32, start: u32, size: u32, ptr: u32, len: u32| -> Result<u32> {
            let mut data = read(&mut c, ptr, len)?;
            let s = c.data_mut();
            if s.shared.manners == Manners::Ngx && size > 0 {
                // ngx_wasm_module writes no more new bytes than it replaces.
                data.truncate(size as usize);
            }
            if matches!(
                kind,
                buffer::VM_CONFIGURATION
                    | buffer::PLUGIN_CONFIGURATION
                    | buffer::HTTP_CALL_RESPONSE_BODY
            ) {
                return Ok(status::BAD_ARGUMENT);
            }
            let Some(buf) = s.stream().and_then(|st| body_buffer(st, kind)) else {
                return Ok(status::NOT_FOUND);
            };
            let (start, size) = (start as usize, size as usize);
            // Envoy's Buffer::copyFrom: at 0, drain `size` bytes and prepend; at or past the
            // end, append; anything else is refused.
            if start == 0 {
                let kept = buf.split_off(size.min(buf.len()));
                *buf = data;
                buf.extend_from_slice(&kept);
            } else if start >= buf.len() {
                buf.extend_from_slice(&data);
            } else {
                return Ok(status::BAD_ARGUMENT);
            }
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_header_map_pairs"),
        |mut c: C<'_>, map_type: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            let bytes = match header_map(c.data_mut(), map_type) {
                Ok(h) => h.serialize(),
                Err(st) => return Ok(st),
            };
            give(&mut c, &bytes, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_header_map_pairs"),
        |mut c: C<'_>, map_type: u32, ptr: u32, len: u32| -> Result<u32> {
            let bytes = read(&mut c, ptr, len)?;
            let Some(new) = Headers::deserialize(&bytes) else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            let s = c.data_mut();
            note_edit(s, map_type, "set pairs");
            match header_map(s, map_type) {
                Ok(h) => {
                    *h = Headers(
                        new.0
                            .into_iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v))
                            .collect(),
                    );
                    Ok(status::OK)
                }
                Err(st) => Ok(st),
            }
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_header_map_value"),
        |mut c: C<'_>,
         map_type: u32,
         kp: u32,
         kl: u32,
         ptr_ptr: u32,
         size_ptr: u32|
         -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            let value = match header_map(c.data_mut(), map_type) {
                Ok(h) => h.get_raw(&key).map(<[u8]>::to_vec),
                Err(st) => return Ok(st),
            };
            let Some(value) = value else {
                return Ok(status::NOT_FOUND);
            };
            give(&mut c, &value, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_remove_header_map_value"),
        |mut c: C<'_>, map_type: u32, kp: u32, kl: u32| -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            let s = c.data_mut();
            note_edit(s, map_type, &format!("remove {key}"));
            match header_map(s, map_type) {
                Ok(h) => {
                    h.remove(&key);
                    Ok(status::OK)
                }
                Err(st) => Ok(st),
            }
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_replace_header_map_value"),
        |mut c: C<'_>, map_type: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            let s = c.data_mut();
            note_edit(s, map_type, &format!("replace {key}"));
            match header_map(s, map_type) {
                Ok(h) => {
                    h.set(&key, &value);
                    Ok(status::OK)
                }
                Err(st) => Ok(st),
            }
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_add_header_map_value"),
        |mut c: C<'_>, map_type: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            let s = c.data_mut();
            note_edit(s, map_type, &format!("add {key}"));
            match header_map(s, map_type) {
                Ok(h) => {
                    h.add(&key, &value);
                    Ok(status::OK)
                }
                Err(st) => Ok(st),
            }
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_property"),
        |mut c: C<'_>, pp: u32, pl: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            let p = path(&read(&mut c, pp, pl)?);
            c.data_mut().asked_properties.push(p.join("."));
            let s = c.data();
            let ngx = s.shared.manners == Manners::Ngx;
            let first = p.first().map(String::as_str);
            if ngx && s.stream_ref().is_none() {
                // Outside a request its nginx variables are an error (a trap), and older
                // builds crash on `plugin_name`.
                if matches!(first, Some("ngx" | "plugin_name")) {
                    bail!("proxy_get_property({}) outside a request", p.join("."));
                }
            }
            let value = match first {
                // Every host names the plugin; Envoy also answers its VM id.
                Some("plugin_name") if p.len() == 1 => Some(b"tokenmeter".to_vec()),
                Some("plugin_vm_id") if p.len() == 1 && !ngx => Some(Vec::new()),
                Some("plugin_vm_id") if p.len() == 1 => None,
                // ngx_wasm_module has no xds.* and no response.code_details, and its
                // nginx variables exist only in a request.
                Some("xds") if ngx => None,
                Some("response") if ngx && p.get(1).is_some_and(|d| d == "code_details") => None,
                _ => s.property(&p),
            };
            let Some(value) = value else {
                return Ok(status::NOT_FOUND);
            };
            give(&mut c, &value, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_property"),
        |mut c: C<'_>, pp: u32, pl: u32, vp: u32, vl: u32| -> Result<u32> {
            let mut p = path(&read(&mut c, pp, pl)?);
            let value = read(&mut c, vp, vl)?;
            let s = c.data_mut();
            if s.shared.manners == Manners::Ngx {
                // It reads NULs and dots alike: `ngx.tokenmeter` is the variable `$tokenmeter`.
                p = p.join(".").split('.').map(str::to_string).collect();
                // Only declared nginx variables (in a request) and wasmx.* are writable.
                let writable = match p.first().map(String::as_str) {
                    Some("ngx") => {
                        p.len() == 2
                            && s.stream_ref().is_some()
                            && s.shared.ngx_variables.contains(&p[1])
                    }
                    Some("wasmx") => true,
                    _ => false,
                };
                if !writable {
                    s.refused_properties.push(p.join("."));
                    return Ok(status::NOT_FOUND);
                }
            }
            match s.stream() {
                Some(stream) => {
                    stream.properties.insert(p, value);
                }
                None => {
                    s.properties.insert(p, value);
                }
            }
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_shared_data"),
        |mut c: C<'_>,
         kp: u32,
         kl: u32,
         ptr_ptr: u32,
         size_ptr: u32,
         cas_ptr: u32|
         -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            no_zone_trap(&c, "proxy_get_shared_data", &key)?;
            let entry = {
                let data = c.data().shared.data.lock().unwrap();
                data.entries.get(&key).cloned()
            };
            let Some((value, cas)) = entry else {
                return Ok(status::NOT_FOUND);
            };
            give(&mut c, &value, ptr_ptr, size_ptr)?;
            write_u32(&mut c, cas_ptr, cas)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_shared_data"),
        |mut c: C<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> Result<u32> {
            let key = read_string(&mut c, kp, kl)?;
            no_zone_trap(&c, "proxy_set_shared_data", &key)?;
            let value = read(&mut c, vp, vl)?;
            let mut data = c.data().shared.data.lock().unwrap();
            let current = data.entries.get(&key).map_or(0, |(_, cas)| *cas);
            if cas != 0 && cas != current {
                return Ok(status::CAS_MISMATCH);
            }
            data.entries.insert(key, (value, current + 1));
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_continue_stream"),
        |mut c: C<'_>, kind: u32| -> Result<u32> {
            let Some(stream) = c.data_mut().stream() else {
                return Ok(status::BAD_ARGUMENT);
            };
            stream.continued.push(kind);
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_close_stream"),
        |mut c: C<'_>, kind: u32| -> Result<u32> {
            let Some(stream) = c.data_mut().stream() else {
                return Ok(status::BAD_ARGUMENT);
            };
            stream.closed.push(kind);
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_send_local_response"),
        |mut c: C<'_>,
         code: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         grpc: i32|
         -> Result<u32> {
            let details = String::from_utf8_lossy(&read(&mut c, dp, dl)?).into_owned();
            let body = read(&mut c, bp, bl)?;
            let Some(headers) = Headers::deserialize(&read(&mut c, hp, hl)?) else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            let Some(stream) = c.data_mut().stream() else {
                return Ok(status::BAD_ARGUMENT);
            };
            stream.local_response = Some(super::state::LocalResponse {
                status: code,
                details,
                body,
                headers,
                grpc_status: grpc,
            });
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_http_call"),
        |mut c: C<'_>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         token_ptr: u32|
         -> Result<u32> {
            let upstream = String::from_utf8_lossy(&read(&mut c, up, ul)?).into_owned();
            let headers = Headers::deserialize(&read(&mut c, hp, hl)?);
            let body = read(&mut c, bp, bl)?;
            let trailers = Headers::deserialize(&read(&mut c, tp, tl)?);
            let (Some(headers), Some(trailers)) = (headers, trailers) else {
                return Ok(status::SERIALIZATION_FAILURE);
            };
            // Envoy refuses a callout without these.
            if [":method", ":path", ":authority"]
                .iter()
                .any(|h| headers.get_raw(h).is_none())
            {
                return Ok(status::BAD_ARGUMENT);
            }
            let s = c.data_mut();
            let token = s.next_token;
            s.next_token += 1;
            let context = s.current_context;
            s.http_calls.push(HttpCall {
                token,
                context,
                upstream,
                headers,
                body,
                trailers,
                timeout_ms: timeout,
            });
            write_u32(&mut c, token_ptr, token)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_set_effective_context"),
        |mut c: C<'_>, context: u32| -> Result<u32> {
            let s = c.data_mut();
            if !s.contexts.contains(&context) {
                return Ok(status::BAD_ARGUMENT);
            }
            s.current_context = context;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(m, add("proxy_done"), |mut c: C<'_>| -> Result<u32> {
        c.data_mut().done_calls += 1;
        Ok(status::OK)
    })?;

    linker.func_wrap(
        m,
        add("proxy_define_metric"),
        |mut c: C<'_>, kind: u32, np: u32, nl: u32, id_ptr: u32| -> Result<u32> {
            let name = read_string(&mut c, np, nl)?;
            let s = c.data_mut();
            if s.shared.manners == Manners::Ngx {
                // Its names carry a `pw:NAME:` prefix and must fit `max_metric_name_length`.
                let full = format!("pw:tokenmeter:{name}");
                if full.len() > s.shared.ngx_metric_name_length {
                    bail!(
                        "metric name too long ({} bytes, the limit is {}): {full}",
                        full.len(),
                        s.shared.ngx_metric_name_length
                    );
                }
            }
            let Some(kind) = MetricType::from_u32(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            s.defines.push((kind, name.clone()));
            if !s.shared.metrics.lock().unwrap().define(kind, &name) {
                s.refused_metric_ops
                    .push((format!("define {name}"), status::BAD_ARGUMENT));
                return Ok(status::BAD_ARGUMENT);
            }
            // Like Envoy: every definition gets a new id, the type in its low two bits.
            let id = (s.next_metric_seq << 2) | kind as u32;
            s.next_metric_seq += 1;
            s.metric_ids.insert(id, (kind, name));
            write_u32(&mut c, id_ptr, id)?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_get_metric"),
        |mut c: C<'_>, id: u32, ret: u32| -> Result<u32> {
            let Some((kind, name)) = c.data().metric_ids.get(&id).cloned() else {
                return Ok(status::NOT_FOUND);
            };
            if kind == MetricType::Histogram {
                return Ok(status::BAD_ARGUMENT);
            }
            let value = c.data().shared.metrics.lock().unwrap().stats[&name].value;
            write(&mut c, ret, &(value as u64).to_le_bytes())?;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_increment_metric"),
        |mut c: C<'_>, id: u32, offset: i64| -> Result<u32> {
            let s = c.data_mut();
            let Some((kind, name)) = s.metric_ids.get(&id).cloned() else {
                s.refused_metric_ops
                    .push((format!("increment {id}"), status::NOT_FOUND));
                return Ok(status::NOT_FOUND);
            };
            // Envoy refuses to move a counter by zero or less, and histograms are recorded.
            let refused = match kind {
                MetricType::Counter => offset <= 0,
                MetricType::Gauge => false,
                MetricType::Histogram => true,
            };
            if refused {
                s.refused_metric_ops.push((
                    format!("increment {name} by {offset}"),
                    status::BAD_ARGUMENT,
                ));
                return Ok(status::BAD_ARGUMENT);
            }
            let mut reg = s.shared.metrics.lock().unwrap();
            let stat = reg.stats.get_mut(&name).unwrap();
            stat.value += offset;
            Ok(status::OK)
        },
    )?;

    linker.func_wrap(
        m,
        add("proxy_record_metric"),
        |mut c: C<'_>, id: u32, value: u64| -> Result<u32> {
            let s = c.data_mut();
            let Some((kind, name)) = s.metric_ids.get(&id).cloned() else {
                s.refused_metric_ops
                    .push((format!("record {id}"), status::NOT_FOUND));
                return Ok(status::NOT_FOUND);
            };
            let mut reg = s.shared.metrics.lock().unwrap();
            let stat = reg.stats.get_mut(&name).unwrap();
            match kind {
                // Envoy moves a counter up to the value, never down.
                MetricType::Counter => stat.value = stat.value.max(value as i64),
                MetricType::Gauge => stat.value = value as i64,
                MetricType::Histogram => stat.samples.push(value),
            }
            Ok(status::OK)
        },
    )?;

    Ok(())
}

fn define_wasi(linker: &mut Linker<HostState>, done: &mut HashSet<&'static str>) -> Result<()> {
    let m = "wasi_snapshot_preview1";
    let mut add = |name: &'static str| {
        done.insert(name);
        name
    };

    // No arguments and no environment.
    for name in ["args_sizes_get", "environ_sizes_get"] {
        linker.func_wrap(
            m,
            add(name),
            |mut c: C<'_>, count: u32, size: u32| -> Result<u32> {
                write_u32(&mut c, count, 0)?;
                write_u32(&mut c, size, 0)?;
                Ok(errno::SUCCESS)
            },
        )?;
    }
    for name in ["args_get", "environ_get"] {
        linker.func_wrap(m, add(name), |_: C<'_>, _: u32, _: u32| -> Result<u32> {
            Ok(errno::SUCCESS)
        })?;
    }

    linker.func_wrap(
        m,
        add("clock_time_get"),
        |mut c: C<'_>, _id: u32, _precision: i64, ret: u32| -> Result<u32> {
            let now = c.data().shared.now_ns();
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(errno::SUCCESS)
        },
    )?;

    linker.func_wrap(
        m,
        add("fd_write"),
        |mut c: C<'_>, fd: u32, iovs: u32, n: u32, written_ptr: u32| -> Result<u32> {
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let vecs = read(&mut c, iovs, n * 8)?;
            let mut out = Vec::new();
            for v in vecs.chunks(8) {
                let ptr = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                let len = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
                out.extend(read(&mut c, ptr, len)?);
            }
            let written = out.len() as u32;
            let s = c.data_mut();
            let sink = if fd == 1 {
                &mut s.stdout
            } else {
                &mut s.stderr
            };
            sink.extend(out);
            write_u32(&mut c, written_ptr, written)?;
            Ok(errno::SUCCESS)
        },
    )?;

    linker.func_wrap(
        m,
        add("random_get"),
        |mut c: C<'_>, ptr: u32, len: u32| -> Result<u32> {
            let bytes = c.data_mut().random_bytes(len as usize);
            write(&mut c, ptr, &bytes)?;
            Ok(errno::SUCCESS)
        },
    )?;

    linker.func_wrap(m, add("sched_yield"), |_: C<'_>| -> Result<u32> {
        Ok(errno::SUCCESS)
    })?;

    linker.func_wrap(m, add("proc_exit"), |_: C<'_>, code: u32| -> Result<()> {
        bail!("the guest called proc_exit({code})")
    })?;

    Ok(())
}
