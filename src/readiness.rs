//! `/readyz`: what it takes for the Service to send traffic here. The upstream
//! check runs at most once a second in its own task, so probes never wait on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::ReadyCheck;
use crate::shutdown::{Drain, Phase};
use crate::upstream::{ConnectError, Connector};

/// The readiness state the admin server reports.
#[derive(Debug)]
pub struct Readiness {
    check: Mutex<Option<String>>,
    drain: Arc<Drain>,
}

impl Readiness {
    /// Starts not ready until the first check has run.
    pub fn new(drain: Arc<Drain>, checked: bool) -> Self {
        Self {
            check: Mutex::new((!checked).then(|| "upstream not checked yet".to_string())),
            drain,
        }
    }

    /// `None` when ready, else the reason.
    pub fn reason(&self) -> Option<String> {
        if self.drain.phase() != Phase::Running {
            return Some("draining".to_string());
        }
        self.check.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, r: Option<String>) {
        *self.check.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
}

/// Runs the `--ready-check` once a second until the process ends.
pub async fn run_checks(
    ready: Arc<Readiness>,
    check: ReadyCheck,
    connector: Connector,
    upstream: String,
) {
    if check == ReadyCheck::None {
        ready.set(None);
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match &check {
            ReadyCheck::Tcp => connector.connect().await.map(|_| ()).map_err(describe),
            ReadyCheck::Http(path) => http_check(&connector, path).await,
            ReadyCheck::None => Ok(()),
        };
        ready.set(result.err().map(|e| format!("upstream {upstream}: {e}")));
    }
}

fn describe(e: ConnectError) -> String {
    match e {
        ConnectError::Refused(_) => "connection refused".to_string(),
        ConnectError::Timeout(d) => format!("connect timed out after {d:?}"),
        ConnectError::Failed(e) => e.to_string(),
    }
}

async fn http_check(connector: &Connector, path: &str) -> Result<(), String> {
    let stream = connector.connect().await.map_err(describe)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "portico-ready-check")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| format!("GET {path} did not answer within 2s"))?
}
