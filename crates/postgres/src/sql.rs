//! The statements of one outbox schema (text; the pool prepares them on each connection).

/// Columns returned for a claimed record, in this order.
pub(crate) const RECORD_COLUMNS: &str =
    "id, topic, partition_key, body, properties, deliver_at, created_at, attempts";

/// Statement texts for one schema.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    /// `$1 topic, $2 key, $3 body, $4 properties, $5 deliver_at` → `id`.
    pub insert_one: String,
    /// Arrays of the same → `id`s.
    pub insert_many: String,
    /// `$1 relay, $2 max, $3 lease seconds, $4 scan window` → records.
    pub claim: String,
    /// `$1 ids, $2 relay`.
    pub mark: String,
    /// `$1 ids, $2 relay, $3 retry seconds`.
    pub release: String,
    /// `$1 id, $2 relay, $3 reason`.
    pub park: String,
    /// `$1 older-than seconds, $2 batch` → deleted count.
    pub cleanup: String,
    /// Counts and oldest age.
    pub status: String,
    /// Lag of the newest dispatched record.
    pub lag: String,
}

impl Sql {
    /// The statements of `schema` (already checked by `config::check_schema`).
    pub(crate) fn new(s: &str) -> Self {
        let cols = "topic, partition_key, body, properties, deliver_at";
        Sql {
            insert_one: format!(
                "INSERT INTO {s}.outbox ({cols}) VALUES ($1, $2, $3, $4, $5) RETURNING id"
            ),
            insert_many: format!(
                "INSERT INTO {s}.outbox ({cols}) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[], \
                 $5::timestamptz[]) RETURNING id"
            ),
            claim: format!("SELECT {RECORD_COLUMNS} FROM {s}.outbox_claim($1, $2, $3, $4)"),
            // Dispatched records leave the outbox and the claims; the log keeps id, times and
            // relay until `cleanup` (status figures, audit). A record dispatched twice (a relay
            // whose lease expired) is logged once: the second delete finds nothing.
            mark: format!(
                "WITH d AS (DELETE FROM {s}.outbox WHERE id = ANY($1) AND state = 0 \
                 RETURNING id, created_at), \
                 c AS (DELETE FROM {s}.outbox_claims WHERE id = ANY($1)) \
                 INSERT INTO {s}.outbox_dispatched (id, created_at, dispatched_at, relay) \
                 SELECT id, created_at, clock_timestamp(), $2 FROM d"
            ),
            // Only the relay holding the claim gives a record back: a relay whose lease
            // expired and was taken over must not touch the new holder's claim.
            release: format!(
                "WITH r AS (DELETE FROM {s}.outbox_claims WHERE id = ANY($1) AND relay = $2 \
                 RETURNING id) \
                 UPDATE {s}.outbox o SET attempts = o.attempts + 1, \
                 visible_at = clock_timestamp() + make_interval(secs => $3) \
                 FROM r WHERE o.id = r.id AND o.state = 0"
            ),
            // Parks unless another relay holds an active claim on it.
            park: format!(
                "WITH c AS (DELETE FROM {s}.outbox_claims WHERE id = $1 \
                 AND (relay = $2 OR until <= clock_timestamp()) RETURNING id) \
                 UPDATE {s}.outbox o SET state = 2, parked_at = clock_timestamp(), \
                 park_reason = $3, attempts = o.attempts + 1 \
                 WHERE o.id = $1 AND o.state = 0 AND (EXISTS (SELECT 1 FROM c) OR NOT EXISTS \
                 (SELECT 1 FROM {s}.outbox_claims x WHERE x.id = $1 \
                 AND x.until > clock_timestamp()))"
            ),
            cleanup: format!("SELECT {s}.outbox_cleanup($1, $2)"),
            status: format!(
                "SELECT o.pending, c.in_flight, o.parked, d.dispatched, o.oldest FROM \
                 (SELECT count(*) FILTER (WHERE state IN (0, 3)) AS pending, \
                         count(*) FILTER (WHERE state = 2) AS parked, \
                         extract(epoch FROM clock_timestamp() \
                           - min(created_at) FILTER (WHERE state IN (0, 3)))::float8 AS oldest \
                  FROM {s}.outbox) o, \
                 (SELECT count(*) FILTER (WHERE until > clock_timestamp()) AS in_flight \
                  FROM {s}.outbox_claims) c, \
                 (SELECT count(*) AS dispatched FROM {s}.outbox_dispatched) d"
            ),
            lag: format!(
                "SELECT extract(epoch FROM dispatched_at - created_at)::float8 \
                 FROM {s}.outbox_dispatched ORDER BY dispatched_at DESC, id DESC LIMIT 1"
            ),
        }
    }
}
