//! `tenantd run --tenant NAME [LAUNCH OPTIONS] -- CMD ARGS…`: reads the tenant's launch
//! defaults, validates and resolves the options, joins the tenant's leaf through the API, then
//! (the async runtime shut down, so the process has one thread) applies the least-privilege
//! launch and execs the command (`crate::launch`).

use super::ClientOpts;
use super::client::{Client, ClientError};
use crate::api::Attached;
use crate::domain::launch::{LaunchSpec, capability_list};
use crate::engine::TenantView;
use crate::launch::Launch;
use clap::Args;
use reqwest::Method;
use serde_json::json;

/// The launch options of one run; each overrides the tenant's `launch` default.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Least-privilege launch (each overrides the tenant's `launch`)")]
pub struct LaunchArgs {
    /// Set no_new_privs, so setuid programs and file capabilities grant nothing [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_new_privs: Option<bool>,
    /// The same as --no-new-privs=false.
    #[arg(long, conflicts_with = "no_new_privs")]
    pub allow_new_privs: bool,
    /// The capability bounding set: CAP_NET_BIND_SERVICE,kill,... or none [default: none for a
    /// non-root user; as root, the set tenantd run has].
    #[arg(long, value_name = "CAPS")]
    pub capabilities: Option<String>,
    /// Run as this user (name or ID), with its supplementary groups.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Run as this group (name or ID) [default: the user's primary group].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// A network namespace of its own with only loopback, up.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub private_network: Option<bool>,
    /// A mount namespace of its own with a private tmpfs on /tmp.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub private_tmp: Option<bool>,
    /// A PID namespace of its own (and its own /proc): a small reaper is PID 1, the command PID 2.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub private_pid: Option<bool>,
}

impl LaunchArgs {
    fn spec(&self) -> LaunchSpec {
        LaunchSpec {
            no_new_privs: if self.allow_new_privs {
                Some(false)
            } else {
                self.no_new_privs
            },
            capabilities: self.capabilities.as_deref().map(capability_list),
            user: self.user.clone(),
            group: self.group.clone(),
            private_network: self.private_network,
            private_tmp: self.private_tmp,
            private_pid: self.private_pid,
        }
    }
}

/// A flag's name from a spec field (`capabilities[2]` is `--capabilities`).
fn flag(field: &str) -> String {
    let key = field.split('[').next().unwrap_or(field);
    format!("--{}", key.replace('_', "-"))
}

/// The launch options: the flags checked on their own first (so an error names the flag),
/// then over the tenant's defaults; resolved against this host before anything changes.
pub fn options(flags: &LaunchArgs, tenant: Option<&LaunchSpec>) -> Result<Launch, ClientError> {
    let mine = flags.spec();
    mine.plan(&flag).map_err(|e| ClientError(e.to_string()))?;
    let merged = mine.over(tenant.unwrap_or(&LaunchSpec::default()));
    let plan = merged
        .plan(&|f| format!("the tenant's launch.{f}"))
        .map_err(|e| ClientError(e.to_string()))?;
    crate::launch::resolve(&plan).map_err(|e| ClientError(e.to_string()))
}

/// Reads the tenant's defaults, resolves the launch and joins the tenant's leaf.
async fn prepare(tenant: &str, o: &ClientOpts, flags: &LaunchArgs) -> Result<Launch, ClientError> {
    let c = Client::new(&o.addr, o.token.clone());
    let view: TenantView = c.get(&format!("/v1/tenants/{tenant}")).await?;
    let launch = options(flags, view.stored.spec.launch.as_deref())?;
    let me = std::process::id();
    let _: Attached = c
        .send(
            Method::POST,
            &format!("/v1/tenants/{tenant}/procs"),
            &json!({"pid": me}),
        )
        .await?;
    Ok(launch)
}

/// `tenantd run`: on success the command replaces this process (or, with --private-pid, this
/// process exits as the command did), so it returns only an error.
pub fn main(
    rt: tokio::runtime::Runtime,
    tenant: String,
    o: ClientOpts,
    flags: LaunchArgs,
    command: Vec<String>,
) -> Result<(), ClientError> {
    super::table_or_json(o.output)?;
    let launch = rt.block_on(prepare(&tenant, &o, &flags));
    // Joins the runtime's helper threads (it runs on this thread alone, see `cli::main`):
    // namespaces and credentials change for one thread.
    drop(rt);
    let launch = launch?;
    Err(ClientError(
        crate::launch::exec(&launch, &command).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<LaunchArgs, clap::Error> {
        let mut all = vec!["tenantd", "run", "--tenant", "t"];
        all.extend(args);
        all.extend(["--", "true"]);
        match super::super::Cli::try_parse_from(all)?.cmd {
            super::super::Cmd::Run { launch, .. } => Ok(launch),
            _ => unreachable!(),
        }
    }

    #[test]
    fn launch_flags_parse_into_a_spec() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.spec(), LaunchSpec::default());
        let a = parse(&[
            "--private-network",
            "--private-tmp=false",
            "--private-pid=true",
            "--capabilities",
            "CAP_KILL,net_raw",
            "--user",
            "nobody",
            "--group",
            "65534",
            "--allow-new-privs",
        ])
        .unwrap();
        assert_eq!(
            a.spec(),
            LaunchSpec {
                no_new_privs: Some(false),
                capabilities: Some(vec!["CAP_KILL".into(), "net_raw".into()]),
                user: Some("nobody".into()),
                group: Some("65534".into()),
                private_network: Some(true),
                private_tmp: Some(false),
                private_pid: Some(true),
            }
        );
        assert_eq!(
            parse(&["--no-new-privs=false"])
                .unwrap()
                .spec()
                .no_new_privs,
            Some(false)
        );
        assert_eq!(
            parse(&["--capabilities", "none"])
                .unwrap()
                .spec()
                .capabilities,
            Some(vec![])
        );
        // A value only with '=': the command after a bare flag is never taken as its value.
        let all = [
            "tenantd",
            "run",
            "--tenant",
            "t",
            "--private-network",
            "sleep",
            "1",
        ];
        match super::super::Cli::try_parse_from(all).unwrap().cmd {
            super::super::Cmd::Run {
                launch, command, ..
            } => {
                assert_eq!(launch.private_network, Some(true));
                assert_eq!(command, ["sleep", "1"]);
            }
            _ => unreachable!(),
        }
        assert!(parse(&["--no-new-privs", "--allow-new-privs"]).is_err());
        assert!(parse(&["--private-pid=maybe"]).is_err());
    }

    #[test]
    fn a_bad_flag_is_named_as_the_flag() {
        let flags = LaunchArgs {
            capabilities: Some("CAP_KILL,cap_nope".into()),
            ..LaunchArgs::default()
        };
        let e = options(&flags, None).unwrap_err().0;
        assert!(
            e.starts_with("--capabilities: 'cap_nope' is not a capability"),
            "{e}"
        );
        let flags = LaunchArgs {
            user: Some("a b".into()),
            ..LaunchArgs::default()
        };
        assert!(options(&flags, None).unwrap_err().0.starts_with("--user: "));
    }

    #[test]
    fn an_unknown_user_or_group_is_refused_before_anything_changes() {
        for (flags, says) in [
            (
                LaunchArgs {
                    user: Some("no-such-user-tenantd".into()),
                    ..LaunchArgs::default()
                },
                "unknown user 'no-such-user-tenantd'",
            ),
            (
                LaunchArgs {
                    group: Some("no-such-group-tenantd".into()),
                    ..LaunchArgs::default()
                },
                "unknown group 'no-such-group-tenantd'",
            ),
            (
                LaunchArgs {
                    user: Some("4000000000".into()),
                    ..LaunchArgs::default()
                },
                "user 4000000000 has no entry in the user database, so no primary group: give --group too",
            ),
        ] {
            assert_eq!(options(&flags, None).unwrap_err().0, says);
        }
    }
}
