//! The writer's cache of subscriptions, reloaded when `meta.topology_version` changes (so a
//! subscription declared by another process is seen by the next publish here).

use std::collections::HashMap;
use std::sync::Arc;

use eventyard_core::{Filter, SubscriptionScope, TransportError};
use rusqlite::Connection;

/// One subscription as the writer needs it.
#[derive(Debug, Clone)]
pub struct SubInfo {
    /// Row id; the main queue id (the dead-letter sub-queue is `-id`).
    pub id: i64,
    /// Topic.
    pub topic: String,
    /// Name.
    pub name: String,
    /// Parsed filter.
    pub filter: Arc<Filter>,
    /// Scope.
    pub scope: SubscriptionScope,
    /// Max deliveries before dead-lettering.
    pub max_delivery: u32,
    /// Lock duration in µs.
    pub lock_us: i64,
}

/// All subscriptions, by id and by topic.
#[derive(Debug, Default)]
pub struct Topology {
    version: Option<i64>,
    by_id: HashMap<i64, SubInfo>,
    by_topic: HashMap<String, Vec<i64>>,
}

impl Topology {
    /// Reloads from the database if `meta.topology_version` moved since the last load.
    pub fn refresh(&mut self, conn: &Connection) -> Result<(), TransportError> {
        let version: i64 = conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'topology_version'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(backend)?;
        if self.version == Some(version) {
            return Ok(());
        }
        let mut by_id = HashMap::new();
        let mut by_topic: HashMap<String, Vec<i64>> = HashMap::new();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, topic, name, filter, scope, max_delivery, lock_us FROM subscriptions",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (id, topic, name, filter, scope, max_delivery, lock_us) = row.map_err(backend)?;
            let filter: Filter =
                serde_json::from_str(&filter).map_err(|e| TransportError::Backend {
                    backend: "sqlite",
                    message: format!(
                        "stored filter of subscription {topic}/{name} is invalid: {e}"
                    ),
                })?;
            let scope = if scope == "cross-platform" {
                SubscriptionScope::CrossPlatform
            } else {
                SubscriptionScope::InPlatform
            };
            by_topic.entry(topic.clone()).or_default().push(id);
            by_id.insert(
                id,
                SubInfo {
                    id,
                    topic,
                    name,
                    filter: Arc::new(filter),
                    scope,
                    max_delivery: u32::try_from(max_delivery).unwrap_or(u32::MAX),
                    lock_us,
                },
            );
        }
        self.by_id = by_id;
        self.by_topic = by_topic;
        self.version = Some(version);
        Ok(())
    }

    /// Forces a reload at the next refresh.
    pub fn invalidate(&mut self) {
        self.version = None;
    }

    /// A subscription by id.
    pub fn get(&self, id: i64) -> Option<&SubInfo> {
        self.by_id.get(&id)
    }

    /// A subscription by topic and name.
    pub fn find(&self, topic: &str, name: &str) -> Option<&SubInfo> {
        self.by_topic
            .get(topic)?
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .find(|s| s.name == name)
    }

    /// The subscriptions of a topic.
    pub fn of_topic<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a SubInfo> + 'a {
        self.by_topic
            .get(topic)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// Every subscription.
    pub fn all(&self) -> impl Iterator<Item = &SubInfo> {
        self.by_id.values()
    }
}

fn backend(e: rusqlite::Error) -> TransportError {
    TransportError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    }
}
