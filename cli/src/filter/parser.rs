//! Recursive descent over the tokens, with the bounds on length, nesting and size.

use super::fields::{field_names, Field, Kind, Op, FIELDS};
use super::lexer::{describe, tokenize, Tok, Token};
use super::{
    err, Condition, Expr, FilterError, Value, MAX_CONDITIONS, MAX_DEPTH, MAX_LEN, MAX_LIST,
    MAX_VALUE,
};

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
