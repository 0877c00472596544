//! The PostgreSQL side of `yard bench saga`: the raw-transaction baseline
//! ([`bench_raw_steps`]) against the store's own load → commit loop (what the engine does per
//! step, without its instance cache), on fresh schemas. Prints both rates; checks the rows.
//!
//! `EVENTYARD_SAGA_BENCH_STEPS` (default 1000) sets the steps of each side;
//! `EVENTYARD_SAGA_BENCH_SYNC=off` runs both sides with `synchronous_commit = off`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use eventyard_core::saga::SagaStore;
use eventyard_core::transport::Message;
use eventyard_postgres::saga::{RawStepBench, bench_raw_steps};
use eventyard_postgres::{PgSagaConfig, PgSagaStore};
use eventyard_testkit::saga::{commit, event, instance};
use serde_json::json;

const INSTANCES: u64 = 64;
const CONNECTIONS: usize = 8;

async fn fresh_store(url: &str) -> (PgSagaStore, String) {
    let schema = common::unique_schema();
    let config = PgSagaConfig {
        pool_size: CONNECTIONS,
        synchronous_commit: std::env::var("EVENTYARD_SAGA_BENCH_SYNC").as_deref() != Ok("off"),
        ..PgSagaConfig::with_schema(&schema)
    };
    let store = PgSagaStore::connect(url, config).await.expect("connect");
    (store, schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_baseline_and_store_steps() {
    let Some(url) = common::url() else { return };
    let steps: u64 = std::env::var("EVENTYARD_SAGA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let sample = event("BenchSagaProgressed", "k");

    let (raw_store, raw_schema) = fresh_store(&url).await;
    let bench = RawStepBench {
        saga: "bench".into(),
        steps,
        instances: INSTANCES,
        connections: CONNECTIONS,
        topic: "BenchSagaProgressed".into(),
        message: Message {
            body: sample.message.body.clone(),
            properties: sample.message.properties.clone(),
        },
    };
    let raw = bench_raw_steps(&raw_store, &bench).await;
    common::drop_schema_blocking(&url, &raw_schema);
    let raw = raw.expect("raw baseline");

    let (store, schema) = fresh_store(&url).await;
    let store = Arc::new(store);
    for i in 0..INSTANCES {
        let c = commit(
            instance(
                "bench",
                &format!("bench-{i}"),
                "Running",
                json!({"count": 0}),
            ),
            0,
            None,
        );
        store.commit(c).await.expect("create");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..INSTANCES {
        let store = Arc::clone(&store);
        let n = steps / INSTANCES + u64::from(i < steps % INSTANCES);
        tasks.push(tokio::spawn(async move {
            let key = format!("bench-{i}");
            for _ in 0..n {
                let mut inst = store.load("bench", &key).await?.expect("present");
                let v = inst.version;
                inst.data = json!({ "count": v });
                let mut c = commit(inst, v, Some("Running"));
                c.events = vec![event("BenchSagaProgressed", &key)];
                store.commit(c).await?;
            }
            Ok::<_, eventyard_core::saga::SagaError>(n)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("task").expect("steps");
    }
    let rate = steps as f64 / started.elapsed().as_secs_f64();
    let versions: u64 = {
        let all = store.list(&Default::default()).await.expect("list");
        all.iter().map(|i| i.version - 1).sum()
    };
    common::drop_schema_blocking(&url, &schema);
    assert_eq!((done, versions), (steps, steps));
    println!(
        "saga steps on PostgreSQL ({steps} steps, {INSTANCES} instances, {CONNECTIONS} \
         connections): raw transaction {raw:.0}/s, store load+commit {rate:.0}/s, ratio {:.3}",
        rate / raw
    );
}
