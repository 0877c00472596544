//! `LIKE` patterns: `%` matches any run of characters (including none), `_` exactly one
//! character, and an optional `ESCAPE` character makes the following `%`, `_` or escape
//! character literal. Matching is ordinal and case-sensitive, by Unicode scalar value.

use std::fmt;

use super::ast::write_string;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `_`
    One,
    /// `%`
    Any,
}

/// A compiled `LIKE` pattern, keeping its source text for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    pattern: String,
    escape: Option<char>,
    tokens: Vec<Token>,
}

impl LikePattern {
    /// Compiles `pattern`; the error text says what is wrong (the caller adds where).
    pub(crate) fn new(pattern: &str, escape: Option<char>) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = if Some(c) == escape {
                match chars.next() {
                    Some(next) => Token::Char(next),
                    None => {
                        return Err(format!(
                            "the LIKE pattern ends with its escape character {c:?}"
                        ));
                    }
                }
            } else {
                match c {
                    '%' if tokens.last() == Some(&Token::Any) => continue,
                    '%' => Token::Any,
                    '_' => Token::One,
                    other => Token::Char(other),
                }
            };
            tokens.push(token);
        }
        Ok(LikePattern {
            pattern: pattern.to_owned(),
            escape,
            tokens,
        })
    }

    /// True when `text` matches the whole pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let pat = &self.tokens;
        let (mut p, mut t) = (0, 0);
        // Position of the last `%` seen and the text position it is currently matched up to.
        let mut backtrack: Option<(usize, usize)> = None;
        while t < text.len() {
            match pat.get(p) {
                Some(Token::Any) => {
                    backtrack = Some((p, t));
                    p += 1;
                }
                Some(Token::One) => {
                    p += 1;
                    t += 1;
                }
                Some(Token::Char(c)) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match backtrack {
                    // Let the last `%` swallow one more character and retry.
                    Some((star, consumed)) => {
                        backtrack = Some((star, consumed + 1));
                        p = star + 1;
                        t = consumed + 1;
                    }
                    None => return false,
                },
            }
        }
        pat[p..].iter().all(|token| *token == Token::Any)
    }
}

impl fmt::Display for LikePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_string(f, &self.pattern)?;
        if let Some(escape) = self.escape {
            f.write_str(" ESCAPE ")?;
            write_string(f, escape.encode_utf8(&mut [0; 4]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LikePattern;

    fn like(pattern: &str, escape: Option<char>, text: &str) -> bool {
        LikePattern::new(pattern, escape).unwrap().matches(text)
    }

    #[test]
    fn wildcards() {
        assert!(like("abc", None, "abc"));
        assert!(!like("abc", None, "abcd"));
        assert!(!like("abc", None, "ABC"));
        assert!(like("a%", None, "a"));
        assert!(like("a%", None, "abc"));
        assert!(like("%c", None, "abc"));
        assert!(like("%b%", None, "abc"));
        assert!(!like("%x%", None, "abc"));
        assert!(like("a_c", None, "abc"));
        assert!(!like("a_c", None, "ac"));
        assert!(like("%%%", None, ""));
        assert!(!like("_", None, ""));
        assert!(like("a%b%c", None, "aXbYbZc"));
        assert!(!like("a%b%c", None, "aXbYbZ"));
        assert!(like("é_", None, "éü"));
        assert!(like("%aab", None, "aaaab"));
    }

    #[test]
    fn escapes() {
        assert!(like("100!%", Some('!'), "100%"));
        assert!(!like("100!%", Some('!'), "1000"));
        assert!(like("a!_b", Some('!'), "a_b"));
        assert!(!like("a!_b", Some('!'), "axb"));
        assert!(like("a!!b", Some('!'), "a!b"));
        assert!(LikePattern::new("abc!", Some('!')).is_err());
    }
}
