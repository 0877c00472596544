//! [`StoreKind`]: which store a command reads or a benchmark measures (`--store`).

use serde::Serialize;

/// Which store: the embedded SQLite data file or PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded SQLite store (the data file).
    Sqlite,
    /// PostgreSQL (`--url`).
    Postgres,
}

impl StoreKind {
    /// `sqlite` or `postgres`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}
