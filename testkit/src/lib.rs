//! Test support for tokenmeter, shared by the end-to-end tests, the demo and the benchmarks:
//! an OpenAI-compatible upstream ([`upstream`]) and judge ([`judge`]), the real Envoy
//! ([`envoy`]), the collector ([`collector`]), webhook and SMTP receivers for alerts, a real Alertmanager
//! ([`alertmanager`]), an upstream that streams one event per write ([`trickle`]), a
//! Prometheus text reader ([`prom`]), a real Prometheus ([`prometheus`]), a real PostgreSQL
//! ([`postgres`]), the names PromQL expressions use checked against what tokenmeter emits
//! ([`promql`]), the Grafana dashboard's generator ([`grafana`]) and an HTTP client that
//! never treats a status as an error ([`client`]).

pub mod alertmanager;
pub mod axum_thread;
pub mod client;
pub mod collector;
pub mod demo;
pub mod envoy;
pub mod grafana;
pub mod judge;
pub mod postgres;
pub mod prom;
pub mod prometheus;
pub mod promql;
pub mod smtp;
pub mod trickle;
pub mod upstream;
pub mod webhook;
