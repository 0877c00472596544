//! CloudEvents 1.0 interop (SPEC §1): a generic [`CloudEvent`] in JSON structured mode, the
//! two-way mapping to the canonical [`Envelope`], and binary-mode helpers for header-based
//! transports (AMQP application properties, NATS headers, HTTP).
//!
//! # Mapping
//!
//! | envelope | CloudEvents attribute |
//! |---|---|
//! | `eventId` | `id` |
//! | `eventType` | `type` |
//! | `tenantId` (+ `projectId`) | `source` = `/tenants/{tenantId}[/projects/{projectId}]`, and extension `tenantid` |
//! | `projectId` | extension `projectid` (when present) |
//! | `moduleId` | `subject`, and extension `moduleid` (when present) |
//! | `occurredAt` | `time` |
//! | — | `datacontenttype` = `application/json` |
//! | `payload` | `data` |
//! | `traceId` | extension `traceid` |
//! | `correlationId` | extension `correlationid` |
//! | `causationId` | extension `causationid` (omitted for a root event) |
//! | `schemaVersion` | extension `schemaversion` (integer) |
//! | `headers` | extension `headers`, a JSON object (only when non-empty) |
//!
//! Converting back ([`from_cloudevent`]) reads the envelope fields from the extensions (never
//! from `source` or `subject`, which are derived), so a foreign CloudEvent without `tenantid`,
//! `traceid` and `correlationid` is refused with an error naming every missing or invalid
//! attribute. Extensions other than the ones above are ignored by that conversion.
//!
//! ```
//! use eventyard_core::{Envelope, EventType, TenantId};
//! use eventyard_core::cloudevents::{CloudEvent, from_cloudevent, to_cloudevent};
//!
//! let env = Envelope::new(
//!     EventType::event("ProjectCreated").unwrap(),
//!     TenantId::parse("connectsoft").unwrap(),
//!     serde_json::json!({"name": "booking"}),
//! );
//! let json = to_cloudevent(&env).to_json();
//! let back = from_cloudevent(&CloudEvent::from_json(&json).unwrap()).unwrap();
//! assert_eq!(back, env);
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::envelope::{Envelope, KIND_HEADER, json_kind};
use crate::error::EnvelopeError;
use crate::event_type::{EventType, MessageKind};
use crate::ids::{CorrelationId, EventId, ModuleId, ProjectId, TenantId, TraceId};

/// The only CloudEvents version this module reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// Media type of a CloudEvent in JSON structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// `datacontenttype` of every CloudEvent made from an envelope.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Prefix of CloudEvents attributes carried as transport headers in binary mode.
pub const BINARY_HEADER_PREFIX: &str = "ce-";

/// Names of the extension attributes that carry the envelope's own fields.
pub mod ext {
    /// The envelope's `tenantId` (required to convert back).
    pub const TENANT_ID: &str = "tenantid";
    /// The envelope's `projectId`, when present.
    pub const PROJECT_ID: &str = "projectid";
    /// The envelope's `moduleId`, when present.
    pub const MODULE_ID: &str = "moduleid";
    /// The envelope's `traceId` (required to convert back).
    pub const TRACE_ID: &str = "traceid";
    /// The envelope's `correlationId` (required to convert back).
    pub const CORRELATION_ID: &str = "correlationid";
    /// The envelope's `causationId`; absent for a root event.
    pub const CAUSATION_ID: &str = "causationid";
    /// The envelope's `schemaVersion`, an integer; absent means 1.
    pub const SCHEMA_VERSION: &str = "schemaversion";
    /// The envelope's `headers` map, a JSON object of strings; absent means empty.
    pub const HEADERS: &str = "headers";
}

/// Attribute and member names that are not extensions.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

/// The event data of a [`CloudEvent`]: the JSON members `data` and `data_base64` are mutually
/// exclusive, so they are one enum.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudEventData {
    /// The `data` member: any JSON value (an object, or e.g. an XML document as a string).
    Json(Value),
    /// The `data_base64` member: binary data as Base64 text, kept verbatim (not decoded).
    Base64(String),
}

/// A CloudEvents 1.0 event in JSON structured mode, held generically: any valid CloudEvent
/// parses, whether or not it came from an eventyard envelope.
///
/// Attribute values are kept as their JSON text so that [`CloudEvent::to_json`] writes back
/// exactly the attributes that were read. A `null` attribute is treated as unset (JSON format
/// §2.2) and so is not written back.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `specversion`: always [`SPEC_VERSION`] (`1.0`) once parsed.
    pub specversion: String,
    /// `id`: unique together with `source`.
    pub id: String,
    /// `source`: URI-reference of the context in which the event happened.
    pub source: String,
    /// `type`: the kind of occurrence (for eventyard, the eventType).
    pub r#type: String,
    /// `datacontenttype`: media type of `data`; `application/json` is implied when absent.
    pub datacontenttype: Option<String>,
    /// `dataschema`: URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// `subject`: what the event is about, within `source`.
    pub subject: Option<String>,
    /// `time`: RFC 3339 timestamp text, as written.
    pub time: Option<String>,
    /// `data` or `data_base64`, when present.
    pub data: Option<CloudEventData>,
    /// Every other top-level attribute, by name (lowercase `a-z0-9`, at most 20 characters).
    pub extensions: BTreeMap<String, Value>,
}

fn ce_err(message: impl Into<String>) -> EnvelopeError {
    EnvelopeError::CloudEvent(message.into())
}

/// Checks an extension attribute name: lowercase ASCII letters and digits, 1–20 characters
/// (CloudEvents 1.0 §3.1.1: names MUST be `[a-z0-9]`, SHOULD NOT exceed 20 characters; we
/// enforce both), and not one of the core attribute names.
pub fn validate_extension_name(name: &str) -> Result<(), EnvelopeError> {
    if name.is_empty() {
        return Err(ce_err("extension attribute name must not be empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ce_err(format!(
            "extension attribute `{name}`: names must be lowercase letters a-z and digits 0-9 only"
        )));
    }
    if name.len() > 20 {
        return Err(ce_err(format!(
            "extension attribute `{name}`: names must be at most 20 characters"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(ce_err(format!(
            "`{name}` is a core CloudEvents attribute, not an extension"
        )));
    }
    Ok(())
}

fn check_time(value: &str) -> Result<DateTime<Utc>, EnvelopeError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ce_err(format!(
                "attribute `time`: `{value}` is not an RFC 3339 timestamp ({e})"
            ))
        })
}

impl CloudEvent {
    /// A CloudEvent with the four required attributes and nothing else.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        r#type: impl Into<String>,
    ) -> Self {
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: id.into(),
            source: source.into(),
            r#type: r#type.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            data: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Looks an extension attribute up by name.
    pub fn extension(&self, name: &str) -> Option<&Value> {
        self.extensions.get(name)
    }

    /// Sets an extension attribute after checking its name (see [`validate_extension_name`]);
    /// a `null` value removes it.
    pub fn set_extension(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), EnvelopeError> {
        let name = name.into();
        validate_extension_name(&name)?;
        match value.into() {
            Value::Null => {
                self.extensions.remove(&name);
            }
            v => {
                self.extensions.insert(name, v);
            }
        }
        Ok(())
    }

    /// Parses a CloudEvent in JSON structured mode (`application/cloudevents+json`), checking
    /// the required attributes (`specversion` = `1.0`, non-empty `id`, `source`, `type`), the
    /// JSON types of the optional ones, that `time` is RFC 3339, that `data` and `data_base64`
    /// are not both present, and every extension name. The error names the attribute at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ce_err(format!("not a JSON CloudEvent: {e}")))?;
        Self::from_value(value)
    }

    /// Like [`CloudEvent::from_json`], from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(mut obj) = value else {
            return Err(ce_err(format!(
                "a JSON CloudEvent must be a JSON object, found {}",
                json_kind(&value)
            )));
        };
        // `null` means unset (JSON format §2.2).
        obj.retain(|_, v| !v.is_null());

        fn string(
            obj: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<Option<String>, EnvelopeError> {
            match obj.remove(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(ce_err(format!(
                    "attribute `{name}` must be a string, found {}",
                    json_kind(&other)
                ))),
            }
        }
        fn required(
            obj: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<String, EnvelopeError> {
            match string(obj, name)? {
                None => Err(ce_err(format!("required attribute `{name}` is missing"))),
                Some(s) if s.is_empty() => Err(ce_err(format!(
                    "required attribute `{name}` must not be empty"
                ))),
                Some(s) => Ok(s),
            }
        }

        let specversion = required(&mut obj, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(ce_err(format!(
                "attribute `specversion`: unsupported version `{specversion}` (expected `{SPEC_VERSION}`)"
            )));
        }
        let id = required(&mut obj, "id")?;
        let source = required(&mut obj, "source")?;
        let r#type = required(&mut obj, "type")?;
        let datacontenttype = string(&mut obj, "datacontenttype")?;
        let dataschema = string(&mut obj, "dataschema")?;
        let subject = string(&mut obj, "subject")?;
        let time = string(&mut obj, "time")?;
        if let Some(t) = &time {
            check_time(t)?;
        }
        if let Some(s) = &datacontenttype
            && s.is_empty()
        {
            return Err(ce_err("attribute `datacontenttype` must not be empty"));
        }
        if let Some(s) = &dataschema
            && s.is_empty()
        {
            return Err(ce_err("attribute `dataschema` must not be empty"));
        }
        let data = match (obj.remove("data"), string(&mut obj, "data_base64")?) {
            (Some(_), Some(_)) => {
                return Err(ce_err(
                    "members `data` and `data_base64` are mutually exclusive",
                ));
            }
            (Some(v), None) => Some(CloudEventData::Json(v)),
            (None, Some(b)) => Some(CloudEventData::Base64(b)),
            (None, None) => None,
        };
        let mut extensions = BTreeMap::new();
        for (name, value) in obj {
            validate_extension_name(&name)?;
            extensions.insert(name, value);
        }
        Ok(CloudEvent {
            specversion,
            id,
            source,
            r#type,
            datacontenttype,
            dataschema,
            subject,
            time,
            data,
            extensions,
        })
    }

    /// The JSON object of this event: exactly the attributes that are set.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("specversion".into(), self.specversion.clone().into());
        obj.insert("id".into(), self.id.clone().into());
        obj.insert("source".into(), self.source.clone().into());
        obj.insert("type".into(), self.r#type.clone().into());
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                obj.insert(name.into(), v.clone().into());
            }
        }
        match &self.data {
            Some(CloudEventData::Json(v)) => {
                obj.insert("data".into(), v.clone());
            }
            Some(CloudEventData::Base64(b)) => {
                obj.insert("data_base64".into(), b.clone().into());
            }
            None => {}
        }
        for (name, value) in &self.extensions {
            if !value.is_null() {
                obj.insert(name.clone(), value.clone());
            }
        }
        Value::Object(obj)
    }

    /// Serializes in JSON structured mode (`application/cloudevents+json`).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a `Value` cannot fail.
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// Converts to an envelope; see [`from_cloudevent`].
    pub fn to_envelope(&self) -> Result<Envelope, EnvelopeError> {
        from_cloudevent(self)
    }
}

impl Serialize for CloudEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CloudEvent {
    /// Deserializes with the checks of [`CloudEvent::from_json`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CloudEvent::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn source_of(env: &Envelope) -> String {
    match &env.project_id {
        Some(p) => format!("/tenants/{}/projects/{}", env.tenant_id, p),
        None => format!("/tenants/{}", env.tenant_id),
    }
}

/// Maps an envelope to a CloudEvent (see the [module documentation](self) for the table).
pub fn to_cloudevent(env: &Envelope) -> CloudEvent {
    let mut ce = CloudEvent::new(
        env.event_id.as_str(),
        source_of(env),
        env.event_type.as_str(),
    );
    ce.datacontenttype = Some(JSON_CONTENT_TYPE.to_owned());
    ce.subject = env.module_id.as_ref().map(|m| m.as_str().to_owned());
    ce.time = Some(env.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    ce.data = Some(CloudEventData::Json(env.payload.clone()));
    let x = &mut ce.extensions;
    x.insert(ext::TENANT_ID.into(), env.tenant_id.as_str().into());
    if let Some(p) = &env.project_id {
        x.insert(ext::PROJECT_ID.into(), p.as_str().into());
    }
    if let Some(m) = &env.module_id {
        x.insert(ext::MODULE_ID.into(), m.as_str().into());
    }
    x.insert(ext::TRACE_ID.into(), env.trace_id.as_str().into());
    x.insert(
        ext::CORRELATION_ID.into(),
        env.correlation_id.as_str().into(),
    );
    if let Some(c) = &env.causation_id {
        x.insert(ext::CAUSATION_ID.into(), c.as_str().into());
    }
    x.insert(ext::SCHEMA_VERSION.into(), env.schema_version.into());
    if !env.headers.is_empty() {
        let headers: Map<String, Value> = env
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        x.insert(ext::HEADERS.into(), Value::Object(headers));
    }
    ce
}

impl From<&Envelope> for CloudEvent {
    fn from(env: &Envelope) -> Self {
        to_cloudevent(env)
    }
}

impl TryFrom<&CloudEvent> for Envelope {
    type Error = EnvelopeError;
    fn try_from(ce: &CloudEvent) -> Result<Self, EnvelopeError> {
        from_cloudevent(ce)
    }
}

impl Envelope {
    /// This envelope as a CloudEvent; see [`to_cloudevent`].
    pub fn to_cloudevent(&self) -> CloudEvent {
        to_cloudevent(self)
    }

    /// An envelope from a CloudEvent; see [`from_cloudevent`].
    pub fn from_cloudevent(ce: &CloudEvent) -> Result<Self, EnvelopeError> {
        from_cloudevent(ce)
    }
}

/// True for `application/json`, `text/json` and any `+json` structured syntax suffix type,
/// ignoring parameters (`; charset=utf-8`) and case.
fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Collects every problem so that one error names all of them.
#[derive(Default)]
struct Problems {
    missing: Vec<String>,
    invalid: Vec<String>,
}

impl Problems {
    fn missing(&mut self, what: impl Into<String>) {
        self.missing.push(what.into());
    }
    fn invalid(&mut self, what: impl Into<String>) {
        self.invalid.push(what.into());
    }
    fn into_result(self) -> Result<(), EnvelopeError> {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", self.missing.join(", ")));
        }
        parts.extend(self.invalid);
        if parts.is_empty() {
            Ok(())
        } else {
            Err(ce_err(parts.join("; ")))
        }
    }
}

/// Reads a string extension; `None` when absent or not a string (recorded as a problem).
fn ext_string(ce: &CloudEvent, name: &str, problems: &mut Problems) -> Option<String> {
    match ce.extensions.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.invalid(format!(
                "extension `{name}` must be a string, found {}",
                json_kind(other)
            ));
            None
        }
    }
}

fn required_ext<T, E: std::fmt::Display>(
    ce: &CloudEvent,
    name: &str,
    field: &str,
    parse: impl FnOnce(String) -> Result<T, E>,
    problems: &mut Problems,
) -> Option<T> {
    if !ce.extensions.contains_key(name) {
        problems.missing(format!("extension `{name}` (envelope {field})"));
        return None;
    }
    optional_ext(ce, name, parse, problems)
}

fn optional_ext<T, E: std::fmt::Display>(
    ce: &CloudEvent,
    name: &str,
    parse: impl FnOnce(String) -> Result<T, E>,
    problems: &mut Problems,
) -> Option<T> {
    let text = ext_string(ce, name, problems)?;
    match parse(text) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.invalid(format!("extension `{name}`: {e}"));
            None
        }
    }
}

fn schema_version(v: Option<&Value>, problems: &mut Problems) -> Option<u32> {
    let n = match v {
        None | Some(Value::Null) => return Some(1),
        Some(Value::Number(n)) => n.as_u64(),
        // Binary mode carries every attribute as text.
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Some(n as u32),
        _ => {
            problems.invalid(format!(
                "extension `{}` must be an integer >= 1, found {}",
                ext::SCHEMA_VERSION,
                v.map(Value::to_string).unwrap_or_default()
            ));
            None
        }
    }
}

fn headers(v: Option<&Value>, problems: &mut Problems) -> BTreeMap<String, String> {
    let parsed;
    let obj = match v {
        None | Some(Value::Null) => return BTreeMap::new(),
        Some(Value::Object(o)) => o,
        // Binary mode carries the object as JSON text.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => {
                parsed = o;
                &parsed
            }
            _ => {
                problems.invalid(format!(
                    "extension `{}` must be a JSON object of strings, found the text `{s}`",
                    ext::HEADERS
                ));
                return BTreeMap::new();
            }
        },
        Some(other) => {
            problems.invalid(format!(
                "extension `{}` must be a JSON object of strings, found {}",
                ext::HEADERS,
                json_kind(other)
            ));
            return BTreeMap::new();
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            other => problems.invalid(format!(
                "extension `{}`: header `{k}` must be a string, found {}",
                ext::HEADERS,
                json_kind(other)
            )),
        }
    }
    out
}

/// Converts a CloudEvent back to an envelope.
///
/// Requires the extensions `tenantid`, `traceid` and `correlationid`; an `id` of the form
/// `evt-<uuid>`; a `type` that is a valid event name (or command name, when the `headers`
/// extension says `messageKind: command`); a `time`; and JSON object `data` with a JSON
/// `datacontenttype` (or none). `projectid`, `moduleid`, `causationid`, `schemaversion`
/// (default 1) and `headers` are read when present. A `source` of the form `/tenants/...` must
/// agree with `tenantid`/`projectid`. Other extensions are ignored.
///
/// The error ([`EnvelopeError::CloudEvent`]) names every missing or invalid attribute at once.
pub fn from_cloudevent(ce: &CloudEvent) -> Result<Envelope, EnvelopeError> {
    let mut p = Problems::default();
    if ce.specversion != SPEC_VERSION {
        p.invalid(format!(
            "attribute `specversion`: unsupported version `{}` (expected `{SPEC_VERSION}`)",
            ce.specversion
        ));
    }

    let tenant_id = required_ext(ce, ext::TENANT_ID, "tenantId", TenantId::parse, &mut p);
    let trace_id = required_ext(ce, ext::TRACE_ID, "traceId", TraceId::parse, &mut p);
    let correlation_id = required_ext(
        ce,
        ext::CORRELATION_ID,
        "correlationId",
        CorrelationId::parse,
        &mut p,
    );
    let occurred_at = match &ce.time {
        None => {
            p.missing("attribute `time` (envelope occurredAt)");
            None
        }
        Some(t) => match check_time(t) {
            Ok(t) => Some(t),
            Err(EnvelopeError::CloudEvent(m)) => {
                p.invalid(m);
                None
            }
            Err(e) => {
                p.invalid(e.to_string());
                None
            }
        },
    };
    let payload = match &ce.data {
        None => {
            p.missing("attribute `data` (envelope payload)");
            None
        }
        Some(CloudEventData::Base64(_)) => {
            p.invalid(
                "attribute `data_base64`: binary data cannot be an envelope payload \
                 (which is a JSON object in `data`)",
            );
            None
        }
        Some(CloudEventData::Json(v)) => match &ce.datacontenttype {
            Some(ct) if !is_json_media_type(ct) => {
                p.invalid(format!(
                    "attribute `datacontenttype`: `{ct}` is not JSON \
                         (an envelope payload is `application/json`)"
                ));
                None
            }
            _ if !v.is_object() => {
                p.invalid(format!(
                    "attribute `data` must be a JSON object (envelope payload), found {}",
                    json_kind(v)
                ));
                None
            }
            _ => Some(v.clone()),
        },
    };

    let event_id = match EventId::parse(ce.id.as_str()) {
        Ok(id) => Some(id),
        Err(e) => {
            p.invalid(format!("attribute `id`: {e}"));
            None
        }
    };
    let project_id = optional_ext(ce, ext::PROJECT_ID, ProjectId::parse, &mut p);
    let module_id = optional_ext(ce, ext::MODULE_ID, ModuleId::parse, &mut p);
    let causation_id = optional_ext(
        ce,
        ext::CAUSATION_ID,
        |s| {
            EventId::parse(s).map_err(|mut e| {
                e.kind = "causationId";
                e
            })
        },
        &mut p,
    );
    let schema_version = schema_version(ce.extensions.get(ext::SCHEMA_VERSION), &mut p);
    let headers = headers(ce.extensions.get(ext::HEADERS), &mut p);
    let kind = match headers.get(KIND_HEADER).map(String::as_str) {
        Some("command") => MessageKind::Command,
        _ => MessageKind::Event,
    };
    let event_type = match EventType::parse(ce.r#type.as_str(), kind) {
        Ok(t) => Some(t),
        Err(e) => {
            p.invalid(format!("attribute `type`: {e}"));
            None
        }
    };

    // `source` is derived; when it claims to be ours it must agree with the extensions.
    if ce.source.starts_with("/tenants/")
        && let Some(t) = &tenant_id
    {
        let expected = match &project_id {
            Some(pr) => format!("/tenants/{t}/projects/{pr}"),
            None => format!("/tenants/{t}"),
        };
        if ce.source != expected {
            p.invalid(format!(
                "attribute `source`: `{}` disagrees with extensions `tenantid`/`projectid` \
                 (expected `{expected}`)",
                ce.source
            ));
        }
    }

    p.into_result()?;
    // Every `None` above recorded a problem, so all are present here.
    let (
        Some(event_id),
        Some(event_type),
        Some(tenant_id),
        Some(trace_id),
        Some(correlation_id),
        Some(occurred_at),
        Some(schema_version),
        Some(payload),
    ) = (
        event_id,
        event_type,
        tenant_id,
        trace_id,
        correlation_id,
        occurred_at,
        schema_version,
        payload,
    )
    else {
        return Err(ce_err("incomplete CloudEvent"));
    };
    let env = Envelope {
        event_id,
        event_type,
        tenant_id,
        project_id,
        module_id,
        trace_id,
        correlation_id,
        causation_id,
        occurred_at,
        schema_version,
        headers,
        payload,
    };
    env.validate()?;
    Ok(env)
}

fn header_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Binary-mode headers of an envelope, for header-based transports: `ce-specversion`, `ce-id`,
/// `ce-type`, `ce-source`, `ce-time`, `ce-subject` (when a moduleId is present), one
/// `ce-<extension>` per extension of [`to_cloudevent`] (integers as decimal text, `headers` as
/// JSON text), and `content-type: application/json` (binary mode carries `datacontenttype` as
/// the transport's content type). The message body is the payload as JSON
/// (see [`to_binary`]). Values are not percent-encoded: that is the HTTP binding's job.
pub fn to_binary_headers(env: &Envelope) -> Vec<(String, String)> {
    let ce = to_cloudevent(env);
    let p = BINARY_HEADER_PREFIX;
    let mut out = vec![
        (format!("{p}specversion"), ce.specversion.clone()),
        (format!("{p}id"), ce.id.clone()),
        (format!("{p}type"), ce.r#type.clone()),
        (format!("{p}source"), ce.source.clone()),
    ];
    if let Some(t) = &ce.time {
        out.push((format!("{p}time"), t.clone()));
    }
    if let Some(s) = &ce.subject {
        out.push((format!("{p}subject"), s.clone()));
    }
    for (name, value) in &ce.extensions {
        out.push((format!("{p}{name}"), header_text(value)));
    }
    out.push(("content-type".to_owned(), JSON_CONTENT_TYPE.to_owned()));
    out
}

/// Binary mode in one call: the headers of [`to_binary_headers`] and the body (the payload as
/// JSON bytes).
pub fn to_binary(env: &Envelope) -> (Vec<(String, String)>, Vec<u8>) {
    // Serializing a `Value` cannot fail.
    let body = serde_json::to_vec(&env.payload).unwrap_or_default();
    (to_binary_headers(env), body)
}

/// The attribute name of a binary-mode header, if it carries one. Accepts the prefixes `ce-`
/// (HTTP, NATS), `ce_` (Kafka) and `cloudEvents:` / `cloudEvents_` (AMQP), case-insensitively.
fn binary_attribute(name: &str) -> Option<String> {
    let lower = name.trim().to_ascii_lowercase();
    ["ce-", "ce_", "cloudevents:", "cloudevents_"]
        .iter()
        .find_map(|prefix| lower.strip_prefix(prefix).map(str::to_owned))
        .filter(|rest| !rest.is_empty())
}

/// Reads an envelope from binary mode: CloudEvents attributes as headers (`ce-*`, see
/// [`to_binary_headers`]; also `ce_*` and `cloudEvents:*`/`cloudEvents_*`, any case), the
/// content type from `content-type` (JSON assumed when absent), and the payload from `data`.
/// Headers that are not CloudEvents attributes (e.g. `cs-*` properties) are ignored.
/// Checks as [`from_cloudevent`].
pub fn from_binary(
    headers: impl IntoIterator<Item = (String, String)>,
    data: &[u8],
) -> Result<Envelope, EnvelopeError> {
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut content_type = None;
    for (name, value) in headers {
        if name.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else if let Some(attr) = binary_attribute(&name) {
            attrs.insert(attr, value);
        }
    }
    let mut take = |name: &'static str| -> Result<String, EnvelopeError> {
        attrs
            .remove(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ce_err(format!("required header `ce-{name}` is missing")))
    };
    let specversion = take("specversion")?;
    if specversion != SPEC_VERSION {
        return Err(ce_err(format!(
            "header `ce-specversion`: unsupported version `{specversion}` (expected `{SPEC_VERSION}`)"
        )));
    }
    let mut ce = CloudEvent::new(take("id")?, take("source")?, take("type")?);
    ce.time = attrs.remove("time");
    ce.subject = attrs.remove("subject");
    ce.dataschema = attrs.remove("dataschema");
    // Some producers send `ce-datacontenttype` although the binding says `content-type`.
    ce.datacontenttype = content_type.or_else(|| attrs.remove("datacontenttype"));
    attrs.remove("datacontenttype");
    attrs.remove("data");
    attrs.remove("data_base64");
    for (name, value) in attrs {
        validate_extension_name(&name)?;
        ce.extensions.insert(name, Value::String(value));
    }
    if !data.is_empty() {
        let is_json = ce.datacontenttype.as_deref().is_none_or(is_json_media_type);
        if is_json {
            let v: Value = serde_json::from_slice(data)
                .map_err(|e| ce_err(format!("message body (`data`) is not valid JSON: {e}")))?;
            ce.data = Some(CloudEventData::Json(v));
        } else {
            // Not ours to decode: let from_cloudevent report the content type.
            ce.data = Some(CloudEventData::Json(Value::String(
                String::from_utf8_lossy(data).into_owned(),
            )));
        }
    }
    from_cloudevent(&ce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_names() {
        for ok in ["tenantid", "a", "x1", "comexampleothervalue"] {
            assert!(validate_extension_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "TenantId",
            "tenant_id",
            "tenant-id",
            "abcdefghijklmnopqrstu",
            "data",
            "id",
        ] {
            assert!(validate_extension_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.foo+json"));
        assert!(!is_json_media_type("text/xml"));
        assert!(!is_json_media_type("application/vnd.apache.thrift.binary"));
    }

    #[test]
    fn binary_prefixes() {
        assert_eq!(binary_attribute("ce-id").as_deref(), Some("id"));
        assert_eq!(binary_attribute("CE-Id").as_deref(), Some("id"));
        assert_eq!(binary_attribute("ce_id").as_deref(), Some("id"));
        assert_eq!(binary_attribute("cloudEvents:id").as_deref(), Some("id"));
        assert_eq!(binary_attribute("cs-event-id"), None);
        assert_eq!(binary_attribute("ce-"), None);
    }
}
