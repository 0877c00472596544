//! Fault identity shared by the runtime (which dead-letters) and the stores (which group dead
//! letters): fingerprints of failures and idempotency keys of handlers.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::ids::EventId;

/// Replaces what varies between occurrences of the same fault — ids (UUIDs, `evt-…`-style
/// prefixed ids) and runs of digits — so that similar failures share a fingerprint.
pub fn normalize_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(|c: char| c.is_whitespace() || "\"'`,;()[]{}".contains(c)) {
        let (token, sep) = match word.char_indices().last() {
            Some((i, c)) if c.is_whitespace() || "\"'`,;()[]{}".contains(c) => word.split_at(i),
            _ => (word, ""),
        };
        if looks_like_id(token) {
            out.push_str("<id>");
        } else {
            let mut in_digits = false;
            for c in token.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('#');
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    out.push(c);
                }
            }
        }
        out.push_str(sep);
    }
    out
}

fn looks_like_id(token: &str) -> bool {
    let hex_run = token
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|p| p.len() >= 4)
        .map(str::len)
        .sum::<usize>();
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    // A UUID, or a prefixed id such as evt-0190b6a2-7c1e-…
    (hex_run >= 24 && has_digit) || uuid::Uuid::try_parse(token).is_ok()
}

/// Groups similar faults: the first 12 hex characters of
/// `sha256(kind + "|" + normalize_message(message) + "|" + handler)`.
pub fn fingerprint(kind: &str, message: &str, handler: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(b"|");
    h.update(normalize_message(message).as_bytes());
    h.update(b"|");
    h.update(handler.as_bytes());
    hex(&h.finalize())[..12].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key an idempotent consumer dedups on (SPEC §3):
/// `sha256(eventId + ":" + handlerName + ":" + targetAggregateId)`, as 64 hex characters.
///
/// It also carries the event id's leading 48 bits (the creation time of a UUIDv7 id, as
/// generated ids are), so that stores can keep keys in event order:
/// [`IdempotencyKey::storage_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(
    /// The storage form: [`ORDER_LEN`] characters of event order, then the SPEC's key.
    String,
);

/// Hex characters of event order before the hash in a storage key (48 bits).
const ORDER_LEN: usize = 12;

impl IdempotencyKey {
    /// Computes the key.
    pub fn new(event_id: &EventId, handler: &str, target_aggregate_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(event_id.as_str().as_bytes());
        h.update(b":");
        h.update(handler.as_bytes());
        h.update(b":");
        h.update(target_aggregate_id.as_bytes());
        IdempotencyKey(storage_key_for(event_id.as_str(), &hex(&h.finalize())))
    }

    /// The key as hex text (the SPEC's key).
    pub fn as_str(&self) -> &str {
        &self.0[ORDER_LEN..]
    }

    /// The key as an ordered store keeps it: the event id's leading 48 bits in hex (12
    /// characters), then the 64 of the key. Keys of events created together sort together,
    /// so an index on it grows at its end (a few pages per transaction) instead of taking every
    /// new key on a random page of the whole index, as the hash alone would.
    pub fn storage_key(&self) -> &str {
        &self.0
    }
}

/// [`IdempotencyKey::storage_key`] of the SPEC key `key` (64 hex characters) of an event with
/// id `event_id`: for stores that kept the bare key and move to the storage form.
pub fn storage_key_for(event_id: &str, key: &str) -> String {
    let mut stored = event_order(event_id);
    stored.push_str(key);
    stored
}

/// The leading 48 bits of the UUID in an event id (`evt-<uuid>`), as 12 hex characters; for a
/// UUIDv7 that is its creation time in milliseconds. Ids that are not `evt-<uuid>` (which
/// [`EventId::parse`] does not let through) give 12 zeros.
fn event_order(event_id: &str) -> String {
    event_id
        .strip_prefix("evt-")
        .and_then(|u| uuid::Uuid::try_parse(u).ok())
        .map(|u| hex(&u.as_bytes()[..6]))
        .unwrap_or_else(|| "0".repeat(12))
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_faults_share_a_fingerprint() {
        let a = fingerprint(
            "External",
            "timeout after 3000 ms calling order 0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00",
            "billing",
        );
        let b = fingerprint(
            "External",
            "timeout after 2500 ms calling order 0190b6a2-0000-7c4a-9f3e-2b8f5c1d9e11",
            "billing",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 12);
        assert_ne!(a, fingerprint("External", "connection refused", "billing"));
        assert_ne!(
            a,
            fingerprint(
                "Transient",
                "timeout after 3000 ms calling order x",
                "billing"
            )
        );
        assert_ne!(
            a,
            fingerprint("External", "timeout after 3000 ms", "shipping")
        );
    }

    #[test]
    fn normalization() {
        assert_eq!(
            normalize_message("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00 failed 3 times"),
            "<id> failed # times"
        );
        assert_eq!(normalize_message("row 12 of 400"), "row # of #");
    }

    #[test]
    fn idempotency_key_is_sha256_of_the_spec_formula() {
        let e = EventId::parse("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00").unwrap();
        let k = IdempotencyKey::new(&e, "billing.invoice", "order-1");
        let mut h = Sha256::new();
        h.update(b"evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00:billing.invoice:order-1");
        assert_eq!(k.as_str(), hex(&h.finalize()));
        assert_ne!(k, IdempotencyKey::new(&e, "billing.invoice", "order-2"));
        assert_ne!(k, IdempotencyKey::new(&e, "shipping", "order-1"));
    }

    #[test]
    fn storage_keys_follow_event_creation_order_and_end_with_the_spec_key() {
        let ids: Vec<EventId> = (0..3)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                EventId::generate()
            })
            .collect();
        let keys: Vec<String> = ids
            .iter()
            .map(|id| {
                IdempotencyKey::new(id, "billing", "order-1")
                    .storage_key()
                    .to_owned()
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let k = IdempotencyKey::new(&ids[0], "billing", "order-1");
        assert_eq!(k.storage_key().len(), 76);
        assert!(k.storage_key().ends_with(k.as_str()));
        let id = EventId::parse("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00").unwrap();
        assert_eq!(event_order(id.as_str()), "0190b6a27c1e");
        assert_eq!(
            event_order("evt-0190B6A27C1E7C4A9F3E2B8F5C1D9E00"),
            "0190b6a27c1e",
            "any UUID text form"
        );
    }
}
