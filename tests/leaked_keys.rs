//! api_key_report_leaked against a real second session that holds one of the reported
//! keys (its owner editing it): the report does not wait, revokes the others at once,
//! names the held key in a WARNING, and a report after the holder commits revokes it.

mod common;

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use common::{cheap_hashing, issue, Cluster, DB};
use postgres::NoTls;

#[test]
fn a_held_key_is_named_and_the_others_are_revoked_at_once() {
    let cluster = Cluster::start("leaked_held");
    let mut admin = cluster.connect_fast(DB);
    cheap_hashing(&mut admin);
    let held = issue(
        &mut admin,
        "'held', 'service', 'production', owner => 'alice'",
    );
    let free = issue(
        &mut admin,
        "'free', 'service', 'production', owner => 'bob'",
    );
    let mut owner = cluster.connect(DB);
    let mut editing = owner.transaction().unwrap();
    editing
        .execute(
            "SELECT api_keys.api_key_update($1, description => 'editing')",
            &[&held.prefix],
        )
        .unwrap();

    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    let mut scanner = postgres::Config::from_str(&cluster.conn_string(DB))
        .unwrap()
        .notice_callback(move |n| {
            sink.lock().unwrap().push(format!(
                "{} | {} | {}",
                n.message(),
                n.detail().unwrap_or(""),
                n.hint().unwrap_or("")
            ))
        })
        .connect(NoTls)
        .unwrap();
    let report = |scanner: &mut postgres::Client| -> Vec<String> {
        scanner
            .query(
                "SELECT api_keys.api_key_report_leaked($1, 'scan')",
                &[&vec![held.key.clone(), free.key.clone()]],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(report(&mut scanner), [free.prefix.as_str()]);
    assert_eq!(
        *notices.lock().unwrap(),
        [format!(
            "1 reported key(s) not revoked: another transaction holds them | Held: {}. | \
             Report them again once that transaction has ended.",
            held.prefix
        )]
    );
    editing.commit().unwrap();
    assert_eq!(report(&mut scanner), [held.prefix.as_str()]);
    assert_eq!(notices.lock().unwrap().len(), 1, "no second WARNING");
}

/// A report runs only at READ COMMITTED: under REPEATABLE READ a key its owner or the
/// worker changed meanwhile would fail the whole report with a serialization error.
#[test]
fn a_report_refuses_repeatable_read() {
    let cluster = Cluster::start("leaked_rr");
    let mut admin = cluster.connect_fast(DB);
    cheap_hashing(&mut admin);
    let k = issue(&mut admin, "'rr', 'service', 'production'");
    let mut t = admin
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let e = t
        .query(
            "SELECT api_keys.api_key_report_leaked(ARRAY[$1], 'scan')",
            &[&k.key],
        )
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::INVALID_TRANSACTION_STATE),
        "{e:?}"
    );
}
