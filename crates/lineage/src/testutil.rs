//! Hand-built envelopes with controlled times for the unit tests.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use eventyard_core::{Envelope, EventType, TenantId};
use serde_json::json;

/// 2025-01-01T00:00:00Z plus `ms` milliseconds.
pub fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + TimeDelta::milliseconds(ms)
}

/// A root event of tenant `t` at `at(ms)`.
pub fn root(event_type: &str, ms: i64) -> Envelope {
    let mut env = Envelope::new(
        EventType::event(event_type).unwrap(),
        TenantId::parse("t").unwrap(),
        json!({}),
    );
    env.occurred_at = at(ms);
    env
}

/// An event caused by `parent`, at `at(ms)`.
pub fn child(parent: &Envelope, event_type: &str, ms: i64) -> Envelope {
    let mut env = parent.child(EventType::event(event_type).unwrap(), json!({}));
    env.occurred_at = at(ms);
    env
}
