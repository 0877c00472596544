//! Parsing SQL filter text (grammar in `filter.pest`) into the [`ast`](super::ast), and turning
//! pest's errors into messages that say what was expected, what was found and where.
//!
//! Parenthesis nesting is bounded before pest runs: its parser, and the builder, recurse per
//! level.

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest_derive::Parser;

use super::ast::Predicate;
use super::build::Builder;
use super::error::FilterError;

#[derive(Parser)]
#[grammar = "filter/filter.pest"]
struct SqlParser;

/// Most parentheses open at once. Parsing and building recurse per level; in debug builds a
/// level takes several KiB of stack, so this keeps any thread with 256 KiB of stack safe.
pub(crate) const MAX_NESTING: usize = 16;
/// Deepest syntax tree accepted (long arithmetic chains nest too).
pub(crate) const MAX_DEPTH: usize = 128;

/// Parses a whole filter expression.
pub(crate) fn parse(input: &str) -> Result<Predicate, FilterError> {
    let unterminated = prescan(input)?;
    let mut pairs =
        SqlParser::parse(Rule::filter, input).map_err(|e| convert(input, &e, unterminated))?;
    let builder = Builder { input };
    let filter = builder.next(pairs.next(), 0)?;
    let condition = builder.next(filter.into_inner().next(), 0)?;
    Ok(builder.condition(condition)?.0)
}

/// Checks parenthesis nesting (outside quotes) and finds the first unterminated quote, whose
/// start and description make a better message than pest's if parsing fails there.
fn prescan(input: &str) -> Result<Option<(usize, &'static str)>, FilterError> {
    let mut depth = 0usize;
    let mut chars = input.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let (close, what) = match c {
            '\'' => ('\'', "unterminated string literal"),
            '[' => (']', "unterminated bracketed property name"),
            '"' => ('"', "unterminated quoted property name"),
            '(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    let what = format!("too many nested parentheses (the limit is {MAX_NESTING})");
                    return Err(FilterError::parse(input, start, &what));
                }
                continue;
            }
            ')' => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ => continue,
        };
        // Skip to the closing quote; a doubled quote stands for itself.
        loop {
            match chars.next() {
                None => return Ok(Some((start, what))),
                Some((_, ch)) if ch == close => {
                    if chars.next_if(|&(_, next)| next == close).is_none() {
                        break;
                    }
                }
                Some(_) => {}
            }
        }
    }
    Ok(None)
}

/// Turns a pest error into a [`FilterError`] whose message names what was expected.
fn convert(
    input: &str,
    error: &pest::error::Error<Rule>,
    unterminated: Option<(usize, &'static str)>,
) -> FilterError {
    let position = match error.location {
        InputLocation::Pos(p) | InputLocation::Span((p, _)) => p,
    };
    if let Some((start, what)) = unterminated.filter(|(start, _)| position >= *start) {
        return FilterError::parse(input, start, what);
    }
    let expected = match &error.variant {
        // The only tracked negative lookahead: an operator after `( condition )`.
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } if positives.is_empty() && !negatives.is_empty() => {
            "a condition in parentheses cannot be used as a value".to_owned()
        }
        ErrorVariant::ParsingError { positives, .. } => expected(positives),
        // pest's own guard ("stack limit reached") on a thread with a very small stack.
        ErrorVariant::CustomError { message } if message.contains("limit") => {
            "expression nested too deeply for this thread's stack".to_owned()
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let rest = input.get(position..).unwrap_or_default();
    let what = match found(rest) {
        None if input.trim().is_empty() => format!("empty expression: {expected}"),
        None => format!("unexpected end of expression: {expected}"),
        Some(token) => format!("{expected}, found {token}"),
    };
    FilterError::parse(input, position, &what)
}

/// The token at the start of `rest`, for "found `x`" (a word, or a single character).
fn found(rest: &str) -> Option<String> {
    let first = rest.chars().next()?;
    if first.is_whitespace() {
        return Some("whitespace".to_owned());
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let len = if is_word(first) {
        rest.find(|c| !is_word(c)).unwrap_or(rest.len())
    } else {
        first.len_utf8()
    };
    Some(format!("`{}`", &rest[..len]))
}

/// Descriptions, in the order they are listed in messages.
const DESCRIPTIONS: [&str; 18] = [
    "a condition",
    "a value",
    "a property name",
    "a string literal",
    "NOT",
    "a comparison operator",
    "IS",
    "IN",
    "LIKE",
    "ESCAPE",
    "NULL",
    "AND",
    "OR",
    "`(`",
    "`,`",
    "`)`",
    "an arithmetic operator",
    "the end of the expression",
];

fn describe(rule: Rule) -> &'static str {
    use Rule as R;
    match rule {
        R::filter | R::condition | R::conjunction | R::negation | R::group | R::predicate => {
            "a condition"
        }
        R::primary | R::exists | R::kw_exists => "a condition",
        R::expr | R::term | R::unary | R::sign | R::operand | R::paren => "a value",
        R::number | R::boolean => "a value",
        R::property | R::sys_scope | R::user_scope | R::bracketed | R::bracketed_body => {
            "a property name"
        }
        R::quoted | R::quoted_body | R::identifier | R::ident_char | R::keyword => {
            "a property name"
        }
        R::string | R::string_body => "a string literal",
        R::kw_not => "NOT",
        R::compare_tail | R::comp_op => "a comparison operator",
        R::null_tail | R::kw_is => "IS",
        R::in_tail | R::kw_in => "IN",
        R::like_tail | R::kw_like => "LIKE",
        R::kw_escape => "ESCAPE",
        R::null => "NULL",
        R::kw_and => "AND",
        R::kw_or => "OR",
        R::open => "`(`",
        R::comma => "`,`",
        R::close => "`)`",
        R::add_op | R::mul_op => "an arithmetic operator",
        R::EOI => "the end of the expression",
        R::WHITESPACE | R::operator => "",
    }
}

/// `expected A, B or C`, leaving out alternatives subsumed by others.
fn expected(positives: &[Rule]) -> String {
    let found: Vec<&str> = positives.iter().map(|r| describe(*r)).collect();
    let mut list: Vec<&str> = DESCRIPTIONS
        .iter()
        .copied()
        .filter(|d| found.contains(d))
        .collect();
    if list.contains(&"a condition") {
        // A condition may start with NOT, `(` or a value.
        list.retain(|d| !matches!(*d, "a value" | "a property name" | "NOT" | "`(`"));
    }
    if list.contains(&"a value") {
        list.retain(|d| !matches!(*d, "a property name" | "a string literal" | "NULL" | "`(`"));
    }
    if list.len() > 1 {
        // Arithmetic may always continue an operand; naming it only adds noise.
        list.retain(|d| *d != "an arithmetic operator");
    }
    match list.as_slice() {
        [] => "syntax error".to_owned(),
        [one] => format!("expected {one}"),
        [init @ .., last] => format!("expected {} or {last}", init.join(", ")),
    }
}
