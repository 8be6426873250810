//! Long-lived app streams end when the sidecar shuts down.
//!
//! On SIGTERM the sidecar first lets divider sessions leave (their `Watch` streams carry the
//! Stops), then stops its servers, which wait for the calls in flight. A long-lived stream
//! (`Log.Append`, `Log.Subscribe`, `Sequencer.Stream`, `Divider.Watch`,
//! `Divider.FollowAssignment`) never finishes on its own, so it held the drain until its
//! timeout (5 s) and the app then saw a broken HTTP/2 stream. This layer ends the response of
//! those calls, once shutdown begins, with a clean `UNAVAILABLE` ("the sidecar is shutting
//! down"): the app's client reconnects (the `ordo-client` appender retries its pending batches
//! idempotently; a `Watch` ends as it would when the sidecar goes).
//!
//! Unary calls are never cut: their responses complete (an `UNAVAILABLE` there would claim
//! that a change which did apply never did). Checked by hand with `ordoctl dev` (a subscriber
//! got UNAVAILABLE, the member exited in 0.1 s instead of 5 s) and by
//! `e2e/tests/log.rs::sigterm_ends_the_apps_long_lived_streams_with_unavailable`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;

/// The app calls whose responses are long-lived streams.
pub const LONG_LIVED: [&str; 5] = [
    "/ordo.v1.Log/Append",
    "/ordo.v1.Log/Subscribe",
    "/ordo.v1.Sequencer/Stream",
    "/ordo.v1.Divider/Watch",
    "/ordo.v1.Divider/FollowAssignment",
];

/// Ends the responses of [`LONG_LIVED`] calls once `stop` turns true.
#[derive(Clone)]
pub struct EndStreamsAtShutdownLayer {
    stop: watch::Receiver<bool>,
}

impl EndStreamsAtShutdownLayer {
    /// A layer watching `stop`.
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Self { stop }
    }
}

impl<S> tower::Layer<S> for EndStreamsAtShutdownLayer {
    type Service = EndStreamsAtShutdown<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreamsAtShutdown { inner, stop: self.stop.clone() }
    }
}

/// See [`EndStreamsAtShutdownLayer`].
#[derive(Clone)]
pub struct EndStreamsAtShutdown<S> {
    inner: S,
    stop: watch::Receiver<bool>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for EndStreamsAtShutdown<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let stop = LONG_LIVED.contains(&req.uri().path()).then(|| self.stop.clone());
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = call.await?;
            Ok(match stop {
                Some(stop) => resp.map(|b| Body::new(EndAtShutdown::new(b, stop))),
                None => resp,
            })
        })
    }
}

/// A response body that ends with `UNAVAILABLE` trailers once `stop` turns true (unless it
/// ended first).
struct EndAtShutdown {
    inner: Body,
    stop: BoxFuture<()>,
    /// The body sent its trailers (its own or ours): nothing follows.
    ended: bool,
}

impl EndAtShutdown {
    fn new(inner: Body, mut stop: watch::Receiver<bool>) -> Self {
        let stop = Box::pin(async move { crate::api::shutdown_begun(&mut stop).await });
        Self { inner, stop, ended: false }
    }
}

impl HttpBody for EndAtShutdown {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            this.ended = true;
            // Dropped now: a handler that feeds it sees its receiver gone and stops (an
            // `Append` would otherwise go on reading the app's open request side).
            this.inner = Body::empty();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers.insert("grpc-message", http::HeaderValue::from_static("the%20sidecar%20is%20shutting%20down"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => this.ended = true,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
