//! eventyard transport over RabbitMQ (AMQP 0-9-1, through lapin): [`AmqpTransport`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventyard_core::TransportError> {
//! use eventyard_rabbitmq::{AmqpConfig, AmqpTransport};
//! let transport =
//!     AmqpTransport::connect(AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?)
//!         .await?;
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! | eventyard | RabbitMQ (`P` = [`AmqpConfig::prefix`], default `eventyard`) |
//! |---|---|
//! | topic | durable **headers** exchange `P.<topic>` |
//! | subscription | durable queue `P.<topic>:<subscription>` (classic, or quorum) bound to the topic exchange |
//! | dead-letter sub-queue | durable queue `P.<topic>:<subscription>:dlq` (same type) |
//! | subscription settings | one message in `P.<topic>:<subscription>:meta` (`x-max-length=1`) |
//! | message | persistent message (`delivery_mode=2`, `content_type=application/json`, `message_id` = `cs-event-id`); body = envelope JSON; properties = typed application headers |
//! | filter | `x-match=all` header bindings when it is a conjunction of equalities, else a match-all binding and evaluation in the receiver (acked and dropped when it does not match) |
//! | publish | publisher confirms, pipelined over a window (default 256); `Ok` once all are confirmed |
//! | peek-lock | unacknowledged delivery + a lock timer in the client |
//! | abandon / lock expiry / drop | confirmed republish of a copy carrying the delivery count, then ack |
//! | delayed redelivery, `deliver_at` | shared delay queues `P:delay:<ms>` (queue TTL, dead-lettering through `P:route`) |
//! | dead-letter | confirmed republish to the `:dlq` queue with `cs-dead-letter-*`, then ack |
//!
//! Names join topic and subscription with `:`, which names cannot contain, so `a.b`/`c` and
//! `a`/`b.c` cannot collide (see `names`); over-long names are shortened with a hash.
//!
//! # Design decisions
//!
//! **Classic queues by default, quorum queues as an option** ([`AmqpConfig::queue_type`]).
//! Classic queues are what the performance baseline measures and cost one Erlang process each,
//! where a quorum queue is a Raft cluster with its own log (deployments with a subscription per
//! consumer group have many queues). Receiving (below) cancels idle consumers and relies on no
//! delivery following the cancel-ok: for a classic queue the queue process itself sends the
//! cancel-ok after that consumer's deliveries; quorum queues passed probes of that and the
//! whole conformance suite too (feature `quorum-tests`), but creating and expiring dozens of
//! them on a busy single node has stalled RabbitMQ 3.10 for minutes in our test runs. Quorum
//! queues count deliveries (`x-delivery-count`), but the
//! transport carries its own count (header `x-eventyard-deliveries`, incremented on every
//! republish) for both types, since the copies it republishes for delayed redelivery must carry
//! it anyway; a message the broker redelivers after a crash or a lost connection (the
//! `redelivered` flag) is counted once more on receipt, so a message that keeps crashing its
//! consumer still reaches `max_delivery_count` and the dead-letter queue.
//!
//! **Receiving** (see `receive` and `standing`): a receiver keeps one consumer open while its
//! `receive` calls keep coming, with the prefetch set to the largest batch it asked for (under
//! the runtime, its free handler slots), so it holds back from competing receivers at most what
//! its application is about to ask for. A consumer without a `receive` for 500 ms, a dropped
//! receiver's and every consumer at `close` are cancelled, and what they were pushed but never
//! handed out is given back uncounted (copy republished, original acked). A lock starts when
//! `receive` hands the message out. Acks are batched per channel (`multiple` for the acked
//! prefix) and not awaited inline.
//!
//! **Locks** are emulated: each delivery has a lock deadline in its receiver's lock timer (one
//! task per receiver, see `locks`); when it passes before settlement the message is republished (counted) and the original acked, and settling afterwards fails with
//! `LockLost`. A delivery dropped unsettled is released the same way at once
//! ([`Capabilities::release_on_drop`](eventyard_core::Capabilities)). Closing a receiver's
//! channel (or losing the connection) makes the broker requeue its unsettled messages, which is
//! counted as above.
//!
//! **Delays** (see `delay`) use one queue per distinct delay bucket (delays rounded up to two
//! significant digits), with a queue-wide TTL — no head-of-line blocking as with per-message TTL
//! — shared by every topic and subscription of the prefix, expiring when unused. Expired messages
//! are dead-lettered to the route exchange `P:route`, which routes them by routing key to their
//! target queue or topic exchange. For `deliver_at`, routing by filters happens at delivery time.
//! Dead-lettering inside RabbitMQ is at-most-once: a broker crash at that exact moment can lose a
//! delayed message. Since delay queues are shared, `delete_subscription` leaves delayed copies of
//! its messages there; when they expire the route exchange drops them — unless a subscription of
//! the same name was declared again meanwhile, which then receives them.
//!
//! **Filters** (see `bindings`): native bindings only where RabbitMQ's header matching agrees with
//! SQL `=` (numbers expand to an integer and a float binding; names starting with `x-`, which
//! the headers exchange ignores, go client-side). Re-declaring with another filter binds the new
//! bindings before unbinding the old ones (recorded in the settings). A client-side filter is
//! evaluated at receive time, so after a filter change it also applies to messages already
//! queued; a native one applies to messages published after the change.
//!
//! **Reconnection**: the transport reconnects with backoff (bounded by
//! [`AmqpConfig::reconnect_timeout`]); a publish republishes its unconfirmed messages on the new
//! connection (never silently dropped; duplicates are possible), receivers reopen their channel,
//! and deliveries of the lost channel fail to settle with `LockLost` (the broker redelivers them).
//! lapin's own auto-recovery is not used.
//!
//! **Not atomic**: a publish batch is not all-or-nothing (a batch with an oversized message
//! publishes nothing, but a failure mid-batch may leave a prefix published);
//! [`Capabilities::atomic_batch`](eventyard_core::Capabilities) is `false`.

mod acker;
mod bindings;
mod config;
mod connection;
mod delay;
mod headers;
mod locks;
mod names;
mod publish;
mod receive;
mod settle;
mod standing;
mod topology;
mod transport;

pub use config::{AmqpConfig, QueueType};
pub use transport::AmqpTransport;
