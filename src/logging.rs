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

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};
use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;
use crate::shards::Shards;

/// The target of events whose JSON-array text fields are written as arrays in JSON logs.
pub const LISTS_TARGET: &str = "imgate::config";

/// The target of the access log: one line per request ([`access`]).
pub const ACCESS_TARGET: &str = "imgate::access";

/// Lines the writer's queue holds before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// Bytes the writer thread gathers before a write, at most (it also writes when idle).
const WRITE_BUFFER: usize = 64 * 1024;

/// The running log writer: keep it alive for the life of the process (dropping it flushes what
/// is queued).
pub struct Logging {
    _flush_on_drop: WorkerGuard,
    dropped: ErrorCounter,
    /// The writer the JSON access log goes to directly; `None` for text logs.
    access: Option<NonBlocking>,
}

impl Logging {
    /// The metric of lines dropped because the writer fell behind, for a metrics registry.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines::new(self.dropped.clone())
    }

    /// The access log's direct writer, with JSON logs (text logs go through `tracing`).
    pub fn access_log(&self) -> Option<AccessLog> {
        self.access.clone().map(|writer| AccessLog {
            writers: Arc::new(Shards::new(|| Mutex::new(writer.clone()))),
        })
    }
}

/// The log writer thread's output: buffered, and written out when the queue runs empty; under
/// a steady stream of lines, at most once per [`GATHER`] (the thread waits out the rest of
/// it first), so that a busy gateway's lines go out in a few large writes a millisecond rather
/// than in a small write, and a wake-up of the thread, every few lines. A quiet gateway's line
/// is written at once.
struct Gathered<W: std::io::Write> {
    out: std::io::BufWriter<W>,
    last_write: std::time::Instant,
}

/// The shortest time between two writes of a busy log.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

impl<W: std::io::Write> Gathered<W> {
    fn new(out: W) -> Gathered<W> {
        Gathered {
            out: std::io::BufWriter::with_capacity(WRITE_BUFFER, out),
            last_write: std::time::Instant::now(),
        }
    }
}

impl<W: std::io::Write> std::io::Write for Gathered<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let since = self.last_write.elapsed();
        if since < GATHER {
            // Lines arriving meanwhile wait in the queue for the next write.
            std::thread::sleep(GATHER - since);
        }
        let flushed = self.out.flush();
        self.last_write = std::time::Instant::now();
        flushed
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
        // Batched: the writer thread flushes whenever its queue runs empty, so a burst of lines
        // is one write instead of one per line (stdout alone flushes at every newline).
        .finish(Gathered::new(std::io::stdout()));
    let dropped = writer.error_counter();
    let access = (format == LogFormat::Json).then(|| writer.clone());
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
        access,
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

/// What one request did, for its access-log line.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// The W3C trace id.
    pub trace_id: &'a str,
    /// The client's name, or `-`.
    pub client: &'a str,
    /// The app's name, or `-`.
    pub app: &'a str,
    /// The endpoint's name, or `-`.
    pub endpoint: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The answer's status.
    pub status: u16,
    /// The cache's result, for cached reads.
    pub cache: Option<&'a str>,
    /// The vendor's status, when the vendor was called.
    pub vendor_status: Option<u16>,
    /// Milliseconds spent on the vendor.
    pub vendor_ms: f64,
    /// Milliseconds in all.
    pub total_ms: f64,
}

/// The JSON access log's own writer: a line per request written straight from its record, in
/// the shape `tracing`'s JSON formatter gives every other line (`timestamp`, `level`, the fields
/// in order, `target`), onto the same non-blocking queue. Through `tracing`, field dispatch and
/// serde cost more than the cache hit the line logs.
#[derive(Clone)]
pub struct AccessLog {
    /// A handle on the queue per thread: `NonBlocking` writes through `&mut`, and a handle
    /// cloned per line would count references that every core shares.
    writers: Arc<Shards<Mutex<NonBlocking>>>,
}

/// Writes the access-log line of `record` if the log filter lets `imgate::access` info through:
/// by `log`'s direct writer when there is one (JSON logs), else through `tracing`.
pub fn access(log: Option<&AccessLog>, record: &AccessRecord<'_>) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    match log {
        Some(log) => log.write(record),
        None => tracing::info!(
            target: ACCESS_TARGET,
            request_id = record.request_id,
            trace_id = record.trace_id,
            client = record.client,
            app = record.app,
            endpoint = record.endpoint,
            method = record.method,
            status = record.status,
            cache = record.cache,
            vendor_status = record.vendor_status,
            vendor_ms = record.vendor_ms,
            total_ms = record.total_ms,
        ),
    }
}

impl AccessLog {
    fn write(&self, record: &AccessRecord<'_>) {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            let time = std::time::SystemTime::now();
            let timestamp = |out: &mut String| {
                TIMESTAMP_PREFIX.with_borrow_mut(|prefix| prefix.write(out, time))
            };
            if access_json(line, record, timestamp).is_ok() {
                // Lossy: a full queue drops the line and counts it, never blocks.
                let mut writer = self
                    .writers
                    .local()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let _ = std::io::Write::write_all(&mut *writer, line.as_bytes());
            }
        });
    }
}

thread_local! {
    /// The date and time to the second of this thread's last access line.
    static TIMESTAMP_PREFIX: std::cell::RefCell<TimestampPrefix> =
        const { std::cell::RefCell::new(TimestampPrefix { secs: u64::MAX, text: String::new() }) };
}

/// A timestamp's text up to its fraction (`2026-11-28T00:22:30.`), made once per second: a
/// line costs only its microseconds.
struct TimestampPrefix {
    secs: u64,
    text: String,
}

impl TimestampPrefix {
    /// Writes `time` as [`write_timestamp`] would.
    fn write(&mut self, out: &mut String, time: std::time::SystemTime) -> fmt::Result {
        let since_epoch = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if since_epoch.as_secs() != self.secs {
            self.secs = since_epoch.as_secs();
            self.text.clear();
            write_timestamp(&mut self.text, time)?;
            // Keep `…:30.`: the fraction and `Z` are this line's own.
            self.text.truncate(self.text.len() - "125553Z".len());
        }
        out.push_str(&self.text);
        push_padded(out, u64::from(since_epoch.subsec_micros()), 6)?;
        out.push('Z');
        Ok(())
    }
}

/// The JSON line of `record`, its timestamp written by `timestamp`.
fn access_json(
    out: &mut String,
    r: &AccessRecord<'_>,
    timestamp: impl FnOnce(&mut String) -> fmt::Result,
) -> fmt::Result {
    out.push_str("{\"timestamp\":\"");
    timestamp(out)?;
    out.push_str("\",\"level\":\"INFO\"");
    let strings = [
        ("request_id", r.request_id),
        ("trace_id", r.trace_id),
        ("client", r.client),
        ("app", r.app),
        ("endpoint", r.endpoint),
        ("method", r.method),
    ];
    for (name, value) in strings {
        json_key(out, name);
        write_json_str(out, value)?;
    }
    json_key(out, "status");
    out.push_str(itoa::Buffer::new().format(r.status));
    if let Some(cache) = r.cache {
        json_key(out, "cache");
        write_json_str(out, cache)?;
    }
    if let Some(status) = r.vendor_status {
        json_key(out, "vendor_status");
        out.push_str(itoa::Buffer::new().format(status));
    }
    for (name, value) in [("vendor_ms", r.vendor_ms), ("total_ms", r.total_ms)] {
        json_key(out, name);
        push_millis(out, value)?;
    }
    out.push_str(",\"target\":\"");
    out.push_str(ACCESS_TARGET);
    out.push_str("\"}\n");
    Ok(())
}

/// `,"name":` (names are constants with nothing to escape).
fn json_key(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

/// Milliseconds as serde_json writes an `f64`: the shortest form that reads back the same,
/// `null` when not finite. Values in whole microseconds ([`millis`]) are written from the
/// integer count (`12.346`, `1500.0`), which is that same text at a fraction of the cost.
fn push_millis(out: &mut String, value: f64) -> fmt::Result {
    let micros = (value * 1e3).round();
    if value.is_finite() && (0.0..1e12).contains(&micros) && micros / 1e3 == value {
        let micros = micros as u64;
        out.push_str(itoa::Buffer::new().format(micros / 1000));
        out.push('.');
        let fraction = micros % 1000;
        if fraction == 0 {
            out.push('0');
        } else {
            let mut digits = [b'0'; 3];
            digits[0] += (fraction / 100) as u8;
            digits[1] += (fraction / 10 % 10) as u8;
            digits[2] += (fraction % 10) as u8;
            let used = 3 - digits.iter().rev().take_while(|d| **d == b'0').count();
            out.push_str(std::str::from_utf8(&digits[..used]).map_err(|_| fmt::Error)?);
        }
        return Ok(());
    }
    // Not a duration imgate measures: serde_json's own text, whatever it costs.
    out.push_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?);
    Ok(())
}

/// `value` in decimal, zero-padded to `width` digits.
fn push_padded(w: &mut impl fmt::Write, value: u64, width: usize) -> fmt::Result {
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(value);
    for _ in text.len()..width {
        w.write_char('0')?;
    }
    w.write_str(text)
}

/// A JSON string: quoted, with quotes, backslashes and control characters escaped.
fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscaped(w).write_str(s)?;
    w.write_char('"')
}

/// The first byte JSON must escape (a control character, `"` or `\\`), looked for eight bytes
/// at a time.
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `x` is below `n` (n <= 0x80): the classic bit trick. It may also
    // flag a word without such a byte; that word only goes to the byte-wise check.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let special = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\';
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_ne_bytes(eight);
        let suspect = below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1);
        if suspect != 0 {
            if let Some(i) = word.iter().position(special) {
                return Some(at + i);
            }
        }
        at += 8;
    }
    words.remainder().iter().position(special).map(|i| at + i)
}

/// Escapes what it is given for the inside of a JSON string.
struct JsonEscaped<'w, W: fmt::Write>(&'w mut W);

impl<W: fmt::Write> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The common case, nothing to escape, in one tight scan.
        let Some(first) = first_special(s.as_bytes()) else {
            return self.0.write_str(s);
        };
        self.0.write_str(&s[..first])?;
        let mut plain = first;
        for (i, b) in s.bytes().enumerate().skip(first) {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

/// `time` in RFC 3339, UTC, to the microsecond (`2026-11-28T00:22:30.125553Z`), as the other
/// lines have it.
fn write_timestamp(w: &mut impl fmt::Write, time: std::time::SystemTime) -> fmt::Result {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    let digits = [
        (u64::from(year), 4),
        (u64::from(month), 2),
        (u64::from(day), 2),
        (in_day / 3600, 2),
        (in_day % 3600 / 60, 2),
        (in_day % 60, 2),
        (u64::from(since_epoch.subsec_micros()), 6),
    ];
    let separators = ["-", "-", "T", ":", ":", ".", "Z"];
    for ((value, width), separator) in digits.into_iter().zip(separators) {
        push_padded(w, value, width)?;
        w.write_str(separator)?;
    }
    Ok(())
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    (narrow(year), narrow(month), narrow(day))
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
    use std::time::Duration;

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
    fn days_since_the_epoch_become_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn timestamps_are_rfc3339_to_the_microsecond() {
        let mut out = String::new();
        let time = std::time::UNIX_EPOCH + std::time::Duration::new(1_795_825_350, 5_553_999);
        write_timestamp(&mut out, time).unwrap();
        assert_eq!(out, "2026-11-28T00:22:30.005553Z");
    }

    /// What a writer was given, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The event `emit` makes, written by `formatter`.
    fn formatted<F>(formatter: F, emit: impl FnOnce()) -> String
    where
        F: for<'a> FormatEvent<tracing_subscriber::Registry, JsonFields> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .fmt_fields(JsonFields::new())
            .event_format(formatter)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_direct_access_line_is_what_the_generic_json_formatter_writes() {
        for (cache, vendor_status) in [(Some("hit"), None), (None, Some(503))] {
            let record = AccessRecord {
                request_id: "a\"b\\c\n\u{1}张",
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                client: "demo",
                app: "agora-demo",
                endpoint: "offline_msg_count",
                method: "GET",
                status: 200,
                cache,
                vendor_status,
                vendor_ms: 0.0,
                total_ms: millis(0.000_035),
            };
            let generic = tracing_subscriber::fmt::format().json().flatten_event(true);
            let slow = formatted(generic, || access(None, &record));
            let mut fast = String::new();
            let now = std::time::SystemTime::now();
            access_json(&mut fast, &record, |out| write_timestamp(out, now)).unwrap();
            assert!(fast.ends_with('\n') && fast.lines().count() == 1, "{fast}");
            let parse = |line: &str| {
                serde_json::from_str::<serde_json::Map<String, Value>>(line).expect("JSON")
            };
            let (mut fast, mut slow) = (parse(&fast), parse(&slow));
            let (fast_time, slow_time) = (fast.remove("timestamp"), slow.remove("timestamp"));
            let (fast_time, slow_time) = (fast_time.unwrap(), slow_time.unwrap());
            assert_eq!(
                fast_time.as_str().unwrap().len(),
                slow_time.as_str().unwrap().len()
            );
            assert_eq!(
                fast_time.as_str().unwrap()[..16],
                slow_time.as_str().unwrap()[..16]
            );
            assert_eq!(fast, slow);
            let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&fast), keys(&slow), "the same order");
            assert_eq!(fast["request_id"], "a\"b\\c\n\u{1}张");
            assert_eq!(fast["total_ms"], 0.035);
        }
    }

    #[test]
    fn a_busy_log_is_written_at_most_once_a_millisecond_and_loses_nothing() {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Counting(Arc<Mutex<(usize, Vec<u8>)>>);
        impl Write for Counting {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let mut seen = self.0.lock().unwrap();
                seen.0 += 1;
                seen.1.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Counting::default();
        let mut log = Gathered::new(sink.clone());
        let started = std::time::Instant::now();
        for i in 0..50 {
            writeln!(log, "line {i}").unwrap();
            log.flush().unwrap();
        }
        let elapsed_ms = started.elapsed().as_millis() as usize;
        let (writes, bytes) = sink.0.lock().unwrap().clone();
        assert!(
            writes <= elapsed_ms + 2,
            "{writes} writes in {elapsed_ms} ms"
        );
        let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn milliseconds_are_written_as_serde_json_writes_them() {
        let micros = (0..20_000u64).chain([999_999, 1_000_000, 1_234_567, 86_400_000_000]);
        for n in micros {
            let value = millis(n as f64 / 1e6);
            let mut fast = String::new();
            push_millis(&mut fast, value).unwrap();
            assert_eq!(fast, serde_json::to_string(&value).unwrap(), "{n} us");
        }
        for odd in [0.1234, f64::NAN, 1e300, -1.5] {
            let mut fast = String::new();
            push_millis(&mut fast, odd).unwrap();
            assert_eq!(fast, serde_json::to_string(&odd).unwrap(), "{odd}");
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_byte_to_escape() {
        let naive = |s: &[u8]| {
            s.iter()
                .position(|b| *b < 0x20 || *b == b'"' || *b == b'\\')
        };
        let mut samples: Vec<Vec<u8>> = vec![b"plain-ascii-text-longer-than-a-word".to_vec()];
        for special in [0u8, 0x1f, b'"', b'\\'] {
            for at in 0..20 {
                let mut s = "ab张c!~ \x7f".repeat(3).into_bytes();
                s.truncate(20);
                s[at] = special;
                samples.push(s);
            }
        }
        samples.push("0x20 and up: !#$%&'()*+,-./[]^_`{|}~ é 张".into());
        for s in &samples {
            assert_eq!(first_special(s), naive(s), "{s:?}");
        }
    }

    #[test]
    fn the_timestamp_prefix_is_remade_when_the_second_changes() {
        let mut prefix = TimestampPrefix {
            secs: u64::MAX,
            text: String::new(),
        };
        let base = std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for offset_us in [0, 999_999, 1_000_000, 1_000_001, 86_400_000_123] {
            let time = base + Duration::from_micros(offset_us);
            let (mut fast, mut slow) = (String::new(), String::new());
            prefix.write(&mut fast, time).unwrap();
            write_timestamp(&mut slow, time).unwrap();
            assert_eq!(fast, slow);
        }
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
