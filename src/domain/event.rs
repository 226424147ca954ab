//! What happened, as the event log records it: one variant per kind, each with its typed
//! detail. Serialised once, adjacently tagged: `kind` is the variant's snake_case name and
//! `detail` its fields as a JSON object, which are the store's `kind` and `detail` columns and
//! the API's event answer, in the shape they always had. Adding a kind is a variant here plus
//! the code that records it.

use super::sla::SlaEvent;
use super::tenant::{FieldChange, Protection, TenantName, TenantSpec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One thing that happened, with what the log keeps about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EventKind)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Event {
    /// The daemon started (and moved itself into its leaf).
    DaemonStart { version: String, pid: u32 },
    /// The daemon stopped serving.
    DaemonStop {},
    /// SIGHUP: what the reload put in force, the changed keys that wait for a restart, and
    /// the files it could not use (their values stayed), each as the log says it.
    DaemonReload {
        applied: Vec<String>,
        restart_needed: Vec<String>,
        failed: Vec<String>,
    },
    /// A tenant was created with this spec.
    TenantCreated { spec: Box<TenantSpec> },
    /// A tenant's spec changed: only the fields the change touched.
    TenantChanged { changes: Vec<FieldChange> },
    /// A tenant was deleted: `refuse`, `kill` or `move_to:NAME`.
    TenantDeleted { mode: String },
    /// The kernel refused a stored delete, so the tenant was put back.
    TenantDeleteUndone { why: String },
    /// A deleted tenant's processes were moved to another tenant.
    ProcessesMoved {
        #[schema(value_type = String)]
        to: TenantName,
        pids: Vec<u32>,
    },
    /// A process was attached to a tenant.
    ProcessAttached { pid: u32 },
    /// Recovery finished a delete that a crash interrupted.
    DeleteFinished { moved_pids: Vec<u32>, journal: i64 },
    /// Reconcile created a tenant's missing cgroup directory.
    CgroupCreated {},
    /// Recovery removed a directory created for a tenant that was never committed.
    CgroupRemoved {
        #[schema(value_type = String)]
        path: PathBuf,
        why: String,
    },
    /// Recovery moved back a process that an interrupted attach left split.
    AttachUndone { pid: u32, why: String },
    /// Reconcile rewrote a kernel value that differed from the plan.
    DriftCorrected {
        file: String,
        was: String,
        now: String,
    },
    /// New OOM kills (memory.events `oom_kill`).
    OomKill(LimitHits),
    /// New memory.high hits (memory.events `high`).
    MemoryHigh(LimitHits),
    /// New memory.max hits (memory.events `max`).
    MemoryMax(LimitHits),
    /// New pids.max hits (pids.events `max`).
    PidsMax(LimitHits),
    /// A CPU guarantee violation opened or closed.
    SlaViolation(CpuViolation),
    /// An IO guarantee violation opened or closed.
    SlaIoViolation(Violation),
    /// A memory guarantee was not kept: reclaimed below memory.low (soft) or OOM-killed
    /// while under it (hard).
    MemoryProtectionBreach {
        protection: Protection,
        guarantee_bytes: u64,
        memory_current_bytes: Option<u64>,
        memory_events_low: u64,
    },
    /// Adaptive enforcement changed a value (the governor root's cpu.weight).
    SlaAdjustment {
        file: String,
        cgroup: String,
        from: u32,
        to: u32,
    },
    /// The tenant's placement rule moved processes into it: how many since the last such
    /// event, the first PIDs (at most 20), and the rule as written.
    ProcessPlaced {
        count: u64,
        pids: Vec<u32>,
        rule: String,
    },
    /// Processes the tenant's placement rule names were left where they are (each reported
    /// once): how many, the first PIDs, and why (a cgroup another manager delegated).
    ProcessNotPlaced {
        count: u64,
        pids: Vec<u32>,
        why: String,
    },
}

/// New limit hits since the last sample, and the kernel's counter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitHits {
    pub count: u64,
    pub total: Option<u64>,
}

/// Whether a violation event marks its start or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ViolationState {
    Open,
    Closed,
}

/// A guarantee violation opening or closing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    pub state: ViolationState,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub duration_s: Option<f64>,
    pub worst_share_ratio: f64,
    pub guarantee_ratio: f64,
}

impl From<&SlaEvent> for Violation {
    fn from(e: &SlaEvent) -> Self {
        let (state, v) = match e {
            SlaEvent::Opened(v) => (ViolationState::Open, v),
            SlaEvent::Closed(v) => (ViolationState::Closed, v),
        };
        Violation {
            state,
            start_ms: v.start_ms,
            end_ms: v.end_ms,
            duration_s: v.end_ms.map(|e| (e - v.start_ms) as f64 / 1000.0),
            worst_share_ratio: v.worst_share,
            guarantee_ratio: v.guarantee,
        }
    }
}

/// A CPU violation, with the tenants that used the CPU most while it opened or closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CpuViolation {
    #[serde(flatten)]
    pub violation: Violation,
    pub top_consumers: Vec<Consumer>,
}

/// One tenant's share of the CPU in the sweep that recorded a violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consumer {
    pub tenant: String,
    pub share_ratio: f64,
}

impl Event {
    /// The `kind` and `detail` the log stores. The detail's keys come out sorted (a
    /// `serde_json::Value` object), as they always were.
    pub fn columns(&self) -> (String, serde_json::Value) {
        let v = serde_json::to_value(self).expect("an event always serializes");
        let serde_json::Value::Object(mut m) = v else {
            unreachable!("an adjacently tagged enum serializes to an object")
        };
        let kind = match m.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            k => unreachable!("the tag is a string, not {k:?}"),
        };
        (kind, m.remove("detail").unwrap_or_default())
    }

    /// The event a stored `kind` and `detail` describe; an error for a kind this version
    /// does not know or a detail of another shape.
    pub fn from_columns(kind: &str, detail: &serde_json::Value) -> serde_json::Result<Event> {
        serde_json::from_value(serde_json::json!({"kind": kind, "detail": detail}))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::sla;
    use serde_json::json;

    /// Every kind once, with the detail each records.
    pub(crate) fn one_of_each() -> Vec<Event> {
        let hits = LimitHits {
            count: 2,
            total: Some(5),
        };
        let v = Violation::from(&SlaEvent::Closed(sla::Violation {
            start_ms: 1_000,
            end_ms: Some(4_500),
            worst_share: 0.25,
            guarantee: 0.5,
        }));
        vec![
            Event::DaemonStart {
                version: "0.1.0".into(),
                pid: 42,
            },
            Event::DaemonStop {},
            Event::TenantCreated {
                spec: Box::default(),
            },
            Event::TenantChanged {
                changes: vec![FieldChange {
                    field: "cpu.guarantee_pct".into(),
                    from: None,
                    to: Some(json!(10)),
                }],
            },
            Event::TenantDeleted {
                mode: "move_to:b".into(),
            },
            Event::TenantDeleteUndone {
                why: "EBUSY".into(),
            },
            Event::ProcessesMoved {
                to: TenantName::parse("b").unwrap(),
                pids: vec![7, 8],
            },
            Event::ProcessAttached { pid: 7 },
            Event::DeleteFinished {
                moved_pids: vec![7],
                journal: 3,
            },
            Event::CgroupCreated {},
            Event::CgroupRemoved {
                path: "/sys/fs/cgroup/t/a".into(),
                why: "crash".into(),
            },
            Event::AttachUndone {
                pid: 7,
                why: "split".into(),
            },
            Event::DriftCorrected {
                file: "cpu.weight".into(),
                was: "100".into(),
                now: "200".into(),
            },
            Event::OomKill(hits),
            Event::MemoryHigh(hits),
            Event::MemoryMax(hits),
            Event::PidsMax(hits),
            Event::SlaViolation(CpuViolation {
                violation: v.clone(),
                top_consumers: vec![Consumer {
                    tenant: "hog".into(),
                    share_ratio: 0.75,
                }],
            }),
            Event::SlaIoViolation(v),
            Event::MemoryProtectionBreach {
                protection: Protection::Soft,
                guarantee_bytes: 1 << 20,
                memory_current_bytes: None,
                memory_events_low: 3,
            },
            Event::SlaAdjustment {
                file: "cpu.weight".into(),
                cgroup: "governor root".into(),
                from: 100,
                to: 150,
            },
            Event::DaemonReload {
                applied: vec!["token file /etc/tenantd/tokens: 2 tokens; added: ci".into()],
                restart_needed: vec!["listen".into()],
                failed: vec![],
            },
            Event::ProcessPlaced {
                count: 3,
                pids: vec![7, 8, 9],
                rule: "uids [1001]".into(),
            },
            Event::ProcessNotPlaced {
                count: 1,
                pids: vec![7],
                why: "in /sys/fs/cgroup/system.slice/x.service, which another manager delegated (Delegate=yes); the rule has no override_delegated".into(),
            },
        ]
    }

    /// Which variant `e` is: no wildcard, so a new kind fails to compile here until
    /// `one_of_each` has it too.
    fn variant(e: &Event) -> usize {
        match e {
            Event::DaemonStart { .. } => 0,
            Event::DaemonStop {} => 1,
            Event::TenantCreated { .. } => 2,
            Event::TenantChanged { .. } => 3,
            Event::TenantDeleted { .. } => 4,
            Event::TenantDeleteUndone { .. } => 5,
            Event::ProcessesMoved { .. } => 6,
            Event::ProcessAttached { .. } => 7,
            Event::DeleteFinished { .. } => 8,
            Event::CgroupCreated {} => 9,
            Event::CgroupRemoved { .. } => 10,
            Event::AttachUndone { .. } => 11,
            Event::DriftCorrected { .. } => 12,
            Event::OomKill(_) => 13,
            Event::MemoryHigh(_) => 14,
            Event::MemoryMax(_) => 15,
            Event::PidsMax(_) => 16,
            Event::SlaViolation(_) => 17,
            Event::SlaIoViolation(_) => 18,
            Event::MemoryProtectionBreach { .. } => 19,
            Event::SlaAdjustment { .. } => 20,
            Event::DaemonReload { .. } => 21,
            Event::ProcessPlaced { .. } => 22,
            Event::ProcessNotPlaced { .. } => 23,
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_columns() {
        let all = one_of_each();
        assert_eq!(
            all.iter().map(variant).collect::<Vec<_>>(),
            (0..=23).collect::<Vec<_>>(),
            "one_of_each has every kind once"
        );
        for e in all {
            let (kind, detail) = e.columns();
            assert!(detail.is_object(), "{kind}: {detail}");
            assert_eq!(Event::from_columns(&kind, &detail).unwrap(), e, "{kind}");
        }
    }

    /// The columns are the ones the `json!` details before the enum wrote, byte for byte.
    #[test]
    fn columns_keep_the_stored_shape() {
        let text = |e: Event| {
            let (k, d) = e.columns();
            format!("{k} {d}")
        };
        assert_eq!(
            text(Event::DaemonStart {
                version: "0.1.0".into(),
                pid: 42
            }),
            r#"daemon_start {"pid":42,"version":"0.1.0"}"#
        );
        assert_eq!(text(Event::DaemonStop {}), "daemon_stop {}");
        assert_eq!(
            text(Event::OomKill(LimitHits {
                count: 1,
                total: None
            })),
            r#"oom_kill {"count":1,"total":null}"#
        );
        let opened = Violation::from(&SlaEvent::Opened(sla::Violation {
            start_ms: 1_000,
            end_ms: None,
            worst_share: 0.25,
            guarantee: 0.5,
        }));
        assert_eq!(
            text(Event::SlaIoViolation(opened.clone())),
            r#"sla_io_violation {"duration_s":null,"end_ms":null,"guarantee_ratio":0.5,"start_ms":1000,"state":"open","worst_share_ratio":0.25}"#
        );
        assert_eq!(
            text(Event::SlaViolation(CpuViolation {
                violation: opened,
                top_consumers: vec![Consumer {
                    tenant: "a".into(),
                    share_ratio: 0.25
                }],
            })),
            r#"sla_violation {"duration_s":null,"end_ms":null,"guarantee_ratio":0.5,"start_ms":1000,"state":"open","top_consumers":[{"share_ratio":0.25,"tenant":"a"}],"worst_share_ratio":0.25}"#
        );
        assert_eq!(
            text(Event::MemoryProtectionBreach {
                protection: Protection::Hard,
                guarantee_bytes: 10,
                memory_current_bytes: Some(5),
                memory_events_low: 0,
            }),
            r#"memory_protection_breach {"guarantee_bytes":10,"memory_current_bytes":5,"memory_events_low":0,"protection":"hard"}"#
        );
    }

    #[test]
    fn an_unknown_kind_or_detail_is_an_error() {
        assert!(Event::from_columns("tenant_updated", &json!({})).is_err());
        assert!(Event::from_columns("process_attached", &json!({"pid": "x"})).is_err());
    }

    /// The README lists every kind the log records.
    #[test]
    fn the_readme_lists_every_kind() {
        let readme = include_str!("../../README.md");
        for e in one_of_each() {
            let kind = e.columns().0;
            assert!(
                readme.contains(&format!("| `{kind}` |")),
                "README's event list lacks {kind}"
            );
        }
    }
}
