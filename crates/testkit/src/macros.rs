//! The [`transport_conformance!`](crate::transport_conformance) macro.

/// Expands to one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per case of the
/// transport conformance suite ([`crate::conformance`]), so each case shows up as its own test in
/// `cargo test`/`nextest`.
///
/// The argument is an expression evaluating to a
/// [`TransportFactory`](crate::conformance::TransportFactory) (or an `Arc`/`Box` of one); it is
/// evaluated once per test. The calling crate needs `tokio` (features `macros`,
/// `rt-multi-thread`) among its dev-dependencies. Invoke it at most once per module; wrap it in
/// `mod`s to run several factories from one file.
///
/// ```ignore
/// // crates/<backend>/tests/conformance.rs
/// eventyard_testkit::transport_conformance!(MyBackendFactory::new());
/// ```
///
/// For a backend on an external engine, name the [`Service`](crate::services::Service) and give
/// a closure from its URL to the factory; each case then skips (outside CI) or fails (under CI)
/// when the engine is absent:
///
/// ```ignore
/// eventyard_testkit::transport_conformance!(
///     service = eventyard_testkit::services::Service::Amqp,
///     |url: String| AmqpFactory::new(url)
/// );
/// ```
#[macro_export]
macro_rules! transport_conformance {
    (service = $service:expr, $make:expr $(,)?) => {
        $crate::__transport_conformance_list! {
            {
                let Some(url) = $crate::services::require($service) else { return; };
                ($make)(url)
            }
        }
    };
    ($factory:expr $(,)?) => {
        $crate::__transport_conformance_list! { $factory }
    };
}

/// Implementation detail of [`transport_conformance!`](crate::transport_conformance): the list
/// of cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_conformance_list {
    ($factory:expr) => {
        $crate::__transport_conformance_cases! {
            $factory;
            // publishing
            publish_receive_round_trip,
            batch_publish_preserves_order,
            message_published_before_subscription_is_not_delivered,
            each_subscription_gets_a_copy,
            message_too_large_is_rejected,
            // settlement
            ack_removes_message,
            abandon_without_delay_redelivers,
            abandon_with_delay_redelivers_after_delay,
            abandon_with_delay_does_not_block_receiver,
            lock_expiry_redelivers,
            settle_after_lock_lost_fails,
            dropped_delivery_is_released,
            max_delivery_count_dead_letters,
            explicit_dead_letter,
            // filtering
            sql_filter,
            correlation_filter,
            tenant_isolation,
            absent_property_does_not_match,
            ensure_subscription_is_idempotent_and_updates_filter,
            // receiving
            competing_consumers,
            scheduled_delivery,
            empty_receive_returns_within_wait,
            receive_wakes_on_publish,
            // lifecycle
            persistence_across_reconnect,
            unknown_subscription,
            invalid_names,
            delete_subscription_removes_it,
            close_rejects_further_calls,
        }
    };
}

/// Implementation detail of [`transport_conformance!`](crate::transport_conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_conformance_cases {
    ($factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::conformance::run_case(
                    ::core::stringify!($case),
                    $crate::conformance::$case(&factory),
                )
                .await;
            }
        )+
    };
}
