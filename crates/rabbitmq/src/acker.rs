//! Acknowledgements of one receiver channel, batched.
//!
//! `Delivery::ack` does not wait for the ack frame: it hands the delivery tag to the channel's
//! acker task and returns. The task sends what accumulated meanwhile, coalescing the acked
//! prefix of the channel's outstanding deliveries into one `basic.ack(multiple=true)` (lapin's
//! `basic_ack` waits for its I/O loop, so acking inline costs a hand-off per message). An ack
//! not yet sent when the connection drops is lost like any unacknowledged delivery: the broker
//! redelivers the message (at-least-once). [`AckTracker::drain`] lets `close` flush pending
//! acks before closing the connection.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, watch};

use crate::connection::lock;

/// Pending acknowledgements sent at once without waiting for more.
const GATHER: usize = 64;
/// How long fewer than [`GATHER`] pending acknowledgements wait for company.
const GATHER_FOR: Duration = Duration::from_millis(1);

/// Tracks the acker tasks and the background jobs (republish-then-ack) of a transport, so that
/// `close` can let them finish before closing the connection.
pub(crate) struct AckTracker {
    ackers: AtomicUsize,
    jobs: AtomicUsize,
    idle: Notify,
    drain: watch::Sender<bool>,
}

impl Default for AckTracker {
    fn default() -> Self {
        AckTracker {
            ackers: AtomicUsize::new(0),
            jobs: AtomicUsize::new(0),
            idle: Notify::new(),
            drain: watch::channel(false).0,
        }
    }
}

/// A background job in progress (see [`AckTracker::job`]).
pub(crate) struct JobGuard(Arc<AckTracker>);

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.0.jobs.fetch_sub(1, Ordering::AcqRel);
        self.0.idle.notify_waiters();
    }
}

impl AckTracker {
    /// Registers a background job until the guard drops.
    pub(crate) fn job(self: &Arc<Self>) -> JobGuard {
        self.jobs.fetch_add(1, Ordering::AcqRel);
        JobGuard(self.clone())
    }

    async fn wait_for_zero(&self, counter: &AtomicUsize) {
        loop {
            let notified = self.idle.notified();
            if counter.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Lets running jobs finish, then makes every acker send what is pending and stop; waits
    /// at most `timeout` for each.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wait_for_zero(&self.jobs)).await;
        self.drain.send_replace(true);
        let _ = tokio::time::timeout(timeout, self.wait_for_zero(&self.ackers)).await;
    }
}

#[derive(Default)]
struct State {
    /// Delivered on this channel and not yet acknowledged to the broker.
    outstanding: BTreeSet<u64>,
    /// Acknowledged by the application, not yet sent.
    pending: BTreeSet<u64>,
    shutdown: bool,
}

/// The acker of one channel.
pub(crate) struct Acker {
    state: Mutex<State>,
    wake: Notify,
}

impl Acker {
    /// Starts the acker task of `channel`; it ends (after sending what is pending) on
    /// [`Acker::shutdown`] (then closing the channel) or when the tracker drains.
    pub(crate) fn start(channel: Channel, tracker: Arc<AckTracker>) -> Arc<Acker> {
        let closed = tracker.drain.subscribe();
        let acker = Arc::new(Acker {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        tracker.ackers.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(run(acker.clone(), channel, tracker, closed));
        acker
    }

    /// Records a delivery received on the channel.
    pub(crate) fn track(&self, tag: u64) {
        lock(&self.state).outstanding.insert(tag);
    }

    /// Records deliveries received on the channel.
    pub(crate) fn track_all(&self, tags: impl Iterator<Item = u64>) {
        lock(&self.state).outstanding.extend(tags);
    }

    /// Queues the acknowledgement of `tag`.
    pub(crate) fn ack(&self, tag: u64) {
        lock(&self.state).pending.insert(tag);
        self.wake.notify_one();
    }

    /// Forgets a delivery that will not be acknowledged through the acker (nacked directly).
    pub(crate) fn forget(&self, tag: u64) {
        let mut s = lock(&self.state);
        s.outstanding.remove(&tag);
        s.pending.remove(&tag);
    }

    /// Sends what is pending, then closes the channel.
    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.wake.notify_one();
    }

    /// The acknowledgements to send now: `(tag, multiple)`; whether the transport shuts down;
    /// the largest tag of the acks left pending.
    ///
    /// The acked prefix of the outstanding deliveries always goes, as one `multiple` ack. An ack
    /// behind the first unacknowledged delivery goes on its own only if its tag is at most
    /// `upto` (or at shutdown); otherwise it stays pending, as a handler finishing a moment
    /// later usually joins it into the next prefix, instead of one frame each now.
    fn take(&self, upto: u64) -> (Vec<(u64, bool)>, bool, Option<u64>) {
        let mut s = lock(&self.state);
        let mut ops = Vec::new();
        let mut prefix = 0usize;
        let mut last = None;
        for tag in &s.outstanding {
            if s.pending.contains(tag) {
                prefix += 1;
                last = Some(*tag);
            } else {
                break;
            }
        }
        if let Some(last) = last {
            let rest = s.outstanding.split_off(&(last + 1));
            let done = std::mem::replace(&mut s.outstanding, rest);
            for tag in &done {
                s.pending.remove(tag);
            }
            ops.push((last, prefix > 1));
        }
        let upto = if s.shutdown { u64::MAX } else { upto };
        let later = match upto.checked_add(1) {
            Some(first_kept) => s.pending.split_off(&first_kept),
            None => BTreeSet::new(),
        };
        for tag in std::mem::replace(&mut s.pending, later) {
            s.outstanding.remove(&tag);
            ops.push((tag, false));
        }
        let held = s.pending.last().copied();
        (ops, s.shutdown, held)
    }
}

async fn run(
    acker: Arc<Acker>,
    channel: Channel,
    tracker: Arc<AckTracker>,
    mut closed: watch::Receiver<bool>,
) {
    let mut transport_gone = false;
    // The largest tag of the acks the last round left pending behind an unacknowledged
    // delivery: this round sends them whatever happens (0: none; tags start at 1).
    let mut held = 0u64;
    loop {
        // Under load, let acknowledgements gather for a moment: one `multiple` ack instead of
        // one frame (and one I/O-loop hand-off) per message. The delay holds prefetch credit of
        // the receiver's standing consumer for 1 ms at most (2 ms for an ack held back behind
        // a delivery still being handled), against a prefetch of a whole batch.
        let gathering = {
            let s = lock(&acker.state);
            !s.pending.is_empty() && (held > 0 || s.pending.len() < GATHER) && !s.shutdown
        };
        if gathering && !*closed.borrow() {
            tokio::time::sleep(GATHER_FOR).await;
        }
        let closing = *closed.borrow();
        let (ops, shutdown, left) = acker.take(if closing { u64::MAX } else { held });
        held = left.unwrap_or(0);
        for (tag, multiple) in &ops {
            let options = BasicAckOptions {
                multiple: *multiple,
            };
            if let Err(e) = channel.basic_ack(*tag, options).await {
                tracing::debug!(error = %e, tag, "ack not sent (the broker will redeliver)");
            }
        }
        if !ops.is_empty() || held > 0 {
            continue;
        }
        if shutdown || transport_gone || *closed.borrow() || !channel.status().connected() {
            break;
        }
        tokio::select! {
            () = acker.wake.notified() => {}
            changed = closed.changed() => transport_gone = changed.is_err(),
        }
    }
    if channel.status().connected() && !*closed.borrow() {
        let _ = channel.close(200, "receiver done".into()).await;
    }
    tracker.ackers.fetch_sub(1, Ordering::AcqRel);
    tracker.idle.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acker() -> Acker {
        Acker {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    #[test]
    fn acked_prefix_becomes_one_multiple_ack() {
        let a = acker();
        for t in 1..=5 {
            a.track(t);
        }
        a.ack(1);
        a.ack(2);
        a.ack(3);
        a.ack(5);
        assert_eq!(a.take(u64::MAX).0, vec![(3, true), (5, false)]);
        a.ack(4);
        assert_eq!(a.take(u64::MAX).0, vec![(4, false)]);
        assert!(a.take(u64::MAX).0.is_empty());
    }

    #[test]
    fn acks_behind_a_gap_wait_one_round_then_go() {
        let a = acker();
        for t in 1..=6 {
            a.track(t);
        }
        a.ack(1);
        a.ack(2);
        a.ack(4);
        a.ack(5);
        // The prefix goes now; 4 and 5 wait behind 3.
        let (ops, _, held) = a.take(0);
        assert_eq!((ops, held), (vec![(2, true)], Some(5)));
        // 3 is done meanwhile: 3..=5 become one multiple ack.
        a.ack(3);
        a.ack(6);
        let (ops, _, held) = a.take(5);
        assert_eq!((ops, held), (vec![(6, true)], None));
        // Still behind a gap when their round comes: they go one by one, newer ones wait.
        for t in 7..=10 {
            a.track(t);
        }
        a.ack(8);
        assert_eq!(a.take(0).2, Some(8));
        a.ack(9);
        let (ops, _, held) = a.take(8);
        assert_eq!((ops, held), (vec![(8, false)], Some(9)));
        a.shutdown();
        assert_eq!(a.take(0).0, vec![(9, false)]);
    }

    #[test]
    fn a_single_ack_is_not_multiple_and_gaps_block_multiple() {
        let a = acker();
        for t in 10..=12 {
            a.track(t);
        }
        a.ack(10);
        assert_eq!(a.take(u64::MAX).0, vec![(10, false)]);
        a.ack(12);
        assert_eq!(a.take(u64::MAX).0, vec![(12, false)]);
        a.forget(11);
        a.track(13);
        a.track(14);
        a.ack(13);
        a.ack(14);
        assert_eq!(a.take(u64::MAX).0, vec![(14, true)]);
    }
}
