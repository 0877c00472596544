//! Lock expiry of one receiver's deliveries: one timer task per receiver instead of one task
//! per delivery.
//!
//! Each delivery handed out gets a [`Slot`] holding it, queued with its lock deadline (in
//! hand-out order; a later, earlier deadline — the lock duration was shortened — is inserted in
//! order). Settling or releasing a delivery empties its slot; the timer task sleeps until the
//! first deadline, releases the deliveries still in their slots (see `Inflight::expire`) and
//! drops empty slots from the front of the queue as it goes (and at every hand-out), so settled
//! deliveries are freed at once and the queue only reaches back to the oldest unsettled one.
//! (Behind a delivery held for its whole lock, the emptied slots of everything handed out
//! meanwhile wait for its deadline: a few dozen bytes each, the deliveries themselves are freed.)
//! The task ends once its receiver is gone and the queue is empty.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connection::lock;
use crate::settle::Inflight;

/// What a lock holds: something to do when it expires.
pub(crate) trait Expiring: Send + Sync + 'static {
    /// The lock expired while the slot still held this.
    fn expire(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static;
}

impl Expiring for Inflight {
    async fn expire(self: Arc<Self>) {
        Inflight::expire(&self).await;
    }
}

/// The lock of one delivery: its [`Inflight`] until it is settled or released.
pub(crate) struct Slot<T = Inflight>(Mutex<Option<Arc<T>>>);

impl<T> Slot<T> {
    /// The delivery no longer needs its timer (settled, or being released).
    pub(crate) fn clear(&self) {
        lock(&self.0).take();
    }
}

struct Queue<T> {
    entries: VecDeque<(Instant, Arc<Slot<T>>)>,
    /// The receiver is gone: the task ends once the queue is empty.
    orphaned: bool,
    /// A task is running.
    running: bool,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            entries: VecDeque::new(),
            orphaned: false,
            running: false,
        }
    }
}

impl<T> Queue<T> {
    /// Drops the emptied slots at the front.
    fn trim(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|(_, slot)| lock(&slot.0).is_none())
        {
            self.entries.pop_front();
        }
    }
}

/// The lock timer of one receiver (see the module docs).
pub(crate) struct LockTimer<T = Inflight> {
    queue: Mutex<Queue<T>>,
    wake: Notify,
}

impl<T> Default for LockTimer<T> {
    fn default() -> Self {
        LockTimer {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        }
    }
}

impl<T: Expiring> LockTimer<T> {
    /// Queues the locks of a batch handed out now, all expiring at `deadline`; returns their
    /// slots in order.
    pub(crate) fn lock_all(
        self: &Arc<Self>,
        deadline: Instant,
        inflights: Vec<Arc<T>>,
    ) -> Vec<Arc<Slot<T>>> {
        let slots: Vec<Arc<Slot<T>>> = inflights
            .into_iter()
            .map(|f| Arc::new(Slot(Mutex::new(Some(f)))))
            .collect();
        if slots.is_empty() {
            return slots;
        }
        let start = {
            let mut q = lock(&self.queue);
            q.trim();
            let at = q.entries.partition_point(|(d, _)| *d <= deadline);
            let was_first = at == 0;
            for (i, slot) in slots.iter().enumerate() {
                q.entries.insert(at + i, (deadline, slot.clone()));
            }
            let start = !q.running;
            q.running = true;
            if was_first && !start {
                self.wake.notify_one();
            }
            start
        };
        if start {
            tokio::spawn(run(self.clone()));
        }
        slots
    }

    /// The receiver is gone: the task ends once the locks it handed out are over.
    pub(crate) fn orphan(&self) {
        lock(&self.queue).orphaned = true;
        self.wake.notify_one();
    }
}

async fn run<T: Expiring>(timer: Arc<LockTimer<T>>) {
    loop {
        let (expired, next) = {
            let mut q = lock(&timer.queue);
            q.trim();
            let now = Instant::now();
            let mut expired = Vec::new();
            while let Some((deadline, _)) = q.entries.front() {
                if *deadline > now {
                    break;
                }
                if let Some((_, slot)) = q.entries.pop_front()
                    && let Some(f) = lock(&slot.0).take()
                {
                    expired.push(f);
                }
                q.trim();
            }
            let next = q.entries.front().map(|(d, _)| *d);
            if next.is_none() && q.orphaned {
                q.running = false;
            }
            (expired, next)
        };
        for f in expired {
            tokio::spawn(f.expire());
        }
        if next.is_none() && !lock(&timer.queue).running {
            return;
        }
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = timer.wake.notified() => {}
                }
            }
            None => timer.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts its expiries.
    #[derive(Default)]
    struct Probe(AtomicUsize);

    impl Expiring for Probe {
        async fn expire(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn expired(p: &Probe) -> usize {
        p.0.load(Ordering::SeqCst)
    }

    fn queued(t: &LockTimer<Probe>) -> usize {
        lock(&t.queue).entries.len()
    }

    #[tokio::test(start_paused = true)]
    async fn unsettled_locks_expire_at_their_deadline_and_settled_ones_never() {
        let timer = Arc::new(LockTimer::<Probe>::default());
        let (held, settled) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let start = Instant::now();
        let slots = timer.lock_all(
            start + Duration::from_secs(30),
            vec![held.clone(), settled.clone()],
        );
        slots[1].clear();
        tokio::time::sleep(Duration::from_millis(29_990)).await;
        assert_eq!(expired(&held), 0, "expired before its deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::task::yield_now().await;
        assert_eq!(expired(&held), 1);
        assert_eq!(expired(&settled), 0, "a settled delivery's lock expired");
        assert_eq!(queued(&timer), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_lock_handed_out_later_expires_first() {
        let timer = Arc::new(LockTimer::<Probe>::default());
        let (long, short) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let now = Instant::now();
        timer.lock_all(now + Duration::from_secs(30), vec![long.clone()]);
        timer.lock_all(now + Duration::from_secs(1), vec![short.clone()]);
        tokio::time::sleep(Duration::from_millis(1_010)).await;
        tokio::task::yield_now().await;
        assert_eq!((expired(&short), expired(&long)), (1, 0));
        tokio::time::sleep(Duration::from_secs(30)).await;
        tokio::task::yield_now().await;
        assert_eq!(expired(&long), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_locks_leave_the_queue_without_waiting_for_their_deadline() {
        let timer = Arc::new(LockTimer::<Probe>::default());
        let deadline = Instant::now() + Duration::from_secs(30);
        let slots = timer.lock_all(deadline, (0..100).map(|_| Arc::default()).collect());
        assert_eq!(queued(&timer), 100);
        slots.iter().for_each(|s| s.clear());
        timer.lock_all(deadline, vec![Arc::default()]);
        assert_eq!(
            queued(&timer),
            1,
            "settled entries kept until their deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphaned_timer_ends_once_its_locks_are_over() {
        let timer = Arc::new(LockTimer::<Probe>::default());
        let probe = Arc::new(Probe::default());
        timer.lock_all(Instant::now() + Duration::from_secs(1), vec![probe.clone()]);
        timer.orphan();
        tokio::task::yield_now().await;
        assert!(lock(&timer.queue).running, "ended with a lock pending");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert_eq!(expired(&probe), 1);
        assert!(!lock(&timer.queue).running, "still running");
    }
}
