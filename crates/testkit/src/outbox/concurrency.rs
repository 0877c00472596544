//! Several relays at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{LONG_LEASE, OutboxFactory, PATIENCE, event};

/// Three relays (each on its own store handle) claim concurrently — with varying batch sizes
/// and some "publishing" time — while a producer commits 60 transactions of 1–5 events over 12
/// interleaved keys. Every record is claimed exactly once (no lease expires), none is lost,
/// and each key's records reach the "transport" (a shared log, appended after a short
/// "publishing" delay while the lease is held, before `mark_dispatched`) in commit order.
pub async fn concurrent_relays_share_nothing_and_keep_key_order(f: &dyn OutboxFactory) {
    const RELAYS: usize = 3;
    const TRANSACTIONS: usize = 60;
    const KEYS: usize = 12;

    let log: Arc<Mutex<Vec<(i64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let produced: Arc<Mutex<Vec<(i64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(40);

    let mut relays = Vec::new();
    for r in 0..RELAYS {
        let store = f.connect().await;
        let (log, done, produced) = (log.clone(), done.clone(), produced.clone());
        relays.push(tokio::spawn(async move {
            let name = format!("relay-{r}");
            let mut round = 0usize;
            loop {
                round += 1;
                let max = 1 + (round * (r + 2)) % 7;
                let got = store
                    .claim(&name, max, LONG_LEASE)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: claim failed: {e}"));
                if got.is_empty() {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst)
                        && log.lock().expect("log").len()
                            >= produced.lock().expect("produced").len();
                    if finished || Instant::now() > deadline {
                        return;
                    }
                    store.wait(Duration::from_millis(20)).await;
                    continue;
                }
                // "Publishing" takes a moment (the others claim meanwhile), then reaches the
                // transport: the log.
                tokio::time::sleep(Duration::from_millis(((round * (r + 1)) % 5) as u64)).await;
                {
                    let mut l = log.lock().expect("log");
                    l.extend(got.iter().map(|g| (g.id, g.partition_key.clone())));
                }
                let ids: Vec<i64> = got.iter().map(|g| g.id).collect();
                store
                    .mark_dispatched(&name, &ids)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: mark_dispatched failed: {e}"));
            }
        }));
    }

    for t in 0..TRANSACTIONS {
        let n = 1 + t % 5;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("key-{}", (t * 7 + i * 5) % KEYS))
            .collect();
        let evs = keys.iter().map(|k| event("orders", k)).collect();
        let added = f.add(evs, true).await;
        assert_eq!(added.len(), n);
        produced
            .lock()
            .expect("produced")
            .extend(added.into_iter().zip(keys));
        if t % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in relays {
        r.await.expect("relay task");
    }

    let log = log.lock().expect("log").clone();
    let produced = produced.lock().expect("produced").clone();
    let mut seen = HashSet::new();
    let twice: Vec<i64> = log
        .iter()
        .filter(|(id, _)| !seen.insert(*id))
        .map(|(id, _)| *id)
        .collect();
    assert!(twice.is_empty(), "records claimed twice: {twice:?}");
    let lost: Vec<i64> = produced
        .iter()
        .filter(|(id, _)| !seen.contains(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        lost.is_empty(),
        "records never claimed within the time limit (or {PATIENCE:?}): {lost:?}"
    );
    let mut per_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (id, key) in &log {
        per_key.entry(key).or_default().push(*id);
    }
    for (key, order) in per_key {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "key {key} published out of commit order");
    }
}
