//! Message properties ↔ AMQP application headers.
//!
//! Every property travels as a header of the same name with its type kept: strings as long
//! strings (`S`), integers as 64-bit signed integers (`l`), floats as doubles (`d`), booleans as
//! booleans (`t`). That is what lets a headers exchange match filters natively.
//!
//! The broker adds headers of its own (`x-death`, `x-first-death-*`, …), all starting with
//! `x-`; so on receipt a header starting with `x-` is a property only when the message lists it
//! in [`XPROPS`] (written at publish for properties whose names start with `x-`). Headers of the
//! transport itself start with `x-eventyard-` (or are [`DELAY`]) and are never properties.
//! Values of other AMQP types (tables, arrays, byte arrays, decimals, void) are not properties
//! either: a message from a foreign publisher is delivered with whatever scalar headers it has.

use chrono::{DateTime, Utc};
use eventyard_core::{Properties, PropertyValue, TransportError};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

/// Names of properties that start with `x-` (a field array of long strings).
pub(crate) const XPROPS: &str = "x-eventyard-xprops";
/// Deliveries so far (absent: none).
pub(crate) const DELIVERIES: &str = "x-eventyard-deliveries";
/// When the message entered the subscription (first publish), milliseconds since the epoch.
pub(crate) const ENQUEUED_AT: &str = "x-eventyard-enqueued-at";
/// Not to be delivered before this time (scheduled delivery, delayed redelivery), ms since
/// the epoch.
pub(crate) const NOT_BEFORE: &str = "x-eventyard-not-before";
/// Structured dead-letter context, JSON text.
pub(crate) const DEAD_LETTER_CONTEXT: &str = "x-eventyard-dead-letter-context";
/// Delay in milliseconds; routes a message to its delay queue through the delay exchange.
/// It cannot start with `x-`: a headers exchange ignores such binding arguments.
pub(crate) const DELAY: &str = "eventyard-delay-ms";

/// The largest total size of properties we send (a content header must fit in one frame;
/// RabbitMQ's smallest allowed `frame_max` is 4096, its default 128 KiB).
pub(crate) const MAX_HEADER_BYTES: usize = 100 * 1024;

/// A property value as an AMQP field value.
pub(crate) fn to_amqp(value: &PropertyValue) -> AMQPValue {
    match value {
        PropertyValue::Bool(b) => AMQPValue::Boolean(*b),
        PropertyValue::Int(i) => AMQPValue::LongLongInt(*i),
        PropertyValue::Float(x) => AMQPValue::Double(*x),
        PropertyValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
    }
}

/// An AMQP field value as a property value, when it is a scalar we carry.
pub(crate) fn from_amqp(value: &AMQPValue) -> Option<PropertyValue> {
    Some(match value {
        AMQPValue::Boolean(b) => PropertyValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => PropertyValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => PropertyValue::Int(*i),
        AMQPValue::Float(x) => PropertyValue::Float(f64::from(*x)),
        AMQPValue::Double(x) => PropertyValue::Float(*x),
        AMQPValue::LongString(s) => {
            PropertyValue::String(std::str::from_utf8(s.as_bytes()).ok()?.to_owned())
        }
        AMQPValue::ShortString(s) => PropertyValue::String(s.as_str().to_owned()),
        _ => return None,
    })
}

/// An AMQP integer of any width (what [`from_amqp`] turns into an `Int`), without converting
/// anything else.
fn int_of(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        _ => return None,
    })
}

/// The transport's bookkeeping carried beside the properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Meta {
    /// Deliveries so far.
    pub deliveries: u32,
    /// First enqueue, ms since the epoch.
    pub enqueued_at_ms: Option<i64>,
    /// Not deliverable before, ms since the epoch.
    pub not_before_ms: Option<i64>,
    /// Dead-letter context (JSON text).
    pub dead_letter_context: Option<String>,
    /// Delay header for the delay exchange.
    pub delay_ms: Option<u64>,
}

fn header_name(name: &str) -> Result<ShortString, TransportError> {
    ShortString::try_new(name).map_err(|_| TransportError::Backend {
        backend: "amqp",
        message: format!(
            "property name of {} bytes is too long for an AMQP header (255 at most)",
            name.len()
        ),
    })
}

/// Encodes properties and bookkeeping as headers.
///
/// # Errors
/// `Backend` when a property name exceeds 255 bytes or the properties exceed
/// [`MAX_HEADER_BYTES`].
pub(crate) fn encode(props: &Properties, meta: &Meta) -> Result<FieldTable, TransportError> {
    let mut table = FieldTable::default();
    let mut xprops = Vec::new();
    let mut size = 0usize;
    for (name, value) in props.iter() {
        size += name.len()
            + match value {
                PropertyValue::String(s) => s.len() + 6,
                _ => 10,
            };
        if name.starts_with("x-") {
            xprops.push(AMQPValue::LongString(LongString::from(name.as_bytes())));
            size += name.len() + 5;
        }
        table.insert(header_name(name)?, to_amqp(value));
    }
    if size > MAX_HEADER_BYTES {
        return Err(TransportError::Backend {
            backend: "amqp",
            message: format!(
                "properties of about {size} bytes exceed the {MAX_HEADER_BYTES}-byte header limit"
            ),
        });
    }
    if !xprops.is_empty() {
        table.insert(
            XPROPS.into(),
            AMQPValue::FieldArray(FieldArray::from(xprops)),
        );
    }
    if meta.deliveries > 0 {
        table.insert(
            DELIVERIES.into(),
            AMQPValue::LongLongInt(i64::from(meta.deliveries)),
        );
    }
    if let Some(t) = meta.enqueued_at_ms {
        table.insert(ENQUEUED_AT.into(), AMQPValue::LongLongInt(t));
    }
    if let Some(t) = meta.not_before_ms {
        table.insert(NOT_BEFORE.into(), AMQPValue::LongLongInt(t));
    }
    if let Some(c) = &meta.dead_letter_context {
        table.insert(
            DEAD_LETTER_CONTEXT.into(),
            AMQPValue::LongString(LongString::from(c.as_bytes())),
        );
    }
    if let Some(d) = meta.delay_ms {
        table.insert(
            DELAY.into(),
            AMQPValue::LongLongInt(i64::try_from(d).unwrap_or(i64::MAX)),
        );
    }
    Ok(table)
}

/// Decodes headers (absent: none) into properties and bookkeeping. Never fails: whatever is not
/// understood is left out.
///
/// One pass over the table (it runs for every delivery): the transport's own headers are
/// recognised as they come, and the [`XPROPS`] list is looked up only when a header starting
/// with `x-` could be a property. The table iterates in name order, which is the properties'
/// order too, so they are collected in one go rather than inserted one by one.
pub(crate) fn decode(headers: Option<&FieldTable>) -> (Properties, Meta) {
    let mut meta = Meta::default();
    let Some(table) = headers else {
        return (Properties::new(), meta);
    };
    let inner = table.inner();
    // The names listed in XPROPS, looked up on the first `x-` header that needs them.
    let mut listed: Option<&[AMQPValue]> = None;
    let mut props: Vec<(&str, PropertyValue)> = Vec::with_capacity(inner.len());
    for (name, value) in inner {
        let name = name.as_str();
        if name.starts_with("x-") {
            if name.starts_with("x-eventyard-") {
                match name {
                    DELIVERIES => {
                        meta.deliveries = int_of(value)
                            .map_or(0, |d| u32::try_from(d.max(0)).unwrap_or(u32::MAX));
                    }
                    ENQUEUED_AT => meta.enqueued_at_ms = int_of(value),
                    NOT_BEFORE => meta.not_before_ms = int_of(value),
                    DEAD_LETTER_CONTEXT => {
                        meta.dead_letter_context = match value {
                            AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            _ => None,
                        };
                    }
                    _ => {}
                }
                continue;
            }
            let list = *listed.get_or_insert_with(|| match inner.get(XPROPS) {
                Some(AMQPValue::FieldArray(a)) => a.as_slice(),
                _ => &[],
            });
            let is_listed = list
                .iter()
                .any(|v| matches!(v, AMQPValue::LongString(s) if s.as_bytes() == name.as_bytes()));
            if !is_listed {
                continue;
            }
        } else if name == DELAY {
            meta.delay_ms = int_of(value).and_then(|d| u64::try_from(d).ok());
            continue;
        }
        if let Some(v) = from_amqp(value) {
            props.push((name, v));
        }
    }
    (props.into_iter().collect(), meta)
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A time from milliseconds since the epoch.
pub(crate) fn time_of(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Properties {
        let mut p = Properties::new();
        p.insert("cs-event-type", "OrderPlaced");
        p.insert("cs-schema-version", 3_i64);
        p.insert("x-count", 42_i64);
        p.insert("x-ratio", 0.25_f64);
        p.insert("x-flag", true);
        p.insert("x-text", "naïve ✓");
        p.insert("flag", false);
        p.insert("min", i64::MIN);
        p
    }

    #[test]
    fn properties_round_trip_with_their_types() {
        let meta = Meta {
            deliveries: 3,
            enqueued_at_ms: Some(1_700_000_000_123),
            not_before_ms: Some(1_700_000_001_000),
            dead_letter_context: Some(r#"{"handler":"h"}"#.into()),
            delay_ms: Some(300),
        };
        let table = encode(&sample(), &meta).expect("encode");
        assert_eq!(
            table.inner().get("cs-schema-version"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(table.inner().get("x-ratio"), Some(&AMQPValue::Double(0.25)));
        assert!(matches!(
            table.inner().get("cs-event-type"),
            Some(AMQPValue::LongString(_))
        ));
        let (props, back) = decode(Some(&table));
        assert_eq!(props, sample());
        assert_eq!(back, meta);
    }

    #[test]
    fn broker_headers_are_not_properties() {
        let mut table = encode(&sample(), &Meta::default()).expect("encode");
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        let (props, meta) = decode(Some(&table));
        assert_eq!(props, sample());
        assert_eq!(meta, Meta::default());
    }

    #[test]
    fn foreign_headers_and_no_headers() {
        let (props, meta) = decode(None);
        assert!(props.is_empty());
        assert_eq!(meta, Meta::default());

        let mut table = FieldTable::default();
        table.insert("tenant".into(), AMQPValue::LongString("a".into()));
        table.insert("n".into(), AMQPValue::LongInt(7));
        table.insert("f".into(), AMQPValue::Float(1.5));
        table.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        table.insert("bin".into(), AMQPValue::LongString(vec![0xff, 0xfe].into()));
        table.insert("x-other".into(), AMQPValue::LongString("x".into()));
        table.insert(DELIVERIES.into(), AMQPValue::LongString("junk".into()));
        let (props, meta) = decode(Some(&table));
        let expected: Properties = [
            ("tenant", PropertyValue::from("a")),
            ("n", PropertyValue::Int(7)),
            ("f", PropertyValue::Float(1.5)),
        ]
        .into_iter()
        .collect();
        assert_eq!(props, expected);
        assert_eq!(meta.deliveries, 0);
    }

    #[test]
    fn oversized_properties_are_refused() {
        let mut p = Properties::new();
        p.insert("big", "x".repeat(MAX_HEADER_BYTES + 1));
        assert!(encode(&p, &Meta::default()).is_err());
        let mut p = Properties::new();
        p.insert("n".repeat(256), 1_i64);
        assert!(encode(&p, &Meta::default()).is_err());
    }
}
