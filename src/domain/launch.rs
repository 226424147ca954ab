//! Least-privilege launch: the options `tenantd run` applies before it execs a tenant's command
//! (no_new_privs, the capability bounding set, the user and group, private namespaces), as a
//! tenant's defaults (`launch` in the spec) and as flags, and their validation. No syscalls:
//! names are checked here, resolved against the user database by `crate::launch`.

use super::error::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// The capabilities by number (include/uapi/linux/capability.h), `CAP_` left off.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A user or group name: what the spec's schema states, and what the parser takes. A leading
/// digit is not allowed, so a name never reads as an ID.
pub const NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9._-]{0,31}$";

/// A user or group ID: 0 to 4294967294 without leading zeros (4294967295 is the kernel's
/// "no change", `(uid_t)-1`).
pub const ID_PATTERN: &str = "^(0|[1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-4])$";

/// One capability, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Capability(pub u8);

impl Capability {
    /// `CAP_NET_BIND_SERVICE` or `net_bind_service`.
    pub fn parse(s: &str) -> Option<Capability> {
        let i = match s.strip_prefix("CAP_") {
            Some(upper) => CAPABILITIES.iter().position(|c| *c == upper)?,
            None => CAPABILITIES
                .iter()
                .position(|c| c.to_ascii_lowercase() == s)?,
        };
        Some(Capability(i as u8))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match CAPABILITIES.get(self.0 as usize) {
            Some(n) => write!(f, "CAP_{n}"),
            None => write!(f, "capability {}", self.0),
        }
    }
}

/// A set of capabilities as the kernel shows it in `/proc/PID/status` (`CapBnd:` and the
/// others): bit N is capability N.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn contains(self, c: Capability) -> bool {
        self.0 & (1 << c.0) != 0
    }
    pub fn with(self, c: Capability) -> CapSet {
        CapSet(self.0 | 1 << c.0)
    }
    /// The capabilities in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        (0..64u8).map(Capability).filter(move |c| self.contains(*c))
    }
    /// `0000000000000420`, as `/proc/PID/status` prints it.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
    /// A `Cap*:` value of `/proc/PID/status`.
    pub fn parse_hex(s: &str) -> Option<CapSet> {
        u64::from_str_radix(s.trim(), 16).ok().map(CapSet)
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let names: Vec<String> = self.iter().map(|c| c.to_string()).collect();
        f.write_str(&names.join(","))
    }
}

/// A user or a group, by name or by ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    Id(u32),
    Name(String),
}

impl Ident {
    /// A name matching [`NAME_PATTERN`] or an ID matching [`ID_PATTERN`]; `None` otherwise.
    pub fn parse(s: &str) -> Option<Ident> {
        if regex_matches(ID_PATTERN, s) {
            return s.parse().ok().map(Ident::Id);
        }
        regex_matches(NAME_PATTERN, s).then(|| Ident::Name(s.to_string()))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ident::Id(i) => write!(f, "{i}"),
            Ident::Name(n) => f.write_str(n),
        }
    }
}

fn regex_matches(pattern: &str, s: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(s))
}

/// The schema of one `capabilities` entry: every spelling [`Capability::parse`] takes.
pub struct CapabilityName;
impl PartialSchema for CapabilityName {
    fn schema() -> RefOr<Schema> {
        let names: Vec<String> = CAPABILITIES
            .iter()
            .map(|c| format!("CAP_{c}"))
            .chain(CAPABILITIES.iter().map(|c| c.to_ascii_lowercase()))
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .description(Some(
                "a capability: CAP_NET_BIND_SERVICE or net_bind_service",
            ))
            .into()
    }
}
impl ToSchema for CapabilityName {}

/// The schema of `user` and `group`: what [`Ident::parse`] takes.
pub struct UserOrGroup;
impl PartialSchema for UserOrGroup {
    fn schema() -> RefOr<Schema> {
        let text = |p: &str, e: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(p))
                .examples([e])
        };
        OneOfBuilder::new()
            .item(text(NAME_PATTERN, "nobody"))
            .item(text(ID_PATTERN, "65534"))
            .description(Some("a name, or an ID from 0 to 4294967294"))
            .into()
    }
}
impl ToSchema for UserOrGroup {}

/// How `tenantd run` starts a tenant's command, as the tenant's defaults (`launch` in the spec)
/// or as the flags of one run. Every field is optional: absent means "the default", and a
/// flag given for one run overrides the tenant's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// Set `no_new_privs` before exec, so setuid programs and file capabilities grant nothing
    /// [default: true].
    #[serde(default)]
    pub no_new_privs: Option<bool>,
    /// The capability bounding set, e.g. `["CAP_NET_BIND_SERVICE"]` or `["net_bind_service"]`;
    /// `[]` for none. Default: none when the command runs as a non-root user; as root, the set
    /// `tenantd run` has.
    #[serde(default)]
    #[schema(value_type = Option<Vec<CapabilityName>>)]
    pub capabilities: Option<Vec<String>>,
    /// The user to run as (a name or an ID); its groups become the supplementary groups.
    #[serde(default)]
    #[schema(value_type = Option<UserOrGroup>)]
    pub user: Option<String>,
    /// The group to run as (a name or an ID) [default: the user's primary group].
    #[serde(default)]
    #[schema(value_type = Option<UserOrGroup>)]
    pub group: Option<String>,
    /// A network namespace of its own with only the loopback interface, up [default: false].
    #[serde(default)]
    pub private_network: Option<bool>,
    /// A mount namespace of its own with a private tmpfs on /tmp [default: false].
    #[serde(default)]
    pub private_tmp: Option<bool>,
    /// A PID namespace of its own (with its own /proc), where a small reaper is PID 1 and the
    /// command PID 2 [default: false].
    #[serde(default)]
    pub private_pid: Option<bool>,
}

/// What the launch does once the options are validated: every default filled in but the
/// bounding set's, which depends on who the command runs as ([`Bounding::choose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub no_new_privs: bool,
    /// The bounding set asked for; `None`: the default.
    pub capabilities: Option<CapSet>,
    pub user: Option<Ident>,
    pub group: Option<Ident>,
    pub private_network: bool,
    pub private_tmp: bool,
    pub private_pid: bool,
}

impl LaunchSpec {
    /// `self` (one run's flags) over `defaults` (the tenant's), field by field.
    pub fn over(&self, defaults: &LaunchSpec) -> LaunchSpec {
        LaunchSpec {
            no_new_privs: self.no_new_privs.or(defaults.no_new_privs),
            capabilities: self
                .capabilities
                .clone()
                .or_else(|| defaults.capabilities.clone()),
            user: self.user.clone().or_else(|| defaults.user.clone()),
            group: self.group.clone().or_else(|| defaults.group.clone()),
            private_network: self.private_network.or(defaults.private_network),
            private_tmp: self.private_tmp.or(defaults.private_tmp),
            private_pid: self.private_pid.or(defaults.private_pid),
        }
    }

    /// Validates the options; `field` names a field in errors (`launch.user` in a spec,
    /// `--user` on the command line; `capabilities[2]` for the third capability).
    pub fn plan(&self, field: &dyn Fn(&str) -> String) -> Result<LaunchPlan, DomainError> {
        let capabilities = match &self.capabilities {
            None => None,
            Some(list) => {
                let mut set = CapSet::default();
                for (i, name) in list.iter().enumerate() {
                    let Some(c) = Capability::parse(name) else {
                        return Err(DomainError::invalid(
                            &field(&format!("capabilities[{i}]")),
                            format!(
                                "'{}' is not a capability: use a name like CAP_NET_BIND_SERVICE or net_bind_service (see capabilities(7))",
                                shown(name)
                            ),
                        ));
                    };
                    set = set.with(c);
                }
                Some(set)
            }
        };
        let ident = |key: &str, v: &Option<String>| -> Result<Option<Ident>, DomainError> {
            v.as_deref()
                .map(|s| {
                    Ident::parse(s).ok_or_else(|| {
                        DomainError::invalid(
                            &field(key),
                            format!(
                                "'{}' is neither a {key} name (1-32 characters from A-Z, a-z, 0-9, '.', '_', '-', not starting with a digit, '.' or '-') nor an ID (0 to 4294967294)",
                                shown(s)
                            ),
                        )
                    })
                })
                .transpose()
        };
        Ok(LaunchPlan {
            no_new_privs: self.no_new_privs.unwrap_or(true),
            capabilities,
            user: ident("user", &self.user)?,
            group: ident("group", &self.group)?,
            private_network: self.private_network.unwrap_or(false),
            private_tmp: self.private_tmp.unwrap_or(false),
            private_pid: self.private_pid.unwrap_or(false),
        })
    }
}

/// At most 64 characters of what the caller sent, so a huge value does not come back whole.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses the `--capabilities` flag: names separated by commas; `none` or nothing for the
/// empty set.
pub fn capability_list(s: &str) -> Vec<String> {
    if s.trim().is_empty() || s.trim() == "none" {
        return Vec::new();
    }
    s.split(',').map(|c| c.trim().to_string()).collect()
}

/// What happens to the bounding set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounding {
    /// Left as `tenantd run` has it.
    Keep,
    /// Reduced to exactly this set.
    Set(CapSet),
}

impl Bounding {
    /// The bounding set for a command run as `uid`: the list asked for; by default empty for a
    /// non-root user, and kept for root (whose capabilities after exec are the bounding set,
    /// so emptying it by default would change what `tenantd run` as root always did). A caller
    /// that cannot change the bounding set (no `CAP_SETPCAP`, an unprivileged user running as
    /// itself) keeps it by default: with no_new_privs nothing it execs can gain a capability.
    pub fn choose(asked: Option<CapSet>, uid: u32, can_change: bool) -> Bounding {
        match asked {
            Some(set) => Bounding::Set(set),
            None if uid != 0 && can_change => Bounding::Set(CapSet::default()),
            None => Bounding::Keep,
        }
    }
}

/// What `/proc/PID/status` says about a process's privileges: the lines the launch checks
/// before exec and the tests check after it. A line the kernel does not print is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCreds {
    pub no_new_privs: Option<bool>,
    pub cap_inh: Option<CapSet>,
    pub cap_prm: Option<CapSet>,
    pub cap_eff: Option<CapSet>,
    pub cap_bnd: Option<CapSet>,
    pub cap_amb: Option<CapSet>,
    /// Real, effective, saved and filesystem IDs.
    pub uid: Vec<u32>,
    pub gid: Vec<u32>,
    /// The supplementary groups, as the kernel lists them (sorted).
    pub groups: Vec<u32>,
}

impl ProcCreds {
    pub fn parse(status: &str) -> ProcCreds {
        let mut c = ProcCreds::default();
        let ids = |v: &str| -> Vec<u32> {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        for line in status.lines() {
            let Some((key, v)) = line.split_once(':') else {
                continue;
            };
            match key {
                "NoNewPrivs" => c.no_new_privs = Some(v.trim() == "1"),
                "CapInh" => c.cap_inh = CapSet::parse_hex(v),
                "CapPrm" => c.cap_prm = CapSet::parse_hex(v),
                "CapEff" => c.cap_eff = CapSet::parse_hex(v),
                "CapBnd" => c.cap_bnd = CapSet::parse_hex(v),
                "CapAmb" => c.cap_amb = CapSet::parse_hex(v),
                "Uid" => c.uid = ids(v),
                "Gid" => c.gid = ids(v),
                "Groups" => c.groups = ids(v),
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_field(f: &str) -> String {
        format!("launch.{f}")
    }

    #[test]
    fn capability_names_in_both_spellings_and_nothing_else() {
        assert_eq!(
            Capability::parse("CAP_NET_BIND_SERVICE"),
            Some(Capability(10))
        );
        assert_eq!(Capability::parse("net_bind_service"), Some(Capability(10)));
        assert_eq!(Capability::parse("CAP_CHOWN"), Some(Capability(0)));
        assert_eq!(
            Capability::parse("checkpoint_restore"),
            Some(Capability(40))
        );
        for bad in [
            "",
            "CAP_",
            "cap_net_bind_service",
            "NET_BIND_SERVICE",
            "CAP_net_bind_service",
            "Net_bind_service",
            "CAP_NET_BIND",
            "CAP_NET_BIND_SERVICE ",
            "41",
        ] {
            assert_eq!(Capability::parse(bad), None, "{bad:?}");
        }
        // Every name of the table reads back as itself, both ways.
        for (i, n) in CAPABILITIES.iter().enumerate() {
            let c = Capability(i as u8);
            assert_eq!(Capability::parse(&format!("CAP_{n}")), Some(c));
            assert_eq!(Capability::parse(&n.to_lowercase()), Some(c));
            assert_eq!(c.to_string(), format!("CAP_{n}"));
        }
    }

    #[test]
    fn cap_sets_read_and_print_as_proc_status_does() {
        let s = CapSet::default().with(Capability(10)).with(Capability(5));
        assert_eq!(s.hex(), "0000000000000420");
        assert_eq!(CapSet::parse_hex("0000000000000420"), Some(s));
        assert_eq!(
            CapSet::parse_hex("000001ffffffffff\n").unwrap().0,
            (1 << 41) - 1
        );
        assert_eq!(s.to_string(), "CAP_KILL,CAP_NET_BIND_SERVICE");
        assert_eq!(CapSet::default().to_string(), "none");
    }

    #[test]
    fn users_and_groups_are_names_or_ids() {
        assert_eq!(Ident::parse("nobody"), Some(Ident::Name("nobody".into())));
        assert_eq!(
            Ident::parse("_svc.web-1"),
            Some(Ident::Name("_svc.web-1".into()))
        );
        assert_eq!(Ident::parse("0"), Some(Ident::Id(0)));
        assert_eq!(Ident::parse("65534"), Some(Ident::Id(65534)));
        assert_eq!(Ident::parse("4294967294"), Some(Ident::Id(4_294_967_294)));
        for bad in [
            "",
            "4294967295",
            "9999999999",
            "00",
            "0123",
            "1abc",
            "-x",
            ".x",
            "a b",
            "a:b",
            "a/b",
            "root\n",
            &"a".repeat(33),
        ] {
            assert_eq!(Ident::parse(bad), None, "{bad:?}");
        }
        assert!(Ident::parse(&"a".repeat(32)).is_some());
        // The ID pattern takes exactly the numbers up to 4294967294, at its edges.
        for n in [
            1u64,
            999_999_999,
            1_000_000_000,
            3_999_999_999,
            4_099_999_999,
            4_289_999_999,
            4_293_999_999,
            4_294_899_999,
            4_294_959_999,
            4_294_966_999,
            4_294_967_199,
            4_294_967_289,
        ] {
            assert_eq!(Ident::parse(&n.to_string()), Some(Ident::Id(n as u32)));
        }
        for n in [
            4_294_967_295u64,
            4_294_967_296,
            4_300_000_000,
            5_000_000_000,
        ] {
            assert_eq!(Ident::parse(&n.to_string()), None, "{n}");
        }
    }

    #[test]
    fn a_plan_fills_the_defaults_and_names_the_field_at_fault() {
        let p = LaunchSpec::default().plan(&spec_field).unwrap();
        assert_eq!(
            p,
            LaunchPlan {
                no_new_privs: true,
                capabilities: None,
                user: None,
                group: None,
                private_network: false,
                private_tmp: false,
                private_pid: false,
            }
        );
        let s = LaunchSpec {
            capabilities: Some(vec!["CAP_KILL".into(), "net_bind_servic".into()]),
            ..LaunchSpec::default()
        };
        let e = s.plan(&spec_field).unwrap_err();
        assert_eq!(e.field(), "launch.capabilities[1]");
        assert!(
            e.message()
                .contains("'net_bind_servic' is not a capability"),
            "{e}"
        );
        let e = LaunchSpec {
            user: Some("no body".into()),
            ..LaunchSpec::default()
        }
        .plan(&|f| format!("--{f}"))
        .unwrap_err();
        assert_eq!(e.field(), "--user");
        let e = LaunchSpec {
            group: Some("4294967295".into()),
            ..LaunchSpec::default()
        }
        .plan(&spec_field)
        .unwrap_err();
        assert_eq!(e.field(), "launch.group");
        assert!(
            e.message().contains("'4294967295' is neither a group name"),
            "{e}"
        );
        let p = LaunchSpec {
            no_new_privs: Some(false),
            capabilities: Some(vec![]),
            user: Some("nobody".into()),
            group: Some("0".into()),
            private_network: Some(true),
            private_tmp: Some(true),
            private_pid: Some(true),
        }
        .plan(&spec_field)
        .unwrap();
        assert!(!p.no_new_privs && p.private_network && p.private_tmp && p.private_pid);
        assert_eq!(p.capabilities, Some(CapSet(0)));
        assert_eq!(p.user, Some(Ident::Name("nobody".into())));
        assert_eq!(p.group, Some(Ident::Id(0)));
    }

    #[test]
    fn flags_override_the_tenants_defaults_field_by_field() {
        let tenant = LaunchSpec {
            no_new_privs: Some(false),
            capabilities: Some(vec!["CAP_KILL".into()]),
            user: Some("nobody".into()),
            group: Some("nogroup".into()),
            private_network: Some(true),
            private_tmp: Some(true),
            private_pid: None,
        };
        let flags = LaunchSpec {
            no_new_privs: Some(true),
            user: Some("daemon".into()),
            private_network: Some(false),
            private_pid: Some(true),
            ..LaunchSpec::default()
        };
        let m = flags.over(&tenant);
        assert_eq!(
            m,
            LaunchSpec {
                no_new_privs: Some(true),
                capabilities: Some(vec!["CAP_KILL".into()]),
                user: Some("daemon".into()),
                group: Some("nogroup".into()),
                private_network: Some(false),
                private_tmp: Some(true),
                private_pid: Some(true),
            }
        );
        assert_eq!(LaunchSpec::default().over(&tenant), tenant);
        assert_eq!(flags.over(&LaunchSpec::default()), flags);
    }

    #[test]
    fn the_capabilities_flag_takes_a_comma_list_or_none() {
        assert_eq!(capability_list("none"), Vec::<String>::new());
        assert_eq!(capability_list(""), Vec::<String>::new());
        assert_eq!(
            capability_list("CAP_KILL, net_raw"),
            vec!["CAP_KILL".to_string(), "net_raw".to_string()]
        );
    }

    /// A status file captured on this project's CI host (kernel 6.18) from
    /// `setpriv --reuid 65534 --regid 65534 --init-groups --no-new-privs --bounding-set -all
    /// cat /proc/self/status`, cut to the lines read and a neighbour of each.
    #[test]
    fn proc_status_lines_are_read() {
        let status = "Umask:\t0022\nState:\tR (running)\nUid:\t65534\t65534\t65534\t65534\n\
            Gid:\t65534\t65534\t65534\t65534\nFDSize:\t256\nGroups:\t65534 \n\
            CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
            CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
            Seccomp:\t0\n";
        let c = ProcCreds::parse(status);
        assert_eq!(c.no_new_privs, Some(true));
        assert_eq!(c.cap_bnd, Some(CapSet(0)));
        assert_eq!(c.cap_eff, Some(CapSet(0)));
        assert_eq!(c.uid, vec![65534; 4]);
        assert_eq!(c.gid, vec![65534; 4]);
        assert_eq!(c.groups, vec![65534]);
        let root = ProcCreds::parse("Groups:\t\nCapBnd:\t000001fffeffffff\nNoNewPrivs:\t0\n");
        assert_eq!(root.groups, Vec::<u32>::new());
        assert_eq!(root.no_new_privs, Some(false));
        assert_eq!(root.cap_bnd, Some(CapSet(0x1fffeffffff)));
        assert_eq!(root.cap_amb, None);
    }

    #[test]
    fn the_bounding_set_default_depends_on_who_runs_the_command() {
        let kill = CapSet::default().with(Capability(5));
        for (asked, uid, can, want) in [
            (None, 65534, true, Bounding::Set(CapSet(0))),
            (None, 0, true, Bounding::Keep),
            (None, 1000, false, Bounding::Keep),
            (Some(kill), 0, true, Bounding::Set(kill)),
            (Some(kill), 1000, true, Bounding::Set(kill)),
            (Some(CapSet(0)), 0, true, Bounding::Set(CapSet(0))),
            // Asked for without the means: the launch refuses it (it never keeps silently).
            (Some(kill), 1000, false, Bounding::Set(kill)),
        ] {
            assert_eq!(
                Bounding::choose(asked, uid, can),
                want,
                "{asked:?} {uid} {can}"
            );
        }
    }
}
