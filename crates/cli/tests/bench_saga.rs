//! `yard bench saga --json` with tiny numbers: runs end to end, exits 0, and reports sane
//! figures (positive rates, ratio = rate / baseline_rate, settings), on SQLite and on PostgreSQL
//! (where the benchmark schemas are gone afterwards).

mod common;

use common::num;

use common::{stderr, stdout, yard};
use eventyard_testkit::services::{Service, require};
use serde_json::Value;

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
    let v = check_report(&stdout(&out), 300.0);
    let s = &v["settings"];
    assert_eq!(s["journal_mode"], "WAL");
    assert_eq!(s["synchronous"], "FULL");
    assert_eq!(s["concurrency"], 8);
    assert_eq!(s["store"], "sqlite");
    assert_eq!(s["durability"], "journal_mode=WAL, synchronous=FULL");
    assert!(s["connections"].is_null(), "{v}");
    assert_eq!(v["baseline_runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["saga_runs"].as_array().map(Vec::len), Some(1));
}

/// Checks the figures common to both stores; returns the report.
fn check_report(text: &str, steps: f64) -> Value {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout, got:\n{text}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["benchmark"], "saga");
    let ratio = common::checked_ratio(&v);
    assert_eq!(num(&v, "target_ratio"), 0.6);
    assert_eq!(v["meets_target"].as_bool(), Some(ratio >= 0.6), "{v}");
    assert_eq!(num(&v, "steps"), steps);
    assert_eq!(num(&v, "conflicts"), 0.0, "one task per instance: {v}");
    v
}

/// Schemas in the database whose name starts with `prefix`.
fn schemas_like(url: &str, prefix: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        client
            .query(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                &[&prefix],
            )
            .await
            .expect("list schemas")
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

#[test]
fn bench_saga_postgres_json_is_sane_and_drops_its_schemas() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let child = yard()
        .args([
            "bench",
            "saga",
            "--store",
            "postgres",
            "--url",
            &url,
            "--json",
            "--steps",
            "120",
            "--runs",
            "2",
            "--concurrency",
            "6",
            "--pg-connections",
            "3",
        ])
        .env("YARD_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run yard");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for yard");
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let v = check_report(&stdout(&out), 120.0);
    let s = &v["settings"];
    assert_eq!(s["store"], "postgres");
    assert_eq!(s["durability"], "synchronous_commit=on");
    assert_eq!(s["concurrency"], 6);
    assert_eq!(s["connections"], 3);
    assert_eq!(s["rows_per_step"], 3);
    assert!(
        s["journal_mode"].is_null() && s["synchronous"].is_null(),
        "{v}"
    );
    assert!(num(s, "body_bytes") > 256.0, "{v}");
    assert_eq!(v["baseline_runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["saga_runs"].as_array().map(Vec::len), Some(2));
    // Four schemas were made (baseline and saga, two runs); none is left.
    let left = schemas_like(&url, &format!("yard_bench_saga_{pid}_"));
    assert!(left.is_empty(), "schemas left behind: {left:?}");
}

#[test]
fn bench_saga_postgres_names_an_unreachable_server() {
    let out = common::run(&[
        "bench",
        "saga",
        "--store",
        "postgres",
        "--url",
        "postgres://postgres@127.0.0.1:1/test?connect_timeout=1",
        "--steps",
        "10",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:1"), "stderr:\n{err}");
}
