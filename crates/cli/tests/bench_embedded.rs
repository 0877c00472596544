//! `yard bench embedded --json` with tiny numbers: runs end to end, exits 0, and reports sane
//! figures (positive rates, ratio = rate / baseline_rate, ordered percentiles, settings).

mod common;

use common::num;

use std::process::Command;

#[test]
fn bench_embedded_json_is_sane() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yard"))
        .args([
            "bench",
            "embedded",
            "--json",
            "--messages",
            "2000",
            "--runs",
            "1",
            "--batch",
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

    common::checked_ratio(&v);
    let rate = num(&v, "rate");
    let bare = num(&v, "baseline_bare_rate");
    assert!(bare > 0.0, "{v}");
    assert!(
        (num(&v, "ratio_bare") - rate / bare).abs() <= 1e-9 * rate.max(1.0),
        "{v}"
    );
    let (p50, p99, p999) = (num(&v, "p50_ms"), num(&v, "p99_ms"), num(&v, "p999_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{v}");
    assert_eq!(v["messages"], 2000);
    assert_eq!(v["payload_bytes"], 256);
    assert_eq!(v["runs"], 1);
    assert!(v["meets_target"].is_boolean());

    let s = &v["settings"];
    assert_eq!(s["journal_mode"], "WAL");
    assert_eq!(s["synchronous"], "FULL");
    assert_eq!(s["batch"], 200);
    assert!(num(s, "publishers") >= 1.0 && num(s, "consumer_concurrency") >= 1.0);
    assert!(num(s, "body_bytes") > 256.0);

    for key in ["baseline_runs", "baseline_bare_runs", "broker_runs"] {
        let runs = v[key].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{key}");
        assert!(num(&runs[0], "rate") > 0.0 && num(&runs[0], "elapsed_s") > 0.0);
        assert_eq!(runs[0]["messages"], 2000);
    }
    assert_eq!(v["broker_runs"][0]["anomalies"], 0);
    let lat = &v["latency"];
    assert_eq!(lat["sent"], 500);
    assert_eq!(lat["received"], 500);
    assert_eq!(lat["publish_errors"], 0);

    // The temporary data files are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_embedded_table_exits_zero_even_below_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yard"))
        .args([
            "bench",
            "embedded",
            "--messages",
            "300",
            "--runs",
            "1",
            "--seconds",
            "0.1",
            "--synchronous",
            "off",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run yard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("baseline, the broker's rows (R7)"),
        "{stdout}"
    );
    assert!(stdout.contains("synchronous=OFF"), "{stdout}");
    assert!(
        stdout.contains("below target") || stdout.contains("R7 targets met"),
        "{stdout}"
    );
}
