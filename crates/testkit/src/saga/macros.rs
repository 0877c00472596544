//! The [`saga_conformance!`](crate::saga_conformance) macro.

/// Expands to one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per case of the
/// saga store conformance suite ([`crate::saga`]).
///
/// The argument is an expression evaluating to a [`SagaFactory`](crate::saga::SagaFactory) (or
/// an `Arc`/`Box` of one), evaluated once per test; each value must be a store of its own. For
/// a store on an external engine, name the [`Service`](crate::services::Service) and give a
/// closure from its URL to the factory; each case then skips (outside CI) or fails (under CI)
/// when the engine is absent:
///
/// ```ignore
/// eventyard_testkit::saga_conformance!(SqliteSagaFactory::new());
/// eventyard_testkit::saga_conformance!(
///     service = eventyard_testkit::services::Service::Postgres,
///     |url: String| PgSagaFactory::new(url)
/// );
/// ```
#[macro_export]
macro_rules! saga_conformance {
    (service = $service:expr, $make:expr $(,)?) => {
        $crate::__saga_conformance_list! {
            {
                let Some(url) = $crate::services::require($service) else { return; };
                ($make)(url)
            }
        }
    };
    ($factory:expr $(,)?) => {
        $crate::__saga_conformance_list! { $factory }
    };
}

/// Implementation detail of [`saga_conformance!`](crate::saga_conformance): the list of cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __saga_conformance_list {
    ($factory:expr) => {
        $crate::__saga_conformance_cases! {
            $factory;
            create_then_load_round_trip,
            update_increments_version_and_appends_history,
            version_conflict_writes_nothing,
            duplicate_event_is_a_no_op,
            emitted_events_commit_atomically_with_the_state,
            concurrent_commits_lose_no_update,
            timeouts_schedule_replace_cancel_and_complete,
            claim_due_hands_each_timeout_out_once,
            list_and_details,
            completed_instances_stay_and_cannot_reopen,
        }
    };
}

/// Implementation detail of [`saga_conformance!`](crate::saga_conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __saga_conformance_cases {
    ($factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::saga::run_case(
                    ::core::stringify!($case),
                    $crate::saga::$case(&factory),
                )
                .await;
            }
        )+
    };
}
