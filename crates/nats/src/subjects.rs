//! Stream names, subjects and consumer names, and the native part of subscription filters.
//!
//! Every name is built here and nowhere else:
//!
//! | what | form |
//! |---|---|
//! | topic stream (limits retention, trimmed) | `<prefix>_T_<topic>`, subjects `<prefix>.t.<topic>.>` |
//! | message subject | `<prefix>.t.<topic>.<tenant>.<eventType>` |
//! | dead-letter stream (limits retention, trimmed) | `<prefix>_D_<topic>`, subjects `<prefix>.d.<topic>.>` |
//! | dead-letter subject of a subscription | `<prefix>.d.<topic>.<subscription>` |
//! | schedule stream (work queue) | `<prefix>_S_<topic>`, subject `<prefix>.s.<topic>` |
//! | change notices of a subscription (core NATS) | `<prefix>.c.<topic>.<subscription>` |
//! | durable consumer of a subscription | `<subscription>` on the topic and dead-letter streams |
//!
//! Topic and subscription names (`[A-Za-z0-9._-]`) become tokens by replacing `.` with `~`,
//! which no name contains, so the mapping is one-to-one. The prefix holds no `_`, so stream names
//! of different prefixes, kinds and topics never collide.
//!
//! Tenant and event-type tokens come from the `cs-tenant-id`/`cs-event-type` properties: a
//! string of 1–64 characters of `[A-Za-z0-9-]` (tenant slugs, PascalCase event names) is its own
//! token; any other string is `_x` + the hex of its first 48 bytes (with a trailing `~` when
//! truncated); an absent or non-string property is `_`. Equal strings always get equal tokens, so
//! a consumer filter subject built from a string equality never drops a matching message; it may
//! let through extra ones (truncated hex), which the client-side check removes.

use std::borrow::Cow;
use std::fmt::Write as _;

use eventyard_core::properties::names;
use eventyard_core::{Filter, Properties, PropertyValue};

/// Durable name of the consumer that moves due scheduled messages (on the schedule stream).
pub(crate) const SCHEDULER: &str = "scheduler";

/// Token of a topic or subscription name: `.` becomes `~`.
pub(crate) fn name_token(name: &str) -> Cow<'_, str> {
    if name.contains('.') {
        Cow::Owned(name.replace('.', "~"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Token of a tenant or event-type property value (see the module docs).
pub(crate) fn value_token(value: Option<&PropertyValue>) -> Cow<'_, str> {
    match value {
        Some(PropertyValue::String(s)) => string_token(s),
        _ => Cow::Borrowed("_"),
    }
}

/// Token of a string value (see the module docs).
pub(crate) fn string_token(s: &str) -> Cow<'_, str> {
    const MAX_PLAIN: usize = 64;
    const MAX_HEX_BYTES: usize = 48;
    let plain = !s.is_empty()
        && s.len() <= MAX_PLAIN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let shown = &bytes[..bytes.len().min(MAX_HEX_BYTES)];
    let mut token = String::with_capacity(3 + 2 * shown.len());
    token.push_str("_x");
    for b in shown {
        let _ = write!(token, "{b:02x}");
    }
    if shown.len() < bytes.len() {
        token.push('~');
    }
    Cow::Owned(token)
}

/// The names of one transport's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (already validated: `[A-Za-z0-9-]{1,32}`).
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream holding a topic's messages.
    pub(crate) fn topic_stream(&self, topic: &str) -> String {
        format!("{}_T_{}", self.prefix, name_token(topic))
    }

    /// Stream holding the dead-letter sub-queues of a topic's subscriptions.
    pub(crate) fn dead_letter_stream(&self, topic: &str) -> String {
        format!("{}_D_{}", self.prefix, name_token(topic))
    }

    /// Stream holding a topic's scheduled messages until they are due.
    pub(crate) fn schedule_stream(&self, topic: &str) -> String {
        format!("{}_S_{}", self.prefix, name_token(topic))
    }

    /// Subjects of the topic stream.
    pub(crate) fn topic_subjects(&self, topic: &str) -> String {
        format!("{}.t.{}.>", self.prefix, name_token(topic))
    }

    /// Subjects of the dead-letter stream.
    pub(crate) fn dead_letter_subjects(&self, topic: &str) -> String {
        format!("{}.d.{}.>", self.prefix, name_token(topic))
    }

    /// Subject of the schedule stream.
    pub(crate) fn schedule_subject(&self, topic: &str) -> String {
        format!("{}.s.{}", self.prefix, name_token(topic))
    }

    /// Subject a message with these properties is published on.
    pub(crate) fn message_subject(&self, topic: &str, props: &Properties) -> String {
        format!(
            "{}.t.{}.{}.{}",
            self.prefix,
            name_token(topic),
            value_token(props.get(names::TENANT_ID)),
            value_token(props.get(names::EVENT_TYPE))
        )
    }

    /// Dead-letter subject of a subscription.
    pub(crate) fn dead_letter_subject(&self, topic: &str, subscription: &str) -> String {
        format!(
            "{}.d.{}.{}",
            self.prefix,
            name_token(topic),
            name_token(subscription)
        )
    }

    /// Core NATS subject announcing changes of a subscription to its receivers.
    pub(crate) fn control_subject(&self, topic: &str, subscription: &str) -> String {
        format!(
            "{}.c.{}.{}",
            self.prefix,
            name_token(topic),
            name_token(subscription)
        )
    }

    /// Durable consumer name of a subscription (on the topic and dead-letter streams).
    pub(crate) fn durable(&self, subscription: &str) -> String {
        name_token(subscription).into_owned()
    }

    /// The consumer filter subject for `filter`: tenant and/or event-type string equalities of
    /// the filter's [`Filter::exact_matches`] become tokens, everything else is a wildcard.
    /// Returns the subject and whether any part of the filter was applied natively.
    pub(crate) fn filter_subject(&self, topic: &str, filter: &Filter) -> (String, bool) {
        let (tenant, event_type) = native_tokens(filter);
        if tenant.is_none() && event_type.is_none() {
            return (self.topic_subjects(topic), false);
        }
        let subject = format!(
            "{}.t.{}.{}.{}",
            self.prefix,
            name_token(topic),
            tenant.as_deref().unwrap_or("*"),
            event_type.as_deref().unwrap_or("*")
        );
        (subject, true)
    }
}

/// The tenant and event-type tokens a filter pins down by string equality, if any.
fn native_tokens(filter: &Filter) -> (Option<String>, Option<String>) {
    let Some(equalities) = filter.exact_matches() else {
        return (None, None);
    };
    let mut tenant = None;
    let mut event_type = None;
    for (name, value) in &equalities {
        // Only string literals: SQL `=` compares numbers across int/float, which a token
        // cannot, and a string never equals a number.
        let PropertyValue::String(s) = value else {
            continue;
        };
        if name == names::TENANT_ID {
            tenant = Some(string_token(s).into_owned());
        } else if name == names::EVENT_TYPE {
            event_type = Some(string_token(s).into_owned());
        }
    }
    (tenant, event_type)
}

/// Does `subject` match the NATS subject `pattern` (`*` one token, `>` the rest)?
#[cfg(test)]
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A valid subject token: non-empty, no whitespace, `.`, `*` or `>`.
#[cfg(test)]
pub(crate) fn is_token(t: &str) -> bool {
    !t.is_empty()
        && !t
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(tenant: Option<PropertyValue>, event_type: Option<PropertyValue>) -> Properties {
        let mut p = Properties::new();
        if let Some(t) = tenant {
            p.insert(names::TENANT_ID, t);
        }
        if let Some(e) = event_type {
            p.insert(names::EVENT_TYPE, e);
        }
        p
    }

    #[test]
    fn names_are_tokens_and_one_to_one() {
        let n = Names::new("ey");
        assert_eq!(n.topic_stream("orders.eu"), "ey_T_orders~eu");
        assert_eq!(n.dead_letter_stream("orders"), "ey_D_orders");
        assert_eq!(n.schedule_stream("orders"), "ey_S_orders");
        assert_eq!(n.topic_subjects("orders.eu"), "ey.t.orders~eu.>");
        assert_eq!(n.dead_letter_subject("a.b", "s.1"), "ey.d.a~b.s~1");
        assert_eq!(n.durable("billing.v2"), "billing~v2");
        // `a.b` and `a~b` cannot both be names (`~` is not allowed), and `a` does not match `a~b`.
        assert!(!subject_matches(
            &n.topic_subjects("a"),
            &n.message_subject("a.b", &Properties::new())
        ));
    }

    #[test]
    fn message_subject_tokens() {
        let n = Names::new("ey");
        let p = props(Some("tenant-a".into()), Some("OrderPlaced".into()));
        assert_eq!(n.message_subject("t", &p), "ey.t.t.tenant-a.OrderPlaced");
        assert_eq!(
            n.message_subject("t", &Properties::new()),
            "ey.t.t._._",
            "raw messages without the properties"
        );
        let odd = props(Some("a.b c*>".into()), Some(PropertyValue::Int(5)));
        let subject = n.message_subject("t", &odd);
        assert_eq!(subject, "ey.t.t._x612e6220632a3e._");
        for token in subject.split('.') {
            assert!(is_token(token), "{token}");
        }
    }

    #[test]
    fn string_tokens_are_valid_and_distinguish_escapes() {
        for s in [
            "",
            "_",
            "_x00",
            "ünïcode",
            "with space",
            "x".repeat(300).as_str(),
            "a>b",
        ] {
            let t = string_token(s);
            assert!(is_token(&t), "{s:?} -> {t:?}");
            assert!(t.starts_with("_x"), "{s:?} must be escaped, got {t}");
        }
        assert_eq!(string_token("Tenant-1"), "Tenant-1");
        assert_ne!(
            string_token(""),
            value_token(None),
            "empty string vs absent"
        );
        let long_a = format!("{}a", "x".repeat(60));
        let long_b = format!("{}b", "x".repeat(60));
        assert_ne!(string_token(&long_a), string_token(&long_b));
    }

    #[test]
    fn filter_subjects() {
        let n = Names::new("ey");
        let sql = |s: &str| Filter::sql(s).expect("valid filter");
        let cases = [
            (Filter::all(), "ey.t.t.>", false),
            (sql("[cs-tenant-id] = 'acme'"), "ey.t.t.acme.*", true),
            (
                sql("[cs-event-type] = 'ArtifactCreated'"),
                "ey.t.t.*.ArtifactCreated",
                true,
            ),
            (
                sql("[cs-tenant-id] = 'acme' AND sys.Label = 'ArtifactCreated' AND x = 1"),
                "ey.t.t.acme.ArtifactCreated",
                true,
            ),
            (sql("[cs-tenant-id] = 5"), "ey.t.t.>", false),
            (sql("[cs-tenant-id] IN ('a', 'b')"), "ey.t.t.>", false),
            (sql("[cs-tenant-id] = 'a' OR x = 1"), "ey.t.t.>", false),
            (sql("x = 'a'"), "ey.t.t.>", false),
            (
                Filter::correlation([(names::TENANT_ID.to_owned(), "a b".into())]),
                "ey.t.t._x612062.*",
                true,
            ),
        ];
        for (filter, subject, native) in cases {
            assert_eq!(
                n.filter_subject("t", &filter),
                (subject.to_owned(), native),
                "{filter}"
            );
        }
    }

    /// The consumer filter subject (native) followed by `Filter::matches` (client side) selects
    /// exactly what `Filter::matches` alone selects: the subject never drops a matching message.
    #[test]
    fn native_and_client_filtering_agree() {
        let n = Names::new("ey");
        let values: Vec<Option<PropertyValue>> = vec![
            None,
            Some("a".into()),
            Some("b".into()),
            Some("".into()),
            Some("a b".into()),
            Some("x".repeat(70).into()),
            Some(format!("{}y", "x".repeat(69)).into()),
            Some(PropertyValue::Int(1)),
            Some(PropertyValue::Float(1.0)),
            Some(PropertyValue::Bool(true)),
        ];
        let long = "x".repeat(70);
        let filters = [
            "[cs-tenant-id] = 'a'",
            "[cs-tenant-id] = 'a b'",
            "[cs-tenant-id] = ''",
            &format!("[cs-tenant-id] = '{long}'"),
            "[cs-tenant-id] = 1",
            "[cs-tenant-id] = 'a' AND [cs-event-type] = 'b'",
            "[cs-event-type] = 'a' AND [cs-tenant-id] <> 'b'",
            "[cs-tenant-id] = 'a' AND [cs-tenant-id] = 'b'",
            "[cs-tenant-id] IS NULL",
            "NOT [cs-tenant-id] = 'a'",
            "TRUE",
            "1 = 1 AND [cs-event-type] = 'b'",
        ];
        for text in filters {
            let filter = Filter::sql(text).expect("valid filter");
            let (subject, _) = n.filter_subject("t", &filter);
            for tenant in &values {
                for event_type in &values {
                    let p = props(tenant.clone(), event_type.clone());
                    let client_only = filter.matches(&p);
                    let native_then_client =
                        subject_matches(&subject, &n.message_subject("t", &p)) && client_only;
                    assert_eq!(
                        native_then_client, client_only,
                        "filter `{text}` (subject {subject}) on {p:?}"
                    );
                }
            }
        }
    }
}
