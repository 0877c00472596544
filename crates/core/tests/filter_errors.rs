//! SQL filter parse errors: what is wrong, and where.

use eventyard_core::filter::{Filter, FilterError};

/// Parses `input`, expecting an error at byte `position` whose message contains each of
/// `needles`.
fn expect_error(input: &str, position: usize, needles: &[&str]) {
    let err = Filter::sql(input).expect_err(input);
    let FilterError::Parse {
        expression,
        position: actual,
        message,
    } = &err
    else {
        panic!("unexpected error kind: {err:?}");
    };
    assert_eq!(expression, input);
    assert_eq!(
        *actual, position,
        "position for {input:.80?}: {message:.200}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "message for {input:.80?} should contain {needle:?}: {message:.200}"
        );
    }
    // The error's Display names the expression and the problem.
    let text = err.to_string();
    assert!(text.contains(message.as_str()), "{text}");
    if input.len() <= 80 {
        assert!(text.contains(&format!("{input:?}")), "{text}");
    }
}

#[test]
fn missing_comparison_operator() {
    expect_error(
        "a = 1 AND b 5",
        12,
        &[
            "expected a comparison operator",
            "found `5`",
            "at column 13",
        ],
    );
    expect_error(
        "a",
        1,
        &["end of expression", "comparison operator", "column 2"],
    );
    expect_error(
        "a = 1 AND (b = 2 OR c)",
        21,
        &[
            "expected a comparison operator, IS, IN or LIKE",
            "column 22",
        ],
    );
}

#[test]
fn missing_or_misplaced_values() {
    expect_error("a = ", 4, &["expected a value", "column 5"]);
    expect_error(
        "a = AND b = 1",
        4,
        &["expected a value", "found `AND`", "column 5"],
    );
    expect_error("1 + = 2", 4, &["expected a value", "found `=`", "column 5"]);
    expect_error("a === 1", 3, &["expected a value", "column 4"]);
    expect_error("a IN (1,", 8, &["expected a value", "column 9"]);
}

#[test]
fn trailing_or_missing_tokens() {
    expect_error(
        "a = 1 b = 2",
        6,
        &["expected AND, OR or the end of the expression", "column 7"],
    );
    expect_error("a = 1)", 5, &["found `)`", "column 6"]);
    expect_error("(a = 1", 6, &["`)`", "column 7"]);
    expect_error("a IN 1", 5, &["expected `(`", "column 6"]);
    expect_error("EXISTS a", 7, &["expected `(`", "column 8"]);
    expect_error("EXISTS(1)", 7, &["expected a property name", "column 8"]);
    expect_error("a IS 5", 5, &["expected NOT or NULL", "column 6"]);
    expect_error("a NOT 5", 6, &["expected IN or LIKE", "column 7"]);
    expect_error("NOT", 3, &["expected a condition", "column 4"]);
    expect_error(
        "sys. Label = 1",
        4,
        &["expected a property name", "column 5"],
    );
    expect_error("a.b = 1", 1, &["column 2"]);
}

#[test]
fn empty_expression() {
    expect_error("", 0, &["empty expression", "column 1"]);
    expect_error("   ", 3, &["empty expression"]);
}

#[test]
fn unterminated_quotes() {
    expect_error("a = 'abc", 4, &["unterminated string literal", "column 5"]);
    expect_error("a = 'it''s", 4, &["unterminated string literal"]);
    expect_error(
        "[cs-tenant-id = 1",
        0,
        &["unterminated bracketed property name", "column 1"],
    );
    expect_error("\"a = 1", 0, &["unterminated quoted property name"]);
}

#[test]
fn invalid_like_clauses() {
    expect_error("a LIKE 5", 7, &["expected a string literal", "column 8"]);
    expect_error(
        "a LIKE 'x' ESCAPE 'ab'",
        18,
        &["single character", "column 19"],
    );
    expect_error("a LIKE 'x' ESCAPE ''", 18, &["single character"]);
    expect_error(
        "a LIKE 'x!' ESCAPE '!'",
        7,
        &["ends with its escape character", "column 8"],
    );
}

#[test]
fn invalid_literals_and_operands() {
    expect_error("a = 99999999999999999999", 4, &["out of range", "column 5"]);
    expect_error(
        "a + 1 IS NULL",
        0,
        &["IS NULL can only test a property", "column 1"],
    );
    expect_error("NULL IS NULL", 0, &["IS NULL can only test a property"]);
    expect_error("cs-tenant-id = 'x'", 0, &["[cs-tenant-id]", "column 1"]);
    expect_error("a = b-c", 4, &["[b-c]", "column 5"]);
}

#[test]
fn multi_line_positions_name_the_line() {
    expect_error("a = 1\nAND b", 11, &["line 2, column 6"]);
    expect_error(
        "a = 1 AND\n  b = 'x\n",
        16,
        &["unterminated string literal", "line 2, column 7"],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // 'é' is two bytes: the position is a byte offset, the column a character count.
    expect_error("[é] = 1 x", 9, &["column 9"]);
}

#[test]
fn nesting_and_size_limits() {
    let nested = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Filter::sql(&nested(16)).is_ok());
    expect_error(
        &nested(17),
        16,
        &["too many nested parentheses", "column 17"],
    );
    // Enormous inputs fail cleanly rather than overflowing the stack.
    assert!(Filter::sql(&nested(100_000)).is_err());
    assert!(Filter::sql(&"(".repeat(100_000)).is_err());
    let chain = format!("a = {}", vec!["1"; 10_000].join(" + "));
    expect_error(&chain, 4, &["too complex"]);
    let negs = format!("a = {}1", "-".repeat(10_000));
    assert!(
        Filter::sql(&negs)
            .unwrap_err()
            .to_string()
            .contains("too complex")
    );
    // NOT NOT ... folds, so any number of NOTs is fine.
    let nots = format!("{}a = 1", "NOT ".repeat(10_001));
    assert_eq!(Filter::sql(&nots).unwrap().to_string(), "NOT a = 1");
    // Long conjunctions are flat, not deep.
    let conj = vec!["a = 1"; 10_000].join(" AND ");
    assert!(Filter::sql(&conj).is_ok());
}
