//! The syntax tree of a SQL filter and its canonical text form.
//!
//! The canonical text (the `Display` impls here) re-parses to an equal tree: operands are
//! parenthesised exactly where precedence or associativity requires it, names that are not
//! plain ASCII identifiers are bracket-quoted, and numbers keep their type (`1` vs `1.0`).

use std::fmt::{self, Write};

use super::like::LikePattern;
use crate::properties::{PropertyValue, names};

/// Which property bag a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Application properties (`user.` prefix or no prefix).
    User,
    /// Broker/system properties (`sys.` prefix), mapped onto the `cs-*` properties.
    Sys,
}

/// A property reference, e.g. `a`, `user.a`, `[cs-tenant-id]` or `sys.Label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Property {
    pub(crate) scope: Scope,
    pub(crate) name: String,
}

impl Property {
    /// The application-property name this reference reads, or `None` for a system property
    /// eventyard does not carry (always absent).
    pub(crate) fn resolve(&self) -> Option<&str> {
        match self.scope {
            Scope::User => Some(&self.name),
            Scope::Sys => system_property(&self.name),
        }
    }
}

/// Maps a Service Bus system property name (case-insensitively) onto the `cs-*` property
/// carrying the same information.
pub(crate) fn system_property(name: &str) -> Option<&'static str> {
    const MAP: [(&str, &str); 4] = [
        ("MessageId", names::EVENT_ID),
        ("CorrelationId", names::CORRELATION_ID),
        ("Label", names::EVENT_TYPE),
        ("Subject", names::EVENT_TYPE),
    ];
    MAP.iter()
        .find(|(sys, _)| sys.eq_ignore_ascii_case(name))
        .map(|(_, prop)| *prop)
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

impl Literal {
    /// The property value this literal equals, `None` for `NULL`.
    pub(crate) fn to_value(&self) -> Option<PropertyValue> {
        match self {
            Literal::Null => None,
            Literal::Bool(b) => Some(PropertyValue::Bool(*b)),
            Literal::Int(i) => Some(PropertyValue::Int(*i)),
            Literal::Float(x) => Some(PropertyValue::Float(*x)),
            Literal::String(s) => Some(PropertyValue::String(s.clone())),
        }
    }
}

/// `+ - * / %`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    fn precedence(self) -> u8 {
        match self {
            ArithOp::Add | ArithOp::Sub => 1,
            ArithOp::Mul | ArithOp::Div | ArithOp::Rem => 2,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

/// A value expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Literal(Literal),
    Property(Property),
    /// Unary minus (a minus directly before a number literal is folded into the literal).
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
}

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Arith(op, ..) => op.precedence(),
            Expr::Neg(_) => 3,
            Expr::Literal(_) | Expr::Property(_) => 4,
        }
    }
}

/// `= <> < <= > >=` (`!=` is parsed as `<>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

/// A (three-valued) condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Predicate {
    /// Bare `TRUE` / `FALSE`.
    Const(bool),
    Not(Box<Predicate>),
    /// Two or more operands.
    And(Vec<Predicate>),
    /// Two or more operands.
    Or(Vec<Predicate>),
    Compare(CompareOp, Expr, Expr),
    IsNull {
        property: Property,
        negated: bool,
    },
    In {
        expr: Expr,
        list: Vec<Expr>,
        negated: bool,
    },
    Like {
        expr: Expr,
        pattern: LikePattern,
        negated: bool,
    },
    Exists(Property),
}

impl Predicate {
    fn precedence(&self) -> u8 {
        match self {
            Predicate::Or(_) => 1,
            Predicate::And(_) => 2,
            Predicate::Not(_) => 3,
            _ => 4,
        }
    }

    /// The `property = literal` equalities when this predicate is a pure conjunction of them
    /// (constant-true operands such as `1=1` are skipped), `None` otherwise. Conflicting
    /// equalities on one name, `NULL` literals and unknown system properties give `None`.
    pub(crate) fn equalities(&self) -> Option<Vec<(String, PropertyValue)>> {
        let mut out: Vec<(String, PropertyValue)> = Vec::new();
        self.collect_equalities(&mut out)?;
        Some(out)
    }

    fn collect_equalities(&self, out: &mut Vec<(String, PropertyValue)>) -> Option<()> {
        let (property, literal) = match self {
            Predicate::Const(true) => return Some(()),
            Predicate::And(items) => {
                return items.iter().try_for_each(|p| p.collect_equalities(out));
            }
            Predicate::Compare(CompareOp::Eq, Expr::Property(p), Expr::Literal(l))
            | Predicate::Compare(CompareOp::Eq, Expr::Literal(l), Expr::Property(p)) => (p, l),
            Predicate::Compare(_, Expr::Literal(_), Expr::Literal(_)) => {
                // Constant comparison: `1=1` is neutral, anything else is not an equality.
                let always = super::eval::evaluate(self, &crate::Properties::new());
                return always.then_some(());
            }
            _ => return None,
        };
        let name = property.resolve()?;
        let value = literal.to_value()?;
        match out.iter().find(|(n, _)| n == name) {
            Some((_, existing)) if *existing == value => {}
            Some(_) => return None,
            None => out.push((name.to_owned(), value)),
        }
        Some(())
    }
}

const KEYWORDS: [&str; 11] = [
    "AND", "OR", "NOT", "IS", "IN", "LIKE", "ESCAPE", "NULL", "EXISTS", "TRUE", "FALSE",
];

/// Writes a property name, bracket-quoting it unless it is a plain ASCII identifier that is
/// not a keyword.
pub(crate) fn write_name(f: &mut impl Write, name: &str) -> fmt::Result {
    let mut chars = name.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(name));
    if plain {
        f.write_str(name)
    } else {
        write!(f, "[{}]", name.replace(']', "]]"))
    }
}

/// Writes a quoted string literal.
pub(crate) fn write_string(f: &mut impl Write, s: &str) -> fmt::Result {
    write!(f, "'{}'", s.replace('\'', "''"))
}

/// Writes a float so that it re-parses as the same float (always with `.` or an exponent).
fn write_float(f: &mut impl Write, x: f64) -> fmt::Result {
    if x.is_nan() {
        // Not expressible as a literal; this evaluates to NaN, which equals nothing.
        f.write_str("(0.0 / 0.0)")
    } else if x.is_infinite() {
        f.write_str(if x > 0.0 { "1e999" } else { "-1e999" })
    } else {
        write!(f, "{x:?}")
    }
}

/// Writes a property value as a literal.
pub(crate) fn write_value(f: &mut impl Write, value: &PropertyValue) -> fmt::Result {
    match value {
        PropertyValue::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
        PropertyValue::Int(i) => write!(f, "{i}"),
        PropertyValue::Float(x) => write_float(f, *x),
        PropertyValue::String(s) => write_string(f, s),
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope == Scope::Sys {
            f.write_str("sys.")?;
        }
        write_name(f, &self.name)
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            None => f.write_str("NULL"),
            Some(value) => write_value(f, &value),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(l) => l.fmt(f),
            Expr::Property(p) => p.fmt(f),
            // `-(5)` rather than `-5`, which would parse as the literal -5.
            Expr::Neg(inner) => match inner.as_ref() {
                Expr::Property(p) => write!(f, "-{p}"),
                other => write!(f, "-({other})"),
            },
            Expr::Arith(op, left, right) => {
                let prec = op.precedence();
                write_operand(f, left, left.precedence() < prec)?;
                write!(f, " {} ", op.symbol())?;
                write_operand(f, right, right.precedence() <= prec)
            }
        }
    }
}

fn write_operand(f: &mut fmt::Formatter<'_>, e: &impl fmt::Display, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

fn write_list(
    f: &mut fmt::Formatter<'_>,
    items: &[Predicate],
    separator: &str,
    min_unparenthesised: u8,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_operand(f, item, item.precedence() < min_unparenthesised)?;
    }
    Ok(())
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Predicate::Const(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Predicate::Not(inner) => {
                // `NOT (NOT x)`: the parser folds `NOT NOT x` into `x`.
                f.write_str("NOT ")?;
                write_operand(f, inner, inner.precedence() <= 3)
            }
            Predicate::And(items) => write_list(f, items, " AND ", 3),
            Predicate::Or(items) => write_list(f, items, " OR ", 2),
            Predicate::Compare(op, left, right) => write!(f, "{left} {} {right}", op.symbol()),
            Predicate::IsNull { property, negated } => {
                write!(f, "{property} IS {}NULL", not(*negated))
            }
            Predicate::In {
                expr,
                list,
                negated,
            } => {
                write!(f, "{expr} {}IN (", not(*negated))?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    item.fmt(f)?;
                }
                f.write_str(")")
            }
            Predicate::Like {
                expr,
                pattern,
                negated,
            } => write!(f, "{expr} {}LIKE {pattern}", not(*negated)),
            Predicate::Exists(property) => write!(f, "EXISTS({property})"),
        }
    }
}
