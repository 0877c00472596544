//! Idempotent consumers on the embedded store: duplicates, redeliveries and tenant scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eventyard::sqlite::{InboxError, InboxOutcome, SqliteBroker, SqliteConfig};
use eventyard::{
    Bus, Envelope, Event, HandlerError, Message, MessageContext, OutgoingMessage, RetryPolicy,
    SubQueue, TenantId,
};
use serde::{Deserialize, Serialize};

mod common;
use common::wait_until;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentCaptured {
    order_id: String,
    amount: i64,
}
impl Event for PaymentCaptured {
    const EVENT_TYPE: &'static str = "PaymentCaptured";
}

fn setup() -> (tempfile::TempDir, SqliteBroker, Bus) {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteBroker::open(SqliteConfig::new(dir.path().join("inbox.db"))).unwrap();
    let bus = Bus::new(Arc::new(broker.clone()));
    (dir, broker, bus)
}

async fn create_ledger(broker: &SqliteBroker) {
    broker
        .transaction(|tx| {
            tx.execute_batch(
                "CREATE TABLE ledger (order_id TEXT NOT NULL, amount INTEGER NOT NULL)",
            )
        })
        .await
        .unwrap()
        .unwrap();
}

async fn ledger_rows(broker: &SqliteBroker) -> i64 {
    broker
        .transaction(|tx| tx.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0)))
        .await
        .unwrap()
        .unwrap()
}

/// A handler whose side effect (a ledger row) goes through the inbox; it fails *after* its
/// transaction committed on the first attempt, to force a redelivery.
async fn subscribe_ledger(
    bus: &Bus,
    broker: &SqliteBroker,
    runs: Arc<AtomicU32>,
    dups: Arc<AtomicU32>,
) {
    let inbox = broker.inbox();
    let failed_once = Arc::new(AtomicU32::new(0));
    bus.subscription("finance.ledger")
        .retry(RetryPolicy::immediate(5))
        .handle(move |e: PaymentCaptured, ctx: MessageContext| {
            let (inbox, runs, dups, failed_once) = (
                inbox.clone(),
                runs.clone(),
                dups.clone(),
                failed_once.clone(),
            );
            async move {
                let order = e.order_id.clone();
                let outcome = inbox
                    .run(ctx.envelope(), ctx.handler_name(), &e.order_id, move |tx| {
                        tx.execute(
                            "INSERT INTO ledger (order_id, amount) VALUES (?1, ?2)",
                            (&order, e.amount),
                        )?;
                        Ok::<_, eventyard::sqlite::rusqlite::Error>(format!("posted {order}"))
                    })
                    .await
                    .map_err(|e| HandlerError::transient(e.to_string()))?;
                match &outcome {
                    InboxOutcome::Applied(_) => runs.fetch_add(1, Ordering::SeqCst),
                    InboxOutcome::Duplicate(_) => dups.fetch_add(1, Ordering::SeqCst),
                };
                assert_eq!(outcome.into_inner(), format!("posted {}", e.order_id));
                if e.order_id == "ord-flaky" && failed_once.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HandlerError::transient("crashed after committing"));
                }
                Ok(())
            }
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_redeliveries_apply_once() {
    let (_dir, broker, bus) = setup();
    create_ledger(&broker).await;
    let runs = Arc::new(AtomicU32::new(0));
    let dups = Arc::new(AtomicU32::new(0));
    subscribe_ledger(&bus, &broker, runs.clone(), dups.clone()).await;
    let t = TenantId::parse("connectsoft").unwrap();
    // The same envelope published three times (a producer retrying after a lost ack).
    let env = Envelope::for_event(
        &PaymentCaptured {
            order_id: "ord-1".into(),
            amount: 100,
        },
        t.clone(),
    )
    .unwrap();
    for _ in 0..3 {
        bus.publish_envelope(env.clone()).await.unwrap();
    }
    // A handler that fails after its transaction committed: redelivered, not re-applied.
    bus.publish(
        &t,
        &PaymentCaptured {
            order_id: "ord-flaky".into(),
            amount: 7,
        },
    )
    .await
    .unwrap();
    wait_until("all handled", || {
        let c = bus.consumer_counts()[0].2;
        c.acked == 4
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each side effect ran once");
    assert_eq!(
        dups.load(Ordering::SeqCst),
        3,
        "2 duplicate publishes + 1 redelivery"
    );
    assert_eq!(ledger_rows(&broker).await, 2);
    assert_eq!(bus.consumer_counts()[0].2.retried, 1);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_work_stores_no_key_and_writes_nothing() {
    let (_dir, broker, _bus) = setup();
    create_ledger(&broker).await;
    let t = TenantId::parse("connectsoft").unwrap();
    let env = Envelope::for_event(
        &PaymentCaptured {
            order_id: "o".into(),
            amount: 1,
        },
        t,
    )
    .unwrap();
    let inbox = broker.inbox();
    let r: Result<InboxOutcome<()>, _> = inbox
        .run(&env, "h", "o", |tx| {
            tx.execute("INSERT INTO ledger VALUES ('o', 1)", [])
                .map_err(|e| e.to_string())?;
            Err("insufficient funds".to_owned())
        })
        .await;
    assert!(matches!(r, Err(InboxError::Work(ref m)) if m == "insufficient funds"));
    assert_eq!(ledger_rows(&broker).await, 0);
    let key = eventyard::IdempotencyKey::new(&env.event_id, "h", "o");
    assert!(!inbox.contains(&key).await.unwrap());
    // Retrying after the failure applies it.
    let ok = inbox
        .run(&env, "h", "o", |tx| {
            tx.execute("INSERT INTO ledger VALUES ('o', 1)", [])
                .map(|_| 1)
        })
        .await
        .unwrap();
    assert_eq!(ok, InboxOutcome::Applied(1));
    assert!(inbox.contains(&key).await.unwrap());
    // Another aggregate of the same event is a different key.
    let other = inbox
        .run(&env, "h", "o-2", |_tx| Ok::<_, String>(2))
        .await
        .unwrap();
    assert_eq!(other, InboxOutcome::Applied(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_never_removes_keys_inside_the_retention_window() {
    let (_dir, broker, _bus) = setup();
    let t = TenantId::parse("connectsoft").unwrap();
    let inbox = broker.inbox();
    let old = Envelope::for_event(
        &PaymentCaptured {
            order_id: "a".into(),
            amount: 1,
        },
        t.clone(),
    )
    .unwrap();
    inbox
        .run(&old, "h", "a", |_| Ok::<_, String>(()))
        .await
        .unwrap();
    // Age the first key by two hours.
    broker
        .transaction(|tx| tx.execute("UPDATE inbox SET handled_at = handled_at - 7200000000", []))
        .await
        .unwrap()
        .unwrap();
    let fresh = Envelope::for_event(
        &PaymentCaptured {
            order_id: "b".into(),
            amount: 1,
        },
        t.clone(),
    )
    .unwrap();
    inbox
        .run(&fresh, "h", "b", |_| Ok::<_, String>(()))
        .await
        .unwrap();
    let deleted = inbox
        .cleanup(Duration::from_secs(3600), 1000)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(
        !inbox
            .contains(&eventyard::IdempotencyKey::new(&old.event_id, "h", "a"))
            .await
            .unwrap()
    );
    // The fresh key still dedups.
    let again = inbox
        .run(&fresh, "h", "b", |_| Ok::<_, String>(()))
        .await
        .unwrap();
    assert!(again.is_duplicate());
    assert_eq!(inbox.count(&t).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_guard_rejects_envelopes_outside_the_scope() {
    let (_dir, _broker, bus) = setup();
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let consumer = bus
        .subscription("finance.connectsoft-only")
        .tenant(TenantId::parse("connectsoft").unwrap())
        .handle(move |_: PaymentCaptured, _ctx: MessageContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    // The subscription filter already keeps other tenants out...
    assert!(consumer.spec().filter.to_string().contains("cs-tenant-id"));
    let acme = TenantId::parse("acme").unwrap();
    bus.publish(
        &acme,
        &PaymentCaptured {
            order_id: "x".into(),
            amount: 1,
        },
    )
    .await
    .unwrap();
    // ...and a forged message whose properties claim connectsoft but whose envelope is acme's
    // (as a bad replay or a buggy producer would deliver) is stopped by the guard.
    let env = Envelope::for_event(
        &PaymentCaptured {
            order_id: "y".into(),
            amount: 1,
        },
        acme,
    )
    .unwrap();
    let mut msg = Message::from_envelope(&env);
    msg.properties.insert("cs-tenant-id", "connectsoft");
    bus.transport()
        .publish("PaymentCaptured", vec![OutgoingMessage::from(msg)])
        .await
        .unwrap();
    wait_until("rejected", || consumer.counts().tenant_rejected == 1).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let mut dlq = bus
        .transport()
        .receiver(
            "PaymentCaptured",
            "finance.connectsoft-only",
            SubQueue::DeadLetter,
        )
        .await
        .unwrap();
    let d = dlq.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        d[0].message.properties.get_str("cs-dead-letter-reason"),
        Some("TenantMismatch")
    );
    bus.shutdown().await.unwrap();
}
