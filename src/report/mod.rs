//! SLA reports an operator can hand to a customer: the same numbers as JSON, CSV and a single
//! self-contained HTML page (inline SVG charts, no scripts, prints well). Pure rendering: the
//! engine fills `Report` from the store (`engine/report.rs`).
//!
//! Layer 1 (see `lib.rs`): owns the report's types and formats; imports `domain` only, never
//! `cgroup`, `store`, `metrics`, `engine`, `api`, `config` or `cli`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One point of a tenant's chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Point {
    pub ts_ms: i64,
    /// Delivered share of the parent's CPU, 0..1.
    pub delivered: f64,
    pub contended: bool,
    pub violating: bool,
}

/// A tenant's SLA over the report period.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TenantReport {
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
    /// The promised share, 0..1; `None` for best effort.
    #[schema(required = true)]
    pub guarantee_ratio: Option<f64>,
    pub contended_seconds: f64,
    pub violations: u64,
    pub violation_seconds: f64,
    /// 1 - violation time / contended time.
    pub attainment_ratio: f64,
    /// Mean and 5th percentile of the delivered share while contended, 0..1.
    #[schema(required = true)]
    pub delivered_mean_contended_ratio: Option<f64>,
    #[schema(required = true)]
    pub delivered_p5_contended_ratio: Option<f64>,
    pub memory_protection_breaches: u64,
    pub oom_kills: u64,
    /// Chargeback totals.
    pub cpu_seconds: f64,
    pub memory_gib_hours: f64,
    pub io_bytes: u64,
    pub series: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SlaReport)]
pub struct Report {
    pub from_ms: i64,
    pub to_ms: i64,
    pub generated_ms: i64,
    pub host: String,
    pub tenants: Vec<TenantReport>,
}

/// One node's part of a fleet report: the tenants it enforced, from the minutes it shipped.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub node: String,
    pub tenants: Vec<TenantReport>,
}

/// The SLA report of a fleet (issue 19, `scope=fleet`): per tenant across every node that
/// enforced it, and per node, from the minutes the nodes shipped to the fleet store. Times
/// and sums add up over nodes; shares are weighted by contended time; the 5th percentile is
/// taken over every node's per-minute means. The period is whole minutes.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = FleetSlaReport)]
pub struct FleetReport {
    pub from_ms: i64,
    pub to_ms: i64,
    pub generated_ms: i64,
    /// The fleet store, without a password.
    pub store: String,
    /// Per tenant, across nodes.
    pub tenants: Vec<TenantReport>,
    pub nodes: Vec<NodeReport>,
}

fn pct(r: Option<f64>) -> String {
    r.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// Formats Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, no time crate).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const CSV_HEADER: &str = "tenant,guarantee_ratio,contended_seconds,violations,violation_seconds,attainment_ratio,delivered_mean_contended_ratio,delivered_p5_contended_ratio,memory_protection_breaches,oom_kills,cpu_seconds,memory_gib_hours,io_bytes,labels";

/// One CSV cell (RFC 4180 quoting). A text cell that starts with `=`, `+`, `-`, `@`, a tab or
/// a carriage return would be run as a formula by a spreadsheet (CSV injection, OWASP): it gets
/// a leading `'` and is quoted, so it is shown as the text it is.
fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(r: &Report) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for t in &r.tenants {
        csv_row(&mut out, t);
    }
    out
}

/// The fleet report as CSV: the columns of `csv` after a `node` column, which is empty on the
/// rows across nodes (first) and names the node on each node's rows (after them).
pub fn fleet_csv(r: &FleetReport) -> String {
    let mut out = format!("node,{CSV_HEADER}\n");
    for t in &r.tenants {
        out.push(',');
        csv_row(&mut out, t);
    }
    for n in &r.nodes {
        for t in &n.tenants {
            out.push_str(&csv_field(&n.node));
            out.push(',');
            csv_row(&mut out, t);
        }
    }
    out
}

/// One tenant's line of `CSV_HEADER`'s columns.
fn csv_row(out: &mut String, t: &TenantReport) {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let labels = t
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let _ = writeln!(
        out,
        "{},{},{:.3},{},{:.3},{:.6},{},{},{},{},{:.3},{:.6},{},{}",
        csv_field(&t.tenant),
        opt(t.guarantee_ratio),
        t.contended_seconds,
        t.violations,
        t.violation_seconds,
        t.attainment_ratio,
        opt(t.delivered_mean_contended_ratio),
        opt(t.delivered_p5_contended_ratio),
        t.memory_protection_breaches,
        t.oom_kills,
        t.cpu_seconds,
        t.memory_gib_hours,
        t.io_bytes,
        csv_field(&labels)
    );
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An inline SVG: delivered share over time, the guarantee as a dashed line, violations shaded.
fn chart(t: &TenantReport, from: i64, to: i64) -> String {
    let (w, h, pad) = (720.0, 180.0, 36.0);
    let span = (to - from).max(1) as f64;
    let x = |ts: i64| pad + (ts - from) as f64 / span * (w - 2.0 * pad);
    let y = |v: f64| h - pad / 2.0 - v.clamp(0.0, 1.0) * (h - pad);
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"delivered CPU share of {} against its guarantee\">",
        esc(&t.tenant)
    );
    // Violations shaded: consecutive violating points form a band.
    let mut band: Option<i64> = None;
    let step = t
        .series
        .windows(2)
        .map(|p| p[1].ts_ms - p[0].ts_ms)
        .min()
        .unwrap_or(1000)
        .max(1);
    for (k, p) in t.series.iter().enumerate() {
        match (band, p.violating) {
            (None, true) => band = Some(p.ts_ms),
            (Some(b), false) => {
                let _ = write!(
                    s,
                    "<rect class=\"viol\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
                    x(b),
                    y(1.0),
                    (x(p.ts_ms) - x(b)).max(1.0),
                    y(0.0) - y(1.0)
                );
                band = None;
            }
            _ => {}
        }
        if k + 1 == t.series.len()
            && let Some(b) = band
        {
            let end = p.ts_ms + step;
            let _ = write!(
                s,
                "<rect class=\"viol\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
                x(b),
                y(1.0),
                (x(end) - x(b)).max(1.0),
                y(0.0) - y(1.0)
            );
        }
    }
    for v in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text x=\"2\" y=\"{:.1}\">{}%</text>",
            w - pad,
            y(v),
            y(v),
            y(v) + 4.0,
            (v * 100.0) as u32
        );
    }
    if let Some(g) = t.guarantee_ratio {
        let _ = write!(
            s,
            "<line class=\"guar\" x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
            w - pad,
            y(g),
            y(g)
        );
    }
    if !t.series.is_empty() {
        let pts: Vec<String> = t
            .series
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.ts_ms), y(p.delivered)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"share\" points=\"{}\"/>",
            pts.join(" ")
        );
    }
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{h}\">{}</text><text x=\"{:.1}\" y=\"{h}\" text-anchor=\"end\">{}</text></svg>",
        utc(from),
        w - pad,
        utc(to)
    );
    s
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;color:#111;max-width:72rem;margin:2rem auto;padding:0 1rem}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%;font-size:12px}td,th{border:1px solid #ccc;padding:.2rem .3rem;text-align:right}td{white-space:nowrap}\
th:first-child,td:first-child{text-align:left}.bad{color:#b00020;font-weight:600}\
svg text{font-size:10px;fill:#555}.grid{stroke:#eee}.guar{stroke:#1a7f37;stroke-width:2;stroke-dasharray:6 4}\
.share{fill:none;stroke:#0550ae;stroke-width:1.5}.viol{fill:#ff000026}.legend span{margin-right:1.5rem}\
section{break-inside:avoid;page-break-inside:avoid}@page{size:A4 landscape;margin:12mm}@media print{body{margin:0;max-width:none}table{font-size:9px}}";

/// The page's head and its opening paragraph `intro` (already escaped).
fn html_head(s: &mut String, from_ms: i64, to_ms: i64, generated_ms: i64, intro: &str) {
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SLA report {} to {}</title><style>{CSS}</style></head><body>",
        utc(from_ms),
        utc(to_ms)
    );
    let _ = write!(
        s,
        "<h1>SLA report</h1><p>{intro}, from {} to {}. Generated {} by tenantd {}.</p>\
         <p>A tenant is <i>contended</i> when it wanted more CPU than it got (its tasks waited for a CPU); a <i>violation</i> is contended time with the delivered share below the guarantee minus the tolerance. Attainment = 1 − violation time / contended time.</p>",
        utc(from_ms),
        utc(to_ms),
        utc(generated_ms),
        env!("CARGO_PKG_VERSION")
    );
}

/// The summary table: one row per tenant.
fn html_table(s: &mut String, tenants: &[TenantReport]) {
    s.push_str("<table><tr><th>tenant</th><th>guarantee</th><th>attainment</th><th>violations</th><th>violation time</th><th>contended time</th><th>mean share (contended)</th><th>p5 share (contended)</th><th>memory breaches</th><th>OOM kills</th><th>CPU</th><th>memory</th><th>IO</th></tr>");
    for t in tenants {
        let bad = if t.violations > 0 {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td{bad}>{:.2}%</td><td{bad}>{}</td><td>{:.0} s</td><td>{:.0} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} CPU·s</td><td>{:.3} GiB·h</td><td>{}</td></tr>",
            esc(&t.tenant),
            pct(t.guarantee_ratio),
            t.attainment_ratio * 100.0,
            t.violations,
            t.violation_seconds,
            t.contended_seconds,
            pct(t.delivered_mean_contended_ratio),
            pct(t.delivered_p5_contended_ratio),
            t.memory_protection_breaches,
            t.oom_kills,
            t.cpu_seconds,
            t.memory_gib_hours,
            crate::domain::units::format_bytes(t.io_bytes)
        );
    }
    s.push_str("</table>");
}

/// A section and chart per tenant.
fn html_sections(s: &mut String, tenants: &[TenantReport], from_ms: i64, to_ms: i64) {
    for t in tenants {
        let labels = t
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            s,
            "<section><h2>{}</h2><p>{}Guarantee {}; attainment {:.2}%; {} violation(s) totalling {:.0} s.</p>{}<p class=\"legend\"><span style=\"color:#0550ae\">━ delivered share</span><span style=\"color:#1a7f37\">╌ guarantee</span><span style=\"background:#ff000026\">&nbsp;violation&nbsp;</span></p></section>",
            esc(&t.tenant),
            if labels.is_empty() {
                String::new()
            } else {
                format!("Labels: {labels}. ")
            },
            pct(t.guarantee_ratio),
            t.attainment_ratio * 100.0,
            t.violations,
            t.violation_seconds,
            chart(t, from_ms, to_ms)
        );
    }
}

/// One self-contained HTML file: a summary table, then a section and chart per tenant.
pub fn html(r: &Report) -> String {
    let mut s = String::new();
    html_head(
        &mut s,
        r.from_ms,
        r.to_ms,
        r.generated_ms,
        &format!("Host <b>{}</b>", esc(&r.host)),
    );
    html_table(&mut s, &r.tenants);
    html_sections(&mut s, &r.tenants, r.from_ms, r.to_ms);
    s.push_str("</body></html>\n");
    s
}

/// The fleet report as one self-contained HTML file: the summary table across nodes, one
/// per node, then a section and chart per tenant across nodes.
pub fn fleet_html(r: &FleetReport) -> String {
    let mut s = String::new();
    let names: Vec<String> = r.nodes.iter().map(|n| esc(&n.node)).collect();
    html_head(
        &mut s,
        r.from_ms,
        r.to_ms,
        r.generated_ms,
        &format!(
            "Fleet <b>{}</b>, {} node(s): {}",
            esc(&r.store),
            r.nodes.len(),
            names.join(", ")
        ),
    );
    s.push_str("<h2>Across nodes</h2>");
    html_table(&mut s, &r.tenants);
    for n in &r.nodes {
        let _ = write!(s, "<h2>Node {}</h2>", esc(&n.node));
        html_table(&mut s, &n.tenants);
    }
    html_sections(&mut s, &r.tenants, r.from_ms, r.to_ms);
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let series = (0..10)
            .map(|k| Point {
                ts_ms: 1_700_000_000_000 + k * 1000,
                delivered: if (3..6).contains(&k) { 0.3 } else { 0.5 },
                contended: true,
                violating: (3..6).contains(&k),
            })
            .collect();
        Report {
            from_ms: 1_700_000_000_000,
            to_ms: 1_700_000_010_000,
            generated_ms: 1_700_000_020_000,
            host: "node-1".into(),
            tenants: vec![TenantReport {
                tenant: "acme".into(),
                labels: [("customer".to_string(), "Acme, \"Inc\"".to_string())].into(),
                guarantee_ratio: Some(0.5),
                contended_seconds: 10.0,
                violations: 1,
                violation_seconds: 3.0,
                attainment_ratio: 0.7,
                delivered_mean_contended_ratio: Some(0.44),
                delivered_p5_contended_ratio: Some(0.3),
                memory_protection_breaches: 0,
                oom_kills: 2,
                cpu_seconds: 8.8,
                memory_gib_hours: 0.01,
                io_bytes: 1 << 20,
                series,
            }],
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    /// Issue 12, finding 11: cells like `=2+3` were written bare, and a spreadsheet runs them.
    #[test]
    fn finding_11_csv_cells_that_start_a_formula_are_escaped() {
        for (cell, want) in [
            ("=2+3", "\"'=2+3\""),
            ("+1", "\"'+1\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\t=1", "\"'\t=1\""),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("acme", "acme"),
            ("a,b", "\"a,b\""),
        ] {
            assert_eq!(csv_field(cell), want, "{cell}");
        }
        let mut r = report();
        r.tenants[0].labels = [("note".to_string(), "=1+1".to_string())]
            .into_iter()
            .collect();
        let c = csv(&r);
        assert!(c.lines().nth(1).unwrap().ends_with(",note==1+1"), "{c}");
    }

    #[test]
    fn csv_quotes_and_columns() {
        let c = csv(&report());
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), 14);
        assert!(
            lines[1].starts_with("acme,0.500000,10.000,1,3.000,0.700000,"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("\"customer=Acme, \"\"Inc\"\"\""),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn the_fleet_csv_has_a_node_column_empty_across_nodes() {
        let one = report().tenants.remove(0);
        let f = FleetReport {
            from_ms: 0,
            to_ms: 60_000,
            generated_ms: 1,
            store: "postgres://t@h:5432/f".into(),
            tenants: vec![one.clone()],
            nodes: vec![NodeReport {
                node: "n1".into(),
                tenants: vec![one],
            }],
        };
        let c = fleet_csv(&f);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3, "{c}");
        assert_eq!(lines[0], format!("node,{CSV_HEADER}"));
        assert!(lines[1].starts_with(",acme,0.500000,"), "{c}");
        assert!(lines[2].starts_with("n1,acme,0.500000,"), "{c}");
        assert_eq!(
            lines[2].split(',').count(),
            lines[0].split(',').count() + 1,
            "labels hold a quoted comma"
        );
        let h = fleet_html(&f);
        assert!(h.contains("<h2>Across nodes</h2>") && h.contains("<h2>Node n1</h2>"));
        assert!(h.contains("1 node(s): n1") && !h.contains("<script"));
    }

    #[test]
    fn html_is_self_contained_and_shades_violations() {
        let h = html(&report());
        assert!(h.starts_with("<!doctype html>"));
        assert!(
            !h.contains("<script") && !h.contains("http://") && !h.contains("https://"),
            "no network, no scripts"
        );
        assert_eq!(
            h.matches("class=\"viol\"").count(),
            1,
            "one shaded band for one violation"
        );
        assert!(h.contains("class=\"guar\""));
        assert!(h.contains("Acme, &quot;Inc&quot;"), "labels are escaped");
        assert!(h.contains("70.00%"));
    }
}
