//! The test host itself: the module's imports are all provided with its signatures, and
//! the host functions behave as Envoy's do.
#![cfg(not(target_arch = "wasm32"))]

mod harness;

use harness::{abi, module, Host};

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
