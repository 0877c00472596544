//! The relay drain benchmark (TARGETS R4) as an ignored test that prints its figures:
//! `cargo test --release -p eventyard-postgres --test bench_drain -- --ignored --nocapture`.
//! `EVENTYARD_BENCH_N` (default 100000), `EVENTYARD_BENCH_BATCH` (500) and
//! `EVENTYARD_BENCH_RELAYS` (1) change the workload; `EVENTYARD_BENCH_SYNC=1` makes the relay's
//! bookkeeping commit synchronously.

use eventyard_postgres::bench::{DrainOptions, bench_drain_with};
use eventyard_testkit::services::{Service, require};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
async fn relay_drain_rate() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let options = DrainOptions {
        n: env("EVENTYARD_BENCH_N", 100_000),
        batch: env("EVENTYARD_BENCH_BATCH", 500),
        relays: env("EVENTYARD_BENCH_RELAYS", 1),
        payload_bytes: 256,
        synchronous_commit: std::env::var("EVENTYARD_BENCH_SYNC").is_ok_and(|v| v == "1"),
    };
    let f = bench_drain_with(&url, options).await.expect("benchmark");
    println!("{}", serde_json::to_string_pretty(&f).unwrap());
    println!(
        "R4 postgres: baseline {:.0}/s, drain {:.0}/s, ratio {:.2} (claim {:.2}s, mark {:.2}s; \
         cleanup {:.0}/s; {})",
        f.baseline_rate, f.rate, f.ratio, f.claim_secs, f.mark_secs, f.cleanup_rate, f.durability
    );
    if let (Some(b), Some(d)) = (f.backend_cpu_baseline_secs, f.backend_cpu_drain_secs) {
        println!(
            "server backend CPU per 1k rows: baseline {:.1} ms, drain {:.1} ms (CPU ratio {:.2}); \
             relay process CPU {:.2} s; load average {:?}",
            b * 1e6 / f.n as f64,
            d * 1e6 / f.n as f64,
            b / d,
            f.client_cpu_drain_secs.unwrap_or_default(),
            f.load_average
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
async fn commit_to_claim_latency() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let n = env("EVENTYARD_BENCH_WAKE_N", 3_000);
    let f = eventyard_postgres::bench::bench_wake(&url, 1_000.0, n)
        .await
        .expect("benchmark");
    println!(
        "R6 (store part) postgres: due -> claim at {:.0}/s over {} events: p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms; commit returned -> claim: p50 {:.2} ms, p99 {:.2} ms; \
         producers up to {:.0} ms late",
        f.rate, f.n, f.p50_ms, f.p99_ms, f.max_ms, f.wake_p50_ms, f.wake_p99_ms, f.producer_lag_ms
    );
}
