//! Subscription filters: Azure Service Bus's SQL filter language and correlation filters,
//! evaluated over message [`Properties`].
//!
//! A filter only ever looks at properties, never at the payload, so a transport can apply it
//! natively ([`Filter::exact_matches`] for header bindings, the SQL text for Service Bus rules)
//! or in the client with the same results.
//!
//! # SQL filter language
//!
//! The [Service Bus SQL filter syntax], minus functions (`newid()`, `property()`):
//!
//! - **Properties**: `name` (a letter or `_`, then letters, digits and `_`), `[any name]`
//!   (`]]` for a `]`, needed for names such as `[cs-tenant-id]`) or `"any name"` (`""` for a
//!   `"`), optionally scoped: `user.name` is the same as `name`; `sys.MessageId`,
//!   `sys.CorrelationId` and `sys.Label`/`sys.Subject` read `cs-event-id`,
//!   `cs-correlation-id` and `cs-event-type`, any other `sys.` property is always absent.
//!   Property names are case-sensitive; keywords and `sys.` names are not. An unbracketed
//!   `cs-tenant-id` is rejected with a hint rather than read as `cs - tenant - id`.
//! - **Literals**: `'text'` (`''` for a quote), integers (64-bit), decimals and scientific
//!   notation (`1.5`, `.5`, `1e3`: 64-bit floats), `TRUE`, `FALSE`, `NULL`.
//! - **Conditions**: `=`, `<>` (or `!=`), `<`, `<=`, `>`, `>=`; `x [NOT] IN (v, ...)`;
//!   `x [NOT] LIKE 'pattern' [ESCAPE 'c']` (`%` any run, `_` one character);
//!   `property IS [NOT] NULL`; `EXISTS(property)`; `NOT`, `AND`, `OR`, parentheses; a bare
//!   `TRUE` or `FALSE`. Precedence, tightest first: comparisons, `NOT`, `AND`, `OR`.
//! - **Arithmetic** on numbers: `+ - * / %` and unary `-`/`+` (integer division for integers).
//! - **Limits**: at most 16 parentheses open at once and a syntax tree at most 128 levels deep
//!   (`AND`/`OR` chains are flat and do not count), so untrusted input cannot exhaust the stack.
//!
//! Evaluation follows Service Bus's three-valued logic: an absent property is *unknown*, and so
//! is every comparison, arithmetic, `IN` or `LIKE` involving it; comparing a string with a
//! number, `LIKE` on a non-string, ordering booleans, integer overflow and integer division by
//! zero are unknown too. `unknown AND false` is false, `unknown OR true` is true, `NOT unknown`
//! is unknown, and a filter matches only when its condition is TRUE. `IS NULL` is true exactly
//! for an absent property and `EXISTS` for a present one. Integers and floats compare
//! numerically; strings compare ordinally and case-sensitively.
//!
//! [Service Bus SQL filter syntax]: https://learn.microsoft.com/azure/service-bus-messaging/service-bus-messaging-sql-filter

mod ast;
mod build;
mod correlation;
mod error;
mod eval;
mod grammar;
mod like;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use correlation::CorrelationFilter;
pub use error::FilterError;

use crate::properties::{Properties, PropertyValue};

/// A subscription filter: which messages a subscription receives.
///
/// Serialized as `{"all":{}}`, `{"sql":"<expression>"}` or
/// `{"correlation":{"name":value,...}}`; deserializing parses the SQL again and reports parse
/// errors as deserialization errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FilterRepr", into = "FilterRepr")]
pub enum Filter {
    /// Matches every message.
    All,
    /// A Service Bus SQL filter expression.
    Sql(SqlFilter),
    /// A correlation filter: properties that must all be present and equal.
    Correlation(CorrelationFilter),
}

impl Filter {
    /// The filter matching every message.
    pub fn all() -> Filter {
        Filter::All
    }

    /// Parses a Service Bus SQL filter expression (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// [`FilterError::Parse`] naming what is wrong and at which column.
    pub fn sql(expression: &str) -> Result<Filter, FilterError> {
        SqlFilter::new(expression).map(Filter::Sql)
    }

    /// A correlation filter requiring each of `props` (see [`CorrelationFilter`]).
    pub fn correlation(props: impl IntoIterator<Item = (String, PropertyValue)>) -> Filter {
        Filter::Correlation(CorrelationFilter::new(props))
    }

    /// True when a message with these properties passes the filter.
    pub fn matches(&self, props: &Properties) -> bool {
        match self {
            Filter::All => true,
            Filter::Sql(sql) => sql.matches(props),
            Filter::Correlation(correlation) => correlation.matches(props),
        }
    }

    /// If the filter is `All` or a pure conjunction of `property = literal` comparisons
    /// (correlation filters always are), returns those equalities, so a transport can apply it
    /// natively (e.g. RabbitMQ headers binding x-match=all).
    ///
    /// `All` gives an empty list. For SQL, operands that are always true (`1=1`, `TRUE`) are
    /// skipped and `sys.` names are mapped to their `cs-*` properties; `None` is returned for
    /// anything else, including `NULL` literals, unknown `sys.` properties and two different
    /// values for one name. Note that SQL `=` also matches an integer against the equal
    /// float (`a = 1` matches `a` = `1.0`), which a typed header match may not.
    pub fn exact_matches(&self) -> Option<Vec<(String, PropertyValue)>> {
        match self {
            Filter::All => Some(Vec::new()),
            Filter::Sql(sql) => sql.predicate.equalities(),
            Filter::Correlation(correlation) => Some(
                correlation
                    .properties()
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ),
        }
    }
}

/// Canonical SQL text: `TRUE` for `All`, the normalized expression for SQL filters (which
/// parses back to an equal filter), and the equivalent conjunction for correlation filters.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::All => f.write_str("TRUE"),
            Filter::Sql(sql) => sql.fmt(f),
            Filter::Correlation(correlation) => correlation.fmt(f),
        }
    }
}

/// A parsed SQL filter: the original expression text and its syntax tree.
///
/// Two SQL filters are equal when their syntax trees are, whatever the spelling: `a=1` equals
/// `(a = 1)`, `a != 1` equals `a <> 1` and `x and y` equals `x AND y`.
#[derive(Debug, Clone)]
pub struct SqlFilter {
    expression: String,
    predicate: ast::Predicate,
}

impl SqlFilter {
    /// Parses a Service Bus SQL filter expression.
    ///
    /// # Errors
    ///
    /// [`FilterError::Parse`] naming what is wrong and at which column.
    pub fn new(expression: &str) -> Result<SqlFilter, FilterError> {
        Ok(SqlFilter {
            expression: expression.to_owned(),
            predicate: grammar::parse(expression)?,
        })
    }

    /// The expression text as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// True when a message with these properties passes the filter.
    pub fn matches(&self, props: &Properties) -> bool {
        eval::evaluate(&self.predicate, props)
    }
}

impl PartialEq for SqlFilter {
    fn eq(&self, other: &Self) -> bool {
        self.predicate == other.predicate
    }
}

/// The canonical (normalized) expression text, which parses back to an equal filter.
impl fmt::Display for SqlFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.predicate.fmt(f)
    }
}

/// The serialized form of [`Filter`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FilterRepr {
    All {},
    Sql(String),
    Correlation(BTreeMap<String, PropertyValue>),
}

impl From<Filter> for FilterRepr {
    fn from(filter: Filter) -> Self {
        match filter {
            Filter::All => FilterRepr::All {},
            Filter::Sql(sql) => FilterRepr::Sql(sql.expression),
            Filter::Correlation(correlation) => {
                FilterRepr::Correlation(correlation.properties().clone())
            }
        }
    }
}

impl TryFrom<FilterRepr> for Filter {
    type Error = FilterError;

    fn try_from(repr: FilterRepr) -> Result<Self, Self::Error> {
        Ok(match repr {
            FilterRepr::All {} => Filter::All,
            FilterRepr::Sql(expression) => Filter::sql(&expression)?,
            FilterRepr::Correlation(properties) => Filter::correlation(properties),
        })
    }
}
