//! The raw baseline: a bare SQLite queue loop through rusqlite, with the broker's pragmas, moving
//! the very bytes the broker stores, in the one queue table anybody would write first: body and
//! properties in the row the claim rewrites (the broker's own layout up to schema version 2).
//! The broker now keeps the bytes in a table of their own (`message_bodies`), so its claims
//! rewrite a narrow row; the baseline keeps the plain layout, the bar it was set against.
//!
//! One cycle = three transactions, mirroring the broker's three durable steps:
//! 1. insert `batch` rows (one prepared INSERT per row), commit — the publish;
//! 2. claim them: `UPDATE … SET visible_at = lock, delivery_count + 1 … RETURNING` the rows
//!    (bodies and properties read out), commit — the receive;
//! 3. delete them (one prepared DELETE per row, checking the lock token), commit — the acks.
//!
//! There is no framework, no thread hand-off and no async here: it is what a bare loop over this
//! table reaches with this batch size.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use super::SyncMode;

/// One queue table with the message bytes in the row (the broker's layout up to schema
/// version 2) and the broker's ready index.
pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          INTEGER NOT NULL,
    visible_at     INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at    INTEGER NOT NULL,
    body           BLOB NOT NULL,
    props          TEXT NOT NULL,
    dl_context     TEXT,
    dl_at          INTEGER
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
";

/// One baseline run.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRun {
    /// Messages moved through insert → claim → delete.
    pub messages: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// messages / elapsed.
    pub rate: f64,
    /// Cycles (each: three transactions, three commits).
    pub cycles: u64,
    /// CPU time of the loop's thread per message, µs (Linux; 0 elsewhere).
    pub cpu_us_per_msg: f64,
    /// Time per message the loop's thread waited for a CPU, µs (Linux; 0 elsewhere).
    pub runq_wait_us_per_msg: f64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens `path` with the broker's pragmas (WAL, `synchronous`, 5 s busy timeout) and the table.
pub fn open(path: &Path, sync: SyncMode) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.pragma_update(None, "synchronous", sync.as_str())?;
    conn.execute_batch(DDL)?;
    Ok(conn)
}

/// Runs the loop on a fresh file at `path` until `messages` went through; blocking.
pub fn run(
    path: &Path,
    sync: SyncMode,
    messages: u64,
    batch: u64,
    body: &[u8],
    props: &str,
) -> anyhow::Result<BaselineRun> {
    let mut conn = open(path, sync)?;
    let sched_before = super::broker::sched_of_this_thread();
    const QUEUE: i64 = 1;
    const LOCK_US: i64 = 30_000_000;
    let start = Instant::now();
    let (mut done, mut cycles) = (0u64, 0u64);
    while done < messages {
        let k = batch.min(messages - done);
        let now = now_us();
        // 1. publish
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO messages (queue, visible_at, enqueued_at, body, props) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for _ in 0..k {
                ins.execute(params![QUEUE, now, now, body, props])?;
            }
        }
        tx.commit()?;
        // 2. claim
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let claimed: Vec<(i64, i64, i64, Vec<u8>, String)> = {
            let mut claim = tx.prepare_cached(
                "UPDATE messages SET delivery_count = delivery_count + 1, visible_at = ?1
                 WHERE seq IN (SELECT seq FROM messages WHERE queue = ?2 AND visible_at <= ?3
                               ORDER BY visible_at, seq LIMIT ?4)
                 RETURNING seq, delivery_count, enqueued_at, body, props",
            )?;
            let now = now_us();
            claim
                .query_map(params![now + LOCK_US, QUEUE, now, i64::try_from(k)?], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?
        };
        tx.commit()?;
        anyhow::ensure!(
            claimed.len() as u64 == k,
            "baseline claimed {} of {k} rows",
            claimed.len()
        );
        // 3. ack
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM messages WHERE seq = ?1 AND queue = ?2 AND delivery_count = ?3",
            )?;
            for (seq, count, _, _, _) in &claimed {
                let n = del.execute(params![seq, QUEUE, count])?;
                anyhow::ensure!(n == 1, "baseline lost row {seq}");
            }
        }
        tx.commit()?;
        done += k;
        cycles += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu, wait) = match (sched_before, super::broker::sched_of_this_thread()) {
        (Some(b), Some(a)) => (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)),
        _ => (0, 0),
    };
    let per_msg = |ns: u64| ns as f64 / 1_000.0 / messages as f64;
    Ok(BaselineRun {
        messages,
        elapsed_s: elapsed,
        rate: messages as f64 / elapsed,
        cycles,
        cpu_us_per_msg: per_msg(cpu),
        runq_wait_us_per_msg: per_msg(wait),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_moves_every_row_and_leaves_the_table_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let r = run(&path, SyncMode::Off, 1234, 100, &[7u8; 300], "{}").unwrap();
        assert_eq!(r.messages, 1234);
        assert_eq!(r.cycles, 13);
        assert!(r.rate > 0.0);
        let conn = Connection::open(&path).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
