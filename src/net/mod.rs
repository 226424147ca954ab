//! The only code that touches nftables: runs the `nft` binary to load tenantd's own table in
//! one transaction (`Nft::load`), to read it back (`Nft::list`, parsed by `parse_listing`
//! into the domain's `Listing`) and to check, without committing, that this host can hold
//! it (`Nft::probe`). Synchronous; the engine calls it off the async runtime.
//!
//! Only `table inet tenantd` is ever named: the scripts come from `domain::nft`, which
//! creates, deletes and rewrites that table alone, and listings ask for that table alone.
//!
//! Layer 1 (see `lib.rs`): imports `domain` only.

use crate::domain::nft::{ListedChain, ListedRule, Listing, NftCgroup, TABLE, Table};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the nftables layer: the operation, and what nft said.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {op} failed ({status}): {stderr}")]
    Failed {
        op: &'static str,
        status: String,
        stderr: String,
    },
    #[error("nft {op} did not finish within {} s and was killed", .secs)]
    Timeout { op: &'static str, secs: u64 },
    #[error("cannot read nft's listing of {TABLE}: {why}")]
    Parse { why: String },
}

/// How long one nft run may take: it walks /sys/fs/cgroup to print cgroup paths, which grows
/// with the tree.
const NFT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `nft` binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Nft {
    pub bin: PathBuf,
}

impl Nft {
    /// `nft` from the directories of `path` (a `PATH` value), if one is there.
    pub fn find(path: &str) -> Option<Nft> {
        std::env::split_paths(path)
            .map(|d| d.join("nft"))
            .find(|p| is_executable(p))
            .map(|bin| Nft { bin })
    }

    /// `nft --version`, e.g. "nftables v1.0.6 (Lester Gooch #5)".
    pub fn version(&self) -> Result<String, NetError> {
        self.run("--version", &["--version"], None)
            .map(|o| o.trim().to_string())
    }

    /// Loads `script` (from `Table::script`) in one transaction: all of it or none.
    pub fn load(&self, script: &str) -> Result<(), NetError> {
        self.run("-f -", &["-f", "-"], Some(script)).map(|_| ())
    }

    /// What the kernel holds of tenantd's table now; `None` when there is none. `terse`
    /// leaves out the map elements, whose cgroup paths nft finds by walking /sys/fs/cgroup
    /// (enough for the counters, and cheap).
    pub fn list(&self, terse: bool) -> Result<Option<Listing>, NetError> {
        let table: Vec<&str> = TABLE.split(' ').collect();
        let mut args = vec!["-j"];
        if terse {
            args.push("-t");
        }
        args.extend(["list", "table", table[0], table[1]]);
        match self.run("list table", &args, None) {
            Ok(out) => parse_listing(&out).map(Some),
            Err(NetError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks, without committing anything (`nft --check`), that the kernel takes a table of
    /// tenantd's shape for `cgroup`: the inet family, a `socket cgroupv2` verdict map (the
    /// nft_socket module), counters, comments and `reject` (nft_reject_inet).
    pub fn probe(&self, cgroup: &NftCgroup) -> Result<(), NetError> {
        let p = crate::domain::egress::Destination::parse("127.0.0.2:5432")
            .expect("a valid destination");
        let policy = crate::domain::egress::EgressSpec {
            deny: vec![p],
            ..Default::default()
        };
        let owner = crate::domain::nft::Owner {
            tenant: crate::domain::tenant::TenantName::parse("probe").expect("a valid name"),
            cgroup: cgroup.clone(),
            policy,
        };
        let script = Table::of(&[owner]).script(&Default::default());
        self.run("--check -f -", &["--check", "-f", "-"], Some(&script))
            .map(|_| ())
    }

    /// Runs nft with `args`, `input` on its stdin; its stdout when it exits 0.
    fn run(
        &self,
        op: &'static str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, NetError> {
        let mut child = Command::new(&self.bin)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // nft reads the whole script before it answers; a failed write shows in its exit.
            let _ = stdin.write_all(text.as_bytes());
        }
        // Both pipes are drained while nft runs, so a large listing cannot block it.
        let mut out_pipe = child.stdout.take().expect("piped");
        let mut err_pipe = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > NFT_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NetError::Timeout {
                        op,
                        secs: NFT_TIMEOUT.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(source) => {
                    return Err(NetError::Spawn {
                        bin: self.bin.clone(),
                        source,
                    });
                }
            }
        };
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        if status.success() {
            Ok(out)
        } else {
            Err(NetError::Failed {
                op,
                status: status.to_string(),
                stderr: one_line(&err),
            })
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// nft's error text (the message, the offending line and a caret line) as one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parses `nft -j list table inet tenantd` (libnftables-json(5), schema version 1): the maps
/// with their elements (absent in a terse listing), the chains with their hooks and rules.
/// Objects of another table are ignored.
pub fn parse_listing(json: &str) -> Result<Listing, NetError> {
    let bad = |why: String| NetError::Parse { why };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"nftables\" array".into()))?;
    let mut l = Listing::default();
    let ours = |o: &Value| {
        o.get("family").and_then(Value::as_str) == Some("inet")
            && o.get("table").and_then(Value::as_str) == Some("tenantd")
    };
    let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    for item in items {
        if let Some(m) = item.get("map").filter(|m| ours(m)) {
            let name = s(m, "name").ok_or_else(|| bad("a map without a name".into()))?;
            let mut els = Vec::new();
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(k), Some(target)) = (e.get(0), e.get(1)) else {
                    return Err(bad(format!("map {name}: element {e} is not a pair")));
                };
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                els.push((key, verdict_of(target)));
            }
            l.maps.insert(name, els);
        } else if let Some(c) = item.get("chain").filter(|c| ours(c)) {
            let name = s(c, "name").ok_or_else(|| bad("a chain without a name".into()))?;
            let hook = s(c, "hook").map(|h| (h, s(c, "policy").unwrap_or_default()));
            l.chains.entry(name).or_default().hook = hook;
        } else if let Some(r) = item.get("rule").filter(|r| ours(r)) {
            let chain = s(r, "chain").ok_or_else(|| bad("a rule without a chain".into()))?;
            let rule = rule_of(r);
            l.chains
                .entry(chain)
                .or_insert_with(ListedChain::default)
                .rules
                .push(rule);
        }
    }
    Ok(l)
}

/// A verdict object (`{"goto": {"target": "t_a"}}`, `{"accept": null}`) as `goto t_a`,
/// `accept`.
fn verdict_of(v: &Value) -> String {
    match v.as_object().and_then(|o| o.iter().next()) {
        Some((k, inner)) => match inner.get("target").and_then(Value::as_str) {
            Some(t) => format!("{k} {t}"),
            None => k.clone(),
        },
        None => v.to_string(),
    }
}

/// A value on the right of a match, as `Match::signature` writes it.
fn right_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p.get("addr").map(right_of).unwrap_or_default();
                let len = p.get("len").map(right_of).unwrap_or_default();
                format!("{addr}/{len}")
            } else if let Some(Value::Array(r)) = o.get("range") {
                r.iter().map(right_of).collect::<Vec<_>>().join("-")
            } else if let Some(Value::Array(set)) = o.get("set") {
                let mut items: Vec<String> = set.iter().map(right_of).collect();
                items.sort();
                items.join(",")
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// The left side of a match (`{"payload": {"protocol": "ip", "field": "daddr"}}`) as
/// `ip daddr`.
fn left_of(v: &Value) -> String {
    if let Some(p) = v.get("payload") {
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("?");
        let field = p.get("field").and_then(Value::as_str).unwrap_or("?");
        return format!("{proto} {field}");
    }
    if let Some(m) = v.get("meta") {
        return format!(
            "meta {}",
            m.get("key").and_then(Value::as_str).unwrap_or("?")
        );
    }
    if let Some(s) = v.get("socket") {
        return format!(
            "socket {}",
            s.get("key").and_then(Value::as_str).unwrap_or("?")
        );
    }
    v.to_string()
}

fn rule_of(r: &Value) -> ListedRule {
    let mut rule = ListedRule {
        comment: r.get("comment").and_then(Value::as_str).map(str::to_string),
        ..Default::default()
    };
    for e in r
        .get("expr")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some((k, inner)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match k.as_str() {
            "match" => {
                let left = inner.get("left").map(left_of).unwrap_or_default();
                let right = inner.get("right").map(right_of).unwrap_or_default();
                let op = inner.get("op").and_then(Value::as_str).unwrap_or("==");
                rule.matches.push(if matches!(op, "==" | "in") {
                    format!("{left} {right}")
                } else {
                    format!("{left} {op} {right}")
                });
            }
            "counter" => {
                let n = |f: &str| inner.get(f).and_then(Value::as_u64).unwrap_or(0);
                rule.packets = n("packets");
                rule.bytes = n("bytes");
            }
            "vmap" => {
                if let Some(key) = inner.get("key") {
                    rule.matches.push(left_of(key));
                }
                let data = inner.get("data").map(right_of).unwrap_or_default();
                rule.verdict = format!("vmap {data}");
            }
            "accept" | "drop" | "reject" | "return" | "continue" => rule.verdict = k.clone(),
            "goto" | "jump" => rule.verdict = verdict_of(e),
            other => rule.matches.push(format!("?{other}")),
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::nft::{BASE_CHAIN, Counters, drift, map_name};

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nft/6.1.0-57-amd64")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The table the fixture's `table.nft` was written from.
    fn table() -> Table {
        crate::domain::nft::samples::acme_web(&["fd00::/8/tcp", "::/0"])
    }

    /// The renderer wrote the fixture's script (what the VM loaded), and the kernel's
    /// listing of it parses back to no drift: the matches the renderer predicts are the
    /// ones nft 1.0.6 prints.
    #[test]
    fn a_listing_of_the_table_as_written_shows_no_drift() {
        let want = table();
        let mut carry = Counters::new();
        carry.insert(("t_acme".into(), "deny[0] 127.0.0.2:5432".into()), (3, 180));
        assert_eq!(want.script(&carry), fixture("table.nft"));
        let l = parse_listing(&fixture("list-table.json")).unwrap();
        assert_eq!(drift(&want, Some(&l)), vec![]);
        assert_eq!(
            l.counters()
                .get(&("t_acme".to_string(), "deny[0] 127.0.0.2:5432".to_string())),
            Some(&(3, 180))
        );
        let lookups: Vec<&str> = l.chains[BASE_CHAIN]
            .rules
            .iter()
            .map(|r| r.verdict.as_str())
            .collect();
        assert_eq!(lookups, ["vmap @level3", "vmap @level2"]);
        assert_eq!(
            &l.maps[&map_name(3)],
            &vec![("tenantd/acme/web".to_string(), "goto t_web".to_string())]
        );
        let t = &l.chains["t_web"].rules[0];
        assert_eq!(t.matches, ["ip daddr 10.0.0.0/8", "tcp dport 5000-6000"]);
        assert_eq!(t.verdict, "accept");
    }

    /// After the cgroup of `web` was removed and made again, the map still holds the old
    /// cgroup's id, which nft prints bare: drift, naming the tenant.
    #[test]
    fn a_recreated_cgroup_shows_as_its_old_id() {
        let l = parse_listing(&fixture("list-table-recreated.json")).unwrap();
        let d = drift(&table(), Some(&l));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].tenant.as_ref().map(|t| t.as_str()), Some("web"));
        assert!(d[0].what.contains("no longer exists"), "{}", d[0].what);
    }

    /// A terse listing has no elements, but every counter.
    #[test]
    fn a_terse_listing_has_the_counters() {
        let l = parse_listing(&fixture("list-table-terse.json")).unwrap();
        assert!(l.maps.values().all(Vec::is_empty));
        assert_eq!(l.counters().len(), 8);
    }

    #[test]
    fn odd_listings_are_errors_not_panics() {
        for bad in ["", "{}", "[1]", "{\"nftables\": 3}"] {
            assert!(parse_listing(bad).is_err(), "{bad:?}");
        }
        let other =
            r#"{"nftables":[{"rule":{"family":"ip","table":"filter","chain":"x","expr":[]}}]}"#;
        assert_eq!(parse_listing(other).unwrap(), Listing::default());
    }

    #[test]
    fn errors_come_as_one_line() {
        assert_eq!(
            one_line(
                "Error: No such file or directory\nlist table inet nosuch\n                ^^^^^^\n"
            ),
            "Error: No such file or directory | list table inet nosuch"
        );
    }

    #[test]
    fn nft_is_looked_up_in_path_only() {
        assert_eq!(Nft::find("/nonexistent:/also-not"), None);
        let dir = std::env::temp_dir().join(format!("tenantd-nft-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("nft");
        std::fs::write(&bin, "#!/bin/sh\necho 'nftables v9 (test)'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nft = Nft::find(&format!("/nonexistent:{}", dir.display())).unwrap();
        assert_eq!(nft.bin, bin);
        assert_eq!(nft.version().unwrap(), "nftables v9 (test)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
