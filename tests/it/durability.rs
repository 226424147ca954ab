//! Durability of the desired state (issue 13, finding 1): on a full disk a write is refused
//! with 507 and nothing else happens; what was acknowledged survives a restart; the daemon
//! recovers by itself when space returns.
//!
//! The database lives on a small tmpfs the test mounts on a temporary directory (it runs as
//! root, as CI does) and fills with a filler file. The daemon is a v1 daemon as in `v1.rs`:
//! it writes kernel state only below directories of the test's own cgroup in each v1
//! hierarchy, and the guard removes them. The test panics, never skips, when it cannot mount
//! the tmpfs or the v1 hierarchies are missing.

use crate::support::{Daemon, V1Dirs, eventually};
use crate::usage::{scrape, series};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A tmpfs of `size` mounted on a fresh temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (this test needs root, as CI has): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the filesystem answers ENOSPC, and checks that not even one
    /// more byte fits in a new file. Returns the filler's path.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).expect("create the filler");
        for chunk in [1 << 16, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        drop(f);
        let probe = std::fs::write(self.path().join("probe"), b"x");
        let _ = std::fs::remove_file(self.path().join("probe"));
        assert_eq!(
            probe.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOSPC)),
            "the tmpfs at {} is not full after the filler: a one-byte file still fits",
            self.path().display()
        );
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(self.dir.path()).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            // Busy (a process still holds a file): detach it so the directory can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .output();
        }
    }
}

/// A v1 daemon whose database is `db`, governing below directories of the test's own cgroup.
struct DiskDaemon {
    // Declared first, so the daemon is killed before `dirs` cleans up.
    d: Option<Daemon>,
    dirs: V1Dirs,
    db: PathBuf,
}

impl DiskDaemon {
    fn start(name: &str, db: PathBuf) -> DiskDaemon {
        let dirs = V1Dirs::create(&format!("disk-{name}"));
        let d = Some(dirs.launch(&db));
        DiskDaemon { d, dirs, db }
    }

    /// Kills the daemon (SIGKILL, as a crash would) and starts it again on the same database.
    fn restart(&mut self) {
        if let Some(mut d) = self.d.take() {
            d.kill9();
        }
        self.d = Some(self.dirs.launch(&self.db));
    }

    fn d(&self) -> &Daemon {
        self.d.as_ref().unwrap()
    }

    /// Every daemon log of this test, concatenated.
    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dirs.tmp.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        out
    }
}

/// What the daemon acknowledged: each tenant's labels.
type Model = BTreeMap<String, Value>;

/// One call and what came back, for the report a failure prints.
struct Trace {
    lines: Vec<String>,
    violations: Vec<String>,
}

impl Trace {
    fn call(&mut self, d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let t = Instant::now();
        let (s, b) = d.call(method, path, body);
        self.lines.push(format!(
            "{method} {path} -> {s} in {} ms {}",
            t.elapsed().as_millis(),
            if s >= 400 {
                b.to_string()
            } else {
                String::new()
            }
        ));
        (s, b)
    }

    fn violation(&mut self, v: String) {
        self.lines.push(format!("VIOLATION: {v}"));
        self.violations.push(v);
    }

    /// Reads `name` four times (the pool has four connections) and compares each answer with
    /// what was acknowledged.
    fn check_reads(&mut self, d: &Daemon, model: &Model, name: &str) {
        for _ in 0..4 {
            let (s, b) = d.call("GET", &format!("/v1/tenants/{name}"), None);
            let got = (s == 200).then(|| b["spec"]["labels"].clone());
            let want = model.get(name).cloned();
            if got != want {
                self.violation(format!(
                    "GET /v1/tenants/{name} answered {s} {:?}, but the acknowledged state is {want:?}",
                    got
                ));
                return;
            }
        }
    }

    /// A refused write must be a 507 problem+json naming the database's filesystem.
    fn check_full(&mut self, what: &str, s: u16, b: &Value) {
        if s != 507
            || b["type"] != "https://tenantd.dev/problems/insufficient-storage"
            || !b["detail"]
                .as_str()
                .unwrap_or("")
                .contains("filesystem is full")
        {
            self.violation(format!(
                "{what} on a full disk answered {s} {b}, want 507 insufficient-storage"
            ));
        }
    }
}

/// How many sweeps the usage sampler failed to store.
fn sampler_errors(d: &Daemon) -> f64 {
    series(&scrape(d), "tenantd_sampler_errors_total").expect("tenantd_sampler_errors_total")
}

/// How many sweeps the usage sampler stored.
fn sweeps_stored(d: &Daemon) -> f64 {
    series(&scrape(d), "tenantd_db_write_duration_seconds_count")
        .expect("tenantd_db_write_duration_seconds_count")
}

fn labels(step: usize) -> Value {
    json!({ "step": step.to_string() })
}

/// Issue 13, finding 1: with the database on a full filesystem, PATCH and DELETE answered
/// 200/204 although nothing reached the file; after space was freed writes answered 500
/// "database is locked", GET alternated between values, /readyz stayed 200, and a restart lost
/// every acknowledged PATCH. Now: on a full disk every write is a 507 at once, nothing is
/// half-applied, reads show what was acknowledged, /readyz is 503; when space returns the
/// daemon writes again without a restart; after a restart exactly the acknowledged writes are
/// there.
#[test]
fn issue13_finding_1_full_disk_acknowledged_but_lost() {
    let fs = Tmpfs::mount("3m");
    let mut v = DiskDaemon::start("full", fs.path().join("tenantd.db"));
    let mut tr = Trace {
        lines: Vec::new(),
        violations: Vec::new(),
    };
    let mut model = Model::new();

    // Before: tenants to change (p*) and to delete (x*), acknowledged on a disk with room.
    for name in ["p0", "p1", "p2", "x0", "x1", "x2"] {
        let (s, b) = tr.call(
            v.d(),
            "PUT",
            &format!("/v1/tenants/{name}"),
            Some(json!({"labels": labels(0)})),
        );
        assert_eq!(
            s, 201,
            "PUT /v1/tenants/{name} before the disk is full: {b}"
        );
        model.insert(name.into(), labels(0));
    }

    // Full: every write is refused with 507; nothing half-happens.
    let filler = fs.fill();
    tr.lines.push("--- the filesystem is full".into());
    // The sampler's transactions fail first (on the pool's connections, the way that left a
    // transaction open forever): the writes below come after three failed sweeps.
    let failed = sampler_errors(v.d());
    eventually(
        60,
        "three sweeps of the usage sampler fail on the full disk",
        || sampler_errors(v.d()) >= failed + 3.0,
    );
    let mut step = 0;
    let mut refused = 0;
    for round in 0..3 {
        for name in ["p0", "p1", "p2"] {
            step += 1;
            let (s, b) = tr.call(
                v.d(),
                "PATCH",
                &format!("/v1/tenants/{name}"),
                Some(json!({"labels": labels(step)})),
            );
            if s == 200 {
                model.insert(name.into(), labels(step));
            } else {
                refused += 1;
                tr.check_full(&format!("PATCH /v1/tenants/{name}"), s, &b);
            }
            tr.check_reads(v.d(), &model, name);
        }
        let x = format!("x{round}");
        let (s, b) = tr.call(v.d(), "DELETE", &format!("/v1/tenants/{x}"), None);
        if s == 204 {
            model.remove(&x);
        } else {
            refused += 1;
            tr.check_full(&format!("DELETE /v1/tenants/{x}"), s, &b);
        }
        tr.check_reads(v.d(), &model, &x);
        let n = format!("n{round}");
        let (s, b) = tr.call(
            v.d(),
            "PUT",
            &format!("/v1/tenants/{n}"),
            Some(json!({"labels": labels(step)})),
        );
        if s == 201 {
            model.insert(n.clone(), labels(step));
        } else {
            refused += 1;
            tr.check_full(&format!("PUT /v1/tenants/{n}"), s, &b);
        }
        tr.check_reads(v.d(), &model, &n);
        let (s, b) = tr.call(v.d(), "GET", "/readyz", None);
        if s != 503 || b["type"] != "https://tenantd.dev/problems/not-ready" {
            tr.violation(format!(
                "/readyz while the store cannot write answered {s} {b}, want 503 not-ready"
            ));
        }
    }
    if refused == 0 {
        tr.violation("no write was refused on the full disk: the test checked nothing".into());
    }

    // Space returns: the daemon writes again by itself, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    tr.lines.push("--- space freed".into());
    eventually(30, "/readyz answers 200 once space returns", || {
        v.d().call("GET", "/readyz", None).0 == 200
    });
    let stored = sweeps_stored(v.d());
    eventually(60, "the usage sampler stores a sweep again", || {
        sweeps_stored(v.d()) > stored
    });
    for name in ["p0", "p1", "p2", "p0", "p1", "p2"] {
        step += 1;
        let (s, b) = tr.call(
            v.d(),
            "PATCH",
            &format!("/v1/tenants/{name}"),
            Some(json!({"labels": labels(step)})),
        );
        if s == 200 {
            model.insert(name.into(), labels(step));
        } else {
            tr.violation(format!(
                "PATCH /v1/tenants/{name} after space returned answered {s} {b}, want 200"
            ));
        }
        tr.check_reads(v.d(), &model, name);
    }
    step += 1;
    let (s, b) = tr.call(
        v.d(),
        "PUT",
        "/v1/tenants/after",
        Some(json!({"labels": labels(step)})),
    );
    if s == 201 {
        model.insert("after".into(), labels(step));
    } else {
        tr.violation(format!(
            "PUT /v1/tenants/after after space returned answered {s} {b}, want 201"
        ));
    }

    // The sampler failed every sweep meanwhile: it said so once, and once when it stored again.
    let logs = v.logs();
    let sampler_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("usage sampler:"))
        .collect();
    tr.lines.extend(
        logs.lines()
            .filter(|l| l.contains("usage sampler:") || l.contains("tenantd::store"))
            .map(|l| format!("log: {l}")),
    );
    if sampler_lines.len() != 2 {
        tr.violation(format!(
            "the usage sampler logged {} lines about the full disk, want one when its writes fail and one when they resume: {sampler_lines:#?}",
            sampler_lines.len()
        ));
    }

    // Restart: exactly what was acknowledged is there.
    v.restart();
    tr.lines.push("--- restarted".into());
    let (s, b) = tr.call(v.d(), "GET", "/v1/tenants", None);
    assert_eq!(s, 200, "GET /v1/tenants after the restart: {b}");
    let after: Model = b
        .as_array()
        .expect("the tenant list is an array")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["spec"]["labels"].clone(),
            )
        })
        .collect();
    if after != model {
        tr.violation(format!(
            "after a restart the database holds {after:?}, but the acknowledged state is {model:?}"
        ));
    }

    eprintln!("the calls:\n{}", tr.lines.join("\n"));
    assert!(
        tr.violations.is_empty(),
        "{} violations:\n{}\n\nthe calls:\n{}",
        tr.violations.len(),
        tr.violations.join("\n"),
        tr.lines.join("\n")
    );
}
