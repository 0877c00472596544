//! Restarting nats-server in the middle of a publish/consume run loses no publish that returned
//! `Ok`: each one is received afterwards.
//!
//! The test stops the machine's nats-server (SIGTERM) and starts it again with the command
//! `scripts/services.sh` uses. It runs only against a local server it can restart (found with
//! `pgrep`, answering on 127.0.0.1:4222); otherwise it is skipped with a printed reason — except
//! under `CI=true`, where it must run.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventyard_core::properties::names;
use eventyard_core::{OutgoingMessage, SubQueue, SubscriptionSpec, Transport};
use eventyard_nats::NatsTransport;
use eventyard_testkit::helpers::message;
use eventyard_testkit::services::{self, Service};
use tokio::time::Instant;

const SERVER: &str = "/usr/sbin/nats-server";
const START_ARGS: [&str; 9] = [
    "-a",
    "127.0.0.1",
    "-p",
    "4222",
    "-js",
    "-sd",
    "/var/lib/nats-server",
    "-l",
    "/var/log/nats-server.log",
];
const BATCHES: usize = 60;
const BATCH_SIZE: usize = 20;
const RESTART_AFTER_BATCH: usize = 15;

fn server_pid() -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-x", "nats-server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

fn port_open() -> bool {
    TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().expect("addr"),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The URL of a local, restartable server, or why there is none.
fn local_server() -> Result<String, String> {
    let url = services::url(Service::Nats).ok_or("no NATS server answers")?;
    let host = url.split("://").nth(1).unwrap_or_default();
    if !(host.starts_with("127.0.0.1:4222") || host.starts_with("localhost:4222")) {
        return Err(format!(
            "NATS at {url} is not the local server on 127.0.0.1:4222"
        ));
    }
    if !std::path::Path::new(SERVER).exists() {
        return Err(format!("{SERVER} is not installed"));
    }
    if server_pid().is_none() {
        return Err("no local nats-server process (pgrep -x nats-server)".into());
    }
    Ok(url)
}

/// SIGTERM, wait for the process to exit, start it again, wait for the port. Blocking.
fn restart_server() -> (u32, u32) {
    let old = server_pid().expect("nats-server pid");
    let killed = Command::new("kill")
        .args(["-TERM", &old.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {old} failed");
    let gone_by = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{old}")).exists() {
        assert!(
            std::time::Instant::now() < gone_by,
            "nats-server {old} did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            SERVER,
            "--",
        ])
        .args(START_ARGS)
        .status()
        .expect("run start-stop-daemon");
    assert!(started.success(), "start-stop-daemon failed: {started}");
    let up_by = std::time::Instant::now() + Duration::from_secs(30);
    while !port_open() {
        assert!(
            std::time::Instant::now() < up_by,
            "nats-server did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (old, server_pid().unwrap_or_default())
}

fn event_id(m: &OutgoingMessage) -> String {
    m.message
        .properties
        .get_str(names::EVENT_ID)
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_a_server_restart() {
    let url = match local_server() {
        Ok(url) => url,
        Err(why) if services::required() => {
            panic!("CI=true: the restart test must run, but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let prefix = common::unique_prefix();
    let connect = || async {
        NatsTransport::connect(common::config(&url, &prefix))
            .await
            .expect("connect")
    };
    let publisher = connect().await;
    let consumer = connect().await;
    let spec = SubscriptionSpec::new("restart", "all").lock_duration(Duration::from_secs(2));
    publisher.ensure_subscription(&spec).await.expect("ensure");

    // Consumer: receives and acks until told to stop; tolerates errors while the server is away.
    let received: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let consuming = {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        let mut rx = consumer
            .receiver("restart", "all", SubQueue::Main)
            .await
            .expect("receiver");
        tokio::spawn(async move {
            let mut errors = 0usize;
            loop {
                let batch = tokio::select! {
                    _ = stop.notified() => return errors,
                    b = rx.receive(100, Duration::from_millis(500)) => b,
                };
                match batch {
                    Ok(deliveries) => {
                        for d in deliveries {
                            let id = d
                                .message
                                .properties
                                .get_str(names::EVENT_ID)
                                .unwrap_or_default()
                                .to_owned();
                            // An ack lost in the outage only means a redelivery.
                            if d.ack().await.is_err() {
                                errors += 1;
                            }
                            received.lock().expect("lock").insert(id);
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("receive failed (expected while restarting): {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };

    // Publisher: batches; a failed batch is retried (same event ids: deduplicated by the
    // server). Only batches that returned Ok count as confirmed.
    let mut confirmed: HashSet<String> = HashSet::new();
    // For the report: which batch each message was in, and when it was confirmed.
    let mut batch_of: HashMap<String, (usize, Duration)> = HashMap::new();
    let t0 = Instant::now();
    let mut failures = 0usize;
    let mut restart = None;
    let publish_deadline = Instant::now() + Duration::from_secs(90);
    for n in 0..BATCHES {
        if n == RESTART_AFTER_BATCH {
            eprintln!("{:?}: restarting nats-server", t0.elapsed());
            restart = Some(tokio::task::spawn_blocking(move || {
                let pids = restart_server();
                eprintln!("{:?}: nats-server is back", t0.elapsed());
                pids
            }));
        }
        let batch: Vec<OutgoingMessage> = (0..BATCH_SIZE)
            .map(|_| message("tenant-a", "OrderPlaced"))
            .collect();
        loop {
            match publisher.publish("restart", batch.clone()).await {
                Ok(()) => {
                    for m in &batch {
                        batch_of.insert(event_id(m), (n, t0.elapsed()));
                    }
                    confirmed.extend(batch.iter().map(event_id));
                    break;
                }
                Err(e) => {
                    failures += 1;
                    eprintln!(
                        "{:?} publish of batch {n} failed (expected while restarting): {e}",
                        t0.elapsed()
                    );
                    assert!(
                        Instant::now() < publish_deadline,
                        "publishing never recovered after the restart: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (old_pid, new_pid) = restart
        .expect("restart started")
        .await
        .expect("restart task");
    assert_ne!(old_pid, new_pid, "the server was not restarted");

    // Every confirmed publish arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing: Vec<String> = {
            let got = received.lock().expect("lock");
            confirmed
                .iter()
                .filter(|id| !got.contains(*id))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.notify_one();
    let consumer_errors = consuming.await.expect("consumer task");
    eprintln!(
        "restart {old_pid} -> {new_pid}: {} confirmed, {} received, {failures} failed publish \
         attempts, {consumer_errors} consumer errors",
        confirmed.len(),
        received.lock().expect("lock").len()
    );
    if let Some((batch, at)) = missing.first().and_then(|m| batch_of.get(m)) {
        eprintln!("first missing message: batch {batch}, confirmed {at:?} after the start");
    }
    let _ = publisher.delete_all_topics().await;
    let _ = publisher.close().await;
    let _ = consumer.close().await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged publishes never arrived: {:?}",
        missing.len(),
        confirmed.len(),
        &missing[..missing.len().min(10)]
    );
}
