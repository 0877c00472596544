//! Property tests: the parser and evaluator never panic, canonical text round-trips, and
//! correlation filters, exact matches and SQL agree.

use eventyard_core::filter::Filter;
use eventyard_core::{Properties, PropertyValue};
use proptest::prelude::*;

const NAMES: [&str; 8] = ["a", "b", "c", "cs-tenant-id", "x y", "q]x", "é", "AND"];

fn value() -> impl Strategy<Value = PropertyValue> {
    prop_oneof![
        (-3i64..=3).prop_map(PropertyValue::Int),
        any::<i64>().prop_map(PropertyValue::Int),
        prop::sample::select(vec![-1.5, 0.0, 1.0, 2.0, 2.5]).prop_map(PropertyValue::Float),
        any::<f64>().prop_map(PropertyValue::Float),
        prop::sample::select(vec!["", "a", "ab", "b%", "it's", "X"])
            .prop_map(|s| PropertyValue::String(s.to_owned())),
        any::<bool>().prop_map(PropertyValue::Bool),
    ]
}

/// Random message properties over a small name space, so filters often hit them.
fn properties() -> impl Strategy<Value = Properties> {
    let names = NAMES
        .iter()
        .chain(&["cs-event-type", "cs-event-id"])
        .map(|n| (*n).to_owned())
        .collect::<Vec<_>>();
    prop::collection::btree_map(prop::sample::select(names), value(), 0..6)
        .prop_map(|map| map.into_iter().collect())
}

/// A property reference in one of its spellings.
fn property() -> impl Strategy<Value = String> {
    let plain = prop::sample::select(vec!["a", "b", "c", "A"]).prop_flat_map(|n| {
        prop::sample::select(vec![
            n.to_owned(),
            format!("[{n}]"),
            format!("user.{n}"),
            format!("\"{n}\""),
        ])
    });
    let quoted =
        prop::sample::select(NAMES.to_vec()).prop_map(|n| format!("[{}]", n.replace(']', "]]")));
    let system = prop::sample::select(vec!["sys.Label", "sys.MessageId", "SYS.subject", "sys.To"])
        .prop_map(str::to_owned);
    prop_oneof![3 => plain, 2 => quoted, 1 => system]
}

fn string_literal() -> impl Strategy<Value = String> {
    "[a-b'%_ ]{0,4}".prop_map(|s| format!("'{}'", s.replace('\'', "''")))
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..=3).prop_map(|i| i.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        prop::num::f64::NORMAL.prop_map(|x| format!("{x:?}")),
        prop::sample::select(vec!["1.5", ".5", "2.", "1e3", "2.5E-1", "0.0"])
            .prop_map(str::to_owned),
        string_literal(),
        prop::sample::select(vec!["TRUE", "false", "NULL"]).prop_map(str::to_owned),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![literal(), property()];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

fn like_pattern() -> impl Strategy<Value = String> {
    let plain = prop::collection::vec(prop::sample::select(vec!["a", "b", "%", "_", "'"]), 0..5)
        .prop_map(|t| format!("'{}'", t.concat().replace('\'', "''")));
    let escaped = prop::collection::vec(
        prop::sample::select(vec!["a", "%", "_", "#%", "#_", "##"]),
        0..5,
    )
    .prop_map(|t| format!("'{}' ESCAPE '#'", t.concat()));
    prop_oneof![plain, escaped]
}

fn not() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "NOT "])
}

fn compare_op() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["=", "<>", "!=", "<", "<=", ">", ">="])
}

/// Generated filter text: every production of the grammar, randomly nested.
fn condition() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => (expression(), compare_op(), expression()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        1 => (property(), not()).prop_map(|(p, n)| format!("{p} IS {n}NULL")),
        1 => (expression(), not(), prop::collection::vec(expression(), 1..4))
            .prop_map(|(e, n, list)| format!("{e} {n}IN ({})", list.join(", "))),
        1 => (expression(), not(), like_pattern()).prop_map(|(e, n, p)| format!("{e} {n}LIKE {p}")),
        1 => property().prop_map(|p| format!("EXISTS({p})")),
        1 => prop::sample::select(vec!["TRUE", "FALSE", "1=1", "1 = 0"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("NOT {c}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            inner.prop_map(|c| format!("({c})")),
        ]
    })
}

/// A conjunction of equalities, as a transport might push down.
fn conjunction() -> impl Strategy<Value = String> {
    let equality = prop_oneof![
        4 => (property(), literal()).prop_map(|(p, l)| format!("{p} = {l}")),
        1 => (literal(), property()).prop_map(|(l, p)| format!("{l} = {p}")),
        1 => Just("1=1".to_owned()),
    ];
    prop::collection::vec(equality, 1..5).prop_map(|v| v.join(" AND "))
}

fn token_soup() -> impl Strategy<Value = String> {
    let tokens = vec![
        "a",
        "[b c]",
        "\"q\"",
        "'x'",
        "''",
        "'",
        "[",
        "]",
        "\"",
        "(",
        ")",
        ",",
        "1",
        "-",
        "+",
        "*",
        "/",
        "%",
        "1.5e3",
        ".",
        "e",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "ESCAPE",
        "IS",
        "NULL",
        "EXISTS",
        "TRUE",
        "FALSE",
        "=",
        "<>",
        "!=",
        "<",
        ">=",
        "_",
        "sys.Label",
        "user.",
        "sys.",
        "9223372036854775808",
        "-9223372036854775808",
        "1e999",
        "é",
        "\n",
    ];
    let separator = prop::sample::select(vec![" ", "", "  "]);
    prop::collection::vec((prop::sample::select(tokens), separator), 0..24)
        .prop_map(|v| v.into_iter().map(|(t, s)| format!("{t}{s}")).collect())
}

/// Whatever the input, parsing and (if it parsed) matching and printing do not panic, and the
/// canonical text parses back to an equal filter.
fn exercise(text: &str, props: &Properties) {
    if let Ok(filter) = Filter::sql(text) {
        let _ = filter.matches(props);
        let _ = filter.exact_matches();
        let canonical = filter.to_string();
        let again = Filter::sql(&canonical)
            .unwrap_or_else(|e| panic!("{text:?} printed as {canonical:?}, which fails: {e}"));
        assert_eq!(again, filter, "{text:?} -> {canonical:?}");
    }
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>(), props in properties()) {
        exercise(&text, &props);
    }

    #[test]
    fn token_soup_never_panics(text in token_soup(), props in properties()) {
        exercise(&text, &props);
    }

    #[test]
    fn generated_filters_parse_and_round_trip(text in condition(), props in properties()) {
        let filter = Filter::sql(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let canonical = filter.to_string();
        let again = Filter::sql(&canonical).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &filter, "{:?} -> {:?}", text, canonical);
        prop_assert_eq!(again.to_string(), canonical);
        prop_assert_eq!(again.matches(&props), filter.matches(&props));
        // Serde round trip keeps the filter.
        let json = serde_json::to_string(&filter).unwrap();
        let back: Filter = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, filter);
    }

    #[test]
    fn a_filter_and_its_negation_never_both_match(text in condition(), props in properties()) {
        let filter = Filter::sql(&text).unwrap();
        let negated = Filter::sql(&format!("NOT ({text})")).unwrap();
        prop_assert!(!(filter.matches(&props) && negated.matches(&props)));
    }

    #[test]
    fn exact_matches_agree_with_evaluation(text in conjunction(), props in properties()) {
        let filter = Filter::sql(&text).unwrap();
        if let Some(equalities) = filter.exact_matches() {
            let correlation = Filter::correlation(equalities);
            prop_assert_eq!(correlation.matches(&props), filter.matches(&props), "{}", text);
        }
    }

    #[test]
    fn correlation_matches_like_its_sql(
        required in prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), value(), 0..4),
        props in properties(),
    ) {
        let required: Vec<(String, PropertyValue)> = required
            .into_iter()
            .filter(|(_, v)| !matches!(v, PropertyValue::Float(x) if !x.is_finite()))
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let correlation = Filter::correlation(required.clone());
        let sql = Filter::sql(&correlation.to_string()).unwrap();
        prop_assert_eq!(sql.matches(&props), correlation.matches(&props));
        prop_assert_eq!(sql.exact_matches(), Some(required.clone()));
        prop_assert_eq!(correlation.exact_matches(), Some(required));
    }
}
