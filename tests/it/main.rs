//! The integration test binary. Modules:
//! - `api`: the HTTP API on any host (validation, auth, errors, OpenAPI, a real socket);
//!   these requests are refused or answered before any cgroup is touched.
//! - `dashboards`: the Grafana dashboards and Prometheus rules in dashboards/: structure and
//!   metric names on any host; every panel's query against a real Prometheus in the VM.
//! - `kernel`: the governor against a real cgroup v2 kernel. Marked `#[ignore]` with a reason,
//!   so a plain `cargo test` on a hybrid host lists them as ignored; `tests/run.sh` runs them
//!   with `--ignored` inside the qemu VM (or on a pure v2 host with `TENANTD_KERNEL=host`).
//! - `openapi`: real answers (cgroup v1 backend, this CI host) validate against the document's
//!   schemas; tests/fuzz/schemathesis.sh does the same for generated requests.
//! - `v1`: the cgroup v1 backend for real on a v1 or hybrid host (this CI host); not ignored,
//!   and fails loudly when the v1 hierarchies are missing.

mod api;
mod dashboards;
mod kernel;
mod openapi;
mod sla;
mod support;
mod usage;
mod v1;
