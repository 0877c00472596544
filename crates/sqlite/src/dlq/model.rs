//! The public data types of the DLQ operations.

use chrono::{DateTime, Utc};
use eventyard_core::Properties;
use serde::{Deserialize, Serialize};

/// Which dead letters an operation applies to. Every field is optional; an empty query matches
/// every dead letter of the file. Filters combine with AND.
///
/// ```
/// use eventyard_sqlite::dlq::DlqQuery;
/// let q = DlqQuery::new().subscription("billing.invoice").tenant("acme").limit(10);
/// assert!(q.has_filter());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqQuery {
    /// Topic of the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Subscription whose dead-letter sub-queue is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// The envelope's `eventType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The envelope's `tenantId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Fault fingerprint (exact, 12 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Dead-letter reason (exact, e.g. `HandlerFailed`, `MaxDeliveryCountExceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Dead-lettered at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered at or before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// At most this many (the most recently dead-lettered first); for `groups`, at most this many
    /// groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl DlqQuery {
    /// A query matching every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this topic.
    pub fn topic(mut self, v: impl Into<String>) -> Self {
        self.topic = Some(v.into());
        self
    }

    /// Only this subscription.
    pub fn subscription(mut self, v: impl Into<String>) -> Self {
        self.subscription = Some(v.into());
        self
    }

    /// Only this event type.
    pub fn event_type(mut self, v: impl Into<String>) -> Self {
        self.event_type = Some(v.into());
        self
    }

    /// Only this tenant.
    pub fn tenant(mut self, v: impl Into<String>) -> Self {
        self.tenant = Some(v.into());
        self
    }

    /// Only this fingerprint.
    pub fn fingerprint(mut self, v: impl Into<String>) -> Self {
        self.fingerprint = Some(v.into());
        self
    }

    /// Only this reason.
    pub fn reason(mut self, v: impl Into<String>) -> Self {
        self.reason = Some(v.into());
        self
    }

    /// Dead-lettered at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }

    /// Dead-lettered at or before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }

    /// At most `n` results.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// True when at least one filter (anything but `limit`) is set.
    pub fn has_filter(&self) -> bool {
        self.topic.is_some()
            || self.subscription.is_some()
            || self.event_type.is_some()
            || self.tenant.is_some()
            || self.fingerprint.is_some()
            || self.reason.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }
}

/// The fault a replayed message had before its last replay (kept in its properties, so it
/// survives being dead-lettered again).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousFault {
    /// Reason of the previous dead-lettering.
    pub reason: String,
    /// Its description.
    pub description: Option<String>,
    /// Its fingerprint.
    pub fingerprint: Option<String>,
    /// Subscription it was dead-lettered from.
    pub source: Option<String>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// When it was replayed.
    pub replayed_at: Option<DateTime<Utc>>,
    /// Who replayed it.
    pub replayed_by: Option<String>,
}

/// One dead-lettered message with its fault context. Fields that the stored message lacks (or
/// that could not be read) are `None`/empty and explained in `warnings`; a malformed row never
/// makes an operation fail.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterEntry {
    /// The message's sequence number in the data file (the handle for `show`).
    pub seq: u64,
    /// Topic of the subscription.
    pub topic: String,
    /// Subscription it was dead-lettered from.
    pub subscription: String,
    /// The envelope's `eventId`.
    pub event_id: Option<String>,
    /// The envelope's `eventType`.
    pub event_type: Option<String>,
    /// The envelope's `tenantId`.
    pub tenant: Option<String>,
    /// Dead-letter reason (`unknown` when missing).
    pub reason: String,
    /// Dead-letter description: the error message chain.
    pub description: String,
    /// Fault fingerprint: the stored one, else computed from reason, description and source.
    pub fingerprint: String,
    /// Handler that failed.
    pub handler: Option<String>,
    /// Error kind (`Validation`, `Transient`, `External`, `Panic`, …).
    pub error_kind: Option<String>,
    /// The error's message chain, outermost first (the description when no chain was stored).
    pub errors: Vec<String>,
    /// Delivery attempts made.
    pub attempts: Option<u32>,
    /// First failure.
    pub first_failure_at: Option<DateTime<Utc>>,
    /// Last failure.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// When it was moved to the dead-letter sub-queue.
    pub dead_lettered_at: DateTime<Utc>,
    /// When it entered the subscription.
    pub enqueued_at: DateTime<Utc>,
    /// Host of the consumer that dead-lettered it.
    pub host: Option<String>,
    /// Process id of that consumer.
    pub pid: Option<u32>,
    /// How many times it was replayed before (property `cs-replay-count`).
    pub replay_count: u32,
    /// The fault before the last replay, when it was replayed.
    pub previous: Option<PreviousFault>,
    /// The message's application properties.
    pub properties: Properties,
    /// The stored fault context, as written.
    pub context: Option<serde_json::Value>,
    /// The body parsed as JSON (the original envelope), when it is JSON.
    pub envelope: Option<serde_json::Value>,
    /// The body as text (invalid UTF-8 replaced), when it is not JSON.
    pub body: Option<String>,
    /// Body size in bytes.
    pub body_size: usize,
    /// The raw body bytes.
    #[serde(skip)]
    pub raw_body: Vec<u8>,
    /// What could not be read from the stored row.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Dead letters sharing a fingerprint in one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqGroup {
    /// The fingerprint.
    pub fingerprint: String,
    /// Dead-letter reason (of the most frequent variant).
    pub reason: String,
    /// Error kind.
    pub error_kind: Option<String>,
    /// Handler.
    pub handler: Option<String>,
    /// Topic.
    pub topic: String,
    /// Subscription.
    pub subscription: String,
    /// Number of dead letters.
    pub count: u64,
    /// Earliest dead-lettering.
    pub first_at: Option<DateTime<Utc>>,
    /// Latest dead-lettering.
    pub last_at: Option<DateTime<Utc>>,
    /// One description of the group.
    pub sample_description: String,
}

/// How to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Another subscription of the same topic to deliver to. Default: back to the subscription
    /// each message was dead-lettered from. Messages the target's filter rejects are skipped.
    pub target_subscription: Option<String>,
    /// Report what would move, change nothing (an audit record is still written, flagged).
    pub dry_run: bool,
    /// At most this many messages per second (in batches of a tenth of it); default: no limit.
    pub rate_per_sec: Option<u32>,
    /// Who replays, for the audit record. Default: `$USER@hostname`.
    pub actor: Option<String>,
}

/// How many messages moved from one subscription's dead-letter sub-queue to a main queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionCount {
    /// Topic.
    pub topic: String,
    /// Subscription whose dead-letter sub-queue they left.
    pub from: String,
    /// Subscription whose main queue they entered.
    pub to: String,
    /// How many.
    pub count: u64,
}

/// Result of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Dead letters the query matched.
    pub matched: u64,
    /// Messages moved back (in a dry run: that would move).
    pub replayed: u64,
    /// Matched messages the target subscription's filter does not accept (not moved).
    pub skipped: u64,
    /// Matched messages gone from the dead-letter sub-queue before their batch ran (purged or
    /// replayed meanwhile by someone else).
    pub vanished: u64,
    /// True for a dry run.
    pub dry_run: bool,
    /// Moves per source and target subscription.
    pub per_subscription: Vec<SubscriptionCount>,
    /// Id of the audit record.
    pub audit_id: i64,
}

/// How to purge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOptions {
    /// Count what would be deleted, delete nothing (an audit record is still written, flagged).
    pub dry_run: bool,
    /// Who purges, for the audit record. Default: `$USER@hostname`.
    pub actor: Option<String>,
}

/// One replay or purge, as recorded in the `dlq_audit` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Record id (increasing).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// `replay` or `purge`.
    pub action: String,
    /// The query and options, as JSON.
    pub query: serde_json::Value,
    /// How many messages were affected (in a dry run: would have been).
    pub affected: u64,
    /// True for a dry run.
    pub dry_run: bool,
    /// Details (e.g. moves per subscription).
    pub detail: Option<serde_json::Value>,
}
