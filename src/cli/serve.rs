//! `tenantd serve`: load the configuration, open the store, take the cgroup root, reconcile,
//! serve the API and reconcile periodically until SIGINT or SIGTERM; SIGHUP reloads what can
//! change without a restart (`reload`). Under systemd it reports its state (`systemd`).

use super::logging;
use super::reload::Reloader;
use super::systemd::{self, Notifier};
use crate::api::{self, AppState, auth::Tokens};
use crate::cgroup::v1::V1;
use crate::cgroup::v2::V2;
use crate::cgroup::{Backend, CgroupVersion, Detected, HostMounts, choose};
use crate::config::{DEFAULT_CGROUP_MOUNT, FileConfig, LogFormat, default_root};
use crate::domain::plan::PlanParams;
use crate::domain::tenant::Capacity;
use crate::engine::autoplace::Placer;
use crate::engine::fleet::{Fleet, NodeConfig};
use crate::engine::sampler::{Sampler, SamplerConfig};
use crate::engine::{EngineConfig, Governor};
use crate::metrics::Metrics;
use crate::store::fleet::FleetStore;
use crate::store::{NewEvent, Store};
use anyhow::{Context, Result};
use clap::Args;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (default /etc/tenantd/tenantd.toml if it exists).
    #[arg(long, env = "TENANTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the admin API [default 127.0.0.1:7878].
    #[arg(long, env = "TENANTD_LISTEN")]
    pub listen: Option<String>,
    /// SQLite database file [default /var/lib/tenantd/tenantd.db].
    #[arg(long, env = "TENANTD_DB")]
    pub db: Option<PathBuf>,
    /// The governor's cgroup root [default: the delegated subtree, else /sys/fs/cgroup/tenantd].
    #[arg(long, env = "TENANTD_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// The cgroup2 mount point [default /sys/fs/cgroup].
    #[arg(long, env = "TENANTD_CGROUP_MOUNT")]
    pub cgroup_mount: Option<PathBuf>,
    /// Cgroup version to drive: auto (v2 when the cgroup2 mount has cpu and memory, else the
    /// v1 hierarchies), v2 or v1 [default auto].
    #[arg(long, env = "TENANTD_CGROUP_VERSION", value_enum)]
    pub cgroup_version: Option<CgroupVersion>,
    /// Token file: lines 'NAME admin|viewer TOKEN'. Without it the API is loopback-only.
    #[arg(long, env = "TENANTD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds between reconcile passes [default 30].
    #[arg(long, env = "TENANTD_RECONCILE_INTERVAL_S")]
    pub reconcile_interval_s: Option<f64>,
    /// Seconds between usage samples [default 1].
    #[arg(long, env = "TENANTD_SAMPLE_INTERVAL_S")]
    pub sample_interval_s: Option<f64>,
    /// Seconds between rescans of /proc for the placement rules [default 10].
    #[arg(long, env = "TENANTD_PLACEMENT_RESCAN_S")]
    pub placement_rescan_s: Option<f64>,
    /// Do not listen to the kernel's process events (netlink proc connector): the placement
    /// rules then place processes at the rescan only.
    #[arg(long)]
    pub no_process_events: bool,
    /// Do not move the daemon into <root>/_tenantd (tests; not for production).
    #[arg(long)]
    pub no_move_self: bool,
    /// Adaptive SLA enforcement: raise the root's cpu.weight while tenants are below their guarantee.
    #[arg(long, env = "TENANTD_SLA_ADAPTIVE")]
    pub sla_adaptive: bool,
    /// Percentage points below the guarantee that are tolerated [default 2].
    #[arg(long, env = "TENANTD_SLA_TOLERANCE_PP")]
    pub sla_tolerance_pp: Option<f64>,
    /// What is logged: a level (error, warn, info, debug, trace) or a tracing filter such as
    /// 'info,tenantd::engine=debug' [default info].
    #[arg(long, env = "TENANTD_LOG")]
    pub log_level: Option<String>,
    /// Log lines as plain text (colours only on a terminal) or one JSON object per line
    /// [default text].
    #[arg(long, env = "TENANTD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// The fleet store: postgres://USER@HOST/DB (issue 19). Unset: this host runs alone.
    #[arg(long, env = "TENANTD_STORE")]
    pub store: Option<String>,
    /// This node's name in the fleet [default: the hostname].
    #[arg(long, env = "TENANTD_NODE")]
    pub node: Option<String>,
    /// This node's labels, KEY=VALUE[,KEY=VALUE...]; tenants' `nodes` selectors match them.
    #[arg(long, env = "TENANTD_NODE_LABELS", value_parser = parse_labels)]
    pub node_labels: Option<BTreeMap<String, String>>,
    /// Seconds without a heartbeat after which a node is shown as down [default 30].
    #[arg(long, env = "TENANTD_NODE_TIMEOUT_S")]
    pub node_timeout_s: Option<f64>,
}

/// `role=web,zone=a` as labels.
fn parse_labels(s: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => Err(format!("'{kv}' is not KEY=VALUE")),
        })
        .collect()
}

impl ServeArgs {
    fn as_file_config(&self) -> FileConfig {
        FileConfig {
            listen: self.listen.clone(),
            db: self.db.clone(),
            cgroup_mount: self.cgroup_mount.clone(),
            cgroup_root: self.cgroup_root.clone(),
            cgroup_version: self.cgroup_version,
            token_file: self.token_file.clone(),
            reconcile_interval_s: self.reconcile_interval_s,
            sample_interval_s: self.sample_interval_s,
            placement_rescan_s: self.placement_rescan_s,
            process_events: self.no_process_events.then_some(false),
            move_self: self.no_move_self.then_some(false),
            sla_adaptive: self.sla_adaptive.then_some(true),
            sla_tolerance_pp: self.sla_tolerance_pp,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            store: self.store.clone(),
            node: self.node.clone(),
            node_labels: self.node_labels.clone(),
            node_timeout_s: self.node_timeout_s,
            ..Default::default()
        }
    }
}

fn host_capacity(reserve: u64) -> Result<Capacity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("/proc/meminfo has no MemTotal line")?;
    Ok(Capacity {
        cpus,
        memory_bytes: kib * 1024,
        memory_reserve_bytes: reserve,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a daemon that holds stat files for
/// thousands of tenants and serves hundreds of connections needs more than the common 1024)
/// and returns the soft limit in force.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut wanted = before;
    wanted.current = before.maximum;
    if wanted.current != before.current {
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            tracing::warn!(
                "cannot raise the open-file limit from {:?} to the hard limit {:?}: {e}",
                before.current,
                before.maximum
            );
        }
    }
    let now = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    tracing::info!(
        "open-file limit: soft {} (was {}), hard {}",
        show(now.current),
        show(before.current),
        show(now.maximum)
    );
    now.current.unwrap_or(u64::MAX)
}

/// Between two full reads of the fleet's desired state when no announcement came (the safety
/// net under LISTEN/NOTIFY).
const FLEET_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// How often `tenantd serve` gives the heap's free pages back (`launch::trim_heap`): the
/// sampler frees and reallocates some 30 MB every sweep at 10,000 tenants, so a trim after
/// every sweep would fault most of it in again each second (README "10,000 tenants on the
/// running daemon").
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Descriptors for everything but the sampler and the connections: the database pool, the
/// listener, the log, pidfds while killing, and the sampler's transient opens.
const FDS_OTHER: u64 = 128;

/// The connection cap that fits the descriptor limit, decided once at start: connections get
/// at most half of what is left after 128 other descriptors and the refusals answered at once,
/// never fewer than 16; the sampler's held stat files get the rest (`fd_reserve`), however many
/// tenants come later. `configured` is lowered to that, with a warning; the default quietly.
fn connection_cap(soft: u64, configured: Option<usize>) -> usize {
    let room = (soft
        .saturating_sub(FDS_OTHER)
        .saturating_sub(api::MAX_REFUSALS_IN_FLIGHT as u64)
        / 2)
    .max(16);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let wanted = configured.unwrap_or(api::ServeOptions::default().max_connections);
    if wanted <= room {
        return wanted;
    }
    if configured.is_some() {
        tracing::warn!(
            "max_connections {wanted} does not fit the open-file limit {soft} (half of it is kept for the sampler): serving at most {room} connections (raise LimitNOFILE)"
        );
    } else {
        tracing::info!(
            "serving at most {room} connections: the open-file limit {soft} leaves no room for {wanted} (half of it is kept for the sampler)"
        );
    }
    room
}

/// Panics are logged once through tracing, with their location; a handler's panic is then
/// answered 500 problem+json by the router's catch-panic layer.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!("panic at {at}: {msg}");
    }));
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let file_path = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("/etc/tenantd/tenantd.toml")).filter(|p| p.exists()));
    let (file, file_keys) = match &file_path {
        Some(p) => FileConfig::load_with_keys(p)?,
        None => (FileConfig::default(), toml::Table::new()),
    };
    let flags = args.as_file_config();
    let merged = flags.clone().or(file);
    // A bad filter is refused below by `resolve`, naming the key.
    let log = logging::init(
        merged.log_level.as_deref().unwrap_or("info"),
        merged.log_format.unwrap_or_default(),
    );
    log_panics();
    // Installed before anything is slow, so a SIGHUP during start-up waits for the reloader
    // instead of ending the process (its default action).
    let signal = |kind| tokio::signal::unix::signal(kind).context("cannot install signal handlers");
    let hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let notifier = Arc::new(Notifier::from_env());
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(every) = systemd::watchdog_period_from_env() {
        tracing::info!(
            "systemd watchdog: WATCHDOG=1 every {} s",
            every.as_secs_f64()
        );
        let (notifier, stop) = (notifier.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => notifier.watchdog(),
                }
            }
        });
    }
    let nofile = raise_nofile();
    let own = crate::cgroup::v2_path_of_pid(std::path::Path::new("/proc"), std::process::id())
        .ok()
        .flatten();
    let mount = merged
        .cgroup_mount
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_MOUNT));
    let version = merged.cgroup_version.unwrap_or_default();
    let mounts = HostMounts::detect(&mount, std::path::Path::new("/proc"))?;
    let detected = choose(version, &mounts, &mount)
        .context("cannot choose a cgroup backend (set cgroup_version to override)")?;
    // On v1 a configured root is the same path inside every hierarchy; the default is
    // `<the daemon's own cgroup>/tenantd` in each, so the host's accounting still covers tenants.
    let v1_roots = match &detected {
        Detected::V1(h) => Some(match &merged.cgroup_root {
            Some(r) => h.roots_at(r),
            None => h.default_roots(),
        }),
        Detected::V2 => None,
    };
    let v1_shown = v1_roots
        .as_ref()
        .and_then(|r| r.distinct().first().map(|p| p.to_path_buf()));
    let mut cfg = merged.resolve(|mount| match v1_shown {
        Some(p) => p,
        None => default_root(mount, own.as_deref()),
    })?;
    if v1_roots.is_some() && cfg.daemon_memory_min_bytes > 0 {
        tracing::warn!(
            "cgroup v1 has no memory.min: the daemon's own memory protection ({} bytes) is not applied",
            cfg.daemon_memory_min_bytes
        );
        cfg.daemon_memory_min_bytes = 0;
    }
    let tokens = match &cfg.token_file {
        Some(p) => Tokens::load(p).map_err(anyhow::Error::msg)?,
        None => {
            tracing::warn!(
                "no token file: the API accepts every local caller as admin and listens on loopback only ({})",
                cfg.listen
            );
            Tokens::open()
        }
    };
    let tokens = Arc::new(tokens);
    notifier.status("opening the database and reconciling the cgroup tree");
    let store = Store::open(&cfg.db).await?;
    let backend: Arc<dyn Backend> = match v1_roots {
        Some(roots) => {
            tracing::info!("cgroup v1 backend: roots {:?}", roots.distinct());
            Arc::new(V1::new(roots, "/sys", "/proc"))
        }
        None => Arc::new(V2::new(&cfg.cgroup_mount, &cfg.cgroup_root, "/sys")),
    };
    let gov = Governor::new(
        backend,
        store.clone(),
        EngineConfig {
            params: PlanParams {
                best_effort_weight: cfg.best_effort_weight,
                ..Default::default()
            },
            memory_reserve_bytes: cfg.memory_reserve_bytes,
            daemon_cpu_weight: cfg.daemon_cpu_weight,
            daemon_memory_min_bytes: cfg.daemon_memory_min_bytes,
            proc_root: PathBuf::from("/proc"),
            protected_cgroups: cfg.protected_cgroups.clone().unwrap_or_else(|| {
                crate::engine::policy::default_protected_cgroups(std::path::Path::new("/proc"))
            }),
            etc_dir: PathBuf::from("/etc"),
            delegation: crate::cgroup::delegate::DelegationCheck::detect(std::path::Path::new(
                "/proc",
            )),
        },
        host_capacity(cfg.memory_reserve_bytes)?,
    );
    let host = gov.host().await?;
    if !host.missing.is_empty() {
        tracing::warn!(
            "controllers missing below {}: {} (settings that need them are refused; see GET /v1/host)",
            cfg.cgroup_root.display(),
            host.missing.join(", ")
        );
    }
    let report = gov
        .start(cfg.move_self)
        .await
        .with_context(|| format!("cannot take the cgroup root {}", cfg.cgroup_root.display()))?;
    tracing::info!(
        "reconciled: {} created, {} corrected, {} unknown directories, {} errors",
        report.created.len(),
        report.corrected.len(),
        report.unknown.len(),
        report.errors.len()
    );
    let fleet = match &cfg.fleet {
        None => None,
        Some(f) => {
            let name = match &f.node {
                Some(n) => n.clone(),
                None => {
                    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .context("cannot read the hostname for the node name (set node)")?;
                    let h = h.trim().to_string();
                    crate::config::check_node_name(&h)?;
                    h
                }
            };
            let store = FleetStore::new(&f.store, std::time::Duration::from_secs(2))?;
            let fleet = Fleet::new(
                gov.clone(),
                store,
                NodeConfig {
                    name,
                    labels: f.node_labels.clone(),
                    timeout: f.node_timeout,
                    poll: FLEET_POLL,
                },
            );
            fleet
                .start()
                .await
                .with_context(|| format!("cannot join the fleet store {}", fleet.store_shown()))?;
            tasks.spawn(fleet.clone().run(shutdown.clone()));
            tasks.spawn(crate::engine::fleet_history::ship(
                fleet.clone(),
                shutdown.clone(),
            ));
            Some(fleet)
        }
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let ready_status = format!(
        "serving on http://{} (cgroup root {})",
        listener.local_addr()?,
        cfg.cgroup_root.display()
    );
    tracing::info!(
        "tenantd {} serving on http://{} (db {}, cgroup root {})",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr()?,
        cfg.db.display(),
        cfg.cgroup_root.display()
    );
    let metrics = Metrics::with_engine_counters(gov.reconcile_counters(), gov.placement_counters());
    let state = AppState {
        metrics: metrics.clone(),
        usage_retention: cfg.usage_retention,
        gov: gov.clone(),
        tokens: tokens.clone(),
        max_body_bytes: cfg.max_body_bytes,
        request_timeout: cfg.request_timeout,
        fleet,
    };
    {
        let (gov, stop, every) = (gov.clone(), shutdown.clone(), cfg.reconcile_interval);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        // The governor counts corrections and errors itself.
                        if let Err(e) = gov.reconcile().await {
                            tracing::warn!("reconcile failed: {e}");
                        }
                    }
                }
            }
        });
    }
    {
        // glibc keeps what the sweeps free in its arenas (issue 15: 30-36 MB at 10,000
        // tenants); this gives it back every TRIM_EVERY, off the async workers.
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(TRIM_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let _ = tokio::task::spawn_blocking(crate::launch::trim_heap).await;
                    }
                }
            }
        });
    }
    tasks.spawn(placement_task(
        gov.clone(),
        cfg.placement_rescan,
        cfg.process_events,
        metrics.placement_latency.clone(),
        shutdown.clone(),
    ));
    let max_connections = connection_cap(nofile, cfg.max_connections);
    {
        let sampler_cfg = SamplerConfig {
            interval: cfg.sample_interval,
            retention: cfg.usage_retention,
            sla: cfg.sla,
            fd_reserve: max_connections
                + api::MAX_REFUSALS_IN_FLIGHT
                + usize::try_from(FDS_OTHER).unwrap_or(128),
            ..SamplerConfig::default()
        };
        let sampler = Sampler::new(gov.clone(), metrics.clone(), sampler_cfg);
        tasks.spawn(sampler.run(shutdown.clone()));
    }
    {
        let (stop, notifier, mut term) = (shutdown.clone(), notifier.clone(), terminate);
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = stop.cancelled() => {}
            }
            tracing::info!("stopping: tenants keep running and stay governed by the kernel");
            notifier.stopping();
            stop.cancel();
        });
    }
    let reloader = Reloader {
        file: file_path,
        flags,
        keys: file_keys,
        cfg: cfg.clone(),
        tokens,
        log,
        notifier: notifier.clone(),
        ready_status: ready_status.clone(),
        store: store.clone(),
    };
    tasks.spawn(reloader.run(hangup, shutdown.clone()));
    let opts = api::ServeOptions {
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        max_connections,
    };
    tracing::info!(
        "connections: at most {}, header read timeout {} s, idle timeout {} s",
        opts.max_connections,
        opts.header_read_timeout.as_secs_f64(),
        opts.idle_timeout.as_secs_f64()
    );
    // The listener is bound (connections queue until accepted) and the first reconcile pass
    // is done: the API answers from here on.
    notifier.ready(&ready_status);
    api::serve_with(listener, state, opts, shutdown.clone()).await?;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    store
        .add_events(&[NewEvent {
            ts_ms: crate::engine::now_ms(),
            tenant: None,
            actor: None,
            event: crate::domain::event::Event::DaemonStop {},
        }])
        .await?;
    store.close().await;
    Ok(())
}

/// The placement rules' rescan of /proc: at start, at once after a tenant's rule changed or
/// the kernel's process events were lost, and every `every`; with `events`, a reader thread of
/// the kernel's process events places a process at its exec and uid/gid changes
/// (`process_event_reader`). The reader runs only while a rule is in force (issue 15: it
/// wakes for every fork, exec and exit of the host): it is started before the rescan that
/// follows the first rule (so that rescan places what ran before the subscription) and stopped
/// (unsubscribed) when the last rule goes. The events of placements made between rescans (by
/// `Placer::consider`) are stored every second. The rescan runs on the blocking pool.
async fn placement_task(
    gov: Arc<Governor>,
    every: std::time::Duration,
    events: bool,
    latency: Histogram,
    stop: CancellationToken,
) {
    let placer = Placer::new(gov.clone(), tokio::runtime::Handle::current());
    let lost = Arc::new(tokio::sync::Notify::new());
    let mut reader: Option<crate::cgroup::proc_connector::ReaderThread> = None;
    // Whether the reader was tried since rules came into force (a refusal is not retried
    // until the rules go and come back).
    let mut tried = false;
    if !events {
        tracing::info!(
            "placement: process events off (process_events = false): processes are placed at the rescan, every {} s",
            every.as_secs_f64()
        );
    }
    let mut rescan = tokio::time::interval(every);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = flush.tick() => {
                gov.flush_placement_events().await;
                continue;
            }
            _ = rescan.tick() => {}
            _ = gov.placement_changed() => rescan.reset(),
            _ = lost.notified() => rescan.reset(),
        }
        if events {
            let any_rule = {
                let g = gov.clone();
                tokio::task::spawn_blocking(move || !g.placement_rules(true).rules.is_empty())
                    .await
                    .unwrap_or(true)
            };
            if any_rule && reader.is_none() && !tried {
                tried = true;
                reader = process_event_reader(placer.clone(), lost.clone(), latency.clone(), every);
            } else if !any_rule {
                tried = false;
                if let Some(r) = reader.take() {
                    stop_reader(r).await;
                    tracing::info!(
                        "placement: no placement rule is in force: stopped listening to the kernel's process events"
                    );
                } else if first {
                    tracing::info!(
                        "placement: no placement rule is in force: not listening to the kernel's process events until one is"
                    );
                }
            }
        }
        first = false;
        let p = placer.clone();
        match tokio::task::spawn_blocking(move || p.rescan()).await {
            Ok(r) if r.placed + r.failed > 0 => tracing::info!(
                "placement rescan: {} processes, {} matched a rule, {} placed, {} failed ({} us, {} us of CPU)",
                r.processes,
                r.matched,
                r.placed,
                r.failed,
                r.elapsed_us,
                r.cpu_us
            ),
            Ok(r) => tracing::debug!(
                "placement rescan: {} processes, {} matched a rule ({} us, {} us of CPU)",
                r.processes,
                r.matched,
                r.elapsed_us,
                r.cpu_us
            ),
            Err(e) => tracing::warn!("placement rescan failed: {e}"),
        }
    }
    if let Some(r) = reader {
        stop_reader(r).await;
    }
}

/// Stops the reader of process events (unsubscribing it); joins the thread, so a `consider`
/// in flight finishes first.
async fn stop_reader(r: crate::cgroup::proc_connector::ReaderThread) {
    match tokio::task::spawn_blocking(move || r.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("process events: the reader stopped with: {e}"),
        Err(e) => tracing::warn!("process events: cannot stop the reader: {e}"),
    }
}

/// Starts the reader of the kernel's process events (`cgroup::proc_connector`) on a thread of
/// its own: an exec, uid or gid change of a process (its thread group leader) is considered
/// by the placer at once, every such process of the events queued so far in one batch
/// (`Placer::consider_batch`: one write lock and journal transaction for the batch's moves,
/// so under a burst the batches grow instead of the queue); a fork is not, since the child stays in its parent's cgroup and has
/// its parent's facts until it execs or changes ids, which are events of their own. Events
/// the kernel dropped wake the rescan (`lost`). Where the kernel refuses the subscription (no
/// CAP_NET_ADMIN, not in the initial namespaces, no CONFIG_PROC_EVENTS) the log says why and
/// placement relies on the rescan alone. Each process a batch placed adds its latency, from
/// the kernel's stamp on its event to the end of the batch's moves, to `latency`
/// (`tenantd_placement_latency_seconds`).
fn process_event_reader(
    placer: Placer,
    lost: Arc<tokio::sync::Notify>,
    latency: Histogram,
    every: std::time::Duration,
) -> Option<crate::cgroup::proc_connector::ReaderThread> {
    use crate::cgroup::proc_connector::{ProcConnector, ProcEvent, monotonic_now};
    use crate::engine::autoplace::Outcome;
    let mut pids = Vec::new();
    // The kernel's stamp of each PID's first event in the batch (CLOCK_MONOTONIC).
    let mut stamped: std::collections::HashMap<u32, std::time::Duration> = Default::default();
    let on_batch = move |b: crate::cgroup::proc_connector::Batch| {
        pids.clear();
        stamped.clear();
        for s in b.events {
            match s.event {
                ProcEvent::Exec { pid, tgid }
                | ProcEvent::Uid { pid, tgid, .. }
                | ProcEvent::Gid { pid, tgid, .. }
                    if pid == tgid =>
                {
                    pids.push(tgid);
                    if let Some(t) = s.kernel_time {
                        stamped.entry(tgid).or_insert(t);
                    }
                }
                ProcEvent::Lost(why) => {
                    tracing::debug!("process events lost ({why:?}): rescanning /proc");
                    lost.notify_one();
                }
                _ => {}
            }
        }
        if !pids.is_empty() {
            let outcomes = placer.consider_batch(&pids);
            let now = monotonic_now();
            for (pid, o) in outcomes {
                if let (Outcome::Placed { .. }, Some(t)) = (o, stamped.get(&pid)) {
                    latency.observe(now.saturating_sub(*t).as_secs_f64());
                }
            }
        }
    };
    match ProcConnector::open().and_then(|c| c.spawn_batches(on_batch)) {
        Ok(r) => {
            tracing::info!(
                "placement: listening to the kernel's process events (exec, uid, gid); /proc is rescanned every {} s as well",
                every.as_secs_f64()
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!(
                "placement: the kernel's process events are unavailable ({e}): processes are placed at the rescan only, every {} s",
                every.as_secs_f64()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_sampler() {
        // Plenty of descriptors: the configured or default cap stands.
        assert_eq!(connection_cap(1 << 20, None), 512);
        assert_eq!(connection_cap(1 << 20, Some(2000)), 2000);
        // 1024 descriptors: (1024 - 128 - 32) / 2 = 432 at most; the sampler keeps the rest.
        assert_eq!(connection_cap(1024, None), 432);
        assert_eq!(connection_cap(1024, Some(600)), 432);
        assert_eq!(connection_cap(1024, Some(100)), 100);
        // Never below 16, so /healthz stays reachable.
        assert_eq!(connection_cap(100, None), 16);
    }
}
