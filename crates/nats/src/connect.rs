//! Connecting to the server: bounded retry at start, unlimited reconnection afterwards.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use eventyard_core::TransportError;
use tokio::time::Instant;

use crate::config::NatsConfig;
use crate::error::unavailable;

/// Pause between connection attempts at start.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Connects to one of `cfg.servers`, retrying for `cfg.connect_timeout`.
///
/// Once connected, async-nats reconnects by itself for as long as the client lives
/// (subscriptions are restored; requests in flight during an outage time out and are reported
/// as failures by the callers).
pub(crate) async fn connect(cfg: &NatsConfig) -> Result<Client, TransportError> {
    let addrs: Vec<ServerAddr> = cfg
        .servers
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<ServerAddr>()
                .map_err(|e| TransportError::Config(format!("bad server address `{s}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = cfg.connect_timeout.saturating_sub(start.elapsed());
        let options = ConnectOptions::new()
            .name("eventyard")
            .connection_timeout(left.clamp(Duration::from_millis(100), Duration::from_secs(2)))
            .request_timeout(Some(cfg.request_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // 0, 100, 200 ... ms, at most 2 s between attempts (async-nats: up to 4 s).
                let steps = u64::try_from(attempts.saturating_sub(1)).unwrap_or(u64::MAX);
                Duration::from_millis(steps.saturating_mul(100).min(2000))
            })
            .event_callback(|event| async move {
                match event {
                    Event::Connected => tracing::info!("nats: connected"),
                    Event::Disconnected => tracing::warn!("nats: disconnected; reconnecting"),
                    other => tracing::debug!("nats: {other}"),
                }
            });
        match options.connect(addrs.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                if start.elapsed() + RETRY_PAUSE >= cfg.connect_timeout {
                    return Err(unavailable(format!(
                        "cannot connect to {} ({attempts} attempts in {:?}): {e}",
                        cfg.servers,
                        start.elapsed()
                    )));
                }
                tracing::debug!("nats: connecting to {} failed ({e}); retrying", cfg.servers);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
