//! The `--filter` language of `api-keys list`: conditions on the columns of
//! `api_keys.key_list`, combined with `and`, `or`, `not` and parentheses, compiled to a
//! WHERE clause in which every value is a bind parameter.
//!
//! ```text
//! filter    := or
//! or        := and { "or" and }
//! and       := unary { "and" unary }
//! unary     := "not" unary | "(" or ")" | condition
//! condition := field op value | field ["not"] "in" "(" value { "," value } ")"
//! op        := "=" | "!=" | "~" | "!~" | "<" | "<=" | ">" | ">="
//! value     := word | "double quoted" | 'single quoted'   (\ escapes a quote)
//! ```
//!
//! `~` is "contains", case-insensitive. Times compare with a duration measured from now
//! (`last_used < 7d`: used in the last 7 days; `expires < 30d`: expires within 30 days)
//! or with a date; `= never` matches a key never used or never expiring. Keywords are
//! case-insensitive. The README ("Command line") has the full table and examples.

mod fields;
mod lexer;
mod parser;
mod sql;
#[cfg(test)]
mod tests;

use std::fmt;

use fields::{Field, Op};
pub use parser::parse;
pub use sql::{contains_pattern, Params};

/// Longest filter accepted, in characters.
pub const MAX_LEN: usize = 1000;
/// Deepest nesting of parentheses and `not`.
pub const MAX_DEPTH: usize = 16;
/// Most conditions in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Most values in one `in (...)` list.
pub const MAX_LIST: usize = 100;
/// Longest value, in characters (the server's bound on a search).
pub const MAX_VALUE: usize = 200;

/// A syntax or meaning error at a 1-based character position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub pos: usize,
    pub msg: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.pos, self.msg)
    }
}

fn err<T>(pos: usize, msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        pos,
        msg: msg.into(),
    })
}

/// A value as the condition uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Text(String),
    /// PostgreSQL interval text.
    Duration(String),
    Timestamp(String),
    Never,
}

/// `field op value(s)`, checked: the operator applies to the field, the values fit it.
#[derive(Debug)]
pub struct Condition {
    field: &'static Field,
    op: Op,
    values: Vec<Value>,
}

/// A parsed filter.
#[derive(Debug)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Condition(Condition),
}
