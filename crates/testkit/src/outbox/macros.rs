//! The [`outbox_conformance!`](crate::outbox_conformance) macro.

/// Expands to one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per case of the
/// outbox conformance suite ([`crate::outbox`]), so each case shows up as its own test.
///
/// The argument is an expression evaluating to an
/// [`OutboxFactory`](crate::outbox::OutboxFactory) (or an `Arc`/`Box` of one); it is evaluated
/// once per test and each value must be an outbox of its own (see the module doc). The calling
/// crate needs `tokio` (features `macros`, `rt-multi-thread`) among its dev-dependencies. Invoke
/// it at most once per module; wrap it in `mod`s to run several factories from one file.
///
/// ```ignore
/// // crates/<store>/tests/outbox_conformance.rs
/// eventyard_testkit::outbox_conformance!(MyOutboxFactory::new());
/// ```
///
/// For a store on an external engine, name the [`Service`](crate::services::Service) and give
/// an async-free closure from its URL to the factory; each case then skips (outside CI) or
/// fails (under CI) when the engine is absent:
///
/// ```ignore
/// eventyard_testkit::outbox_conformance!(
///     service = eventyard_testkit::services::Service::Postgres,
///     |url: String| PgOutboxFactory::new(url)
/// );
/// ```
#[macro_export]
macro_rules! outbox_conformance {
    (service = $service:expr, $make:expr $(,)?) => {
        $crate::__outbox_conformance_list! {
            {
                let Some(url) = $crate::services::require($service) else { return; };
                ($make)(url)
            }
        }
    };
    ($factory:expr $(,)?) => {
        $crate::__outbox_conformance_list! { $factory }
    };
}

/// Implementation detail of [`outbox_conformance!`](crate::outbox_conformance): the list of
/// cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __outbox_conformance_list {
    ($factory:expr) => {
        $crate::__outbox_conformance_cases! {
            $factory;
            add_then_claim_round_trip,
            rolled_back_add_records_nothing,
            claims_in_commit_order_at_most_max,
            lease_expiry_reclaims,
            earlier_record_of_a_key_blocks_later_ones,
            concurrent_relays_share_nothing_and_keep_key_order,
            release_makes_records_claimable_after_retry_time,
            parked_record_is_set_aside_and_blocks_only_its_key,
            dispatched_records_are_never_claimed_again,
            cleanup_deletes_only_old_dispatched_in_bounded_batches,
            cleanup_runs_only_when_elected,
            wait_returns_promptly_on_commit,
            wait_times_out_without_commits,
            status_reports_the_backlog,
        }
    };
}

/// Implementation detail of [`outbox_conformance!`](crate::outbox_conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __outbox_conformance_cases {
    ($factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::outbox::run_case(
                    ::core::stringify!($case),
                    $crate::outbox::$case(&factory),
                )
                .await;
            }
        )+
    };
}
