//! The outbox benchmark module (`src/bench/outbox.rs`, to be wired as `yard bench outbox`),
//! compiled here directly: a small smoke run always, the full run on demand:
//! `cargo test --release -p eventyard-cli --test outbox_bench -- --ignored --nocapture`.

#[path = "../src/bench/outbox.rs"]
#[allow(dead_code)]
mod bench_outbox;

use std::time::Duration;

use bench_outbox::{OutboxBenchOptions, measure, print};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_bench_smoke() {
    let r = measure(&OutboxBenchOptions {
        events: 3000,
        runs: 1,
        latency_rate: 200,
        latency_for: Duration::from_secs(1),
        ..OutboxBenchOptions::default()
    })
    .await
    .unwrap();
    print(&r);
    assert!(r.insert_rate > 0.0 && r.drain_rate > 0.0 && r.ratio > 0.0);
    assert_eq!(r.latency.events, 200);
    assert!(r.latency.p50_ms < 1000.0, "{:?}", r.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it in release mode, on purpose"]
async fn outbox_bench_full() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if [
        "OUTBOX_BENCH_EVENTS",
        "OUTBOX_BENCH_RUNS",
        "OUTBOX_BENCH_KEYS",
    ]
    .iter()
    .all(|k| env(k).is_none())
    {
        let json = std::env::var("OUTBOX_BENCH_JSON").is_ok();
        bench_outbox::run("sqlite", json).await.unwrap();
        return;
    }
    let d = OutboxBenchOptions::default();
    let r = measure(&OutboxBenchOptions {
        events: env("OUTBOX_BENCH_EVENTS").unwrap_or(d.events),
        runs: env("OUTBOX_BENCH_RUNS").unwrap_or(d.runs),
        keys: env("OUTBOX_BENCH_KEYS").unwrap_or(d.keys),
        ..d
    })
    .await
    .unwrap();
    print(&r);
}
