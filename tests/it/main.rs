//! The integration test binary. Modules:
//! - `api`: the HTTP API on any host (validation, auth, errors, OpenAPI, a real socket);
//!   these requests are refused or answered before any cgroup is touched.
//! - `dashboards`: the Grafana dashboards and Prometheus rules in dashboards/: structure and
//!   metric names on any host; every panel's query against a real Prometheus in the VM.
//! - `scoped`: tenant-scoped tokens on any host (every endpoint inside and outside the scope),
//!   and `/metrics` format negotiation with promtool on the served bytes (finding 12).
//! - `kernel`: the governor against a real cgroup v2 kernel. Marked `#[ignore]` with a reason,
//!   so a plain `cargo test` on a hybrid host lists them as ignored; `tests/run.sh` runs them
//!   with `--ignored` inside the qemu VM (or on a pure v2 host with `TENANTD_KERNEL=host`).
//! - `v1`: the cgroup v1 backend for real on a v1 or hybrid host (this CI host); not ignored,
//!   and fails loudly when the v1 hierarchies are missing.

mod api;
mod dashboards;
mod kernel;
mod scoped;
mod sla;
mod support;
mod usage;
mod v1;
