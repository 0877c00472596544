//! Filter serialization and `Display` round trips.

use eventyard_core::PropertyValue;
use eventyard_core::filter::Filter;
use serde_json::json;

#[test]
fn json_shapes() {
    assert_eq!(
        serde_json::to_value(Filter::all()).unwrap(),
        json!({"all": {}})
    );
    assert_eq!(
        serde_json::to_value(Filter::sql("[cs-tenant-id] = 'x'").unwrap()).unwrap(),
        json!({"sql": "[cs-tenant-id] = 'x'"})
    );
    let correlation = Filter::correlation(vec![
        (
            "cs-event-type".to_owned(),
            PropertyValue::from("order.created"),
        ),
        ("n".to_owned(), PropertyValue::Int(1)),
        ("f".to_owned(), PropertyValue::Float(1.5)),
        ("b".to_owned(), PropertyValue::Bool(false)),
    ]);
    assert_eq!(
        serde_json::to_value(&correlation).unwrap(),
        json!({"correlation": {"cs-event-type": "order.created", "n": 1, "f": 1.5, "b": false}})
    );
}

#[test]
fn sql_keeps_the_original_text() {
    let filter = Filter::sql("a=1  and b<>'x'").unwrap();
    assert_eq!(
        serde_json::to_string(&filter).unwrap(),
        r#"{"sql":"a=1  and b<>'x'"}"#
    );
}

#[test]
fn json_round_trips() {
    let filters = [
        Filter::all(),
        Filter::sql("a = 1 OR NOT (b LIKE 'x%' ESCAPE '!') AND sys.Label IN ('p', 'q')").unwrap(),
        Filter::sql("1=1").unwrap(),
        Filter::correlation(vec![
            ("a".to_owned(), PropertyValue::Int(-3)),
            ("b".to_owned(), PropertyValue::Float(2.0)),
            ("c".to_owned(), PropertyValue::from("x")),
        ]),
    ];
    for filter in filters {
        let text = serde_json::to_string(&filter).unwrap();
        let back: Filter = serde_json::from_str(&text).unwrap();
        assert_eq!(back, filter, "{text}");
    }
}

#[test]
fn deserializing_reports_parse_errors() {
    let err = serde_json::from_str::<Filter>(r#"{"sql": "a = 1 AND b 5"}"#).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("expected a comparison operator"), "{text}");
    assert!(text.contains("column 13"), "{text}");
    assert!(serde_json::from_str::<Filter>(r#"{"regex": "x"}"#).is_err());
    assert!(serde_json::from_str::<Filter>(r#"{"sql": 1}"#).is_err());
    assert!(serde_json::from_str::<Filter>(r#"{"correlation": {"a": [1]}}"#).is_err());
    assert!(serde_json::from_str::<Filter>(r#""all""#).is_err());
}

#[test]
fn display_round_trips_for_sql() {
    for sql in [
        "a = 1",
        "a=1 and (b=2 or c=3)",
        "NOT (a = 1 OR b = 2)",
        "NOT (NOT a = 1)",
        "a - (b - c) * -(d + 1) / 2 % 3 >= -1.5e-7",
        "x NOT IN ('a''b', -1, 2.0, TRUE, NULL)",
        "[we]]ird name] NOT LIKE '%\\_%' ESCAPE '\\'",
        "sys.MessageId IS NOT NULL AND EXISTS(\"q\"\"x\") OR FALSE",
        "a = 9223372036854775807 OR a = -9223372036854775808 OR a = 1e999",
        "-(-5) = a AND - -a = 5",
    ] {
        let filter = Filter::sql(sql).unwrap();
        let text = filter.to_string();
        assert_eq!(Filter::sql(&text).unwrap(), filter, "{sql:?} -> {text:?}");
        // Canonical text is a fixed point.
        assert_eq!(Filter::sql(&text).unwrap().to_string(), text);
    }
}

#[test]
fn equality_ignores_spelling() {
    assert_eq!(
        Filter::sql("a=1").unwrap(),
        Filter::sql(" ( a = 1 ) ").unwrap()
    );
    assert_eq!(
        Filter::sql("a != 1").unwrap(),
        Filter::sql("a <> 1").unwrap()
    );
    assert_eq!(
        Filter::sql("user.a = 1").unwrap(),
        Filter::sql("[a] = 1").unwrap()
    );
    assert_ne!(Filter::sql("a = 1").unwrap(), Filter::sql("A = 1").unwrap());
    assert_ne!(
        Filter::sql("a = 1").unwrap(),
        Filter::sql("a = 1.0").unwrap()
    );
}

#[test]
fn canonical_text_shows_the_parsed_structure() {
    let cases = [
        ("a = 1 OR b = 1 AND c = 1", "a = 1 OR b = 1 AND c = 1"),
        ("(a = 1 OR b = 1) AND c = 1", "(a = 1 OR b = 1) AND c = 1"),
        ("not (a=1 and b=1)", "NOT (a = 1 AND b = 1)"),
        ("((a = 1))", "a = 1"),
        ("NOT NOT a = 1", "a = 1"),
        ("a + 2 * 3 = 7", "a + 2 * 3 = 7"),
        ("(a + 2) * 3 = 9", "(a + 2) * 3 = 9"),
        ("a - (b - c) = 0", "a - (b - c) = 0"),
        ("(a - b) - c = 0", "a - b - c = 0"),
        ("a != 1", "a <> 1"),
        ("user.a = 1", "a = 1"),
        (
            "x in (1,'a' , 2.5) Or y not like 'a!%' escape '!'",
            "x IN (1, 'a', 2.5) OR y NOT LIKE 'a!%' ESCAPE '!'",
        ),
        (
            "a is not null and exists ( [b c] )",
            "a IS NOT NULL AND EXISTS([b c])",
        ),
        ("\"we\"\"ird\" = 'it''s'", "[we\"ird] = 'it''s'"),
        (
            "[a]]b] = 1 AND [select] = 2 AND [and] = 3",
            "[a]]b] = 1 AND select = 2 AND [and] = 3",
        ),
        ("sys.label = 'x'", "sys.label = 'x'"),
        (
            "a = 1e3 AND b = .5 AND c = -0.25",
            "a = 1000.0 AND b = 0.5 AND c = -0.25",
        ),
        (
            "a = - 5 AND b = - -5 AND c = -b",
            "a = -5 AND b = -(-5) AND c = -b",
        ),
        ("true", "TRUE"),
        ("1=1", "1 = 1"),
    ];
    for (input, canonical) in cases {
        let filter = Filter::sql(input).unwrap();
        assert_eq!(filter.to_string(), canonical, "canonical text of {input:?}");
        assert_eq!(
            Filter::sql(canonical).unwrap(),
            filter,
            "{canonical:?} re-parses"
        );
    }
}
