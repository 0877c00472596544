//! Mapping rusqlite errors onto the core's typed errors (rusqlite types never leak).

use eventyard_core::TransportError;
use rusqlite::ErrorCode;

/// Describes an engine error without leaking its type.
pub fn map_error(path: &str, e: rusqlite::Error, busy_ms: u64) -> TransportError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => TransportError::Locked {
            path: path.to_owned(),
            waited_ms: busy_ms,
        },
        Some(ErrorCode::NotADatabase) => TransportError::InvalidDataFile {
            path: path.to_owned(),
            reason: "file is not a database".into(),
        },
        Some(ErrorCode::DatabaseCorrupt) => TransportError::InvalidDataFile {
            path: path.to_owned(),
            reason: "database disk image is malformed".into(),
        },
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::PermissionDenied) => TransportError::InvalidDataFile {
            path: path.to_owned(),
            reason: e.to_string(),
        },
        _ => TransportError::Backend {
            backend: "sqlite",
            message: e.to_string(),
        },
    }
}

/// [`map_error`] at open time.
pub fn map_open_error(path: &str, e: rusqlite::Error) -> TransportError {
    map_error(path, e, 0)
}

/// True when the engine answered "busy" or "locked": another connection holds the lock.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// True when an engine error may pass on a retry (busy, locked, disk full, I/O, cannot open):
/// the stores built on the data file (outbox, sagas) report these as unavailable.
pub(crate) fn is_transient(e: &rusqlite::Error) -> bool {
    is_busy(e)
        || matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen)
        )
}
