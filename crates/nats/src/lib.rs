//! eventyard transport over NATS JetStream ([async-nats]), for NATS Server 2.9 or later (it uses
//! no 2.10+ feature).
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventyard_core::TransportError> {
//! use eventyard_core::{SubQueue, SubscriptionSpec, Transport};
//! use eventyard_nats::NatsTransport;
//!
//! let transport = NatsTransport::connect_url("nats://127.0.0.1:4222?prefix=shop").await?;
//! transport.ensure_subscription(&SubscriptionSpec::new("orders", "billing")).await?;
//! let mut receiver = transport.receiver("orders", "billing", SubQueue::Main).await?;
//! # Ok(()) }
//! ```
//!
//! # How the model maps onto JetStream
//!
//! | concept | JetStream |
//! |---|---|
//! | topic | stream `<prefix>_T_<topic>` (file storage, limits retention, trimmed by the transport), subjects `<prefix>.t.<topic>.>` |
//! | message | subject `<prefix>.t.<topic>.<tenant>.<eventType>`; properties in headers (typed); body = envelope JSON; `Nats-Msg-Id` = `cs-event-id` |
//! | subscription | durable pull consumer `<subscription>` on the topic stream: explicit ack, `deliver_policy: new` (only messages published after it exists), unlimited deliveries and pending acks |
//! | subscription settings | JSON in the consumer's description (filter, max delivery count, scope, lock), so every process reads the same |
//! | filter | tenant/event-type string equalities → the consumer's single `filter_subject` (e.g. `<prefix>.t.orders.acme.*` or `<prefix>.t.orders.*.OrderPlaced`); the whole filter is also evaluated in the client with [`Filter::matches`](eventyard_core::Filter::matches), non-matching messages are acked and skipped |
//! | message matching no subscription | trimmed: no consumer needs it (a topic never subscribed has no stream: publishing succeeds and discards) |
//! | acknowledged message | the consumer never redelivers it; removed from the stream once every subscription is done with it (trimming, below) |
//! | lock | consumer `ack_wait` = `lock_duration`; the receiver keeps the local deadline |
//! | ack / abandon / abandon(d) | `+ACK` / `-NAK` / `-NAK {"delay":d}`, confirmed by the server ("double ack") unless `confirm_settlement=false` |
//! | delivery count | `num_delivered` of the delivery's ack subject |
//! | max delivery count | enforced by the receiver: a delivery beyond it is copied to the dead-letter sub-queue (reason `MaxDeliveryCountExceeded`) and acked |
//! | dead-letter sub-queue | stream `<prefix>_D_<topic>` (limits retention, trimmed), subject `<prefix>.d.<topic>.<subscription>`, durable consumer `<subscription>` (created with the subscription); copy with `cs-dead-letter-*` properties and the context header, then ack of the original |
//! | scheduled delivery | schedule stream `<prefix>_S_<topic>` moved by a pump in receiving processes (see below) |
//! | release on drop | a dropped unsettled delivery is NAKed at once |
//! | receive | pull requests on the consumer; a looping caller keeps one *standing* request open (its `max`, at most 50 ms, see below) |
//!
//! Topic and subscription names become subject tokens and stream/consumer names by replacing
//! `.` with `~` (one-to-one: names never contain `~`).
//!
//! # Filters: native and in the client
//!
//! NATS Server 2.9 allows one filter subject per consumer. When a filter pins `cs-tenant-id`
//! and/or `cs-event-type` to strings ([`Filter::exact_matches`](eventyard_core::Filter::exact_matches)),
//! those become subject tokens of the consumer's filter, so the server does not even send other
//! tenants' messages to it. The receiver always evaluates the full filter as well, so both
//! paths select exactly the same messages (tested). Filters are evaluated when a message is
//! delivered: after a subscription's filter changes, messages already waiting in it are judged by
//! the new filter. Receivers pick up a changed filter at once through a change notice (core NATS
//! subject `<prefix>.c.<topic>.<subscription>`) and at most 5 s later in any case.
//!
//! # Scheduled delivery
//!
//! NATS 2.9 has no delayed messages. A message with `deliver_at` in the future goes to the
//! topic's schedule stream and is moved to the topic when due by a pump that runs in every
//! process receiving from the topic (see the `schedule` module): it enters the subscriptions when
//! due, with a delivery count starting at 1. NAKing early deliveries in each subscription instead
//! would need no pump but would count the early delivery in `num_delivered`, which the receiver
//! cannot reliably subtract across processes.
//!
//! # Receiving: standing requests
//!
//! A `receive` that follows the previous call's return within 10 ms (a consumer loop) leaves
//! one pull request open at the server when it returns: for at most the call's `max` messages
//! and at most 50 ms (its lease), so a message stored between calls is sent at once rather than
//! at the next call's request (end-to-end latency). What it brings after its call returned is
//! locked from its arrival, like every delivery, and goes to the receiver's next `receive`; if
//! none comes for 100 ms after the last one returned, the receiver releases it (NAK without
//! delay: available again at once, and counted by the server as a delivery), as it does on
//! drop. A one-off call leaves no request open. See the `receive` module.
//!
//! # Locks and `LockLost`
//!
//! JetStream accepts an ack from a delivery whose ack wait passed, even after redelivering the
//! message elsewhere. The receiver therefore keeps each delivery's lock deadline (receipt + lock,
//! less min(lock/20, 25 ms) for transit) and refuses settlement after it with
//! [`TransportError::LockLost`](eventyard_core::TransportError::LockLost), without acking: the
//! message is (or will be) redelivered, as on Service Bus. A delivery dropped after its deadline
//! is not NAKed (it may belong to another consumer by then).
//!
//! # Retention: limits and trimming, not interest
//!
//! Interest retention would drop acknowledged messages by itself, but NATS Server 2.9 also drops
//! *and acknowledges* publishes that arrive while a shutting-down server has already detached the
//! stream's consumers: `tests/restart.rs` lost a whole acknowledged batch in half of its runs that
//! way. Topic and dead-letter streams therefore use limits retention, and the transport trims them
//! (see the `trim` module): every 30 s per topic in processes that publish to or receive from it,
//! after a subscription is deleted, and on [`NatsTransport::trim`]. A stream keeps everything from
//! the lowest position any of its consumers still needs.
//!
//! # Publishing and durability
//!
//! `publish` sends the batch within the transport's publish window (`publish_window`, 256
//! acknowledgements in flight, shared by concurrent calls: while one call waits for its last
//! acknowledgements, another's messages take the freed places) and returns `Ok` only when every
//! message of the call was acknowledged by the server; any failure is an error
//! (a retried publish is deduplicated through `Nats-Msg-Id` within the two-minute window). A
//! batch is not atomic ([`Capabilities::atomic_batch`](eventyard_core::Capabilities) is false),
//! but every size check happens before anything is sent. JetStream acknowledges a publish when
//! stored, before the file is synced (the server syncs every 2 minutes by default).
//!
//! Bodies are limited to the server's `max_payload` less 32 KiB (1 MiB − 32 KiB by default), the
//! rest being kept for headers, including those a dead-lettering adds.
//!
//! # Costs
//!
//! Every message carries its properties as headers and a `Nats-Msg-Id`, which the server parses
//! and deduplicates: on a 2-core machine a raw async-nats publisher with the same headers and
//! message ids (window 256) measured about 19k msg/s against 34k without headers, and this
//! transport about 0.8 of the former. A confirmed settlement costs a round trip;
//! `confirm_settlement=false` sends acks and NAKs without waiting (about 4x the consume rate of
//! a one-at-a-time ack loop) at the price of not seeing settlements lost in an outage.
//!
//! # Connection
//!
//! [`NatsTransport::connect`] retries for `connect_timeout` (5 s) and then fails with
//! [`TransportError::Unavailable`](eventyard_core::TransportError::Unavailable). Afterwards
//! async-nats reconnects by itself; a publish or settlement in flight during an outage fails
//! (time-out) rather than being reported as done.
//!
//! [async-nats]: https://docs.rs/async-nats

mod api;
mod config;
mod connect;
mod error;
mod headers;
mod publish;
mod receive;
mod schedule;
mod settle;
mod subjects;
mod topology;
mod transport;
mod trim;

pub use config::{DEFAULT_PREFIX, NatsConfig};
pub use transport::NatsTransport;
