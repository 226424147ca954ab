//! The cgroup v2 backend: one unified hierarchy, files as documented in
//! Documentation/admin-guide/cgroup-v2.rst.

use super::parse;
use super::v1_parse;
use super::{
    Backend, BlockDevice, CgroupError, CgroupPath, Change, DAEMON_LEAF, HostCgroup, LEAF, Result,
    normal, optional, parsed, read_file, settle_value, write_file,
};
use crate::domain::plan::{IoMax, Limit, Settings};
use crate::domain::tenant::DevId;
use std::collections::BTreeMap;
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
    /// Compares every value of `want` with the kernel's and returns each that differs, in
    /// the order `apply` writes them; writes them when `write` (else only reads: `drift`).
    fn settle(&self, dir: &CgroupPath, want: &Settings, write: bool) -> Result<Vec<Change>> {
        let path = dir.under(&self.root);
        let have = self.held(dir)?;
        // Every field of `Held` by name (no `..`): a new one does not build until it is
        // compared and written below.
        let Held {
            cpu_weight,
            cpu_max,
            memory_min,
            memory_low,
            memory_high,
            memory_max,
            memory_swap_max,
            io_weight,
            io_max,
            pids_max,
        } = self.wanted(want);
        let mut changes = Vec::new();
        let mut put = |file: &str, was: String, now: String| -> Result<()> {
            let p = path.join(file);
            if !p.exists() {
                return Err(CgroupError::Unsupported {
                    what: format!("{file} for {}", path.display()),
                    why: "its controller is not enabled for this cgroup (see GET /v1/host)".into(),
                });
            }
            settle_value(&mut changes, &p, write, file, was, now)
        };
        if have.cpu_weight != cpu_weight {
            put(
                "cpu.weight",
                have.cpu_weight.to_string(),
                cpu_weight.to_string(),
            )?;
        }
        if have.cpu_max != cpu_max {
            put("cpu.max", cpu_max_text(have.cpu_max), cpu_max_text(cpu_max))?;
        }
        for (file, h, w) in [
            ("memory.min", have.memory_min, memory_min),
            ("memory.low", have.memory_low, memory_low),
            ("memory.high", have.memory_high, memory_high),
            ("memory.max", have.memory_max, memory_max),
            ("memory.swap.max", have.memory_swap_max, memory_swap_max),
        ] {
            if h != w {
                put(file, limit_text(h), limit_text(w))?;
            }
        }
        if have.io_weight.default != io_weight.default {
            put(
                "io.weight",
                format!("default {}", have.io_weight.default),
                format!("default {}", io_weight.default),
            )?;
        }
        // Per-device weights tenantd never sets: "MAJ:MIN default" removes one.
        for (d, w) in &have.io_weight.devices {
            if io_weight.devices.get(d) != Some(w) {
                put("io.weight", format!("{d} {w}"), format!("{d} default"))?;
            }
        }
        // io.max: write each wanted line that differs, and reset devices no longer limited.
        for (d, w) in &io_max {
            let h = have.io_max.get(d);
            if h != Some(w) {
                put("io.max", h.map(io_line).unwrap_or_default(), io_line(w))?;
            }
        }
        for h in have
            .io_max
            .values()
            .filter(|h| !io_max.contains_key(&h.device))
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
        if have.pids_max != pids_max {
            put("pids.max", limit_text(have.pids_max), limit_text(pids_max))?;
        }
        Ok(changes)
    }

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

/// A directory's values in the form the kernel holds them: `V2::held` reads them,
/// `V2::wanted` maps what tenantd wants onto them (`super::normal`), and `apply` writes a
/// file iff the two differ, so a value is corrected exactly when it drifted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    cpu_weight: u32,
    /// cpu.max: (quota, period).
    cpu_max: (Limit, u64),
    memory_min: Limit,
    memory_low: Limit,
    memory_high: Limit,
    memory_max: Limit,
    memory_swap_max: Limit,
    io_weight: parse::IoWeight,
    io_max: BTreeMap<DevId, IoMax>,
    pids_max: Limit,
}

impl V2 {
    /// What the kernel holds in `dir`; a file that does not exist (its controller is not
    /// enabled) counts as the kernel's default.
    fn held(&self, dir: &CgroupPath) -> Result<Held> {
        let p = dir.under(&self.root);
        super::require_dir(&p)?;
        let d = Settings::default();
        let memory = |file: &str| -> Result<Limit> {
            Ok(self
                .page
                .memory(optional(&p.join(file), parse::limit)?.unwrap_or(Limit::Max)))
        };
        Ok(Held {
            cpu_weight: optional(&p.join("cpu.weight"), parse::weight)?.unwrap_or(d.cpu_weight),
            cpu_max: optional(&p.join("cpu.max"), parse::cpu_max)?
                .unwrap_or((d.cpu_max_quota_us, d.cpu_max_period_us)),
            memory_min: self
                .page
                .memory(optional(&p.join("memory.min"), parse::limit)?.unwrap_or(Limit::Value(0))),
            memory_low: self
                .page
                .memory(optional(&p.join("memory.low"), parse::limit)?.unwrap_or(Limit::Value(0))),
            memory_high: memory("memory.high")?,
            memory_max: memory("memory.max")?,
            memory_swap_max: memory("memory.swap.max")?,
            io_weight: optional(&p.join("io.weight"), parse::io_weight)?.unwrap_or(
                parse::IoWeight {
                    default: d.io_weight,
                    devices: BTreeMap::new(),
                },
            ),
            io_max: normal::io_max_by_device(
                &optional(&p.join("io.max"), parse::io_max)?.unwrap_or_default(),
            ),
            pids_max: normal::pids(
                optional(&p.join("pids.max"), parse::limit)?.unwrap_or(Limit::Max),
            ),
        })
    }

    /// `want` as the kernel will hold it once written. Takes every field of `Settings` by
    /// name (no `..`), so a new setting does not build until it is mapped here.
    fn wanted(&self, want: &Settings) -> Held {
        let Settings {
            cpu_weight,
            cpu_max_quota_us,
            cpu_max_period_us,
            memory_min_bytes,
            memory_low_bytes,
            memory_high_bytes,
            memory_max_bytes,
            memory_swap_max_bytes,
            io_weight,
            io_max,
            pids_max,
        } = want;
        let m = |l: Limit| self.page.memory(l);
        Held {
            cpu_weight: normal::weight(*cpu_weight),
            cpu_max: (*cpu_max_quota_us, *cpu_max_period_us),
            memory_min: m(Limit::Value(*memory_min_bytes)),
            memory_low: m(Limit::Value(*memory_low_bytes)),
            memory_high: m(*memory_high_bytes),
            memory_max: m(*memory_max_bytes),
            memory_swap_max: m(*memory_swap_max_bytes),
            io_weight: parse::IoWeight {
                default: normal::weight(*io_weight),
                devices: BTreeMap::new(),
            },
            io_max: normal::io_max_by_device(io_max),
            pids_max: normal::pids(*pids_max),
        }
    }
}

fn cpu_max_text((quota, period): (Limit, u64)) -> String {
    format!("{quota} {period}")
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
            version: "v2".into(),
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
        self.settle(dir, want, true)
    }

    fn drift(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>> {
        self.settle(dir, want, false)
    }

    fn read(&self, dir: &CgroupPath) -> Result<Settings> {
        let h = self.held(dir)?;
        let bytes = |l: Limit| l.value().unwrap_or_else(|| self.page.v1_bytes(Limit::Max));
        Ok(Settings {
            cpu_weight: h.cpu_weight,
            cpu_max_quota_us: h.cpu_max.0,
            cpu_max_period_us: h.cpu_max.1,
            // "max" protection as the bytes the kernel holds for it (no sentinel of our own).
            memory_min_bytes: bytes(h.memory_min),
            memory_low_bytes: bytes(h.memory_low),
            memory_high_bytes: h.memory_high,
            memory_max_bytes: h.memory_max,
            memory_swap_max_bytes: h.memory_swap_max,
            io_weight: h.io_weight.default,
            io_max: h.io_max.into_values().collect(),
            pids_max: h.pids_max,
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
        let mut out = Vec::new();
        super::pids_below(&dir.under(&self.root), &mut out)?;
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

    fn dirs(&self, dir: &CgroupPath) -> Vec<PathBuf> {
        vec![dir.under(&self.root)]
    }

    fn locate(&self, proc_root: &Path, pid: u32) -> Result<Vec<PathBuf>> {
        let path = proc_root.join(pid.to_string()).join("cgroup");
        let text = read_file(&path)?;
        let lines = v1_parse::proc_cgroup(&text).map_err(|source| CgroupError::Parse {
            path: path.clone(),
            source,
        })?;
        let rel = lines
            .iter()
            .find(|l| l.id == 0 && l.controllers.is_empty())
            .map(|l| l.path.as_str())
            .ok_or_else(|| CgroupError::Parse {
                path: path.clone(),
                source: parse::ParseError(format!(
                    "expected a '0::PATH' line, found '{}'",
                    text.trim()
                )),
            })?;
        Ok(vec![self.mount.join(rel.trim_start_matches('/'))])
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
