//! Accepting connections: one loop shared by the gateway, its admin listener and the emulator;
//! and [`run`], which wires the gateway's two listeners to their handlers.
//!
//! HTTP/1.1 and h2c (or HTTP/2 over TLS by ALPN) through hyper-util's auto builder, with the
//! guards hyper lacks on its own (docs/architecture.md, "The listeners"):
//! - a connection has `header_read_timeout` from its accept to its first request's complete
//!   headers: the TLS handshake and the HTTP/1-or-2 sniffing are inside it, so a peer that sends
//!   one byte and stops is dropped; an HTTP/1 connection gets the same time again from the end
//!   of each answer to its next request's headers;
//! - a connection with no request open for `idle_timeout` is shut down gracefully (HTTP/1
//!   keep-alive and HTTP/2 alike; HTTP/2 also pings an open connection and drops it when a ping
//!   is not answered in `write_timeout`);
//! - these deadlines are one timer per connection, re-armed when it fires, that requests never
//!   touch (hyper's own HTTP/1 header timer would cost a timer per request);
//! - a write that makes no progress for `write_timeout` (a peer that stopped reading) fails and
//!   ends the connection;
//! - HTTP/2 concurrent streams and header lists are capped; so is the HTTP/1 header buffer;
//! - at most `max_connections` at once (more wait in the accept queue), and a graceful drain on
//!   shutdown.
//!
//! Request bodies get `body_read_timeout` where they are read ([`read_body`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_io_timeout::TimeoutStream;

use crate::conn_threads::ConnThreads;
use crate::gateway::Gateway;
use crate::{admin, pipeline};

/// The response type of every handler: bodies are small JSON documents, fully buffered.
pub type HttpResponse = Response<Full<Bytes>>;

/// What a handler may answer: a response, or "drop the connection" (the emulator's reset fault).
pub type HandlerResult = Result<HttpResponse, ConnectionReset>;

/// The TLS configuration of a listener, replaceable while it runs (a reload re-reads the files).
pub type TlsConfig = Arc<ArcSwap<rustls::ServerConfig>>;

/// Ask the server to drop the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection reset on purpose")]
pub struct ConnectionReset;

/// Limits applied to every accepted connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Time from accept to the first request's complete headers (TLS handshake and protocol
    /// sniffing included), and for each later HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// A connection without an open request for this long is closed.
    pub idle_timeout: Duration,
    /// Time a request body has to arrive completely.
    pub body_read_timeout: Duration,
    /// A write (or an HTTP/2 ping) without progress for this long ends the connection.
    pub write_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest request header block, bytes.
    pub max_header_bytes: usize,
    /// Concurrent connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Time in-flight requests get to finish once shutdown starts.
    pub drain_timeout: Duration,
    /// Threads of its own that serve the listener's connections ([`ConnThreads`]); 0 serves
    /// them on the calling runtime.
    pub conn_threads: usize,
    /// Work without sleeping after which a connection thread gives its core up (never: `None`).
    pub busy_yield: Option<Duration>,
}

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HTTP1_BUFFER: usize = 8192;

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            conn_threads: 0,
            busy_yield: None,
        }
    }
}

impl ConnLimits {
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // Enforced per connection instead (see the module notes); hyper's default is 30 s.
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes.max(MIN_HTTP1_BUFFER))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(self.idle_timeout)
            .keep_alive_timeout(self.write_timeout);
        builder
    }
}

/// Serves `listener` (over TLS when `tls` is given) until `shutdown` completes, then drains
/// open connections. `connect` makes each connection's handler from its peer's address: what
/// every request of the connection shares is set up once.
pub async fn serve<C, H, F>(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<TlsConfig>,
    connect: C,
    shutdown: impl Future<Output = ()>,
) where
    C: Fn(SocketAddr) -> H + Clone + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    let builder = Arc::new(limits.builder());
    let threads = ConnThreads::start(limits.conn_threads, "imgate-conn", limits.busy_yield);
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a sender: the channel closes when the last one ends.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let (stop, stopped) = watch::channel(false);
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
        let conn = Conn {
            builder: builder.clone(),
            limits: limits.clone(),
            stop: stopped.clone(),
            peer,
        };
        let connect = connect.clone();
        let tls = tls.as_ref().map(|t| t.load_full());
        let alive = alive.clone();
        threads.spawn(stream, move |stream| async move {
            let _permit = permit;
            let _alive = alive;
            conn.run(stream, tls, connect(peer)).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(limits.drain_timeout, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with connections still open");
    }
}

/// One accepted connection and what it needs to serve it.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<ConnLimits>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Conn {
    async fn run<H, F>(self, stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, handler: H)
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = HandlerResult> + Send + 'static,
    {
        let first_request_by = Instant::now() + self.limits.header_read_timeout;
        match tls {
            None => self.http(stream, first_request_by, handler).await,
            Some(config) => {
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                match tokio::time::timeout_at(first_request_by, accept).await {
                    Ok(Ok(stream)) => self.http(stream, first_request_by, handler).await,
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, peer = %self.peer, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP on `io` until the peer leaves, a deadline passes or shutdown starts.
    async fn http<I, H, F>(self, io: I, first_request_by: Instant, handler: H)
    where
        I: AsyncRead + AsyncWrite + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = HandlerResult> + Send + 'static,
    {
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.limits.write_timeout));
        let activity = Arc::new(Activity::new());
        let requests = activity.clone();
        let mut stop = self.stop.clone();
        let peer = self.peer;
        let service = service_fn(move |req: Request<Incoming>| {
            let request = OpenRequest::start(&requests, req.version());
            let answer = handler(req);
            async move {
                let answer = answer.await;
                drop(request);
                answer
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(Box::pin(io)), service);
        tokio::pin!(conn);
        // One timer per connection, re-armed when it fires: requests only touch `activity`, so
        // a request costs no wake-up of this task and no timer of its own.
        let idle_timeout = self.limits.idle_timeout;
        let next_request_timeout = self.limits.header_read_timeout;
        let deadline =
            tokio::time::sleep_until(first_request_by.min(Instant::now() + idle_timeout));
        tokio::pin!(deadline);
        let stopping = async { drop(stop.wait_for(|stop| *stop).await) };
        tokio::pin!(stopping);
        let rare = RareEvents::new();
        let result = loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(ConnEvent::Finished(result));
                }
                rare.poll(cx, deadline.as_mut(), stopping.as_mut())
            })
            .await;
            match event {
                ConnEvent::Finished(result) => break result,
                ConnEvent::Deadline => {
                    match activity.idle_deadline(
                        first_request_by,
                        idle_timeout,
                        next_request_timeout,
                    ) {
                        Idle::NeverAsked => {
                            tracing::debug!(%peer, "no request headers in time: connection dropped");
                            return;
                        }
                        Idle::Until(at) if at > Instant::now() => {
                            deadline.as_mut().reset(at);
                            rare.look_again();
                            continue;
                        }
                        Idle::Until(_) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    // A peer that neither reads nor leaves gets the write timeout, no more.
                    let finish = tokio::time::timeout(self.limits.write_timeout, conn);
                    break finish.await.unwrap_or(Ok(()));
                }
                ConnEvent::Stop => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, %peer, "connection ended with an error");
        }
    }
}

/// What ended a connection's wait: its HTTP future, or one of its rare events.
enum ConnEvent<T> {
    /// The connection finished (the peer left, or an error).
    Finished(T),
    /// Its idle deadline passed (perhaps only to be pushed back).
    Deadline,
    /// Shutdown started.
    Stop,
}

/// A connection's rare events, its idle deadline and the shutdown signal, looked at only after
/// one of them woke the connection's task. `select!` would poll both on every wake-up, that is
/// on every request of a keep-alive connection (350 instructions of a cache hit's 18.7k, as
/// `benches/callgrind.sh` measured when this replaced it).
struct RareEvents {
    wake: Arc<RareWake>,
    /// Given to the rare events' futures: wakes the task and marks them for a look.
    waker: Waker,
}

/// Whether a rare event woke the connection, and the connection's task to wake.
struct RareWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for RareWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl RareEvents {
    /// Marked for a first look, which arms both events.
    fn new() -> RareEvents {
        let wake = Arc::new(RareWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        RareEvents {
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    /// Marks the events for a look at the next poll (after the deadline was moved).
    fn look_again(&self) {
        self.wake.woken.store(true, Ordering::Release);
    }

    /// Polls `deadline` and `stopping` if one of them woke the task since the last look.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        deadline: Pin<&mut tokio::time::Sleep>,
        stopping: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<ConnEvent<T>> {
        // Registered before the flag is read: a wake-up in between still reaches the task.
        self.wake.task.register(cx.waker());
        if !self.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut rare_cx = Context::from_waker(&self.waker);
        if deadline.poll(&mut rare_cx).is_ready() {
            return Poll::Ready(ConnEvent::Deadline);
        }
        if stopping.poll(&mut rare_cx).is_ready() {
            return Poll::Ready(ConnEvent::Stop);
        }
        Poll::Pending
    }
}

/// Requests open on a connection, whether it has had any, and when the last one ended.
struct Activity {
    since: std::time::Instant,
    open: AtomicUsize,
    seen: AtomicBool,
    /// Whether its requests are HTTP/2 (streams: no per-request header deadline).
    http2: AtomicBool,
    /// Milliseconds from `since` to the end of the last request.
    last_end_ms: AtomicU64,
}

/// When an idle connection may be closed.
enum Idle {
    /// It never sent a request (its first-request deadline has passed).
    NeverAsked,
    /// Not before this instant.
    Until(Instant),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: std::time::Instant::now(),
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// When the connection may be closed for idleness, as of now (before its first request:
    /// at `first_request_by`, looked at again every `idle_timeout` meanwhile; between HTTP/1
    /// requests: `next_request_timeout` after the last answer, if sooner than `idle_timeout`,
    /// since the next request's headers, begun or not, must arrive in it).
    fn idle_deadline(
        &self,
        first_request_by: Instant,
        idle_timeout: Duration,
        next_request_timeout: Duration,
    ) -> Idle {
        let now = Instant::now();
        if !self.seen.load(Ordering::Acquire) {
            if now >= first_request_by {
                return Idle::NeverAsked;
            }
            return Idle::Until(first_request_by.min(now + idle_timeout));
        }
        let allowed = if self.http2.load(Ordering::Relaxed) {
            idle_timeout
        } else {
            idle_timeout.min(next_request_timeout)
        };
        if self.open.load(Ordering::Acquire) > 0 {
            // Looked at again `allowed` after the request ends at the latest.
            return Idle::Until(now + allowed);
        }
        let ended = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        let idle_for = self.since.elapsed().saturating_sub(ended);
        Idle::Until(now + allowed.saturating_sub(idle_for))
    }
}

/// One request being answered; the count goes down, and the idle clock starts, when it is
/// dropped.
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn start(activity: &Arc<Activity>, version: http::Version) -> OpenRequest {
        activity.open.fetch_add(1, Ordering::AcqRel);
        activity.seen.store(true, Ordering::Release);
        if version == http::Version::HTTP_2 {
            activity.http2.store(true, Ordering::Relaxed);
        }
        OpenRequest(activity.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let ended = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.store(ended, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
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
        gateway.api_tls.clone(),
        move |peer: SocketAddr| {
            // The connection's own reference: its requests clone this one, not the gateway's,
            // whose count every core would otherwise write on every request.
            let gateway = Arc::new(api_gateway.clone());
            move |req| {
                let gateway = gateway.clone();
                async move { Ok(pipeline::handle(&gateway, req, peer).await) }
            }
        },
        signal(stopped.clone()),
    );
    let admin_gateway = gateway.clone();
    let admin = serve(
        listeners.admin,
        // A few requests a minute: the shared runtime serves them.
        ConnLimits {
            conn_threads: 0,
            ..gateway.conn_limits.clone()
        },
        None,
        move |_peer| {
            let gateway = admin_gateway.clone();
            move |req| {
                let gateway = gateway.clone();
                async move { Ok(admin::handle(&gateway, req).await) }
            }
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
    /// The body did not arrive completely in time.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
}

/// Reads a whole request body, refusing more than `limit` bytes or taking longer than `timeout`.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    // Most reads have no body: no deadline (a timer) to arm for them.
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Read),
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (at most 10 s) for the next rare event.
    async fn next_event(
        rare: &RareEvents,
        mut deadline: Pin<&mut tokio::time::Sleep>,
        mut stopping: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<ConnEvent<()>> {
        let wait = std::future::poll_fn(|cx| rare.poll(cx, deadline.as_mut(), stopping.as_mut()));
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_rare_event_wakes_the_task_and_is_seen_at_the_next_poll() {
        let rare = RareEvents::new();
        let deadline = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(deadline);
        let (stop, mut stopped) = watch::channel(false);
        let stopping = async { drop(stopped.wait_for(|stop| *stop).await) };
        tokio::pin!(stopping);
        // Nothing is due at first; the deadline then wakes the task by itself.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(rare.poll::<()>(cx, deadline.as_mut(), stopping.as_mut()))
        });
        assert!(first.await.is_pending());
        let event = next_event(&rare, deadline.as_mut(), stopping.as_mut()).await;
        assert!(
            matches!(event, Some(ConnEvent::Deadline)),
            "the deadline was not seen"
        );
        // Pushed back, and shutdown starts meanwhile.
        deadline
            .as_mut()
            .reset(Instant::now() + Duration::from_secs(30));
        rare.look_again();
        let waiting = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send_replace(true);
        });
        let event = next_event(&rare, deadline.as_mut(), stopping.as_mut()).await;
        assert!(
            matches!(event, Some(ConnEvent::Stop)),
            "the shutdown was not seen"
        );
        waiting.await.unwrap();
    }
}
