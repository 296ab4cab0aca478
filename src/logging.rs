//! Process logs (the access log included): written to stdout by a background thread, so a
//! request task never waits on the terminal, a pipe or a full disk.
//!
//! The queue between request tasks and the writer is bounded. When it is full a line is dropped
//! rather than stalling callers, and the drop is counted in `imgate_log_lines_dropped_total`
//! ([`DroppedLines`]), so an operator sees that the log sink is too slow instead of a gateway that
//! slows down with it. Colours are used only when stdout is a terminal: a file or a collector
//! gets plain text.
//!
//! `tracing` records a list as text, so events of [`LISTS_TARGET`] carry lists as JSON array
//! text (`["a","b"]`), and the JSON output turns such fields back into arrays: a log pipeline
//! gets `"apps_changed":["a","b"]`, not a string. Other events, the access log among them, are
//! written as they are.

use std::fmt;
use std::io::IsTerminal;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};
use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The target of events whose JSON-array text fields are written as arrays in JSON logs.
pub const LISTS_TARGET: &str = "imgate::config";

/// Lines the writer's queue holds before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// The running log writer: keep it alive for the life of the process (dropping it flushes what
/// is queued).
pub struct Logging {
    _flush_on_drop: WorkerGuard,
    dropped: ErrorCounter,
}

impl Logging {
    /// The metric of lines dropped because the writer fell behind, for a metrics registry.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines::new(self.dropped.clone())
    }
}

/// Logs to stdout in `format`, at `RUST_LOG`'s level if set, else at `level`. Returns `None` when
/// a logger is already installed (as in tests that start several gateways in one process).
pub fn init(format: LogFormat, level: &str) -> Option<Logging> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("imgate-log")
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
    };
    installed.ok().map(|()| Logging {
        _flush_on_drop: guard,
        dropped,
    })
}

/// The JSON formatter, with the lists of [`LISTS_TARGET`] events as arrays.
struct JsonLines(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != LISTS_TARGET {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match serde_json::from_str::<Value>(&line) {
            Ok(mut object) => {
                lists_as_arrays(&mut object);
                writeln!(writer, "{object}")
            }
            Err(_) => writer.write_str(&line),
        }
    }
}

/// Replaces every string field holding a JSON array with the array.
fn lists_as_arrays(object: &mut Value) {
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    for value in fields.values_mut() {
        let array = value
            .as_str()
            .filter(|text| text.starts_with('['))
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .filter(Value::is_array);
        if let Some(array) = array {
            *value = array;
        }
    }
}

/// `imgate_log_lines_dropped_total`, read from the writer's own count at each scrape.
#[derive(Clone)]
pub struct DroppedLines {
    counter: IntCounter,
    source: ErrorCounter,
}

impl DroppedLines {
    fn new(source: ErrorCounter) -> DroppedLines {
        let counter = IntCounter::with_opts(Opts::new(
            "imgate_log_lines_dropped_total",
            "Log lines dropped because the log writer fell behind (the queue was full).",
        ))
        .expect("a constant, valid metric name");
        DroppedLines { counter, source }
    }
}

impl Collector for DroppedLines {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.source.dropped_lines() as u64;
        // The writer only counts up; catch the counter up with it.
        self.counter.inc_by(now.saturating_sub(self.counter.get()));
        self.counter.collect()
    }
}

/// Milliseconds for a log field, rounded to the microsecond (`0.123`, not `0.12300000000000001`).
pub fn millis(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_to_the_microsecond() {
        assert_eq!(millis(0.000_123_456), 0.123);
        assert_eq!(millis(1.5), 1500.0);
        assert_eq!(millis(0.0), 0.0);
        assert_eq!(format!("{}", millis(0.012_345_678_9)), "12.346");
    }

    /// A sink that blocks until the test lets it go, like a stalled pipe.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_lines_and_counts_them_instead_of_blocking() {
        use std::io::Write;
        let (release, gate) = std::sync::mpsc::channel();
        let (mut writer, guard) = NonBlockingBuilder::default()
            .buffered_lines_limit(2)
            .lossy(true)
            .finish(Stalled(gate));
        let metric = DroppedLines::new(writer.error_counter());
        let started = std::time::Instant::now();
        for _ in 0..50 {
            writer
                .write_all(b"line\n")
                .expect("a lossy writer never fails");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let dropped = metric.collect()[0].get_metric()[0]
            .get_counter()
            .get_value();
        assert!(dropped >= 40.0, "dropped {dropped}");
        assert_eq!(dropped as usize, writer.error_counter().dropped_lines());
        drop(release);
        drop(guard);
    }

    #[test]
    fn json_array_text_becomes_an_array_and_other_text_stays() {
        let mut line = serde_json::json!({
            "message": "configuration reloaded",
            "apps_changed": "[\"a\",\"b\"]",
            "clients_removed": "[]",
            "note": "[not json",
        });
        lists_as_arrays(&mut line);
        assert_eq!(
            line,
            serde_json::json!({
                "message": "configuration reloaded",
                "apps_changed": ["a", "b"],
                "clients_removed": [],
                "note": "[not json",
            })
        );
    }
}
