//! Building the [`ast`](super::ast) from pest's parse tree (see `grammar.rs`).
//!
//! Never panics: a tree not shaped as the grammar says becomes an "internal parser error", and
//! the depth of the tree is bounded (evaluation, display and drop recurse over it).

use pest::iterators::Pair;

use super::ast::{ArithOp, CompareOp, Expr, Literal, Predicate, Property, Scope};
use super::error::FilterError;
use super::grammar::{MAX_DEPTH, Rule};
use super::like::LikePattern;

/// Tree depth so far, returned beside each node built.
type Built<T> = Result<(T, usize), FilterError>;

pub(crate) struct Builder<'i> {
    pub(crate) input: &'i str,
}

impl<'i> Builder<'i> {
    fn error(&self, pair: &Pair<'i, Rule>, what: &str) -> FilterError {
        FilterError::parse(self.input, pair.as_span().start(), what)
    }

    /// The next pair, or an error if the tree is not shaped as the grammar says.
    pub(crate) fn next(
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

    pub(crate) fn condition(&self, pair: Pair<'i, Rule>) -> Built<Predicate> {
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
