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
//!
//! A thread that stays busy never sleeps, so the kernel moves it off its core only at the
//! scheduler tick (every 4 ms at `HZ=250`, 10 ms at 100); whatever waits for that core meanwhile,
//! another connection thread the kernel put on the same core among them, waits that long. Each
//! thread therefore gives its core up (`sched_yield`) once it has worked `busy_yield` without
//! sleeping ([`BusyClock`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Starts `count` threads named `{name}-{i}`, each yielding its core after `busy_yield` of
    /// work without sleeping (never with `None`). A thread that cannot start its runtime is
    /// left out (its connections then go to the others, or to the calling runtime).
    pub fn start(count: usize, name: &str, busy_yield: Option<Duration>) -> ConnThreads {
        let workers = (0..count)
            .filter_map(|i| start_thread(&format!("{name}-{i}"), busy_yield))
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
fn start_thread(name: &str, busy_yield: Option<Duration>) -> Option<Worker> {
    let (jobs, queue) = mpsc::unbounded_channel();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(limit) = busy_yield {
        // The runtime "parks" each time its queue of ready tasks runs dry and it looks at its
        // sockets again; the look either finds events at once or sleeps.
        builder
            .on_thread_park(|| BUSY_CLOCK.set(BUSY_CLOCK.get().parking(Instant::now())))
            .on_thread_unpark(move || {
                let (clock, give_up_core) = BUSY_CLOCK.get().unparked(Instant::now(), limit);
                if give_up_core {
                    std::thread::yield_now();
                }
                BUSY_CLOCK.set(clock);
            });
    }
    let runtime = builder
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

/// A look at the sockets that took longer than this slept: the thread gave its core up.
const SLEPT: Duration = Duration::from_micros(50);

thread_local! {
    /// This connection thread's [`BusyClock`].
    static BUSY_CLOCK: Cell<BusyClock> = const { Cell::new(BusyClock { parked_at: None, busy_since: None }) };
}

/// How long a connection thread has worked without sleeping, kept across its runtime's parks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BusyClock {
    /// When the runtime last started to look at its sockets.
    parked_at: Option<Instant>,
    /// Since when the thread has worked without sleeping.
    busy_since: Option<Instant>,
}

impl BusyClock {
    /// The runtime starts to look at its sockets at `now`.
    fn parking(self, now: Instant) -> BusyClock {
        BusyClock {
            parked_at: Some(now),
            ..self
        }
    }

    /// The look ended at `now`: the clock after it, and whether the thread has worked `limit`
    /// without sleeping and should give its core up now (the clock then restarts).
    fn unparked(self, now: Instant, limit: Duration) -> (BusyClock, bool) {
        let slept = self
            .parked_at
            .is_none_or(|at| now.saturating_duration_since(at) > SLEPT);
        let since = match self.busy_since {
            Some(since) if !slept => since,
            _ => now,
        };
        let give_up_core = now.saturating_duration_since(since) >= limit;
        let busy_since = Some(if give_up_core { now } else { since });
        (
            BusyClock {
                parked_at: None,
                busy_since,
            },
            give_up_core,
        )
    }
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
        let threads = ConnThreads::start(3, "test-conn", Some(Duration::from_millis(1)));
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

    /// Whether the busy clock of the thread that serves a connection runs, with `busy_yield`.
    async fn busy_clock_runs(busy_yield: Option<Duration>) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let threads = ConnThreads::start(1, "clock-conn", busy_yield);
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        threads.spawn(accepted, |mut stream| async move {
            // Each sleep empties the thread's queue: its runtime parks and unparks.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let runs = BUSY_CLOCK.get().busy_since.is_some();
            let _ = stream.write_all(&[u8::from(runs)]).await;
        });
        client.read_u8().await.unwrap() == 1
    }

    #[tokio::test]
    async fn the_busy_clock_runs_on_connection_threads_that_yield() {
        assert!(busy_clock_runs(Some(Duration::from_millis(1))).await);
        assert!(!busy_clock_runs(None).await);
    }

    #[test]
    fn a_thread_gives_its_core_up_after_working_the_limit_without_sleeping() {
        let limit = Duration::from_millis(1);
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        // Looks at the sockets every 100 µs, each finding events at once (10 µs).
        let mut clock = BusyClock {
            parked_at: None,
            busy_since: None,
        };
        let mut yields = Vec::new();
        for step in 0..25 {
            let parked = at(step * 100);
            let (next, give_up) = clock.parking(parked).unparked(at(step * 100 + 10), limit);
            if give_up {
                yields.push(step * 100 + 10);
            }
            clock = next;
        }
        // The first look starts the clock; then once per millisecond of work.
        assert_eq!(yields, vec![1_010, 2_010], "{clock:?}");
    }

    #[test]
    fn a_thread_that_slept_starts_its_clock_again() {
        let limit = Duration::from_millis(1);
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let busy = BusyClock {
            parked_at: None,
            busy_since: Some(start),
        };
        // 900 µs of work, then a look that sleeps 200 µs: no yield, the clock restarts…
        let (clock, give_up) = busy.parking(at(900)).unparked(at(1_100), limit);
        assert!(!give_up);
        assert_eq!(clock.busy_since, Some(at(1_100)));
        // …so 950 µs more of work is not yet a millisecond without sleep.
        let (_, give_up) = clock.parking(at(2_040)).unparked(at(2_050), limit);
        assert!(!give_up);
        // Without the sleep the same work would have passed the limit.
        let (_, give_up) = busy.parking(at(1_090)).unparked(at(1_100), limit);
        assert!(give_up);
    }

    #[tokio::test]
    async fn without_threads_connections_run_on_the_calling_runtime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let threads = ConnThreads::start(0, "none", None);
        let hold = Arc::new(tokio::sync::Notify::new());
        let mut client = thread_of_next_connection(&listener, &threads, hold.clone()).await;
        let mut name = String::new();
        client.read_to_string(&mut name).await.unwrap();
        assert!(!name.starts_with("none-"), "{name}");
        hold.notify_waiters();
    }
}
