//! The outbox relay: publishes what applications recorded in an outbox
//! ([`OutboxStore`]) through a [`Transport`], at least once, in per-key order.
//!
//! # Loop
//! wait (woken by commits, polling as a fallback) → claim a batch (a lease) → publish it →
//! mark it dispatched, claiming again at once while there is work. The steps overlap: while
//! batch N is published, batch N-1 is marked and batch N+1 claimed (N's records are leased, so
//! N+1 cannot hold the successors of their keys), so a store and transport with group commit
//! (the embedded ones) do one transaction per batch instead of three.
//!
//! # Direct dispatch
//! When the store can move records into the transport itself
//! ([`OutboxStore::dispatches_into`]: the embedded store and the broker of its own data file)
//! and [`RelayConfig::direct`] is on (the default), the loop is simpler: each batch is one
//! [`OutboxStore::dispatch`] call — claimed, published and marked in one transaction of the
//! store, exactly once, no lease — with a second call in flight while batches come back full.
//! Refused records are parked by the store in that transaction; store failures are retried
//! with the backoff, as below.
//!
//! # Publishing a batch
//! A claimed batch is in sequence order and may hold several records of one partition key (the
//! store hands out a key's records only when no earlier one is in anybody's hands). The relay
//! cuts it into *rounds*: a record goes into the round of the previous record of its key when
//! both share a topic, into the next round otherwise. Rounds are published one after the
//! other; inside a round, one [`Transport::publish`] per topic (in id order), all topics at
//! once. So a key's records reach the transport in commit order, with as few publish calls as
//! possible. `publish` returns after the transport's confirms.
//!
//! # Failures
//! - A record the transport refuses for good — [`TransportError::MessageTooLarge`] (checked
//!   against [`Capabilities::max_message_size`](eventyard_core::Capabilities) before
//!   publishing, too) or [`TransportError::InvalidName`] — is *parked* with the error as its
//!   reason: never retried, never blocking other keys. When a multi-record publish is refused,
//!   its records are published one by one to find the culprits. Records of the parked record's
//!   key that follow it in the batch are given back (they stay blocked behind it in the store).
//! - Any other publish failure (broker down, timeout after [`RelayConfig::publish_timeout`]) is
//!   transient: the rest of the batch is released with an exponential backoff
//!   ([`RelayConfig::backoff`]); records of other keys keep flowing once the transport is back.
//! - Store failures (database down, restarting) are retried with the same backoff, forever;
//!   the relay resumes by itself. A batch already published but not yet marked is marked again
//!   until the lease runs out; after that it is published again (at least once).
//!
//! Several relays — in one process or several — can run against one outbox: the store's
//! leases keep them from publishing the same record, and per-key order holds across them.
//!
//! # Metrics
//! Besides its own counters ([`RelayMetrics`]), a relay records through the `metrics` crate
//! facade (whatever recorder the application installed; nothing without one), labelled
//! `store` (`sqlite`, `postgres`) and `relay` (the configured name):
//! - counters `eventyard_outbox_published_total`, `eventyard_outbox_parked_total`,
//!   `eventyard_outbox_publish_failures_total`, `eventyard_outbox_store_failures_total`;
//! - gauges from [`OutboxStore::status`], every [`RelayConfig::status_interval`]:
//!   `eventyard_outbox_backlog` (pending records), `eventyard_outbox_in_flight`,
//!   `eventyard_outbox_parked`, `eventyard_outbox_oldest_pending_seconds` and
//!   `eventyard_outbox_relay_lag_seconds` (commit → dispatch of the last dispatched record) —
//!   the figures `yard outbox status` shows ([`RelayMetrics::prometheus`] renders them in the
//!   Prometheus text format).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use eventyard_core::outbox::{DirectBatch, OutboxError, OutboxRecord, OutboxStatus, OutboxStore};
use eventyard_core::{OutgoingMessage, Transport, TransportError};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::retry::Backoff;

/// Settings of a [`Relay`]. Every field documents its default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Name of the relay, the prefix of its instance id (`NAME-PID-N`) used for leases.
    /// Default `relay`.
    pub name: String,
    /// Records claimed (and published) per batch. Default 512.
    pub batch_size: usize,
    /// How long a claim is leased: if the relay dies, its records are claimed again after this.
    /// Keep it well above [`RelayConfig::publish_timeout`]. Default 30 s.
    pub lease: Duration,
    /// Longest wait between claims when nothing wakes the relay (the polling fallback; commits
    /// wake it at once). Default 1 s.
    pub poll_interval: Duration,
    /// A publish taking longer than this counts as a transient failure. Default 10 s.
    pub publish_timeout: Duration,
    /// Delay after consecutive failures (publish or store), also the retry time given to
    /// released records. Default exponential from 100 ms, ×2, capped at 30 s, 20 % jitter.
    pub backoff: Backoff,
    /// Run a cleaner task beside the relay. Default `Some(CleanerConfig::default())`.
    pub cleaner: Option<CleanerConfig>,
    /// How often [`Relay::spawn`] reads [`OutboxStore::status`] into the backlog gauges (see
    /// the module doc; one cheap query on SQLite, a count over the outbox on PostgreSQL).
    /// `None`: no gauges. Default 10 s.
    pub status_interval: Option<Duration>,
    /// Use the store's direct dispatch when it offers one for the transport
    /// ([`OutboxStore::dispatches_into`]: the embedded store and the broker of its own data
    /// file): each batch is claimed, published and marked in one transaction of that store,
    /// exactly once, without a lease. Off: claim, publish, mark, as with any other pair.
    /// Default true.
    pub direct: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            name: "relay".into(),
            batch_size: 512,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(10),
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: 0.2,
            },
            cleaner: Some(CleanerConfig::default()),
            status_interval: Some(Duration::from_secs(10)),
            direct: true,
        }
    }
}

/// Settings of the cleaner task that deletes dispatched records ([`OutboxStore::cleanup`]; one
/// elected cleaner at a time across relays and processes).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanerConfig {
    /// Time between cleaning rounds. Default 5 s.
    pub interval: Duration,
    /// Dispatched records are kept this long (for inspection) before deletion. Default 60 s.
    pub retention: Duration,
    /// Records deleted per call (one bounded transaction); a round calls again while a call
    /// deletes a full batch. Default 5,000.
    pub batch: u32,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            interval: Duration::from_secs(5),
            retention: Duration::from_secs(60),
            batch: 5_000,
        }
    }
}

/// Counters of a relay (and its cleaner), shared with its handle.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Records published and marked dispatched.
    pub dispatched: AtomicU64,
    /// Records parked (refused by the transport).
    pub parked: AtomicU64,
    /// Records released after a transient publish failure.
    pub released: AtomicU64,
    /// Failed publish calls.
    pub publish_failures: AtomicU64,
    /// Failed store calls (claim, mark, release, park, cleanup).
    pub store_failures: AtomicU64,
    /// Batches claimed.
    pub batches: AtomicU64,
    /// Records deleted by the cleaner.
    pub cleaned: AtomicU64,
    /// Commit → dispatch time of the last record marked dispatched, µs.
    pub last_lag_us: AtomicU64,
}

/// A snapshot of [`RelayMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RelayCounts {
    /// Records published and marked dispatched.
    pub dispatched: u64,
    /// Records parked.
    pub parked: u64,
    /// Records released after a transient publish failure.
    pub released: u64,
    /// Failed publish calls.
    pub publish_failures: u64,
    /// Failed store calls.
    pub store_failures: u64,
    /// Batches claimed.
    pub batches: u64,
    /// Records deleted by the cleaner.
    pub cleaned: u64,
    /// Commit → dispatch time of the last dispatched record, µs (0 before the first).
    pub last_lag_us: u64,
}

/// Handles of the facade metrics one relay records (see the module doc).
#[derive(Clone)]
struct Facade {
    published: metrics::Counter,
    parked: metrics::Counter,
    publish_failures: metrics::Counter,
    store_failures: metrics::Counter,
}

impl Facade {
    fn new(store: &'static str, relay: &str) -> Self {
        let labels = [("store", store.to_owned()), ("relay", relay.to_owned())];
        Facade {
            published: metrics::counter!(RelayMetrics::PUBLISHED, &labels),
            parked: metrics::counter!(RelayMetrics::PARKED_TOTAL, &labels),
            publish_failures: metrics::counter!(RelayMetrics::PUBLISH_FAILURES, &labels),
            store_failures: metrics::counter!(RelayMetrics::STORE_FAILURES, &labels),
        }
    }
}

impl RelayMetrics {
    /// Counter: records published and marked dispatched.
    pub const PUBLISHED: &'static str = "eventyard_outbox_published_total";
    /// Counter: records parked (refused by the transport).
    pub const PARKED_TOTAL: &'static str = "eventyard_outbox_parked_total";
    /// Counter: failed publish calls.
    pub const PUBLISH_FAILURES: &'static str = "eventyard_outbox_publish_failures_total";
    /// Counter: failed store calls.
    pub const STORE_FAILURES: &'static str = "eventyard_outbox_store_failures_total";
    /// Gauge: records not yet dispatched (parked excluded).
    pub const BACKLOG: &'static str = "eventyard_outbox_backlog";
    /// Gauge: of which leased by a relay.
    pub const IN_FLIGHT: &'static str = "eventyard_outbox_in_flight";
    /// Gauge: parked records.
    pub const PARKED: &'static str = "eventyard_outbox_parked";
    /// Gauge: age of the oldest pending record, seconds (0 when none).
    pub const OLDEST_PENDING: &'static str = "eventyard_outbox_oldest_pending_seconds";
    /// Gauge: commit → dispatch time of the last dispatched record, seconds.
    pub const RELAY_LAG: &'static str = "eventyard_outbox_relay_lag_seconds";

    /// The gauges of a status, with their help texts, in exposition order.
    fn gauges(s: &OutboxStatus) -> [(&'static str, &'static str, Option<f64>); 5] {
        [
            (
                Self::BACKLOG,
                "Outbox records not yet dispatched (parked excluded).",
                Some(s.pending as f64),
            ),
            (
                Self::IN_FLIGHT,
                "Outbox records leased by a relay.",
                Some(s.in_flight as f64),
            ),
            (
                Self::PARKED,
                "Outbox records parked (refused by the transport).",
                Some(s.parked as f64),
            ),
            (
                Self::OLDEST_PENDING,
                "Age of the oldest pending outbox record, seconds.",
                Some(s.oldest_pending_age_secs.unwrap_or(0.0)),
            ),
            (
                Self::RELAY_LAG,
                "Commit to dispatch time of the last dispatched outbox record, seconds.",
                s.last_relay_lag_secs,
            ),
        ]
    }

    /// Sets the backlog gauges (see the module doc) from `status` of the outbox in `store`
    /// (label `store`), through the `metrics` facade. The relay calls it every
    /// [`RelayConfig::status_interval`]; applications that read the status themselves can too.
    pub fn record_status(store: &str, status: &OutboxStatus) {
        let labels = [("store", store.to_owned())];
        for (name, _, value) in Self::gauges(status) {
            if let Some(v) = value {
                metrics::gauge!(name, &labels).set(v);
            }
        }
    }

    /// The backlog gauges of `status` in the Prometheus text exposition format (`# HELP`,
    /// `# TYPE … gauge`, one sample each, label `store`), for `yard outbox status
    /// --prometheus` and scrapers reading files (node_exporter's textfile collector). The lag
    /// is left out until a record has been dispatched.
    pub fn prometheus(store: &str, status: &OutboxStatus) -> String {
        use std::fmt::Write;
        let store = store.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        for (name, help, value) in Self::gauges(status) {
            let Some(v) = value else { continue };
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{store=\"{store}\"}} {v}");
        }
        out
    }

    /// Current values.
    pub fn snapshot(&self) -> RelayCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayCounts {
            dispatched: l(&self.dispatched),
            parked: l(&self.parked),
            released: l(&self.released),
            publish_failures: l(&self.publish_failures),
            store_failures: l(&self.store_failures),
            batches: l(&self.batches),
            cleaned: l(&self.cleaned),
            last_lag_us: l(&self.last_lag_us),
        }
    }
}

/// What a batch came to.
#[derive(Debug, Default)]
struct Settled {
    /// Published: to mark dispatched (with the creation time of the last, for the lag).
    dispatched: Vec<i64>,
    last_created_us: Option<i64>,
    /// Refused for good, with the reason.
    parked: Vec<(i64, String)>,
    /// Behind a parked record of their key: given back at once (they stay blocked).
    held: Vec<i64>,
    /// After a transient failure: given back with the backoff.
    retry: Vec<i64>,
    /// A publish failed transiently.
    transient: bool,
}

/// Moves records from an outbox store to a transport: see the module doc. Build it with
/// [`Relay::new`] and drive it with [`Relay::run`], or start it with [`Relay::spawn`].
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    transport: Arc<dyn Transport>,
    config: RelayConfig,
    id: String,
    metrics: Arc<RelayMetrics>,
    facade: Facade,
    /// Consecutive failed publishes, for the backoff.
    publish_streak: u32,
    /// Consecutive failed claims, for the backoff.
    claim_streak: u32,
    /// Claims ahead (during a publish) that came back empty in a row; 0: claim ahead.
    ahead_misses: u32,
    /// The store dispatches into the transport itself ([`RelayConfig::direct`]).
    direct: bool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("store", &self.store.name())
            .field("transport", &self.transport.capabilities().name)
            .finish()
    }
}

fn instance_id(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = Utc::now().timestamp_micros();
    format!(
        "{name}-{}-{t:x}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn outgoing(r: &OutboxRecord) -> OutgoingMessage {
    OutgoingMessage {
        message: r.message.clone(),
        deliver_at: r.deliver_at,
    }
}

/// Cuts a batch (in id order) into rounds: see the module doc.
fn rounds(records: Vec<OutboxRecord>) -> Vec<BTreeMap<String, Vec<OutboxRecord>>> {
    let mut out: Vec<BTreeMap<String, Vec<OutboxRecord>>> = Vec::new();
    let mut last: std::collections::HashMap<String, (usize, String)> = Default::default();
    for r in records {
        let round = match last.get(&r.partition_key) {
            None => 0,
            Some((round, topic)) if *topic == r.topic => *round,
            Some((round, _)) => round + 1,
        };
        last.insert(r.partition_key.clone(), (round, r.topic.clone()));
        if out.len() <= round {
            out.resize_with(round + 1, BTreeMap::new);
        }
        out[round].entry(r.topic.clone()).or_default().push(r);
    }
    out
}

impl Relay {
    /// A relay from `store` to `transport`.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        transport: Arc<dyn Transport>,
        config: RelayConfig,
    ) -> Self {
        let id = instance_id(&config.name);
        let facade = Facade::new(store.name(), &config.name);
        let direct = config.direct && store.dispatches_into(transport.as_ref());
        Relay {
            store,
            transport,
            config,
            id,
            metrics: Arc::new(RelayMetrics::default()),
            facade,
            publish_streak: 0,
            claim_streak: 0,
            ahead_misses: 0,
            direct,
        }
    }

    /// True when this relay uses the store's direct dispatch ([`RelayConfig::direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// This instance's id (the lease owner in the store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its counters.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Starts the relay (and its cleaner, if configured) on the current tokio runtime.
    pub fn spawn(
        store: Arc<dyn OutboxStore>,
        transport: Arc<dyn Transport>,
        config: RelayConfig,
    ) -> RelayHandle {
        let (stop, stop_rx) = watch::channel(false);
        let cleaner = config.cleaner.clone();
        let status_interval = config.status_interval;
        let relay = Relay::new(store.clone(), transport, config);
        let (id, metrics) = (relay.id.clone(), relay.metrics.clone());
        let facade = relay.facade.clone();
        let mut tasks = vec![tokio::spawn(relay.run(stop_rx.clone()))];
        if let Some(every) = status_interval {
            tasks.push(tokio::spawn(gauges(store.clone(), every, stop_rx.clone())));
        }
        if let Some(c) = cleaner {
            tasks.push(tokio::spawn(clean(
                store,
                c,
                metrics.clone(),
                facade,
                stop_rx,
            )));
        }
        RelayHandle {
            stop,
            tasks,
            id,
            metrics,
        }
    }

    fn store_failed(&self) {
        self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
        self.facade.store_failures.increment(1);
    }

    fn publish_failed(&self) {
        self.metrics
            .publish_failures
            .fetch_add(1, Ordering::Relaxed);
        self.facade.publish_failures.increment(1);
    }

    fn record_dispatch(&self, n: usize, created: Option<i64>) {
        self.metrics
            .dispatched
            .fetch_add(n as u64, Ordering::Relaxed);
        self.facade.published.increment(n as u64);
        if let Some(c) = created {
            let lag = u64::try_from(Utc::now().timestamp_micros() - c).unwrap_or(0);
            self.metrics.last_lag_us.store(lag, Ordering::Relaxed);
        }
    }

    fn delay(&self, streak: u32) -> Duration {
        self.config.backoff.delay(streak.max(1))
    }

    /// Runs until `stop` turns true (or its sender is dropped): the batch in hand is finished
    /// and marked first, and a batch claimed ahead is given back, so nothing stays leased after
    /// a clean stop.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.direct {
            return self.run_direct(stop).await;
        }
        let mut to_mark: Option<(Vec<i64>, Option<i64>)> = None;
        let mut ahead: Vec<OutboxRecord> = Vec::new();
        loop {
            if *stop.borrow() {
                if !ahead.is_empty() {
                    let ids: Vec<i64> = ahead.iter().map(|r| r.id).collect();
                    if let Err(e) = self.store.release(&self.id, &ids, Duration::ZERO).await {
                        tracing::warn!(relay = %self.id, error = %e, "release at stop failed; the lease will expire");
                    }
                }
                if let Some((ids, created)) = to_mark.take() {
                    self.mark(ids, created, &mut stop).await;
                }
                return;
            }
            if ahead.is_empty() {
                let (unmarked, claimed) = self.mark_and_claim(to_mark.take(), true).await;
                if let Some((ids, created)) = unmarked {
                    self.mark(ids, created, &mut stop).await;
                }
                match claimed {
                    Ok(r) => {
                        self.claim_streak = 0;
                        if r.is_empty() {
                            tokio::select! {
                                _ = self.store.wait(self.config.poll_interval) => {}
                                _ = stop.changed() => {}
                            }
                            continue;
                        }
                        ahead = r;
                    }
                    Err(e) => {
                        self.claim_streak = self.claim_streak.saturating_add(1);
                        let d = self.delay(self.claim_streak);
                        tracing::warn!(relay = %self.id, error = %e, retry_in = ?d, "claim failed");
                        pause(d, &mut stop).await;
                        continue;
                    }
                }
            }
            let batch = std::mem::take(&mut ahead);
            self.metrics.batches.fetch_add(1, Ordering::Relaxed);
            // Publish this batch while the previous one is marked and the next one claimed (one
            // group commit where the store and the transport share one): the records of this
            // batch are leased, so the next claim cannot hold the successors of their keys.
            // With a few keys every one of them is in this batch and the claim comes back
            // empty: then the relay stops claiming ahead for a while. The mark and the claim
            // are sent first: they are ready at once, while the publish first builds its
            // messages, so a single-writer store starts on them instead of waiting idle.
            let ahead_now = self.ahead_misses.is_multiple_of(16);
            let ((unmarked, claimed), settled) = tokio::join!(
                self.mark_and_claim(to_mark.take(), ahead_now),
                self.publish(batch)
            );
            if let Some((ids, created)) = unmarked {
                self.mark(ids, created, &mut stop).await;
            }
            match claimed {
                Ok(r) if ahead_now => {
                    self.claim_streak = 0;
                    self.ahead_misses = if r.is_empty() { 1 } else { 0 };
                    ahead = r;
                }
                Ok(_) => self.ahead_misses += 1,
                Err(e) => {
                    self.claim_streak = self.claim_streak.saturating_add(1);
                    tracing::warn!(relay = %self.id, error = %e, "claim failed");
                }
            }
            if settled.transient {
                self.publish_streak = self.publish_streak.saturating_add(1);
            } else if !settled.dispatched.is_empty() {
                self.publish_streak = 0;
            }
            self.settle_failures(&settled).await;
            if !settled.dispatched.is_empty() {
                to_mark = Some((settled.dispatched, settled.last_created_us));
            }
        }
    }

    /// The loop with direct dispatch: one store call per batch, up to two in flight while
    /// batches come back full (the store's writer starts on the next while the previous one's
    /// commit is flushed). A stop lets the calls in flight finish: each is one transaction.
    async fn run_direct(mut self, mut stop: watch::Receiver<bool>) {
        let max = self.config.batch_size.max(1);
        let spawn = |relay: &Relay| {
            let (store, id) = (relay.store.clone(), relay.id.clone());
            tokio::spawn(async move { store.dispatch(&id, max).await })
        };
        let mut in_flight: std::collections::VecDeque<
            JoinHandle<Result<DirectBatch, OutboxError>>,
        > = Default::default();
        loop {
            if *stop.borrow() {
                for call in in_flight.drain(..) {
                    if let Ok(Ok(batch)) = call.await {
                        self.note_direct(&batch);
                    }
                }
                return;
            }
            let call = match in_flight.pop_front() {
                Some(call) => call,
                None => spawn(&self),
            };
            let result = call
                .await
                .unwrap_or_else(|e| Err(OutboxError::Store(format!("dispatch task failed: {e}"))));
            match result {
                Ok(batch) => {
                    self.claim_streak = 0;
                    self.note_direct(&batch);
                    if batch.moved() >= max {
                        while in_flight.len() < 2 {
                            in_flight.push_back(spawn(&self));
                        }
                    } else if batch.moved() == 0 && in_flight.is_empty() {
                        tokio::select! {
                            _ = self.store.wait(self.config.poll_interval) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                Err(e) => {
                    self.store_failed();
                    self.claim_streak = self.claim_streak.saturating_add(1);
                    let d = self.delay(self.claim_streak);
                    tracing::warn!(relay = %self.id, error = %e, retry_in = ?d, "dispatch failed");
                    pause(d, &mut stop).await;
                }
            }
        }
    }

    /// Counts a direct batch: dispatched and parked records.
    fn note_direct(&self, batch: &DirectBatch) {
        if batch.moved() == 0 {
            return;
        }
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        if batch.dispatched > 0 {
            self.record_dispatch(batch.dispatched, batch.last_created_us);
        }
        for (id, reason) in &batch.parked {
            self.note_parked(*id, reason);
        }
    }

    fn note_parked(&self, id: i64, reason: &str) {
        self.metrics.parked.fetch_add(1, Ordering::Relaxed);
        self.facade.parked.increment(1);
        tracing::warn!(relay = %self.id, record = id, %reason, "outbox record parked");
    }

    /// Marks the previous batch (if any) and claims the next (when `claim`), the mark sent
    /// first so that both land in one group commit where the store has one. Returns the batch
    /// to mark again if the mark failed.
    async fn mark_and_claim(
        &self,
        to_mark: Option<(Vec<i64>, Option<i64>)>,
        claim: bool,
    ) -> (
        Option<(Vec<i64>, Option<i64>)>,
        Result<Vec<OutboxRecord>, OutboxError>,
    ) {
        let claim = async {
            if !claim {
                return Ok(Vec::new());
            }
            self.store
                .claim(&self.id, self.config.batch_size, self.config.lease)
                .await
                .inspect_err(|_| {
                    self.store_failed();
                })
        };
        let Some((ids, created)) = to_mark else {
            return (None, claim.await);
        };
        let (marked, claimed) = tokio::join!(self.store.mark_dispatched(&self.id, &ids), claim);
        match marked {
            Ok(()) => {
                self.record_dispatch(ids.len(), created);
                (None, claimed)
            }
            Err(e) => {
                self.store_failed();
                tracing::warn!(relay = %self.id, error = %e, "marking dispatched failed; retrying");
                (Some((ids, created)), claimed)
            }
        }
    }

    /// One cycle without waiting: claims a batch, publishes it and marks it; returns how many
    /// records were dispatched (0 when nothing was claimable). For tests and benchmarks.
    pub async fn run_once(&mut self) -> Result<usize, OutboxError> {
        if self.direct {
            let batch = self
                .store
                .dispatch(&self.id, self.config.batch_size)
                .await?;
            self.note_direct(&batch);
            return Ok(batch.dispatched);
        }
        let records = self
            .store
            .claim(&self.id, self.config.batch_size, self.config.lease)
            .await?;
        if records.is_empty() {
            return Ok(0);
        }
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        let settled = self.publish(records).await;
        if settled.transient {
            self.publish_streak = self.publish_streak.saturating_add(1);
        } else if !settled.dispatched.is_empty() {
            self.publish_streak = 0;
        }
        self.settle_failures(&settled).await;
        let n = settled.dispatched.len();
        if n > 0 {
            self.store
                .mark_dispatched(&self.id, &settled.dispatched)
                .await?;
            self.record_dispatch(n, settled.last_created_us);
        }
        Ok(n)
    }

    /// Marks `ids` dispatched, retrying store failures with the backoff until the lease runs
    /// out (after which the records are published again by whoever claims them).
    async fn mark(&self, ids: Vec<i64>, created: Option<i64>, stop: &mut watch::Receiver<bool>) {
        let give_up = tokio::time::Instant::now() + self.config.lease;
        let mut attempt = 0u32;
        loop {
            match self.store.mark_dispatched(&self.id, &ids).await {
                Ok(()) => {
                    self.record_dispatch(ids.len(), created);
                    return;
                }
                Err(e) => {
                    self.store_failed();
                    attempt += 1;
                    let d = self.config.backoff.delay(attempt);
                    if tokio::time::Instant::now() + d >= give_up {
                        tracing::error!(relay = %self.id, error = %e, records = ids.len(),
                            "cannot mark published records dispatched; they will be published again");
                        return;
                    }
                    tracing::warn!(relay = %self.id, error = %e, retry_in = ?d, "marking dispatched failed");
                    if *stop.borrow() {
                        tokio::time::sleep(d).await;
                    } else {
                        pause(d, stop).await;
                    }
                }
            }
        }
    }

    /// Parks the refused records and releases the others that were not published.
    async fn settle_failures(&self, s: &Settled) {
        for (id, reason) in &s.parked {
            match self.store.park(&self.id, *id, reason).await {
                Ok(()) => self.note_parked(*id, reason),
                Err(e) => {
                    self.store_failed();
                    tracing::warn!(relay = %self.id, record = id, error = %e, "parking failed; the lease will expire");
                }
            }
        }
        if !s.held.is_empty()
            && let Err(e) = self.store.release(&self.id, &s.held, Duration::ZERO).await
        {
            self.store_failed();
            tracing::warn!(relay = %self.id, error = %e, "release failed; the lease will expire");
        }
        if !s.retry.is_empty() {
            let d = self.delay(self.publish_streak);
            self.metrics
                .released
                .fetch_add(s.retry.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.store.release(&self.id, &s.retry, d).await {
                self.store_failed();
                tracing::warn!(relay = %self.id, error = %e, "release failed; the lease will expire");
            }
        }
    }

    async fn publish_one(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        match tokio::time::timeout(
            self.config.publish_timeout,
            self.transport.publish(topic, messages),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Unavailable {
                backend: "relay",
                message: format!(
                    "publish to `{topic}` did not complete within {:?}",
                    self.config.publish_timeout
                ),
            }),
        }
    }

    /// Publishes a claimed batch: see the module doc.
    async fn publish(&self, records: Vec<OutboxRecord>) -> Settled {
        let mut s = Settled::default();
        let max = self.transport.capabilities().max_message_size;
        // Keys with a parked (or failed) record in this batch: their later records stay back.
        let mut stopped: HashSet<String> = HashSet::new();
        let mut ok = Vec::with_capacity(records.len());
        for r in records {
            if stopped.contains(&r.partition_key) {
                s.held.push(r.id);
                continue;
            }
            let refusal = eventyard_core::transport::check_name("topic", &r.topic)
                .err()
                .or_else(|| {
                    (r.message.body.len() > max).then(|| TransportError::MessageTooLarge {
                        size: r.message.body.len(),
                        max,
                    })
                });
            match refusal {
                Some(e) => {
                    s.parked.push((r.id, e.to_string()));
                    stopped.insert(r.partition_key.clone());
                }
                None => ok.push(r),
            }
        }
        let mut aborted = false;
        for round in rounds(ok) {
            let mut batches = Vec::new();
            for (topic, recs) in round {
                let (go, back): (Vec<_>, Vec<_>) = recs
                    .into_iter()
                    .partition(|r| !aborted && !stopped.contains(&r.partition_key));
                for r in back {
                    if aborted {
                        s.retry.push(r.id);
                    } else {
                        s.held.push(r.id);
                    }
                }
                if !go.is_empty() {
                    batches.push((topic, go));
                }
            }
            if batches.is_empty() {
                continue;
            }
            let results =
                futures::future::join_all(batches.iter().map(|(topic, recs)| {
                    self.publish_one(topic, recs.iter().map(outgoing).collect())
                }))
                .await;
            for ((topic, recs), result) in batches.into_iter().zip(results) {
                match result {
                    Ok(()) => dispatched(&mut s, &recs),
                    Err(e) if e.is_refusal() && recs.len() == 1 => {
                        self.publish_failed();
                        stopped.insert(recs[0].partition_key.clone());
                        s.parked.push((recs[0].id, e.to_string()));
                    }
                    Err(e) if e.is_refusal() => {
                        self.publish_failed();
                        // Find the culprits: one by one, in order.
                        for r in recs {
                            if aborted {
                                s.retry.push(r.id);
                                continue;
                            }
                            if stopped.contains(&r.partition_key) {
                                s.held.push(r.id);
                                continue;
                            }
                            match self.publish_one(&topic, vec![outgoing(&r)]).await {
                                Ok(()) => dispatched(&mut s, std::slice::from_ref(&r)),
                                Err(e) if e.is_refusal() => {
                                    stopped.insert(r.partition_key.clone());
                                    s.parked.push((r.id, e.to_string()));
                                }
                                Err(e) => {
                                    self.transient(&topic, &e);
                                    aborted = true;
                                    s.transient = true;
                                    s.retry.push(r.id);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.transient(&topic, &e);
                        aborted = true;
                        s.transient = true;
                        s.retry.extend(recs.iter().map(|r| r.id));
                    }
                }
            }
        }
        s
    }

    fn transient(&self, topic: &str, e: &TransportError) {
        self.publish_failed();
        tracing::warn!(relay = %self.id, %topic, error = %e, "publish failed; releasing the batch with backoff");
    }
}

fn dispatched(s: &mut Settled, recs: &[OutboxRecord]) {
    for r in recs {
        s.dispatched.push(r.id);
        let created = r.created_at.timestamp_micros();
        if s.last_created_us.is_none_or(|c| created > c) {
            s.last_created_us = Some(created);
        }
    }
}

/// Every `every`, reads the store's status into the backlog gauges (module doc).
async fn gauges(store: Arc<dyn OutboxStore>, every: Duration, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        match store.status().await {
            Ok(s) => RelayMetrics::record_status(store.name(), &s),
            Err(e) => tracing::debug!(error = %e, "outbox status for the gauges failed"),
        }
        pause(every, &mut stop).await;
    }
}

/// Sleeps `d` unless `stop` turns true first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

/// The cleaner task: every `interval`, deletes dispatched records older than `retention` in
/// bounded batches while it is the elected cleaner.
async fn clean(
    store: Arc<dyn OutboxStore>,
    config: CleanerConfig,
    metrics: Arc<RelayMetrics>,
    facade: Facade,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        loop {
            match store.cleanup(config.retention, config.batch).await {
                Ok(n) => {
                    metrics.cleaned.fetch_add(n, Ordering::Relaxed);
                    if n < u64::from(config.batch) || *stop.borrow() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                    facade.store_failures.increment(1);
                    tracing::warn!(error = %e, "outbox cleanup failed");
                    break;
                }
            }
        }
        pause(config.interval, &mut stop).await;
    }
}

/// A running relay (and its cleaner), from [`Relay::spawn`].
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    id: String,
    metrics: Arc<RelayMetrics>,
}

impl RelayHandle {
    /// The relay's instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its counters now.
    pub fn counts(&self) -> RelayCounts {
        self.metrics.snapshot()
    }

    /// Its shared counters.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Stops the relay after the batch in hand (published and marked) and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventyard_core::Message;

    fn rec(id: i64, key: &str, topic: &str) -> OutboxRecord {
        OutboxRecord {
            id,
            topic: topic.into(),
            partition_key: key.into(),
            message: Message {
                body: id.to_string().into(),
                properties: Default::default(),
            },
            deliver_at: None,
            created_at: Utc::now(),
            attempts: 0,
        }
    }

    fn shape(r: &[BTreeMap<String, Vec<OutboxRecord>>]) -> Vec<Vec<(String, Vec<i64>)>> {
        r.iter()
            .map(|round| {
                round
                    .iter()
                    .map(|(t, recs)| (t.clone(), recs.iter().map(|r| r.id).collect()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn one_topic_is_one_round() {
        let r = rounds(vec![rec(1, "a", "x"), rec(2, "b", "x"), rec(3, "a", "x")]);
        assert_eq!(shape(&r), vec![vec![("x".to_string(), vec![1, 2, 3])]]);
    }

    #[test]
    fn a_key_changing_topic_moves_to_the_next_round() {
        let r = rounds(vec![
            rec(1, "a", "x"),
            rec(2, "a", "y"),
            rec(3, "b", "y"),
            rec(4, "a", "x"),
            rec(5, "c", "x"),
        ]);
        assert_eq!(
            shape(&r),
            vec![
                vec![("x".into(), vec![1, 5]), ("y".into(), vec![3])],
                vec![("y".into(), vec![2])],
                vec![("x".into(), vec![4])],
            ]
        );
    }
}
