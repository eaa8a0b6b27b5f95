//! The `jit` command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{App, Settings};
use crate::bootstrap::{self, Parts};
use crate::config::{self, BaseConfig, ServeConfig};
use crate::crypto::Cipher;
use crate::domain::ids::RequestId;
use crate::domain::policy::{Policy, ProviderConfig};
use crate::handlers::access::{self, Revoker};
use crate::store::{self, Store, audit::Verification};

#[derive(Debug, Parser)]
#[command(
    name = "jit",
    version,
    about = "Just-in-time privileged access, approved in Slack"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot: HTTP (or Socket Mode) for Slack, the job worker, health and metrics.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate a policy file.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Read and check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List and revoke grants.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Move a deployment to another database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Print a fresh random JIT_ENCRYPTION_KEY.
    Keygen,
    /// Check the configuration jit serve would run with against Slack, the providers and the
    /// database, read-only: one line per check, exit status 1 if any failed.
    Doctor {
        /// Print the checks as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure the figures of the design's quality bars on this machine.
    Bench(crate::bench::BenchArgs),
    /// Manage non-human identities' API tokens.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Client: ask a jit server for access (JIT_URL, JIT_TOKEN).
    Request {
        resource: String,
        duration: String,
        /// The justification approvers read.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        ticket: Option<String>,
        /// Start later: an RFC 3339 date and time (e.g. 2026-12-24T22:00:00Z). Approval may come
        /// ahead of time; access is issued then and lasts DURATION from then.
        #[arg(long)]
        start_at: Option<String>,
        /// Wait for the decision and print the credentials.
        /// (With --start-at, waits until the start.)
        #[arg(long)]
        wait: bool,
        /// How long to wait for a decision.
        #[arg(long, default_value = "30m")]
        timeout: String,
        #[arg(long, value_enum, default_value = "env")]
        format: crate::client::Format,
        /// Allow a plain http:// JIT_URL to another machine (the token crosses unencrypted).
        #[arg(long)]
        insecure: bool,
    },
    /// Client: print credentials of an active grant of RESOURCE, asking for one if needed
    /// (use `--format credential_process` in an AWS CLI profile).
    Credentials {
        resource: String,
        #[arg(long, value_enum, default_value = "env")]
        format: crate::client::Format,
        /// Duration of a new request, if one is needed.
        #[arg(long, default_value = "1h")]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value = "30m")]
        timeout: String,
        /// Allow a plain http:// JIT_URL to another machine (the token crosses unencrypted).
        #[arg(long)]
        insecure: bool,
    },
    /// Client: give access back now.
    Release {
        id: String,
        /// Allow a plain http:// JIT_URL to another machine (the token crosses unencrypted).
        #[arg(long)]
        insecure: bool,
    },
    /// Run the whole flow locally with a built-in Slack simulator, and print what everyone sees.
    Demo {
        /// Keep the temporary database for inspection.
        #[arg(long)]
        keep: bool,
        /// Simulated start time (RFC 3339); default now.
        #[arg(long, hide = true)]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// API tokens of an identity.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for NAME and print it once.
    Create { name: String },
    /// Revoke token ID (see `list`). The identity's pending requests are cancelled and its
    /// grants revoked too, unless --keep-grants is given: a revoked token is usually a leaked one.
    /// Running it again for a revoked token ends whatever the identity still has open.
    Revoke {
        id: i64,
        /// Leave the identity's requests and grants as they are.
        #[arg(long)]
        keep_grants: bool,
    },
    /// List tokens (ids, identities, dates; never the tokens).
    List { name: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy a stopped SQLite deployment into an empty PostgreSQL database, the way to several
    /// replicas: every table and row in one transaction, committed only when every table's row
    /// count matches and the audit chain verifies on the copy. Needs the audit key
    /// (JIT_AUDIT_KEY, or JIT_ENCRYPTION_KEY it is derived from). Refuses while jit serve runs on
    /// the file, and a target that already holds jit rows.
    Copy {
        /// The SQLite database jit ran on, for example sqlite:///var/lib/jit/jit.db.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The PostgreSQL database, for example postgres://jit@db.internal/jit (jit creates
        /// the tables). A password here shows in the process list: prefer --to-file.
        #[arg(
            long,
            value_name = "URL",
            required_unless_present = "to_file",
            conflicts_with = "to_file"
        )]
        to: Option<String>,
        /// A file holding the PostgreSQL URL (what JIT_DATABASE_URL_FILE will name).
        #[arg(long, value_name = "PATH")]
        to_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE (default: $JIT_POLICY or jit.toml) and print a summary.
    Check { file: Option<PathBuf> },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write audit events, one JSON object per line, for a SIEM.
    Export {
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z, or a date).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Re-check the whole keyed chain; exit non-zero and name the first bad row on tamper.
    /// Needs the audit key: JIT_AUDIT_KEY, or JIT_ENCRYPTION_KEY when the key is derived from it.
    Verify {
        /// A head printed by an earlier verify (or an anchor from the audit channel), as
        /// SEQ:HASH with at least 32 hex digits of the hash. The log must still contain that
        /// row, unchanged: this catches rows removed from the end, which the chain alone cannot
        /// show.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_head)]
        head: Option<(i64, String)>,
        /// Also check the chain against the heads jit posted to the audit channel (reads the
        /// channel's history with SLACK_BOT_TOKEN): catches rows removed from the end, and
        /// history rewritten by someone who has the key.
        #[arg(long)]
        slack: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List recent requests and grants.
    List {
        /// Only grants that are active now.
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Revoke a grant now, through the same teardown path as Slack. Audited as `cli:<OS user>`.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

/// Runs a command. `Ok(code)` is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let env = config::process_env;
    match cli.command {
        Command::Serve => crate::serve::serve(ServeConfig::from_env(&env)?)
            .await
            .map(|_| 0),
        Command::Migrate => {
            let base = BaseConfig::from_env(&env)?;
            let store = Store::connect(&base.database_url, base.durability).await?;
            store.migrate().await?;
            println!(
                "migrations applied to {}",
                crate::store::redact_url(&base.database_url)
            );
            let key_given = ["JIT_AUDIT_KEY", "JIT_ENCRYPTION_KEY"]
                .iter()
                .any(|name| env(name).is_some() || env(&format!("{name}_FILE")).is_some());
            if !key_given {
                println!(
                    "the audit chain is keyed at the first `jit serve` (or run `jit migrate` with JIT_AUDIT_KEY or JIT_ENCRYPTION_KEY set)"
                );
                return Ok(0);
            }
            let key = config::audit_key(&env)?;
            match store.open_audit_chain(key, chrono::Utc::now()).await? {
                store::audit::ChainOpened::Recorded { unkeyed: 0 } => {
                    println!("audit chain keyed (HMAC-SHA-256) from its first row")
                }
                store::audit::ChainOpened::Recorded { unkeyed } => println!(
                    "audit chain upgraded: rows 1-{unkeyed} (unkeyed) verified and their head bound to the audit key; rows from {} on are keyed",
                    unkeyed + 1
                ),
                store::audit::ChainOpened::Keyed { .. } => {
                    println!("audit chain already keyed; the key matches")
                }
            }
            Ok(0)
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let path = file.unwrap_or(BaseConfig::from_env(&env)?.policy_path);
            match bootstrap::load_policy(&path) {
                Ok(policy) => {
                    print!("{}", summary(&path, &policy));
                    for warning in oncall_warnings(&policy, &env) {
                        println!("warning: {warning}");
                    }
                    Ok(0)
                }
                Err(message) => {
                    eprintln!("jit: {message}");
                    Ok(1)
                }
            }
        }
        Command::Audit { command } => audit(command).await,
        Command::Db { command } => db(command).await,
        Command::Grants { command } => grants(command).await,
        Command::Identity {
            command: IdentityCommand::Token { command },
        } => tokens(command).await,
        Command::Request {
            resource,
            duration,
            reason,
            ticket,
            start_at,
            wait,
            timeout,
            format,
            insecure,
        } => {
            let client = crate::client::Client::from_env(&env, insecure)?;
            let wait = wait.then(|| parse_timeout(&timeout)).transpose()?;
            let out = crate::client::request(
                &client,
                crate::client::Ask {
                    resource: &resource,
                    duration: &duration,
                    reason: &reason,
                    ticket: ticket.as_deref(),
                    start_at: start_at.as_deref(),
                },
                wait,
                format,
            )
            .await?;
            print!("{out}");
            Ok(0)
        }
        Command::Credentials {
            resource,
            format,
            duration,
            reason,
            timeout,
            insecure,
        } => {
            let client = crate::client::Client::from_env(&env, insecure)?;
            let out = crate::client::credentials(
                &client,
                &resource,
                &duration,
                reason.as_deref(),
                parse_timeout(&timeout)?,
                format,
            )
            .await?;
            print!("{out}");
            Ok(0)
        }
        Command::Release { id, insecure } => {
            let id = RequestId::parse(&id).map_err(anyhow::Error::msg)?;
            let client = crate::client::Client::from_env(&env, insecure)?;
            let answer = client.release(id.0).await?;
            println!(
                "request #{} is {}",
                id.0,
                answer["state"].as_str().unwrap_or("released")
            );
            Ok(0)
        }
        Command::Demo { keep, at } => {
            let start = at.as_deref().map(parse_since).transpose()?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let intact =
                crate::demo::run(crate::demo::DemoOptions { keep, start }, &mut out).await?;
            Ok(if intact { 0 } else { 1 })
        }
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Keygen => {
            println!("{}", crate::crypto::generate_key());
            Ok(0)
        }
        Command::Doctor { json } => {
            let report = crate::doctor::run(&env).await;
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            Ok(if report.failed() { 1 } else { 0 })
        }
    }
}

/// What `jit policy check` warns about on-call rules, given the environment `jit serve` would
/// have: no PagerDuty token means they approve nobody.
pub fn oncall_warnings(policy: &Policy, env: crate::config::EnvFn<'_>) -> Vec<String> {
    let schedules = policy.oncall_schedules();
    if schedules.is_empty() {
        return Vec::new();
    }
    let resources: Vec<&str> = policy
        .resources()
        .iter()
        .filter(|r| r.auto_approve.as_ref().is_some_and(|a| a.oncall.is_some()))
        .map(|r| r.id.as_str())
        .collect();
    match crate::config::pagerduty(env) {
        Ok(Some(_)) => Vec::new(),
        Ok(None) => vec![format!(
            "auto_approve.oncall on {} needs a PagerDuty API token: set PAGERDUTY_TOKEN (or PAGERDUTY_TOKEN_FILE) for jit serve. Without it the on-call rules approve nobody (they fail closed).",
            resources.join(", ")
        )],
        Err(e) => vec![format!(
            "auto_approve.oncall on {}: {e}. Until it is fixed the on-call rules approve nobody.",
            resources.join(", ")
        )],
    }
}

/// What `jit policy check` prints.
pub fn summary(path: &std::path::Path, policy: &Policy) -> String {
    let mut out = format!("{}: OK\n", path.display());
    let names = |p: &crate::domain::policy::Principals| {
        let mut parts: Vec<String> = p.users.iter().map(|u| u.to_string()).collect();
        parts.extend(p.groups.iter().map(|g| format!("group {g}")));
        parts.extend(p.identities.iter().map(|i| format!("identity {i}")));
        if parts.is_empty() {
            "nobody".to_owned()
        } else {
            parts.join(", ")
        }
    };
    out.push_str(&format!(
        "audit channel {}; admins: {}\n",
        policy.audit_channel,
        names(&policy.admins)
    ));
    let limits = &policy.limits;
    out.push_str(&format!(
        "limits: {} request(s) per requester per minute; at most {} waiting for approval per requester (max_pending_per_user); teardown alert after {} failure(s)\n",
        limits.requests_per_user_per_minute,
        limits.max_pending_per_user,
        limits.teardown_alert_after_failures,
    ));
    out.push_str(&format!("{} resource(s):\n", policy.resources().len()));
    for r in policy.resources() {
        let approvers = crate::domain::policy::Principals {
            users: r.approvers.users.clone(),
            groups: r.approvers.groups.clone(),
            identities: Vec::new(),
        };
        let provider = match &r.provider {
            ProviderConfig::AwsSts(c) => format!("aws_sts {}", c.role_arn),
            ProviderConfig::Postgres(c) => postgres_summary(c),
            ProviderConfig::OktaGroup(c) => format!("okta_group {} in {}", c.group_id, c.org_url),
            ProviderConfig::Exec(c) => format!("exec {}", c.grant_command.join(" ")),
            ProviderConfig::None => "none".into(),
            ProviderConfig::AwsIdentityCenter(c) => match &c.target {
                crate::domain::policy::IdentityCenterTarget::Account {
                    account_id,
                    permission_set_arn,
                } => format!("aws_identity_center {permission_set_arn} in account {account_id}"),
                crate::domain::policy::IdentityCenterTarget::Group { group_id } => {
                    format!("aws_identity_center group {group_id}")
                }
            },
        };
        out.push_str(&format!(
            "  {}: {provider}\n    max {} (default {}; max_lifetime {}: the most in all, extensions included); requesters: {}; approvers: {} of {} in {}\n    auto-approve: {}; break-glass: {}; pending timeout {}; reminder {} before expiry; a start may be scheduled up to {} ahead (max_start_ahead)\n",
            r.id,
            r.max_duration,
            r.default_duration,
            r.max_lifetime,
            r.requesters.as_ref().map(names).unwrap_or_else(|| "anyone".into()),
            r.approvals_required,
            names(&approvers),
            r.approvers
                .channel
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "DMs".into()),
            r.auto_approve
                .as_ref()
                .map(|a| {
                    let oncall = a.oncall.as_ref().map(|o| {
                        format!("whoever is on call in PagerDuty schedule(s) {}", o.pagerduty_schedules.join(", "))
                    });
                    let whom = match (oncall, a.who.is_empty()) {
                        (None, true) => "any requester".into(),
                        (None, false) => names(&a.who),
                        (Some(o), true) => o,
                        (Some(o), false) => format!("{} and {o}", names(&a.who)),
                    };
                    format!("up to {} for {whom}", a.max_duration)
                })
                .unwrap_or_else(|| "never".into()),
            if r.breakglass { "allowed" } else { "no" },
            r.pending_timeout,
            r.reminder_before,
            r.max_start_ahead,
        ));
        if r.approvers.notify != crate::domain::policy::Notify::Channel {
            out.push_str(&format!(
                "    approvers asked: {} (notify = \"{}\")\n",
                if r.approvers.notify.in_channel() {
                    "in the channel and by DM"
                } else {
                    "by DM only"
                },
                r.approvers.notify.as_str()
            ));
        }
        let escalation = if r.escalate.is_empty() {
            "none (no reminder)".to_owned()
        } else if r.escalate_is_default {
            format!(
                "a reminder after {} (the default: half the pending timeout)",
                r.escalate[0].after
            )
        } else {
            r.escalate
                .iter()
                .map(|s| {
                    let to = match &s.to {
                        None => "reminder".to_owned(),
                        Some(to) => {
                            let mut parts = Vec::new();
                            let people = crate::domain::policy::Principals {
                                users: to.users.clone(),
                                groups: to.groups.clone(),
                                identities: Vec::new(),
                            };
                            if !people.is_empty() {
                                parts.push(format!("+ {}", names(&people)));
                            }
                            if let Some(c) = &to.channel {
                                parts.push(format!("post in {c}"));
                            }
                            parts.join(", ")
                        }
                    };
                    format!("after {}: {to}", s.after)
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        out.push_str(&format!("    escalation: {escalation}\n"));
        if let Some(rule) = r.justification.describe() {
            out.push_str(&format!("    justification: {rule}\n"));
        }
        if let Some(rule) = r.ticket.describe() {
            let link = r
                .ticket
                .url
                .as_deref()
                .map(|u| format!(", linked to {u}"))
                .unwrap_or_default();
            out.push_str(&format!("    ticket: {rule}{link}\n"));
        }
    }
    if !policy.webhooks().is_empty() {
        out.push_str(&format!("{} webhook(s):\n", policy.webhooks().len()));
        for w in policy.webhooks() {
            out.push_str(&format!(
                "  {}: {}; signed with ${} (or ${}_FILE)\n",
                w.url,
                w.events.join(", "),
                w.secret_env,
                w.secret_env
            ));
        }
    }
    for r in policy.resources() {
        if let ProviderConfig::Postgres(c) = &r.provider {
            for warning in c.warnings() {
                out.push_str(&format!("warning: {}: {warning}\n", r.id));
            }
        }
        if let ProviderConfig::AwsIdentityCenter(c) = &r.provider {
            for warning in c.warnings() {
                out.push_str(&format!("warning: {}: {warning}\n", r.id));
            }
        }
    }
    for warning in policy.warnings() {
        out.push_str(&format!("warning: {warning}\n"));
    }
    if !policy.identities().is_empty() {
        out.push_str(&format!("{} identit(ies):\n", policy.identities().len()));
        for i in policy.identities() {
            out.push_str(&format!(
                "  {}: owner {}; may request {}\n",
                i.name,
                names(&i.owner),
                i.resources
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

/// The provider part of a postgres resource's summary line.
fn postgres_summary(c: &crate::domain::policy::PostgresConfig) -> String {
    use crate::domain::policy::PostgresMode;
    let mode = match &c.mode {
        PostgresMode::Ephemeral {
            connection_limit,
            objects_owner,
        } => format!(
            "ephemeral login roles ({connection_limit} connections); holders' objects {}",
            match objects_owner {
                Some(owner) => format!("go to {owner} at teardown"),
                None => "are dropped at teardown".into(),
            }
        ),
        PostgresMode::Elevation {
            db_users,
            terminate_sessions,
        } => format!(
            "elevation of {} mapped user(s); their sessions are {} at teardown",
            db_users.len(),
            if *terminate_sessions {
                "terminated"
            } else {
                "kept"
            }
        ),
    };
    format!(
        "postgres {} (admin URL from ${}, superuser admin {}): {mode}; what holders make through the granted \
         roles during a grant loses its definer rights at teardown (jit doctor and jit serve name the granted \
         roles that may CREATE)",
        c.roles.join(", "),
        c.database_url_env,
        if c.allow_superuser_admin {
            "allowed"
        } else {
            "refused"
        },
    )
}

async fn open_store() -> anyhow::Result<Store> {
    let base = BaseConfig::from_env(&config::process_env)?;
    let store = Store::connect(&base.database_url, base.durability).await?;
    store.migrate().await?;
    Ok(store)
}

/// A store whose audit chain is open, for commands that record audit events.
async fn open_keyed_store() -> anyhow::Result<Store> {
    let key = config::audit_key(&config::process_env).map_err(|e| {
        anyhow::anyhow!("this command records audit events, which needs the audit key: {e}")
    })?;
    let store = open_store().await?;
    store.open_audit_chain(key, chrono::Utc::now()).await?;
    Ok(store)
}

fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").with_context(|| {
        format!(
            "--since `{text}` is neither RFC 3339 (2026-11-01T00:00:00Z) nor a date (2026-11-01)"
        )
    })?;
    Ok(date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc())
}

/// `jit db copy`: see [`store::copy`].
async fn db(command: DbCommand) -> anyhow::Result<i32> {
    let DbCommand::Copy { from, to, to_file } = command;
    let to = match (to, to_file) {
        (Some(url), _) => url,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("--to-file: cannot read {}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!("--to or --to-file names the PostgreSQL database"),
    };
    let key = config::audit_key(&config::process_env).map_err(|e| {
        anyhow::anyhow!(
            "`jit db copy` verifies the audit chain on the copy, which needs the audit key jit serve uses: {e}"
        )
    })?;
    if let Some(path) = bootstrap::sqlite_path(&from)
        && !path.exists()
    {
        anyhow::bail!("--from {}: no such file", path.display());
    }
    // Held until the copy is done: no jit serve starts on the file meanwhile.
    let _lock = bootstrap::InstanceLock::acquire(&from).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}. jit db copy copies a stopped deployment: stop jit serve (and any jit command using the file), then copy again"
        )
    })?;
    let copied = store::copy::copy(&from, &to, &key).await?;
    println!(
        "copied {} into {} in one transaction",
        store::redact_url(&from),
        store::redact_url(&to)
    );
    println!("  {:<22} {:>10}", "TABLE", "ROWS");
    for (table, rows) in &copied.tables {
        println!("  {table:<22} {rows:>10}");
    }
    println!(
        "  {:<22} {:>10}",
        "total",
        copied.tables.iter().map(|(_, n)| n).sum::<u64>()
    );
    println!("row counts: the copy's match the source's in every table");
    println!(
        "identity sequences: {}",
        copied
            .sequences
            .iter()
            .map(|(column, last)| match last {
                0 => format!("{column} starts at 1"),
                last => format!("{column} continues after {last}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    if copied.requeued > 0 {
        println!(
            "jobs: {} left running by the stopped jit queued again (lease cleared), as jit serve does at start",
            copied.requeued
        );
    }
    match &copied.audit_head {
        Some(head) => println!(
            "audit chain verified on the copy: {} events, head {}:{head}",
            copied.audit_rows, copied.audit_rows
        ),
        None => println!("audit chain verified on the copy: no events yet"),
    }
    println!(
        "next: set JIT_DATABASE_URL (or JIT_DATABASE_URL_FILE) to the PostgreSQL database and start jit serve; keep the SQLite file, unused, until the replicas run"
    );
    Ok(0)
}

async fn audit(command: AuditCommand) -> anyhow::Result<i32> {
    let store = open_store().await?;
    let mut conn = store.read().await?;
    match command {
        AuditCommand::Export {
            since,
            format: ExportFormat::Jsonl,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut after = 0;
            loop {
                let rows = store::audit::page(&mut conn, after, 1000).await?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                for row in rows {
                    if let Some(since) = since
                        && store::parse_time(&row.at).is_ok_and(|at| at < since)
                    {
                        continue;
                    }
                    let line = serde_json::json!({
                        "seq": row.seq,
                        "at": row.at,
                        "request_id": row.request_id,
                        "actor": row.actor,
                        "event": row.event,
                        "detail": row.detail_json(),
                        "prev_hash": row.prev_hash,
                        "hash": row.hash,
                    });
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()?;
            Ok(0)
        }
        AuditCommand::Verify {
            head: anchor,
            slack,
        } => {
            let key = config::audit_key(&config::process_env)
                .map_err(|e| anyhow::anyhow!("`jit audit verify`: {e}"))?;
            verify(&mut conn, &key, anchor, slack).await
        }
    }
}

/// `jit audit verify`: the chain, then an anchor given with `--head`, then Slack's anchors.
async fn verify(
    conn: &mut crate::store::Conn,
    key: &crate::crypto::AuditKey,
    anchor: Option<(i64, String)>,
    slack: bool,
) -> anyhow::Result<i32> {
    let (rows, head) = match store::audit::verify(conn, key).await? {
        Verification::Intact { rows, head } => (rows, head),
        Verification::Broken {
            rows_checked,
            seq,
            reason,
        } => {
            println!(
                "audit log TAMPERED: row {seq}: {reason} ({rows_checked} rows before it are intact)"
            );
            return Ok(1);
        }
    };
    if let Some((seq, hash)) = anchor
        && let Err(reason) = store::audit::check_anchor(conn, seq, &hash).await?
    {
        println!("audit log TAMPERED: {reason} ({rows} rows, chain intact)");
        return Ok(1);
    }
    println!("audit log intact: {rows} events, hash chain verified");
    if let Some(b) = store::audit::boundary(conn).await?
        && b.seq > 0
    {
        println!(
            "rows 1-{} predate the keyed chain (unkeyed SHA-256; their head was bound to the key at {}); rows from {} on are keyed (HMAC-SHA-256)",
            b.seq,
            b.keyed_at,
            b.seq + 1
        );
    }
    if let Some(head) = head {
        println!("head: {rows}:{head}");
    }
    if !slack {
        return Ok(0);
    }
    let env = config::process_env;
    let base = BaseConfig::from_env(&env)?;
    let policy = bootstrap::load_policy(&base.policy_path).map_err(anyhow::Error::msg)?;
    let token = config::required_secret(&env, "SLACK_BOT_TOKEN")
        .map_err(|e| anyhow::anyhow!("`jit audit verify --slack` reads the audit channel: {e}"))?;
    let api = crate::slack::api::SlackApi::new(
        &env("JIT_SLACK_API_URL").unwrap_or_else(|| "https://slack.com/api".into()),
        token,
        std::num::NonZeroU32::new(1).expect("one"),
        crate::metrics::Metrics::new(),
    )?;
    let channel = policy.audit_channel.as_str();
    match crate::audit::anchor::verify_slack(conn, &api, channel).await? {
        crate::audit::anchor::SlackCheck::Intact { anchors: 0, .. } => {
            println!(
                "slack: no anchors in {channel} yet, nothing to compare (jit posts the head every JIT_AUDIT_ANCHOR_INTERVAL and at shutdown)"
            );
            Ok(0)
        }
        crate::audit::anchor::SlackCheck::Intact { anchors, newest } => {
            if let Some(newest) = newest {
                println!(
                    "slack: {anchors} anchors match the chain; the newest, row {} in {}, was posted at {}",
                    newest.seq,
                    newest.channel,
                    newest.posted()
                );
            }
            Ok(0)
        }
        crate::audit::anchor::SlackCheck::Broken { seq, reason } => {
            println!("audit log TAMPERED: row {seq}: {reason} (checked against Slack)");
            Ok(1)
        }
    }
}

/// `--head SEQ:HASH` of `jit audit verify`.
fn parse_head(value: &str) -> Result<(i64, String), String> {
    value
        .split_once(':')
        .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok().filter(|s| *s > 0)?, hash)))
        .filter(|(_, hash)| {
            (store::audit::MIN_HEAD_DIGITS..=64).contains(&hash.len())
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|(seq, hash)| (seq, hash.to_ascii_lowercase()))
        .ok_or_else(|| {
            format!(
                "must be SEQ:HASH with at least {} hex digits of the hash, as `jit audit verify` prints it or an anchor in the audit channel shows it (the 12 digits in an audit thread are for people, too short to check against)",
                store::audit::MIN_HEAD_DIGITS
            )
        })
}

/// An application for one-shot admin commands: the database and the policy, no Slack traffic.
async fn admin_app() -> anyhow::Result<Arc<App>> {
    let env = config::process_env;
    let base = BaseConfig::from_env(&env)?;
    let policy = bootstrap::load_policy(&base.policy_path).map_err(anyhow::Error::msg)?;
    let store = open_keyed_store().await?;
    // This process never sends to Slack nor opens credentials; it only records decisions that
    // the running server's worker carries out.
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let clock = Arc::new(bootstrap::floored_clock(&store).await?);
    bootstrap::build(Parts {
        policy,
        store,
        clock,
        slack_api_url: env("JIT_SLACK_API_URL").unwrap_or_else(|| "https://slack.com/api".into()),
        bot_token: secrecy::SecretString::from("xoxb-unused-by-the-cli"),
        signing_secrets: Vec::new(),
        cipher: Cipher::from_bytes(&key),
        providers: Default::default(),
        settings: Settings::default(),
        posts_per_channel_per_second: std::num::NonZeroU32::new(1).expect("one"),
        webhooks: None,
        pagerduty: None,
    })
}

fn parse_timeout(text: &str) -> anyhow::Result<std::time::Duration> {
    let d = crate::domain::duration::GrantDuration::parse(text)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    Ok(std::time::Duration::from_secs(d.as_secs()))
}

async fn tokens(command: TokenCommand) -> anyhow::Result<i32> {
    let env = config::process_env;
    let base = BaseConfig::from_env(&env)?;
    let store = open_keyed_store().await?;
    let now = chrono::Utc::now();
    let by = crate::audit::actor::cli(&os_user());
    match command {
        TokenCommand::Create { name } => {
            let policy = bootstrap::load_policy(&base.policy_path).map_err(anyhow::Error::msg)?;
            match crate::handlers::identity::create_token(&store, &policy, &name, &by, now).await {
                Ok((id, token)) => {
                    use secrecy::ExposeSecret;
                    eprintln!(
                        "token {id} for identity {name} (shown once; store it as JIT_TOKEN):"
                    );
                    println!("{}", token.expose_secret());
                    Ok(0)
                }
                Err(err) => {
                    eprintln!("jit: {}", err.user_message());
                    Ok(1)
                }
            }
        }
        TokenCommand::Revoke { id, keep_grants } => {
            let revoked = match crate::handlers::identity::revoke_token(&store, id, &by, now).await
            {
                Ok(revoked) => revoked,
                Err(err) => {
                    eprintln!("jit: {}", err.user_message());
                    return Ok(1);
                }
            };
            let identity = revoked.identity;
            if revoked.already {
                println!("token {id} of identity {identity} was already revoked");
            } else {
                println!("token {id} of identity {identity} is revoked");
            }
            if keep_grants {
                println!("its requests and grants are left as they are (--keep-grants)");
                return Ok(0);
            }
            let failed = |error: String| {
                eprintln!(
                    "jit: the token is revoked, but ending the identity's access failed: {error}. \
                     Run the same command again to end it"
                );
                Ok(1)
            };
            let app = match admin_app().await {
                Ok(app) => app,
                Err(err) => return failed(format!("{err:#}")),
            };
            match crate::handlers::identity::end_access_of(&app, &identity, id, &os_user()).await {
                Ok(ended) => {
                    let list = |ids: &[RequestId]| {
                        if ids.is_empty() {
                            "none".to_owned()
                        } else {
                            ids.iter()
                                .map(|i| i.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    };
                    println!(
                        "identity {identity}: pending requests cancelled: {}; grants revoked: {} (the running jit server removes the access within seconds)",
                        list(&ended.cancelled),
                        list(&ended.revoked)
                    );
                    Ok(0)
                }
                Err(err) => failed(err.user_message()),
            }
        }
        TokenCommand::List { name } => {
            let mut conn = store.read().await?;
            println!(
                "{:<6} {:<24} {:<26} {:<20} REVOKED",
                "ID", "IDENTITY", "CREATED", "BY"
            );
            for t in store::tokens::list(&mut conn, name.as_deref()).await? {
                println!(
                    "{:<6} {:<24} {:<26} {:<20} {}",
                    t.id,
                    t.identity,
                    t.created_at,
                    t.created_by,
                    t.revoked_at.as_deref().unwrap_or("-")
                );
            }
            Ok(0)
        }
    }
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

async fn grants(command: GrantsCommand) -> anyhow::Result<i32> {
    match command {
        GrantsCommand::List { active, limit } => {
            let store = open_store().await?;
            let mut conn = store.read().await?;
            let rows = store::requests::list(&mut conn, active, limit).await?;
            println!(
                "{:<6} {:<11} {:<10} {:<24} {:<18} {:<8} {:<20}",
                "ID", "KIND", "STATE", "RESOURCE", "REQUESTER", "FOR", "EXPIRES"
            );
            for stored in rows {
                let r = stored.request;
                let expires = match (r.state, r.expires_at) {
                    (_, Some(at)) => store::format_time(at),
                    _ => "-".into(),
                };
                let state =
                    if r.state.is_final() && r.granted_at.is_some() && r.revoked_at.is_none() {
                        format!("{}*", r.state)
                    } else {
                        r.state.to_string()
                    };
                println!(
                    "{:<6} {:<11} {:<10} {:<24} {:<18} {:<8} {:<20}",
                    r.id.0,
                    r.kind.as_str(),
                    state,
                    r.resource.as_str(),
                    r.requester.key(),
                    r.duration.to_string(),
                    expires
                );
            }
            println!("(* = ended, teardown still in progress)");
            Ok(0)
        }
        GrantsCommand::Revoke { id, reason } => {
            let id = RequestId::parse(&id).map_err(anyhow::Error::msg)?;
            let app = admin_app().await?;
            let user = os_user();
            match access::revoke(&app, Revoker::Cli(&user), id, &reason).await {
                Ok(request) => {
                    println!(
                        "request {} is revoked; the running jit server removes the access within seconds",
                        request.id
                    );
                    Ok(0)
                }
                Err(err) => {
                    eprintln!("jit: {}", err.user_message());
                    Ok(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oncall_rules_without_a_pagerduty_token_are_warned_about() {
        let text = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "prod"
provider = "none"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "2h", oncall = { pagerduty_schedules = ["PABC123"] } }
"#;
        let policy = Policy::parse(text, &|_| Err(std::io::ErrorKind::NotFound.into())).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        assert!(
            out.contains(
                "auto-approve: up to 2h for whoever is on call in PagerDuty schedule(s) PABC123"
            ),
            "{out}"
        );
        let none = oncall_warnings(&policy, &|_| None);
        assert_eq!(none.len(), 1, "{none:?}");
        assert!(
            none[0].contains("prod needs a PagerDuty API token: set PAGERDUTY_TOKEN"),
            "{none:?}"
        );
        let set = |name: &str| (name == "PAGERDUTY_TOKEN").then(|| "u+abc".to_owned());
        assert!(oncall_warnings(&policy, &set).is_empty());
        let unreadable = |name: &str| {
            (name == "PAGERDUTY_TOKEN_FILE").then(|| "/nonexistent/pd-token".to_owned())
        };
        let bad = oncall_warnings(&policy, &unreadable);
        assert!(bad[0].contains("PAGERDUTY_TOKEN_FILE"), "{bad:?}");
    }

    const POSTGRES: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "pg-eph"
provider = "postgres"
database_url_env = "PG_URL"
roles = ["app_rw"]
objects_owner = "jit_leftovers"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }

[[resource]]
id = "pg-elev"
provider = "postgres"
database_url_env = "PG_URL"
mode = "elevation"
roles = ["db_admin"]
db_users = { U0DEV = "dev" }
terminate_sessions = false
allow_superuser_admin = true
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

    #[test]
    fn policy_check_says_how_postgres_tears_down_and_warns() {
        let policy = Policy::parse(POSTGRES, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        for expected in [
            "  pg-eph: postgres app_rw (admin URL from $PG_URL, superuser admin refused): \
             ephemeral login roles (5 connections); holders' objects go to jit_leftovers at teardown; \
             what holders make through the granted roles during a grant loses its definer rights at \
             teardown (jit doctor and jit serve name the granted roles that may CREATE)\n",
            "  pg-elev: postgres db_admin (admin URL from $PG_URL, superuser admin allowed): \
             elevation of 1 mapped user(s); their sessions are kept at teardown; what holders",
            "warning: pg-elev: terminate_sessions = false: sessions the user has open keep the granted roles",
            "warning: pg-elev: allow_superuser_admin = true",
        ] {
            assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
        }
        assert_eq!(out.matches("warning:").count(), 2, "{out}");
    }

    /// Issue 11, point 3: the total cap of a grant, extensions included, is shown per resource,
    /// by its key: the default (3 × max_duration) and a value set in the policy.
    #[test]
    fn policy_check_shows_max_lifetime() {
        let policy = Policy::parse(POSTGRES, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("max_lifetime")).collect();
        assert_eq!(lines.len(), policy.resources().len(), "{out}");
        for (line, resource) in lines.iter().zip(policy.resources()) {
            assert_eq!(
                resource.max_lifetime.as_secs(),
                3 * resource.max_duration.as_secs()
            );
            assert!(
                line.contains(&format!(
                    "max {} (default {}; max_lifetime {}: the most in all, extensions included)",
                    resource.max_duration, resource.default_duration, resource.max_lifetime
                )),
                "{line}"
            );
        }
        let set = POSTGRES.replacen(
            "mode = \"elevation\"",
            "mode = \"elevation\"\nmax_duration = \"2h\"\nmax_lifetime = \"5h\"",
            1,
        );
        let policy = Policy::parse(&set, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        assert!(
            out.contains(
                "max 2h (default 1h; max_lifetime 5h: the most in all, extensions included)"
            ),
            "{out}"
        );
    }

    /// Issue 15, point 2: how far ahead a start may be scheduled, per resource, by its key.
    #[test]
    fn policy_check_shows_max_start_ahead() {
        let set = POSTGRES.replacen(
            "mode = \"elevation\"",
            "mode = \"elevation\"\nmax_start_ahead = \"36h\"",
            1,
        );
        let policy = Policy::parse(&set, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("(max_start_ahead)"))
            .collect();
        assert_eq!(lines.len(), policy.resources().len(), "{out}");
        assert!(
            lines.iter().any(
                |l| l.ends_with("a start may be scheduled up to 1d12h ahead (max_start_ahead)")
            ),
            "{out}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("a start may be scheduled up to 7d ahead (max_start_ahead)")),
            "{out}"
        );
    }

    #[test]
    fn policy_check_shows_escalation_and_where_approvers_are_asked() {
        let text = POSTGRES
            .replace(
                "objects_owner = \"jit_leftovers\"\napprovers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\"] }",
                "objects_owner = \"jit_leftovers\"\napprovers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\"], notify = \"dm\" }\nescalate = [{ after = \"5m\", to = { users = [\"U0BOB\"], groups = [\"S0LEADS\"], channel = \"C0ONCALL\" } }, { after = \"20m\" }]",
            )
            .replace("allow_superuser_admin = true\n", "allow_superuser_admin = true\nescalate = []\n");
        let policy = Policy::parse(&text, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        assert!(
            out.contains("    approvers asked: by DM only (notify = \"dm\")\n    escalation: after 5m: + U0BOB, group S0LEADS, post in C0ONCALL; after 20m: reminder\n"),
            "{out}"
        );
        assert!(
            out.contains("    escalation: none (no reminder)\n"),
            "{out}"
        );
        let plain = Policy::parse(POSTGRES, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &plain);
        assert!(
            out.contains(
                "    escalation: a reminder after 15m (the default: half the pending timeout)\n"
            ),
            "{out}"
        );
        assert!(!out.contains("approvers asked"), "{out}");
    }

    #[test]
    fn policy_check_shows_the_limits() {
        let policy = Policy::parse(POSTGRES, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        assert!(
            out.contains(
                "limits: 10 request(s) per requester per minute; at most 3 waiting for approval \
                 per requester (max_pending_per_user); teardown alert after 5 failure(s)\n"
            ),
            "{out}"
        );
        let set = format!("{POSTGRES}\n[limits]\nmax_pending_per_user = 7\n");
        let policy = Policy::parse(&set, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let out = summary(std::path::Path::new("jit.toml"), &policy);
        assert!(
            out.contains("at most 7 waiting for approval per requester"),
            "{out}"
        );
    }
}
