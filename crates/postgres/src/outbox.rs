//! Recording events inside the application's own transaction.
//!
//! ```ignore
//! let tx = client.transaction().await?;
//! tx.execute("UPDATE orders SET status = 'placed' WHERE id = $1", &[&order_id]).await?;
//! eventyard_postgres::outbox::add(&tx, &PendingEvent::new("orders", &envelope)?).await?;
//! tx.commit().await?; // the event exists only if this commits
//! ```
//!
//! The record is an ordinary `INSERT` in the caller's transaction: a rollback (or a rolled-back
//! savepoint) discards it. A statement trigger on the table sends **one** `NOTIFY` per
//! transaction — the first insert sets a transaction-local marker
//! (`set_config('<schema>.outbox_notified', '1', true)`) and notifies, later inserts see the
//! marker — and PostgreSQL delivers it to the relays' LISTEN connection at commit.
//!
//! Each call is one round trip (`query_typed`: no separate prepare), whatever connection the
//! transaction is on. The trace context travels in the message properties captured when the
//! [`PendingEvent`] was built from its envelope.

use std::sync::LazyLock;

use eventyard_core::outbox::{OutboxError, PendingEvent};
use eventyard_core::transport::check_name;
use tokio_postgres::Transaction;
use tokio_postgres::types::{Json, ToSql, Type};

use crate::config::{DEFAULT_SCHEMA, check_schema};
use crate::error;
use crate::sql::Sql;

/// Records events into the outbox table of one schema. Cheap to clone; keep one per schema
/// ([`PgOutbox::writer`](crate::PgOutbox::writer) returns the store's).
#[derive(Debug, Clone)]
pub struct OutboxWriter {
    schema: String,
    insert_one: String,
    insert_many: String,
}

static DEFAULT_WRITER: LazyLock<OutboxWriter> =
    LazyLock::new(|| OutboxWriter::new(DEFAULT_SCHEMA).expect("the default schema name is valid"));

/// Records `event` in the default schema (`eventyard`) inside `tx`; returns its sequence number.
/// Nothing is recorded (nor notified) if `tx` rolls back. Fails with
/// [`OutboxError::Unavailable`] when the database connection is lost.
pub async fn add(tx: &Transaction<'_>, event: &PendingEvent) -> Result<i64, OutboxError> {
    DEFAULT_WRITER.add(tx, event).await
}

/// Records `events` in the default schema in one statement inside `tx`; returns their sequence
/// numbers in the order given.
pub async fn add_batch(
    tx: &Transaction<'_>,
    events: &[PendingEvent],
) -> Result<Vec<i64>, OutboxError> {
    DEFAULT_WRITER.add_batch(tx, events).await
}

impl OutboxWriter {
    /// A writer for the outbox in `schema` (see
    /// [`PgOutboxConfig::schema`](crate::PgOutboxConfig::schema) for the allowed names).
    pub fn new(schema: &str) -> Result<Self, OutboxError> {
        check_schema(schema)?;
        let sql = Sql::new(schema);
        Ok(OutboxWriter {
            schema: schema.to_owned(),
            insert_one: sql.insert_one,
            insert_many: sql.insert_many,
        })
    }

    /// The schema written to.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Records `event` inside `tx`; returns its sequence number.
    pub async fn add(
        &self,
        tx: &Transaction<'_>,
        event: &PendingEvent,
    ) -> Result<i64, OutboxError> {
        check_name("topic", &event.topic)?;
        let props = Json(&event.message.properties);
        let body: &[u8] = &event.message.body;
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&event.topic, Type::TEXT),
            (&event.partition_key, Type::TEXT),
            (&body, Type::BYTEA),
            (&props, Type::JSONB),
            (&event.deliver_at, Type::TIMESTAMPTZ),
        ];
        let row = tx
            .query_typed_one(&self.insert_one, &params)
            .await
            .map_err(|e| error::map("outbox add", e))?;
        Ok(row.get(0))
    }

    /// Records `events` inside `tx` with one `INSERT … SELECT unnest(…)`; returns their sequence
    /// numbers in the order given. An empty slice does nothing.
    pub async fn add_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[PendingEvent],
    ) -> Result<Vec<i64>, OutboxError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for e in events {
            check_name("topic", &e.topic)?;
        }
        let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
        let keys: Vec<&str> = events.iter().map(|e| e.partition_key.as_str()).collect();
        let bodies: Vec<&[u8]> = events.iter().map(|e| &e.message.body[..]).collect();
        let props: Vec<Json<_>> = events.iter().map(|e| Json(&e.message.properties)).collect();
        let deliver: Vec<_> = events.iter().map(|e| e.deliver_at).collect();
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&topics, Type::TEXT_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&bodies, Type::BYTEA_ARRAY),
            (&props, Type::JSONB_ARRAY),
            (&deliver, Type::TIMESTAMPTZ_ARRAY),
        ];
        let rows = tx
            .query_typed(&self.insert_many, &params)
            .await
            .map_err(|e| error::map("outbox add", e))?;
        // Identity values are drawn in the order unnest produces the rows, so the sorted ids
        // match the input order (RETURNING itself promises no order).
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        ids.sort_unstable();
        Ok(ids)
    }
}
