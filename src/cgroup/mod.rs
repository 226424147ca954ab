//! The only code that touches cgroupfs. Synchronous; every backend takes its root as an
//! argument, so tests can point it at any directory of a real cgroup v2 mount.
//!
//! Layer 1 (see `lib.rs`): owns the backends (`v2`, `v1`), the file formats (`parse`,
//! `v1_parse`) and reading stats (`stats`, `v1_stats`); imports `domain` only, never `store`,
//! `report`, `metrics`, `engine`, `api`, `config` or `cli`.
//!
//! Layout under the governor's root `R` (cgroup-v2.rst, "No Internal Process Constraint"):
//! `R/_tenantd` holds the daemon, `R/<a>/<b>` is tenant `b` whose parent is `a`, and
//! every tenant's processes live in its leaf `R/<a>/<b>/_procs`. Names starting with `_`
//! cannot be tenant names, so they never collide.

pub mod delegate;
pub mod parse;
pub mod proc_connector;
pub mod stats;
pub mod subtree_watch;
pub mod v1;
pub mod v1_parse;
pub mod v1_stats;
pub mod v2;

use crate::domain::plan::{Limit, Setting, Settings};
use crate::domain::tenant::{DevId, TenantName};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the leaf directory that holds a tenant's own processes.
pub const LEAF: &str = "_procs";
/// Name of the daemon's own leaf under the governor root.
pub const DAEMON_LEAF: &str = "_tenantd";

/// A path below the governor root, made of checked segments: never absolute, never `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupPath(Vec<String>);

impl CgroupPath {
    pub fn root() -> Self {
        CgroupPath(Vec::new())
    }

    /// Parses "a/b/_procs". Refuses absolute paths, "..", ".", empty segments and odd bytes.
    pub fn parse(s: &str) -> Result<Self> {
        let mut p = CgroupPath::root();
        if s.starts_with('/') {
            return Err(CgroupError::InvalidPath {
                path: s.into(),
                why: "must be relative to the governor root",
            });
        }
        for seg in s.split('/').filter(|s| !s.is_empty()) {
            p = p.join(seg)?;
        }
        Ok(p)
    }

    pub fn join(&self, seg: &str) -> Result<Self> {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.len() <= 255
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(CgroupError::InvalidPath {
                path: seg.into(),
                why: "segments are 1-255 of a-z, A-Z, 0-9, '-', '_', '.' and not '.' or '..'",
            });
        }
        let mut v = self.0.clone();
        v.push(seg.to_string());
        Ok(CgroupPath(v))
    }

    /// The directory of a tenant given its lineage (top-level ancestor first).
    pub fn tenant(lineage: &[TenantName]) -> Self {
        CgroupPath(lineage.iter().map(|n| n.as_str().to_string()).collect())
    }

    /// The leaf that holds this tenant's processes.
    pub fn leaf(&self) -> Self {
        let mut v = self.0.clone();
        v.push(LEAF.to_string());
        CgroupPath(v)
    }

    pub fn daemon() -> Self {
        CgroupPath(vec![DAEMON_LEAF.to_string()])
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    pub fn under(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(&self.0);
        p
    }
}

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.join("/"))
    }
}

/// Errors of the cgroup layer. Each names the operation and the file; the kernel's answer
/// (errno) is kept as the source so callers can tell a bad value from a conflict.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to write '{value}' to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {op} {}", path.display())]
    Dir {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: parse::ParseError,
    },
    #[error("invalid cgroup path '{path}': {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error("{what} is not available on this host: {why}")]
    Unsupported { what: String, why: String },
}

impl CgroupError {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Write { source, .. }
            | CgroupError::Read { source, .. }
            | CgroupError::Dir { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the cgroup or process went away under us (`is_gone_errno`).
    pub fn is_gone(&self) -> bool {
        self.errno().is_some_and(is_gone_errno)
    }
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// The errnos that mean "the cgroup or process went away under us", the one list every
/// reader and writer of the cgroup layer (and the engine, through `CgroupError::is_gone`)
/// goes by:
/// - ENOENT: the path is gone (a cgroup directory removed, /proc/PID of a reaped process).
/// - ENODEV: a cgroupfs file held open (or opened just before) whose cgroup was removed;
///   kernfs answers ENODEV on a deactivated node.
/// - ESRCH: the process exited: writing its PID to cgroup.procs, or reading a /proc/PID file
///   opened before it was reaped.
///
/// Not in it, on purpose: EBUSY (a cgroup with processes or children, a conflict the caller
/// must see), EINVAL and ERANGE (a value the kernel refuses), EACCES/EPERM (delegation or
/// permissions), EMFILE/ENFILE (out of descriptors, handled where files are held), ESTALE
/// (not produced by cgroupfs or procfs).
pub fn is_gone_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ENODEV | libc::ESRCH)
}

/// `is_gone_errno` for an `io::Error`.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(is_gone_errno)
}

/// One value the kernel held that differed from the plan, and was rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub file: String,
    pub was: String,
    pub now: String,
}

/// What the host's cgroup setup can do, for /v1/host and for refusing what it cannot.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HostCgroup {
    /// "v2" or "v1".
    #[schema(value_type = crate::domain::schema::CgroupVersionName)]
    pub version: String,
    #[schema(value_type = String)]
    pub root: PathBuf,
    /// Controllers usable for tenants (enabled in the root's parent).
    pub controllers: Vec<String>,
    /// Controllers tenantd needs but cannot use here.
    pub missing: Vec<String>,
    pub psi: bool,
    pub kill: bool,
    pub devices: Vec<BlockDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BlockDevice {
    pub device: DevId,
    pub name: String,
    #[schema(required = true)]
    pub scheduler: Option<String>,
    /// Whether io.weight takes effect on this device, and why (iocost enabled, or BFQ).
    pub io_weight_effective: bool,
    pub io_weight_reason: String,
}

/// The operations the governor needs from a cgroup hierarchy. v2 is the target; v1 and
/// hybrid hosts get a second implementation of the same trait.
pub trait Backend: Send + Sync + 'static {
    /// What this host can do.
    fn host(&self) -> Result<HostCgroup>;
    /// Creates the governor root and enables the controllers below it.
    fn prepare_root(&self) -> Result<()>;
    /// Creates `dir` (and its leaf when `leaf` is true) if missing and enables controllers
    /// for its children. Returns true when something was created.
    fn ensure(&self, dir: &CgroupPath, leaf: bool) -> Result<bool>;
    /// Writes every value of `want` that differs from the kernel's; returns what changed.
    /// Each file's value is compared with the value the kernel would hold after tenantd wrote
    /// it (`PageSize::memory`, `normal`, v1's shares and blkio weight scales), so a value is
    /// rewritten, and reported, exactly when it drifted.
    fn apply(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>>;
    /// What `apply` would write now, without writing: each value the kernel holds that
    /// differs from `want` (changed by hand, or not written yet), compared the same way.
    fn drift(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>>;
    /// Reads the values the kernel holds now.
    fn read(&self, dir: &CgroupPath) -> Result<Settings>;
    /// PIDs directly in `dir`.
    fn procs(&self, dir: &CgroupPath) -> Result<Vec<u32>>;
    /// Whether any process lives in `dir` or below.
    fn populated(&self, dir: &CgroupPath) -> Result<bool>;
    /// Every process (thread-group ID, as cgroup.procs lists it) in `dir` and below, sorted;
    /// a process with a thread there counts. What a kill of `dir` would hit.
    fn subtree_procs(&self, dir: &CgroupPath) -> Result<Vec<u32>>;
    /// Moves `pid` into `dir` (on v1: into `dir` of every hierarchy, one after the other; a
    /// failure part-way leaves it split, which the governor checks with `locate`).
    fn attach(&self, dir: &CgroupPath, pid: u32) -> Result<()>;
    /// `dir` in every hierarchy this backend uses, absolute, in the order `locate` answers.
    fn dirs(&self, dir: &CgroupPath) -> Vec<PathBuf>;
    /// The cgroup directory `pid` is in, in every hierarchy this backend uses (the order of
    /// `dirs`), from `<proc_root>/PID/cgroup`. A process that is gone is `is_gone`.
    fn locate(&self, proc_root: &Path, pid: u32) -> Result<Vec<PathBuf>>;
    /// Whether `dir` exists in at least one hierarchy (`exists` asks for all of them).
    fn present(&self, dir: &CgroupPath) -> bool {
        self.dirs(dir).iter().any(|d| d.is_dir())
    }
    /// Moves `pid` into the directories `to` (as `locate` gave them), each hierarchy where
    /// `from` (where it is now) differs: the undo of a move that did not complete.
    fn place(&self, pid: u32, from: &[PathBuf], to: &[PathBuf]) -> Result<()> {
        for (f, t) in from.iter().zip(to) {
            if f != t {
                write_file(&t.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }
    /// Kills every process in `dir` and below (cgroup.kill), and waits for them to go.
    fn kill(&self, dir: &CgroupPath) -> Result<()>;
    /// Removes the empty directory `dir` (its leaf first, if any).
    fn remove(&self, dir: &CgroupPath) -> Result<()>;
    /// Names of the child directories of `dir`.
    fn children(&self, dir: &CgroupPath) -> Result<Vec<String>>;
    fn exists(&self, dir: &CgroupPath) -> bool;
    /// The absolute directory of `dir`, for messages and for the usage sampler.
    fn path_of(&self, dir: &CgroupPath) -> PathBuf;
    /// Where the usage sampler reads `dir`'s stats: by default the v2 files in `path_of`.
    fn sample_source(&self, dir: &CgroupPath) -> SampleSource {
        SampleSource::V2(self.path_of(dir))
    }
    /// Settings of `want` this backend leaves unset on this host (they differ from the kernel
    /// default and have no equivalent here), each with the reason. `apply` skips them.
    fn not_applied(&self, _want: &Settings) -> Vec<NotApplied> {
        Vec::new()
    }
    /// Whether tenantd runs as root or in a delegated subtree (`run_mode` on the root's
    /// directory in every hierarchy).
    fn mode(&self) -> RunMode {
        run_mode(&self.dirs(&CgroupPath::root()))
    }
}

/// Where a tenant's usage is read (`Backend::sample_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleSource {
    /// One cgroup v2 directory, read by `stats::StatsReader` with held files.
    V2(PathBuf),
    /// The tenant's directory in each v1 hierarchy, read by `v1_stats::V1StatsReader`;
    /// `proc` is the procfs mount (for /proc/TID/schedstat).
    V1 { dirs: v1::V1Dirs, proc: PathBuf },
}

/// A setting a backend cannot apply on this host, reported rather than refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NotApplied {
    /// The `Settings` field, e.g. "memory_high_bytes".
    #[schema(value_type = String)]
    pub setting: Setting,
    pub why: String,
}

/// How tenantd holds its governor root (cgroup-v2.rst, "Delegation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// As root: the root's own interface files are tenantd's to write.
    Root,
    /// In a subtree delegated to an unprivileged user: the directory and its `cgroup.procs`,
    /// `cgroup.subtree_control` and `cgroup.threads` are ours, the root's other interface files
    /// belong to the delegator, and tenantd writes only below the root.
    Delegated,
}

impl RunMode {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Root => "root",
            RunMode::Delegated => "delegated",
        }
    }
}

/// Something tenantd cannot do in the mode it runs in, and why (`GET /v1/host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Cannot {
    pub what: String,
    pub why: String,
}

/// The governor root's own interface files tenantd writes when it runs as root: the
/// protection its tenants need (memory.min, memory.low) and the share adaptive enforcement
/// adjusts (cpu.weight).
pub const ROOT_OWN_FILES: [&str; 3] = ["cpu.weight", "memory.min", "memory.low"];

/// The effective user ID the daemon runs as.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether this process may write `path`: opened for writing and closed without a write,
/// so the kernel answers with everything it checks (owner, mode, capabilities) and nothing
/// changes.
pub fn may_write(path: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

/// The mode of a daemon whose governor root is `roots` (one per hierarchy): delegated when it
/// does not run as root, or when one of the root's own interface files exists and is not
/// writable by it. A root that does not exist yet is one tenantd creates, so it is its own.
pub fn run_mode(roots: &[PathBuf]) -> RunMode {
    let foreign = roots
        .iter()
        .flat_map(|r| ROOT_OWN_FILES.iter().map(move |f| r.join(f)))
        .any(|p| p.exists() && !may_write(&p));
    if euid() != 0 || foreign {
        RunMode::Delegated
    } else {
        RunMode::Root
    }
}

/// Which cgroup version to drive: `auto` detects it (see `detect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    #[default]
    Auto,
    V2,
    V1,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::Auto => "auto",
            CgroupVersion::V2 => "v2",
            CgroupVersion::V1 => "v1",
        })
    }
}

/// The backend `detect` chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    V2,
    V1(Box<v1::V1Hierarchies>),
}

/// What the host offers, as `choose` needs it: the controllers of the cgroup2 mount at the
/// configured mount point (`None` when no cgroup2 is mounted there) and the v1 hierarchies.
#[derive(Debug, Clone, Default)]
pub struct HostMounts {
    pub v2_controllers: Option<Vec<String>>,
    pub v1: v1::V1Hierarchies,
}

impl HostMounts {
    /// Reads `<proc>/self/mountinfo`, `<proc>/self/cgroup` and `<mount>/cgroup.controllers`.
    pub fn detect(mount: &Path, proc_root: &Path) -> Result<HostMounts> {
        let mi_path = proc_root.join("self/mountinfo");
        let mi = std::fs::read_to_string(&mi_path).map_err(|source| CgroupError::Read {
            path: mi_path.clone(),
            source,
        })?;
        let mounts = v1_parse::cgroup_mounts(&mi).map_err(|source| CgroupError::Parse {
            path: mi_path,
            source,
        })?;
        let v2_here = mounts.iter().any(|m| m.v2 && m.mount_point == mount);
        let v2_controllers = if v2_here {
            let p = mount.join("cgroup.controllers");
            Some(parse::controllers(
                &std::fs::read_to_string(&p)
                    .map_err(|source| CgroupError::Read { path: p, source })?,
            ))
        } else {
            None
        };
        Ok(HostMounts {
            v2_controllers,
            v1: v1::V1Hierarchies::detect(proc_root)?,
        })
    }
}

/// Picks the backend: v2 when the cgroup2 mount at the configured mount point has the cpu and
/// memory controllers, else v1 when its cpu and memory hierarchies are mounted. A hybrid
/// host's controller-less cgroup2 mount (/sys/fs/cgroup/unified) is never used for control.
/// `choice` forces a version, and is refused when the host cannot deliver it.
pub fn choose(choice: CgroupVersion, host: &HostMounts, mount: &Path) -> Result<Detected> {
    let v2_ok = host
        .v2_controllers
        .as_ref()
        .is_some_and(|c| ["cpu", "memory"].iter().all(|w| c.iter().any(|x| x == w)));
    let v2_why = || match &host.v2_controllers {
        None => format!("no cgroup2 filesystem is mounted at {}", mount.display()),
        Some(c) => format!(
            "the cgroup2 mount at {} has controllers [{}], not cpu and memory (a hybrid host: they are bound to v1 hierarchies)",
            mount.display(),
            c.join(" ")
        ),
    };
    let v1_why = || {
        let missing: Vec<&str> = ["cpu", "memory"]
            .into_iter()
            .filter(|c| host.v1.get(c).is_none())
            .collect();
        format!(
            "no cgroup v1 hierarchy is mounted for {} (see /proc/self/mountinfo)",
            missing.join(" and ")
        )
    };
    match choice {
        CgroupVersion::V2 if v2_ok => Ok(Detected::V2),
        CgroupVersion::V2 => Err(CgroupError::Unsupported {
            what: "cgroup_version = \"v2\"".into(),
            why: v2_why(),
        }),
        CgroupVersion::V1 if host.v1.usable() => Ok(Detected::V1(Box::new(host.v1.clone()))),
        CgroupVersion::V1 => Err(CgroupError::Unsupported {
            what: "cgroup_version = \"v1\"".into(),
            why: v1_why(),
        }),
        CgroupVersion::Auto if v2_ok => Ok(Detected::V2),
        CgroupVersion::Auto if host.v1.usable() => Ok(Detected::V1(Box::new(host.v1.clone()))),
        CgroupVersion::Auto => Err(CgroupError::Unsupported {
            what: "cgroups".into(),
            why: format!("{}, and {}", v2_why(), v1_why()),
        }),
    }
}

/// Reads a cgroup (or proc) file whole; the error names the file.
pub(crate) fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// One value of a backend's `settle` pass that differs from the plan: written to `p` when
/// `write` (`apply`), and recorded as changed either way (`drift` only reads).
pub(crate) fn settle_value(
    changes: &mut Vec<Change>,
    p: &Path,
    write: bool,
    file: &str,
    was: String,
    now: String,
) -> Result<()> {
    if write {
        write_file(p, &now)?;
    }
    changes.push(Change {
        file: file.to_string(),
        was,
        now,
    });
    Ok(())
}

/// Writes a value into a cgroup file; the error names the file and the value.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Reads and parses a file; the error names it.
pub(crate) fn parsed<T>(
    path: &Path,
    f: impl FnOnce(&[u8]) -> std::result::Result<T, parse::ParseError>,
) -> Result<T> {
    let s = std::fs::read(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    f(&s).map_err(|source| CgroupError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Fails with "failed to find" naming `p` unless it is a directory (a tenant's cgroup read
/// before it exists, or after it was removed by hand).
pub(crate) fn require_dir(p: &Path) -> Result<()> {
    if p.is_dir() {
        return Ok(());
    }
    Err(CgroupError::Dir {
        op: "find",
        path: p.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Adds the PIDs in `cgroup.procs` of the directory `p` and of every directory below it (one
/// hierarchy). A directory that vanishes meanwhile adds nothing.
pub(crate) fn pids_below(p: &Path, out: &mut impl Extend<u32>) -> Result<()> {
    match optional(&p.join("cgroup.procs"), parse::pids)? {
        Some(v) => out.extend(v),
        None => return Ok(()),
    }
    let Ok(rd) = std::fs::read_dir(p) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            pids_below(&e.path(), out)?;
        }
    }
    Ok(())
}

/// Reads and parses a file that exists only with its controller (enabled, or mounted on v1)
/// or kernel feature: `None` when absent.
pub(crate) fn optional<T>(
    path: &Path,
    f: impl FnOnce(&[u8]) -> std::result::Result<T, parse::ParseError>,
) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(s) => f(&s).map(Some).map_err(|source| CgroupError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        // Absent, not gone (`is_gone`): ENOENT alone means the kernel does not offer the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates one cgroup directory; false when it already existed.
pub(crate) fn mkdir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Dir {
            op: "create",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The kernel's page size. Memory files hold whole pages and at most `PAGE_COUNTER_MAX` of
/// them, so a wanted value is compared with what the kernel holds after the same rounding
/// (`memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u64);

impl PageSize {
    pub fn of_host() -> Self {
        PageSize::new(procfs::page_size())
    }

    /// A page size in bytes (at least 1).
    pub fn new(bytes: u64) -> Self {
        PageSize(bytes.max(1))
    }

    pub(crate) fn floor(self, v: u64) -> u64 {
        v / self.0 * self.0
    }

    /// `PAGE_COUNTER_MAX` (include/linux/page_counter.h, 64-bit): `LONG_MAX / PAGE_SIZE` pages,
    /// the kernel's "no limit".
    fn max_pages(self) -> u64 {
        i64::MAX as u64 / self.0
    }

    /// A memory value as the kernel holds it after tenantd writes it, and the identity on what
    /// the kernel shows. `page_counter_memparse` (mm/page_counter.c), which every memory file
    /// of v2 (memory.min, .low, .high, .max, .swap.max) and v1 (memory.limit_in_bytes,
    /// .soft_limit_in_bytes, .memsw.limit_in_bytes) goes through, rounds a byte count down to
    /// whole pages and caps it at `PAGE_COUNTER_MAX` pages, which v2 shows as "max" and v1 as
    /// that many bytes (9223372036854771712 with 4 KiB pages): so any value from there up,
    /// 2^64-1 included, is no limit.
    pub fn memory(self, l: Limit) -> Limit {
        match l {
            Limit::Max => Limit::Max,
            Limit::Value(v) if v / self.0 >= self.max_pages() => Limit::Max,
            Limit::Value(v) => Limit::Value(self.floor(v)),
        }
    }

    /// What a v1 memory file shows for `l` (no limit as the byte count of the page cap).
    pub fn v1_bytes(self, l: Limit) -> u64 {
        match self.memory(l) {
            Limit::Max => self.max_pages() * self.0,
            Limit::Value(v) => v,
        }
    }
}

/// The kernel's answer to each value tenantd writes, per setting, for reconcile to compare
/// what the kernel holds with what tenantd would write. Each function maps a wanted value to
/// the value the kernel then shows, and is the identity on values the kernel shows.
pub mod normal {
    use crate::domain::plan::{IoMax, Limit};
    use crate::domain::tenant::DevId;
    use std::collections::BTreeMap;

    /// `CGROUP_WEIGHT_MIN` and `_MAX` (cgroup-v2.rst, "Weights"): cpu.weight and io.weight
    /// take 1-10000.
    pub fn weight(w: u32) -> u32 {
        w.clamp(1, 10_000)
    }

    /// `PIDS_MAX` (kernel/cgroup/pids.c) is `PID_MAX_LIMIT + 1` (4 Mi + 1 on 64-bit): pids.max
    /// shows it as "max" and refuses a number from it up, which no process count reaches.
    pub const PIDS_MAX: u64 = 4 * 1024 * 1024 + 1;

    /// pids.max: a number from `PIDS_MAX` up is no limit.
    pub fn pids(l: Limit) -> Limit {
        match l {
            Limit::Value(v) if v >= PIDS_MAX => Limit::Max,
            l => l,
        }
    }

    /// io.max and blkio.throttle.*_bps_device: U64_MAX bytes/s is no limit (block/blk-throttle.c).
    pub fn bps(l: Limit) -> Limit {
        match l {
            Limit::Value(u64::MAX) => Limit::Max,
            l => l,
        }
    }

    /// io.max and blkio.throttle.*_iops_device: IOs/s are an unsigned int, a larger value is
    /// stored as UINT_MAX, and UINT_MAX is no limit (block/blk-throttle.c).
    pub fn iops(l: Limit) -> Limit {
        match l {
            Limit::Value(v) if v >= u64::from(u32::MAX) => Limit::Max,
            l => l,
        }
    }

    /// One device's throttle limits as the kernel holds them.
    pub fn io_max(m: &IoMax) -> IoMax {
        IoMax {
            device: m.device,
            rbps: bps(m.rbps),
            wbps: bps(m.wbps),
            riops: iops(m.riops),
            wiops: iops(m.wiops),
        }
    }

    /// Throttle limits by device as the kernel lists them: a device whose every limit is no
    /// limit has no entry (io.max shows no line for it, v1 files none either).
    pub fn io_max_by_device(v: &[IoMax]) -> BTreeMap<DevId, IoMax> {
        v.iter()
            .map(io_max)
            .filter(|m| {
                (m.rbps, m.wbps, m.riops, m.wiops)
                    != (Limit::Max, Limit::Max, Limit::Max, Limit::Max)
            })
            .map(|m| (m.device, m))
            .collect()
    }
}

/// Removes a tenant's directory and its leaf, if present (rmdir: the kernel refuses a cgroup
/// that still has processes or children).
pub(crate) fn remove_dir_and_leaf(path: &Path) -> Result<()> {
    for p in [path.join(LEAF), path.to_path_buf()] {
        match std::fs::remove_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CgroupError::Dir {
                    op: "remove",
                    path: p,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A whole block device as sysfs lists it.
pub(crate) struct SysBlock {
    pub device: DevId,
    pub name: String,
    /// The active IO scheduler (the bracketed one in queue/scheduler).
    pub scheduler: Option<String>,
}

/// The block devices under `<sys>/block`, loop and ram devices left out.
pub(crate) fn sys_block_devices(sys: &Path) -> Vec<SysBlock> {
    let Ok(rd) = std::fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            let device = DevId::parse(std::fs::read_to_string(e.path().join("dev")).ok()?.trim())?;
            let scheduler = std::fs::read_to_string(e.path().join("queue/scheduler"))
                .ok()
                .and_then(|s| {
                    s.split_ascii_whitespace()
                        .find(|w| w.starts_with('['))
                        .map(|w| w.trim_matches(['[', ']']).to_string())
                });
            Some(SysBlock {
                device,
                name,
                scheduler,
            })
        })
        .collect()
}

/// The cgroup v2 path of a process, from /proc/PID/cgroup ("0::/a/b").
pub fn v2_path_of_pid(proc_root: &Path, pid: u32) -> io::Result<Option<String>> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let lines = v1_parse::proc_cgroup(&std::fs::read(&path)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(lines
        .into_iter()
        .find(|l| l.id == 0 && l.controllers.is_empty())
        .map(|l| l.path))
}

/// A cgroup2 directory's id: its inode number, which is the cgroup's 64-bit id (kernfs uses
/// the id as the inode number), what `socket cgroupv2` rules hold. A new cgroup at the same
/// path has a new id.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })
}

/// The cgroup2 mount `dir` is below (the deepest such mount point), from
/// `<proc_root>/self/mountinfo`: its mount point and its root inside the hierarchy
/// (mountinfo's fourth field), which together give a directory's depth in the hierarchy.
pub fn v2_mount_of(proc_root: &Path, dir: &Path) -> Result<Option<(PathBuf, String)>> {
    let path = proc_root.join("self/mountinfo");
    let mi = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    let mounts =
        v1_parse::cgroup_mounts(&mi).map_err(|source| CgroupError::Parse { path, source })?;
    Ok(mounts
        .into_iter()
        .filter(|m| m.v2 && dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .map(|m| (m.mount_point, m.root)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_values_as_the_kernel_holds_them() {
        let (p4, p64) = (PageSize::new(4096), PageSize::new(65536));
        // No limit: the page cap and anything above it, 2^64-1 included.
        for p in [p4, p64] {
            assert_eq!(p.memory(Limit::Max), Limit::Max);
            assert_eq!(p.memory(Limit::Value(u64::MAX)), Limit::Max);
            assert_eq!(p.memory(Limit::Value(p.v1_bytes(Limit::Max))), Limit::Max);
            assert_eq!(p.memory(Limit::Value(i64::MAX as u64)), Limit::Max);
        }
        // What v1 shows for no limit (captured: tests/fixtures/cgroupfs/v1-host-*/).
        assert_eq!(p4.v1_bytes(Limit::Max), 9_223_372_036_854_771_712);
        assert_eq!(p64.v1_bytes(Limit::Max), 9_223_372_036_854_710_272);
        // One page below the cap is a limit.
        let below = 9_223_372_036_854_771_712 - 4096;
        assert_eq!(p4.memory(Limit::Value(below)), Limit::Value(below));
        assert_eq!(p4.memory(Limit::Value(below + 4095)), Limit::Value(below));
        // Page-unaligned values round down; the minimum is 0.
        assert_eq!(
            p4.memory(Limit::Value((100 << 20) + 123)),
            Limit::Value(100 << 20)
        );
        assert_eq!(p4.memory(Limit::Value(4095)), Limit::Value(0));
        assert_eq!(p4.memory(Limit::Value(0)), Limit::Value(0));
        assert_eq!(p4.v1_bytes(Limit::Value(4097)), 4096);
        // The identity on what the kernel shows: normalising twice changes nothing.
        for v in [0, 1, 4095, 4096, (1 << 30) + 1, below, u64::MAX] {
            let once = p4.memory(Limit::Value(v));
            assert_eq!(p4.memory(once), once, "{v}");
        }
    }

    #[test]
    fn pids_io_and_weights_as_the_kernel_holds_them() {
        use normal::*;
        assert_eq!(pids(Limit::Value(0)), Limit::Value(0));
        assert_eq!(pids(Limit::Value(PIDS_MAX - 1)), Limit::Value(4_194_304));
        assert_eq!(pids(Limit::Value(PIDS_MAX)), Limit::Max);
        assert_eq!(pids(Limit::Value(u64::MAX)), Limit::Max);
        assert_eq!(pids(Limit::Max), Limit::Max);
        assert_eq!(bps(Limit::Value(u64::MAX)), Limit::Max);
        assert_eq!(bps(Limit::Value(u64::MAX - 1)), Limit::Value(u64::MAX - 1));
        assert_eq!(bps(Limit::Value(1)), Limit::Value(1));
        assert_eq!(iops(Limit::Value(u32::MAX as u64)), Limit::Max);
        assert_eq!(iops(Limit::Value(u64::MAX)), Limit::Max);
        assert_eq!(
            iops(Limit::Value(u32::MAX as u64 - 1)),
            Limit::Value(4_294_967_294)
        );
        assert_eq!(weight(0), 1);
        assert_eq!(weight(1), 1);
        assert_eq!(weight(10_000), 10_000);
        assert_eq!(weight(u32::MAX), 10_000);
        let dev = DevId { major: 8, minor: 0 };
        let unlimited = crate::domain::plan::IoMax {
            device: dev,
            rbps: Limit::Value(u64::MAX),
            wbps: Limit::Max,
            riops: Limit::Value(u64::MAX),
            wiops: Limit::Value(u32::MAX as u64),
        };
        assert!(
            io_max_by_device(&[unlimited]).is_empty(),
            "the kernel lists no line for a device without limits"
        );
        let one = crate::domain::plan::IoMax {
            wiops: Limit::Value(100),
            ..unlimited
        };
        let got = io_max_by_device(&[one]);
        assert_eq!(got[&dev].rbps, Limit::Max);
        assert_eq!(got[&dev].wiops, Limit::Value(100));
    }

    #[test]
    fn paths_refuse_escapes() {
        assert!(CgroupPath::parse("a/b/_procs").is_ok());
        for bad in ["/etc", "a/../b", "..", "a/./b", "a/b c", "a/\u{e9}"] {
            assert!(CgroupPath::parse(bad).is_err(), "{bad}");
        }
        let p = CgroupPath::parse("a/b").unwrap();
        assert_eq!(
            p.leaf().under(Path::new("/r")),
            PathBuf::from("/r/a/b/_procs")
        );
        assert_eq!(p.to_string(), "/a/b");
    }

    /// The cgroup2 mount of a directory, from mountinfo captured on a v2 VM and a hybrid host.
    #[test]
    fn the_cgroup2_mount_of_a_directory() {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroupfs");
        let proc = std::env::temp_dir().join(format!("tenantd-v2-mount-{}", std::process::id()));
        std::fs::create_dir_all(proc.join("self")).unwrap();
        for (from, dir, want) in [
            (
                "6.1.0-56-amd64/proc-self-mountinfo",
                "/sys/fs/cgroup/tenantd/acme",
                Some(("/sys/fs/cgroup", "/")),
            ),
            (
                "v1-host-6.18.44-fc-v657/proc/self-mountinfo",
                "/sys/fs/cgroup/unified/x",
                Some(("/sys/fs/cgroup/unified", "/")),
            ),
            (
                "v1-host-6.18.44-fc-v657/proc/self-mountinfo",
                "/sys/fs/cgroup/cpu/x",
                None,
            ),
        ] {
            std::fs::copy(fx.join(from), proc.join("self/mountinfo")).unwrap();
            let got = v2_mount_of(&proc, Path::new(dir)).unwrap();
            let want = want.map(|(m, r)| (PathBuf::from(m), r.to_string()));
            assert_eq!(got, want, "{from}: {dir}");
        }
        std::fs::remove_dir_all(&proc).unwrap();
    }

    fn hybrid() -> HostMounts {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cgroupfs/v1-host-6.18.44-fc-v657/proc"
        );
        let mi = std::fs::read_to_string(format!("{dir}/self-mountinfo")).unwrap();
        let cg = std::fs::read_to_string(format!("{dir}/self-cgroup")).unwrap();
        HostMounts {
            // /sys/fs/cgroup is a tmpfs on this host; its cgroup2 mount is /sys/fs/cgroup/unified.
            v2_controllers: None,
            v1: v1::V1Hierarchies::from_proc(&mi, &cg).unwrap(),
        }
    }

    #[test]
    fn issue_7_hybrid_host_chooses_v1() {
        let mount = Path::new("/sys/fs/cgroup");
        let h = hybrid();
        assert!(matches!(
            choose(CgroupVersion::Auto, &h, mount).unwrap(),
            Detected::V1(_)
        ));
        assert!(matches!(
            choose(CgroupVersion::V1, &h, mount).unwrap(),
            Detected::V1(_)
        ));
        let e = choose(CgroupVersion::V2, &h, mount)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no cgroup2 filesystem is mounted at /sys/fs/cgroup"),
            "{e}"
        );
        // Pointing the mount at the controller-less unified hierarchy does not make it usable.
        let unified = HostMounts {
            v2_controllers: Some(vec![]),
            ..hybrid()
        };
        let e = choose(
            CgroupVersion::V2,
            &unified,
            Path::new("/sys/fs/cgroup/unified"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not cpu and memory"), "{e}");
        assert!(matches!(
            choose(CgroupVersion::Auto, &unified, mount).unwrap(),
            Detected::V1(_)
        ));
    }

    #[test]
    fn pure_v2_host_chooses_v2() {
        let v2 = HostMounts {
            v2_controllers: Some(
                ["cpuset", "cpu", "io", "memory", "pids"]
                    .map(String::from)
                    .to_vec(),
            ),
            v1: v1::V1Hierarchies::default(),
        };
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            choose(CgroupVersion::Auto, &v2, mount).unwrap(),
            Detected::V2
        );
        let e = choose(CgroupVersion::V1, &v2, mount)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no cgroup v1 hierarchy is mounted for cpu and memory"),
            "{e}"
        );
        let none = HostMounts::default();
        assert!(choose(CgroupVersion::Auto, &none, mount).is_err());
    }
}
