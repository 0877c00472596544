//! Removing messages every subscription is done with.
//!
//! Topic and dead-letter streams use *limits* retention, not *interest* retention: NATS Server
//! 2.9 acknowledges publishes to an interest stream that it drops while its consumers are
//! detached during a shutdown (the restart test lost a whole acknowledged batch that way in half
//! of its runs). With limits retention nothing acknowledged is dropped, and the transport trims
//! instead: messages below the lowest position any consumer of the stream still needs are purged.
//!
//! A consumer needs nothing at or below the stream's last sequence (read first) when it has
//! neither unacknowledged nor undelivered messages; otherwise nothing at or below its ack floor
//! (or its delivered position, when everything delivered is acknowledged). A stream without
//! consumers needs nothing: messages of a topic without subscriptions are discarded. Trimming runs
//! every [`TRIM_INTERVAL`] per topic in processes that publish to or receive from it, and after a
//! subscription is deleted.

use std::time::Duration;

use eventyard_core::TransportError;

use crate::api::{Api, ConsumerProgress};

/// Least time between two trims of one topic by one transport.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// The lowest sequence some consumer still needs (`last_seq + 1` when none does).
pub(crate) fn keep_from(last_seq: u64, consumers: &[ConsumerProgress]) -> u64 {
    consumers
        .iter()
        .map(|c| {
            if c.num_ack_pending == 0 && c.num_pending == 0 {
                last_seq + 1
            } else if c.num_ack_pending == 0 {
                c.ack_floor.stream_seq.max(c.delivered.stream_seq) + 1
            } else {
                c.ack_floor.stream_seq + 1
            }
        })
        .min()
        .unwrap_or(last_seq + 1)
        .min(last_seq + 1)
}

/// Purges the messages of `stream` no consumer needs any more.
pub(crate) async fn trim_stream(api: &Api, stream: &str) -> Result<(), TransportError> {
    // The stream's state first: a consumer declared after this read starts after `last_seq`.
    let Some(state) = api.stream_state(stream).await? else {
        return Ok(());
    };
    if state.messages == 0 {
        return Ok(());
    }
    let consumers = api.consumer_progress(stream).await?;
    let keep = keep_from(state.last_seq, &consumers);
    if keep > state.first_seq {
        api.purge_below(stream, keep).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SequencePair;

    fn consumer(delivered: u64, floor: u64, ack_pending: u64, pending: u64) -> ConsumerProgress {
        ConsumerProgress {
            delivered: SequencePair {
                stream_seq: delivered,
            },
            ack_floor: SequencePair { stream_seq: floor },
            num_ack_pending: ack_pending,
            num_pending: pending,
        }
    }

    #[test]
    fn keeps_what_the_slowest_consumer_needs() {
        assert_eq!(keep_from(10, &[]), 11, "no consumer: nothing is needed");
        // Idle (filtered) consumer that never saw anything: needs nothing so far.
        assert_eq!(keep_from(10, &[consumer(0, 0, 0, 0)]), 11);
        // One unacknowledged message at 4 (floor 3).
        assert_eq!(keep_from(10, &[consumer(10, 3, 1, 0)]), 4);
        // All delivered acknowledged, more to deliver.
        assert_eq!(keep_from(10, &[consumer(7, 5, 0, 2)]), 8);
        // The minimum over consumers.
        assert_eq!(
            keep_from(
                10,
                &[
                    consumer(0, 0, 0, 0),
                    consumer(10, 3, 1, 0),
                    consumer(7, 7, 0, 3)
                ]
            ),
            4
        );
        // Never past the end.
        assert_eq!(keep_from(10, &[consumer(20, 20, 0, 1)]), 11);
    }
}
