//! Shared by the NATS integration tests: a conformance factory with a prefix of its own, and
//! clean-up of the streams tests create.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventyard_core::Transport;
use eventyard_nats::{NatsConfig, NatsTransport};
use eventyard_testkit::conformance::TransportFactory;
use futures::StreamExt;

/// Prefix of every test prefix (`eyt-<unix seconds, hex>-<pid, hex>-<n>`).
const TEST_PREFIX: &str = "eyt-";
/// Streams of test prefixes older than this are leftovers of crashed runs.
const STALE_AFTER: Duration = Duration::from_secs(3600);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A prefix no other test, process or earlier run uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{TEST_PREFIX}{:x}-{:x}-{}",
        now_secs(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The config for `url` under `prefix`.
pub fn config(url: &str, prefix: &str) -> NatsConfig {
    NatsConfig::from_url(url)
        .expect("valid NATS url")
        .prefix(prefix)
}

/// Conformance factory: each factory (one per test case) has its own prefix, so names never
/// collide with other cases or earlier runs; its streams are deleted when it is dropped.
pub struct NatsFactory {
    url: String,
    prefix: String,
    counter: AtomicU64,
}

impl NatsFactory {
    pub fn new(url: String) -> Self {
        NatsFactory {
            url,
            prefix: unique_prefix(),
            counter: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl TransportFactory for NatsFactory {
    async fn connect(&self) -> Arc<dyn Transport> {
        let transport = NatsTransport::connect(config(&self.url, &self.prefix))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url));
        Arc::new(transport)
    }

    fn unique(&self, base: &str) -> String {
        format!("{base}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for NatsFactory {
    fn drop(&mut self) {
        cleanup_blocking(&self.url, &self.prefix);
    }
}

/// Deletes the streams of `prefix` (and, once per process, stale streams of earlier test runs),
/// from a thread of its own so that it works from `Drop` inside a runtime.
pub fn cleanup_blocking(url: &str, prefix: &str) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let done = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(20), cleanup(&url, &prefix)).await;
        });
    });
    let _ = done.join();
}

async fn cleanup(url: &str, prefix: &str) {
    let mut cfg = config(url, prefix);
    cfg.connect_timeout = Duration::from_secs(1);
    if let Ok(transport) = NatsTransport::connect(cfg).await {
        if let Err(e) = transport.delete_all_topics().await {
            eprintln!("cleanup of {prefix}: {e}");
        }
        let _ = transport.close().await;
    }
    static STALE_DONE: AtomicBool = AtomicBool::new(false);
    if !STALE_DONE.swap(true, Ordering::AcqRel) {
        delete_stale(url).await;
    }
}

/// Deletes streams of test prefixes created more than an hour ago (crashed runs).
async fn delete_stale(url: &str) {
    let server = url.split('?').next().unwrap_or(url);
    let Ok(client) = async_nats::connect(server).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    let now = now_secs();
    for name in names {
        let Some(rest) = name.strip_prefix(TEST_PREFIX) else {
            continue;
        };
        let created = rest
            .split('-')
            .next()
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        if created.is_some_and(|c| now.saturating_sub(c) > STALE_AFTER.as_secs()) {
            let _ = js.delete_stream(&name).await;
        }
    }
}
