//! Whether a process sits in a cgroup another manager delegated (systemd's `Delegate=yes`),
//! for the placement rules: such a process is reported, not moved, unless its rule says
//! `override_delegated`.
//!
//! systemd marks the cgroup of a unit with `Delegate=yes` with the extended attribute
//! `trusted.delegate` (system manager) or `user.delegate` (user manager) set to "1", on its
//! own hierarchy: the cgroup2 mount on a unified host, the `name=systemd` v1 hierarchy on a
//! hybrid or legacy one (systemd.resource-control(5), "Delegate="; docs/CGROUP_DELEGATION.md).
//! A process is in a delegated subtree when its cgroup or one of its ancestors carries it.
//! Reading `trusted.*` needs CAP_SYS_ADMIN; without it only `user.delegate` is seen.

use super::v1_parse::{CgroupMount, ProcCgroup};
use std::path::{Path, PathBuf};

/// The extended attributes systemd sets on a delegated unit's cgroup.
pub const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// The hierarchies systemd marks delegation on: the cgroup2 mount and `name=systemd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelegationCheck {
    /// Where the cgroup2 hierarchy is mounted (its root inside the hierarchy, its mount point).
    v2: Option<(String, PathBuf)>,
    /// Where the `name=systemd` v1 hierarchy is mounted.
    systemd: Option<(String, PathBuf)>,
}

impl DelegationCheck {
    /// From the text of /proc/self/mountinfo: the first cgroup2 mount and the `name=systemd`
    /// hierarchy, when mounted (`v1_parse::cgroup_mounts` reads the mounts; the `name=` option
    /// it leaves out of the controllers is read here from the same lines).
    pub fn from_mountinfo(mi: &str) -> DelegationCheck {
        let Ok(mounts) = super::v1_parse::cgroup_mounts(mi) else {
            return DelegationCheck::default();
        };
        // The cgroup lines in the order `cgroup_mounts` returns them.
        let named_systemd = mi
            .lines()
            .filter_map(|l| l.split_once(" - ").map(|(_, r)| r))
            .filter(|r| r.starts_with("cgroup ") || r.starts_with("cgroup2 "))
            .map(|r| {
                r.split_ascii_whitespace()
                    .nth(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "name=systemd"))
            });
        let at = |m: &CgroupMount| (m.root.clone(), m.mount_point.clone());
        DelegationCheck {
            v2: mounts.iter().find(|m| m.v2).map(at),
            systemd: mounts
                .iter()
                .zip(named_systemd)
                .find(|(m, named)| !m.v2 && *named)
                .map(|(m, _)| at(m)),
        }
    }

    /// Reads `<proc_root>/self/mountinfo`; no hierarchy when it cannot be read.
    pub fn detect(proc_root: &Path) -> DelegationCheck {
        std::fs::read_to_string(proc_root.join("self/mountinfo"))
            .map(|mi| DelegationCheck::from_mountinfo(&mi))
            .unwrap_or_default()
    }

    /// The directories of a process's cgroup on systemd's hierarchies, from its
    /// /proc/PID/cgroup lines; a path outside a mount's root is left out.
    pub fn dirs(&self, lines: &[ProcCgroup]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for l in lines {
            let mount = if l.id == 0 && l.controllers.is_empty() {
                &self.v2
            } else if l.controllers.iter().any(|c| c == "name=systemd") {
                &self.systemd
            } else {
                continue;
            };
            let Some((root, point)) = mount else { continue };
            let rel = if root == "/" {
                Some(l.path.as_str())
            } else {
                l.path
                    .strip_prefix(root.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))
            };
            if let Some(rel) = rel {
                out.push(point.join(rel.trim_start_matches('/')));
            }
        }
        out
    }

    /// The delegated cgroup (the directory with the mark) that holds `lines`'s process, if
    /// any; `stop` is never reported nor walked above (the daemon's own subtree, which
    /// systemd delegated to tenantd itself).
    pub fn delegated(&self, lines: &[ProcCgroup], stop: &[PathBuf]) -> Option<PathBuf> {
        self.dirs(lines)
            .into_iter()
            .find_map(|d| marked_at_or_above(&d, stop))
    }
}

/// The first directory from `dir` up to its hierarchy's root (the last directory that has a
/// `cgroup.procs`) whose delegate attribute is "1"; none when the walk meets one of `stop`.
pub fn marked_at_or_above(dir: &Path, stop: &[PathBuf]) -> Option<PathBuf> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if stop.iter().any(|s| s == d) || !d.join("cgroup.procs").exists() {
            return None;
        }
        if is_marked(d) {
            return Some(d.to_path_buf());
        }
        cur = d.parent();
    }
    None
}

/// Whether `dir` carries `trusted.delegate` or `user.delegate` = "1".
pub fn is_marked(dir: &Path) -> bool {
    DELEGATE_XATTRS.iter().any(|name| {
        let mut buf = [0u8; 8];
        matches!(rustix::fs::getxattr(dir, *name, &mut buf[..]), Ok(n) if buf[..n].trim_ascii() == b"1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<ProcCgroup> {
        super::super::v1_parse::proc_cgroup(text).unwrap()
    }

    #[test]
    fn dirs_on_unified_and_hybrid_hosts() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let c = DelegationCheck::from_mountinfo(mi);
        let l = lines(
            "4:memory:/a\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n",
        );
        assert_eq!(
            c.dirs(&l),
            vec![
                PathBuf::from("/sys/fs/cgroup/systemd/system.slice/x.service"),
                PathBuf::from("/sys/fs/cgroup/unified/system.slice/x.service"),
            ]
        );
        let unified = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let c = DelegationCheck::from_mountinfo(unified);
        assert_eq!(
            c.dirs(&lines("0::/user.slice\n")),
            vec![PathBuf::from("/sys/fs/cgroup/user.slice")]
        );
        // A bind mount of a subtree: paths outside its root have no directory here.
        let bound = "30 23 0:27 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let c = DelegationCheck::from_mountinfo(bound);
        assert_eq!(
            c.dirs(&lines("0::/ctr/a\n")),
            vec![PathBuf::from("/sys/fs/cgroup/a")]
        );
        assert!(c.dirs(&lines("0::/other\n")).is_empty());
    }

    /// A directory without `cgroup.procs` ends the walk (a scratch directory is no cgroup),
    /// and so does a stop directory.
    #[test]
    fn the_walk_stays_inside_the_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("cgroup.procs"), "").unwrap();
        assert_eq!(marked_at_or_above(&deep, &[]), None);
        assert_eq!(marked_at_or_above(&deep, std::slice::from_ref(&deep)), None);
        // user.* attributes can be set on a tmpfs or ext4 file by its owner.
        if rustix::fs::setxattr(
            d.path().join("a/b").as_path(),
            "user.delegate",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
        {
            assert_eq!(marked_at_or_above(&deep, &[]), Some(deep.clone()));
            assert!(is_marked(&deep));
        } else {
            eprintln!("this filesystem takes no user.* xattrs: only the walk was checked");
        }
    }
}
