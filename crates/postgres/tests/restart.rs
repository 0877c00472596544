//! A PostgreSQL restart while a relay loop runs: its calls fail as transient
//! (`OutboxError::Unavailable`), the store reconnects, LISTEN resumes, and every event committed
//! before and after the restart is dispatched.
//!
//! It restarts the local cluster with `pg_ctlcluster`, so it runs only under CI or with
//! `EVENTYARD_PG_RESTART_TEST=1` (a restart would disturb other work on a shared machine), and
//! only against a server on this machine. Under CI, a missing `pg_ctlcluster` fails the test.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestDb, event};
use eventyard_core::outbox::{OutboxError, OutboxStore};
use eventyard_testkit::services::required;

/// `(version, cluster)` to restart, or why the test cannot run.
fn local_cluster(url: &str) -> Result<String, String> {
    if !(url.contains("@127.0.0.1") || url.contains("@localhost")) {
        return Err(format!("the server at {url} is not local"));
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .map_err(|e| format!("no /etc/postgresql: {e}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .ok_or("no cluster under /etc/postgresql")?;
    let ok = Command::new("pg_ctlcluster").arg("--help").output().is_ok();
    if ok {
        Ok(version)
    } else {
        Err("pg_ctlcluster not found".into())
    }
}

fn restart(version: &str) {
    let out = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .output()
        .expect("run pg_ctlcluster");
    assert!(
        out.status.success(),
        "pg_ctlcluster restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Commits `events` on a fresh connection, retrying while the server comes back.
async fn commit_retrying(db: &TestDb, from: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (mut client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            let tx = client.transaction().await.ok()?;
            let events: Vec<_> = (from..from + n)
                .map(|i| event("t", &format!("k{}", i % 7), i))
                .collect();
            db.store.add_batch(&tx, &events).await.ok()?;
            tx.commit().await.ok()
        };
        if attempt.await.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "could not commit after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_server_restart() {
    let opted_in = required() || std::env::var("EVENTYARD_PG_RESTART_TEST").is_ok_and(|v| v == "1");
    if !opted_in {
        eprintln!(
            "skipped: restarts PostgreSQL; runs under CI or with EVENTYARD_PG_RESTART_TEST=1"
        );
        return;
    }
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let version = match local_cluster(&db.url) {
        Ok(v) => v,
        Err(why) if required() => panic!("cannot restart PostgreSQL under CI: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    db.commit(
        &(0..100)
            .map(|i| event("t", &format!("k{}", i % 7), i))
            .collect::<Vec<_>>(),
    )
    .await;

    let dispatched = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let relay = {
        let (store, dispatched, errors) = (db.store.clone(), dispatched.clone(), errors.clone());
        tokio::spawn(async move {
            let errors = &errors;
            loop {
                let step = async {
                    let got = store.claim("relay", 50, Duration::from_secs(5)).await?;
                    if got.is_empty() {
                        store.wait(Duration::from_millis(200)).await;
                        return Ok::<_, OutboxError>(0);
                    }
                    let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
                    // "Published": keep marking until the store is back, as a relay does.
                    while let Err(e) = store.mark_dispatched("relay", &ids).await {
                        assert!(
                            e.is_transient(),
                            "non-transient error during restart: {e:?}"
                        );
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(ids.len() as u64)
                };
                match step.await {
                    Ok(n) => {
                        dispatched.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert!(
                            e.is_transient(),
                            "non-transient error during restart: {e:?}"
                        );
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    // Let the relay drain the first events, keep it busy, then restart under it.
    commit_retrying(&db, 100, 100).await;
    restart(&version);
    commit_retrying(&db, 200, 100).await;

    // Done when nothing is pending any more (duplicates after the restart are allowed: a claim
    // or mark committed asynchronously may be forgotten by the crash-free restart too).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = db
            .store
            .status()
            .await
            .map(|s| s.pending)
            .unwrap_or(u64::MAX);
        if pending == 0 && dispatched.load(Ordering::Relaxed) >= 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending {pending}, dispatched {} (errors {})",
            dispatched.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.abort();
    // The LISTEN connection came back as well.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !db.store.is_listening() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(db.store.is_listening());
    let s = db.store.status().await.unwrap();
    assert_eq!((s.pending, s.parked), (0, 0), "{s:?}");
    eprintln!(
        "restart: 300 events committed, {} dispatched (duplicates allowed), {} transient errors",
        dispatched.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    // The application's own connection died in the restart; the schema is dropped on a fresh one.
    db.app = common::client(&db.url).await;
}
