//! The outbox schema and its SQL; [`migrate`] creates it idempotently.
//!
//! # Tables
//! `<schema>.outbox` holds the records not yet dispatched: one wide row per event (topic, key,
//! body, properties as `jsonb`, `deliver_at`, `created_at`) plus
//! - `state`: 0 pending, 2 parked (refused by the transport; `park_reason`, `parked_at`),
//!   3 held (pending, but behind a parked record of its key: see cleanup);
//! - `visible_at`: retry time after a `release` (NULL if never released); `attempts`.
//!
//! `<schema>.outbox_claims` holds the leases, one narrow row per claimed record (`id`, key,
//! `relay`, `until`); an expired one stays until the record is claimed again or settled.
//!
//! `<schema>.outbox_dispatched` is the log of dispatched records (`id`, `created_at`,
//! `dispatched_at`, `relay`): append-only for relays, without indexes; `cleanup` deletes from it.
//!
//! A claim inserts narrow claim rows and never rewrites the wide outbox row; `mark_dispatched`
//! deletes the outbox row and the claim row and appends to the log. Measured with `EXPLAIN (ANALYZE, WAL)` on a
//! 500-record claim, this cut the claim's WAL from ≈ 0.8 KB to ≈ 0.3 KB per record (full-page
//! images excluded; the wide rows' pages are no longer dirtied by claims at all, so they take
//! no full-page images either), and it keeps the outbox table and its index as small as the
//! backlog.
//!
//! `partition_key` has the `"C"` collation: keys are compared bytewise (they are identifiers,
//! not prose), which keeps the per-key index probes off the locale's `strcoll`.
//!
//! # Indexes
//! - `outbox` primary key: the claim scans pending records in id order.
//! - `outbox_blocking (partition_key, id) WHERE state <> 0 OR visible_at IS NOT NULL`: the
//!   records released, parked or held, i.e. the ones that can block later records of their
//!   key other than leases. Empty in normal operation, so free for writers.
//! - `outbox_claims` primary key only. A claim reads the keys of the active leases once (the
//!   table is as small as the batches in flight) and filters candidates against them with a
//!   hashed anti-join: cheaper per candidate than an index probe, and one index less to
//!   maintain per claimed record. (Version 1 had an index on `(partition_key, id)` and probed
//!   it per candidate; with the relay's claim-ahead this was most of a claim's cost.)
//!
//! # One NOTIFY per transaction
//! A statement-level `AFTER INSERT` trigger runs `pg_notify('<schema>_outbox', '')` only when
//! the transaction-local setting `<schema>.outbox_notified` is not yet `'1'`, and sets it
//! (`set_config(.., true)`). Every insert path notifies (single rows, `unnest` batches, raw SQL),
//! a rolled-back savepoint drops its notification together with the marker, and the relays get
//! exactly one wake-up per committed transaction. Measured with pgbench (10 inserts per
//! transaction, interleaved scripts): +0.16 ms (+2 %) per transaction for the trigger, against
//! +0.5 ms (+7 %) for a `pg_notify` on every insert statement.
//!
//! # Order
//! `id` comes from a sequence, so it is allocation order, not commit order: a transaction that
//! allocated id 10 and commits after the one that allocated 11 becomes visible later, and 11 may
//! be published first. Records of one partition key are normally written under the aggregate's
//! row lock, so their ids follow their commits; when they are not, they are published in commit
//! (visibility) order, which is the order an observer of the database saw.

use tokio_postgres::Client;

use crate::error;
use eventyard_core::outbox::OutboxError;

/// Version of the DDL below; bump it when the DDL changes.
pub(crate) const VERSION: &str = "3";

/// 64-bit FNV-1a of a name: advisory lock keys derived from the schema name.
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Advisory lock serialising claims in `schema`.
pub(crate) fn claim_lock(schema: &str) -> i64 {
    lock_key(&format!("eventyard.outbox.claim:{schema}"))
}

/// Advisory lock electing the cleaner in `schema`.
pub(crate) fn cleanup_lock(schema: &str) -> i64 {
    lock_key(&format!("eventyard.outbox.cleanup:{schema}"))
}

fn migrate_lock(schema: &str) -> i64 {
    lock_key(&format!("eventyard.outbox.migrate:{schema}"))
}

/// NOTIFY channel of `schema`.
pub(crate) fn channel(schema: &str) -> String {
    format!("{schema}_outbox")
}

/// The DDL, idempotent.
pub(crate) fn ddl(s: &str) -> String {
    let channel = channel(s);
    let claim_lock = claim_lock(s);
    let cleanup_lock = cleanup_lock(s);
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.outbox_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         text        NOT NULL,
    partition_key text        COLLATE "C" NOT NULL,
    body          bytea       NOT NULL,
    properties    jsonb       NOT NULL DEFAULT '{{}}',
    deliver_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    state         smallint    NOT NULL DEFAULT 0 CHECK (state IN (0, 2, 3)),
    visible_at    timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    parked_at     timestamptz,
    park_reason   text
);
CREATE INDEX IF NOT EXISTS outbox_blocking ON {s}.outbox (partition_key, id)
    WHERE state <> 0 OR visible_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.outbox_claims (
    id            bigint      PRIMARY KEY,
    partition_key text        COLLATE "C" NOT NULL,
    relay         text        NOT NULL,
    until         timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.outbox_dispatched (
    id            bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    dispatched_at timestamptz NOT NULL,
    relay         text        NOT NULL
);

-- One NOTIFY per transaction: the first INSERT statement of a transaction sets a
-- transaction-local marker and notifies; later ones see the marker. A rolled-back
-- (sub)transaction discards both its rows and its notification, and the marker with them.
CREATE OR REPLACE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('{s}.outbox_notified', true) IS DISTINCT FROM '1' THEN
        PERFORM set_config('{s}.outbox_notified', '1', true);
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN NULL;
END $fn$;
DROP TRIGGER IF EXISTS outbox_notify ON {s}.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();

-- The claim. Claims are serialised by an advisory lock taken *before* the claiming
-- statement's snapshot, so each claim sees every earlier claim's leases. It scans pending
-- records in id order (primary key) — at most p_window of them, so that a backlog whose keys
-- are all blocked costs a bounded scan — and takes the first p_max that are
--   free: not waiting for a retry (visible_at), and
--   unblocked: their key holds no active lease (a hashed anti-join against the keys of the
--   active leases, read once per claim: the claims table is as small as the batches in
--   flight) and no earlier record of the key waits for a retry, is parked or held
--   (outbox_blocking; probed only while that partial index holds anything at all).
-- Earlier free records of the key precede it in id order and are claimed in the same batch.
-- The candidates carry their columns, so the records are returned without a second lookup.
-- The lease is a narrow row in outbox_claims: the wide outbox row is not rewritten. The SET
-- clauses pin the plan to the ordered primary-key scan: a queue table's statistics are always
-- stale, and a bitmap scan + sort of the whole backlog costs seconds. `jit = off`: the
-- disabled-path costs push the estimate past jit_above_cost, and compiling the plan (≈ 0.5 s)
-- would cost more than a thousand claims.
CREATE OR REPLACE FUNCTION {s}.outbox_claim(p_relay text, p_max integer, p_lease_secs float8,
                                            p_window integer)
RETURNS TABLE (id bigint, topic text, partition_key text, body bytea, properties jsonb,
               deliver_at timestamptz, created_at timestamptz, attempts integer)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({claim_lock});
    v_now := clock_timestamp();
    -- `blocking` must be read in the same statement (snapshot) as the candidates: a release
    -- committing in between would otherwise leave a record waiting for its retry that the
    -- per-key check below was told to skip, and its successors would overtake it.
    RETURN QUERY
    WITH blocking AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM {s}.outbox b
                       WHERE b.state <> 0 OR b.visible_at IS NOT NULL) AS v),
    cand AS MATERIALIZED (
        SELECT w.id, w.topic, w.partition_key, w.body, w.properties, w.deliver_at,
               w.created_at, w.attempts,
               EXISTS (SELECT 1 FROM {s}.outbox_claims x WHERE x.id = w.id) AS expired
        FROM (
            SELECT c.id, c.topic, c.partition_key, c.body, c.properties, c.deliver_at,
                   c.created_at, c.attempts,
                   (c.visible_at IS NULL OR c.visible_at <= v_now)
                   AND c.partition_key NOT IN (SELECT l.partition_key FROM {s}.outbox_claims l
                                               WHERE l.until > v_now)
                   AND (NOT (SELECT blocking.v FROM blocking) OR (SELECT 1 FROM {s}.outbox b
                        WHERE b.partition_key = c.partition_key AND b.id < c.id
                          AND (b.state <> 0 OR b.visible_at IS NOT NULL)
                          AND (b.state <> 0 OR b.visible_at > v_now)
                        LIMIT 1) IS NULL) AS ok
            FROM {s}.outbox c
            WHERE c.state = 0
            ORDER BY c.id
            LIMIT p_window) w
        WHERE w.ok
        LIMIT p_max),
    ins AS (
        INSERT INTO {s}.outbox_claims (id, partition_key, relay, until)
        SELECT cand.id, cand.partition_key, p_relay, v_now + make_interval(secs => p_lease_secs)
        FROM cand WHERE NOT cand.expired
        RETURNING outbox_claims.id),
    upd AS (
        UPDATE {s}.outbox_claims l
           SET relay = p_relay, until = v_now + make_interval(secs => p_lease_secs)
          FROM cand
         WHERE cand.expired AND l.id = cand.id AND l.until <= v_now
        RETURNING l.id),
    got AS (SELECT ins.id FROM ins UNION ALL SELECT upd.id FROM upd)
    SELECT cand.id, cand.topic, cand.partition_key, cand.body, cand.properties,
           cand.deliver_at, cand.created_at, cand.attempts
    FROM cand JOIN got ON got.id = cand.id;
END $fn$;
-- Version 1 probed the leases per candidate through this index.
DROP INDEX IF EXISTS {s}.outbox_claims_key;

-- One elected cleaner at a time (try-lock: the others return 0 at once). It deletes at most
-- p_batch dispatched records older than p_older_secs from the dispatched log, found by a
-- sequential scan (the log has no index: relays only append to it, cheaply). Relays never
-- update or lock log rows, so the cleaner never waits for a relay and cannot deadlock with one.
-- While records are parked it also moves (p_batch at a time) the pending records they block
-- to `held` (state 3), out of the claim's scan: a parked record on a busy key must not fill
-- the claim window. Requeueing or discarding the parked record releases them.
CREATE OR REPLACE FUNCTION {s}.outbox_cleanup(p_older_secs float8, p_batch integer)
RETURNS bigint LANGUAGE plpgsql SET enable_seqscan = on AS $fn$
DECLARE
    n bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock({cleanup_lock}) THEN
        RETURN 0;
    END IF;
    DELETE FROM {s}.outbox_dispatched d WHERE d.ctid = ANY (ARRAY(
        SELECT x.ctid FROM {s}.outbox_dispatched x
        WHERE x.dispatched_at < clock_timestamp() - make_interval(secs => p_older_secs)
        LIMIT p_batch));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM {s}.outbox p WHERE p.state = 2) THEN
        UPDATE {s}.outbox h SET state = 3 WHERE h.id IN (
            SELECT c.id FROM {s}.outbox c
            WHERE c.state = 0
              AND EXISTS (SELECT 1 FROM {s}.outbox p
                          WHERE p.partition_key = c.partition_key AND p.id < c.id
                            AND p.state = 2)
            LIMIT p_batch
            FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN n;
END $fn$;

INSERT INTO {s}.outbox_meta (key, value) VALUES ('outbox_version', '{VERSION}')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
"#
    )
}

/// Creates the schema, tables, indexes, trigger and functions if they are missing or older
/// than this version. Cheap when current (one query); otherwise serialised between processes
/// by an advisory lock and applied in one transaction.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), OutboxError> {
    let current = format!("SELECT value FROM {schema}.outbox_meta WHERE key = 'outbox_version'");
    if let Ok(Some(row)) = client.query_opt(&current, &[]).await
        && row.get::<_, String>(0) == VERSION
    {
        return Ok(());
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| error::map("migrate", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&migrate_lock(schema)])
        .await
        .map_err(|e| error::map("migrate", e))?;
    // Another process may have migrated while we waited for the lock: re-running the DDL
    // would take table locks for nothing (and could deadlock with its first statements).
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.outbox_meta")],
        )
        .await
        .map_err(|e| error::map("migrate", e))?
        .get(0);
    if exists
        && let Some(row) = tx
            .query_opt(&current, &[])
            .await
            .map_err(|e| error::map("migrate", e))?
        && row.get::<_, String>(0) == VERSION
    {
        return tx.commit().await.map_err(|e| error::map("migrate", e));
    }
    tx.batch_execute(&ddl(schema))
        .await
        .map_err(|e| error::map("migrate", e))?;
    tx.commit().await.map_err(|e| error::map("migrate", e))
}

/// Drops the schema and everything in it.
pub(crate) async fn drop_schema(client: &Client, schema: &str) -> Result<(), OutboxError> {
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .map_err(|e| error::map("drop schema", e))
}
