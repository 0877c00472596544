//! Fault fingerprints: a short, stable hash that groups similar failures.
//!
//! One implementation serves the runtime (which writes the fingerprint into the fault context)
//! and the DLQ operations (which compute it for dead letters without one):
//! [`eventyard_core::fault::fingerprint`]. These wrappers only name it where DLQ users look.

/// Hex digits of a fingerprint.
pub const FINGERPRINT_LEN: usize = 12;

/// The fingerprint of a fault: first 12 hex digits of
/// `sha256(kind + "|" + normalize_message(message) + "|" + handler)`
/// (see [`eventyard_core::fault::fingerprint`]).
///
/// For a dead letter without a stored fingerprint (e.g. dead-lettered by the transport itself)
/// the DLQ operations call it with the dead-letter reason, description and source subscription.
pub fn fingerprint(kind: &str, message: &str, handler: &str) -> String {
    eventyard_core::fault::fingerprint(kind, message, handler)
}

/// Replaces the variable parts of an error message (ids become `<id>`, runs of digits `#`);
/// see [`eventyard_core::fault::normalize_message`].
pub fn normalize_message(message: &str) -> String {
    eventyard_core::fault::normalize_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_group_similar_faults() {
        let a = fingerprint(
            "External",
            "gateway timeout after 30 s for evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00",
            "billing",
        );
        let b = fingerprint(
            "External",
            "gateway timeout after 12 s for evt-0191c7b3-8d2f-7c4a-9f3e-2b8f5c1d9e11",
            "billing",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), FINGERPRINT_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, fingerprint("External", "gateway timeout", "shipping"));
        assert_eq!(normalize_message("order 17 failed"), "order # failed");
    }
}
