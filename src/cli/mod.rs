//! The `tenantd` command line: `serve` runs the daemon; every other subcommand is a client of
//! the HTTP API. Errors are one line on stderr and a non-zero exit.
//!
//! Layer 4, the top (see `lib.rs`): `serve` wires every layer together from `config`; the
//! client reads the API's own answer types (no mirrors, `wire` tests the round trip) and
//! never opens the database. Nothing in the crate imports `cli` (only `main.rs`).

mod client;
mod format;
mod logging;
mod reload;
mod run;
pub mod serve;
mod systemd;
mod top;
#[cfg(test)]
mod wire;

use crate::api::{Attached, Host};
use crate::engine::TenantView;
use crate::engine::autoplace::Explanation;
use crate::engine::placement::ProcInfo;
use crate::report::{FleetReport, Report};
use crate::store::{Event, Usage};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use client::{Client, ClientError, TENANTS_PAGE};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "tenantd",
    version,
    about = "Share a Linux host among tenants with cgroup v2, and prove each got its SLA"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The daemon's API address.
    #[arg(
        long,
        global = true,
        env = "TENANTD_ADDR",
        default_value = "http://127.0.0.1:7878"
    )]
    pub addr: String,
    /// Bearer token (needed when the daemon has a token file).
    #[arg(long, global = true, env = "TENANTD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Show times in tables in UTC instead of the local time zone (TZ, else /etc/localtime).
    #[arg(long, global = true)]
    pub utc: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Output {
    Table,
    Json,
    /// Only for `tenantd report`.
    Csv,
    /// Only for `tenantd report`: one self-contained HTML file.
    Html,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// Create, change, show and delete tenants.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Place processes in tenants.
    Procs {
        #[command(subcommand)]
        cmd: ProcsCmd,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Start a command inside a tenant (like systemd-run --scope), with the least privilege
    /// asked for (the tenant's `launch` defaults, then these flags); exit status and signals
    /// pass through.
    Run {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        client: ClientOpts,
        #[command(flatten)]
        launch: run::LaunchArgs,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// What this host's cgroup setup can do.
    Host {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// SLA report: per tenant guarantee, delivered share, violations, attainment, chargeback.
    Report {
        /// Start: Unix milliseconds, or a duration back from now: 15m, 2h, 7d [default 24h].
        #[arg(long)]
        from: Option<String>,
        /// End: Unix milliseconds, or a duration back from now [default now].
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// The whole fleet's report (a node of a fleet only): per tenant across nodes, then
        /// per node, from the minutes the nodes shipped to the fleet store.
        #[arg(long)]
        fleet: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A tenant's usage over time: CPU, memory, IO, pressure, limit hits.
    Usage {
        name: String,
        /// Start: Unix milliseconds, or a duration back from now: 15m, 2h, 7d [default 1h].
        #[arg(long)]
        from: Option<String>,
        /// End: Unix milliseconds, or a duration back from now [default now].
        #[arg(long)]
        to: Option<String>,
        /// Bucket size: seconds, or 30s, 5m, 1h, 1d [default: about 240 rows].
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A live view of every tenant, refreshed every second: CPU, SLA state, memory, IO,
    /// pressure, processes. Keys: q or Ctrl-C quit, s or < > sort column, / filter, t tree.
    Top {
        /// Show only tenants with this label (repeat for several: all must match).
        #[arg(short = 'l', long = "label", value_name = "LABEL=VALUE", value_parser = label_filter)]
        labels: Vec<String>,
        /// Start in the tree view (children below their parents).
        #[arg(long)]
        tree: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the tenantd(1) man page (roff), or write every page into a directory.
    #[command(hide = true)]
    Man {
        /// Write tenantd.1 and one page per subcommand here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Recent events: tenant changes, drift corrections, OOM kills.
    Events {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Unix milliseconds, or a duration back from now: 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create or replace tenants from a TOML or JSON file (units like 4GiB and 50% accepted).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show one tenant: its SLA and the values the kernel holds.
    Get { name: String },
    /// List tenants.
    List,
    /// Delete a tenant. Refused while processes live in it unless --kill or --move-to.
    Delete {
        name: String,
        #[arg(long, conflicts_with = "move_to")]
        kill: bool,
        #[arg(long)]
        move_to: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProcsCmd {
    /// Move a running process into a tenant.
    Add { tenant: String, pid: u32 },
    /// List a tenant's processes.
    List { tenant: String },
    /// Which tenant the placement rules give a process and why (nothing is moved).
    Explain { pid: u32 },
}

/// A `-l` value: `LABEL=VALUE`.
fn label_filter(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not LABEL=VALUE")),
    }
}

/// Parses an apply file into (name, spec) pairs. Accepts one tenant (`name = ...` at the top)
/// or many (`[[tenant]]` in TOML, `{"tenants": [...]}` or a JSON array).
pub fn parse_apply_file(path: &std::path::Path) -> Result<Vec<(String, Value)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let as_json = || {
        serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
    };
    let as_toml = || {
        toml::from_str::<Value>(&text)
            .map_err(|e| format!("{}: not valid TOML: {}", path.display(), e.message().trim()))
    };
    // By extension; otherwise JSON if it parses as JSON, else TOML (`[[tenant]]` starts with '[').
    let doc = match ext {
        "json" => as_json()?,
        "toml" => as_toml()?,
        _ => as_json().or_else(|_| as_toml())?,
    };
    let items: Vec<Value> = match doc {
        Value::Array(a) => a,
        Value::Object(ref o) if o.contains_key("tenant") || o.contains_key("tenants") => {
            match o.get("tenant").or_else(|| o.get("tenants")) {
                Some(Value::Array(a)) => a.clone(),
                _ => {
                    return Err(format!(
                        "{}: 'tenant' must be a list ([[tenant]] in TOML)",
                        path.display()
                    ));
                }
            }
        }
        other => vec![other],
    };
    let mut out = Vec::new();
    for (i, mut item) in items.into_iter().enumerate() {
        let Some(obj) = item.as_object_mut() else {
            return Err(format!(
                "{}: entry {} is not a table",
                path.display(),
                i + 1
            ));
        };
        let Some(Value::String(name)) = obj.remove("name") else {
            return Err(format!("{}: entry {} has no 'name'", path.display(), i + 1));
        };
        out.push((name, item));
    }
    if out.is_empty() {
        return Err(format!("{}: no tenants in the file", path.display()));
    }
    Ok(out)
}

fn print<T: Serialize>(out: Output, v: &T, table: impl FnOnce(&T) -> String) {
    match out {
        // csv and html are refused for every command but `report` before we get here.
        Output::Json | Output::Csv | Output::Html => print_json(v),
        Output::Table => print!("{}", table(v)),
    }
}

/// `-o json`: the answer as the API gave it, with an RFC 3339 UTC twin of every time field
/// (see [`format::json_times`]).
fn print_json<T: Serialize>(v: &T) {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    format::json_times(&mut v);
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// Refuses `-o csv` and `-o html` for every command but `report`.
fn table_or_json(o: Output) -> Result<(), ClientError> {
    match o {
        Output::Csv | Output::Html => Err(ClientError(format!(
            "-o {} is only for 'tenantd report': use -o table or -o json here",
            if o == Output::Csv { "csv" } else { "html" }
        ))),
        Output::Table | Output::Json => Ok(()),
    }
}

async fn client_main(cmd: Cmd) -> Result<(), ClientError> {
    let output = match &cmd {
        Cmd::Tenant { client, .. }
        | Cmd::Procs { client, .. }
        | Cmd::Host { client }
        | Cmd::Events { client, .. }
        | Cmd::Top { client, .. }
        | Cmd::Usage { client, .. } => Some(client.output),
        _ => None,
    };
    if let Some(o) = output {
        table_or_json(o)?;
    }
    match cmd {
        Cmd::Serve(_) | Cmd::Completions { .. } | Cmd::Man { .. } | Cmd::Run { .. } => {
            unreachable!("handled in main")
        }
        Cmd::Tenant { cmd, client: o } => {
            let c = Client::new(&o.addr, o.token.clone());
            match cmd {
                TenantCmd::Apply { file } => {
                    let items = parse_apply_file(&file).map_err(ClientError)?;
                    let total = items.len();
                    let mut results = Vec::new();
                    for (i, (name, spec)) in items.into_iter().enumerate() {
                        let v: serde_json::Value = c
                            .send(Method::PUT, &format!("/v1/tenants/{name}"), &spec)
                            .await
                            .map_err(|e| {
                                ClientError(format!(
                                    "tenant '{name}': {e} ({i} of {total} applied before it)"
                                ))
                            })?;
                        if o.output == Output::Table {
                            eprintln!("[{}/{total}] {}", i + 1, format::applied(&name, &v));
                        }
                        results.push(v);
                    }
                    if o.output == Output::Json {
                        print_json(&results);
                    }
                }
                TenantCmd::Get { name } => {
                    let v: TenantView = c.get(&format!("/v1/tenants/{name}")).await?;
                    print(o.output, &v, format::tenant);
                }
                TenantCmd::List => {
                    let v: Vec<TenantView> = c.get_all("/v1/tenants", TENANTS_PAGE).await?;
                    print(o.output, &v, |v| format::tenants(v));
                }
                TenantCmd::Delete {
                    name,
                    kill,
                    move_to,
                } => {
                    let q = match (kill, move_to) {
                        (true, _) => "?kill=true".to_string(),
                        (false, Some(t)) => format!("?move_to={t}"),
                        _ => String::new(),
                    };
                    c.delete(&format!("/v1/tenants/{name}{q}")).await?;
                    eprintln!("deleted tenant '{name}'");
                }
            }
        }
        Cmd::Procs { cmd, client: o } => {
            let c = Client::new(&o.addr, o.token.clone());
            match cmd {
                ProcsCmd::Add { tenant, pid } => {
                    let v: Attached = c
                        .send(
                            Method::POST,
                            &format!("/v1/tenants/{tenant}/procs"),
                            &json!({"pid": pid}),
                        )
                        .await?;
                    print(o.output, &v, |_| {
                        format!("moved PID {pid} into tenant '{tenant}'\n")
                    });
                }
                ProcsCmd::List { tenant } => {
                    let v: Vec<ProcInfo> = c.get(&format!("/v1/tenants/{tenant}/procs")).await?;
                    print(o.output, &v, |v| format::procs(v));
                }
                ProcsCmd::Explain { pid } => {
                    let v: Explanation = c.get(&format!("/v1/placement/explain?pid={pid}")).await?;
                    print(o.output, &v, format::explanation);
                }
            }
        }
        Cmd::Host { client: o } => {
            let c = Client::new(&o.addr, o.token.clone());
            let v: Host = c.get("/v1/host").await?;
            print(o.output, &v, format::host);
        }
        Cmd::Report {
            from,
            to,
            tenant,
            fleet,
            client: o,
        } => {
            let c = Client::new(&o.addr, o.token.clone());
            let format = match o.output {
                Output::Csv => "csv",
                Output::Html => "html",
                _ => "json",
            };
            let mut q = vec![format!("format={format}")];
            for (k, v) in [("from", from), ("to", to), ("tenant", tenant)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            if fleet {
                q.push("scope=fleet".into());
            }
            let path = format!("/v1/reports/sla?{}", q.join("&"));
            if format == "json" && fleet {
                let v: FleetReport = c.get(&path).await?;
                print(o.output, &v, format::fleet_report);
            } else if format == "json" {
                let v: Report = c.get(&path).await?;
                print(o.output, &v, format::report);
            } else {
                print!("{}", c.text(&path).await?);
            }
        }
        Cmd::Usage {
            name,
            from,
            to,
            step,
            client: o,
        } => {
            let c = Client::new(&o.addr, o.token.clone());
            let q: Vec<String> = [("from", from), ("to", to), ("step", step)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                .collect();
            let path = format!(
                "/v1/tenants/{name}/usage{}{}",
                if q.is_empty() { "" } else { "?" },
                q.join("&")
            );
            let v: Usage = c.get(&path).await?;
            print(o.output, &v, |v| {
                format::usage(v, &format::Times::new(o.utc))
            });
        }
        Cmd::Events {
            tenant,
            kind,
            since,
            client: o,
        } => {
            let c = Client::new(&o.addr, o.token.clone());
            let mut q = vec![];
            for (k, v) in [("tenant", tenant), ("kind", kind), ("since", since)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let path = if q.is_empty() {
                "/v1/events".to_string()
            } else {
                format!("/v1/events?{}", q.join("&"))
            };
            let v: Vec<Event> = c.get(&path).await?;
            print(o.output, &v, |v| {
                format::events(v, &format::Times::new(o.utc))
            });
        }
        Cmd::Top {
            labels,
            tree,
            client: o,
        } => {
            if o.output != Output::Table {
                return Err(ClientError(
                    "tenantd top is a terminal view: -o json is not for it (use /metrics or 'tenantd usage -o json')".into(),
                ));
            }
            let ui = top::Ui {
                filter: top::Filter(labels),
                tree,
                ..top::Ui::default()
            };
            top::run(
                Client::new(&o.addr, o.token.clone()),
                ui,
                format::Times::new(o.utc),
            )
            .await?;
        }
    }
    Ok(())
}

/// Man pages generated from the clap definition (clap_mangen): `tenantd.1`, and one page per
/// subcommand as its SEE ALSO names them (`tenantd-serve.1`, `tenantd-tenant-apply.1`, ...).
/// With no directory, `tenantd.1` goes to stdout.
fn man_pages(out_dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let cmd = Cli::command().disable_help_subcommand(true);
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    }
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Serve(_)) {
        // The daemon's allocator as its unit sets it, whoever starts it (before the runtime's
        // threads exist): two arenas, large blocks given back when freed.
        crate::launch::tune_allocator(2, 128 * 1024);
    }
    // `tenantd run` needs a single-threaded process once its requests are done (see
    // `cli/run.rs`): a runtime on the main thread alone, with no workers to join.
    let mut builder = if matches!(cli.cmd, Cmd::Run { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.cmd {
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "tenantd", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { out_dir } => {
            man_pages(out_dir.as_deref()).map_err(|e| format!("cannot write the man pages: {e}"))
        }
        Cmd::Serve(args) => rt.block_on(serve::run(args)).map_err(|e| format!("{e:#}")),
        Cmd::Run {
            tenant,
            client,
            launch,
            command,
        } => run::main(rt, tenant, client, launch, command).map_err(|e| e.0),
        cmd => rt.block_on(client_main(cmd)).map_err(|e| e.0),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantd: error: {}", e.lines().next().unwrap_or(""));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subcommands a user sees (the hidden `man` left out).
    fn visible() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn completions_come_from_the_clap_definition() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tenantd", &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in visible() {
                assert!(
                    text.contains(&sub),
                    "{shell}: no '{sub}' in the completions"
                );
            }
            assert!(
                text.contains("--move-to"),
                "{shell}: a nested flag is missing"
            );
        }
        // `tenantd completions SHELL` parses; an unknown shell does not.
        assert!(Cli::try_parse_from(["tenantd", "completions", "zsh"]).is_ok());
        assert!(Cli::try_parse_from(["tenantd", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn man_pages_come_from_the_clap_definition() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(Some(dir.path())).unwrap();
        let page = std::fs::read_to_string(dir.path().join("tenantd.1")).unwrap();
        assert!(page.contains(".TH tenantd 1"), "{page}");
        for sub in visible() {
            assert!(
                page.contains(&format!("tenantd\\-{sub}(1)")),
                "{sub} not listed"
            );
            assert!(
                dir.path().join(format!("tenantd-{sub}.1")).exists(),
                "no page for {sub}"
            );
        }
        assert!(!dir.path().join("tenantd-man.1").exists());
        let serve = std::fs::read_to_string(dir.path().join("tenantd-serve.1")).unwrap();
        assert!(serve.contains("cgroup\\-root"), "{serve}");
    }
}
