//! The test host itself: the module's imports are all provided with its signatures, and
//! the host functions behave as Envoy's do.
#![cfg(not(target_arch = "wasm32"))]

mod harness;

use harness::{abi, module, Headers, Host};

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
    use harness::metrics::decode_name;
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
    let mut r = harness::metrics::Registry::default();
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
    assert!(a.logs().is_empty() && b.logs().is_empty());
    assert!(a.memory_pages() > 0);
}
