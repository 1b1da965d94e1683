//! Metric ids by series name, defined once per series and VM.

use std::collections::HashMap;

use proxy_wasm::types::{LogLevel, MetricType};

use super::host;
use tokenmeter_core::series::metrics::{Kind, Point};

#[derive(Default)]
pub struct MetricStore {
    ids: HashMap<String, u32>,
    /// Set once a definition failed, so the log says it once rather than per request.
    define_failed: bool,
}

impl MetricStore {
    pub fn record(&mut self, points: &[Point]) {
        for p in points {
            let Some(id) = self.id(p) else { continue };
            let recorded = match p.kind {
                Kind::Counter => {
                    host::increment_metric(id, i64::try_from(p.value).unwrap_or(i64::MAX))
                }
                Kind::Histogram => host::record_metric(id, p.value),
            };
            let _ = recorded;
        }
    }

    fn id(&mut self, p: &Point) -> Option<u32> {
        if let Some(id) = self.ids.get(&p.name) {
            return Some(*id);
        }
        let kind = match p.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
        };
        match host::define_metric(kind, &p.name) {
            Some(id) => {
                self.ids.insert(p.name.clone(), id);
                Some(id)
            }
            None => {
                if !self.define_failed {
                    self.define_failed = true;
                    host::log(
                        LogLevel::Error,
                        &format!("tokenmeter: the host refused to define metric {}", p.name),
                    );
                }
                None
            }
        }
    }
}
