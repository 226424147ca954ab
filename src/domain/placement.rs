//! Placement rules (issue 17): which tenant a running process belongs to, by user, group,
//! program and command line, and why.
//!
//! Pure: the caller reads `/proc` and `/etc/passwd`; this module takes what was read.
//!
//! - [`PlacementSpec`] is the `placement` section of a tenant's spec as the user writes it (JSON
//!   or TOML, unknown fields refused). [`PlacementSpec::validate`] checks it with no lookups.
//! - [`PlacementSpec::resolve`] turns it into a [`PlacementRule`]: user and group names become
//!   ids through the lookups the caller passes (an unknown name is an error naming the field),
//!   globs and the regex are compiled. A rule holds only numbers and compiled patterns, so
//!   matching is pure and cheap.
//! - [`PlacementRules`] is every tenant's rule, checked for conflicts; [`PlacementRules::place`]
//!   picks the tenant for a [`ProcessFacts`], [`PlacementRules::explain`] says for each rule
//!   whether it matched and, when not, on which fields.
//!
//! # What a rule matches
//! A process matches a rule when every field present matches:
//! - `uids`: the real or the effective uid is listed.
//! - `gids`: one of the process's groups (real, effective, supplementary) is listed.
//! - `exe`: the resolved `/proc/PID/exe` path matches one of the patterns. A pattern is an
//!   absolute path, compared whole, or a shell glob: `*`, `?` and `[...]` never match `/`
//!   (`/opt/acme/bin/*` matches `/opt/acme/bin/x`, not `/opt/acme/bin/sub/x`); `**` as a whole
//!   path component matches any number of components (`/opt/acme/**` matches both); `{a,b}`
//!   is either; `\` escapes. The path is taken as the caller passes it: a deleted binary's
//!   ` (deleted)` suffix is the caller's to handle.
//! - `cmdline`: the regex matches somewhere in the argv joined by NUL bytes (`/proc/PID/cmdline`
//!   less its final NUL: `python\0app.py\0--acme`). Only the first [`MAX_CMDLINE_MATCH_BYTES`]
//!   bytes are matched, so a huge command line costs no more than a short one; `$` then also
//!   matches at the cut. Unicode is on: `.` matches one UTF-8 character (and NUL, so `.*` crosses
//!   arguments), `(?-u:.)` any byte. The pattern has at most [`MAX_CMDLINE_PATTERN_BYTES`]
//!   bytes and must compile within [`CMDLINE_REGEX_SIZE_LIMIT`] bytes.
//!
//! A field whose value the caller could not read (`exe` or `cmdline` of `None`) does not match.
//! A rule needs at least one of the four fields; `priority` (default 0) and
//! `override_delegated` (default false) are not matched against anything.
//!
//! # Which rule wins
//! Of the rules that match, the highest `priority` wins; among equal priorities the most
//! specific (the most fields present, 1 to 4); among those the tenant whose name sorts first.
//! The result depends only on the set of rules, never on their order.
//!
//! # Conflicts, refused at apply time
//! Two rules of different tenants conflict when they have the same priority, the same
//! specificity, and every field that both have overlaps:
//! - `uids`, `gids`: the lists share an id.
//! - `exe`: some pattern of one and some pattern of the other overlap: the same text, a plain
//!   path the other's glob matches, or two globs the literal beginning of one of which (the
//!   text before the first of `*?[]{}\`) starts with the other's (`/opt/*/x` and `/opt/a/*`
//!   overlap, `/opt/a*` and `/opt/b*` do not). This never misses an overlap, and may see one
//!   where none is (`/opt/*/x` and `/opt/*/y`).
//! - `cmdline`: the same pattern text. Whether two different regexes share a match is not
//!   decided (it needs automata intersection).
//!
//! A field only one rule has never separates them, since the four fields are independent
//! facts of a process: a rule by uid and a rule by exe at the same priority conflict.
//! The check reads only the rules, never the processes. What it lets through, and the
//! precedence then settles by tenant name (and `explain` shows): a process whose real uid is in
//! one rule's list and effective uid in the other's, or whose groups span both lists, or
//! whose command line two different regexes both match.

use super::error::DomainError;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

/// Most uids, gids or exe patterns one rule may list.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest user or group name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest exe pattern, in bytes (PATH_MAX less the NUL).
pub const MAX_EXE_BYTES: usize = 4095;
/// Longest cmdline pattern, in bytes.
pub const MAX_CMDLINE_PATTERN_BYTES: usize = 1024;
/// Most bytes a compiled cmdline regex may take (`regex`'s `size_limit`).
pub const CMDLINE_REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Most bytes of lazy DFA cache one cmdline regex may grow (`regex`'s `dfa_size_limit`).
pub const CMDLINE_DFA_SIZE_LIMIT: usize = 256 * 1024;
/// Deepest nesting of groups and repetitions in a cmdline regex (`regex`'s `nest_limit`).
pub const CMDLINE_NEST_LIMIT: u32 = 32;
/// Most bytes of lazy DFA cache the set of every rule's cmdline regex may grow.
pub const CMDLINE_SET_DFA_SIZE_LIMIT: usize = 8 * 1024 * 1024;
/// How many bytes of the NUL-joined argv a cmdline regex sees.
pub const MAX_CMDLINE_MATCH_BYTES: usize = 4096;

/// A user or group as written in a rule: its id, or its name (resolved by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl<'de> Deserialize<'de> for IdOrName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IdOrName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an id from 0 to {} or a name", u32::MAX - 1)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdOrName, E> {
                // (uid_t)-1 means "no change" to setresuid(2) and so is nobody's id.
                match u32::try_from(v) {
                    Ok(id) if id != u32::MAX => Ok(IdOrName::Id(id)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdOrName, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            /// A whole number written as a float (`1001.0`; JSON Schema's integer allows it).
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<IdOrName, E> {
                match super::units::whole(v) {
                    Some(u) => self.visit_u64(u),
                    None => Err(E::invalid_value(serde::de::Unexpected::Float(v), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdOrName, E> {
                Ok(IdOrName::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(n) => write!(f, "'{n}'"),
        }
    }
}

/// The `placement` section of a tenant's spec: which processes belong to the tenant. A process
/// matches when every field present matches; at least one of uids, gids, exe and cmdline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Users (uid or name): the process's real or effective uid is one of them.
    #[serde(default)]
    #[schema(schema_with = placement_uids)]
    pub uids: Option<Vec<IdOrName>>,
    /// Groups (gid or name): one of the process's groups is one of them.
    #[serde(default)]
    #[schema(schema_with = placement_gids)]
    pub gids: Option<Vec<IdOrName>>,
    /// Absolute paths or globs over the resolved `/proc/PID/exe`.
    #[serde(default)]
    #[schema(schema_with = placement_exe)]
    pub exe: Option<Vec<String>>,
    /// A regex over the NUL-joined argv.
    #[serde(default)]
    #[schema(schema_with = placement_cmdline)]
    pub cmdline: Option<String>,
    /// Higher wins when rules of several tenants match one process.
    #[serde(default, deserialize_with = "super::units::count::u32")]
    pub priority: u32,
    /// Move a matching process even out of a systemd unit's delegated subtree.
    #[serde(default)]
    pub override_delegated: bool,
}

/// One of the fields a rule matches on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleField {
    Uids,
    Gids,
    Exe,
    Cmdline,
}

impl RuleField {
    /// The field's path in a tenant spec, as errors name it.
    pub fn path(self) -> &'static str {
        match self {
            RuleField::Uids => "placement.uids",
            RuleField::Gids => "placement.gids",
            RuleField::Exe => "placement.exe",
            RuleField::Cmdline => "placement.cmdline",
        }
    }
}

impl PlacementSpec {
    /// Checks the rule as written, with no lookups: at least one field, lists neither empty
    /// nor too long, names well formed, exe paths absolute and plain, globs and the regex
    /// compiling within their limits.
    pub fn validate(&self) -> Result<(), DomainError> {
        self.resolve(|_| Some(0), |_| Some(0)).map(|_| ())
    }

    /// Validates the rule and resolves it: `user` and `group` give the id of a name, `None`
    /// when the host has no such user or group (an error naming the field).
    pub fn resolve(
        &self,
        mut user: impl FnMut(&str) -> Option<u32>,
        mut group: impl FnMut(&str) -> Option<u32>,
    ) -> Result<PlacementRule, DomainError> {
        if self.uids.is_none()
            && self.gids.is_none()
            && self.exe.is_none()
            && self.cmdline.is_none()
        {
            return Err(DomainError::invalid(
                "placement",
                "names no process: give at least one of uids, gids, exe and cmdline, or leave placement out",
            ));
        }
        let uids = match &self.uids {
            Some(l) => Some(resolve_ids(RuleField::Uids, "user", l, &mut user)?),
            None => None,
        };
        let gids = match &self.gids {
            Some(l) => Some(resolve_ids(RuleField::Gids, "group", l, &mut group)?),
            None => None,
        };
        let exe = match &self.exe {
            Some(l) => Some(ExePatterns::compile(l)?),
            None => None,
        };
        let cmdline = match &self.cmdline {
            Some(p) => Some(CmdlineRegex::compile(p)?),
            None => None,
        };
        Ok(PlacementRule {
            uids,
            gids,
            exe,
            cmdline,
            priority: self.priority,
            override_delegated: self.override_delegated,
        })
    }
}

fn check_list_len(field: RuleField, len: usize, what: &str) -> Result<(), DomainError> {
    if len == 0 {
        return Err(DomainError::invalid(
            field.path(),
            format!(
                "is empty, so it would match no process: list at least one {what}, or leave the field out"
            ),
        ));
    }
    if len > MAX_LIST_ITEMS {
        return Err(DomainError::invalid(
            field.path(),
            format!("lists {len} items: a rule may list at most {MAX_LIST_ITEMS}"),
        ));
    }
    Ok(())
}

fn resolve_ids(
    field: RuleField,
    what: &str,
    list: &[IdOrName],
    lookup: &mut impl FnMut(&str) -> Option<u32>,
) -> Result<BTreeSet<u32>, DomainError> {
    check_list_len(field, list.len(), &format!("{what} id or name"))?;
    let mut ids = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{}[{i}]", field.path());
        let id = match item {
            IdOrName::Id(id) => *id,
            IdOrName::Name(name) => {
                check_name(&at, what, name)?;
                lookup(name).ok_or_else(|| {
                    DomainError::invalid(
                        &at,
                        format!("there is no {what} named '{name}' on this host"),
                    )
                })?
            }
        };
        ids.insert(id);
    }
    Ok(ids)
}

fn check_name(at: &str, what: &str, name: &str) -> Result<(), DomainError> {
    let bad = |why: String| {
        Err(DomainError::invalid(
            at,
            format!("{what} name '{}' {why}", name.escape_default()),
        ))
    };
    if name.is_empty() {
        return bad(format!("is empty: give a {what} name or id"));
    }
    if name.len() > MAX_NAME_BYTES {
        return bad(format!("is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!(
            "is all digits: write the {what} id as a number, without quotes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ':' || *c == '/')
    {
        return bad(format!(
            "contains '{}', which no {what} name in /etc/passwd or /etc/group can",
            c.escape_default()
        ));
    }
    Ok(())
}

/// A rule's exe patterns, compiled into one set.
#[derive(Debug, Clone)]
struct ExePatterns {
    texts: Vec<String>,
    set: GlobSet,
}

/// Characters that make an exe pattern a glob; the literal beginning stops at the first.
const GLOB_META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

impl ExePatterns {
    fn compile(list: &[String]) -> Result<Self, DomainError> {
        check_list_len(RuleField::Exe, list.len(), "absolute path or glob")?;
        let mut set = GlobSetBuilder::new();
        for (i, p) in list.iter().enumerate() {
            let at = format!("{}[{i}]", RuleField::Exe.path());
            check_exe_path(&at, p)?;
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    DomainError::invalid(&at, format!("'{p}' is not a valid glob: {}", e.kind()))
                })?;
            set.add(glob);
        }
        let set = set.build().map_err(|e| {
            DomainError::invalid(
                RuleField::Exe.path(),
                format!("the globs do not compile: {e}"),
            )
        })?;
        Ok(ExePatterns {
            texts: list.to_vec(),
            set,
        })
    }

    fn is_match(&self, exe: &Path) -> bool {
        self.set.is_match(exe)
    }

    /// Whether some pattern of each may match one path; see the module header.
    fn overlaps(&self, other: &ExePatterns) -> bool {
        self.texts
            .iter()
            .any(|a| other.texts.iter().any(|b| self.pair_overlaps(a, other, b)))
    }

    fn pair_overlaps(&self, a: &str, other: &ExePatterns, b: &str) -> bool {
        let plain = |p: &str| !p.contains(GLOB_META);
        if a == b {
            return true;
        }
        match (plain(a), plain(b)) {
            (true, true) => false,
            (true, false) => other.set.matches(a).iter().any(|&k| other.texts[k] == b),
            (false, true) => self.set.matches(b).iter().any(|&k| self.texts[k] == a),
            (false, false) => {
                let lit = |p: &str| -> usize { p.find(GLOB_META).unwrap_or(p.len()) };
                let (la, lb) = (&a[..lit(a)], &b[..lit(b)]);
                la.starts_with(lb) || lb.starts_with(la)
            }
        }
    }
}

fn check_exe_path(at: &str, p: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        Err(DomainError::invalid(
            at,
            format!("'{}' {why}", p.escape_default()),
        ))
    };
    if !p.starts_with('/') {
        return bad(
            "is not an absolute path: exe patterns start with '/' (e.g. /usr/bin/php-fpm8.2 or /opt/acme/bin/*)",
        );
    }
    if p.len() > MAX_EXE_BYTES {
        return bad(&format!("is longer than {MAX_EXE_BYTES} bytes"));
    }
    if p.contains('\0') {
        return bad("contains a NUL byte");
    }
    if p.ends_with('/') {
        return bad("ends with '/': name the program, or use a glob such as /opt/acme/bin/*");
    }
    if p[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad(
            "has an empty, '.' or '..' part: the resolved exe path never does, so write it plainly",
        );
    }
    Ok(())
}

/// A rule's compiled cmdline regex, with its text.
#[derive(Debug, Clone)]
struct CmdlineRegex {
    text: String,
    regex: Regex,
}

impl CmdlineRegex {
    fn compile(p: &str) -> Result<Self, DomainError> {
        let field = RuleField::Cmdline.path();
        if p.is_empty() {
            return Err(DomainError::invalid(
                field,
                "is empty, so it would match every process: leave the field out instead",
            ));
        }
        if p.len() > MAX_CMDLINE_PATTERN_BYTES {
            return Err(DomainError::invalid(
                field,
                format!(
                    "the pattern has {} bytes: at most {MAX_CMDLINE_PATTERN_BYTES} are allowed",
                    p.len()
                ),
            ));
        }
        let regex = RegexBuilder::new(p)
            .size_limit(CMDLINE_REGEX_SIZE_LIMIT)
            .dfa_size_limit(CMDLINE_DFA_SIZE_LIMIT)
            .nest_limit(CMDLINE_NEST_LIMIT)
            .build()
            .map_err(|e| DomainError::invalid(field, regex_message(p, &e)))?;
        Ok(CmdlineRegex {
            text: p.to_string(),
            regex,
        })
    }

    fn is_match(&self, argv: &[u8]) -> bool {
        self.regex.is_match(matched_cmdline(argv))
    }
}

/// One line saying why `p` does not compile (the regex crate's syntax errors span lines).
fn regex_message(p: &str, e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "the regex compiles to more than {limit} bytes: use fewer or smaller repetitions and classes (\\w and \\d are large under Unicode; (?-u:\\w) is small)"
        ),
        e => {
            let text = e.to_string();
            let why = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or_else(|| text.lines().last().unwrap_or_default());
            format!("'{}' is not a valid regex: {why}", p.escape_default())
        }
    }
}

/// What of `/proc/PID/cmdline` a cmdline regex sees: the final NUL dropped, then at most
/// [`MAX_CMDLINE_MATCH_BYTES`] bytes.
pub fn matched_cmdline(argv: &[u8]) -> &[u8] {
    let argv = argv.strip_suffix(b"\0").unwrap_or(argv);
    &argv[..argv.len().min(MAX_CMDLINE_MATCH_BYTES)]
}

/// A validated rule with names resolved and patterns compiled: matching needs nothing else.
#[derive(Debug, Clone)]
pub struct PlacementRule {
    uids: Option<BTreeSet<u32>>,
    gids: Option<BTreeSet<u32>>,
    exe: Option<ExePatterns>,
    cmdline: Option<CmdlineRegex>,
    priority: u32,
    override_delegated: bool,
}

/// What the caller knows of a process. `exe` and `cmdline` are `None` when they could not be
/// read (the process exited, a kernel thread, no permission).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: with `pid`, names the process across PID reuse.
    pub start_time: u64,
    pub ruid: u32,
    pub euid: u32,
    /// The real and effective gid and the supplementary groups.
    pub gids: Vec<u32>,
    /// The resolved `/proc/PID/exe`.
    pub exe: Option<std::path::PathBuf>,
    /// `/proc/PID/cmdline` as read: the arguments, each ended by a NUL.
    pub cmdline: Option<Vec<u8>>,
}

/// Why a field of a rule did not match a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissReason {
    /// The process's value is not one the rule names.
    NotListed,
    /// The process's value could not be read, so nothing matches it.
    Unknown,
}

/// A field of a rule that did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Miss {
    pub field: RuleField,
    pub reason: MissReason,
}

impl PlacementRule {
    pub fn priority(&self) -> u32 {
        self.priority
    }

    pub fn override_delegated(&self) -> bool {
        self.override_delegated
    }

    /// The fields present, in the order uids, gids, exe, cmdline.
    pub fn fields(&self) -> Vec<RuleField> {
        [
            (self.uids.is_some(), RuleField::Uids),
            (self.gids.is_some(), RuleField::Gids),
            (self.exe.is_some(), RuleField::Exe),
            (self.cmdline.is_some(), RuleField::Cmdline),
        ]
        .into_iter()
        .filter_map(|(present, f)| present.then_some(f))
        .collect()
    }

    /// How many fields the rule has (1 to 4): more is more specific.
    pub fn specificity(&self) -> u8 {
        self.fields().len() as u8
    }

    /// Whether every field present matches `p`.
    pub fn matches(&self, p: &ProcessFacts) -> bool {
        self.matches_with(p, || None)
    }

    /// `matches`, with the cmdline regex's answer taken from `cmdline` when it gives one (the
    /// rules' set matched once for all of them), asked only when every other field matched.
    fn matches_with(&self, p: &ProcessFacts, cmdline: impl FnOnce() -> Option<bool>) -> bool {
        self.field_matches(RuleField::Uids, p).is_ok()
            && self.field_matches(RuleField::Gids, p).is_ok()
            && self.field_matches(RuleField::Exe, p).is_ok()
            && match (&self.cmdline, &p.cmdline) {
                (Some(_), Some(_)) => match cmdline() {
                    Some(hit) => hit,
                    None => self.field_matches(RuleField::Cmdline, p).is_ok(),
                },
                _ => self.field_matches(RuleField::Cmdline, p).is_ok(),
            }
    }

    /// Whether `field` is present and does not match `p` (`misses` with no allocation).
    pub fn misses_on(&self, field: RuleField, p: &ProcessFacts) -> bool {
        self.field_matches(field, p).is_err()
    }

    /// Every field present that does not match `p`, in field order (empty: the rule matches).
    pub fn misses(&self, p: &ProcessFacts) -> Vec<Miss> {
        self.fields()
            .into_iter()
            .filter_map(|field| {
                self.field_matches(field, p)
                    .err()
                    .map(|reason| Miss { field, reason })
            })
            .collect()
    }

    /// `Ok` when the field is absent or matches.
    fn field_matches(&self, field: RuleField, p: &ProcessFacts) -> Result<(), MissReason> {
        let hit = match field {
            RuleField::Uids => self
                .uids
                .as_ref()
                .is_none_or(|s| s.contains(&p.ruid) || s.contains(&p.euid)),
            RuleField::Gids => self
                .gids
                .as_ref()
                .is_none_or(|s| p.gids.iter().any(|g| s.contains(g))),
            RuleField::Exe => match (&self.exe, &p.exe) {
                (None, _) => true,
                (Some(_), None) => return Err(MissReason::Unknown),
                (Some(e), Some(path)) => e.is_match(path),
            },
            RuleField::Cmdline => match (&self.cmdline, &p.cmdline) {
                (None, _) => true,
                (Some(_), None) => return Err(MissReason::Unknown),
                (Some(r), Some(argv)) => r.is_match(argv),
            },
        };
        if hit {
            Ok(())
        } else {
            Err(MissReason::NotListed)
        }
    }

    /// The fields both rules have on which they overlap, when they could match one process
    /// (every shared field overlaps); `None` when some shared field keeps them apart.
    fn overlap(&self, other: &PlacementRule) -> Option<Vec<RuleField>> {
        #[cfg(test)]
        tests::OVERLAP_TESTS.with(|n| n.set(n.get() + 1));
        let mut shared = Vec::new();
        let sets = |a: &Option<BTreeSet<u32>>, b: &Option<BTreeSet<u32>>| match (a, b) {
            (Some(a), Some(b)) => Some(!a.is_disjoint(b)),
            _ => None,
        };
        let checks = [
            (RuleField::Uids, sets(&self.uids, &other.uids)),
            (RuleField::Gids, sets(&self.gids, &other.gids)),
            (
                RuleField::Exe,
                match (&self.exe, &other.exe) {
                    (Some(a), Some(b)) => Some(a.overlaps(b)),
                    _ => None,
                },
            ),
            (
                RuleField::Cmdline,
                match (&self.cmdline, &other.cmdline) {
                    (Some(a), Some(b)) => Some(a.text == b.text),
                    _ => None,
                },
            ),
        ];
        for (field, overlaps) in checks {
            match overlaps {
                Some(false) => return None,
                Some(true) => shared.push(field),
                None => {}
            }
        }
        Some(shared)
    }
}

/// Checks that `rule`, `tenant`'s, conflicts with none of `others` (other tenants' rules; an
/// entry of `tenant` itself is skipped): see the module header. The error is a conflict on
/// `placement` that names both tenants (the other the first in name order).
pub fn check_conflicts<'a, T: Ord + fmt::Display + 'a>(
    tenant: &T,
    rule: &PlacementRule,
    others: impl IntoIterator<Item = (&'a T, &'a PlacementRule)>,
) -> Result<(), DomainError> {
    let first = others
        .into_iter()
        .filter(|(t, o)| {
            *t != tenant && o.priority == rule.priority && o.specificity() == rule.specificity()
        })
        .filter_map(|(t, o)| Some((t, rule.overlap(o)?)))
        .min_by(|a, b| a.0.cmp(b.0));
    match first {
        Some((other, shared)) => Err(conflict_error(tenant, other, rule, &shared)),
        None => Ok(()),
    }
}

/// The conflict of `tenant`'s `rule` with `other`'s, on the `shared` fields.
fn conflict_error(
    tenant: &dyn fmt::Display,
    other: &dyn fmt::Display,
    rule: &PlacementRule,
    shared: &[RuleField],
) -> DomainError {
    let on = if shared.is_empty() {
        "they name different fields, and a process can have both".to_string()
    } else {
        let names: Vec<&str> = shared.iter().map(|f| f.path()).collect();
        format!("they overlap on {}", names.join(", "))
    };
    DomainError::conflict(
        "placement",
        format!(
            "the rules of tenants '{tenant}' and '{other}' have the same priority ({}) and specificity ({}) and can match one process ({on}): give one a different priority, or make them exclusive",
            rule.priority,
            rule.specificity()
        ),
    )
}

/// Rules grouped for conflict checks, so that a check costs the rules that may conflict, not
/// every rule (a shared host has a rule per account: 10,000 rules checked pair by pair were
/// 50 million overlap tests each time the rules were built). Only rules of one priority and
/// specificity can conflict, and two rules that both name uids only when they share one; a
/// rule without uids is checked against its whole group.
pub struct ConflictIndex<'a, T> {
    groups: HashMap<(u32, u8), ConflictGroup<'a, T>>,
}

struct ConflictGroup<'a, T> {
    rules: Vec<(&'a T, &'a PlacementRule)>,
    uids: UidIndex,
}

/// Rules (by their index in a list) by the uids they name, and those that name none.
#[derive(Debug, Clone, Default)]
struct UidIndex {
    by_uid: HashMap<u32, Vec<usize>>,
    without_uids: Vec<usize>,
}

impl UidIndex {
    fn insert(&mut self, i: usize, rule: &PlacementRule) {
        match &rule.uids {
            Some(uids) => uids
                .iter()
                .for_each(|u| self.by_uid.entry(*u).or_default().push(i)),
            None => self.without_uids.push(i),
        }
    }

    /// The indexes, ascending and each once, of the rules that name one of `uids` and of the
    /// rules that name none.
    fn candidates<'u>(&self, uids: impl IntoIterator<Item = &'u u32>) -> Vec<usize> {
        let mut out: Vec<usize> = uids
            .into_iter()
            .filter_map(|u| self.by_uid.get(u))
            .flatten()
            .chain(&self.without_uids)
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl<'a, T: Ord + fmt::Display> ConflictIndex<'a, T> {
    pub fn new() -> Self {
        ConflictIndex {
            groups: HashMap::new(),
        }
    }

    pub fn insert(&mut self, tenant: &'a T, rule: &'a PlacementRule) {
        let g = self
            .groups
            .entry((rule.priority, rule.specificity()))
            .or_insert_with(|| ConflictGroup {
                rules: Vec::new(),
                uids: UidIndex::default(),
            });
        g.uids.insert(g.rules.len(), rule);
        g.rules.push((tenant, rule));
    }

    /// `check_conflicts` of `rule` against the rules inserted whose tenant `also` admits.
    pub fn check(
        &self,
        tenant: &T,
        rule: &PlacementRule,
        also: impl Fn(&T) -> bool,
    ) -> Result<(), DomainError> {
        let Some(g) = self.groups.get(&(rule.priority, rule.specificity())) else {
            return Ok(());
        };
        let candidates: Vec<usize> = match &rule.uids {
            Some(uids) => g.uids.candidates(uids),
            None => (0..g.rules.len()).collect(),
        };
        check_conflicts(
            tenant,
            rule,
            candidates
                .into_iter()
                .map(|i| g.rules[i])
                .filter(|(t, _)| also(t)),
        )
    }
}

impl<'a, T: Ord + fmt::Display> Default for ConflictIndex<'a, T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the winning rule beat the next rule that also matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WonBy {
    /// No other rule matched.
    OnlyMatch,
    /// A higher priority.
    Priority,
    /// The same priority, more fields.
    Specificity,
    /// The same priority and specificity: the tenant name sorts first.
    Name,
}

/// The tenant a process goes to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<'a, T> {
    pub tenant: &'a T,
    pub priority: u32,
    pub specificity: u8,
    pub won_by: WonBy,
    /// The next tenant whose rule matched, which the winner beat.
    pub runner_up: Option<&'a T>,
    /// The winning rule allows moving the process out of a delegated subtree.
    pub override_delegated: bool,
}

/// What one rule said about a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleVerdict<'a, T> {
    pub tenant: &'a T,
    pub priority: u32,
    pub specificity: u8,
    /// Every field that did not match; empty when the rule matched.
    pub misses: Vec<Miss>,
}

impl<T> RuleVerdict<'_, T> {
    pub fn matched(&self) -> bool {
        self.misses.is_empty()
    }
}

/// Every rule's verdict on a process, in precedence order, and the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation<'a, T> {
    pub decision: Option<Decision<'a, T>>,
    pub rules: Vec<RuleVerdict<'a, T>>,
}

/// Every tenant's rule, free of conflicts, in precedence order.
#[derive(Debug, Clone)]
pub struct PlacementRules<T> {
    rules: Vec<(T, PlacementRule)>,
    /// Every rule's cmdline regex in one set (one pass over a command line answers them all;
    /// issue 17: 300 rules matched one by one were most of a placement's CPU), with the
    /// index in `rules` of each of its patterns. `None` without cmdline rules, or when the
    /// set does not compile within its limits (each rule's own regex answers then).
    cmdline_set: Option<(RegexSet, Vec<usize>)>,
    /// The rules that name uids, by uid, and those that name none (indexes in `rules`, in
    /// precedence order): a process is matched against the rules of its two uids and the
    /// rules without uids, not against every rule (a shared host's one rule per account).
    uids: UidIndex,
}

/// The set of the rules' cmdline regexes, built as each is (`CmdlineRegex::compile`).
fn cmdline_set<T>(rules: &[(T, PlacementRule)]) -> Option<(RegexSet, Vec<usize>)> {
    let (at, texts): (Vec<usize>, Vec<&str>) = rules
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| Some((i, r.cmdline.as_ref()?.text.as_str())))
        .unzip();
    if texts.len() < 2 {
        return None;
    }
    let set = RegexSetBuilder::new(&texts)
        .size_limit(CMDLINE_REGEX_SIZE_LIMIT.saturating_mul(texts.len()))
        .dfa_size_limit(CMDLINE_SET_DFA_SIZE_LIMIT)
        .nest_limit(CMDLINE_NEST_LIMIT)
        .build()
        .ok()?;
    Some((set, at))
}

impl<T: Ord + fmt::Display> PlacementRules<T> {
    /// Checks every pair for conflicts (the first, in name order, is the error) and orders
    /// the rules by precedence. A tenant given twice is refused.
    pub fn new(rules: impl IntoIterator<Item = (T, PlacementRule)>) -> Result<Self, DomainError> {
        let mut by_name: BTreeMap<T, PlacementRule> = BTreeMap::new();
        for (t, r) in rules {
            if by_name.contains_key(&t) {
                return Err(DomainError::conflict(
                    "placement",
                    format!("tenant '{t}' has two placement rules: a tenant has one"),
                ));
            }
            by_name.insert(t, r);
        }
        let mut index = ConflictIndex::new();
        for (t, r) in &by_name {
            index.insert(t, r);
        }
        // The first tenant in name order with a conflict, against the first after it.
        for (t, r) in &by_name {
            index.check(t, r, |o| o > t)?;
        }
        let mut rules: Vec<(T, PlacementRule)> = by_name.into_iter().collect();
        rules.sort_by(|(ta, a), (tb, b)| {
            b.priority
                .cmp(&a.priority)
                .then(b.specificity().cmp(&a.specificity()))
                .then(ta.cmp(tb))
        });
        let cmdline_set = cmdline_set(&rules);
        let mut uids = UidIndex::default();
        for (i, (_, r)) in rules.iter().enumerate() {
            uids.insert(i, r);
        }
        Ok(PlacementRules {
            rules,
            cmdline_set,
            uids,
        })
    }

    /// The indexes (in precedence order) of the rules a process with these uids may match:
    /// those that list one of them, and those that name no uid.
    pub fn candidates(&self, ruid: u32, euid: u32) -> Vec<usize> {
        self.uids.candidates(&[ruid, euid])
    }

    /// The rule at `index` (as `candidates` gives them).
    pub fn get(&self, index: usize) -> Option<(&T, &PlacementRule)> {
        self.rules.get(index).map(|(t, r)| (t, r))
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in precedence order: the first that matches a process wins.
    pub fn iter(&self) -> impl Iterator<Item = (&T, &PlacementRule)> {
        self.rules.iter().map(|(t, r)| (t, r))
    }

    /// The tenant `p` goes to, `None` when no rule matches.
    pub fn place(&self, p: &ProcessFacts) -> Option<Decision<'_, T>> {
        // The set is matched at most once, when the first rule gets to its cmdline field.
        let mut set_hits: Option<Option<Vec<bool>>> = None;
        let mut hits = self
            .candidates(p.ruid, p.euid)
            .into_iter()
            .map(|i| (i, &self.rules[i]))
            .filter(|(i, (_, r))| {
                r.matches_with(p, || {
                    let hits = set_hits.get_or_insert_with(|| self.cmdline_hits(p));
                    hits.as_ref().map(|h| h[*i])
                })
            });
        let (_, (tenant, rule)) = hits.next()?;
        Some(decide(tenant, rule, hits.next().map(|(_, (t, r))| (t, r))))
    }

    /// Which rules' cmdline regex matches `p`'s command line (indexed as `rules`), from the
    /// set: `None` without a set or a command line.
    fn cmdline_hits(&self, p: &ProcessFacts) -> Option<Vec<bool>> {
        let (set, at) = self.cmdline_set.as_ref()?;
        let argv = p.cmdline.as_deref()?;
        let mut hits = vec![false; self.rules.len()];
        for k in set.matches(matched_cmdline(argv)).iter() {
            hits[at[k]] = true;
        }
        Some(hits)
    }

    /// Every rule's verdict on `p`, and the decision `place` makes.
    pub fn explain(&self, p: &ProcessFacts) -> Explanation<'_, T> {
        let rules: Vec<RuleVerdict<'_, T>> = self
            .rules
            .iter()
            .map(|(tenant, r)| RuleVerdict {
                tenant,
                priority: r.priority,
                specificity: r.specificity(),
                misses: r.misses(p),
            })
            .collect();
        let mut hits = self
            .rules
            .iter()
            .zip(&rules)
            .filter(|(_, v)| v.matched())
            .map(|((t, r), _)| (t, r));
        let decision = hits.next().map(|(t, r)| decide(t, r, hits.next()));
        Explanation { decision, rules }
    }
}

fn decide<'a, T>(
    tenant: &'a T,
    rule: &'a PlacementRule,
    next: Option<(&'a T, &'a PlacementRule)>,
) -> Decision<'a, T> {
    let won_by = match next {
        None => WonBy::OnlyMatch,
        Some((_, n)) if n.priority < rule.priority => WonBy::Priority,
        Some((_, n)) if n.specificity() < rule.specificity() => WonBy::Specificity,
        Some(_) => WonBy::Name,
    };
    Decision {
        tenant,
        priority: rule.priority,
        specificity: rule.specificity(),
        won_by,
        runner_up: next.map(|(t, _)| t),
        override_delegated: rule.override_delegated,
    }
}

// The OpenAPI schema of the rule's lists and regex: what a document can state of `validate`.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

/// A non-empty list of at most `MAX_LIST_ITEMS` items, or null (placement rule lists).
fn rule_list(item: impl Into<RefOr<Schema>>, what: &str) -> Schema {
    use utoipa::openapi::schema::ArrayBuilder;
    OneOfBuilder::new()
        .item(
            ArrayBuilder::new()
                .items(item.into())
                .min_items(Some(1))
                .max_items(Some(MAX_LIST_ITEMS)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(what))
        .into()
}

/// `placement.uids` and `placement.gids`: ids (0 to 2^32-2) or names. A name is not empty, not
/// all digits, and has no whitespace, control character, ':' or '/' (its length is bounded in
/// UTF-8 bytes, `MAX_NAME_BYTES`, which a schema cannot state).
fn ids_or_names(what: &str) -> Schema {
    let id = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u32::MAX - 1));
    let name = ObjectBuilder::new().schema_type(Type::String).pattern(Some(
        "^[^\\s:/\\u0000-\\u001f\\u007f-\\u009f]*[^\\s:/0-9\\u0000-\\u001f\\u007f-\\u009f][^\\s:/\\u0000-\\u001f\\u007f-\\u009f]*$",
    ));
    rule_list(OneOfBuilder::new().item(id).item(name), what)
}

pub fn placement_uids() -> Schema {
    ids_or_names("users (uid or name): the process's real or effective uid is one of them")
}

pub fn placement_gids() -> Schema {
    ids_or_names("groups (gid or name): one of the process's groups is one of them")
}

/// `placement.exe`: absolute paths or globs (their other rules, no empty/./.. part, a glob
/// that compiles, are checked by the server).
pub fn placement_exe() -> Schema {
    rule_list(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^/")),
        "absolute paths or globs over the resolved /proc/PID/exe",
    )
}

/// `placement.cmdline`: a non-empty regex (whether it compiles is the server's to say).
pub fn placement_cmdline() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("a regex over the NUL-joined argv"))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(json: &str) -> PlacementSpec {
        serde_json::from_str(json).unwrap()
    }

    /// Found by schemathesis: JSON Schema's integer allows `1001.0`, so ids and the priority
    /// written as whole floats are taken; a fraction is not.
    #[test]
    fn ids_and_priority_written_as_whole_floats_are_taken() {
        let s = spec(r#"{"uids": [1001.0, "alice"], "gids": [7e1], "priority": 3.0}"#);
        assert_eq!(
            s.uids,
            Some(vec![IdOrName::Id(1001), IdOrName::Name("alice".into())])
        );
        assert_eq!(s.gids, Some(vec![IdOrName::Id(70)]));
        assert_eq!(s.priority, 3);
        for bad in [
            r#"{"uids": [1.5]}"#,
            r#"{"uids": [4294967295.0]}"#,
            r#"{"priority": 2.5}"#,
        ] {
            assert!(serde_json::from_str::<PlacementSpec>(bad).is_err(), "{bad}");
        }
    }

    /// Resolves with a tiny passwd/group: alice 1001, bob 1002; hosting 2000.
    fn rule(json: &str) -> PlacementRule {
        spec(json)
            .resolve(
                |n| match n {
                    "alice" => Some(1001),
                    "bob" => Some(1002),
                    _ => None,
                },
                |n| (n == "hosting").then_some(2000),
            )
            .unwrap()
    }

    fn err(json: &str) -> DomainError {
        spec(json)
            .resolve(|n| (n == "alice").then_some(1001), |_| None)
            .unwrap_err()
    }

    fn proc_(uid: u32, exe: &str, argv: &[&str]) -> ProcessFacts {
        let mut cmdline = Vec::new();
        for a in argv {
            cmdline.extend_from_slice(a.as_bytes());
            cmdline.push(0);
        }
        ProcessFacts {
            pid: 4242,
            start_time: 99,
            ruid: uid,
            euid: uid,
            gids: vec![uid],
            exe: Some(exe.into()),
            cmdline: Some(cmdline),
        }
    }

    fn rules(list: &[(&'static str, &str)]) -> PlacementRules<&'static str> {
        PlacementRules::new(list.iter().map(|(t, j)| (*t, rule(j)))).unwrap()
    }

    #[test]
    fn the_issue_example_parses_from_json_and_toml_alike() {
        let json = spec(
            r#"{"uids": [1001, "alice"], "gids": ["hosting"],
                "exe": ["/usr/sbin/php-fpm8.2", "/opt/acme/bin/*"],
                "cmdline": "^gunicorn: worker \\[acme\\]", "priority": 100}"#,
        );
        let toml: PlacementSpec = toml::from_str(
            r#"uids = [1001, "alice"]
gids = ["hosting"]
exe = ["/usr/sbin/php-fpm8.2", "/opt/acme/bin/*"]
cmdline = '^gunicorn: worker \[acme\]'
priority = 100
"#,
        )
        .unwrap();
        assert_eq!(json, toml);
        assert_eq!(
            json.uids,
            Some(vec![IdOrName::Id(1001), IdOrName::Name("alice".into())])
        );
        assert!(!json.override_delegated);
        let back: PlacementSpec =
            serde_json::from_str(&serde_json::to_string(&json).unwrap()).unwrap();
        assert_eq!(back, json);
        let back: PlacementSpec = toml::from_str(&toml::to_string(&json).unwrap()).unwrap();
        assert_eq!(back, json);
        let r = rule(&serde_json::to_string(&json).unwrap());
        assert_eq!((r.priority(), r.specificity()), (100, 4));
        assert!(r.matches(&ProcessFacts {
            gids: vec![5, 2000],
            ..proc_(1001, "/opt/acme/bin/gunicorn", &["gunicorn: worker [acme]"])
        }));
    }

    #[test]
    fn unknown_fields_and_bad_ids_are_refused_when_parsed() {
        for bad in [
            r#"{"uid": [1]}"#,
            r#"{"uids": [-1]}"#,
            r#"{"uids": [4294967295]}"#,
            r#"{"uids": [1.5]}"#,
            r#"{"priority": -1}"#,
        ] {
            assert!(serde_json::from_str::<PlacementSpec>(bad).is_err(), "{bad}");
        }
        assert!(toml::from_str::<PlacementSpec>("gids = [-3]").is_err());
        assert_eq!(
            spec(r#"{"uids": [4294967294]}"#).uids,
            Some(vec![IdOrName::Id(4_294_967_294)])
        );
    }

    /// Each bad value is refused with the field at fault.
    #[test]
    fn validation_names_the_field_at_fault() {
        for (json, field, says) in [
            (r#"{}"#, "placement", "at least one"),
            (r#"{"priority": 5}"#, "placement", "at least one"),
            (r#"{"uids": []}"#, "placement.uids", "is empty"),
            (r#"{"gids": []}"#, "placement.gids", "is empty"),
            (r#"{"exe": []}"#, "placement.exe", "is empty"),
            (
                r#"{"uids": [1, "carol"]}"#,
                "placement.uids[1]",
                "no user named 'carol'",
            ),
            (
                r#"{"gids": ["wheel"]}"#,
                "placement.gids[0]",
                "no group named 'wheel'",
            ),
            (r#"{"uids": ["1001"]}"#, "placement.uids[0]", "as a number"),
            (r#"{"uids": [""]}"#, "placement.uids[0]", "is empty"),
            (r#"{"uids": ["a b"]}"#, "placement.uids[0]", "contains"),
            (
                r#"{"exe": ["/bin/sh", "bin/sh"]}"#,
                "placement.exe[1]",
                "not an absolute path",
            ),
            (
                r#"{"exe": ["*/sh"]}"#,
                "placement.exe[0]",
                "not an absolute path",
            ),
            (r#"{"exe": ["/opt/../bin/sh"]}"#, "placement.exe[0]", "'..'"),
            (r#"{"exe": ["/opt//sh"]}"#, "placement.exe[0]", "empty"),
            (r#"{"exe": ["/opt/"]}"#, "placement.exe[0]", "ends with '/'"),
            (
                r#"{"exe": ["/opt/[a"]}"#,
                "placement.exe[0]",
                "not a valid glob",
            ),
            (
                r#"{"exe": ["/opt/{a,b"]}"#,
                "placement.exe[0]",
                "not a valid glob",
            ),
            (
                r#"{"cmdline": "(unclosed"}"#,
                "placement.cmdline",
                "not a valid regex",
            ),
            (
                r#"{"cmdline": "a{3,1}"}"#,
                "placement.cmdline",
                "not a valid regex",
            ),
            (r#"{"cmdline": ""}"#, "placement.cmdline", "is empty"),
        ] {
            let e = err(json);
            assert_eq!(e.field(), field, "{json}: {e}");
            assert!(e.message().contains(says), "{json}: {e}");
            assert!(matches!(e, DomainError::Invalid { .. }), "{json}: {e}");
            assert!(!e.message().contains('\n'), "one line: {e}");
        }
        let long = format!(
            r#"{{"uids": [{}]}}"#,
            vec!["1"; MAX_LIST_ITEMS + 1].join(",")
        );
        assert_eq!(err(&long).field(), "placement.uids");
        let long = format!(r#"{{"exe": ["/{}"]}}"#, "a".repeat(MAX_EXE_BYTES));
        assert_eq!(err(&long).field(), "placement.exe[0]");
    }

    /// `validate` needs no lookups: names pass it, and only `resolve` knows if they exist.
    #[test]
    fn validate_checks_the_form_and_resolve_the_names() {
        let s = spec(r#"{"uids": ["carol"], "gids": ["staff", 7]}"#);
        s.validate().unwrap();
        assert!(s.resolve(|_| None, |_| Some(1)).is_err());
        assert!(spec(r#"{"cmdline": "("}"#).validate().is_err());
    }

    #[test]
    fn a_regex_over_the_size_limits_is_refused() {
        // Small text, huge program: 1,000 Unicode word classes.
        for p in [r"\w{1000}", r"(?:a{100}){100}"] {
            let e = err(&serde_json::to_string(&serde_json::json!({ "cmdline": p })).unwrap());
            assert_eq!(e.field(), "placement.cmdline");
            assert!(e.message().contains("compiles to more than"), "{p}: {e}");
        }
        let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
        let e = err(&serde_json::to_string(&serde_json::json!({ "cmdline": deep })).unwrap());
        assert_eq!(e.field(), "placement.cmdline");
        let long = "a".repeat(MAX_CMDLINE_PATTERN_BYTES + 1);
        let e = err(&serde_json::to_string(&serde_json::json!({ "cmdline": long })).unwrap());
        assert!(e.message().contains("at most"), "{e}");
        // Just under every limit is fine.
        rule(&serde_json::to_string(&serde_json::json!({ "cmdline": r"(?-u:\w){200}" })).unwrap());
        rule(
            &serde_json::to_string(
                &serde_json::json!({ "cmdline": "a".repeat(MAX_CMDLINE_PATTERN_BYTES) }),
            )
            .unwrap(),
        );
    }

    #[test]
    fn uids_match_the_real_or_the_effective_uid_and_gids_any_group() {
        let r = rule(r#"{"uids": ["alice"]}"#);
        let mut p = proc_(0, "/usr/bin/passwd", &["passwd"]);
        assert!(!r.matches(&p));
        p.euid = 1001;
        assert!(r.matches(&p), "effective uid");
        p = ProcessFacts { ruid: 1001, ..p };
        p.euid = 0;
        assert!(r.matches(&p), "real uid");
        let g = rule(r#"{"gids": ["hosting", 7]}"#);
        assert!(!g.matches(&proc_(5, "/bin/sh", &["sh"])));
        assert!(g.matches(&ProcessFacts {
            gids: vec![5, 6, 7],
            ..proc_(5, "/bin/sh", &["sh"])
        }));
        assert!(g.matches(&ProcessFacts {
            gids: vec![2000],
            ..proc_(5, "/bin/sh", &["sh"])
        }));
    }

    /// `*`, `?` and classes stay within one path component, like a shell's; `**` crosses them.
    #[test]
    fn globs_match_like_a_shells() {
        let r = rule(r#"{"exe": ["/opt/acme/bin/*"]}"#);
        let m = |r: &PlacementRule, exe: &str| r.matches(&proc_(1, exe, &["x"]));
        assert!(m(&r, "/opt/acme/bin/x"));
        assert!(m(&r, "/opt/acme/bin/.hidden"));
        assert!(!m(&r, "/opt/acme/bin/sub/x"));
        assert!(!m(&r, "/opt/acme/binx"));
        assert!(!m(&r, "/opt/acme/bin"));
        let deep = rule(r#"{"exe": ["/opt/acme/**"]}"#);
        assert!(m(&deep, "/opt/acme/bin/x"));
        assert!(m(&deep, "/opt/acme/bin/sub/x"));
        assert!(!m(&deep, "/opt/other/x"));
        let q = rule(r#"{"exe": ["/usr/bin/python3.?", "/usr/sbin/php-fpm8.[0-9]"]}"#);
        assert!(m(&q, "/usr/bin/python3.1"));
        assert!(!m(&q, "/usr/bin/python3.12"));
        assert!(m(&q, "/usr/sbin/php-fpm8.2"));
        assert!(!m(&q, "/usr/sbin/php-fpm8.x"));
        let alt = rule(r#"{"exe": ["/usr/bin/{gunicorn,uwsgi}", "/opt/a\\*b"]}"#);
        assert!(m(&alt, "/usr/bin/uwsgi"));
        assert!(m(&alt, "/opt/a*b"));
        assert!(!m(&alt, "/opt/axb"), "an escaped * is a plain *");
        let plain = rule(r#"{"exe": ["/usr/sbin/php-fpm8.2"]}"#);
        assert!(m(&plain, "/usr/sbin/php-fpm8.2"));
        assert!(!m(&plain, "/usr/sbin/php-fpm8.2 (deleted)"));
        assert!(!m(&plain, "/usr/sbin/php-fpm8"));
    }

    #[test]
    fn cmdline_matches_the_nul_joined_argv_up_to_the_cap() {
        let r = rule(r#"{"cmdline": "^gunicorn: worker \\[acme\\]$"}"#);
        assert!(
            r.matches(&proc_(1, "/x", &["gunicorn: worker [acme]"])),
            "the final NUL is dropped"
        );
        assert!(!r.matches(&proc_(1, "/x", &["gunicorn: worker [beta]"])));
        let args = rule(r#"{"cmdline": "^python3?\\x00manage\\.py\\x00runworker\\x00acme"}"#);
        assert!(args.matches(&proc_(
            1,
            "/x",
            &["python3", "manage.py", "runworker", "acme"]
        )));
        assert!(!args.matches(&proc_(1, "/x", &["python3", "manage.py runworker acme"])));
        let dot = rule(r#"{"cmdline": "^php\\x00.*--pool=acme"}"#);
        assert!(
            dot.matches(&proc_(1, "/x", &["php", "-d", "--pool=acme"])),
            ". crosses NULs"
        );
        // Bytes past the cap are never seen.
        let tail = rule(r#"{"cmdline": "needle"}"#);
        let pad = "p".repeat(MAX_CMDLINE_MATCH_BYTES);
        assert!(!tail.matches(&proc_(1, "/x", &[&pad, "needle"])));
        assert!(tail.matches(&proc_(
            1,
            "/x",
            &[&pad[..MAX_CMDLINE_MATCH_BYTES - 7], "needle"]
        )));
        assert_eq!(matched_cmdline(b"a\0b\0"), b"a\0b");
        assert_eq!(
            matched_cmdline(b"a\0\0"),
            b"a\0",
            "an empty last argument stays"
        );
        assert_eq!(
            matched_cmdline(&[b'x'; 10_000]).len(),
            MAX_CMDLINE_MATCH_BYTES
        );
        // Not UTF-8: matched as bytes.
        let bytes = rule(r#"{"cmdline": "(?-u:\\xff)acme"}"#);
        let p = ProcessFacts {
            cmdline: Some(b"\xffacme\0".to_vec()),
            ..proc_(1, "/x", &[])
        };
        assert!(bytes.matches(&p));
    }

    #[test]
    fn an_unreadable_exe_or_cmdline_matches_nothing_and_explain_says_so() {
        let r = rules(&[("a", r#"{"uids": [1], "exe": ["/bin/*"], "cmdline": "x"}"#)]);
        let p = ProcessFacts {
            exe: None,
            cmdline: None,
            ..proc_(2, "/", &[])
        };
        let e = r.explain(&p);
        assert_eq!(e.decision, None);
        assert_eq!(
            e.rules[0].misses,
            vec![
                Miss {
                    field: RuleField::Uids,
                    reason: MissReason::NotListed
                },
                Miss {
                    field: RuleField::Exe,
                    reason: MissReason::Unknown
                },
                Miss {
                    field: RuleField::Cmdline,
                    reason: MissReason::Unknown
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(e.rules[0].misses[1]).unwrap(),
            serde_json::json!({"field": "exe", "reason": "unknown"})
        );
    }

    #[test]
    fn priority_beats_specificity_beats_name() {
        let all = rules(&[
            ("zeta", r#"{"uids": [1001], "priority": 10}"#),
            (
                "beta",
                r#"{"uids": [1001], "exe": ["/usr/bin/*"], "cmdline": "job"}"#,
            ),
            ("alpha", r#"{"exe": ["/usr/bin/make"], "gids": [1001]}"#),
            ("gamma", r#"{"exe": ["/usr/bin/make"], "gids": [9]}"#),
        ]);
        let p = proc_(1001, "/usr/bin/make", &["make", "job"]);
        let d = all.place(&p).unwrap();
        assert_eq!(
            (*d.tenant, d.won_by, d.runner_up),
            ("zeta", WonBy::Priority, Some(&"beta"))
        );
        let no_zeta = rules(&[
            (
                "beta",
                r#"{"uids": [1001], "exe": ["/usr/bin/*"], "cmdline": "job"}"#,
            ),
            ("alpha", r#"{"exe": ["/usr/bin/make"], "gids": [1001]}"#),
        ]);
        let d = no_zeta.place(&p).unwrap();
        assert_eq!(
            (*d.tenant, d.won_by, d.runner_up),
            ("beta", WonBy::Specificity, Some(&"alpha"))
        );
        assert_eq!((d.priority, d.specificity), (0, 3));
        let only = rules(&[("alpha", r#"{"exe": ["/usr/bin/make"]}"#)]);
        assert_eq!(only.place(&p).unwrap().won_by, WonBy::OnlyMatch);
        assert!(only.place(&proc_(1, "/bin/sh", &["sh"])).is_none());
    }

    /// Two rules that tie on priority and specificity without overlapping on paper (a setuid
    /// process: real uid in one list, effective in the other) go to the name that sorts first.
    #[test]
    fn a_tie_the_conflict_check_lets_through_goes_to_the_first_name() {
        let r = rules(&[
            ("bob-site", r#"{"uids": ["bob"]}"#),
            ("alice-site", r#"{"uids": ["alice"]}"#),
        ]);
        let p = ProcessFacts {
            euid: 1002,
            ..proc_(1001, "/usr/bin/su", &["su"])
        };
        let e = r.explain(&p);
        let d = e.decision.unwrap();
        assert_eq!(
            (*d.tenant, d.won_by, d.runner_up),
            ("alice-site", WonBy::Name, Some(&"bob-site"))
        );
        assert!(e.rules.iter().all(|v| v.matched()));
    }

    #[test]
    fn explain_lists_every_rule_in_precedence_order_with_what_missed() {
        let r = rules(&[
            (
                "acme",
                r#"{"uids": [1001], "cmdline": "^gunicorn", "priority": 5}"#,
            ),
            ("beta", r#"{"exe": ["/opt/beta/**"]}"#),
            ("ci", r#"{"gids": [2000], "exe": ["/usr/bin/*"]}"#),
        ]);
        let p = ProcessFacts {
            gids: vec![2000],
            ..proc_(1001, "/usr/bin/python3", &["python3"])
        };
        let e = r.explain(&p);
        let order: Vec<_> = e.rules.iter().map(|v| *v.tenant).collect();
        assert_eq!(order, ["acme", "ci", "beta"]);
        assert_eq!(
            e.rules[0].misses,
            [Miss {
                field: RuleField::Cmdline,
                reason: MissReason::NotListed
            }]
        );
        assert!(e.rules[1].matched());
        assert_eq!(
            e.rules[2].misses,
            [Miss {
                field: RuleField::Exe,
                reason: MissReason::NotListed
            }]
        );
        assert_eq!(e.decision, r.place(&p));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["decision"]["tenant"], "ci");
        assert_eq!(json["decision"]["won_by"], "only_match");
        assert_eq!(json["rules"][0]["misses"][0]["field"], "cmdline");
        assert_eq!(*e.decision.unwrap().tenant, "ci");
    }

    #[test]
    fn conflicts_are_refused_naming_both_tenants() {
        for (a, b) in [
            // Same uid.
            (r#"{"uids": [1001, 5]}"#, r#"{"uids": ["alice"]}"#),
            // Different fields, same count: a process can be both.
            (r#"{"uids": [1001]}"#, r#"{"exe": ["/usr/bin/php"]}"#),
            (
                r#"{"uids": [1], "gids": [2]}"#,
                r#"{"exe": ["/a"], "cmdline": "b"}"#,
            ),
            // A plain path and a glob that matches it.
            (
                r#"{"exe": ["/opt/acme/bin/php"]}"#,
                r#"{"exe": ["/x", "/opt/*/bin/php"]}"#,
            ),
            // Two globs whose literal beginnings agree.
            (r#"{"exe": ["/opt/*/x"]}"#, r#"{"exe": ["/opt/a/*"]}"#),
            (r#"{"exe": ["/opt/**"]}"#, r#"{"exe": ["/opt/acme/bin/*"]}"#),
            // The same regex.
            (
                r#"{"exe": ["/usr/bin/runner"], "cmdline": "acme"}"#,
                r#"{"exe": ["/usr/bin/*"], "cmdline": "acme"}"#,
            ),
        ] {
            let e = PlacementRules::new([("one", rule(a)), ("two", rule(b))]).unwrap_err();
            assert!(matches!(e, DomainError::Conflict { .. }), "{a} {b}: {e}");
            assert_eq!(e.field(), "placement");
            assert!(
                e.message().contains("'one'") && e.message().contains("'two'"),
                "{e}"
            );
            let e2 = check_conflicts(&"two", &rule(b), [(&"one", &rule(a))]).unwrap_err();
            assert!(e2.message().contains("'one'"), "{e2}");
        }
    }

    #[test]
    fn rules_that_differ_in_priority_specificity_or_a_shared_field_do_not_conflict() {
        for (a, b) in [
            (r#"{"uids": [1001]}"#, r#"{"uids": [1002]}"#),
            (r#"{"uids": [1001]}"#, r#"{"uids": [1001], "priority": 1}"#),
            (
                r#"{"uids": [1001]}"#,
                r#"{"uids": [1001], "exe": ["/bin/sh"]}"#,
            ),
            (
                r#"{"exe": ["/usr/bin/php8.1"]}"#,
                r#"{"exe": ["/usr/bin/php8.2"]}"#,
            ),
            (r#"{"exe": ["/opt/a*"]}"#, r#"{"exe": ["/opt/b*"]}"#),
            (
                r#"{"exe": ["/opt/acme/*"]}"#,
                r#"{"exe": ["/usr/bin/acme"]}"#,
            ),
            // The CI-runner case: one program, told apart by command line.
            (
                r#"{"exe": ["/usr/bin/gitlab-runner"], "cmdline": "project-a"}"#,
                r#"{"exe": ["/usr/bin/gitlab-runner"], "cmdline": "project-b"}"#,
            ),
            // A shared field keeps them apart even when another overlaps.
            (
                r#"{"uids": [1], "gids": [5]}"#,
                r#"{"uids": [2], "gids": [5]}"#,
            ),
        ] {
            PlacementRules::new([("one", rule(a)), ("two", rule(b))])
                .unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        }
        // A tenant's own rule is not a conflict, and a tenant given twice is refused.
        let r = rule(r#"{"uids": [1]}"#);
        check_conflicts(&"one", &r, [(&"one", &r)]).unwrap();
        assert!(PlacementRules::new([("one", r.clone()), ("one", r)]).is_err());
    }

    /// One rule per uid, one tenant per hosting account: no conflicts, each goes home.
    #[test]
    fn one_tenant_per_hosting_account_by_uid() {
        let names: Vec<String> = (0..100).map(|i| format!("site{i:03}")).collect();
        let r = PlacementRules::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), rule(&format!(r#"{{"uids": [{}]}}"#, 5000 + i)))),
        )
        .unwrap();
        assert_eq!(r.len(), 100);
        for i in [0, 42, 99] {
            let d = r
                .place(&proc_(5000 + i as u32, "/usr/bin/php", &["php"]))
                .unwrap();
            assert_eq!((*d.tenant, d.won_by), (names[i].as_str(), WonBy::OnlyMatch));
        }
        assert!(r.place(&proc_(4999, "/usr/bin/php", &["php"])).is_none());
    }

    /// A rule over a small world of ids, paths and argv, so that rules often overlap.
    fn arb_rule(priorities: u32) -> impl Strategy<Value = String> {
        fn some<S: Strategy>(s: S) -> proptest::option::OptionStrategy<S> {
            proptest::option::weighted(0.4, s)
        }
        (
            0..priorities,
            some(proptest::collection::btree_set(1000u32..1003, 1..3)),
            some(proptest::collection::btree_set(2000u32..2003, 1..3)),
            some(proptest::sample::select(vec![
                "/usr/bin/*",
                "/usr/bin/make",
                "/opt/**",
                "/opt/x/y",
            ])),
            some(proptest::sample::select(vec![
                "job", "^make", "y", "a\\x00b", "^(?-u:.)",
            ])),
        )
            .prop_filter("a rule has a field", |(_, u, g, e, c)| {
                u.is_some() || g.is_some() || e.is_some() || c.is_some()
            })
            .prop_map(|(priority, uids, gids, exe, cmdline)| {
                let mut v = serde_json::json!({ "priority": priority });
                if let Some(u) = uids {
                    v["uids"] = serde_json::json!(u);
                }
                if let Some(g) = gids {
                    v["gids"] = serde_json::json!(g);
                }
                if let Some(e) = exe {
                    v["exe"] = serde_json::json!([e]);
                }
                if let Some(c) = cmdline {
                    v["cmdline"] = serde_json::json!(c);
                }
                v.to_string()
            })
    }

    /// A process of the same small world; its exe and cmdline are mostly known.
    fn arb_proc() -> impl Strategy<Value = ProcessFacts> {
        (
            1000u32..1003,
            1000u32..1003,
            proptest::collection::vec(2000u32..2003, 1..3),
            proptest::option::weighted(
                0.9,
                proptest::sample::select(vec!["/usr/bin/make", "/opt/x/y", "/opt/z"]),
            ),
            proptest::option::weighted(
                0.9,
                proptest::sample::select(vec!["make\0job\0", "a\0b\0", "sh\0y\0"]),
            ),
        )
            .prop_map(|(ruid, euid, gids, exe, argv)| ProcessFacts {
                pid: 7,
                start_time: 1,
                ruid,
                euid,
                gids,
                exe: exe.map(Into::into),
                cmdline: argv.map(|a| a.as_bytes().to_vec()),
            })
    }

    /// 300 cmdline rules (the issue's benchmark) are matched as one set, and the set's answer
    /// is each rule's own: the process goes where matching the rules one by one sends it.
    #[test]
    fn many_cmdline_rules_are_matched_as_one_set_with_the_same_answer() {
        let list: Vec<(String, PlacementRule)> = (0..300)
            .map(|k| {
                let j = match k % 3 {
                    0 => format!(r#"{{"cmdline": "^job-{k}\\x00"}}"#),
                    1 => format!(r#"{{"cmdline": "--tenant=t{k}\\b", "uids": [{k}]}}"#),
                    _ => format!(r#"{{"cmdline": "w{k}$", "exe": ["/opt/{k}/*"]}}"#),
                };
                (format!("t{k:03}"), rule(&j))
            })
            .collect();
        let rules = PlacementRules::new(list.clone()).unwrap();
        assert!(rules.cmdline_set.is_some(), "the set compiles");
        let one_by_one = |p: &ProcessFacts| {
            list.iter()
                .filter(|(_, r)| r.matches(p))
                .max_by(|(ta, a), (tb, b)| {
                    (a.priority(), a.specificity())
                        .cmp(&(b.priority(), b.specificity()))
                        .then(tb.cmp(ta))
                })
                .map(|(t, _)| t.clone())
        };
        let procs = [
            proc_(5, "/bin/x", &["job-33", "a"]),
            proc_(5, "/bin/x", &["job-33x"]),
            proc_(4, "/bin/x", &["run", "--tenant=t4"]),
            proc_(7, "/bin/x", &["run", "--tenant=t4"]),
            proc_(0, "/opt/5/bin", &["x", "w5"]),
            proc_(0, "/opt/6/bin", &["x", "w5"]),
            proc_(4, "/opt/5/bin", &["job-0", "--tenant=t4", "w5"]),
            ProcessFacts {
                cmdline: None,
                ..proc_(4, "/bin/x", &[])
            },
        ];
        for p in &procs {
            let got = rules.place(p).map(|d| d.tenant.clone());
            assert_eq!(got, one_by_one(p), "{:?}", p.cmdline);
        }
        assert_eq!(
            rules.place(&procs[0]).map(|d| d.tenant.as_str()),
            Some("t033")
        );
        assert_eq!(rules.place(&procs[1]).map(|d| d.tenant.as_str()), None);
        assert_eq!(
            rules.place(&procs[6]).map(|d| d.tenant.as_str()),
            Some("t004")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The winner is the matching rule with the highest priority, then specificity, then
        /// the first name; the order the rules come in never changes it, nor `explain`'s.
        #[test]
        fn precedence_holds_and_the_order_of_rules_does_not_matter(
            specs in proptest::collection::vec(arb_rule(3), 1..8),
            p in arb_proc(),
            seed in any::<u64>(),
        ) {
            let named: Vec<(String, PlacementRule)> = specs.iter().enumerate()
                .map(|(i, s)| (format!("t{}", (i * 7 + 3) % 11), rule(s))).collect();
            let mut seen = BTreeSet::new();
            let named: Vec<_> = named.into_iter().filter(|(t, _)| seen.insert(t.clone())).collect();
            // A conflict is refused whatever the order, with the same message.
            let mut shuffled = named.clone();
            shuffle(&mut shuffled, seed);
            if let Err(e) = PlacementRules::new(named.clone()) {
                prop_assert_eq!(e, PlacementRules::new(shuffled).unwrap_err());
            }
            // Keep the rules that conflict with none kept before.
            let mut kept: Vec<(String, PlacementRule)> = Vec::new();
            for (t, r) in named {
                if check_conflicts(&t, &r, kept.iter().map(|(t, r)| (t, r))).is_ok() {
                    kept.push((t, r));
                }
            }
            let named = kept;
            let forward = PlacementRules::new(named.clone()).unwrap();
            let mut shuffled = named.clone();
            shuffle(&mut shuffled, seed);
            let other = PlacementRules::new(shuffled).unwrap();
            prop_assert_eq!(forward.place(&p), other.place(&p));
            prop_assert_eq!(forward.explain(&p), other.explain(&p));
            let best = named.iter()
                .filter(|(_, r)| r.matches(&p))
                .max_by(|(ta, a), (tb, b)| {
                    (a.priority(), a.specificity()).cmp(&(b.priority(), b.specificity())).then(tb.cmp(ta))
                });
            let got = forward.place(&p);
            prop_assert_eq!(got.as_ref().map(|d| d.tenant), best.map(|(t, _)| t));
            if let Some(d) = got {
                let r = &named.iter().find(|(t, _)| t == d.tenant).unwrap().1;
                prop_assert!(r.matches(&p));
                prop_assert!(r.misses(&p).is_empty());
                // The runner-up is beaten for the reason given.
                if let Some(u) = d.runner_up {
                    let ru = &named.iter().find(|(t, _)| t == u).unwrap().1;
                    let why = if ru.priority() < d.priority { WonBy::Priority }
                        else if ru.specificity() < d.specificity { WonBy::Specificity }
                        else { prop_assert!(d.tenant < u); WonBy::Name };
                    prop_assert_eq!(d.won_by, why);
                }
            }
        }

        /// The indexed conflict check refuses exactly what a check of every pair refuses
        /// (the first tenant in name order against the first after it), with the same text.
        #[test]
        fn the_conflict_index_refuses_what_every_pair_does(
            specs in proptest::collection::vec(arb_rule(2), 1..10),
        ) {
            let named: BTreeMap<String, PlacementRule> = specs.iter().enumerate()
                .map(|(i, s)| (format!("t{i}"), rule(s))).collect();
            let pairwise = named.iter().find_map(|(t, r)| {
                check_conflicts(t, r, named.iter().filter(|(o, _)| *o > t)).err()
            });
            prop_assert_eq!(PlacementRules::new(named.clone()).err(), pairwise);
        }

        /// Rules at the same priority and specificity that both match a process conflict,
        /// unless the only reason is a pair the check documents as let through.
        #[test]
        fn two_accepted_rules_that_tie_on_a_process_are_a_documented_escape(
            a in arb_rule(1), b in arb_rule(1), p in arb_proc(),
        ) {
            let (ra, rb) = (rule(&a), rule(&b));
            if (ra.priority(), ra.specificity()) != (rb.priority(), rb.specificity())
                || !ra.matches(&p) || !rb.matches(&p)
                || PlacementRules::new([("a", ra.clone()), ("b", rb.clone())]).is_err()
            {
                return Ok(());
            }
            // Accepted yet both match: some shared field must be uids or gids that the
            // process satisfies through two different ids, or two different regexes.
            let escape = |f: RuleField| match f {
                RuleField::Uids => p.ruid != p.euid,
                RuleField::Gids => p.gids.len() > 1,
                RuleField::Cmdline => ra.cmdline.as_ref().map(|c| &c.text) != rb.cmdline.as_ref().map(|c| &c.text),
                RuleField::Exe => false,
            };
            let shared: Vec<_> = ra.fields().into_iter().filter(|f| rb.fields().contains(f)).collect();
            prop_assert!(shared.into_iter().any(escape), "{} / {} / {:?}", a, b, p);
        }
    }

    thread_local! {
        /// How many pairs of rules `overlap` compared (this thread): the conflict check's work.
        pub(super) static OVERLAP_TESTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// A shared host's rules, one account each (issue 17's example at issue 15's scale): the
    /// conflict checks of 10,000 rules by uid cost about one pair test per rule, not the 50
    /// million of every pair, and a process is matched against its own account's rule and the
    /// rules without uids, not all of them. Counted, not timed.
    #[test]
    fn ten_thousand_accounts_cost_linear_work() {
        let n = 10_000u32;
        let named: Vec<(String, PlacementRule)> = (0..n)
            .map(|i| {
                (
                    format!("acct{i:05}"),
                    rule(&format!(r#"{{"uids": [{}]}}"#, 10_000 + i)),
                )
            })
            .chain([(
                "ci".to_string(),
                rule(r#"{"exe": ["/opt/ci/*"], "priority": 10}"#),
            )])
            .collect();
        OVERLAP_TESTS.with(|c| c.set(0));
        let rules = PlacementRules::new(named).unwrap();
        let pairs = OVERLAP_TESTS.with(|c| c.get());
        assert!(
            pairs <= 2 * u64::from(n),
            "{pairs} pair tests for {n} rules"
        );
        // Its account's rule and the rule without uids (first: the higher priority).
        assert_eq!(
            rules.candidates(10_042, 10_042),
            vec![rules_index(&rules, "ci"), rules_index(&rules, "acct00042")]
        );
        let p = proc_(10_042, "/bin/sh", &["sh"]);
        assert_eq!(
            rules.place(&p).map(|d| d.tenant.as_str()),
            Some("acct00042")
        );
        // Two uids: both accounts' rules and the rule without uids are the candidates.
        assert_eq!(rules.candidates(10_001, 10_002).len(), 2 + 1);
        let ci = proc_(0, "/opt/ci/runner", &["runner"]);
        assert_eq!(rules.place(&ci).map(|d| d.tenant.as_str()), Some("ci"));
        // A conflict is still found: a second rule for uid 10042 at the same precedence.
        let e = PlacementRules::new([
            ("a".to_string(), rule(r#"{"uids": [10042]}"#)),
            ("b".to_string(), rule(r#"{"uids": [7, 10042]}"#)),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("'a' and 'b'"), "{e}");
    }

    fn rules_index(rules: &PlacementRules<String>, name: &str) -> usize {
        (0..rules.len())
            .find(|i| rules.get(*i).is_some_and(|(t, _)| t == name))
            .unwrap()
    }

    /// A Fisher-Yates shuffle driven by a seed (proptest shrinks the seed).
    fn shuffle<X>(v: &mut [X], mut seed: u64) {
        for i in (1..v.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (seed >> 33) as usize % (i + 1));
        }
    }
}
