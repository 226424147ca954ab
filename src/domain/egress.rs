//! A tenant's network egress policy as the user writes it: `network.egress` with a default
//! (`allow` or `deny`) and `allow`/`deny` lists of destinations (`"CIDR"`, `"CIDR:port"`,
//! `"CIDR:lo-hi"`, `"[v6CIDR]:port"`, each optionally `/tcp` or `/udp`), parsed and checked
//! here with no syscalls. What the kernel is given for it is `nft`'s business.
//!
//! Layer 0: imports only the domain's error type.

use super::error::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// Most entries in one of `allow` and `deny`: each is a rule every packet of the tenant's
/// sockets may walk past, so the lists stay short (use wide CIDRs).
pub const MAX_EGRESS_ENTRIES: usize = 64;

/// The network section of a tenant's spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// What the tenant's sockets may send to. Absent: the policy of the nearest ancestor that
    /// has one applies, or none.
    #[serde(default)]
    pub egress: Option<EgressSpec>,
}

/// An egress policy. The list named like `default` is checked first and carves holes in the
/// other one: `default: allow` checks `allow`, then `deny`, then lets the rest through;
/// `default: deny` checks `deny`, then `allow`, then refuses the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// What happens to traffic no entry matches.
    #[serde(default)]
    pub default: EgressDefault,
    /// Destinations let through.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub allow: Vec<Destination>,
    /// Destinations refused (the sender sees the connection refused, or EPERM for UDP).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub deny: Vec<Destination>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressDefault {
    #[default]
    Allow,
    Deny,
}

/// The two lists of a policy, by the name the spec gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }
}

impl EgressSpec {
    /// The entries in the order they are checked (see the type's note), each with its list
    /// and index in it.
    pub fn ordered(&self) -> Vec<(List, usize, &Destination)> {
        let (first, second) = match self.default {
            EgressDefault::Allow => ((List::Allow, &self.allow), (List::Deny, &self.deny)),
            EgressDefault::Deny => ((List::Deny, &self.deny), (List::Allow, &self.allow)),
        };
        [first, second]
            .into_iter()
            .flat_map(|(l, v)| v.iter().enumerate().map(move |(i, d)| (l, i, d)))
            .collect()
    }
}

/// Checks what parsing alone cannot: the size of each list. `field` is the section's path
/// (`network`).
pub fn validate(network: &NetworkSpec) -> Result<(), DomainError> {
    let Some(e) = &network.egress else {
        return Ok(());
    };
    for (name, list) in [("allow", &e.allow), ("deny", &e.deny)] {
        if list.len() > MAX_EGRESS_ENTRIES {
            return Err(DomainError::invalid(
                &format!("network.egress.{name}"),
                format!(
                    "{} entries: a list holds at most {MAX_EGRESS_ENTRIES} (every packet may be checked against each; use wider CIDRs)",
                    list.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A transport protocol an entry may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An inclusive port range; a single port is `lo == hi`. Ports are 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// An address with an optional prefix length; no prefix means the one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl Cidr {
    /// The prefix length in force: the address's full length when none was given.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
            .unwrap_or(if self.addr.is_ipv4() { 32 } else { 128 })
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// One entry of `allow` or `deny`: where to, which ports, which protocol. Without a protocol
/// a port means TCP and UDP; without ports, every protocol (ICMP included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    pub net: Cidr,
    pub ports: Option<Ports>,
    pub proto: Option<Proto>,
}

/// The forms an entry takes, for messages.
const FORMS: &str = "write CIDR, CIDR:port, CIDR:lo-hi or [v6CIDR]:port, optionally followed by /tcp or /udp (e.g. 10.0.0.0/8:5432/tcp)";

impl Destination {
    /// Parses one entry; the error says what is wrong with it (the caller names the field).
    pub fn parse(s: &str) -> Result<Destination, String> {
        let bad = |why: String| Err(format!("'{s}': {why}"));
        if s.is_empty() {
            return bad(format!("an empty destination: {FORMS}"));
        }
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Some(Proto::Tcp)),
            Some((r, "udp")) => (r, Some(Proto::Udp)),
            _ => (s, None),
        };
        let (net, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let Some((addr, after)) = inner.split_once(']') else {
                return bad(format!("'[' without its ']': {FORMS}"));
            };
            let ports = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return bad(format!("'{p}' after ']': {FORMS}")),
                },
            };
            (addr, ports)
        } else if rest.matches(':').count() > 1 {
            // An IPv6 address without brackets cannot carry a port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            }
        };
        let net = match parse_cidr(net) {
            Ok(n) => n,
            Err(why) => return bad(why),
        };
        let ports = match ports.map(parse_ports).transpose() {
            Ok(p) => p,
            Err(why) => return bad(why),
        };
        Ok(Destination { net, ports, proto })
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        if a.is_empty() {
            format!("no address: {FORMS}")
        } else {
            format!("'{a}' is not an IPv4 or IPv6 address: {FORMS}")
        }
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => None,
        Some(p) => {
            let n: u8 = p
                .parse()
                .ok()
                .filter(|_| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("'/{p}' is not a prefix length (0-{max})"))?;
            if n > max {
                return Err(format!(
                    "prefix /{n} is longer than an IPv{} address (at most /{max})",
                    if addr.is_ipv4() { 4 } else { 6 }
                ));
            }
            Some(n)
        }
    };
    let cidr = Cidr { addr, prefix };
    let masked = mask(addr, cidr.prefix_len());
    if masked != addr {
        return Err(format!(
            "{cidr} has bits set past the prefix: write {}",
            Cidr {
                addr: masked,
                prefix
            }
        ));
    }
    Ok(cidr)
}

/// `addr` with every bit past the first `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{p}' is not a port: ports are numbers from 1 to 65535"
        ));
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("port {p} is out of range: ports are 1-65535")),
    }
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (parse_port(lo)?, parse_port(hi)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!(
            "port range {lo}-{hi} runs backwards: write lo-hi with lo <= hi"
        ));
    }
    Ok(Ports { lo, hi })
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net.is_v4(), self.ports) {
            (_, None) | (true, _) => write!(f, "{}", self.net)?,
            (false, Some(_)) => write!(f, "[{}]", self.net)?,
        }
        if let Some(p) = self.ports {
            write!(f, ":{p}")?;
        }
        if let Some(p) = self.proto {
            write!(f, "/{}", p.name())?;
        }
        Ok(())
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Destination::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What `Destination::parse` takes, as far as a pattern can say it: IPv4 octets, prefix
/// lengths and ports in range; IPv6 addresses by their characters. Bits past the prefix, a
/// range running backwards and IPv6 grammar are checked by the parser alone.
pub const DESTINATION_PATTERN: &str = concat!(
    "^(",
    // IPv4: address, optional prefix, optional ports
    "((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    "(/(3[0-2]|[12]?[0-9]))?",
    "(:PORT(-PORT)?)?",
    "|",
    // IPv6 without a port
    "[0-9a-fA-F.]{0,39}:[0-9a-fA-F:.]{1,45}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?",
    "|",
    // IPv6 in brackets, optional ports
    "\\[[0-9a-fA-F.]{0,39}:[0-9a-fA-F:.]{1,45}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?\\](:PORT(-PORT)?)?",
    ")(/(tcp|udp))?$"
);

/// A port, 1-65535, as a pattern.
const PORT_PATTERN: &str =
    "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";

impl PartialSchema for Destination {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(DESTINATION_PATTERN.replace("PORT", PORT_PATTERN)))
            .examples(["10.0.0.0/8", "127.0.0.2:5432/tcp", "[::1]:5000-6000"])
            .description(Some(format!("a destination: {FORMS}")))
            .into()
    }
}
impl ToSchema for Destination {}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        for s in [
            "10.0.0.0/8",
            "127.0.0.2",
            "127.0.0.2:5432",
            "127.0.0.2:5432/tcp",
            "10.1.0.0/16:5000-6000/udp",
            "10.0.0.0/8/tcp",
            "0.0.0.0/0",
            "::1",
            "fd00::/8",
            "::/0",
            "[::1]:5432",
            "[fd00::/8]:1-1024/tcp",
            "::1/udp",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        // Brackets without a port, and a range of one port, print in the short form.
        assert_eq!(d("[::1]").to_string(), "::1");
        assert_eq!(d("1.2.3.4:80-80").to_string(), "1.2.3.4:80");
        let x = d("[fd00::/8]:1-1024/tcp");
        assert_eq!(x.ports, Some(Ports { lo: 1, hi: 1024 }));
        assert_eq!(x.proto, Some(Proto::Tcp));
        assert_eq!(x.net.prefix_len(), 8);
        assert_eq!(d("::1").net.prefix_len(), 128);
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for (s, why) in [
            ("", "empty"),
            ("10.0.0.300/8", "not an IPv4 or IPv6 address"),
            ("10.0.0.0/33", "at most /32"),
            ("fd00::/129", "at most /128"),
            ("10.0.0.1/8", "write 10.0.0.0/8"),
            ("10.0.0.0/x", "not a prefix length"),
            ("10.0.0.0/8:0", "port 0 is out of range"),
            ("10.0.0.0/8:65536", "port 65536 is out of range"),
            ("10.0.0.0/8:99999999999", "out of range"),
            ("10.0.0.0/8:6000-5000", "runs backwards"),
            ("10.0.0.0/8:", "is not a port"),
            ("10.0.0.0/8:http", "is not a port"),
            ("[::1", "without its ']'"),
            ("[::1]5432", "after ']'"),
            ("[::1]:0/tcp", "port 0"),
            ("example.com:443", "not an IPv4 or IPv6 address"),
            ("10.0.0.0/8/sctp", "not a prefix length"),
            (":5432", "no address"),
        ] {
            let e = Destination::parse(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
            assert!(e.starts_with(&format!("'{s}'")), "{e}");
        }
    }

    #[test]
    fn serde_names_the_entry_at_fault() {
        let e = serde_json::from_str::<NetworkSpec>(
            r#"{"egress":{"deny":["10.0.0.0/8","1.2.3.4:80","1.2.3.4:0"]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("port 0 is out of range"), "{e}");
        let ok: NetworkSpec =
            serde_json::from_str(r#"{"egress":{"default":"deny","allow":["[::1]:5432/tcp"]}}"#)
                .unwrap();
        let back = serde_json::to_value(&ok).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"egress":{"default":"deny","allow":["[::1]:5432/tcp"],"deny":[]}})
        );
        assert!(serde_json::from_str::<NetworkSpec>(r#"{"egress":{"block":[]}}"#).is_err());
    }

    #[test]
    fn the_list_named_like_the_default_is_checked_first() {
        let mut e = EgressSpec {
            default: EgressDefault::Allow,
            allow: vec![d("10.1.2.3:443")],
            deny: vec![d("10.0.0.0/8"), d("192.168.0.0/16")],
        };
        let order = |e: &EgressSpec| -> Vec<String> {
            e.ordered()
                .iter()
                .map(|(l, i, _)| format!("{}[{i}]", l.name()))
                .collect()
        };
        assert_eq!(order(&e), ["allow[0]", "deny[0]", "deny[1]"]);
        e.default = EgressDefault::Deny;
        assert_eq!(order(&e), ["deny[0]", "deny[1]", "allow[0]"]);
    }

    #[test]
    fn lists_are_bounded() {
        let many = NetworkSpec {
            egress: Some(EgressSpec {
                deny: vec![d("10.0.0.0/8"); MAX_EGRESS_ENTRIES + 1],
                ..Default::default()
            }),
        };
        assert_eq!(validate(&many).unwrap_err().field(), "network.egress.deny");
        let fine = NetworkSpec {
            egress: Some(EgressSpec {
                allow: vec![d("10.0.0.0/8"); MAX_EGRESS_ENTRIES],
                ..Default::default()
            }),
        };
        validate(&fine).unwrap();
    }

    /// Everything the parser takes matches the document's pattern, so a client checking
    /// against the OpenAPI document never refuses a valid entry.
    #[test]
    fn the_pattern_takes_every_valid_form() {
        let re = regex::Regex::new(&DESTINATION_PATTERN.replace("PORT", PORT_PATTERN)).unwrap();
        let re = |s: &str| re.is_match(s);
        for s in [
            "10.0.0.0/8",
            "127.0.0.2:5432/tcp",
            "10.1.0.0/16:5000-65535/udp",
            "::1",
            "[fd00::/8]:1-1024/tcp",
            "::ffff:1.2.3.4",
            "0.0.0.0/0",
        ] {
            d(s);
            assert!(re(s), "{s} does not match the pattern");
        }
        for s in ["10.0.0.0/8:0", "10.0.0.0/8:65536", "1.2.3.256", "x"] {
            assert!(!re(s), "{s} matches the pattern");
        }
    }
}
