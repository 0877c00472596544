//! Tenant guard: a handler declares which tenants it serves; an envelope of any other tenant
//! never reaches it. It is checked by the consumer for every delivery — replays included, since
//! they are ordinary deliveries — and is independent of subscription filters (defence in depth).

use std::collections::BTreeSet;

use eventyard_core::TenantId;

/// Which tenants a handler serves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantScope {
    /// Every tenant (a platform-wide handler). Default.
    #[default]
    Any,
    /// Only these tenants.
    Only(BTreeSet<TenantId>),
}

impl TenantScope {
    /// A single tenant.
    pub fn only(tenant: TenantId) -> Self {
        TenantScope::Only(BTreeSet::from([tenant]))
    }

    /// Whether an envelope of `tenant` may reach the handler.
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            TenantScope::Any => true,
            TenantScope::Only(set) => set.contains(tenant),
        }
    }

    /// A Service Bus SQL filter selecting exactly this scope, if it is restricted.
    pub fn filter_expression(&self) -> Option<String> {
        match self {
            TenantScope::Any => None,
            TenantScope::Only(set) => Some(format!(
                "[cs-tenant-id] IN ({})",
                set.iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}
