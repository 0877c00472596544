//! The idempotent inbox on the embedded store (SPEC §3).
//!
//! A handler runs its state change through [`Inbox::run`]: in one transaction the inbox looks up
//! the idempotency key — `sha256(eventId ":" handlerName ":" targetAggregateId)` — and either
//! returns the result stored the first time (a redelivery, duplicate publish or replay: the work
//! does not run again) or runs the work and stores its result with the key. The work's writes and
//! the key commit together or not at all.
//!
//! Keys are kept for a retention window; [`Inbox::cleanup`] deletes only keys handled before
//! `now - retention`, so a key inside the window is never lost.

use std::time::Duration;

use eventyard_core::{Envelope, IdempotencyKey, TenantId, TransportError};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker::SqliteBroker;
use crate::ops::now_us;

/// What [`Inbox::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxOutcome<T> {
    /// First time: the work ran and its result was stored.
    Applied(T),
    /// Seen before: the stored result, the work did not run.
    Duplicate(T),
}

impl<T> InboxOutcome<T> {
    /// The result, whichever way it was obtained.
    pub fn into_inner(self) -> T {
        match self {
            InboxOutcome::Applied(v) | InboxOutcome::Duplicate(v) => v,
        }
    }

    /// True for [`InboxOutcome::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, InboxOutcome::Duplicate(_))
    }
}

/// Why the inbox refused, besides the work's own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<E> {
    /// The work failed; its writes were rolled back and no key was stored.
    #[error("handler work failed: {0}")]
    Work(E),
    /// The store failed; nothing was committed.
    #[error(transparent)]
    Store(#[from] TransportError),
    /// The key exists for another tenant: refused before touching anything.
    #[error("idempotency key {key} belongs to tenant `{stored}`, not `{tenant}`")]
    TenantMismatch {
        /// The key.
        key: String,
        /// Tenant recorded with the key.
        stored: String,
        /// Tenant of the envelope being handled.
        tenant: String,
    },
    /// The stored result cannot be read back as the requested type.
    #[error("stored result of key {key} does not decode: {message}")]
    Decode {
        /// The key.
        key: String,
        /// serde's message.
        message: String,
    },
}

/// The idempotent inbox of an embedded store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    broker: SqliteBroker,
}

enum Step<T, E> {
    Done(InboxOutcome<T>),
    Refused(InboxError<E>),
}

impl Inbox {
    /// The inbox of `broker`'s data file.
    pub fn new(broker: SqliteBroker) -> Self {
        Inbox { broker }
    }

    /// Runs `work` once per (event, handler, aggregate): see the module doc. `work` runs on the
    /// store's thread inside the transaction; keep it to database statements.
    pub async fn run<T, E, F>(
        &self,
        envelope: &Envelope,
        handler: &str,
        target_aggregate_id: &str,
        work: F,
    ) -> Result<InboxOutcome<T>, InboxError<E>>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + 'static,
    {
        let key = IdempotencyKey::new(&envelope.event_id, handler, target_aggregate_id);
        let stored_key = key.storage_key().to_owned();
        let tenant = envelope.tenant_id.clone();
        let handler = handler.to_owned();
        let event_id = envelope.event_id.to_string();
        let step = self
            .broker
            .transaction(move |tx| -> Result<Step<T, E>, Step<T, E>> {
                let db = |e: rusqlite::Error| {
                    Step::Refused(InboxError::Store(TransportError::Backend {
                        backend: "sqlite",
                        message: e.to_string(),
                    }))
                };
                let stored: Option<(String, String)> = tx
                    .prepare_cached("SELECT tenant, result FROM inbox WHERE key = ?1")
                    .and_then(|mut s| {
                        s.query_row(params![stored_key], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(db)?;
                if let Some((stored_tenant, result)) = stored {
                    if stored_tenant != tenant.as_str() {
                        return Err(Step::Refused(InboxError::TenantMismatch {
                            key: key.to_string(),
                            stored: stored_tenant,
                            tenant: tenant.to_string(),
                        }));
                    }
                    return match serde_json::from_str(&result) {
                        Ok(v) => Ok(Step::Done(InboxOutcome::Duplicate(v))),
                        Err(e) => Err(Step::Refused(InboxError::Decode {
                            key: key.to_string(),
                            message: e.to_string(),
                        })),
                    };
                }
                let value = work(tx).map_err(|e| Step::Refused(InboxError::Work(e)))?;
                let json = serde_json::to_string(&value).map_err(|e| {
                    Step::Refused(InboxError::Decode {
                        key: key.to_string(),
                        message: e.to_string(),
                    })
                })?;
                tx.prepare_cached(
                    "INSERT INTO inbox (key, tenant, handler, event_id, result, handled_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        stored_key,
                        tenant.as_str(),
                        handler,
                        event_id,
                        json,
                        now_us()
                    ])
                })
                .map_err(db)?;
                Ok(Step::Done(InboxOutcome::Applied(value)))
            })
            .await?;
        match step {
            Ok(Step::Done(o)) | Err(Step::Done(o)) => Ok(o),
            Ok(Step::Refused(e)) | Err(Step::Refused(e)) => Err(e),
        }
    }

    /// True if the key was recorded (and not yet cleaned up).
    pub async fn contains(&self, key: &IdempotencyKey) -> Result<bool, TransportError> {
        let key = key.storage_key().to_owned();
        self.broker
            .transaction(move |tx| {
                tx.query_row("SELECT 1 FROM inbox WHERE key = ?1", params![key], |_| {
                    Ok(())
                })
                .optional()
                .map(|r| r.is_some())
            })
            .await?
            .map_err(|e| TransportError::Backend {
                backend: "sqlite",
                message: e.to_string(),
            })
    }

    /// Deletes keys handled more than `retention` ago, at most `batch` per call (bounded
    /// transactions); returns how many were deleted. Keys inside the window are never touched.
    pub async fn cleanup(&self, retention: Duration, batch: u32) -> Result<u64, TransportError> {
        let cutoff = now_us() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        self.broker
            .transaction(move |tx| {
                tx.execute(
                    "DELETE FROM inbox WHERE key IN
                       (SELECT key FROM inbox WHERE handled_at < ?1 ORDER BY handled_at LIMIT ?2)",
                    params![cutoff, batch],
                )
            })
            .await?
            .map(|n| n as u64)
            .map_err(|e| TransportError::Backend {
                backend: "sqlite",
                message: e.to_string(),
            })
    }

    /// Number of keys per tenant (for status displays).
    pub async fn count(&self, tenant: &TenantId) -> Result<u64, TransportError> {
        let tenant = tenant.to_string();
        self.broker
            .transaction(move |tx| {
                tx.query_row(
                    "SELECT count(*) FROM inbox WHERE tenant = ?1",
                    params![tenant],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await?
            .map(|n| n as u64)
            .map_err(|e| TransportError::Backend {
                backend: "sqlite",
                message: e.to_string(),
            })
    }
}

impl SqliteBroker {
    /// The idempotent inbox stored in this broker's data file.
    pub fn inbox(&self) -> Inbox {
        Inbox::new(self.clone())
    }
}
