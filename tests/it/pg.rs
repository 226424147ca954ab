//! A real PostgreSQL server for the fleet tests (issue 19), never a mock: Debian's server
//! binaries (`initdb`, `pg_ctl` from /usr/lib/postgresql/VERSION/bin) run a cluster in a
//! scratch directory of the test's own, as an unprivileged user (`nobody` through `setpriv`
//! when the tests run as root), listening on 127.0.0.1 at a free port and on a unix socket in
//! the scratch directory. `stop` and `start` take it down and up again (the outage tests);
//! drop stops it and removes the directory. Without the binaries the test fails loudly and
//! says what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The user the server runs as when the tests run as root (PostgreSQL refuses to run as root).
const SERVER_USER: &str = "nobody";
/// The database role and database the tests use.
pub const ROLE: &str = "tenantd";
pub const DB: &str = "fleet";

/// The directory of the newest installed server binaries, or a loud failure naming the
/// package. `TENANTD_TEST_PG_BIN` overrides it.
pub fn server_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("TENANTD_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not in /usr/lib/postgresql/*/bin: \
             the fleet tests start a real server of their own; install Debian's package with \
             `apt-get install -y postgresql` (.ci/run does), or point TENANTD_TEST_PG_BIN at \
             a directory holding initdb and pg_ctl"
        ),
    }
}

/// A PostgreSQL cluster of the test's own. Drop stops it and removes its directory.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// `initdb` a new cluster in a scratch directory, start it, create the role and the
    /// database `fleet`.
    pub fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("tenantd-pg-")
            .tempdir()
            .expect("scratch directory");
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", &format!("{SERVER_USER}:")])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                st.success(),
                "chown {} to {SERVER_USER}",
                dir.path().display()
            );
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: super::support::free_port(),
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // Another test can bind the free port between its choice and the server's bind (a
        // clean-clone CI saw "Address already in use"): such a start is tried again on
        // another port, at most five times.
        for attempt in 0.. {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pg.up())) {
                Ok(()) => break,
                Err(_) if attempt < 4 && pg.log().contains("Address already in use") => {
                    pg.port = super::support::free_port();
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
        let st = Command::new(pg.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", ROLE])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {DB}"))
            .stdout(Stdio::null())
            .status()
            .expect("run psql");
        assert!(st.success(), "CREATE DATABASE {DB}; log:\n{}", pg.log());
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The socket directory (the scratch directory itself).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://tenantd@127.0.0.1:PORT/fleet`.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DB}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.log_path().display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL does not accept connections on port {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: connections are closed) and waits until it is down.
    pub fn down(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }

    /// Runs one of the server binaries as the server's user; panics with its output.
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut c = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={SERVER_USER}"),
                "--regid=nogroup",
                "--clear-groups",
                "--",
            ])
            .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = c
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL server log:\n{}", self.log());
        }
        if self.data().join("postmaster.pid").exists() {
            let _ = Command::new(if is_root() { "setpriv" } else { "true" })
                .args(if is_root() {
                    vec![
                        format!("--reuid={SERVER_USER}"),
                        "--regid=nogroup".into(),
                        "--clear-groups".into(),
                        "--".into(),
                    ]
                } else {
                    vec![]
                })
                .arg(self.bin.join("pg_ctl"))
                .args(["-D"])
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The harness itself: a real server starts, answers a query over TCP, stops (connections
/// refused), starts again with its data, and is gone after drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_postgres_starts_answers_stops_and_restarts() {
    let pg = Postgres::start();
    let query = |url: String| async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url)
            .await?;
        let v: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok::<_, sqlx::Error>(v)
    };
    assert_eq!(query(pg.url()).await.unwrap(), ROLE);
    let owner = std::fs::metadata(pg.data()).unwrap();
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            owner.uid(),
            0,
            "the cluster belongs to an unprivileged user"
        );
    }
    pg.down();
    assert!(
        query(pg.url()).await.is_err(),
        "a stopped server answers nothing"
    );
    pg.up();
    assert_eq!(query(pg.url()).await.unwrap(), ROLE);
    let dir = pg.socket_dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "the scratch directory is removed");
}
