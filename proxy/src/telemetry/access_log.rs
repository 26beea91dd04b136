//! Access logs: one line per request on stdout, JSON or a combined-log-like text line.
//! Lines are written by a thread of their own through a bounded queue, so a slow stdout
//! never holds up a request; when the writer falls behind, lines are dropped and counted.

use prometheus::IntCounter;
use serde::Serialize;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--access-log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// Lines waiting for the writer; beyond this, lines are dropped.
const QUEUE_LINES: usize = 16 * 1024;

pub struct AccessLog {
    queue: SyncSender<String>,
    format: AccessLogFormat,
    dropped: IntCounter,
}

/// What one request's line says.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
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
    pub duration: f64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_duration: Option<f64>,
    pub namespace: &'a str,
    pub ingress: &'a str,
    pub service: &'a str,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    pub tls_version: &'a str,
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
        let (queue, lines) = sync_channel::<String>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = lines.recv() {
                    let mut result = out.write_all(line.as_bytes());
                    // Write what else is waiting, then flush once: a burst costs one syscall.
                    while let (Ok(()), Ok(line)) = (&result, lines.try_recv()) {
                        result = out.write_all(line.as_bytes());
                    }
                    if result.and_then(|()| out.flush()).is_err() {
                        return; // stdout is gone; the queue fills and lines are counted as dropped
                    }
                }
            })?;
        Ok(AccessLog {
            queue,
            format,
            dropped,
        })
    }

    pub fn write(&self, entry: &Entry) {
        let line = match self.format {
            AccessLogFormat::Json => {
                let mut line = serde_json::to_string(entry).unwrap_or_default();
                line.push('\n');
                line
            }
            AccessLogFormat::Text => text_line(entry),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.dropped.inc();
        }
    }
}

/// nginx's combined format, then what ingress-nginx's `upstreaminfo` adds: request
/// length, duration, `[namespace-ingress-service]`, upstream address, upstream
/// duration, request id. Values from the request are escaped as nginx does (`\xHH`).
fn text_line(e: &Entry) -> String {
    let client = e.client.map_or("-".to_string(), |c| c.to_string());
    let upstream = e.upstream_addr.map_or("-".to_string(), |a| a.to_string());
    let upstream_time = e
        .upstream_duration
        .map_or("-".to_string(), |d| format!("{d:.3}"));
    let query = if e.query.is_empty() {
        String::new()
    } else {
        format!("?{}", escape(e.query))
    };
    format!(
        "{client} - - [{}] \"{} {}{query} {}\" {} {} \"{}\" \"{}\" {} {:.3} [{}-{}-{}] {upstream} {upstream_time} {}\n",
        clf_time(e.time),
        escape(e.method),
        escape(e.path),
        e.protocol,
        e.status,
        e.bytes_out,
        escape(or_dash(e.referer)),
        escape(or_dash(e.user_agent)),
        e.bytes_in,
        e.duration,
        e.namespace,
        e.ingress,
        e.service,
        escape(e.request_id),
    )
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
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if s.bytes().all(plain) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out.into()
}

pub fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
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

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let (y, mo, d, h, mi, sec, ms) = civil(*time);
    s.serialize_str(&format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}Z"
    ))
}

fn clf_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, sec, _) = civil(time);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{sec:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
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
            duration: 0.0012,
            upstream_addr: Some(([127, 0, 0, 1], 8080).into()),
            upstream_duration: Some(0.001),
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

    #[test]
    fn json_lines_carry_every_field() {
        let line = serde_json::to_value(entry("/a")).unwrap();
        assert_eq!(line["time"], "2026-11-26T23:58:06.123Z");
        assert_eq!(line["client"], "10.0.0.1");
        assert_eq!(line["upstream_addr"], "127.0.0.1:8080");
        assert_eq!(line["status"], 200);
    }

    #[test]
    fn text_lines_escape_what_the_client_sent() {
        let line = text_line(&entry("/a\"b\n"));
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
        let started = std::time::Instant::now();
        for _ in 0..QUEUE_LINES + 5_000 {
            log.write(&entry("/x"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writing never waits for the writer"
        );
        assert!(
            dropped.get() >= 4_000,
            "lines beyond the queue are dropped and counted: {}",
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
}
