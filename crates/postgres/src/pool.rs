//! A small set of reconnecting connections with the outbox statements prepared on each.
//!
//! Every store operation is a single statement (claims and cleanups are server-side functions),
//! so connections are shared, not checked out: calls go round-robin over the slots (a relay's
//! calls all go to one slot, see [`Pool::get_for`]) and tokio-postgres pipelines concurrent
//! calls on one connection. A slot whose connection has
//! closed (server restart, network loss) reconnects on its next use; while the server is down
//! that fails fast with [`OutboxError::Unavailable`] and the caller (the relay) backs off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventyard_core::outbox::OutboxError;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Statement};

use crate::config::describe_target;
use crate::error;
use crate::sql::Sql;

/// One connection and its prepared statements.
pub(crate) struct Conn {
    pub client: Client,
    pub claim: Statement,
    pub mark: Statement,
    pub release: Statement,
    pub park: Statement,
    pub cleanup: Statement,
    pub status: Statement,
    pub lag: Statement,
}

/// Round-robin reconnecting connections.
pub(crate) struct Pool {
    pg: tokio_postgres::Config,
    sql: Sql,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

/// Opens a connection and drives it on a spawned task.
pub(crate) async fn connect(pg: &tokio_postgres::Config) -> Result<Client, OutboxError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| {
        OutboxError::Unavailable(format!(
            "postgres at {}: cannot connect: {}",
            describe_target(pg),
            error::describe(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %error::describe(&e), "outbox connection closed");
        }
    });
    Ok(client)
}

impl Pool {
    /// `size` slots, connected lazily.
    pub(crate) fn new(pg: tokio_postgres::Config, sql: Sql, size: usize) -> Self {
        Pool {
            pg,
            sql,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A live connection (reconnecting the chosen slot if needed).
    pub(crate) async fn get(&self) -> Result<Arc<Conn>, OutboxError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.slot(i).await
    }

    /// The connection of `owner` (a relay): always the same slot for one owner, so that its
    /// calls are pipelined on one connection and the server runs them in the order they were
    /// issued. The relay issues the mark of one batch and then the claim of the next at once:
    /// on two connections the claim could run before the mark committed and find every key
    /// still leased by the marked batch, and come back empty.
    pub(crate) async fn get_for(&self, owner: &str) -> Result<Arc<Conn>, OutboxError> {
        self.slot(crate::schema::lock_key(owner) as usize).await
    }

    async fn slot(&self, n: usize) -> Result<Arc<Conn>, OutboxError> {
        let i = n % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && !c.client.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        *slot = None;
        let conn = Arc::new(self.open().await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn open(&self) -> Result<Conn, OutboxError> {
        let client = connect(&self.pg).await?;
        let s = &self.sql;
        let prep = |q: &str| {
            let q = q.to_owned();
            let c = &client;
            async move { c.prepare(&q).await }
        };
        let (claim, mark, release, park, cleanup, status, lag) = futures::try_join!(
            prep(&s.claim),
            prep(&s.mark),
            prep(&s.release),
            prep(&s.park),
            prep(&s.cleanup),
            prep(&s.status),
            prep(&s.lag),
        )
        .map_err(|e| error::map("prepare", e))?;
        Ok(Conn {
            client,
            claim,
            mark,
            release,
            park,
            cleanup,
            status,
            lag,
        })
    }
}
