//! Placement rules at a shared host's scale (issues 15 and 17): `cargo bench --bench
//! placement_rules [-- N...]` (default 300, 1,000 and 10,000 accounts).
//!
//! N tenants with a rule by uid each (one hosting account per tenant) and 10 CI-runner rules by
//! exe at a higher priority, as `domain::placement` holds them. For each N it prints, as
//! medians of 5 (10,000 processes each for matching):
//! - building the rules (`PlacementRules::new`: the conflict check and the uid index), which
//!   the daemon does after every change of a tenant's spec;
//! - placing a process (`place`): half of them are an account's (a hit), half no account's
//!   (a miss: every candidate is tried), in ns per process;
//! - for comparison, what the matcher did before the uid index: every rule tried in
//!   precedence order (`iter` + `matches`, the first hit wins), and, up to 1,000 rules, the
//!   conflict check of every pair (`check_conflicts` of each rule against the later ones).
//!
//! Pure CPU work on this thread; no kernel, no daemon (the daemon's own cost per exec is
//! `benches/placement.sh`).

use std::time::Instant;
use tenantd::domain::placement::{
    PlacementRule, PlacementRules, PlacementSpec, ProcessFacts, check_conflicts,
};

fn main() {
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().unwrap_or_else(|_| panic!("a count, not '{a}'")))
        .collect();
    let counts = if counts.is_empty() {
        vec![300, 1_000, 10_000]
    } else {
        counts
    };
    for n in counts {
        measure(n);
    }
}

fn rule(json: &str) -> PlacementRule {
    let spec: PlacementSpec = serde_json::from_str(json).expect("a valid placement");
    spec.resolve(|_| None, |_| None).expect("ids only")
}

/// N accounts by uid (10,000 + i), 10 CI runners by exe at priority 10.
fn rules(n: u32) -> Vec<(String, PlacementRule)> {
    (0..n)
        .map(|i| {
            (
                format!("acct{i:05}"),
                rule(&format!(r#"{{"uids": [{}]}}"#, 10_000 + i)),
            )
        })
        .chain((0..10).map(|k| {
            (
                format!("ci{k}"),
                rule(&format!(r#"{{"exe": ["/opt/ci{k}/*"], "priority": 10}}"#)),
            )
        }))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(n: u32) {
    let named = rules(n);
    let build = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let r = PlacementRules::new(named.clone()).expect("no conflict");
                std::hint::black_box(r);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let placed = PlacementRules::new(named.clone()).expect("no conflict");
    let procs: Vec<ProcessFacts> = (0..10_000u32)
        .map(|i| {
            // Even: an account's process; odd: a uid no rule names.
            let uid = if i % 2 == 0 {
                10_000 + (i * 7919) % n
            } else {
                500_000 + i
            };
            ProcessFacts {
                pid: 1_000 + i,
                ruid: uid,
                euid: uid,
                gids: vec![uid],
                exe: Some(format!("/usr/bin/p{}", i % 13).into()),
                cmdline: Some(b"php-fpm: pool www\0".to_vec()),
                ..ProcessFacts::default()
            }
        })
        .collect();
    let per_proc = |f: &dyn Fn(&ProcessFacts) -> Option<String>| -> f64 {
        median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let mut hits = 0usize;
                    for p in &procs {
                        hits += usize::from(f(p).is_some());
                    }
                    assert_eq!(hits, procs.len() / 2, "every account's process, no other");
                    t.elapsed().as_secs_f64() * 1e9 / procs.len() as f64
                })
                .collect(),
        )
    };
    let indexed = per_proc(&|p| placed.place(p).map(|d| d.tenant.clone()));
    let linear = per_proc(&|p| {
        placed
            .iter()
            .find(|(_, r)| r.matches(p))
            .map(|(t, _)| t.clone())
    });
    let pairwise = (n <= 1_000).then(|| {
        let t = Instant::now();
        for (i, (name, r)) in named.iter().enumerate() {
            check_conflicts(name, r, named[i + 1..].iter().map(|(t, r)| (t, r)))
                .expect("no conflict");
        }
        t.elapsed().as_secs_f64() * 1e3
    });
    println!(
        "{n} accounts + 10 CI rules: build (conflict check + index) {build:.1} ms{}; place {indexed:.0} ns a process (every rule tried, as before the index: {linear:.0} ns)",
        pairwise.map_or(String::new(), |ms| format!(
            " (every pair checked, as before: {ms:.1} ms)"
        ))
    );
}
