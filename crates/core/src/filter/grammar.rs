//! Parsing SQL filter text (grammar in `filter.pest`) into the [`ast`](super::ast).
//!
//! Never panics: unexpected tree shapes become errors, nesting is bounded before pest runs (its
//! parser is recursive), and the tree depth is bounded while building (evaluation, display and
//! drop are recursive too).

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest_derive::Parser;

use super::ast::{ArithOp, CompareOp, Expr, Literal, Predicate, Property, Scope};
use super::error::FilterError;
use super::like::LikePattern;

#[derive(Parser)]
#[grammar = "filter/filter.pest"]
struct SqlParser;

/// Most parentheses open at once.
pub(crate) const MAX_NESTING: usize = 32;
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
        ErrorVariant::ParsingError { positives, .. } => expected(positives),
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let rest = &input[position.min(input.len())..];
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
        R::WHITESPACE => "",
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

/// Tree depth so far, returned beside each node built.
type Built<T> = Result<(T, usize), FilterError>;

struct Builder<'i> {
    input: &'i str,
}

impl<'i> Builder<'i> {
    fn error(&self, pair: &Pair<'i, Rule>, what: &str) -> FilterError {
        FilterError::parse(self.input, pair.as_span().start(), what)
    }

    /// The next pair, or an error if the tree is not shaped as the grammar says.
    fn next(
        &self,
        pair: Option<Pair<'i, Rule>>,
        position: usize,
    ) -> Result<Pair<'i, Rule>, FilterError> {
        pair.ok_or_else(|| FilterError::parse(self.input, position, "internal parser error"))
    }

    fn unexpected(&self, pair: &Pair<'i, Rule>) -> FilterError {
        self.error(
            pair,
            &format!("internal parser error (unexpected {:?})", pair.as_rule()),
        )
    }

    fn deeper(&self, pair: &Pair<'i, Rule>, depth: usize) -> Result<usize, FilterError> {
        if depth > MAX_DEPTH {
            let what = format!("expression too complex (nested more than {MAX_DEPTH} levels)");
            return Err(self.error(pair, &what));
        }
        Ok(depth + 1)
    }

    /// `a OR b ...` (also used for `a AND b ...` via `inner`).
    fn list(
        &self,
        pair: Pair<'i, Rule>,
        item_rule: Rule,
        inner: fn(&Self, Pair<'i, Rule>) -> Built<Predicate>,
        combine: fn(Vec<Predicate>) -> Predicate,
    ) -> Built<Predicate> {
        let span_pair = pair.clone();
        let mut items = Vec::new();
        let mut depth = 0;
        for child in pair.into_inner().filter(|p| p.as_rule() == item_rule) {
            let (item, d) = inner(self, child)?;
            depth = depth.max(d);
            items.push(item);
        }
        match items.len() {
            0 => Err(self.unexpected(&span_pair)),
            1 => Ok((items.remove(0), depth)),
            _ => Ok((combine(items), self.deeper(&span_pair, depth)?)),
        }
    }

    fn condition(&self, pair: Pair<'i, Rule>) -> Built<Predicate> {
        self.list(pair, Rule::conjunction, Self::conjunction, Predicate::Or)
    }

    fn conjunction(&self, pair: Pair<'i, Rule>) -> Built<Predicate> {
        self.list(pair, Rule::negation, Self::negation, Predicate::And)
    }

    fn negation(&self, pair: Pair<'i, Rule>) -> Built<Predicate> {
        let start = pair.as_span().start();
        let mut nots = 0usize;
        let mut primary = None;
        for child in pair.into_inner() {
            match child.as_rule() {
                Rule::kw_not => nots += 1,
                _ => primary = Some(child),
            }
        }
        let primary = self.next(primary, start)?;
        let (predicate, depth) = match primary.as_rule() {
            Rule::group => {
                let inner = self.next(primary.into_inner().nth(1), start)?;
                self.condition(inner)?
            }
            Rule::exists => {
                let property = self.next(primary.into_inner().nth(2), start)?;
                (Predicate::Exists(self.property(property)?), 1)
            }
            Rule::predicate => self.predicate(primary)?,
            Rule::boolean => (Predicate::Const(self.boolean(&primary)), 1),
            _ => return Err(self.unexpected(&primary)),
        };
        // NOT NOT x is x, also under three-valued logic.
        if nots % 2 == 1 {
            Ok((Predicate::Not(Box::new(predicate)), depth + 1))
        } else {
            Ok((predicate, depth))
        }
    }

    fn predicate(&self, pair: Pair<'i, Rule>) -> Built<Predicate> {
        let whole = pair.clone();
        let mut children = pair.into_inner();
        let left_pair = self.next(children.next(), whole.as_span().start())?;
        let tail = self.next(children.next(), whole.as_span().end())?;
        let (left, mut depth) = self.expr(left_pair.clone())?;
        let mut negated = false;
        let mut parts = Vec::new();
        for child in tail.clone().into_inner() {
            match child.as_rule() {
                Rule::kw_not => negated = true,
                Rule::kw_is | Rule::kw_in | Rule::kw_like | Rule::kw_escape => {}
                Rule::open | Rule::close | Rule::comma | Rule::null => {}
                _ => parts.push(child),
            }
        }
        let predicate = match tail.as_rule() {
            Rule::compare_tail => {
                let [op, right] =
                    <[Pair<'i, Rule>; 2]>::try_from(parts).map_err(|_| self.unexpected(&tail))?;
                let (right, d) = self.expr(right)?;
                depth = depth.max(d);
                Predicate::Compare(self.compare_op(&op)?, left, right)
            }
            Rule::null_tail => match left {
                Expr::Property(property) => Predicate::IsNull { property, negated },
                _ => return Err(self.error(&left_pair, "IS NULL can only test a property")),
            },
            Rule::in_tail => {
                let mut list = Vec::with_capacity(parts.len());
                for item in parts {
                    let (item, d) = self.expr(item)?;
                    depth = depth.max(d);
                    list.push(item);
                }
                Predicate::In {
                    expr: left,
                    list,
                    negated,
                }
            }
            Rule::like_tail => {
                let mut strings = parts.into_iter();
                let pattern_pair = self.next(strings.next(), tail.as_span().start())?;
                let pattern = self.string(&pattern_pair)?;
                let escape = match strings.next() {
                    None => None,
                    Some(escape_pair) => {
                        let text = self.string(&escape_pair)?;
                        let mut chars = text.chars();
                        match (chars.next(), chars.next()) {
                            (Some(c), None) => Some(c),
                            _ => {
                                let what = "the ESCAPE character must be a single character";
                                return Err(self.error(&escape_pair, what));
                            }
                        }
                    }
                };
                let pattern = LikePattern::new(&pattern, escape)
                    .map_err(|what| self.error(&pattern_pair, &what))?;
                Predicate::Like {
                    expr: left,
                    pattern,
                    negated,
                }
            }
            _ => return Err(self.unexpected(&tail)),
        };
        Ok((predicate, self.deeper(&whole, depth)?))
    }

    fn compare_op(&self, pair: &Pair<'i, Rule>) -> Result<CompareOp, FilterError> {
        Ok(match pair.as_str() {
            "=" => CompareOp::Eq,
            "<>" | "!=" => CompareOp::Ne,
            "<" => CompareOp::Lt,
            "<=" => CompareOp::Le,
            ">" => CompareOp::Gt,
            ">=" => CompareOp::Ge,
            _ => return Err(self.unexpected(pair)),
        })
    }

    /// `expr` (`term (add_op term)*`) or `term` (`unary (mul_op unary)*`), left-associative.
    fn expr(&self, pair: Pair<'i, Rule>) -> Built<Expr> {
        let whole = pair.clone();
        let mut children = pair.into_inner();
        let first = self.next(children.next(), whole.as_span().start())?;
        let mut previous = first.clone();
        let (mut acc, mut depth) = self.operand_chain(first)?;
        while let Some(op_pair) = children.next() {
            let op = match op_pair.as_str() {
                "+" => ArithOp::Add,
                "-" => ArithOp::Sub,
                "*" => ArithOp::Mul,
                "/" => ArithOp::Div,
                "%" => ArithOp::Rem,
                _ => return Err(self.unexpected(&op_pair)),
            };
            let right_pair = self.next(children.next(), whole.as_span().end())?;
            self.check_hyphenated_name(&previous, &op_pair, &right_pair)?;
            previous = right_pair.clone();
            let (right, d) = self.operand_chain(right_pair)?;
            depth = self.deeper(&whole, depth.max(d))?;
            acc = Expr::Arith(op, Box::new(acc), Box::new(right));
        }
        Ok((acc, depth))
    }

    /// Rejects `cs-tenant-id`: SQL reads it as `cs - tenant - id`, which is never what was
    /// meant; the name must be written `[cs-tenant-id]` (and `a - b` subtracts).
    fn check_hyphenated_name(
        &self,
        left: &Pair<'i, Rule>,
        op: &Pair<'i, Rule>,
        right: &Pair<'i, Rule>,
    ) -> Result<(), FilterError> {
        let is_name = |text: &str| {
            text.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && text.chars().all(|c| c.is_alphanumeric() || c == '_')
        };
        let adjacent = left.as_span().end() == op.as_span().start()
            && op.as_span().end() == right.as_span().start();
        let right_starts_name = right
            .as_str()
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
        if op.as_str() != "-" || !adjacent || !is_name(left.as_str()) || !right_starts_name {
            return Ok(());
        }
        let rest = &self.input[left.as_span().start()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        let word = rest[..end].trim_end_matches('-');
        let what = format!(
            "`{word}` reads as a subtraction: write [{word}] for a property name containing `-` \
             (or put spaces around `-` to subtract)"
        );
        Err(self.error(left, &what))
    }

    fn operand_chain(&self, pair: Pair<'i, Rule>) -> Built<Expr> {
        match pair.as_rule() {
            Rule::term => self.expr(pair),
            Rule::unary => self.unary(pair),
            _ => Err(self.unexpected(&pair)),
        }
    }

    /// `sign* operand`; a minus right before a number is part of the literal.
    fn unary(&self, pair: Pair<'i, Rule>) -> Built<Expr> {
        let whole = pair.clone();
        let mut signs: Vec<Pair<'i, Rule>> = Vec::new();
        let mut operand = None;
        for child in pair.into_inner() {
            match child.as_rule() {
                Rule::sign => signs.push(child),
                _ => operand = Some(child),
            }
        }
        let operand = self.next(operand, whole.as_span().start())?;
        let (mut expr, mut depth) = match operand.as_rule() {
            Rule::number => {
                let negative = signs.last().is_some_and(|s| s.as_str() == "-");
                if negative {
                    signs.pop();
                }
                (Expr::Literal(self.number(&operand, negative)?), 1)
            }
            Rule::string => (Expr::Literal(Literal::String(self.string(&operand)?)), 1),
            Rule::boolean => (Expr::Literal(Literal::Bool(self.boolean(&operand))), 1),
            Rule::null => (Expr::Literal(Literal::Null), 1),
            Rule::property => (Expr::Property(self.property(operand)?), 1),
            Rule::paren => {
                let inner = self.next(operand.into_inner().nth(1), whole.as_span().start())?;
                self.expr(inner)?
            }
            _ => return Err(self.unexpected(&operand)),
        };
        for sign in signs.iter().rev() {
            if sign.as_str() == "-" {
                depth = self.deeper(sign, depth)?;
                expr = Expr::Neg(Box::new(expr));
            }
        }
        Ok((expr, depth))
    }

    fn number(&self, pair: &Pair<'i, Rule>, negative: bool) -> Result<Literal, FilterError> {
        let text = pair.as_str();
        let signed = if negative {
            format!("-{text}")
        } else {
            text.to_owned()
        };
        if text.contains(['.', 'e', 'E']) {
            // Overflow gives an infinity, as in .NET; there is no other failure for this shape.
            signed
                .parse::<f64>()
                .map(Literal::Float)
                .map_err(|_| self.error(pair, "invalid number"))
        } else {
            signed
                .parse::<i64>()
                .map(Literal::Int)
                .map_err(|_| self.error(pair, "integer literal out of range (64-bit)"))
        }
    }

    fn boolean(&self, pair: &Pair<'i, Rule>) -> bool {
        pair.as_str().eq_ignore_ascii_case("TRUE")
    }

    /// The value of a `'...'` literal.
    fn string(&self, pair: &Pair<'i, Rule>) -> Result<String, FilterError> {
        let body = self.next(pair.clone().into_inner().next(), pair.as_span().start())?;
        Ok(body.as_str().replace("''", "'"))
    }

    fn property(&self, pair: Pair<'i, Rule>) -> Result<Property, FilterError> {
        let whole = pair.clone();
        let mut scope = Scope::User;
        let mut name = None;
        for child in pair.into_inner() {
            match child.as_rule() {
                Rule::sys_scope => scope = Scope::Sys,
                Rule::user_scope => scope = Scope::User,
                Rule::identifier => name = Some(child.as_str().to_owned()),
                Rule::bracketed | Rule::quoted => {
                    let (quote, doubled) = if child.as_rule() == Rule::bracketed {
                        ("]", "]]")
                    } else {
                        ("\"", "\"\"")
                    };
                    let body = self.next(child.into_inner().next(), whole.as_span().start())?;
                    name = Some(body.as_str().replace(doubled, quote));
                }
                _ => return Err(self.unexpected(&child)),
            }
        }
        let name = name.ok_or_else(|| self.unexpected(&whole))?;
        Ok(Property { scope, name })
    }
}
