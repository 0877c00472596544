//! The JetStream API calls the transport makes, in the form NATS Server 2.9 understands.
//!
//! async-nats 0.51 creates consumers through the 2.10 `CONSUMER.CREATE.<stream>.<name>.<filter>`
//! subject, which a 2.9 server does not serve; durable consumers are therefore created and
//! updated here through `CONSUMER.DURABLE.CREATE.<stream>.<durable>` with an explicit config.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::RequestErrorKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{backend, unavailable};
use eventyard_core::TransportError;

/// `stream not found`.
pub(crate) const STREAM_NOT_FOUND: u32 = 10059;
/// `consumer not found`.
pub(crate) const CONSUMER_NOT_FOUND: u32 = 10014;
/// `stream name already in use with a different configuration`.
const STREAM_NAME_EXIST: u32 = 10058;

/// An error answered by the JetStream API.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ApiError {
    /// HTTP-like status.
    #[serde(default)]
    pub code: u16,
    /// JetStream error code.
    #[serde(default)]
    pub err_code: u32,
    /// What went wrong.
    #[serde(default)]
    pub description: String,
}

impl ApiError {
    /// True for "stream not found" and "consumer not found".
    pub(crate) fn is_not_found(&self) -> bool {
        self.err_code == STREAM_NOT_FOUND || self.err_code == CONSUMER_NOT_FOUND
    }

    fn into_transport(self, what: &str) -> TransportError {
        backend(format!(
            "{what}: {} (status {}, code {})",
            self.description, self.code, self.err_code
        ))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response<T> {
    Err { error: ApiError },
    Ok(T),
}

/// The parts of a consumer's info the transport reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConsumerInfo {
    /// The consumer's configuration.
    pub config: ConsumerConfigInfo,
}

/// The parts of a consumer's configuration the transport reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConsumerConfigInfo {
    /// Where the transport keeps the subscription's settings.
    #[serde(default)]
    pub description: Option<String>,
    /// Lock duration, in nanoseconds.
    #[serde(default)]
    pub ack_wait: u64,
}

/// A durable pull consumer as the transport declares it.
#[derive(Debug, Clone)]
pub(crate) struct DurableSpec<'a> {
    /// Durable name.
    pub name: &'a str,
    /// Description (the subscription's settings, JSON).
    pub description: &'a str,
    /// `new` or `all`.
    pub deliver_policy: &'static str,
    /// How long a delivered message stays locked.
    pub ack_wait: Duration,
    /// Filter subject.
    pub filter_subject: &'a str,
}

#[derive(Serialize)]
struct DurableConfig<'a> {
    durable_name: &'a str,
    description: &'a str,
    deliver_policy: &'static str,
    ack_policy: &'static str,
    ack_wait: i64,
    max_deliver: i64,
    filter_subject: &'a str,
    replay_policy: &'static str,
    max_ack_pending: i64,
}

/// Sequence numbers of a stream.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct StreamState {
    /// Messages stored.
    #[serde(default)]
    pub messages: u64,
    /// Sequence of the oldest message.
    #[serde(default)]
    pub first_seq: u64,
    /// Sequence of the newest message.
    #[serde(default)]
    pub last_seq: u64,
}

#[derive(Deserialize)]
struct StreamInfoState {
    state: StreamState,
}

/// A consumer's progress, as the trimming of a stream needs it.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct ConsumerProgress {
    /// Last delivered position.
    pub delivered: SequencePair,
    /// Everything up to here is acknowledged.
    pub ack_floor: SequencePair,
    /// Delivered, not yet acknowledged (including those waiting for redelivery).
    #[serde(default)]
    pub num_ack_pending: u64,
    /// Matching messages not yet delivered.
    #[serde(default)]
    pub num_pending: u64,
}

/// A consumer and stream sequence.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct SequencePair {
    /// Stream sequence.
    #[serde(default)]
    pub stream_seq: u64,
}

#[derive(Deserialize)]
struct ConsumerList {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    consumers: Option<Vec<ConsumerProgress>>,
}

#[derive(Deserialize)]
struct StreamNames {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

/// A duration in nanoseconds as the server's (signed 64-bit) fields take it, saturating.
pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// JetStream API client over the transport's context.
#[derive(Clone)]
pub(crate) struct Api {
    js: jetstream::Context,
}

impl Api {
    /// An API client using `js` (whose timeout bounds every call).
    pub(crate) fn new(js: jetstream::Context) -> Self {
        Api { js }
    }

    /// Calls `$JS.API.<subject>`; `Ok(Err(_))` when the API answered with an error.
    async fn call<T: DeserializeOwned>(
        &self,
        subject: String,
        body: &Value,
    ) -> Result<Result<T, ApiError>, TransportError> {
        match self
            .js
            .request::<_, _, Response<T>>(subject.clone(), body)
            .await
        {
            Ok(Response::Ok(v)) => Ok(Ok(v)),
            Ok(Response::Err { error }) => Ok(Err(error)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => unavailable(format!(
                    "JetStream is not available (no responders to {subject})"
                )),
                RequestErrorKind::TimedOut => {
                    unavailable(format!("JetStream request {subject} timed out"))
                }
                _ => backend(format!("JetStream request {subject}: {e}")),
            }),
        }
    }

    /// Checks that JetStream answers.
    pub(crate) async fn ping(&self) -> Result<(), TransportError> {
        self.call::<Value>("INFO".into(), &json!({}))
            .await?
            .map(|_| ())
            .map_err(|e| e.into_transport("JetStream account info"))
    }

    /// Creates a stream; an existing stream of that name is left as it is.
    pub(crate) async fn create_stream(&self, config: &Value) -> Result<(), TransportError> {
        let name = config["name"].as_str().unwrap_or_default().to_owned();
        match self
            .call::<Value>(format!("STREAM.CREATE.{name}"), config)
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.err_code == STREAM_NAME_EXIST => Ok(()),
            Err(e) => Err(e.into_transport(&format!("creating stream {name}"))),
        }
    }

    /// True when the stream exists.
    pub(crate) async fn stream_exists(&self, name: &str) -> Result<bool, TransportError> {
        match self
            .call::<Value>(format!("STREAM.INFO.{name}"), &json!({}))
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if e.err_code == STREAM_NOT_FOUND => Ok(false),
            Err(e) => Err(e.into_transport(&format!("stream info {name}"))),
        }
    }

    /// A stream's sequence numbers; `None` if it does not exist.
    pub(crate) async fn stream_state(
        &self,
        name: &str,
    ) -> Result<Option<StreamState>, TransportError> {
        match self
            .call::<StreamInfoState>(format!("STREAM.INFO.{name}"), &json!({}))
            .await?
        {
            Ok(info) => Ok(Some(info.state)),
            Err(e) if e.err_code == STREAM_NOT_FOUND => Ok(None),
            Err(e) => Err(e.into_transport(&format!("stream info {name}"))),
        }
    }

    /// The progress of every consumer of a stream.
    pub(crate) async fn consumer_progress(
        &self,
        stream: &str,
    ) -> Result<Vec<ConsumerProgress>, TransportError> {
        let mut all = Vec::new();
        loop {
            let body = json!({ "offset": all.len() });
            let page: ConsumerList = self
                .call(format!("CONSUMER.LIST.{stream}"), &body)
                .await?
                .map_err(|e| e.into_transport(&format!("listing consumers of {stream}")))?;
            let got = page.consumers.unwrap_or_default();
            let done = got.is_empty() || all.len() + got.len() >= page.total;
            all.extend(got);
            if done {
                return Ok(all);
            }
        }
    }

    /// Removes the messages with a sequence below `seq`.
    pub(crate) async fn purge_below(&self, stream: &str, seq: u64) -> Result<(), TransportError> {
        match self
            .call::<Value>(format!("STREAM.PURGE.{stream}"), &json!({ "seq": seq }))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_transport(&format!("trimming {stream}"))),
        }
    }

    /// Deletes a stream; a missing one is fine.
    pub(crate) async fn delete_stream(&self, name: &str) -> Result<(), TransportError> {
        match self
            .call::<Value>(format!("STREAM.DELETE.{name}"), &json!({}))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_transport(&format!("deleting stream {name}"))),
        }
    }

    /// Removes the messages of one subject from a stream; a missing stream is fine.
    pub(crate) async fn purge_subject(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<(), TransportError> {
        let body = json!({ "filter": subject });
        match self
            .call::<Value>(format!("STREAM.PURGE.{stream}"), &body)
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_transport(&format!("purging {subject} from {stream}"))),
        }
    }

    /// Names of the streams whose subjects overlap `subject`.
    pub(crate) async fn stream_names(&self, subject: &str) -> Result<Vec<String>, TransportError> {
        let mut names = Vec::new();
        loop {
            let body = json!({ "offset": names.len(), "subject": subject });
            let page: StreamNames = self
                .call(String::from("STREAM.NAMES"), &body)
                .await?
                .map_err(|e| e.into_transport("listing streams"))?;
            let got = page.streams.unwrap_or_default();
            let done = got.is_empty() || names.len() + got.len() >= page.total;
            names.extend(got);
            if done {
                return Ok(names);
            }
        }
    }

    /// Creates a durable pull consumer (explicit ack, unlimited deliveries and pending acks), or
    /// updates the editable parts (description, ack wait, filter subject) of an existing one.
    pub(crate) async fn create_durable(
        &self,
        stream: &str,
        spec: &DurableSpec<'_>,
    ) -> Result<(), TransportError> {
        let config = DurableConfig {
            durable_name: spec.name,
            description: spec.description,
            deliver_policy: spec.deliver_policy,
            ack_policy: "explicit",
            ack_wait: nanos(spec.ack_wait),
            max_deliver: -1,
            filter_subject: spec.filter_subject,
            replay_policy: "instant",
            max_ack_pending: -1,
        };
        let body = json!({ "stream_name": stream, "config": config });
        self.call::<Value>(
            format!("CONSUMER.DURABLE.CREATE.{stream}.{}", spec.name),
            &body,
        )
        .await?
        .map(|_| ())
        .map_err(|e| e.into_transport(&format!("declaring consumer {} on {stream}", spec.name)))
    }

    /// A consumer's info; `None` when it (or its stream) does not exist.
    pub(crate) async fn consumer_info(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<ConsumerInfo>, TransportError> {
        match self
            .call::<ConsumerInfo>(format!("CONSUMER.INFO.{stream}.{name}"), &json!({}))
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into_transport(&format!("consumer info {name} on {stream}"))),
        }
    }

    /// Deletes a consumer; a missing one (or stream) is fine.
    pub(crate) async fn delete_consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<(), TransportError> {
        match self
            .call::<Value>(format!("CONSUMER.DELETE.{stream}.{name}"), &json!({}))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_transport(&format!("deleting consumer {name} on {stream}"))),
        }
    }
}
