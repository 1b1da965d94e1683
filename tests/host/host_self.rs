//! The test host itself: the module's imports are all provided with its signatures, and
//! the host functions behave as Envoy's do.

use crate::harness::{abi, module, Headers, Host, Manners};

#[test]
fn every_import_of_the_module_is_provided_with_its_signature() {
    let l = module::loaded();
    let mut imports = Vec::new();
    for import in l.module.imports() {
        let wasmtime::ExternType::Func(ty) = import.ty() else {
            panic!("{}.{} is not a function", import.module(), import.name());
        };
        let known = abi::PROXY_ABI
            .iter()
            .chain(abi::WASI_PREVIEW1)
            .find(|f| f.module == import.module() && f.name == import.name())
            .unwrap_or_else(|| {
                panic!(
                    "{}.{} is not in the ABI tables",
                    import.module(),
                    import.name()
                )
            });
        let want = module::func_type(&l.engine, known);
        assert!(
            wasmtime::FuncType::eq(&ty, &want),
            "{}.{}: module wants {ty:?}, host has {want:?}",
            import.module(),
            import.name()
        );
        imports.push(format!("{}.{}", import.module(), import.name()));
    }
    println!("{} imports: {}", imports.len(), imports.join(" "));
    assert!(imports.iter().any(|i| i == "env.proxy_define_metric"));
    let _ = Host::new().vm("{}");
}

#[test]
fn every_abi_function_is_defined_and_the_unimplemented_ones_trap_by_name() {
    let l = module::loaded();
    let mut names: Vec<&str> = abi::PROXY_ABI.iter().map(|f| f.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 37, "ABI 0.2.1 has 37 host functions");
    assert_eq!(
        abi::WASI_PREVIEW1.len(),
        46,
        "WASI preview 1 has 46 functions"
    );
    // What the filter needs has real behaviour.
    for name in [
        "proxy_log",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_get_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_get_property",
        "proxy_define_metric",
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_get_current_time_nanoseconds",
        "fd_write",
        "random_get",
        "environ_get",
        "environ_sizes_get",
        "proc_exit",
    ] {
        assert!(l.implemented.contains(name), "{name}");
    }
    for name in [
        "proxy_grpc_call",
        "proxy_call_foreign_function",
        "path_open",
    ] {
        assert!(!l.implemented.contains(name), "{name}");
    }
}

#[test]
#[should_panic(expected = "invalid context_id")]
fn a_trap_fails_the_test_with_the_guests_panic_message() {
    // The SDK's dispatcher panics on a context it never created; its panic hook logs the
    // message before the trap, and the host puts it in the failure.
    let host = Host::new();
    let mut vm = host.vm("{}");
    vm.call::<(u32, u32, u32), u32>(999, "proxy_on_request_headers", (999, 0, 0));
}

#[test]
fn header_maps_use_the_abis_serialization() {
    let h = Headers::new().with(":status", "200").with("x-a", "");
    let bytes = h.serialize();
    let mut want = Vec::new();
    for n in [2u32, 7, 3, 3, 0] {
        want.extend_from_slice(&n.to_le_bytes());
    }
    want.extend_from_slice(b":status\x00200\x00x-a\x00\x00");
    assert_eq!(bytes, want);
    assert_eq!(Headers::deserialize(&bytes), Some(h));
    assert_eq!(Headers::deserialize(&bytes[..bytes.len() - 1]), None);
    assert_eq!(Headers::deserialize(b""), Some(Headers::new()));
}

#[test]
fn header_maps_behave_like_envoys() {
    let mut h = Headers::new().with("X-Team", "a").with("x-team", "b");
    assert_eq!(
        h.get("x-team"),
        Some("a"),
        "keys are lower-case; the first value wins"
    );
    h.set("X-TEAM", b"c");
    assert_eq!(h.0, vec![("x-team".to_string(), b"c".to_vec())]);
    h.remove("x-Team");
    assert!(h.is_empty());
}

#[test]
fn metric_names_decode_into_family_and_labels() {
    use crate::harness::metrics::decode_name;
    assert_eq!(
        decode_name("llm_tokens_total.model=.=gpt-4o;.;team=.=a b/c;.;"),
        Some((
            "llm_tokens_total".to_string(),
            vec![
                ("model".to_string(), "gpt-4o".to_string()),
                ("team".to_string(), "a b/c".to_string())
            ]
        ))
    );
    assert_eq!(
        decode_name("llm_requests_total"),
        Some(("llm_requests_total".to_string(), vec![]))
    );
    assert_eq!(decode_name("llm_x.model=.=gpt"), None);
    let mut r = crate::harness::metrics::Registry::default();
    assert!(r.define(abi::MetricType::Counter, "a"));
    assert!(r.define(abi::MetricType::Counter, "a"));
    assert!(!r.define(abi::MetricType::Gauge, "a"), "one name, one type");
}

#[test]
fn vms_share_metrics_and_clock_but_not_contexts() {
    let host = Host::new();
    let mut a = host.vm("{}");
    let b = host.vm("{}");
    let t0 = host.now_ns();
    assert_eq!(a.advance(&host, 1500), 0, "no tick period set");
    assert_eq!(host.now_ns(), t0 + 1_500_000_000);
    assert_eq!(a.root, b.root);
    // Each VM says once at start what it made of its host, and nothing else.
    for vm in [&a, &b] {
        let lines: Vec<_> = vm.logs().iter().map(|l| l.message.as_str()).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (kind, caps) = match host.manners() {
            Manners::Envoy => ("tokenmeter: host envoy (detected", "caps in shared data"),
            Manners::Ngx => ("tokenmeter: host nginx (detected", "caps per VM"),
        };
        assert!(
            lines[0].starts_with(kind) && lines[0].contains(caps),
            "{lines:?}"
        );
    }
    assert!(a.memory_pages() > 0);
}

/// A small guest that uses what the filter does not: ticks, callouts, local replies and
/// continuing a stream. It is assembled here so the host's support for them is tested.
mod guest {
    use std::collections::HashMap;

    use wasm_encoder::{
        CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
        FunctionSection, GlobalSection, GlobalType, ImportSection, MemArg, MemorySection,
        MemoryType, Module, TypeSection, ValType,
    };

    use super::Headers;

    pub const TICKER: &str = "ticker";
    pub const AUTH: &str = "auth";
    pub const DENIED: &str = "denied";
    const SCRATCH: i32 = 16;
    const TOKEN: i32 = 32;

    struct Data {
        segments: Vec<(i32, Vec<u8>)>,
        next: i32,
    }

    impl Data {
        /// Places bytes in memory; returns their (offset, length).
        fn put(&mut self, bytes: &[u8]) -> (i32, i32) {
            let at = self.next;
            self.segments.push((at, bytes.to_vec()));
            self.next += bytes.len() as i32 + 8;
            (at, bytes.len() as i32)
        }
    }

    pub fn callout_headers() -> Headers {
        Headers::new()
            .with(":method", "GET")
            .with(":path", "/check")
            .with(":authority", AUTH)
    }

    pub fn bytes() -> Vec<u8> {
        let mut data = Data {
            segments: Vec::new(),
            next: 256,
        };
        let ticker = data.put(TICKER.as_bytes());
        let auth = data.put(AUTH.as_bytes());
        let headers = data.put(&callout_headers().serialize());
        let details = data.put(b"blocked");
        let denied = data.put(DENIED.as_bytes());
        let reply_headers = data.put(&Headers::new().with("x-reason", "policy").serialize());

        let mut types = TypeSection::new();
        let mut type_ids: HashMap<(usize, usize), u32> = HashMap::new();
        let mut ty = |params: usize, results: usize| -> u32 {
            let n = type_ids.len() as u32;
            *type_ids.entry((params, results)).or_insert_with(|| {
                types
                    .ty()
                    .function(vec![ValType::I32; params], vec![ValType::I32; results]);
                n
            })
        };
        let mut imports = ImportSection::new();
        for (name, params) in [
            ("proxy_set_tick_period_milliseconds", 1),
            ("proxy_http_call", 10),
            ("proxy_send_local_response", 8),
            ("proxy_get_buffer_bytes", 5),
            ("proxy_log", 3),
            ("proxy_continue_stream", 1),
        ] {
            imports.import("env", name, EntityType::Function(ty(params, 1)));
        }
        let (set_tick, http_call, local_response, get_buffer, log, continue_stream) =
            (0, 1, 2, 3, 4, 5);
        // (export name, params, results)
        let exports: [(&str, usize, usize); 14] = [
            ("_initialize", 0, 0),
            ("proxy_on_memory_allocate", 1, 1),
            ("proxy_on_context_create", 2, 0),
            ("proxy_on_vm_start", 2, 1),
            ("proxy_on_configure", 2, 1),
            ("proxy_on_tick", 1, 0),
            ("proxy_on_request_headers", 3, 1),
            ("proxy_on_request_body", 3, 1),
            ("proxy_on_response_headers", 3, 1),
            ("proxy_on_response_body", 3, 1),
            ("proxy_on_http_call_response", 5, 0),
            ("proxy_on_log", 1, 0),
            ("proxy_on_done", 1, 1),
            ("proxy_on_delete", 1, 0),
        ];
        let mut functions = FunctionSection::new();
        for (_, p, r) in exports {
            functions.function(ty(p, r));
        }
        let mut code = CodeSection::new();
        let mem = |offset: u64| MemArg {
            offset,
            align: 2,
            memory_index: 0,
        };
        let call_http = |f: &mut Function, upstream: (i32, i32)| {
            f.instructions()
                .i32_const(upstream.0)
                .i32_const(upstream.1)
                .i32_const(headers.0)
                .i32_const(headers.1)
                .i32_const(0)
                .i32_const(0)
                .i32_const(0)
                .i32_const(0)
                .i32_const(5000)
                .i32_const(TOKEN)
                .call(http_call)
                .drop();
        };
        for (name, _, results) in exports {
            let mut f = Function::new([]);
            match name {
                "proxy_on_memory_allocate" => {
                    // A bump allocator: global 0 is the next free byte.
                    f.instructions()
                        .global_get(0)
                        .global_get(0)
                        .local_get(0)
                        .i32_add()
                        .global_set(0);
                }
                "proxy_on_vm_start" => {
                    f.instructions()
                        .i32_const(1000)
                        .call(set_tick)
                        .drop()
                        .i32_const(1);
                }
                "proxy_on_tick" => call_http(&mut f, ticker),
                "proxy_on_request_headers" => {
                    // End of stream at the headers: deny locally; else ask the auth service.
                    f.instructions()
                        .local_get(2)
                        .if_(wasm_encoder::BlockType::Empty);
                    f.instructions()
                        .i32_const(403)
                        .i32_const(details.0)
                        .i32_const(details.1)
                        .i32_const(denied.0)
                        .i32_const(denied.1)
                        .i32_const(reply_headers.0)
                        .i32_const(reply_headers.1)
                        .i32_const(-1)
                        .call(local_response)
                        .drop();
                    f.instructions().else_();
                    call_http(&mut f, auth);
                    f.instructions().end().i32_const(1);
                }
                "proxy_on_http_call_response" => {
                    // Logs the callout's body, then lets the stream go on.
                    f.instructions()
                        .i32_const(SCRATCH)
                        .i32_const(0)
                        .i32_store(mem(0))
                        .i32_const(SCRATCH)
                        .i32_const(0)
                        .i32_store(mem(4))
                        .i32_const(4)
                        .i32_const(0)
                        .local_get(3)
                        .i32_const(SCRATCH)
                        .i32_const(SCRATCH + 4)
                        .call(get_buffer)
                        .drop()
                        .i32_const(2)
                        .i32_const(SCRATCH)
                        .i32_load(mem(0))
                        .i32_const(SCRATCH)
                        .i32_load(mem(4))
                        .call(log)
                        .drop()
                        .i32_const(0)
                        .call(continue_stream)
                        .drop();
                }
                // Bodies wait for the auth callout.
                "proxy_on_done" | "proxy_on_configure" | "proxy_on_request_body" => {
                    f.instructions().i32_const(1);
                }
                _ if results == 1 => {
                    f.instructions().i32_const(0);
                }
                _ => {}
            }
            f.instructions().end();
            code.function(&f);
        }
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 2,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(65536),
        );
        let mut export_section = ExportSection::new();
        for (i, (name, _, _)) in exports.iter().enumerate() {
            export_section.export(name, ExportKind::Func, 6 + i as u32);
        }
        export_section.export("memory", ExportKind::Memory, 0);
        let mut data_section = DataSection::new();
        for (at, bytes) in data.segments {
            data_section.active(0, &ConstExpr::i32_const(at), bytes);
        }
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&memories)
            .section(&globals)
            .section(&export_section)
            .section(&code)
            .section(&data_section);
        module.finish()
    }
}

#[test]
fn ticks_callouts_local_replies_and_continues_work_as_in_envoy() {
    use crate::harness::state::CalloutResponse;
    use crate::harness::{Action, LogLevel, Stream};
    let l = module::from_bytes("test guest", &guest::bytes());
    let host = Host::new();
    let (mut vm, started, configured) = host.try_vm_of(&l, b"", b"");
    assert!(started && configured);
    assert_eq!(vm.state().tick_period_ms, 1000);

    // Two ticks fall due in 2.5 s; each dispatches a callout.
    assert_eq!(vm.advance(&host, 2500), 2);
    let calls = vm.state().http_calls.clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].upstream, guest::TICKER);
    assert_eq!(calls[0].headers, guest::callout_headers());
    assert_eq!(calls[0].timeout_ms, 5000);
    assert_eq!(calls[0].context, vm.root);
    assert_ne!(calls[0].token, calls[1].token);

    // The test delivers one response and one failure.
    vm.deliver_http_call(
        calls[0].token,
        Some(CalloutResponse {
            headers: Headers::new().with(":status", "200"),
            body: b"pong".to_vec(),
            trailers: Headers::new(),
        }),
    );
    vm.deliver_http_call(calls[1].token, None);
    let root = vm.root;
    let logged: Vec<_> = vm
        .logs_of(root)
        .iter()
        .map(|l| (l.level, l.message.clone()))
        .collect();
    assert_eq!(
        logged,
        [
            (LogLevel::Info, "pong".to_string()),
            (LogLevel::Info, String::new())
        ]
    );

    // A request that ends at its headers is denied with a local reply.
    let mut s = Stream::new(&mut vm);
    let headers = crate::harness::exchange::request_headers("GET", "/x", 0);
    assert_eq!(s.request_headers(headers.clone(), true), Action::Pause);
    let reply = s.local_reply.clone().expect("a local reply");
    assert_eq!((reply.status, reply.details.as_str()), (403, "blocked"));
    assert_eq!(s.client_body(), guest::DENIED.as_bytes());
    let client = s.client_headers().unwrap();
    assert_eq!(client.get(":status"), Some("403"));
    assert_eq!(client.get("x-reason"), Some("policy"));
    assert!(s.upstream_headers().is_none(), "nothing went upstream");
    drop(s);

    // Another is held while the auth callout runs, and goes on when the guest continues it.
    let mut s = Stream::new(&mut vm);
    let id = s.id;
    assert_eq!(s.request_headers(headers, false), Action::Pause);
    assert_eq!(s.request_body(b"bo", false), Action::Pause);
    assert_eq!(s.request_body(b"dy", true), Action::Pause);
    assert!(
        s.request_stalled(),
        "ended while held: waits for a continue"
    );
    assert!(s.upstream_headers().is_none() && s.upstream_body().is_empty());
    let token = s.vm().state().http_calls.last().unwrap().token;
    s.vm().deliver_http_call(
        token,
        Some(CalloutResponse {
            body: b"allowed".to_vec(),
            ..Default::default()
        }),
    );
    s.apply_continues();
    assert_eq!(s.continued(), [abi::stream_type::REQUEST]);
    assert!(!s.request_stalled());
    assert_eq!(
        s.upstream_headers().and_then(|h| h.get(":path")),
        Some("/x")
    );
    assert_eq!(s.upstream_body(), b"body", "the held body, whole");
    drop(s);
    assert_eq!(vm.logs_of(id).last().unwrap().message, "allowed");
    assert!(
        vm.state().contexts.iter().all(|c| *c != id),
        "the stream was deleted"
    );
}
