//! Access logs: one line per request on stdout, JSON or a combined-log-like text line.
//! A request formats its line straight into a shared buffer (no allocation of its own);
//! a writer thread of its own takes the whole buffer at once and writes it, when it holds
//! 64 KiB or 100 ms after its first line. So a request never waits for stdout and a busy
//! proxy makes one write a batch, not one a request; when stdout stalls and 8 MiB are
//! waiting, lines are dropped and counted.

use prometheus::IntCounter;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--access-log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// The writer is woken to write once this much is waiting...
const BATCH_BYTES: usize = 64 * 1024;
/// ...or this long after the first line of a batch.
const BATCH_DELAY: Duration = Duration::from_millis(100);
/// Beyond this much waiting (a stalled stdout), lines are dropped.
const MAX_WAITING_BYTES: usize = 8 * 1024 * 1024;

pub struct AccessLog {
    shared: Arc<Shared>,
    format: AccessLogFormat,
    dropped: IntCounter,
    writer: Option<JoinHandle<()>>,
}

/// What requests and the writer share.
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled on a batch's first line, when it reaches `BATCH_BYTES`, and on close.
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    lines: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic while formatting leaves whole lines or a cut one; logging goes on.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one request's line says.
#[derive(Debug)]
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration: Duration,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_duration: Option<Duration>,
    pub namespace: &'a str,
    pub ingress: &'a str,
    pub service: &'a str,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    pub tls_version: &'a str,
}

/// What one L4 session's line says.
#[derive(Debug)]
pub struct StreamEntry<'a> {
    pub time: SystemTime,
    /// `tcp`, `udp` or `tls-passthrough`.
    pub protocol: &'a str,
    pub port: u16,
    pub client: SocketAddr,
    pub upstream_addr: Option<SocketAddr>,
    /// `namespace/name:port` of the Service, or the passthrough host.
    pub service: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    /// How it ended: `closed`, `idle`, `drained`, `no_endpoint`, `connect_failed`,
    /// `bad_proxy_header`.
    pub end: &'a str,
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout.
    pub fn start(format: AccessLogFormat, dropped: IntCounter) -> std::io::Result<Self> {
        Self::start_on(format, dropped, std::io::stdout())
    }

    fn start_on(
        format: AccessLogFormat,
        dropped: IntCounter,
        out: impl Write + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_batches(&shared, out))?
        };
        Ok(AccessLog {
            shared,
            format,
            dropped,
            writer: Some(writer),
        })
    }

    pub fn write(&self, entry: &Entry) {
        self.append(|lines, format| match format {
            AccessLogFormat::Json => write_json(lines, entry),
            AccessLogFormat::Text => write_text(lines, entry),
        });
    }

    /// One line for a TCP connection or UDP session on an L4 port.
    pub fn write_stream(&self, entry: &StreamEntry) {
        self.append(|lines, format| match format {
            AccessLogFormat::Json => write_stream_json(lines, entry),
            AccessLogFormat::Text => write_stream_text(lines, entry),
        });
    }

    fn append(&self, format_into: impl FnOnce(&mut Vec<u8>, AccessLogFormat)) {
        let mut waiting = self.shared.lock();
        let before = waiting.lines.len();
        if before >= MAX_WAITING_BYTES || waiting.closed {
            drop(waiting);
            self.dropped.inc();
            return;
        }
        format_into(&mut waiting.lines, self.format);
        let after = waiting.lines.len();
        drop(waiting);
        if before == 0 || (before < BATCH_BYTES && after >= BATCH_BYTES) {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for AccessLog {
    /// Writes what is waiting before the log goes.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: takes every waiting line at once and writes them with one flush.
fn write_batches(shared: &Shared, out: impl Write) {
    let mut out = out;
    let mut batch = Vec::with_capacity(BATCH_BYTES * 2);
    loop {
        let mut waiting = shared.lock();
        while waiting.lines.is_empty() && !waiting.closed {
            waiting = shared
                .wake
                .wait(waiting)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Let the batch grow, unless it is big enough already or the log is closing.
        waiting = shared
            .wake
            .wait_timeout_while(waiting, BATCH_DELAY, |w| {
                w.lines.len() < BATCH_BYTES && !w.closed
            })
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        std::mem::swap(&mut waiting.lines, &mut batch);
        let closed = waiting.closed;
        drop(waiting);
        if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            // stdout is gone: lines pile up to the limit and are counted as dropped.
            return;
        }
        batch.clear();
        if closed {
            return;
        }
    }
}

/// One JSON object and a newline, written by hand: through serde each line cost about
/// 12 000 instructions, mostly `core::fmt` for the time and addresses and a
/// character-by-character escape of every string.
fn write_json(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    write_rfc3339(out, e.time);
    out.extend_from_slice(b"\",\"client\":");
    match e.client {
        Some(ip) => {
            out.push(b'"');
            write_ip(out, ip);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    for (name, value) in [
        ("method", e.method),
        ("host", e.host),
        ("path", e.path),
        ("query", e.query),
        ("protocol", e.protocol),
    ] {
        json_field(out, name, value);
    }
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, e.bytes_in as u64);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, e.bytes_out as u64);
    out.extend_from_slice(b",\"duration\":");
    write_seconds(out, e.duration, 6);
    out.extend_from_slice(b",\"upstream_addr\":");
    match e.upstream_addr {
        Some(SocketAddr::V4(a)) => {
            out.push(b'"');
            write_ip(out, IpAddr::V4(*a.ip()));
            out.push(b':');
            write_u64(out, u64::from(a.port()));
            out.push(b'"');
        }
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_duration\":");
    match e.upstream_duration {
        Some(d) => write_seconds(out, d, 6),
        None => out.extend_from_slice(b"null"),
    }
    for (name, value) in [
        ("namespace", e.namespace),
        ("ingress", e.ingress),
        ("service", e.service),
        ("request_id", e.request_id),
        ("trace_id", e.trace_id),
        ("user_agent", e.user_agent),
        ("referer", e.referer),
        ("tls_version", e.tls_version),
    ] {
        json_field(out, name, value);
    }
    out.extend_from_slice(b"}\n");
}

/// Sessions are few beside requests: `fmt` is fine here.
fn write_stream_json(out: &mut Vec<u8>, e: &StreamEntry) {
    out.extend_from_slice(b"{\"time\":\"");
    write_rfc3339(out, e.time);
    let _ = write!(
        out,
        "\",\"protocol\":\"{}\",\"port\":{},\"client\":\"{}\",\"upstream_addr\":",
        e.protocol, e.port, e.client
    );
    match e.upstream_addr {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    json_field(out, "service", e.service);
    let _ = write!(
        out,
        ",\"bytes_received\":{},\"bytes_sent\":{},\"duration\":",
        e.bytes_received, e.bytes_sent
    );
    write_seconds(out, e.duration, 6);
    json_field(out, "end", e.end);
    out.extend_from_slice(b"}\n");
}

fn write_stream_text(out: &mut Vec<u8>, e: &StreamEntry) {
    let _ = write!(
        out,
        "{} - - [{}] \"{} {}\" {} {} {} ",
        e.client.ip(),
        ClfTime(e.time),
        e.protocol.to_uppercase(),
        e.port,
        e.end,
        e.bytes_received,
        e.bytes_sent,
    );
    write_seconds(out, e.duration, 3);
    match e.upstream_addr {
        Some(a) => {
            let _ = write!(out, " {a} ");
        }
        None => out.extend_from_slice(b" - "),
    }
    escape_into(out, e.service);
    out.push(b'\n');
}

/// `,"name":"value"`, the value escaped for JSON.
fn json_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    let bytes = value.as_bytes();
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    if bytes.iter().all(plain) {
        out.extend_from_slice(bytes);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..0x20 => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]),
                // Multi-byte UTF-8 stays as it is: JSON text is UTF-8.
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

/// Decimal digits of `n`.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` as exactly `width` digits, zero-padded (`n` must fit).
fn write_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Seconds with `decimals` (3 or 6) places, rounded: `0.001234`.
fn write_seconds(out: &mut Vec<u8>, d: Duration, decimals: u32) {
    let unit = 10u128.pow(9 - decimals);
    let scaled = (d.as_nanos() + unit / 2) / unit;
    let per_second = 10u128.pow(decimals);
    write_u64(out, (scaled / per_second) as u64);
    out.push(b'.');
    write_padded(out, (scaled % per_second) as u64, decimals as usize);
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `2026-11-26T23:58:06.123Z`.
fn write_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let (y, mo, d, h, mi, sec, ms) = civil(time);
    write_padded(out, y.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    write_padded(out, u64::from(mo), 2);
    out.push(b'-');
    write_padded(out, u64::from(d), 2);
    out.push(b'T');
    write_padded(out, h, 2);
    out.push(b':');
    write_padded(out, mi, 2);
    out.push(b':');
    write_padded(out, sec, 2);
    out.push(b'.');
    write_padded(out, u64::from(ms), 3);
    out.push(b'Z');
}

/// nginx's combined format, then what ingress-nginx's `upstreaminfo` adds: request
/// length, duration, `[namespace-ingress-service]`, upstream address, upstream
/// duration, request id. Values from the request are escaped as nginx does (`\xHH`).
fn write_text(out: &mut Vec<u8>, e: &Entry) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{} - - [{}] \"", Dash(e.client), ClfTime(e.time));
    escape_into(out, e.method);
    out.push(b' ');
    escape_into(out, e.path);
    if !e.query.is_empty() {
        out.push(b'?');
        escape_into(out, e.query);
    }
    let _ = write!(out, " {}\" {} {} \"", e.protocol, e.status, e.bytes_out);
    escape_into(out, or_dash(e.referer));
    out.extend_from_slice(b"\" \"");
    escape_into(out, or_dash(e.user_agent));
    let _ = write!(out, "\" {} ", e.bytes_in);
    write_seconds(out, e.duration, 3);
    let _ = write!(
        out,
        " [{}-{}-{}] {} ",
        e.namespace,
        e.ingress,
        e.service,
        Dash(e.upstream_addr),
    );
    match e.upstream_duration {
        Some(d) => write_seconds(out, d, 3),
        None => out.push(b'-'),
    }
    out.push(b' ');
    escape_into(out, e.request_id);
    out.push(b'\n');
}

/// A value, or `-` when there is none.
struct Dash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Quotes, backslashes, and bytes outside printable ASCII as `\xHH`, so that a request
/// cannot forge a line or a field.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
    }
}

/// Year, month, day, hour, minute, second and millisecond (UTC) of a time.
fn civil(time: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// `26/Nov/2026:23:58:06 +0000`, as nginx's `$time_local` in UTC.
struct ClfTime(SystemTime);

impl fmt::Display for ClfTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let (y, mo, d, h, mi, sec, _) = civil(self.0);
        let month = MONTHS[(mo - 1) as usize];
        write!(f, "{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{sec:02} +0000")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn entry(path: &str) -> Entry<'_> {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_795_737_486_123),
            client: Some([10, 0, 0, 1].into()),
            method: "GET",
            host: "shop.test",
            path,
            query: "q=1",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 1024,
            duration: Duration::from_micros(1200),
            upstream_addr: Some(([127, 0, 0, 1], 8080).into()),
            upstream_duration: Some(Duration::from_millis(1)),
            namespace: "shop",
            ingress: "web",
            service: "api",
            request_id: "abc",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            user_agent: "curl/8",
            referer: "",
            tls_version: "",
        }
    }

    fn json(e: &Entry) -> (String, serde_json::Value) {
        let mut line = Vec::new();
        write_json(&mut line, e);
        let line = String::from_utf8(line).unwrap();
        let value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"));
        (line, value)
    }

    #[test]
    fn json_lines_carry_every_field() {
        let (text, line) = json(&entry("/a"));
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert_eq!(line["time"], "2026-11-26T23:58:06.123Z");
        assert_eq!(line["client"], "10.0.0.1");
        assert_eq!(line["upstream_addr"], "127.0.0.1:8080");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes_out"], 1024);
        assert_eq!(line["duration"].as_f64(), Some(0.0012));
        assert_eq!(line["upstream_duration"].as_f64(), Some(0.001));
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line.as_object().unwrap().len(), 21, "{text}");

        let mut bare = entry("/");
        bare.client = None;
        bare.upstream_addr = None;
        bare.upstream_duration = None;
        bare.client = Some("2001:db8::1".parse().unwrap());
        bare.duration = Duration::from_nanos(1_234_567_890);
        let (_, line) = json(&bare);
        assert_eq!(line["client"], "2001:db8::1");
        assert!(line["upstream_addr"].is_null() && line["upstream_duration"].is_null());
        assert_eq!(
            line["duration"].as_f64(),
            Some(1.234568),
            "rounded to microseconds"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client puts in a field, the line is one JSON object that gives it back.
            #[test]
            fn json_lines_give_back_any_text(
                path in "\\PC*|[\\x00-\\x1f\"\\\\/]*",
                agent in ".*",
                status in 100u16..1000,
                micros in 0u64..10_000_000_000,
            ) {
                let mut e = entry(&path);
                e.user_agent = &agent;
                e.status = status;
                e.duration = Duration::from_micros(micros);
                let (text, line) = json(&e);
                prop_assert_eq!(text.matches('\n').count(), 1);
                prop_assert_eq!(line["path"].as_str(), Some(path.as_str()));
                prop_assert_eq!(line["user_agent"].as_str(), Some(agent.as_str()));
                prop_assert_eq!(line["status"].as_u64(), Some(u64::from(status)));
                let seconds = line["duration"].as_f64().unwrap();
                prop_assert!((seconds * 1e6 - micros as f64).abs() < 0.5, "{}", text);
            }
        }
    }

    #[test]
    fn text_lines_escape_what_the_client_sent() {
        let mut line = Vec::new();
        write_text(&mut line, &entry("/a\"b\n"));
        let line = String::from_utf8(line).unwrap();
        assert!(line.starts_with(r#"10.0.0.1 - - [26/Nov/2026:23:58:06 +0000] "GET /a\x22b\x0A?q=1 HTTP/1.1" 200 1024 "-" "curl/8" 0 0.001 [shop-web-api] 127.0.0.1:8080 0.001 abc"#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }

    /// A writer that blocks until released, as a stalled stdout would.
    #[derive(Clone)]
    struct Stalled(Arc<Mutex<()>>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _wait = self.0.lock().unwrap();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_drops_lines_instead_of_blocking() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let held = gate.lock().unwrap();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::start_on(
            AccessLogFormat::Json,
            dropped.clone(),
            Stalled(gate.clone(), written.clone()),
        )
        .unwrap();
        let line_bytes = json(&entry("/x")).0.len();
        // The writer holds one batch (stalled in its write) and the limit waits behind it.
        let lines = 3 * MAX_WAITING_BYTES / line_bytes;
        let started = std::time::Instant::now();
        for _ in 0..lines {
            log.write(&entry("/x"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writing never waits for the writer"
        );
        let at_most_taken = (2 * MAX_WAITING_BYTES + BATCH_BYTES) / line_bytes + 2;
        assert!(
            dropped.get() as usize >= lines - at_most_taken,
            "lines beyond the limit are dropped and counted: {} of {lines}",
            dropped.get()
        );
        drop(held);
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && written.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let first = written
            .lock()
            .unwrap()
            .split(|b| *b == b'\n')
            .next()
            .map(<[u8]>::to_vec)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&first)
            .expect("queued lines are written once the writer moves");
    }

    /// Records each write it is given.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_batches_and_all_of_them_on_close() {
        let writes = Writes::default();
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log =
            AccessLog::start_on(AccessLogFormat::Text, dropped.clone(), writes.clone()).unwrap();
        for i in 0..1000 {
            log.write(&entry(&format!("/{i}")));
        }
        // A burst waits for the batch delay, then goes in a single write or a few.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writes.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 1000..1010 {
            log.write(&entry(&format!("/{i}")));
        }
        drop(log);
        let writes = writes.0.lock().unwrap();
        assert!(writes.len() <= 5, "{} writes for 1010 lines", writes.len());
        let all: Vec<u8> = writes.concat();
        let text = String::from_utf8(all).unwrap();
        let paths: Vec<&str> = text.lines().map(|l| l.split(' ').nth(6).unwrap()).collect();
        assert_eq!(paths.len(), 1010, "closing writes what was waiting");
        assert_eq!(paths[0], "/0?q=1");
        assert_eq!(paths[1009], "/1009?q=1");
        assert_eq!(dropped.get(), 0);
    }
}
