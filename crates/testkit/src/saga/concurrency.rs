//! The concurrent case of the saga suite: optimistic concurrency loses no update.

use std::sync::Arc;

use eventyard_core::saga::{SagaError, SagaStore};
use serde_json::json;

use super::{SagaFactory, commit, commit_ok, details_ok, instance};

/// Tasks on separate handles each add their number to one instance's data through load →
/// commit, retrying on conflict: the final data holds every number once, the version counts
/// every commit, the history has one entry per commit.
pub async fn concurrent_commits_lose_no_update(f: &dyn SagaFactory) {
    const TASKS: u64 = 6;
    const EACH: u64 = 8;
    let store = f.connect().await;
    commit_ok(
        &*store,
        commit(
            instance("counter", "k", "Counting", json!({"seen": []})),
            0,
            None,
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store: Arc<dyn SagaStore> = f.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..EACH {
                loop {
                    let mut inst = store
                        .load("counter", "k")
                        .await
                        .expect("load")
                        .expect("present");
                    let expected = inst.version;
                    if let Some(seen) = inst.data["seen"].as_array_mut() {
                        seen.push(json!(t * EACH + i));
                    }
                    match store.commit(commit(inst, expected, Some("Counting"))).await {
                        Ok(_) => break,
                        Err(SagaError::Conflict { .. }) => conflicts += 1,
                        Err(e) if e.is_transient() => {}
                        Err(e) => panic!("commit failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let got = store
        .load("counter", "k")
        .await
        .expect("load")
        .expect("present");
    let mut seen: Vec<u64> = got.data["seen"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..TASKS * EACH).collect::<Vec<_>>(),
        "lost or doubled updates"
    );
    assert_eq!(got.version, 1 + TASKS * EACH);
    let d = details_ok(&*store, "counter", "k").await;
    assert_eq!(d.history.len() as u64, 1 + TASKS * EACH);
}
