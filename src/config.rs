//! Configuration: a TOML file, then `TENANTD_*` environment variables, then flags, merged
//! into one validated `Config`. Validation needs no syscalls; paths are resolved at start.
//!
//! Layer 3, beside `api` (see `lib.rs`): the daemon's start-up input, read by `cli::serve`
//! only. It builds the settings of the layers below (`domain::sla_engine::SlaConfig`,
//! `store::Retention`), so it imports them; it never imports `api` or `cli`, and no layer
//! below imports it: they take their settings as arguments.

use crate::cgroup::CgroupVersion;
use crate::domain::units::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default admin API address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
pub const DEFAULT_DB: &str = "/var/lib/tenantd/tenantd.db";
pub const DEFAULT_CGROUP_MOUNT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The config file's shape; every key optional. Durations in seconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub cgroup_mount: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    /// "auto" (default), "v2" or "v1".
    pub cgroup_version: Option<CgroupVersion>,
    pub token_file: Option<PathBuf>,
    pub reconcile_interval_s: Option<f64>,
    /// Seconds between rescans of /proc for the tenants' placement rules [10].
    pub placement_rescan_s: Option<f64>,
    /// Place processes at exec and at uid/gid changes from the kernel's process events (the
    /// netlink proc connector) [true]; the rescan runs either way.
    pub process_events: Option<bool>,
    pub best_effort_weight: Option<u32>,
    pub memory_reserve_bytes: Option<Bytes>,
    pub daemon_cpu_weight: Option<u32>,
    pub daemon_memory_min_bytes: Option<Bytes>,
    pub move_self: Option<bool>,
    pub request_timeout_s: Option<f64>,
    pub max_body_bytes: Option<Bytes>,
    /// Seconds a client has to send a request head, idle keep-alive wait included [10].
    pub header_read_timeout_s: Option<f64>,
    /// Seconds a connection may stay open with no request in flight [60].
    pub idle_timeout_s: Option<f64>,
    /// HTTP connections served at once [512, lowered to what the descriptor limit allows].
    pub max_connections: Option<usize>,
    /// Seconds between usage samples [default 1].
    pub sample_interval_s: Option<f64>,
    /// How long raw usage samples are kept, in hours [default 48].
    pub usage_raw_retention_h: Option<f64>,
    /// How long per-minute usage rollups are kept, in days [default 30].
    pub usage_minute_retention_d: Option<f64>,
    /// How long per-hour usage rollups are kept, in days [default 400].
    pub usage_hour_retention_d: Option<f64>,
    /// cpu.pressure `some` fraction (0..1) from which a tenant counts as contended [0.1].
    pub sla_contention_threshold: Option<f64>,
    /// Percentage points below the guarantee that are tolerated [2].
    pub sla_tolerance_pp: Option<f64>,
    /// Consecutive contended intervals below the guarantee before a violation opens [3].
    pub sla_min_intervals: Option<u32>,
    /// Adaptive enforcement: raise the root's cpu.weight while tenants are below [false].
    pub sla_adaptive: Option<bool>,
    /// The highest cpu.weight adaptive enforcement may give the root [10000].
    pub sla_adaptive_max_weight: Option<u32>,
    /// Cgroups (paths as /proc/PID/cgroup shows them) whose processes, and those of the cgroups
    /// below, are never moved into a tenant [init's own cgroup, and /init.scope under systemd].
    pub protected_cgroups: Option<Vec<String>>,
    /// What is logged: a `tracing` filter such as `info` or `info,tenantd::engine=debug`
    /// [info]. Reloaded on SIGHUP.
    pub log_level: Option<String>,
    /// How log lines are written to stderr: `text` or `json` (one object a line) [text].
    pub log_format: Option<LogFormat>,
    /// The fleet store (issue 19): `postgres://USER@HOST/DB`. Unset: this host runs alone.
    pub store: Option<String>,
    /// This node's name in the fleet [the hostname].
    pub node: Option<String>,
    /// This node's labels, which tenants' `nodes` selectors match.
    pub node_labels: Option<BTreeMap<String, String>>,
    /// Seconds without a heartbeat after which a node is shown as down [30].
    pub node_timeout_s: Option<f64>,
}

/// The keys a reload (SIGHUP) applies; every other key takes effect at the next start.
pub const RELOADABLE_KEYS: &[&str] = &["log_level"];

/// How log lines are written: plain text (ANSI colours only when stderr is a terminal), or
/// one JSON object per line for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The validated configuration of `tenantd serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// The cgroup2 mount point.
    pub cgroup_mount: PathBuf,
    /// The governor's own root: every tenant lives below it. On cgroup v1 a configured root is
    /// the path inside every hierarchy (`/tenantd` is `/sys/fs/cgroup/cpu/tenantd`, ...).
    pub cgroup_root: PathBuf,
    /// Which cgroup version to drive; `auto` detects it at start.
    pub cgroup_version: CgroupVersion,
    pub token_file: Option<PathBuf>,
    pub reconcile_interval: Duration,
    /// Between rescans of /proc for the placement rules.
    pub placement_rescan: Duration,
    /// Listen to the kernel's process events for the placement rules.
    pub process_events: bool,
    pub best_effort_weight: u32,
    pub memory_reserve_bytes: u64,
    pub daemon_cpu_weight: u32,
    pub daemon_memory_min_bytes: u64,
    /// Move the daemon into `<root>/_tenantd` at start.
    pub move_self: bool,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// The configured cap; `None` means the default (512), which `serve` may lower quietly to
    /// fit the descriptor limit (a configured cap that does not fit is lowered with a warning).
    pub max_connections: Option<usize>,
    pub sample_interval: Duration,
    pub usage_retention: crate::store::Retention,
    pub sla: crate::domain::sla_engine::SlaConfig,
    /// Protected cgroups as configured; `None` is the default, read from /proc/1 at start
    /// (`engine::policy::default_protected_cgroups`).
    pub protected_cgroups: Option<Vec<String>>,
    /// A validated `tracing` filter.
    pub log_level: String,
    pub log_format: LogFormat,
    /// The fleet this node belongs to; `None`: this host runs alone.
    pub fleet: Option<FleetConfig>,
}

/// A node's fleet settings (`store`, `node`, `node_labels`, `node_timeout_s`).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    pub store: String,
    /// `None`: the hostname, read at start.
    pub node: Option<String>,
    pub node_labels: BTreeMap<String, String>,
    pub node_timeout: Duration,
}

/// A node name: 1-63 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit.
pub fn check_node_name(n: &str) -> Result<(), ConfigError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field: "node",
        message: format!(
            "'{}' is not a node name: use 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
            n.chars().take(80).collect::<String>()
        ),
    })
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        Ok(FileConfig::load_with_keys(path)?.0)
    }

    /// The file, and its keys as written (for `changed_keys` on a reload).
    pub fn load_with_keys(path: &Path) -> Result<(FileConfig, toml::Table), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        };
        let file = toml::from_str(&text).map_err(parse_error)?;
        let keys = toml::from_str(&text).map_err(parse_error)?;
        Ok((file, keys))
    }

    /// Fills unset keys from `other` (lower precedence).
    pub fn or(self, other: FileConfig) -> FileConfig {
        FileConfig {
            listen: self.listen.or(other.listen),
            db: self.db.or(other.db),
            cgroup_mount: self.cgroup_mount.or(other.cgroup_mount),
            cgroup_root: self.cgroup_root.or(other.cgroup_root),
            cgroup_version: self.cgroup_version.or(other.cgroup_version),
            token_file: self.token_file.or(other.token_file),
            reconcile_interval_s: self.reconcile_interval_s.or(other.reconcile_interval_s),
            placement_rescan_s: self.placement_rescan_s.or(other.placement_rescan_s),
            process_events: self.process_events.or(other.process_events),
            best_effort_weight: self.best_effort_weight.or(other.best_effort_weight),
            memory_reserve_bytes: self.memory_reserve_bytes.or(other.memory_reserve_bytes),
            daemon_cpu_weight: self.daemon_cpu_weight.or(other.daemon_cpu_weight),
            daemon_memory_min_bytes: self
                .daemon_memory_min_bytes
                .or(other.daemon_memory_min_bytes),
            move_self: self.move_self.or(other.move_self),
            request_timeout_s: self.request_timeout_s.or(other.request_timeout_s),
            max_body_bytes: self.max_body_bytes.or(other.max_body_bytes),
            header_read_timeout_s: self.header_read_timeout_s.or(other.header_read_timeout_s),
            idle_timeout_s: self.idle_timeout_s.or(other.idle_timeout_s),
            max_connections: self.max_connections.or(other.max_connections),
            sample_interval_s: self.sample_interval_s.or(other.sample_interval_s),
            usage_raw_retention_h: self.usage_raw_retention_h.or(other.usage_raw_retention_h),
            usage_minute_retention_d: self
                .usage_minute_retention_d
                .or(other.usage_minute_retention_d),
            usage_hour_retention_d: self.usage_hour_retention_d.or(other.usage_hour_retention_d),
            sla_contention_threshold: self
                .sla_contention_threshold
                .or(other.sla_contention_threshold),
            sla_tolerance_pp: self.sla_tolerance_pp.or(other.sla_tolerance_pp),
            sla_min_intervals: self.sla_min_intervals.or(other.sla_min_intervals),
            sla_adaptive: self.sla_adaptive.or(other.sla_adaptive),
            sla_adaptive_max_weight: self
                .sla_adaptive_max_weight
                .or(other.sla_adaptive_max_weight),
            protected_cgroups: self.protected_cgroups.or(other.protected_cgroups),
            log_level: self.log_level.or(other.log_level),
            log_format: self.log_format.or(other.log_format),
            store: self.store.or(other.store),
            node: self.node.or(other.node),
            node_labels: self.node_labels.or(other.node_labels),
            node_timeout_s: self.node_timeout_s.or(other.node_timeout_s),
        }
    }

    /// Validates and applies defaults. `default_root` is where tenants go when no root is
    /// configured (the delegated subtree the daemon runs in, or `<mount>/tenantd`).
    pub fn resolve(
        self,
        default_root: impl FnOnce(&Path) -> PathBuf,
    ) -> Result<Config, ConfigError> {
        let listen_s = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_s.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            message: format!(
                "'{listen_s}' is not an address: use IP:PORT such as {DEFAULT_LISTEN}"
            ),
        })?;
        if self.token_file.is_none() && !listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                field: "listen",
                message: format!(
                    "{listen} is not a loopback address and no token file is set: set --token-file, or listen on 127.0.0.1"
                ),
            });
        }
        let secs = |field: &'static str,
                    v: Option<f64>,
                    default: f64,
                    min: f64|
         -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !(v.is_finite() && v >= min && v <= 86_400.0) {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("{v} s is out of range: use {min} to 86400 seconds"),
                });
            }
            Ok(Duration::from_secs_f64(v))
        };
        let weight =
            |field: &'static str, v: Option<u32>, default: u32| -> Result<u32, ConfigError> {
                let v = v.unwrap_or(default);
                if !(1..=10_000).contains(&v) {
                    return Err(ConfigError::Invalid {
                        field,
                        message: format!("{v} is out of range: cgroup weights are 1 to 10000"),
                    });
                }
                Ok(v)
            };
        let mount = self
            .cgroup_mount
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_MOUNT));
        let root = match self.cgroup_root {
            Some(r) => r,
            None => default_root(&mount),
        };
        if !root.is_absolute() {
            return Err(ConfigError::Invalid {
                field: "cgroup_root",
                message: format!("'{}' must be an absolute path", root.display()),
            });
        }
        if root
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ConfigError::Invalid {
                field: "cgroup_root",
                message: format!("'{}' may not contain '..'", root.display()),
            });
        }
        let keep = |field: &'static str,
                    v: Option<f64>,
                    default: f64,
                    unit_ms: f64|
         -> Result<i64, ConfigError> {
            let v = v.unwrap_or(default);
            if !(v.is_finite() && v > 0.0 && v <= 36_500.0) {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("{v} is out of range: use a positive number up to 36500"),
                });
            }
            Ok((v * unit_ms) as i64)
        };
        let threshold = self.sla_contention_threshold.unwrap_or(0.10);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ConfigError::Invalid {
                field: "sla_contention_threshold",
                message: format!(
                    "{threshold} is out of range: use a fraction above 0 and at most 1"
                ),
            });
        }
        let tolerance = self.sla_tolerance_pp.unwrap_or(2.0);
        if !(0.0..=100.0).contains(&tolerance) {
            return Err(ConfigError::Invalid {
                field: "sla_tolerance_pp",
                message: format!("{tolerance} is out of range: use 0 to 100 percentage points"),
            });
        }
        let sla = crate::domain::sla_engine::SlaConfig {
            params: crate::domain::sla::SlaParams {
                contention_threshold: threshold,
                tolerance_pp: tolerance,
                min_intervals: self.sla_min_intervals.unwrap_or(3).max(1),
            },
            adaptive: self.sla_adaptive.unwrap_or(false),
            adaptive_max_weight: weight(
                "sla_adaptive_max_weight",
                self.sla_adaptive_max_weight,
                10_000,
            )?,
        };
        let usage_retention = crate::store::Retention {
            raw_ms: keep(
                "usage_raw_retention_h",
                self.usage_raw_retention_h,
                48.0,
                3_600_000.0,
            )?,
            minute_ms: keep(
                "usage_minute_retention_d",
                self.usage_minute_retention_d,
                30.0,
                86_400_000.0,
            )?,
            hour_ms: keep(
                "usage_hour_retention_d",
                self.usage_hour_retention_d,
                400.0,
                86_400_000.0,
            )?,
        };
        let protected_cgroups = match self.protected_cgroups {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|p| protected_cgroup(p))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid {
                field: "max_connections",
                message: "0 connections would serve nobody: use 1 or more (default 512)".into(),
            });
        }
        let log_level = self.log_level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError::Invalid {
                field: "log_level",
                message: format!(
                    "'{log_level}' is not a log filter ({e}): use a level such as info or debug, or 'info,tenantd::engine=debug'"
                ),
            });
        }
        let node_timeout = secs("node_timeout_s", self.node_timeout_s, 30.0, 1.0)?;
        let fleet = match self.store {
            None => {
                if self.node.is_some() || self.node_labels.is_some() {
                    return Err(ConfigError::Invalid {
                        field: "store",
                        message: "node and node_labels need a fleet store: set store (--store postgres://USER@HOST/DB)".into(),
                    });
                }
                None
            }
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(ConfigError::Invalid {
                        field: "store",
                        message: "the fleet store is a PostgreSQL URL: postgres://USER@HOST/DB"
                            .into(),
                    });
                }
                if let Some(n) = &self.node {
                    check_node_name(n)?;
                }
                let node_labels = self.node_labels.unwrap_or_default();
                crate::domain::tenant::check_labels("node_labels", &node_labels).map_err(|e| {
                    ConfigError::Invalid {
                        field: "node_labels",
                        message: e.to_string(),
                    }
                })?;
                Some(FleetConfig {
                    store: url,
                    node: self.node,
                    node_labels,
                    node_timeout,
                })
            }
        };
        Ok(Config {
            fleet,
            log_level,
            log_format: self.log_format.unwrap_or_default(),
            protected_cgroups,
            header_read_timeout: secs(
                "header_read_timeout_s",
                self.header_read_timeout_s,
                10.0,
                0.1,
            )?,
            idle_timeout: secs("idle_timeout_s", self.idle_timeout_s, 60.0, 0.1)?,
            max_connections: self.max_connections,
            sample_interval: secs("sample_interval_s", self.sample_interval_s, 1.0, 0.1)?,
            usage_retention,
            sla,
            listen,
            db: self.db.unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            cgroup_mount: mount,
            cgroup_root: root,
            cgroup_version: self.cgroup_version.unwrap_or_default(),
            token_file: self.token_file,
            reconcile_interval: secs("reconcile_interval_s", self.reconcile_interval_s, 30.0, 0.1)?,
            placement_rescan: secs("placement_rescan_s", self.placement_rescan_s, 10.0, 0.1)?,
            process_events: self.process_events.unwrap_or(true),
            best_effort_weight: weight("best_effort_weight", self.best_effort_weight, 1)?,
            memory_reserve_bytes: self.memory_reserve_bytes.map(|b| b.0).unwrap_or(512 << 20),
            daemon_cpu_weight: weight("daemon_cpu_weight", self.daemon_cpu_weight, 500)?,
            daemon_memory_min_bytes: self
                .daemon_memory_min_bytes
                .map(|b| b.0)
                .unwrap_or(64 << 20),
            move_self: self.move_self.unwrap_or(true),
            request_timeout: secs("request_timeout_s", self.request_timeout_s, 30.0, 0.1)?,
            max_body_bytes: self.max_body_bytes.map(|b| b.0 as usize).unwrap_or(1 << 20),
        })
    }
}

/// The keys whose values differ between two versions of a config file (added, removed or
/// changed), in name order.
pub fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// One `protected_cgroups` entry: an absolute cgroup path (trailing '/' dropped), not the
/// root (every process is below it) and without '.' or '..' segments.
fn protected_cgroup(p: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        field: "protected_cgroups",
        message: format!("'{p}' {why}"),
    };
    if !p.starts_with('/') {
        return Err(bad(
            "is not an absolute cgroup path: write it as /proc/PID/cgroup shows it, e.g. /init.scope",
        ));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad(
            "is the root cgroup, which holds every process: list the cgroups to protect instead",
        ));
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("has an empty, '.' or '..' segment"));
    }
    Ok(trimmed.to_string())
}

/// Where tenants go by default: if this process sits in a delegated v2 subtree (systemd
/// `Delegate=yes` makes the unit's cgroup writable by it), that subtree; else `<mount>/tenantd`.
/// Started in the subtree's daemon leaf already (systemd 254's `DelegateSubgroup=_tenantd`,
/// which the shipped unit sets), the subtree is the leaf's parent.
pub fn default_root(mount: &Path, own_v2_path: Option<&str>) -> PathBuf {
    if let Some(p) = own_v2_path {
        let p = p
            .strip_suffix(&format!("/{}", crate::cgroup::DAEMON_LEAF))
            .unwrap_or(p);
        let rel = p.trim_start_matches('/');
        let here = mount.join(rel);
        let delegated = !rel.is_empty()
            && rel.ends_with(".service")
            && std::fs::metadata(here.join("cgroup.subtree_control"))
                .map(|m| !m.permissions().readonly())
                .unwrap_or(false)
            && here.join("cgroup.controllers").exists();
        if delegated {
            return here;
        }
    }
    mount.join("tenantd")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(_: &Path) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup/tenantd")
    }

    /// The unit's delegated cgroup is the root whether the daemon starts in it (systemd 252)
    /// or in its `_tenantd` subgroup (`DelegateSubgroup=_tenantd`, systemd 254); any other
    /// cgroup is not delegated to it. (A directory stands in for the mount: this is path logic.)
    #[test]
    fn the_delegated_unit_cgroup_is_the_default_root() {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("system.slice/tenantd.service");
        std::fs::create_dir_all(unit.join("_tenantd")).unwrap();
        for f in ["cgroup.subtree_control", "cgroup.controllers"] {
            std::fs::write(unit.join(f), "").unwrap();
        }
        let m = dir.path();
        let own = "/system.slice/tenantd.service";
        assert_eq!(default_root(m, Some(own)), unit);
        assert_eq!(default_root(m, Some(&format!("{own}/_tenantd"))), unit);
        assert_eq!(default_root(m, Some("/user.slice")), m.join("tenantd"));
        assert_eq!(default_root(m, None), m.join("tenantd"));
    }

    #[test]
    fn defaults_work_with_no_configuration() {
        let c = FileConfig::default().resolve(root).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.db, PathBuf::from(DEFAULT_DB));
        assert_eq!(c.best_effort_weight, 1);
        assert_eq!(c.cgroup_version, CgroupVersion::Auto);
    }

    #[test]
    fn cgroup_version_from_the_file() {
        let f: FileConfig = toml::from_str("cgroup_version = 'v1'").unwrap();
        assert_eq!(f.resolve(root).unwrap().cgroup_version, CgroupVersion::V1);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = FileConfig {
            listen: Some("127.0.0.1:1".into()),
            db: Some("/f.db".into()),
            ..Default::default()
        };
        let env = FileConfig {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let flags = FileConfig {
            db: Some("/flag.db".into()),
            ..Default::default()
        };
        let c = flags.or(env).or(file).resolve(root).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.db, PathBuf::from("/flag.db"));
    }

    #[test]
    fn usage_sampling_and_retention_keys() {
        let c = FileConfig::default().resolve(root).unwrap();
        assert_eq!(c.sample_interval, Duration::from_secs(1));
        assert_eq!(c.usage_retention, crate::store::Retention::default());
        let f: FileConfig =
            toml::from_str("sample_interval_s = 10\nusage_raw_retention_h = 6").unwrap();
        let c = f.resolve(root).unwrap();
        assert_eq!(c.sample_interval, Duration::from_secs(10));
        assert_eq!(c.usage_retention.raw_ms, 6 * 3_600_000);
        let e = FileConfig {
            sample_interval_s: Some(0.0),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(e.to_string().starts_with("sample_interval_s:"), "{e}");
        let e = FileConfig {
            usage_hour_retention_d: Some(-1.0),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(e.to_string().starts_with("usage_hour_retention_d:"), "{e}");
    }

    #[test]
    fn protected_cgroups_default_and_validation() {
        assert_eq!(
            FileConfig::default()
                .resolve(root)
                .unwrap()
                .protected_cgroups,
            None
        );
        let f: FileConfig =
            toml::from_str("protected_cgroups = ['/init.scope', '/system.slice/sshd.service/']")
                .unwrap();
        assert_eq!(
            f.resolve(root).unwrap().protected_cgroups,
            Some(vec![
                "/init.scope".to_string(),
                "/system.slice/sshd.service".to_string()
            ])
        );
        let f: FileConfig = toml::from_str("protected_cgroups = []").unwrap();
        assert_eq!(f.resolve(root).unwrap().protected_cgroups, Some(vec![]));
        for bad in ["/", "init.scope", "/a/../b", "//a"] {
            let e = FileConfig {
                protected_cgroups: Some(vec![bad.into()]),
                ..Default::default()
            }
            .resolve(root)
            .unwrap_err();
            assert!(
                e.to_string().starts_with("protected_cgroups: '"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = FileConfig {
            listen: Some("0.0.0.0:80".into()),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("listen: 0.0.0.0:80 is not a loopback address"),
            "{e}"
        );
        let e = FileConfig {
            best_effort_weight: Some(0),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(e.to_string().starts_with("best_effort_weight:"), "{e}");
        let e = FileConfig {
            cgroup_root: Some("rel".into()),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(e.to_string().starts_with("cgroup_root:"), "{e}");
        let e: Result<FileConfig, _> = toml::from_str("cgroup_version = 'v3'");
        assert!(e.unwrap_err().message().contains("unknown variant"));
        let e: Result<FileConfig, _> = toml::from_str("listen_addr = 'x'");
        assert!(e.unwrap_err().message().contains("unknown field"));
    }

    #[test]
    fn log_keys() {
        let c = FileConfig::default().resolve(root).unwrap();
        assert_eq!(
            (c.log_level.as_str(), c.log_format),
            ("info", LogFormat::Text)
        );
        let f: FileConfig =
            toml::from_str("log_level = 'info,tenantd::engine=debug'\nlog_format = 'json'")
                .unwrap();
        let c = f.resolve(root).unwrap();
        assert_eq!(c.log_level, "info,tenantd::engine=debug");
        assert_eq!(c.log_format, LogFormat::Json);
        let e = FileConfig {
            log_level: Some("tenantd=loud".into()),
            ..Default::default()
        }
        .resolve(root)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("log_level: 'tenantd=loud' is not a log filter"),
            "{e}"
        );
        let e: Result<FileConfig, _> = toml::from_str("log_format = 'xml'");
        assert!(e.unwrap_err().message().contains("unknown variant"));
    }

    #[test]
    fn changed_keys_names_added_removed_and_changed_keys() {
        let old: toml::Table =
            toml::from_str("log_level = 'info'\nlisten = '127.0.0.1:1'\ndb = '/a'").unwrap();
        let new: toml::Table =
            toml::from_str("log_level = 'debug'\nlisten = '127.0.0.1:1'\nmove_self = false")
                .unwrap();
        assert_eq!(changed_keys(&old, &new), ["db", "log_level", "move_self"]);
        assert!(changed_keys(&new, &new).is_empty());
    }

    #[test]
    fn connection_keys() {
        let c = FileConfig::default().resolve(root).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, None);
        let f: FileConfig = toml::from_str(
            "header_read_timeout_s = 2.5\nidle_timeout_s = 5\nmax_connections = 64\n",
        )
        .unwrap();
        let c = f.resolve(root).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, Some(64));
        for (key, f) in [
            (
                "max_connections",
                FileConfig {
                    max_connections: Some(0),
                    ..Default::default()
                },
            ),
            (
                "idle_timeout_s",
                FileConfig {
                    idle_timeout_s: Some(-1.0),
                    ..Default::default()
                },
            ),
            (
                "header_read_timeout_s",
                FileConfig {
                    header_read_timeout_s: Some(f64::NAN),
                    ..Default::default()
                },
            ),
        ] {
            let e = f.resolve(root).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{key}:")), "{e}");
        }
    }

    /// The commented default config the package installs as /etc/tenantd/tenantd.toml.
    const SHIPPED: &str = include_str!("../packaging/tenantd.toml");

    /// The shipped file's commented-out `#key = value` lines, uncommented.
    fn shipped_keys_uncommented() -> (String, Vec<String>) {
        let mut text = String::new();
        let mut keys = Vec::new();
        for line in SHIPPED.lines() {
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            if let Some((key, _)) = rest.split_once(" = ")
                && !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                keys.push(key.to_string());
                text.push_str(rest);
                text.push('\n');
            }
        }
        (text, keys)
    }

    #[test]
    fn fleet_keys() {
        let none = FileConfig::default().resolve(root).unwrap();
        assert_eq!(none.fleet, None, "no store: a single host");
        let f = FileConfig {
            store: Some("postgres://tenantd@127.0.0.1/fleet".into()),
            node_labels: Some(BTreeMap::from([("role".into(), "web".into())])),
            ..Default::default()
        }
        .resolve(root)
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(f.node, None, "the hostname, read at start");
        assert_eq!(f.node_timeout, Duration::from_secs(30));
        assert_eq!(f.node_labels["role"], "web");
        let bad = |f: FileConfig| f.resolve(root).unwrap_err().to_string();
        let store = || Some("postgres://h/db".to_string());
        assert!(
            bad(FileConfig {
                store: Some("mysql://h/db".into()),
                ..Default::default()
            })
            .starts_with("store: ")
        );
        assert!(
            bad(FileConfig {
                node: Some("n1".into()),
                ..Default::default()
            })
            .starts_with("store: ")
        );
        assert!(
            bad(FileConfig {
                store: store(),
                node: Some("../x".into()),
                ..Default::default()
            })
            .starts_with("node: ")
        );
        assert!(
            bad(FileConfig {
                store: store(),
                node_labels: Some(BTreeMap::from([("-x".into(), "y".into())])),
                ..Default::default()
            })
            .starts_with("node_labels: ")
        );
        assert!(
            bad(FileConfig {
                store: store(),
                node_timeout_s: Some(0.5),
                ..Default::default()
            })
            .starts_with("node_timeout_s: ")
        );
    }

    #[test]
    fn the_shipped_config_file_parses_and_shows_the_defaults() {
        // As shipped (everything commented out) it is the default configuration.
        let f: FileConfig = toml::from_str(SHIPPED).unwrap();
        let want = format!("{:?}", FileConfig::default().resolve(root).unwrap());
        assert_eq!(format!("{:?}", f.resolve(root).unwrap()), want);
        // Every key is there, once, and the values shown are the defaults: uncommented, the
        // file gives the same configuration (but for the three keys whose default is "unset",
        // which show an example, and max_connections, whose default 512 is lowered quietly
        // to fit the open-file limit where a configured 512 is lowered with a warning).
        let (text, keys) = shipped_keys_uncommented();
        let mut f: FileConfig = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("the shipped keys, uncommented: {}", e.message()));
        assert_eq!(f.cgroup_root.take(), Some("/sys/fs/cgroup/tenantd".into()));
        assert_eq!(f.token_file.take(), Some("/etc/tenantd/tokens".into()));
        assert_eq!(f.protected_cgroups.take(), Some(vec!["/init.scope".into()]));
        assert_eq!(f.max_connections.take(), Some(512));
        assert_eq!(
            f.store.take(),
            Some("postgres://tenantd@db.example/fleet".into())
        );
        assert_eq!(f.node.take(), Some("web-1".into()));
        assert_eq!(
            f.node_labels.take(),
            Some(BTreeMap::from([("role".into(), "web".into())]))
        );
        assert_eq!(format!("{:?}", f.resolve(root).unwrap()), want);
        // serde names every field it knows when it refuses an unknown one.
        let e = toml::from_str::<FileConfig>("no_such_key = 1").unwrap_err();
        let known: Vec<&str> = e.message().split('`').skip(3).step_by(2).collect();
        assert!(known.len() > 20, "{}", e.message());
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "a key shown twice: {keys:?}");
        for k in known {
            assert!(
                keys.iter().any(|s| s == k),
                "packaging/tenantd.toml does not show the key {k}"
            );
        }
    }
}
