//! The proxies compared, each started on loopback in front of the same backend, with
//! equivalent settings: keep-alive upstream pool, one route, the same number of worker
//! threads, and what ingress-nginx's template does on every request (`X-Request-ID` made
//! and echoed, `X-Real-IP`, `X-Forwarded-For`, `-Host`, `-Port`, `-Proto`, and `X-Scheme`
//! where Portico has no equivalent). Access logs off, or with `access_log` each proxy's
//! own to a file: ingress-nginx's `upstreaminfo` format for nginx, `option httplog` for
//! HAProxy, Portico's default JSON line. The bare Pingora pass-through does none of it.

use crate::harness::{binary, free_port};
use crate::manifests::{ingress, service_with_endpoints, tls_secret, to_yaml};
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Host every contender is asked for.
pub const BENCH_HOST: &str = "bench.test";
/// The backend's fixed response body size.
pub const BODY_BYTES: usize = 1024;
/// The body of the realistic profile's answers, at [`LARGE_PATH`].
pub const LARGE_BODY_BYTES: usize = 8 * 1024;
pub const LARGE_PATH: &str = "/asset";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    Portico,
    Nginx,
    Haproxy,
    PingoraPassthrough,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::Portico,
        Contender::PingoraPassthrough,
        Contender::Nginx,
        Contender::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Portico => "portico",
            Contender::Nginx => "nginx",
            Contender::Haproxy => "haproxy",
            Contender::PingoraPassthrough => "pingora-passthrough",
        }
    }
}

/// A certificate for [`BENCH_HOST`], as separate and combined PEM files (HAProxy wants one).
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub combined: std::path::PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsFiles {
    pub fn create(dir: &Path) -> anyhow::Result<TlsFiles> {
        let issued = crate::tls::TestCa::new("bench ca").issue(&[BENCH_HOST]);
        let files = TlsFiles {
            cert: dir.join("bench.crt"),
            key: dir.join("bench.key"),
            combined: dir.join("bench.pem"),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        std::fs::write(&files.cert, &files.cert_pem)?;
        std::fs::write(&files.key, &files.key_pem)?;
        std::fs::write(
            &files.combined,
            format!("{}{}", files.cert_pem, files.key_pem),
        )?;
        Ok(files)
    }
}

/// Started processes; killed on drop.
pub struct Running {
    pub addr: SocketAddr,
    /// The HTTPS (HTTP/2 by ALPN) listener, when started with TLS.
    pub tls_addr: Option<SocketAddr>,
    /// The process whose tree is measured (nginx's master, the proxy itself...).
    pub measured_pid: u32,
    children: Vec<Child>,
}

impl Running {
    /// Started `children` listening on `addr`, the first of them the one measured.
    pub fn new(addr: SocketAddr, children: Vec<Child>) -> Running {
        Running {
            addr,
            tls_addr: None,
            measured_pid: children.first().map_or(0, Child::id),
            children,
        }
    }

    /// Asks the measured process to stop (SIGINT) and waits up to a minute for it to exit,
    /// so that tools wrapped around it can write their output.
    pub fn interrupt_and_wait(mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.measured_pid.to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(child) = self
            .children
            .iter_mut()
            .find(|c| c.id() == self.measured_pid)
        {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Whole trees: nginx's workers outlive a killed master otherwise.
        let pids: Vec<String> = self
            .children
            .iter()
            .flat_map(|c| super::procs::tree(c.id()))
            .map(|p| p.to_string())
            .collect();
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// One blocking HTTP/1.1 GET; the status code.
pub fn get_status(addr: SocketAddr, host: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_for_200(addr: SocketAddr, what: &str, log_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if get_status(addr, BENCH_HOST) == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} did not answer 200 on {addr}; logs in {}",
        log_dir.display()
    )
}

/// The proxying location of the nginx contender, the same on both listeners: what
/// ingress-nginx's template sets on every request.
const NGINX_LOCATION: &str = "    location / {\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      proxy_set_header X-Request-ID $req_id;\n      proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_set_header X-Real-IP $remote_addr;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $http_host;\n      proxy_set_header X-Forwarded-Port $server_port;\n      proxy_set_header X-Scheme $scheme;\n      add_header X-Request-ID $req_id always;\n    }\n";

/// ingress-nginx's request id (the client's, else a new one) and its `upstreaminfo` log
/// format, with the upstream names it takes from Lua written out.
const NGINX_HTTP_COMMON: &str = "  map $http_x_request_id $req_id {\n    default $request_id;\n    ~. $http_x_request_id;\n  }\n  log_format upstreaminfo '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length $request_time [default-bench-backend] [] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id';\n";

/// nginx from Debian answering a fixed 1 KiB body, one worker, keep-alive.
pub fn start_backend(dir: &Path) -> anyhow::Result<Running> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let body = "x".repeat(BODY_BYTES);
    // Too long for a `return` parameter: served from a file.
    let large = dir.join("asset.txt");
    std::fs::write(&large, "y".repeat(LARGE_BODY_BYTES))?;
    let conf = format!(
        "worker_processes 1;\nuser root;\npid {dir}/backend.pid;\nerror_log {dir}/backend-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  default_type text/plain;\n{temps}\
           server {{ listen {addr} reuseport; location / {{ return 200 \"{body}\"; }} location = {LARGE_PATH} {{ alias {large}; }} }}\n}}\n",
        dir = dir.display(),
        temps = nginx_temp_paths(dir, "backend"),
        large = large.display(),
    );
    let conf_path = dir.join("backend.conf");
    std::fs::write(&conf_path, conf)?;
    let child = spawn(
        Command::new("nginx").arg("-c").arg(&conf_path).args([
            "-p",
            &dir.display().to_string(),
            "-g",
            "daemon off;",
        ]),
        &dir.join("backend.log"),
    )?;
    let running = Running {
        addr,
        tls_addr: None,
        measured_pid: child.id(),
        children: vec![child],
    };
    wait_for_200(addr, "backend nginx", dir)?;
    Ok(running)
}

fn nginx_temp_paths(dir: &Path, name: &str) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {}/{name}-{t}-temp;\n", dir.display()))
        .collect()
}

/// Starts `contender`, with an HTTPS listener too when `tls` is given.
pub fn start(
    contender: Contender,
    backend: SocketAddr,
    threads: usize,
    dir: &Path,
    tls: Option<&TlsFiles>,
    access_log: bool,
) -> anyhow::Result<Running> {
    start_wrapped(contender, backend, threads, dir, &[], tls, access_log)
}

/// The command for `program`, run under `wrapper` (e.g. valgrind and its flags) if any.
fn command(program: impl AsRef<std::ffi::OsStr>, wrapper: &[String]) -> Command {
    match wrapper.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

/// Like [`start`], with the measured process run under `wrapper`.
pub fn start_wrapped(
    contender: Contender,
    backend: SocketAddr,
    threads: usize,
    dir: &Path,
    wrapper: &[String],
    tls: Option<&TlsFiles>,
    access_log: bool,
) -> anyhow::Result<Running> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let name = contender.name();
    let log = dir.join(format!("{name}.log"));
    let running = match contender {
        Contender::Portico => {
            let manifests = dir.join("manifests");
            std::fs::create_dir_all(&manifests)?;
            let mut docs = service_with_endpoints("backend", &[backend]);
            let mut bench = ingress("bench").path(BENCH_HOST, "Prefix", "/", "backend");
            if let Some(t) = tls {
                docs.push(tls_secret("bench-tls", &t.cert_pem, &t.key_pem));
                // The plain listener is measured too: no redirect there.
                bench = bench
                    .tls(&[BENCH_HOST], "bench-tls")
                    .annotation("portico.io/ssl-redirect", "false");
            }
            docs.push(bench.build());
            std::fs::write(manifests.join("bench.yaml"), to_yaml(&docs))?;
            let socket = dir.join("portico.sock");
            // No HSTS: the other proxies are not configured to add it either.
            let controller = spawn(
                Command::new(binary("portico-controller"))
                    .arg("--manifests")
                    .arg(&manifests)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["--hsts", "false", "--metrics-addr", ""]),
                &dir.join("portico-controller.log"),
            )?;
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let https = tls_addr;
            let mut proxy = command(binary("portico-proxy"), wrapper);
            proxy.arg("--socket").arg(&socket).args([
                "--http-addr",
                &addr.to_string(),
                "--https-addr",
                &https.to_string(),
                "--admin-addr",
                &admin.to_string(),
                "--threads",
                &threads.to_string(),
            ]);
            // Lines go to stdout, which is the log file.
            if !access_log {
                proxy.args(["--access-log", "off"]);
            }
            let proxy = spawn(&mut proxy, &log)?;
            Running {
                addr,
                tls_addr: tls.map(|_| tls_addr),
                measured_pid: proxy.id(),
                children: vec![proxy, controller],
            }
        }
        Contender::PingoraPassthrough => {
            let mut cmd = command(binary("pingora-passthrough"), wrapper);
            cmd.args([
                "--listen",
                &addr.to_string(),
                "--upstream",
                &backend.to_string(),
                "--threads",
                &threads.to_string(),
            ]);
            if let Some(t) = tls {
                cmd.args(["--tls-listen", &tls_addr.to_string()])
                    .arg("--cert")
                    .arg(&t.cert)
                    .arg("--key")
                    .arg(&t.key);
            }
            let child = spawn(&mut cmd, &log)?;
            Running {
                addr,
                tls_addr: tls.map(|_| tls_addr),
                measured_pid: child.id(),
                children: vec![child],
            }
        }
        Contender::Nginx => {
            let conf = format!(
                "worker_processes {threads};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n{common}  access_log {access_log};\n  keepalive_requests 100000000;\n{temps}\
                   upstream backend {{ server {backend}; keepalive 64; keepalive_requests 100000000; }}\n\
                   server {{\n    listen {addr} reuseport;\n{location}  }}\n{tls_server}}}\n",
                d = dir.display(),
                common = NGINX_HTTP_COMMON,
                access_log = if access_log {
                    format!("{}/nginx-access.log upstreaminfo", dir.display())
                } else {
                    "off".to_string()
                },
                temps = nginx_temp_paths(dir, "nginx"),
                location = NGINX_LOCATION,
                tls_server = tls.map_or(String::new(), |t| format!(
                    "  server {{\n    listen {tls_addr} ssl http2 reuseport;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n{NGINX_LOCATION}  }}\n",
                    t.cert.display(),
                    t.key.display()
                )),
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let child = spawn(
                Command::new("nginx").arg("-c").arg(&conf_path).args([
                    "-p",
                    &dir.display().to_string(),
                    "-g",
                    "daemon off;",
                ]),
                &log,
            )?;
            Running {
                addr,
                tls_addr: tls.map(|_| tls_addr),
                measured_pid: child.id(),
                children: vec![child],
            }
        }
        Contender::Haproxy => {
            // Logs to stdout, which is the log file.
            let (global_log, defaults_log) = if access_log {
                (
                    "  log stdout format raw local0\n",
                    "  log global\n  option httplog\n",
                )
            } else {
                ("", "")
            };
            let conf = format!(
                "global\n  nbthread {threads}\n  maxconn 4096\n{global_log}\
                 defaults\n  mode http\n{defaults_log}  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\n\
                 frontend fe\n  bind {addr}\n{tls_bind}  unique-id-format %[uuid()]\n  unique-id-header X-Request-ID\n  option forwardfor\n  http-request set-header X-Real-IP %[src]\n  http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]\n  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  http-request set-header X-Forwarded-Port %[dst_port]\n  http-request set-header X-Scheme %[ssl_fc,iif(https,http)]\n  http-after-response set-header X-Request-ID %[unique-id]\n  default_backend be\n\
                 backend be\n  server s1 {backend}\n",
                tls_bind = tls.map_or(String::new(), |t| format!("  bind {tls_addr} ssl crt {} alpn h2,http/1.1\n", t.combined.display())),
            );
            let conf_path = dir.join("haproxy.cfg");
            std::fs::write(&conf_path, conf)?;
            let child = spawn(
                command("haproxy", wrapper)
                    .arg("-f")
                    .arg(&conf_path)
                    .arg("-db"),
                &log,
            )?;
            Running {
                addr,
                tls_addr: tls.map(|_| tls_addr),
                measured_pid: child.id(),
                children: vec![child],
            }
        }
    };
    wait_for_200(addr, name, dir)?;
    Ok(running)
}
