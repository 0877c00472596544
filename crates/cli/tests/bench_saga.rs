//! `yard bench saga --json` with tiny numbers: runs end to end, exits 0, and reports sane
//! figures (positive rates, ratio = rate / baseline_rate, settings); `--store postgres` says
//! clearly that it is not there yet.

mod common;

use common::{stderr, stdout, yard};
use serde_json::Value;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

#[test]
fn bench_saga_json_is_sane() {
    let dir = tempfile::tempdir().unwrap();
    let out = yard()
        .args([
            "bench",
            "saga",
            "--store",
            "sqlite",
            "--json",
            "--steps",
            "300",
            "--runs",
            "1",
            "--concurrency",
            "8",
            "--dir",
        ])
        .arg(dir.path())
        .env("YARD_LOG", "error")
        .output()
        .expect("run yard");
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout, got:\n{text}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["benchmark"], "saga");
    let (baseline, rate, ratio) = (num(&v, "baseline_rate"), num(&v, "rate"), num(&v, "ratio"));
    assert!(baseline > 0.0 && rate > 0.0, "{v}");
    assert!(
        (ratio - rate / baseline).abs() <= 1e-9 * ratio.max(1.0),
        "{v}"
    );
    assert_eq!(num(&v, "target_ratio"), 0.6);
    assert_eq!(v["meets_target"].as_bool(), Some(ratio >= 0.6), "{v}");
    assert_eq!(num(&v, "steps"), 300.0);
    assert_eq!(num(&v, "conflicts"), 0.0, "one task per instance: {v}");
    let s = &v["settings"];
    assert_eq!(s["journal_mode"], "WAL");
    assert_eq!(s["synchronous"], "FULL");
    assert_eq!(s["concurrency"], 8);
    assert_eq!(s["store"], "sqlite");
    assert_eq!(v["baseline_runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["saga_runs"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bench_saga_on_postgres_is_not_there_yet() {
    let out = common::run(&["bench", "saga", "--store", "postgres", "--steps", "10"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not yet"), "stderr:\n{err}");
}
