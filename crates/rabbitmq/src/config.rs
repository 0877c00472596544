//! [`AmqpConfig`]: where the broker is and how the transport uses it.

use std::fmt;
use std::time::Duration;

use eventyard_core::TransportError;

/// The RabbitMQ queue type of subscription queues (main and dead-letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Classic durable queues. Default.
    #[default]
    Classic,
    /// Quorum queues (`x-queue-type=quorum`): replicated on a cluster, slower.
    Quorum,
}

/// Settings of one [`AmqpTransport`](crate::AmqpTransport). Every field documents its default.
///
/// Built with [`AmqpConfig::new`] (defaults) or [`AmqpConfig::from_url`], then adjusted field by
/// field; [`AmqpTransport::connect`](crate::AmqpTransport::connect) validates it.
#[derive(Clone)]
pub struct AmqpConfig {
    /// The AMQP URI handed to lapin (`amqp://user:pass@host:port/vhost`, lapin's own query
    /// parameters such as `heartbeat` or `frame_max` included). No default: see
    /// [`AmqpConfig::new`].
    pub uri: String,
    /// Prefix of every exchange and queue name: 1–32 characters of `[A-Za-z0-9._-]`.
    /// Default `eventyard`.
    pub prefix: String,
    /// Largest message body accepted by `publish`. Default 1 MiB.
    pub max_message_size: usize,
    /// How long [`AmqpTransport::connect`](crate::AmqpTransport::connect) keeps retrying an
    /// unreachable broker before failing with `Unavailable`. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an operation keeps trying to reconnect after the connection dropped before
    /// failing with `Unavailable`. Default 30 s.
    pub reconnect_timeout: Duration,
    /// Publisher-confirm window: messages in flight awaiting their confirm, shared by every
    /// `publish` of the transport (concurrent calls keep it full between them; a call still
    /// returns only once its own messages are confirmed). Default 256.
    pub confirm_window: usize,
    /// Channels (in confirm mode) that publishes are spread over. Default 2.
    pub publisher_channels: usize,
    /// Apply filters that are plain equalities as headers-exchange bindings (`x-match=all`).
    /// When off, every filter is evaluated in the client. Default `true`.
    pub native_filters: bool,
    /// Type of the subscription queues (main and dead-letter). Delay and metadata queues are
    /// always classic. Like [`AmqpConfig::queue_expires`], it cannot change for existing
    /// subscriptions. Default [`QueueType::Classic`].
    pub queue_type: QueueType,
    /// `x-expires` of subscription queues (main, dead-letter and metadata): the broker deletes
    /// a subscription unused for that long. Meant for tests and ephemeral subscriptions.
    /// RabbitMQ refuses to re-declare a queue with other arguments, so changing this for
    /// existing subscriptions makes `ensure_subscription` fail until they are deleted.
    /// Default `None` (never).
    pub queue_expires: Option<Duration>,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("uri", &redact(&self.uri))
            .field("prefix", &self.prefix)
            .field("max_message_size", &self.max_message_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("confirm_window", &self.confirm_window)
            .field("publisher_channels", &self.publisher_channels)
            .field("native_filters", &self.native_filters)
            .field("queue_type", &self.queue_type)
            .field("queue_expires", &self.queue_expires)
            .finish()
    }
}

/// The URI with its password replaced by `***`.
pub(crate) fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    }
}

impl AmqpConfig {
    /// Defaults for the broker at `uri` (a plain AMQP URI, passed to lapin as is).
    pub fn new(uri: impl Into<String>) -> Self {
        AmqpConfig {
            uri: uri.into(),
            prefix: "eventyard".to_owned(),
            max_message_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(30),
            confirm_window: 256,
            publisher_channels: 2,
            native_filters: true,
            queue_type: QueueType::Classic,
            queue_expires: None,
        }
    }

    /// Parses `amqp[s]://user:pass@host:port/vhost?prefix=…`. The transport's own query
    /// parameters are taken out; the others (lapin's: `heartbeat`, `frame_max`,
    /// `channel_max`, `connection_timeout`, `auth_mechanism`) stay in [`AmqpConfig::uri`].
    ///
    /// | parameter | field |
    /// |---|---|
    /// | `prefix` | [`prefix`](AmqpConfig::prefix) |
    /// | `max_message_size` (bytes) | [`max_message_size`](AmqpConfig::max_message_size) |
    /// | `connect_timeout_ms` | [`connect_timeout`](AmqpConfig::connect_timeout) |
    /// | `reconnect_timeout_ms` | [`reconnect_timeout`](AmqpConfig::reconnect_timeout) |
    /// | `confirm_window` | [`confirm_window`](AmqpConfig::confirm_window) |
    /// | `publisher_channels` | [`publisher_channels`](AmqpConfig::publisher_channels) |
    /// | `native_filters` (`true`/`false`) | [`native_filters`](AmqpConfig::native_filters) |
    /// | `queue_type` (`classic`/`quorum`) | [`queue_type`](AmqpConfig::queue_type) |
    /// | `queue_expires_ms` | [`queue_expires`](AmqpConfig::queue_expires) |
    ///
    /// # Errors
    /// [`TransportError::Config`] for another scheme, a bad value, or an invalid result (see
    /// [`AmqpConfig::validate`]).
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(TransportError::Config(format!(
                "`{}` is not an amqp:// or amqps:// URL",
                redact(url)
            )));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut cfg = AmqpConfig::new(base);
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |what: &str| {
                TransportError::Config(format!("query parameter `{key}={value}`: {what}"))
            };
            let number = || value.parse::<u64>().map_err(|_| bad("expected an integer"));
            match key {
                "prefix" => cfg.prefix = value.to_owned(),
                "max_message_size" => {
                    cfg.max_message_size = usize::try_from(number()?).map_err(|_| bad("too big"))?
                }
                "connect_timeout_ms" => cfg.connect_timeout = Duration::from_millis(number()?),
                "reconnect_timeout_ms" => cfg.reconnect_timeout = Duration::from_millis(number()?),
                "confirm_window" => {
                    cfg.confirm_window = usize::try_from(number()?).map_err(|_| bad("too big"))?
                }
                "publisher_channels" => {
                    cfg.publisher_channels =
                        usize::try_from(number()?).map_err(|_| bad("too big"))?
                }
                "native_filters" => {
                    cfg.native_filters = match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("expected true or false")),
                    }
                }
                "queue_type" => {
                    cfg.queue_type = match value {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        _ => return Err(bad("expected classic or quorum")),
                    }
                }
                "queue_expires_ms" => {
                    cfg.queue_expires = Some(Duration::from_millis(number()?));
                }
                _ => passed.push(pair),
            }
        }
        if !passed.is_empty() {
            cfg.uri = format!("{base}?{}", passed.join("&"));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the prefix and the numbers.
    ///
    /// # Errors
    /// [`TransportError::Config`] naming the offending field.
    pub fn validate(&self) -> Result<(), TransportError> {
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(TransportError::Config(format!(
                "prefix `{}`: use 1-32 of [A-Za-z0-9._-]",
                self.prefix
            )));
        }
        if self.max_message_size == 0 {
            return Err(TransportError::Config(
                "max_message_size must be positive".into(),
            ));
        }
        if self.confirm_window == 0 {
            return Err(TransportError::Config(
                "confirm_window must be positive".into(),
            ));
        }
        if self.publisher_channels == 0 || self.publisher_channels > 64 {
            return Err(TransportError::Config(
                "publisher_channels must be between 1 and 64".into(),
            ));
        }
        if let Some(e) = self.queue_expires
            && (e.is_zero() || e.as_millis() > u128::from(u32::MAX))
        {
            return Err(TransportError::Config(
                "queue_expires must be between 1 ms and 2^32-1 ms".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_takes_out_its_own_parameters() {
        let cfg = AmqpConfig::from_url(
            "amqp://u:secret@h:5672/%2f?prefix=app&heartbeat=10&max_message_size=2048\
             &native_filters=false&queue_expires_ms=60000&connect_timeout_ms=100\
             &queue_type=quorum",
        )
        .expect("valid");
        assert_eq!(cfg.prefix, "app");
        assert_eq!(cfg.max_message_size, 2048);
        assert!(!cfg.native_filters);
        assert_eq!(cfg.queue_expires, Some(Duration::from_secs(60)));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(100));
        assert_eq!(cfg.queue_type, QueueType::Quorum);
        assert_eq!(cfg.uri, "amqp://u:secret@h:5672/%2f?heartbeat=10");
        assert!(!format!("{cfg:?}").contains("secret"), "{cfg:?}");
    }

    #[test]
    fn from_url_rejects_bad_input() {
        for url in [
            "http://h",
            "amqp://h?prefix=bad/prefix",
            "amqp://h?prefix=",
            "amqp://h?max_message_size=x",
            "amqp://h?native_filters=maybe",
            "amqp://h?publisher_channels=0",
            "amqp://h?queue_type=stream",
        ] {
            assert!(
                matches!(AmqpConfig::from_url(url), Err(TransportError::Config(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("amqp://u:p@h:1/v?x=1"), "amqp://u:***@h:1/v?x=1");
        assert_eq!(redact("amqp://h:1/v"), "amqp://h:1/v");
    }
}
