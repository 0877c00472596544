//! Filter errors.

/// An error building a [`Filter`](super::Filter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The SQL filter expression is not valid.
    #[error("invalid SQL filter {}: {message}", abbreviate(expression))]
    Parse {
        /// The expression as given.
        expression: String,
        /// Byte offset into `expression` where the problem was found.
        position: usize,
        /// What is wrong and where, e.g. `expected a comparison operator at column 14`.
        message: String,
    },
}

impl FilterError {
    /// A parse error at byte offset `position`; `what` says what is wrong, and the location
    /// (`at column N`, or `at line L, column N` for multi-line input) is appended.
    pub(crate) fn parse(expression: &str, position: usize, what: &str) -> Self {
        let position = floor_char_boundary(expression, position.min(expression.len()));
        let before = &expression[..position];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let location = if line > 1 {
            format!("line {line}, column {column}")
        } else {
            format!("column {column}")
        };
        FilterError::Parse {
            expression: expression.to_owned(),
            position,
            message: format!("{what} at {location}"),
        }
    }
}

fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The expression quoted for an error message, shortened if long.
fn abbreviate(expression: &str) -> String {
    const MAX_CHARS: usize = 80;
    match expression.char_indices().nth(MAX_CHARS) {
        None => format!("{expression:?}"),
        Some((end, _)) => format!("{:?}...", &expression[..end]),
    }
}
