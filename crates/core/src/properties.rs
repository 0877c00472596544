//! Broker application properties (`cs-*`) carried beside every message.
//!
//! Subscription filters are evaluated over these properties only — never over the payload — so a
//! transport can apply them natively (header bindings, subject filters, Service Bus rules) or in
//! the client with the same results.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Reserved property names. Every transport carries these on every message.
pub mod names {
    /// The envelope's `eventType` (seed).
    pub const EVENT_TYPE: &str = "cs-event-type";
    /// The envelope's `tenantId` (seed).
    pub const TENANT_ID: &str = "cs-tenant-id";
    /// The envelope's `schemaVersion`, an integer (seed).
    pub const SCHEMA_VERSION: &str = "cs-schema-version";
    /// The envelope's `traceId` (seed).
    pub const TRACE_ID: &str = "cs-trace-id";
    /// The envelope's `correlationId` (eventyard extension).
    pub const CORRELATION_ID: &str = "cs-correlation-id";
    /// The envelope's `causationId`; absent for a root event (eventyard extension).
    pub const CAUSATION_ID: &str = "cs-causation-id";
    /// The envelope's `eventId` (eventyard extension).
    pub const EVENT_ID: &str = "cs-event-id";
    /// The envelope's `projectId`, when present (eventyard extension).
    pub const PROJECT_ID: &str = "cs-project-id";
    /// The envelope's `moduleId`, when present (eventyard extension).
    pub const MODULE_ID: &str = "cs-module-id";
    /// `event` or `command` (eventyard extension).
    pub const MESSAGE_KIND: &str = "cs-message-kind";
    /// Set on a message re-driven from a dead-letter queue or archive (eventyard extension).
    pub const REPLAYED: &str = "cs-replayed";
    /// Dead-letter reason, set by the transport on dead-lettered messages.
    pub const DEAD_LETTER_REASON: &str = "cs-dead-letter-reason";
    /// Dead-letter description (the error message chain), set on dead-lettered messages.
    pub const DEAD_LETTER_DESCRIPTION: &str = "cs-dead-letter-description";
    /// Subscription a dead-lettered message came from.
    pub const DEAD_LETTER_SOURCE: &str = "cs-dead-letter-source";
    /// Envelope header properties are carried with this prefix (`cs-h-<name>`).
    pub const HEADER_PREFIX: &str = "cs-h-";
}

/// A property value: the scalar types Service Bus filters compare.
///
/// In JSON it is the bare scalar. Decoding takes each JSON scalar as what it is (integers that
/// fit `i64` are `Int`, other numbers `Float`); anything else is an error. (Hand-written: the
/// derived untagged decoder buffered every value and built a formatted error for each variant it
/// rejected, which dominated the decoding of stored properties.)
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    String(String),
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, number or string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(i64::try_from(v).map_or(PropertyValue::Float(v as f64), PropertyValue::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<PropertyValue, E> {
                Ok(PropertyValue::String(v))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Bool(b) => write!(f, "{b}"),
            PropertyValue::Int(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::String(s) => f.write_str(s),
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(v: &str) -> Self {
        PropertyValue::String(v.to_owned())
    }
}
impl From<String> for PropertyValue {
    fn from(v: String) -> Self {
        PropertyValue::String(v)
    }
}
impl From<i64> for PropertyValue {
    fn from(v: i64) -> Self {
        PropertyValue::Int(v)
    }
}
impl From<u32> for PropertyValue {
    fn from(v: u32) -> Self {
        PropertyValue::Int(i64::from(v))
    }
}
impl From<bool> for PropertyValue {
    fn from(v: bool) -> Self {
        PropertyValue::Bool(v)
    }
}
impl From<f64> for PropertyValue {
    fn from(v: f64) -> Self {
        PropertyValue::Float(v)
    }
}

/// An ordered map of application properties.
///
/// Reserved names (see [`names`]) are stored as static strings, not allocated per message: a
/// message carries about ten of them, and they are built on every publish and decoded on every
/// receive. The entries are kept in one vector sorted by name (a message has a dozen or so):
/// one allocation per map, lookups by binary search, and building from sorted entries is a
/// copy.
#[derive(Clone, Default, PartialEq)]
pub struct Properties(Vec<(Cow<'static, str>, PropertyValue)>);

/// Every reserved name, for [`key`].
const RESERVED: [&str; 14] = [
    names::EVENT_TYPE,
    names::TENANT_ID,
    names::SCHEMA_VERSION,
    names::TRACE_ID,
    names::CORRELATION_ID,
    names::CAUSATION_ID,
    names::EVENT_ID,
    names::PROJECT_ID,
    names::MODULE_ID,
    names::MESSAGE_KIND,
    names::REPLAYED,
    names::DEAD_LETTER_REASON,
    names::DEAD_LETTER_DESCRIPTION,
    names::DEAD_LETTER_SOURCE,
];

/// A map key: the static reserved name equal to `name`, or an owned copy.
fn key(name: &str) -> Cow<'static, str> {
    match RESERVED
        .iter()
        .find(|r| r.len() == name.len() && **r == name)
    {
        Some(r) => Cow::Borrowed(r),
        None => Cow::Owned(name.to_owned()),
    }
}

/// As a map: `Properties({"name": value, ...})`.
impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entries<'a>(&'a Properties);
        impl fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.0.iter().map(|(k, v)| (k, v)))
                    .finish()
            }
        }
        f.debug_tuple("Properties").field(&Entries(self)).finish()
    }
}

/// As a JSON object, in name order.
impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A key decoded straight into [`key`], without an intermediate `String`.
        struct Key(Cow<'static, str>);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a property name")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                        Ok(Key(key(v)))
                    }
                }
                d.deserialize_str(V)
            }
        }
        struct Map;
        impl<'de> serde::de::Visitor<'de> for Map {
            type Value = Properties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of property names to scalars")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Properties, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while let Some((Key(k), v)) = m.next_entry::<Key, PropertyValue>()? {
                    out.push((k, v));
                }
                Ok(Properties::from_entries(out))
            }
        }
        d.deserialize_map(Map)
    }
}

impl Properties {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `name` is, or where it would be inserted.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    /// Looks a property up by exact name.
    pub fn get(&self, name: &str) -> Option<&PropertyValue> {
        if self.0.len() <= 16 {
            // A message's dozen properties: comparing lengths first rules most names out
            // without a byte comparison, cheaper than the ordered comparisons of a search.
            return self
                .0
                .iter()
                .find(|(k, _)| k.len() == name.len() && k.as_ref() == name)
                .map(|(_, v)| v);
        }
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Looks a string property up; `None` if absent or not a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(PropertyValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Sets a property, returning the previous value.
    pub fn insert(
        &mut self,
        name: impl AsRef<str>,
        value: impl Into<PropertyValue>,
    ) -> Option<PropertyValue> {
        let name = name.as_ref();
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value.into())),
            Err(i) => {
                self.0.insert(i, (key(name), value.into()));
                None
            }
        }
    }

    /// Removes a property.
    pub fn remove(&mut self, name: &str) -> Option<PropertyValue> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    /// Iterates in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PropertyValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Consumes the map into its entries, in name order (reserved names borrowed, as [`key`]
    /// gives them), so that their values can be moved rather than copied.
    pub fn into_entries(self) -> impl Iterator<Item = (Cow<'static, str>, PropertyValue)> {
        self.0.into_iter()
    }

    /// Builds the map from entries whose names are already what [`key`] gives (reserved names
    /// borrowed). In any order; fastest in name order. A repeated name keeps its last value.
    pub(crate) fn from_entries(mut entries: Vec<(Cow<'static, str>, PropertyValue)>) -> Self {
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable: the values of a repeated name stay in their order, and each one
            // removed hands its value to the entry kept, so the last value wins.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
        Properties(entries)
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no properties.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: AsRef<str>, V: Into<PropertyValue>> FromIterator<(K, V)> for Properties {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Properties::from_entries(
            iter.into_iter()
                .map(|(k, v)| (key(k.as_ref()), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_static_and_others_owned_through_every_entry_point() {
        let json = r#"{"cs-event-id":"e1","cs-h-x":"h","custom\"name":2,"flag":true}"#;
        let mut p: Properties = serde_json::from_str(json).unwrap();
        p.insert(names::TENANT_ID, "acme");
        p.insert(String::from("later"), 1.5);
        let kinds: Vec<(&str, bool)> =
            p.0.iter()
                .map(|(k, _)| (k.as_ref(), matches!(k, Cow::Borrowed(_))))
                .collect();
        assert_eq!(
            kinds,
            [
                ("cs-event-id", true),
                ("cs-h-x", false),
                ("cs-tenant-id", true),
                ("custom\"name", false),
                ("flag", false),
                ("later", false),
            ]
        );
        assert_eq!(p.get_str("cs-event-id"), Some("e1"));
        assert_eq!(p.get("custom\"name"), Some(&PropertyValue::Int(2)));
        let back: Properties = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<Properties>(r#"{"a":[1]}"#).is_err());
        assert!(serde_json::from_str::<Properties>(r#"["a"]"#).is_err());
    }

    /// The map behaves as the `BTreeMap` it replaced: same entries, order, last value wins,
    /// same JSON and `Debug` text.
    mod as_a_btree_map {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        fn value() -> impl Strategy<Value = PropertyValue> {
            prop_oneof![
                any::<bool>().prop_map(PropertyValue::Bool),
                any::<i64>().prop_map(PropertyValue::Int),
                (-1e9..1e9f64).prop_map(PropertyValue::Float),
                "[a-z ]{0,6}".prop_map(PropertyValue::String),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(RESERVED.to_vec()).prop_map(str::to_owned),
                "[a-z-]{0,4}",
            ]
        }

        #[derive(Debug, Clone)]
        enum Op {
            Insert(String, PropertyValue),
            Remove(String),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (name(), value()).prop_map(|(n, v)| Op::Insert(n, v)),
                1 => name().prop_map(Op::Remove),
            ]
        }

        fn same(p: &Properties, m: &BTreeMap<String, PropertyValue>) {
            let entries: Vec<(&str, &PropertyValue)> = p.iter().collect();
            let expected: Vec<(&str, &PropertyValue)> =
                m.iter().map(|(k, v)| (k.as_str(), v)).collect();
            assert_eq!(entries, expected);
            assert_eq!(p.len(), m.len());
            assert_eq!(
                serde_json::to_string(p).unwrap(),
                serde_json::to_string(m).unwrap()
            );
            let debug = format!("{m:?}");
            assert_eq!(format!("{p:?}"), format!("Properties({debug})"));
            assert_eq!(
                format!("{p:#?}"),
                format!(
                    "Properties(\n    {},\n)",
                    format!("{m:#?}").replace('\n', "\n    ")
                )
            );
            for k in m.keys() {
                assert_eq!(p.get(k), m.get(k));
            }
            let back: Properties =
                serde_json::from_str(&serde_json::to_string(p).unwrap()).unwrap();
            assert_eq!(back.iter().count(), p.len());
        }

        proptest! {
            #[test]
            fn operations_match(ops in prop::collection::vec(op(), 0..40)) {
                let mut p = Properties::new();
                let mut m = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Insert(n, v) => {
                            prop_assert_eq!(p.insert(&n, v.clone()), m.insert(n, v));
                        }
                        Op::Remove(n) => prop_assert_eq!(p.remove(&n), m.remove(&n)),
                    }
                    same(&p, &m);
                }
                let rebuilt: Properties = m.clone().into_iter().collect();
                prop_assert_eq!(&rebuilt, &p);
                let moved: Vec<(String, PropertyValue)> =
                    p.into_entries().map(|(k, v)| (k.into_owned(), v)).collect();
                prop_assert_eq!(moved, m.into_iter().collect::<Vec<_>>());
            }

            #[test]
            fn building_from_entries_in_any_order_keeps_the_last_value(
                pairs in prop::collection::vec((name(), value()), 0..30)
            ) {
                let mut m = BTreeMap::new();
                for (n, v) in &pairs {
                    m.insert(n.clone(), v.clone());
                }
                let p: Properties = pairs.iter().cloned().collect();
                same(&p, &m);
                let entries = pairs.into_iter().map(|(n, v)| (key(&n), v)).collect();
                prop_assert_eq!(Properties::from_entries(entries), p);
            }
        }
    }
}
