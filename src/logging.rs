//! Process logs (the access log included): written to stdout by a background thread, so a
//! request task never waits on the terminal, a pipe or a full disk.
//!
//! Lines wait for the writer in buffers, one per shard of threads ([`Queue`]), that it swaps out
//! whole at most once a millisecond. The buffers are bounded. When one is full a line is dropped
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};
use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;
use crate::shards::Shards;

/// The target of events whose JSON-array text fields are written as arrays in JSON logs.
pub const LISTS_TARGET: &str = "imgate::config";

/// The target of the access log: one line per request ([`access`]).
pub const ACCESS_TARGET: &str = "imgate::access";

/// Bytes of lines a shard of the queue holds for the writer before new lines are dropped: with
/// two cores, about a quarter of a second of a busy gateway's access log.
const SHARD_BYTES: usize = 4 * 1024 * 1024;

/// Bytes the writer thread gathers before a write, at most.
const WRITE_BUFFER: usize = 64 * 1024;

/// The shortest time between two writes of a busy log: a busy gateway's lines go out in a few
/// large writes a millisecond rather than in a small write, and a wake-up of the writer, every
/// few lines. A quiet gateway's line is written at once.
const GATHER: Duration = Duration::from_millis(1);

/// How long the end of the process waits for the writer to write what is queued.
const LAST_WRITE: Duration = Duration::from_secs(1);

/// The running log writer: keep it alive for the life of the process (dropping it writes what
/// is queued, waiting at most [`LAST_WRITE`]).
pub struct Logging {
    queue: Arc<Queue>,
    format: LogFormat,
    finished: std::sync::mpsc::Receiver<()>,
}

impl Logging {
    /// Starts the writer thread, writing what `queue` is given to `out`.
    fn start<W: std::io::Write + Send + 'static>(
        queue: Arc<Queue>,
        out: W,
        format: LogFormat,
    ) -> std::io::Result<Logging> {
        let (done, finished) = std::sync::mpsc::channel();
        let writer = queue.clone();
        let thread = std::thread::Builder::new()
            .name("imgate-log".to_owned())
            .spawn(move || {
                writer.write_until_stopped(out);
                let _ = done.send(());
            })?;
        let _ = queue.writer.set(thread.thread().clone());
        // A line queued before the writer could be woken is not left waiting.
        queue.wake_writer();
        Ok(Logging {
            queue,
            format,
            finished,
        })
    }

    /// The metric of lines dropped because the writer fell behind, for a metrics registry.
    pub fn dropped_lines(&self) -> DroppedLines {
        DroppedLines::new(self.queue.clone())
    }

    /// The access log's writer, decided once: off when the log filter leaves `imgate::access`
    /// out, JSON lines written straight onto the queue, or text through `tracing`.
    pub fn access_log(&self) -> AccessLog {
        let mode = if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            AccessMode::Off
        } else if self.format == LogFormat::Json {
            AccessMode::Json
        } else {
            AccessMode::Text
        };
        AccessLog {
            queue: self.queue.clone(),
            mode,
        }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.queue.wake_writer();
        // A stalled stdout must not hold the process up for ever.
        let _ = self.finished.recv_timeout(LAST_WRITE);
    }
}

/// The lines between the threads that log and the writer thread: a buffer of whole lines per
/// shard (threads take shards in turn), which the writer swaps for an empty one and writes out.
/// A line costs its text and an uncontended lock: no allocation, no channel, no wake-up of the
/// writer unless its buffer was empty. The lines of one thread stay in their order.
struct Queue {
    shards: Shards<Mutex<String>>,
    /// Bytes a shard holds before new lines are dropped.
    limit: usize,
    dropped: AtomicU64,
    writer: OnceLock<std::thread::Thread>,
    stop: AtomicBool,
}

impl Queue {
    fn new(limit: usize) -> Queue {
        Queue {
            shards: Shards::new(|| Mutex::new(String::new())),
            limit,
            dropped: AtomicU64::new(0),
            writer: OnceLock::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// Appends the line(s) `write` writes to the calling thread's buffer; drops them, counted,
    /// when the buffer is full (the writer fell behind), rather than wait.
    fn append(&self, write: impl FnOnce(&mut String) -> fmt::Result) {
        let mut pending = self
            .shards
            .local()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = pending.len();
        if start >= self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if write(&mut pending).is_err() {
            pending.truncate(start);
            return;
        }
        drop(pending);
        if start == 0 {
            // The writer may be asleep with nothing to write; it wakes once per buffer it empties.
            self.wake_writer();
        }
    }

    fn wake_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// The writer thread's loop: sleeps while there is nothing to write, and writes at most
    /// once per [`GATHER`] while there is; after [`Queue::stop`], writes what is left and ends.
    // Not inlined: the writer thread's cost shows under this name in benches/callgrind.sh.
    #[inline(never)]
    fn write_until_stopped<W: std::io::Write>(&self, out: W) {
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
        let mut spare = String::new();
        let mut last_write: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if let Some(wait) = last_write.and_then(|at| GATHER.checked_sub(at.elapsed())) {
                if !stopping {
                    // Lines arriving meanwhile join the next write.
                    std::thread::sleep(wait);
                }
            }
            // A write error (a closed stdout) loses those lines; later ones are tried again.
            let wrote = self.take_all(&mut out, &mut spare);
            let _ = std::io::Write::flush(&mut out);
            if stopping {
                return;
            }
            if wrote {
                last_write = Some(Instant::now());
            } else {
                // Woken by the next line into an empty buffer, or by the stop.
                std::thread::park();
            }
        }
    }

    /// Writes every shard's lines to `out`, swapping each buffer for `spare` (whose capacity
    /// is kept); whether there was anything to write.
    fn take_all(&self, out: &mut impl std::io::Write, spare: &mut String) -> bool {
        let mut wrote = false;
        for shard in self.shards.iter() {
            std::mem::swap(
                &mut *shard.lock().unwrap_or_else(PoisonError::into_inner),
                spare,
            );
            if !spare.is_empty() {
                wrote = true;
                let _ = out.write_all(spare.as_bytes());
                spare.clear();
            }
        }
        wrote
    }
}

/// The queue as `tracing`'s writer: each event's line (formatted whole, then written at once)
/// is appended like an access line.
struct QueueWriter(Arc<Queue>);

/// A borrowed [`QueueWriter`], one per event.
struct QueueLine<'q>(&'q Queue);

impl<'q> MakeWriter<'q> for QueueWriter {
    type Writer = QueueLine<'q>;

    fn make_writer(&'q self) -> QueueLine<'q> {
        QueueLine(&self.0)
    }
}

impl std::io::Write for QueueLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.append(|out| {
            out.push_str(&text);
            Ok(())
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs to stdout in `format`, at `RUST_LOG`'s level if set, else at `level`. Returns `None` when
/// a logger is already installed (as in tests that start several gateways in one process), or
/// when the writer thread cannot start (no line is then written, as without a logger).
pub fn init(format: LogFormat, level: &str) -> Option<Logging> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let queue = Arc::new(Queue::new(SHARD_BYTES));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(QueueWriter(queue.clone()));
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
    };
    installed.ok()?;
    // Started once its subscriber is in place: a process that has a logger already starts no
    // thread. Lines logged meanwhile wait in the queue, and `start` wakes the writer for them.
    Logging::start(queue, std::io::stdout(), format)
        .map_err(|err| eprintln!("imgate: no log writer thread: {err}"))
        .ok()
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

/// How the access log is written, decided at start ([`Logging::access_log`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum AccessMode {
    /// The log filter leaves `imgate::access` out.
    Off,
    /// JSON lines written straight onto the queue ([`access_json`]).
    Json,
    /// Text lines through `tracing`.
    Text,
}

/// The access log's writer. With JSON logs, a line per request is written straight from its
/// record onto the writer's queue, in the shape `tracing`'s JSON formatter gives every other
/// line (`timestamp`, `level`, the fields in order, `target`): through `tracing`, field dispatch
/// and serde cost more than the cache hit the line logs.
#[derive(Clone)]
pub struct AccessLog {
    queue: Arc<Queue>,
    mode: AccessMode,
}

/// Writes the access-log line of the record `make` builds (only when a line is written) by
/// `log`; without one (several gateways in one process, as in tests), through `tracing` if its
/// filter lets `imgate::access` info through.
pub fn access<'r>(log: Option<&AccessLog>, make: impl FnOnce() -> AccessRecord<'r>) {
    match log {
        Some(log) => log.write(make),
        None if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) => {
            access_event(&make())
        }
        None => {}
    }
}

/// The access line of `record` as a `tracing` event.
fn access_event(record: &AccessRecord<'_>) {
    tracing::info!(
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
    );
}

impl AccessLog {
    /// Writes the line of the record `make` builds in the mode decided at start.
    fn write<'r>(&self, make: impl FnOnce() -> AccessRecord<'r>) {
        match self.mode {
            AccessMode::Off => {}
            AccessMode::Json => self.write_json(&make()),
            AccessMode::Text => access_event(&make()),
        }
    }

    fn write_json(&self, record: &AccessRecord<'_>) {
        let time = std::time::SystemTime::now();
        self.queue.append(|line| {
            let timestamp = |out: &mut String| {
                TIMESTAMP_PREFIX.with_borrow_mut(|prefix| prefix.write(out, time))
            };
            access_json(line, record, timestamp)
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
    // Each key with its comma and colon in one constant: one copy per field.
    let strings = [
        (",\"request_id\":", r.request_id),
        (",\"trace_id\":", r.trace_id),
        (",\"client\":", r.client),
        (",\"app\":", r.app),
        (",\"endpoint\":", r.endpoint),
        (",\"method\":", r.method),
    ];
    for (key, value) in strings {
        out.push_str(key);
        write_json_str(out, value)?;
    }
    out.push_str(",\"status\":");
    out.push_str(itoa::Buffer::new().format(r.status));
    if let Some(cache) = r.cache {
        out.push_str(",\"cache\":");
        write_json_str(out, cache)?;
    }
    if let Some(status) = r.vendor_status {
        out.push_str(",\"vendor_status\":");
        out.push_str(itoa::Buffer::new().format(status));
    }
    for (key, value) in [
        (",\"vendor_ms\":", r.vendor_ms),
        (",\"total_ms\":", r.total_ms),
    ] {
        out.push_str(key);
        push_millis(out, value)?;
    }
    out.push_str(",\"target\":\"");
    out.push_str(ACCESS_TARGET);
    out.push_str("\"}\n");
    Ok(())
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

/// `imgate_log_lines_dropped_total`, read from the queue's own count at each scrape.
#[derive(Clone)]
pub struct DroppedLines {
    counter: IntCounter,
    queue: Arc<Queue>,
}

impl DroppedLines {
    fn new(queue: Arc<Queue>) -> DroppedLines {
        let counter = IntCounter::with_opts(Opts::new(
            "imgate_log_lines_dropped_total",
            "Log lines dropped because the log writer fell behind (the queue was full).",
        ))
        .expect("a constant, valid metric name");
        DroppedLines { counter, queue }
    }
}

impl Collector for DroppedLines {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.queue.dropped.load(Ordering::Relaxed);
        // The queue only counts up; catch the counter up with it.
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

    /// The value of the dropped-lines metric.
    fn dropped(metric: &DroppedLines) -> u64 {
        metric.collect()[0].get_metric()[0]
            .get_counter()
            .get_value() as u64
    }

    /// Appends `text` as a line of its own.
    fn line(queue: &Queue, text: &str) {
        queue.append(|out| writeln!(out, "{text}"));
    }

    #[test]
    fn a_stalled_sink_drops_lines_and_counts_them_instead_of_blocking() {
        let (release, gate) = std::sync::mpsc::channel();
        // Four 5-byte lines a buffer.
        let queue = Arc::new(Queue::new(20));
        let logging = Logging::start(queue.clone(), Stalled(gate), LogFormat::Json).unwrap();
        let metric = logging.dropped_lines();
        let started = Instant::now();
        for _ in 0..50 {
            line(&queue, "line");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // At most two buffers got through: the one the stalled writer holds, and the next.
        assert!(dropped(&metric) >= 42, "dropped {}", dropped(&metric));
        assert_eq!(dropped(&metric), queue.dropped.load(Ordering::Relaxed));
        drop(release);
        drop(logging);
    }

    #[test]
    fn stopping_waits_for_a_stalled_sink_at_most_the_last_write_deadline() {
        let (release, gate) = std::sync::mpsc::channel();
        let queue = Arc::new(Queue::new(SHARD_BYTES));
        let logging = Logging::start(queue.clone(), Stalled(gate), LogFormat::Json).unwrap();
        line(&queue, "stuck");
        let started = Instant::now();
        drop(logging);
        let waited = started.elapsed();
        assert!(
            waited >= LAST_WRITE - Duration::from_millis(100) && waited < LAST_WRITE * 3,
            "waited {waited:?}"
        );
        drop(release);
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
    struct Captured(Arc<Mutex<Vec<u8>>>);

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
            let slow = formatted(generic, || access(None, || record));
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

    /// A sink that counts its writes and keeps what they wrote.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<(usize, Vec<u8>)>>);

    impl std::io::Write for Counting {
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

    impl Counting {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().1.clone()).unwrap()
        }
    }

    #[test]
    fn a_quiet_log_line_is_written_at_once() {
        let sink = Counting::default();
        let queue = Arc::new(Queue::new(SHARD_BYTES));
        let _logging = Logging::start(queue.clone(), sink.clone(), LogFormat::Json).unwrap();
        for i in 0..3 {
            // Each line finds the writer asleep; it must not wait for a next one.
            line(&queue, &format!("alone {i}"));
            let started = Instant::now();
            while !sink.text().contains(&format!("alone {i}\n")) {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "line {i} not written"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_busy_log_is_written_at_most_once_a_millisecond_and_loses_nothing() {
        let sink = Counting::default();
        let queue = Arc::new(Queue::new(SHARD_BYTES));
        let logging = Logging::start(queue.clone(), sink.clone(), LogFormat::Json).unwrap();
        let started = Instant::now();
        for i in 0..50 {
            line(&queue, &format!("line {i}"));
            std::thread::sleep(Duration::from_micros(100));
        }
        // Stopping writes what is still queued.
        drop(logging);
        let elapsed_ms = started.elapsed().as_millis() as usize;
        let writes = sink.0.lock().unwrap().0;
        assert!(
            writes <= elapsed_ms + 2,
            "{writes} writes in {elapsed_ms} ms"
        );
        let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), expected);
    }

    #[test]
    fn lines_of_several_threads_are_all_written_each_thread_in_its_order() {
        let sink = Counting::default();
        let queue = Arc::new(Queue::new(SHARD_BYTES));
        let logging = Logging::start(queue.clone(), sink.clone(), LogFormat::Json).unwrap();
        std::thread::scope(|s| {
            for t in 0..6 {
                let queue = &queue;
                s.spawn(move || {
                    for i in 0..2_000 {
                        line(queue, &format!("{t} {i}"));
                    }
                });
            }
        });
        drop(logging);
        let mut next = [0; 6];
        for written in sink.text().lines() {
            let (t, i) = written.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2_000; 6]);
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 0);
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
