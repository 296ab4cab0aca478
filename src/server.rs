//! Accepting connections: one loop shared by the gateway, its admin listener and the emulator;
//! and [`run`], which wires the gateway's two listeners to their handlers.
//!
//! HTTP/1.1 and h2c through hyper-util's auto builder, with the guards hyper lacks on its own
//! (docs/architecture.md, "The listeners"): a first-byte timeout, a header-read timeout, a cap
//! on concurrent connections, and a graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::gateway::Gateway;
use crate::{admin, pipeline};

/// The response type of every handler: bodies are small JSON documents, fully buffered.
pub type HttpResponse = Response<Full<Bytes>>;

/// What a handler may answer: a response, or "drop the connection" (the emulator's reset fault).
pub type HandlerResult = Result<HttpResponse, ConnectionReset>;

/// Ask the server to drop the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection reset on purpose")]
pub struct ConnectionReset;

/// Limits applied to every accepted connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Time a new connection has to send its first byte.
    pub first_byte_timeout: Duration,
    /// Time a request has to deliver its complete header block.
    pub header_read_timeout: Duration,
    /// Concurrent connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Time in-flight requests get to finish once shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains open connections.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ConnLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| handler(req, peer));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte_timeout = limits.first_byte_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            if !first_byte_arrives(&stream, first_byte_timeout).await {
                return;
            }
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with connections still open");
    }
}

async fn first_byte_arrives(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// The two listeners the gateway serves.
pub struct Listeners {
    /// The API listener that callers use.
    pub api: TcpListener,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/…`).
    pub admin: TcpListener,
}

/// Serves the API and admin listeners until `shutdown` completes, then drains both.
pub async fn run(listeners: Listeners, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_gateway = gateway.clone();
    let api = serve(
        listeners.api,
        gateway.conn_limits.clone(),
        move |req, peer| {
            let gateway = api_gateway.clone();
            async move { Ok(pipeline::handle(&gateway, req, peer).await) }
        },
        signal(stopped.clone()),
    );
    let admin_gateway = gateway.clone();
    let admin = serve(
        listeners.admin,
        gateway.conn_limits.clone(),
        move |req, _peer| {
            let gateway = admin_gateway.clone();
            async move { Ok(admin::handle(&gateway, req).await) }
        },
        signal(stopped),
    );
    let draining = gateway.clone();
    let trigger = async move {
        shutdown.await;
        // Readiness fails at once; the listeners keep serving until load balancers notice.
        draining.start_draining();
        tracing::info!(
            delay_ms = draining.shutdown_delay.as_millis() as u64,
            drain_timeout_ms = draining.conn_limits.drain_timeout.as_millis() as u64,
            "shutting down: not ready; listeners close after the delay, then in-flight requests drain"
        );
        tokio::time::sleep(draining.shutdown_delay).await;
        let _ = stop.send(true);
    };
    tokio::join!(api, admin, trigger);
    if let Some(cluster) = &gateway.cluster {
        // The other replicas' shares grow at once rather than when this entry expires.
        cluster.leave().await;
    }
}

/// A response with a JSON body.
pub fn json_response(status: u16, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while the body was arriving.
    #[error("request body could not be read")]
    Read,
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Err(_) => Err(BodyError::Read),
    }
}
