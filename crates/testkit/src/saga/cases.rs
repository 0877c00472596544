//! Single-writer cases of the saga suite: create/load, versions, conflicts, duplicates, outbox
//! atomicity, list/details, completion.

use eventyard_core::saga::{SagaError, SagaFilter};
use serde_json::json;

use super::{
    SagaFactory, TENANT, absent, assert_conflict, claim_due_ok, commit, commit_event, commit_ok,
    details_ok, event, instance, load_ok, now_ms, outbox_records, timeout,
};

/// A first commit (expected version 0) creates the instance at version 1; load returns every
/// field as committed; an absent instance loads as `None`.
pub async fn create_then_load_round_trip(f: &dyn SagaFactory) {
    let store = f.connect().await;
    assert!(absent(&*store, "orders", "k-1").await);
    let data = json!({"count": 3, "items": ["a", "b"], "nested": {"ok": true, "x": 1.5}});
    let inst = instance("orders", "k-1", "Pending", data.clone());
    let v = commit_ok(&*store, commit(inst.clone(), 0, None)).await;
    assert_eq!(v, 1);
    let got = load_ok(&*store, "orders", "k-1").await;
    assert_eq!(got.saga, "orders");
    assert_eq!(got.key, "k-1");
    assert_eq!(got.tenant, TENANT);
    assert_eq!(got.state, "Pending");
    assert_eq!(got.data, data);
    assert_eq!(got.version, 1);
    assert!(!got.completed);
    assert_eq!(got.created_at, inst.created_at);
    assert_eq!(got.updated_at, inst.updated_at);
    // Another saga with the same key is another instance.
    assert!(absent(&*store, "payments", "k-1").await);
}

/// Each commit adds one to the version and one history entry (in order, with the states);
/// `created_at` is kept from the first commit.
pub async fn update_increments_version_and_appends_history(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let first = instance("orders", "k-1", "Pending", json!({"n": 0}));
    commit_ok(&*store, commit(first.clone(), 0, None)).await;
    for n in 1..=3u64 {
        let mut next = load_ok(&*store, "orders", "k-1").await;
        let from = next.state.clone();
        next.state = format!("Step{n}");
        next.data = json!({ "n": n });
        next.created_at = now_ms() + chrono::Duration::days(1); // ignored on updates
        next.updated_at = now_ms();
        let v = commit_ok(&*store, commit(next, n, Some(&from))).await;
        assert_eq!(v, n + 1);
    }
    let got = load_ok(&*store, "orders", "k-1").await;
    assert_eq!((got.version, got.state.as_str()), (4, "Step3"));
    assert_eq!(got.data, json!({"n": 3}));
    assert_eq!(got.created_at, first.created_at, "created_at must be kept");
    let details = details_ok(&*store, "orders", "k-1").await;
    let steps: Vec<(u64, Option<&str>, &str)> = details
        .history
        .iter()
        .map(|h| (h.version, h.from_state.as_deref(), h.to_state.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (1, None, "Pending"),
            (2, Some("Pending"), "Step1"),
            (3, Some("Step1"), "Step2"),
            (4, Some("Step2"), "Step3"),
        ]
    );
    assert!(details.history.iter().all(|h| h.event_type == "StepDone"));
}

/// A stale expected version is a conflict naming the stored version and writes nothing: the
/// state, the history, the outbox and the timeouts are those of the winner. Creating an existing
/// instance is a conflict too; committing a version for an absent instance finds 0.
pub async fn version_conflict_writes_nothing(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let outbox = f.outbox().await;
    commit_ok(
        &*store,
        commit(instance("orders", "k-1", "Pending", json!({})), 0, None),
    )
    .await;

    let mut winner = commit(
        instance("orders", "k-1", "Won", json!({"w": 1})),
        1,
        Some("Pending"),
    );
    winner.events = vec![event("orders", "k-1")];
    commit_ok(&*store, winner).await;

    let mut loser = commit(
        instance("orders", "k-1", "Lost", json!({"l": 1})),
        1,
        Some("Pending"),
    );
    loser.events = vec![event("orders", "k-1"), event("orders", "k-1")];
    loser.schedule = vec![timeout("orders", "k-1", "LoserTimedOut", now_ms())];
    let loser_event = loser.history.event_id.clone();
    assert_conflict(store.commit(loser).await, 1, 2);

    let got = load_ok(&*store, "orders", "k-1").await;
    assert_eq!((got.state.as_str(), got.version), ("Won", 2));
    assert_eq!(got.data, json!({"w": 1}));
    let details = details_ok(&*store, "orders", "k-1").await;
    assert_eq!(details.history.len(), 2, "history: {:?}", details.history);
    assert!(
        details.timeouts.is_empty(),
        "the loser's timeout was written"
    );
    assert!(
        !store
            .is_processed("orders", "k-1", &loser_event)
            .await
            .expect("processed")
    );
    assert_eq!(
        outbox_records(&*outbox).await.len(),
        1,
        "only the winner's event"
    );

    assert_conflict(
        store
            .commit(commit(
                instance("orders", "k-1", "Again", json!({})),
                0,
                None,
            ))
            .await,
        0,
        2,
    );
    assert_conflict(
        store
            .commit(commit(
                instance("orders", "absent", "X", json!({})),
                3,
                Some("Y"),
            ))
            .await,
        3,
        0,
    );
    assert!(absent(&*store, "orders", "absent").await);
}

/// The same event committed twice for one instance is a duplicate and writes nothing (also
/// with the right version); `is_processed` says so. The same event id is fine for another
/// instance.
pub async fn duplicate_event_is_a_no_op(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let outbox = f.outbox().await;
    let ev = super::fresh_event_id();
    assert!(
        !store
            .is_processed("orders", "k-1", &ev)
            .await
            .expect("processed")
    );
    let mut first = commit_event(
        instance("orders", "k-1", "Pending", json!({"n": 1})),
        0,
        None,
        &ev,
    );
    first.events = vec![event("orders", "k-1")];
    commit_ok(&*store, first).await;
    assert!(
        store
            .is_processed("orders", "k-1", &ev)
            .await
            .expect("processed")
    );

    let mut again = commit_event(
        instance("orders", "k-1", "Twice", json!({"n": 2})),
        1,
        Some("Pending"),
        &ev,
    );
    again.events = vec![event("orders", "k-1")];
    again.schedule = vec![timeout("orders", "k-1", "DupTimedOut", now_ms())];
    match store.commit(again).await {
        Err(SagaError::Duplicate { event_id, .. }) => assert_eq!(event_id, ev),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let got = load_ok(&*store, "orders", "k-1").await;
    assert_eq!((got.state.as_str(), got.version), ("Pending", 1));
    let details = details_ok(&*store, "orders", "k-1").await;
    assert_eq!(details.history.len(), 1);
    assert!(details.timeouts.is_empty());
    assert_eq!(outbox_records(&*outbox).await.len(), 1);

    // A duplicate of the start event (expected 0 on an existing instance) is a duplicate too.
    match store
        .commit(commit_event(
            instance("orders", "k-1", "P", json!({})),
            0,
            None,
            &ev,
        ))
        .await
    {
        Err(SagaError::Duplicate { .. }) => {}
        other => panic!("expected a duplicate of the start event, got {other:?}"),
    }
    // Another instance may handle the same event.
    commit_ok(
        &*store,
        commit_event(
            instance("orders", "k-2", "Pending", json!({})),
            0,
            None,
            &ev,
        ),
    )
    .await;
}

/// Emitted events are recorded in the outbox by the commit, in order, with their topic, key and
/// message; a commit that fails part-way (an event the outbox refuses) leaves no instance, no
/// history, no outbox record and no timeout.
pub async fn emitted_events_commit_atomically_with_the_state(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let outbox = f.outbox().await;
    let events = vec![event("orders", "k-1"), event("payments", "k-1")];
    let mut c = commit(instance("orders", "k-1", "Pending", json!({})), 0, None);
    c.events = events.clone();
    commit_ok(&*store, c).await;
    let got = outbox_records(&*outbox).await;
    assert_eq!(got.len(), 2, "records: {got:?}");
    for (rec, ev) in got.iter().zip(&events) {
        assert_eq!(
            (rec.topic.as_str(), rec.partition_key.as_str()),
            (ev.topic.as_str(), "k-1")
        );
        assert_eq!(rec.message, ev.message);
    }

    let mut bad = event("orders", "k-2");
    bad.partition_key = String::new(); // refused by the outbox
    let mut failing = commit(instance("orders", "k-2", "Pending", json!({})), 0, None);
    failing.events = vec![event("orders", "k-2"), bad];
    failing.schedule = vec![timeout("orders", "k-2", "NeverTimedOut", now_ms())];
    let r = store.commit(failing).await;
    assert!(r.is_err(), "a commit with a refused event succeeded: {r:?}");
    assert!(absent(&*store, "orders", "k-2").await);
    assert!(
        store
            .details("orders", "k-2")
            .await
            .expect("details")
            .is_none()
    );
    assert!(
        outbox_records(&*outbox).await.is_empty(),
        "a rolled-back event was recorded"
    );
    let due = claim_due_ok(
        &*store,
        now_ms() + chrono::Duration::hours(1),
        10,
        std::time::Duration::from_secs(60),
    )
    .await;
    assert!(
        due.is_empty(),
        "a rolled-back timeout was scheduled: {due:?}"
    );
}

/// `list` filters by saga, state, completion and tenant, most recently updated first, at most
/// `limit`; `details` returns the instance with its history and pending timeouts, `None` when
/// absent.
pub async fn list_and_details(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let base = now_ms();
    for (i, (saga, key, state, done)) in [
        ("orders", "o-1", "Pending", false),
        ("orders", "o-2", "Shipped", true),
        ("orders", "o-3", "Pending", false),
        ("payments", "p-1", "Pending", false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut inst = instance(saga, key, state, json!({ "i": i }));
        inst.updated_at = base + chrono::Duration::milliseconds(i as i64 * 10);
        inst.completed = done;
        commit_ok(&*store, commit(inst, 0, None)).await;
    }
    let mut other = instance("orders", "o-9", "Pending", json!({}));
    other.tenant = "tenant-b".into();
    other.updated_at = base + chrono::Duration::milliseconds(100);
    commit_ok(&*store, commit(other, 0, None)).await;

    let keys = |v: Vec<eventyard_core::saga::SagaInstance>| {
        v.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    let list = |filter: SagaFilter| {
        let store = store.clone();
        async move { store.list(&filter).await.expect("list") }
    };
    let all = list(SagaFilter::default()).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].key, "o-9", "newest first");
    let orders = SagaFilter {
        saga: Some("orders".into()),
        tenant: Some(TENANT.into()),
        ..Default::default()
    };
    assert_eq!(keys(list(orders.clone()).await), ["o-3", "o-2", "o-1"]);
    assert_eq!(
        keys(
            list(SagaFilter {
                state: Some("Pending".into()),
                ..orders.clone()
            })
            .await
        ),
        ["o-3", "o-1"]
    );
    assert_eq!(
        keys(
            list(SagaFilter {
                completed: Some(true),
                ..orders.clone()
            })
            .await
        ),
        ["o-2"]
    );
    assert_eq!(
        keys(
            list(SagaFilter {
                completed: Some(false),
                ..orders.clone()
            })
            .await
        ),
        ["o-3", "o-1"]
    );
    assert_eq!(
        keys(
            list(SagaFilter {
                limit: 1,
                ..orders.clone()
            })
            .await
        ),
        ["o-3"]
    );
    assert_eq!(
        keys(
            list(SagaFilter {
                tenant: Some("tenant-b".into()),
                ..Default::default()
            })
            .await
        ),
        ["o-9"]
    );

    let mut next = load_ok(&*store, "orders", "o-1").await;
    next.state = "Paid".into();
    let mut c = commit(next, 1, Some("Pending"));
    let t = timeout(
        "orders",
        "o-1",
        "PaymentTimedOut",
        base + chrono::Duration::hours(1),
    );
    c.schedule = vec![t.clone()];
    commit_ok(&*store, c).await;
    let d = details_ok(&*store, "orders", "o-1").await;
    assert_eq!(d.instance.state, "Paid");
    assert_eq!(d.history.len(), 2);
    assert_eq!(d.timeouts, vec![t]);
    assert!(
        store
            .details("orders", "nope")
            .await
            .expect("details")
            .is_none()
    );
}

/// A completed instance stays stored and listed, cannot be reopened (an update that clears
/// `completed` is refused and writes nothing), and its pending timeouts are gone.
pub async fn completed_instances_stay_and_cannot_reopen(f: &dyn SagaFactory) {
    let store = f.connect().await;
    let mut c = commit(instance("orders", "k-1", "Pending", json!({})), 0, None);
    c.schedule = vec![
        timeout(
            "orders",
            "k-1",
            "ATimedOut",
            now_ms() + chrono::Duration::hours(1),
        ),
        timeout("orders", "k-1", "BTimedOut", now_ms()),
    ];
    commit_ok(&*store, c).await;
    let mut done = load_ok(&*store, "orders", "k-1").await;
    done.state = "Done".into();
    done.completed = true;
    commit_ok(&*store, commit(done, 1, Some("Pending"))).await;

    let got = load_ok(&*store, "orders", "k-1").await;
    assert!(got.completed);
    assert_eq!(got.state, "Done");
    let d = details_ok(&*store, "orders", "k-1").await;
    assert!(
        d.timeouts.is_empty(),
        "timeouts of a completed instance: {:?}",
        d.timeouts
    );
    assert_eq!(store.next_due().await.expect("next_due"), None);

    let reopen = commit(
        instance("orders", "k-1", "Pending", json!({})),
        2,
        Some("Done"),
    );
    let r = store.commit(reopen).await;
    assert!(
        matches!(r, Err(SagaError::Invalid(_))),
        "reopening a completed instance: {r:?}"
    );
    let got = load_ok(&*store, "orders", "k-1").await;
    assert_eq!((got.version, got.completed), (2, true));
    let listed = store
        .list(&SagaFilter {
            completed: Some(true),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
}
