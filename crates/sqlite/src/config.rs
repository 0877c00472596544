//! Configuration of the embedded SQLite broker.

use std::path::PathBuf;
use std::time::Duration;

/// How hard SQLite syncs to disk (`PRAGMA synchronous`). In WAL mode `Full` makes every commit
/// durable against power loss; `Normal` may lose the last commits on power loss (not on a process
/// crash); `Off` hands syncing to the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=FULL`. Default.
    #[default]
    Full,
    /// `synchronous=NORMAL`.
    Normal,
    /// `synchronous=OFF`.
    Off,
}

impl Synchronous {
    /// The pragma value.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }

    /// Parses `full`, `normal` or `off` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Some(Synchronous::Full),
            "normal" => Some(Synchronous::Normal),
            "off" => Some(Synchronous::Off),
            _ => None,
        }
    }
}

/// Settings of one [`SqliteBroker`](crate::SqliteBroker). Every field documents its default.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The data file. Created if absent. No default: see [`SqliteConfig::new`].
    pub path: PathBuf,
    /// `PRAGMA synchronous`. Default [`Synchronous::Full`]. The journal is always WAL.
    pub synchronous: Synchronous,
    /// How long to wait for another process's lock before failing with `Locked`. Default 5 s.
    pub busy_timeout: Duration,
    /// Most commands (publishes, claims, settlements) grouped into one transaction. Default 2048.
    pub max_batch: usize,
    /// How often waiting receivers look for commits made by *other processes* on the same file
    /// (`PRAGMA data_version`, no disk I/O). Commits of this process wake receivers at once.
    /// Default 5 ms.
    pub cross_process_poll: Duration,
    /// Largest message body accepted. Default 1 MiB.
    pub max_message_size: usize,
}

impl SqliteConfig {
    /// Defaults for the data file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_batch: 2048,
            cross_process_poll: Duration::from_millis(5),
            max_message_size: 1024 * 1024,
        }
    }

    /// Parses `sqlite://PATH[?synchronous=full|normal|off]` (also `sqlite:PATH` and a bare path).
    pub fn from_url(url: &str) -> Result<Self, eventyard_core::TransportError> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(eventyard_core::TransportError::Config(format!(
                "`{url}`: the sqlite URL names no file (use sqlite://PATH)"
            )));
        }
        let mut cfg = SqliteConfig::new(path);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("synchronous", v)) => {
                    cfg.synchronous = Synchronous::parse(v).ok_or_else(|| {
                        eventyard_core::TransportError::Config(format!(
                            "`{url}`: synchronous must be full, normal or off, not `{v}`"
                        ))
                    })?;
                }
                _ => {
                    return Err(eventyard_core::TransportError::Config(format!(
                        "`{url}`: unknown option `{pair}` (known: synchronous)"
                    )));
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = SqliteConfig::from_url("sqlite:///tmp/x.db?synchronous=normal").unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.synchronous, Synchronous::Normal);
        assert_eq!(
            SqliteConfig::from_url("sqlite://data.db").unwrap().path,
            PathBuf::from("data.db")
        );
        assert!(SqliteConfig::from_url("sqlite://").is_err());
        assert!(SqliteConfig::from_url("sqlite://x.db?synchronous=maybe").is_err());
        assert!(SqliteConfig::from_url("sqlite://x.db?color=red").is_err());
    }
}
