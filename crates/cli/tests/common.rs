//! Helpers shared by the CLI tests: run `yard`, open the data file directly.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The `yard` binary built for this test run.
pub fn yard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_yard"))
}

/// Runs `yard` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    yard().args(args).output().expect("yard runs")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Opens the embedded broker on `path`.
pub fn broker(path: &Path) -> eventyard::sqlite::SqliteBroker {
    eventyard::sqlite::SqliteBroker::open(eventyard::sqlite::SqliteConfig::new(path)).expect("open")
}

/// The number at `key` of a JSON object; panics naming the key when it is not one.
pub fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

/// One JSON value per line of `text`.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// The one JSON report a successful `yard bench … --json` prints on stdout (asserts the exit
/// status and that stdout holds exactly one line).
pub fn json_report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}",
        out.status,
        stderr(out)
    );
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout, got:\n{text}");
    serde_json::from_str(lines[0]).unwrap()
}

/// A report's `ratio`, after asserting that `baseline_rate` and `rate` are positive and that
/// `ratio` is their quotient.
pub fn checked_ratio(v: &Value) -> f64 {
    let (baseline, rate, ratio) = (num(v, "baseline_rate"), num(v, "rate"), num(v, "ratio"));
    assert!(baseline > 0.0 && rate > 0.0, "{v}");
    assert!(
        (ratio - rate / baseline).abs() <= 1e-9 * ratio.max(1.0),
        "{v}"
    );
    ratio
}
