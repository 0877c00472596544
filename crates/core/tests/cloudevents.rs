//! CloudEvents 1.0 interop: the specification's own JSON examples, the envelope mapping both
//! ways (structured and binary mode), and the errors for foreign events.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use eventyard_core::cloudevents::{
    CloudEvent, CloudEventData, from_binary, from_cloudevent, to_binary, to_binary_headers,
    to_cloudevent,
};
use eventyard_core::{
    CorrelationId, Envelope, EnvelopeError, EventId, EventType, ModuleId, ProjectId, TenantId,
    TraceId,
};
use proptest::prelude::*;
use serde_json::{Value, json};

// --- The specification's examples, verbatim -------------------------------------------------

/// CloudEvents 1.0 core specification (spec.md), "Example": a non-JSON (XML) payload carried as
/// a JSON string, a string and an integer extension.
const SPEC_PULL_REQUEST: &str = r#"{
    "specversion" : "1.0",
    "type" : "com.github.pull_request.opened",
    "source" : "https://github.com/cloudevents/spec/pull",
    "subject" : "123",
    "id" : "A234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "text/xml",
    "data" : "<much wow=\"xml\"/>"
}"#;

/// JSON Event Format 1.0 (json-format.md) §3.2: event with `Binary`-valued data.
const SPEC_BINARY_DATA: &str = r#"{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "B234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/vnd.apache.thrift.binary",
    "data_base64" : "... base64 encoded string ..."
}"#;

/// JSON Event Format 1.0 (json-format.md) §3.2: event with JSON data for the "data" member.
const SPEC_JSON_DATA: &str = r#"{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "C234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/json",
    "data" : {
        "appinfoA" : "abc",
        "appinfoB" : 123,
        "appinfoC" : true
    }
}"#;

fn as_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn ce_message(err: EnvelopeError) -> String {
    match err {
        EnvelopeError::CloudEvent(m) => m,
        other => panic!("expected EnvelopeError::CloudEvent, got {other:?}"),
    }
}

#[test]
fn spec_examples_parse_and_round_trip_exactly() {
    for text in [SPEC_PULL_REQUEST, SPEC_BINARY_DATA, SPEC_JSON_DATA] {
        let ce = CloudEvent::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(ce.specversion, "1.0");
        assert_eq!(ce.extension("comexampleextension1"), Some(&json!("value")));
        assert_eq!(ce.extension("comexampleothervalue"), Some(&json!(5)));
        assert_eq!(ce.extensions.len(), 2);
        assert_eq!(as_value(&ce.to_json()), as_value(text.as_bytes()), "{text}");
        // And parsing our own output gives the same event.
        assert_eq!(CloudEvent::from_json(&ce.to_json()).unwrap(), ce);
    }
}

#[test]
fn spec_pull_request_attributes() {
    let ce = CloudEvent::from_json(SPEC_PULL_REQUEST.as_bytes()).unwrap();
    assert_eq!(ce.r#type, "com.github.pull_request.opened");
    assert_eq!(ce.source, "https://github.com/cloudevents/spec/pull");
    assert_eq!(ce.subject.as_deref(), Some("123"));
    assert_eq!(ce.id, "A234-1234-1234");
    assert_eq!(ce.time.as_deref(), Some("2018-04-05T17:31:00Z"));
    assert_eq!(ce.datacontenttype.as_deref(), Some("text/xml"));
    assert_eq!(
        ce.data,
        Some(CloudEventData::Json(json!("<much wow=\"xml\"/>")))
    );
}

#[test]
fn spec_binary_example_keeps_data_base64() {
    let ce = CloudEvent::from_json(SPEC_BINARY_DATA.as_bytes()).unwrap();
    assert_eq!(
        ce.data,
        Some(CloudEventData::Base64(
            "... base64 encoded string ...".into()
        ))
    );
    assert!(as_value(&ce.to_json()).get("data").is_none());
}

#[test]
fn spec_examples_are_not_envelopes_and_the_error_says_why() {
    for text in [SPEC_PULL_REQUEST, SPEC_BINARY_DATA, SPEC_JSON_DATA] {
        let ce = CloudEvent::from_json(text.as_bytes()).unwrap();
        let msg = ce_message(from_cloudevent(&ce).unwrap_err());
        for needle in [
            "`tenantid`",
            "`traceid`",
            "`correlationid`",
            "attribute `id`",
            "attribute `type`",
        ] {
            assert!(msg.contains(needle), "`{needle}` not named in: {msg}");
        }
        assert!(msg.contains("missing"), "{msg}");
    }
    let xml = ce_message(
        CloudEvent::from_json(SPEC_PULL_REQUEST.as_bytes())
            .unwrap()
            .to_envelope()
            .unwrap_err(),
    );
    assert!(
        xml.contains("`datacontenttype`") && xml.contains("text/xml"),
        "{xml}"
    );
    let bin = ce_message(
        CloudEvent::from_json(SPEC_BINARY_DATA.as_bytes())
            .unwrap()
            .to_envelope()
            .unwrap_err(),
    );
    assert!(bin.contains("`data_base64`"), "{bin}");
}

/// The spec's JSON-data example with only the eventyard-specific attributes fixed: the one
/// remaining problem is named alone.
#[test]
fn foreign_event_with_our_extensions_but_bad_type() {
    let mut ce = CloudEvent::from_json(SPEC_JSON_DATA.as_bytes()).unwrap();
    ce.id = EventId::generate().to_string();
    ce.set_extension("tenantid", "connectsoft").unwrap();
    ce.set_extension("traceid", "trace-1").unwrap();
    ce.set_extension("correlationid", "corr-1").unwrap();
    let msg = ce_message(from_cloudevent(&ce).unwrap_err());
    assert!(msg.starts_with("attribute `type`"), "{msg}");
    assert!(msg.contains("com.example.someevent"), "{msg}");
    assert!(!msg.contains("missing"), "{msg}");

    ce.r#type = "SomeEventHappened".into();
    let env = from_cloudevent(&ce).unwrap();
    assert_eq!(
        env.payload,
        json!({"appinfoA": "abc", "appinfoB": 123, "appinfoC": true})
    );
    assert_eq!(env.tenant_id.as_str(), "connectsoft");
    assert_eq!(env.causation_id, None);
    assert_eq!(env.schema_version, 1);
    assert!(env.headers.is_empty());
    assert_eq!(
        env.occurred_at,
        Utc.with_ymd_and_hms(2018, 4, 5, 17, 31, 0).unwrap()
    );
}

// --- Structured-mode parsing errors ---------------------------------------------------------

fn parse_err(text: &str) -> String {
    ce_message(CloudEvent::from_json(text.as_bytes()).unwrap_err())
}

#[test]
fn structured_mode_validation_names_the_attribute() {
    let base = as_value(SPEC_JSON_DATA.as_bytes());
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = base.clone();
        f(v.as_object_mut().unwrap());
        v.to_string()
    };
    for attr in ["specversion", "id", "source", "type"] {
        let msg = parse_err(&with(&|o| {
            o.remove(attr);
        }));
        assert!(
            msg.contains(&format!("`{attr}`")) && msg.contains("missing"),
            "{msg}"
        );
    }
    let msg = parse_err(&with(&|o| {
        o.insert("specversion".into(), json!("0.3"));
    }));
    assert!(
        msg.contains("`specversion`") && msg.contains("0.3"),
        "{msg}"
    );
    let msg = parse_err(&with(&|o| {
        o.insert("id".into(), json!(""));
    }));
    assert!(msg.contains("`id`") && msg.contains("empty"), "{msg}");
    let msg = parse_err(&with(&|o| {
        o.insert("subject".into(), json!(5));
    }));
    assert!(msg.contains("`subject`") && msg.contains("string"), "{msg}");
    let msg = parse_err(&with(&|o| {
        o.insert("time".into(), json!("yesterday"));
    }));
    assert!(msg.contains("`time`") && msg.contains("RFC 3339"), "{msg}");
    let msg = parse_err(&with(&|o| {
        o.insert("data_base64".into(), json!("AAAA"));
    }));
    assert!(
        msg.contains("`data`") && msg.contains("`data_base64`"),
        "{msg}"
    );
    for bad in ["comExample", "com_example", "thisnameiswaytoolongforit"] {
        let msg = parse_err(&with(&|o| {
            o.insert(bad.into(), json!("x"));
        }));
        assert!(msg.contains(bad), "{msg}");
    }
    assert!(parse_err("[1]").contains("object"));
    assert!(parse_err("{").contains("not a JSON CloudEvent"));
}

#[test]
fn null_attributes_are_unset() {
    let ce = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"x","source":"/s","type":"t","subject":null,"unsetextension":null}"#,
    )
    .unwrap();
    assert_eq!(ce.subject, None);
    assert!(ce.extensions.is_empty());
    assert_eq!(
        as_value(&ce.to_json()),
        json!({"specversion":"1.0","id":"x","source":"/s","type":"t"})
    );
}

#[test]
fn serde_impls_match_from_json_and_to_json() {
    let ce: CloudEvent = serde_json::from_str(SPEC_JSON_DATA).unwrap();
    assert_eq!(
        serde_json::to_value(&ce).unwrap(),
        as_value(SPEC_JSON_DATA.as_bytes())
    );
    assert!(serde_json::from_str::<CloudEvent>(r#"{"specversion":"1.0"}"#).is_err());
}

// --- Envelope <-> CloudEvent ----------------------------------------------------------------

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// A fully populated child envelope with fixed ids.
fn sample_child() -> Envelope {
    let root = Envelope::new(
        EventType::event("ProjectCreated").unwrap(),
        TenantId::parse("connectsoft").unwrap(),
        json!({"projectId": "proj-booking-saas"}),
    )
    .with_project(ProjectId::parse("proj-booking-saas").unwrap())
    .with_trace(TraceId::parse("trace-7f3a").unwrap())
    .with_correlation(CorrelationId::parse("corr-wf-1").unwrap());
    let mut env = root
        .child(
            EventType::event("WorkflowInstanceStarted").unwrap(),
            json!({
                "workflowInstanceId": "wfi-1",
                "workflowDefinitionId": "wfd-project-bootstrap",
                "workflowDefinitionVersion": "4.1.0"
            }),
        )
        .with_module(ModuleId::parse("module-reservations-api").unwrap())
        .with_header("priority", "high");
    env.event_id = EventId::parse("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e01").unwrap();
    env.causation_id = Some(EventId::parse("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00").unwrap());
    env.occurred_at = at("2025-01-02T03:04:05.123456789Z");
    env.schema_version = 2;
    env
}

#[test]
fn envelope_to_cloudevent_to_envelope_is_identity() {
    let env = sample_child();
    let ce = to_cloudevent(&env);
    assert_eq!(from_cloudevent(&ce).unwrap(), env);
    // Through JSON text as well.
    let parsed = CloudEvent::from_json(&ce.to_json()).unwrap();
    assert_eq!(parsed, ce);
    assert_eq!(Envelope::try_from(&parsed).unwrap(), env);
    // A root event and an envelope without optional fields.
    let root = Envelope::new(
        EventType::event("TenantProvisioned").unwrap(),
        TenantId::parse("acme").unwrap(),
        json!({}),
    );
    let ce = CloudEvent::from(&root);
    assert!(ce.extension("causationid").is_none());
    assert!(ce.extension("headers").is_none());
    assert!(ce.extension("projectid").is_none());
    assert!(ce.subject.is_none());
    assert_eq!(ce.source, "/tenants/acme");
    assert_eq!(Envelope::from_cloudevent(&ce).unwrap(), root);
}

#[test]
fn envelope_cloudevent_shape() {
    let env = sample_child();
    let expected = json!({
        "specversion": "1.0",
        "id": "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e01",
        "type": "WorkflowInstanceStarted",
        "source": "/tenants/connectsoft/projects/proj-booking-saas",
        "subject": "module-reservations-api",
        "time": "2025-01-02T03:04:05.123456789Z",
        "datacontenttype": "application/json",
        "data": {
            "workflowInstanceId": "wfi-1",
            "workflowDefinitionId": "wfd-project-bootstrap",
            "workflowDefinitionVersion": "4.1.0"
        },
        "tenantid": "connectsoft",
        "projectid": "proj-booking-saas",
        "moduleid": "module-reservations-api",
        "traceid": "trace-7f3a",
        "correlationid": "corr-wf-1",
        "causationid": "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00",
        "schemaversion": 2,
        "headers": {"priority": "high"}
    });
    assert_eq!(env.to_cloudevent().to_value(), expected);
}

/// An envelope-derived CloudEvent written by hand as JSON text (as another system would send it).
#[test]
fn envelope_cloudevent_from_literal_json() {
    let text = r#"{
        "specversion" : "1.0",
        "type" : "ArtifactCreated",
        "source" : "/tenants/connectsoft/projects/proj-booking-saas",
        "subject" : "module-reservations-api",
        "id" : "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e07",
        "time" : "2025-03-01T10:00:00.500Z",
        "datacontenttype" : "application/json",
        "tenantid" : "connectsoft",
        "projectid" : "proj-booking-saas",
        "moduleid" : "module-reservations-api",
        "traceid" : "trace-booking-1",
        "correlationid" : "corr-bootstrap-1",
        "causationid" : "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e06",
        "schemaversion" : 1,
        "data" : { "artifactId": "art-42", "kind": "openapi" }
    }"#;
    let ce = CloudEvent::from_json(text.as_bytes()).unwrap();
    assert_eq!(as_value(&ce.to_json()), as_value(text.as_bytes()));
    let env = from_cloudevent(&ce).unwrap();
    assert_eq!(env.event_type.as_str(), "ArtifactCreated");
    assert_eq!(env.tenant_id.as_str(), "connectsoft");
    assert_eq!(
        env.project_id.as_ref().unwrap().as_str(),
        "proj-booking-saas"
    );
    assert_eq!(
        env.module_id.as_ref().unwrap().as_str(),
        "module-reservations-api"
    );
    assert_eq!(env.trace_id.as_str(), "trace-booking-1");
    assert_eq!(env.correlation_id.as_str(), "corr-bootstrap-1");
    assert_eq!(
        env.causation_id.as_ref().unwrap().as_str(),
        "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e06"
    );
    assert_eq!(env.occurred_at, at("2025-03-01T10:00:00.500Z"));
    assert_eq!(
        env.payload,
        json!({"artifactId": "art-42", "kind": "openapi"})
    );
    // Back to a CloudEvent: the same JSON.
    assert_eq!(to_cloudevent(&env).to_value(), as_value(text.as_bytes()));
    // The same facts as a canonical envelope.
    let canonical = Envelope::from_json(&env.to_json()).unwrap();
    assert_eq!(canonical, env);
}

#[test]
fn conversion_errors_name_the_attribute() {
    let good = to_cloudevent(&sample_child());
    let check = |f: &dyn Fn(&mut CloudEvent), needles: &[&str]| {
        let mut ce = good.clone();
        f(&mut ce);
        let msg = ce_message(from_cloudevent(&ce).unwrap_err());
        for n in needles {
            assert!(msg.contains(n), "`{n}` not in: {msg}");
        }
    };
    check(
        &|ce| {
            ce.extensions.remove("tenantid");
        },
        &["missing", "`tenantid`", "tenantId"],
    );
    check(
        &|ce| {
            ce.extensions.remove("traceid");
        },
        &["missing", "`traceid`"],
    );
    check(
        &|ce| {
            ce.extensions.remove("correlationid");
        },
        &["missing", "`correlationid`"],
    );
    check(
        &|ce| ce.id = "A234-1234-1234".into(),
        &["attribute `id`", "A234-1234-1234", "evt-"],
    );
    check(
        &|ce| ce.r#type = "com.example.someevent".into(),
        &["attribute `type`"],
    );
    check(&|ce| ce.time = None, &["missing", "`time`", "occurredAt"]);
    check(&|ce| ce.data = None, &["missing", "`data`", "payload"]);
    check(
        &|ce| ce.data = Some(CloudEventData::Json(json!([1, 2]))),
        &["`data`", "object", "array"],
    );
    check(
        &|ce| {
            ce.datacontenttype = Some("text/xml".into());
            ce.data = Some(CloudEventData::Json(json!("<much wow=\"xml\"/>")));
        },
        &["`datacontenttype`", "text/xml"],
    );
    check(
        &|ce| ce.data = Some(CloudEventData::Base64("AAAA".into())),
        &["`data_base64`"],
    );
    check(
        &|ce| {
            ce.extensions.insert("tenantid".into(), json!("Not A Slug"));
        },
        &["extension `tenantid`", "Not A Slug"],
    );
    check(
        &|ce| {
            ce.extensions.insert("traceid".into(), json!(7));
        },
        &["extension `traceid`", "string"],
    );
    check(
        &|ce| {
            ce.extensions.insert("causationid".into(), json!("nope"));
        },
        &["extension `causationid`", "causationId"],
    );
    check(
        &|ce| {
            ce.extensions.insert("schemaversion".into(), json!(0));
        },
        &["extension `schemaversion`"],
    );
    check(
        &|ce| {
            ce.extensions.insert("headers".into(), json!({"a": 1}));
        },
        &["extension `headers`", "`a`"],
    );
    check(
        &|ce| ce.source = "/tenants/someone-else/projects/proj-booking-saas".into(),
        &[
            "attribute `source`",
            "/tenants/connectsoft/projects/proj-booking-saas",
        ],
    );
    check(
        &|ce| ce.specversion = "0.3".into(),
        &["`specversion`", "0.3"],
    );
    // Several problems are reported together.
    check(
        &|ce| {
            ce.extensions.remove("tenantid");
            ce.id = "x".into();
        },
        &["`tenantid`", "attribute `id`"],
    );
}

#[test]
fn foreign_source_and_other_extensions_are_accepted() {
    let mut ce = to_cloudevent(&sample_child());
    ce.source = "https://booking.example/api".into();
    ce.set_extension("comexampleextension1", "value").unwrap();
    ce.time = Some("2025-01-02T05:04:05.123456789+02:00".into());
    let env = from_cloudevent(&ce).unwrap();
    assert_eq!(env, sample_child());
}

#[test]
fn commands_round_trip_with_their_kind() {
    let cmd = Envelope::new(
        EventType::command("AssignAgentTask").unwrap(),
        TenantId::parse("connectsoft").unwrap(),
        json!({"agent": "a1"}),
    )
    .with_header("messageKind", "command");
    let ce = to_cloudevent(&cmd);
    assert_eq!(from_cloudevent(&ce).unwrap(), cmd);
    // Without the header the name is judged as an event name, and refused.
    let mut ce2 = ce.clone();
    ce2.extensions.remove("headers");
    assert!(ce_message(from_cloudevent(&ce2).unwrap_err()).contains("attribute `type`"));
}

// --- Binary mode ----------------------------------------------------------------------------

#[test]
fn binary_mode_headers_and_round_trip() {
    let env = sample_child();
    let headers = to_binary_headers(&env);
    let map: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(map["ce-specversion"], "1.0");
    assert_eq!(map["ce-id"], env.event_id.as_str());
    assert_eq!(map["ce-type"], "WorkflowInstanceStarted");
    assert_eq!(
        map["ce-source"],
        "/tenants/connectsoft/projects/proj-booking-saas"
    );
    assert_eq!(map["ce-time"], "2025-01-02T03:04:05.123456789Z");
    assert_eq!(map["ce-subject"], "module-reservations-api");
    assert_eq!(map["ce-tenantid"], "connectsoft");
    assert_eq!(map["ce-projectid"], "proj-booking-saas");
    assert_eq!(map["ce-moduleid"], "module-reservations-api");
    assert_eq!(map["ce-traceid"], "trace-7f3a");
    assert_eq!(map["ce-correlationid"], "corr-wf-1");
    assert_eq!(
        map["ce-causationid"],
        "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00"
    );
    assert_eq!(map["ce-schemaversion"], "2");
    assert_eq!(map["ce-headers"], r#"{"priority":"high"}"#);
    assert_eq!(map["content-type"], "application/json");
    assert_eq!(map.len(), headers.len(), "no duplicate headers");

    let (headers, body) = to_binary(&env);
    assert_eq!(from_binary(headers.clone(), &body).unwrap(), env);

    // Other transports' spellings and unrelated headers.
    let mut other: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.replacen("ce-", "cloudEvents:", 1).to_uppercase(), v))
        .filter(|(k, _)| k != "CONTENT-TYPE")
        .collect();
    other.push(("cs-tenant-id".into(), "connectsoft".into()));
    assert_eq!(from_binary(other, &body).unwrap(), env);
}

#[test]
fn binary_mode_errors() {
    let env = sample_child();
    let (headers, body) = to_binary(&env);
    let without = |name: &str| -> Vec<(String, String)> {
        headers.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let msg = ce_message(from_binary(without("ce-id"), &body).unwrap_err());
    assert!(msg.contains("`ce-id`"), "{msg}");
    let msg = ce_message(from_binary(without("ce-tenantid"), &body).unwrap_err());
    assert!(msg.contains("`tenantid`"), "{msg}");
    let msg = ce_message(from_binary(headers.clone(), b"not json").unwrap_err());
    assert!(msg.contains("`data`"), "{msg}");
    let msg = ce_message(from_binary(headers.clone(), b"").unwrap_err());
    assert!(msg.contains("`data`"), "{msg}");
    let mut xml = without("content-type");
    xml.push(("content-type".into(), "text/xml".into()));
    let msg = ce_message(from_binary(xml, b"<much wow=\"xml\"/>").unwrap_err());
    assert!(msg.contains("text/xml"), "{msg}");
    let mut v03 = without("ce-specversion");
    v03.push(("ce-specversion".into(), "0.3".into()));
    let msg = ce_message(from_binary(v03, &body).unwrap_err());
    assert!(msg.contains("0.3"), "{msg}");
}

// --- Property: any envelope survives both modes ---------------------------------------------

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    let ids = (
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        proptest::option::of("proj-[A-Za-z0-9._-]{1,20}"),
        proptest::option::of("module-[A-Za-z0-9._-]{1,20}"),
        "trace-[A-Za-z0-9._-]{1,30}",
        "corr-[A-Za-z0-9._-]{1,30}",
        any::<bool>(),
    );
    let rest = (
        prop::sample::select(vec![
            "ProjectCreated",
            "WorkflowStepReady",
            "ArtifactCreatedV2",
            "RuntimeDeploymentCompleted",
        ]),
        0i64..4_102_444_800,
        0u32..1_000_000_000,
        1u32..100,
        prop::collection::btree_map("[a-zA-Z-]{1,8}", ".{0,12}", 0..3),
        prop::collection::btree_map(
            "[a-zA-Z]{1,8}",
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ],
            0..4,
        ),
    );
    (ids, rest).prop_map(
        |(
            (tenant, project, module, trace, corr, caused),
            (ty, secs, nanos, sv, headers, payload),
        )| {
            let mut env = Envelope::new(
                EventType::event(ty).unwrap(),
                TenantId::parse(tenant).unwrap(),
                Value::Object(payload.into_iter().collect()),
            )
            .with_trace(TraceId::parse(trace).unwrap())
            .with_correlation(CorrelationId::parse(corr).unwrap());
            env.project_id = project.map(|p| ProjectId::parse(p).unwrap());
            env.module_id = module.map(|m| ModuleId::parse(m).unwrap());
            if caused {
                env.causation_id = Some(EventId::generate());
            }
            env.occurred_at = Utc.timestamp_opt(secs, nanos).unwrap();
            env.schema_version = sv;
            env.headers = headers;
            env
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_envelope_round_trips(env in arb_envelope()) {
        let structured = CloudEvent::from_json(&to_cloudevent(&env).to_json()).unwrap();
        prop_assert_eq!(&from_cloudevent(&structured).unwrap(), &env);
        let (headers, body) = to_binary(&env);
        prop_assert_eq!(&from_binary(headers, &body).unwrap(), &env);
    }
}
