//! Connection threads: accepted connections served on a few threads of their own, one
//! single-threaded tokio runtime each, instead of the shared work-stealing runtime.
//!
//! Why: on a cache hit the request is a few microseconds of work; on the work-stealing runtime
//! every burst of socket events also wakes an idle worker to look for work to steal, and those
//! wake-ups (futex calls, context switches, a second core touching the same queues) cost about
//! as much again as imgate's own share of the request. A connection that stays on one thread,
//! whose socket is registered with that thread's own event loop, costs none of that
//! (`benches/cache.sh`; README, "Performance"). The accept loop stays on the calling runtime and
//! hands each connection to the thread serving the fewest; everything else (token renewal, the
//! admin listener, reloads) stays on the shared runtime. A task a request spawns (a background
//! cache refresh, a new pooled vendor connection) runs on the request's thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a connection thread runs for one connection: made on that thread, from the connection's
/// socket registered with that thread's event loop.
type Job = Box<dyn FnOnce(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A connection and what serves it, on its way to a connection thread.
struct Handoff {
    stream: std::net::TcpStream,
    job: Job,
    /// Counted out of its thread's load when the connection ends.
    load: Load,
}

/// One thread's count of open connections, held by each of them.
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection thread, as the accept loop sees it.
struct Worker {
    jobs: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

/// A set of connection threads. Dropping it lets each thread end once its queue is empty; the
/// connections still open on it are then dropped (callers drain them first).
pub struct ConnThreads {
    workers: Vec<Worker>,
}

impl ConnThreads {
    /// Starts `count` threads named `{name}-{i}`. A thread that cannot start its runtime is
    /// left out (its connections then go to the others, or to the calling runtime).
    pub fn start(count: usize, name: &str) -> ConnThreads {
        let workers = (0..count)
            .filter_map(|i| start_thread(&format!("{name}-{i}")))
            .collect();
        ConnThreads { workers }
    }

    /// Serves `stream` with `serve` on the thread with the fewest open connections (on the
    /// calling runtime when there is none).
    pub fn spawn<F>(&self, stream: TcpStream, serve: impl FnOnce(TcpStream) -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            tokio::spawn(serve(stream));
            return;
        };
        // The socket leaves this runtime's event loop for the thread's own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "connection lost before its hand-off");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let handoff = Handoff {
            stream,
            job: Box::new(move |stream| Box::pin(serve(stream))),
            load: Load(worker.open.clone()),
        };
        if let Err(mpsc::error::SendError(handoff)) = worker.jobs.send(handoff) {
            // The thread has ended (only after a panic): serve the connection here instead.
            if let Ok(stream) = TcpStream::from_std(handoff.stream) {
                tokio::spawn((handoff.job)(stream));
            }
        }
    }
}

/// How many tasks a connection thread runs between two looks at its sockets: one. tokio's
/// default (61) lets a busy thread work through a batch of ready connections before it sees
/// the requests that arrived meanwhile. Looking after every task costs an `epoll_wait` per
/// request under load (none more when idle: an empty queue looks anyway), about 0.9 µs of CPU
/// per cache hit, and shortens the tail when the cores are shared: wrk on the same two cores,
/// alternating runs, p99 4.0–7.4 ms → 1.9–3.2 ms (README, "Performance").
const EVENT_INTERVAL: u32 = 1;

/// Starts one connection thread, its runtime built first (so that a failure is known here).
fn start_thread(name: &str) -> Option<Worker> {
    let (jobs, queue) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
        .map_err(|err| tracing::warn!(error = %err, "connection thread: no runtime"))
        .ok()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || runtime.block_on(run_jobs(queue)))
        .map_err(|err| tracing::warn!(error = %err, "connection thread did not start"))
        .ok()?;
    Some(Worker {
        jobs,
        open: Arc::new(AtomicUsize::new(0)),
    })
}

/// A connection thread's loop: each connection handed over becomes a task of this thread.
async fn run_jobs(mut queue: mpsc::UnboundedReceiver<Handoff>) {
    while let Some(Handoff { stream, job, load }) = queue.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let connection = job(stream);
                tokio::spawn(async move {
                    connection.await;
                    drop(load);
                });
            }
            Err(err) => tracing::debug!(error = %err, "connection lost in its hand-off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Each connection is answered with the name of the thread that serves it.
    async fn thread_of_next_connection(
        listener: &TcpListener,
        threads: &ConnThreads,
        hold: Arc<tokio::sync::Notify>,
    ) -> TcpStream {
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        threads.spawn(accepted, move |mut stream| async move {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = stream.write_all(name.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Stays open (counted) until the test lets it go.
            hold.notified().await;
        });
        client
    }

    #[tokio::test]
    async fn connections_spread_over_the_threads_and_run_there() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let threads = ConnThreads::start(3, "test-conn");
        let hold = Arc::new(tokio::sync::Notify::new());
        let mut per_thread = HashMap::<String, usize>::new();
        for _ in 0..9 {
            let mut client = thread_of_next_connection(&listener, &threads, hold.clone()).await;
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            *per_thread.entry(name).or_default() += 1;
        }
        // Fewest open first: 9 held connections end up 3 on each thread.
        assert_eq!(per_thread.len(), 3, "{per_thread:?}");
        assert!(per_thread.values().all(|&n| n == 3), "{per_thread:?}");
        assert!(per_thread.keys().all(|name| name.starts_with("test-conn-")));
        hold.notify_waiters();
    }

    /// A task that stays ready for up to `limit` polls, each about 50 µs of work, counting them.
    struct Spinner {
        polls: Arc<AtomicUsize>,
        limit: usize,
    }

    impl Future for Spinner {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_micros(50) {
                std::hint::spin_loop();
            }
            if self.polls.fetch_add(1, Ordering::SeqCst) + 1 >= self.limit {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_busy_thread_reads_a_new_request_after_the_task_it_is_running() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let threads = ConnThreads::start(1, "busy-conn");
        for _ in 0..5 {
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (mut client, (accepted, _)) =
                tokio::join!(async { client.await.unwrap() }, async {
                    listener.accept().await.unwrap()
                });
            let polls = Arc::new(AtomicUsize::new(0));
            let spinner = Spinner {
                polls: polls.clone(),
                limit: 5_000,
            };
            let seen = polls.clone();
            // The connection's task keeps the thread busy with a task that is always ready,
            // then answers a byte with the number of the spinner's polls at the moment it read it.
            threads.spawn(accepted, move |mut stream| async move {
                tokio::spawn(spinner);
                let mut byte = [0u8];
                if stream.read_exact(&mut byte).await.is_ok() {
                    let at_read = seen.load(Ordering::SeqCst) as u64;
                    let _ = stream.write_all(&at_read.to_be_bytes()).await;
                }
            });
            while polls.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            client.write_all(b"?").await.unwrap();
            // Counted once the byte is on its way (this thread may lose its core at any time).
            let sent_at = polls.load(Ordering::SeqCst) as u64;
            let read_at = client.read_u64().await.unwrap();
            // tokio's default would leave the request unread for up to 61 of the spinner's polls.
            assert!(
                read_at.saturating_sub(sent_at) <= 8,
                "the request waited {} polls of a busy task",
                read_at - sent_at
            );
        }
    }

    #[tokio::test]
    async fn without_threads_connections_run_on_the_calling_runtime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let threads = ConnThreads::start(0, "none");
        let hold = Arc::new(tokio::sync::Notify::new());
        let mut client = thread_of_next_connection(&listener, &threads, hold.clone()).await;
        let mut name = String::new();
        client.read_to_string(&mut name).await.unwrap();
        assert!(!name.starts_with("none-"), "{name}");
        hold.notify_waiters();
    }
}
