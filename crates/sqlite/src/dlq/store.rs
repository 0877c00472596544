//! The SQL of the DLQ operations, run on the writer thread inside its transaction.
//!
//! Filters are pushed down: topic, subscription and time on the table columns, event type,
//! tenant, reason and the stored fingerprint with `json_extract` on the properties and fault
//! context (guarded by `json_valid`, so a malformed row is simply not matched by those filters
//! and never aborts the query). Only the computed fallback fingerprint (rows without a stored
//! one) is checked in Rust. Listing sorts and filters sequence numbers only, then reads the
//! rows it returns.
//!
//! With the partial index `messages_dead_lettered ON messages (dl_at, seq) WHERE queue < 0` in
//! the schema, a newest-first listing with a limit walks the index instead of sorting every dead
//! letter (50 000 dead letters: ~6 ms instead of ~50 ms for 100).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use eventyard_core::properties::names;
use eventyard_core::{Envelope, Filter, Properties, PropertyValue, TransportError};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Row, params, params_from_iter};
use serde_json::Map;

use super::fingerprint::fingerprint;
use super::model::{
    AuditRecord, DeadLetterEntry, DlqGroup, DlqQuery, PreviousFault, ReplayOptions,
    SubscriptionCount,
};
use super::{DlqError, prop};

/// A rusqlite error as a store error (the engine's types stay inside this crate).
pub(super) fn db(e: rusqlite::Error) -> DlqError {
    DlqError::Transport(TransportError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    })
}

/// `p` / `c`: the properties and the fault context when they are valid JSON, else NULL.
const BASE: &str = "
    SELECT m.seq AS seq, coalesce(s.topic, '?') AS topic, coalesce(s.name, '?') AS sub,
           b.body AS body, b.props AS props, b.dl_context AS ctx,
           coalesce(m.dl_at, m.enqueued_at) AS dlt, m.enqueued_at AS enq, m.dl_at AS dl_at,
           CASE WHEN json_valid(b.props) THEN b.props END AS p,
           CASE WHEN json_valid(b.dl_context) THEN b.dl_context END AS c
    FROM messages m JOIN message_bodies b ON b.seq = m.seq
    LEFT JOIN subscriptions s ON s.id = -m.queue";

/// Newest first (`dl_at` is set on every dead letter; NULLs, if any, come last).
const NEWEST_FIRST: &str = " ORDER BY dl_at DESC, seq DESC";

const EVENT_TYPE: &str = "coalesce(json_extract(p, '$.\"cs-event-type\"'), CASE WHEN json_valid(CAST(body AS TEXT)) THEN json_extract(CAST(body AS TEXT), '$.eventType') END)";
const TENANT: &str = "coalesce(json_extract(p, '$.\"cs-tenant-id\"'), CASE WHEN json_valid(CAST(body AS TEXT)) THEN json_extract(CAST(body AS TEXT), '$.tenantId') END)";
const REASON: &str = "json_extract(p, '$.\"cs-dead-letter-reason\"')";
const DESCRIPTION: &str = "json_extract(p, '$.\"cs-dead-letter-description\"')";
const SOURCE: &str = "json_extract(p, '$.\"cs-dead-letter-source\"')";
const FINGERPRINT: &str = "json_extract(c, '$.fingerprint')";

/// `FROM … WHERE …` of the dead letters matching `q`, and its parameters in order.
fn filtered(q: &DlqQuery) -> (String, Vec<Value>) {
    let mut inner = String::from(" WHERE m.queue < 0");
    let mut params = Vec::new();
    if let Some(t) = &q.topic {
        inner.push_str(" AND s.topic = ?");
        params.push(Value::Text(t.clone()));
    }
    if let Some(s) = &q.subscription {
        inner.push_str(" AND s.name = ?");
        params.push(Value::Text(s.clone()));
    }
    if let Some(t) = q.since {
        inner.push_str(" AND m.dl_at >= ?");
        params.push(Value::Integer(t.timestamp_micros()));
    }
    if let Some(t) = q.until {
        inner.push_str(" AND m.dl_at <= ?");
        params.push(Value::Integer(t.timestamp_micros()));
    }
    let mut outer = String::from(" WHERE 1");
    for (expr, v) in [
        (EVENT_TYPE, &q.event_type),
        (TENANT, &q.tenant),
        (REASON, &q.reason),
    ] {
        if let Some(v) = v {
            outer.push_str(&format!(" AND {expr} = ?"));
            params.push(Value::Text(v.clone()));
        }
    }
    if let Some(fp) = &q.fingerprint {
        // Rows without a stored fingerprint are checked in Rust (computed fallback).
        outer.push_str(&format!(
            " AND ({FINGERPRINT} = ? OR coalesce({FINGERPRINT}, '') = '')"
        ));
        params.push(Value::Text(fp.clone()));
    }
    (format!(" FROM ({BASE}{inner}){outer}"), params)
}

fn text(r: &Row<'_>, i: usize) -> Option<String> {
    match r.get_ref(i).ok()? {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn int(r: &Row<'_>, i: usize) -> Option<i64> {
    match r.get_ref(i).ok()? {
        ValueRef::Integer(n) => Some(n),
        ValueRef::Real(x) => Some(x as i64),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn bytes(r: &Row<'_>, i: usize) -> Vec<u8> {
    match r.get_ref(i) {
        Ok(ValueRef::Text(b) | ValueRef::Blob(b)) => b.to_vec(),
        _ => Vec::new(),
    }
}

/// µs since the epoch as a time (the epoch itself when out of range).
pub(super) fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A stored row, columns as read.
struct RawRow {
    seq: i64,
    topic: String,
    sub: String,
    body: Vec<u8>,
    props: Option<String>,
    ctx: Option<String>,
    dlt: Option<i64>,
    enq: Option<i64>,
}

impl RawRow {
    /// Reads the columns of [`BASE`] (`seq, topic, sub, body, props, ctx, dlt, enq, …`).
    fn read(r: &Row<'_>) -> RawRow {
        RawRow {
            seq: int(r, 0).unwrap_or(0),
            topic: text(r, 1).unwrap_or_else(|| "?".into()),
            sub: text(r, 2).unwrap_or_else(|| "?".into()),
            body: bytes(r, 3),
            props: text(r, 4),
            ctx: text(r, 5),
            dlt: int(r, 6),
            enq: int(r, 7),
        }
    }
}

/// The properties, leniently: values that are not property scalars are dropped (and reported).
fn parse_props(text: Option<&str>, warnings: &mut Vec<String>) -> Properties {
    let Some(text) = text else {
        warnings.push("the message has no properties".into());
        return Properties::new();
    };
    match serde_json::from_str::<Map<String, serde_json::Value>>(text) {
        Ok(map) => {
            let mut props = Properties::new();
            for (k, v) in map {
                match serde_json::from_value::<PropertyValue>(v) {
                    Ok(v) => {
                        props.insert(k, v);
                    }
                    Err(_) => warnings.push(format!("property `{k}` is not a scalar; dropped")),
                }
            }
            props
        }
        Err(e) => {
            warnings.push(format!(
                "the properties are not a JSON object ({e}); shown as unknown"
            ));
            Properties::new()
        }
    }
}

/// A property as text, whatever its type.
fn prop_text(p: &Properties, name: &str) -> Option<String> {
    p.get(name).map(|v| v.to_string())
}

fn ctx_str(ctx: Option<&Map<String, serde_json::Value>>, key: &str) -> Option<String> {
    match ctx?.get(key)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ctx_u32(ctx: Option<&Map<String, serde_json::Value>>, key: &str) -> Option<u32> {
    match ctx?.get(key)? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The fingerprint of a dead letter without a stored one.
pub(super) fn fallback_fingerprint(
    reason: Option<&str>,
    description: Option<&str>,
    source: Option<&str>,
    subscription: &str,
) -> String {
    fingerprint(
        reason.unwrap_or(""),
        description.unwrap_or(""),
        source.unwrap_or(subscription),
    )
}

/// The stored fault context, parsed leniently.
fn parse_context(text: Option<&str>, warnings: &mut Vec<String>) -> Option<serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(text?) {
        Ok(v) => {
            if !v.is_object() {
                warnings.push("the fault context is not a JSON object".into());
            }
            Some(v)
        }
        Err(e) => {
            warnings.push(format!("the fault context is not valid JSON ({e})"));
            None
        }
    }
}

/// The fingerprint of a dead letter: the stored one, else computed from its properties.
fn fingerprint_of(
    props: &Properties,
    ctx: Option<&Map<String, serde_json::Value>>,
    subscription: &str,
) -> String {
    ctx_str(ctx, "fingerprint").unwrap_or_else(|| {
        fallback_fingerprint(
            prop_text(props, names::DEAD_LETTER_REASON).as_deref(),
            prop_text(props, names::DEAD_LETTER_DESCRIPTION).as_deref(),
            prop_text(props, names::DEAD_LETTER_SOURCE).as_deref(),
            subscription,
        )
    })
}

fn entry(raw: RawRow) -> DeadLetterEntry {
    let mut warnings = Vec::new();
    let properties = parse_props(raw.props.as_deref(), &mut warnings);
    let context = parse_context(raw.ctx.as_deref(), &mut warnings);
    let ctx = context.as_ref().and_then(serde_json::Value::as_object);
    let envelope = serde_json::from_slice::<serde_json::Value>(&raw.body).ok();
    let env_str = |key: &str| {
        envelope
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let reason = prop_text(&properties, names::DEAD_LETTER_REASON);
    let fp = fingerprint_of(&properties, ctx, &raw.sub);
    let description = prop_text(&properties, names::DEAD_LETTER_DESCRIPTION).unwrap_or_default();
    let errors = match ctx.and_then(|c| c.get("errors")) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ if !description.is_empty() => vec![description.clone()],
        _ => Vec::new(),
    };
    let replay_count = match properties.get(prop::REPLAY_COUNT) {
        Some(PropertyValue::Int(n)) => u32::try_from(*n).unwrap_or(0),
        Some(PropertyValue::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    let previous =
        prop_text(&properties, prop::LAST_DEAD_LETTER_REASON).map(|reason| PreviousFault {
            reason,
            description: prop_text(&properties, prop::LAST_DEAD_LETTER_DESCRIPTION),
            fingerprint: prop_text(&properties, prop::LAST_DEAD_LETTER_FINGERPRINT),
            source: prop_text(&properties, prop::LAST_DEAD_LETTER_SOURCE),
            dead_lettered_at: properties
                .get_str(prop::LAST_DEAD_LETTER_AT)
                .and_then(parse_time),
            replayed_at: properties.get_str(prop::REPLAYED_AT).and_then(parse_time),
            replayed_by: prop_text(&properties, prop::REPLAYED_BY),
        });
    let body_text = if envelope.is_none() {
        Some(String::from_utf8_lossy(&raw.body).into_owned())
    } else {
        None
    };
    DeadLetterEntry {
        seq: u64::try_from(raw.seq).unwrap_or(0),
        topic: raw.topic,
        subscription: raw.sub,
        event_id: prop_text(&properties, names::EVENT_ID).or_else(|| env_str("eventId")),
        event_type: prop_text(&properties, names::EVENT_TYPE).or_else(|| env_str("eventType")),
        tenant: prop_text(&properties, names::TENANT_ID).or_else(|| env_str("tenantId")),
        reason: reason.unwrap_or_else(|| "unknown".into()),
        description,
        fingerprint: fp,
        handler: ctx_str(ctx, "handler"),
        error_kind: ctx_str(ctx, "errorKind"),
        errors,
        attempts: ctx_u32(ctx, "attempts"),
        first_failure_at: ctx_str(ctx, "firstFailureAt").and_then(|s| parse_time(&s)),
        last_failure_at: ctx_str(ctx, "lastFailureAt").and_then(|s| parse_time(&s)),
        dead_lettered_at: time(raw.dlt.or(raw.enq).unwrap_or(0)),
        enqueued_at: time(raw.enq.unwrap_or(0)),
        host: ctx_str(ctx, "host"),
        pid: ctx_u32(ctx, "pid"),
        replay_count,
        previous,
        properties,
        context,
        envelope,
        body: body_text,
        body_size: raw.body.len(),
        raw_body: raw.body,
        warnings,
    }
}

/// Sequence numbers of the dead letters matching `q`, newest first, `q.limit` applied. Sorts
/// and filters on the small columns only; bodies are not read.
pub(super) fn matching_seqs(conn: &Connection, q: &DlqQuery) -> Result<Vec<i64>, DlqError> {
    let (from, mut params) = filtered(q);
    let post_filter = q.fingerprint.as_deref();
    let mut sql = if post_filter.is_some() {
        format!("SELECT seq, props, ctx, sub{from}{NEWEST_FIRST}")
    } else {
        format!("SELECT seq{from}{NEWEST_FIRST}")
    };
    if let (Some(n), None) = (q.limit, post_filter) {
        sql.push_str(" LIMIT ?");
        params.push(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
    }
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut stmt = conn.prepare(&sql).map_err(db)?;
    let mut rows = stmt.query(params_from_iter(params.iter())).map_err(db)?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next().map_err(db)? else {
            break;
        };
        let Some(seq) = int(r, 0) else { continue };
        if let Some(want) = post_filter {
            let mut ignored = Vec::new();
            let props = parse_props(text(r, 1).as_deref(), &mut ignored);
            let ctx = parse_context(text(r, 2).as_deref(), &mut ignored);
            let sub = text(r, 3).unwrap_or_else(|| "?".into());
            if fingerprint_of(&props, ctx.as_ref().and_then(|c| c.as_object()), &sub) != want {
                continue;
            }
        }
        out.push(seq);
    }
    Ok(out)
}

/// One dead letter by sequence number.
pub(super) fn load(conn: &Connection, seq: i64) -> Result<Option<DeadLetterEntry>, DlqError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT seq, topic, sub, body, props, ctx, dlt, enq
             FROM ({BASE} WHERE m.queue < 0 AND m.seq = ?1)"
        ))
        .map_err(db)?;
    let mut rows = stmt.query(params![seq]).map_err(db)?;
    Ok(rows.next().map_err(db)?.map(|r| entry(RawRow::read(r))))
}

/// The dead letters matching `q`, newest first, `q.limit` applied.
pub(super) fn matching(conn: &Connection, q: &DlqQuery) -> Result<Vec<DeadLetterEntry>, DlqError> {
    let mut out = Vec::new();
    for seq in matching_seqs(conn, q)? {
        // Read in the same transaction: every matched row is still there.
        if let Some(e) = load(conn, seq)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Groups by fingerprint and subscription, largest first.
pub(super) fn groups(conn: &Connection, q: &DlqQuery) -> Result<Vec<DlqGroup>, DlqError> {
    let (from, params) = filtered(q);
    // Rows without a stored fingerprint are grouped by the parts of the computed one (merged
    // below, since normalization may map several descriptions onto one fingerprint).
    let sql = format!(
        "SELECT fp, reason, CASE WHEN fp IS NULL THEN descr END, CASE WHEN fp IS NULL THEN src END,
                kind, handler, topic, sub, count(*), min(dlt), max(dlt), max(descr)
         FROM (SELECT nullif({FINGERPRINT}, '') AS fp, {REASON} AS reason, {DESCRIPTION} AS descr,
                      {SOURCE} AS src, json_extract(c, '$.errorKind') AS kind,
                      json_extract(c, '$.handler') AS handler, topic, sub, dlt
               {from})
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
    );
    let mut stmt = conn.prepare(&sql).map_err(db)?;
    let mut rows = stmt.query(params_from_iter(params.iter())).map_err(db)?;
    // (fingerprint, topic, subscription) → (group, count of its largest variant)
    let mut merged: BTreeMap<(String, String, String), (DlqGroup, u64)> = BTreeMap::new();
    while let Some(r) = rows.next().map_err(db)? {
        let reason = text(r, 1);
        let descr = text(r, 2);
        let topic = text(r, 6).unwrap_or_else(|| "?".into());
        let sub = text(r, 7).unwrap_or_else(|| "?".into());
        let fp = text(r, 0).unwrap_or_else(|| {
            fallback_fingerprint(
                reason.as_deref(),
                descr.as_deref(),
                text(r, 3).as_deref(),
                &sub,
            )
        });
        if q.fingerprint.as_deref().is_some_and(|want| want != fp) {
            continue;
        }
        let count = u64::try_from(int(r, 8).unwrap_or(0)).unwrap_or(0);
        let first = int(r, 9).map(time);
        let last = int(r, 10).map(time);
        let variant = DlqGroup {
            fingerprint: fp.clone(),
            reason: reason.unwrap_or_else(|| "unknown".into()),
            error_kind: text(r, 4),
            handler: text(r, 5),
            topic: topic.clone(),
            subscription: sub.clone(),
            count,
            first_at: first,
            last_at: last,
            sample_description: text(r, 11).unwrap_or_default(),
        };
        match merged.get_mut(&(fp.clone(), topic.clone(), sub.clone())) {
            None => {
                merged.insert((fp, topic, sub), (variant, count));
            }
            Some((g, largest)) => {
                g.count += count;
                g.first_at = g.first_at.min(first).or(g.first_at).or(first);
                g.last_at = g.last_at.max(last);
                if count > *largest {
                    *largest = count;
                    g.reason = variant.reason;
                    g.error_kind = variant.error_kind.or(g.error_kind.take());
                    g.handler = variant.handler.or(g.handler.take());
                    g.sample_description = variant.sample_description;
                }
            }
        }
    }
    let mut out: Vec<DlqGroup> = merged.into_values().map(|(g, _)| g).collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_at.cmp(&a.last_at)));
    if let Some(n) = q.limit {
        out.truncate(n);
    }
    Ok(out)
}

/// A subscription's id and filter.
fn find_subscription(
    conn: &Connection,
    topic: &str,
    name: &str,
) -> Result<Option<(i64, String)>, DlqError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, filter FROM subscriptions WHERE topic = ?1 AND name = ?2")
        .map_err(db)?;
    let mut rows = stmt.query(params![topic, name]).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(r) => Ok(int(r, 0).map(|id| (id, text(r, 1).unwrap_or_default()))),
        None => Ok(None),
    }
}

/// One planned move.
#[derive(Debug, Clone)]
pub(super) struct Move {
    pub seq: i64,
    /// Index into the report's `per_subscription`.
    pub slot: usize,
    /// Main queue id of the target subscription.
    pub queue: i64,
}

/// What a replay will do.
#[derive(Debug)]
pub(super) struct Plan {
    pub matched: u64,
    pub skipped: u64,
    pub moves: Vec<Move>,
    /// Per (topic, from, to), count zeroed (filled as messages move; in a dry run: planned).
    pub slots: Vec<SubscriptionCount>,
}

/// A resolved replay target: main queue id, and the filter to check (another subscription).
type Target = (i64, Option<Filter>);

/// Resolves the targets of the matched dead letters.
pub(super) fn plan_replay(
    conn: &Connection,
    q: &DlqQuery,
    opts: &ReplayOptions,
) -> Result<Plan, DlqError> {
    let entries = matching(conn, q)?;
    // (topic, target name) → its main queue id and, for another subscription, its filter.
    let mut targets: HashMap<(String, String), Option<Target>> = HashMap::new();
    let mut slots: Vec<SubscriptionCount> = Vec::new();
    let mut slot_of: HashMap<(String, String, String), usize> = HashMap::new();
    let mut moves = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    if let Some(to) = &opts.target_subscription {
        eventyard_core::transport::check_name("subscription", to)?;
        if entries.is_empty() {
            // Nothing matched: still refuse a target that exists nowhere.
            let exists: bool = match &q.topic {
                Some(t) => find_subscription(conn, t, to)?.is_some(),
                None => conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM subscriptions WHERE name = ?1)")
                    .and_then(|mut s| s.query_row(params![to], |r| r.get(0)))
                    .map_err(db)?,
            };
            if !exists {
                return Err(DlqError::UnknownTarget {
                    topic: q.topic.clone().unwrap_or_else(|| "*".into()),
                    subscription: to.clone(),
                });
            }
        }
    }
    for e in &entries {
        let to = opts
            .target_subscription
            .clone()
            .unwrap_or_else(|| e.subscription.clone());
        let key = (e.topic.clone(), to.clone());
        if !targets.contains_key(&key) {
            let found = find_subscription(conn, &e.topic, &to)?;
            let resolved = match found {
                None => None,
                Some((id, filter)) if to != e.subscription => {
                    let f = serde_json::from_str::<Filter>(&filter).map_err(|err| {
                        DlqError::Transport(TransportError::Backend {
                            backend: "sqlite",
                            message: format!(
                                "stored filter of subscription {}/{to} is invalid: {err}",
                                e.topic
                            ),
                        })
                    })?;
                    Some((id, Some(f)))
                }
                Some((id, _)) => Some((id, None)),
            };
            targets.insert(key.clone(), resolved);
        }
        let Some(Some((queue, filter))) = targets.get(&key) else {
            return Err(DlqError::UnknownTarget {
                topic: e.topic.clone(),
                subscription: to,
            });
        };
        if filter.as_ref().is_some_and(|f| !f.matches(&e.properties)) {
            skipped += 1;
            continue;
        }
        let slot_key = (e.topic.clone(), e.subscription.clone(), to.clone());
        let slot = *slot_of.entry(slot_key).or_insert_with(|| {
            slots.push(SubscriptionCount {
                topic: e.topic.clone(),
                from: e.subscription.clone(),
                to,
                count: 0,
            });
            slots.len() - 1
        });
        moves.push(Move {
            seq: i64::try_from(e.seq).unwrap_or(i64::MAX),
            slot,
            queue: *queue,
        });
    }
    moves.sort_by_key(|m| m.seq);
    Ok(Plan {
        matched: entries.len() as u64,
        skipped,
        moves,
        slots,
    })
}

/// Moves one dead letter to main queue `queue`; false when it is no longer dead-lettered.
pub(super) fn move_back(
    conn: &Connection,
    seq: i64,
    queue: i64,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<bool, DlqError> {
    let Some(e) = load(conn, seq)? else {
        return Ok(false);
    };
    let mut p = e.properties;
    if p.is_empty()
        && let Ok(env) = Envelope::from_json(&e.raw_body)
    {
        p = env.properties();
    }
    let source = p
        .remove(names::DEAD_LETTER_SOURCE)
        .map(|v| v.to_string())
        .unwrap_or_else(|| e.subscription.clone());
    p.remove(names::DEAD_LETTER_REASON);
    p.remove(names::DEAD_LETTER_DESCRIPTION);
    p.insert(names::REPLAYED, true);
    p.insert(prop::REPLAY_COUNT, i64::from(e.replay_count) + 1);
    p.insert(prop::REPLAYED_AT, now.to_rfc3339());
    p.insert(prop::REPLAYED_BY, actor);
    p.insert(prop::LAST_DEAD_LETTER_REASON, e.reason);
    p.insert(prop::LAST_DEAD_LETTER_DESCRIPTION, e.description);
    p.insert(prop::LAST_DEAD_LETTER_SOURCE, source);
    p.insert(prop::LAST_DEAD_LETTER_FINGERPRINT, e.fingerprint);
    p.insert(prop::LAST_DEAD_LETTER_AT, e.dead_lettered_at.to_rfc3339());
    let props = serde_json::to_string(&p).map_err(|err| {
        DlqError::Transport(TransportError::Backend {
            backend: "sqlite",
            message: format!("cannot encode properties: {err}"),
        })
    })?;
    let changed = conn
        .prepare_cached(
            "UPDATE messages SET queue = ?1, visible_at = ?2, delivery_count = 0, dl_at = NULL
             WHERE seq = ?3 AND queue < 0",
        )
        .and_then(|mut s| s.execute(params![queue, now.timestamp_micros(), seq]))
        .map_err(db)?;
    if changed == 1 {
        conn.prepare_cached(
            "UPDATE message_bodies SET props = ?1, dl_context = NULL WHERE seq = ?2",
        )
        .and_then(|mut s| s.execute(params![props, seq]))
        .map_err(db)?;
    }
    Ok(changed == 1)
}

/// Deletes the dead letters matching `q`; returns how many matched (and, unless `dry_run`,
/// were deleted).
pub(super) fn purge(conn: &Connection, q: &DlqQuery, dry_run: bool) -> Result<u64, DlqError> {
    let seqs = matching_seqs(conn, q)?;
    if dry_run {
        return Ok(seqs.len() as u64);
    }
    let mut stmt = conn
        .prepare_cached("DELETE FROM messages WHERE seq = ?1 AND queue < 0")
        .map_err(db)?;
    let mut n = 0;
    for seq in seqs {
        n += stmt.execute(params![seq]).map_err(db)? as u64;
    }
    Ok(n)
}

/// Writes an audit record; returns its id.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_audit(
    conn: &Connection,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    query: &serde_json::Value,
    affected: u64,
    dry_run: bool,
    detail: &serde_json::Value,
) -> Result<i64, DlqError> {
    conn.prepare_cached(
        "INSERT INTO dlq_audit (at, actor, action, query, affected, dry_run, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            at.timestamp_micros(),
            actor,
            action,
            query.to_string(),
            i64::try_from(affected).unwrap_or(i64::MAX),
            dry_run,
            detail.to_string()
        ])
    })
    .map_err(db)?;
    Ok(conn.last_insert_rowid())
}

/// Adds `moved` to an audit record's count and replaces its detail.
pub(super) fn update_audit(
    conn: &Connection,
    id: i64,
    moved: u64,
    detail: &serde_json::Value,
) -> Result<(), DlqError> {
    conn.prepare_cached("UPDATE dlq_audit SET affected = affected + ?1, detail = ?2 WHERE id = ?3")
        .and_then(|mut s| {
            s.execute(params![
                i64::try_from(moved).unwrap_or(i64::MAX),
                detail.to_string(),
                id
            ])
        })
        .map_err(db)?;
    Ok(())
}

/// The latest `limit` audit records, newest first.
pub(super) fn audit(conn: &Connection, limit: usize) -> Result<Vec<AuditRecord>, DlqError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at, actor, action, query, affected, dry_run, detail FROM dlq_audit
             ORDER BY id DESC LIMIT ?1",
        )
        .map_err(db)?;
    let mut rows = stmt
        .query(params![i64::try_from(limit).unwrap_or(i64::MAX)])
        .map_err(db)?;
    let json = |t: Option<String>| {
        t.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
    };
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        out.push(AuditRecord {
            id: int(r, 0).unwrap_or(0),
            at: time(int(r, 1).unwrap_or(0)),
            actor: text(r, 2).unwrap_or_default(),
            action: text(r, 3).unwrap_or_default(),
            query: json(text(r, 4)).unwrap_or(serde_json::Value::Null),
            affected: u64::try_from(int(r, 5).unwrap_or(0)).unwrap_or(0),
            dry_run: int(r, 6).unwrap_or(0) != 0,
            detail: json(text(r, 7)).filter(|v| !v.is_null()),
        });
    }
    Ok(out)
}
