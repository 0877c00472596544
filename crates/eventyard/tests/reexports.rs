//! The facade names the saga engine and the PostgreSQL stores, so an application depends on
//! `eventyard` alone (as the README's examples do).

/// Both halves of `eventyard::saga` are named here (the store contract from the core, the engine
/// from `eventyard-saga`): re-exporting the engine crate alone once hid the contract.
fn _store_contract(_: &dyn eventyard::saga::SagaStore, _: Option<eventyard::saga::SagaFilter>) {}

#[test]
fn sagas_and_postgres_stores_are_reachable_through_the_facade() {
    let options = eventyard::saga::EngineOptions::default();
    assert!(format!("{options:?}").starts_with("EngineOptions"));
    assert_eq!(eventyard::postgres::DEFAULT_SCHEMA, "eventyard");
    let config = eventyard::postgres::PgOutboxConfig::default();
    assert_eq!(config.schema, eventyard::postgres::DEFAULT_SCHEMA);
}
