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
