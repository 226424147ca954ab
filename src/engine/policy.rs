//! The placement policy: the one set of rules that decides which processes tenantd may move
//! or kill. The API attach (and so `tenantd run`, which posts its own PID), delete with
//! `move_to` and delete with `kill=true` all go through `Policy`, and so does the intent
//! journal when it finishes or undoes a step.
//!
//! Never touched: PID 0, PID 1 (init of the daemon's PID namespace), the daemon and every one
//! of its threads, IDs that are not thread-group leaders (a thread's ID would move its whole
//! process: cgroup.procs takes any TID and migrates the thread group), kernel threads, and
//! processes in a protected cgroup (`protected_cgroups`). Parsing is pure (`&str` in); the IO
//! reads files under an injected `proc_root`, so PIDs are numbers of the namespace whose procfs
//! is mounted there (the daemon's own). Imports nothing from the rest of the engine.

use std::path::{Path, PathBuf};

/// PF_KTHREAD from include/linux/sched.h: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Why a process may not be moved or killed. `Display` is the message the API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotAPid,
    Init,
    Daemon {
        pid: u32,
    },
    DaemonThread {
        tid: u32,
        daemon: u32,
    },
    Thread {
        tid: u32,
        tgid: u32,
    },
    Missing {
        pid: u32,
    },
    KernelThread {
        pid: u32,
    },
    Protected {
        pid: u32,
        cgroup: String,
        protected: String,
    },
    Unreadable {
        pid: u32,
        file: PathBuf,
    },
    /// cgroup.procs lists a process of another PID namespace as 0.
    OutsideNamespace,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAPid => write!(
                f,
                "0 is not a process ID: post the PID of a running process"
            ),
            Refusal::Init => write!(
                f,
                "PID 1 is init (the first process of tenantd's PID namespace), which tenantd never moves or kills"
            ),
            Refusal::Daemon { pid } => write!(
                f,
                "PID {pid} is tenantd itself, which stays in its own protected cgroup"
            ),
            Refusal::DaemonThread { tid, daemon } => write!(
                f,
                "{tid} is a thread of tenantd itself (PID {daemon}), which stays in its own protected cgroup"
            ),
            Refusal::Thread { tid, tgid } => write!(
                f,
                "{tid} is a thread of process {tgid}; post the process ID {tgid}"
            ),
            Refusal::Missing { pid } => write!(f, "no process with PID {pid} exists"),
            Refusal::KernelThread { pid } => write!(
                f,
                "PID {pid} is a kernel thread, which cannot be moved between cgroups"
            ),
            Refusal::Protected {
                pid,
                cgroup,
                protected,
            } => write!(
                f,
                "PID {pid} is in cgroup {cgroup}, which is protected ({protected} is in protected_cgroups): tenantd does not move its processes; change protected_cgroups to allow it"
            ),
            Refusal::Unreadable { pid, file } => write!(
                f,
                "cannot read {} to check PID {pid}: it may have exited; try again",
                file.display()
            ),
            Refusal::OutsideNamespace => write!(
                f,
                "a process here is outside tenantd's PID namespace (cgroup.procs lists it as 0), so tenantd cannot move it"
            ),
        }
    }
}

/// The fields of /proc/PID/status placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStatus {
    pub tgid: u32,
    pub ppid: u32,
}

/// Parses /proc/PID/status (`Tgid:` and `PPid:` lines); None when either is missing. Ours,
/// not `procfs::process::Status`: that one requires some twenty other lines (Uid, SigQ,
/// Groups, ...) and parses every line into a map to give these two numbers.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(ProcStatus {
        tgid: field("Tgid:")?,
        ppid: field("PPid:")?,
    })
}

/// The fields of /proc/PID/stat placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 9, the kernel's PF_* flags.
    pub flags: u64,
    /// Field 22, clock ticks after boot: with the PID, it names one process over time.
    pub start_time: u64,
}

/// Parses /proc/PID/stat with `procfs::process::Stat` (the command name, field 2, may hold
/// spaces and ')': fields are counted after its last ')').
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    use procfs::FromRead;
    let st = procfs::process::Stat::from_read(text.as_bytes()).ok()?;
    Some(ProcStat {
        flags: u64::from(st.flags),
        start_time: st.starttime,
    })
}

/// The cgroup paths of /proc/PID/cgroup, one per line ("0::/a" on v2, "4:memory:/a" on v1),
/// read by `cgroup::v1_parse::proc_cgroup` (`procfs`); None when the file does not parse.
pub fn parse_cgroup_paths(text: &str) -> Option<Vec<String>> {
    let lines = crate::cgroup::v1_parse::proc_cgroup(text).ok()?;
    Some(
        lines
            .into_iter()
            .map(|l| l.path.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    )
}

/// Whether `path` is `protected` or below it. A protected entry is an absolute path other
/// than "/" without a trailing '/' (config validation sees to that).
pub fn is_at_or_below(path: &str, protected: &str) -> bool {
    path == protected
        || path
            .strip_prefix(protected)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The first of a process's cgroup paths that is (or is below) a protected cgroup, with the
/// protected entry it matched.
pub fn protected_match<'a>(
    paths: &'a [String],
    protected: &'a [String],
) -> Option<(&'a str, &'a str)> {
    paths.iter().find_map(|p| {
        protected
            .iter()
            .find(|prot| is_at_or_below(p, prot))
            .map(|prot| (p.as_str(), prot.as_str()))
    })
}

/// The default `protected_cgroups`: init's own cgroups (every line of /proc/1/cgroup) and,
/// when init is systemd, /init.scope. The root "/" is left out: everything is below it, and
/// on hosts without systemd init sits there with every other process.
pub fn default_protected(init_cgroup: &str, init_comm: &str) -> Vec<String> {
    let mut out: Vec<String> = parse_cgroup_paths(init_cgroup)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if init_comm.trim() == "systemd" {
        out.push("/init.scope".into());
    }
    out.sort();
    out.dedup();
    out
}

/// `default_protected` read from `<proc_root>/1`. Unreadable files count as empty: PID 1 is
/// refused by number regardless.
pub fn default_protected_cgroups(proc_root: &Path) -> Vec<String> {
    let read = |f: &str| std::fs::read_to_string(proc_root.join("1").join(f)).unwrap_or_default();
    default_protected(&read("cgroup"), &read("comm"))
}

/// The IDs that are never moved or killed whatever /proc says: 0, 1, the daemon and its
/// threads. Pure: `daemon_tids` is the daemon's task list.
pub fn never_touch(pid: u32, self_pid: u32, daemon_tids: &[u32]) -> Option<Refusal> {
    match pid {
        0 => Some(Refusal::NotAPid),
        1 => Some(Refusal::Init),
        p if p == self_pid => Some(Refusal::Daemon { pid: p }),
        p if daemon_tids.contains(&p) => Some(Refusal::DaemonThread {
            tid: p,
            daemon: self_pid,
        }),
        _ => None,
    }
}

/// Whether a kill of the processes `pids` (a tenant's subtree, as cgroup.procs lists them)
/// must be refused: the first of them that is never touched. A 0 is a process outside the
/// daemon's PID namespace (neither its init nor the daemon), so it does not refuse. Pure.
pub fn kill_refusal(pids: &[u32], self_pid: u32, daemon_tids: &[u32]) -> Option<Refusal> {
    pids.iter()
        .filter(|&&p| p != 0)
        .find_map(|&p| never_touch(p, self_pid, daemon_tids))
}

/// Whether moving the listed process `pid` to another tenant must be refused. A 0 would be
/// worse than a refusal: writing "0" to cgroup.procs moves the writer, the daemon. Pure.
pub fn move_refusal(pid: u32, self_pid: u32, daemon_tids: &[u32]) -> Option<Refusal> {
    match pid {
        0 => Some(Refusal::OutsideNamespace),
        p => never_touch(p, self_pid, daemon_tids),
    }
}

/// A process that passed the policy, with its start time to recognise it after the move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub pid: u32,
    pub start_time: u64,
}

/// The placement policy over a procfs mount.
#[derive(Debug, Clone)]
pub struct Policy {
    pub proc_root: PathBuf,
    /// The daemon's PID as the procfs at `proc_root` numbers it.
    pub self_pid: u32,
    /// Cgroup paths as /proc/PID/cgroup shows them; a process at or below one is not moved.
    pub protected: Vec<String>,
}

impl Policy {
    fn file(&self, pid: u32, name: &str) -> PathBuf {
        self.proc_root.join(pid.to_string()).join(name)
    }

    /// The daemon's thread IDs (its own PID among them), from `<proc_root>/<self>/task`.
    pub fn daemon_tids(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = std::fs::read_dir(self.file(self.self_pid, "task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        tids.push(self.self_pid);
        tids
    }

    /// Why `pid` may not be moved, or its identity when it may.
    pub fn check(&self, pid: u32) -> std::result::Result<Admitted, Refusal> {
        self.check_with(pid, &self.daemon_tids())
    }

    /// `check` with the daemon's threads as read once (`daemon_tids`) for a batch of PIDs.
    pub fn check_with(
        &self,
        pid: u32,
        daemon_tids: &[u32],
    ) -> std::result::Result<Admitted, Refusal> {
        if let Some(r) = never_touch(pid, self.self_pid, daemon_tids) {
            return Err(r);
        }
        // stat first: its start time is compared after the move, so every read below and the
        // move itself are known to concern the same process.
        let stat_path = self.file(pid, "stat");
        let stat = match std::fs::read_to_string(&stat_path) {
            Ok(s) => s,
            Err(_) => return Err(Refusal::Missing { pid }),
        };
        let stat = parse_stat(&stat).ok_or(Refusal::Unreadable {
            pid,
            file: stat_path,
        })?;
        let status_path = self.file(pid, "status");
        let status = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| parse_status(&s))
            .ok_or(Refusal::Unreadable {
                pid,
                file: status_path,
            })?;
        if status.tgid == self.self_pid {
            return Err(Refusal::DaemonThread {
                tid: pid,
                daemon: self.self_pid,
            });
        }
        if status.tgid != pid {
            return Err(Refusal::Thread {
                tid: pid,
                tgid: status.tgid,
            });
        }
        // PF_KTHREAD is set on every kernel thread, kthreadd's children included, so PPid 2
        // is not consulted (in a PID namespace PID 2 is an ordinary process).
        if stat.flags & PF_KTHREAD != 0 {
            return Err(Refusal::KernelThread { pid });
        }
        if !self.protected.is_empty() {
            let cg_path = self.file(pid, "cgroup");
            let paths = std::fs::read_to_string(&cg_path)
                .ok()
                .and_then(|cg| parse_cgroup_paths(&cg))
                .ok_or(Refusal::Unreadable { pid, file: cg_path })?;
            if let Some((cgroup, protected)) = protected_match(&paths, &self.protected) {
                return Err(Refusal::Protected {
                    pid,
                    cgroup: cgroup.to_string(),
                    protected: protected.to_string(),
                });
            }
        }
        Ok(Admitted {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether the process `a` still holds its PID (same start time). Called after the move:
    /// true means it was alive from the check through the move, so the move concerned it.
    pub fn still_same(&self, a: &Admitted) -> bool {
        std::fs::read_to_string(self.file(a.pid, "stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|s| s.start_time == a.start_time)
    }

    /// `kill_refusal` for a tenant's processes with the daemon's threads read now.
    pub fn kill_check(&self, pids: &[u32]) -> Option<Refusal> {
        kill_refusal(pids, self.self_pid, &self.daemon_tids())
    }

    /// `move_refusal` for each of a tenant's processes, the daemon's threads read now.
    pub fn move_check(&self, pids: &[u32]) -> Option<Refusal> {
        let tids = self.daemon_tids();
        pids.iter()
            .find_map(|&p| move_refusal(p, self.self_pid, &tids))
    }
}

/// Why a PID cannot be placed, or None when it can (the policy with no protected cgroups).
pub fn check_pid(proc_root: &Path, pid: u32, self_pid: u32) -> Option<String> {
    Policy {
        proc_root: proc_root.to_path_buf(),
        self_pid,
        protected: Vec::new(),
    }
    .check(pid)
    .err()
    .map(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(self_pid: u32) -> Policy {
        Policy {
            proc_root: PathBuf::from("/proc"),
            self_pid,
            protected: Vec::new(),
        }
    }

    #[test]
    fn refuses_self_missing_and_kernel_threads() {
        let me = std::process::id();
        assert!(
            check_pid(Path::new("/proc"), me, me)
                .unwrap()
                .contains("tenantd itself")
        );
        assert!(check_pid(Path::new("/proc"), 0, me).is_some());
        assert!(
            check_pid(Path::new("/proc"), u32::MAX - 1, me)
                .unwrap()
                .contains("no process")
        );
        assert_eq!(check_pid(Path::new("/proc"), me, 1), None);
        // kthreadd is PID 2 on every Linux host with a normal PID namespace.
        if let Ok(s) = std::fs::read_to_string("/proc/2/comm")
            && s.trim() == "kthreadd"
        {
            assert!(
                check_pid(Path::new("/proc"), 2, me)
                    .unwrap()
                    .contains("kernel thread")
            );
        }
    }

    #[test]
    fn pid_1_is_refused_whoever_it_is() {
        let me = std::process::id();
        assert_eq!(real(me).check(1), Err(Refusal::Init));
        // Even when the daemon is PID 1 of its namespace, the answer is the init rule.
        assert_eq!(real(1).check(1), Err(Refusal::Init));
        assert!(Refusal::Init.to_string().starts_with("PID 1 is init"));
    }

    /// A thread the test starts: its TID is refused as a thread of this process (which plays
    /// the daemon when `self_pid` is ours, and an ordinary process when it is not).
    #[test]
    fn not_a_thread_group_leader_is_refused_naming_the_process() {
        let me = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // /proc/thread-self is "PID/task/TID".
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
            tx.send(tid).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, me);
        // As an ordinary process's thread (the daemon is someone else).
        let r = real(u32::MAX - 7).check(tid).unwrap_err();
        assert_eq!(r, Refusal::Thread { tid, tgid: me });
        assert_eq!(
            r.to_string(),
            format!("{tid} is a thread of process {me}; post the process ID {me}")
        );
        // As the daemon's own thread: listed in /proc/self/task.
        let r = real(me).check(tid).unwrap_err();
        assert_eq!(r, Refusal::DaemonThread { tid, daemon: me });
        assert!(real(me).daemon_tids().contains(&tid));
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_leader_passes_and_is_recognised_after() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let p = real(std::process::id());
        let a = p
            .check(pid)
            .expect("a sleep the test started may be placed");
        assert!(p.still_same(&a));
        let stale = Admitted {
            pid,
            start_time: a.start_time + 1,
        };
        assert!(!p.still_same(&stale));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!p.still_same(&a), "a reaped PID is not the same process");
    }

    #[test]
    fn stat_and_status_parse_real_and_odd_names() {
        // Field 22 (start time) and 9 (flags) of a captured line; the name holds ") (".
        let line = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                flags: 4194560,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own).is_some());
        let status = "Name:\tx\nTgid:\t10\nNgid:\t0\nPid:\t11\nPPid:\t2\n";
        assert_eq!(parse_status(status), Some(ProcStatus { tgid: 10, ppid: 2 }));
        assert_eq!(parse_status("Name:\tx\n"), None);
        let me = std::process::id();
        let s = parse_status(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        assert_eq!(s.tgid, me);
    }

    #[test]
    fn protected_cgroups_match_at_or_below_only() {
        let prot = vec![
            "/init.scope".to_string(),
            "/system.slice/sshd.service".into(),
        ];
        let v2 = parse_cgroup_paths("0::/init.scope\n").unwrap();
        assert_eq!(
            protected_match(&v2, &prot),
            Some(("/init.scope", "/init.scope"))
        );
        let below = parse_cgroup_paths("0::/system.slice/sshd.service/x\n").unwrap();
        assert_eq!(
            protected_match(&below, &prot),
            Some(("/system.slice/sshd.service/x", "/system.slice/sshd.service"))
        );
        // A sibling whose name starts the same is not below.
        let sib = parse_cgroup_paths("0::/init.scope2\n0::/system.slice/sshd.service2\n").unwrap();
        assert_eq!(protected_match(&sib, &prot), None);
        // On v1 any hierarchy's line counts (here name=systemd's).
        let v1 = parse_cgroup_paths(
            "12:cpu,cpuacct:/\n4:memory:/user.slice\n1:name=systemd:/init.scope\n0::/init.scope\n",
        )
        .unwrap();
        assert_eq!(
            protected_match(&v1, &prot),
            Some(("/init.scope", "/init.scope"))
        );
        assert_eq!(protected_match(&v1, &[]), None);
    }

    #[test]
    fn default_protection_is_inits_cgroup_and_never_the_root() {
        assert_eq!(
            default_protected("0::/init.scope\n", "systemd\n"),
            vec!["/init.scope".to_string()]
        );
        // A v1 systemd host: controllers at the root, name=systemd in init.scope.
        assert_eq!(
            default_protected("4:memory:/\n1:name=systemd:/init.scope\n", "systemd"),
            vec!["/init.scope".to_string()]
        );
        // No systemd, init in the root: nothing to protect by cgroup (PID 1 is refused anyway).
        assert!(default_protected("0::/\n", "tini").is_empty());
        assert_eq!(
            default_protected("0::/docker/abc/\n", "sh"),
            vec!["/docker/abc".to_string()]
        );
    }

    #[test]
    fn protected_cgroup_refusal_names_it_with_a_fixture_proc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("300");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("stat"), "300 (sshd) S 1 300 300 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 555 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n").unwrap();
        std::fs::write(
            p.join("status"),
            "Name:\tsshd\nTgid:\t300\nPid:\t300\nPPid:\t1\n",
        )
        .unwrap();
        std::fs::write(p.join("cgroup"), "0::/system.slice/sshd.service\n").unwrap();
        let mut policy = Policy {
            proc_root: dir.path().to_path_buf(),
            self_pid: 77,
            protected: vec!["/system.slice".into()],
        };
        let r = policy.check(300).unwrap_err();
        assert!(
            r.to_string().contains("PID 300 is in cgroup /system.slice/sshd.service, which is protected (/system.slice is in protected_cgroups)"),
            "{r}"
        );
        policy.protected = vec!["/user.slice".into()];
        assert_eq!(
            policy.check(300),
            Ok(Admitted {
                pid: 300,
                start_time: 555
            })
        );
    }

    /// A daemon thread missing from the task list read earlier (it was started just after)
    /// is still refused: its Tgid is the daemon's.
    #[test]
    fn daemon_thread_is_recognised_by_tgid_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("500/task/500")).unwrap();
        let t = dir.path().join("501");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("stat"), "501 (tokio-rt) S 1 500 500 0 -1 4194368 1 0 0 0 0 0 0 0 20 0 9 0 777 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n").unwrap();
        std::fs::write(
            t.join("status"),
            "Name:\ttokio-rt\nTgid:\t500\nPid:\t501\nPPid:\t1\n",
        )
        .unwrap();
        let policy = Policy {
            proc_root: dir.path().to_path_buf(),
            self_pid: 500,
            protected: Vec::new(),
        };
        assert_eq!(policy.daemon_tids(), vec![500, 500]);
        assert_eq!(
            policy.check(501),
            Err(Refusal::DaemonThread {
                tid: 501,
                daemon: 500
            })
        );
    }

    #[test]
    fn kill_is_refused_when_init_or_the_daemon_is_among_the_pids() {
        let tids = [40, 41, 42];
        assert_eq!(kill_refusal(&[100, 101], 40, &tids), None);
        assert_eq!(kill_refusal(&[], 40, &tids), None);
        assert_eq!(
            kill_refusal(&[100, 40], 40, &tids),
            Some(Refusal::Daemon { pid: 40 })
        );
        assert_eq!(
            kill_refusal(&[41, 100], 40, &tids),
            Some(Refusal::DaemonThread {
                tid: 41,
                daemon: 40
            })
        );
        assert_eq!(kill_refusal(&[100, 1], 40, &tids), Some(Refusal::Init));
        // The daemon as PID 1 of its namespace: named by the init rule.
        assert_eq!(kill_refusal(&[1], 1, &[1, 2]), Some(Refusal::Init));
        // A process of another PID namespace (listed as 0) does not stop a kill, but a move.
        assert_eq!(kill_refusal(&[0, 100], 40, &tids), None);
        assert_eq!(move_refusal(0, 40, &tids), Some(Refusal::OutsideNamespace));
        assert_eq!(
            move_refusal(42, 40, &tids),
            Some(Refusal::DaemonThread {
                tid: 42,
                daemon: 40
            })
        );
        assert_eq!(move_refusal(100, 40, &tids), None);
    }
}
