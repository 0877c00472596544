//! Timeout cases of the saga suite: schedule, replace, cancel, fire, complete; claiming due
//! timeouts under concurrent claimers, leases.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{
    SagaFactory, claim_due_ok, commit, commit_ok, details_ok, instance, load_ok, now_ms, timeout,
};

fn names(ts: &[eventyard_core::saga::ScheduledTimeout]) -> Vec<&str> {
    ts.iter().map(|t| t.name.as_str()).collect()
}

/// Scheduling stores a timeout with its envelope; scheduling the same name again replaces it;
/// cancelling by name deletes it; a commit naming a fired timeout deletes it; completion deletes
/// the rest. `next_due` follows.
pub async fn timeouts_schedule_replace_cancel_and_complete(f: &dyn SagaFactory) {
    let store = f.connect().await;
    assert_eq!(store.next_due().await.expect("next_due"), None);
    let t0 = now_ms() + chrono::Duration::hours(1);
    let a = timeout("orders", "k-1", "ATimedOut", t0);
    let b = timeout(
        "orders",
        "k-1",
        "BTimedOut",
        t0 + chrono::Duration::minutes(1),
    );
    let c = timeout(
        "orders",
        "k-1",
        "CTimedOut",
        t0 + chrono::Duration::minutes(2),
    );
    let mut first = commit(instance("orders", "k-1", "S1", json!({})), 0, None);
    first.schedule = vec![a.clone(), b.clone(), c.clone()];
    commit_ok(&*store, first).await;
    let d = details_ok(&*store, "orders", "k-1").await;
    assert_eq!(
        d.timeouts,
        vec![a.clone(), b.clone(), c.clone()],
        "round trip"
    );
    assert_eq!(store.next_due().await.expect("next_due"), Some(t0));

    // Replace A (later), cancel B.
    let a2 = timeout(
        "orders",
        "k-1",
        "ATimedOut",
        t0 + chrono::Duration::minutes(5),
    );
    let mut second = commit(load_ok(&*store, "orders", "k-1").await, 1, Some("S1"));
    second.instance.state = "S2".into();
    second.schedule = vec![a2.clone()];
    second.cancel = vec!["BTimedOut".into(), "NoSuchTimedOut".into()];
    commit_ok(&*store, second).await;
    let d = details_ok(&*store, "orders", "k-1").await;
    assert_eq!(names(&d.timeouts), ["CTimedOut", "ATimedOut"]);
    assert_eq!(d.timeouts[1], a2, "replaced by the new schedule");
    assert_eq!(
        store.next_due().await.expect("next_due"),
        Some(c.due_at),
        "next due follows"
    );

    // C fires and is handled.
    let mut third = commit(load_ok(&*store, "orders", "k-1").await, 2, Some("S2"));
    third.instance.state = "S3".into();
    third.fired = Some(c.id.clone());
    third.history.event_id = c.id.clone();
    commit_ok(&*store, third).await;
    let d = details_ok(&*store, "orders", "k-1").await;
    assert_eq!(names(&d.timeouts), ["ATimedOut"]);

    // Completion deletes the rest.
    let mut last = commit(load_ok(&*store, "orders", "k-1").await, 3, Some("S3"));
    last.instance.completed = true;
    commit_ok(&*store, last).await;
    let d = details_ok(&*store, "orders", "k-1").await;
    assert!(d.timeouts.is_empty());
    assert_eq!(store.next_due().await.expect("next_due"), None);
}

/// `claim_due` returns only timeouts due at `now`, earliest first, at most `max`; concurrent
/// claimers get each due timeout exactly once while leases run; a timeout whose lease expired
/// (its claimer crashed) is claimed again; `mark_fired` deletes it for good.
pub async fn claim_due_hands_each_timeout_out_once(f: &dyn SagaFactory) {
    const INSTANCES: usize = 10;
    const PER: usize = 4;
    let store = f.connect().await;
    let now = now_ms();
    let mut due_ids = HashSet::new();
    for i in 0..INSTANCES {
        let key = format!("k-{i}");
        let mut c = commit(instance("orders", &key, "S", json!({})), 0, None);
        for j in 0..PER {
            let t = timeout(
                "orders",
                &key,
                &format!("Step{j}TimedOut"),
                now - chrono::Duration::milliseconds((i * PER + j) as i64),
            );
            due_ids.insert(t.id.clone());
            c.schedule.push(t);
        }
        c.schedule.push(timeout(
            "orders",
            &key,
            "LaterTimedOut",
            now + chrono::Duration::hours(1),
        ));
        commit_ok(&*store, c).await;
    }

    let first = claim_due_ok(&*store, now, 3, Duration::from_secs(60)).await;
    assert_eq!(first.len(), 3);
    assert!(
        first.windows(2).all(|w| w[0].due_at <= w[1].due_at),
        "earliest first: {first:?}"
    );
    assert!(first.iter().all(|t| t.due_at <= now));

    let mut claimers = Vec::new();
    for _ in 0..4 {
        let store: Arc<dyn eventyard_core::saga::SagaStore> = f.connect().await;
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = claim_due_ok(&*store, now, 5, Duration::from_secs(60)).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|t| t.id));
            }
        }));
    }
    let mut seen: Vec<String> = first.iter().map(|t| t.id.clone()).collect();
    for c in claimers {
        seen.extend(c.await.expect("claimer"));
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a timeout was claimed twice");
    assert_eq!(unique, due_ids, "every due timeout, and only those");
    for id in &unique {
        store.mark_fired(id).await.expect("mark_fired");
    }
    store
        .mark_fired("no-such-timeout")
        .await
        .expect("unknown ids are ignored");

    // Lease expiry: a short lease, not marked fired, comes back.
    let later = now + chrono::Duration::hours(2);
    let short = claim_due_ok(&*store, later, 100, Duration::from_millis(200)).await;
    assert_eq!(short.len(), INSTANCES, "the later ones are due at +2h");
    let again = claim_due_ok(
        &*store,
        later + chrono::Duration::milliseconds(50),
        100,
        Duration::from_millis(200),
    )
    .await;
    assert!(again.is_empty(), "re-claimed while leased: {again:?}");
    let expired = later + chrono::Duration::seconds(1);
    let back = claim_due_ok(&*store, expired, 100, Duration::from_secs(60)).await;
    assert_eq!(back.len(), INSTANCES, "expired leases are claimable again");

    for t in &back {
        store.mark_fired(&t.id).await.expect("mark_fired");
    }
    let gone = claim_due_ok(
        &*store,
        expired + chrono::Duration::hours(1),
        100,
        Duration::from_secs(60),
    )
    .await;
    assert!(gone.is_empty(), "fired timeouts came back: {gone:?}");
    assert_eq!(store.next_due().await.expect("next_due"), None);
}
