//! DLQ operations on dead letters made through the real transport API: list with every filter,
//! groups, show, replay (back and to another subscription, dry run, rate limit), purge, audit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventyard_core::properties::names;
use eventyard_core::{
    DeadLetterInfo, Envelope, EventType, Filter, OutgoingMessage, PropertyValue, SubQueue,
    SubscriptionSpec, TenantId, Transport,
};
use eventyard_sqlite::dlq::{self, DlqError, DlqQuery, PurgeOptions, ReplayOptions};
use eventyard_sqlite::{SqliteBroker, SqliteConfig};
use eventyard_testkit::helpers::receive_exactly;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);
const FP: &str = "3f9a0c1d2b4e";

fn envelope(topic: &str, tenant: &str) -> Envelope {
    Envelope::new(
        EventType::event(topic).unwrap(),
        TenantId::parse(tenant).unwrap(),
        json!({ "amount": 12 }),
    )
}

/// Publishes one event per tenant; returns their event ids in order.
async fn publish(b: &SqliteBroker, topic: &str, tenants: &[&str]) -> Vec<String> {
    let envs: Vec<Envelope> = tenants.iter().map(|t| envelope(topic, t)).collect();
    b.publish(topic, envs.iter().map(OutgoingMessage::from).collect())
        .await
        .unwrap();
    envs.iter().map(|e| e.event_id.to_string()).collect()
}

/// Receives `n` messages of `topic/sub` and dead-letters each with `info(i, tenant)`.
async fn dead_letter(
    b: &SqliteBroker,
    topic: &str,
    sub: &str,
    n: usize,
    info: impl Fn(usize) -> DeadLetterInfo,
) {
    let mut r = b.receiver(topic, sub, SubQueue::Main).await.unwrap();
    let mut got = receive_exactly(&mut *r, n, WAIT).await;
    got.sort_by_key(|d| d.sequence);
    for (i, d) in got.into_iter().enumerate() {
        d.dead_letter(info(i)).await.unwrap();
    }
}

fn runtime_fault(i: usize) -> DeadLetterInfo {
    DeadLetterInfo {
        reason: "HandlerFailed".into(),
        description: format!("payment failed: gateway timeout after {i} s"),
        context: json!({
            "handler": "billing.invoice", "subscription": "billing.invoice", "topic": "OrderPlaced",
            "errorKind": "External", "errors": ["payment failed", "gateway timeout"],
            "fingerprint": FP, "attempts": 5,
            "firstFailureAt": "2026-11-27T10:00:00Z", "lastFailureAt": "2026-11-27T10:02:00Z",
            "host": "h", "pid": 42
        }),
    }
}

fn validation_fault(i: usize) -> DeadLetterInfo {
    DeadLetterInfo {
        reason: "ValidationFailed".into(),
        description: format!("amount -{} is negative", 3 + i * 14),
        // An older runtime: no fingerprint, partial context.
        context: json!({ "handler": "payments", "errorKind": "Validation" }),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    b: SqliteBroker,
    /// OrderPlaced event ids: acme, acme, globex.
    orders: Vec<String>,
    /// PaymentFailed event ids: acme, globex.
    payments: Vec<String>,
    /// Between the OrderPlaced dead letters and the PaymentFailed ones.
    mid: DateTime<Utc>,
    start: DateTime<Utc>,
}

/// Dead letters:
/// - OrderPlaced/billing.invoice: 3 × HandlerFailed with the full runtime context (fingerprint FP);
/// - OrderPlaced/shipping: 3 × MaxDeliveryCountExceeded by the transport (no context);
/// - PaymentFailed/billing.invoice: 2 × ValidationFailed, context without fingerprint.
///
/// OrderPlaced/billing.audit (filter: tenant acme) exists with an empty main queue.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("dlq.db"))).unwrap();
    let start = Utc::now();
    for spec in [
        SubscriptionSpec::new("OrderPlaced", "billing.invoice"),
        SubscriptionSpec::new("OrderPlaced", "billing.audit")
            .filter(Filter::sql("[cs-tenant-id] = 'acme'").unwrap()),
        SubscriptionSpec::new("OrderPlaced", "shipping").max_delivery_count(1),
        SubscriptionSpec::new("PaymentFailed", "billing.invoice"),
    ] {
        b.ensure_subscription(&spec).await.unwrap();
    }
    let orders = publish(&b, "OrderPlaced", &["acme", "acme", "globex"]).await;
    dead_letter(&b, "OrderPlaced", "billing.invoice", 3, runtime_fault).await;
    let mut audit = b
        .receiver("OrderPlaced", "billing.audit", SubQueue::Main)
        .await
        .unwrap();
    for d in receive_exactly(&mut *audit, 2, WAIT).await {
        d.ack().await.unwrap();
    }
    // Exceed max delivery on shipping: deliver once, release, and the next claim dead-letters.
    let mut ship = b
        .receiver("OrderPlaced", "shipping", SubQueue::Main)
        .await
        .unwrap();
    for d in receive_exactly(&mut *ship, 3, WAIT).await {
        d.abandon(Duration::ZERO).await.unwrap();
    }
    assert!(
        ship.receive(10, Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty()
    );
    let mid = Utc::now() + chrono::Duration::microseconds(1);
    while Utc::now() <= mid {
        std::hint::spin_loop();
    }
    let payments = publish(&b, "PaymentFailed", &["acme", "globex"]).await;
    dead_letter(&b, "PaymentFailed", "billing.invoice", 2, validation_fault).await;
    Fixture {
        _dir: dir,
        b,
        orders,
        payments,
        mid,
        start,
    }
}

async fn list(b: &SqliteBroker, q: DlqQuery) -> Vec<dlq::DeadLetterEntry> {
    dlq::list(b, &q).await.unwrap()
}

fn ids(entries: &[dlq::DeadLetterEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .map(|e| e.event_id.clone().unwrap_or_default())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn main_available(b: &SqliteBroker, topic: &str, sub: &str) -> u64 {
    b.stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.topic == topic && s.subscription == sub)
        .map(|s| s.available)
        .unwrap()
}

#[tokio::test]
async fn list_filters_each_field() {
    let f = fixture().await;
    let all = list(&f.b, DlqQuery::new()).await;
    assert_eq!(all.len(), 8);
    // Newest first.
    for w in all.windows(2) {
        assert!(
            (w[0].dead_lettered_at, w[0].seq) > (w[1].dead_lettered_at, w[1].seq),
            "{:?} before {:?}",
            (w[0].dead_lettered_at, w[0].seq),
            (w[1].dead_lettered_at, w[1].seq)
        );
    }
    assert_eq!(all[0].topic, "PaymentFailed");

    let q = |q: DlqQuery| list(&f.b, q);
    assert_eq!(q(DlqQuery::new().topic("PaymentFailed")).await.len(), 2);
    assert_eq!(q(DlqQuery::new().subscription("shipping")).await.len(), 3);
    assert_eq!(
        q(DlqQuery::new().subscription("billing.invoice"))
            .await
            .len(),
        5
    );
    let both = q(DlqQuery::new()
        .topic("OrderPlaced")
        .subscription("billing.invoice"))
    .await;
    assert_eq!(ids(&both), sorted(f.orders.clone()));
    assert_eq!(q(DlqQuery::new().event_type("OrderPlaced")).await.len(), 6);
    assert_eq!(q(DlqQuery::new().event_type("Nope")).await.len(), 0);
    let globex = q(DlqQuery::new().tenant("globex")).await;
    assert_eq!(
        ids(&globex),
        sorted(vec![
            f.orders[2].clone(),
            f.orders[2].clone(),
            f.payments[1].clone()
        ])
    );
    let reason = q(DlqQuery::new().reason("MaxDeliveryCountExceeded")).await;
    assert_eq!(reason.len(), 3);
    assert!(reason.iter().all(|e| e.subscription == "shipping"));

    // Stored fingerprint, and computed ones (no fingerprint in the context / no context).
    let stored = q(DlqQuery::new().fingerprint(FP)).await;
    assert_eq!(ids(&stored), sorted(f.orders.clone()));
    let ship_fp = reason[0].fingerprint.clone();
    assert_eq!(
        ship_fp,
        dlq::fingerprint(
            "MaxDeliveryCountExceeded",
            &reason[0].description,
            "shipping"
        )
    );
    assert_eq!(q(DlqQuery::new().fingerprint(&ship_fp)).await.len(), 3);
    let pay = q(DlqQuery::new().topic("PaymentFailed")).await;
    assert_eq!(
        pay[0].fingerprint, pay[1].fingerprint,
        "digits are normalized"
    );
    assert_eq!(
        q(DlqQuery::new().fingerprint(&pay[0].fingerprint).limit(1))
            .await
            .len(),
        1
    );
    assert_eq!(
        q(DlqQuery::new().fingerprint("000000000000")).await.len(),
        0
    );

    // Time.
    assert_eq!(q(DlqQuery::new().since(f.start)).await.len(), 8);
    let after = q(DlqQuery::new().since(f.mid)).await;
    assert_eq!(ids(&after), sorted(f.payments.clone()));
    assert_eq!(q(DlqQuery::new().until(f.mid)).await.len(), 6);
    assert_eq!(q(DlqQuery::new().until(f.start)).await.len(), 0);
    assert!(matches!(
        dlq::list(&f.b, &DlqQuery::new().since(f.mid).until(f.start)).await,
        Err(DlqError::Invalid(_))
    ));

    // Limit keeps the newest.
    let two = q(DlqQuery::new().limit(2)).await;
    assert_eq!(ids(&two), sorted(f.payments.clone()));
    // Filters combine.
    assert_eq!(
        q(DlqQuery::new()
            .tenant("acme")
            .subscription("shipping")
            .since(f.start))
        .await
        .len(),
        2
    );
    assert_eq!(
        dlq::count(&f.b, &DlqQuery::new().tenant("acme"))
            .await
            .unwrap(),
        5
    );
}

#[tokio::test]
async fn entries_carry_the_fault_context() {
    let f = fixture().await;
    let e = &list(&f.b, DlqQuery::new().fingerprint(FP)).await[0];
    assert_eq!(e.topic, "OrderPlaced");
    assert_eq!(e.subscription, "billing.invoice");
    assert_eq!(e.reason, "HandlerFailed");
    assert!(e.description.starts_with("payment failed"));
    assert_eq!(e.handler.as_deref(), Some("billing.invoice"));
    assert_eq!(e.error_kind.as_deref(), Some("External"));
    assert_eq!(e.errors, ["payment failed", "gateway timeout"]);
    assert_eq!(e.attempts, Some(5));
    assert_eq!(
        e.first_failure_at.unwrap().to_rfc3339(),
        "2026-11-27T10:00:00+00:00"
    );
    assert_eq!(
        e.last_failure_at.unwrap().to_rfc3339(),
        "2026-11-27T10:02:00+00:00"
    );
    assert_eq!((e.host.as_deref(), e.pid), (Some("h"), Some(42)));
    assert_eq!(e.replay_count, 0);
    assert!(e.previous.is_none());
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    let env = e.envelope.as_ref().unwrap();
    assert_eq!(env["eventId"].as_str(), e.event_id.as_deref());
    assert_eq!(env["payload"]["amount"], 12);
    assert_eq!(e.event_type.as_deref(), Some("OrderPlaced"));
    assert!(e.body.is_none());
    assert_eq!(e.body_size, e.raw_body.len());

    // Serialized with camelCase names.
    let v = serde_json::to_value(e).unwrap();
    for key in [
        "eventId",
        "errorKind",
        "firstFailureAt",
        "deadLetteredAt",
        "replayCount",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }

    // Dead-lettered by the transport: no context.
    let t = &list(&f.b, DlqQuery::new().subscription("shipping")).await[0];
    assert_eq!(t.reason, "MaxDeliveryCountExceeded");
    assert!(t.context.is_none() && t.handler.is_none() && t.attempts.is_none());
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0], t.description);

    // show = the same entry; unknown or non-dead-lettered seq = None.
    let shown = dlq::show(&f.b, e.seq).await.unwrap().unwrap();
    assert_eq!(&shown, e);
    assert!(dlq::show(&f.b, 999_999).await.unwrap().is_none());
}

#[tokio::test]
async fn malformed_rows_are_listed_as_unknown() {
    let f = fixture().await;
    f.b.transaction(|tx| {
        // A message row and its bytes (schema version 3 keeps them in two tables).
        let raw = |body: &str, props: &str, ctx: &str, dl_at: i64| -> rusqlite::Result<usize> {
            tx.execute(
                "INSERT INTO messages (queue, visible_at, enqueued_at, dl_at)
                 SELECT -id, 0, 0, ?1 FROM subscriptions WHERE name = 'shipping'",
                [dl_at],
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO message_bodies (seq, body, props, dl_context)
                     VALUES (last_insert_rowid(), {body}, ?1, ?2)"
                ),
                [props, ctx],
            )
        };
        raw("X'FF00'", "not json", "{broken", 1)?;
        raw(
            "'{}'",
            "{\"cs-dead-letter-reason\": 7, \"x\": [1]}",
            "[1]",
            2,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let all = list(&f.b, DlqQuery::new()).await;
    assert_eq!(all.len(), 10);
    let bad = &all[9];
    assert_eq!(bad.reason, "unknown");
    assert!(bad.event_id.is_none() && bad.context.is_none());
    assert_eq!(bad.body.as_deref(), Some("\u{fffd}\0"));
    assert_eq!(bad.warnings.len(), 2, "{:?}", bad.warnings);
    let odd = &all[8];
    assert_eq!(odd.reason, "7");
    assert_eq!(odd.warnings.len(), 2, "{:?}", odd.warnings);
    // JSON filters skip them without failing; groups and show cope.
    assert_eq!(list(&f.b, DlqQuery::new().tenant("acme")).await.len(), 5);
    assert_eq!(
        list(&f.b, DlqQuery::new().fingerprint(&bad.fingerprint))
            .await
            .len(),
        1
    );
    let groups = dlq::groups(&f.b, &DlqQuery::new()).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 10);
    assert!(dlq::show(&f.b, bad.seq).await.unwrap().is_some());
    // `unknown` is a display value, not a stored reason.
    assert!(
        list(&f.b, DlqQuery::new().reason("unknown"))
            .await
            .is_empty()
    );
    // An entry without readable properties can still be replayed.
    let r = dlq::replay(
        &f.b,
        &DlqQuery::new().fingerprint(&bad.fingerprint),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.matched, r.replayed), (1, 1));
    assert_eq!(main_available(&f.b, "OrderPlaced", "shipping").await, 1);
}

#[tokio::test]
async fn groups_count_by_fingerprint() {
    let f = fixture().await;
    let g = dlq::groups(&f.b, &DlqQuery::new()).await.unwrap();
    assert_eq!(g.len(), 3, "{g:#?}");
    assert_eq!(g.iter().map(|g| g.count).collect::<Vec<_>>(), [3, 3, 2]);
    let invoice = g.iter().find(|g| g.fingerprint == FP).unwrap();
    assert_eq!(
        (
            invoice.reason.as_str(),
            invoice.error_kind.as_deref(),
            invoice.handler.as_deref(),
            invoice.topic.as_str(),
            invoice.subscription.as_str()
        ),
        (
            "HandlerFailed",
            Some("External"),
            Some("billing.invoice"),
            "OrderPlaced",
            "billing.invoice"
        )
    );
    assert!(invoice.first_at <= invoice.last_at && invoice.first_at.is_some());
    assert!(invoice.sample_description.starts_with("payment failed"));
    // Computed fingerprints merge descriptions that differ only in digits.
    let pay = g.iter().find(|g| g.topic == "PaymentFailed").unwrap();
    assert_eq!(pay.count, 2);
    assert_eq!(pay.handler.as_deref(), Some("payments"));
    assert_eq!(
        pay.fingerprint,
        list(&f.b, DlqQuery::new().topic("PaymentFailed")).await[0].fingerprint
    );
    // Filters apply before grouping; limit caps the groups.
    let acme = dlq::groups(&f.b, &DlqQuery::new().tenant("acme"))
        .await
        .unwrap();
    assert_eq!(acme.iter().map(|g| g.count).collect::<Vec<_>>(), [2, 2, 1]);
    let one = dlq::groups(&f.b, &DlqQuery::new().fingerprint(&pay.fingerprint))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].count, 2);
    assert_eq!(
        dlq::groups(&f.b, &DlqQuery::new().limit(1))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn replay_back_keeps_the_event_id_and_marks_it() {
    let f = fixture().await;
    let q = DlqQuery::new()
        .topic("OrderPlaced")
        .subscription("billing.invoice");
    let r = dlq::replay(
        &f.b,
        &q,
        ReplayOptions {
            actor: Some("ops@test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((r.matched, r.replayed, r.skipped, r.vanished), (3, 3, 0, 0));
    assert!(!r.dry_run);
    assert_eq!(r.per_subscription.len(), 1);
    assert_eq!(
        (
            r.per_subscription[0].from.as_str(),
            r.per_subscription[0].to.as_str(),
            r.per_subscription[0].count
        ),
        ("billing.invoice", "billing.invoice", 3)
    );
    assert!(list(&f.b, q.clone()).await.is_empty());
    assert_eq!(list(&f.b, DlqQuery::new()).await.len(), 5);

    let mut rx =
        f.b.receiver("OrderPlaced", "billing.invoice", SubQueue::Main)
            .await
            .unwrap();
    let mut got = receive_exactly(&mut *rx, 3, WAIT).await;
    got.sort_by_key(|d| d.sequence);
    let got_ids: Vec<String> = got
        .iter()
        .map(|d| d.message.envelope().unwrap().event_id.to_string())
        .collect();
    assert_eq!(got_ids, f.orders, "same event ids, original order");
    for d in &got {
        let p = &d.message.properties;
        assert_eq!(d.delivery_count, 1);
        assert_eq!(p.get(names::REPLAYED), Some(&PropertyValue::Bool(true)));
        assert_eq!(p.get(dlq::prop::REPLAY_COUNT), Some(&PropertyValue::Int(1)));
        assert_eq!(p.get_str(dlq::prop::REPLAYED_BY), Some("ops@test"));
        assert!(p.get(names::DEAD_LETTER_REASON).is_none());
        assert!(p.get(names::DEAD_LETTER_DESCRIPTION).is_none());
        assert_eq!(
            p.get_str(dlq::prop::LAST_DEAD_LETTER_REASON),
            Some("HandlerFailed")
        );
        assert_eq!(p.get_str(dlq::prop::LAST_DEAD_LETTER_FINGERPRINT), Some(FP));
        assert_eq!(
            p.get_str(names::EVENT_ID),
            Some(d.message.envelope().unwrap().event_id.as_str())
        );
    }
    // Failing again: the new dead letter shows it was replayed, and the previous fault.
    let mut got = got.into_iter();
    let first = got.next().unwrap();
    let seq = first.sequence;
    first
        .dead_letter(DeadLetterInfo {
            reason: "HandlerFailed".into(),
            description: "still failing".into(),
            context: json!({ "fingerprint": "aaaaaaaaaaaa", "attempts": 1 }),
        })
        .await
        .unwrap();
    for d in got {
        d.ack().await.unwrap();
    }
    let e = dlq::show(&f.b, seq).await.unwrap().unwrap();
    assert_eq!(e.event_id.as_deref(), Some(f.orders[0].as_str()));
    assert_eq!(e.fingerprint, "aaaaaaaaaaaa");
    assert_eq!(e.replay_count, 1);
    let prev = e.previous.unwrap();
    assert_eq!(prev.reason, "HandlerFailed");
    assert_eq!(prev.fingerprint.as_deref(), Some(FP));
    assert_eq!(prev.source.as_deref(), Some("billing.invoice"));
    assert_eq!(prev.replayed_by.as_deref(), Some("ops@test"));
    assert!(prev.dead_lettered_at.is_some() && prev.replayed_at.is_some());
    // A second replay counts up.
    dlq::replay(
        &f.b,
        &DlqQuery::new().fingerprint("aaaaaaaaaaaa"),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    let d = receive_exactly(&mut *rx, 1, WAIT).await.pop().unwrap();
    assert_eq!(
        d.message.properties.get(dlq::prop::REPLAY_COUNT),
        Some(&PropertyValue::Int(2))
    );
    assert_eq!(
        d.message
            .properties
            .get_str(dlq::prop::LAST_DEAD_LETTER_DESCRIPTION),
        Some("still failing")
    );
}

#[tokio::test]
async fn replay_to_another_subscription_respects_its_filter() {
    let f = fixture().await;
    let q = DlqQuery::new()
        .topic("OrderPlaced")
        .subscription("shipping");
    let opts = ReplayOptions {
        target_subscription: Some("billing.audit".into()),
        ..Default::default()
    };
    let r = dlq::replay(&f.b, &q, opts).await.unwrap();
    // billing.audit only accepts tenant acme: the globex message stays dead-lettered.
    assert_eq!((r.matched, r.replayed, r.skipped), (3, 2, 1));
    assert_eq!(r.per_subscription[0].to, "billing.audit");
    let left = list(&f.b, q).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].tenant.as_deref(), Some("globex"));
    let mut rx =
        f.b.receiver("OrderPlaced", "billing.audit", SubQueue::Main)
            .await
            .unwrap();
    let got = receive_exactly(&mut *rx, 2, WAIT).await;
    let mut got_ids: Vec<String> = got
        .iter()
        .map(|d| {
            d.message
                .properties
                .get_str(names::EVENT_ID)
                .unwrap()
                .to_owned()
        })
        .collect();
    got_ids.sort();
    assert_eq!(got_ids, sorted(f.orders[..2].to_vec()));
    for d in &got {
        assert_eq!(
            d.message
                .properties
                .get_str(dlq::prop::LAST_DEAD_LETTER_SOURCE),
            Some("shipping")
        );
        assert_eq!(d.subscription, "billing.audit");
    }
    assert_eq!(main_available(&f.b, "OrderPlaced", "shipping").await, 0);

    // A target that is not a subscription of the topic: typed error, nothing moves.
    let err = dlq::replay(
        &f.b,
        &DlqQuery::new().topic("PaymentFailed"),
        ReplayOptions {
            target_subscription: Some("shipping".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, DlqError::UnknownTarget { topic, subscription } if topic == "PaymentFailed" && subscription == "shipping"),
        "{err}"
    );
    assert_eq!(
        list(&f.b, DlqQuery::new().topic("PaymentFailed"))
            .await
            .len(),
        2
    );
    // Even when nothing matches.
    let err = dlq::replay(
        &f.b,
        &DlqQuery::new().tenant("nobody"),
        ReplayOptions {
            target_subscription: Some("no-such-sub".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DlqError::UnknownTarget { .. }), "{err}");
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let f = fixture().await;
    let before = list(&f.b, DlqQuery::new()).await;
    let r = dlq::replay(
        &f.b,
        &DlqQuery::new().subscription("billing.invoice"),
        ReplayOptions {
            dry_run: true,
            rate_per_sec: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(r.dry_run);
    assert_eq!((r.matched, r.replayed), (5, 5));
    let mut per: Vec<(String, u64)> = r
        .per_subscription
        .iter()
        .map(|s| (s.topic.clone(), s.count))
        .collect();
    per.sort();
    assert_eq!(
        per,
        [
            ("OrderPlaced".to_owned(), 3),
            ("PaymentFailed".to_owned(), 2)
        ]
    );
    let n = dlq::purge(
        &f.b,
        &DlqQuery::new(),
        PurgeOptions {
            dry_run: true,
            actor: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 8);
    assert_eq!(list(&f.b, DlqQuery::new()).await, before);
    assert_eq!(
        main_available(&f.b, "OrderPlaced", "billing.invoice").await,
        0
    );
    assert_eq!(
        main_available(&f.b, "PaymentFailed", "billing.invoice").await,
        0
    );
    let audit = dlq::audit(&f.b, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|a| a.dry_run));
    assert_eq!((audit[0].action.as_str(), audit[0].affected), ("purge", 8));
    assert_eq!((audit[1].action.as_str(), audit[1].affected), ("replay", 5));
}

#[tokio::test]
async fn rate_limit_spaces_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("rate.db"))).unwrap();
    b.ensure_subscription(&SubscriptionSpec::new("OrderPlaced", "s"))
        .await
        .unwrap();
    let n = 6;
    let tenants = vec!["acme"; n];
    publish(&b, "OrderPlaced", &tenants).await;
    dead_letter(&b, "OrderPlaced", "s", n, runtime_fault).await;
    // 10/s: one message per 100 ms, the first at once: ≥ 500 ms for 6.
    let started = std::time::Instant::now();
    let r = dlq::replay(
        &b,
        &DlqQuery::new().subscription("s"),
        ReplayOptions {
            rate_per_sec: Some(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(r.replayed, 6);
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    assert_eq!(main_available(&b, "OrderPlaced", "s").await, 6);
    let audit = dlq::audit(&b, 1).await.unwrap();
    assert_eq!(audit[0].affected, 6);
    assert_eq!(audit[0].query["ratePerSec"], 10);
    // Without a limit the same takes no pacing at all (one transaction).
    dead_letter(&b, "OrderPlaced", "s", n, runtime_fault).await;
    let started = std::time::Instant::now();
    let r = dlq::replay(&b, &DlqQuery::new(), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(r.replayed, 6);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(matches!(
        dlq::replay(
            &b,
            &DlqQuery::new(),
            ReplayOptions {
                rate_per_sec: Some(0),
                ..Default::default()
            }
        )
        .await,
        Err(DlqError::Invalid(_))
    ));
}

#[tokio::test]
async fn purge_deletes_and_audits() {
    let f = fixture().await;
    let n = dlq::purge(
        &f.b,
        &DlqQuery::new().fingerprint(FP),
        PurgeOptions {
            dry_run: false,
            actor: Some("alice@ops".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 3);
    let left = list(&f.b, DlqQuery::new()).await;
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|e| e.fingerprint != FP));
    dlq::replay(
        &f.b,
        &DlqQuery::new().topic("PaymentFailed").tenant("acme"),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    let n = dlq::purge(&f.b, &DlqQuery::new(), PurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert!(list(&f.b, DlqQuery::new()).await.is_empty());
    // The replayed message was not purged: it is in its main queue.
    assert_eq!(
        main_available(&f.b, "PaymentFailed", "billing.invoice").await,
        1
    );

    let audit = dlq::audit(&f.b, 10).await.unwrap();
    assert_eq!(audit.len(), 3);
    assert!(audit.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let (last, replay, first) = (&audit[0], &audit[1], &audit[2]);
    assert_eq!(
        (last.action.as_str(), last.affected, last.dry_run),
        ("purge", 4, false)
    );
    assert!(last.actor.contains('@'), "{}", last.actor);
    assert_eq!(last.query, json!({}));
    assert_eq!(replay.action, "replay");
    assert_eq!(replay.affected, 1);
    assert_eq!(replay.query["topic"], "PaymentFailed");
    assert_eq!(replay.query["tenant"], "acme");
    assert_eq!(
        replay.detail.as_ref().unwrap()["perSubscription"][0]["count"],
        1
    );
    assert_eq!(
        (first.actor.as_str(), first.action.as_str(), first.affected),
        ("alice@ops", "purge", 3)
    );
    assert_eq!(first.query["fingerprint"], FP);
    assert!(first.at <= last.at && first.at >= f.start);
    assert_eq!(dlq::audit(&f.b, 1).await.unwrap()[0].id, last.id);
    f.b.close().await.unwrap();
    assert!(matches!(
        dlq::list(&f.b, &DlqQuery::new()).await,
        Err(DlqError::Transport(_))
    ));
}
