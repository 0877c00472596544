//! The canonical event envelope (SPEC §1): JSON, camelCase, one shape for events and commands.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::EnvelopeError;
use crate::event::Event;
use crate::event_type::{EventType, MessageKind};
use crate::ids::{CorrelationId, EventId, ModuleId, ProjectId, TenantId, TraceId};
use crate::properties::{Properties, PropertyValue, names};

/// Header naming the message kind (`event` / `command`); absent means `event`.
pub const KIND_HEADER: &str = "messageKind";

/// The canonical envelope. Build one with [`Envelope::new`], [`Envelope::for_event`] or
/// [`Envelope::child`]; read one with [`Envelope::from_json`], which validates every field.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per event instance (`evt-<uuidv7>`).
    pub event_id: EventId,
    /// NounVerbPastTense (events) or VerbNoun (commands); the catalog key.
    pub event_type: EventType,
    /// Isolation key, enforced everywhere.
    pub tenant_id: TenantId,
    /// Present when the event is project-scoped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Present when one module is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_id: Option<ModuleId>,
    /// One id for a whole lifecycle.
    pub trace_id: TraceId,
    /// One workflow; sagas key on it.
    pub correlation_id: CorrelationId,
    /// The event that directly caused this one; `null` for a root event.
    pub causation_id: Option<EventId>,
    /// When the fact happened (RFC 3339, UTC).
    #[serde(serialize_with = "ser_time")]
    pub occurred_at: DateTime<Utc>,
    /// Extension: payload schema version (mirrors `cs-schema-version`), default 1.
    pub schema_version: u32,
    /// Extension: free headers; `messageKind` = `command` marks a command.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The event's data; shape given by the catalog. Always a JSON object.
    pub payload: Value,
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Wire form with every field optional, so that validation can name what is missing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    event_id: Option<String>,
    event_type: Option<String>,
    tenant_id: Option<String>,
    project_id: Option<String>,
    module_id: Option<String>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    causation_id: Option<Value>,
    occurred_at: Option<String>,
    schema_version: Option<Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Value>,
}

/// Distinguishes "absent" (None) from "present and null" (Some(Null)).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Event or command, from the `messageKind` header of `headers`.
fn kind_of(headers: &BTreeMap<String, String>) -> MessageKind {
    match headers.get(KIND_HEADER).map(String::as_str) {
        Some("command") => MessageKind::Command,
        _ => MessageKind::Event,
    }
}

/// The JSON kind of a value, for error messages (`object`, `array`, ...).
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses an RFC 3339 timestamp that must be in UTC (`Z` or `+00:00`).
pub fn parse_utc(value: &str) -> Result<DateTime<Utc>, EnvelopeError> {
    let t = DateTime::parse_from_rfc3339(value).map_err(|e| EnvelopeError::InvalidTime {
        value: value.to_owned(),
        reason: format!("not RFC 3339 ({e})"),
    })?;
    if t.offset().local_minus_utc() != 0 {
        return Err(EnvelopeError::InvalidTime {
            value: value.to_owned(),
            reason: "must be UTC (`Z` or `+00:00`)".into(),
        });
    }
    Ok(t.with_timezone(&Utc))
}

impl Envelope {
    /// A root envelope: fresh eventId, traceId and correlationId, no causation, `occurredAt` now.
    /// `payload` must be a JSON object (checked by [`Envelope::validate`]).
    pub fn new(event_type: EventType, tenant_id: TenantId, payload: Value) -> Self {
        Envelope {
            event_id: EventId::generate(),
            event_type,
            tenant_id,
            project_id: None,
            module_id: None,
            trace_id: TraceId::generate(),
            correlation_id: CorrelationId::generate(),
            causation_id: None,
            occurred_at: Utc::now(),
            schema_version: 1,
            headers: BTreeMap::new(),
            payload,
        }
    }

    /// A root envelope carrying a typed event.
    pub fn for_event<E: Event>(event: &E, tenant_id: TenantId) -> Result<Self, EnvelopeError> {
        let mut env = Envelope::new(E::event_type()?, tenant_id, encode_payload(event)?);
        env.schema_version = E::SCHEMA_VERSION;
        if E::KIND == MessageKind::Command {
            env.headers.insert(KIND_HEADER.into(), "command".into());
        }
        Ok(env)
    }

    /// An envelope caused by this one: inherits tenantId, traceId, correlationId, projectId and
    /// moduleId; causationId = this eventId; fresh eventId; `occurredAt` now.
    pub fn child(&self, event_type: EventType, payload: Value) -> Self {
        let mut env = Envelope::new(event_type, self.tenant_id.clone(), payload);
        env.inherit_from(self);
        env
    }

    /// Applies the propagation rule from `cause` to this envelope (SPEC §1): tenantId, traceId,
    /// correlationId (and projectId/moduleId when this envelope has none) are inherited and
    /// causationId is set to `cause.eventId`.
    pub fn inherit_from(&mut self, cause: &Envelope) {
        self.tenant_id = cause.tenant_id.clone();
        self.trace_id = cause.trace_id.clone();
        self.correlation_id = cause.correlation_id.clone();
        self.causation_id = Some(cause.event_id.clone());
        if self.project_id.is_none() {
            self.project_id = cause.project_id.clone();
        }
        if self.module_id.is_none() {
            self.module_id = cause.module_id.clone();
        }
    }

    /// Sets the project id.
    pub fn with_project(mut self, id: ProjectId) -> Self {
        self.project_id = Some(id);
        self
    }

    /// Sets the module id.
    pub fn with_module(mut self, id: ModuleId) -> Self {
        self.module_id = Some(id);
        self
    }

    /// Sets the trace id.
    pub fn with_trace(mut self, id: TraceId) -> Self {
        self.trace_id = id;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation(mut self, id: CorrelationId) -> Self {
        self.correlation_id = id;
        self
    }

    /// Sets one header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Event or command, from the `messageKind` header.
    pub fn kind(&self) -> MessageKind {
        kind_of(&self.headers)
    }

    /// Checks the invariants the types cannot: type-name rule for the kind, payload is an
    /// object, schemaVersion >= 1.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        // The rule of `EventType::parse`, without copying the name (every publish validates).
        let name = self.event_type.as_str();
        crate::event_type::check(name, self.kind()).map_err(|reason| {
            EnvelopeError::InvalidEventType {
                value: name.to_owned(),
                reason,
            }
        })?;
        self.validate_untyped()
    }

    /// [`Envelope::validate`] without the type-name rule (checked by whoever built the
    /// [`EventType`] under this envelope's kind).
    fn validate_untyped(&self) -> Result<(), EnvelopeError> {
        if !self.payload.is_object() {
            return Err(EnvelopeError::PayloadNotObject {
                found: json_kind(&self.payload),
            });
        }
        if self.schema_version == 0 {
            return Err(EnvelopeError::InvalidSchemaVersion { found: "0".into() });
        }
        Ok(())
    }

    /// Serializes to canonical JSON bytes (validate first if the envelope was hand-built).
    ///
    /// The bytes are those of the derived `Serialize` (`serde_json::to_vec`), written directly
    /// into a buffer sized for them: field names as literals, identifiers copied unless they
    /// need escaping, the time formatted without an intermediate `String`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_len_hint());
        out.extend_from_slice(b"{\"eventId\":");
        json_id(&mut out, self.event_id.as_str());
        out.extend_from_slice(b",\"eventType\":");
        json_id(&mut out, self.event_type.as_str());
        out.extend_from_slice(b",\"tenantId\":");
        json_id(&mut out, self.tenant_id.as_str());
        if let Some(v) = &self.project_id {
            out.extend_from_slice(b",\"projectId\":");
            json_id(&mut out, v.as_str());
        }
        if let Some(v) = &self.module_id {
            out.extend_from_slice(b",\"moduleId\":");
            json_id(&mut out, v.as_str());
        }
        out.extend_from_slice(b",\"traceId\":");
        json_id(&mut out, self.trace_id.as_str());
        out.extend_from_slice(b",\"correlationId\":");
        json_id(&mut out, self.correlation_id.as_str());
        out.extend_from_slice(b",\"causationId\":");
        match &self.causation_id {
            Some(c) => json_id(&mut out, c.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"occurredAt\":\"");
        write_time(&mut out, &self.occurred_at);
        out.extend_from_slice(b"\",\"schemaVersion\":");
        // Writing a number into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.schema_version);
        if !self.headers.is_empty() {
            out.extend_from_slice(b",\"headers\":{");
            for (i, (k, v)) in self.headers.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(&mut out, k);
                out.push(b':');
                json_str(&mut out, v);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"payload\":");
        json_value(&mut out, &self.payload);
        out.push(b'}');
        out
    }

    /// A close upper estimate of [`Envelope::to_json`]'s length, so that its buffer is
    /// allocated once.
    fn json_len_hint(&self) -> usize {
        // Field names, quotes and separators of every field, and the longest time text.
        const FIXED: usize = 230;
        let ids = [
            self.event_id.as_str(),
            self.event_type.as_str(),
            self.tenant_id.as_str(),
            self.trace_id.as_str(),
            self.correlation_id.as_str(),
        ]
        .iter()
        .map(|s| s.len())
        .sum::<usize>();
        let optional = [
            self.project_id.as_ref().map(|v| v.as_str().len() + 16),
            self.module_id.as_ref().map(|v| v.as_str().len() + 15),
            self.causation_id.as_ref().map(|v| v.as_str().len()),
        ]
        .iter()
        .flatten()
        .sum::<usize>();
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>();
        FIXED + ids + optional + headers + json_len_estimate(&self.payload)
    }

    /// Parses and validates an envelope; the error names the first field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return Err(EnvelopeError::InvalidUtf8 {
                    offset: e.valid_up_to(),
                });
            }
        };
        // From the validated text: serde_json then skips validating every string's UTF-8
        // again, as it must for bytes.
        let raw: RawEnvelope = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(_) => {
                // Slow path, only on failure: re-parse to learn the path of the bad field.
                let de = &mut serde_json::Deserializer::from_str(text);
                let err = serde_path_to_error::deserialize::<_, RawEnvelope>(de)
                    .err()
                    .map(|e| {
                        let path = e.path().to_string();
                        if path == "." || path.is_empty() {
                            e.into_inner().to_string()
                        } else {
                            format!("field `{path}`: {}", e.into_inner())
                        }
                    })
                    .unwrap_or_else(|| "unparseable".into());
                return Err(EnvelopeError::Json { message: err });
            }
        };
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEnvelope) -> Result<Self, EnvelopeError> {
        fn req(v: Option<String>, field: &'static str) -> Result<String, EnvelopeError> {
            v.ok_or(EnvelopeError::MissingField { field })
        }
        let event_id = EventId::parse(req(raw.event_id, "eventId")?)?;
        let event_type_text = req(raw.event_type, "eventType")?;
        let tenant_id = TenantId::parse(req(raw.tenant_id, "tenantId")?)?;
        let project_id = raw.project_id.map(ProjectId::parse).transpose()?;
        let module_id = raw.module_id.map(ModuleId::parse).transpose()?;
        let trace_id = TraceId::parse(req(raw.trace_id, "traceId")?)?;
        let correlation_id = CorrelationId::parse(req(raw.correlation_id, "correlationId")?)?;
        let causation_id = match raw.causation_id {
            None => {
                return Err(EnvelopeError::MissingField {
                    field: "causationId",
                });
            }
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(EventId::parse(s).map_err(|mut e| {
                e.kind = "causationId";
                e
            })?),
            Some(other) => {
                return Err(EnvelopeError::Json {
                    message: format!(
                        "field `causationId`: expected an eventId string or null, found {}",
                        json_kind(&other)
                    ),
                });
            }
        };
        let occurred_at = parse_utc(&req(raw.occurred_at, "occurredAt")?)?;
        let schema_version = match raw.schema_version {
            None => 1,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v >= 1 && v <= u64::from(u32::MAX) => v as u32,
                _ => {
                    return Err(EnvelopeError::InvalidSchemaVersion {
                        found: n.to_string(),
                    });
                }
            },
            Some(other) => {
                return Err(EnvelopeError::InvalidSchemaVersion {
                    found: other.to_string(),
                });
            }
        };
        let payload = raw
            .payload
            .ok_or(EnvelopeError::MissingField { field: "payload" })?;
        // The type name is checked once, under the kind the headers give.
        let event_type = EventType::parse(event_type_text, kind_of(&raw.headers))?;
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
            headers: raw.headers,
            payload,
        };
        env.validate_untyped()?;
        Ok(env)
    }

    /// Decodes the payload as the typed event `E`, checking the event type first.
    pub fn decode<E: Event>(&self) -> Result<E, EnvelopeError> {
        if self.event_type.as_str() != E::EVENT_TYPE {
            return Err(EnvelopeError::TypeMismatch {
                expected: E::EVENT_TYPE.to_owned(),
                found: self.event_type.as_str().to_owned(),
            });
        }
        E::deserialize(&self.payload).map_err(|e| EnvelopeError::Payload {
            event_type: E::EVENT_TYPE.to_owned(),
            message: e.to_string(),
        })
    }

    /// The broker application properties of this envelope (`cs-*`, headers as `cs-h-<name>`).
    pub fn properties(&self) -> Properties {
        use std::borrow::Cow::Borrowed;
        let s = |v: &str| PropertyValue::String(v.to_owned());
        // Pushed in name order, so that building the map is one pass over a sorted list
        // instead of a search per insert.
        let mut p = Vec::with_capacity(10 + self.headers.len());
        if let Some(c) = &self.causation_id {
            p.push((Borrowed(names::CAUSATION_ID), s(c.as_str())));
        }
        p.push((
            Borrowed(names::CORRELATION_ID),
            s(self.correlation_id.as_str()),
        ));
        p.push((Borrowed(names::EVENT_ID), s(self.event_id.as_str())));
        p.push((Borrowed(names::EVENT_TYPE), s(self.event_type.as_str())));
        for (k, v) in &self.headers {
            if k != KIND_HEADER {
                p.push((format!("{}{k}", names::HEADER_PREFIX).into(), s(v)));
            }
        }
        p.push((Borrowed(names::MESSAGE_KIND), s(self.kind().as_str())));
        if let Some(v) = &self.module_id {
            p.push((Borrowed(names::MODULE_ID), s(v.as_str())));
        }
        if let Some(v) = &self.project_id {
            p.push((Borrowed(names::PROJECT_ID), s(v.as_str())));
        }
        p.push((
            Borrowed(names::SCHEMA_VERSION),
            PropertyValue::from(self.schema_version),
        ));
        p.push((Borrowed(names::TENANT_ID), s(self.tenant_id.as_str())));
        p.push((Borrowed(names::TRACE_ID), s(self.trace_id.as_str())));
        Properties::from_entries(p)
    }
}

/// Appends an identifier or event type as a JSON string: quoted, without looking for
/// characters to escape, since their validation on construction admits none (letters,
/// digits, `-`, `.`, `_`, and the braces and colons of the UUID forms an event id accepts).
fn json_id(out: &mut Vec<u8>, s: &str) {
    debug_assert!(
        !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
        "{s:?}"
    );
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Appends `s` as a JSON string, exactly as `serde_json` writes it: copied as is when nothing
/// in it needs escaping (the usual case for identifiers), else through `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Not short-circuiting: the whole scan compiles to vector compares.
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !escapes {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(out, s);
    }
}

/// Appends `v` as `serde_json` writes it (compact), its strings through [`json_str`].
fn json_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => json_str(out, s),
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, k);
                out.push(b':');
                json_value(out, v);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(out, v);
            }
            out.push(b']');
        }
        // Writing a scalar into a Vec cannot fail.
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            let _ = serde_json::to_writer(out, v);
        }
    }
}

/// Appends `t` as `to_rfc3339_opts(SecondsFormat::AutoSi, true)` writes it, without the
/// intermediate `String` (years outside 0..=9999 and leap seconds go through chrono).
fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        return;
    }
    let two = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    let y = year as u32;
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    if nanos != 0 {
        let (value, digits) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        out.push(b'.');
        let mut buf = [b'0'; 9];
        let mut v = value;
        for d in buf[..digits].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
    }
    out.push(b'Z');
}

/// A rough upper estimate of a JSON value's serialized length (escapes aside), for presizing.
fn json_len_estimate(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|v| json_len_estimate(v) + 1).sum::<usize>(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + json_len_estimate(v))
                .sum::<usize>()
        }
    }
}

/// Serializes a typed event's payload, insisting on a JSON object.
pub(crate) fn encode_payload<E: Serialize>(event: &E) -> Result<Value, EnvelopeError> {
    let v = serde_json::to_value(event).map_err(|e| EnvelopeError::Json {
        message: format!("payload: {e}"),
    })?;
    if !v.is_object() {
        return Err(EnvelopeError::PayloadNotObject {
            found: json_kind(&v),
        });
    }
    Ok(v)
}
