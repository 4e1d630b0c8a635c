//! The answers portico makes itself (docs/reference.md, "Answers portico
//! makes itself"): a status, `Portico-Error: KIND`, and a one-line
//! `text/plain` body that names no internal address.

use super::{Got, RawResp};

/// What a test needs of a response to check a portico answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub error: Option<String>,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub connection: Option<String>,
    pub body: String,
}

impl From<&Got> for Answer {
    fn from(g: &Got) -> Self {
        Self {
            status: g.status.as_u16(),
            error: g.header("portico-error").map(str::to_owned),
            content_type: g.header("content-type").map(str::to_owned),
            retry_after: g.header("retry-after").map(str::to_owned),
            connection: g.header("connection").map(str::to_owned),
            body: g.text(),
        }
    }
}

impl From<&RawResp> for Answer {
    fn from(r: &RawResp) -> Self {
        Self {
            status: r.status,
            error: r.header("portico-error").map(str::to_owned),
            content_type: r.header("content-type").map(str::to_owned),
            retry_after: r.header("retry-after").map(str::to_owned),
            connection: r.header("connection").map(str::to_owned),
            body: String::from_utf8_lossy(&r.body).into_owned(),
        }
    }
}

/// Each answer carries `Portico-Error: KIND` and a one-line `text/plain`
/// body that names no internal address.
#[track_caller]
pub fn assert_answer(a: impl Into<Answer>, status: u16, kind: &str, secrets: &[&str]) -> Answer {
    let a = a.into();
    assert_eq!(a.status, status, "status of {a:?}");
    assert_eq!(a.error.as_deref(), Some(kind), "Portico-Error of {a:?}");
    assert!(
        a.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "content-type of {a:?}"
    );
    let line = a.body.strip_suffix('\n').unwrap_or(&a.body);
    assert!(!line.trim().is_empty(), "empty body: {a:?}");
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "not one line: {a:?}"
    );
    for s in ["127.0.0.1", "[::1]", "localhost:"].iter().chain(secrets) {
        assert!(!a.body.contains(s), "body names {s:?}: {a:?}");
    }
    if kind != "overloaded" {
        assert_eq!(
            a.retry_after, None,
            "Retry-After only for overloaded: {a:?}"
        );
    }
    a
}

/// The `portico_upstream_errors_total` series of the default route for `kind`.
pub fn upstream_errors(kind: &str) -> String {
    format!("portico_upstream_errors_total{{route=\"default\",kind=\"{kind}\"}}")
}
