//! Evaluation of a SQL filter over message properties, with Service Bus's three-valued logic.
//!
//! A property absent from the message (or a system property eventyard does not carry) is
//! *unknown*, like SQL `NULL`. Comparisons, arithmetic, `IN` and `LIKE` with an unknown operand
//! are unknown; so are operations on mismatched types (a string compared with a number, `LIKE`
//! on a number, ordering booleans), integer overflow and integer division by zero.
//! `AND`/`OR`/`NOT` follow Kleene logic, and a filter matches only when it is TRUE.

use std::cmp::Ordering;

use super::ast::{ArithOp, CompareOp, Expr, Literal, Predicate, Property};
use crate::properties::{Properties, PropertyValue};

/// A three-valued truth value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }

    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }

    fn negate_if(self, negated: bool) -> Tri {
        if negated { self.not() } else { self }
    }
}

/// A runtime value; strings are borrowed from the filter or the message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl<'a> From<&'a PropertyValue> for Value<'a> {
    fn from(v: &'a PropertyValue) -> Self {
        match v {
            PropertyValue::Bool(b) => Value::Bool(*b),
            PropertyValue::Int(i) => Value::Int(*i),
            PropertyValue::Float(x) => Value::Float(*x),
            PropertyValue::String(s) => Value::Str(s),
        }
    }
}

impl<'a> From<&'a Literal> for Value<'a> {
    fn from(l: &'a Literal) -> Self {
        match l {
            Literal::Null => Value::Null,
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Int(i) => Value::Int(*i),
            Literal::Float(x) => Value::Float(*x),
            Literal::String(s) => Value::Str(s),
        }
    }
}

/// True when `predicate` evaluates to TRUE over `props`.
pub(crate) fn evaluate(predicate: &Predicate, props: &Properties) -> bool {
    eval(predicate, props) == Tri::True
}

/// The SQL `=` of two property values: TRUE only for equal values of compatible types
/// (integers and floats compare numerically).
pub(crate) fn values_equal(a: &PropertyValue, b: &PropertyValue) -> bool {
    compare(CompareOp::Eq, a.into(), b.into()) == Tri::True
}

fn lookup<'a>(property: &Property, props: &'a Properties) -> Option<&'a PropertyValue> {
    property.resolve().and_then(|name| props.get(name))
}

fn eval(predicate: &Predicate, props: &Properties) -> Tri {
    match predicate {
        Predicate::Const(b) => Tri::from_bool(*b),
        Predicate::Not(inner) => eval(inner, props).not(),
        Predicate::And(items) => {
            let mut result = Tri::True;
            for item in items {
                match eval(item, props) {
                    Tri::False => return Tri::False,
                    Tri::Unknown => result = Tri::Unknown,
                    Tri::True => {}
                }
            }
            result
        }
        Predicate::Or(items) => {
            let mut result = Tri::False;
            for item in items {
                match eval(item, props) {
                    Tri::True => return Tri::True,
                    Tri::Unknown => result = Tri::Unknown,
                    Tri::False => {}
                }
            }
            result
        }
        Predicate::Compare(op, left, right) => {
            compare(*op, value(left, props), value(right, props))
        }
        Predicate::IsNull { property, negated } => {
            Tri::from_bool(lookup(property, props).is_none()).negate_if(*negated)
        }
        Predicate::Exists(property) => Tri::from_bool(lookup(property, props).is_some()),
        Predicate::In {
            expr,
            list,
            negated,
        } => {
            let needle = value(expr, props);
            if needle == Value::Null {
                return Tri::Unknown;
            }
            let mut result = Tri::False;
            for item in list {
                match compare(CompareOp::Eq, needle, value(item, props)) {
                    Tri::True => {
                        result = Tri::True;
                        break;
                    }
                    Tri::Unknown => result = Tri::Unknown,
                    Tri::False => {}
                }
            }
            result.negate_if(*negated)
        }
        Predicate::Like {
            expr,
            pattern,
            negated,
        } => match value(expr, props) {
            Value::Str(s) => Tri::from_bool(pattern.matches(s)).negate_if(*negated),
            _ => Tri::Unknown,
        },
    }
}

fn value<'a>(expr: &'a Expr, props: &'a Properties) -> Value<'a> {
    match expr {
        Expr::Literal(l) => l.into(),
        Expr::Property(p) => lookup(p, props).map_or(Value::Null, Value::from),
        Expr::Neg(inner) => match value(inner, props) {
            Value::Int(i) => i.checked_neg().map_or(Value::Null, Value::Int),
            Value::Float(x) => Value::Float(-x),
            _ => Value::Null,
        },
        Expr::Arith(op, left, right) => arith(*op, value(left, props), value(right, props)),
    }
}

fn arith<'a>(op: ArithOp, left: Value<'a>, right: Value<'a>) -> Value<'a> {
    match (left, right) {
        (Value::Int(a), Value::Int(b)) => {
            let result = match op {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
                ArithOp::Div => a.checked_div(b),
                ArithOp::Rem => a.checked_rem(b),
            };
            result.map_or(Value::Null, Value::Int)
        }
        (a, b) => match (as_float(a), as_float(b)) {
            (Some(a), Some(b)) => Value::Float(match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div => a / b,
                ArithOp::Rem => a % b,
            }),
            _ => Value::Null,
        },
    }
}

fn as_float(v: Value<'_>) -> Option<f64> {
    match v {
        #[allow(clippy::cast_precision_loss)] // SQL semantics: mixed arithmetic is in doubles
        Value::Int(i) => Some(i as f64),
        Value::Float(x) => Some(x),
        _ => None,
    }
}

fn compare(op: CompareOp, left: Value<'_>, right: Value<'_>) -> Tri {
    let ordering = match (left, right) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(&b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(&b),
        (Value::Int(a), Value::Float(b)) => cmp_int_float(a, b),
        (Value::Float(a), Value::Int(b)) => cmp_int_float(b, a).map(Ordering::reverse),
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => {
            return match op {
                CompareOp::Eq => Tri::from_bool(a == b),
                CompareOp::Ne => Tri::from_bool(a != b),
                _ => Tri::Unknown,
            };
        }
        _ => None,
    };
    let Some(ordering) = ordering else {
        return Tri::Unknown;
    };
    Tri::from_bool(match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
    })
}

/// Exact comparison of an integer with a float (no rounding of large integers); `None` for NaN.
#[allow(clippy::cast_possible_truncation)] // `t` is integral and within i64's range
fn cmp_int_float(i: i64, x: f64) -> Option<Ordering> {
    // 2^63: the first float above i64::MAX; -2^63 is i64::MIN exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if x.is_nan() {
        return None;
    }
    if x >= LIMIT {
        return Some(Ordering::Less);
    }
    if x < -LIMIT {
        return Some(Ordering::Greater);
    }
    let t = x.trunc();
    Some(i.cmp(&(t as i64)).then_with(|| {
        if x > t {
            Ordering::Less
        } else if x < t {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::cmp_int_float;
    use std::cmp::Ordering::{Equal, Greater, Less};

    #[test]
    fn int_float_comparison_is_exact() {
        assert_eq!(cmp_int_float(3, 3.0), Some(Equal));
        assert_eq!(cmp_int_float(3, 3.5), Some(Less));
        assert_eq!(cmp_int_float(-3, -3.5), Some(Greater));
        assert_eq!(cmp_int_float(0, -0.5), Some(Greater));
        assert_eq!(cmp_int_float(i64::MAX, 2f64.powi(63)), Some(Less));
        assert_eq!(cmp_int_float(i64::MIN, -(2f64.powi(63))), Some(Equal));
        assert_eq!(cmp_int_float(1, f64::INFINITY), Some(Less));
        assert_eq!(cmp_int_float(1, f64::NEG_INFINITY), Some(Greater));
        assert_eq!(cmp_int_float(1, f64::NAN), None);
    }
}
