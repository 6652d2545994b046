//! A key's limits as HTTP headers, for PostgREST: `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the window that runs out
//! first starts again) in `response.headers`, and a 429's `Retry-After` in the error
//! PostgREST turns into a response (SQLSTATE `PGRST`: the body as MESSAGE, the status
//! and headers as DETAIL). Pure: no pgrx.

use serde_json::{json, Map, Value};

use crate::core::rate_limit::LimitState;
use crate::core::verdict::Reason;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Whole seconds from `now` to `at`, rounded up (a client that waits them finds the
/// window open), never below 0.
fn seconds_until(at: i64, now: i64) -> i64 {
    ((at - now).max(0) + MICROS_PER_SECOND - 1) / MICROS_PER_SECOND
}

/// The `RateLimit-*` headers of `state` at `now`; none when no window applies.
pub(crate) fn rate_limit_headers(state: &LimitState, now: i64) -> Vec<(&'static str, String)> {
    state.window.map_or_else(Vec::new, |w| {
        vec![
            ("RateLimit-Limit", w.limit.to_string()),
            ("RateLimit-Remaining", w.remaining.to_string()),
            ("RateLimit-Reset", seconds_until(w.reset, now).to_string()),
        ]
    })
}

/// `response.headers` as PostgREST reads it: an array of one-header objects.
pub(crate) fn response_headers(headers: &[(&str, String)]) -> String {
    Value::Array(
        headers
            .iter()
            .map(|(name, value)| json!({ *name: value }))
            .collect(),
    )
    .to_string()
}

/// Seconds to wait after a refusal: for want of uses, until the next refill (None
/// without one: waiting does not help); else until the full window starts again.
pub(crate) fn retry_after(state: &LimitState, now: i64, usage_exceeded: bool) -> Option<i64> {
    let at = if usage_exceeded {
        state.uses_reset
    } else {
        state.window.filter(|w| w.remaining == 0).map(|w| w.reset)
    };
    at.map(|at| seconds_until(at, now))
}

/// A 429 as a `PGRST` error: MESSAGE (the body PostgREST answers, the same as for the
/// `PT429` SQLSTATE) and DETAIL (its status and headers).
pub(crate) fn too_many_requests(reason: Reason, state: &LimitState, now: i64) -> (String, String) {
    let body = json!({
        "code": "PT429",
        "message": reason.refusal_message(),
        "details": null,
        "hint": reason.hint(),
    });
    let mut headers = Map::new();
    if let Some(seconds) = retry_after(state, now, reason == Reason::UsageExceeded) {
        headers.insert("Retry-After".into(), seconds.to_string().into());
    }
    for (name, value) in rate_limit_headers(state, now) {
        headers.insert(name.into(), value.into());
    }
    let detail = json!({ "status": 429, "status_text": "Too Many Requests", "headers": headers });
    (body.to_string(), detail.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rate_limit::Window;

    const S: i64 = MICROS_PER_SECOND;

    fn state(remaining: u32, reset: i64, uses: Option<u64>, refill: Option<i64>) -> LimitState {
        LimitState {
            window: Some(Window {
                limit: 10,
                remaining,
                reset,
            }),
            remaining_uses: uses,
            uses_reset: refill,
        }
    }

    #[test]
    fn headers_give_the_tightest_window_in_whole_seconds() {
        let s = state(3, 100 * S + 1, None, None);
        assert_eq!(
            rate_limit_headers(&s, 40 * S),
            vec![
                ("RateLimit-Limit", "10".to_string()),
                ("RateLimit-Remaining", "3".to_string()),
                ("RateLimit-Reset", "61".to_string()),
            ]
        );
        assert_eq!(
            response_headers(&rate_limit_headers(&s, 40 * S)),
            r#"[{"RateLimit-Limit":"10"},{"RateLimit-Remaining":"3"},{"RateLimit-Reset":"61"}]"#
        );
        assert!(rate_limit_headers(&LimitState::default(), 0).is_empty());
        assert_eq!(response_headers(&[]), "[]");
    }

    #[test]
    fn retry_after_is_the_window_or_the_refill() {
        assert_eq!(
            retry_after(&state(0, 60 * S, None, None), 30 * S, false),
            Some(30)
        );
        assert_eq!(
            retry_after(&state(5, 60 * S, None, None), 0, false),
            None,
            "room left"
        );
        let out_of_uses = state(5, 60 * S, Some(0), Some(7200 * S));
        assert_eq!(retry_after(&out_of_uses, 0, true), Some(7200));
        assert_eq!(
            retry_after(&state(5, 60 * S, Some(0), None), 0, true),
            None,
            "no refill"
        );
    }

    #[test]
    fn a_429_carries_its_headers_in_the_detail() {
        let (body, detail) =
            too_many_requests(Reason::RateLimited, &state(0, 90 * S, None, None), 30 * S);
        let body: Value = serde_json::from_str(&body).unwrap();
        let detail: Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(body["code"], "PT429");
        assert_eq!(body["message"], "API key rejected: rate_limited");
        assert_eq!(body["hint"], Reason::RateLimited.hint());
        assert_eq!(detail["status"], 429);
        assert_eq!(detail["headers"]["Retry-After"], "60");
        assert_eq!(detail["headers"]["RateLimit-Remaining"], "0");
    }
}
