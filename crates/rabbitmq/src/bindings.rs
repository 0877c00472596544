//! Subscription filters as headers-exchange bindings.
//!
//! A filter that is a conjunction of `property = literal` ([`Filter::exact_matches`]) is applied
//! by the broker: the queue is bound to the topic's headers exchange with `x-match=all` and those
//! headers. Everything else is bound with a match-everything binding and evaluated in the
//! receiver. Both paths select the same messages, because a native plan is only made where the
//! broker's comparison agrees with SQL `=`:
//!
//! - RabbitMQ compares a header only with a binding value of the same *type class* (integers
//!   with integers, floats with floats), while SQL `=` compares numbers by value (`1 = 1.0`). A
//!   numeric equality therefore becomes two bindings (the integer and the equal float) where
//!   both exist, and at most [`MAX_BINDINGS`] bindings are made (a message routed by several
//!   bindings of one queue is still enqueued once);
//! - RabbitMQ ignores binding arguments whose names start with `x-`, so equalities on such
//!   properties are evaluated in the client; so are non-finite floats and integers beyond
//!   ±2^53 (where the int/float comparison would differ).

use eventyard_core::{Filter, PropertyValue};
use lapin::types::{AMQPValue, FieldTable, LongString};

/// Most bindings one filter expands to before it is evaluated in the client instead.
pub(crate) const MAX_BINDINGS: usize = 16;

/// Largest integer magnitude whose float is exact.
const EXACT: i64 = 1 << 53;

/// How a subscription's filter is applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Bindings of the main queue to the topic exchange (arguments of each).
    pub bindings: Vec<FieldTable>,
    /// True when the receiver must evaluate the filter.
    pub client_side: bool,
}

fn match_all() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-match".into(),
        AMQPValue::LongString(LongString::from("all")),
    );
    t
}

/// The alternatives one equality expands to, or `None` when the broker cannot apply it.
fn alternatives(value: &PropertyValue) -> Option<Vec<AMQPValue>> {
    Some(match value {
        PropertyValue::String(s) => vec![AMQPValue::LongString(LongString::from(s.as_bytes()))],
        PropertyValue::Bool(b) => vec![AMQPValue::Boolean(*b)],
        PropertyValue::Int(i) => {
            if i.unsigned_abs() > EXACT.unsigned_abs() {
                return None;
            }
            #[allow(clippy::cast_precision_loss)] // exact below 2^53
            let f = *i as f64;
            vec![AMQPValue::LongLongInt(*i), AMQPValue::Double(f)]
        }
        PropertyValue::Float(x) => {
            if !x.is_finite() {
                return None;
            }
            #[allow(clippy::cast_precision_loss)]
            let exact_int = x.fract() == 0.0 && x.abs() <= EXACT as f64;
            if exact_int {
                #[allow(clippy::cast_possible_truncation)] // integral and within ±2^53
                let i = *x as i64;
                vec![AMQPValue::Double(*x), AMQPValue::LongLongInt(i)]
            } else {
                vec![AMQPValue::Double(*x)]
            }
        }
    })
}

/// How to apply `filter`; `native` false forces client-side evaluation.
pub(crate) fn plan(filter: &Filter, native: bool) -> Plan {
    let client = Plan {
        bindings: vec![match_all()],
        client_side: !matches!(filter, Filter::All),
    };
    if !native {
        return client;
    }
    let Some(equalities) = filter.exact_matches() else {
        return client;
    };
    let mut tables = vec![match_all()];
    for (name, value) in &equalities {
        if name.starts_with("x-") || name.starts_with("X-") || name.len() > 255 {
            return client;
        }
        let Some(alts) = alternatives(value) else {
            return client;
        };
        if tables.len() * alts.len() > MAX_BINDINGS {
            return client;
        }
        let mut next = Vec::with_capacity(tables.len() * alts.len());
        for table in &tables {
            for alt in &alts {
                let mut t = table.clone();
                t.insert(name.as_str().into(), alt.clone());
                next.push(t);
            }
        }
        tables = next;
    }
    Plan {
        bindings: tables,
        client_side: false,
    }
}

/// RabbitMQ's `x-match=all` headers matching (rabbit_exchange_type_headers), for tests: every
/// binding argument not starting with `x-` must be present among the headers with the same
/// type class and an equal value.
#[cfg(test)]
pub(crate) fn broker_matches(binding: &FieldTable, headers: &FieldTable) -> bool {
    #[derive(PartialEq)]
    enum Class {
        Int,
        Float,
        Other,
    }
    fn class(v: &AMQPValue) -> Class {
        match v {
            AMQPValue::ShortShortInt(_)
            | AMQPValue::ShortShortUInt(_)
            | AMQPValue::ShortInt(_)
            | AMQPValue::ShortUInt(_)
            | AMQPValue::LongInt(_)
            | AMQPValue::LongUInt(_)
            | AMQPValue::LongLongInt(_) => Class::Int,
            AMQPValue::Float(_) | AMQPValue::Double(_) => Class::Float,
            _ => Class::Other,
        }
    }
    binding.inner().iter().all(|(k, pv)| {
        if k.as_str().starts_with("x-") {
            return true;
        }
        headers.inner().get(k.as_str()).is_some_and(|dv| {
            let (pc, dc) = (class(pv), class(dv));
            match (pc, dc) {
                (Class::Int, Class::Int) | (Class::Float, Class::Float) => {
                    crate::headers::from_amqp(pv) == crate::headers::from_amqp(dv)
                }
                (Class::Other, Class::Other) => pv == dv,
                _ => false,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{Meta, encode};
    use eventyard_core::Properties;

    fn filters() -> Vec<Filter> {
        let sql = |s: &str| Filter::sql(s).expect("parses");
        vec![
            Filter::all(),
            sql("[cs-tenant-id] = 'a'"),
            sql("[cs-tenant-id] = 'a' AND [cs-event-type] = 'OrderPlaced'"),
            sql("n = 1"),
            sql("n = 1.0"),
            sql("n = 1.5"),
            sql("n = 1 AND m = 2 AND flag = TRUE"),
            sql("flag = FALSE"),
            sql("1 = 1 AND [cs-tenant-id] = 'b'"),
            sql("sys.MessageId = 'e-1'"),
            sql("[x-region] = 'eu'"),
            sql("[x-region] <> 'eu'"),
            sql("[cs-tenant-id] IN ('a', 'b')"),
            sql("n > 0"),
            sql("n = 9007199254740993"),
            Filter::correlation([
                (
                    "cs-event-type".to_owned(),
                    PropertyValue::from("OrderPlaced"),
                ),
                ("cs-tenant-id".to_owned(), PropertyValue::from("a")),
            ]),
            Filter::correlation([("n".to_owned(), PropertyValue::Float(2.0))]),
            Filter::correlation([("n".to_owned(), PropertyValue::Float(f64::NAN))]),
        ]
    }

    fn messages() -> Vec<Properties> {
        let mut out = Vec::new();
        for tenant in [None, Some("a"), Some("b")] {
            for n in [
                None,
                Some(PropertyValue::Int(1)),
                Some(PropertyValue::Float(1.0)),
                Some(PropertyValue::Float(1.5)),
                Some(PropertyValue::Int(2)),
                Some(PropertyValue::Float(2.0)),
                Some(PropertyValue::from("1")),
            ] {
                for flag in [None, Some(true), Some(false)] {
                    let mut p = Properties::new();
                    if let Some(t) = tenant {
                        p.insert("cs-tenant-id", t);
                    }
                    if let Some(n) = &n {
                        p.insert("n", n.clone());
                    }
                    if let Some(f) = flag {
                        p.insert("flag", f);
                    }
                    p.insert("m", 2_i64);
                    p.insert("cs-event-type", "OrderPlaced");
                    p.insert("cs-event-id", "e-1");
                    if flag == Some(true) {
                        p.insert("x-region", "eu");
                    }
                    out.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn native_and_client_paths_select_the_same_messages() {
        let mut native_plans = 0;
        for filter in filters() {
            let plan = plan(&filter, true);
            if !plan.client_side {
                native_plans += 1;
            }
            for props in messages() {
                let headers = encode(&props, &Meta::default()).expect("encode");
                let routed = plan.bindings.iter().any(|b| broker_matches(b, &headers));
                let delivered = routed && (!plan.client_side || filter.matches(&props));
                assert_eq!(
                    delivered,
                    filter.matches(&props),
                    "filter `{filter}` on {props:?} (plan {plan:?})"
                );
            }
        }
        assert!(native_plans >= 8, "only {native_plans} native plans");
    }

    #[test]
    fn what_goes_native() {
        let native = |f: &str| !plan(&Filter::sql(f).expect("parses"), true).client_side;
        assert!(native("[cs-tenant-id] = 'a'"));
        assert!(native("n = 1 AND [cs-tenant-id] = 'a'"));
        assert!(
            !native("[x-region] = 'eu'"),
            "x- arguments are ignored by the broker"
        );
        assert!(!native("[cs-tenant-id] IN ('a')"));
        assert!(!native("n = 9007199254740993"));
        assert!(!native("a = 1 AND b = 2 AND c = 3 AND d = 4 AND e = 5"));
        assert!(plan(&Filter::all(), true).bindings.len() == 1);
        assert!(!plan(&Filter::all(), false).client_side);
        assert!(plan(&Filter::sql("a = 'x'").expect("parses"), false).client_side);
        assert_eq!(
            plan(&Filter::sql("a = 1 AND b = 2").expect("parses"), true)
                .bindings
                .len(),
            4
        );
    }
}
