//! SQL filter language: operators, precedence, three-valued logic, names, `sys.` properties,
//! literals and arithmetic.

use eventyard_core::filter::Filter;
use eventyard_core::{Properties, PropertyValue};

fn props(pairs: &[(&str, PropertyValue)]) -> Properties {
    pairs.iter().cloned().collect()
}

fn int(i: i64) -> PropertyValue {
    PropertyValue::Int(i)
}

fn float(x: f64) -> PropertyValue {
    PropertyValue::Float(x)
}

fn s(v: &str) -> PropertyValue {
    PropertyValue::String(v.to_owned())
}

fn matches(expression: &str, props: &Properties) -> bool {
    Filter::sql(expression)
        .unwrap_or_else(|e| panic!("{expression:?} should parse: {e}"))
        .matches(props)
}

/// Asserts each expression's match result over `props`.
fn check(props: &Properties, cases: &[(&str, bool)]) {
    for (expression, expected) in cases {
        assert_eq!(
            matches(expression, props),
            *expected,
            "{expression:?} over {props:?}"
        );
    }
}

#[test]
fn comparison_operators_on_integers() {
    let p = props(&[("a", int(5))]);
    check(
        &p,
        &[
            ("a = 5", true),
            ("a = 4", false),
            ("a <> 4", true),
            ("a <> 5", false),
            ("a != 4", true),
            ("a != 5", false),
            ("a < 6", true),
            ("a < 5", false),
            ("a <= 5", true),
            ("a <= 4", false),
            ("a > 4", true),
            ("a > 5", false),
            ("a >= 5", true),
            ("a >= 6", false),
            ("5 = a", true),
            ("6 > a", true),
            ("a=5", true),
        ],
    );
}

#[test]
fn comparison_operators_on_strings_are_ordinal_and_case_sensitive() {
    let p = props(&[("t", s("Order"))]);
    check(
        &p,
        &[
            ("t = 'Order'", true),
            ("t = 'order'", false),
            ("t <> 'order'", true),
            ("t < 'order'", true), // 'O' (0x4F) < 'o' (0x6F)
            ("t > 'Orde'", true),
            ("t >= 'Order'", true),
            ("t < 'Order'", false),
        ],
    );
}

#[test]
fn comparison_of_booleans_and_floats() {
    let p = props(&[("flag", PropertyValue::Bool(true)), ("x", float(1.5))]);
    check(
        &p,
        &[
            ("flag = TRUE", true),
            ("flag = true", true),
            ("flag <> FALSE", true),
            ("flag = FALSE", false),
            ("flag > FALSE", false), // booleans are not ordered: unknown
            ("x = 1.5", true),
            ("x > 1.25", true),
            ("x < 15e-1", false),
            ("x <= 15e-1", true),
        ],
    );
}

#[test]
fn integers_and_floats_compare_numerically() {
    let p = props(&[("i", int(1000)), ("f", float(2.0))]);
    check(
        &p,
        &[
            ("i = 1e3", true),
            ("i = 1000.0", true),
            ("i < 1000.5", true),
            ("f = 2", true),
            ("f > 1", true),
            ("f IN (1, 2)", true),
        ],
    );
}

#[test]
fn strings_never_equal_numbers() {
    let p = props(&[("n", s("5")), ("i", int(5))]);
    check(
        &p,
        &[
            ("n = 5", false),
            ("n <> 5", false),
            ("i = '5'", false),
            ("i <> '5'", false),
            ("n > 1", false),
            ("NOT n = 5", false),
            ("i IN ('5')", false),
            ("i NOT IN ('5')", false),
            ("i LIKE '5'", false),
            ("i NOT LIKE '5'", false),
        ],
    );
}

#[test]
fn precedence_not_over_and_over_or() {
    // OR is loosest: a OR (b AND c).
    let p = props(&[("a", int(1)), ("b", int(0)), ("c", int(0))]);
    assert!(matches("a = 1 OR b = 1 AND c = 1", &p));
    assert!(!matches("(a = 1 OR b = 1) AND c = 1", &p));
    // NOT binds tighter than AND: (NOT a = 1) AND b = 1.
    let p = props(&[("a", int(1)), ("b", int(2))]);
    assert!(!matches("NOT a = 1 AND b = 1", &p));
    assert!(matches("NOT (a = 1 AND b = 1)", &p));
    // ... and tighter than OR.
    assert!(matches("NOT a = 2 OR b = 3", &p));
    assert!(!matches("NOT (a = 1 OR b = 3)", &p));
    // Comparison binds tighter than NOT.
    assert!(matches("NOT a = 2", &p));
    assert!(matches("NOT NOT a = 1", &p));
    assert!(!matches("NOT NOT NOT a = 1", &p));
}

#[test]
fn three_valued_logic_with_absent_properties() {
    // `x` is absent: every comparison with it is unknown, and unknown never matches.
    let p = props(&[("a", int(1))]);
    check(
        &p,
        &[
            ("x = 1", false),
            ("x <> 1", false),
            ("NOT x = 1", false),
            ("NOT x <> 1", false),
            ("x > 0 OR x <= 0", false),
            // unknown OR true = true; unknown OR false = unknown
            ("x = 1 OR a = 1", true),
            ("x = 1 OR a = 2", false),
            ("NOT (x = 1 OR a = 2)", false),
            ("NOT (x = 1 OR a = 1)", false),
            // unknown AND false = false; unknown AND true = unknown
            ("x = 1 AND a = 1", false),
            ("NOT (x = 1 AND a = 2)", true),
            ("NOT (x = 1 AND a = 1)", false),
            // NULL checks
            ("x IS NULL", true),
            ("x IS NOT NULL", false),
            ("a IS NULL", false),
            ("a IS NOT NULL", true),
            ("NOT x IS NULL", false),
            ("EXISTS(x)", false),
            ("EXISTS(a)", true),
            ("NOT EXISTS(x)", true),
            // IN / LIKE / arithmetic with unknown operands
            ("x IN (1, 2)", false),
            ("x NOT IN (1, 2)", false),
            ("1 IN (x, 1)", true),
            ("2 IN (x, 1)", false),
            ("2 NOT IN (x, 1)", false),
            ("x LIKE '%'", false),
            ("x NOT LIKE 'a'", false),
            ("x + 1 > 0", false),
            ("-x < 0 OR -x >= 0", false),
            // NULL literal
            ("a = NULL", false),
            ("a <> NULL", false),
            ("NOT a = NULL", false),
            ("NULL = NULL", false),
        ],
    );
}

#[test]
fn bracketed_and_scoped_names() {
    let p = props(&[
        ("cs-tenant-id", s("connectsoft")),
        ("a b", int(1)),
        ("x]y", int(2)),
        ("a", int(3)),
        ("Select", int(4)),
    ]);
    check(
        &p,
        &[
            ("[cs-tenant-id] = 'connectsoft'", true),
            ("[cs-tenant-id] = 'ConnectSoft'", false),
            ("user.[cs-tenant-id] = 'connectsoft'", true),
            ("[a b] = 1", true),
            ("\"a b\" = 1", true),
            ("[x]]y] = 2", true),
            ("user.a = 3", true),
            ("USER.a = 3", true),
            ("A = 3", false), // names are case-sensitive
            ("Select = 4", true),
            ("[Select] = 4", true),
        ],
    );
}

#[test]
fn unbracketed_hyphenated_name_is_rejected_with_a_hint() {
    let err = Filter::sql("cs-tenant-id = 'x'").unwrap_err().to_string();
    assert!(err.contains("[cs-tenant-id]"), "{err}");
    assert!(err.contains("column 1"), "{err}");
    // With spaces (or non-names) it is ordinary subtraction.
    let p = props(&[("a", int(5)), ("b", int(2))]);
    assert!(matches("a - b = 3", &p));
    assert!(matches("a-1 = 4", &p));
}

#[test]
fn keywords_are_case_insensitive() {
    let p = props(&[("a", int(1)), ("b", s("xy"))]);
    check(
        &p,
        &[
            ("a = 1 and b = 'xy'", true),
            ("a = 2 Or b = 'xy'", true),
            ("nOt a = 2", true),
            ("a iN (1)", true),
            ("b LiKe 'x%'", true),
            ("c iS nUlL", true),
            ("eXiStS(a)", true),
            ("a = 1 AND TrUe", true),
        ],
    );
    // Keywords only count as whole words.
    let p = props(&[("ANDROID", int(1)), ("notes", int(2)), ("order", int(3))]);
    check(&p, &[("ANDROID = 1 AND notes = 2 AND order = 3", true)]);
}

#[test]
fn system_properties_map_to_cs_properties() {
    let p = props(&[
        ("cs-event-type", s("order.created")),
        ("cs-event-id", s("e-1")),
        ("cs-correlation-id", s("c-1")),
        ("Label", s("not-this")),
    ]);
    check(
        &p,
        &[
            ("sys.Label = 'order.created'", true),
            ("sys.Subject = 'order.created'", true),
            ("sys.label = 'order.created'", true),
            ("SYS.LABEL LIKE 'order.%'", true),
            ("sys.MessageId = 'e-1'", true),
            ("sys.CorrelationId = 'c-1'", true),
            ("sys.[Label] = 'order.created'", true),
            ("Label = 'not-this'", true),
            ("sys.Label = 'not-this'", false),
            // Other system properties are never present.
            ("sys.To = 'x'", false),
            ("sys.To IS NULL", true),
            ("EXISTS(sys.ContentType)", false),
            ("EXISTS(sys.Label)", true),
        ],
    );
}

#[test]
fn like_patterns() {
    let p = props(&[
        ("t", s("order.created")),
        ("pct", s("100%")),
        ("u", s("a_b")),
    ]);
    check(
        &p,
        &[
            ("t LIKE 'order.%'", true),
            ("t LIKE '%.created'", true),
            ("t LIKE '%der%'", true),
            ("t LIKE 'order._reated'", true),
            ("t LIKE 'order.__reated'", false),
            ("t LIKE 'Order.%'", false),
            ("t LIKE 'order.created'", true),
            ("t LIKE 'order'", false),
            ("t NOT LIKE 'invoice.%'", true),
            ("t NOT LIKE 'order.%'", false),
            ("pct LIKE '100!%' ESCAPE '!'", true),
            ("pct LIKE '100\\%' ESCAPE '\\'", true),
            ("pct LIKE '1!%' ESCAPE '!'", false),
            ("u LIKE 'a!_b' ESCAPE '!'", true),
            ("t LIKE 'order!.created' ESCAPE '!'", true),
            ("t LIKE 'order!_created' ESCAPE '!'", false),
            ("'it''s' LIKE 'it''_'", true),
        ],
    );
}

#[test]
fn in_and_not_in() {
    let p = props(&[("t", s("b")), ("n", int(2))]);
    check(
        &p,
        &[
            ("t IN ('a', 'b', 'c')", true),
            ("t IN ('a', 'c')", false),
            ("t IN ('B')", false),
            ("t NOT IN ('a', 'c')", true),
            ("t NOT IN ('a', 'b')", false),
            ("n IN (1, 2.0, 3)", true),
            ("n IN (1 + 1)", true),
            ("n NOT IN (1, 3)", true),
            ("n IN ('2')", false),
            ("NOT n IN (1)", true),
        ],
    );
}

#[test]
fn literals_and_constant_filters() {
    let p = props(&[("q", s("it's")), ("e", s(""))]);
    check(
        &p,
        &[
            ("q = 'it''s'", true),
            ("e = ''", true),
            ("1 = 1", true),
            ("1=1", true),
            ("1 = 0", false),
            ("TRUE", true),
            ("FALSE", false),
            ("NOT FALSE", true),
            ("TRUE = TRUE", true),
            ("(TRUE)", true),
            ("1.5 = 15e-1", true),
            ("1 = 1.0", true),
            ("'a' < 'b'", true),
            ("9223372036854775807 > -9223372036854775808", true),
        ],
    );
}

#[test]
fn arithmetic() {
    let p = props(&[
        ("a", int(7)),
        ("b", int(2)),
        ("f", float(0.5)),
        ("t", s("x")),
    ]);
    check(
        &p,
        &[
            ("a + b = 9", true),
            ("a - b = 5", true),
            ("a * b = 14", true),
            ("a / b = 3", true), // integer division
            ("a % b = 1", true),
            ("a / 2.0 = 3.5", true),
            ("a * f = 3.5", true),
            ("-a = -7", true),
            ("+a = 7", true),
            ("a - b - 1 = 4", true), // left-associative
            ("a - (b - 1) = 6", true),
            ("a + b * 3 = 13", true),
            ("(a + b) * 3 = 27", true),
            ("2 * (a + 1) > 15", true),
            // unknown: division by zero, overflow, non-numbers
            ("a / 0 = 0 OR a / 0 <> 0", false),
            ("a % 0 = 0 OR a % 0 <> 0", false),
            (
                "9223372036854775807 + 1 > 0 OR 9223372036854775807 + 1 <= 0",
                false,
            ),
            ("t + 1 = 1 OR t + 1 <> 1", false),
            ("-t = 'x' OR -t <> 'x'", false),
        ],
    );
}

#[test]
fn filters_with_whitespace_and_newlines() {
    let p = props(&[("a", int(1)), ("b", int(2))]);
    assert!(matches("\n\ta = 1\r\n  AND\tb = 2  ", &p));
}

#[test]
fn expression_keeps_the_original_text() {
    let Filter::Sql(sql) = Filter::sql("a=1  and b=2").unwrap() else {
        panic!("expected a SQL filter");
    };
    assert_eq!(sql.expression(), "a=1  and b=2");
    assert_eq!(sql.to_string(), "a = 1 AND b = 2");
}

#[test]
fn all_matches_everything() {
    assert!(Filter::all().matches(&Properties::new()));
    assert!(Filter::All.matches(&props(&[("a", int(1))])));
    assert_eq!(Filter::all().to_string(), "TRUE");
}

#[test]
fn parenthesised_operands_versus_parenthesised_conditions() {
    let p = props(&[("a", int(1)), ("b", PropertyValue::Bool(true))]);
    check(
        &p,
        &[
            ("(a) = 1", true),
            ("(a + 1) * 2 = 4", true),
            ("(a) IN (1, 2)", true),
            ("(TRUE) = b", true),
            ("(TRUE) IN (b)", true),
            ("((a = 1))", true),
            ("(a = 1) AND (b = TRUE)", true),
            ("((a) + (1)) = 2", true),
        ],
    );
    // A condition is not a value.
    for bad in [
        "(a = 1) = TRUE",
        "(a = 1) + 1 = 2",
        "(b) IS NULL AND (a = 1) IN (TRUE)",
    ] {
        let err = Filter::sql(bad).unwrap_err().to_string();
        assert!(err.contains("cannot be used as a value"), "{err}");
    }
}
