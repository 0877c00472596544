//! [`TimeoutScheduler`]: feeds due timeouts to their saga instances.
//!
//! Timeouts are rows of the saga store, so they survive a restart: a scheduler started on the
//! same store after a crash fires what came due meanwhile. Claims are leases: a scheduler that
//! dies while firing leaves its claims to expire, and another (or the restarted one) fires them
//! again — a fired timeout is an event with a fixed id, so firing twice is a duplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventyard_core::saga::{SagaError, SagaStore, ScheduledTimeout};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::definition::SagaData;
use crate::engine::{Handled, SagaEngine};
use crate::error::SagaEngineError;

/// A saga the scheduler can feed timeouts to (implemented by every [`SagaEngine`]).
pub trait TimeoutTarget: Send + Sync + 'static {
    /// The saga's name (the timeouts' `saga`).
    fn saga(&self) -> &str;

    /// Feeds one fired timeout.
    fn fire<'a>(
        &'a self,
        timeout: &'a ScheduledTimeout,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, SagaEngineError>> + Send + 'a>>;

    /// Wakes `notify` whenever a commit schedules a timeout.
    fn set_wakeup(&self, notify: Arc<Notify>);
}

impl<S: SagaData> TimeoutTarget for SagaEngine<S> {
    fn saga(&self) -> &str {
        self.name()
    }

    fn fire<'a>(
        &'a self,
        timeout: &'a ScheduledTimeout,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, SagaEngineError>> + Send + 'a>> {
        Box::pin(SagaEngine::fire(self, timeout))
    }

    fn set_wakeup(&self, notify: Arc<Notify>) {
        SagaEngine::set_wakeup(self, notify);
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Timeouts claimed at a time. Default 64.
    pub batch: usize,
    /// How long a claim holds a timeout before another scheduler may fire it. Default 30 s.
    pub lease: Duration,
    /// Longest sleep between looks at the store (timeouts scheduled by other processes are
    /// seen within it; this process's own commits wake the scheduler at once). Default 1 s.
    pub poll: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            batch: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// Fires due timeouts of the sagas registered with it, all stored in one [`SagaStore`].
///
/// Timeouts of a saga no registered engine handles stay claimed until their lease ends (for
/// a scheduler in another process that has it).
pub struct TimeoutScheduler {
    store: Arc<dyn SagaStore>,
    targets: HashMap<String, Arc<dyn TimeoutTarget>>,
    notify: Arc<Notify>,
    options: SchedulerOptions,
}

impl std::fmt::Debug for TimeoutScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutScheduler")
            .field("sagas", &self.targets.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl TimeoutScheduler {
    /// A scheduler over `store` with default settings and no saga yet.
    pub fn new(store: Arc<dyn SagaStore>) -> Self {
        TimeoutScheduler {
            store,
            targets: HashMap::new(),
            notify: Arc::new(Notify::new()),
            options: SchedulerOptions::default(),
        }
    }

    /// Changes the settings.
    pub fn options(mut self, options: SchedulerOptions) -> Self {
        self.options = options;
        self
    }

    /// Feeds `engine`'s timeouts (its engine must use the same store).
    pub fn register<T: TimeoutTarget + Clone>(mut self, engine: &T) -> Self {
        engine.set_wakeup(self.notify.clone());
        self.targets
            .insert(engine.saga().to_owned(), Arc::new(engine.clone()));
        self
    }

    /// Claims and fires the timeouts due at `now` (one batch); returns how many were claimed.
    /// A timeout whose firing fails stays claimed until its lease ends, then fires again.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, SagaError> {
        let due = self
            .store
            .claim_due(now, self.options.batch, self.options.lease)
            .await?;
        for t in &due {
            match self.targets.get(&t.saga) {
                Some(target) => {
                    if let Err(e) = target.fire(t).await {
                        tracing::warn!(saga = %t.saga, key = %t.key, timeout = %t.name,
                            error = %e, "saga timeout failed; retried after its lease");
                    }
                }
                None => tracing::warn!(saga = %t.saga, timeout = %t.name,
                    "timeout of a saga this scheduler does not run; left to its lease"),
            }
        }
        Ok(due.len())
    }

    /// Runs the scheduler in a task until [`SchedulerHandle::stop`] (or the handle is dropped).
    pub fn start(self) -> SchedulerHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        SchedulerHandle {
            stop,
            task: Some(task),
        }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let poll = self.options.poll;
        loop {
            if *stopped.borrow() {
                return;
            }
            let claimed = match self.fire_due(Utc::now()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "saga timeouts: claim failed");
                    0
                }
            };
            if claimed >= self.options.batch {
                continue;
            }
            let now = Utc::now();
            let sleep = match self.store.next_due().await {
                // Due but not claimable (leased elsewhere): look again a bit later.
                Ok(Some(at)) if at <= now => poll.min(Duration::from_millis(100)),
                Ok(Some(at)) => (at - now).to_std().unwrap_or_default().min(poll),
                _ => poll,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.notify.notified() => {}
                _ = stopped.changed() => return,
            }
        }
    }
}

/// A running [`TimeoutScheduler`]; stops it when dropped.
#[derive(Debug)]
pub struct SchedulerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Stops the scheduler and waits for it (a timeout being fired finishes first).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
