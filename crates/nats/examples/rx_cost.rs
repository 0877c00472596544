//! Instruction-count harness for the receive path (run under callgrind with
//! `--toggle-collect='*rx_cost::measure*'`). Not a test.
//!
//! Usage: rx_cost <nats-url> <messages> <mode: backlog|stream>

use std::sync::Arc;
use std::time::Duration;

use eventyard_core::{
    Envelope, EventType, OutgoingMessage, SubQueue, SubscriptionSpec, TenantId, Transport,
};
use eventyard_nats::{NatsConfig, NatsTransport};

fn envelope(i: usize) -> OutgoingMessage {
    let mut e = Envelope::new(
        EventType::event("BenchMessageSent").unwrap(),
        TenantId::parse("bench").unwrap(),
        serde_json::json!({ "data": "x".repeat(245) }),
    );
    e.headers
        .insert("bench-intended-ns".into(), (i * 1000).to_string());
    (&e).into()
}

#[inline(never)]
fn measure(rt: &tokio::runtime::Runtime, t: Arc<NatsTransport>, n: usize, stream: bool) -> usize {
    rt.block_on(async move {
        let mut rx = t.receiver("rxc", "rxc.sub", SubQueue::Main).await.unwrap();
        // Stream: the next message is published once the previous one was acked, so every
        // receive returns one message.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let publisher = stream.then(|| {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                for i in 0..n {
                    t.publish("rxc", vec![envelope(i)]).await.unwrap();
                    if done_rx.recv().await.is_none() {
                        return;
                    }
                }
            })
        });
        let mut got = 0;
        let mut calls = 0;
        while got < n {
            let batch = rx.receive(64, Duration::from_secs(2)).await.unwrap();
            calls += 1;
            for d in batch {
                got += 1;
                d.ack().await.unwrap();
                let _ = done_tx.send(());
            }
        }
        if let Some(p) = publisher {
            p.await.unwrap();
        }
        eprintln!("received {got} in {calls} calls");
        got
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let n: usize = args[2].parse().unwrap();
    let stream = args[3] == "stream";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("rxc{}", std::process::id());
    let t = rt.block_on(async {
        let t = NatsTransport::connect(NatsConfig::from_url(url).unwrap().prefix(&prefix))
            .await
            .unwrap();
        t.ensure_subscription(&SubscriptionSpec::new("rxc", "rxc.sub"))
            .await
            .unwrap();
        if !stream {
            for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
                t.publish("rxc", chunk.iter().map(|&i| envelope(i)).collect())
                    .await
                    .unwrap();
            }
        }
        Arc::new(t)
    });
    measure(&rt, Arc::clone(&t), n, stream);
    rt.block_on(async {
        t.delete_subscription("rxc", "rxc.sub").await.unwrap();
        t.close().await.unwrap();
    });
}
