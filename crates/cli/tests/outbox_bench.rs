//! `yard bench outbox --store sqlite|postgres --json` with tiny numbers, through the binary:
//! runs end to end, exits 0, and reports sane figures (positive rates, ratio = rate / baseline
//! of the median run, ordered percentiles, settings). The PostgreSQL run needs a server
//! (`EVENTYARD_PG_URL` or the loopback default; skipped outside CI when absent).
//!
//! The full benchmark: `cargo run --release -p eventyard-cli -- bench outbox --store postgres`.

mod common;

use common::num;

use eventyard_testkit::services::{Service, require};
use serde_json::Value;

fn bench(store: &str, url: Option<&str>) -> Value {
    let mut cmd = common::yard();
    cmd.args([
        "bench",
        "outbox",
        "--store",
        store,
        "--json",
        "--events",
        "1500",
        "--runs",
        "1",
        "--batch",
        "200",
        "--keys",
        "100",
        "--rate",
        "200",
        "--seconds",
        "0.5",
    ])
    .env("YARD_LOG", "error");
    if let Some(u) = url {
        cmd.args(["--url", u]);
    }
    let out = cmd.output().expect("run yard");
    let v = common::json_report(&out);
    assert_eq!(v["benchmark"], "outbox", "{v}");
    assert_eq!(v["store"], store, "{v}");
    let (baseline, rate, ratio) = (num(&v, "baseline_rate"), num(&v, "rate"), num(&v, "ratio"));
    assert!(baseline > 0.0 && rate > 0.0 && ratio > 0.0, "{v}");
    // One run: the ratio is that run's.
    assert!(
        (ratio - rate / baseline).abs() <= 1e-9 * ratio.max(1.0),
        "{v}"
    );
    let (p50, p99, p999) = (num(&v, "p50_ms"), num(&v, "p99_ms"), num(&v, "p999_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{v}");
    assert_eq!(v["latency"]["events"], 100, "{v}");
    let s = &v["settings"];
    assert_eq!(s["events"], 1500, "{v}");
    assert_eq!(s["batch"], 200, "{v}");
    assert_eq!(s["keys"], 100, "{v}");
    assert_eq!(s["runs"], 1, "{v}");
    assert!(
        s["durability"].as_str().is_some_and(|d| !d.is_empty()),
        "{v}"
    );
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(num(&v, "target_ratio"), 0.5, "{v}");
    v
}

#[test]
fn bench_outbox_sqlite_json_is_sane() {
    let v = bench("sqlite", None);
    assert_eq!(num(&v, "target_rate"), 0.0, "{v}");
}

#[test]
fn bench_outbox_postgres_json_is_sane() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let v = bench("postgres", Some(&url));
    assert_eq!(num(&v, "target_rate"), 10_000.0, "{v}");
    let d = v["settings"]["durability"].as_str().unwrap();
    assert!(d.contains("synchronous_commit=on"), "{d}");
}

#[test]
fn bench_outbox_rejects_an_unknown_store() {
    let out = common::run(&["bench", "outbox", "--store", "mysql"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("mysql"), "{:?}", out);
}
