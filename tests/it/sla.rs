//! The SLA engine against real workloads in the cgroup v2 VM: shares delivered and judged,
//! idle tenants not contended, an outside hog detected and (adaptive) corrected, memory
//! protection holding, io guarantees judged in iocost's device time, and the report agreeing
//! with the kernel's counters.

use crate::support::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn report(d: &Daemon, q: &str) -> Value {
    let (s, r) = d.call("GET", &format!("/v1/reports/sla?{q}"), None);
    assert_eq!(s, 200, "{r}");
    r
}

fn tenant<'a>(r: &'a Value, t: &str) -> &'a Value {
    r["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["tenant"] == t)
        .unwrap_or_else(|| panic!("{t} not in {r}"))
}

/// A cgroup outside the governor's root that the test owns: competition tenantd cannot see.
struct Outside {
    path: PathBuf,
    procs: Vec<Owned>,
}

impl Outside {
    fn hog(root: &TestRoot, weight: u32, loops: usize) -> Outside {
        let path = root
            .mount
            .join(format!("tenantd-test-outside-{}", std::process::id()));
        if path.exists() {
            remove_tree(&path);
        }
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("cpu.weight"), weight.to_string()).unwrap();
        let procs: Vec<Owned> = (0..loops)
            .map(|_| {
                Owned(
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        for p in &procs {
            std::fs::write(path.join("cgroup.procs"), p.pid().to_string()).unwrap();
        }
        Outside { path, procs }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.procs.clear();
        remove_tree(&self.path);
    }
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn fifty_thirty_twenty_all_busy_deliver_their_guarantees_with_no_violation() {
    let root = TestRoot::new("sla-busy");
    // Under software emulation the daemon's own sampling and the harness take 2-4% of the two
    // vCPUs (measured: a got 47.7% of the host with 50% guaranteed); on a real host that is
    // well under 1%. So the VM judges with 4 pp of tolerance instead of the default 2.
    let d = Daemon::start_with(&root, &["--sla-tolerance-pp", "4"]);
    let ts = [("a", 50.0), ("b", 30.0), ("c", 20.0)];
    for (t, g) in ts {
        d.create(t, json!({"cpu": {"guarantee_pct": g}}));
    }
    let _loops: Vec<Owned> = ts.iter().flat_map(|(t, _)| d.busy(t, 2)).collect();
    for (t, _) in ts {
        root.wait_procs(t, 2);
    }
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3000;
    std::thread::sleep(Duration::from_secs(18));
    let r = report(&d, &format!("from={t0}"));
    for (t, g) in ts {
        let x = tenant(&r, t);
        let share = x["delivered_mean_contended_ratio"]
            .as_f64()
            .unwrap_or_else(|| panic!("{t} never contended: {x}"))
            * 100.0;
        eprintln!(
            "{t}: guarantee {g}%, delivered {share:.1}% while contended, attainment {}, contended {} s",
            x["attainment_ratio"], x["contended_seconds"]
        );
        assert!(
            (share - g).abs() <= 3.0,
            "{t}: guaranteed {g}%, delivered {share:.1}% of the host while contended"
        );
        assert!(
            x["contended_seconds"].as_f64().unwrap() >= 8.0,
            "{t} is busy and competing: {x}"
        );
        assert_eq!(x["violations"], 0, "{x}");
        assert_eq!(x["attainment_ratio"], 1.0, "{x}");
    }
    // The same numbers reach /metrics.
    let body = d
        .http
        .get(d.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // (/metrics counts since the daemon started, ramp-up included, so only its presence and
    // range are checked here; the report above judged the window.)
    let att: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tenantd_tenant_sla_attainment_ratio{tenant=\"a\"} "))
        .expect("attainment missing from /metrics")
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&att), "attainment {att}");
    assert!(body.contains("tenantd_tenant_sla_contended_seconds_total{tenant=\"a\"}"));
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn an_idle_tenant_is_not_contended_and_its_share_flows_to_the_busy_one() {
    let root = TestRoot::new("sla-idle");
    let d = Daemon::start(&root);
    for (t, g) in [("idle", 50.0), ("busy", 30.0)] {
        d.create(t, json!({"cpu": {"guarantee_pct": g}}));
    }
    let _loops = d.busy("busy", 2);
    root.wait_procs("busy", 2);
    std::thread::sleep(Duration::from_secs(10));
    let r = report(&d, "from=1m");
    let idle = tenant(&r, "idle");
    assert_eq!(idle["contended_seconds"], 0.0, "{idle}");
    assert_eq!(idle["violations"], 0);
    assert_eq!(idle["attainment_ratio"], 1.0);
    let b = tenant(&r, "busy");
    // Nothing competes with it: it is not contended either, and it used far more than 30%.
    let used = b["cpu_seconds"].as_f64().unwrap();
    assert!(
        used > 8.0,
        "the idle tenant's share flowed to the busy one: {b}"
    );
    assert_eq!(b["violations"], 0, "{b}");
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn a_hog_outside_the_root_is_a_violation_and_adaptive_enforcement_restores_the_guarantee() {
    // Without adaptive enforcement: detected within a few intervals. The daemon stays where
    // the test runs (`--no-move-self`) rather than in the root's `_tenantd`: inside the
    // root it shares the root's 100 against the hog's 300 with the busy tenant (about 2% of
    // the emulated CPUs at weight 500 of 5,500), and in CI, after the memory test had
    // emptied the page cache, its SQLite statements took 1-6 s and no verdict came within
    // 90 s (the context printed on a timeout shows it).
    {
        let root = TestRoot::new("sla-hog");
        let d = Daemon::start_with(&root, &["--no-move-self"]);
        d.create("a", json!({"cpu": {"guarantee_pct": 50}}));
        let _loops = d.busy("a", 2);
        root.wait_procs("a", 2);
        let _hog = Outside::hog(&root, 300, 2);
        let t0 = Instant::now();
        eventually_or(
            90,
            "an sla_violation event for a",
            || {
                let (_, ev) = d.call("GET", "/v1/events?tenant=a&kind=sla_violation", None);
                ev.as_array().is_some_and(|a| !a.is_empty())
            },
            || {
                let cpu = |p: &std::path::Path| {
                    std::fs::read_to_string(p.join("cpu.stat"))
                        .unwrap_or_else(|e| format!("{}: {e}", p.display()))
                };
                let (_, usage) = d.call("GET", "/v1/tenants/a/usage?from=30s&step=1s", None);
                let (_, events) = d.call("GET", "/v1/events?tenant=a", None);
                let log = d.log();
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                format!(
                    "a's cpu.stat:\n{}\nthe hog's cpu.stat:\n{}\na's usage: {usage}\na's events: {events}\ndaemon log (last 80 lines, newest first):\n{}",
                    cpu(&root.path.join("a")),
                    cpu(&_hog.path),
                    tail.join("\n")
                )
            },
        );
        eprintln!(
            "violation detected {:?} after the hog started",
            t0.elapsed()
        );
        let (_, ev) = d.call("GET", "/v1/events?tenant=a&kind=sla_violation", None);
        let open = &ev[0]["detail"];
        assert_eq!(open["state"], "open", "{ev}");
        assert!(open["worst_share_ratio"].as_f64().unwrap() < 0.45, "{open}");
        assert_eq!(open["top_consumers"][0]["tenant"], "a");
    }
    // With adaptive enforcement: the root's weight rises until the guarantee holds again.
    let root = TestRoot::new("sla-adapt");
    let d = Daemon::start_with(&root, &["--sla-adaptive"]);
    d.create("a", json!({"cpu": {"guarantee_pct": 50}}));
    let _loops = d.busy("a", 2);
    root.wait_procs("a", 2);
    let _hog = Outside::hog(&root, 300, 2);
    // The controller raises the root's weight while a is delivered more than the tolerance
    // (2 pp) below its guarantee and holds it once within: against the hog's 300 that is
    // anywhere from about 277 (a at 48%) up, so wait for a clear rise (from 100) that has
    // settled (no change for 5 s), then judge what counts: the share a is delivered.
    let weight = || root.read("cpu.weight").parse::<u32>().unwrap();
    let t0 = Instant::now();
    let mut history = vec![(0.0, weight())];
    let mut settled_at = Instant::now();
    loop {
        let w = weight();
        if w != history.last().unwrap().1 {
            history.push((t0.elapsed().as_secs_f64(), w));
            settled_at = Instant::now();
        }
        if w >= 200 && settled_at.elapsed() >= Duration::from_secs(5) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let (_, ev) = d.call("GET", "/v1/events?kind=sla_adjustment", None);
            panic!(
                "the root's cpu.weight did not rise past 200 and settle within 90 s; \
                 (seconds, weight): {history:?}\nadjustment events: {ev}\ndaemon log:\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("root cpu.weight (seconds after the hog, weight): {history:?}");
    let u0: u64 = root.usage_usec("a");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let u1: u64 = root.usage_usec("a");
    let share = (u1 - u0) as f64 / (t0.elapsed().as_micros() as f64 * 2.0) * 100.0;
    eprintln!(
        "with adaptive enforcement: root cpu.weight {}, a delivered {share:.1}% of the host",
        root.read("cpu.weight")
    );
    assert!(
        share >= 45.0,
        "guarantee 50%, delivered {share:.1}% after adaptive enforcement"
    );
    let (_, ev) = d.call("GET", "/v1/events?kind=sla_adjustment", None);
    assert!(
        ev.as_array().is_some_and(|a| !a.is_empty()),
        "every adjustment is an event: {ev}"
    );
    assert_eq!(ev[0]["detail"]["file"], "cpu.weight");
}

fn current(root: &TestRoot, t: &str) -> u64 {
    root.read(&format!("{t}/memory.current")).parse().unwrap()
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn a_hard_memory_guarantee_keeps_its_pages_while_a_hog_takes_the_rest() {
    let root = TestRoot::new("sla-mem");
    let d = Daemon::start(&root);
    // File pages are what protection is about here (anon memory cannot be reclaimed without
    // swap, and the VM has none): an ext4 filesystem on the VM's own scratch disk.
    let (_, devpath) = scratch_disk();
    let mnt = root.dir.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    sh(&format!(
        "mkfs.ext4 -q -F {devpath} && mount {devpath} {}",
        mnt.display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    for f in ["p", "q"] {
        sh(&format!(
            "dd if=/dev/zero of={}/{f} bs=1M count=200 oflag=direct status=none",
            mnt.display()
        ));
    }
    sh("sync && echo 1 > /proc/sys/vm/drop_caches");
    d.create(
        "protected",
        json!({"memory": {"guarantee_bytes": "300MiB", "protection": "hard"}}),
    );
    d.create("plain", json!({}));
    d.create("hog", json!({}));
    // Each reads its own 200 MiB file into the page cache.
    for (t, f) in [("protected", "p"), ("plain", "q")] {
        let out = d
            .cli()
            .args([
                "run",
                "--tenant",
                t,
                "--",
                "dd",
                &format!("if={}/{f}", mnt.display()),
                "of=/dev/null",
                "bs=1M",
                "status=none",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let (p0, q0) = (current(&root, "protected"), current(&root, "plain"));
    eprintln!(
        "page cache before the hog: protected {} MiB, plain {} MiB",
        p0 >> 20,
        q0 >> 20
    );
    assert!(
        p0 > 150 << 20 && q0 > 150 << 20,
        "the reads were cached: {p0} {q0}"
    );
    // The hog allocates anonymous memory until the host must reclaim: all it can have without
    // the protected pages (MemAvailable counts them as reclaimable; memory.min keeps them),
    // less a margin, so every unprotected page cache goes and the OOM killer has no cause.
    // A fixed size does not fit: the guest's free memory varies with the tests before (a
    // fixed 640 MiB drove the kernel to OOM in one CI run, and the daemon with it).
    let available = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("MemAvailable in /proc/meminfo")
        << 10;
    let hog = available.saturating_sub(p0 + (48 << 20));
    eprintln!(
        "MemAvailable {} MiB: the hog takes {} MiB",
        available >> 20,
        hog >> 20
    );
    assert!(
        hog > q0 + (64 << 20),
        "this VM has too little memory to show reclaim ({} MiB available with {} MiB protected): give it more (TENANTD_VM_MEM)",
        available >> 20,
        p0 >> 20
    );
    let out = d
        .cli()
        .args([
            "run",
            "--tenant",
            "hog",
            "--",
            "python3",
            "-c",
            &format!("import time; b = bytearray({hog}); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"),
        ])
        .output()
        .unwrap();
    let (p1, q1) = (current(&root, "protected"), current(&root, "plain"));
    eprintln!(
        "after the hog ({:?}): protected {} MiB, plain {} MiB",
        out.status,
        p1 >> 20,
        q1 >> 20
    );
    assert!(
        p1 >= p0 * 9 / 10,
        "the protected tenant kept its pages: {} -> {} MiB",
        p0 >> 20,
        p1 >> 20
    );
    assert!(
        q1 < q0 / 2,
        "the unprotected tenant's cache was reclaimed first: {} -> {} MiB",
        q0 >> 20,
        q1 >> 20
    );
    let (_, ev) = d.call(
        "GET",
        "/v1/events?tenant=protected&kind=memory_protection_breach",
        None,
    );
    assert_eq!(ev, json!([]), "no breach of the hard guarantee");
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn the_report_agrees_with_the_kernels_counters_in_every_format() {
    let root = TestRoot::new("sla-report");
    let d = Daemon::start(&root);
    d.create(
        "acct",
        json!({"labels": {"customer": "acme"}, "cpu": {"guarantee_pct": 40}}),
    );
    let usage = || -> u64 { root.usage_usec("acct") };
    std::thread::sleep(Duration::from_secs(2));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let (t0, u0) = (now(), usage());
    let loops = d.busy("acct", 1);
    root.wait_procs("acct", 1);
    std::thread::sleep(Duration::from_secs(12));
    drop(loops);
    std::thread::sleep(Duration::from_secs(3));
    let (t1, u1) = (now(), usage());
    let r = report(&d, &format!("from={t0}&to={t1}&tenant=acct"));
    let x = tenant(&r, "acct");
    let kernel_s = (u1 - u0) as f64 / 1e6;
    let reported = x["cpu_seconds"].as_f64().unwrap();
    eprintln!("cpu seconds: kernel {kernel_s:.2}, report {reported:.2}");
    assert!(
        (reported - kernel_s).abs() <= kernel_s * 0.15 + 0.5,
        "report {reported:.2} CPU-s vs kernel {kernel_s:.2}"
    );
    assert_eq!(x["labels"]["customer"], "acme");
    assert_eq!(r["tenants"].as_array().unwrap().len(), 1);
    let csv = d
        .http
        .get(d.url(&format!("/v1/reports/sla?from={t0}&to={t1}&format=csv")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        csv.lines().nth(1).unwrap().starts_with("acct,0.400000,"),
        "{csv}"
    );
    let html = d
        .http
        .get(d.url(&format!("/v1/reports/sla?from={t0}&to={t1}&format=html")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));
    // And the CLI.
    let out = d
        .cli()
        .args(["report", "--from", &t0.to_string(), "--tenant", "acct"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("acct"));
    let (s, p) = d.call("GET", "/v1/reports/sla?format=pdf", None);
    assert_eq!((s, p["field"].as_str()), (422, Some("format")));
}

/// io.weight divides device time, and only where iocost is on. With iocost on the VM's disk,
/// a tenant of small reads guaranteed 75% and one of large reads guaranteed 25% each get
/// their share of device time; the IO SLA judges in device time, so the small reader is
/// contended but not in violation, although it gets far fewer bytes than the large reader.
#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn io_guarantees_hold_in_device_time_where_iocost_divides_it() {
    use crate::usage::{scrape, series};
    let root = TestRoot::new("sla-io");
    let _iocost = IoCost::enable(&root);
    let (dev, devpath) = scratch_disk();
    let d = Daemon::start_with(&root, &["--sla-tolerance-pp", "5"]);
    let (_, h) = d.call("GET", "/v1/host", None);
    let disk = h["cgroup"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| format!("{}:{}", x["device"]["major"], x["device"]["minor"]) == dev)
        .unwrap_or_else(|| panic!("{dev} not in /v1/host: {h}"))
        .clone();
    assert_eq!(disk["io_weight_effective"], true, "iocost is on: {disk}");
    d.create("small", json!({"io": {"guarantee_pct": 75}}));
    d.create("large", json!({"io": {"guarantee_pct": 25}}));
    // Reads only (the disk is shared with other tests), O_DIRECT so the page cache does not
    // answer them, each from its own half of the disk, again and again.
    let reader = |tenant: &str, bs: &str, skip_mib: u32| {
        let cmd = format!(
            "while :; do dd if={devpath} of=/dev/null bs={bs} iflag=direct,skip_bytes skip={}M count=100000 2>/dev/null; done",
            skip_mib
        );
        Owned(
            d.run_in(tenant, &["sh", "-c", &cmd])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn tenantd run"),
        )
    };
    let _small = reader("small", "4k", 0);
    let _large = reader("large", "1M", 512);
    // `sh` and its `dd`, or `sh` alone between two `dd`s: waiting for exactly one process
    // timed out once in CI (the large reader's `dd` was always running when looked at).
    root.wait_some_procs("small");
    root.wait_some_procs("large");
    std::thread::sleep(Duration::from_secs(5));

    let key = |name: &str, t: &str| format!("{name}{{tenant=\"{t}\",device=\"{dev}\"}}");
    let sla = |name: &str, t: &str| format!("{name}{{tenant=\"{t}\"}}");
    let take = |body: &str| {
        ["small", "large"].map(|t| {
            let get = |k: String| series(body, &k).unwrap_or_else(|| panic!("{k} missing"));
            (
                get(key("tenantd_tenant_io_device_time_seconds_total", t)),
                get(key("tenantd_tenant_io_read_bytes_total", t)),
                get(sla("tenantd_tenant_sla_io_contended_seconds_total", t)),
                get(sla("tenantd_tenant_sla_io_violation_seconds_total", t)),
            )
        })
    };
    let before = take(&scrape(&d));
    std::thread::sleep(Duration::from_secs(15));
    let body = scrape(&d);
    let after = take(&body);
    // The share of the last interval, as the dashboard plots it against the guarantee.
    let last = series(
        &body,
        "tenantd_tenant_io_delivered_share_ratio{tenant=\"small\"}",
    )
    .expect("the IO share of a tenant with an IO guarantee under iocost");
    let delta = |i: usize| {
        let (a, b) = (after[i], before[i]);
        (a.0 - b.0, a.1 - b.1, a.2 - b.2, a.3 - b.3)
    };
    let (s, l) = (delta(0), delta(1));
    let time_share = s.0 / (s.0 + l.0) * 100.0;
    let byte_share = s.1 / (s.1 + l.1) * 100.0;
    eprintln!(
        "small: {time_share:.1}% of the device time, {byte_share:.1}% of the bytes; contended {:.0} s, in violation {:.0} s; large: contended {:.0} s, in violation {:.0} s",
        s.2, s.3, l.2, l.3
    );
    // Within the SLA's own tolerance (5 pp here), less a margin: a share this close cannot be
    // a violation, so the no-violation check below is about the unit, not about noise.
    assert!(
        (time_share - 75.0).abs() <= 4.0,
        "io.weight 7500:2500 under iocost: small got {time_share:.1}% of the device time"
    );
    assert!(
        byte_share < 50.0,
        "4 KiB reads against 1 MiB reads: bytes are not device time ({byte_share:.1}% of the bytes)"
    );
    assert!(
        s.2 >= 10.0,
        "small waits for its IO, so it is judged: contended {:.1} s of 15",
        s.2
    );
    assert_eq!(
        s.3, 0.0,
        "small got its 75% of the device time: no IO violation (bytes would have said {byte_share:.1}%)"
    );
    assert!(
        (0.6..=0.9).contains(&last),
        "the last interval's IO share in /metrics: {last}"
    );
}
