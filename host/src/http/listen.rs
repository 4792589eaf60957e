//! Connections: how many the server holds and how long a client may keep
//! one without a request. At most `max_connections` are open at once;
//! past it the server accepts no more and new clients wait in the
//! kernel's listen backlog (their own connect timeout applies) until one
//! closes — served late rather than refused, and nothing is read from
//! them meanwhile. A connection with no request in progress for
//! `idle_timeout` is closed: an HTTP/1 request head must arrive whole
//! within it (hyper's header read timeout), and the same bound holds for
//! the protocol preface and between HTTP/2 requests (a watchdog, since
//! hyper times neither). When `shutdown` completes the server stops
//! accepting and lets the requests in progress finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service as _;

/// Connections open at once, by default: well under a common descriptor
/// limit of 1024, which the host shares with NATS and its cells.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Seconds a connection may go without a request, by default.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 10;

/// Connections at once and how long one may stay without a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// Serves `app` on each connection `listener` accepts, within `limits`,
/// until `shutdown` completes; then waits for the requests in progress.
pub async fn serve(
    app: axum::Router,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &slots) => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, slot)) => {
                tokio::spawn(connection(
                    app.clone(),
                    stream,
                    slot,
                    limits.idle_timeout,
                    &graceful,
                ));
            }
            Err(e) => {
                // Out of descriptors and the like: give some time to close.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// The next connection, once one of the `slots` is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| std::io::Error::other("the connection slots are closed"))?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// Serves one connection with `app` until it ends, is idle for
/// `idle_timeout`, or `graceful` shuts it down; then frees its `slot`.
fn connection(
    app: axum::Router,
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let (activity, watched) = watch::channel(Activity::idle());
    let activity = Arc::new(activity);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::start(activity.clone());
        let mut app = app.clone();
        async move {
            let response = app.call(request).await;
            Ok::<_, std::convert::Infallible>(busy_until_sent(response?, busy))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let served = graceful.watch(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned(),
    );
    async move {
        tokio::select! {
            result = served => if let Err(e) = result {
                tracing::debug!(error = %e, "an HTTP connection ended with an error");
            },
            () = idle_for(watched, idle_timeout) => {
                tracing::debug!("closed an HTTP connection without a request for too long");
            }
        }
        drop(slot);
    }
}

/// A response whose length is unknown (a stream: server-sent events) keeps
/// its request in progress until its body is sent or dropped, so a stream
/// that outlasts the idle timeout is not taken for an idle connection.
fn busy_until_sent(response: axum::response::Response, busy: Busy) -> axum::response::Response {
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    response.map(|body| {
        let stream = body.into_data_stream().map(move |chunk| {
            let _held = &busy;
            chunk
        });
        axum::body::Body::from_stream(stream)
    })
}

/// Requests in progress on a connection, and since when it has had none.
#[derive(Clone, Copy)]
struct Activity {
    requests: usize,
    since: Instant,
}

impl Activity {
    fn idle() -> Self {
        Self {
            requests: 0,
            since: Instant::now(),
        }
    }
}

/// One request in progress, until dropped.
struct Busy(Arc<watch::Sender<Activity>>);

impl Busy {
    fn start(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.requests += 1);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.requests = a.requests.saturating_sub(1);
            a.since = Instant::now();
        });
    }
}

/// Completes once the connection has had no request in progress for
/// `limit` (never, once the connection is gone).
async fn idle_for(mut activity: watch::Receiver<Activity>, limit: Duration) {
    loop {
        let now = *activity.borrow_and_update();
        let changed = if now.requests > 0 {
            activity.changed().await
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(now.since + limit) => return,
                changed = activity.changed() => changed,
            }
        };
        if changed.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A streamed answer (server-sent events) that outlasts the idle
    /// timeout is sent whole: its request is in progress until then.
    #[tokio::test]
    async fn a_stream_longer_than_the_idle_timeout_is_sent_whole() {
        let chunks = || {
            futures_util::stream::unfold(0u32, |n| async move {
                if n == 8 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(format!("chunk {n}\n")), n + 1))
            })
        };
        let app = axum::Router::new().route(
            "/stream",
            axum::routing::get(move || async move { axum::body::Body::from_stream(chunks()) }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(app, listener, limits, std::future::pending()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let ask = "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        client.write_all(ask.as_bytes()).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("chunk 7"), "cut short:\n{answer}");
    }
}
