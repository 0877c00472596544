//! Dead-letter queue operations on the embedded store: list, group by fingerprint, show, replay,
//! purge, and the audit trail of replays and purges.
//!
//! A subscription's dead letters are the rows of its dead-letter sub-queue (`queue = -id`); each
//! carries the `cs-dead-letter-*` properties and, when the runtime dead-lettered it, a fault
//! context (handler, error kind, error chain, fingerprint, attempts, first/last failure,
//! host/pid). Every operation runs on the store's writer thread through
//! [`SqliteBroker::transaction`], so it is atomic and sees a consistent file.
//!
//! ```no_run
//! # async fn demo(broker: eventyard_sqlite::SqliteBroker) -> Result<(), eventyard_sqlite::dlq::DlqError> {
//! use eventyard_sqlite::dlq::{self, DlqQuery, ReplayOptions};
//! let q = DlqQuery::new().subscription("billing.invoice").reason("HandlerFailed");
//! for g in dlq::groups(&broker, &q).await? {
//!     println!("{} × {} {}", g.count, g.fingerprint, g.sample_description);
//! }
//! let report = dlq::replay(&broker, &q, ReplayOptions { rate_per_sec: Some(50), ..Default::default() }).await?;
//! println!("replayed {} of {}", report.replayed, report.matched);
//! # Ok(()) }
//! ```
//!
//! A replayed message keeps its body (so its `eventId`) and gets `cs-replayed = true`,
//! `cs-replay-count` + 1, and its previous fault in the `cs-last-dead-letter-*` properties (see
//! [`prop`]); it is delivered again with delivery count 1.

use std::time::Duration;

use chrono::Utc;
use eventyard_core::TransportError;

use crate::SqliteBroker;

mod fingerprint;
mod model;
mod store;

pub use fingerprint::{FINGERPRINT_LEN, fingerprint, normalize_message};
pub use model::{
    AuditRecord, DeadLetterEntry, DlqGroup, DlqQuery, PreviousFault, PurgeOptions, ReplayOptions,
    ReplayReport, SubscriptionCount,
};

/// Properties a replay sets on a message (beside [`eventyard_core::properties::names::REPLAYED`]).
pub mod prop {
    /// How many times the message was replayed (integer).
    pub const REPLAY_COUNT: &str = "cs-replay-count";
    /// When it was last replayed (RFC 3339).
    pub const REPLAYED_AT: &str = "cs-replayed-at";
    /// Who last replayed it.
    pub const REPLAYED_BY: &str = "cs-replayed-by";
    /// Reason of the dead-lettering before the last replay.
    pub const LAST_DEAD_LETTER_REASON: &str = "cs-last-dead-letter-reason";
    /// Description of the dead-lettering before the last replay.
    pub const LAST_DEAD_LETTER_DESCRIPTION: &str = "cs-last-dead-letter-description";
    /// Source subscription of the dead-lettering before the last replay.
    pub const LAST_DEAD_LETTER_SOURCE: &str = "cs-last-dead-letter-source";
    /// Fingerprint of the fault before the last replay.
    pub const LAST_DEAD_LETTER_FINGERPRINT: &str = "cs-last-dead-letter-fingerprint";
    /// When the message was dead-lettered before the last replay (RFC 3339).
    pub const LAST_DEAD_LETTER_AT: &str = "cs-last-dead-letter-at";
}

/// Errors of the DLQ operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// The store failed (or is closed).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The replay target is not a subscription of the topic of a matched message.
    #[error("unknown target subscription `{subscription}` on topic `{topic}`")]
    UnknownTarget {
        /// Topic (`*` when the query named none and nothing matched).
        topic: String,
        /// The requested target.
        subscription: String,
    },
    /// The query or options are contradictory or out of range.
    #[error("invalid DLQ request: {0}")]
    Invalid(String),
}

/// The default actor of audit records: `$USER@hostname`.
pub fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{user}@{host}")
}

fn validate(q: &DlqQuery) -> Result<(), DlqError> {
    if let (Some(a), Some(b)) = (q.since, q.until)
        && a > b
    {
        return Err(DlqError::Invalid(format!(
            "`since` ({}) is after `until` ({})",
            a.to_rfc3339(),
            b.to_rfc3339()
        )));
    }
    Ok(())
}

/// Runs `work` in the broker's transaction, flattening the two error layers.
async fn run<T, F>(broker: &SqliteBroker, work: F) -> Result<T, DlqError>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, DlqError> + Send + 'static,
    T: Send + 'static,
{
    broker.transaction(move |tx| work(tx)).await?
}

/// The dead letters matching `q`, most recently dead-lettered first (at most `q.limit`).
pub async fn list(broker: &SqliteBroker, q: &DlqQuery) -> Result<Vec<DeadLetterEntry>, DlqError> {
    validate(q)?;
    let q = q.clone();
    run(broker, move |c| store::matching(c, &q)).await
}

/// How many dead letters match `q` (`q.limit` applies).
pub async fn count(broker: &SqliteBroker, q: &DlqQuery) -> Result<u64, DlqError> {
    validate(q)?;
    let q = q.clone();
    run(broker, move |c| {
        Ok(store::matching_seqs(c, &q)?.len() as u64)
    })
    .await
}

/// The dead letters matching `q` grouped by fingerprint and subscription, largest group first
/// (at most `q.limit` groups).
pub async fn groups(broker: &SqliteBroker, q: &DlqQuery) -> Result<Vec<DlqGroup>, DlqError> {
    validate(q)?;
    let q = q.clone();
    run(broker, move |c| store::groups(c, &q)).await
}

/// One dead letter by sequence number; `None` when no dead letter has it (never existed, acked,
/// replayed or purged).
pub async fn show(broker: &SqliteBroker, seq: u64) -> Result<Option<DeadLetterEntry>, DlqError> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    run(broker, move |c| store::load(c, seq)).await
}

fn request_json(q: &DlqQuery, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(q).unwrap_or_default();
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        obj.extend(extra);
    }
    v
}

fn replay_detail(r: &ReplayReport) -> serde_json::Value {
    serde_json::json!({
        "matched": r.matched,
        "skipped": r.skipped,
        "vanished": r.vanished,
        "perSubscription": r.per_subscription,
    })
}

/// Moves the dead letters matching `q` back to a main queue: their own subscription's, or
/// `opts.target_subscription` of the same topic. Each message keeps its body (and `eventId`),
/// becomes available at once with delivery count 0, and gets the replay properties (see
/// [`prop`]). Messages move oldest first, in transactions of up to 1000 — or, with
/// `opts.rate_per_sec = Some(r)`, in batches of `max(1, r/10)` spaced so that at most `r` move
/// per second. The matched set is fixed at the start; an audit record is written at the start
/// and its count updated in the transaction of every batch.
///
/// Fails with [`DlqError::UnknownTarget`] (nothing moved) when the target is not a subscription
/// of a matched message's topic.
pub async fn replay(
    broker: &SqliteBroker,
    q: &DlqQuery,
    opts: ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    validate(q)?;
    if opts.rate_per_sec == Some(0) {
        return Err(DlqError::Invalid(
            "the replay rate must be at least 1 message per second".into(),
        ));
    }
    let actor = opts.actor.clone().unwrap_or_else(default_actor);
    let request = request_json(
        q,
        serde_json::json!({
            "targetSubscription": opts.target_subscription,
            "ratePerSec": opts.rate_per_sec,
        }),
    );
    let (dry_run, rate) = (opts.dry_run, opts.rate_per_sec);
    let (plan, report) = {
        let (q, actor) = (q.clone(), actor.clone());
        run(broker, move |c| {
            let mut plan = store::plan_replay(c, &q, &opts)?;
            let mut report = ReplayReport {
                matched: plan.matched,
                replayed: 0,
                skipped: plan.skipped,
                vanished: 0,
                dry_run,
                per_subscription: Vec::new(),
                audit_id: 0,
            };
            if dry_run {
                for m in &plan.moves {
                    plan.slots[m.slot].count += 1;
                }
                report.replayed = plan.moves.len() as u64;
                report.per_subscription = plan.slots.clone();
            }
            report.audit_id = store::insert_audit(
                c,
                Utc::now(),
                &actor,
                "replay",
                &request,
                report.replayed,
                dry_run,
                &replay_detail(&report),
            )?;
            Ok((plan, report))
        })
        .await?
    };
    if dry_run {
        return Ok(report);
    }
    let store::Plan { moves, slots, .. } = plan;
    let (batch, interval) = match rate {
        Some(r) => {
            let b = (r / 10).clamp(1, 1000);
            (
                b as usize,
                Some(Duration::from_secs_f64(f64::from(b) / f64::from(r))),
            )
        }
        None => (1000, None),
    };
    let start = tokio::time::Instant::now();
    let mut report = ReplayReport {
        per_subscription: slots,
        ..report
    };
    for (k, chunk) in moves.chunks(batch).enumerate() {
        if let Some(i) = interval {
            tokio::time::sleep_until(start + i.mul_f64(k as f64)).await;
        }
        let chunk = chunk.to_vec();
        let actor = actor.clone();
        let mut next = report.clone();
        report = run(broker, move |c| {
            let now = Utc::now();
            let mut moved = 0;
            for m in &chunk {
                if store::move_back(c, m.seq, m.queue, now, &actor)? {
                    moved += 1;
                    next.per_subscription[m.slot].count += 1;
                } else {
                    next.vanished += 1;
                }
            }
            next.replayed += moved;
            let detail = replay_detail(&next);
            store::update_audit(c, next.audit_id, moved, &detail)?;
            Ok(next)
        })
        .await?;
    }
    report.per_subscription.retain(|s| s.count > 0);
    Ok(report)
}

/// Deletes the dead letters matching `q`, in one transaction with its audit record. Returns how
/// many were deleted (in a dry run: how many would be).
pub async fn purge(
    broker: &SqliteBroker,
    q: &DlqQuery,
    opts: PurgeOptions,
) -> Result<u64, DlqError> {
    validate(q)?;
    let actor = opts.actor.clone().unwrap_or_else(default_actor);
    let request = request_json(q, serde_json::json!({}));
    let q = q.clone();
    run(broker, move |c| {
        let n = store::purge(c, &q, opts.dry_run)?;
        store::insert_audit(
            c,
            Utc::now(),
            &actor,
            "purge",
            &request,
            n,
            opts.dry_run,
            &serde_json::Value::Null,
        )?;
        Ok(n)
    })
    .await
}

/// The latest `limit` audit records of replays and purges, newest first.
pub async fn audit(broker: &SqliteBroker, limit: usize) -> Result<Vec<AuditRecord>, DlqError> {
    run(broker, move |c| store::audit(c, limit)).await
}
