//! Printing: tables for people, JSON and CSV for scripts.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use comfy_table::{presets, Table};
use serde_json::Value;

use crate::errors::Result;

/// Set while a new key is printed: then a reader that has gone is an error (the key
/// exists and nobody has it), not a quiet end.
pub static NEW_KEY: AtomicBool = AtomicBool::new(false);

/// Writes to stdout. A reader that has gone (`api-keys list | head -1`) ends the
/// program quietly, as it would end `ls`, except while a new key is printed.
pub fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && !NEW_KEY.load(Relaxed) => {
            std::process::exit(0)
        }
        r => Ok(r?),
    }
}

/// Text for a terminal: control characters (an escape sequence in a key's name could
/// clear the screen or forge a line) and bidirectional overrides shown escaped, as
/// `\u{1b}`. Names, descriptions and reasons are any role's input.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A cell a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, CR first)
/// gets a leading `'`, as OWASP advises for CSV meant to be opened.
fn no_formula(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

/// Columns separated by two spaces, headers in capitals, no borders.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(headers.to_vec());
    for row in rows {
        t.add_row(row.iter().map(|c| printable(c)).collect::<Vec<_>>());
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    out(&format!("{}\n", t.trim_fmt()))
}

pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(headers)?;
    for row in rows {
        w.write_record(row.iter().map(|c| no_formula(c)))?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    out(&String::from_utf8_lossy(&bytes))
}

pub fn json(value: &Value) -> Result<()> {
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("a Value always serializes")
    ))
}

/// `label: value` lines, the labels aligned.
pub fn fields(pairs: &[(&str, String)]) -> Result<()> {
    let width = pairs.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    let text: String = pairs
        .iter()
        .map(|(label, value)| {
            let line = format!("{:width$} {}", format!("{label}:"), printable(value));
            format!("{}\n", line.trim_end())
        })
        .collect();
    out(&text)
}

/// A JSON value as one cell: text as is, null empty, arrays joined with commas.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A timestamp as `to_json` writes it (`2025-01-31T10:00:00.123+00:00`), to the
/// second: `2025-01-31 10:00:00+00:00`. Anything else (`infinity`) as is.
pub fn timestamp(v: &Value) -> String {
    let s = cell(v);
    if s.len() < 19 || s.as_bytes()[10] != b'T' {
        return s;
    }
    let zone = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    format!("{} {}{zone}", &s[..10], &s[11..19])
}

/// Seconds since something, as `5m ago`.
pub fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A horizontal bar of `value` out of `max` in `width` cells, in eighths of a block.
pub fn bar(value: i64, max: i64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if max <= 0 || value <= 0 {
        return String::new();
    }
    let eighths = ((value as f64 / max as f64) * (width * 8) as f64).round() as usize;
    // Never nothing for something.
    let eighths = eighths.max(1);
    format!("{}{}", "█".repeat(eighths / 8), PARTS[eighths % 8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells() {
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(
            cell(&json!(["runs:read", "runs:write"])),
            "runs:read,runs:write"
        );
        assert_eq!(cell(&json!(42)), "42");
        assert_eq!(cell(&json!({"a": 1})), "{\"a\":1}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamp(&json!("2025-01-31T10:00:00.123456+00:00")),
            "2025-01-31 10:00:00+00:00"
        );
        assert_eq!(
            timestamp(&json!("2025-01-31T10:00:00-05:30")),
            "2025-01-31 10:00:00-05:30"
        );
        assert_eq!(timestamp(&json!("infinity")), "infinity");
        assert_eq!(timestamp(&json!(null)), "");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(-3.0), "0s ago");
        assert_eq!(ago(59.9), "59s ago");
        assert_eq!(ago(125.0), "2m ago");
        assert_eq!(ago(7200.0), "2h ago");
        assert_eq!(ago(3.0 * 86400.0), "3d ago");
    }

    #[test]
    fn terminal_and_spreadsheet_safe() {
        assert_eq!(
            printable("evil\u{1b}[2J\r\nline"),
            "evil\\u{1b}[2J\\u{d}\\u{a}line"
        );
        assert_eq!(printable("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(printable("ci: runs/7 ü"), "ci: runs/7 ü");
        assert_eq!(no_formula("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(no_formula("-1"), "'-1");
        assert_eq!(no_formula("ci deploy"), "ci deploy");
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0, 10, 10), "");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 3), "█▌");
        assert_eq!(bar(1, 1000, 10), "▏");
    }
}
