//! Runs the real binaries: a controller on a manifests directory and a proxy connected
//! to it, on free loopback ports, killed when the harness is dropped.

use crate::client::{HttpClient, Reply};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the binaries built by the same profile as this test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} not found: build the binaries first (scripts/test does: cargo build --release --bins)", path.display());
    path
}

/// A free port on 127.0.0.1 for a binary to listen on, reserved for this process.
///
/// Not one the kernel hands out for port 0: those come from the ephemeral range, where any
/// outgoing connection or echo backend started meanwhile may take the port before the
/// binary binds it (tests run in parallel). These come from below that range, each
/// handed out once per process, starting at an offset derived from the process id.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000; // up to 32 000, below Linux's default ephemeral range
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(997) % COUNT;
    for _ in 0..COUNT {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + COUNT);
}

pub struct Portico {
    pub dir: tempfile::TempDir,
    pub manifests: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub client: HttpClient,
    admin_client: HttpClient,
    controller: Child,
    proxy: Child,
}

impl Portico {
    /// Starts both binaries on `files` (name, content) and waits for the first snapshot.
    pub async fn start(files: &[(&str, String)]) -> Portico {
        Self::start_with(files, &[]).await
    }

    pub async fn start_with(files: &[(&str, String)], proxy_args: &[&str]) -> Portico {
        Self::start_full(files, &[], proxy_args).await
    }

    /// Starts with extra controller arguments too.
    pub async fn start_full(files: &[(&str, String)], controller_args: &[&str], proxy_args: &[&str]) -> Portico {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("manifests dir");
        for (name, content) in files {
            std::fs::write(manifests.join(name), content).expect("write manifest");
        }
        let socket = dir.path().join("portico.sock");
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();

        let controller = spawn(
            Command::new(binary("portico-controller"))
                .arg("--manifests")
                .arg(&manifests)
                .arg("--socket")
                .arg(&socket)
                .args(with_defaults(controller_args, &[("--debounce-ms", "50"), ("--manifests-poll-ms", "100")])),
            &dir.path().join("controller.log"),
        );
        let proxy = spawn(
            Command::new(binary("portico-proxy"))
                .arg("--socket")
                .arg(&socket)
                .args(["--http-addr", &http.to_string(), "--https-addr", &https.to_string(), "--admin-addr", &admin.to_string()])
                .args(["--threads", "2"])
                .args(proxy_args),
            &dir.path().join("proxy.log"),
        );
        let portico = Portico {
            client: HttpClient::new(http),
            admin_client: HttpClient::new(admin),
            dir,
            manifests,
            http,
            https,
            admin,
            controller,
            proxy,
        };
        portico.wait_until("the proxy is ready", |p| async move { p.admin_get("/readyz").await.is_ok_and(|r| r.status == 200) }).await;
        // `/readyz` also waits for the proxy listeners to accept, so requests can start now.
        portico
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Reply> {
        self.admin_client.get("", path).await
    }

    /// The version of the snapshot the proxy serves.
    pub async fn applied_version(&self) -> Option<u64> {
        let reply = self.admin_get("/config").await.ok().filter(|r| r.status == 200)?;
        serde_json::from_slice::<serde_json::Value>(&reply.body).ok()?.get("version")?.as_u64()
    }

    /// Writes a manifest atomically (write, then rename), as a deploy tool would.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.join(name)).expect("rename manifest");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(name)).expect("remove manifest");
    }

    /// Writes a manifest and waits until the proxy serves a snapshot newer than before.
    pub async fn apply(&self, name: &str, content: &str) -> u64 {
        let before = self.applied_version().await;
        self.write(name, content);
        self.wait_for_version_after(before).await
    }

    pub async fn wait_for_version_after(&self, before: Option<u64>) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.applied_version().await {
                Some(v) if Some(v) > before => return v,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("timed out waiting for a snapshot newer than {before:?}\n{}", self.logs());
    }

    /// Polls `check` for up to 15 s.
    pub async fn wait_until<'a, F, Fut>(&'a self, what: &str, mut check: F)
    where
        F: FnMut(&'a Portico) -> Fut,
        Fut: std::future::Future<Output = bool> + 'a,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting until {what}\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("--- controller.log ---\n{}\n--- proxy.log ---\n{}", read("controller.log"), read("proxy.log"))
    }

    /// The proxy's process id, for measuring it.
    pub fn proxy_pid(&self) -> u32 {
        self.proxy.id()
    }

    pub fn controller_pid(&self) -> u32 {
        self.controller.id()
    }

    pub fn log_path(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("{which}.log"))
    }
}

/// `args`, plus each default flag and value that `args` does not set itself.
fn with_defaults(args: &[&str], defaults: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for (flag, value) in defaults {
        if !args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
            out.extend([flag.to_string(), value.to_string()]);
        }
    }
    out
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_LOG", "info").spawn().expect("spawn binary")
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.controller.kill();
        let _ = self.proxy.wait();
        let _ = self.controller.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
