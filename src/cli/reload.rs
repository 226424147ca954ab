//! SIGHUP: read the config file and the token file again and put in force what can change
//! without a restart (`config::RELOADABLE_KEYS` and the tokens). A file that cannot be read or
//! does not validate keeps the values in force and says why (error level, naming the file);
//! a good one logs what changed. systemd hears `RELOADING=1` before and `READY=1` after; the
//! event log gets a `daemon_reload` event.

use super::logging::LogFilter;
use super::systemd::Notifier;
use crate::api::auth::Tokens;
use crate::config::{Config, FileConfig, RELOADABLE_KEYS, changed_keys};
use crate::domain::event::Event;
use crate::store::{NewEvent, Store};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

/// What a reload reads and what it changes.
pub struct Reloader {
    /// The config file, when there is one.
    pub file: Option<PathBuf>,
    /// Flags and environment: they beat the file, and do not change on a reload.
    pub flags: FileConfig,
    /// The keys of the file in force, as written.
    pub keys: toml::Table,
    /// The configuration in force.
    pub cfg: Config,
    pub tokens: Arc<Tokens>,
    pub log: LogFilter,
    pub notifier: Arc<Notifier>,
    /// The `STATUS=` line sent with `READY=1` once a reload is done.
    pub ready_status: String,
    /// Where the `daemon_reload` event goes.
    pub store: Store,
}

/// What one reload did, as the `daemon_reload` event records it.
#[derive(Debug, Default)]
struct Outcome {
    applied: Vec<String>,
    restart_needed: Vec<String>,
    failed: Vec<String>,
}

impl Reloader {
    /// Reloads on every SIGHUP until `stop`.
    pub async fn run(mut self, mut hangup: Signal, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = hangup.recv() => {}
            }
            self.notifier.reloading();
            // The files are read off the async runtime.
            let outcome;
            (self, outcome) = match tokio::task::spawn_blocking(move || {
                let outcome = self.reload();
                (self, outcome)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!("reload: the reload task failed ({e}); no more reloads");
                    return;
                }
            };
            self.record(outcome).await;
            self.notifier.ready(&self.ready_status);
        }
    }

    /// One reload: the config file, then the token file; each keeps its values in force when
    /// it cannot be used.
    fn reload(&mut self) -> Outcome {
        tracing::info!("reload: SIGHUP received");
        let mut outcome = Outcome::default();
        self.reload_config(&mut outcome);
        self.reload_tokens(&mut outcome);
        outcome
    }

    async fn record(&self, o: Outcome) {
        let event = NewEvent {
            ts_ms: crate::engine::now_ms(),
            tenant: None,
            actor: None,
            event: Event::DaemonReload {
                applied: o.applied,
                restart_needed: o.restart_needed,
                failed: o.failed,
            },
        };
        if let Err(e) = self.store.add_events(&[event]).await {
            tracing::warn!("reload: cannot record the daemon_reload event: {e}");
        }
    }

    fn reload_config(&mut self, outcome: &mut Outcome) {
        let Some(path) = &self.file else {
            tracing::info!("reload: no config file; flags and environment are as at start");
            return;
        };
        let p = path.display();
        let (file, keys) = match FileConfig::load_with_keys(path) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("reload: {e}; the configuration in force stays");
                outcome.failed.push(e.to_string());
                return;
            }
        };
        // The root was decided at start; a change of it needs a restart like any other key.
        let root = self.cfg.cgroup_root.clone();
        let new = match self.flags.clone().or(file).resolve(|_| root) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload: config file {p}: {e}; the configuration in force stays");
                outcome.failed.push(format!("config file {p}: {e}"));
                return;
            }
        };
        let changed = changed_keys(&self.keys, &keys);
        let later: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|k| !RELOADABLE_KEYS.contains(k))
            .collect();
        if !later.is_empty() {
            tracing::warn!(
                "reload: config file {p}: {} changed, which takes effect at the next restart (a reload applies {})",
                later.join(", "),
                RELOADABLE_KEYS.join(", ")
            );
        }
        outcome
            .restart_needed
            .extend(later.iter().map(|k| k.to_string()));
        if new.log_level != self.cfg.log_level {
            match self.log.set(&new.log_level) {
                // At warn, so it shows whichever of the two levels is in force.
                Ok(()) => {
                    let change =
                        format!("log_level '{}' -> '{}'", self.cfg.log_level, new.log_level);
                    tracing::warn!("reload: {change}");
                    outcome.applied.push(change);
                    self.cfg.log_level = new.log_level;
                }
                Err(e) => {
                    tracing::error!("reload: log_level stays '{}': {e}", self.cfg.log_level);
                    outcome.failed.push(format!("log_level: {e}"));
                }
            }
        }
        if changed.is_empty() {
            tracing::info!("reload: config file {p} unchanged");
        }
        self.keys = keys;
    }

    fn reload_tokens(&self, outcome: &mut Outcome) {
        let Some(path) = &self.cfg.token_file else {
            tracing::info!(
                "reload: no token file; every local caller stays admin (a token file needs a restart)"
            );
            return;
        };
        match Tokens::load(path) {
            Ok(new) => {
                let changes = self.tokens.replace(new);
                let line = format!("token file {}: {changes}", path.display());
                tracing::info!("reload: {line}");
                if !changes.is_empty() {
                    outcome.applied.push(line);
                }
            }
            Err(e) => {
                tracing::error!("reload: {e}; the tokens in force stay");
                outcome.failed.push(e);
            }
        }
    }
}
