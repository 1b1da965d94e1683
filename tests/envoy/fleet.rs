//! A fleet's store end to end: two real Envoys with the filter deliver records and usage
//! rollups, balanced over three `tokenmeter serve` that share one real PostgreSQL server;
//! the server is stopped mid-traffic and started again.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{chat, spec};
use serde_json::json;
use tokenmeter_cli::bootstrap;
use tokenmeter_core::config::Config;
use tokenmeter_testkit::client;
use tokenmeter_testkit::collector::Collector;
use tokenmeter_testkit::envoy::Envoy;
use tokenmeter_testkit::postgres::Postgres;
use tokenmeter_testkit::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_tokenmeter");

const CONFIG: &str = r#"{
  "dimensions": [{"name": "team", "value": "{request.header.x-team|none}"}],
  "collect": {"cluster": "tokenmeter_collector", "sample_rate": 1, "rollup_interval_ms": 1000,
              "timeout_ms": 2000}
}"#;

/// Sends `ids` through the gateways in turn, a third of them streamed; every client gets
/// its answer whatever the store is doing.
fn send(envoys: &[Envoy], ids: &[String]) {
    let mut streamed = chat("gpt-4o-mini", "Stream me an answer.");
    streamed["stream"] = json!(true);
    for (i, id) in ids.iter().enumerate() {
        let team = ["red", "blue"][i % 2];
        let body = if i % 3 == 0 {
            streamed.clone()
        } else {
            chat("gpt-4o", &format!("Question {id}"))
        };
        let r = client::post(
            &envoys[i % envoys.len()].url("/v1/chat/completions"),
            &[("x-request-id", id.as_str()), ("x-team", team)],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{id}");
    }
}

/// A counter summed over every gateway.
fn total(envoys: &[Envoy], name: &str, labels: &[(&str, &str)]) -> f64 {
    envoys
        .iter()
        .map(|e| e.prometheus().unwrap().sum(name, labels))
        .sum()
}

fn until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stored_ids(pg: &Postgres) -> BTreeSet<String> {
    pg.psql("fleet", "SELECT id FROM records")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A team's requests, prompt tokens and total tokens in every tier and marginal of the
/// store (they must agree), read in one statement: one snapshot, while batches arrive.
fn stored_usage(pg: &Postgres, team: &str) -> [i64; 3] {
    let sums = "coalesce(sum(requests_2xx), 0) || ',' || coalesce(sum(prompt_tokens), 0) || ',' || coalesce(sum(total_tokens), 0)";
    let series = format!("'{{\"team\":\"{team}\"}}'");
    let mut parts = Vec::new();
    for t in ["rollups_minute", "rollups_hour", "rollups_day"] {
        parts.push(format!(
            "(SELECT {sums} FROM {t} r JOIN series s ON s.id = r.series_id WHERE s.labels = {series})"
        ));
    }
    for t in ["marginals_hour", "marginals_day"] {
        parts.push(format!(
            "(SELECT {sums} FROM {t} WHERE label = 'team' AND value = '{team}')"
        ));
    }
    let line = pg
        .psql("fleet", &format!("SELECT {}", parts.join(" || ' ' || ")))
        .unwrap();
    let all: Vec<&str> = line.split(' ').collect();
    assert!(
        all.iter().all(|a| *a == all[0]),
        "the tiers differ for {team}: {all:?}"
    );
    let v: Vec<i64> = all[0].split(',').map(|x| x.parse().unwrap()).collect();
    [v[0], v[1], v[2]]
}

#[test]
fn two_gateways_and_three_collectors_share_one_postgres_through_an_outage() {
    let pg = Postgres::start().unwrap();
    pg.create_database("fleet").unwrap();
    let url = pg.url("fleet");
    let collectors: Vec<Collector> = (0..3)
        .map(|_| {
            Collector::start_db(
                Path::new(BIN),
                OsStr::new(&url),
                "127.0.0.1:0",
                &[],
                &[("TOKENMETER_DB_PASSWORD", pg.password())],
            )
            .unwrap()
        })
        .collect();
    let endpoints: Vec<(String, u16)> = collectors
        .iter()
        .map(|c| {
            let (host, port) = c
                .url()
                .trim_start_matches("http://")
                .rsplit_once(':')
                .unwrap();
            (host.to_string(), port.parse().unwrap())
        })
        .collect();
    let upstream = Upstream::start().unwrap();
    let config = Config::parse(CONFIG.as_bytes()).unwrap();
    let envoys: Vec<Envoy> = (0..2)
        .map(|i| {
            let mut s = spec(CONFIG, &upstream);
            s.node_id = Some(format!("gw-{i}"));
            s.collectors = endpoints.clone();
            Envoy::start(&bootstrap::render(&s, &config), 2).unwrap()
        })
        .collect();
    let ids =
        |phase: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{phase}-{i}")).collect() };

    // Before: every record stored once, whichever collector took it.
    let before = ids("before", 24);
    send(&envoys, &before);
    until(
        "the records before the outage",
        Duration::from_secs(30),
        || stored_ids(&pg).len() == before.len(),
    );

    // The database goes away: clients notice nothing, the gateways count the records the
    // collectors could not take (503), and keep the rollups for later.
    pg.stop().unwrap();
    let during = ids("during", 12);
    send(&envoys, &during);
    until(
        "the records dropped during the outage",
        Duration::from_secs(30),
        || total(&envoys, "llm_records_dropped_total", &[]) == during.len() as f64,
    );
    until("a failed rollup delivery", Duration::from_secs(30), || {
        total(&envoys, "llm_rollup_batches_failed_total", &[]) >= 1.0
    });

    // Back, the same collectors: they connect again by themselves.
    pg.start_again().unwrap();
    let after = ids("after", 12);
    send(&envoys, &after);
    let want: BTreeSet<String> = before.iter().chain(&after).cloned().collect();
    until(
        "the records after the outage",
        Duration::from_secs(30),
        || stored_ids(&pg) == want,
    );
    // Every rollup arrives once, retried batches perhaps at another collector.
    let counters = |team: &str| -> [i64; 3] {
        let t = [("team", team)];
        [
            total(
                &envoys,
                "llm_requests_total",
                &[("team", team), ("status_class", "2xx")],
            ) as i64,
            total(&envoys, "llm_prompt_tokens_total", &t) as i64,
            total(&envoys, "llm_tokens_total", &t) as i64,
        ]
    };
    until(
        "the rollups equal the counters",
        Duration::from_secs(60),
        || {
            ["red", "blue"]
                .iter()
                .all(|t| stored_usage(&pg, t) == counters(t))
        },
    );
    for team in ["red", "blue"] {
        assert_eq!(
            stored_usage(&pg, team)[0],
            24,
            "{team}: 48 requests, half each"
        );
    }
    assert_eq!(
        total(&envoys, "llm_records_dropped_total", &[]),
        during.len() as f64
    );
    assert_eq!(
        total(&envoys, "llm_records_sent_total", &[]),
        want.len() as f64
    );
    assert_eq!(
        total(&envoys, "llm_rollup_requests_dropped_total", &[]),
        0.0
    );
    // The collectors connected again after the outage, with no more connections than
    // their pools hold (four each).
    let connections: usize = pg
        .psql(
            "fleet",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokenmeter'",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!((3..=12).contains(&connections), "{connections} connections");
}
