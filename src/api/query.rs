//! Typed parsers for every query parameter the API takes: times, steps, bools, tenant names,
//! limits and cursors. Pure (the caller passes `now`), checked arithmetic, no panics on any
//! input; every refusal is a 422 problem naming the parameter.

use super::error::Problem;
use crate::domain::TenantName;
use std::collections::BTreeMap;

/// The earliest time a query may name: the Unix epoch (1970-01-01T00:00:00Z).
pub const MIN_TIME_MS: i64 = 0;
/// The latest time a query may name: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The largest step a usage query may ask for: 3650 days, in seconds.
pub const MAX_STEP_S: i64 = 3650 * 86_400;

/// At most this many characters of a refused value are echoed back in a message.
const ECHO_CHARS: usize = 40;

/// A value as shown in an error message: cut at `ECHO_CHARS` characters (never mid-character).
pub fn shown(v: &str) -> String {
    match v.char_indices().nth(ECHO_CHARS) {
        Some((i, _)) => format!("{}...", &v[..i]),
        None => v.to_string(),
    }
}

/// ASCII digits only (no sign, no spaces); a number too large for an i64 saturates to
/// `i64::MAX`, which every caller then refuses as out of range.
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(i64::MAX))
}

/// Splits `15m` into (15, 60 * scale); `None` unless the value is digits followed by one of
/// `s`, `m`, `h`, `d`. Works on characters, so any UTF-8 input is safe.
fn with_unit(s: &str, scale: i64) -> Option<(i64, i64)> {
    let unit = s.chars().last()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let n = digits(&s[..s.len() - unit.len_utf8()])?;
    Some((n, mult * scale))
}

/// Parses a time: Unix milliseconds, or a duration back from `now` such as `15m`, `2h`, `7d`.
/// The result lies between 1970 and the end of year 9999; the error says what to send.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let what = "use Unix milliseconds or a duration back from now like 15m, 2h, 7d";
    let before = || format!("'{}' is before 1970: {what}", shown(s));
    if let Some(rest) = s.strip_prefix('-') {
        if digits(rest).is_some() || with_unit(rest, 1).is_some() {
            return Err(before());
        }
    }
    if let Some(ms) = digits(s) {
        return if ms <= MAX_TIME_MS {
            Ok(ms)
        } else {
            Err(format!("'{}' is after the year 9999: {what}", shown(s)))
        };
    }
    let (n, unit_ms) = with_unit(s, 1_000).ok_or_else(|| {
        format!(
            "'{}' is neither Unix milliseconds nor a duration back from now like 15m, 2h, 7d",
            shown(s)
        )
    })?;
    // A duration that reaches back past 1970 means "since 1970" (stated in the README); one
    // too large to compute at all is refused, never wrapped.
    n.checked_mul(unit_ms)
        .and_then(|back| now.checked_sub(back))
        .map(|ms| ms.clamp(MIN_TIME_MS, MAX_TIME_MS))
        .ok_or_else(before)
}

/// Parses a step: seconds, or a number with `s`, `m`, `h` or `d`; above zero, at most
/// `MAX_STEP_S`.
pub fn parse_step(s: &str) -> Result<i64, String> {
    let like = "use a step like 10, 30s, 5m, 1h, 1d";
    let secs = match (digits(s), with_unit(s, 1)) {
        (Some(n), _) => n,
        (None, Some((n, mult))) => n.saturating_mul(mult),
        (None, None) => return Err(format!("'{}' is not a step: {like}", shown(s))),
    };
    if secs == 0 {
        return Err(format!("'{}' is not above zero: {like}", shown(s)));
    }
    if secs > MAX_STEP_S {
        return Err(format!(
            "'{}' is longer than {} days: {like}",
            shown(s),
            MAX_STEP_S / 86_400
        ));
    }
    Ok(secs)
}

/// The query string of one request, every key known to the endpoint and given once.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: BTreeMap<String, String>,
}

impl Query {
    /// Splits `raw` (the part after `?`, percent-encoded) and refuses unknown and repeated
    /// parameters. `allowed` lists the endpoint's parameters; the message names them.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, Problem> {
        let mut pairs = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                let hint = if allowed.is_empty() {
                    "this endpoint takes no query parameters".to_string()
                } else {
                    format!("use {}", allowed.join(", "))
                };
                return Err(Problem::invalid(
                    &k,
                    format!("unknown query parameter '{}': {hint}", shown(&k)),
                ));
            }
            if pairs.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(Problem::invalid(
                    &k,
                    format!("query parameter '{k}' is given more than once: give it once"),
                ));
            }
        }
        Ok(Query { pairs })
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.get(k).map(String::as_str)
    }

    /// A time (see `parse_time`), or `default` when absent.
    pub fn time(&self, k: &str, now: i64, default: i64) -> Result<i64, Problem> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => parse_time(v, now).map_err(|m| Problem::invalid(k, m)),
        }
    }

    /// A step in seconds (see `parse_step`), if given.
    pub fn step(&self, k: &str) -> Result<Option<i64>, Problem> {
        self.get(k)
            .map(|v| parse_step(v).map_err(|m| Problem::invalid(k, m)))
            .transpose()
    }

    /// `true` or `false`, if given.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, Problem> {
        match self.get(k) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(Problem::invalid(
                k,
                format!("'{}' is not true or false", shown(v)),
            )),
        }
    }

    /// A tenant name, if given.
    pub fn tenant(&self, k: &str) -> Result<Option<TenantName>, Problem> {
        self.get(k)
            .map(|v| {
                if v.len() > 63 {
                    return Err(Problem::invalid(
                        k,
                        format!("tenant name '{}' is longer than 63 characters", shown(v)),
                    ));
                }
                TenantName::parse(v).map_err(|e| Problem::invalid(k, e.message().to_string()))
            })
            .transpose()
    }

    /// A count from 1 to `max`, or `default` when absent.
    pub fn limit(&self, k: &str, default: i64, max: i64) -> Result<i64, Problem> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => digits(v).filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                Problem::invalid(k, format!("'{}' is not a number from 1 to {max}", shown(v)))
            }),
        }
    }

    /// A paging cursor (the `next` an earlier answer gave: a positive integer), if given.
    pub fn cursor(&self, k: &str) -> Result<Option<i64>, Problem> {
        self.get(k)
            .map(|v| {
                // Strictly an i64: a saturated huge value would silently be a valid cursor.
                v.parse::<i64>().ok().filter(|n| *n > 0 && digits(v).is_some()).ok_or_else(|| {
                    Problem::invalid(
                        k,
                        format!(
                            "'{}' is not a cursor: pass the value of an earlier answer's next link",
                            shown(v)
                        ),
                    )
                })
            })
            .transpose()
    }

    /// One of `choices`, if given.
    pub fn one_of(
        &self,
        k: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, Problem> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => choices
                .iter()
                .find(|c| **c == v)
                .copied()
                .map(Some)
                .ok_or_else(|| {
                    Problem::invalid(
                        k,
                        format!("'{}' is not one of {}", shown(v), choices.join(", ")),
                    )
                }),
        }
    }

    /// An identifier such as an event kind: 1 to 64 of `a-z`, `0-9` and `_`, if given.
    pub fn ident(&self, k: &str) -> Result<Option<String>, Problem> {
        self.get(k)
            .map(|v| {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if ok {
                    Ok(v.to_string())
                } else {
                    Err(Problem::invalid(
                        k,
                        format!(
                            "'{}' is not a {k}: use 1 to 64 of a-z, 0-9 and _ (such as oom_kill)",
                            shown(v)
                        ),
                    ))
                }
            })
            .transpose()
    }
}

/// The query parameters of one endpoint as a typed struct: its `IntoParams` derive documents
/// them in the OpenAPI document, and `from_query` reads them with the parsers above, so the
/// parameters the document lists are exactly the ones the endpoint takes.
pub trait Params: utoipa::IntoParams + Sized {
    /// Reads the typed parameters; `now` is the time durations count back from.
    fn from_query(q: &Query, now: i64) -> Result<Self, Problem>;

    /// Splits `raw`, refuses parameters the struct does not have (and repeats), and reads it.
    fn parse(raw: Option<&str>, now: i64) -> Result<(Self, Query), Problem> {
        let names: Vec<String> =
            Self::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
                .into_iter()
                .map(|p| p.name)
                .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let q = Query::parse(raw, &names)?;
        Ok((Self::from_query(&q, now)?, q))
    }
}

/// `DELETE /v1/tenants/{name}`: what happens to the tenant's processes.
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// kill the tenant's processes (not with move_to)
    #[param(value_type = Option<bool>)]
    pub kill: bool,
    /// an existing tenant to move the processes to (not with kill=true)
    pub move_to: Option<TenantName>,
}

impl Params for DeleteParams {
    fn from_query(q: &Query, _: i64) -> Result<Self, Problem> {
        Ok(DeleteParams {
            kill: q.bool("kill")?.unwrap_or(false),
            move_to: q.tenant("move_to")?,
        })
    }
}

/// `GET /v1/placement/explain`: the process to explain.
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExplainParams {
    /// a process ID, as the daemon's /proc numbers it
    #[param(value_type = i64, minimum = 1, maximum = 4194304)]
    pub pid: u32,
}

impl Params for ExplainParams {
    fn from_query(q: &Query, _: i64) -> Result<Self, Problem> {
        let max = crate::domain::tenant::PID_MAX_LIMIT as i64;
        let v = q
            .get("pid")
            .ok_or_else(|| Problem::invalid("pid", "pid is missing: give ?pid=N"))?;
        digits(v)
            .filter(|n| (1..=max).contains(n))
            .map(|n| ExplainParams { pid: n as u32 })
            .ok_or_else(|| {
                Problem::invalid(
                    "pid",
                    format!(
                        "'{}' is not a process ID: give a number from 1 to {max}",
                        shown(v)
                    ),
                )
            })
    }
}

/// The most tenants one page of `GET /v1/tenants` holds.
pub const TENANTS_MAX_LIMIT: i64 = 1000;

/// `GET /v1/tenants`: one page of tenants, by name. Without `limit` the answer holds every
/// tenant (a small host's whole list in one answer, as before pages).
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantsParams {
    /// tenants per page, by name; when more follow, the answer has a Link header (rel="next") and a Next-Cursor header. Without it, every tenant in one answer
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// paging cursor: the Next-Cursor of the previous page (a tenant name); the page holds the names after it
    pub after: Option<TenantName>,
}

impl Params for TenantsParams {
    fn from_query(q: &Query, _: i64) -> Result<Self, Problem> {
        Ok(TenantsParams {
            limit: q
                .get("limit")
                .map(|_| q.limit("limit", TENANTS_MAX_LIMIT, TENANTS_MAX_LIMIT))
                .transpose()?,
            after: q.tenant("after")?,
        })
    }
}

/// The `Link: <path?...&after=CURSOR>; rel="next"` and `Next-Cursor: CURSOR` headers of a page
/// that has a next one: the query parameters `keep` of this request, and the cursor.
pub fn next_page_headers(
    path: &str,
    q: &Query,
    keep: &[&str],
    cursor: &str,
) -> Vec<(&'static str, String)> {
    let mut next = form_urlencoded::Serializer::new(String::new());
    for k in keep {
        if let Some(v) = q.get(k) {
            next.append_pair(k, v);
        }
    }
    next.append_pair("after", cursor);
    let link = format!("<{path}?{}>; rel=\"next\"", next.finish());
    vec![("link", link), ("next-cursor", cursor.to_string())]
}

/// The most events one answer holds, and the number when `limit` is not given.
pub const EVENTS_MAX_LIMIT: i64 = 1000;
pub const EVENTS_DEFAULT_LIMIT: i64 = 100;

/// `GET /v1/events`: which events, and the page.
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    pub tenant: Option<TenantName>,
    #[param(pattern = "^[a-z0-9_]{1,64}$")]
    pub kind: Option<String>,
    /// Unix ms, or a duration back from now: 15m, 2h, 7d
    #[param(value_type = Option<String>, pattern = "^([0-9]{1,14}|[0-9]{1,9}[smhd])$")]
    pub since: Option<i64>,
    /// events per page; when more match, the answer has a Link header (rel="next") and a Next-Cursor header
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    pub limit: i64,
    /// paging cursor: the Next-Cursor of the previous page (an event id); the page continues after that event
    #[param(minimum = 1, maximum = 9223372036854775807_i64)]
    pub after: Option<i64>,
}

impl Params for EventsParams {
    fn from_query(q: &Query, now: i64) -> Result<Self, Problem> {
        Ok(EventsParams {
            tenant: q.tenant("tenant")?,
            kind: q.ident("kind")?,
            since: q
                .get("since")
                .map(|_| q.time("since", now, 0))
                .transpose()?,
            limit: q.limit("limit", EVENTS_DEFAULT_LIMIT, EVENTS_MAX_LIMIT)?,
            after: q.cursor("after")?,
        })
    }
}

/// `GET /v1/tenants/{name}/usage`: the range and the bucket size, as given (checked together
/// by `usage::usage_query`).
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Unix ms, or a duration back from now: 15m, 2h, 7d (default 1h)
    #[param(value_type = Option<String>, pattern = "^([0-9]{1,14}|[0-9]{1,9}[smhd])$")]
    pub from: Option<i64>,
    /// Unix ms, or a duration back from now (default now)
    #[param(value_type = Option<String>, pattern = "^([0-9]{1,14}|[0-9]{1,9}[smhd])$")]
    pub to: Option<i64>,
    /// seconds, or 30s, 5m, 1h, 1d (default: about 240 points); rounded up to a multiple of the level's step
    #[param(value_type = Option<String>, pattern = "^([1-9][0-9]{0,7}s?|[1-9][0-9]{0,5}m|[1-9][0-9]{0,3}h|[1-9][0-9]{0,2}d)$")]
    pub step: Option<i64>,
}

impl Params for UsageParams {
    fn from_query(q: &Query, now: i64) -> Result<Self, Problem> {
        let time = |k| q.get(k).map(|_| q.time(k, now, 0)).transpose();
        Ok(UsageParams {
            from: time("from")?,
            to: time("to")?,
            step: q.step("step")?,
        })
    }
}

/// The formats of the SLA report.
pub const REPORT_FORMATS: &[&str] = &["json", "csv", "html"];

/// `GET /v1/reports/sla`: the period, the tenant and the format.
#[derive(Debug, Clone, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// Unix ms or a duration back from now (default 24h)
    #[param(value_type = Option<String>, pattern = "^([0-9]{1,14}|[0-9]{1,9}[smhd])$")]
    pub from: Option<i64>,
    #[param(value_type = Option<String>, pattern = "^([0-9]{1,14}|[0-9]{1,9}[smhd])$")]
    pub to: Option<i64>,
    pub tenant: Option<TenantName>,
    #[param(value_type = Option<crate::api::query::ReportFormat>, inline)]
    pub format: &'static str,
    /// `node` (default): this node's tenants from its own history; `fleet`: every node's,
    /// per tenant across nodes and per node, from the minutes they shipped to the fleet store
    /// (a daemon with a fleet store only)
    #[param(value_type = Option<crate::api::query::ReportScope>, inline)]
    pub scope: &'static str,
}

impl Params for ReportParams {
    fn from_query(q: &Query, now: i64) -> Result<Self, Problem> {
        let time = |k| q.get(k).map(|_| q.time(k, now, 0)).transpose();
        Ok(ReportParams {
            from: time("from")?,
            to: time("to")?,
            tenant: q.tenant("tenant")?,
            format: q.one_of("format", REPORT_FORMATS)?.unwrap_or("json"),
            scope: q.one_of("scope", REPORT_SCOPES)?.unwrap_or("node"),
        })
    }
}

/// The scopes of the SLA report: this node, or the whole fleet.
pub const REPORT_SCOPES: &[&str] = &["node", "fleet"];

/// A string schema whose values are one of a list: `$name` for `$values`.
macro_rules! one_of_schema {
    ($(#[$doc:meta])* $name:ident, $values:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some($values.iter().copied()))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

one_of_schema!(
    /// The schema of `ReportParams::scope`: one of `REPORT_SCOPES`.
    ReportScope,
    REPORT_SCOPES
);
one_of_schema!(
    /// The schema of `ReportParams::format`: one of `REPORT_FORMATS`.
    ReportFormat,
    REPORT_FORMATS
);

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000_000_000;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse_time("0", NOW), Ok(0));
        assert_eq!(parse_time("15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("7d", NOW), Ok(NOW - 604_800_000));
        assert_eq!(parse_time("0s", NOW), Ok(NOW));
        for bad in [
            "",
            "é",
            "1é",
            "%C3%A9",
            "-1",
            "-9223372036854775808",
            "9223372036854775807",
            "999999999999999999999999",
            "253402300800000",
            "-5m",
            "+5",
            "5 m",
            "1w",
            "m",
            "999999999999999999d",
            "1.5h",
            "yesterday",
            "\u{0}",
            "5mé",
        ] {
            let e = parse_time(bad, NOW).expect_err(bad);
            assert!(!e.is_empty() && !e.contains("{:?}"), "{bad}: {e}");
        }
        assert!(parse_time("-1", NOW).unwrap_err().contains("before 1970"));
        assert!(
            parse_time("253402300800000", NOW)
                .unwrap_err()
                .contains("9999")
        );
        assert!(
            parse_time("99999999999999999999", NOW)
                .unwrap_err()
                .contains("9999")
        );
        // Durations back past 1970 start at 1970.
        assert_eq!(parse_time("200000d", NOW), Ok(0));
        assert_eq!(parse_time("999999999d", NOW), Ok(0));
        assert!(parse_time(&"9".repeat(100), NOW).unwrap_err().len() < 200);
    }

    #[test]
    fn steps() {
        assert_eq!(parse_step("10"), Ok(10));
        assert_eq!(parse_step("1m"), Ok(60));
        assert_eq!(parse_step("1h"), Ok(3600));
        assert_eq!(parse_step("1d"), Ok(86_400));
        for bad in [
            "0",
            "0s",
            "-5s",
            "1w",
            "",
            "é",
            "1é",
            "99999999999999999999",
            "999999999999999999d",
            "3651d",
            "x",
        ] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
        assert!(parse_step("3651d").unwrap_err().contains("3650 days"));
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused_by_name() {
        let e = Query::parse(Some("since=1h&bogus=1"), &["since"]).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("bogus")));
        let e = Query::parse(Some("since=1h&since=2h"), &["since"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("since"));
        assert!(e.detail.contains("more than once"), "{}", e.detail);
        let q = Query::parse(Some("since=%C3%A9&limit=5"), &["since", "limit"]).unwrap();
        assert_eq!(q.get("since"), Some("é"));
        assert_eq!(q.limit("limit", 100, 1000).unwrap(), 5);
        assert!(q.time("since", NOW, 0).is_err());
        let q = Query::parse(Some("k=maybe"), &["k"]).unwrap();
        assert_eq!(q.bool("k").unwrap_err().field.as_deref(), Some("k"));
        assert_eq!(shown(&"é".repeat(100)).chars().count(), ECHO_CHARS + 3);
    }
}
