//! A host and its VMs: instantiation, the root context's lifecycle, calls into the guest
//! and what the tests read back (logs, metric definitions, callouts, memory).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::{Func, Instance, Store, TypedFunc, WasmParams, WasmResults};

use super::abi::{Action, LogLevel, MetricType};
use super::metrics::{Metrics, Registry};
use super::module::{loaded, Loaded};
use super::state::{CalloutResponse, HostState, LogLine, Manners, Shared, StreamState};

/// 2026-01-01T00:00:00Z, where every host's clock starts.
pub const EPOCH_NS: u64 = 1_767_225_600_000_000_000;

/// The host side several VMs share, like Envoy's workers: metrics, shared data, the clock.
#[derive(Clone)]
pub struct Host {
    shared: Shared,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host with the manners the suite runs under ([`Manners::from_env`]).
    pub fn new() -> Host {
        Host::with_manners(Manners::from_env())
    }

    /// A host that behaves as `manners` says where hosts differ (ngx_wasm_module without
    /// an `shm_kv` zone, with `set $tokenmeter "";` and the default metric-name limit).
    pub fn with_manners(manners: Manners) -> Host {
        Host {
            shared: Shared {
                manners,
                kv_zone: false,
                ngx_metric_name_length: 256,
                ngx_variables: vec!["tokenmeter".to_string()],
                metrics: Arc::new(Mutex::new(Registry::default())),
                data: Arc::default(),
                clock: Arc::new(AtomicU64::new(EPOCH_NS)),
            },
        }
    }

    /// A VM with this plugin configuration; panics unless it starts and configures.
    pub fn vm(&self, plugin_config: &str) -> Vm {
        let (vm, started, configured) = self.try_vm(plugin_config);
        assert!(started, "on_vm_start returned false\n{}", vm.log_text());
        assert!(
            configured,
            "on_configure refused {plugin_config}\n{}",
            vm.log_text()
        );
        vm
    }

    /// Starts and configures a VM as Envoy does; returns what `on_vm_start` and
    /// `on_configure` answered.
    pub fn try_vm(&self, plugin_config: &str) -> (Vm, bool, bool) {
        self.try_vm_with(b"", plugin_config.as_bytes())
    }

    pub fn try_vm_with(&self, vm_config: &[u8], plugin_config: &[u8]) -> (Vm, bool, bool) {
        self.try_vm_of(loaded(), vm_config, plugin_config)
    }

    /// A VM of another guest than the filter.
    pub fn try_vm_of(
        &self,
        l: &Loaded,
        vm_config: &[u8],
        plugin_config: &[u8],
    ) -> (Vm, bool, bool) {
        let state = HostState::new(
            self.shared.clone(),
            vm_config.to_vec(),
            plugin_config.to_vec(),
        );
        let mut store = Store::new(&l.engine, state);
        let instance = l
            .pre
            .instantiate(&mut store)
            .unwrap_or_else(|e| panic!("instantiating {}: {e:?}", l.path.display()));
        let memory = instance.get_memory(&mut store, "memory");
        let allocate = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().allocate = allocate;
        let mut vm = Vm {
            store,
            instance,
            root: 1,
            next_context: 2,
            funcs: HashMap::new(),
        };
        vm.call::<(), ()>(0, "_initialize", ());
        let root = vm.root;
        vm.store.data_mut().root_context = root;
        vm.store.data_mut().contexts.push(root);
        vm.call::<(u32, u32), ()>(root, "proxy_on_context_create", (root, 0));
        let started =
            vm.call::<(u32, u32), u32>(root, "proxy_on_vm_start", (root, vm_config.len() as u32))
                != 0;
        vm.store.data_mut().configuring = true;
        let configured = vm.call::<(u32, u32), u32>(
            root,
            "proxy_on_configure",
            (root, plugin_config.len() as u32),
        ) != 0;
        vm.store.data_mut().configuring = false;
        (vm, started, configured)
    }

    /// ngx_wasm_module's manners with an `shm_kv` zone and a metric-name limit.
    pub fn ngx(kv_zone: bool, max_metric_name_length: usize) -> Host {
        let mut host = Host::with_manners(Manners::Ngx);
        host.shared.kv_zone = kv_zone;
        host.shared.ngx_metric_name_length = max_metric_name_length;
        host
    }

    pub fn manners(&self) -> Manners {
        self.shared.manners
    }

    /// A snapshot of every VM's metrics.
    pub fn metrics(&self) -> Metrics {
        Metrics(self.shared.metrics.lock().unwrap().clone())
    }

    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Moves the virtual clock (no ticks: see [`Vm::advance`]).
    pub fn advance_ms(&self, ms: u64) {
        self.shared
            .clock
            .fetch_add(ms * 1_000_000, Ordering::SeqCst);
    }

    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut d = self.shared.data.lock().unwrap();
        let cas = d.entries.get(key).map_or(0, |(_, c)| *c) + 1;
        d.entries.insert(key.to_string(), (value.to_vec(), cas));
    }
}

/// One Wasm VM running the filter, with its root context.
pub struct Vm {
    pub(super) store: Store<HostState>,
    instance: Instance,
    pub root: u32,
    next_context: u32,
    /// Guest exports by name, looked up once.
    funcs: HashMap<String, Func>,
}

impl Vm {
    /// Calls a guest export with `context` as the running context. A trap fails the test
    /// with the guest's own panic message (logged by its panic hook) and its log.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context: u32,
        name: &str,
        params: P,
    ) -> R {
        let func = match self.funcs.get(name) {
            Some(f) => *f,
            None => {
                let f = self
                    .instance
                    .get_func(&mut self.store, name)
                    .unwrap_or_else(|| panic!("the guest does not export {name}"));
                self.funcs.insert(name.to_string(), f);
                f
            }
        };
        let f: TypedFunc<P, R> = func
            .typed(&self.store)
            .unwrap_or_else(|e| panic!("guest export {name}: {e:#}"));
        self.store.data_mut().current_context = context;
        match f.call(&mut self.store, params) {
            Ok(r) => r,
            Err(e) => panic!(
                "the guest trapped in {name} (context {context}): {e:?}\n--- guest log ---\n{}--- stderr ---\n{}",
                self.log_text(),
                String::from_utf8_lossy(&self.store.data().stderr)
            ),
        }
    }

    /// Creates an HTTP context (as Envoy does for each new stream) and returns its id.
    pub fn new_http_context(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        let s = self.store.data_mut();
        s.contexts.push(id);
        s.streams.insert(id, StreamState::default());
        let root = self.root;
        self.call::<(u32, u32), ()>(id, "proxy_on_context_create", (id, root));
        id
    }

    /// Calls a stream callback that returns an action.
    pub(super) fn action<P: WasmParams>(&mut self, context: u32, name: &str, params: P) -> Action {
        let v = self.call::<P, u32>(context, name, params);
        Action::from_u32(v).unwrap_or_else(|| panic!("{name} returned {v}, not an action"))
    }

    /// A client that sends its request headers and the first `body` bytes, then stalls:
    /// the stream stays open (until [`Vm::end_stalled`]). Returns the two actions.
    pub fn start_stalled_request(
        &mut self,
        headers: super::Headers,
        body: &[u8],
    ) -> (Action, Action) {
        let id = self.new_http_context();
        let n = headers.len() as u32;
        self.stream_state(id).request_headers = Some(headers);
        let a = self.action(id, "proxy_on_request_headers", (id, n, 0u32));
        self.stream_state(id).request_body = Some(body.to_vec());
        let b = self.action(id, "proxy_on_request_body", (id, body.len() as u32, 0u32));
        self.stream_state(id).request_body = None;
        (a, b)
    }

    /// Ends every stream still open as a client that went away: `on_log`, `on_done`,
    /// `on_delete`.
    pub fn end_open_streams(&mut self) {
        for id in self.state().contexts.clone() {
            if id == self.root {
                continue;
            }
            self.call::<u32, ()>(id, "proxy_on_log", id);
            self.finish_context(id);
            self.take_stream(id);
        }
    }

    /// `on_done` then `on_delete`, and the host forgets the context.
    pub fn finish_context(&mut self, id: u32) -> bool {
        let done = self.call::<u32, u32>(id, "proxy_on_done", id) != 0;
        self.call::<u32, ()>(id, "proxy_on_delete", id);
        let s = self.store.data_mut();
        s.contexts.retain(|c| *c != id);
        done
    }

    /// Removes a finished stream's state and returns it.
    pub(super) fn take_stream(&mut self, id: u32) -> StreamState {
        self.store
            .data_mut()
            .streams
            .remove(&id)
            .unwrap_or_default()
    }

    pub(super) fn stream_state(&mut self, id: u32) -> &mut StreamState {
        self.store
            .data_mut()
            .streams
            .get_mut(&id)
            .expect("a live stream")
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// A VM-wide property (Envoy's node, cluster, route...), as raw bytes.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.store
            .data_mut()
            .properties
            .insert(path.iter().map(|s| s.to_string()).collect(), value.to_vec());
    }

    pub fn set_log_level(&mut self, level: LogLevel) {
        self.store.data_mut().log_level = level;
    }

    pub fn manners(&self) -> Manners {
        self.store.data().shared.manners
    }

    /// Every property path the guest asked for, dotted.
    pub fn asked_properties(&self) -> &[String] {
        &self.store.data().asked_properties
    }

    /// Properties the host refused to set.
    pub fn refused_properties(&self) -> &[String] {
        &self.store.data().refused_properties
    }

    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().logs
    }

    pub fn logs_of(&self, context: u32) -> Vec<&LogLine> {
        self.logs()
            .iter()
            .filter(|l| l.context == context)
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|l| format!("[{:?} ctx {}] {}\n", l.level, l.context, l.message))
            .collect()
    }

    /// How many times each metric name was defined in this VM.
    pub fn define_counts(&self) -> BTreeMap<String, usize> {
        self.store.data().define_counts()
    }

    pub fn defines(&self) -> &[(MetricType, String)] {
        &self.store.data().defines
    }

    /// Metric operations the host refused (as Envoy would), with their status.
    pub fn refused_metric_ops(&self) -> &[(String, u32)] {
        &self.store.data().refused_metric_ops
    }

    /// The guest's linear memory, in 64 KiB pages.
    pub fn memory_pages(&mut self) -> u64 {
        let mem = self
            .instance
            .get_memory(&mut self.store, "memory")
            .expect("the guest exports its memory");
        mem.size(&self.store)
    }

    /// Moves the shared clock by `ms` and delivers the ticks that fall due, as Envoy's
    /// timer would.
    pub fn advance(&mut self, host: &Host, ms: u64) -> u32 {
        let mut ticks = 0;
        let mut left = ms;
        loop {
            let period = u64::from(self.store.data().tick_period_ms);
            if period == 0 || left < period {
                host.advance_ms(left);
                return ticks;
            }
            host.advance_ms(period);
            left -= period;
            let root = self.root;
            self.call::<u32, ()>(root, "proxy_on_tick", root);
            ticks += 1;
        }
    }

    /// Delivers a callout's response (`None`: the callout failed) to the context that made it.
    pub fn deliver_http_call(&mut self, token: u32, response: Option<CalloutResponse>) {
        let call = self
            .store
            .data()
            .http_calls
            .iter()
            .find(|c| c.token == token)
            .unwrap_or_else(|| panic!("no callout with token {token}"))
            .clone();
        let (h, b, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (r.headers.len(), r.body.len(), r.trailers.len())
        });
        self.store.data_mut().callout_response = Some(response.unwrap_or_default());
        self.call::<(u32, u32, u32, u32, u32), ()>(
            call.context,
            "proxy_on_http_call_response",
            (call.context, token, h as u32, b as u32, t as u32),
        );
        self.store.data_mut().callout_response = None;
    }
}
