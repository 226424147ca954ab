//! tenantd shares a Linux host's CPU, memory, IO and process slots among tenants with cgroup v2.
//!
//! - `domain`: pure rules: tenant specs, admission, SLA to kernel settings (no IO, no clock).
//! - `cgroup`: the only code that touches cgroupfs; synchronous; root passed in.
//! - `store`: all SQL (SQLite through sqlx, `migrations/`): the desired state, events, usage history.
//! - `engine`: where side effects meet: apply, reconcile, placement, the usage sampler.
//! - `metrics`: every Prometheus metric name in one place; `/metrics` from the sampler's snapshot.
//! - `api`: the axum HTTP admin API (thin handlers, problem+json errors, bearer auth).
//! - `cli`: subcommands; the client talks to the HTTP API, never to the database.
//! - `config`: file + environment + flags into one validated `Config`.
#![forbid(unsafe_code)]

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod metrics;
pub mod report;
pub mod store;
