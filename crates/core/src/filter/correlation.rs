//! Correlation filters: a set of `name = value` pairs that must all hold.

use std::collections::BTreeMap;
use std::fmt;

use super::ast::{write_name, write_value};
use super::eval::values_equal;
use crate::properties::{Properties, PropertyValue};

/// A correlation filter: matches a message that carries every listed property with an equal
/// value.
///
/// Equality is SQL `=`: an integer equals the float of the same value, a string never equals a
/// number, and comparison is case-sensitive. So a correlation filter matches exactly the
/// messages its SQL form (its `Display`, e.g. `a = 1 AND [b-c] = 'x'`) matches. With no
/// properties it matches every message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorrelationFilter {
    properties: BTreeMap<String, PropertyValue>,
}

impl CorrelationFilter {
    /// A filter requiring each of `properties`; a later duplicate name replaces an earlier one.
    pub fn new(properties: impl IntoIterator<Item = (String, PropertyValue)>) -> Self {
        CorrelationFilter {
            properties: properties.into_iter().collect(),
        }
    }

    /// The required properties, by name.
    pub fn properties(&self) -> &BTreeMap<String, PropertyValue> {
        &self.properties
    }

    /// True when `props` carries every required property with an equal value.
    pub fn matches(&self, props: &Properties) -> bool {
        self.properties.iter().all(|(name, expected)| {
            props
                .get(name)
                .is_some_and(|actual| values_equal(expected, actual))
        })
    }
}

/// The equivalent SQL filter text (`TRUE` when empty).
impl fmt::Display for CorrelationFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.properties.is_empty() {
            return f.write_str("TRUE");
        }
        for (i, (name, value)) in self.properties.iter().enumerate() {
            if i > 0 {
                f.write_str(" AND ")?;
            }
            write_name(f, name)?;
            f.write_str(" = ")?;
            write_value(f, value)?;
        }
        Ok(())
    }
}
