//! The cgroup v2 backend: one unified hierarchy, files as documented in
//! Documentation/admin-guide/cgroup-v2.rst.

use super::parse;
use super::{
    Backend, BlockDevice, CgroupError, CgroupPath, Change, DAEMON_LEAF, HostCgroup, LEAF, Result,
    optional, parsed, read_file, write_file,
};
use crate::domain::plan::{IoMax, Limit, Settings};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Controllers tenantd delegates to tenants.
pub const WANTED: [&str; 4] = ["cpu", "memory", "io", "pids"];

/// A cgroup v2 hierarchy. `mount` is the cgroup2 mount point (where io.cost.qos lives),
/// `root` the governor's root below it, `sys` the sysfs mount (for block devices).
#[derive(Debug, Clone)]
pub struct V2 {
    mount: PathBuf,
    root: PathBuf,
    sys: PathBuf,
    page: super::PageSize,
}

impl V2 {
    pub fn new(
        mount: impl Into<PathBuf>,
        root: impl Into<PathBuf>,
        sys: impl Into<PathBuf>,
    ) -> Self {
        V2 {
            mount: mount.into(),
            root: root.into(),
            sys: sys.into(),
            page: super::PageSize::of_host(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn enable_controllers(&self, dir: &Path) -> Result<()> {
        let available = parse::controllers(&read_file(&dir.join("cgroup.controllers"))?);
        let enabled = parse::controllers(&read_file(&dir.join("cgroup.subtree_control"))?);
        let missing: Vec<String> = WANTED
            .iter()
            .filter(|c| available.iter().any(|a| a == *c) && !enabled.iter().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write_file(&dir.join("cgroup.subtree_control"), &missing.join(" "))?;
        }
        Ok(())
    }

    fn block_devices(&self) -> Vec<BlockDevice> {
        let iocost = fs::read_to_string(self.mount.join("io.cost.qos"))
            .ok()
            .and_then(|s| parse::iocost_enabled(&s).ok());
        let mut out = Vec::new();
        for super::SysBlock {
            device,
            name,
            scheduler,
        } in super::sys_block_devices(&self.sys)
        {
            let (eff, why) = match (&iocost, scheduler.as_deref()) {
                (Some(devs), _) if devs.contains(&device) => (true, "iocost is enabled in io.cost.qos".to_string()),
                (_, Some("bfq")) => (true, "the device uses the BFQ scheduler (io.bfq.weight)".to_string()),
                (None, _) => (false, "io.cost.qos is absent (kernel without CONFIG_BLK_CGROUP_IOCOST or not a v2 root): io.weight has no effect".to_string()),
                (Some(_), s) => (
                    false,
                    format!(
                        "iocost is not enabled for {device} and the scheduler is {}: io.weight has no effect; enable it with 'echo \"{device} enable=1\" > {}'",
                        s.unwrap_or("unknown"),
                        self.mount.join("io.cost.qos").display()
                    ),
                ),
            };
            out.push(BlockDevice {
                device,
                name,
                scheduler,
                io_weight_effective: eff,
                io_weight_reason: why,
            });
        }
        out.sort_by_key(|d| d.device);
        out
    }
}

fn limit_text(l: Limit) -> String {
    l.to_string()
}

fn io_line(m: &IoMax) -> String {
    format!(
        "{} rbps={} wbps={} riops={} wiops={}",
        m.device, m.rbps, m.wbps, m.riops, m.wiops
    )
}

impl Backend for V2 {
    fn host(&self) -> Result<HostCgroup> {
        // Controllers a tenant can get are those the root's parent hands down to the root.
        let probe = if self.root.join("cgroup.controllers").exists() {
            self.root.clone()
        } else {
            self.root.parent().unwrap_or(&self.mount).to_path_buf()
        };
        let controllers = match fs::read_to_string(probe.join("cgroup.controllers")) {
            Ok(s) => parse::controllers(&s),
            Err(_) => Vec::new(),
        };
        let missing = WANTED
            .iter()
            .filter(|c| !controllers.iter().any(|a| a == *c))
            .map(|c| c.to_string())
            .collect();
        Ok(HostCgroup {
            version: "v2",
            root: self.root.clone(),
            controllers,
            missing,
            psi: probe.join("cpu.pressure").exists() || self.mount.join("cpu.pressure").exists(),
            kill: probe.join("cgroup.kill").exists(),
            devices: self.block_devices(),
        })
    }

    fn prepare_root(&self) -> Result<()> {
        if let Some(parent) = self.root.parent()
            && parent != self.mount
            && !parent.join("cgroup.controllers").exists()
        {
            return Err(CgroupError::Unsupported {
                what: format!("cgroup root {}", self.root.display()),
                why: format!(
                    "{} is not a cgroup v2 directory: create it or choose another --cgroup-root",
                    parent.display()
                ),
            });
        }
        super::mkdir(&self.root)?;
        super::mkdir(&self.root.join(DAEMON_LEAF))?;
        Ok(())
    }

    fn ensure(&self, dir: &CgroupPath, leaf: bool) -> Result<bool> {
        let path = dir.under(&self.root);
        let mut created = super::mkdir(&path)?;
        self.enable_controllers(&path)?;
        if leaf {
            created |= super::mkdir(&path.join(LEAF))?;
        }
        Ok(created)
    }

    fn apply(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>> {
        let path = dir.under(&self.root);
        let have = self.read(dir)?;
        let mut changes = Vec::new();
        let mut put = |file: &str, was: String, now: String| -> Result<()> {
            let p = path.join(file);
            if !p.exists() {
                return Err(CgroupError::Unsupported {
                    what: format!("{file} for {}", path.display()),
                    why: "its controller is not enabled for this cgroup (see GET /v1/host)".into(),
                });
            }
            write_file(&p, &now)?;
            changes.push(Change {
                file: file.to_string(),
                was,
                now,
            });
            Ok(())
        };
        if have.cpu_weight != want.cpu_weight {
            put(
                "cpu.weight",
                have.cpu_weight.to_string(),
                want.cpu_weight.to_string(),
            )?;
        }
        if (have.cpu_max_quota_us, have.cpu_max_period_us)
            != (want.cpu_max_quota_us, want.cpu_max_period_us)
        {
            put(
                "cpu.max",
                format!("{} {}", have.cpu_max_quota_us, have.cpu_max_period_us),
                format!("{} {}", want.cpu_max_quota_us, want.cpu_max_period_us),
            )?;
        }
        for (file, h, w) in [
            (
                "memory.min",
                have.memory_min_bytes,
                self.page.floor(want.memory_min_bytes),
            ),
            (
                "memory.low",
                have.memory_low_bytes,
                self.page.floor(want.memory_low_bytes),
            ),
        ] {
            if h != w {
                put(file, h.to_string(), w.to_string())?;
            }
        }
        for (file, h, w) in [
            (
                "memory.high",
                have.memory_high_bytes,
                self.page.floor_limit(want.memory_high_bytes),
            ),
            (
                "memory.max",
                have.memory_max_bytes,
                self.page.floor_limit(want.memory_max_bytes),
            ),
            (
                "memory.swap.max",
                have.memory_swap_max_bytes,
                self.page.floor_limit(want.memory_swap_max_bytes),
            ),
        ] {
            if h != w {
                put(file, limit_text(h), limit_text(w))?;
            }
        }
        if have.io_weight != want.io_weight {
            put(
                "io.weight",
                format!("default {}", have.io_weight),
                format!("default {}", want.io_weight),
            )?;
        }
        // io.max: write each wanted line that differs, and reset devices no longer limited.
        for w in &want.io_max {
            let h = have.io_max.iter().find(|h| h.device == w.device);
            if h != Some(w) {
                put("io.max", h.map(io_line).unwrap_or_default(), io_line(w))?;
            }
        }
        for h in have
            .io_max
            .iter()
            .filter(|h| !want.io_max.iter().any(|w| w.device == h.device))
        {
            let reset = IoMax {
                device: h.device,
                rbps: Limit::Max,
                wbps: Limit::Max,
                riops: Limit::Max,
                wiops: Limit::Max,
            };
            put("io.max", io_line(h), io_line(&reset))?;
        }
        if have.pids_max != want.pids_max {
            put(
                "pids.max",
                limit_text(have.pids_max),
                limit_text(want.pids_max),
            )?;
        }
        Ok(changes)
    }

    fn read(&self, dir: &CgroupPath) -> Result<Settings> {
        let p = dir.under(&self.root);
        if !p.is_dir() {
            return Err(CgroupError::Dir {
                op: "find",
                path: p,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        let d = Settings::default();
        let (q, period) = optional(&p.join("cpu.max"), parse::cpu_max)?
            .unwrap_or((d.cpu_max_quota_us, d.cpu_max_period_us));
        Ok(Settings {
            cpu_weight: optional(&p.join("cpu.weight"), parse::weight)?.unwrap_or(d.cpu_weight),
            cpu_max_quota_us: q,
            cpu_max_period_us: period,
            memory_min_bytes: optional(&p.join("memory.min"), parse::single_u64)?.unwrap_or(0),
            memory_low_bytes: optional(&p.join("memory.low"), parse::single_u64)?.unwrap_or(0),
            memory_high_bytes: optional(&p.join("memory.high"), parse::limit)?
                .unwrap_or(Limit::Max),
            memory_max_bytes: optional(&p.join("memory.max"), parse::limit)?.unwrap_or(Limit::Max),
            memory_swap_max_bytes: optional(&p.join("memory.swap.max"), parse::limit)?
                .unwrap_or(Limit::Max),
            io_weight: optional(&p.join("io.weight"), parse::weight)?.unwrap_or(d.io_weight),
            io_max: optional(&p.join("io.max"), parse::io_max)?
                .unwrap_or_default()
                .into_iter()
                .filter(|m| {
                    (m.rbps, m.wbps, m.riops, m.wiops)
                        != (Limit::Max, Limit::Max, Limit::Max, Limit::Max)
                })
                .collect(),
            pids_max: optional(&p.join("pids.max"), parse::limit)?.unwrap_or(Limit::Max),
        })
    }

    fn procs(&self, dir: &CgroupPath) -> Result<Vec<u32>> {
        parsed(&dir.under(&self.root).join("cgroup.procs"), parse::pids)
    }

    fn populated(&self, dir: &CgroupPath) -> Result<bool> {
        let ev = parsed(
            &dir.under(&self.root).join("cgroup.events"),
            parse::flat_keyed,
        )?;
        Ok(ev.get("populated").copied().unwrap_or(0) == 1)
    }

    fn subtree_procs(&self, dir: &CgroupPath) -> Result<Vec<u32>> {
        fn walk(p: &Path, out: &mut Vec<u32>) -> Result<()> {
            match optional(&p.join("cgroup.procs"), parse::pids)? {
                Some(v) => out.extend(v),
                None => return Ok(()),
            }
            let Ok(rd) = fs::read_dir(p) else {
                return Ok(());
            };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&dir.under(&self.root), &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn attach(&self, dir: &CgroupPath, pid: u32) -> Result<()> {
        write_file(
            &dir.under(&self.root).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    fn kill(&self, dir: &CgroupPath) -> Result<()> {
        let path = dir.under(&self.root);
        let kill = path.join("cgroup.kill");
        if !kill.exists() {
            return Err(CgroupError::Unsupported {
                what: "cgroup.kill".into(),
                why: "the kernel is older than 5.14".into(),
            });
        }
        write_file(&kill, "1")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.populated(dir)? {
            if Instant::now() > deadline {
                return Err(CgroupError::Dir {
                    op: "empty (processes survived cgroup.kill for 10 s)",
                    path,
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn remove(&self, dir: &CgroupPath) -> Result<()> {
        super::remove_dir_and_leaf(&dir.under(&self.root))
    }

    fn children(&self, dir: &CgroupPath) -> Result<Vec<String>> {
        let path = dir.under(&self.root);
        let rd = fs::read_dir(&path).map_err(|source| CgroupError::Dir {
            op: "list",
            path: path.clone(),
            source,
        })?;
        let mut out: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        out.sort();
        Ok(out)
    }

    fn exists(&self, dir: &CgroupPath) -> bool {
        dir.under(&self.root).is_dir()
    }

    fn path_of(&self, dir: &CgroupPath) -> PathBuf {
        dir.under(&self.root)
    }
}
