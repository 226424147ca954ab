//! `tenantd top`: a live terminal view of every tenant, refreshed every second. Each refresh
//! makes two requests whatever the number of tenants: `GET /v1/tenants` (specs, labels, tree,
//! process counts, as `TenantView`) and `GET /metrics` (the sampler's current counters, the
//! names from `metrics::METRICS`); rates are the difference of the last scrapes.
//!
//! Four parts: reading (`parse_metrics`, `fetch`), the model (`model`: scrapes and tenants to
//! rows, pure), the view (`draw`: rows and UI state to a frame, pure, tested with ratatui's
//! `TestBackend`), and a thin event loop (`run`) that owns the terminal. The whole screen is
//! tested as a person sees it in tests/it/top.rs (tmux).

use super::client::{Client, ClientError, TENANTS_PAGE};
use super::format::{Times, or_dash};
use crate::api::Host;
use crate::domain::units::format_bytes;
use crate::engine::TenantView;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Rates are taken over at least this much time (the newest scrape against the oldest one
/// kept within it): the sampler sweeps every second too, out of phase with the refreshes, so a
/// one-second difference would count two sweeps or none now and then.
const RATE_WINDOW: Duration = Duration::from_millis(2500);

// ---------------------------------------------------------------------------------------
// Reading: the counters of one scrape of /metrics

/// The per-tenant series `top` reads from `/metrics`, by their sample names.
mod series {
    pub const CPU: &str = "tenantd_tenant_cpu_usage_seconds_total";
    pub const MEMORY: &str = "tenantd_tenant_memory_current_bytes";
    pub const IO_READ: &str = "tenantd_tenant_io_read_bytes_total";
    pub const IO_WRITE: &str = "tenantd_tenant_io_write_bytes_total";
    pub const STALL: &str = "tenantd_tenant_pressure_stall_seconds_total";
    pub const CONTENDED: &str = "tenantd_tenant_sla_contended_seconds_total";
    pub const VIOLATION: &str = "tenantd_tenant_sla_violation_seconds_total";
    pub const SHARE: &str = "tenantd_tenant_cpu_delivered_share_ratio";
    pub const ALL: [&str; 8] = [
        CPU, MEMORY, IO_READ, IO_WRITE, STALL, CONTENDED, VIOLATION, SHARE,
    ];
}

/// One tenant's counters and gauges in one scrape; `None` for a series the answer lacks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub cpu_s: Option<f64>,
    pub memory_bytes: Option<f64>,
    /// Summed over devices.
    pub io_read_bytes: Option<f64>,
    pub io_write_bytes: Option<f64>,
    /// `some` stall seconds of cpu, memory and io.
    pub stall_s: [Option<f64>; 3],
    pub contended_s: Option<f64>,
    pub violation_s: Option<f64>,
    /// Delivered share of the parent's CPU in the sampler's last interval, 0..1.
    pub share: Option<f64>,
}

/// Parses the Prometheus text (or OpenMetrics) answer of `/metrics` into counters per tenant.
/// Lines of other series, comments and lines it cannot read are passed over.
pub fn parse_metrics(text: &str) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if !series::ALL.contains(&name) {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(tenant) = label("tenant") else {
            continue;
        };
        let c = out.entry(tenant.to_string()).or_default();
        let add = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + v);
        match name {
            series::CPU => c.cpu_s = Some(v),
            series::MEMORY => c.memory_bytes = Some(v),
            series::IO_READ => add(&mut c.io_read_bytes),
            series::IO_WRITE => add(&mut c.io_write_bytes),
            series::CONTENDED => c.contended_s = Some(v),
            series::VIOLATION => c.violation_s = Some(v),
            series::SHARE => c.share = Some(v),
            _ => {
                let i = match label("resource") {
                    Some("cpu") => 0,
                    Some("memory") => 1,
                    Some("io") => 2,
                    _ => continue,
                };
                if label("kind") == Some("some") {
                    c.stall_s[i] = Some(v);
                }
            }
        }
    }
    out
}

/// `a="x",b="y"` into pairs, with the exposition format's escapes (`\"`, `\\`, `\n`).
fn parse_labels(s: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').trim(), value));
        rest = &after[end..];
    }
    out
}

/// What one refresh read.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub at_ms: i64,
    pub tenants: Vec<TenantView>,
    pub counters: BTreeMap<String, Counters>,
}

/// One refresh: two requests, whatever the number of tenants.
async fn fetch(c: &Client) -> Result<Scrape, ClientError> {
    let tenants: Vec<TenantView> = c.get_all("/v1/tenants", TENANTS_PAGE).await?;
    let text = c.text("/metrics").await?;
    Ok(Scrape {
        at: Instant::now(),
        at_ms: crate::engine::now_ms(),
        tenants,
        counters: parse_metrics(&text),
    })
}

// ---------------------------------------------------------------------------------------
// The model: scrapes to rows (pure)

/// A tenant's SLA state over the last refreshes, from its SLA counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sla {
    /// No two scrapes yet, or no SLA series for the tenant.
    Unknown,
    Ok,
    /// Its tasks waited for a CPU, but it got its guarantee.
    Contended,
    /// Contended and below its guarantee.
    Violation,
}

impl Sla {
    fn text(self) -> &'static str {
        match self {
            Sla::Unknown => "-",
            Sla::Ok => "ok",
            Sla::Contended => "contended",
            Sla::Violation => "VIOLATION",
        }
    }

    fn style(self) -> Style {
        match self {
            Sla::Unknown => Style::default(),
            Sla::Ok => Style::default().fg(Color::Green),
            Sla::Contended => Style::default().fg(Color::Yellow),
            Sla::Violation => Style::default()
                .fg(Color::Red)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED),
        }
    }
}

/// One tenant's line, every value in its unit; `None` shows as "-".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantRow {
    pub name: String,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cpu_cores: Option<f64>,
    /// The CPUs the guarantee promises when every sibling competes: host CPUs × the product
    /// of the guarantees up the tree.
    pub cpu_guarantee_cores: Option<f64>,
    pub cpu_limit_cores: Option<f64>,
    /// Delivered share of the parent's CPU, 0..1.
    pub share: Option<f64>,
    /// The guarantee as a share of the parent's CPU, 0..1.
    pub guarantee: Option<f64>,
    pub sla: Option<Sla>,
    pub memory_bytes: Option<f64>,
    pub memory_guarantee_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub io_read_bps: Option<f64>,
    pub io_write_bps: Option<f64>,
    /// `some` stall of cpu, memory and io as a share of time, 0..1; `None` without PSI.
    pub pressure: [Option<f64>; 3],
    pub procs: usize,
}

/// What the view shows: the host and one row per tenant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub cpus: f64,
    pub cgroup_version: String,
    pub psi: bool,
    /// When the newest scrape was read (Unix ms).
    pub at_ms: Option<i64>,
    pub rows: Vec<TenantRow>,
    /// The last refresh's failure, shown until one succeeds.
    pub error: Option<String>,
}

/// The rate of a counter between two scrapes `secs` apart; `None` when either lacks it or it
/// went backwards (a tenant recreated under the same name).
fn rate(old: Option<f64>, new: Option<f64>, secs: f64) -> Option<f64> {
    let (o, n) = (old?, new?);
    (n >= o && secs > 0.0).then(|| (n - o) / secs)
}

/// The SLA state between two scrapes: violation time grew, else contended time grew, else ok.
fn sla(old: &Counters, new: &Counters) -> Option<Sla> {
    let grew = |o: Option<f64>, n: Option<f64>| Some(n? > o?);
    Some(if grew(old.violation_s, new.violation_s)? {
        Sla::Violation
    } else if grew(old.contended_s, new.contended_s)? {
        Sla::Contended
    } else {
        Sla::Ok
    })
}

/// The rows of `new`, with rates against `old` (the oldest scrape kept in the window).
pub fn model(host: &Host, old: Option<&Scrape>, new: &Scrape) -> Model {
    let specs: BTreeMap<&str, &TenantView> =
        new.tenants.iter().map(|t| (t.name.as_str(), t)).collect();
    // Host CPUs × the product of the guarantees up the tree; None when one is missing.
    let guarantee_cores = |name: &str| {
        let mut cores = host.cpus;
        let mut cur = specs.get(name).copied();
        for _ in 0..specs.len() {
            let Some(t) = cur else { break };
            cores *= t.stored.spec.cpu.guarantee_pct?.0 / 100.0;
            cur = t
                .stored
                .spec
                .parent
                .as_ref()
                .and_then(|p| specs.get(p.as_str()).copied());
        }
        Some(cores)
    };
    let rows = new
        .tenants
        .iter()
        .map(|t| {
            let s = &t.stored.spec;
            let none = Counters::default();
            let c = new.counters.get(t.name.as_str()).unwrap_or(&none);
            let before = old.and_then(|o| {
                let secs = (new.at - o.at).as_secs_f64();
                o.counters.get(t.name.as_str()).map(|c| (c, secs))
            });
            let per_s = |f: fn(&Counters) -> Option<f64>| {
                before.and_then(|(o, secs)| rate(f(o), f(c), secs))
            };
            let stall = |i: usize| {
                let (o, secs) = before.filter(|_| host.cgroup.psi)?;
                rate(o.stall_s[i], c.stall_s[i], secs)
            };
            TenantRow {
                name: t.name.to_string(),
                parent: s.parent.as_ref().map(|p| p.to_string()),
                labels: s.labels.clone(),
                cpu_cores: per_s(|c| c.cpu_s),
                cpu_guarantee_cores: guarantee_cores(t.name.as_str()),
                cpu_limit_cores: s.cpu.limit_pct.map(|p| p.0 / 100.0),
                share: c.share,
                guarantee: s.cpu.guarantee_pct.map(|p| p.0 / 100.0),
                sla: before.and_then(|(o, _)| sla(o, c)),
                memory_bytes: c.memory_bytes,
                memory_guarantee_bytes: s.memory.guarantee_bytes.map(|b| b.0),
                memory_limit_bytes: s.memory.limit_bytes.map(|b| b.0),
                io_read_bps: per_s(|c| c.io_read_bytes),
                io_write_bps: per_s(|c| c.io_write_bytes),
                pressure: [stall(0), stall(1), stall(2)],
                procs: t.procs,
            }
        })
        .collect();
    Model {
        cpus: host.cpus,
        cgroup_version: host.cgroup.version.clone(),
        psi: host.cgroup.psi,
        at_ms: Some(new.at_ms),
        rows,
        error: None,
    }
}

/// The scrapes of the last `RATE_WINDOW`: the newest and the one to take rates against.
#[derive(Debug, Default)]
pub struct History {
    scrapes: VecDeque<Scrape>,
}

impl History {
    /// Adds `s` and returns the model of it against the oldest scrape kept.
    pub fn push(&mut self, host: &Host, s: Scrape) -> Model {
        // Keep the newest scrape at least RATE_WINDOW old, and all newer ones.
        while self.scrapes.len() >= 2 && s.at - self.scrapes[1].at >= RATE_WINDOW {
            self.scrapes.pop_front();
        }
        let m = model(host, self.scrapes.front(), &s);
        self.scrapes.push_back(s);
        m
    }
}

// ---------------------------------------------------------------------------------------
// The view: UI state and rows to a frame (pure)

/// The columns, in display order; the sort key is the column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Tenant,
    Cpu,
    Share,
    Sla,
    Memory,
    Io,
    Pressure,
    Procs,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Tenant,
        Column::Cpu,
        Column::Share,
        Column::Sla,
        Column::Memory,
        Column::Io,
        Column::Pressure,
        Column::Procs,
    ];

    /// The header: what the column shows, in its units.
    fn header(self) -> &'static str {
        match self {
            Column::Tenant => "TENANT",
            Column::Cpu => "CPU cores used/guar/limit",
            Column::Share => "SHARE got/guar",
            Column::Sla => "SLA",
            Column::Memory => "MEMORY used/guar/limit",
            Column::Io => "IO read/write per s",
            Column::Pressure => "PSI cpu/mem/io",
            Column::Procs => "PROCS",
        }
    }

    /// The short name the status line shows.
    fn name(self) -> &'static str {
        match self {
            Column::Tenant => "tenant",
            Column::Cpu => "cpu",
            Column::Share => "share",
            Column::Sla => "sla",
            Column::Memory => "memory",
            Column::Io => "io",
            Column::Pressure => "pressure",
            Column::Procs => "procs",
        }
    }

    /// The cells' width; the name takes what is left, at least 12.
    fn columns(self) -> u16 {
        match self {
            Column::Tenant => 12,
            Column::Cpu => 25,
            Column::Share => 14,
            Column::Sla => 9,
            Column::Memory => 30,
            Column::Io => 23,
            Column::Pressure => 14,
            Column::Procs => 5,
        }
    }

    fn width(self) -> Constraint {
        match self {
            Column::Tenant => Constraint::Min(self.columns()),
            _ => Constraint::Length(self.columns()),
        }
    }

    /// The column `step` places to the right (negative: left), wrapping around.
    fn next(self, step: isize) -> Column {
        let i = Column::ALL.iter().position(|c| *c == self).unwrap_or(0) as isize;
        let n = Column::ALL.len() as isize;
        Column::ALL[(i + step).rem_euclid(n) as usize]
    }

    /// The value rows are sorted by (descending: busiest first), `None` last.
    fn key(self, r: &TenantRow) -> Option<f64> {
        match self {
            Column::Tenant => None,
            Column::Cpu => r.cpu_cores,
            Column::Share => r.share,
            Column::Sla => r.sla.map(|s| s as u8 as f64),
            Column::Memory => r.memory_bytes,
            Column::Io => Some(r.io_read_bps? + r.io_write_bps?),
            Column::Pressure => r.pressure.iter().flatten().copied().reduce(f64::max),
            Column::Procs => Some(r.procs as f64),
        }
    }
}

/// Which tenants to show: each term is `KEY=VALUE` (a label) or part of the name; all must
/// match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter(pub Vec<String>);

impl Filter {
    /// Terms separated by spaces.
    pub fn parse(s: &str) -> Filter {
        Filter(s.split_whitespace().map(String::from).collect())
    }

    fn matches(&self, r: &TenantRow) -> bool {
        self.0.iter().all(|term| match term.split_once('=') {
            Some((k, v)) => r.labels.get(k).is_some_and(|x| x == v),
            None => r.name.contains(term.as_str()),
        })
    }
}

/// What the person at the terminal chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Ui {
    pub sort: Column,
    pub filter: Filter,
    pub tree: bool,
    /// The filter being typed after `/`.
    pub editing: Option<String>,
}

impl Default for Ui {
    fn default() -> Self {
        Ui {
            sort: Column::Cpu,
            filter: Filter::default(),
            tree: false,
            editing: None,
        }
    }
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    None,
}

/// Applies a key to `ui`.
pub fn key(ui: &mut Ui, k: KeyEvent) -> Action {
    if k.kind == KeyEventKind::Release {
        return Action::None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if let Some(text) = ui.editing.as_mut() {
        match k.code {
            KeyCode::Enter => {
                ui.filter = Filter::parse(text);
                ui.editing = None;
            }
            KeyCode::Esc => ui.editing = None,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => return Action::None,
        }
        return Action::Redraw;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Char('Q') => return Action::Quit,
        KeyCode::Char('s') | KeyCode::Char('>') | KeyCode::Right => ui.sort = ui.sort.next(1),
        KeyCode::Char('<') | KeyCode::Left => ui.sort = ui.sort.next(-1),
        KeyCode::Char('t') => ui.tree = !ui.tree,
        KeyCode::Char('/') => ui.editing = Some(ui.filter.0.join(" ")),
        _ => return Action::None,
    }
    Action::Redraw
}

/// The columns that fit in `width` cells: on a narrow terminal pressure goes first, then IO,
/// processes, memory and share, rather than every column cut short.
pub fn fitting(width: u16) -> Vec<Column> {
    let mut columns = Column::ALL.to_vec();
    for least_needed in [
        Column::Pressure,
        Column::Io,
        Column::Procs,
        Column::Memory,
        Column::Share,
    ] {
        let need: u16 = columns.iter().map(|c| c.columns() + 1).sum();
        if need <= width + 1 {
            break;
        }
        columns.retain(|c| *c != least_needed);
    }
    columns
}

/// The rows to show, in order, each with its depth in the tree (0 outside tree view).
pub fn visible<'a>(m: &'a Model, ui: &Ui) -> Vec<(usize, &'a TenantRow)> {
    let mut rows: Vec<&TenantRow> = m.rows.iter().filter(|r| ui.filter.matches(r)).collect();
    let by = ui.sort;
    rows.sort_by(|a, b| match by {
        Column::Tenant => a.name.cmp(&b.name),
        c => {
            let k = |r: &TenantRow| c.key(r).unwrap_or(f64::NEG_INFINITY);
            k(b).total_cmp(&k(a)).then_with(|| a.name.cmp(&b.name))
        }
    });
    if !ui.tree {
        return rows.into_iter().map(|r| (0, r)).collect();
    }
    // Depth first from the roots (a tenant whose parent is not shown is a root), siblings in
    // sort order.
    let shown: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let mut out = Vec::with_capacity(rows.len());
    fn walk<'a>(
        parent: Option<&str>,
        depth: usize,
        rows: &[&'a TenantRow],
        shown: &std::collections::BTreeSet<&str>,
        out: &mut Vec<(usize, &'a TenantRow)>,
    ) {
        for r in rows {
            let p = r.parent.as_deref().filter(|p| shown.contains(p));
            if p == parent && depth <= rows.len() {
                out.push((depth, *r));
                walk(Some(&r.name), depth + 1, rows, shown, out);
            }
        }
    }
    walk(None, 0, &rows, &shown, &mut out);
    out
}

fn cores(v: Option<f64>) -> String {
    or_dash(v.map(|c| format!("{c:.2}")))
}

fn ratio(v: Option<f64>) -> String {
    or_dash(v.map(|r| format!("{:.1}%", r * 100.0)))
}

fn bytes(v: Option<f64>) -> String {
    or_dash(v.map(|b| format_bytes(b.max(0.0).round() as u64)))
}

/// The cells of one row, in `Column::ALL` order.
pub fn cells(depth: usize, r: &TenantRow) -> [String; 8] {
    let indent = if depth == 0 {
        String::new()
    } else {
        format!("{}└ ", "  ".repeat(depth - 1))
    };
    let pressure = |v: Option<f64>| or_dash(v.map(|r| format!("{:.0}%", r * 100.0)));
    [
        format!("{indent}{}", r.name),
        format!(
            "{} / {} / {}",
            cores(r.cpu_cores),
            cores(r.cpu_guarantee_cores),
            cores(r.cpu_limit_cores)
        ),
        format!(
            "{} / {}",
            ratio(r.share),
            or_dash(r.guarantee.map(|g| format!("{}%", g * 100.0)))
        ),
        r.sla.unwrap_or(Sla::Unknown).text().to_string(),
        format!(
            "{} / {} / {}",
            bytes(r.memory_bytes),
            bytes(r.memory_guarantee_bytes.map(|b| b as f64)),
            bytes(r.memory_limit_bytes.map(|b| b as f64))
        ),
        format!("{}/s / {}/s", bytes(r.io_read_bps), bytes(r.io_write_bps)).replace("-/s", "-"),
        format!(
            "{}/{}/{}",
            pressure(r.pressure[0]),
            pressure(r.pressure[1]),
            pressure(r.pressure[2])
        ),
        r.procs.to_string(),
    ]
}

/// Draws the whole screen: a status line, the table and the keys (or the filter being typed).
pub fn draw(f: &mut Frame, m: &Model, ui: &Ui, times: &Times) {
    let [status, table, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let rows = visible(m, ui);
    let mut head = format!(
        "tenantd top  {}  {} tenants ({} shown)  {} CPUs  cgroup {}  sort {}",
        m.at_ms.map_or_else(|| "-".into(), |ms| times.at(ms)),
        m.rows.len(),
        rows.len(),
        m.cpus,
        m.cgroup_version,
        ui.sort.name(),
    );
    if !ui.filter.0.is_empty() {
        head += &format!("  filter {}", ui.filter.0.join(" "));
    }
    if ui.tree {
        head += "  tree";
    }
    let mut status_line = vec![Span::styled(
        head,
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(e) = &m.error {
        status_line.push(Span::styled(
            format!("  error: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(status_line)), status);

    let columns = fitting(table.width);
    let header = Row::new(columns.iter().map(|&c| {
        let style = if c == ui.sort {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        Cell::from(c.header()).style(style)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|(depth, r)| {
        let all = cells(*depth, r);
        Row::new(columns.iter().map(|&c| {
            let cell = Cell::from(all[c as usize].clone());
            match c {
                Column::Sla => cell.style(r.sla.unwrap_or(Sla::Unknown).style()),
                _ => cell,
            }
        }))
    });
    f.render_widget(
        Table::new(body, columns.iter().map(|c| c.width()))
            .header(header)
            .column_spacing(1),
        table,
    );

    let bottom = match &ui.editing {
        Some(text) => Line::from(vec![
            Span::styled(
                "filter (LABEL=VALUE or part of a name; Enter applies, Esc cancels): ",
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("{text}_")),
        ]),
        None => Line::from("q quit  s or </> sort column  / filter  t tree view"),
    };
    f.render_widget(Paragraph::new(bottom), keys);
}

// ---------------------------------------------------------------------------------------
// The event loop (thin): fetch in a task, keys from a thread, draw on every change

/// What the loop waits for.
enum Input {
    Model(Model),
    Failed(String),
    Terminal(std::io::Result<Event>),
}

/// Runs the view until q, Ctrl-C, SIGINT or SIGTERM; the terminal is restored on every exit
/// (ratatui's panic hook restores it on a panic).
pub async fn run(c: Client, ui: Ui, times: Times) -> Result<(), ClientError> {
    // Read once before taking over the terminal, so a daemon that is not there is one line.
    let host: Host = c.get("/v1/host").await?;
    let mut history = History::default();
    let mut m = history.push(&host, fetch(&c).await?);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ClientError(format!("cannot watch SIGTERM: {e}")))?;
    let mut terminal = ratatui::try_init()
        .map_err(|e| ClientError(format!("cannot take over the terminal: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Input>(16);
    let fetcher = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tick.tick().await;
                let input = match tokio::time::timeout(REFRESH * 5, fetch(&c)).await {
                    Ok(Ok(s)) => Input::Model(history.push(&host, s)),
                    Ok(Err(e)) => Input::Failed(e.0),
                    Err(_) => Input::Failed("no answer within 5 s".into()),
                };
                if tx.send(input).await.is_err() {
                    return;
                }
            }
        })
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(false) => {}
                    Ok(true) => {
                        if tx.blocking_send(Input::Terminal(event::read())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Input::Terminal(Err(e)));
                        return;
                    }
                }
            }
        })
    };

    let mut ui = ui;
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &m, &ui, &times)) {
            break Err(ClientError(format!("cannot draw: {e}")));
        }
        let input = tokio::select! {
            i = rx.recv() => i,
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = term.recv() => break Ok(()),
        };
        match input {
            Some(Input::Model(new)) => m = new,
            Some(Input::Failed(e)) => m.error = Some(e),
            Some(Input::Terminal(Ok(Event::Key(k)))) => {
                if key(&mut ui, k) == Action::Quit {
                    break Ok(());
                }
            }
            // A resize (or anything else) is followed by a redraw at the new size.
            Some(Input::Terminal(Ok(_))) => {}
            Some(Input::Terminal(Err(e))) => {
                break Err(ClientError(format!("cannot read the terminal: {e}")));
            }
            None => break Ok(()),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    fetcher.abort();
    ratatui::try_restore().map_err(|e| ClientError(format!("cannot restore the terminal: {e}")))?;
    let _ = reader.join();
    result
}

#[cfg(test)]
mod tests {
    use super::super::wire::samples;
    use super::*;
    use crate::domain::sla::SlaTotals;
    use crate::domain::stats::{CgroupStats, CpuStat, IoDevStat, PressureTotals};
    use crate::domain::tenant::DevId;
    use crate::metrics::{Format, Metrics, Snapshot, TenantSnapshot};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// What the daemon serves for tenants "web" and "batch" after `cpu_s` CPU seconds, `io`
    /// bytes read and the SLA totals given.
    fn served(format: Format, cpu_s: u64, io: u64, contended: f64, violation: f64) -> String {
        let mut s = Snapshot::default();
        for (name, share) in [("web", Some(0.081)), ("batch", None)] {
            let stats = CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(cpu_s * 1_000_000),
                    ..Default::default()
                },
                memory_current: Some(300 << 20),
                io: vec![
                    IoDevStat {
                        rbytes: Some(io),
                        wbytes: Some(0),
                        ..IoDevStat::new(DevId { major: 8, minor: 0 })
                    },
                    IoDevStat {
                        rbytes: Some(io),
                        ..IoDevStat::new(DevId {
                            major: 254,
                            minor: 0,
                        })
                    },
                ],
                cpu_pressure: Some(PressureTotals {
                    some_usec: Some(cpu_s * 100_000),
                    full_usec: Some(1),
                }),
                ..Default::default()
            };
            let sla = share.map(|share| SlaTotals {
                contended_s: contended,
                violation_s: violation,
                delivered_ratio: Some(share),
                ..Default::default()
            });
            s.tenants.insert(
                name.into(),
                TenantSnapshot {
                    stats: stats.into(),
                    spec: Default::default(),
                    sla,
                },
            );
        }
        let m = Metrics::new();
        m.set_snapshot(s);
        m.render_as(format)
    }

    #[test]
    fn every_series_read_is_one_the_daemon_exposes() {
        let exposed = crate::metrics::exposed_names();
        for name in series::ALL {
            assert!(exposed.iter().any(|e| e == name), "{name} is not exposed");
        }
    }

    #[test]
    fn reads_the_counters_from_both_formats_the_daemon_serves() {
        for format in [Format::Text, Format::OpenMetrics] {
            let c = parse_metrics(&served(format, 3, 1000, 2.0, 1.0));
            assert_eq!(c.keys().collect::<Vec<_>>(), ["batch", "web"]);
            let web = &c["web"];
            assert_eq!(web.cpu_s, Some(3.0));
            assert_eq!(web.memory_bytes, Some((300 << 20) as f64));
            // Both devices, summed.
            assert_eq!(web.io_read_bytes, Some(2000.0));
            assert_eq!(web.stall_s[0], Some(0.3));
            assert_eq!(web.contended_s, Some(2.0));
            assert_eq!(web.violation_s, Some(1.0));
            assert_eq!(web.share, Some(0.081));
            assert_eq!((c["batch"].share, c["batch"].violation_s), (None, None));
        }
        assert_eq!(
            parse_labels(r#"tenant="a\"b\\c",kind="some""#),
            [("tenant", "a\"b\\c".to_string()), ("kind", "some".into())]
        );
        assert!(parse_metrics("garbage\n# HELP x\nx{tenant=\"a\"} notanumber\n").is_empty());
    }

    fn scrape(at: Instant, cpu_s: u64, io: u64, contended: f64, violation: f64) -> Scrape {
        Scrape {
            at,
            at_ms: 1_700_000_000_000,
            tenants: samples::tenants(),
            counters: parse_metrics(&served(Format::Text, cpu_s, io, contended, violation)),
        }
    }

    #[test]
    fn rates_and_sla_states_from_two_scrapes() {
        let mut host = samples::host();
        let t0 = Instant::now();
        let first = model(&host, None, &scrape(t0, 10, 0, 0.0, 0.0));
        let web = &first.rows[0];
        assert_eq!(web.name, "web");
        assert_eq!(
            (web.cpu_cores, web.sla),
            (None, None),
            "no rate from one scrape"
        );
        // 2 CPUs × 12.5% (its parent "team" is not in the list) and a 200% limit.
        assert_eq!(web.cpu_guarantee_cores, Some(0.25));
        assert_eq!(web.cpu_limit_cores, Some(2.0));
        assert_eq!(web.memory_guarantee_bytes, Some(1 << 30));

        let old = scrape(t0, 10, 0, 5.0, 1.0);
        let t2 = t0 + Duration::from_secs(2);
        let ok = model(&host, Some(&old), &scrape(t2, 13, 1024, 5.0, 1.0));
        let web = &ok.rows[0];
        assert_eq!(web.cpu_cores, Some(1.5));
        assert_eq!(web.io_read_bps, Some(1024.0), "2 devices × 1024 B over 2 s");
        assert_eq!(web.sla, Some(Sla::Ok));
        assert_eq!(web.pressure, [None; 3], "no PSI on this host: not 0%");
        assert_eq!(ok.rows[1].sla, None, "batch has no SLA series");
        let contended = model(&host, Some(&old), &scrape(t2, 13, 0, 7.0, 1.0));
        assert_eq!(contended.rows[0].sla, Some(Sla::Contended));
        host.cgroup.psi = true;
        let violation = model(&host, Some(&old), &scrape(t2, 13, 0, 7.0, 3.0));
        assert_eq!(violation.rows[0].sla, Some(Sla::Violation));
        let psi = violation.rows[0].pressure[0].map(|p| (p * 100.0).round());
        assert_eq!(psi, Some(15.0), "0.3 s of 2 s stalled");
        // A counter that went backwards (a tenant deleted and created again) gives no rate.
        let again = model(&host, Some(&old), &scrape(t2, 1, 0, 0.0, 0.0));
        assert_eq!(again.rows[0].cpu_cores, None);
    }

    #[test]
    fn rates_are_taken_over_the_window() {
        let host = samples::host();
        let mut h = History::default();
        let t0 = Instant::now();
        for (i, cpu) in [0u64, 1, 2, 3, 4].into_iter().enumerate() {
            let m = h.push(
                &host,
                scrape(t0 + Duration::from_secs(i as u64), cpu, 0, 0.0, 0.0),
            );
            let want = (i > 0).then_some(1.0);
            assert_eq!(m.rows[0].cpu_cores, want, "scrape {i}");
        }
        // The oldest kept is the newest one at least RATE_WINDOW old.
        assert_eq!(h.scrapes.len(), 4);
        assert_eq!(h.scrapes[0].at, t0 + Duration::from_secs(1));
    }

    fn row(name: &str, parent: Option<&str>, cpu: f64, labels: &[(&str, &str)]) -> TenantRow {
        TenantRow {
            name: name.into(),
            parent: parent.map(String::from),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cpu_cores: Some(cpu),
            ..Default::default()
        }
    }

    fn three() -> Model {
        Model {
            cpus: 2.0,
            cgroup_version: "v1".into(),
            psi: false,
            at_ms: Some(1_796_197_795_000),
            rows: vec![
                row("acme", None, 0.5, &[("customer", "acme")]),
                row("web", Some("acme"), 0.3, &[("customer", "acme")]),
                row("globex", None, 1.2, &[]),
            ],
            error: None,
        }
    }

    fn names(m: &Model, ui: &Ui) -> Vec<(usize, String)> {
        visible(m, ui)
            .into_iter()
            .map(|(d, r)| (d, r.name.clone()))
            .collect()
    }

    #[test]
    fn sorted_filtered_and_as_a_tree() {
        let m = three();
        let mut ui = Ui::default();
        let flat = |v: &[&str]| v.iter().map(|n| (0, n.to_string())).collect::<Vec<_>>();
        assert_eq!(names(&m, &ui), flat(&["globex", "acme", "web"]));
        ui.sort = Column::Tenant;
        assert_eq!(names(&m, &ui), flat(&["acme", "globex", "web"]));
        ui.filter = Filter::parse("customer=acme");
        assert_eq!(names(&m, &ui), flat(&["acme", "web"]));
        ui.filter = Filter::parse("customer=acme we");
        assert_eq!(names(&m, &ui), flat(&["web"]));
        ui.filter = Filter::default();
        ui.sort = Column::Cpu;
        ui.tree = true;
        assert_eq!(
            names(&m, &ui),
            [(0, "globex".into()), (0, "acme".into()), (1, "web".into())]
        );
        // A child whose parent is filtered out is shown as a root.
        ui.filter = Filter::parse("web");
        assert_eq!(names(&m, &ui), [(0, "web".into())]);
    }

    fn press(ui: &mut Ui, code: KeyCode) -> Action {
        key(ui, KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys() {
        let mut ui = Ui::default();
        assert_eq!(press(&mut ui, KeyCode::Char('s')), Action::Redraw);
        assert_eq!(ui.sort, Column::Share);
        press(&mut ui, KeyCode::Char('<'));
        press(&mut ui, KeyCode::Char('<'));
        assert_eq!(ui.sort, Column::Tenant);
        press(&mut ui, KeyCode::Char('<'));
        assert_eq!(ui.sort, Column::Procs, "wraps around");
        press(&mut ui, KeyCode::Char('t'));
        assert!(ui.tree);
        press(&mut ui, KeyCode::Char('/'));
        for c in "team=a q".chars() {
            assert_eq!(press(&mut ui, KeyCode::Char(c)), Action::Redraw);
        }
        press(&mut ui, KeyCode::Backspace);
        press(&mut ui, KeyCode::Backspace);
        press(&mut ui, KeyCode::Enter);
        assert_eq!(
            ui.filter,
            Filter(vec!["team=a".into()]),
            "q typed into the filter"
        );
        press(&mut ui, KeyCode::Char('/'));
        press(&mut ui, KeyCode::Char('x'));
        press(&mut ui, KeyCode::Esc);
        assert_eq!((ui.filter.0.len(), ui.editing.as_ref()), (1, None));
        assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(key(&mut ui, ctrl_c), Action::Quit);
        ui.editing = Some(String::new());
        assert_eq!(key(&mut ui, ctrl_c), Action::Quit, "even while typing");
    }

    /// The screen as text, one string per line, trailing spaces cut.
    fn screen(m: &Model, ui: &Ui, width: u16, height: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        t.draw(|f| draw(f, m, ui, &Times::new(true))).unwrap();
        let buf = t.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_screen_shows_every_column_with_its_unit() {
        let mut m = three();
        let r = &mut m.rows[0];
        r.cpu_guarantee_cores = Some(1.0);
        r.cpu_limit_cores = Some(1.5);
        r.share = Some(0.254);
        r.guarantee = Some(0.5);
        r.sla = Some(Sla::Violation);
        r.memory_bytes = Some((300u64 << 20) as f64);
        r.memory_guarantee_bytes = Some(1 << 30);
        r.io_read_bps = Some(1536.0);
        r.io_write_bps = Some(0.0);
        r.procs = 2;
        m.rows[2].sla = Some(Sla::Ok);
        let ui = Ui {
            tree: true,
            ..Ui::default()
        };
        let s = screen(&m, &ui, 160, 8);
        assert_eq!(
            s,
            [
                "tenantd top  2026-12-02 07:49:55  3 tenants (3 shown)  2 CPUs  cgroup v1  sort cpu  tree",
                "TENANT                            CPU cores used/guar/limit SHARE got/guar SLA       MEMORY used/guar/limit         IO read/write per s     PSI cpu/mem/io PROCS",
                "globex                            1.20 / - / -              - / -          ok        - / - / -                      - / -                   -/-/-          0",
                "acme                              0.50 / 1.00 / 1.50        25.4% / 50%    VIOLATION 300 MiB / 1 GiB / -            1.50 KiB/s / 0 B/s      -/-/-          2",
                "└ web                             0.30 / - / -              - / -          -         - / - / -                      - / -                   -/-/-          0",
                "",
                "",
                "q quit  s or </> sort column  / filter  t tree view",
            ]
        );
        // Narrower, after a resize: the name column gives way, the rest stays readable.
        let s = screen(&m, &ui, 100, 6);
        assert_eq!(
            s[1..4],
            [
                "TENANT       CPU cores used/guar/limit SHARE got/guar SLA       MEMORY used/guar/limit         PROCS",
                "globex       1.20 / - / -              - / -          ok        - / - / -                      0",
                "acme         0.50 / 1.00 / 1.50        25.4% / 50%    VIOLATION 300 MiB / 1 GiB / -            2",
            ],
            "pressure and IO left out at 100 columns"
        );
        assert_eq!(
            fitting(40),
            [Column::Tenant, Column::Cpu, Column::Sla],
            "the name, the CPU and the SLA state at least"
        );
        // Typing a filter, and a refresh that failed.
        m.error = Some("cannot reach tenantd".into());
        let ui = Ui {
            editing: Some("customer=".into()),
            ..Ui::default()
        };
        let s = screen(&m, &ui, 160, 6);
        assert!(s[0].ends_with("error: cannot reach tenantd"), "{s:#?}");
        assert!(s[5].ends_with(": customer=_"), "{s:#?}");
    }
}
