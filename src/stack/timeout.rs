//! `--request-timeout`: how long the upstream has to answer, counted from the
//! end of the request body when there is one (a slow upload is the body
//! timeout's business, not the upstream's), else from the request's arrival.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::body::ReqProgress;
use crate::error::ExchangeError;

/// Waits for `send` within `timeout` (zero: no limit), counted from the end
/// of the request body when it has one and from `start` otherwise.
pub(super) async fn within<T>(
    mut send: Pin<&mut impl Future<Output = Result<T, ExchangeError>>>,
    timeout: Duration,
    progress: &Option<Arc<ReqProgress>>,
    start: Instant,
) -> Result<T, ExchangeError> {
    match (timeout, progress) {
        (t, _) if t.is_zero() => send.await,
        (t, None) => match tokio::time::timeout_at(start + t, send).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Timeout { after: t }),
        },
        (t, Some(p)) => {
            tokio::select! {
                r = &mut send => r,
                _ = timeout_after_body(p, t) => Err(ExchangeError::Timeout { after: t }),
            }
        }
    }
}

async fn timeout_after_body(p: &ReqProgress, t: Duration) {
    p.wait_done().await;
    tokio::time::sleep(t).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// An upstream that answers `after` from now.
    async fn answers_after(after: Duration) -> Result<u32, ExchangeError> {
        tokio::time::sleep(after).await;
        Ok(7)
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_body_the_timeout_counts_from_the_request() {
        let start = Instant::now();
        let send = std::pin::pin!(answers_after(Duration::from_secs(60)));
        let r = within(send, Duration::from_secs(5), &None, start).await;
        assert!(
            matches!(r, Err(ExchangeError::Timeout { after }) if after == Duration::from_secs(5)),
            "timed out"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        let start = Instant::now();
        let send = std::pin::pin!(answers_after(Duration::from_secs(4)));
        let r = within(send, Duration::from_secs(5), &None, start).await;
        assert_eq!(r.ok(), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_body_the_timeout_counts_from_the_body_s_end() {
        let start = Instant::now();
        let p = Arc::new(ReqProgress::default());
        let body_ends = {
            let p = p.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                p.done.store(true, Ordering::Release);
                p.done_notify.notify_one();
            })
        };
        let send = std::pin::pin!(answers_after(Duration::from_secs(600)));
        let r = within(send, Duration::from_secs(5), &Some(p), start).await;
        assert!(
            matches!(r, Err(ExchangeError::Timeout { after }) if after == Duration::from_secs(5)),
            "timed out"
        );
        // 30 s of upload are not the upstream's time.
        assert_eq!(start.elapsed(), Duration::from_secs(35));
        body_ends.await.expect("body task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_waits_as_long_as_the_upstream_takes() {
        let start = Instant::now();
        let send = std::pin::pin!(answers_after(Duration::from_secs(3600)));
        let r = within(send, Duration::ZERO, &None, start).await;
        assert_eq!(r.ok(), Some(7));
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
    }
}
