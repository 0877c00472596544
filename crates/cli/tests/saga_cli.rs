//! `yard saga list/show` as a user runs them, on an SQLite data file and on a PostgreSQL schema
//! populated through the real saga stores.

mod common;

use common::json_lines;

use std::process::Output;

use chrono::Duration as Span;
use common::{run, stderr, stdout};
use eventyard::saga::{SagaCommit, SagaStore};
use eventyard::sqlite::SqliteSagaStore;
use eventyard_postgres::{PgSagaConfig, PgSagaStore};
use eventyard_testkit::saga::{commit, instance, load_ok, now_ms, timeout};
use eventyard_testkit::services::{Service, require};
use serde_json::{Value, json};

/// Writes the same sagas to any store: three `orders` (one completed, one of another tenant),
/// one `payments` sharing the key `o-1`; `orders/o-1` went Pending → Paid with a pending
/// timeout.
async fn populate(store: &dyn SagaStore) {
    let base = now_ms() - Span::minutes(10);
    for (n, (saga, key, state, done, tenant)) in [
        ("orders", "o-1", "Pending", false, "tenant-a"),
        ("orders", "o-2", "Shipped", true, "tenant-a"),
        ("orders", "o-3", "Pending", false, "tenant-b"),
        ("payments", "o-1", "Authorized", false, "tenant-a"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut i = instance(saga, key, state, json!({ "n": n, "items": ["a", "b"] }));
        i.updated_at = base + Span::seconds(n as i64);
        i.completed = done;
        i.tenant = tenant.into();
        commit_ok(store, commit(i, 0, None)).await;
    }
    let mut paid = load_ok(store, "orders", "o-1").await;
    paid.state = "Paid".into();
    paid.data = json!({"n": 0, "paid": 42.5});
    paid.updated_at = now_ms();
    let mut c = commit(paid, 1, Some("Pending"));
    c.history.event_type = "PaymentReceived".into();
    c.schedule = vec![timeout(
        "orders",
        "o-1",
        "ShipmentTimedOut",
        now_ms() + Span::hours(2),
    )];
    commit_ok(store, c).await;
}

async fn commit_ok(store: &dyn SagaStore, c: SagaCommit) {
    store.commit(c).await.expect("commit");
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "yard failed ({:?}): {}\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// The checks shared by both stores; `store` are the arguments selecting it.
fn check_cli(store: &[&str]) {
    let yard = |args: &[&str]| run(&[args, store].concat());

    // list: a table, newest first.
    let text = ok(&yard(&["saga", "list"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SAGA") && lines[0].contains("COMPLETED"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[1].starts_with("orders") && lines[1].contains("o-1") && lines[1].contains("Paid"),
        "newest first: {text}"
    );
    assert!(
        lines[1].split_whitespace().any(|c| c == "2"),
        "version: {text}"
    );

    // Filters, as JSON lines.
    let keys = |args: &[&str]| -> Vec<String> {
        json_lines(&ok(&yard(&[&["saga", "list", "--json"], args].concat())))
            .iter()
            .map(|v| {
                format!(
                    "{}/{}",
                    v["saga"].as_str().unwrap(),
                    v["key"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        keys(&["--saga", "orders"]),
        ["orders/o-1", "orders/o-3", "orders/o-2"]
    );
    assert_eq!(keys(&["--state", "Pending"]), ["orders/o-3"]);
    assert_eq!(keys(&["--completed"]), ["orders/o-2"]);
    assert_eq!(
        keys(&["--active", "--tenant", "tenant-a"]),
        ["orders/o-1", "payments/o-1"]
    );
    assert_eq!(keys(&["--limit", "1"]), ["orders/o-1"]);
    let all = json_lines(&ok(&yard(&["saga", "list", "--json", "--saga", "orders"])));
    assert_eq!(all[0]["data"], json!({"n": 0, "paid": 42.5}));
    assert_eq!(all[0]["version"], 2);
    assert_eq!(all[2]["completed"], true);
    let none = ok(&yard(&["saga", "list", "--saga", "nothing"]));
    assert!(none.contains("no saga instances match"), "{none}");
    let both = yard(&["saga", "list", "--completed", "--active"]);
    assert!(!both.status.success());

    // show: every saga having the key, or the one named.
    let text = ok(&yard(&["saga", "show", "o-1", "--saga", "orders"]));
    for needle in [
        "saga       orders",
        "state      Paid",
        "version    2",
        "\"paid\": 42.5",
        "history (2)",
        "(start) → Pending",
        "PaymentReceived",
        "Pending → Paid",
        "pending timeouts (1)",
        "ShipmentTimedOut",
        "in 1h59m",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert!(!text.contains("payments"), "{text}");
    let text = ok(&yard(&["saga", "show", "o-1"]));
    assert!(
        text.contains("saga       orders") && text.contains("saga       payments"),
        "{text}"
    );
    let shown = json_lines(&ok(&yard(&["saga", "show", "o-1", "--json"])));
    assert_eq!(shown.len(), 2);
    let orders = &shown[0];
    assert_eq!(orders["saga"], "orders");
    assert_eq!(orders["history"].as_array().unwrap().len(), 2);
    assert_eq!(orders["history"][0]["from"], Value::Null);
    assert_eq!(orders["history"][1]["from"], "Pending");
    assert_eq!(orders["history"][1]["to"], "Paid");
    assert_eq!(orders["history"][1]["eventType"], "PaymentReceived");
    assert_eq!(orders["timeouts"][0]["name"], "ShipmentTimedOut");
    assert_eq!(orders["timeouts"][0]["eventType"], "ShipmentTimedOut");
    assert_eq!(shown[1]["saga"], "payments");
    assert_eq!(shown[1]["timeouts"], json!([]));

    // A missing instance: exit code 2, a clear message.
    let missing = yard(&["saga", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("no saga instance has the key `nope`"),
        "{}",
        stderr(&missing)
    );
    let missing = yard(&["saga", "show", "o-2", "--saga", "payments"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("saga `payments` has no instance with the key `o-2`"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_list_and_show_on_a_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sagas.db");
    let broker = common::broker(&path);
    let store = SqliteSagaStore::open(broker.clone()).await.unwrap();
    populate(&store).await;
    eventyard::Transport::close(&broker).await.unwrap();
    drop(store);
    let data = path.to_str().unwrap();
    check_cli(&["--data", data]);
}

#[test]
fn saga_commands_name_a_missing_or_bad_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.db");
    let o = run(&["saga", "list", "--data", absent.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("data file {} does not exist", absent.display())),
        "{}",
        stderr(&o)
    );
    assert!(!absent.exists(), "list created the data file");

    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, b"this is not a database, just some text long enough").unwrap();
    let o = run(&["saga", "show", "k", "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a readable eventyard data file"),
        "{}",
        stderr(&o)
    );

    let o = run(&["saga", "list", "--store", "postgres"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--store postgres needs --url"),
        "{}",
        stderr(&o)
    );
}

/// Drops the schema at the end, also when the test fails.
struct PgSchema {
    store: PgSagaStore,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let store = self.store.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(store.drop_schema());
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_list_and_show_on_postgres() {
    let Some(url) = require(Service::Postgres) else {
        return;
    };
    let schema = format!(
        "yard_saga_{}_{}",
        std::process::id(),
        now_ms().timestamp_millis() % 1_000_000_000
    );
    let store = PgSagaStore::connect(&url, PgSagaConfig::with_schema(&schema))
        .await
        .expect("connect");
    let guard = PgSchema {
        store: store.clone(),
    };
    populate(&store).await;
    let args = ["--store", "postgres", "--url", &url, "--schema", &schema];
    tokio::task::block_in_place(|| check_cli(&args));

    // A schema without saga tables is an error, and is not created by reading.
    let o = run(&[
        "saga",
        "list",
        "--store",
        "postgres",
        "--url",
        &url,
        "--schema",
        "yard_no_sagas_here",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no saga tables"), "{}", stderr(&o));
    drop(guard);
}
