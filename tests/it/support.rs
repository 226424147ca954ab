//! Shared test helpers: a fresh governor root in the real cgroup v2 tree, a daemon started from
//! the built binary on a real socket, and processes the test owns.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenantd::api::auth::Tokens;
use tenantd::api::{AppState, router};
use tenantd::cgroup::v1::{CONTROLLERS, V1, V1Hierarchies, V1Roots};
use tenantd::cgroup::v2::V2;
use tenantd::cgroup::{Backend, CgroupPath};
use tenantd::domain::tenant::Capacity;
use tenantd::engine::{EngineConfig, Governor};
use tenantd::store::Store;
use tower::ServiceExt;

/// A shell loop that keeps one CPU busy.
pub const BUSY_LOOP: &str = "while :; do :; done";

/// A Python program that allocates 200 MiB: OOM-killed under a 48 MiB memory limit.
pub const OOM_HOG: &str = "b = bytearray(200 * 1024 * 1024); print('survived')";

pub const NEEDS_V2: &str = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)";

/// The cgroup2 mount to test against. Panics loudly when the environment does not provide a
/// cgroup v2 tree with the controllers, so nothing passes by checking nothing.
pub fn v2_mount() -> PathBuf {
    let root = std::env::var("TENANTD_TEST_CGROUP_ROOT").unwrap_or_else(|_| {
        panic!(
            "TENANTD_TEST_CGROUP_ROOT is not set: the kernel tests need a cgroup v2 tree with cpu, memory, io and pids \
             (run `bash tests/run.sh`, which boots the VM, or set TENANTD_KERNEL=host on a pure v2 host)"
        )
    });
    let root = PathBuf::from(root);
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
        .unwrap_or_else(|e| panic!("{} is not a cgroup v2 directory: {e}", root.display()));
    let subtree = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["cpu", "memory", "io", "pids"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "controller '{c}' is missing from {}/cgroup.controllers ({controllers:?}): this is not the kernel the tests need",
            root.display()
        );
        assert!(
            subtree.split_whitespace().any(|x| x == c),
            "controller '{c}' is not enabled in {}/cgroup.subtree_control ({subtree:?})",
            root.display()
        );
    }
    root
}

/// A governor root of the test's own, removed (processes killed first) when dropped.
pub struct TestRoot {
    pub mount: PathBuf,
    pub path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new(name: &str) -> TestRoot {
        let mount = v2_mount();
        let path = mount.join(format!("tenantd-test-{name}-{}", std::process::id()));
        if path.exists() {
            remove_tree(&path);
        }
        TestRoot {
            mount,
            path,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("tenantd.db")
    }

    /// cpu.stat `usage_usec` of a tenant directory (relative to the root).
    pub fn usage_usec(&self, tenant: &str) -> u64 {
        self.read(&format!("{tenant}/cpu.stat"))
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .expect("cpu.stat has usage_usec")
            .parse()
            .expect("usage_usec is a number")
    }

    /// Waits until `n` processes live in the tenant's leaf.
    pub fn wait_procs(&self, tenant: &str, n: usize) {
        eventually(30, &format!("{n} processes in {tenant}"), || {
            self.read(&format!("{tenant}/_procs/cgroup.procs"))
                .lines()
                .count()
                == n
        });
    }

    /// Waits until at least one process lives in the tenant's leaf: for a shell loop whose
    /// count changes as it forks (`sh` alone between two `dd`s, `sh` and `dd` while one runs).
    pub fn wait_some_procs(&self, tenant: &str) {
        eventually(30, &format!("a process in {tenant}"), || {
            !self
                .read(&format!("{tenant}/_procs/cgroup.procs"))
                .is_empty()
        });
    }

    pub fn read(&self, rel: &str) -> String {
        let p = self.path.join(rel);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .to_string()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if self.path.exists() {
            remove_tree(&self.path);
        }
    }
}

/// Kills everything in a cgroup tree the test created and removes it bottom-up.
pub fn remove_tree(path: &Path) {
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(path.join("cgroup.events"))
        .map(|s| s.contains("populated 1"))
        .unwrap_or(false)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    fn rm(p: &Path) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(p);
    }
    rm(path);
}

/// The `tenantd` binary the tests run: this build's, or `TENANTD_TEST_BIN` (a release build,
/// for the measurements that need one).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TENANTD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenantd").into())
    })
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tenantd serve` started from the built binary.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub http: reqwest::blocking::Client,
    /// Where the daemon's stderr goes.
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn start(root: &TestRoot) -> Daemon {
        Daemon::start_with(root, &[])
    }

    /// Starts the daemon with extra `serve` flags.
    pub fn start_with(root: &TestRoot, extra: &[&str]) -> Daemon {
        Daemon::launch(root.dir.path(), |port| {
            let mut c = Daemon::serve(root, port);
            c.args(extra);
            c
        })
    }

    /// `tenantd serve` on `port` over `root` (its database, root and mount), reconciling
    /// only when asked, for `launch`.
    pub fn serve(root: &TestRoot, port: u16) -> Command {
        let mut c = Command::new(bin());
        c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--db")
            .arg(root.db())
            .arg("--cgroup-root")
            .arg(&root.path)
            .arg("--cgroup-mount")
            .arg(&root.mount)
            .args(["--reconcile-interval-s", "3600"]);
        c
    }

    /// Starts the command `serve(port)` builds (it must run `tenantd serve --listen
    /// 127.0.0.1:<port>`), logging to `<log_dir>/daemon-<port>.log`, and waits for /healthz.
    pub fn launch(log_dir: &Path, serve: impl FnOnce(u16) -> Command) -> Daemon {
        let port = free_port();
        let log_path = log_dir.join(format!("daemon-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = serve(port);
        // `info` unless the command sets or removes TENANTD_LOG itself.
        if !cmd.get_envs().any(|(k, _)| k == "TENANTD_LOG") {
            cmd.env("TENANTD_LOG", "info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tenantd serve");
        let d = Daemon {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            log_path: log_path.clone(),
            // Idle connections are dropped after 5 s, before the daemon closes them (its
            // header-read timeout, 10 s, runs while a kept-alive connection waits): a request
            // sent on a connection the daemon is closing at that moment gets a reset.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.http
                .get(format!("{}/healthz", d.addr))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return d;
            }
            if Instant::now() > deadline {
                let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("tenantd did not answer /healthz within 60 s; its log:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// The daemon's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// Sends a request; returns the status and the JSON body (Null when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The text body of a GET (for /metrics).
    pub fn text(&self, path: &str) -> String {
        let resp = self.http.get(self.url(path)).send();
        resp.and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Creates a tenant with PUT and asserts 201 Created.
    pub fn create(&self, name: &str, spec: serde_json::Value) {
        let (s, body) = self.call("PUT", &format!("/v1/tenants/{name}"), Some(spec));
        assert_eq!(s, 201, "PUT /v1/tenants/{name}: {body}");
    }

    /// `tenantd run --tenant TENANT -- ARGS` against this daemon.
    pub fn run_in(&self, tenant: &str, args: &[&str]) -> Command {
        let mut c = self.cli();
        c.args(["run", "--tenant", tenant, "--"]).args(args);
        c
    }

    /// `OOM_HOG` started in the tenant with `tenantd run`.
    pub fn oom_hog(&self, tenant: &str) -> Command {
        self.run_in(tenant, &["python3", "-c", OOM_HOG])
    }

    /// `n` busy loops started in the tenant with `tenantd run`.
    pub fn busy(&self, tenant: &str, n: usize) -> Vec<Owned> {
        (0..n)
            .map(|_| {
                Owned(
                    self.run_in(tenant, &["sh", "-c", BUSY_LOOP])
                        .spawn()
                        .expect("spawn tenantd run"),
                )
            })
            .collect()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A `tenantd` client command against this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("TENANTD_ADDR", &self.addr);
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process the test started; killed and reaped on drop.
pub struct Owned(pub Child);

impl Owned {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn sleeper() -> Owned {
    Owned(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    )
}

/// The cgroup v2 path of a process ("/a/b").
pub fn cgroup_of(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("")
        .to_string()
}

/// Waits until `f` is true or panics with `what` after `secs`.
pub fn eventually(secs: u64, what: &str, f: impl FnMut() -> bool) {
    eventually_or(secs, what, f, String::new)
}

/// `eventually`, whose panic also says what `context` finds at that moment (the daemon's
/// log, the kernel's counters): a wait that times out in CI explains itself.
pub fn eventually_or(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {secs} s waiting for: {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The middle value (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// From the daemon's database: `tenant`'s raw rows with a CPU rate over the last `window_ms`
/// of samples, their time-weighted mean in cores, and the largest memory.current among them.
pub fn recent_raw_usage(
    db: &Path,
    tenant: &str,
    window_ms: i64,
) -> (i64, Option<f64>, Option<i64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = tenantd::store::Store::open(db).await.unwrap();
        let rows = store.raw_usage(tenant, 0, i64::MAX).await.unwrap();
        store.close().await;
        let last = rows.iter().map(|r| r.ts_ms).max().unwrap_or(0);
        let recent: Vec<_> = rows
            .iter()
            .filter(|r| r.rates.cpu_cores.is_some() && r.ts_ms >= last - window_ms)
            .collect();
        let ms: i64 = recent.iter().map(|r| r.interval_ms.unwrap_or(0)).sum();
        let weighted: f64 = recent
            .iter()
            .map(|r| r.rates.cpu_cores.unwrap_or(0.0) * r.interval_ms.unwrap_or(0) as f64)
            .sum();
        (
            recent.len() as i64,
            (ms > 0).then(|| weighted / ms as f64),
            recent
                .iter()
                .filter_map(|r| r.gauges.memory_current_bytes)
                .max(),
        )
    })
}

/// How many usage rows and verdicts of `tenant` the raw slices of `conn`'s database hold
/// after `since_ms` (decoded as the store decodes them, `domain::raw_slice`).
pub async fn raw_slice_counts(
    conn: &mut sqlx::SqliteConnection,
    tenant: &str,
    since_ms: i64,
) -> (i64, i64) {
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM raw_slices WHERE ts_ms > ?1 AND first_tenant <= ?2 AND last_tenant >= ?2",
    )
    .bind(since_ms)
    .bind(tenant)
    .fetch_all(conn)
    .await
    .unwrap();
    let mut n = (0, 0);
    for b in &bodies {
        for e in tenantd::domain::raw_slice::entries(b).unwrap() {
            if e.tenant == tenant {
                n.0 += i64::from(e.usage.is_some());
                n.1 += i64::from(e.verdict.is_some());
            }
        }
    }
    n
}

/// The VM's scratch disk: its MAJ:MIN (`TENANTD_TEST_BLOCKDEV`) and its /dev path.
pub fn scratch_disk() -> (String, String) {
    let dev = std::env::var("TENANTD_TEST_BLOCKDEV")
        .expect("TENANTD_TEST_BLOCKDEV (the VM's scratch disk, MAJ:MIN) is not set");
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent"))
        .unwrap_or_else(|e| panic!("block device {dev}: {e}"));
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .expect("DEVNAME in uevent");
    let path = format!("/dev/{name}");
    (dev, path)
}

/// iocost switched on for the VM's scratch disk while the test runs, off again after (the
/// other tests expect io weights to do nothing).
/// - The cost model is set by hand, as an operator sets it for a device (the kernel docs
///   suggest measuring it): 100 MiB/s and 1,000 IOs/s, so a 4 KiB read costs about 1 ms of
///   device time and a 1 MiB read about 11 ms.
/// - QoS `ctrl=user` with the device rate fixed at half the model: the emulated disk never
///   looks saturated to iocost's own latency targets, so without it weights would not bite.
pub struct IoCost {
    mount: PathBuf,
    pub dev: String,
}

impl IoCost {
    pub fn enable(root: &TestRoot) -> IoCost {
        let (dev, _) = scratch_disk();
        // The guard first: whatever is written below is undone even if a later write fails.
        let guard = IoCost {
            mount: root.mount.clone(),
            dev,
        };
        let dev = &guard.dev;
        let (bps, iops) = (100 << 20, 1000);
        guard.write(
            "io.cost.model",
            format!(
                "{dev} ctrl=user model=linear rbps={bps} rseqiops={iops} rrandiops={iops} wbps={bps} wseqiops={iops} wrandiops={iops}"
            ),
        );
        guard.write(
            "io.cost.qos",
            format!(
                "{dev} enable=1 ctrl=user rpct=95.00 rlat=5000 wpct=95.00 wlat=5000 min=50.00 max=50.00"
            ),
        );
        guard
    }

    fn write(&self, file: &str, line: String) {
        let path = self.mount.join(file);
        std::fs::write(&path, &line)
            .unwrap_or_else(|e| panic!("write '{line}' to {}: {e}", path.display()));
    }
}

impl Drop for IoCost {
    /// Back to the boot state: iocost off, QoS and model under the kernel's control.
    fn drop(&mut self) {
        let dev = &self.dev;
        for (file, line) in [
            ("io.cost.qos", format!("{dev} enable=0 ctrl=auto")),
            ("io.cost.model", format!("{dev} ctrl=auto")),
        ] {
            if let Err(e) = std::fs::write(self.mount.join(file), &line) {
                eprintln!(
                    "WARNING: could not restore {file} with '{line}': {e}; later tests may see iocost on"
                );
            }
        }
        let qos = std::fs::read_to_string(self.mount.join("io.cost.qos")).unwrap_or_default();
        if qos
            .lines()
            .any(|l| l.starts_with(dev.as_str()) && l.contains("enable=1"))
        {
            eprintln!("WARNING: iocost is still on for {dev} after the test: {qos}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// cgroup v1 (this hybrid host): directories of the test's own below its own cgroups

/// The v1 hierarchies, or a loud failure naming what is missing.
pub fn v1_hierarchies() -> V1Hierarchies {
    let h = V1Hierarchies::detect(Path::new("/proc"))
        .unwrap_or_else(|e| panic!("cannot read /proc/self/mountinfo or /proc/self/cgroup: {e}"));
    for c in CONTROLLERS {
        assert!(
            h.get(c).is_some(),
            "the cgroup v1 hierarchy '{c}' is not mounted (see /proc/self/mountinfo): these tests need a \
             cgroup v1 or hybrid host, as CI provides; found {h:?}"
        );
    }
    h
}

/// Removes the directories below `p`, deepest first, then `p`; retries while the kernel still
/// counts exiting processes (EBUSY).
pub fn rmdir_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(p) {
        if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {e}", p.display());
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `<own cgroup>/tenantd-test-<name>-<pid>` in each v1 hierarchy (from /proc/self/cgroup), plus
/// a temporary directory for the test's database and logs. Drop kills whatever is left in
/// those directories (all started by the test), removes them, and prints the daemon logs of
/// the temporary directory when the test panics.
pub struct V1Dirs {
    pub roots: V1Roots,
    pub tmp: tempfile::TempDir,
}

impl V1Dirs {
    /// The directories, asserted not to exist yet, not created (`prepare_root` creates them).
    pub fn new(name: &str) -> V1Dirs {
        let h = v1_hierarchies();
        let dir = format!("tenantd-test-{name}-{}", std::process::id());
        let own = |c: &str| h.get(c).map(|m| m.own.join(&dir).into());
        let roots = V1Roots {
            cpu: own("cpu"),
            cpuacct: own("cpuacct"),
            memory: own("memory"),
            blkio: own("blkio"),
            pids: own("pids"),
        };
        for r in roots.distinct() {
            assert!(
                !r.exists(),
                "{} exists already: a previous run did not clean up",
                r.display()
            );
        }
        V1Dirs {
            roots,
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The directories, created.
    pub fn create(name: &str) -> V1Dirs {
        let me = V1Dirs::new(name);
        for p in me.roots.distinct() {
            std::fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        }
        me
    }

    /// `<tmp>/tenantd.db`.
    pub fn db(&self) -> PathBuf {
        self.tmp.path().join("tenantd.db")
    }

    /// `sh -c ... sh ARGS`: a shell that writes itself into each directory, then execs ARGS
    /// (so ARGS and everything it starts live below the test's directories).
    pub fn inside(&self, args: &[String]) -> Command {
        let list: Vec<String> = self
            .roots
            .distinct()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut c = Command::new("sh");
        c.args([
            "-c",
            r#"IFS=:; for d in $TENANTD_TEST_DIRS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@""#,
            "sh",
        ])
        .args(args)
        .env("TENANTD_TEST_DIRS", list.join(":"));
        c
    }

    /// `serve --listen 127.0.0.1:<port> --cgroup-version v1 --reconcile-interval-s 3600 --db DB`.
    pub fn serve_args(port: u16, db: &Path) -> Vec<String> {
        [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cgroup-version",
            "v1",
            "--reconcile-interval-s",
            "3600",
            "--db",
            &db.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `tenantd serve` with the v1 backend and database `db`, started inside the directories
    /// (its default root `<directory>/tenantd` is the test's), logging into `tmp`.
    pub fn launch(&self, db: &Path) -> Daemon {
        Daemon::launch(self.tmp.path(), |port| {
            let mut args = vec![bin().to_string()];
            args.extend(V1Dirs::serve_args(port, db));
            self.inside(&args)
        })
    }

    /// A path below the daemon's default root in `controller`'s hierarchy.
    pub fn under_root(&self, controller: &str, rel: &str) -> PathBuf {
        self.roots
            .get(controller)
            .unwrap()
            .join(tenantd::cgroup::v1::DEFAULT_ROOT_NAME)
            .join(rel)
    }
}

impl Drop for V1Dirs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(self.tmp.path());
        }
        // Whatever is left below the test's directories was started by this test.
        if self.roots.distinct().iter().all(|r| r.exists()) {
            let everything = V1::new(self.roots.clone(), "/sys", "/proc");
            if let Err(e) = everything.kill(&CgroupPath::root()) {
                eprintln!("cannot kill the test's processes: {e}");
            }
        }
        for r in self.roots.distinct() {
            rmdir_tree(r);
        }
    }
}

/// Prints every `*.log` file of `dir` (the daemon logs of a test that failed).
pub fn print_logs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".log") {
            let log = std::fs::read_to_string(e.path()).unwrap_or_default();
            eprintln!("--- {}:\n{log}", e.path().display());
        }
    }
}

/// `tenantd serve --cgroup-version v1` started inside `V1Dirs::create(name)`: the daemon's
/// default root and everything it creates are below the test's directories. Drop kills the
/// daemon, then `V1Dirs` kills what is left and removes the directories.
pub struct V1Daemon {
    // Declared first, so dropped (killed) before the directories.
    pub d: Daemon,
    pub dirs: V1Dirs,
}

impl V1Daemon {
    pub fn start(name: &str) -> V1Daemon {
        let dirs = V1Dirs::create(name);
        let d = dirs.launch(&dirs.db());
        V1Daemon { d, dirs }
    }

    pub fn d(&self) -> &Daemon {
        &self.d
    }

    /// A file of tenant `t` in `controller`'s hierarchy, below the daemon's default root.
    pub fn tenant_file(&self, controller: &str, t: &str, file: &str) -> PathBuf {
        self.dirs.under_root(controller, t).join(file)
    }
}

/// A governor in the test's own process over `backend` and `store`: default configuration,
/// 2 CPUs and 8 GiB, `reserve_bytes` of it reserved.
pub fn governor(backend: Arc<dyn Backend>, store: Store, reserve_bytes: u64) -> Arc<Governor> {
    Governor::new(
        backend,
        store,
        EngineConfig::default(),
        Capacity {
            cpus: 2.0,
            memory_bytes: 8 << 30,
            memory_reserve_bytes: reserve_bytes,
        },
    )
}

// ---------------------------------------------------------------------------------------
// The API through `router(state).oneshot`, without a daemon

/// An API state over a store in a temporary directory of its own.
pub struct Api {
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

impl Api {
    /// A fresh store in a new temporary directory, for a test to fill before `Api::over`.
    pub async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        (dir, store)
    }

    /// The state over `store` and a governor on `backend` with 2 CPUs, 8 GiB and 1 GiB
    /// reserved. `None`: a V2 backend at a directory of `dir` that does not exist, so a
    /// request that reached the kernel would fail there (and no cgroup is touched).
    pub fn over(
        (dir, store): (tempfile::TempDir, Store),
        backend: Option<Arc<dyn Backend>>,
        tokens: Tokens,
        max_body_bytes: usize,
        request_timeout: Duration,
    ) -> Api {
        let backend = backend.unwrap_or_else(|| {
            let missing = dir.path().join("no-cgroupfs-here");
            Arc::new(V2::new(&missing, missing.join("tenantd"), "/sys"))
        });
        let gov = governor(backend, store, 1 << 30);
        Api {
            state: AppState {
                gov,
                tokens: Arc::new(tokens),
                max_body_bytes,
                request_timeout,
                metrics: tenantd::metrics::Metrics::new(),
                usage_retention: Default::default(),
                fleet: None,
            },
            dir,
        }
    }

    /// `over` an empty store, with no cgroup backend.
    pub async fn new(tokens: Tokens, max_body_bytes: usize, request_timeout: Duration) -> Api {
        Api::over(
            Api::store().await,
            None,
            tokens,
            max_body_bytes,
            request_timeout,
        )
    }
}

/// What came back from `oneshot`: status, content type ("" when none), headers, body bytes.
pub struct Answered {
    pub status: StatusCode,
    pub ct: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// One request through `router(state).oneshot`.
pub async fn oneshot(state: &AppState, req: Request<Body>) -> Answered {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answered {
        status,
        ct,
        headers,
        body,
    }
}

/// A request with an optional bearer `token`, `accept` header and JSON `body`.
pub fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(acc) = accept {
        b = b.header(header::ACCEPT, acc);
    }
    b.body(
        body.map(|s| Body::from(s.to_string()))
            .unwrap_or_else(Body::empty),
    )
    .unwrap()
}

/// The whole disk holding a block device, as blk-throttle takes rules for disks, not partitions.
pub fn a_disk() -> tenantd::domain::tenant::DevId {
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        if let Some(d) = std::fs::read_to_string(e.path().join("dev"))
            .ok()
            .and_then(|s| tenantd::domain::tenant::DevId::parse(s.trim()))
        {
            return d;
        }
    }
    panic!("no block device in /sys/block to test blkio.throttle on");
}
