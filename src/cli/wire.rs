//! The API answers the CLI reads are the server's own types (`TenantView`, `ProcInfo`,
//! `Event`, `Usage`, `Report`, `Problem`, `api::Host`, `api::Attached`), with no mirrors: this
//! module holds realistic samples of them and the tests that each one deserializes from
//! exactly what the server writes.

/// Realistic answers, for the round-trip tests here and the table tests in `format`.
#[cfg(test)]
pub(super) mod samples {
    use crate::api::Host;
    use crate::cgroup::{BlockDevice, HostCgroup, NotApplied, RunMode};
    use crate::domain::TenantName;
    use crate::domain::plan::{self, Limit, PlanParams, Setting};
    use crate::domain::tenant::{DevId, TenantSpec};
    use crate::domain::usage_row::{UsageEvents, UsageGauges, UsageRates, UsageRow};
    use crate::engine::TenantView;
    use crate::engine::egress::EgressSupport;
    use crate::engine::placement::ProcInfo;
    use crate::report::{Point, Report, TenantReport};
    use crate::store::{Event, Retention, Store, StoredTenant, Usage};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    /// "web" with every field of its SLA set, below "team"; and "batch", best effort, whose
    /// directory could not be read.
    pub fn tenants() -> Vec<TenantView> {
        let web: TenantSpec = serde_json::from_value(json!({
            "parent": "team",
            "labels": {"customer": "acme"},
            "cpu": {"guarantee_pct": 12.5, "limit_pct": 200},
            "memory": {"guarantee_bytes": "1GiB", "protection": "soft", "high_bytes": "3GiB",
                       "limit_bytes": "4GiB", "swap_limit_bytes": 0},
            "io": {"guarantee_pct": 25, "limits": [{"device": "8:0", "rbps": "10MiB", "riops": 500}]},
            "pids": {"limit": 100},
        }))
        .unwrap();
        let team: TenantSpec =
            serde_json::from_value(json!({"cpu": {"guarantee_pct": 50}})).unwrap();
        let all = BTreeMap::from([
            (n("web"), web),
            (n("team"), team),
            (n("batch"), TenantSpec::default()),
        ]);
        let plans = plan::plan(&all, PlanParams::default());
        let stored = |name: &str| StoredTenant {
            spec: all[&n(name)].clone(),
            generation: 3,
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_360_500,
        };
        let mut effective = plans[&n("web")].tenant.clone();
        effective.memory_high_bytes = Limit::Max;
        vec![
            TenantView {
                name: n("web"),
                stored: stored("web"),
                cgroup: "/sys/fs/cgroup/tenantd/team/web".into(),
                planned: plans[&n("web")].clone(),
                effective: Some(effective),
                effective_error: None,
                not_applied: vec![NotApplied {
                    setting: Setting::MemoryHighBytes,
                    why: "cgroup v1 has no memory.high".into(),
                }],
                procs: 2,
                kernel_read_ms: Some(1_700_000_361_000),
                egress: None,
            },
            TenantView {
                name: n("batch"),
                stored: stored("batch"),
                cgroup: "/sys/fs/cgroup/tenantd/batch".into(),
                planned: plans[&n("batch")].clone(),
                effective: None,
                effective_error: Some("no such directory".into()),
                not_applied: vec![],
                procs: 0,
                kernel_read_ms: None,
                egress: None,
            },
        ]
    }

    pub fn host() -> Host {
        Host {
            cgroup: HostCgroup {
                version: "v1".into(),
                root: "/sys/fs/cgroup/tenantd".into(),
                controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
                missing: vec!["io".into()],
                psi: false,
                kill: false,
                devices: vec![
                    BlockDevice {
                        device: DevId { major: 8, minor: 0 },
                        name: "sda".into(),
                        scheduler: Some("bfq".into()),
                        io_weight_effective: true,
                        io_weight_reason: "BFQ".into(),
                    },
                    BlockDevice {
                        device: DevId {
                            major: 253,
                            minor: 1,
                        },
                        name: "dm-1".into(),
                        scheduler: None,
                        io_weight_effective: false,
                        io_weight_reason: "no scheduler".into(),
                    },
                ],
            },
            mode: RunMode::Root,
            cannot: Vec::new(),
            cpus: 2.0,
            memory_bytes: 8 << 30,
            memory_reserve_bytes: 512 << 20,
            tenantd_version: "0.1.0".into(),
            pid: 4242,
            egress: EgressSupport {
                available: false,
                why: Some("tenants run on cgroup v1 here".into()),
                nft: None,
            },
        }
    }

    pub fn procs() -> Vec<ProcInfo> {
        vec![
            ProcInfo {
                pid: 1234,
                comm: Some("nginx".into()),
            },
            ProcInfo {
                pid: 1240,
                comm: None,
            },
        ]
    }

    pub fn events() -> Vec<Event> {
        vec![
            Event {
                id: 7,
                ts_ms: 1_700_000_360_500,
                tenant: Some("web".into()),
                kind: "tenant_updated".into(),
                actor: Some("admin".into()),
                detail: json!({"changes": [{"field": "cpu.guarantee_pct", "from": 10, "to": 12.5}]}),
            },
            Event {
                id: 1,
                ts_ms: 1_700_000_000_000,
                tenant: None,
                kind: "daemon_start".into(),
                actor: None,
                detail: json!({"version": "0.1.0", "pid": 4242}),
            },
        ]
    }

    /// A usage answer from the store itself: two samples of "web", one with an OOM kill.
    pub async fn usage() -> Usage {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("t.db")).await.unwrap();
        let now = 1_700_000_400_000;
        let row = |ts_ms: i64, cores: f64, mem: i64, ooms: i64| {
            let mut r = UsageRow {
                tenant: "web".into(),
                ts_ms,
                interval_ms: Some(1000),
                ..Default::default()
            };
            r.rates = UsageRates {
                cpu_cores: Some(cores),
                io_read_bytes_per_s: Some(1536.0),
                memory_some_stall_ratio: Some(0.012),
                ..UsageRates::from_values([Some(0.0); UsageRates::LEN])
            };
            r.gauges = UsageGauges {
                memory_current_bytes: Some(mem),
                memory_working_set_bytes: Some(mem / 2),
                memory_peak_bytes: Some(mem),
                pids_current: Some(12),
            };
            r.events = UsageEvents {
                new_oom_kills: Some(ooms),
                ..UsageEvents::from_values([Some(0); UsageEvents::LEN])
            };
            r
        };
        store
            .add_usage(&[
                row(now - 20_000, 0.75, 300 << 20, 0),
                row(now - 5_000, 1.25, 500 << 20, 1),
            ])
            .await
            .unwrap();
        store
            .usage("web", now - 60_000, now, 10, now, &Retention::default())
            .await
            .unwrap()
    }

    pub fn report() -> Report {
        let point = |ts_ms, delivered, contended, violating| Point {
            ts_ms,
            delivered,
            contended,
            violating,
        };
        Report {
            from_ms: 1_700_000_000_000,
            to_ms: 1_700_086_400_000,
            generated_ms: 1_700_086_400_123,
            host: "node-1".into(),
            tenants: vec![
                TenantReport {
                    tenant: "web".into(),
                    labels: BTreeMap::from([("customer".into(), "acme".into())]),
                    guarantee_ratio: Some(0.5),
                    contended_seconds: 3600.0,
                    violations: 2,
                    violation_seconds: 42.5,
                    attainment_ratio: 0.988_194,
                    delivered_mean_contended_ratio: Some(0.61),
                    delivered_p5_contended_ratio: Some(0.4812),
                    memory_protection_breaches: 1,
                    oom_kills: 0,
                    cpu_seconds: 43_210.25,
                    memory_gib_hours: 12.3456,
                    io_bytes: 3 << 30,
                    series: vec![
                        point(1_700_000_000_000, 0.62, true, false),
                        point(1_700_000_060_000, 0.31, true, true),
                    ],
                },
                TenantReport {
                    tenant: "batch".into(),
                    labels: BTreeMap::new(),
                    guarantee_ratio: None,
                    contended_seconds: 0.0,
                    violations: 0,
                    violation_seconds: 0.0,
                    attainment_ratio: 1.0,
                    delivered_mean_contended_ratio: None,
                    delivered_p5_contended_ratio: None,
                    memory_protection_breaches: 0,
                    oom_kills: 3,
                    cpu_seconds: 0.0,
                    memory_gib_hours: 0.0,
                    io_bytes: 0,
                    series: vec![],
                },
            ],
        }
    }
}

/// Every answer the CLI reads deserializes from exactly what the server writes, and writes it
/// again byte for byte.
#[cfg(test)]
mod tests {
    use super::samples;
    use crate::api::Attached;
    use crate::api::error::Problem;
    use crate::domain::TenantName;
    use axum::http::StatusCode;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
        let text = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(&back, v);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn tenant_views_round_trip() {
        round_trip(&samples::tenants());
    }

    #[test]
    fn the_host_answer_round_trips() {
        round_trip(&samples::host());
    }

    #[test]
    fn procs_round_trip() {
        round_trip(&samples::procs());
        round_trip(&Attached {
            tenant: TenantName::parse("web").unwrap(),
            pid: 1234,
        });
    }

    #[test]
    fn events_round_trip() {
        round_trip(&samples::events());
    }

    #[tokio::test]
    async fn usage_round_trips() {
        let u = samples::usage().await;
        assert_eq!(u.points.len(), 2, "{u:?}");
        round_trip(&u);
    }

    #[test]
    fn the_sla_report_round_trips() {
        round_trip(&samples::report());
    }

    #[test]
    fn problems_round_trip() {
        round_trip(&Problem::invalid("pid", "no process 4000000"));
        round_trip(&Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such tenant",
        ));
    }
}
