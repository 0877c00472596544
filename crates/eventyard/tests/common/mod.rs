//! What the facade's integration tests share: two events of one bounded context, tenants, and
//! waiting for a condition.

#![allow(dead_code)] // each test file uses its own part

use std::time::{Duration, Instant};

use eventyard::{Event, TenantId};
use serde::{Deserialize, Serialize};

/// An event of the `sales` context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub n: u32,
}
impl Event for OrderPlaced {
    const EVENT_TYPE: &'static str = "OrderPlaced";
    const CONTEXT: &'static str = "sales";
}

/// Another event of the `sales` context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvoiceIssued {
    pub n: u32,
}
impl Event for InvoiceIssued {
    const EVENT_TYPE: &'static str = "InvoiceIssued";
    const CONTEXT: &'static str = "sales";
}

/// A tenant id.
pub fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

/// Polls `f` every 10 ms until it holds; fails the test after 15 s.
pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
