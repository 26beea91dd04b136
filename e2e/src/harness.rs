//! Runs the real binaries: a controller on a manifests directory and a proxy connected
//! to it, on free loopback ports, killed when the harness is dropped.

use crate::client::{HttpClient, Reply};
use crate::kube_api::TestApiServer;
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
    assert!(
        path.exists(),
        "{} not found: build the binaries first (scripts/test does: cargo build --release --bins)",
        path.display()
    );
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
    socket: PathBuf,
    /// How the controller was started, for restarting it the same way.
    controller_args: Vec<String>,
    controller: Option<Child>,
    proxy: Child,
}

/// A controller started beside the harness's own (another replica); killed when dropped.
pub struct Replica {
    child: Child,
    pub log: PathBuf,
}

impl Replica {
    /// Kills it as a node failure would: no clean shutdown, no lease released.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
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
    pub async fn start_full(
        files: &[(&str, String)],
        controller_args: &[&str],
        proxy_args: &[&str],
    ) -> Portico {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("manifests dir");
        for (name, content) in files {
            std::fs::write(manifests.join(name), content).expect("write manifest");
        }
        let mut args = vec!["--manifests".to_string(), manifests.display().to_string()];
        args.extend(with_defaults(
            controller_args,
            &[
                ("--debounce-ms", "50"),
                ("--manifests-poll-ms", "100"),
                ("--metrics-addr", ""),
            ],
        ));
        Self::start_processes(dir, manifests, args, proxy_args).await
    }

    /// Starts the controller on the Kubernetes API at `api` (through `--kubeconfig`),
    /// and a proxy, and waits for the first snapshot.
    pub async fn start_kube(
        api: &TestApiServer,
        controller_args: &[&str],
        proxy_args: &[&str],
    ) -> Portico {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).expect("write kubeconfig");
        let mut args = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
        args.extend(with_defaults(
            controller_args,
            &[
                ("--debounce-ms", "50"),
                ("--metrics-addr", ""),
                ("--lease-duration-secs", "3"),
                ("--election-namespace", "portico-system"),
            ],
        ));
        let manifests = dir.path().join("unused");
        Self::start_processes(dir, manifests, args, proxy_args).await
    }

    async fn start_processes(
        dir: tempfile::TempDir,
        manifests: PathBuf,
        controller_args: Vec<String>,
        proxy_args: &[&str],
    ) -> Portico {
        let socket = dir.path().join("portico.sock");
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();

        let controller = spawn(
            Command::new(binary("portico-controller"))
                .arg("--socket")
                .arg(&socket)
                .args(&controller_args),
            &dir.path().join("controller.log"),
        );
        let proxy = spawn(
            Command::new(binary("portico-proxy"))
                .arg("--socket")
                .arg(&socket)
                .args([
                    "--http-addr",
                    &http.to_string(),
                    "--https-addr",
                    &https.to_string(),
                    "--admin-addr",
                    &admin.to_string(),
                ])
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
            socket,
            controller_args,
            controller: Some(controller),
            proxy,
        };
        portico
            .wait_until("the proxy is ready", |p| async move {
                p.admin_get("/readyz").await.is_ok_and(|r| r.status == 200)
            })
            .await;
        // `/readyz` also waits for the proxy listeners to accept, so requests can start now.
        portico
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Reply> {
        self.admin_client.get("", path).await
    }

    /// The version of the snapshot the proxy serves.
    pub async fn applied_version(&self) -> Option<u64> {
        let reply = self
            .admin_get("/config")
            .await
            .ok()
            .filter(|r| r.status == 200)?;
        serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()?
            .get("version")?
            .as_u64()
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
        panic!(
            "timed out waiting for a snapshot newer than {before:?}\n{}",
            self.logs()
        );
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

    /// Polls until `GET http://host/` is answered by the backend named `backend` (the echo
    /// backends' name, or `status:N` for Portico's own answers).
    pub async fn wait_until_served_by(&self, what: &str, host: &str, backend: &str) {
        self.wait_until(what, |p| async move {
            p.client
                .get(host, "/")
                .await
                .is_ok_and(|r| r.answered_by() == backend)
        })
        .await;
    }

    /// Every process's log: the controller's, replicas', and the proxy's.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|n| {
                format!(
                    "--- {n} ---\n{}\n",
                    std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Kills the controller (as a crash would) and starts it again with the same arguments.
    pub fn restart_controller(&mut self) {
        self.kill_controller();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("controller.log"))
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(binary("portico-controller"))
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.controller_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn controller");
        self.controller = Some(child);
    }

    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the controller with SIGTERM, as Kubernetes does, and waits for it to exit.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Starts another controller with the same arguments, except for the `--flag value`
    /// pairs in `extra`, which replace the same flags, serving its own socket, as a second
    /// replica would.
    pub fn start_replica(&self, name: &str, extra: &[&str]) -> Replica {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut args = Vec::new();
        let mut base = self.controller_args.iter();
        while let Some(arg) = base.next() {
            if extra.chunks(2).any(|pair| pair[0] == arg) {
                base.next();
            } else {
                args.push(arg.clone());
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = spawn(
            Command::new(binary("portico-controller"))
                .arg("--socket")
                .arg(self.dir.path().join(format!("{name}.sock")))
                .args(&args),
            &log,
        );
        Replica { child, log }
    }

    /// The proxy's process id, for measuring it.
    /// Waits up to `within` for the proxy to exit by itself; its status if it did.
    pub async fn proxy_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.proxy.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The snapshot socket the controller serves and the proxy connects to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.id()
    }

    pub fn controller_pid(&self) -> u32 {
        self.controller.as_ref().map_or(0, Child::id)
    }

    pub fn log_path(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("{which}.log"))
    }
}

/// `args`, plus each default flag and value that `args` does not set itself.
fn with_defaults(args: &[&str], defaults: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for (flag, value) in defaults {
        if !args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            out.extend([flag.to_string(), value.to_string()]);
        }
    }
    out
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn binary")
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        self.kill_controller();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
