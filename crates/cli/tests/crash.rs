//! A publisher killed with SIGKILL in the middle of a burst loses no acknowledged message.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use eventyard::{SubQueue, SubscriptionSpec, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let b = common::broker(&path);
    b.ensure_subscription(&SubscriptionSpec::new("ProjectCreated", "crash-check"))
        .await
        .unwrap();
    b.close().await.unwrap();

    for round in 0..3u32 {
        let mut child = common::yard()
            .args(["publish", "--data", path.to_str().unwrap()])
            .args(["--type", "ProjectCreated", "--tenant", "connectsoft"])
            .args([
                "--payload",
                r#"{"projectName":"crash"}"#,
                "--repeat",
                "1000000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let target = 150 + 97 * round as usize; // kill at a different moment each round
        let mut acked = HashSet::new();
        let mut line = String::new();
        while acked.len() < target {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "publisher ended early"
            );
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            acked.insert(v["eventId"].as_str().unwrap().to_owned());
        }
        child.kill().unwrap(); // SIGKILL
        // Lines already written before the kill were acknowledged too.
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                acked.insert(v["eventId"].as_str().unwrap().to_owned());
            }
        }
        child.wait().unwrap();

        let b = common::broker(&path);
        let mut rx = b
            .receiver("ProjectCreated", "crash-check", SubQueue::Main)
            .await
            .unwrap();
        let mut stored = HashSet::new();
        loop {
            let batch = rx.receive(1000, Duration::from_millis(200)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for d in batch {
                stored.insert(d.message.envelope().unwrap().event_id.to_string());
                d.ack().await.unwrap();
            }
        }
        let lost: Vec<_> = acked.difference(&stored).collect();
        println!(
            "round {round}: acknowledged {}, stored {}, lost {}",
            acked.len(),
            stored.len(),
            lost.len()
        );
        assert!(lost.is_empty(), "lost acknowledged publishes: {lost:?}");
        assert!(stored.len() >= acked.len());
        b.close().await.unwrap();
    }
}
