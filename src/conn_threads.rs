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

/// Starts one connection thread, its runtime built first (so that a failure is known here).
fn start_thread(name: &str) -> Option<Worker> {
    let (jobs, queue) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
