//! Crash safety of the outbox: relays killed with SIGKILL at random moments while a producer
//! commits application rows and outbox records together; afterwards every committed event was
//! delivered at least once, none was lost, and a consumer using the inbox applied each exactly
//! once, in per-key order. Each round runs one relay with direct dispatch (claim, publish and
//! mark in one transaction of the data file) and one with leases, side by side.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventyard::sqlite::InboxOutcome;
use eventyard::{SubQueue, SubscriptionSpec, Transport};

const TOPIC: &str = "OrderPlaced";
const EVENTS: u64 = 6000;

/// xorshift64*: reproducible "random" kill moments (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A relay process; `leased`: claim, publish, mark with leases instead of direct dispatch.
fn relay(path: &str, leased: bool) -> Child {
    common::yard()
        .args(["outbox", "relay", "--data", path])
        .args(leased.then_some("--leased"))
        .args([
            "--lease",
            "1s",
            "--poll",
            "200ms",
            "--batch",
            "64",
            "--no-cleaner",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("yard outbox relay starts")
}

#[derive(Default)]
struct Consumed {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    applied: AtomicU64,
    order_violations: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_lose_nothing_and_the_inbox_applies_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox-crash.db");
    let data = path.to_str().unwrap().to_owned();
    let broker = common::broker(&path);
    broker
        .ensure_subscription(&SubscriptionSpec::new(TOPIC, "crash-inbox").max_delivery_count(1000))
        .await
        .unwrap();
    broker
        .transaction(|tx| {
            tx.execute_batch(
                "CREATE TABLE applied (event_id TEXT PRIMARY KEY, key TEXT NOT NULL,
                                       seq INTEGER NOT NULL)",
            )
        })
        .await
        .unwrap()
        .unwrap();

    // The consumer: every delivery through the inbox, which applies it (a row) exactly once.
    let consumed = Arc::new(Consumed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (broker, consumed, stop) = (broker.clone(), consumed.clone(), stop.clone());
        tokio::spawn(async move {
            let inbox = broker.inbox();
            let mut rx = broker
                .receiver(TOPIC, "crash-inbox", SubQueue::Main)
                .await
                .unwrap();
            let mut last: HashMap<String, i64> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                for d in rx.receive(256, Duration::from_millis(100)).await.unwrap() {
                    consumed.delivered.fetch_add(1, Ordering::SeqCst);
                    let env = d.message.envelope().unwrap();
                    let key = env.payload["orderId"].as_str().unwrap().to_owned();
                    let seq = env.payload["seq"].as_i64().unwrap();
                    let (id, k) = (env.event_id.to_string(), key.clone());
                    let outcome = inbox
                        .run(&env, "crash-consumer", &key, move |tx| {
                            tx.execute(
                                "INSERT INTO applied (event_id, key, seq) VALUES (?1, ?2, ?3)",
                                eventyard::sqlite::rusqlite::params![id, k, seq],
                            )
                            .map(|_| seq)
                        })
                        .await
                        .unwrap_or_else(|e| panic!("inbox: {e}"));
                    match outcome {
                        InboxOutcome::Applied(_) => {
                            consumed.applied.fetch_add(1, Ordering::SeqCst);
                            let prev = last.insert(key, seq).unwrap_or(0);
                            if seq != prev + 1 {
                                consumed.order_violations.fetch_add(1, Ordering::SeqCst);
                                eprintln!("order: applied seq {seq} after {prev}");
                            }
                        }
                        InboxOutcome::Duplicate(_) => {
                            consumed.duplicates.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    d.ack().await.unwrap();
                }
            }
        })
    };

    // The producer: application rows and outbox records in the same transactions, in another
    // process; each committed event is printed once committed.
    let mut producer = common::yard()
        .args(["outbox", "produce", "--data", &data])
        .args([
            "--count",
            &EVENTS.to_string(),
            "--keys",
            "24",
            "--per-tx",
            "3",
        ])
        .args(["--rate", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let committed: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let out = BufReader::new(producer.stdout.take().unwrap());
        let committed = committed.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                let id = v["eventId"].as_str().unwrap().to_owned();
                committed.lock().unwrap().push(id);
            }
        })
    };

    // Relays killed with SIGKILL at random moments while the producer commits: two at a time,
    // each killed on its own schedule; a round ends when both are dead.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill schedule seed: {seed}");
    let mut rng = Rng(seed);
    let mut kills = 0;
    let mut round = 0;
    while round < 6 || producer.try_wait().unwrap().is_none() {
        round += 1;
        // One relay of each kind: direct dispatch, and leases.
        let mut relays: Vec<(Child, Instant)> = [false, true]
            .into_iter()
            .map(|leased| {
                let at = Instant::now() + Duration::from_millis(rng.between(80, 900));
                (relay(&data, leased), at)
            })
            .collect();
        while !relays.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            relays.retain_mut(|(child, at)| {
                if Instant::now() < *at {
                    return true;
                }
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                false
            });
        }
        assert!(round < 200, "the producer never finished");
    }
    let status = producer.wait().unwrap();
    assert!(status.success(), "producer failed");
    reader.join().unwrap();

    // A last relay, left alone, drains what is left (leases of the killed ones expire).
    let mut last = relay(&data, false);
    let outbox = broker.outbox();
    let t0 = Instant::now();
    loop {
        let s = eventyard::outbox::OutboxStore::status(&outbox)
            .await
            .unwrap();
        if s.pending == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the outbox did not drain: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.kill().unwrap();
    last.wait().unwrap();

    let committed: Vec<String> = committed.lock().unwrap().clone();
    let t0 = Instant::now();
    while consumed.applied.load(Ordering::SeqCst) < committed.len() as u64
        && t0.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stragglers (duplicates of the last batches) have a moment to arrive too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();

    let (rows, applied_ids): (i64, HashSet<String>) = broker
        .transaction(|tx| {
            let rows: i64 = tx.query_row("SELECT count(*) FROM yard_orders", [], |r| r.get(0))?;
            let mut s = tx.prepare("SELECT event_id FROM applied")?;
            let ids = s
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<HashSet<String>, _>>()?;
            Ok::<_, eventyard::sqlite::rusqlite::Error>((rows, ids))
        })
        .await
        .unwrap()
        .unwrap();
    let committed_set: HashSet<&String> = committed.iter().collect();
    let lost = committed
        .iter()
        .filter(|id| !applied_ids.contains(*id))
        .count();
    let delivered = consumed.delivered.load(Ordering::SeqCst);
    let duplicates = consumed.duplicates.load(Ordering::SeqCst);
    let applied = consumed.applied.load(Ordering::SeqCst);
    let violations = consumed.order_violations.load(Ordering::SeqCst);
    println!(
        "outbox crash test: {round} rounds, {kills} relays killed with SIGKILL; committed \
         {}, delivered {delivered}, duplicates {duplicates}, applied {applied}, lost {lost}, \
         per-key order violations {violations}",
        committed.len()
    );
    assert_eq!(committed.len() as u64, EVENTS);
    assert_eq!(committed_set.len(), committed.len());
    assert_eq!(rows as u64, EVENTS, "application rows committed");
    assert_eq!(lost, 0, "committed events never applied");
    assert_eq!(
        applied,
        committed.len() as u64,
        "each committed event applied once"
    );
    assert_eq!(applied_ids.len(), committed.len());
    assert_eq!(delivered, applied + duplicates);
    assert_eq!(violations, 0, "per-key order broken");
    broker.close().await.unwrap();
}
