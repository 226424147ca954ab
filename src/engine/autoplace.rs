//! Placement rules at work (issue 17): the placer reads a process's facts from `/proc`, asks
//! the domain's matcher (`domain::placement`) which tenant it belongs to, and moves it there
//! through the governor's one placement path (`Governor::attach_by_rule`: policy, journal,
//! checked in every hierarchy). The matching itself is pure and lives in the domain; this file
//! only reads and moves.
//!
//! - [`Placer::consider`] is the per-process entry point (the proc connector calls it for an
//!   exec, a uid or gid change, or a fork); [`Placer::rescan`] considers every process of
//!   `/proc` (at start, after a rule changes, every `placement_rescan_s`). Both are
//!   synchronous: call them from a thread that is not an async worker (a dedicated thread, or
//!   `spawn_blocking`); a move waits for the runtime through the `Handle` given to `new`.
//! - A process is named by its PID and its start time (field 22 of `/proc/PID/stat`), read
//!   first and read again right before and after the move (`policy`, `placement`), so a
//!   recycled PID is not moved for another.
//! - Never touched: PID 1, the daemon, kernel threads, processes in a protected cgroup,
//!   processes placed by hand (`POST .../procs`, `tenantd run`: kept by (PID, start time)),
//!   processes already in a tenant that no rule of this daemon put there (a forked child of a
//!   placed process stays with its parent), and processes in a cgroup another manager
//!   delegated (`Delegate=yes`, `cgroup::delegate`) unless the rule says
//!   `override_delegated`: those are reported once (`process_not_placed`), not moved.
//! - User and group names are resolved from `<etc>/passwd` and `<etc>/group` (the directory is
//!   `EngineConfig::etc_dir`); the rules are resolved again when either file's modification
//!   time or size changes (checked by every rescan and every apply).
//! - Moves are counted per tenant (`tenantd_processes_placed_total`) and summarised as one
//!   `process_placed` event per tenant per flush (every rescan and every second), with a
//!   count and the first PIDs, never one event per process.

use super::placement::Attached;
use super::{EngineError, Governor, now_ms};
use crate::cgroup::CgroupPath;
use crate::cgroup::v1_parse::proc_cgroup;
use crate::domain::TenantName;
use crate::domain::event::Event;
use crate::domain::placement::{
    ConflictIndex, IdOrName, Miss, PlacementRule, PlacementRules, PlacementSpec, ProcessFacts,
    RuleField, WonBy, check_conflicts,
};
use crate::metrics::TenantCounters;
use crate::store::NewEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// How many processes of a rescan go to the governor in one batch (one write lock, one
/// journal transaction each way): bounds how long a rescan holds the lock at a time.
const RESCAN_BATCH: usize = 128;

/// Least time between two reads of the kernel values of tenants that received processes
/// between rescans (`Placer::refresh_later`).
const REFRESH_GAP: std::time::Duration = std::time::Duration::from_millis(250);

/// PF_KTHREAD from include/linux/sched.h.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Most PIDs one `process_placed` or `process_not_placed` event lists (the count has all).
pub const MAX_EVENT_PIDS: usize = 20;

// ---------------------------------------------------------------------------------------
// Users and groups

/// User and group names of the host, as `/etc/passwd` and `/etc/group` list them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounts {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl Accounts {
    /// From the text of a passwd and a group file: `NAME:PASSWORD:ID:...` lines; comments,
    /// blank and malformed lines are skipped, the first line of a name wins.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        fn ids(text: &str) -> HashMap<String, u32> {
            let mut out = HashMap::new();
            for l in text.lines() {
                let l = l.trim_end();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let mut f = l.split(':');
                let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if let (false, Ok(id)) = (name.is_empty(), id.parse::<u32>()) {
                    out.entry(name.to_string()).or_insert(id);
                }
            }
            out
        }
        Accounts {
            users: ids(passwd),
            groups: ids(group),
        }
    }

    pub fn user(&self, name: &str) -> Option<u32> {
        self.users.get(name).copied()
    }

    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.get(name).copied()
    }
}

/// What identifies a version of a file: modification time and size (`None`: unreadable).
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The accounts as last read, and the stamps of the files they came from.
struct AccountsFiles {
    dir: PathBuf,
    stamps: (Stamp, Stamp),
    generation: u64,
    current: Arc<Accounts>,
}

impl AccountsFiles {
    /// Reads the files again when a stamp changed; true when it did.
    fn refresh(&mut self) -> bool {
        let (p, g) = (self.dir.join("passwd"), self.dir.join("group"));
        let now = (stamp(&p), stamp(&g));
        if now == self.stamps && self.generation > 0 {
            return false;
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let accounts = Accounts::parse(&read(&p), &read(&g));
        self.stamps = now;
        self.generation += 1;
        if *self.current != accounts {
            if self.generation > 1 {
                tracing::info!(
                    "{} or {} changed: placement rules resolved again",
                    p.display(),
                    g.display()
                );
            }
            self.current = Arc::new(accounts);
        }
        true
    }
}

// ---------------------------------------------------------------------------------------
// The rules in force

/// Which facts the rules in force look at (a rescan reads only those).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub ids: bool,
    /// Some rule names groups: the supplementary ones (only in `status`) are needed.
    pub groups: bool,
    pub exe: bool,
    pub cmdline: bool,
}

/// Every tenant's rule resolved against the accounts, as the placer uses it.
pub struct ActiveRules {
    /// The desired state's version and the accounts' generation it was built from.
    built_from: (Option<u64>, u64),
    pub rules: PlacementRules<TenantName>,
    /// Rules of stored tenants that are not in force now, with why (a name the host no
    /// longer has, a conflict after a name changed its id).
    pub not_in_force: BTreeMap<TenantName, String>,
    /// Each tenant's leaf and its rule as written (for events).
    leaves: HashMap<TenantName, (CgroupPath, String)>,
    pub needs: Needs,
}

impl ActiveRules {
    fn empty() -> ActiveRules {
        ActiveRules {
            built_from: (None, 0),
            rules: PlacementRules::new(Vec::new()).expect("no rules, no conflict"),
            not_in_force: BTreeMap::new(),
            leaves: HashMap::new(),
            needs: Needs::default(),
        }
    }

    /// Resolves each tenant's rule in name order; a rule that does not resolve, or that
    /// conflicts with one kept before it, is not in force (and says why).
    fn build(
        built_from: (Option<u64>, u64),
        specs: Vec<(TenantName, PlacementSpec, CgroupPath)>,
        acc: &Accounts,
    ) -> ActiveRules {
        let mut kept: Vec<(TenantName, PlacementRule)> = Vec::new();
        let mut not_in_force = BTreeMap::new();
        let mut leaves = HashMap::new();
        let mut needs = Needs::default();
        let mut resolved = Vec::new();
        for (t, spec, leaf) in specs {
            match spec.resolve(|u| acc.user(u), |g| acc.group(g)) {
                Ok(r) => resolved.push((t, r, leaf, spec)),
                Err(e) => {
                    not_in_force.insert(t, e.to_string());
                }
            }
        }
        // Each rule against the rules kept before it (in the order given), through an index:
        // the cost is the rules that may conflict, not every pair.
        let mut keep = vec![false; resolved.len()];
        let mut index = ConflictIndex::new();
        for (i, (t, rule, _, _)) in resolved.iter().enumerate() {
            match index.check(t, rule, |_| true) {
                Ok(()) => {
                    index.insert(t, rule);
                    keep[i] = true;
                }
                Err(e) => {
                    not_in_force.insert(t.clone(), e.to_string());
                }
            }
        }
        drop(index);
        for ((t, rule, leaf, spec), keep) in resolved.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            for f in rule.fields() {
                match f {
                    RuleField::Uids => needs.ids = true,
                    RuleField::Gids => (needs.ids, needs.groups) = (true, true),
                    RuleField::Exe => needs.exe = true,
                    RuleField::Cmdline => needs.cmdline = true,
                }
            }
            leaves.insert(t.clone(), (leaf, summary(&spec)));
            kept.push((t, rule));
        }
        for (t, why) in &not_in_force {
            tracing::warn!("tenant '{t}': its placement rule is not in force: {why}");
        }
        ActiveRules {
            built_from,
            rules: PlacementRules::new(kept).expect("kept rules conflict with none"),
            not_in_force,
            leaves,
            needs,
        }
    }
}

/// A rule as one line, for events and logs: `uids [1001, 'alice'], exe ['/usr/bin/php']`.
pub fn summary(s: &PlacementSpec) -> String {
    let ids = |l: &[IdOrName]| {
        l.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if let Some(u) = &s.uids {
        parts.push(format!("uids [{}]", ids(u)));
    }
    if let Some(g) = &s.gids {
        parts.push(format!("gids [{}]", ids(g)));
    }
    if let Some(e) = &s.exe {
        let e: Vec<String> = e.iter().map(|p| format!("'{p}'")).collect();
        parts.push(format!("exe [{}]", e.join(", ")));
    }
    if let Some(c) = &s.cmdline {
        parts.push(format!("cmdline '{c}'"));
    }
    if s.priority != 0 {
        parts.push(format!("priority {}", s.priority));
    }
    if s.override_delegated {
        parts.push("override_delegated".into());
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------
// The placer's state, kept in the governor

/// A process across PID reuse: its PID and start time.
pub type ProcId = (u32, u64);

/// What was placed or reported since the last flush, per tenant.
#[derive(Debug, Default)]
struct Burst {
    placed: BTreeMap<TenantName, (u64, Vec<u32>, String)>,
    not_placed: BTreeMap<(TenantName, String), (u64, Vec<u32>)>,
}

/// The tenants to read again (`Governor::refresh_kernel`) after placements, coalesced: one
/// task at a time reads every tenant queued so far, so a burst of placements into a tenant
/// costs one read of it, not one per process.
#[derive(Debug, Default)]
struct RefreshQueue {
    pending: BTreeSet<TenantName>,
    /// Whether a task is reading (it takes what is queued until nothing is).
    running: bool,
    /// How many tenant reads were started (for tests and the bench's reasoning).
    reads: u64,
}

/// The placer's state: the accounts, the rules in force, who was placed by hand or by rule,
/// and what to report. Owned by the `Governor`.
pub struct AutoState {
    accounts: Mutex<AccountsFiles>,
    rules: RwLock<Arc<ActiveRules>>,
    by_hand: Mutex<HashSet<ProcId>>,
    by_rule: Mutex<HashMap<ProcId, TenantName>>,
    /// Processes reported as not placed (delegated), so each is reported once.
    reported: Mutex<HashSet<ProcId>>,
    burst: Mutex<Burst>,
    /// Tenants whose kernel values are to be read again after placements between rescans.
    refresh: Mutex<RefreshQueue>,
    /// Woken when a tenant's placement rule changed: the rescan task runs at once.
    pub changed: tokio::sync::Notify,
    pub placed_total: TenantCounters,
    pub not_placed_total: TenantCounters,
    /// The journal of the rules' moves split across v1 hierarchies (`store::MoveLog`), opened
    /// at its first use next to the database.
    pub(super) moves: Mutex<Option<crate::store::MoveLog>>,
}

impl AutoState {
    pub fn new(etc_dir: PathBuf) -> AutoState {
        AutoState {
            accounts: Mutex::new(AccountsFiles {
                dir: etc_dir,
                stamps: (None, None),
                generation: 0,
                current: Arc::new(Accounts::default()),
            }),
            rules: RwLock::new(Arc::new(ActiveRules::empty())),
            by_hand: Mutex::new(HashSet::new()),
            by_rule: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            burst: Mutex::new(Burst::default()),
            refresh: Mutex::new(RefreshQueue::default()),
            changed: tokio::sync::Notify::new(),
            placed_total: TenantCounters::default(),
            not_placed_total: TenantCounters::default(),
            moves: Mutex::new(None),
        }
    }

    /// The accounts, read again first when a file changed; with their generation.
    fn accounts(&self) -> (Arc<Accounts>, u64) {
        let mut a = self.accounts.lock().expect("accounts lock");
        a.refresh();
        (a.current.clone(), a.generation)
    }

    /// The accounts as last read (no file is looked at).
    fn accounts_now(&self) -> (Arc<Accounts>, u64) {
        let a = self.accounts.lock().expect("accounts lock");
        (a.current.clone(), a.generation)
    }

    /// Records a process placed by hand: no rule moves it from now on.
    pub(super) fn placed_by_hand(&self, id: ProcId) {
        self.by_rule.lock().expect("by_rule lock").remove(&id);
        self.by_hand.lock().expect("by_hand lock").insert(id);
    }

    pub(super) fn is_by_hand(&self, id: ProcId) -> bool {
        self.by_hand.lock().expect("by_hand lock").contains(&id)
    }

    fn placed_by(&self, id: ProcId) -> Option<TenantName> {
        self.by_rule.lock().expect("by_rule lock").get(&id).cloned()
    }

    /// Forgets the remembered processes whose PID no longer names them.
    fn prune_gone(&self, proc_root: &Path) {
        let alive = |&(pid, st): &ProcId| read_stat(proc_root, pid).is_some_and(|(_, s)| s == st);
        let mut live: HashSet<ProcId> = HashSet::new();
        for set in [
            self.by_hand
                .lock()
                .expect("by_hand lock")
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            self.by_rule
                .lock()
                .expect("by_rule lock")
                .keys()
                .copied()
                .collect(),
            self.reported
                .lock()
                .expect("reported lock")
                .iter()
                .copied()
                .collect(),
        ] {
            live.extend(set.into_iter().filter(alive));
        }
        self.prune(&live);
    }

    /// Forgets processes that are gone (`live` holds every process a rescan saw).
    fn prune(&self, live: &HashSet<ProcId>) {
        self.by_hand
            .lock()
            .expect("by_hand lock")
            .retain(|p| live.contains(p));
        self.by_rule
            .lock()
            .expect("by_rule lock")
            .retain(|p, _| live.contains(p));
        self.reported
            .lock()
            .expect("reported lock")
            .retain(|p| live.contains(p));
    }
}

impl Governor {
    /// The rules in force, built again when the stored specs or the accounts changed since.
    /// `refresh_accounts` looks at the files first (a rescan and an apply do; a single
    /// `consider` does not).
    pub fn placement_rules(&self, refresh_accounts: bool) -> Arc<ActiveRules> {
        let (acc, generation) = if refresh_accounts {
            self.auto.accounts()
        } else {
            self.auto.accounts_now()
        };
        let version = self.cached_version();
        {
            let r = self.auto.rules.read().expect("rules lock");
            if r.built_from == (version, generation) {
                return r.clone();
            }
        }
        let specs: Vec<(TenantName, PlacementSpec, CgroupPath)> = {
            let g = self.desired.read().expect("desired lock");
            match g.as_ref() {
                Some(c) => c
                    .state
                    .specs()
                    .iter()
                    .filter_map(|(n, s)| {
                        let p = s.placement.as_deref()?.clone();
                        Some((n.clone(), p, CgroupPath::tenant(&c.state.lineage(n)).leaf()))
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        let built = Arc::new(ActiveRules::build((version, generation), specs, &acc));
        *self.auto.rules.write().expect("rules lock") = built.clone();
        built
    }

    /// The apply-time check of a tenant's new placement rule: names resolved against the
    /// host's accounts (422 naming the field), no conflict with another tenant's rule in
    /// force (409 naming both tenants).
    pub(super) fn check_placement(
        &self,
        name: &TenantName,
        spec: &PlacementSpec,
    ) -> Result<(), EngineError> {
        spec.validate()?;
        let active = self.placement_rules(true);
        let (acc, _) = self.auto.accounts_now();
        let rule = spec.resolve(|u| acc.user(u), |g| acc.group(g))?;
        check_conflicts(name, &rule, active.rules.iter())?;
        Ok(())
    }

    /// Stores the placements and refusals of the last burst as one event per tenant.
    pub async fn flush_placement_events(&self) {
        let burst = std::mem::take(&mut *self.auto.burst.lock().expect("burst lock"));
        if burst.placed.is_empty() && burst.not_placed.is_empty() {
            return;
        }
        let ts = now_ms();
        let mut events: Vec<NewEvent> = burst
            .placed
            .into_iter()
            .map(|(t, (count, pids, rule))| NewEvent {
                ts_ms: ts,
                tenant: Some(t.to_string()),
                actor: None,
                event: Event::ProcessPlaced { count, pids, rule },
            })
            .collect();
        events.extend(
            burst
                .not_placed
                .into_iter()
                .map(|((t, why), (count, pids))| NewEvent {
                    ts_ms: ts,
                    tenant: Some(t.to_string()),
                    actor: None,
                    event: Event::ProcessNotPlaced { count, pids, why },
                }),
        );
        if let Err(e) = self.store().add_events(&events).await {
            tracing::warn!("placement events not stored: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading /proc (pure parsers, then the reads)

/// The ids of `/proc/PID/status`: `Uid:` and `Gid:` (real, effective, saved, filesystem),
/// `Groups:`, and `Tgid:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusIds {
    pub tgid: u32,
    pub ruid: u32,
    pub euid: u32,
    /// Real and effective gid, then the supplementary groups.
    pub gids: Vec<u32>,
}

/// Parses the lines of /proc/PID/status the placer needs; `None` when one is missing.
pub fn parse_status_ids(text: &str) -> Option<StatusIds> {
    parse_status_id_bytes(text.as_bytes())
}

/// `parse_status_ids` over the file's bytes: only the lines it needs are taken as text (the
/// `Name:` line before them holds the command name, which need not be UTF-8).
pub fn parse_status_id_bytes(text: &[u8]) -> Option<StatusIds> {
    let (mut tgid, mut uid, mut gid, mut groups) = (None, None, None, None);
    /// The rest of a line that starts with `key` (`Some(None)`: not text).
    fn value<'a>(l: &'a [u8], key: &[u8]) -> Option<Option<&'a str>> {
        let v = l.strip_prefix(key)?;
        Some(std::str::from_utf8(v).ok())
    }
    let two = |v: &str| {
        let mut n = v.split_whitespace().map(|x| x.parse::<u32>());
        match (n.next(), n.next()) {
            (Some(Ok(r)), Some(Ok(e))) => Some((r, e)),
            _ => None,
        }
    };
    for l in text.split(|b| *b == b'\n') {
        if let Some(v) = value(l, b"Tgid:") {
            tgid = v.and_then(|v| v.trim().parse().ok());
        } else if let Some(v) = value(l, b"Uid:") {
            uid = v.and_then(two);
        } else if let Some(v) = value(l, b"Gid:") {
            gid = v.and_then(two);
        } else if let Some(v) = value(l, b"Groups:") {
            groups = v.and_then(|v| {
                v.split_whitespace()
                    .map(|x| x.parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()
            });
            // Groups comes after Uid and Gid.
            break;
        }
    }
    let ((ruid, euid), (rgid, egid)) = (uid?, gid?);
    let mut gids = vec![rgid];
    if egid != rgid {
        gids.push(egid);
    }
    for g in groups.unwrap_or_default() {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    Some(StatusIds {
        tgid: tgid?,
        ruid,
        euid,
        gids,
    })
}

/// Field 9 (flags) and 22 (start time) of /proc/PID/stat, counted after the last ')' of the
/// command name (which may hold spaces and parentheses).
pub fn parse_stat_fields(text: &str) -> Option<(u64, u64)> {
    let rest = text.rsplit_once(')')?.1;
    let mut f = rest.split_ascii_whitespace();
    // After ')': field 3 (state) is the first; flags is field 9, start time field 22.
    let flags = f.nth(6)?.parse().ok()?;
    let start = f.nth(12)?.parse().ok()?;
    Some((flags, start))
}

/// `/proc/PID/exe` as the matcher wants it: the binary's path, without the ` (deleted)` the
/// kernel appends once the file was replaced (a package upgrade keeps the program running).
pub fn exe_path(link: PathBuf) -> PathBuf {
    match link.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => link,
    }
}

/// At most `limit` bytes of a /proc file. The buffer starts at 4 KiB, so a status, stat or
/// cmdline file (which the kernel formats whole on the first read) takes one read and the
/// read that sees its end.
fn read_small(p: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096.min(limit as usize + 1));
    std::fs::File::open(p)?.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The ids of `/proc/PID/status` (`dir` is `/proc/PID`): one read into a buffer on the stack
/// (the kernel formats the whole file for it, about 1.5 KiB, and the lines needed are among
/// the first), the whole file read only when it fills the buffer (many groups). What a
/// rescan of a host's processes spends most on, so no allocation but the answer's.
fn read_status_ids(dir: &Path) -> Option<StatusIds> {
    let p = dir.join("status");
    let mut buf = [0u8; 4096];
    let mut f = std::fs::File::open(&p).ok()?;
    let n = loop {
        match f.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    };
    if n < buf.len() {
        return parse_status_id_bytes(&buf[..n]);
    }
    let whole = read_small(&p, 64 * 1024).ok()?;
    parse_status_id_bytes(&whole)
}

/// The ids of process `pid` (`dir` is `/proc/PID`), `None` when it is gone: with `pidfd`
/// (`dir` is in this PID namespace's own /proc, and no rule names groups: `Placer::pidfd`)
/// through a pidfd (`launch::pidfd_ids`, 2-4 us where `status` costs 8), its primary groups
/// only; otherwise, and where the kernel does not answer that way, from `status`.
fn read_ids(dir: &Path, pid: u32, pidfd: bool) -> Option<StatusIds> {
    if pidfd {
        match crate::launch::pidfd_ids(pid) {
            Ok(i) => {
                let mut gids = vec![i.rgid];
                if i.egid != i.rgid {
                    gids.push(i.egid);
                }
                return Some(StatusIds {
                    tgid: i.tgid,
                    ruid: i.ruid,
                    euid: i.euid,
                    gids,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
            // A thread's id, no descriptor left, an older kernel: `status` says.
            Err(_) => {}
        }
    }
    read_status_ids(dir)
}

/// The start time and flags of `pid`, `None` when it is gone.
fn read_stat(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let mut p = proc_root.join(pid.to_string());
    p.push("stat");
    let text = read_small(&p, 4096).ok()?;
    parse_stat_fields(std::str::from_utf8(&text).ok()?)
}

/// Reads what `needs` asks of `pid` into facts (fields not needed stay empty); `None` when
/// the process is gone or its status cannot be read.
fn read_facts(
    proc_root: &Path,
    pid: u32,
    start_time: u64,
    needs: Needs,
) -> Option<(ProcessFacts, Option<StatusIds>)> {
    let dir = proc_root.join(pid.to_string());
    let mut facts = ProcessFacts {
        pid,
        start_time,
        ..ProcessFacts::default()
    };
    let mut ids = None;
    if needs.ids {
        let s = read_status_ids(&dir)?;
        facts.ruid = s.ruid;
        facts.euid = s.euid;
        facts.gids = s.gids.clone();
        ids = Some(s);
    }
    if needs.exe {
        facts.exe = std::fs::read_link(dir.join("exe")).ok().map(exe_path);
    }
    if needs.cmdline {
        let limit = crate::domain::placement::MAX_CMDLINE_MATCH_BYTES as u64 + 1;
        facts.cmdline = read_small(&dir.join("cmdline"), limit).ok();
    }
    Some((facts, ids))
}

/// Whether some rule in force may match `pid`: its facts are read cheapest first (the exe
/// link, then the ids, then cmdline, each only when a rule looks at it; the ids first when
/// they come through a pidfd, since the rules' uid index then narrows every later check to
/// the rules of the process's uids), and the reading stops once every rule has missed on a
/// field read (a field that could not be read misses too). `None`: the process is gone.
/// Never false for a process a rule matches.
fn may_match(proc_root: &Path, pid: u32, rules: &ActiveRules, pidfd: bool) -> Option<bool> {
    let dir = proc_root.join(pid.to_string());
    let mut facts = ProcessFacts {
        pid,
        ..ProcessFacts::default()
    };
    let needs = rules.needs;
    let ids_cheap = pidfd && !needs.groups;
    let order = if ids_cheap {
        [RuleField::Uids, RuleField::Exe, RuleField::Cmdline]
    } else {
        [RuleField::Exe, RuleField::Uids, RuleField::Cmdline]
    };
    // The rules not missed yet (indexes in precedence order); `None`: all of them.
    let mut alive: Option<Vec<usize>> = None;
    for read in order {
        let known: &[RuleField] = match read {
            RuleField::Exe if needs.exe => {
                facts.exe = std::fs::read_link(dir.join("exe")).ok().map(exe_path);
                &[RuleField::Exe]
            }
            RuleField::Uids if needs.ids => {
                let s = read_ids(&dir, pid, ids_cheap)?;
                (facts.ruid, facts.euid, facts.gids) = (s.ruid, s.euid, s.gids);
                let of_uids = rules.rules.candidates(facts.ruid, facts.euid);
                alive = Some(match alive {
                    None => of_uids,
                    Some(a) => a
                        .into_iter()
                        .filter(|i| of_uids.binary_search(i).is_ok())
                        .collect(),
                });
                &[RuleField::Uids, RuleField::Gids]
            }
            RuleField::Cmdline if needs.cmdline => {
                let limit = crate::domain::placement::MAX_CMDLINE_MATCH_BYTES as u64 + 1;
                facts.cmdline = read_small(&dir.join("cmdline"), limit).ok();
                &[RuleField::Cmdline]
            }
            _ => continue,
        };
        let hit = |i: &usize| {
            rules
                .rules
                .get(*i)
                .is_some_and(|(_, r)| !known.iter().any(|f| r.misses_on(*f, &facts)))
        };
        let left: Vec<usize> = match alive {
            None => (0..rules.rules.len()).filter(hit).collect(),
            Some(a) => a.into_iter().filter(hit).collect(),
        };
        if left.is_empty() {
            return Some(false);
        }
        alive = Some(left);
    }
    Some(true)
}

// ---------------------------------------------------------------------------------------
// The placer

/// What the placer did with one process, or why it left it alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Moved into the tenant its rule names.
    Placed {
        #[schema(value_type = String)]
        tenant: TenantName,
    },
    /// Already in the tenant its rule names.
    AlreadyThere {
        #[schema(value_type = String)]
        tenant: TenantName,
    },
    /// No rule matches it.
    NoRule,
    /// A rule names a tenant, but the process is never moved: `why` says which case.
    Left {
        #[schema(value_type = Option<String>)]
        tenant: Option<TenantName>,
        why: LeftWhy,
        detail: String,
    },
    /// The process exited (or its PID now names another process).
    Gone,
    /// The move failed; it stays where it was.
    Failed {
        #[schema(value_type = String)]
        tenant: TenantName,
        detail: String,
    },
}

/// Why a process a rule may name is left where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeftWhy {
    /// PID 1, the daemon or one of its threads, or a thread of another process.
    NeverTouched,
    KernelThread,
    /// Placed by hand (`POST .../procs`, `tenantd run`).
    PlacedByHand,
    /// Already in a tenant that no rule of this daemon put it in (a child of a placed
    /// process, or placed before a restart).
    InTenant,
    /// In a protected cgroup (`protected_cgroups`).
    Protected,
    /// In a cgroup another manager delegated (`Delegate=yes`) and the rule has no
    /// `override_delegated`.
    Delegated,
}

/// What one rescan saw and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RescanReport {
    pub processes: usize,
    pub matched: usize,
    pub placed: usize,
    pub failed: usize,
    /// Wall-clock time of the rescan (the moves included).
    pub elapsed_us: u64,
    /// CPU time of the thread that ran it (the moves' async part runs elsewhere).
    pub cpu_us: u64,
}

/// The CPU time of the calling thread, in microseconds.
fn thread_cpu_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// The placer: `consider` one process, `rescan` them all. Cheap to clone.
#[derive(Clone)]
pub struct Placer {
    gov: Arc<Governor>,
    rt: tokio::runtime::Handle,
    /// Whether a rescan may read ids through pidfds (`read_ids`): the governor's /proc is
    /// this process's own PID namespace's (its `self` names this process, so a PID read
    /// there is a PID `pidfd_open` means), and the kernel answers `PIDFD_GET_INFO`.
    pidfd: bool,
}

impl Placer {
    /// `rt` runs the moves (the governor's store is async); `consider` and `rescan` must not
    /// be called on one of its async workers.
    pub fn new(gov: Arc<Governor>, rt: tokio::runtime::Handle) -> Placer {
        let me = std::process::id();
        let own = std::fs::read_link(gov.proc_root().join("self"))
            .is_ok_and(|l| l.to_str() == Some(me.to_string().as_str()));
        let pidfd = own && crate::launch::pidfd_ids(me).is_ok();
        tracing::debug!(
            "placement: a rescan reads ids {}",
            if pidfd {
                "through pidfds (PIDFD_GET_INFO)"
            } else {
                "from /proc/PID/status"
            }
        );
        Placer { gov, rt, pidfd }
    }

    /// Considers `pid` against the rules in force and moves it when one names a tenant it is
    /// not in: `consider_batch` of one.
    pub fn consider(&self, pid: u32) -> Outcome {
        self.consider_batch(&[pid])
            .pop()
            .map(|(_, o)| o)
            .unwrap_or(Outcome::Gone)
    }

    /// The connector's entry point: the processes of one burst of exec, uid and gid events
    /// (`pids`, in the order received; a PID named twice is considered once). Each is matched
    /// and checked on its own, then the moves go through the governor together
    /// (`attach_by_rule`: one write lock and one journal transaction for them all), and the
    /// tenants that received a process are read again once, after the burst (coalesced
    /// with the reads still queued). One answer per distinct PID, in order.
    pub fn consider_batch(&self, pids: &[u32]) -> Vec<(u32, Outcome)> {
        let rules = self.gov.placement_rules(false);
        let out = self.consider_many(&rules, pids, false);
        self.refresh_later(out.iter().filter_map(|(_, o)| match o {
            Outcome::Placed { tenant } => Some(tenant.clone()),
            _ => None,
        }));
        out
    }

    /// Queues `tenants` for a read of their kernel values; starts the reading task unless
    /// one is running (it takes whatever is queued until nothing is).
    fn refresh_later(&self, tenants: impl IntoIterator<Item = TenantName>) {
        let auto = &self.gov.auto;
        {
            let mut q = auto.refresh.lock().expect("refresh lock");
            q.pending.extend(tenants);
            if q.running || q.pending.is_empty() {
                return;
            }
            q.running = true;
        }
        let gov = self.gov.clone();
        self.rt.spawn(async move {
            loop {
                let names: Vec<TenantName> = {
                    let mut q = gov.auto.refresh.lock().expect("refresh lock");
                    if q.pending.is_empty() {
                        q.running = false;
                        break;
                    }
                    q.reads += q.pending.len() as u64;
                    std::mem::take(&mut q.pending).into_iter().collect()
                };
                let _ = gov.refresh_kernel(Some(names)).await;
                // What arrives meanwhile is read together, at most every REFRESH_GAP: under a
                // stream of placements the tenants were read again back to back otherwise.
                tokio::time::sleep(REFRESH_GAP).await;
            }
        });
    }

    /// How many tenant reads `refresh_later` started so far, and whether one is running.
    pub fn refresh_reads(&self) -> (u64, bool) {
        let q = self.gov.auto.refresh.lock().expect("refresh lock");
        (q.reads, q.running || !q.pending.is_empty())
    }

    /// Carries out a decision taken earlier for the process `id` (PID and start time): moves
    /// it into `tenant`, whose rule named it, after the same checks as `consider`. For a
    /// caller that decides apart from the move (`explain`, a queue of decisions): the move is
    /// refused (`Gone`) when the PID names another process by then, so a decision never
    /// passes to the next holder of a recycled PID.
    pub fn place_decided(&self, id: ProcId, tenant: &TenantName) -> Outcome {
        let rules = self.gov.placement_rules(false);
        let Some(override_delegated) = rules
            .rules
            .iter()
            .find(|(t, _)| *t == tenant)
            .map(|(_, r)| r.override_delegated())
        else {
            return Outcome::NoRule;
        };
        let (pid, st) = id;
        if let Err(o) = self.cleared(&rules, pid, st, tenant, override_delegated) {
            return o;
        }
        let batch = [(tenant.clone(), pid, st)];
        let o = match self.rt.block_on(self.gov.attach_by_rule(&batch)) {
            Ok(done) => match done.into_iter().next() {
                Some(r) => self.record(&rules, pid, st, tenant.clone(), r),
                None => Outcome::Gone,
            },
            Err(e) => Outcome::Failed {
                tenant: tenant.clone(),
                detail: e.to_string(),
            },
        };
        if matches!(o, Outcome::Placed { .. }) {
            self.refresh_later([tenant.clone()]);
        }
        o
    }

    /// Considers every process of `/proc` (none when no rule is in force), then forgets the
    /// hand-placed and rule-placed processes that are gone and stores the burst's events.
    pub fn rescan(&self) -> RescanReport {
        let started = std::time::Instant::now();
        let cpu = thread_cpu_us();
        let rules = self.gov.placement_rules(true);
        let mut report = RescanReport::default();
        let proc_root = self.gov.proc_root().to_path_buf();
        let mut touched = Vec::new();
        if !rules.rules.is_empty() {
            let entries = match std::fs::read_dir(&proc_root) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("placement rescan: cannot list {}: {e}", proc_root.display());
                    return report;
                }
            };
            let pids: Vec<u32> = entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .collect();
            report.processes = pids.len();
            let outcomes = pids
                .chunks(RESCAN_BATCH)
                .flat_map(|c| self.consider_many(&rules, c, true));
            for (_, o) in outcomes {
                match o {
                    Outcome::Placed { tenant } => {
                        report.matched += 1;
                        report.placed += 1;
                        touched.push(tenant);
                    }
                    Outcome::Failed { .. } => {
                        report.matched += 1;
                        report.failed += 1;
                    }
                    Outcome::AlreadyThere { .. }
                    | Outcome::Left {
                        tenant: Some(_), ..
                    } => report.matched += 1,
                    _ => {}
                }
            }
        }
        self.gov.auto.prune_gone(&proc_root);
        report.elapsed_us = started.elapsed().as_micros() as u64;
        report.cpu_us = thread_cpu_us().saturating_sub(cpu);
        let gov = self.gov.clone();
        self.rt.block_on(async move {
            if !touched.is_empty() {
                touched.sort();
                touched.dedup();
                let _ = gov.refresh_kernel(Some(touched)).await;
            }
            gov.flush_placement_events().await;
        });
        report
    }

    /// `pids` (each once) against `rules`: each is decided on its own (`decide`), then the
    /// moves go to the governor as one batch and their outcomes are recorded (`record`).
    /// `prefilter`: see `decide`.
    fn consider_many(
        &self,
        rules: &ActiveRules,
        pids: &[u32],
        prefilter: bool,
    ) -> Vec<(u32, Outcome)> {
        let mut seen = HashSet::with_capacity(pids.len());
        let mut out: Vec<(u32, Option<Outcome>)> = Vec::with_capacity(pids.len());
        // (index in `out`, PID, start time, tenant)
        let mut moves: Vec<(usize, u32, u64, TenantName)> = Vec::new();
        for &pid in pids {
            if !seen.insert(pid) {
                continue;
            }
            match self.decide(rules, pid, prefilter) {
                Ok((st, tenant)) => {
                    moves.push((out.len(), pid, st, tenant));
                    out.push((pid, None));
                }
                Err(o) => out.push((pid, Some(o))),
            }
        }
        if !moves.is_empty() {
            let batch: Vec<(TenantName, u32, u64)> = moves
                .iter()
                .map(|(_, pid, st, t)| (t.clone(), *pid, *st))
                .collect();
            match self.rt.block_on(self.gov.attach_by_rule(&batch)) {
                Ok(done) => {
                    for ((i, pid, st, tenant), r) in moves.into_iter().zip(done) {
                        out[i].1 = Some(self.record(rules, pid, st, tenant, r));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "placing {} processes by their rules failed (none was moved): {e}",
                        moves.len()
                    );
                    for (i, _, _, tenant) in moves {
                        out[i].1 = Some(Outcome::Failed {
                            tenant,
                            detail: e.to_string(),
                        });
                    }
                }
            }
        }
        out.into_iter()
            .map(|(pid, o)| (pid, o.unwrap_or(Outcome::Gone)))
            .collect()
    }

    /// The decision for one process: `Ok((start time, tenant))` when it is to be moved,
    /// otherwise what happens instead. The process's identity (start time and flags from
    /// /proc/PID/stat) is read before the facts that decide, so those are the facts of the
    /// process the move names (and `attach_by_rule` checks that identity again right before
    /// and after the move). With `prefilter` (a rescan, where most processes match no rule)
    /// the facts the rules need are first read cheapest first and matched (`may_match`), and
    /// only a process some rule may name has its identity and facts read and matched again:
    /// a rescan of processes no rule names reads only what the rules look at. Without it (an
    /// exec or id change, most often of a process a rule names) the rules are matched once.
    /// Then the checks between the rule and the move (`placement_checks`); a delegated
    /// process is reported here.
    fn decide(
        &self,
        rules: &ActiveRules,
        pid: u32,
        prefilter: bool,
    ) -> Result<(u64, TenantName), Outcome> {
        let gov = &self.gov;
        let left = |why, detail: String| Outcome::Left {
            tenant: None,
            why,
            detail,
        };
        if pid <= 1 || pid == gov.self_pid() {
            return Err(left(
                LeftWhy::NeverTouched,
                "PID 1 and tenantd itself are never moved".into(),
            ));
        }
        if rules.rules.is_empty() {
            return Err(Outcome::NoRule);
        }
        let proc_root = gov.proc_root();
        if prefilter {
            match may_match(proc_root, pid, rules, self.pidfd) {
                None => return Err(Outcome::Gone),
                Some(false) => return Err(Outcome::NoRule),
                Some(true) => {}
            }
        }
        let Some((flags, st)) = read_stat(proc_root, pid) else {
            return Err(Outcome::Gone);
        };
        if flags & PF_KTHREAD != 0 {
            return Err(left(
                LeftWhy::KernelThread,
                "kernel threads cannot be moved".into(),
            ));
        }
        let Some((facts, ids)) = read_facts(proc_root, pid, st, rules.needs) else {
            return Err(Outcome::Gone);
        };
        if let Some(s) = &ids
            && s.tgid != pid
        {
            return Err(left(
                LeftWhy::NeverTouched,
                format!("{pid} is a thread of process {}", s.tgid),
            ));
        }
        let Some(d) = rules.rules.place(&facts) else {
            return Err(Outcome::NoRule);
        };
        let tenant = d.tenant.clone();
        self.cleared(rules, pid, st, &tenant, d.override_delegated)?;
        Ok((st, tenant))
    }

    /// The checks between a rule that names `tenant` for the process (`pid`, `st`) and its
    /// move (`placement_checks`); a delegated process is reported here.
    fn cleared(
        &self,
        rules: &ActiveRules,
        pid: u32,
        st: u64,
        tenant: &TenantName,
        override_delegated: bool,
    ) -> Result<(), Outcome> {
        match self
            .gov
            .placement_checks(rules, pid, st, tenant, override_delegated)
        {
            Ok(None) => {}
            Ok(Some(at)) => tracing::info!(
                "PID {pid}: in {}, which another manager delegated (Delegate=yes); moved into tenant '{tenant}' as its rule says override_delegated",
                at.display()
            ),
            Err(o) => {
                if let Outcome::Left {
                    why: LeftWhy::Delegated,
                    detail,
                    ..
                } = &o
                {
                    self.report_not_placed(tenant, pid, st, detail);
                }
                return Err(o);
            }
        }
        if !rules.leaves.contains_key(tenant) {
            return Err(Outcome::NoRule);
        }
        Ok(())
    }

    /// What a move of the batch did, remembered (`by_rule`), counted and added to the burst.
    fn record(
        &self,
        rules: &ActiveRules,
        pid: u32,
        st: u64,
        tenant: TenantName,
        moved: Result<Attached, EngineError>,
    ) -> Outcome {
        let gov = &self.gov;
        match moved {
            Ok(Attached::Moved { .. }) => {
                gov.auto
                    .by_rule
                    .lock()
                    .expect("by_rule lock")
                    .insert((pid, st), tenant.clone());
                gov.auto
                    .placed_total
                    .get_or_create(&vec![("tenant".to_string(), tenant.to_string())])
                    .inc();
                let rule_text = rules
                    .leaves
                    .get(&tenant)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                let mut burst = gov.auto.burst.lock().expect("burst lock");
                let e = burst
                    .placed
                    .entry(tenant.clone())
                    .or_insert_with(|| (0, Vec::new(), rule_text));
                e.0 += 1;
                if e.1.len() < MAX_EVENT_PIDS {
                    e.1.push(pid);
                }
                tracing::debug!("PID {pid} placed in tenant '{tenant}' by its rule");
                Outcome::Placed { tenant }
            }
            Ok(Attached::AlreadyThere) => Outcome::AlreadyThere { tenant },
            Ok(Attached::PlacedByHand) => Outcome::Left {
                tenant: Some(tenant),
                why: LeftWhy::PlacedByHand,
                detail: "placed by hand; it stays where it was put".into(),
            },
            Err(EngineError::BadPid { .. })
                if read_stat(gov.proc_root(), pid).map(|s| s.1) != Some(st) =>
            {
                Outcome::Gone
            }
            Err(e) => {
                tracing::warn!("PID {pid}: placing it in tenant '{tenant}' failed: {e}");
                Outcome::Failed {
                    tenant,
                    detail: e.to_string(),
                }
            }
        }
    }

    /// Counts and reports (once per process) a process a rule names but that is not moved.
    fn report_not_placed(&self, tenant: &TenantName, pid: u32, st: u64, why: &str) {
        let auto = &self.gov.auto;
        if !auto
            .reported
            .lock()
            .expect("reported lock")
            .insert((pid, st))
        {
            return;
        }
        auto.not_placed_total
            .get_or_create(&vec![
                ("tenant".to_string(), tenant.to_string()),
                ("reason".to_string(), "delegated".to_string()),
            ])
            .inc();
        tracing::info!("PID {pid} matches tenant '{tenant}' but is not moved: {why}");
        let mut burst = auto.burst.lock().expect("burst lock");
        let e = burst
            .not_placed
            .entry((tenant.clone(), why.to_string()))
            .or_default();
        e.0 += 1;
        if e.1.len() < MAX_EVENT_PIDS {
            e.1.push(pid);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Explain

/// A process's facts as the rules saw them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExplainedProcess {
    #[schema(minimum = 1)]
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start_time: u64,
    pub ruid: u32,
    pub euid: u32,
    /// Real and effective gid, then the supplementary groups.
    pub gids: Vec<u32>,
    /// The resolved /proc/PID/exe; null when it cannot be read (a kernel thread, no access).
    #[schema(required = true)]
    pub exe: Option<String>,
    /// The arguments (at most 4096 bytes of them, as the cmdline regex sees); null when they
    /// cannot be read.
    #[schema(required = true)]
    pub cmdline: Option<Vec<String>>,
    /// The lines of /proc/PID/cgroup.
    pub cgroup: Vec<String>,
}

/// The winning rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExplainedDecision {
    #[schema(value_type = String)]
    pub tenant: TenantName,
    pub priority: u32,
    pub specificity: u8,
    pub won_by: WonBy,
    #[schema(value_type = Option<String>, required = true)]
    pub runner_up: Option<TenantName>,
}

/// One rule's verdict on the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExplainedRule {
    #[schema(value_type = String)]
    pub tenant: TenantName,
    /// The rule as written, on one line.
    pub rule: String,
    pub priority: u32,
    pub specificity: u8,
    pub matched: bool,
    /// The fields that did not match (empty when the rule matched).
    pub misses: Vec<Miss>,
}

/// A tenant's rule that is stored but not in force, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleNotInForce {
    #[schema(value_type = String)]
    pub tenant: TenantName,
    pub why: String,
}

/// The `GET /v1/placement/explain?pid=N` answer: which tenant the process would go to, why,
/// and what the placer would do with it now (nothing is moved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    pub process: ExplainedProcess,
    /// The tenant the rules name (null: no rule matches).
    #[schema(required = true)]
    pub decision: Option<ExplainedDecision>,
    /// What the placer does with the process: place it, leave it (and why), or nothing.
    pub action: Outcome,
    /// Every rule in force, in precedence order (the first that matches wins).
    pub rules: Vec<ExplainedRule>,
    pub not_in_force: Vec<RuleNotInForce>,
}

impl Governor {
    /// `explain_sync` off the async workers, with the stored tenants loaded.
    pub async fn explain(self: Arc<Self>, pid: u32) -> Result<Option<Explanation>, EngineError> {
        self.fresh().await?;
        super::blocking(move || self.explain_sync(pid)).await
    }

    /// Why `pid` would go where it would, without moving it. `None`: no such process.
    pub fn explain_sync(&self, pid: u32) -> Option<Explanation> {
        let rules = self.placement_rules(true);
        let proc_root = self.proc_root();
        let (_, st) = read_stat(proc_root, pid)?;
        let all = Needs {
            ids: true,
            groups: true,
            exe: true,
            cmdline: true,
        };
        let (facts, _) = read_facts(proc_root, pid, st, all)?;
        let cgroup: Vec<String> = std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup")))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        let e = rules.rules.explain(&facts);
        let decision = e.decision.as_ref().map(|d| ExplainedDecision {
            tenant: d.tenant.clone(),
            priority: d.priority,
            specificity: d.specificity,
            won_by: d.won_by,
            runner_up: d.runner_up.cloned(),
        });
        let explained_rules = e
            .rules
            .iter()
            .map(|v| ExplainedRule {
                tenant: v.tenant.clone(),
                rule: rules
                    .leaves
                    .get(v.tenant)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default(),
                priority: v.priority,
                specificity: v.specificity,
                matched: v.matched(),
                misses: v.misses.clone(),
            })
            .collect();
        let action = self.would(&rules, pid, st, decision.as_ref());
        Some(Explanation {
            process: ExplainedProcess {
                pid,
                start_time: st,
                ruid: facts.ruid,
                euid: facts.euid,
                gids: facts.gids.clone(),
                exe: facts.exe.as_ref().map(|p| p.display().to_string()),
                cmdline: facts.cmdline.as_ref().map(|c| {
                    crate::domain::placement::matched_cmdline(c)
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                }),
                cgroup,
            },
            decision,
            action,
            rules: explained_rules,
            not_in_force: rules
                .not_in_force
                .iter()
                .map(|(t, why)| RuleNotInForce {
                    tenant: t.clone(),
                    why: why.clone(),
                })
                .collect(),
        })
    }

    /// What the placer would do with the process, without doing it.
    fn would(
        &self,
        rules: &ActiveRules,
        pid: u32,
        st: u64,
        decision: Option<&ExplainedDecision>,
    ) -> Outcome {
        if pid <= 1 || pid == self.self_pid() {
            return Outcome::Left {
                tenant: decision.map(|d| d.tenant.clone()),
                why: LeftWhy::NeverTouched,
                detail: "PID 1 and tenantd itself are never moved".into(),
            };
        }
        if read_stat(self.proc_root(), pid).is_some_and(|(f, _)| f & PF_KTHREAD != 0) {
            return Outcome::Left {
                tenant: None,
                why: LeftWhy::KernelThread,
                detail: "kernel threads cannot be moved".into(),
            };
        }
        let Some(d) = decision else {
            return Outcome::NoRule;
        };
        let override_delegated = rules
            .rules
            .iter()
            .find(|(n, _)| **n == d.tenant)
            .is_some_and(|(_, r)| r.override_delegated());
        match self.placement_checks(rules, pid, st, &d.tenant, override_delegated) {
            Ok(_) => Outcome::Placed {
                tenant: d.tenant.clone(),
            },
            Err(o) => o,
        }
    }

    /// The checks between a rule naming `tenant` for the process (`pid`, `st`) and its move,
    /// in order: placed by hand, already there, in a tenant no rule put it in, protected,
    /// delegated. `Err` is what happens instead of the move; `Ok(Some(dir))` is a move out of
    /// the delegated cgroup `dir` that the rule's `override_delegated` allows.
    fn placement_checks(
        &self,
        rules: &ActiveRules,
        pid: u32,
        st: u64,
        tenant: &TenantName,
        override_delegated: bool,
    ) -> Result<Option<PathBuf>, Outcome> {
        let left = |why, detail: String| Outcome::Left {
            tenant: Some(tenant.clone()),
            why,
            detail,
        };
        if self.auto.is_by_hand((pid, st)) {
            return Err(left(
                LeftWhy::PlacedByHand,
                "placed by hand; it stays where it was put".into(),
            ));
        }
        let Some((leaf, _)) = rules.leaves.get(tenant) else {
            return Err(Outcome::NoRule);
        };
        let b = self.backend();
        let located = b.locate(self.proc_root(), pid).map_err(|_| Outcome::Gone)?;
        if located == b.dirs(leaf) {
            return Err(Outcome::AlreadyThere {
                tenant: tenant.clone(),
            });
        }
        let root = b.dirs(&CgroupPath::root());
        let in_ours = located.iter().zip(&root).any(|(at, r)| at.starts_with(r));
        if in_ours && self.auto.placed_by((pid, st)).is_none() {
            return Err(left(
                LeftWhy::InTenant,
                "already in a tenant that no rule put it in (a child stays with its parent)".into(),
            ));
        }
        let cg_text = std::fs::read_to_string(self.proc_root().join(format!("{pid}/cgroup")))
            .map_err(|_| Outcome::Gone)?;
        if let Some(paths) = super::policy::parse_cgroup_paths(&cg_text)
            && let Some((cg, prot)) =
                super::policy::protected_match(&paths, &self.cfg.protected_cgroups)
        {
            return Err(left(
                LeftWhy::Protected,
                format!("in cgroup {cg}, which is protected ({prot} is in protected_cgroups)"),
            ));
        }
        if in_ours {
            return Ok(None);
        }
        let delegated = proc_cgroup(&cg_text).ok().and_then(|lines| {
            self.cfg
                .delegation
                .delegated(&lines, &self.delegation_stop())
        });
        match delegated {
            Some(at) if !override_delegated => Err(left(
                LeftWhy::Delegated,
                format!(
                    "in {}, which another manager delegated (Delegate=yes); the rule has no override_delegated",
                    at.display()
                ),
            )),
            other => Ok(other),
        }
    }

    /// The directories the delegation walk never reports nor passes: the governor root in
    /// every hierarchy and the daemon's own cgroup (systemd delegates tenantd's own unit).
    fn delegation_stop(&self) -> Vec<PathBuf> {
        self.backend().dirs(&CgroupPath::root())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_parse_skipping_junk() {
        let a = Accounts::parse(
            "root:x:0:0:root:/root:/bin/bash\n# comment\n\nalice:x:1001:1001::/home/alice:/bin/sh\nbad line\nbob:x:notanumber:1\nalice:x:9:9::/:/bin/sh\n",
            "root:x:0:\nhosting:x:2000:alice,bob\n:x:5:\n",
        );
        assert_eq!(a.user("alice"), Some(1001), "the first line of a name wins");
        assert_eq!(a.user("root"), Some(0));
        assert_eq!(a.user("bob"), None);
        assert_eq!(a.group("hosting"), Some(2000));
        assert_eq!(a.group(""), None);
    }

    /// A captured /proc/PID/status of a process started with `setpriv --reuid=1001
    /// --regid=1001 --groups=2000,27` (kernel 6.1, trimmed to the lines before Groups and
    /// the next few).
    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t1001\t1001\t1001\t1001\nGid:\t1001\t1001\t1001\t1001\nFDSize:\t64\nGroups:\t27 2000 \nNStgid:\t4242\n";

    #[test]
    fn status_ids_parse_uids_gids_and_groups() {
        assert_eq!(
            parse_status_ids(STATUS),
            Some(StatusIds {
                tgid: 4242,
                ruid: 1001,
                euid: 1001,
                gids: vec![1001, 27, 2000],
            })
        );
        // A setuid program: real and effective differ; no supplementary groups.
        let setuid = "Tgid:\t7\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\n";
        assert_eq!(
            parse_status_ids(setuid),
            Some(StatusIds {
                tgid: 7,
                ruid: 1000,
                euid: 0,
                gids: vec![1000],
            })
        );
        assert_eq!(parse_status_ids("Tgid:\t7\n"), None);
        // A command name that is not UTF-8 does not hide the ids.
        let mut odd = b"Name:\tx\xff\xfe\n".to_vec();
        odd.extend_from_slice(STATUS.split_once('\n').unwrap().1.as_bytes());
        assert_eq!(parse_status_id_bytes(&odd), parse_status_ids(STATUS));
        // Our own status, from the running kernel.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let s = parse_status_ids(&own).unwrap();
        assert_eq!(s.tgid, std::process::id());
        assert_eq!(s.euid, rustix::process::geteuid().as_raw());
    }

    #[test]
    fn stat_fields_survive_odd_names() {
        let line = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_fields(line), Some((4194560, 987654)));
        assert_eq!(parse_stat_fields("12 (x) S 1"), None);
        // Agrees with the policy's parser (procfs) on our own stat.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let p = super::super::policy::parse_stat(&own).unwrap();
        assert_eq!(parse_stat_fields(&own), Some((p.flags, p.start_time)));
    }

    #[test]
    fn a_replaced_binary_still_matches_by_its_path() {
        assert_eq!(
            exe_path(PathBuf::from("/usr/sbin/php-fpm8.2 (deleted)")),
            PathBuf::from("/usr/sbin/php-fpm8.2")
        );
        assert_eq!(exe_path(PathBuf::from("/bin/sh")), PathBuf::from("/bin/sh"));
    }

    /// Facts from a scratch /proc-like directory: only what the rules need is read.
    #[test]
    fn facts_read_only_what_the_rules_need() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("4242");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("status"), STATUS).unwrap();
        std::fs::write(p.join("cmdline"), b"gunicorn: worker [acme]\0-w\0").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3.11", p.join("exe")).unwrap();
        let none = Needs::default();
        let (f, ids) = read_facts(d.path(), 4242, 5, none).unwrap();
        assert_eq!(
            (f.pid, f.start_time, f.ruid, f.exe, f.cmdline),
            (4242, 5, 0, None, None)
        );
        assert!(ids.is_none());
        let all = Needs {
            ids: true,
            groups: true,
            exe: true,
            cmdline: true,
        };
        let (f, _) = read_facts(d.path(), 4242, 5, all).unwrap();
        assert_eq!((f.ruid, f.euid), (1001, 1001));
        assert_eq!(f.gids, vec![1001, 27, 2000]);
        assert_eq!(f.exe, Some(PathBuf::from("/usr/bin/python3.11")));
        assert_eq!(
            f.cmdline.as_deref(),
            Some(&b"gunicorn: worker [acme]\0-w\0"[..])
        );
        // A status longer than the first read (many supplementary groups) is read whole.
        let groups: Vec<String> = (5000..6500).map(|g| g.to_string()).collect();
        std::fs::write(
            p.join("status"),
            STATUS.replace(
                "Groups:\t27 2000 ",
                &format!("Groups:\t{}", groups.join(" ")),
            ),
        )
        .unwrap();
        let (f, _) = read_facts(d.path(), 4242, 5, all).unwrap();
        assert_eq!(f.gids.len(), 1 + 1500);
        assert_eq!(f.gids.last(), Some(&6499));
        // A status that cannot be read: no facts.
        std::fs::remove_file(p.join("status")).unwrap();
        assert!(read_facts(d.path(), 4242, 5, all).is_none());
    }

    /// The files are read again when their modification time or size changes, and only then.
    #[test]
    fn accounts_are_read_again_when_passwd_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("passwd"), "alice:x:1001:1001::/:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("group"), "hosting:x:2000:\n").unwrap();
        let mut files = AccountsFiles {
            dir: d.path().to_path_buf(),
            stamps: (None, None),
            generation: 0,
            current: Arc::new(Accounts::default()),
        };
        assert!(files.refresh());
        assert_eq!(files.current.user("alice"), Some(1001));
        assert_eq!(files.current.group("hosting"), Some(2000));
        assert!(!files.refresh(), "unchanged files are not read again");
        std::fs::write(
            d.path().join("passwd"),
            "alice:x:1005:1001::/:/bin/sh\nbob:x:1002:1002::/:/bin/sh\n",
        )
        .unwrap();
        assert!(files.refresh());
        assert_eq!(files.generation, 2);
        assert_eq!(
            (files.current.user("alice"), files.current.user("bob")),
            (Some(1005), Some(1002))
        );
        // A rule by name follows the new id; a name that is gone takes its rule out of force.
        let spec: PlacementSpec = serde_json::from_str(r#"{"uids": ["bob"]}"#).unwrap();
        let t = TenantName::parse("b").unwrap();
        let leaf = CgroupPath::tenant(std::slice::from_ref(&t)).leaf();
        let built = ActiveRules::build(
            (None, 2),
            vec![(t.clone(), spec.clone(), leaf.clone())],
            &files.current,
        );
        let bob = ProcessFacts {
            ruid: 1002,
            euid: 1002,
            ..ProcessFacts::default()
        };
        assert_eq!(
            built.rules.place(&bob).map(|d| d.tenant.clone()),
            Some(t.clone())
        );
        std::fs::write(d.path().join("passwd"), "alice:x:1005:1001::/:/bin/sh\n").unwrap();
        assert!(files.refresh());
        let built = ActiveRules::build((None, 3), vec![(t.clone(), spec, leaf)], &files.current);
        assert!(built.rules.is_empty());
        assert!(
            built.not_in_force[&t].contains("no user named 'bob'"),
            "{:?}",
            built.not_in_force
        );
    }

    /// A process whose exe no rule names has neither status nor cmdline read (they do not
    /// exist in the scratch /proc, which would make it "gone"); one whose exe matches is read
    /// on, and the answer agrees with the matcher.
    #[test]
    fn may_match_reads_the_cheapest_fact_first_and_stops() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("77");
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::symlink("/usr/bin/bash", p.join("exe")).unwrap();
        let t = TenantName::parse("a").unwrap();
        let leaf = CgroupPath::tenant(std::slice::from_ref(&t)).leaf();
        let spec: PlacementSpec =
            serde_json::from_str(r#"{"uids": [1001], "exe": ["/usr/bin/php*"], "cmdline": "x"}"#)
                .unwrap();
        let rules = ActiveRules::build(
            (None, 1),
            vec![(t.clone(), spec, leaf.clone())],
            &Accounts::default(),
        );
        assert_eq!(may_match(d.path(), 77, &rules, false), Some(false));
        std::fs::remove_file(p.join("exe")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/php8.2", p.join("exe")).unwrap();
        assert_eq!(
            may_match(d.path(), 77, &rules, false),
            None,
            "status is read now, and missing"
        );
        std::fs::write(p.join("status"), STATUS.replace("1001", "1002")).unwrap();
        assert_eq!(
            may_match(d.path(), 77, &rules, false),
            Some(false),
            "uid 1002 is not listed"
        );
        std::fs::write(p.join("status"), STATUS).unwrap();
        std::fs::write(p.join("cmdline"), b"php\0x.php\0").unwrap();
        assert_eq!(may_match(d.path(), 77, &rules, false), Some(true));
        let all = Needs {
            ids: true,
            groups: true,
            exe: true,
            cmdline: true,
        };
        let (facts, _) = read_facts(d.path(), 77, 1, all).unwrap();
        assert!(rules.rules.place(&facts).is_some());
    }

    /// The batch path against a scratch /proc and a scratch v2 tree: a backend that, like the
    /// kernel, shows a moved process in its new cgroup in `<proc>/PID/cgroup`.
    mod batch {
        use super::*;
        use crate::cgroup::{Backend, Change, HostCgroup, v2::V2};
        use crate::domain::TenantSpec;
        use crate::domain::plan::Settings;
        use crate::engine::EngineConfig;

        struct MovesProcs {
            v2: V2,
            mount: PathBuf,
            proc_root: PathBuf,
        }

        impl MovesProcs {
            fn show_in(&self, pid: u32, dir: &Path) {
                let rel = dir.strip_prefix(&self.mount).unwrap();
                let cg = self.proc_root.join(format!("{pid}/cgroup"));
                if cg.exists() {
                    std::fs::write(cg, format!("0::/{}\n", rel.display())).unwrap();
                }
            }
        }

        type R<T> = crate::cgroup::Result<T>;
        impl Backend for MovesProcs {
            fn host(&self) -> R<HostCgroup> {
                self.v2.host()
            }
            fn prepare_root(&self) -> R<()> {
                self.v2.prepare_root()
            }
            fn ensure(&self, dir: &CgroupPath, leaf: bool) -> R<bool> {
                self.v2.ensure(dir, leaf)
            }
            fn apply(&self, dir: &CgroupPath, want: &Settings) -> R<Vec<Change>> {
                self.v2.apply(dir, want)
            }
            fn drift(&self, dir: &CgroupPath, want: &Settings) -> R<Vec<Change>> {
                self.v2.drift(dir, want)
            }
            fn read(&self, dir: &CgroupPath) -> R<Settings> {
                self.v2.read(dir)
            }
            fn procs(&self, dir: &CgroupPath) -> R<Vec<u32>> {
                self.v2.procs(dir)
            }
            fn populated(&self, dir: &CgroupPath) -> R<bool> {
                self.v2.populated(dir)
            }
            fn subtree_procs(&self, dir: &CgroupPath) -> R<Vec<u32>> {
                self.v2.subtree_procs(dir)
            }
            fn attach(&self, dir: &CgroupPath, pid: u32) -> R<()> {
                self.v2.attach(dir, pid)?;
                self.show_in(pid, &self.v2.path_of(dir));
                Ok(())
            }
            fn place(&self, pid: u32, from: &[PathBuf], to: &[PathBuf]) -> R<()> {
                if from != to {
                    self.show_in(pid, &to[0]);
                }
                Ok(())
            }
            fn dirs(&self, dir: &CgroupPath) -> Vec<PathBuf> {
                self.v2.dirs(dir)
            }
            fn locate(&self, proc_root: &Path, pid: u32) -> R<Vec<PathBuf>> {
                self.v2.locate(proc_root, pid)
            }
            fn kill(&self, dir: &CgroupPath) -> R<()> {
                self.v2.kill(dir)
            }
            fn remove(&self, dir: &CgroupPath) -> R<()> {
                self.v2.remove(dir)
            }
            fn children(&self, dir: &CgroupPath) -> R<Vec<String>> {
                self.v2.children(dir)
            }
            fn exists(&self, dir: &CgroupPath) -> bool {
                self.v2.exists(dir)
            }
            fn path_of(&self, dir: &CgroupPath) -> PathBuf {
                self.v2.path_of(dir)
            }
        }

        const FIXTURE: &str = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cgroupfs/6.1.0-56-amd64/fixture/work"
        );

        /// A cgroup directory of the scratch tree, with the fixture's files.
        fn cgroup_dir(dir: &Path) {
            std::fs::create_dir_all(dir).unwrap();
            for f in std::fs::read_dir(FIXTURE).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
            }
            // Without the per-device line the fixture has (its device is not this host's).
            std::fs::write(dir.join("io.weight"), "default 100\n").unwrap();
        }

        /// A process of the scratch /proc: `sleep` with this argv[0], start time `st`,
        /// outside the governor root.
        fn process(proc_root: &Path, pid: u32, st: u64, argv0: &str) {
            let d = proc_root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} (sleep) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {st} 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"),
            )
            .unwrap();
            std::fs::write(d.join("status"), STATUS.replace("4242", &pid.to_string())).unwrap();
            std::fs::write(d.join("cmdline"), format!("{argv0}\x000.05\x00")).unwrap();
            let _ = std::fs::remove_file(d.join("exe"));
            std::os::unix::fs::symlink("/usr/bin/sleep", d.join("exe")).unwrap();
            std::fs::write(d.join("cgroup"), "0::/outside\n").unwrap();
        }

        struct Setup {
            _tmp: tempfile::TempDir,
            rt: tokio::runtime::Runtime,
            gov: Arc<Governor>,
            proc_root: PathBuf,
            root: PathBuf,
        }

        /// A governor over the scratch tree with tenants `a` and `b`, whose rules match
        /// argv[0] `job-a` and `job-b`.
        fn setup() -> Setup {
            let tmp = tempfile::tempdir().unwrap();
            let (mount, root, proc_root) = (
                tmp.path().to_path_buf(),
                tmp.path().join("root"),
                tmp.path().join("proc"),
            );
            std::fs::create_dir_all(proc_root.join("self")).unwrap();
            for d in ["", "a", "a/_procs", "b", "b/_procs", "outside"] {
                cgroup_dir(&root.join(d));
            }
            cgroup_dir(&mount.join("outside"));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let cfg = EngineConfig {
                proc_root: proc_root.clone(),
                etc_dir: tmp.path().join("etc"),
                ..EngineConfig::default()
            };
            let backend = Arc::new(MovesProcs {
                v2: V2::new(&mount, &root, "/sys"),
                mount: mount.clone(),
                proc_root: proc_root.clone(),
            });
            let gov = rt.block_on(async {
                let store = crate::store::Store::open(&tmp.path().join("t.db"))
                    .await
                    .unwrap();
                let gov = Governor::new(
                    backend,
                    store,
                    cfg,
                    crate::domain::tenant::Capacity {
                        cpus: 2.0,
                        memory_bytes: 1 << 30,
                        memory_reserve_bytes: 0,
                    },
                );
                for t in ["a", "b"] {
                    let spec: TenantSpec = serde_json::from_value(serde_json::json!({
                        "placement": {"cmdline": format!("^job-{t}\\x00")}
                    }))
                    .unwrap();
                    gov.put(&TenantName::parse(t).unwrap(), spec, "test")
                        .await
                        .unwrap();
                }
                gov
            });
            Setup {
                _tmp: tmp,
                rt,
                gov,
                proc_root,
                root,
            }
        }

        impl Setup {
            fn placer(&self) -> Placer {
                Placer::new(self.gov.clone(), self.rt.handle().clone())
            }
            fn cgroup_of(&self, pid: u32) -> String {
                std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup")))
                    .unwrap()
                    .trim()
                    .to_string()
            }
            fn procs_of(&self, t: &str) -> String {
                std::fs::read_to_string(self.root.join(t).join("_procs/cgroup.procs"))
                    .unwrap_or_default()
            }
            fn intents(&self) -> usize {
                self.rt.block_on(self.gov.store().intents()).unwrap().len()
            }
        }

        /// Two processes of one burst go to the same tenant, a third to another, one PID is
        /// named twice: each distinct PID is answered once, all are placed, the journal is
        /// empty after, and each tenant is read again once for the burst.
        #[test]
        fn a_burst_is_placed_together_and_each_tenant_read_once() {
            let s = setup();
            let p = &s.proc_root;
            process(p, 4_000_001, 11, "job-a");
            process(p, 4_000_002, 12, "job-a");
            process(p, 4_000_003, 13, "job-b");
            process(p, 4_000_004, 14, "other");
            let placer = s.placer();
            let (reads0, _) = placer.refresh_reads();
            let out =
                placer.consider_batch(&[4_000_001, 4_000_002, 4_000_003, 4_000_001, 4_000_004]);
            let a = TenantName::parse("a").unwrap();
            let b = TenantName::parse("b").unwrap();
            assert_eq!(
                out,
                vec![
                    (4_000_001, Outcome::Placed { tenant: a.clone() }),
                    (4_000_002, Outcome::Placed { tenant: a.clone() }),
                    (4_000_003, Outcome::Placed { tenant: b.clone() }),
                    (4_000_004, Outcome::NoRule),
                ]
            );
            assert_eq!(s.cgroup_of(4_000_001), "0::/root/a/_procs");
            assert_eq!(s.cgroup_of(4_000_002), "0::/root/a/_procs");
            assert_eq!(s.cgroup_of(4_000_003), "0::/root/b/_procs");
            assert_eq!(s.cgroup_of(4_000_004), "0::/outside");
            assert_eq!(s.intents(), 0, "the batch's journal records are removed");
            // One read of each tenant that received processes, not one per process.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let reads = loop {
                let (reads, busy) = placer.refresh_reads();
                if !busy || std::time::Instant::now() > deadline {
                    break reads;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            assert_eq!(reads - reads0, 2, "tenants a and b, once each");
            // Considered again: already there, nothing written, no read queued.
            let again = placer.consider_batch(&[4_000_002]);
            assert_eq!(
                again,
                vec![(4_000_002, Outcome::AlreadyThere { tenant: a })]
            );
            assert_eq!(placer.refresh_reads().0, reads);
            // Counted per tenant, summarised as one event per tenant.
            let burst = s.gov.auto.burst.lock().unwrap();
            assert_eq!(burst.placed[&TenantName::parse("a").unwrap()].0, 2);
            assert_eq!(burst.placed[&b].0, 1);
        }

        /// In one batch of moves: a process whose PID was reused since its rule matched it
        /// (another start time), one that exited, one placed by hand meanwhile, and one that
        /// is still itself. Only the last is moved; the journal is empty after.
        #[test]
        fn a_batch_moves_only_the_processes_that_are_still_themselves() {
            let s = setup();
            let p = &s.proc_root;
            let a = TenantName::parse("a").unwrap();
            process(p, 4_000_011, 21, "job-a");
            process(p, 4_000_012, 99, "job-a"); // matched with start time 22: recycled
            process(p, 4_000_014, 24, "job-a");
            s.gov.auto.placed_by_hand((4_000_014, 24));
            process(p, 4_000_015, 25, "job-a");
            let moves = vec![
                (a.clone(), 4_000_011, 21),
                (a.clone(), 4_000_012, 22),
                (a.clone(), 4_000_013, 23), // gone
                (a.clone(), 4_000_014, 24),
                (a.clone(), 4_000_015, 25),
            ];
            let done = s.rt.block_on(s.gov.attach_by_rule(&moves)).unwrap();
            assert!(
                matches!(done[0], Ok(Attached::Moved { start_time: 21 })),
                "{done:?}"
            );
            assert!(
                matches!(&done[1], Err(EngineError::BadPid { message, .. }) if message.contains("reused")),
                "{done:?}"
            );
            assert!(
                matches!(done[2], Err(EngineError::BadPid { .. })),
                "{done:?}"
            );
            assert!(matches!(done[3], Ok(Attached::PlacedByHand)), "{done:?}");
            assert!(
                matches!(done[4], Ok(Attached::Moved { start_time: 25 })),
                "{done:?}"
            );
            assert_eq!(s.cgroup_of(4_000_011), "0::/root/a/_procs");
            assert_eq!(
                s.cgroup_of(4_000_012),
                "0::/outside",
                "the new holder of the PID stays"
            );
            assert_eq!(
                s.cgroup_of(4_000_014),
                "0::/outside",
                "placed by hand: left"
            );
            assert_eq!(s.cgroup_of(4_000_015), "0::/root/a/_procs");
            assert!(!s.procs_of("a").contains("4000012"), "{}", s.procs_of("a"));
            assert_eq!(s.intents(), 0);
            // Through the placer: the recycled and the vanished PID are answered, not moved.
            let placer = s.placer();
            std::fs::remove_dir_all(p.join("4000011")).unwrap();
            let out = placer.consider_batch(&[4_000_011, 4_000_012]);
            // (Gone, or no rule when the rules only read a file it no longer has.)
            assert!(
                matches!(out[0], (4_000_011, Outcome::Gone | Outcome::NoRule)),
                "{out:?}"
            );
            assert_eq!(
                out[1],
                (4_000_012, Outcome::Placed { tenant: a }),
                "the PID's new holder matches on its own facts, read after its start time"
            );
        }
    }

    /// On this process, in the real /proc: the ids read through a pidfd decide as those of
    /// `status` do, a rule by groups reads `status` (the supplementary groups), and a PID no
    /// process has is gone either way.
    #[test]
    fn may_match_through_a_pidfd_agrees_with_status() {
        let me = std::process::id();
        let status = read_status_ids(Path::new(&format!("/proc/{me}"))).unwrap();
        let fast = read_ids(Path::new(&format!("/proc/{me}")), me, true).unwrap();
        assert_eq!(
            (fast.tgid, fast.ruid, fast.euid),
            (me, status.ruid, status.euid)
        );
        assert!(status.gids.starts_with(&fast.gids), "{fast:?} {status:?}");
        let t = TenantName::parse("a").unwrap();
        let leaf = CgroupPath::tenant(std::slice::from_ref(&t)).leaf();
        let rules = |j: String| {
            let spec: PlacementSpec = serde_json::from_str(&j).unwrap();
            ActiveRules::build(
                (None, 1),
                vec![(t.clone(), spec, leaf.clone())],
                &Accounts::default(),
            )
        };
        let proc = Path::new("/proc");
        for (rule, want) in [
            (format!(r#"{{"uids": [{}]}}"#, status.euid), Some(true)),
            (format!(r#"{{"uids": [{}]}}"#, status.euid + 1), Some(false)),
            (format!(r#"{{"gids": [{}]}}"#, status.gids[0]), Some(true)),
        ] {
            let r = rules(rule.clone());
            assert_eq!(r.needs.groups, rule.contains("gids"), "{rule}");
            for pidfd in [true, false] {
                assert_eq!(
                    may_match(proc, me, &r, pidfd),
                    want,
                    "{rule}, pidfd {pidfd}"
                );
            }
        }
        let r = rules(r#"{"uids": [0]}"#.into());
        assert_eq!(may_match(proc, 1 << 23, &r, true), None);
        assert_eq!(may_match(proc, 1 << 23, &r, false), None);
    }

    #[test]
    fn rules_not_in_force_say_why_and_the_rest_stay() {
        let acc = Accounts::parse("alice:x:1001:1001::/:/bin/sh\n", "");
        let spec = |j: &str| serde_json::from_str::<PlacementSpec>(j).unwrap();
        let t = |n: &str| TenantName::parse(n).unwrap();
        let leaf = |n: &str| CgroupPath::tenant(&[t(n)]).leaf();
        let built = ActiveRules::build(
            (Some(1), 1),
            vec![
                (t("a"), spec(r#"{"uids": ["alice"]}"#), leaf("a")),
                (t("b"), spec(r#"{"uids": ["carol"]}"#), leaf("b")),
                (t("c"), spec(r#"{"uids": [1001]}"#), leaf("c")),
                (
                    t("d"),
                    spec(r#"{"exe": ["/usr/bin/*"], "priority": 5}"#),
                    leaf("d"),
                ),
            ],
            &acc,
        );
        assert_eq!(built.rules.len(), 2);
        assert!(built.not_in_force[&t("b")].contains("placement.uids[0]"));
        assert!(
            built.not_in_force[&t("c")].contains("'c' and 'a'"),
            "{:?}",
            built.not_in_force
        );
        assert_eq!(
            built.needs,
            Needs {
                ids: true,
                groups: false,
                exe: true,
                cmdline: false
            }
        );
        assert_eq!(built.leaves[&t("a")].1, "uids ['alice']");
        assert_eq!(built.leaves[&t("d")].1, "exe ['/usr/bin/*'], priority 5");
    }
}
