//! The only code that touches cgroupfs. Synchronous; every backend takes its root as an
//! argument, so tests can point it at any directory of a real cgroup v2 mount.
//!
//! Layout under the governor's root `R` (cgroup-v2.rst, "No Internal Process Constraint"):
//! `R/_tenantd` holds the daemon, `R/<a>/<b>` is tenant `b` whose parent is `a`, and
//! every tenant's processes live in its leaf `R/<a>/<b>/_procs`. Names starting with `_`
//! cannot be tenant names, so they never collide.

pub mod parse;
pub mod stats;
pub mod v2;

use crate::domain::plan::Settings;
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

    /// True when the cgroup or process went away under us (ENOENT, ENODEV, ESRCH).
    pub fn is_gone(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH))
    }
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// One value the kernel held that differed from the plan, and was rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub file: String,
    pub was: String,
    pub now: String,
}

/// What the host's cgroup setup can do, for /v1/host and for refusing what it cannot.
#[derive(Debug, Clone, Serialize)]
pub struct HostCgroup {
    /// "v2" or "v1".
    pub version: &'static str,
    pub root: PathBuf,
    /// Controllers usable for tenants (enabled in the root's parent).
    pub controllers: Vec<String>,
    /// Controllers tenantd needs but cannot use here.
    pub missing: Vec<String>,
    pub psi: bool,
    pub kill: bool,
    pub devices: Vec<BlockDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockDevice {
    pub device: DevId,
    pub name: String,
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
    fn apply(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>>;
    /// Reads the values the kernel holds now.
    fn read(&self, dir: &CgroupPath) -> Result<Settings>;
    /// PIDs directly in `dir`.
    fn procs(&self, dir: &CgroupPath) -> Result<Vec<u32>>;
    /// Whether any process lives in `dir` or below.
    fn populated(&self, dir: &CgroupPath) -> Result<bool>;
    /// Moves `pid` into `dir`.
    fn attach(&self, dir: &CgroupPath, pid: u32) -> Result<()>;
    /// Kills every process in `dir` and below (cgroup.kill), and waits for them to go.
    fn kill(&self, dir: &CgroupPath) -> Result<()>;
    /// Removes the empty directory `dir` (its leaf first, if any).
    fn remove(&self, dir: &CgroupPath) -> Result<()>;
    /// Names of the child directories of `dir`.
    fn children(&self, dir: &CgroupPath) -> Result<Vec<String>>;
    fn exists(&self, dir: &CgroupPath) -> bool;
    /// The absolute directory of `dir`, for messages and for the usage sampler.
    fn path_of(&self, dir: &CgroupPath) -> PathBuf;
}

/// The cgroup v2 path of a process, from /proc/PID/cgroup ("0::/a/b").
pub fn v2_path_of_pid(proc_root: &Path, pid: u32) -> io::Result<Option<String>> {
    let s = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_refuse_escapes() {
        assert!(CgroupPath::parse("a/b/_procs").is_ok());
        for bad in ["/etc", "a/../b", "..", "a/./b", "a/b c", "a/\u{e9}"] {
            assert!(CgroupPath::parse(bad).is_err(), "{bad}");
        }
        let p = CgroupPath::parse("a/b").unwrap();
        assert_eq!(p.leaf().under(Path::new("/r")), PathBuf::from("/r/a/b/_procs"));
        assert_eq!(p.to_string(), "/a/b");
    }
}
