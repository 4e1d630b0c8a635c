//! `--max-requests-in-flight`, process-wide: a request takes a permit only if
//! one is free right now and holds it until its response body ends; without
//! one it is answered `503` at once. tower's `GlobalConcurrencyLimit` +
//! `LoadShed` would queue a waiter per refused connection, which later holds a
//! permit while idle.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::body::RespBody;
use super::own_response;
use crate::error::Refusal;

/// Layer for [`InFlightLimit`].
#[derive(Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// The layer taking its permits from `permits`.
    pub fn new(permits: Arc<Semaphore>) -> Self {
        Self { permits }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;
    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// `--max-requests-in-flight`: a permit is held until the response body ends.
#[derive(Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, R> Service<R> for InFlightLimit<S>
where
    S: Service<R, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, r: R) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => InFlightFuture {
                inner: Some(self.inner.call(r)),
                permit: Some(permit),
            },
            Err(_) => InFlightFuture {
                inner: None,
                permit: None,
            },
        }
    }
}

/// [`InFlightLimit`]'s future: the inner one's answer, holding the permit
/// until its body ends; without a permit, `503` at once.
pub struct InFlightFuture<F> {
    inner: Option<F>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<RespBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(own_response(&Refusal::Overloaded.into(), false)));
        };
        let Ok(mut resp) = ready!(Pin::new(inner).poll(cx));
        if let Some(permit) = self.permit.take() {
            resp.body_mut().hold(permit);
        }
        Poll::Ready(Ok(resp))
    }
}
#[cfg(test)]
mod tests {
    use std::future::Ready;

    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;

    /// Answers every request `200` at once.
    #[derive(Clone)]
    struct Ok200;

    impl Service<()> for Ok200 {
        type Response = Response<RespBody>;
        type Error = Infallible;
        type Future = Ready<Result<Response<RespBody>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(Response::new(RespBody::from(Bytes::from_static(b"ok")))))
        }
    }

    #[tokio::test]
    async fn past_max_requests_in_flight_answers_overloaded_until_a_body_ends() {
        let permits = Arc::new(Semaphore::new(2));
        let svc = InFlightLimitLayer::new(permits.clone()).layer(Ok200);

        let first = svc.clone().oneshot(()).await.expect("infallible");
        let second = svc.clone().oneshot(()).await.expect("infallible");
        assert_eq!(first.status(), 200);
        assert_eq!(second.status(), 200);
        // Both bodies are unread: their permits are still held.
        assert_eq!(permits.available_permits(), 0);

        let third = svc.clone().oneshot(()).await.expect("infallible");
        assert_eq!(third.status(), 503);
        assert_eq!(third.headers()["portico-error"], "overloaded");
        assert_eq!(third.headers()["retry-after"], "1");
        drop(third);
        assert_eq!(permits.available_permits(), 0);

        // A response dropped (its body ended or abandoned) gives its permit back.
        drop(first);
        assert_eq!(permits.available_permits(), 1);
        let fourth = svc.clone().oneshot(()).await.expect("infallible");
        assert_eq!(fourth.status(), 200);
        drop((second, fourth));
        assert_eq!(permits.available_permits(), 2);
    }
}
