//! `yard bench transport --json` against each broker with tiny numbers: runs end to end, exits 0,
//! reports positive rates with `ratio = bus / raw`, sane latencies and the settings, and deletes
//! what it created. Skipped when the broker is absent (failed under CI, see
//! `eventyard_testkit::services`).

mod common;

use common::num;

use std::process::Command;

use eventyard_testkit::services::{self, Service};
use serde_json::Value;

const MESSAGES: u64 = 400;

fn assert_ratio(c: &Value, what: &str) {
    let (raw, bus, ratio) = (num(c, "raw"), num(c, "bus"), num(c, "ratio"));
    assert!(raw > 0.0 && bus > 0.0, "{what}: {c}");
    assert!(
        (ratio - bus / raw).abs() <= 1e-9 * ratio.max(1.0),
        "{what}: ratio is not bus / raw: {c}"
    );
    assert_eq!(num(c, "target"), 0.8, "{what}");
    assert_eq!(
        c["meets_target"].as_bool(),
        Some(ratio >= 0.8),
        "{what}: {c}"
    );
    for side in ["raw_runs", "bus_runs"] {
        let runs = c[side].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{what} {side}");
        assert!(runs[0].as_f64().unwrap() > 0.0, "{what} {side}");
    }
}

fn rounds_of(v: &Value) -> &Vec<Value> {
    v["rounds"].as_array().unwrap()
}

/// Runs the benchmark on `url`.
fn bench(url: &str) -> Value {
    let yard = env!("CARGO_BIN_EXE_yard");
    let out = Command::new(yard)
        .args(["bench", "transport", "--json", "--url", url, "--messages"])
        .arg(MESSAGES.to_string())
        .args([
            "--runs",
            "1",
            "--window",
            "64",
            "--seconds",
            "0.3",
            "--latency-max-rate",
            "1000",
            "--latency-light-rate",
            "200",
        ])
        .env("YARD_LOG", "error")
        .output()
        .expect("run yard");
    common::json_report(&out)
}

fn check(v: &Value, broker: &str) {
    assert_eq!(v["benchmark"], "transport");
    assert_eq!(v["broker"], broker);
    assert_ratio(&v["publish"], "publish");
    assert_ratio(&v["consume"], "consume");
    let reference = &v["publish"]["reference"];
    assert!(num(reference, "rate") > 0.0, "{reference}");
    let sequential = &v["publish"]["bus_reference"];
    assert!(num(sequential, "rate") > 0.0, "{sequential}");

    let l = &v["latency"];
    assert!(num(l, "rate") > 0.0 && num(l, "rate") <= 1000.0, "{l}");
    for side in ["raw", "bus"] {
        let x = &l[side];
        let (p50, p99, p999) = (num(x, "p50_ms"), num(x, "p99_ms"), num(x, "p999_ms"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{side}: {x}");
        assert_eq!(x["received"], x["sent"], "{side}: {x}");
        assert_eq!(x["publish_errors"], 0, "{side}: {x}");
        let costs = &l[format!("{side}_costs")];
        assert!(num(costs, "client_cpu_us_per_msg") > 0.0, "{side}: {costs}");
        let busy = num(costs, "machine_busy_pct");
        assert!((0.0..=100.0).contains(&busy), "{side}: {costs}");
    }
    let p99_ratio = num(l, "p99_ratio");
    assert!(
        (p99_ratio - num(&l["bus"], "p99_ms") / num(&l["raw"], "p99_ms")).abs() <= 1e-9,
        "{l}"
    );
    // The raw maximum is the measured end-to-end rate (one round here).
    let e2e = num(&rounds_of(v)[0]["raw_end_to_end"], "rate");
    assert_eq!(num(l, "raw_max_rate"), e2e, "{l}");
    assert_eq!(l["raw_end_to_end_runs"][0].as_f64(), Some(e2e), "{l}");
    assert!(num(l, "raw_max_rate_estimate") > 0.0, "{l}");
    // Three pairs (the default), the order alternating, each side's figures their medians.
    let pairs = l["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 3, "{l}");
    for (i, pair) in pairs.iter().enumerate() {
        assert_eq!(pair["pair"], i + 1);
        let order = if i % 2 == 0 { "raw-first" } else { "bus-first" };
        assert_eq!(pair["order"], order, "{pair}");
        let delta = num(&pair["bus"], "p50_ms") - num(&pair["raw"], "p50_ms");
        assert!((num(pair, "p50_delta_ms") - delta).abs() <= 1e-9, "{pair}");
        for side in ["raw", "bus"] {
            assert_eq!(pair[side]["received"], pair[side]["sent"], "{pair}");
            let x = &pair[side];
            let (c50, c99) = (num(x, "confirm_p50_ms"), num(x, "confirm_p99_ms"));
            assert!(
                0.0 < c50 && c50 <= c99,
                "publish confirmed, intended → ack: {pair}"
            );
            let slices = num(&pair[format!("{side}_costs")], "slices_per_msg");
            assert!(slices > 0.0, "a run is on a CPU at least once: {pair}");
        }
    }
    for side in ["raw", "bus"] {
        let mut p50s: Vec<f64> = pairs.iter().map(|p| num(&p[side], "p50_ms")).collect();
        p50s.sort_by(f64::total_cmp);
        assert_eq!(
            num(&l[side], "p50_ms"),
            p50s[1],
            "{side}: the median of the pairs"
        );
        let sent: f64 = pairs.iter().map(|p| num(&p[side], "sent")).sum();
        assert_eq!(num(&l[side], "sent"), sent, "{side}: totals");
    }
    let delta = num(&l["bus"], "p50_ms") - num(&l["raw"], "p50_ms");
    assert!((num(l, "p50_delta_ms") - delta).abs() <= 1e-9, "{l}");
    // The light-load reference: one pair, raw first, at its own rate, set beside R5's raw p50.
    let light = &l["light"];
    assert_eq!(num(light, "rate"), 200.0, "{light}");
    let pair = &light["pair"];
    assert_eq!(pair["order"], "raw-first", "{light}");
    for side in ["raw", "bus"] {
        let x = &pair[side];
        assert_eq!(num(x, "sent"), 60.0, "200 msg/s for 0.3 s: {light}");
        assert_eq!(x["received"], x["sent"], "{light}");
        assert!(num(x, "p50_ms") > 0.0, "{light}");
    }
    let factor = num(&l["raw"], "p50_ms") / num(&pair["raw"], "p50_ms");
    assert!(
        (num(light, "raw_queueing_factor") - factor).abs() <= 1e-9,
        "{light}"
    );

    let s = &v["settings"];
    assert_eq!(s["window"], 64);
    // The pipelined publisher's batches fill the window between them: 4 of 16.
    assert_eq!(s["pipeline"], 4);
    assert_eq!(s["batch"], 16);
    assert_eq!(s["messages"], MESSAGES);
    assert_eq!(s["runs"], 1);
    assert_eq!(s["latency_runs"], 3);
    assert_eq!(s["latency_light_rate"], 200.0);
    assert_eq!(s["payload_bytes"], 256);
    assert!(
        num(s, "body_bytes") > 256.0 && num(s, "header_bytes") > 100.0,
        "{s}"
    );
    assert!(!s["durability"].as_str().unwrap().is_empty());
    assert!(!s["ack_vs_fsync"].as_str().unwrap().is_empty());

    let rounds = rounds_of(v);
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["bus_anomalies"], 0);
    for phase in [
        "raw_publish_bare",
        "raw_publish",
        "raw_consume",
        "bus_publish",
        "bus_publish_sequential",
        "bus_consume",
        "raw_end_to_end",
    ] {
        assert_eq!(rounds[0][phase]["messages"], MESSAGES, "{phase}");
    }
}

#[test]
fn bench_transport_nats_json_is_sane() {
    let Some(url) = services::require(Service::Nats) else {
        return;
    };
    let v = bench(&url);
    check(&v, "nats");
    assert!(
        v["settings"]["ack_vs_fsync"]
            .as_str()
            .unwrap()
            .contains("BEFORE fsync"),
        "the NATS caveat is printed: {v}"
    );
}

#[test]
fn bench_transport_amqp_json_is_sane() {
    let Some(url) = services::require(Service::Amqp) else {
        return;
    };
    let v = bench(&url);
    check(&v, "amqp");
}
