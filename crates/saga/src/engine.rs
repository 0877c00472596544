//! [`SagaEngine`]: applies events to saga instances — load, decide the transition, commit with
//! optimistic concurrency, retry against the fresh state on conflict.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use eventyard_core::Envelope;
use eventyard_core::outbox::PendingEvent;
use eventyard_core::saga::{
    SagaCommit, SagaError, SagaHistoryEntry, SagaInstance, SagaStore, ScheduledTimeout,
};
use eventyard_runtime::Bus;
use tokio::sync::Notify;

use crate::definition::{EventEntry, Policy, SagaData, SagaDefinition, Target};
use crate::error::SagaEngineError;
use crate::step::{Step, Topics};

/// What the engine did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The event started an instance.
    Started {
        /// Instance key.
        key: String,
        /// Its first state.
        state: String,
    },
    /// The event moved an instance (possibly to the same state).
    Moved {
        /// Instance key.
        key: String,
        /// State before.
        from: String,
        /// State after.
        to: String,
        /// True if `to` is final.
        completed: bool,
    },
    /// The instance had already processed this event: nothing changed.
    Duplicate {
        /// Instance key.
        key: String,
    },
    /// The event changed nothing, for `reason` (acknowledged).
    Ignored {
        /// Instance key, when the event named one.
        key: Option<String>,
        /// Why.
        reason: IgnoreReason,
    },
}

/// Why an event was acknowledged without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The saga declares no transition for its type.
    NotHandled,
    /// No instance, the event starts none, and the policy is [`Policy::Ignore`].
    UnknownInstance,
    /// The instance's state does not accept it, and the policy is [`Policy::Ignore`].
    Unexpected {
        /// The instance's state.
        state: String,
    },
    /// Every applicable transition's guard refused it.
    GuardRejected,
    /// The instance is completed.
    Completed,
}

/// Counters of an engine (since it was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SagaCounts {
    /// Instances started.
    pub started: u64,
    /// Transitions of existing instances.
    pub moved: u64,
    /// Instances completed.
    pub completed: u64,
    /// Duplicates recognized.
    pub duplicates: u64,
    /// Events ignored (any reason).
    pub ignored: u64,
    /// Version conflicts met (each retried against the fresh state).
    pub conflicts: u64,
    /// Events that failed.
    pub failed: u64,
    /// Timeouts fed to instances.
    pub timeouts_fired: u64,
}

#[derive(Default)]
struct Stats {
    started: AtomicU64,
    moved: AtomicU64,
    completed: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
    timeouts_fired: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Attempts per event when commits conflict (each against the freshly loaded state);
    /// beyond, the event fails as transient and the subscription retries it later. Default 32.
    pub max_attempts: u32,
    /// The bus whose topology names the topics of emitted events (set by
    /// [`SagaEngine::subscribe`] when absent). Without one, topic = event type.
    pub bus: Option<Bus>,
    /// Instances kept in memory after this engine committed them (0: none). The next event
    /// for a cached instance skips the load: the commit's version check proves the cached
    /// state current (a conflict drops it and reloads), and a decision to change nothing is
    /// always re-taken on a fresh load. Default 10 000.
    pub cache_capacity: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_attempts: 32,
            bus: None,
            cache_capacity: 10_000,
        }
    }
}

struct Inner<S> {
    def: SagaDefinition<S>,
    store: Arc<dyn SagaStore>,
    topics: RwLock<Topics>,
    max_attempts: u32,
    stats: Stats,
    wakeup: Mutex<Option<Arc<Notify>>>,
    cache: Option<Mutex<HashMap<String, SagaInstance>>>,
    cache_capacity: usize,
}

/// Runs one saga definition over a [`SagaStore`]. Cheap to clone.
///
/// Each event: find its instance key, load the instance (or take it from the cache, see
/// [`EngineOptions::cache_capacity`]), pick the transition (state, guard),
/// run its actions on the data, and commit the new state with the history entry, the emitted
/// events (outbox) and the timeouts in one transaction, expecting the loaded version. On a
/// version conflict the event is applied again to the freshly loaded state (at most
/// [`EngineOptions::max_attempts`] times). A duplicate event is recognized by the store and
/// changes nothing.
pub struct SagaEngine<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for SagaEngine<S> {
    fn clone(&self) -> Self {
        SagaEngine {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for SagaEngine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaEngine")
            .field("saga", &self.inner.def.name)
            .field("store", &self.inner.store.name())
            .finish()
    }
}

/// One event on its way to an instance.
struct Incoming<'a, S> {
    env: &'a Envelope,
    entry: &'a EventEntry<S>,
    decoded: &'a (dyn std::any::Any + Send + Sync),
    key: &'a str,
    /// The timeout this event is, when fired by the scheduler.
    fired: Option<&'a str>,
}

impl<S> Clone for Incoming<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Incoming<'_, S> {}

/// The decision for one event against one loaded instance.
enum Plan {
    Commit(Box<SagaCommit>, Handled),
    Skip(Skip),
}

enum Skip {
    Unknown,
    Unexpected(String),
    Guard,
    Completed,
}

impl<S: SagaData> SagaEngine<S> {
    /// An engine for `definition` (checked with [`SagaDefinition::build`]) over `store`.
    pub fn new(definition: SagaDefinition<S>, store: Arc<dyn SagaStore>) -> Self {
        Self::with_options(definition, store, EngineOptions::default())
    }

    /// [`SagaEngine::new`] with settings.
    pub fn with_options(
        definition: SagaDefinition<S>,
        store: Arc<dyn SagaStore>,
        options: EngineOptions,
    ) -> Self {
        SagaEngine {
            inner: Arc::new(Inner {
                def: definition,
                store,
                topics: RwLock::new(options.bus.map_or(Topics::EventType, Topics::Bus)),
                max_attempts: options.max_attempts.max(1),
                stats: Stats::default(),
                wakeup: Mutex::new(None),
                cache: (options.cache_capacity > 0).then(|| Mutex::new(HashMap::new())),
                cache_capacity: options.cache_capacity,
            }),
        }
    }

    /// The definition.
    pub fn definition(&self) -> &SagaDefinition<S> {
        &self.inner.def
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.def.name
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    /// Counters since creation.
    pub fn counts(&self) -> SagaCounts {
        let s = &self.inner.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SagaCounts {
            started: g(&s.started),
            moved: g(&s.moved),
            completed: g(&s.completed),
            duplicates: g(&s.duplicates),
            ignored: g(&s.ignored),
            conflicts: g(&s.conflicts),
            failed: g(&s.failed),
            timeouts_fired: g(&s.timeouts_fired),
        }
    }

    /// Uses `bus`'s topology for the topics of emitted events, unless a bus was set already.
    pub(crate) fn use_bus(&self, bus: &Bus) {
        let mut t = self.inner.topics.write().unwrap_or_else(|p| p.into_inner());
        if matches!(*t, Topics::EventType) {
            *t = Topics::Bus(bus.clone());
        }
    }

    /// Wakes `notify` whenever a commit schedules a timeout (the scheduler's wake-up).
    pub(crate) fn set_wakeup(&self, notify: Arc<Notify>) {
        *self.inner.wakeup.lock().unwrap_or_else(|p| p.into_inner()) = Some(notify);
    }

    /// Applies one event (see the type's doc).
    pub async fn handle(&self, envelope: &Envelope) -> Result<Handled, SagaEngineError> {
        let def = &self.inner.def;
        let Some(entry) = def.events.get(envelope.event_type.as_str()) else {
            bump(&self.inner.stats.ignored);
            return Ok(Handled::Ignored {
                key: None,
                reason: IgnoreReason::NotHandled,
            });
        };
        let decoded = self.decode(entry, envelope)?;
        let Some(key) = def.key(entry, &*decoded, envelope) else {
            bump(&self.inner.stats.failed);
            return Err(SagaEngineError::NoKey {
                saga: def.name.clone(),
                event_type: envelope.event_type.to_string(),
            });
        };
        self.apply(Incoming {
            env: envelope,
            entry,
            decoded: &*decoded,
            key: &key,
            fired: None,
        })
        .await
    }

    /// Feeds a fired timeout to its instance; a timeout the instance cannot apply is deleted.
    pub async fn fire(&self, timeout: &ScheduledTimeout) -> Result<Handled, SagaEngineError> {
        let def = &self.inner.def;
        let Some(entry) = def.events.get(timeout.name.as_str()) else {
            self.inner.store.mark_fired(&timeout.id).await?;
            bump(&self.inner.stats.ignored);
            return Ok(Handled::Ignored {
                key: Some(timeout.key.clone()),
                reason: IgnoreReason::NotHandled,
            });
        };
        let decoded = self.decode(entry, &timeout.envelope)?;
        let r = self
            .apply(Incoming {
                env: &timeout.envelope,
                entry,
                decoded: &*decoded,
                key: &timeout.key,
                fired: Some(&timeout.id),
            })
            .await;
        if matches!(r, Ok(Handled::Started { .. } | Handled::Moved { .. })) {
            bump(&self.inner.stats.timeouts_fired);
        }
        r
    }

    async fn apply(&self, ev: Incoming<'_, S>) -> Result<Handled, SagaEngineError> {
        let r = self.apply_inner(&ev).await;
        let s = &self.inner.stats;
        match &r {
            Ok(Handled::Started { .. }) => bump(&s.started),
            Ok(Handled::Moved { completed, .. }) => {
                bump(&s.moved);
                if *completed {
                    bump(&s.completed);
                }
            }
            Ok(Handled::Duplicate { .. }) => bump(&s.duplicates),
            Ok(Handled::Ignored { .. }) => bump(&s.ignored),
            Err(_) => bump(&s.failed),
        }
        r
    }

    async fn apply_inner(&self, ev: &Incoming<'_, S>) -> Result<Handled, SagaEngineError> {
        let Incoming {
            env, key, fired, ..
        } = *ev;
        let store = &self.inner.store;
        let name = &self.inner.def.name;
        for _ in 0..self.inner.max_attempts {
            let cached = self.cached(key);
            let from_cache = cached.is_some();
            let loaded = match cached {
                Some(inst) => Some(inst),
                None => store.load(name, key).await?,
            };
            match self.plan(ev, loaded.as_ref())? {
                Plan::Commit(commit, handled) => {
                    let scheduled = !commit.schedule.is_empty();
                    let keep = self.inner.cache.is_some().then(|| commit.instance.clone());
                    match store.commit(*commit).await {
                        Ok(version) => {
                            if let Some(mut inst) = keep {
                                inst.version = version;
                                self.remember(inst);
                            }
                            if scheduled {
                                self.wake();
                            }
                            return Ok(handled);
                        }
                        Err(SagaError::Conflict { .. }) => {
                            self.forget(key);
                            bump(&self.inner.stats.conflicts);
                            tokio::task::yield_now().await;
                        }
                        Err(SagaError::Duplicate { .. }) => {
                            return Ok(Handled::Duplicate { key: key.into() });
                        }
                        Err(e) => {
                            self.forget(key);
                            return Err(e.into());
                        }
                    }
                }
                // A decision to change nothing is never taken on a cached state: it may be
                // stale (another process moved the instance). Decide again on a fresh load.
                Plan::Skip(_) if from_cache => self.forget(key),
                Plan::Skip(skip) => {
                    if loaded.is_some()
                        && store.is_processed(name, key, env.event_id.as_str()).await?
                    {
                        return Ok(Handled::Duplicate { key: key.into() });
                    }
                    if let Some(id) = fired {
                        store.mark_fired(id).await?;
                    }
                    return self.skip(skip, key, env);
                }
            }
        }
        Err(SagaEngineError::ConflictsExhausted {
            saga: name.clone(),
            key: key.into(),
            attempts: self.inner.max_attempts,
        })
    }

    /// The cached instance `key`, if any.
    fn cached(&self, key: &str) -> Option<SagaInstance> {
        let cache = self.inner.cache.as_ref()?;
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Caches an instance as committed (dropping everything when full).
    fn remember(&self, inst: SagaInstance) {
        if let Some(cache) = &self.inner.cache {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() >= self.inner.cache_capacity && !c.contains_key(&inst.key) {
                c.clear();
            }
            c.insert(inst.key.clone(), inst);
        }
    }

    fn forget(&self, key: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        }
    }

    fn decode(
        &self,
        entry: &EventEntry<S>,
        envelope: &Envelope,
    ) -> Result<crate::definition::Decoded, SagaEngineError> {
        (entry.decode)(envelope).map_err(|source| SagaEngineError::Decode {
            saga: self.inner.def.name.clone(),
            source,
        })
    }

    fn wake(&self) {
        if let Some(n) = &*self.inner.wakeup.lock().unwrap_or_else(|p| p.into_inner()) {
            n.notify_one();
        }
    }

    /// Applies the definition's policy to an event that changes nothing.
    fn skip(&self, skip: Skip, key: &str, env: &Envelope) -> Result<Handled, SagaEngineError> {
        let def = &self.inner.def;
        let ignored = |reason| {
            Ok(Handled::Ignored {
                key: Some(key.to_owned()),
                reason,
            })
        };
        match skip {
            Skip::Guard => ignored(IgnoreReason::GuardRejected),
            Skip::Completed => ignored(IgnoreReason::Completed),
            Skip::Unknown => match def.unknown {
                Policy::Ignore => ignored(IgnoreReason::UnknownInstance),
                policy => Err(SagaEngineError::UnknownInstance {
                    saga: def.name.clone(),
                    key: key.into(),
                    event_type: env.event_type.to_string(),
                    retry: policy == Policy::Fault,
                }),
            },
            Skip::Unexpected(state) => match def.unexpected {
                Policy::Ignore => ignored(IgnoreReason::Unexpected { state }),
                policy => Err(SagaEngineError::Unexpected {
                    saga: def.name.clone(),
                    key: key.into(),
                    state,
                    event_type: env.event_type.to_string(),
                    retry: policy == Policy::Fault,
                }),
            },
        }
    }

    /// Decides what `env` does to `loaded` (no I/O).
    fn plan(
        &self,
        ev: &Incoming<'_, S>,
        loaded: Option<&SagaInstance>,
    ) -> Result<Plan, SagaEngineError> {
        let Incoming {
            env,
            entry,
            decoded,
            key,
            fired,
        } = *ev;
        let def = &self.inner.def;
        if let Some(inst) = loaded {
            if inst.tenant != env.tenant_id.as_str() {
                return Err(SagaEngineError::TenantMismatch {
                    saga: def.name.clone(),
                    key: key.into(),
                    tenant: inst.tenant.clone(),
                    event_tenant: env.tenant_id.to_string(),
                });
            }
            if inst.completed {
                return Ok(Plan::Skip(Skip::Completed));
            }
        }
        let state = loaded.map(|i| i.state.as_str());
        let mut candidates = entry
            .transitions
            .iter()
            .filter(|t| t.applies_in(state))
            .peekable();
        if candidates.peek().is_none() {
            return Ok(Plan::Skip(match state {
                None => Skip::Unknown,
                Some(s) => Skip::Unexpected(s.to_owned()),
            }));
        }
        let data_error = |e: serde_json::Error| SagaEngineError::Data {
            saga: def.name.clone(),
            message: e.to_string(),
        };
        let mut data: S = match loaded {
            Some(inst) => S::deserialize(&inst.data).map_err(data_error)?,
            None => S::default(),
        };
        let Some(transition) =
            candidates.find(|t| t.guard.as_ref().is_none_or(|g| g(decoded, &data)))
        else {
            return Ok(Plan::Skip(Skip::Guard));
        };
        let topics = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut step = Step::new(env, key, state, &topics);
        step.fired = fired.is_some();
        for action in &transition.actions {
            action(decoded, &mut data, &mut step).map_err(|error| SagaEngineError::Action {
                saga: def.name.clone(),
                error,
            })?;
        }
        let target = match (step.target.take(), &transition.target) {
            (Some(s), _) => s,
            (None, Target::State(s)) => s.clone(),
            (None, Target::Stay) => state.unwrap_or_default().to_owned(),
        };
        if !def.knows(&target) {
            return Err(SagaEngineError::UndeclaredState {
                saga: def.name.clone(),
                state: target,
            });
        }
        let completed = def.is_final(&target);
        let now = step.now;
        let events = step
            .emitted
            .iter()
            .map(|(topic, e)| PendingEvent::new(topic.clone(), e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SagaError::from)?;
        let schedule = step
            .schedule
            .into_iter()
            .map(|s| ScheduledTimeout {
                id: s.envelope.event_id.to_string(),
                saga: def.name.clone(),
                key: key.to_owned(),
                name: s.name,
                due_at: s.due_at,
                envelope: s.envelope,
            })
            .collect();
        let handled = match state {
            None => Handled::Started {
                key: key.into(),
                state: target.clone(),
            },
            Some(from) => Handled::Moved {
                key: key.into(),
                from: from.into(),
                to: target.clone(),
                completed,
            },
        };
        let instance = SagaInstance {
            saga: def.name.clone(),
            key: key.to_owned(),
            tenant: env.tenant_id.to_string(),
            state: target.clone(),
            data: serde_json::to_value(&data).map_err(data_error)?,
            version: loaded.map_or(1, |i| i.version + 1),
            created_at: loaded.map_or(now, |i| i.created_at),
            updated_at: now,
            completed,
        };
        let commit = SagaCommit {
            expected_version: loaded.map_or(0, |i| i.version),
            history: SagaHistoryEntry {
                version: instance.version,
                event_id: env.event_id.to_string(),
                event_type: env.event_type.to_string(),
                from_state: state.map(str::to_owned),
                to_state: target,
                at: now,
            },
            instance,
            events,
            schedule,
            cancel: step.cancel,
            fired: fired.map(str::to_owned),
        };
        Ok(Plan::Commit(Box::new(commit), handled))
    }
}
