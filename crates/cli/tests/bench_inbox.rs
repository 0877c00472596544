//! `yard bench inbox --json` with tiny numbers: runs end to end, exits 0, and reports sane
//! figures (positive rates, ratio = rate / baseline_rate, settings, every run's messages).

mod common;

use common::num;

use std::process::Command;

#[test]
fn bench_inbox_json_is_sane() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yard"))
        .args([
            "bench",
            "inbox",
            "--json",
            "--messages",
            "600",
            "--runs",
            "1",
            "--batch",
            "100",
            "--aggregates",
            "16",
            "--rate",
            "200",
            "--seconds",
            "0.5",
            "--dir",
        ])
        .arg(dir.path())
        .env("YARD_LOG", "error")
        .output()
        .expect("run yard");
    let v = common::json_report(&out);

    assert_eq!(v["benchmark"], "inbox");
    let ratio = common::checked_ratio(&v);
    assert_eq!(num(&v, "target_ratio"), 0.5);
    assert_eq!(v["meets_target"], ratio >= 0.5);
    assert_eq!(v["messages"], 600);
    assert_eq!(v["payload_bytes"], 256);
    assert_eq!(v["runs"], 1);
    // Latency through the inbox: every scheduled message handled, ordered percentiles.
    let l = &v["latency"];
    assert_eq!(l["sent"], 100, "{l}");
    assert_eq!(l["received"], 100, "{l}");
    let (p50, p99) = (num(&v, "p50_ms"), num(&v, "p99_ms"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= num(&v, "p999_ms"), "{v}");
    assert_eq!(p50, num(l, "p50_ms"));

    let s = &v["settings"];
    assert_eq!(num(s, "latency_rate"), 200.0);
    assert_eq!(s["journal_mode"], "WAL");
    assert_eq!(s["synchronous"], "FULL");
    assert_eq!(s["batch"], 100);
    assert_eq!(s["aggregates"], 16);
    assert!(num(s, "publishers") >= 1.0 && num(s, "consumer_concurrency") >= 1.0);

    for key in ["baseline_runs", "inbox_runs"] {
        let runs = v[key].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{key}");
        assert!(num(&runs[0], "rate") > 0.0 && num(&runs[0], "elapsed_s") > 0.0);
        assert_eq!(runs[0]["messages"], 600);
        assert_eq!(runs[0]["anomalies"], 0, "{key}");
    }

    // The temporary data files are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
