//! `Envelope::to_json` writes its JSON by hand: it must give exactly the bytes of the derived
//! `Serialize` (`serde_json::to_vec`) and read back with `Envelope::from_json`.

use chrono::{DateTime, TimeZone, Utc};
use eventyard_core::{
    CorrelationId, Envelope, EnvelopeError, EventId, EventType, ModuleId, ProjectId, TenantId,
    TraceId,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn base(payload: Value) -> Envelope {
    Envelope::new(
        EventType::event("OrderPlaced").unwrap(),
        TenantId::parse("acme").unwrap(),
        payload,
    )
}

/// Same bytes as serde_json's, and a round trip through `from_json`.
fn check(env: &Envelope) {
    let ours = env.to_json();
    let reference = serde_json::to_vec(env).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&reference)
    );
    assert_eq!(&Envelope::from_json(&ours).unwrap(), env);
}

/// Strings that need escaping, or look as if they might.
const TRICKY: &[&str] = &[
    "",
    "plain",
    "quote \" inside",
    "back\\slash",
    "\\\"",
    "new\nline\r\ttab",
    "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}",
    "\u{7f} delete",
    "ünïcödé and emoji 🦀",
    "\u{2028}\u{2029} separators",
    "</script>",
    "{\"json\":\"inside\"}",
];

#[test]
fn tricky_headers_and_payload_match_serde_json() {
    for s in TRICKY {
        let env = base(json!({ "text": s, (*s): [s, 1, -2.5, 1e300, null, true, {"k": s}] }))
            .with_header(*s, *s)
            .with_header("messageKind", "command");
        check(&env);
    }
}

#[test]
fn every_optional_field_matches_serde_json() {
    let cause = base(json!({}));
    let env = base(json!({"nested": {"a": [1, 2, {"b": null}]}, "n": 12345678901234567890u64}))
        .with_project(ProjectId::parse("proj-a.b_c-1").unwrap())
        .with_module(ModuleId::parse("module-x").unwrap())
        .with_trace(TraceId::parse("trace-1").unwrap())
        .with_correlation(CorrelationId::parse("corr-2").unwrap());
    let mut child = env.clone();
    child.inherit_from(&cause);
    child.event_id = EventId::generate();
    child.schema_version = u32::MAX;
    check(&env);
    check(&child);
    child.schema_version = 7;
    child.payload = json!({});
    check(&child);
}

#[test]
fn times_match_chrono_auto_si() {
    let at = |nanos: u32| Utc.timestamp_opt(1_700_000_000, nanos).unwrap();
    let times: Vec<DateTime<Utc>> = vec![
        at(0),
        at(1),
        at(10),
        at(1_000),
        at(120_000),
        at(1_000_000),
        at(999_000_000),
        at(999_999_999),
        at(500_000_001),
        Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
        // A leap second: chrono keeps it as a nanosecond count of one second or more.
        Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap(),
        Utc::now(),
    ];
    for t in times {
        let mut env = base(json!({}));
        env.occurred_at = t;
        let ours = env.to_json();
        assert_eq!(ours, serde_json::to_vec(&env).unwrap(), "{t:?}");
        if (0..=9999).contains(&chrono::Datelike::year(&t))
            && chrono::Timelike::nanosecond(&t) < 1_000_000_000
        {
            assert_eq!(&Envelope::from_json(&ours).unwrap(), &env, "{t:?}");
        }
    }
}

proptest! {
    #[test]
    fn any_strings_match_serde_json(
        name in any::<String>(),
        value in any::<String>(),
        data in any::<String>(),
        secs in 0i64..253_402_300_799,
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000, (0u32..1_000).prop_map(|m| m * 1_000_000)],
    ) {
        let mut env = base(json!({ "data": data, (name.clone()): value }))
            .with_header(name, value);
        env.occurred_at = Utc.timestamp_opt(secs, nanos).unwrap();
        prop_assert_eq!(env.to_json(), serde_json::to_vec(&env).unwrap());
        prop_assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }
}

/// Any JSON value: scalars of every kind, nested arrays and objects.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_payload_matches_serde_json(value in any_json()) {
        let env = base(json!({ "v": value }));
        let ours = env.to_json();
        prop_assert_eq!(&ours, &serde_json::to_vec(&env).unwrap());
        prop_assert!(Envelope::from_json(&ours).is_ok());
    }
}

#[test]
fn properties_carry_every_field_and_header() {
    use eventyard_core::Properties;
    use eventyard_core::properties::names;
    let cause = base(json!({}));
    let mut env = base(json!({}))
        .with_project(ProjectId::parse("proj-p").unwrap())
        .with_module(ModuleId::parse("module-m").unwrap())
        .with_header("a", "1")
        .with_header("zz", "2")
        .with_header("messageKind", "event");
    env.inherit_from(&cause);
    let mut expected = Properties::new();
    expected.insert(names::EVENT_ID, env.event_id.as_str());
    expected.insert(names::EVENT_TYPE, env.event_type.as_str());
    expected.insert(names::TENANT_ID, env.tenant_id.as_str());
    expected.insert(names::SCHEMA_VERSION, env.schema_version);
    expected.insert(names::TRACE_ID, env.trace_id.as_str());
    expected.insert(names::CORRELATION_ID, env.correlation_id.as_str());
    expected.insert(names::CAUSATION_ID, cause.event_id.as_str());
    expected.insert(names::PROJECT_ID, "proj-p");
    expected.insert(names::MODULE_ID, "module-m");
    expected.insert(names::MESSAGE_KIND, "event");
    expected.insert("cs-h-a", "1");
    expected.insert("cs-h-zz", "2");
    assert_eq!(env.properties(), expected);
    let props = env.properties();
    let names: Vec<&str> = props.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let root = base(json!({}));
    let p = root.properties();
    assert_eq!(p.len(), 7);
    assert_eq!(p.get(names::CAUSATION_ID), None);
    assert_eq!(p.get_str(names::MESSAGE_KIND), Some("event"));
}

/// `from_json` checks the bytes are UTF-8 before parsing them as text: a bad byte anywhere (in a
/// string value, a key, between tokens) is `InvalidUtf8` at its offset, never a JSON error, and
/// non-ASCII text and escapes still read back exactly.
#[test]
fn invalid_utf8_is_reported_at_its_offset() {
    let env = base(json!({ "text": "ünïcödé 🦀 \u{2028} \"q\" \\ \n" }))
        .with_header("note", "grüße \u{1f}");
    let json = env.to_json();
    assert_eq!(Envelope::from_json(&json).unwrap(), env);
    let text = String::from_utf8(json.clone()).unwrap();
    for marker in ["ünïcödé", "grüße", "\"payload\"", "{\"eventId\""] {
        let at = text.find(marker).unwrap();
        for bad in [
            &[0xff_u8][..],
            &[0xc3],
            &[0xed, 0xa0, 0x80],
            &[0xf0, 0x9f, 0xa6],
        ] {
            let mut bytes = json.clone();
            bytes.splice(at..at, bad.iter().copied());
            match Envelope::from_json(&bytes) {
                Err(EnvelopeError::InvalidUtf8 { offset }) => {
                    assert_eq!(offset, at, "{marker} {bad:x?}")
                }
                other => panic!("{marker} {bad:x?}: {other:?}"),
            }
        }
    }
    // Valid UTF-8 that is not JSON stays a JSON error.
    assert!(matches!(
        Envelope::from_json("{\"eventId\": ü}".as_bytes()),
        Err(EnvelopeError::Json { .. })
    ));
}
