//! [`NatsConfig`]: where the server is and how the transport behaves.

use std::time::Duration;

use eventyard_core::TransportError;

/// Configuration of a [`NatsTransport`](crate::NatsTransport).
///
/// Build it with [`NatsConfig::new`] or [`NatsConfig::from_url`] and adjust the public fields;
/// [`NatsTransport::connect`](crate::NatsTransport::connect) validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server addresses, comma-separated (`nats://host:port`, credentials allowed as
    /// `nats://user:pass@host:port`). No default.
    pub servers: String,
    /// Namespace of every subject and stream this transport uses: 1–32 characters of
    /// `[A-Za-z0-9-]`. Transports with different prefixes never see each other's topics.
    /// Default `eventyard`.
    pub prefix: String,
    /// How long [`NatsTransport::connect`](crate::NatsTransport::connect) keeps retrying a server
    /// that does not answer before failing with [`TransportError::Unavailable`]. Default 5 s.
    pub connect_timeout: Duration,
    /// Timeout of JetStream API calls, publish acknowledgements and confirmed settlements.
    /// Default 5 s.
    pub request_timeout: Duration,
    /// Publish acknowledgements awaited concurrently: a window shared by every `publish` call
    /// of the transport, so concurrent calls keep it full between them (a call still returns
    /// only once its own messages are acknowledged). Default 256.
    pub publish_window: usize,
    /// Settle with a server-confirmed ("double") acknowledgement, so that a settlement that did
    /// not reach the server fails instead of being lost silently. Costs one round trip per
    /// settlement. Default `true`.
    pub confirm_settlement: bool,
    /// Largest message body accepted. `None`: the server's `max_payload` less 32 KiB kept for
    /// headers (properties, dead-letter context). Default `None`.
    pub max_message_size: Option<usize>,
}

/// Default subject and stream prefix.
pub const DEFAULT_PREFIX: &str = "eventyard";

impl NatsConfig {
    /// A configuration for `servers` with every default.
    pub fn new(servers: impl Into<String>) -> Self {
        NatsConfig {
            servers: servers.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            publish_window: 256,
            confirm_settlement: true,
            max_message_size: None,
        }
    }

    /// Parses `nats://host:port[,nats://host2:port][?option=value&...]`.
    ///
    /// Options: `prefix`, `connect_timeout_ms`, `request_timeout_ms`, `publish_window`,
    /// `confirm_settlement` (`true`/`false`), `max_message_size` (bytes).
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let (servers, query) = match url.split_once('?') {
            Some((s, q)) => (s, Some(q)),
            None => (url, None),
        };
        if servers.is_empty() {
            return Err(config_error(format!("no server address in `{url}`")));
        }
        for server in servers.split(',') {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| server.trim().starts_with(s));
            if !scheme_ok {
                return Err(config_error(format!(
                    "`{server}` is not a nats:// (or tls://, ws://, wss://) address"
                )));
            }
        }
        let mut cfg = NatsConfig::new(servers);
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "prefix" => cfg.prefix = value.to_owned(),
                "connect_timeout_ms" => {
                    cfg.connect_timeout = Duration::from_millis(number(key, value)?);
                }
                "request_timeout_ms" => {
                    cfg.request_timeout = Duration::from_millis(number(key, value)?);
                }
                "publish_window" => cfg.publish_window = usize_number(key, value)?,
                "confirm_settlement" => {
                    cfg.confirm_settlement = match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(config_error(format!(
                                "confirm_settlement must be true or false, not `{value}`"
                            )));
                        }
                    };
                }
                "max_message_size" => cfg.max_message_size = Some(usize_number(key, value)?),
                _ => return Err(config_error(format!("unknown option `{key}` in `{url}`"))),
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the prefix and the numbers.
    pub fn validate(&self) -> Result<(), TransportError> {
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(config_error(format!(
                "prefix `{}` must be 1-32 characters of [A-Za-z0-9-]",
                self.prefix
            )));
        }
        if self.publish_window == 0 {
            return Err(config_error("publish_window must be at least 1".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(config_error("request_timeout must be positive".into()));
        }
        if self.max_message_size == Some(0) {
            return Err(config_error("max_message_size must be positive".into()));
        }
        Ok(())
    }
}

fn config_error(message: String) -> TransportError {
    TransportError::Config(message)
}

fn number(key: &str, value: &str) -> Result<u64, TransportError> {
    value
        .parse()
        .map_err(|_| config_error(format!("{key} must be a whole number, not `{value}`")))
}

fn usize_number(key: &str, value: &str) -> Result<usize, TransportError> {
    usize::try_from(number(key, value)?)
        .map_err(|_| config_error(format!("{key} is too large: `{value}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_with_options() {
        let cfg = NatsConfig::from_url(
            "nats://127.0.0.1:4222?prefix=ey-test&publish_window=64&confirm_settlement=false\
             &connect_timeout_ms=100&max_message_size=1000",
        )
        .expect("valid url");
        assert_eq!(cfg.servers, "nats://127.0.0.1:4222");
        assert_eq!(cfg.prefix, "ey-test");
        assert_eq!(cfg.publish_window, 64);
        assert!(!cfg.confirm_settlement);
        assert_eq!(cfg.connect_timeout, Duration::from_millis(100));
        assert_eq!(cfg.max_message_size, Some(1000));
    }

    #[test]
    fn defaults() {
        let cfg = NatsConfig::from_url("nats://localhost:4222").expect("valid url");
        assert_eq!(cfg.prefix, DEFAULT_PREFIX);
        assert_eq!(cfg.publish_window, 256);
        assert!(cfg.confirm_settlement);
    }

    #[test]
    fn rejects_bad_input() {
        for url in [
            "",
            "http://x:1",
            "nats://x:1?prefix=a.b",
            "nats://x:1?prefix=a_b",
            "nats://x:1?prefix=",
            "nats://x:1?bogus=1",
            "nats://x:1?publish_window=0",
            "nats://x:1?confirm_settlement=maybe",
        ] {
            assert!(
                matches!(NatsConfig::from_url(url), Err(TransportError::Config(_))),
                "{url} should be rejected"
            );
        }
    }
}
