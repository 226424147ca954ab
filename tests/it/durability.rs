//! Durability of the desired state (issue 13, finding 1): on a full disk a write is refused
//! with 507 and nothing else happens; what was acknowledged survives a restart; the daemon
//! recovers by itself when space returns.
//!
//! The database lives on a small tmpfs the test mounts on a temporary directory (it runs as
//! root, as CI does) and fills with a filler file. The daemon is a v1 daemon as in `v1.rs`:
//! it writes kernel state only below directories of the test's own cgroup in each v1
//! hierarchy, and the guard removes them. The test panics, never skips, when it cannot mount
//! the tmpfs or the v1 hierarchies are missing.

use crate::support::{Daemon, Owned, V1Dirs, eventually};
use crate::usage::{scrape, series};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

    // A tenant with a live process, to delete with kill=true while the disk is full.
    let (s, b) = tr.call(v.d(), "PUT", "/v1/tenants/k", Some(json!({})));
    assert_eq!(s, 201, "PUT /v1/tenants/k: {b}");
    model.insert("k".into(), json!({}));
    let mut worker = sleeper_in(&v.dirs);
    let (s, b) = tr.call(
        v.d(),
        "POST",
        "/v1/tenants/k/procs",
        Some(json!({"pid": worker.pid()})),
    );
    assert_eq!(s, 201, "attach k's worker: {b}");
    let mut newcomer = sleeper_in(&v.dirs);
    let all = v.dirs.roots.distinct().len();

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
    // A refused delete kills nothing and removes nothing; a refused attach moves nothing
    // (both had happened before the store refused: finding 1).
    let (s, b) = tr.call(v.d(), "DELETE", "/v1/tenants/k?kill=true", None);
    tr.check_full("DELETE /v1/tenants/k?kill=true", s, &b);
    std::thread::sleep(std::time::Duration::from_millis(200));
    if !worker.alive() || in_tenant(&v.dirs, "k", worker.pid()) != vec![true; all] {
        tr.violation(format!(
            "DELETE k?kill=true answered {s} on the full disk, yet its process is dead or moved (in k: {:?})",
            in_tenant(&v.dirs, "k", worker.pid())
        ));
    }
    let (s, b) = tr.call(
        v.d(),
        "POST",
        "/v1/tenants/p0/procs",
        Some(json!({"pid": newcomer.pid()})),
    );
    tr.check_full("POST /v1/tenants/p0/procs", s, &b);
    if !newcomer.alive() || in_tenant(&v.dirs, "p0", newcomer.pid()).contains(&true) {
        tr.violation(format!(
            "POST p0/procs answered {s} on the full disk, yet the process was moved (in p0: {:?})",
            in_tenant(&v.dirs, "p0", newcomer.pid())
        ));
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

// ---------------------------------------------------------------------------------------
// Findings 2, 3, 4 and 6: crashes mid-create and mid-attach, a directory missing in one
// hierarchy, reads from memory. v1 on this host; the crash-consistency harness (`crash.rs`)
// covers the same on v2 in the VM.

/// A `sleep 600` the test starts inside its own directories, so every move of it stays
/// between the test's cgroups. Returned once it runs `sleep` (after its shell moved itself).
fn sleeper_in(dirs: &V1Dirs) -> Owned {
    let child = dirs
        .inside(&["sleep".to_string(), "600".to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep inside the test's directories");
    let pid = child.id();
    eventually(10, "the sleeper runs sleep", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    Owned(child)
}

/// For each of the test's hierarchies: whether `pid` is in `tenant`'s leaf there.
fn in_tenant(dirs: &V1Dirs, tenant: &str, pid: u32) -> Vec<bool> {
    dirs.roots
        .distinct()
        .iter()
        .map(|r| {
            let procs = r
                .join(tenantd::cgroup::v1::DEFAULT_ROOT_NAME)
                .join(tenant)
                .join("_procs/cgroup.procs");
            std::fs::read_to_string(procs)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        })
        .collect()
}

/// Directories below the governor root, in any hierarchy, that are not a tenant of `names`
/// at its place (`_procs` leaves and the daemon's own leaf left out), as "hierarchy: path".
fn unowned_dirs(dirs: &V1Dirs, tenants: &Value) -> Vec<String> {
    let mut owned = std::collections::BTreeSet::new();
    let list = tenants.as_array().expect("the tenant list");
    for t in list {
        // The lineage from the parents, top-level first.
        let mut path = vec![t["name"].as_str().unwrap().to_string()];
        let mut p = t["spec"]["parent"].clone();
        while let Some(name) = p.as_str() {
            path.insert(0, name.to_string());
            p = list
                .iter()
                .find(|x| x["name"] == name)
                .map(|x| x["spec"]["parent"].clone())
                .unwrap_or(Value::Null);
        }
        owned.insert(path.join("/"));
    }
    let mut out = Vec::new();
    for r in dirs.roots.distinct() {
        let root = r.join(tenantd::cgroup::v1::DEFAULT_ROOT_NAME);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !e.file_type().is_ok_and(|t| t.is_dir())
                    || name == tenantd::cgroup::LEAF
                    || (d == root && name == tenantd::cgroup::DAEMON_LEAF)
                {
                    continue;
                }
                let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
                if owned.contains(&rel) {
                    stack.push(e.path());
                } else {
                    out.push(format!("{}: {rel}", r.display()));
                }
            }
        }
    }
    out
}

/// Sends a request on a fresh connection and returns at once, without reading the answer.
fn send_and_forget(d: &Daemon, method: &str, path: &str, body: &Value) -> std::net::TcpStream {
    let addr = d.addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    s
}

#[test]
fn issue13_finding_2_a_crash_during_a_create_leaves_no_directory_without_an_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v = DiskDaemon::start("f2", tmp.path().join("tenantd.db"));
    v.d().create("parent", json!({}));
    let worker = sleeper_in(&v.dirs);
    let (s, b) = v.d().call(
        "POST",
        "/v1/tenants/parent/procs",
        Some(json!({"pid": worker.pid()})),
    );
    assert_eq!(s, 201, "attach the parent's worker: {b}");
    let mut recovered = 0;
    let mut created = 0;
    for round in 0..6 {
        // A burst of creates from four clients; the daemon is SIGKILLed in the middle of it.
        let names: Vec<String> = (0..200).map(|i| format!("c{round}x{i}")).collect();
        let addr = v.d().addr.clone();
        let clients: Vec<_> = names
            .chunks(50)
            .map(|chunk| {
                let (addr, chunk) = (addr.clone(), chunk.to_vec());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    for n in chunk {
                        let _ = http
                            .put(format!("{addr}/v1/tenants/{n}"))
                            .json(&json!({"parent": "parent"}))
                            .send();
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(150 + 40 * round));
        v.restart();
        for c in clients {
            c.join().unwrap();
        }
        let journaled = v.logs().matches("finished or undone after a crash").count();
        let (s, list) = v.d().call("GET", "/v1/tenants", None);
        assert_eq!(s, 200, "{list}");
        created = list.as_array().unwrap().len();
        let unowned = unowned_dirs(&v.dirs, &list);
        assert!(
            unowned.is_empty(),
            "round {round}: directories no tenant owns after the restart: {unowned:#?}"
        );
        let (s, r) = v.d().call("POST", "/v1/reconcile", None);
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["unknown"], json!([]), "round {round}: {r}");
        recovered = journaled;
    }
    assert!(
        recovered > 0,
        "no crash of six landed during a create (no journal record was recovered): the test checked nothing"
    );
    // The parent can still be deleted once its children are: the worker is killed, and 204.
    let (_, list) = v.d().call("GET", "/v1/tenants", None);
    for t in list.as_array().unwrap() {
        if t["spec"]["parent"] == "parent" {
            let n = t["name"].as_str().unwrap();
            let (s, b) = v.d().call("DELETE", &format!("/v1/tenants/{n}"), None);
            assert_eq!(s, 204, "DELETE {n}: {b}");
        }
    }
    let (s, b) = v.d().call("DELETE", "/v1/tenants/parent?kill=true", None);
    assert_eq!(s, 204, "DELETE parent?kill=true: {b}");
    let pid = worker.pid();
    eventually(10, "the parent's worker is killed", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    eprintln!(
        "finding 2: 6 crashes during bursts of 200 creates, {recovered} journal records recovered, {created} tenants at the last restart, 0 directories without an owner"
    );
}

#[test]
fn issue13_finding_3_attach_is_whole_on_every_hierarchy_or_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v = DiskDaemon::start("f3", tmp.path().join("tenantd.db"));
    v.d().create("t", json!({}));
    let all = v.dirs.roots.distinct().len();

    // One hierarchy's leaf removed by hand: the attach makes it again and moves the process
    // in every hierarchy (it answered 422 "no process with PID N exists" for a live process,
    // moved in some hierarchies only).
    let leaf = v.dirs.under_root("pids", "t/_procs");
    std::fs::remove_dir(&leaf).expect("remove the pids leaf");
    let s1 = sleeper_in(&v.dirs);
    let (s, b) = v.d().call(
        "POST",
        "/v1/tenants/t/procs",
        Some(json!({"pid": s1.pid()})),
    );
    assert_eq!(s, 201, "attach with the pids leaf missing: {b}");
    assert_eq!(in_tenant(&v.dirs, "t", s1.pid()), vec![true; all]);

    // SIGKILL 0-6 ms after POST .../procs: after the restart the process is in the tenant in
    // every hierarchy or in none (it was left in the cpu hierarchy only, 10 of 20 times).
    let mut split_at_restart = 0;
    let mut moved = 0;
    for i in 0..20u64 {
        let p = sleeper_in(&v.dirs);
        let conn = send_and_forget(
            v.d(),
            "POST",
            "/v1/tenants/t/procs",
            &json!({"pid": p.pid()}),
        );
        std::thread::sleep(std::time::Duration::from_millis(i % 7));
        v.restart();
        drop(conn);
        let places = in_tenant(&v.dirs, "t", p.pid());
        assert!(
            places.iter().all(|&x| x) || places.iter().all(|&x| !x),
            "try {i}: after the restart PID {} is in tenant t in some hierarchies only: {places:?}",
            p.pid()
        );
        if places[0] {
            moved += 1;
        }
        split_at_restart += v.logs().matches("attach_undone").count();
    }
    eprintln!(
        "finding 3: 20 kills 0-6 ms after an attach: {moved} moved everywhere, the rest nowhere; none split"
    );
    let _ = split_at_restart;
}

/// Issue 17: a placement rule's move is recorded in the move log (`<db>-moves`, no sync, no
/// database lock) instead of the database. What a crash leaves there is recovered at the next
/// start like an attach record: here the daemon is killed, the process is put in the tenant in
/// one hierarchy only (a move split by the crash) and its record written as the daemon writes
/// it; the next start moves it back where it was in every hierarchy, says so, stores
/// `attach_undone` and empties the log. A record of a move that was whole is dropped.
#[test]
fn issue17_a_rules_move_split_by_a_crash_is_undone_from_the_move_log() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("tenantd.db");
    let mut v = DiskDaemon::start("f17", db.clone());
    v.d().create("t", json!({}));
    let roots = v.dirs.roots.distinct();
    assert!(roots.len() > 1, "needs several v1 hierarchies: {roots:?}");
    let split = sleeper_in(&v.dirs);
    let whole = sleeper_in(&v.dirs);
    if let Some(mut d) = v.d.take() {
        d.kill9();
    }
    let leaf = |r: &Path| {
        r.join(tenantd::cgroup::v1::DEFAULT_ROOT_NAME)
            .join("t/_procs/cgroup.procs")
    };
    std::fs::write(leaf(roots[0]), split.pid().to_string()).unwrap();
    for r in &roots {
        std::fs::write(leaf(r), whole.pid().to_string()).unwrap();
    }
    let mut want = vec![false; roots.len()];
    want[0] = true;
    assert_eq!(in_tenant(&v.dirs, "t", split.pid()), want);
    let start_time = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        rest.split_whitespace().nth(19).unwrap().parse().unwrap()
    };
    let record = |id: u64, pid: u32| {
        json!({"id": id, "ts_ms": 1, "tenant": "t", "body": {
            "step": "attach", "leaf": "t/_procs", "pid": pid, "start_time": start_time(pid),
            "from": roots,
        }})
        .to_string()
    };
    let log = PathBuf::from(format!("{}-moves", db.display()));
    std::fs::write(
        &log,
        format!("{}\n{}\n", record(1, split.pid()), record(2, whole.pid())),
    )
    .unwrap();
    v.d = Some(v.dirs.launch(&db));
    eventually(20, "the split move is undone", || {
        in_tenant(&v.dirs, "t", split.pid()) == vec![false; roots.len()]
    });
    assert_eq!(
        in_tenant(&v.dirs, "t", whole.pid()),
        vec![true; roots.len()],
        "a whole move stays"
    );
    eventually(10, "the move log is emptied", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() == 0)
    });
    let logs = v.logs();
    for id in [1, 2] {
        assert!(
            logs.contains(&format!(
                "move log record {id} (t): finished or undone after a crash"
            )),
            "{logs}"
        );
    }
    let (s, ev) = v.d().call("GET", "/v1/events?tenant=t", None);
    assert_eq!(s, 200, "{ev}");
    let undone: Vec<&Value> = ev
        .as_array()
        .or_else(|| ev["events"].as_array())
        .expect("a list of events")
        .iter()
        .filter(|e| e.to_string().contains("attach_undone"))
        .collect();
    assert_eq!(undone.len(), 1, "{ev}");
    assert!(undone[0].to_string().contains(&split.pid().to_string()));
}

#[test]
fn issue13_finding_4_a_delete_with_a_directory_missing_in_one_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let v = DiskDaemon::start("f4", tmp.path().join("tenantd.db"));
    v.d().create("t", json!({}));
    let mut p = sleeper_in(&v.dirs);
    let (s, b) = v
        .d()
        .call("POST", "/v1/tenants/t/procs", Some(json!({"pid": p.pid()})));
    assert_eq!(s, 201, "{b}");
    // The tenant's directory removed by hand in the pids hierarchy: the process goes back to
    // the test's own directory there first (rmdir refuses a cgroup with processes).
    let pids_root = v.dirs.roots.get("pids").unwrap().to_path_buf();
    std::fs::write(pids_root.join("cgroup.procs"), p.pid().to_string()).unwrap();
    let t = v.dirs.under_root("pids", "t");
    std::fs::remove_dir(t.join("_procs")).unwrap();
    std::fs::remove_dir(&t).unwrap();

    let (s, b) = v.d().call("DELETE", "/v1/tenants/t?kill=true", None);
    assert_eq!(s, 204, "DELETE t?kill=true: {b}");
    eventually(10, "the tenant's process is killed", || !p.alive());
    for r in v.dirs.roots.distinct() {
        let d = r.join(tenantd::cgroup::v1::DEFAULT_ROOT_NAME).join("t");
        assert!(
            !d.exists(),
            "{} is still there after the delete",
            d.display()
        );
    }
    let (s, _) = v.d().call("GET", "/v1/tenants/t", None);
    assert_eq!(s, 404);
}

#[test]
fn issue13_finding_6_reads_are_served_from_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let v = DiskDaemon::start("f6", tmp.path().join("tenantd.db"));
    for n in ["a", "b", "c"] {
        v.d().create(n, json!({"cpu": {"guarantee_pct": 10}}));
    }
    let read_times = |list: &Value| -> BTreeMap<String, i64> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["kernel_read_ms"].as_i64().expect("kernel_read_ms"),
                )
            })
            .collect()
    };
    let (_, first) = v.d().call("GET", "/v1/tenants", None);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // A drift made by hand is not seen by reads (no kernel walk per request)...
    std::fs::write(v.dirs.under_root("cpu", "b/cpu.shares"), "2").unwrap();
    let (_, second) = v.d().call("GET", "/v1/tenants", None);
    assert_eq!(
        read_times(&first),
        read_times(&second),
        "GET /v1/tenants read the kernel again"
    );
    let (_, one) = v.d().call("GET", "/v1/tenants/b", None);
    assert_eq!(one["kernel_read_ms"], second[1]["kernel_read_ms"]);
    // ...until a change, a placement or a reconcile pass reads it: the pass corrects it and
    // the reads show the new time and the corrected value.
    let (s, r) = v.d().call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{r}");
    let (_, third) = v.d().call("GET", "/v1/tenants", None);
    let (t2, t3) = (read_times(&second), read_times(&third));
    for n in ["a", "b", "c"] {
        assert!(
            t3[n] > t2[n],
            "{n}: read at {} then {} after a reconcile pass",
            t2[n],
            t3[n]
        );
    }
    assert_eq!(
        std::fs::read_to_string(v.dirs.under_root("cpu", "b/cpu.shares"))
            .unwrap()
            .trim(),
        third[1]["effective"]["cpu_weight"]
            .as_u64()
            .map(|w| ((w * 1024 + 50) / 100).to_string())
            .unwrap()
    );
}
