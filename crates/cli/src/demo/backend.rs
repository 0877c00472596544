//! Where `yard demo` runs: the embedded broker of the data file (default), or a transport chosen
//! with `--transport URL` (`amqp://…`, `nats://…`, `sqlite://OTHER.db`), opened through the
//! facade's `eventyard::connect`. On a shared broker every name the run creates lives under a
//! prefix of its own (`yard-demo-<run>`), and the run deletes what it created at the end.

use std::sync::Arc;

use anyhow::Context;
use eventyard::Transport;
use eventyard::sqlite::SqliteBroker;
use futures::{StreamExt, TryStreamExt};

/// The kind of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The embedded broker of the data file itself.
    Embedded,
    /// Another SQLite file.
    Sqlite,
    /// RabbitMQ.
    Amqp,
    /// NATS JetStream.
    Nats,
}

/// The transport of a run.
pub struct Backend {
    /// Which kind.
    pub kind: Kind,
    /// The URL connected to (with the run's prefix), `None` for the embedded broker.
    pub url: Option<String>,
    /// The run's name prefix on a shared broker.
    pub prefix: Option<String>,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// The same, as the embedded broker (for its DLQ operations).
    pub embedded: Option<SqliteBroker>,
}

/// `scheme://user:***@host…`: `url` without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// A prefix no other run uses: `<base>-<8 hex digits of the time and pid>`, at most 32
/// characters of `[A-Za-z0-9-]` (what both RabbitMQ and NATS prefixes accept).
fn run_prefix(base: Option<&str>) -> String {
    let t = chrono::Utc::now().timestamp_micros() as u64;
    let run = (t ^ (u64::from(std::process::id()) << 20)) as u32;
    let mut base: String = base
        .unwrap_or("yard-demo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(23)
        .collect();
    if base.is_empty() {
        base = "yard-demo".into();
    }
    format!("{base}-{run:08x}")
}

/// `url` with its `prefix` query parameter replaced by a prefix unique to this run (a prefix
/// already in the URL becomes its start).
fn with_run_prefix(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut given = None;
    let mut pairs: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("prefix", v)) => given = Some(v),
            _ => pairs.push(pair),
        }
    }
    let prefix = run_prefix(given);
    let prefix_pair = format!("prefix={prefix}");
    pairs.push(&prefix_pair);
    (format!("{base}?{}", pairs.join("&")), prefix)
}

/// Opens the transport `url`, or when `None` the embedded broker `store` (the data file's, which
/// also holds the platforms' state, the inbox and the outbox: one handle, one writer thread).
pub async fn open(url: Option<&str>, store: &SqliteBroker) -> anyhow::Result<Backend> {
    let Some(url) = url else {
        let broker = store.clone();
        return Ok(Backend {
            kind: Kind::Embedded,
            url: None,
            prefix: None,
            transport: Arc::new(broker.clone()),
            embedded: Some(broker),
        });
    };
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let kind = match scheme {
        "amqp" | "amqps" => Kind::Amqp,
        "nats" => Kind::Nats,
        _ => Kind::Sqlite,
    };
    let (url, prefix) = match kind {
        Kind::Amqp | Kind::Nats => {
            let (u, p) = with_run_prefix(url);
            (u, Some(p))
        }
        _ => (url.to_owned(), None),
    };
    let transport = eventyard::connect(&url)
        .await
        .with_context(|| format!("--transport {}", redact(&url)))?;
    Ok(Backend {
        kind,
        url: Some(url),
        prefix,
        transport,
        embedded: None,
    })
}

impl Backend {
    /// How the run's transport is described.
    pub fn describe(&self) -> String {
        match (&self.url, &self.prefix) {
            (None, _) => "embedded broker of the data file".into(),
            (Some(u), Some(p)) => format!(
                "{} ({}; names under the run's prefix {p})",
                redact(u.split_once('?').map_or(u, |(b, _)| b)),
                self.transport.capabilities().name
            ),
            (Some(u), None) => format!("{} ({})", redact(u), self.transport.capabilities().name),
        }
    }

    /// Deletes what the run created on a `--transport` broker (`subscriptions`, and for NATS and
    /// RabbitMQ the topics under the run's prefix); the embedded broker's data file is kept.
    /// Returns what was done, for the summary. Runs on a fresh connection: the bus closed its own.
    pub async fn cleanup(&self, subscriptions: &[(String, String)], topics: &[&str]) -> String {
        let Some(url) = &self.url else {
            return "nothing to delete (the data file keeps the embedded topics)".into();
        };
        match self.try_cleanup(url, subscriptions, topics).await {
            Ok(done) => done,
            Err(e) => format!(
                "incomplete ({e:#}); the run's names start with {:?}",
                self.prefix
            ),
        }
    }

    async fn try_cleanup(
        &self,
        url: &str,
        subscriptions: &[(String, String)],
        topics: &[&str],
    ) -> anyhow::Result<String> {
        if self.kind == Kind::Nats {
            // Deleting the streams deletes their consumers (the subscriptions) with them.
            let nats = eventyard::nats::NatsTransport::connect_url(url).await?;
            let n = nats.delete_all_topics().await?;
            let _ = nats.close().await;
            return Ok(format!(
                "deleted {n} streams (with their {} consumers) under prefix {}",
                subscriptions.len(),
                self.prefix.as_deref().unwrap_or("")
            ));
        }
        let transport = eventyard::connect(url).await?;
        let deletes = subscriptions
            .iter()
            .map(|(topic, sub)| transport.delete_subscription(topic, sub));
        futures::stream::iter(deletes)
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        let _ = transport.close().await;
        let mut done = format!("deleted {} subscriptions", subscriptions.len());
        if let (Kind::Amqp, Some(prefix)) = (self.kind, &self.prefix) {
            let n = delete_exchanges(url, prefix, topics).await?;
            done.push_str(&format!(
                " and {n} exchanges under prefix {prefix} (unused delay queues expire by themselves)"
            ));
        }
        Ok(done)
    }
}

/// Deletes the topic exchanges `<prefix>.<topic>` and the prefix's shared exchanges, which the
/// transport contract has no operation for. Returns how many were deleted.
async fn delete_exchanges(url: &str, prefix: &str, topics: &[&str]) -> anyhow::Result<usize> {
    use lapin::options::ExchangeDeleteOptions;
    let uri = eventyard::rabbitmq::AmqpConfig::from_url(url)?.uri;
    let props = lapin::ConnectionProperties::default().with_connection_name("yard-demo".into());
    let conn = lapin::Connection::connect(&uri, props).await?;
    let mut names: Vec<String> = topics.iter().map(|t| format!("{prefix}.{t}")).collect();
    names.extend([format!("{prefix}:route"), format!("{prefix}:delay")]);
    let conn = &conn;
    let deleted = futures::future::join_all(names.iter().map(|name| async move {
        // A failed delete (e.g. an exchange never declared) closes its channel: one each.
        let ch = conn.create_channel().await.ok()?;
        ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .ok()?;
        let _ = ch.close(200, "done".into()).await;
        Some(())
    }))
    .await;
    let n = deleted.iter().flatten().count();
    let _ = conn.close(200, "done".into()).await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefixes_are_valid_and_keep_a_given_prefix() {
        let (url, p) = with_run_prefix("nats://127.0.0.1:4222?publish_window=8");
        assert!(p.starts_with("yard-demo-") && p.len() <= 32, "{p}");
        assert_eq!(
            url,
            format!("nats://127.0.0.1:4222?publish_window=8&prefix={p}")
        );
        let (url, p) = with_run_prefix("amqp://g:g@h:5672/%2f?prefix=team.a&x=1");
        assert!(p.starts_with("teama-"), "{p}");
        assert!(url.ends_with(&format!("?x=1&prefix={p}")), "{url}");
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }
}
