//! Schema of the data file, and opening it with the right pragmas.
//!
//! One file holds every queue. `subscriptions` declares queues; `messages` holds the messages of
//! every queue: a subscription's main queue has `queue = id`, its dead-letter sub-queue
//! `queue = -id`, so dead-lettering moves a row without copying it. `visible_at` (µs since the
//! epoch) serves scheduled delivery, abandon delays and lock expiry alike: a message is available
//! when `visible_at <= now`; receiving it moves `visible_at` to the end of its lock.
//!
//! A message's bytes (body, properties, dead-letter context) live beside it in `message_bodies`,
//! keyed by the same `seq`, so that the row every claim rewrites (`visible_at`,
//! `delivery_count`) is a few dozen bytes rather than the whole message: a claim then rewrites a
//! handful of pages per batch instead of every page the bodies fill. A trigger deletes a body
//! with its message, whichever statement deletes it.

use rusqlite::{Connection, OpenFlags};

use eventyard_core::TransportError;

use crate::config::SqliteConfig;
use crate::error::map_open_error;

/// `PRAGMA application_id` of an eventyard data file ("EYRD").
pub const APPLICATION_ID: i64 = 0x4559_5244;
/// Current schema version (`PRAGMA user_version`). 2: inbox keys are stored as
/// [`IdempotencyKey::storage_key`](eventyard_core::IdempotencyKey::storage_key) (event order,
/// then the hash). 3: message bytes in `message_bodies`, apart from the claim state in
/// `messages`. Older files are migrated on open.
pub const SCHEMA_VERSION: i64 = 3;

/// The columns of `messages` (the table and its version 2 → 3 rebuild share them).
macro_rules! message_columns {
    () => {
        "
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          INTEGER NOT NULL,
    visible_at     INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at    INTEGER NOT NULL,
    dl_at          INTEGER
"
    };
}

const DDL: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('topology_version', 0);
CREATE TABLE IF NOT EXISTS subscriptions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT NOT NULL,
    name         TEXT NOT NULL,
    filter       TEXT NOT NULL,
    scope        TEXT NOT NULL,
    max_delivery INTEGER NOT NULL,
    lock_us      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (topic, name)
);
CREATE TABLE IF NOT EXISTS messages (",
    message_columns!(),
    ");
CREATE TABLE IF NOT EXISTS message_bodies (
    seq        INTEGER PRIMARY KEY,
    body       BLOB NOT NULL,
    props      TEXT NOT NULL,
    dl_context TEXT
);
CREATE TABLE IF NOT EXISTS inbox (
    key        TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    handler    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    result     TEXT NOT NULL,
    handled_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_handled_at ON inbox (handled_at);
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    body          BLOB NOT NULL,
    props         TEXT NOT NULL,
    deliver_at    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_queue (
    id            INTEGER PRIMARY KEY,
    partition_key TEXT NOT NULL,
    visible_at    INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_queue_held ON outbox_queue (visible_at, partition_key)
    WHERE visible_at > 0;
CREATE TABLE IF NOT EXISTS outbox_parked (
    id            INTEGER PRIMARY KEY,
    partition_key TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    parked_at     INTEGER NOT NULL,
    reason        TEXT,
    behind        INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_parked_key ON outbox_parked (partition_key, id);
CREATE TABLE IF NOT EXISTS outbox_done (
    dispatched_at INTEGER NOT NULL,
    id            INTEGER NOT NULL,
    PRIMARY KEY (dispatched_at, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlq_audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    query    TEXT NOT NULL,
    affected INTEGER NOT NULL,
    dry_run  INTEGER NOT NULL,
    detail   TEXT
);
"
);

/// The indexes of `messages`, and the trigger that deletes a message's bytes with it: applied
/// after [`migrate`], which may rebuild `messages` (dropping what hung on the old table).
const MESSAGES_AFTER_MIGRATE: &str = "
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_dead_lettered ON messages (dl_at, seq) WHERE queue < 0;
CREATE TRIGGER IF NOT EXISTS message_bodies_follow AFTER DELETE ON messages
BEGIN
    DELETE FROM message_bodies WHERE seq = old.seq;
END;
";

/// Opens (creating if needed) the data file with WAL, the configured `synchronous` and busy
/// timeout, and brings the schema up to date. Fails with `InvalidDataFile` for a file that is
/// not a database or belongs to another application.
///
/// Several processes may open a new file at once (an application and `yard tail`). SQLite
/// answers some of the steps of that race (the switch to WAL, the WAL's first recovery) with
/// "busy" at once, without calling the busy handler, so the whole bootstrap is retried until
/// the busy timeout has passed.
pub fn open(cfg: &SqliteConfig) -> Result<Connection, TransportError> {
    let path = cfg.path.display().to_string();
    if let Some(parent) = cfg.path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        return Err(TransportError::InvalidDataFile {
            path,
            reason: format!("directory {} does not exist", parent.display()),
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(&cfg.path, flags).map_err(|e| map_open_error(&path, e))?;
    conn.busy_timeout(cfg.busy_timeout)
        .map_err(|e| map_open_error(&path, e))?;
    let deadline = std::time::Instant::now() + cfg.busy_timeout;
    loop {
        match bootstrap(&conn, cfg) {
            Ok(Ok(())) => return Ok(conn),
            Ok(Err(reason)) => return Err(TransportError::InvalidDataFile { path, reason }),
            Err(e) if crate::error::is_busy(&e) && std::time::Instant::now() < deadline => {
                // A failed step may leave its transaction open; the next try starts clean.
                let _ = conn.execute_batch("ROLLBACK");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => {
                return Err(crate::error::map_error(
                    &path,
                    e,
                    u64::try_from(cfg.busy_timeout.as_millis()).unwrap_or(u64::MAX),
                ));
            }
        }
    }
}

/// The steps of [`open`] after the connection exists: checks whose file it is, switches to WAL,
/// sets `synchronous` and applies the DDL. `Ok(Err(reason))` refuses the file.
fn bootstrap(conn: &Connection, cfg: &SqliteConfig) -> rusqlite::Result<Result<(), String>> {
    // One statement, so one snapshot: read apart, another process creating the schema could
    // commit in between and the file would look like another application's (tables, no id).
    let (app_id, tables): (i64, i64) = conn.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id), \
                (SELECT count(*) FROM sqlite_master)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables != 0) {
        return Ok(Err(
            "it is an SQLite database of another application (no eventyard schema)".into(),
        ));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(Err(format!(
            "cannot switch to WAL journal mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", cfg.synchronous.as_str())?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(Err(format!(
            "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
        )));
    }
    // The DDL is idempotent (IF NOT EXISTS): applying it on every open also adds indexes and
    // tables introduced since the file was created at the same schema version.
    // On an error the transaction stays open: `open` rolls it back before a retry, or drops the
    // connection.
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {DDL}"))?;
    migrate(conn)?;
    conn.execute_batch(MESSAGES_AFTER_MIGRATE)?;
    conn.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(Ok(()))
}

/// Brings the rows of an older file to the current version, inside the bootstrap transaction
/// (read again under its lock, so two processes opening an old file migrate it once).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 1 {
        // Version 1 stored inbox keys as the bare 64-character hash.
        let old: Vec<(String, String)> = conn
            .prepare("SELECT key, event_id FROM inbox WHERE length(key) = 64")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = conn.prepare("UPDATE inbox SET key = ?1 WHERE key = ?2")?;
        for (key, event_id) in old {
            let stored = eventyard_core::fault::storage_key_for(&event_id, &key);
            update.execute(rusqlite::params![stored, key])?;
        }
    }
    // Checked on the table, not the version: what matters is whether the bytes still live in
    // `messages` (versions 1 and 2; a new file's table is created narrow).
    let wide: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('messages') WHERE name = 'body'",
        [],
        |r| r.get(0),
    )?;
    if wide {
        split_message_bodies(conn)?;
    }
    Ok(())
}

/// Version 2 → 3: moves body, properties and dead-letter context out of `messages` into
/// `message_bodies`, rebuilding `messages` narrow with the same `seq`s and the same
/// AUTOINCREMENT high-water mark (a settled message's `seq` is never handed out again). Its
/// indexes come back with [`MESSAGES_AFTER_MIGRATE`].
fn split_message_bodies(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(concat!(
        "INSERT INTO message_bodies (seq, body, props, dl_context)
             SELECT seq, body, props, dl_context FROM messages;
         CREATE TABLE messages_v3 (",
        message_columns!(),
        ");
         INSERT INTO messages_v3 (seq, queue, visible_at, delivery_count, enqueued_at, dl_at)
             SELECT seq, queue, visible_at, delivery_count, enqueued_at, dl_at FROM messages;
         DELETE FROM sqlite_sequence WHERE name = 'messages_v3';
         INSERT INTO sqlite_sequence (name, seq)
             SELECT 'messages_v3', seq FROM sqlite_sequence WHERE name = 'messages';
         DROP TABLE messages;
         ALTER TABLE messages_v3 RENAME TO messages;",
    ))
}
