//! The integration test binary. Modules:
//! - `api`: the HTTP API on any host (validation, auth, errors, OpenAPI, a real socket);
//!   these requests are refused or answered before any cgroup is touched.
//! - `kernel`: the governor against a real cgroup v2 kernel. Marked `#[ignore]` with a reason,
//!   so a plain `cargo test` on a hybrid host lists them as ignored; `tests/run.sh` runs them
//!   with `--ignored` inside the qemu VM (or on a pure v2 host with `TENANTD_KERNEL=host`).

mod api;
mod kernel;
mod support;
