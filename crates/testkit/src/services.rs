//! Finding the real engines tests run against.
//!
//! Each engine is found from its environment variable (`EVENTYARD_AMQP_URL`,
//! `EVENTYARD_NATS_URL`, `EVENTYARD_PG_URL`) or, failing that, at its standard loopback port if
//! something answers there. Under CI (`CI=true`) or with `EVENTYARD_REQUIRE_SERVICES=1`, a missing
//! engine fails the test; otherwise the test is skipped with a printed reason.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An external engine used by tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
    /// NATS with JetStream.
    Nats,
    /// PostgreSQL.
    Postgres,
}

impl Service {
    /// Environment variable holding the URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Service::Amqp => "EVENTYARD_AMQP_URL",
            Service::Nats => "EVENTYARD_NATS_URL",
            Service::Postgres => "EVENTYARD_PG_URL",
        }
    }

    /// URL used when the variable is unset.
    pub fn default_url(self) -> &'static str {
        match self {
            Service::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/test",
        }
    }

    fn default_addr(self) -> &'static str {
        match self {
            Service::Amqp => "127.0.0.1:5672",
            Service::Nats => "127.0.0.1:4222",
            Service::Postgres => "127.0.0.1:5432",
        }
    }

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Amqp => "RabbitMQ",
            Service::Nats => "NATS JetStream",
            Service::Postgres => "PostgreSQL",
        }
    }
}

/// True when missing engines must fail tests rather than skip them.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("EVENTYARD_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn reachable(addr: &str) -> bool {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
}

/// The engine's URL if it is configured or answering on its standard port.
pub fn url(service: Service) -> Option<String> {
    if let Ok(u) = std::env::var(service.env_var())
        && !u.is_empty()
    {
        return Some(u);
    }
    reachable(service.default_addr()).then(|| service.default_url().to_owned())
}

/// The engine's URL; `None` (after printing why the test is skipped) when it is absent outside
/// CI. Under CI an absent engine panics: the run must fail, not skip.
pub fn require(service: Service) -> Option<String> {
    match url(service) {
        Some(u) => Some(u),
        None if required() => panic!(
            "{} is required (CI=true or EVENTYARD_REQUIRE_SERVICES=1) but nothing answers at {} \
             and {} is unset; start it with scripts/services.sh",
            service.name(),
            service.default_addr(),
            service.env_var()
        ),
        None => {
            eprintln!(
                "skipped: {} not reachable at {} (set {} to point at one)",
                service.name(),
                service.default_addr(),
                service.env_var()
            );
            None
        }
    }
}
