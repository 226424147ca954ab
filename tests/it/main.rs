//! The integration test binary. Modules:
//! - `api`: the HTTP API on any host (validation, auth, errors, OpenAPI, a real socket);
//!   these requests are refused or answered before any cgroup is touched.
//! - `dashboards`: the Grafana dashboards and Prometheus rules in dashboards/: structure and
//!   metric names on any host; every panel's query against a real Prometheus in the VM.
//! - `crash`: SIGKILL at random points of PUT/PATCH/DELETE/attach bursts, restart, then every
//!   acknowledged write there, unanswered ones whole or absent, kernel equal to store on every
//!   hierarchy, no directory without an owner, no process split across hierarchies,
//!   `integrity_check` ok (issue 13): v1 on this host, v2 in the VM (`#[ignore]`).
//! - `delegated`: the daemon as an unprivileged user in a subtree delegated the way systemd
//!   delegates (issue 14): tenants below the root, the root's own files untouched, placement
//!   the kernel refuses answered 403; in the VM (`#[ignore]`).
//! - `egress`: per-tenant egress policies (issue 18): bad entries 422 naming the entry on any
//!   host, refused on this v1 host; in the VM (`#[ignore]`) tenants' TCP and UDP over IPv4
//!   and IPv6 refused or let through by tenantd's nftables table, drift, inheritance, counters.
//! - `durability`: the desired state on a full disk (a small tmpfs): refused with 507, never
//!   acknowledged and lost; recovery without a restart. Needs root and the v1 hierarchies.
//! - `hostile`: the HTTP layer under hostile input (query values, bodies, headers, idle and
//!   half-sent connections), through `oneshot` and over a real socket (issue 12).
//! - `scoped`: tenant-scoped tokens on any host (every endpoint inside and outside the scope),
//!   and `/metrics` format negotiation with promtool on the served bytes (finding 12).
//! - `service`: running as a system service (issue 14): plain-text and JSON logs, SIGHUP
//!   reloads (token file, log level), the systemd notify protocol on a real datagram socket;
//!   v1 on this host.
//! - `kernel`: the governor against a real cgroup v2 kernel. Marked `#[ignore]` with a reason,
//!   so a plain `cargo test` on a hybrid host lists them as ignored; `tests/run.sh` runs them
//!   with `--ignored` inside the qemu VM (or on a pure v2 host with `TENANTD_KERNEL=host`).
//! - `launch`: least-privilege `tenantd run` (issue 18) on real processes, v1 here with the
//!   daemon in its own PID namespace: no_new_privs, capability sets, user and groups read from
//!   /proc/PID/status after exec, namespaces compared by their /proc/PID/ns links, a private
//!   network that cannot reach the host's loopback, a private PID namespace under a reaper
//!   with exit status and signals passed through, and the one-line refusals.
//! - `placement`: PID 1, the daemon and its threads are never moved or killed (issue 12), on
//!   v1 here and on v2 in the VM, with the daemon in its own PID namespace.
//! - `placement_events`: placement rules driven by the kernel's process events (exec, a uid
//!   change after start) and by the rescan alone with the events off (issue 17; v2 VM, the
//!   daemon in the VM's initial PID namespace, where a proc connector subscription is taken).
//! - `placement_recycle`: a placement decided for a process that exited never moves the
//!   process that got its PID (issue 17): the placer in a PID namespace of its own, the PID
//!   reused on purpose through `ns_last_pid`; v1 here, v2 in the VM (`#[ignore]`).
//! - `openapi`: real answers (cgroup v1 backend, this CI host) validate against the document's
//!   schemas; tests/fuzz/schemathesis.sh does the same for generated requests.
//! - `v1`: the cgroup v1 backend for real on a v1 or hybrid host (this CI host); not ignored,
//!   and fails loudly when the v1 hierarchies are missing.
//! - `top`: `tenantd top` in a tmux pane against a v1 daemon with three busy tenants, one of
//!   them in violation; read with `capture-pane`, resized, quit with q and Ctrl-C. Needs tmux.
//! - `scale`: issue 15, changes at scale: `GET /v1/tenants` pages (any host, scoped tokens
//!   too); the state served after accepted and refused changes is the stored one (v1 here).
//! - `proc_connector`: the kernel's process events (issue 17) on this host's kernel: fork,
//!   exec, uid and gid changes and exit of processes the test starts, an overrun reported as
//!   lost, the reader thread's stop. Root and the initial namespaces; any cgroup mode.
//! - `reconcile`: reconcile corrects exactly the values that drifted, each setting at its
//!   extremes: v1 on this host, v2 in the VM (`#[ignore]`).
//! - `store_suite`: one suite of cases for the desired state's store trait, each run against a
//!   real SQLite file and a real PostgreSQL server (issue 19).
//! - `pg`: a real PostgreSQL server the tests start and stop themselves (Debian's package),
//!   for `fleet`: three nodes sharing one desired state in it (issue 19), v1 on this host,
//!   and `fleet_history`: their minutes shipped there, through an outage, and the fleet report.

mod api;
mod crash;
mod dashboards;
mod delegated;
mod durability;
mod egress;
mod fleet;
mod fleet_history;
mod hostile;
mod kernel;
mod launch;
mod openapi;
mod pg;
mod placement;
mod placement_events;
mod placement_recycle;
mod placement_rules;
mod proc_connector;
mod reconcile;
mod scale;
mod scoped;
mod service;
mod sla;
mod storage;
mod store_suite;
mod support;
mod top;
mod usage;
mod v1;
