//! Helpers shared by the CLI tests: run `yard`, open the data file directly.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

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
