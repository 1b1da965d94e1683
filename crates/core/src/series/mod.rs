//! Metric series: label names and values made safe to embed in a metric name ([`labels`]),
//! where a dimension's value comes from ([`dimensions`]), the caps that keep client values
//! from growing the series without bound ([`cardinality`]), the points a settlement
//! becomes ([`metrics`]), and the per-minute rollups of all traffic sent to the collector
//! ([`rollup`]). `labels` and `dimensions` import nothing from the rest of the
//! core, since [`crate::config`] validates with them; `cardinality` and `metrics` may import
//! [`crate::config`], [`crate::openai`] and [`crate::exchange::settlement`], and so may
//! `rollup`, whose lists of status classes and error types `metrics` reads too.

pub mod cardinality;
pub mod dimensions;
pub mod labels;
pub mod metrics;
pub mod rollup;
