//! Tokens: words, quoted text, operators, parentheses and commas, with positions.

use super::{err, fields::Op, FilterError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
    Open,
    Close,
    Comma,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) pos: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || "_:*/.@+-#".contains(c)
}

pub(super) fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
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

pub(super) fn describe(t: Option<&Token>) -> String {
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
