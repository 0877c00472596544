//! The outbox beyond the embedded store's own tests: the relay over the PostgreSQL store
//! (trace context from a handler through the relay to the consumer; a database outage through a
//! TCP proxy), the relay's `metrics` facade figures, and `yard outbox status` on both stores
//! (`--json`, `--prometheus`). PostgreSQL tests need a server (`EVENTYARD_PG_URL` or the
//! loopback default) and skip outside CI without one.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventyard::outbox::{OutboxError, OutboxStore, PendingEvent};
use eventyard::sqlite::outbox::{self, SqliteOutbox};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    Bus, Envelope, EventType, HandlerError, MessageContext, Relay, RelayConfig, RelayMetrics,
    SubQueue, SubscriptionSpec, TenantId, Transport, current_envelope, properties::names,
};
use eventyard_postgres::{PgOutbox, PgOutboxConfig};
use eventyard_testkit::services::{Service, require};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn schema() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 10_000_000_000;
    format!("eyc_{}_{t}", std::process::id())
}

async fn pg_store(url: &str, schema: &str) -> PgOutbox {
    PgOutbox::connect(
        url,
        PgOutboxConfig {
            connect_attempts: 3,
            connect_backoff: Duration::from_millis(50),
            ..PgOutboxConfig::with_schema(schema)
        },
    )
    .await
    .unwrap()
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn event(topic: &str, key: &str, n: u64) -> PendingEvent {
    let env = Envelope::new(
        EventType::event("OrderPlaced").unwrap(),
        TenantId::parse("connectsoft").unwrap(),
        serde_json::json!({ "n": n }),
    );
    PendingEvent::new(topic, &env).unwrap().partition_key(key)
}

fn fast(name: &str) -> RelayConfig {
    RelayConfig {
        name: name.into(),
        poll_interval: Duration::from_millis(200),
        cleaner: None,
        ..RelayConfig::default()
    }
}

fn broker(dir: &tempfile::TempDir) -> SqliteBroker {
    SqliteBroker::open(SqliteConfig::new(dir.path().join("bus.db"))).unwrap()
}

async fn until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An event recorded in the PostgreSQL outbox from inside a handler, with the handled event's
/// trace context, reaches the consumer through the relay with traceId, correlationId and
/// causationId (envelope and properties) intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_survives_the_postgres_relay() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let schema = schema();
    let store = pg_store(&url, &schema).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir);
    broker
        .ensure_subscription(&SubscriptionSpec::new("ShipmentRequested", "check"))
        .await
        .unwrap();
    let bus = Bus::new(Arc::new(broker.clone()));
    let app = Arc::new(tokio::sync::Mutex::new(pg_client(&url).await));
    {
        let (store, app) = (store.clone(), app.clone());
        bus.subscription("shipping")
            .topic("OrderPlaced")
            .handle_envelopes(move |_env: Envelope, _ctx: MessageContext| {
                let (store, app) = (store.clone(), app.clone());
                async move {
                    // Code that only sees the current handled envelope, as a repository would.
                    let cause = current_envelope().expect("inside a handler");
                    let mut env = Envelope::new(
                        EventType::event("ShipmentRequested").unwrap(),
                        cause.tenant_id.clone(),
                        serde_json::json!({ "for": cause.event_id.to_string() }),
                    );
                    env.inherit_from(&cause);
                    let ev = PendingEvent::new("ShipmentRequested", &env)
                        .map_err(|e| HandlerError::transient(e.to_string()))?;
                    let mut client = app.lock().await;
                    let tx = client
                        .transaction()
                        .await
                        .map_err(|e| HandlerError::transient(e.to_string()))?;
                    store
                        .add(&tx, &ev)
                        .await
                        .map_err(|e| HandlerError::transient(e.to_string()))?;
                    tx.commit()
                        .await
                        .map_err(|e| HandlerError::transient(e.to_string()))?;
                    Ok(())
                }
            })
            .await
            .unwrap();
    }
    let relay = Relay::spawn(Arc::new(store.clone()), Arc::new(broker.clone()), fast("t"));
    let root = Envelope::new(
        EventType::event("OrderPlaced").unwrap(),
        TenantId::parse("connectsoft").unwrap(),
        serde_json::json!({ "n": 1 }),
    );
    bus.publish_envelope(root.clone()).await.unwrap();

    let mut rx = broker
        .receiver("ShipmentRequested", "check", SubQueue::Main)
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t0.elapsed() < Duration::from_secs(20) {
        got = rx.receive(1, Duration::from_millis(200)).await.unwrap();
    }
    assert_eq!(got.len(), 1, "the follow-up event did not arrive");
    let d = got.pop().unwrap();
    let env = d.message.envelope().unwrap();
    assert_eq!(env.trace_id, root.trace_id);
    assert_eq!(env.correlation_id, root.correlation_id);
    assert_eq!(env.causation_id.as_ref(), Some(&root.event_id));
    assert_eq!(env.tenant_id, root.tenant_id);
    let p = &d.message.properties;
    let text = |k: &str| p.get(k).map(|v| v.to_string());
    assert_eq!(text(names::TRACE_ID), Some(root.trace_id.to_string()));
    assert_eq!(
        text(names::CORRELATION_ID),
        Some(root.correlation_id.to_string())
    );
    assert_eq!(text(names::CAUSATION_ID), Some(root.event_id.to_string()));
    d.ack().await.unwrap();
    relay.shutdown().await;
    bus.shutdown().await.unwrap();
    store.drop_schema().await.unwrap();
}

/// A TCP proxy in front of PostgreSQL that the test can cut (closing every connection and
/// refusing new ones) and restore, to simulate a database outage without touching the server.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let (target, g) = (target.clone(), g.clone());
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                                if g.load(Ordering::SeqCst) != born {
                                    return; // cut: both sockets are dropped
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The database goes away (every connection cut, new ones refused) while a relay runs and
/// comes back: recording fails with a clear transient error meanwhile, the relay retries with
/// backoff, and every event committed before and after the outage is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_a_clear_error_and_the_relay_resumes() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let mut parsed: tokio_postgres::Config = url.parse().unwrap();
    let host = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    parsed.host("127.0.0.1").port(proxy.addr.port());
    let user = parsed.get_user().unwrap_or("postgres").to_owned();
    let db = parsed.get_dbname().unwrap_or("postgres").to_owned();
    let proxied = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.addr.port());
    let schema = schema();
    // The application and the relay both go through the proxy.
    let store = pg_store(&proxied, &schema).await;
    let mut app = pg_client(&proxied).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir);
    broker
        .ensure_subscription(&SubscriptionSpec::new("OrderPlaced", "check"))
        .await
        .unwrap();
    let relay = Relay::spawn(
        Arc::new(store.clone()),
        Arc::new(broker.clone()),
        RelayConfig {
            backoff: eventyard::Backoff::Exponential {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(400),
                multiplier: 2.0,
                jitter: 0.2,
            },
            ..fast("outage")
        },
    );
    let commit = async |app: &mut tokio_postgres::Client, from: u64| {
        let tx = app.transaction().await.unwrap();
        let evs: Vec<_> = (from..from + 10)
            .map(|i| event("OrderPlaced", &format!("k{}", i % 3), i))
            .collect();
        store.add_batch(&tx, &evs).await.unwrap();
        tx.commit().await.unwrap();
    };
    commit(&mut app, 0).await;
    let published = async || {
        broker
            .stats()
            .await
            .unwrap()
            .iter()
            .map(|s| s.available)
            .sum::<u64>()
    };
    until("the first events", Duration::from_secs(20), async || {
        published().await == 10
    })
    .await;

    // Outage: the application's transaction fails with a clear, transient error on add.
    let tx = app.transaction().await.unwrap();
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = store
        .add(&tx, &event("OrderPlaced", "k0", 99))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutboxError::Unavailable(_)) && err.is_transient(),
        "{err:?}"
    );
    drop(tx);
    // The relay's store calls fail meanwhile; it keeps retrying.
    let failures = relay.metrics();
    let before = failures.store_failures.load(Ordering::Relaxed);
    let t0 = Instant::now();
    while failures.store_failures.load(Ordering::Relaxed) == before
        && t0.elapsed() < Duration::from_secs(5)
    {
        // A commit notification cannot arrive; the poll interval drives the claims.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.store_failures.load(Ordering::Relaxed) > before,
        "the relay saw no store failure during the outage"
    );
    // A status read fails clearly too.
    assert!(store.status().await.unwrap_err().is_transient());

    // Back: the relay resumes and publishes what is committed after the outage.
    proxy.restore();
    let mut app = pg_client(&proxied).await;
    commit(&mut app, 100).await;
    until(
        "the events after the outage",
        Duration::from_secs(30),
        async || published().await == 20,
    )
    .await;
    relay.shutdown().await;
    let direct = pg_store(&url, &schema).await;
    direct.drop_schema().await.unwrap();
}

/// A minimal `metrics` recorder: every counter and gauge by `name{label=value,...}`.
#[derive(Clone, Default)]
struct TestRecorder {
    values: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

impl TestRecorder {
    fn slot(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> Option<u64> {
        let v = self.values.lock().unwrap();
        v.get(name).map(|a| a.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let v = self.values.lock().unwrap();
        v.get(name)
            .map(|a| f64::from_bits(a.load(Ordering::Relaxed)))
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The relay records its counters and the backlog gauges through the `metrics` facade: the
/// published count, and backlog / oldest pending age / lag / parked from the store's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_records_metrics_through_the_facade() {
    let rec = TestRecorder::default();
    metrics::set_global_recorder(rec.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(&dir);
    broker
        .ensure_subscription(&SubscriptionSpec::new("OrderPlaced", "check"))
        .await
        .unwrap();
    let evs: Vec<_> = (0..25).map(|i| event("OrderPlaced", "k", i)).collect();
    broker
        .transaction(move |tx| outbox::add_all(tx, &evs))
        .await
        .unwrap()
        .unwrap();
    // The gauges see the backlog before the relay drains it.
    let store = SqliteOutbox::new(broker.clone());
    RelayMetrics::record_status("sqlite", &store.status().await.unwrap());
    assert_eq!(
        rec.gauge("eventyard_outbox_backlog{store=sqlite}"),
        Some(25.0)
    );
    assert!(
        rec.gauge("eventyard_outbox_oldest_pending_seconds{store=sqlite}")
            .unwrap()
            >= 0.0
    );

    let relay = Relay::spawn(
        Arc::new(store),
        Arc::new(broker.clone()),
        RelayConfig {
            status_interval: Some(Duration::from_millis(50)),
            ..fast("metered")
        },
    );
    let published = "eventyard_outbox_published_total{relay=metered,store=sqlite}";
    until(
        "the published counter",
        Duration::from_secs(20),
        async || rec.counter(published) == Some(25),
    )
    .await;
    until(
        "the drained backlog gauge",
        Duration::from_secs(20),
        async || {
            rec.gauge("eventyard_outbox_backlog{store=sqlite}") == Some(0.0)
                && rec
                    .gauge("eventyard_outbox_relay_lag_seconds{store=sqlite}")
                    .is_some()
        },
    )
    .await;
    assert_eq!(
        rec.gauge("eventyard_outbox_parked{store=sqlite}"),
        Some(0.0)
    );
    assert_eq!(
        rec.counter("eventyard_outbox_parked_total{relay=metered,store=sqlite}"),
        Some(0)
    );
    relay.shutdown().await;
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in:\n{text}"))
}

/// `yard outbox status --prometheus` on the embedded store: HELP/TYPE lines and one sample
/// per gauge, the same figures as `--json`.
#[test]
fn status_prometheus_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("o.db");
    let data = data.to_str().unwrap();
    let out = common::run(&["outbox", "produce", "--data", data, "--count", "7"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::run(&["outbox", "status", "--data", data, "--prometheus"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("# TYPE eventyard_outbox_backlog gauge"),
        "{text}"
    );
    assert!(
        text.contains("eventyard_outbox_backlog{store=\"sqlite\"} 7"),
        "{text}"
    );
    assert_eq!(sample(&text, "eventyard_outbox_parked"), 0.0);
    assert!(sample(&text, "eventyard_outbox_oldest_pending_seconds") >= 0.0);
    // Nothing dispatched yet: no lag sample.
    assert!(
        !text.contains("eventyard_outbox_relay_lag_seconds{"),
        "{text}"
    );
}

/// `yard outbox status --store postgres` (table, `--json`, `--prometheus`) reads the backlog
/// of a PostgreSQL schema; a missing schema is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_postgres() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let schema = schema();
    let store = pg_store(&url, &schema).await;
    let mut app = pg_client(&url).await;
    let tx = app.transaction().await.unwrap();
    let evs: Vec<_> = (0..4).map(|i| event("OrderPlaced", "k", i)).collect();
    store.add_batch(&tx, &evs).await.unwrap();
    tx.commit().await.unwrap();
    let claimed = store.claim("r", 1, Duration::from_secs(60)).await.unwrap();
    store.mark_dispatched("r", &[claimed[0].id]).await.unwrap();

    let args = |extra: &[&str]| {
        let mut v = vec!["outbox", "status", "--store", "postgres", "--url", &url];
        v.extend(["--schema", &schema]);
        v.extend(extra);
        common::run(&v.iter().map(|s| &**s).collect::<Vec<&str>>())
    };
    let out = args(&["--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(common::stdout(&out).trim()).unwrap();
    assert_eq!(v["pending"], 3, "{v}");
    assert_eq!(v["dispatched"], 1, "{v}");
    assert_eq!(v["store"], "postgres", "{v}");
    assert!(v["last_relay_lag_secs"].as_f64().is_some(), "{v}");

    let out = args(&["--prometheus"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert_eq!(sample(&text, "eventyard_outbox_backlog"), 3.0, "{text}");
    assert!(text.contains("store=\"postgres\""), "{text}");
    assert!(sample(&text, "eventyard_outbox_relay_lag_seconds") >= 0.0);

    let out = args(&[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stdout(&out).contains("oldest pending age"));

    let out = common::run(&[
        "outbox",
        "status",
        "--store",
        "postgres",
        "--url",
        &url,
        "--schema",
        "eyc_missing",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("migrate"),
        "{}",
        common::stderr(&out)
    );
    store.drop_schema().await.unwrap();
}
