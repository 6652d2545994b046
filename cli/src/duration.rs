//! Durations as the command line writes them (`90d`, `1h`, `30m`), for `--expires-in`,
//! `--grace` and the filter language; the server receives them as interval text.

/// `<number><unit>`, unit `s`, `m` (minutes), `h`, `d` or `w`, as PostgreSQL interval
/// text (`90 days`); None when `text` is not one.
pub fn parse(text: &str) -> Option<String> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    // Up to 6 digits: 999999 weeks is already past any timestamp.
    if number.is_empty() || number.len() > 6 {
        return None;
    }
    let unit = match unit {
        "s" => "seconds",
        "m" => "minutes",
        "h" => "hours",
        "d" => "days",
        "w" => "weeks",
        _ => return None,
    };
    Some(format!("{number} {unit}"))
}

/// For clap: the interval text, or a message naming the accepted forms.
pub fn arg(text: &str) -> Result<String, String> {
    parse(text).ok_or_else(|| {
        "expected a number and a unit: s, m (minutes), h, d or w, e.g. 90d or 1h".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("90d").as_deref(), Some("90 days"));
        assert_eq!(parse("1h").as_deref(), Some("1 hours"));
        assert_eq!(parse("0s").as_deref(), Some("0 seconds"));
        assert_eq!(parse("30m").as_deref(), Some("30 minutes"));
        assert_eq!(parse("2w").as_deref(), Some("2 weeks"));
        for bad in [
            "", "d", "7", "7 d", "7days", "-1d", "1.5h", "1234567d", "7D",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
