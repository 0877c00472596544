//! Correlation filters and `Filter::exact_matches`.

use eventyard_core::filter::Filter;
use eventyard_core::{Properties, PropertyValue};

fn props(pairs: &[(&str, PropertyValue)]) -> Properties {
    pairs.iter().cloned().collect()
}

fn pairs(list: &[(&str, PropertyValue)]) -> Vec<(String, PropertyValue)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn s(v: &str) -> PropertyValue {
    PropertyValue::String(v.to_owned())
}

#[test]
fn correlation_requires_every_property_present_and_equal() {
    let filter = Filter::correlation(pairs(&[
        ("cs-tenant-id", s("connectsoft")),
        ("cs-schema-version", PropertyValue::Int(2)),
    ]));
    let base = [
        ("cs-tenant-id", s("connectsoft")),
        ("cs-schema-version", PropertyValue::Int(2)),
        ("other", s("ignored")),
    ];
    assert!(filter.matches(&props(&base)));
    // A missing property fails.
    assert!(!filter.matches(&props(&base[..1])));
    assert!(!filter.matches(&Properties::new()));
    // A different value fails; comparison is case-sensitive.
    assert!(!filter.matches(&props(&[
        ("cs-tenant-id", s("ConnectSoft")),
        ("cs-schema-version", PropertyValue::Int(2)),
    ])));
    assert!(!filter.matches(&props(&[
        ("cs-tenant-id", s("connectsoft")),
        ("cs-schema-version", PropertyValue::Int(3)),
    ])));
    // SQL equality: a string never equals a number, an integer equals the same float.
    assert!(!filter.matches(&props(&[
        ("cs-tenant-id", s("connectsoft")),
        ("cs-schema-version", s("2")),
    ])));
    assert!(filter.matches(&props(&[
        ("cs-tenant-id", s("connectsoft")),
        ("cs-schema-version", PropertyValue::Float(2.0)),
    ])));
}

#[test]
fn empty_correlation_matches_everything() {
    let filter = Filter::correlation(Vec::new());
    assert!(filter.matches(&Properties::new()));
    assert_eq!(filter.to_string(), "TRUE");
    assert_eq!(filter.exact_matches(), Some(Vec::new()));
}

#[test]
fn correlation_display_is_the_equivalent_sql() {
    let filter = Filter::correlation(pairs(&[
        ("b-c", s("it's")),
        ("a", PropertyValue::Int(1)),
        ("f", PropertyValue::Float(2.0)),
        ("ok", PropertyValue::Bool(true)),
    ]));
    let text = filter.to_string();
    assert_eq!(text, "a = 1 AND [b-c] = 'it''s' AND f = 2.0 AND ok = TRUE");
    let sql = Filter::sql(&text).unwrap();
    let p = props(&[
        ("a", PropertyValue::Int(1)),
        ("b-c", s("it's")),
        ("f", PropertyValue::Float(2.0)),
        ("ok", PropertyValue::Bool(true)),
    ]);
    assert!(filter.matches(&p) && sql.matches(&p));
    assert_eq!(sql.exact_matches(), filter.exact_matches());
}

#[test]
fn correlation_accessors() {
    let Filter::Correlation(c) = Filter::correlation(pairs(&[("a", s("1")), ("a", s("2"))])) else {
        panic!("expected a correlation filter");
    };
    // A later duplicate replaces an earlier one.
    assert_eq!(c.properties().len(), 1);
    assert_eq!(c.properties().get("a"), Some(&s("2")));
    assert!(c.matches(&props(&[("a", s("2"))])));
}

#[test]
fn exact_matches_of_conjunctions() {
    let eq = |sql: &str| Filter::sql(sql).unwrap().exact_matches();
    assert_eq!(
        eq("a = 1 AND [b-c] = 'x'"),
        Some(pairs(&[("a", PropertyValue::Int(1)), ("b-c", s("x"))]))
    );
    assert_eq!(eq("a = 1 OR b = 2"), None);
    assert_eq!(eq("a = 1"), Some(pairs(&[("a", PropertyValue::Int(1))])));
    assert_eq!(eq("'x' = a"), Some(pairs(&[("a", s("x"))])));
    assert_eq!(
        eq("(a = 1 AND b = TRUE) AND c = 1.5"),
        Some(pairs(&[
            ("a", PropertyValue::Int(1)),
            ("b", PropertyValue::Bool(true)),
            ("c", PropertyValue::Float(1.5)),
        ]))
    );
    // sys. names map to the cs-* properties.
    assert_eq!(
        eq("sys.Label = 'order.created' AND user.[cs-tenant-id] = 't'"),
        Some(pairs(&[
            ("cs-event-type", s("order.created")),
            ("cs-tenant-id", s("t"))
        ]))
    );
    // Always-true operands are neutral.
    assert_eq!(eq("1=1"), Some(Vec::new()));
    assert_eq!(
        eq("TRUE AND a = -1"),
        Some(pairs(&[("a", PropertyValue::Int(-1))]))
    );
    // A repeated equality is listed once; conflicting ones are not a header match.
    assert_eq!(
        eq("a = 1 AND a = 1"),
        Some(pairs(&[("a", PropertyValue::Int(1))]))
    );
    assert_eq!(eq("a = 1 AND a = 2"), None);
    // Anything else is not an exact match.
    for sql in [
        "a > 1",
        "a <> 1",
        "NOT a = 1",
        "a = b",
        "a = 1 + 1",
        "a = NULL",
        "a IN (1)",
        "a LIKE 'x'",
        "EXISTS(a)",
        "a IS NULL",
        "sys.To = 'x'",
        "1 = 0",
        "FALSE",
        "a = 1 AND (b = 1 OR c = 1)",
    ] {
        assert_eq!(eq(sql), None, "{sql}");
    }
}

#[test]
fn exact_matches_of_all_and_correlation() {
    assert_eq!(Filter::all().exact_matches(), Some(Vec::new()));
    let filter = Filter::correlation(pairs(&[("z", s("1")), ("a", PropertyValue::Int(2))]));
    assert_eq!(
        filter.exact_matches(),
        Some(pairs(&[("a", PropertyValue::Int(2)), ("z", s("1"))]))
    );
}
