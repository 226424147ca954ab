//! Storage benchmark (issue 15, target 3): `cargo bench --bench storage [-- TENANTS MINUTES]`
//! (default 20 tenants, 60 minutes of 1 s sweeps per profile).
//!
//! Makes realistic sample streams with the production path (`domain::usage::rates`,
//! `UsageRow::from_sample`; verdicts shaped like `domain::sla_engine`'s) for four kinds of
//! tenant: idle without PSI (the v1 backend), idle with PSI (v2), busy (CPU, memory, IO and
//! stalls that move every second) and mostly idle (busy 5% of the time, in bursts). Then
//! reports bytes per tenant per day (the figures scaled from MINUTES to 24 h):
//! - the store: a real database written through `Store::add_sweep` (raw rows, the layout
//!   before issue 15), then `Store::roll_up` (rollups, and the closed 10-minute windows
//!   compacted into blocks), per table and index from SQLite's `dbstat`, before and after;
//! - compressed column blocks (`domain::usage_block`) of 10, 60, 600 and 3600 samples,
//!   stored one row per (tenant, block start) in a real SQLite table, also from `dbstat`;
//! - SLA verdicts as rows, as blocks, and how many rows "changes of state only" would keep.

use std::time::Instant;
use tenantd::domain::sla_engine::Verdict;
use tenantd::domain::stats::{CgroupStats, CpuStat, IoDevStat, MemoryEvents, MemoryStat};
use tenantd::domain::stats::{PressureTotals, Sample};
use tenantd::domain::tenant::DevId;
use tenantd::domain::usage;
use tenantd::domain::usage_block::{decode_usage, decode_verdicts, encode_usage, encode_verdicts};
use tenantd::domain::usage_row::UsageRow;
use tenantd::store::Store;

/// This process's CPU time so far, every thread (user + system, /proc/self/stat), in s.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / procfs::ticks_per_second() as f64
}

/// xorshift64*: reproducible streams without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Profile {
    IdleV1,
    IdleV2,
    Busy,
    MostlyIdle,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::IdleV1 => "idle, no PSI (v1 backend)",
            Profile::IdleV2 => "idle, PSI (v2)",
            Profile::Busy => "busy: CPU, memory, IO, stalls every second",
            Profile::MostlyIdle => "mostly idle: busy 5% of the time, in bursts",
        }
    }
}

/// One simulated tenant: its cgroup's stats, moved by each sweep as the profile says.
struct Tenant {
    name: String,
    stats: CgroupStats,
    prev: Option<(Sample, i64)>,
    busy_left: u32,
    guarantee: Option<f64>,
}

impl Tenant {
    fn new(i: usize, p: Profile, rng: &mut Rng) -> Tenant {
        let psi = p != Profile::IdleV1;
        let pressure = psi.then_some(PressureTotals {
            some_usec: Some(rng.below(1 << 30)),
            full_usec: Some(rng.below(1 << 28)),
        });
        let stats = CgroupStats {
            cpu: CpuStat {
                usage_usec: Some(rng.below(1 << 40)),
                user_usec: Some(rng.below(1 << 39)),
                system_usec: Some(rng.below(1 << 38)),
                nr_periods: psi.then_some(0),
                nr_throttled: Some(rng.below(1000)),
                throttled_usec: Some(rng.below(1 << 30)),
            },
            memory_current: Some(if p == Profile::IdleV1 {
                0
            } else {
                4096 * (1 + rng.below(1 << 16))
            }),
            memory_peak: psi.then_some(1 << 31),
            memory: MemoryStat {
                anon: Some(4096 * rng.below(1 << 15)),
                file: Some(4096 * rng.below(1 << 15)),
                inactive_file: Some(4096 * rng.below(1 << 10)),
            },
            memory_events: MemoryEvents {
                low: Some(0),
                high: Some(rng.below(10)),
                max: Some(0),
                oom: Some(0),
                oom_kill: Some(0),
            },
            io: if p == Profile::IdleV1 {
                Vec::new()
            } else {
                vec![IoDevStat {
                    rbytes: Some(rng.below(1 << 36)),
                    wbytes: Some(rng.below(1 << 36)),
                    rios: Some(rng.below(1 << 20)),
                    wios: Some(rng.below(1 << 20)),
                    ..IoDevStat::new(DevId { major: 8, minor: 0 })
                }]
            },
            pids_current: Some(if p == Profile::IdleV1 {
                0
            } else {
                1 + rng.below(50)
            }),
            pids_max_events: Some(0),
            cpu_pressure: pressure,
            memory_pressure: pressure,
            io_pressure: pressure,
            ..CgroupStats::default()
        };
        Tenant {
            name: format!("tenant-{i:05}"),
            stats,
            prev: None,
            busy_left: 0,
            guarantee: (i % 2 == 0).then_some(0.25),
        }
    }

    /// One sweep at `ts`: moves the counters, returns the row and the verdict.
    fn sweep(&mut self, p: Profile, ts: i64, rng: &mut Rng) -> (UsageRow, Verdict) {
        let busy = match p {
            Profile::IdleV1 | Profile::IdleV2 => false,
            Profile::Busy => true,
            Profile::MostlyIdle => {
                if self.busy_left == 0 && rng.chance(0.05 / 60.0) {
                    self.busy_left = 60;
                }
                self.busy_left = self.busy_left.saturating_sub(1);
                self.busy_left > 0
            }
        };
        let s = &mut self.stats;
        let add = |v: &mut Option<u64>, d: u64| *v = v.map(|v| v + d);
        if busy {
            let cpu = 200_000 + rng.below(800_000);
            let user = cpu * (60 + rng.below(30)) / 100;
            add(&mut s.cpu.usage_usec, cpu);
            add(&mut s.cpu.user_usec, user);
            add(&mut s.cpu.system_usec, cpu - user);
            if rng.chance(0.1) {
                add(&mut s.cpu.nr_throttled, 1 + rng.below(5));
                add(&mut s.cpu.throttled_usec, rng.below(100_000));
            }
            let pages = rng.below(64) as i64 - 32;
            let cur = s.memory_current.unwrap_or(0) as i64 + pages * 4096;
            s.memory_current = Some(cur.max(4096) as u64);
            s.memory.anon = Some(s.memory_current.unwrap_or(0) / 2);
            s.memory.file = Some(s.memory_current.unwrap_or(0) / 3);
            if let Some(d) = s.io.first_mut() {
                if rng.chance(0.3) {
                    let ops = 1 + rng.below(200);
                    add(&mut d.rios, ops);
                    add(&mut d.rbytes, ops * 4096 * (1 + rng.below(8)));
                }
                let ops = 1 + rng.below(50);
                add(&mut d.wios, ops);
                add(&mut d.wbytes, ops * 4096 * (1 + rng.below(4)));
            }
            if rng.chance(0.02) {
                add(&mut s.memory_events.high, 1);
            }
            for pr in [
                &mut s.cpu_pressure,
                &mut s.memory_pressure,
                &mut s.io_pressure,
            ]
            .into_iter()
            .flatten()
            {
                add(&mut pr.some_usec, rng.below(50_000));
                add(&mut pr.full_usec, rng.below(10_000));
            }
            s.pids_current = s
                .pids_current
                .map(|n| (n + rng.below(3)).saturating_sub(1).max(1));
        } else if p != Profile::IdleV1 && rng.chance(0.02) {
            // Even an idle tenant's kernel threads tick now and then.
            add(&mut s.cpu.usage_usec, rng.below(300));
            add(&mut s.cpu.system_usec, rng.below(300));
        }
        let cur = Sample::whole(1, s.clone());
        let r = self
            .prev
            .as_ref()
            .and_then(|(prev, prev_ms)| usage::rates(prev, *prev_ms, &cur, ts));
        let row = UsageRow::from_sample(&self.name, ts, &cur, r.as_ref());
        let cores = row.rates.cpu_cores.unwrap_or(0.0);
        let capacity_usec = 2.0 * row.interval_ms.unwrap_or(1000) as f64 * 1000.0;
        let used_usec = (cores * row.interval_ms.unwrap_or(1000) as f64 * 1000.0) as u64;
        let delivered = (used_usec as f64 / capacity_usec).clamp(0.0, 1.0);
        let contended = busy && row.rates.cpu_some_stall_ratio.unwrap_or(0.0) > 0.025;
        let verdict = Verdict {
            tenant: self.name.clone(),
            ts_ms: ts,
            interval_ms: row.interval_ms.unwrap_or(1000),
            guarantee_ratio: self.guarantee,
            delivered_ratio: delivered,
            contended,
            violating: contended && self.guarantee.is_some_and(|g| delivered < g),
        };
        self.prev = Some((cur, ts));
        (row, verdict)
    }
}

/// `SUM(pgsize)` per table and index, from SQLite's `dbstat`.
async fn dbstat(pool: &sqlx::SqlitePool) -> Vec<(String, i64)> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .expect("checkpoint");
    sqlx::query_as(
        "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name HAVING SUM(pgsize) > 4096 ORDER BY 2 DESC",
    )
    .fetch_all(pool)
    .await
    .expect("dbstat (SQLite built without SQLITE_ENABLE_DBSTAT_VTAB?)")
}

fn mb(bytes: f64) -> String {
    format!("{:.3} MB", bytes / 1e6)
}

async fn measure(p: Profile, tenants: usize, minutes: i64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ p as u64);
    let mut ts_list: Vec<(Vec<UsageRow>, Vec<Verdict>)> = Vec::new();
    let mut sim: Vec<Tenant> = (0..tenants).map(|i| Tenant::new(i, p, &mut rng)).collect();
    // Sweeps 1 s apart with the few milliseconds of jitter a real timer has.
    let mut ts = 1_800_000_000_000i64;
    for _ in 0..minutes * 60 {
        ts += 1000 + rng.below(7) as i64 - 3;
        let (rows, verdicts) = sim.iter_mut().map(|t| t.sweep(p, ts, &mut rng)).unzip();
        ts_list.push((rows, verdicts));
    }
    let per_day = |bytes: f64| bytes / tenants as f64 * (24.0 * 60.0 / minutes as f64);
    println!(
        "\n== {} ({tenants} tenants, {minutes} min at 1 s)",
        p.name()
    );

    // Through the store: every sweep as raw rows (the layout before issue 15), then
    // `roll_up` compacts the closed windows into one block per tenant and window.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("now.db")).await.expect("open");
    let t = Instant::now();
    for (rows, verdicts) in &ts_list {
        store.add_sweep(rows, verdicts, &[]).await.expect("sweep");
    }
    let write = t.elapsed();
    let show = |title: String, stat: &[(String, i64)]| {
        let total: i64 = stat.iter().map(|s| s.1).sum();
        println!("{title}: {} per tenant per day", mb(per_day(total as f64)));
        for (name, bytes) in stat {
            println!("  {name:<28} {}", mb(per_day(*bytes as f64)));
        }
    };
    show(
        format!(
            "raw rows as written (the layout before; {:.1} s to write)",
            write.as_secs_f64()
        ),
        &dbstat(store.pool()).await,
    );
    let t = Instant::now();
    store.roll_up(ts + 3_600_000).await.expect("roll up");
    show(
        format!(
            "after roll_up: rollups and compressed blocks of 10 minutes ({:.2} s to roll up and compact {} tenant-samples)",
            t.elapsed().as_secs_f64(),
            ts_list.len() * tenants
        ),
        &dbstat(store.pool()).await,
    );
    store.close().await;
    // The compaction alone (in the daemon the minutes are rolled up in memory, so `roll_up`
    // folds no raw rows): a second store, compacted without rolling up.
    let alone = Store::open(&dir.path().join("alone.db"))
        .await
        .expect("open");
    for (rows, verdicts) in &ts_list {
        alone.add_sweep(rows, verdicts, &[]).await.expect("sweep");
    }
    let (t, cpu) = (Instant::now(), cpu_s());
    let moved = alone
        .compact_raw(ts + 3_600_000, &mut |_, _| {})
        .await
        .expect("compact");
    let cpu = cpu_s() - cpu;
    println!(
        "compaction alone: {:.2} s for {moved} rows and verdicts ({:.1} us per tenant-sample; CPU of every thread {:.2} s, {:.1} us per tenant-sample)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / (ts_list.len() * tenants) as f64,
        cpu,
        cpu * 1e6 / (ts_list.len() * tenants) as f64
    );
    alone.close().await;

    // Compressed blocks of `len` samples per tenant, stored one row per (tenant, start).
    println!("compressed blocks (one SQLite row per tenant and block; raw usage + verdicts):");
    for len in [10usize, 60, 600, 3600] {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join(format!("blocks{len}.db")))
                    .create_if_missing(true),
            )
            .await
            .expect("open blocks db");
        sqlx::query(
            "CREATE TABLE raw_blocks (tenant TEXT NOT NULL, start_ms INTEGER NOT NULL,
             usage BLOB NOT NULL, sla BLOB NOT NULL, PRIMARY KEY (tenant, start_ms)) WITHOUT ROWID",
        )
        .execute(&pool)
        .await
        .expect("create");
        let (mut usage_bytes, mut sla_bytes, mut blocks) = (0usize, 0usize, 0usize);
        let t = Instant::now();
        let mut encode_s = 0.0;
        let mut tx = pool.begin().await.expect("begin");
        for chunk in ts_list.chunks(len) {
            for k in 0..tenants {
                let rows: Vec<UsageRow> = chunk.iter().map(|(r, _)| r[k].clone()).collect();
                let verdicts: Vec<Verdict> = chunk.iter().map(|(_, v)| v[k].clone()).collect();
                let e = Instant::now();
                let u = encode_usage(&rows);
                let s = encode_verdicts(&verdicts);
                encode_s += e.elapsed().as_secs_f64();
                assert_eq!(decode_usage(&rows[0].tenant, &u).expect("decode"), rows);
                assert_eq!(
                    decode_verdicts(&rows[0].tenant, &s).expect("decode"),
                    verdicts
                );
                usage_bytes += u.len();
                sla_bytes += s.len();
                blocks += 1;
                sqlx::query("INSERT INTO raw_blocks VALUES (?1, ?2, ?3, ?4)")
                    .bind(&rows[0].tenant)
                    .bind(rows[0].ts_ms)
                    .bind(u)
                    .bind(s)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
        }
        tx.commit().await.expect("commit");
        let _ = t;
        let stat = dbstat(&pool).await;
        let total: i64 = stat.iter().map(|s| s.1).sum();
        let samples = (ts_list.len() * tenants) as f64;
        println!(
            "  {len:>5} samples/block: {} per tenant per day in SQLite (usage blobs {}, verdict blobs {}; \
             {:.1} + {:.1} bytes per sample; encode {:.2} us per tenant-sample)",
            mb(per_day(total as f64)),
            mb(per_day(usage_bytes as f64)),
            mb(per_day(sla_bytes as f64)),
            usage_bytes as f64 / samples,
            sla_bytes as f64 / samples,
            encode_s * 1e6 / samples,
        );
        let _ = blocks;
        pool.close().await;
    }

    // Verdicts: how many rows "changes of state only" would keep.
    let mut changes = 0usize;
    for k in 0..tenants {
        let mut last: Option<(Option<u64>, u64, bool, bool)> = None;
        for (_, v) in &ts_list {
            let v = &v[k];
            let key = (
                v.guarantee_ratio.map(f64::to_bits),
                v.delivered_ratio.to_bits(),
                v.contended,
                v.violating,
            );
            if last != Some(key) {
                changes += 1;
            }
            last = Some(key);
        }
    }
    println!(
        "verdicts: {:.1}% of the rows change state (guarantee, delivered, contended, violating)",
        100.0 * changes as f64 / (ts_list.len() * tenants) as f64
    );
}

fn main() {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tenants = args.first().copied().unwrap_or(20) as usize;
    let minutes = args.get(1).copied().unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for p in [
        Profile::IdleV1,
        Profile::IdleV2,
        Profile::MostlyIdle,
        Profile::Busy,
    ] {
        rt.block_on(measure(p, tenants, minutes));
    }
}
