//! Cases about subscription filters (evaluated over the properties at publish) and about
//! (re)declaring subscriptions.

use std::time::Duration;

use eventyard_core::properties::names;
use eventyard_core::{Filter, OutgoingMessage, PropertyValue, SubQueue};

use super::{Fixture, PATIENCE, TransportFactory};
use crate::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
};

const QUIET: Duration = Duration::from_millis(300);

fn sql(expression: &str) -> Filter {
    Filter::sql(expression).unwrap_or_else(|e| panic!("filter `{expression}` does not parse: {e}"))
}

fn ids(messages: &[&OutgoingMessage]) -> Vec<String> {
    messages.iter().map(|m| outgoing_event_id(m)).collect()
}

/// A SQL filter (`[cs-tenant-id] = 'a' AND [cs-event-type] IN (...)`) lets through exactly the
/// matching messages, in order; an unfiltered subscription on the same topic gets them all.
pub async fn sql_filter(factory: &dyn TransportFactory) {
    let filter = sql("[cs-tenant-id] = 'a' AND [cs-event-type] IN ('OrderPlaced', 'OrderShipped')");
    let fx = Fixture::new(factory, "sql-filter", |s| s.filter(filter)).await;
    let all = fx.add_subscription(factory, "sql-filter-all", |s| s).await;
    let placed_a = message("a", "OrderPlaced");
    let cancelled_a = message("a", "OrderCancelled");
    let placed_b = message("b", "OrderPlaced");
    let shipped_a = message("a", "OrderShipped");
    let shipped_b = message("b", "OrderShipped");
    let batch = vec![
        placed_a.clone(),
        cancelled_a,
        placed_b,
        shipped_a.clone(),
        shipped_b,
    ];
    let everything: Vec<String> = batch.iter().map(outgoing_event_id).collect();
    fx.publish(batch).await;

    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, 2, PATIENCE).await;
    assert_eq!(
        got.iter().map(event_id_of).collect::<Vec<_>>(),
        ids(&[&placed_a, &shipped_a]),
        "the SQL filter let the wrong messages through"
    );
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;

    let mut all_rx = fx.receiver_on(&all.name, SubQueue::Main).await;
    let got = receive_exactly(&mut *all_rx, everything.len(), PATIENCE).await;
    assert_eq!(got.iter().map(event_id_of).collect::<Vec<_>>(), everything);
    ack_all(got).await;
}

/// A correlation filter (every listed property equal) lets through exactly the matching
/// messages.
pub async fn correlation_filter(factory: &dyn TransportFactory) {
    let filter = Filter::correlation([
        (
            names::EVENT_TYPE.to_owned(),
            PropertyValue::from("OrderPlaced"),
        ),
        (names::TENANT_ID.to_owned(), PropertyValue::from("a")),
    ]);
    let fx = Fixture::new(factory, "corr-filter", |s| s.filter(filter)).await;
    let first = message("a", "OrderPlaced");
    let second = message("a", "OrderPlaced");
    fx.publish(vec![
        first.clone(),
        message("b", "OrderPlaced"),
        message("a", "OrderShipped"),
        second.clone(),
    ])
    .await;

    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, 2, PATIENCE).await;
    assert_eq!(
        got.iter().map(event_id_of).collect::<Vec<_>>(),
        ids(&[&first, &second]),
        "the correlation filter let the wrong messages through"
    );
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
}

/// Two subscriptions each filtered to one tenant, messages of both tenants interleaved: each
/// sees exactly its own tenant's messages, in order.
pub async fn tenant_isolation(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "tenants", |s| {
        s.filter(sql("[cs-tenant-id] = 'tenant-a'"))
    })
    .await;
    let b = fx
        .add_subscription(factory, "tenants-b", |s| {
            s.filter(sql("[cs-tenant-id] = 'tenant-b'"))
        })
        .await;
    let batch: Vec<OutgoingMessage> = (0..20)
        .map(|i| {
            let tenant = if i % 2 == 0 { "tenant-a" } else { "tenant-b" };
            message(tenant, "OrderPlaced")
        })
        .collect();
    let of_tenant = |tenant: &str| -> Vec<String> {
        batch
            .iter()
            .filter(|m| m.message.properties.get_str(names::TENANT_ID) == Some(tenant))
            .map(outgoing_event_id)
            .collect()
    };
    let (expected_a, expected_b) = (of_tenant("tenant-a"), of_tenant("tenant-b"));
    // Interleave across batches too.
    let mut rest = batch.clone();
    let tail = rest.split_off(7);
    fx.publish(rest).await;
    fx.publish(tail).await;

    let mut rx_a = fx.receiver().await;
    let mut rx_b = fx.receiver_on(&b.name, SubQueue::Main).await;
    for (rx, expected, tenant) in [
        (&mut rx_a, &expected_a, "tenant-a"),
        (&mut rx_b, &expected_b, "tenant-b"),
    ] {
        let got = receive_exactly(&mut **rx, expected.len(), PATIENCE).await;
        for d in &got {
            assert_eq!(
                d.message.properties.get_str(names::TENANT_ID),
                Some(tenant),
                "tenant leak: {d:?} reached the subscription of {tenant}"
            );
        }
        assert_eq!(&got.iter().map(event_id_of).collect::<Vec<_>>(), expected);
        ack_all(got).await;
        assert_nothing(&mut **rx, QUIET).await;
    }
}

/// A comparison with a property the message does not carry does not match: neither
/// `[x-region] = 'eu'` nor `[x-region] <> 'eu'` selects a message without `x-region`.
pub async fn absent_property_does_not_match(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "absent-prop", |s| {
        s.filter(sql("[x-region] = 'eu'"))
    })
    .await;
    let ne = fx
        .add_subscription(factory, "absent-prop-ne", |s| {
            s.filter(sql("[x-region] <> 'eu'"))
        })
        .await;
    let with_region = |region: &str| {
        let mut m = message("tenant-a", "OrderPlaced");
        m.message.properties.insert("x-region", region);
        m
    };
    let none = message("tenant-a", "OrderPlaced");
    let eu = with_region("eu");
    let us = with_region("us");
    fx.publish(vec![none, eu.clone(), us.clone()]).await;

    let mut rx_eq = fx.receiver().await;
    let got = receive_exactly(&mut *rx_eq, 1, PATIENCE).await;
    assert_eq!(event_id_of(&got[0]), outgoing_event_id(&eu));
    ack_all(got).await;
    assert_nothing(&mut *rx_eq, QUIET).await;

    let mut rx_ne = fx.receiver_on(&ne.name, SubQueue::Main).await;
    let got = receive_exactly(&mut *rx_ne, 1, PATIENCE).await;
    assert_eq!(
        event_id_of(&got[0]),
        outgoing_event_id(&us),
        "`<>` must not match a message without the property"
    );
    ack_all(got).await;
    assert_nothing(&mut *rx_ne, QUIET).await;
}

/// Declaring the same subscription again succeeds and changes nothing (a message is still
/// delivered once); declaring it with another filter replaces the filter for later messages.
pub async fn ensure_subscription_is_idempotent_and_updates_filter(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "ensure-twice", |s| s).await;
    for _ in 0..2 {
        fx.transport
            .ensure_subscription(&fx.spec)
            .await
            .expect("declaring an existing subscription again succeeds");
    }
    let first = message("tenant-a", "OrderPlaced");
    fx.publish(vec![first.clone()]).await;
    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, 1, PATIENCE).await;
    assert_eq!(event_id_of(&got[0]), outgoing_event_id(&first));
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;

    let changed = fx.spec.clone().filter(sql("[cs-tenant-id] = 'tenant-b'"));
    fx.transport
        .ensure_subscription(&changed)
        .await
        .expect("re-declaring with another filter succeeds");
    let of_a = message("tenant-a", "OrderPlaced");
    let of_b = message("tenant-b", "OrderPlaced");
    fx.publish(vec![of_a, of_b.clone()]).await;
    let got = receive_exactly(&mut *rx, 1, PATIENCE).await;
    assert_eq!(
        event_id_of(&got[0]),
        outgoing_event_id(&of_b),
        "the new filter did not take effect"
    );
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
}
