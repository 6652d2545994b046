//! `api-keys usage`: verifications per hour from `api_keys.usage_by_key` (one key) or
//! `api_keys.usage_by_owner` (one owner, or every owner this role may see), every
//! hour of the window shown, with a bar per hour.

use postgres::Client;
use serde_json::json;

use super::find_key;
use crate::args::{Format, UsageArgs};
use crate::errors::{Class, Error, Result};
use crate::keyref::KeyRef;
use crate::output;

/// The hours of the window, each joined with the usage counted in it: the usage of
/// the window only (the table keeps every hour since install), summed per hour first,
/// then joined by equality. Usage hours are truncated in the session's time zone, so
/// that one with a half-hour offset still counts each in its hour.
fn sql(view: &str, condition: &str) -> String {
    format!(
        "WITH w(first) AS (SELECT date_trunc('hour', statement_timestamp()) - ($1::int4 - 1) * interval '1 hour'), \
              u AS (SELECT date_trunc('hour', v.hour) AS hour, sum(v.verified) AS verified, \
                           sum(v.rejected) AS rejected \
                      FROM {view} v, w WHERE v.hour >= w.first AND {condition} GROUP BY 1) \
         SELECT to_json(h.hour), to_char(h.hour, 'YYYY-MM-DD HH24:MI'), \
                coalesce(u.verified, 0)::int8, coalesce(u.rejected, 0)::int8 \
           FROM w, generate_series(w.first, date_trunc('hour', statement_timestamp()), interval '1 hour') AS h(hour) \
           LEFT JOIN u ON u.hour = h.hour \
          ORDER BY h.hour"
    )
}

struct Hour {
    at: serde_json::Value,
    label: String,
    verified: i64,
    rejected: i64,
}

pub fn run(client: &mut Client, args: UsageArgs) -> Result<()> {
    let rows = if let Some(k) = &args.key {
        let key = find_key(client, &KeyRef::parse(k)?)?;
        client.query(
            &sql("api_keys.usage_by_key", "v.key_id = $2::text::uuid"),
            &[&args.hours, &key.text("id")],
        )?
    } else if let Some(owner) = &args.owner {
        let visible: bool = client
            .query_one(
                "SELECT EXISTS (SELECT FROM api_keys.key_list WHERE owner = $1::text)",
                &[owner],
            )?
            .get(0);
        if !visible {
            return Err(
                Error::new(Class::NotFound, format!("no keys of owner {owner:?}"))
                    .with_hint("The owner has no keys, or none you may see."),
            );
        }
        client.query(
            &sql("api_keys.usage_by_owner", "v.owner = $2::text"),
            &[&args.hours, owner],
        )?
    } else {
        client.query(&sql("api_keys.usage_by_owner", "true"), &[&args.hours])?
    };
    let hours: Vec<Hour> = rows
        .iter()
        .map(|r| Hour {
            at: r.get(0),
            label: r.get(1),
            verified: r.get(2),
            rejected: r.get(3),
        })
        .collect();

    match args.output.output {
        Format::Json => output::json(&json!(hours
            .iter()
            .map(|h| json!({ "hour": h.at, "verified": h.verified, "rejected": h.rejected }))
            .collect::<Vec<_>>())),
        Format::Csv => output::csv(
            &["hour", "verified", "rejected"],
            &hours
                .iter()
                .map(|h| {
                    vec![
                        output::cell(&h.at),
                        h.verified.to_string(),
                        h.rejected.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        Format::Table => print_chart(&hours),
    }
}

/// A table with a bar per hour: `█` verified, `░` rejected, to one scale.
fn print_chart(hours: &[Hour]) -> Result<()> {
    const WIDTH: usize = 40;
    let max = hours
        .iter()
        .map(|h| h.verified + h.rejected)
        .max()
        .unwrap_or(0);
    let mut rows: Vec<Vec<String>> = hours
        .iter()
        .map(|h| {
            let total = output::bar(h.verified + h.rejected, max, WIDTH);
            let verified = output::bar(h.verified, max, WIDTH);
            // The rejected part is what the whole bar adds to the verified one.
            let rejected_cells = total
                .chars()
                .count()
                .saturating_sub(verified.chars().count());
            vec![
                h.label.clone(),
                h.verified.to_string(),
                h.rejected.to_string(),
                format!("{verified}{}", "░".repeat(rejected_cells)),
            ]
        })
        .collect();
    let (verified, rejected): (i64, i64) = hours
        .iter()
        .fold((0, 0), |(v, r), h| (v + h.verified, r + h.rejected));
    rows.push(vec![
        "total".into(),
        verified.to_string(),
        rejected.to_string(),
        String::new(),
    ]);
    output::table(
        &["HOUR", "VERIFIED", "REJECTED", "█ verified  ░ rejected"],
        &rows,
    )
}
