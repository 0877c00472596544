//! Message properties ↔ NATS headers, with their types.
//!
//! - A property whose name is a plain header name (printable ASCII without `:`, not starting with
//!   the reserved `Nats-` or `Eventyard-`) and whose value is a string without control characters
//!   or leading/trailing whitespace travels as the header itself: `cs-tenant-id: acme`. Other
//!   tools see ordinary headers.
//! - A boolean, integer or float with a plain name travels the same way (`x-count: 42`,
//!   `x-ratio: 0.25`, shortest round-trip float text) and its name is listed in an
//!   `Eventyard-Type` header (`i:x-count`, `f:x-ratio`, `b:x-flag`), so it is read back with its
//!   type.
//! - Anything else (odd names, multi-line or padded strings) travels as one
//!   `Eventyard-Prop: ["name","s|i|f|b","value"]` header (JSON) per property.
//!
//! Headers starting with `Nats-` or `Eventyard-` are never properties. Headers from other
//! publishers become string properties.

use std::borrow::Cow;
use std::sync::LazyLock;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use eventyard_core::properties::names;
use eventyard_core::{Properties, PropertyValue};

/// Lists the names of typed (non-string) properties: `i:name`, `f:name`, `b:name`.
pub(crate) const TYPE_HEADER: &str = "Eventyard-Type";
/// One property that cannot travel as a plain header: `["name","type","value"]`.
pub(crate) const PROP_HEADER: &str = "Eventyard-Prop";
/// Scheduled delivery time (microseconds since the Unix epoch), on the schedule stream.
pub(crate) const DELIVER_AT_HEADER: &str = "Eventyard-Deliver-At";
/// Subject a scheduled message is moved to when due, on the schedule stream.
pub(crate) const TARGET_HEADER: &str = "Eventyard-Target";
/// Structured failure context (JSON) of a dead-lettered message.
pub(crate) const DEAD_LETTER_CONTEXT_HEADER: &str = "Eventyard-Dead-Letter-Context";
/// When the message was dead-lettered (RFC 3339).
pub(crate) const DEAD_LETTER_TIME_HEADER: &str = "Eventyard-Dead-Letter-Time";
/// Stream sequence of the message in the queue it was dead-lettered from.
pub(crate) const DEAD_LETTER_SEQUENCE_HEADER: &str = "Eventyard-Dead-Letter-Sequence";

fn is_reserved(name: &str) -> bool {
    let starts = |prefix: &str| {
        name.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    starts("nats-") || starts("eventyard-")
}

/// The property names every envelope carries, as header names made without parsing or
/// allocating (the name of every other property is checked and copied by the client).
static KNOWN_NAMES: [HeaderName; 11] = [
    HeaderName::from_static(names::EVENT_ID),
    HeaderName::from_static(names::EVENT_TYPE),
    HeaderName::from_static(names::TENANT_ID),
    HeaderName::from_static(names::SCHEMA_VERSION),
    HeaderName::from_static(names::TRACE_ID),
    HeaderName::from_static(names::CORRELATION_ID),
    HeaderName::from_static(names::CAUSATION_ID),
    HeaderName::from_static(names::PROJECT_ID),
    HeaderName::from_static(names::MODULE_ID),
    HeaderName::from_static(names::MESSAGE_KIND),
    HeaderName::from_static(names::REPLAYED),
];

/// An empty header map that already holds every name of [`KNOWN_NAMES`], the message id and the
/// type header, each with no value (a name without values writes nothing on the wire). Cloning
/// it gives a map sized for an envelope's headers: async-nats's `HeaderMap` cannot be presized,
/// and growing one from empty rehashes it (SipHash of every name again) twice per message.
static MESSAGE_TEMPLATE: LazyLock<HeaderMap> = LazyLock::new(|| {
    let names = KNOWN_NAMES
        .iter()
        .chain([&async_nats::header::NATS_MESSAGE_ID, &TYPE_NAME])
        .map(AsRef::<str>::as_ref);
    let empty: serde_json::Map<String, serde_json::Value> = names
        .map(|n| (n.to_owned(), serde_json::Value::Array(Vec::new())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(empty)).unwrap_or_default()
});

/// A header map for a published message (see [`MESSAGE_TEMPLATE`]).
pub(crate) fn message_map() -> HeaderMap {
    MESSAGE_TEMPLATE.clone()
}

static TYPE_NAME: HeaderName = HeaderName::from_static(TYPE_HEADER);
static EVENT_ID_NAME: HeaderName = HeaderName::from_static(names::EVENT_ID);
static PROP_NAME: HeaderName = HeaderName::from_static(PROP_HEADER);

/// Inserts `value` under the plain header name `name`.
fn insert_plain(headers: &mut HeaderMap, name: &str, value: String) {
    match KNOWN_NAMES
        .iter()
        .find(|known| AsRef::<str>::as_ref(*known) == name)
    {
        Some(known) => headers.insert(known.clone(), value),
        None => headers.insert(name, value),
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !is_reserved(name)
}

fn plain_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.is_ascii() {
        // The same rule, byte by byte: no control byte (below 0x20, or 0x7f), and the only
        // ASCII whitespace that is not a control byte, the space, at neither end.
        // Not short-circuiting: the whole scan compiles to vector compares.
        return bytes
            .iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != 0x7f))
            && bytes.first() != Some(&b' ')
            && bytes.last() != Some(&b' ');
    }
    !value.chars().any(char::is_control)
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
}

fn type_code(value: &PropertyValue) -> &'static str {
    match value {
        PropertyValue::Bool(_) => "b",
        PropertyValue::Int(_) => "i",
        PropertyValue::Float(_) => "f",
        PropertyValue::String(_) => "s",
    }
}

fn text(value: &PropertyValue) -> String {
    match value {
        PropertyValue::Bool(b) => b.to_string(),
        PropertyValue::Int(i) => i.to_string(),
        // `{:?}` is the shortest text that parses back to the same f64 (`0.25`, `1.0`, `NaN`).
        PropertyValue::Float(x) => format!("{x:?}"),
        PropertyValue::String(s) => s.clone(),
    }
}

fn parse(code: &str, text: &str) -> Option<PropertyValue> {
    Some(match code {
        "b" => PropertyValue::Bool(text.parse().ok()?),
        "i" => PropertyValue::Int(text.parse().ok()?),
        "f" => PropertyValue::Float(text.parse().ok()?),
        "s" => PropertyValue::String(text.to_owned()),
        _ => return None,
    })
}

/// Adds the headers carrying `props` to `headers`.
pub(crate) fn encode(props: &Properties, headers: &mut HeaderMap) {
    encode_where(props, headers, |_| true);
}

/// [`encode`] of the properties whose name passes `keep`.
fn encode_where(props: &Properties, headers: &mut HeaderMap, keep: impl Fn(&str) -> bool) {
    for (name, value) in props.iter().filter(|(name, _)| keep(name)) {
        let plain = plain_name(name)
            && match value {
                PropertyValue::String(s) => plain_value(s),
                _ => true,
            };
        if plain {
            if !matches!(value, PropertyValue::String(_)) {
                headers.append(TYPE_NAME.clone(), format!("{}:{name}", type_code(value)));
            }
            insert_plain(headers, name, text(value));
        } else {
            let encoded =
                serde_json::to_string(&(name, type_code(value), text(value))).unwrap_or_default();
            headers.append(PROP_NAME.clone(), encoded);
        }
    }
}

/// The headers of a message of a batch, from which those of the next messages are made when
/// they differ from it only in a few plain string values (see [`Template::make`]). Cloning a
/// map and replacing a few values costs far less than encoding every property again (hashing,
/// checks and an allocation per header); a batch usually repeats its tenant, type, schema
/// version and kind, and only the event id changes.
pub(crate) struct Template {
    /// The properties the headers carry.
    props: Properties,
    /// Their headers, except that the event id, when it is a plain string, has no value: every
    /// message sets its own, and a value in the template would be copied only to be dropped.
    headers: HeaderMap,
    /// The event id's header is left empty.
    id_slot: bool,
    /// [`wire_len`] of `headers`.
    wire: usize,
}

/// Bytes one header line takes on the wire (`name: value\r\n`).
pub(crate) fn line_len(name: &str, value: &str) -> usize {
    name.len() + 2 + value.len() + 2
}

/// Whether `value` travels as a plain header of its own (under a plain name).
fn plain_string(value: &PropertyValue) -> bool {
    matches!(value, PropertyValue::String(s) if plain_value(s))
}

impl Template {
    /// The template of messages like the one carrying `props`.
    pub(crate) fn new(props: Properties) -> Self {
        let id_slot = props.get(names::EVENT_ID).is_some_and(plain_string);
        let mut headers = message_map();
        encode_where(&props, &mut headers, |name| {
            !(id_slot && name == names::EVENT_ID)
        });
        let wire = wire_len(&headers);
        Template {
            props,
            headers,
            id_slot,
            wire,
        }
    }

    /// Whether the headers of `next` can be made from the template (see [`Template::make`]).
    fn fits(&self, next: &Properties) -> bool {
        if self.props.len() != next.len() {
            return false;
        }
        self.props
            .iter()
            .zip(next.iter())
            .all(|((name, old), (next_name, new))| {
                if name != next_name {
                    false
                } else if self.id_slot && name == names::EVENT_ID {
                    plain_string(new)
                } else {
                    old == new
                        || matches!((old, new), (PropertyValue::String(a), PropertyValue::String(b))
                            if plain_name(name) && plain_value(a) && plain_value(b))
                }
            })
    }

    /// The headers carrying `next` and their [`wire_len`], made from the template by setting
    /// the event id and replacing the values that differ, when that is all it takes: the same
    /// names in both, the event id a plain string, and every other differing value a plain
    /// string in both (so each sits in the one header named after it). The headers equal those
    /// [`encode`] gives (into a [`message_map`]). `Err(next)` otherwise: encode it from scratch.
    pub(crate) fn make(&self, next: Properties) -> Result<(HeaderMap, usize), Properties> {
        if !self.fits(&next) {
            return Err(next);
        }
        let mut headers = self.headers.clone();
        let mut wire = self.wire;
        for ((_, old), (name, new)) in self.props.iter().zip(next.into_entries()) {
            let slot = self.id_slot && name == names::EVENT_ID;
            if !slot && *old == new {
                continue;
            }
            if let PropertyValue::String(s) = new {
                wire += line_len(&name, &s);
                if let (false, PropertyValue::String(o)) = (slot, old) {
                    wire -= line_len(&name, o);
                }
                // The value is moved into the header, not copied.
                if slot {
                    headers.insert(EVENT_ID_NAME.clone(), s);
                } else {
                    insert_plain(&mut headers, &name, s);
                }
            }
        }
        debug_assert_eq!(wire, wire_len(&headers));
        Ok((headers, wire))
    }
}

/// The properties carried by `headers` (see the module docs).
///
/// Runs on every delivery: the entries are collected first and the map is built from them in
/// one go (one sort), rather than inserted one by one.
pub(crate) fn decode(headers: Option<&HeaderMap>) -> Properties {
    let Some(headers) = headers else {
        return Properties::new();
    };
    let mut entries: Vec<(Cow<'_, str>, PropertyValue)> = Vec::with_capacity(headers.len());
    let mut typed: &[HeaderValue] = &[];
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name == TYPE_HEADER {
            typed = values;
        } else if name == PROP_HEADER {
            for v in values {
                if let Ok((n, code, t)) =
                    serde_json::from_str::<(String, String, String)>(v.as_str())
                    && let Some(value) = parse(&code, &t)
                {
                    entries.push((Cow::Owned(n), value));
                }
            }
        } else if !is_reserved(name)
            && let Some(last) = values.last()
        {
            entries.push((
                Cow::Borrowed(name),
                PropertyValue::String(last.as_str().to_owned()),
            ));
        }
    }
    // A typed name's string value is read back with its type. Every entry of the name is
    // converted: of a repeated name only the last is kept, as if inserted one by one.
    for (code, name) in typed.iter().filter_map(|v| v.as_str().split_once(':')) {
        for (n, value) in entries.iter_mut() {
            if n.as_ref() == name
                && let PropertyValue::String(t) = value
                && let Some(typed_value) = parse(code, t)
            {
                *value = typed_value;
            }
        }
    }
    entries.into_iter().collect()
}

/// Bytes the headers take on the wire (as the server counts them against `max_payload`).
pub(crate) fn wire_len(headers: &HeaderMap) -> usize {
    let mut len = b"NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for v in values {
            len += line_len(name, v.as_str());
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers' names and values in a stable order (empty names write nothing).
    fn lines(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = h
            .iter()
            .flat_map(|(n, vs)| {
                vs.iter()
                    .map(move |x| (AsRef::<str>::as_ref(n).to_owned(), x.as_str().to_owned()))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_message_template_adds_nothing_to_the_wire() {
        assert!(
            message_map().len() >= KNOWN_NAMES.len() + 2,
            "template parsed"
        );
        let mut props = Properties::new();
        props.insert(names::EVENT_ID, "e-1");
        props.insert(names::TENANT_ID, "acme");
        props.insert("x-count", 3_i64);
        props.insert("odd name", "v");
        let (mut fresh, mut templated) = (HeaderMap::new(), message_map());
        for h in [&mut fresh, &mut templated] {
            encode(&props, h);
            h.insert(async_nats::header::NATS_MESSAGE_ID, "e-1");
        }
        assert_eq!(lines(&fresh), lines(&templated));
        assert_eq!(wire_len(&fresh), wire_len(&templated));
        assert_eq!(decode(Some(&templated)), props);
    }

    #[test]
    fn templated_headers_equal_a_fresh_encoding_or_are_refused() {
        let props = |pairs: &[(&str, PropertyValue)]| -> Properties {
            pairs.iter().map(|(n, v)| (*n, v.clone())).collect()
        };
        let s = |v: &str| PropertyValue::String(v.into());
        let base = props(&[
            (names::EVENT_ID, s("e-1")),
            (names::TENANT_ID, s("acme")),
            ("x-count", PropertyValue::Int(3)),
            ("odd name", s("v")),
            ("padded", s("p")),
        ]);
        let fresh = |p: &Properties| {
            let mut h = message_map();
            encode(p, &mut h);
            h
        };
        let template = Template::new(base.clone());
        assert!(template.id_slot);
        assert_eq!(template.wire, wire_len(&template.headers));
        // Plain strings that differ, and the event id: set in place.
        for next in [
            base.clone(),
            props(&[
                (names::EVENT_ID, s("e-2")),
                (names::TENANT_ID, s("other")),
                ("x-count", PropertyValue::Int(3)),
                ("odd name", s("v")),
                ("padded", s("q")),
            ]),
            props(&[
                (
                    names::EVENT_ID,
                    s("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00 long"),
                ),
                (names::TENANT_ID, s("a")),
                ("x-count", PropertyValue::Int(3)),
                ("odd name", s("v")),
                ("padded", s("p")),
            ]),
        ] {
            let Ok((made, wire)) = template.make(next.clone()) else {
                panic!("templated: {next:?}");
            };
            assert_eq!(lines(&made), lines(&fresh(&next)));
            assert_eq!(made, fresh(&next));
            assert_eq!(wire, wire_len(&made));
            assert_eq!(decode(Some(&made)), next);
        }
        // Anything else: refused, and handed back.
        let with = |name: &str, value: PropertyValue| {
            let mut p = base.clone();
            p.insert(names::EVENT_ID, s("e-2"));
            p.insert(name, value);
            p
        };
        let mut renamed = with(names::TRACE_ID, s("acme"));
        renamed.remove(names::TENANT_ID);
        for next in [
            props(&[(names::EVENT_ID, s("e-2"))]),
            with("x-count", PropertyValue::Int(4)),
            with("odd name", s("w")),
            with("padded", s(" p ")),
            with("x-count", s("3")),
            with(names::EVENT_ID, s("e-2\n")),
            with(names::EVENT_ID, PropertyValue::Int(2)),
            renamed,
        ] {
            match template.make(next.clone()) {
                Err(back) => assert_eq!(back, next),
                Ok(_) => panic!("templated: {next:?}"),
            }
        }
        // A template whose event id is absent or not plain has no slot for it; one that is
        // not plain must then repeat exactly.
        for id in [None, Some(s(" e-1"))] {
            let mut base = base.clone();
            match &id {
                Some(v) => base.insert(names::EVENT_ID, v.clone()),
                None => base.remove(names::EVENT_ID),
            };
            let template = Template::new(base.clone());
            assert!(!template.id_slot);
            let mut next = base.clone();
            next.insert(names::TENANT_ID, "other");
            let (made, wire) = template.make(next.clone()).expect("templated");
            assert_eq!(made, fresh(&next));
            assert_eq!(wire, wire_len(&made));
            if id.is_some() {
                next.insert(names::EVENT_ID, "e-2");
                assert!(template.make(next).is_err());
            }
        }
    }

    #[test]
    fn plain_values_by_bytes_as_by_chars() {
        let by_chars = |v: &str| {
            !v.chars().any(char::is_control)
                && !v.starts_with(char::is_whitespace)
                && !v.ends_with(char::is_whitespace)
        };
        let mut values: Vec<String> = (0..0x300u32)
            .chain([0x1680, 0x2000, 0x2028, 0x3000, 0xfeff])
            .filter_map(char::from_u32)
            .flat_map(|c| {
                [
                    format!("{c}"),
                    format!("a{c}"),
                    format!("{c}b"),
                    format!("a{c}b"),
                ]
            })
            .collect();
        values.extend(["", " ", "acme", "evt-0190b6a2", "a b", "\u{85}x"].map(String::from));
        for v in &values {
            assert_eq!(plain_value(v), by_chars(v), "{v:?}");
        }
    }

    fn round_trip(props: &Properties) -> Properties {
        let mut headers = HeaderMap::new();
        encode(props, &mut headers);
        // Through the wire format, as the server and the client parser see it.
        let bytes = headers_to_wire(&headers);
        assert_eq!(bytes.len(), wire_len(&headers));
        decode(Some(&parse_wire(&bytes)))
    }

    fn headers_to_wire(headers: &HeaderMap) -> Vec<u8> {
        let mut out = b"NATS/1.0\r\n".to_vec();
        for (name, values) in headers.iter() {
            for v in values {
                out.extend_from_slice(AsRef::<[u8]>::as_ref(name));
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_str().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Mirrors async-nats's header parser (values trimmed, lines split on line breaks).
    fn parse_wire(bytes: &[u8]) -> HeaderMap {
        let text = std::str::from_utf8(bytes).expect("utf-8");
        let mut headers = HeaderMap::new();
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').expect("name: value");
            headers.append(name, value.trim());
        }
        headers
    }

    #[test]
    fn typed_properties_round_trip() {
        let mut p = Properties::new();
        p.insert("cs-tenant-id", "acme");
        p.insert("cs-schema-version", 3_i64);
        p.insert("x-count", -42_i64);
        p.insert("x-big", i64::MAX);
        p.insert("x-ratio", 0.25_f64);
        p.insert("x-whole-float", 1.0_f64);
        p.insert("x-tiny", 1e-300_f64);
        p.insert("x-inf", f64::INFINITY);
        p.insert("x-flag", true);
        p.insert("x-false", false);
        p.insert("x-text", "naïve ✓");
        p.insert("x-number-like", "42");
        p.insert("x-bool-like", "true");
        p.insert("x-empty", "");
        p.insert("x-padded", "  spaces  ");
        p.insert("x-lines", "one\r\ntwo\nthree");
        p.insert("x-tab", "a\tb");
        p.insert("odd name: ü", "v");
        p.insert("Nats-Msg-Id", "not the real one");
        p.insert("eventyard-type", 7_i64);
        p.insert("x-json", "[\"x\",\"i\",\"1\"]");
        assert_eq!(round_trip(&p), p);
    }

    #[test]
    fn plain_strings_are_plain_headers() {
        let mut p = Properties::new();
        p.insert("cs-tenant-id", "acme");
        p.insert("x-count", 5_i64);
        let mut headers = HeaderMap::new();
        encode(&p, &mut headers);
        assert_eq!(
            headers.get("cs-tenant-id").map(|v| v.as_str()),
            Some("acme")
        );
        assert_eq!(headers.get("x-count").map(|v| v.as_str()), Some("5"));
        assert_eq!(
            headers.get(TYPE_HEADER).map(|v| v.as_str()),
            Some("i:x-count")
        );
        assert!(headers.get(PROP_HEADER).is_none());
    }

    #[test]
    fn nan_round_trips_as_nan() {
        let mut p = Properties::new();
        p.insert("x", f64::NAN);
        match round_trip(&p).get("x") {
            Some(PropertyValue::Float(x)) => assert!(x.is_nan()),
            other => panic!("expected NaN, got {other:?}"),
        }
    }

    /// The former decoding, property by property: [`decode`] must agree with it.
    fn decode_by_insertion(headers: &HeaderMap) -> Properties {
        let mut props = Properties::new();
        let mut typed: Vec<(&str, &str)> = Vec::new();
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name == TYPE_HEADER {
                typed.extend(values.iter().filter_map(|v| v.as_str().split_once(':')));
            } else if name == PROP_HEADER {
                for v in values {
                    if let Ok((n, code, t)) =
                        serde_json::from_str::<(String, String, String)>(v.as_str())
                        && let Some(value) = parse(&code, &t)
                    {
                        props.insert(n, value);
                    }
                }
            } else if !is_reserved(name)
                && let Some(last) = values.last()
            {
                props.insert(name, last.as_str());
            }
        }
        for (code, name) in typed {
            if let Some(PropertyValue::String(t)) = props.get(name)
                && let Some(value) = parse(code, t)
            {
                props.insert(name, value);
            }
        }
        props
    }

    #[test]
    fn decoding_agrees_with_inserting_one_by_one() {
        let mut h = HeaderMap::new();
        h.insert(names::EVENT_ID, "e-1");
        h.insert(names::TENANT_ID, "acme");
        h.insert(names::SCHEMA_VERSION, "3");
        h.insert("x-a", "1.5");
        h.insert("x-b", "not a number");
        h.insert("x-c", "true");
        h.append("x-multi", "first");
        h.append("x-multi", "last");
        h.insert("Nats-Msg-Id", "e-1");
        h.append(TYPE_HEADER, format!("i:{}", names::SCHEMA_VERSION));
        h.append(TYPE_HEADER, "f:x-a");
        h.append(TYPE_HEADER, "i:x-a");
        h.append(TYPE_HEADER, "i:x-b");
        h.append(TYPE_HEADER, "b:x-c");
        h.append(TYPE_HEADER, "i:absent");
        h.append(TYPE_HEADER, "no colon");
        h.append(PROP_HEADER, r#"["odd name","s"," v "]"#);
        h.append(PROP_HEADER, r#"["x-typed","i","7"]"#);
        h.append(PROP_HEADER, r#"["x-bad","q","7"]"#);
        let p = decode(Some(&h));
        assert_eq!(p, decode_by_insertion(&h));
        assert_eq!(p.get(names::SCHEMA_VERSION), Some(&PropertyValue::Int(3)));
        assert_eq!(p.get("x-a"), Some(&PropertyValue::Float(1.5)));
        assert_eq!(p.get_str("x-multi"), Some("last"));
        assert_eq!(p.len(), 9, "{p:?}");
        assert_eq!(decode(Some(&HeaderMap::new())), Properties::new());
    }

    #[test]
    fn foreign_and_reserved_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "abc");
        headers.insert("Eventyard-Deliver-At", "1");
        headers.insert("X-Foreign", "value");
        headers.append(TYPE_HEADER, "i:X-Foreign");
        headers.append(PROP_HEADER, "not json");
        let p = decode(Some(&headers));
        assert_eq!(p.len(), 1, "{p:?}");
        // A type marker that does not parse leaves the string.
        assert_eq!(p.get_str("X-Foreign"), Some("value"));
        assert!(decode(None).is_empty());
    }
}
