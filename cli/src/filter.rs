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

use std::fmt;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Match,
    NotMatch,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Match => "~",
            Op::NotMatch => "!~",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
            Op::NotIn => "not in",
        }
    }

    /// The positive operator this one negates, if any (`!=` is `not =`).
    fn positive(self) -> (Op, bool) {
        match self {
            Op::Ne => (Op::Eq, true),
            Op::NotMatch => (Op::Match, true),
            Op::NotIn => (Op::In, true),
            op => (op, false),
        }
    }

    /// `a op b` as `b op' a`: what a comparison of ages means for timestamps.
    fn flipped(self) -> &'static str {
        match self {
            Op::Lt => ">",
            Op::Le => ">=",
            Op::Gt => "<",
            Op::Ge => "<=",
            op => op.symbol(),
        }
    }
}

/// What a field holds, which decides its operators and values.
#[derive(Debug)]
enum Kind {
    /// Free text.
    Text,
    /// A uuid.
    Id,
    /// One of a PostgreSQL enum's labels.
    Enum {
        sql_type: &'static str,
        labels: &'static [&'static str],
    },
    /// The scopes array.
    Scope,
    /// A timestamp in the past (created, last used) or the future (expires); NULL
    /// means never.
    Time { future: bool, nullable: bool },
}

#[derive(Debug)]
pub struct Field {
    names: &'static [&'static str],
    column: &'static str,
    kind: Kind,
}

const FIELDS: &[Field] = &[
    Field {
        names: &["id"],
        column: "l.id",
        kind: Kind::Id,
    },
    Field {
        names: &["prefix"],
        column: "l.prefix",
        kind: Kind::Text,
    },
    Field {
        names: &["name"],
        column: "l.name",
        kind: Kind::Text,
    },
    Field {
        names: &["description"],
        column: "l.description",
        kind: Kind::Text,
    },
    Field {
        names: &["owner"],
        column: "l.owner",
        kind: Kind::Text,
    },
    Field {
        names: &["type", "key_type"],
        column: "l.key_type",
        kind: Kind::Enum {
            sql_type: "api_keys.key_type",
            labels: &["service", "user"],
        },
    },
    Field {
        names: &["env", "environment"],
        column: "l.environment",
        kind: Kind::Enum {
            sql_type: "api_keys.environment",
            labels: &["production", "staging", "development"],
        },
    },
    Field {
        names: &["status"],
        column: "l.status",
        kind: Kind::Enum {
            sql_type: "api_keys.key_status",
            labels: &["active", "suspended", "revoked", "expired"],
        },
    },
    Field {
        names: &["scope", "scopes", "permission", "permissions"],
        column: "l.scopes",
        kind: Kind::Scope,
    },
    Field {
        names: &["created", "created_at"],
        column: "l.created_at",
        kind: Kind::Time {
            future: false,
            nullable: false,
        },
    },
    Field {
        names: &["last_used", "last_used_at"],
        column: "l.last_used_at",
        kind: Kind::Time {
            future: false,
            nullable: true,
        },
    },
    Field {
        names: &["expires", "expires_at"],
        column: "l.expires_at",
        kind: Kind::Time {
            future: true,
            nullable: true,
        },
    },
];

fn field_names() -> String {
    FIELDS
        .iter()
        .map(|f| f.names[0])
        .collect::<Vec<_>>()
        .join(", ")
}

impl Field {
    fn name(&self) -> &'static str {
        self.names[0]
    }

    fn operators(&self) -> &'static [Op] {
        match self.kind {
            Kind::Text | Kind::Scope => {
                &[Op::Eq, Op::Ne, Op::Match, Op::NotMatch, Op::In, Op::NotIn]
            }
            Kind::Id | Kind::Enum { .. } => &[Op::Eq, Op::Ne, Op::In, Op::NotIn],
            Kind::Time { .. } => &[Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Eq, Op::Ne],
        }
    }
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

#[derive(Debug)]
pub struct Condition {
    field: &'static Field,
    op: Op,
    values: Vec<Value>,
}

#[derive(Debug)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Condition(Condition),
}

// ---------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
    Open,
    Close,
    Comma,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || "_:*/.@+-#".contains(c)
}

fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Tok::Open, 1),
            ')' => (Tok::Close, 1),
            ',' => (Tok::Comma, 1),
            '=' => (Tok::Op(Op::Eq), 1),
            '~' => (Tok::Op(Op::Match), 1),
            '!' if next == Some('=') => (Tok::Op(Op::Ne), 2),
            '!' if next == Some('~') => (Tok::Op(Op::NotMatch), 2),
            '<' if next == Some('=') => (Tok::Op(Op::Le), 2),
            '<' => (Tok::Op(Op::Lt), 1),
            '>' if next == Some('=') => (Tok::Op(Op::Ge), 2),
            '>' => (Tok::Op(Op::Gt), 1),
            '"' | '\'' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return err(pos, format!("unterminated string (no closing {c})")),
                        Some('\\') if j + 1 < chars.len() => {
                            text.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(&q) if q == c => break,
                        Some(&other) => {
                            text.push(other);
                            j += 1;
                        }
                    }
                }
                (Tok::Quoted(text), j + 1 - i)
            }
            c if is_word_char(c) => {
                let len = chars[i..].iter().take_while(|&&c| is_word_char(c)).count();
                (Tok::Word(chars[i..i + len].iter().collect()), len)
            }
            '!' => return err(pos, "unexpected '!' (did you mean != or !~?)"),
            c => return err(pos, format!("unexpected character {c:?}")),
        };
        tokens.push(Token { tok, pos });
        i += len;
    }
    Ok(tokens)
}

fn describe(t: Option<&Token>) -> String {
    match t.map(|t| &t.tok) {
        None => "the end of the filter".into(),
        Some(Tok::Word(w)) => format!("'{w}'"),
        Some(Tok::Quoted(s)) => format!("\"{s}\""),
        Some(Tok::Op(op)) => format!("'{}'", op.symbol()),
        Some(Tok::Open) => "'('".into(),
        Some(Tok::Close) => "')'".into(),
        Some(Tok::Comma) => "','".into(),
    }
}

// ---------------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Position just past the input, for errors at its end.
    end: usize,
    conditions: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut terms = vec![self.and(depth)?];
        while self.keyword("or") {
            self.at += 1;
            terms.push(self.and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut terms = vec![self.unary(depth)?];
        while self.keyword("and") {
            self.at += 1;
            terms.push(self.unary(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth >= MAX_DEPTH {
            return err(
                self.pos(),
                format!("nested too deeply (at most {MAX_DEPTH} levels of parentheses and not)"),
            );
        }
        if self.keyword("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if matches!(self.peek(), Some(Token { tok: Tok::Open, .. })) {
            self.at += 1;
            let inner = self.or(depth + 1)?;
            if !matches!(
                self.peek(),
                Some(Token {
                    tok: Tok::Close,
                    ..
                })
            ) {
                return err(
                    self.pos(),
                    format!("expected ')', 'and' or 'or', got {}", describe(self.peek())),
                );
            }
            self.at += 1;
            return Ok(inner);
        }
        self.condition().map(Expr::Condition)
    }

    fn condition(&mut self) -> Result<Condition, FilterError> {
        let pos = self.pos();
        let field = match self.peek() {
            Some(Token {
                tok: Tok::Word(w), ..
            }) => {
                let w = w.to_ascii_lowercase();
                match FIELDS.iter().find(|f| f.names.contains(&w.as_str())) {
                    Some(f) => f,
                    None => {
                        return err(
                            pos,
                            format!("unknown field '{w}' (fields: {})", field_names()),
                        )
                    }
                }
            }
            t => {
                return err(
                    pos,
                    format!(
                        "expected a condition (a field: {}), got {}",
                        field_names(),
                        describe(t)
                    ),
                )
            }
        };
        self.at += 1;
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return err(pos, format!("more than {MAX_CONDITIONS} conditions"));
        }

        let op_pos = self.pos();
        let op = match self.peek().map(|t| &t.tok) {
            Some(Tok::Op(op)) => *op,
            _ if self.keyword("in") => Op::In,
            _ if self.keyword("not") => {
                self.at += 1;
                if !self.keyword("in") {
                    return err(self.pos(), "expected 'in' after 'not'");
                }
                Op::NotIn
            }
            _ => {
                return err(
                    op_pos,
                    format!(
                        "expected an operator after '{}' ({}), got {}",
                        field.name(),
                        symbols(field.operators()),
                        describe(self.peek())
                    ),
                )
            }
        };
        self.at += 1;
        if !field.operators().contains(&op) {
            return err(
                op_pos,
                format!(
                    "operator '{}' does not apply to {} (use {})",
                    op.symbol(),
                    field.name(),
                    symbols(field.operators())
                ),
            );
        }

        let mut values = Vec::new();
        if matches!(op, Op::In | Op::NotIn) {
            if !matches!(self.peek(), Some(Token { tok: Tok::Open, .. })) {
                return err(self.pos(), format!("expected '(' after '{}'", op.symbol()));
            }
            self.at += 1;
            loop {
                values.push(self.value(field, op)?);
                if values.len() > MAX_LIST {
                    return err(self.pos(), format!("more than {MAX_LIST} values in a list"));
                }
                match self.peek().map(|t| &t.tok) {
                    Some(Tok::Comma) => self.at += 1,
                    Some(Tok::Close) => {
                        self.at += 1;
                        break;
                    }
                    _ => {
                        return err(
                            self.pos(),
                            format!("expected ',' or ')', got {}", describe(self.peek())),
                        )
                    }
                }
            }
        } else {
            values.push(self.value(field, op)?);
        }
        Ok(Condition { field, op, values })
    }

    /// One value, read as `field` and `op` need it.
    fn value(&mut self, field: &Field, op: Op) -> Result<Value, FilterError> {
        let pos = self.pos();
        let (text, quoted) = match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => (w.clone(), false),
            Some(Tok::Quoted(s)) => (s.clone(), true),
            _ => {
                let after = if matches!(op, Op::In | Op::NotIn) {
                    "in a list".to_owned()
                } else {
                    format!("after '{}'", op.symbol())
                };
                return err(
                    pos,
                    format!("expected a value {after}, got {}", describe(self.peek())),
                );
            }
        };
        self.at += 1;
        if text.chars().count() > MAX_VALUE {
            return err(pos, format!("value longer than {MAX_VALUE} characters"));
        }
        match &field.kind {
            Kind::Text | Kind::Scope => Ok(Value::Text(text)),
            Kind::Id => {
                if crate::keyref::is_uuid(&text) {
                    Ok(Value::Text(text.to_ascii_lowercase()))
                } else {
                    err(pos, format!("'{text}' is not a key id (a uuid)"))
                }
            }
            Kind::Enum { labels, .. } => {
                let label = text.to_ascii_lowercase();
                if labels.contains(&label.as_str()) {
                    Ok(Value::Text(label))
                } else {
                    err(
                        pos,
                        format!(
                            "unknown {} '{text}' (one of: {})",
                            field.name(),
                            labels.join(", ")
                        ),
                    )
                }
            }
            Kind::Time { nullable, .. } => {
                let never = !quoted && text.eq_ignore_ascii_case("never");
                match op {
                    Op::Eq | Op::Ne if never && *nullable => Ok(Value::Never),
                    Op::Eq | Op::Ne if never => {
                        err(pos, format!("{} is never empty", field.name()))
                    }
                    Op::Eq | Op::Ne => err(
                        pos,
                        format!(
                            "'{}' compares {} only with never; use <, <=, >, >= with a duration (7d) or a date (2025-01-31)",
                            op.symbol(),
                            field.name()
                        ),
                    ),
                    _ => match crate::duration::parse(&text) {
                        Some(interval) => Ok(Value::Duration(interval)),
                        None if looks_like_date(&text) => Ok(Value::Timestamp(text)),
                        None => err(
                            pos,
                            format!(
                                "expected a duration (7d, 12h, 30m) or a date (2025-01-31, '2025-01-31 10:00') after '{}', got '{text}'",
                                op.symbol()
                            ),
                        ),
                    },
                }
            }
        }
    }
}

fn symbols(ops: &[Op]) -> String {
    ops.iter()
        .map(|o| o.symbol())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `YYYY-MM-DD` and anything after it: the server reads the rest (time, zone) and says
/// so when it cannot.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// Parses a filter expression.
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    let len = input.chars().count();
    if len > MAX_LEN {
        return err(
            MAX_LEN + 1,
            format!("the filter is longer than {MAX_LEN} characters"),
        );
    }
    let tokens = tokenize(input)?;
    if tokens.is_empty() {
        return err(1, "the filter is empty");
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        end: len + 1,
        conditions: 0,
    };
    let expr = parser.or(0)?;
    if let Some(t) = parser.peek() {
        let msg = if t.tok == Tok::Close {
            "unbalanced ')'".to_owned()
        } else {
            format!("expected 'and', 'or' or the end, got {}", describe(Some(t)))
        };
        return err(t.pos, msg);
    }
    Ok(expr)
}

// ---------------------------------------------------------------------------------
// SQL

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compile(input: &str) -> (String, Vec<String>) {
        let mut params = Params::default();
        let sql = parse(input)
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .to_sql(&mut params);
        (sql, params.0)
    }

    fn error(input: &str) -> String {
        parse(input).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn conditions_compile_to_bound_parameters() {
        assert_eq!(
            compile("status = active"),
            (
                "coalesce(l.status = $1::text::api_keys.key_status, false)".into(),
                vec!["active".into()]
            )
        );
        assert_eq!(
            compile("name ~ '50%_off'"),
            (
                "coalesce(l.name ILIKE $1::text, false)".into(),
                vec!["%50\\%\\_off%".into()]
            )
        );
        assert_eq!(
            compile("env not in (production, Staging)").0,
            "NOT coalesce(l.environment IN ($1::text::api_keys.environment, $2::text::api_keys.environment), false)"
        );
        assert_eq!(
            compile("scope = runs:read").0,
            "coalesce($1::text = ANY (l.scopes), false)"
        );
        assert_eq!(
            compile("scope in (runs:read, 'projects/42/*:write')"),
            (
                "coalesce(l.scopes && ARRAY[$1::text, $2::text], false)".into(),
                vec!["runs:read".into(), "projects/42/*:write".into()]
            )
        );
        assert_eq!(
            compile("last_used < 7d"),
            (
                "coalesce(l.last_used_at > statement_timestamp() - $1::text::interval, false)"
                    .into(),
                vec!["7 days".into()]
            )
        );
        assert_eq!(
            compile("expires <= 30d").0,
            "coalesce(coalesce(l.expires_at, 'infinity') <= statement_timestamp() + $1::text::interval, false)"
        );
        assert_eq!(
            compile("created >= '2025-01-31 10:00'"),
            (
                "coalesce(l.created_at >= $1::text::timestamptz, false)".into(),
                vec!["2025-01-31 10:00".into()]
            )
        );
        assert_eq!(
            compile("last_used = never").0,
            "coalesce(l.last_used_at IS NULL, false)"
        );
        assert_eq!(
            compile("expires != NEVER").0,
            "NOT coalesce(l.expires_at IS NULL, false)"
        );
        assert_eq!(
            compile("id = 0E8A3A0C-1B2C-4D5E-8F90-A1B2C3D4E5F6").1,
            vec!["0e8a3a0c-1b2c-4d5e-8f90-a1b2c3d4e5f6".to_owned()]
        );
        assert_eq!(
            compile("description != \"say \\\"hi\\\"\"").1,
            vec!["say \"hi\"".to_owned()]
        );
    }

    #[test]
    fn precedence_and_grouping() {
        let (sql, params) = compile(
            "status = active and env in (production, staging) and (name ~ ci or scope = runs:read) and last_used < 7d and expires < 30d",
        );
        assert_eq!(
            params,
            [
                "active",
                "production",
                "staging",
                "%ci%",
                "runs:read",
                "7 days",
                "30 days"
            ]
        );
        assert!(sql.starts_with("(coalesce(l.status"), "{sql}");
        assert!(
            sql.contains(" AND (coalesce(l.name ILIKE $4::text, false) OR coalesce($5::text = ANY"),
            "{sql}"
        );
        // and binds tighter than or; not tighter than and.
        assert_eq!(
            compile("not type = user and owner = a OR owner = b").0,
            "((NOT coalesce(l.key_type = $1::text::api_keys.key_type, false) AND coalesce(l.owner = $2::text, false)) OR coalesce(l.owner = $3::text, false))"
        );
        assert_eq!(
            compile("NOT (owner = a or owner = b)").0,
            "NOT (coalesce(l.owner = $1::text, false) OR coalesce(l.owner = $2::text, false))"
        );
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(
            error("status ="),
            "at 9: expected a value after '=', got the end of the filter"
        );
        assert_eq!(error("name = ci and"), "at 14: expected a condition (a field: id, prefix, name, description, owner, type, env, status, scope, created, last_used, expires), got the end of the filter");
        assert_eq!(error("colour = red"), "at 1: unknown field 'colour' (fields: id, prefix, name, description, owner, type, env, status, scope, created, last_used, expires)");
        assert_eq!(
            error("status = actve"),
            "at 10: unknown status 'actve' (one of: active, suspended, revoked, expired)"
        );
        assert_eq!(
            error("status ~ act"),
            "at 8: operator '~' does not apply to status (use =, !=, in, not in)"
        );
        assert_eq!(
            error("name active"),
            "at 6: expected an operator after 'name' (=, !=, ~, !~, in, not in), got 'active'"
        );
        assert_eq!(
            error("(name = a"),
            "at 10: expected ')', 'and' or 'or', got the end of the filter"
        );
        assert_eq!(error("name = a)"), "at 9: unbalanced ')'");
        assert_eq!(
            error("name = a owner = b"),
            "at 10: expected 'and', 'or' or the end, got 'owner'"
        );
        assert_eq!(
            error("name = 'abc"),
            "at 8: unterminated string (no closing ')"
        );
        assert_eq!(
            error("name ! a"),
            "at 6: unexpected '!' (did you mean != or !~?)"
        );
        assert_eq!(error("name = a;"), "at 9: unexpected character ';'");
        assert_eq!(error("env in production"), "at 8: expected '(' after 'in'");
        assert_eq!(
            error("env in (production staging)"),
            "at 20: expected ',' or ')', got 'staging'"
        );
        assert_eq!(
            error("env not production"),
            "at 9: expected 'in' after 'not'"
        );
        assert_eq!(error("last_used < soon"), "at 13: expected a duration (7d, 12h, 30m) or a date (2025-01-31, '2025-01-31 10:00') after '<', got 'soon'");
        assert_eq!(error("expires = 7d"), "at 11: '=' compares expires only with never; use <, <=, >, >= with a duration (7d) or a date (2025-01-31)");
        assert_eq!(error("created = never"), "at 11: created is never empty");
        assert_eq!(error("id = 42"), "at 6: '42' is not a key id (a uuid)");
        assert_eq!(error("   "), "at 1: the filter is empty");
    }

    #[test]
    fn bounds() {
        assert!(error(&"x".repeat(MAX_LEN + 1)).starts_with("at 1001: the filter is longer"));
        let deep = format!("{}name = a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(
            error(&deep).contains("nested too deeply"),
            "{}",
            error(&deep)
        );
        let ok = format!(
            "{}name = a{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&ok).is_ok());
        assert!(error(&"not ".repeat(MAX_DEPTH + 1)).contains("nested too deeply"));
        let many = vec!["name = a"; MAX_CONDITIONS + 1].join(" or ");
        assert!(error(&many).contains("more than 64 conditions"));
        let list = format!("name in ({})", vec!["a"; MAX_LIST + 1].join(","));
        assert!(error(&list).contains("more than 100 values"));
        assert!(error(&format!("name = {}", "a".repeat(MAX_VALUE + 1))).contains("longer than 200"));
    }

    /// Words and symbols of the language, to build inputs that get far into the parser.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("status".to_owned()),
            Just("name".to_owned()),
            Just("scope".to_owned()),
            Just("last_used".to_owned()),
            Just("expires".to_owned()),
            Just("env".to_owned()),
            Just("id".to_owned()),
            Just("and".to_owned()),
            Just("or".to_owned()),
            Just("not".to_owned()),
            Just("in".to_owned()),
            Just("never".to_owned()),
            Just("active".to_owned()),
            Just("7d".to_owned()),
            Just("2025-01-31".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(",".to_owned()),
            Just("=".to_owned()),
            Just("!=".to_owned()),
            Just("~".to_owned()),
            Just("<".to_owned()),
            Just("'".to_owned()),
            "[a-z:*/0-9]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,200}") {
            if let Ok(expr) = parse(&input) {
                let mut params = Params::default();
                let _ = expr.to_sql(&mut params);
            }
        }

        #[test]
        fn token_soup_never_panics_and_binds_every_value(pieces in prop::collection::vec(piece(), 0..40)) {
            let input = pieces.join(" ");
            match parse(&input) {
                Ok(expr) => {
                    let mut params = Params::default();
                    let sql = expr.to_sql(&mut params);
                    // One placeholder per parameter, and no input text in the SQL.
                    prop_assert_eq!(sql.matches("::text").count(), params.0.len());
                    prop_assert!(!sql.contains('"'));
                    prop_assert_eq!(sql.matches('\'').count(), 2 * sql.matches("'infinity'").count());
                }
                Err(e) => prop_assert!(e.pos >= 1 && e.pos <= input.chars().count() + 1, "{}", e),
            }
        }

        #[test]
        fn values_never_reach_the_sql(value in "zq[a-zA-Z0-9 ;'\"%_\\\\-]{0,30}") {
            for template in ["name = {}", "owner ~ {}", "scope in (a, {})", "description !~ {}"] {
                let quoted = format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
                let input = template.replace("{}", &quoted);
                let mut params = Params::default();
                let sql = parse(&input).unwrap().to_sql(&mut params);
                prop_assert!(!sql.contains("zq"), "{}", sql);
                prop_assert!(params.0.iter().any(|p| p.contains("zq")));
            }
        }
    }
}
