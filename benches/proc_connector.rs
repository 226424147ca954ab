//! Process events benchmark (issue 17): `cargo bench --bench proc_connector [-- RATE SECONDS]`
//! (default 1000 execs per second for 10 s). Root, in the initial PID namespace.
//!
//! A generator (this binary again, `--generate`) runs in a PID namespace of its own
//! (`unshare --pid --fork --kill-child`) and, on a v1 or hybrid host, in a pids cgroup of its
//! own below this process's (`pids.max` 512: a runaway cannot fill the host). It starts
//! `/bin/true` RATE times a second, paced, reaps them, and prints how many it started.
//!
//! This process reads the connector on `ProcConnector::spawn`'s thread and follows the
//! generator's tree by its Fork events. For each Exec in that tree: the latency from the
//! kernel's timestamp of the exec (`ktime_get_ns()` in `proc_exec_connector`, taken once the
//! new program is loaded) to the callback running in user space, against CLOCK_MONOTONIC.
//! Reports p50/p90/p99/max, the reader thread's CPU time (its `schedstat`) per 1,000 events
//! (every event on the host, not only the generator's), and what was lost: execs started but
//! never seen, and the `Lost` signals (overruns, skipped sequence numbers).

use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tenantd::cgroup::proc_connector::{Lost, ProcConnector, ProcEvent, Stamped};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--generate") {
        return generate(num(&args, 1, 1000), num(&args, 2, 10));
    }
    measure(num(&args, 0, 1000), num(&args, 1, 10));
}

fn num(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).map_or(default, |a| {
        a.parse()
            .unwrap_or_else(|_| panic!("argument {i}: a number, not '{a}'"))
    })
}

/// The generator: `/bin/true` `rate` times a second for `secs` seconds, then prints the count.
fn generate(rate: u64, secs: u64) {
    if let Ok(procs) = std::env::var("PROCEV_BENCH_CGROUP_PROCS") {
        std::fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("joining {procs}: {e}"));
    }
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let (start, until) = (Instant::now(), Duration::from_secs(secs));
    let mut running: std::collections::VecDeque<Child> = Default::default();
    let mut started = 0u64;
    while start.elapsed() < until {
        let due = start + period * started as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        running.push_back(Command::new("/bin/true").spawn().expect("spawn /bin/true"));
        started += 1;
        while let Some(c) = running.front_mut() {
            if c.try_wait().expect("try_wait").is_none() {
                break;
            }
            running.pop_front();
        }
    }
    for mut c in running {
        c.wait().expect("wait");
    }
    println!("{started} {:.3}", start.elapsed().as_secs_f64());
}

#[derive(Default)]
struct Seen {
    /// This process, the generator and their descendants (tgids).
    tree: HashSet<u32>,
    /// Exec latency, kernel timestamp to user space, ns.
    latencies: Vec<u64>,
    execs: u64,
    events: u64,
    lost: Vec<Lost>,
    reader_tid: Option<i32>,
}

fn monotonic() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of a thread of this process from its schedstat (ns).
fn thread_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no schedstat for thread {tid}"))
}

/// A pids cgroup below this process's own in the v1 pids hierarchy, if there is one.
fn pids_cgroup() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_string()))?;
    let dir = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(own.trim_start_matches('/'))
        .join(format!("tenantd-bench-procev-{}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    std::fs::write(dir.join("pids.max"), "512").expect("pids.max");
    Some(dir)
}

fn measure(rate: u64, secs: u64) {
    let me = std::process::id();
    let conn = ProcConnector::open().unwrap_or_else(|e| panic!("{e}"));
    let buffer = conn.receive_buffer_bytes();
    let seen = Arc::new(Mutex::new(Seen {
        tree: HashSet::from([me]),
        ..Seen::default()
    }));
    let shared = Arc::clone(&seen);
    let reader = conn
        .spawn(move |Stamped { event, kernel_time }| {
            let now = monotonic();
            let mut s = shared.lock().unwrap();
            s.events += 1;
            if s.reader_tid.is_none() {
                s.reader_tid = Some(rustix::thread::gettid().as_raw_nonzero().get());
            }
            match event {
                ProcEvent::Fork {
                    parent_tgid,
                    child_tgid,
                    ..
                } if s.tree.contains(&parent_tgid) => {
                    s.tree.insert(child_tgid);
                }
                ProcEvent::Exec { tgid, .. } if tgid != me && s.tree.contains(&tgid) => {
                    s.execs += 1;
                    let t = kernel_time.expect("an exec has the kernel's time");
                    s.latencies.push(now.saturating_sub(t).as_nanos() as u64);
                }
                ProcEvent::Exit { pid, tgid, .. } if pid == tgid && tgid != me => {
                    s.tree.remove(&tgid);
                }
                ProcEvent::Lost(l) => s.lost.push(l),
                _ => {}
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));

    // Wait for the reader's first event (any process on the host) to know its thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tid = loop {
        Command::new("/bin/true").status().unwrap();
        if let Some(t) = seen.lock().unwrap().reader_tid {
            break t;
        }
        assert!(Instant::now() < deadline, "no event reached the reader");
        std::thread::sleep(Duration::from_millis(10));
    };
    let cgroup = pids_cgroup();
    {
        let mut s = seen.lock().unwrap();
        (s.events, s.execs, s.latencies) = (0, 0, Vec::new());
    }
    let cpu0 = thread_cpu_ns(tid);
    let t0 = Instant::now();
    let mut generator = Command::new("unshare");
    generator
        .args(["--pid", "--fork", "--kill-child"])
        .arg(std::env::current_exe().unwrap())
        .args(["--generate", &rate.to_string(), &secs.to_string()])
        .stdout(Stdio::piped());
    if let Some(dir) = &cgroup {
        generator.env("PROCEV_BENCH_CGROUP_PROCS", dir.join("cgroup.procs"));
    }
    let out = generator.output().expect("unshare");
    assert!(out.status.success(), "generator: {:?}", out.status);
    let report = String::from_utf8_lossy(&out.stdout);
    let mut report = report.split_whitespace();
    let started: u64 = report.next().and_then(|n| n.parse().ok()).expect("count");
    let gen_secs: f64 = report.next().and_then(|n| n.parse().ok()).expect("seconds");
    // Events still in flight.
    std::thread::sleep(Duration::from_millis(500));
    let wall = t0.elapsed();
    let cpu = thread_cpu_ns(tid) - cpu0;
    reader.stop().unwrap_or_else(|e| panic!("{e}"));
    if let Some(dir) = &cgroup {
        let _ = std::fs::remove_dir(dir);
    }

    let mut s = std::mem::take(&mut *seen.lock().unwrap());
    s.latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((s.latencies.len() as f64 * p).ceil() as usize).clamp(1, s.latencies.len());
        s.latencies[i - 1] as f64 / 1e6
    };
    // The unshare process and the generator exec once each.
    let true_execs = s.execs.saturating_sub(2);
    let overruns = s.lost.iter().filter(|l| **l == Lost::Overrun).count();
    let skipped: u64 = s
        .lost
        .iter()
        .map(|l| match l {
            Lost::Skipped { missing, .. } => u64::from(*missing),
            _ => 0,
        })
        .sum();
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "proc connector: {rate} execs/s asked for {secs} s; receive buffer {buffer} B; \
         generator in a PID namespace{}",
        if cgroup.is_some() {
            " and its own pids cgroup"
        } else {
            " (no v1 pids hierarchy: no cgroup of its own)"
        }
    )
    .unwrap();
    writeln!(
        o,
        "  generator: {started} execs in {gen_secs:.2} s = {:.0}/s",
        started as f64 / gen_secs
    )
    .unwrap();
    writeln!(
        o,
        "  exec -> user space (kernel timestamp to callback), {} execs: \
         p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        s.latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    )
    .unwrap();
    writeln!(
        o,
        "  reader thread: {:.1} ms CPU for {} events in {:.1} s (all of the host's) = \
         {:.2} ms per 1,000 events",
        cpu as f64 / 1e6,
        s.events,
        wall.as_secs_f64(),
        cpu as f64 / 1e6 / s.events as f64 * 1000.0
    )
    .unwrap();
    writeln!(
        o,
        "  lost: {} of {started} execs never seen; {overruns} overruns (ENOBUFS), \
         {skipped} messages skipped in the kernel's numbering",
        started.saturating_sub(true_execs)
    )
    .unwrap();
}
