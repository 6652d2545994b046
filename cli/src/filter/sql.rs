//! The WHERE clause: SQL text from a fixed vocabulary, every value a bind parameter.

use super::fields::{Kind, Op};
use super::{Condition, Expr, Value};

/// Bind parameters, all sent as text and cast in the statement.
#[derive(Debug, Default)]
pub struct Params(pub Vec<String>);

impl Params {
    /// Adds a value; returns its placeholder, typed text.
    pub fn bind(&mut self, value: impl Into<String>) -> String {
        self.0.push(value.into());
        format!("${}::text", self.0.len())
    }
}

/// `%text%` for ILIKE, with its wildcards escaped: `~` means contains, literally (as
/// `api_key_list`'s search does).
pub fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl Expr {
    /// The condition as SQL over `api_keys.key_list l`; never NULL.
    pub fn to_sql(&self, params: &mut Params) -> String {
        match self {
            Expr::Or(terms) | Expr::And(terms) => {
                let joiner = if matches!(self, Expr::Or(_)) {
                    " OR "
                } else {
                    " AND "
                };
                let parts: Vec<String> = terms.iter().map(|t| t.to_sql(params)).collect();
                format!("({})", parts.join(joiner))
            }
            Expr::Not(inner) => format!("NOT {}", inner.to_sql(params)),
            Expr::Condition(c) => c.to_sql(params),
        }
    }
}

impl Condition {
    fn to_sql(&self, params: &mut Params) -> String {
        let (op, negated) = self.op.positive();
        let col = self.field.column;
        let mut bind_all = |cast: &str| -> Vec<String> {
            self.values
                .iter()
                .map(|v| match v {
                    Value::Text(t) if op == Op::Match => params.bind(contains_pattern(t)),
                    Value::Text(t) | Value::Duration(t) | Value::Timestamp(t) => {
                        format!("{}{cast}", params.bind(t.clone()))
                    }
                    Value::Never => String::new(),
                })
                .collect()
        };
        let sql = match (&self.field.kind, op) {
            (Kind::Text, Op::Eq) => format!("{col} = {}", bind_all("")[0]),
            (Kind::Text, Op::Match) => format!("{col} ILIKE {}", bind_all("")[0]),
            (Kind::Text, _) => format!("{col} IN ({})", bind_all("").join(", ")),
            (Kind::Id, Op::Eq) => format!("{col} = {}", bind_all("::uuid")[0]),
            (Kind::Id, _) => format!("{col} IN ({})", bind_all("::uuid").join(", ")),
            (Kind::Enum { sql_type, .. }, Op::Eq) => {
                format!("{col} = {}", bind_all(&format!("::{sql_type}"))[0])
            }
            (Kind::Enum { sql_type, .. }, _) => {
                format!(
                    "{col} IN ({})",
                    bind_all(&format!("::{sql_type}")).join(", ")
                )
            }
            (Kind::Scope, Op::Eq) => format!("{} = ANY ({col})", bind_all("")[0]),
            (Kind::Scope, Op::Match) => format!(
                "EXISTS (SELECT FROM unnest({col}) AS s(scope) WHERE s.scope ILIKE {})",
                bind_all("")[0]
            ),
            (Kind::Scope, _) => format!("{col} && ARRAY[{}]", bind_all("").join(", ")),
            (Kind::Time { .. }, Op::Eq) => format!("{col} IS NULL"),
            (Kind::Time { future, .. }, _) => {
                let (cast, value) = match &self.values[0] {
                    Value::Duration(_) => ("::interval", true),
                    _ => ("::timestamptz", false),
                };
                let p = bind_all(cast).remove(0);
                match (*future, value) {
                    // Time left: a key that never expires has forever.
                    (true, true) => format!(
                        "coalesce({col}, 'infinity') {} statement_timestamp() + {p}",
                        op.symbol()
                    ),
                    (true, false) => format!("coalesce({col}, 'infinity') {} {p}", op.symbol()),
                    // Age: `created < 7d` is a creation after now - 7 days.
                    (false, true) => {
                        format!("{col} {} statement_timestamp() - {p}", op.flipped())
                    }
                    (false, false) => format!("{col} {} {p}", op.symbol()),
                }
            }
        };
        let sql = format!("coalesce({sql}, false)");
        if negated {
            format!("NOT {sql}")
        } else {
            sql
        }
    }
}
