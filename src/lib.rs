//! tenantd shares a Linux host's CPU, memory, IO and process slots among tenants with cgroup v2.
//! ```text
//! 4  cli      subcommands; `serve` wires the daemon; the client speaks HTTP, never SQL
//! 3  api      axum handlers, thin: parse, call the engine, answer (problem+json, auth)
//!    config   file + environment + flags -> one validated Config (read by cli only)
//! 2  engine   where kernel, clock and store meet: apply, reconcile, placement, sampler
//! 1  cgroup   the only code touching cgroupfs      store     all SQL, the only database code
//!    net      the only code running nft (egress)
//!    report   SLA report rendering                 metrics   every Prometheus name, rendering
//!    launch   `tenantd run`'s namespaces, user and capabilities (`unsafe` only in launch/sys.rs
//!             and store/direct.rs: SQLite called directly for the raw rows)
//! 0  domain   pure types and rules: specs, plan, stats, usage rows, SLA engine (no IO, no clock)
//! a module imports only from layers below its own, and no two import each other (layer_order)
//! ```
#![deny(unsafe_code)]

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod launch;
pub mod metrics;
pub mod net;
pub mod report;
pub mod store;

/// The layer order above, checked from the source text (issue 16). Every `crate::NAME` path
/// (in `use` lines, groups `crate::{a, b}`, paths in code and in attribute strings) and every
/// `super::..::NAME` that leaves its top-level module is an import of `NAME`; comments are
/// not. A module may import only from a lower layer, except the pairs in `ALLOWED`, and no two
/// modules import each other, at the top level or among the files of one module (`SIBLINGS`
/// lists the known pairs there). A `super::` path is taken to stay inside its top-level
/// module when it names one of that module's own files, which is how the code uses it.
#[cfg(test)]
mod layer_order {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Each top-level module's layer: 0 is the bottom.
    const LAYERS: &[(&str, u8)] = &[
        ("domain", 0),
        ("cgroup", 1),
        ("store", 1),
        ("report", 1),
        ("metrics", 1),
        ("launch", 1),
        ("net", 1),
        ("engine", 2),
        ("api", 3),
        ("config", 3),
        ("cli", 4),
    ];

    /// Imports against the order, each with its reason: (file below `src/`, module, why).
    const ALLOWED: &[(&str, &str, &str)] = &[];

    /// Files of one module that import each other: (file, file, why), in name order.
    const SIBLINGS: &[(&str, &str, &str)] = &[(
        "domain/schema.rs",
        "domain/tenant.rs",
        "schema states the OpenAPI constraints of the spec's fields, which tenant's derive \
             attributes name, from tenant's own limits (MAX_LABELS, ...) so the two cannot drift",
    )];

    struct Source {
        /// Below `src/`, e.g. `engine/sampler.rs`.
        file: String,
        /// The module path, e.g. `["engine", "sampler"]`; a `mod.rs` is its directory.
        module: Vec<String>,
        /// The text without comments.
        text: String,
    }

    fn sources(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                sources(&p, root, out);
                continue;
            }
            let file = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if !file.ends_with(".rs") || file == "lib.rs" || file == "main.rs" {
                continue;
            }
            let mut module: Vec<String> = file
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = strip_comments(&std::fs::read_to_string(&p).unwrap());
            out.push(Source { file, module, text });
        }
    }

    /// Removes `//` and `/* */` comments, keeping string and char literals (an attribute's
    /// `"crate::..."` path is an import too).
    fn strip_comments(s: &str) -> String {
        let c: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < c.len() {
            let next = c.get(i + 1).copied();
            match c[i] {
                '/' if next == Some('/') => {
                    while i < c.len() && c[i] != '\n' {
                        i += 1;
                    }
                }
                '/' if next == Some('*') => {
                    while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                        i += 1;
                    }
                    i += 2;
                }
                'r' if (next == Some('"') || next == Some('#'))
                    && !c[..i]
                        .last()
                        .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
                {
                    // A raw string: r"..", r#".."#, ...
                    let hashes = c[i + 1..].iter().take_while(|h| **h == '#').count();
                    if c.get(i + 1 + hashes) != Some(&'"') {
                        out.push(c[i]);
                        i += 1;
                        continue;
                    }
                    let start = i;
                    i += 2 + hashes;
                    while i < c.len()
                        && !(c[i] == '"'
                            && c[i + 1..].iter().take(hashes).all(|h| *h == '#')
                            && c.len() > i + hashes)
                    {
                        i += 1;
                    }
                    i += 1 + hashes;
                    out.extend(&c[start..i.min(c.len())]);
                }
                '"' => {
                    let start = i;
                    i += 1;
                    while i < c.len() && c[i] != '"' {
                        i += if c[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                    out.extend(&c[start..i.min(c.len())]);
                }
                '\'' if next == Some('\\') => {
                    // An escaped char literal: '\n', '\'', '\u{..}'.
                    let start = i;
                    i += 2;
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    out.extend(&c[start..i.min(c.len())]);
                }
                '\'' if c.get(i + 2) == Some(&'\'') => {
                    out.extend(&c[i..i + 3]);
                    i += 3;
                }
                ch => {
                    out.push(ch);
                    i += 1;
                }
            }
        }
        out
    }

    fn is_ident(ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_'
    }

    fn ident_at(t: &str, at: usize) -> &str {
        let rest = &t[at..];
        &rest[..rest.find(|ch| !is_ident(ch)).unwrap_or(rest.len())]
    }

    /// The first segments of every path that starts with `prefix` (not preceded by an
    /// identifier, `$` or `:`), a group `prefix{a, b::c}` giving each of its members.
    fn paths_after<'a>(t: &'a str, prefix: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for (at, _) in t.match_indices(prefix) {
            if t[..at]
                .chars()
                .next_back()
                .is_some_and(|p| is_ident(p) || p == '$' || p == ':')
            {
                continue;
            }
            out.extend(segments_at(t, at + prefix.len()));
        }
        out
    }

    /// The segment at `at`, or each member's first segment when a group `{a, b::c}` is there.
    fn segments_at(t: &str, at: usize) -> Vec<&str> {
        if !t[at..].starts_with('{') {
            return vec![ident_at(t, at)];
        }
        let mut out = Vec::new();
        let (mut depth, mut expect) = (0, true);
        for (k, ch) in t[at..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => expect = true,
                ch if depth == 1 && expect && is_ident(ch) => {
                    out.push(ident_at(t, at + k));
                    expect = false;
                }
                _ => {}
            }
        }
        out
    }

    /// Where `s` reaches by `super::`: the names after one or more `super::`.
    fn super_paths(s: &Source) -> Vec<&str> {
        let mut out = Vec::new();
        for (at, _) in s.text.match_indices("super::") {
            if s.text[..at]
                .chars()
                .next_back()
                .is_some_and(|p| is_ident(p) || p == ':')
            {
                continue;
            }
            let mut end = at;
            while s.text[end..].starts_with("super::") {
                end += "super::".len();
            }
            out.extend(segments_at(&s.text, end));
        }
        out
    }

    /// (file, name it imports): a top-level module, or a file of its own module.
    type Imports = BTreeSet<(String, String)>;

    /// The top-level modules each file imports, and the files of its own module it imports.
    fn imports(all: &[Source]) -> (Imports, Imports) {
        let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
        let files_of = |top: &str| -> BTreeSet<&str> {
            all.iter()
                .filter(|s| s.module.len() > 1 && s.module[0] == top)
                .map(|s| s.module[1].as_str())
                .collect()
        };
        let (mut top, mut sib) = (BTreeSet::new(), BTreeSet::new());
        for s in all {
            let own = &s.module[0];
            let files = files_of(own);
            let mut inner = |name: &str| {
                if files.contains(name) {
                    if s.module.len() > 1 && s.module[1] != name {
                        sib.insert((s.file.clone(), name.to_string()));
                    }
                } else if name != own && layer.contains_key(name) {
                    top.insert((s.file.clone(), name.to_string()));
                }
            };
            // `crate::own::file` and `super::..::file` name a file of the same module.
            for name in paths_after(&s.text, &format!("crate::{own}::")) {
                inner(name);
            }
            for name in super_paths(s) {
                inner(name);
            }
            for name in paths_after(&s.text, "crate::") {
                assert!(
                    layer.contains_key(name),
                    "{}: crate::{name} is not in LAYERS: give the module a layer",
                    s.file
                );
                if name != own {
                    top.insert((s.file.clone(), name.to_string()));
                }
            }
        }
        (top, sib)
    }

    fn all_sources() -> Vec<Source> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        sources(&root, &root, &mut all);
        all
    }

    #[test]
    fn no_module_imports_a_layer_above_it_and_none_import_each_other() {
        let all = all_sources();
        let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
        let tops: BTreeSet<&str> = all.iter().map(|s| s.module[0].as_str()).collect();
        assert_eq!(
            tops,
            layer.keys().copied().collect(),
            "LAYERS names every module"
        );
        let (top, sib) = imports(&all);
        let mut used = BTreeSet::new();
        let mut wrong = Vec::new();
        let mut edges = BTreeSet::new();
        for (file, to) in &top {
            let from = file.split(['/', '.']).next().unwrap();
            edges.insert((from, to.as_str()));
            if layer[to.as_str()] < layer[from] {
                continue;
            }
            match ALLOWED.iter().position(|(f, t, _)| f == file && t == to) {
                Some(i) => {
                    used.insert(i);
                }
                None => wrong.push(format!(
                    "{file} (layer {}) imports {to} (layer {})",
                    layer[from],
                    layer[to.as_str()]
                )),
            }
        }
        for (a, b) in &edges {
            if a < b && edges.contains(&(*b, *a)) {
                wrong.push(format!("{a} and {b} import each other"));
            }
        }
        let mut sib_used = BTreeSet::new();
        for (file, to) in &sib {
            let dir = &file[..file.rfind('/').unwrap()];
            let other = format!("{dir}/{to}.rs");
            let name = file.rsplit(['/', '.']).nth(1).unwrap();
            if *file > other || !sib.contains(&(other.clone(), name.to_string())) {
                continue;
            }
            match SIBLINGS
                .iter()
                .position(|(a, b, _)| a == file && *b == other)
            {
                Some(i) => {
                    sib_used.insert(i);
                }
                None => wrong.push(format!("{file} and {other} import each other")),
            }
        }
        for (i, (f, t, _)) in ALLOWED.iter().enumerate() {
            if !used.contains(&i) {
                wrong.push(format!("ALLOWED has ({f}, {t}), which is no longer needed"));
            }
        }
        for (i, (f, t, _)) in SIBLINGS.iter().enumerate() {
            if !sib_used.contains(&i) {
                wrong.push(format!(
                    "SIBLINGS has ({f}, {t}), which is no longer needed"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "layer order broken:\n{}",
            wrong.join("\n")
        );
    }

    /// `unsafe` is denied in the crate and allowed in two files: `launch/sys.rs` (fork, the
    /// ioctl that brings a new network namespace's loopback up, and glibc's malloc_trim) and
    /// `store/direct.rs` (direct SQLite calls for the raw rows, issue 15).
    #[test]
    fn unsafe_code_is_allowed_in_two_files_only() {
        let allowing: Vec<String> = all_sources()
            .into_iter()
            .filter(|s| s.text.contains("allow(unsafe_code)"))
            .map(|s| s.file)
            .collect();
        assert_eq!(allowing, ["launch/sys.rs", "store/direct.rs"]);
        let lib =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
        assert!(lib.lines().any(|l| l == "#![deny(unsafe_code)]"));
    }

    /// Handlers read the store only through the engine's methods (`engine/reads.rs`), never
    /// through `Governor::store()`.
    #[test]
    fn the_api_reaches_the_store_only_through_the_engine() {
        for s in all_sources().iter().filter(|s| s.module[0] == "api") {
            assert!(!s.text.contains(".store()"), "{} calls .store()", s.file);
        }
    }

    /// The scanner finds what the check needs: groups, nested groups, attribute strings and
    /// `super::` chains, and skips comments, `$crate` and paths that only end in `crate::`.
    #[test]
    fn the_scanner_finds_every_form_of_import() {
        let text = strip_comments(
            "use crate::{api::x, store::{A, B}, engine};\n\
             // use crate::cli;\n/* crate::config */ let s = \"// crate::domain\";\n\
             #[serde(with = \"crate::metrics::m\")] let c = '\"'; $crate::report; my_crate::cgroup;\n\
             let r = r#\"a \" crate::report \"#; super::super::report::X; super::{a, b};",
        );
        assert_eq!(
            paths_after(&text, "crate::"),
            ["api", "store", "engine", "domain", "metrics", "report"]
        );
        let s = Source {
            file: "api/x.rs".into(),
            module: vec!["api".into(), "x".into()],
            text,
        };
        assert_eq!(super_paths(&s), ["report", "a", "b"]);
    }
}
