//! Identifier newtypes of the canonical envelope, each validated on construction.
//!
//! | type | form |
//! |---|---|
//! | [`EventId`] | `evt-<uuid>`; generated ids are UUIDv7 (time-ordered) |
//! | [`TenantId`] | slug: lowercase letters, digits and `-`, 1–63 chars, no leading/trailing `-` |
//! | [`ProjectId`] | `proj-<token>` |
//! | [`ModuleId`] | `module-<token>` |
//! | [`TraceId`] | `trace-<token>` |
//! | [`CorrelationId`] | `corr-<token>` |
//!
//! A `<token>` is 1–128 characters from `[A-Za-z0-9._-]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;

/// The bytes a token may hold, `[A-Za-z0-9._-]`, as a table (checked for every id of every
/// message received: one load per byte instead of a chain of range tests).
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        i += 1;
    }
    table
};

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| TOKEN_BYTES[usize::from(b)])
}

fn check_prefixed(kind: &'static str, prefix: &'static str, value: &str) -> Result<(), IdError> {
    match value.strip_prefix(prefix) {
        Some(rest) if is_token(rest) => Ok(()),
        _ => Err(IdError {
            kind,
            value: value.to_owned(),
            expected: match prefix {
                "proj-" => "`proj-` followed by 1-128 of [A-Za-z0-9._-]",
                "module-" => "`module-` followed by 1-128 of [A-Za-z0-9._-]",
                "trace-" => "`trace-` followed by 1-128 of [A-Za-z0-9._-]",
                "corr-" => "`corr-` followed by 1-128 of [A-Za-z0-9._-]",
                _ => "a prefixed token",
            },
        }),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(&value)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Unique id of one event instance: `evt-<uuid>`.
    EventId,
    "eventId",
    |v| match v.strip_prefix("evt-").map(uuid::Uuid::try_parse) {
        Some(Ok(_)) => Ok(()),
        _ => Err(IdError {
            kind: "eventId",
            value: v.to_owned(),
            expected: "`evt-` followed by a UUID (e.g. evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00)",
        }),
    }
);
id_type!(
    /// Tenant isolation key: a slug such as `connectsoft`.
    TenantId,
    "tenantId",
    |v| {
        let b = v.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if ok {
            Ok(())
        } else {
            Err(IdError {
                kind: "tenantId",
                value: v.to_owned(),
                expected: "a slug: 1-63 of [a-z0-9-], not starting or ending with `-`",
            })
        }
    }
);
id_type!(
    /// Project id: `proj-*`.
    ProjectId,
    "projectId",
    |v| check_prefixed("projectId", "proj-", v)
);
id_type!(
    /// Module id: `module-*`.
    ModuleId,
    "moduleId",
    |v| check_prefixed("moduleId", "module-", v)
);
id_type!(
    /// Lifecycle id shared by every event from intent to runtime: `trace-*`.
    TraceId,
    "traceId",
    |v| check_prefixed("traceId", "trace-", v)
);
id_type!(
    /// Workflow id; sagas key on it: `corr-*`.
    CorrelationId,
    "correlationId",
    |v| check_prefixed("correlationId", "corr-", v)
);

/// `prefix` followed by a fresh UUIDv7 in its hyphenated lowercase form (as `Display` writes
/// it), built in one allocation: ids are generated for every published message, and
/// `format!` (through the formatting machinery, with an intermediate `String`) cost more
/// than the UUID itself.
fn prefixed_uuid7(prefix: &str) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    let mut id = String::with_capacity(prefix.len() + text.len());
    id.push_str(prefix);
    id.push_str(text);
    id
}

impl EventId {
    /// A fresh, time-ordered id (`evt-<uuidv7>`).
    pub fn generate() -> Self {
        Self(prefixed_uuid7("evt-"))
    }
}

impl TraceId {
    /// A fresh trace id (`trace-<uuidv7>`).
    pub fn generate() -> Self {
        Self(prefixed_uuid7("trace-"))
    }
}

impl CorrelationId {
    /// A fresh correlation id (`corr-<uuidv7>`).
    pub fn generate() -> Self {
        Self(prefixed_uuid7("corr-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        let id = EventId::generate();
        assert!(EventId::parse(id.as_str()).is_ok());
        assert!(EventId::parse("evt-not-a-uuid").is_err());
        assert!(EventId::parse("0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00").is_err());
        let err = EventId::parse("e-1").unwrap_err();
        assert_eq!(err.kind, "eventId");
        assert!(err.to_string().contains("e-1"), "{err}");
    }

    #[test]
    fn generated_ids_have_the_display_form_of_their_uuid() {
        for (id, prefix) in [
            (EventId::generate().0, "evt-"),
            (TraceId::generate().0, "trace-"),
            (CorrelationId::generate().0, "corr-"),
        ] {
            let rest = id.strip_prefix(prefix).expect(prefix);
            let uuid = uuid::Uuid::parse_str(rest).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(format!("{prefix}{uuid}"), id);
            assert_eq!(id.capacity(), id.len(), "one exact allocation");
        }
    }

    #[test]
    fn generated_event_ids_are_time_ordered() {
        let a = EventId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = EventId::generate();
        assert!(a < b);
    }

    #[test]
    fn tenant_slugs() {
        for ok in ["connectsoft", "acme-2", "a"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "ac me",
            "acme_1",
            &"a".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixed_ids() {
        assert!(ProjectId::parse("proj-booking-saas").is_ok());
        assert!(ProjectId::parse("booking-saas").is_err());
        assert!(ProjectId::parse("proj-").is_err());
        assert!(ModuleId::parse("module-reservations-api").is_ok());
        assert!(TraceId::parse("trace-1").is_ok());
        assert!(TraceId::parse("trace-a b").is_err());
        assert!(CorrelationId::parse("corr-x").is_ok());
        assert!(CorrelationId::parse("cor-x").is_err());
    }
}
