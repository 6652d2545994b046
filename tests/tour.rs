//! `make run`'s guided tour (examples/tour.sql, which stops at the first error) runs to
//! the end on a fresh cluster, and again over its own earlier keys.

mod common;

use std::path::Path;

use common::{Cluster, DB};

#[test]
fn the_tour_runs_to_the_end_twice() {
    let cluster = Cluster::start("tour");
    let tour = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tour.sql");
    for run in 1..=2 {
        let out = cluster.run_tool("psql", &["-X", "-d", DB, "-f", tour.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        // The audit log of the tour's key, its last step, lists every change.
        for action in ["issued", "suspended", "reactivated", "revoked"] {
            assert!(text.contains(action), "run {run}: no {action} in\n{text}");
        }
    }
}
