//! `jit demo`: the whole flow, locally, in a few seconds.
//!
//! It runs the real HTTP server, handlers, queue worker and providers on a temporary SQLite
//! database, with the example policy (`manifests/jit.toml`) adapted for a laptop: the `exec`
//! resource runs a harmless script, the `postgres` and `okta_group` resources are left out, and `aws_sts` is kept
//! only when `AWS_ENDPOINT_URL` points at a moto server. Slack is the built-in simulator, served
//! over HTTP; the demo plays the people, sending signed requests exactly as Slack would, and
//! prints what each of them sees. Time is simulated, so a one-hour grant takes no time at all.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Duration, Timelike, Utc};
use secrecy::SecretString;

use crate::app::{App, Settings};
use crate::bootstrap::{self, Parts};
use crate::clock::ManualClock;
use crate::crypto::Cipher;
use crate::domain::policy::{Policy, ProviderConfig};
use crate::providers::{Providers, aws_sts};
use crate::slack::driver::{self, SlackDriver};
use crate::slack::simulator::{FakeSlack, SlackEvent, render_blocks};
use crate::store::{self, Durability, Store, audit::Verification};

/// The demo's audit key (a throwaway database; printed so the kept database can be verified).
const DEMO_AUDIT_KEY_BYTE: u8 = 0x4a;
const DEMO_AUDIT_KEY_HEX: &str = "4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a";

/// The example policy shipped in `manifests/`.
pub const EXAMPLE_POLICY: &str = include_str!("../manifests/jit.toml");

const BOT_TOKEN: &str = "xoxb-demo";

/// The people and places of the demo, with the names printed for them.
const NAMES: &[(&str, &str)] = &[
    ("U0DANA", "@dana"),
    ("U0SAM", "@sam"),
    ("U0ALICE", "@alice"),
    ("U0SECLEAD", "@lee"),
    ("S0ENGINEERS", "@engineers"),
    ("S0SRE", "@sre"),
    ("S0ONCALL", "@oncall"),
    ("S0SECURITY", "@security"),
    ("S0DBA", "@dba"),
    ("C0APPROVALS", "#approvals"),
    ("C0AUDIT", "#jit-audit"),
    ("C0GENERAL", "#general"),
];
const DANA: &str = "U0DANA";
const SAM: &str = "U0SAM";
const ALICE: &str = "U0ALICE";
const GENERAL: &str = "C0GENERAL";

/// A harmless `exec` provider: prints a made-up token and does nothing else.
const DEMO_SCRIPT: &str = r#"#!/bin/sh
# jit demo provider: reads the request on stdin, grants nothing real.
input=$(cat)
case "$input" in
  *'"action":"revoke"'*) exit 0 ;;
esac
id=$(printf '%s' "$input" | sed -n 's/.*"request_id":\([0-9]*\).*/\1/p')
printf '{"handle":"demo-team-membership","credentials":{"GITHUB_TOKEN":"ghp_demo_%s_not_a_real_token"},"instructions":"You are in the admins team of the demo org until the grant ends."}\n' "$id"
"#;

pub struct DemoOptions {
    /// Leave the database behind for inspection.
    pub keep: bool,
    /// The simulated start time (default: now, to the minute).
    pub start: Option<DateTime<Utc>>,
}

/// Writes the demo's policy: the example, adapted to run locally.
fn demo_policy(script: &Path, aws_endpoint: Option<&str>) -> anyhow::Result<String> {
    let mut table: toml::Table = toml::from_str(EXAMPLE_POLICY).context("the example policy")?;
    let resources = table
        .get_mut("resource")
        .and_then(|r| r.as_array_mut())
        .context("the example policy has resources")?;
    resources.retain(|r| match r.get("provider").and_then(|p| p.as_str()) {
        Some("postgres") | Some("aws_identity_center") | Some("okta_group") => false,
        Some("aws_sts") => aws_endpoint.is_some(),
        _ => true,
    });
    for resource in resources.iter_mut() {
        let Some(r) = resource.as_table_mut() else {
            continue;
        };
        if r.get("provider").and_then(|p| p.as_str()) == Some("exec") {
            let argv = toml::Value::Array(vec![
                toml::Value::String("/bin/sh".into()),
                toml::Value::String(script.display().to_string()),
            ]);
            r.insert("grant_command".into(), argv.clone());
            r.insert("revoke_command".into(), argv);
        }
        r.remove("session_policy_file");
    }
    Ok(toml::to_string(&table)?)
}

/// Replaces Slack's markup with what a person would read.
pub fn humanize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &rest[start + 1..start + end];
        let shown = if let Some(id) = inner.strip_prefix('@') {
            name_of(id).unwrap_or_else(|| format!("@{id}"))
        } else if let Some(id) = inner.strip_prefix("!subteam^") {
            name_of(id).unwrap_or_else(|| format!("@{id}"))
        } else if let Some(id) = inner.strip_prefix('#') {
            name_of(id).unwrap_or_else(|| format!("#{id}"))
        } else if let Some(date) = inner.strip_prefix("!date^") {
            date.rsplit('|').next().unwrap_or(date).to_owned()
        } else {
            inner.rsplit('|').next().unwrap_or(inner).to_owned()
        };
        out.push_str(&shown);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn name_of(id: &str) -> Option<String> {
    NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| (*n).to_owned())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    │ {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Demo<'w> {
    app: Arc<App>,
    slack: FakeSlack,
    driver: SlackDriver,
    clock: ManualClock,
    out: &'w mut dyn Write,
    cursor: usize,
    step: usize,
}

impl Demo<'_> {
    fn say(&mut self, line: impl AsRef<str>) -> anyhow::Result<()> {
        writeln!(self.out, "{}", line.as_ref())?;
        Ok(())
    }

    fn step(&mut self, title: &str) -> anyhow::Result<()> {
        self.step += 1;
        let header = format!("── {}. {title} ", self.step);
        let pad = 78usize.saturating_sub(header.chars().count());
        self.say(format!("\n{header}{}", "─".repeat(pad)))
    }

    /// Runs the jobs that are due, then prints everything Slack now shows anyone.
    async fn settle(&mut self) -> anyhow::Result<()> {
        crate::handlers::jobs::run_due(&self.app).await?;
        let (events, cursor) = self.slack.events_since(self.cursor);
        self.cursor = cursor;
        for event in events {
            let (who, body) = match event {
                SlackEvent::Posted { message } => {
                    let place = self.place(&message.channel);
                    let kind = if message.thread_ts.is_some() {
                        "reply in a thread"
                    } else {
                        "new message"
                    };
                    (format!("{place}, {kind}"), message.rendered())
                }
                SlackEvent::Updated { message, .. } => {
                    let place = self.place(&message.channel);
                    (
                        format!("{place}, message updated in place"),
                        message.rendered(),
                    )
                }
                SlackEvent::Ephemeral { ephemeral } => (
                    format!(
                        "{} (only {} sees this)",
                        self.place(&ephemeral.channel),
                        humanize(&format!("<@{}>", ephemeral.user))
                    ),
                    ephemeral.rendered(),
                ),
                SlackEvent::ViewOpened { view } => (
                    "a modal opens (not kept in any history)".to_owned(),
                    render_blocks(&view.view),
                ),
                SlackEvent::ViewUpdated { view, .. } => {
                    ("the modal changes".to_owned(), render_blocks(&view))
                }
                SlackEvent::ViewPublished { user, view } => (
                    format!("{}'s App Home", humanize(&format!("<@{user}>"))),
                    render_blocks(&view),
                ),
            };
            self.say(format!("  ▸ {who}"))?;
            self.say(indent(&humanize(&body)))?;
        }
        Ok(())
    }

    fn place(&self, channel: &str) -> String {
        match self.slack.dm_owner(channel) {
            Some(user) => format!("DM to {}", humanize(&format!("<@{user}>"))),
            None => humanize(&format!("<#{channel}>")),
        }
    }

    async fn slash(&mut self, user: &str, text: &str) -> anyhow::Result<String> {
        self.say(format!(
            "  {} types: /jit {text}",
            humanize(&format!("<@{user}>"))
        ))?;
        let answer = self.driver.slash(user, GENERAL, text).await?;
        anyhow::ensure!(answer.status == 200, "jit answered {}", answer.status);
        let reply = answer.text();
        if !reply.is_empty() {
            self.say(format!(
                "  ▸ #general (only {} sees this)",
                humanize(&format!("<@{user}>"))
            ))?;
            self.say(indent(&humanize(&reply)))?;
        }
        self.settle().await?;
        Ok(reply)
    }

    async fn click(
        &mut self,
        user: &str,
        label: &str,
        action: &str,
        id: i64,
        channel: &str,
    ) -> anyhow::Result<()> {
        self.say(format!(
            "  {} clicks [{label}]",
            humanize(&format!("<@{user}>"))
        ))?;
        let payload = driver::click_payload(user, action, &id.to_string(), channel);
        let answer = self.driver.interaction(&payload).await?;
        anyhow::ensure!(answer.status == 200, "jit answered {}", answer.status);
        self.settle().await
    }

    async fn wait(&mut self, by: Duration, why: &str) -> anyhow::Result<()> {
        self.clock.advance(by);
        // The server refreshes group membership every five minutes; simulated time must too,
        // or the membership goes stale and grants nothing.
        self.app
            .directory
            .refresh_all(&crate::slack::directory::groups_in(&self.app.policy))
            .await;
        let minutes = by.num_minutes();
        self.say(format!("  ⏩ {minutes} minutes later{why}"))?;
        self.settle().await
    }
}

fn request_number(reply: &str) -> anyhow::Result<i64> {
    let start = reply.find('#').context("a request number in the reply")?;
    let digits: String = reply[start + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

pub async fn run(options: DemoOptions, out: &mut dyn Write) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new().prefix("jit-demo-").tempdir()?;
    let script = dir.path().join("demo-provider.sh");
    std::fs::write(&script, DEMO_SCRIPT)?;
    let aws_endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let policy_text = demo_policy(&script, aws_endpoint.as_deref())?;
    let policy = Policy::parse(&policy_text, &|p: &str| {
        std::fs::read_to_string(dir.path().join(p))
    })
    .map_err(|e| anyhow::anyhow!("the demo policy: {e}"))?;

    let slack = FakeSlack::start(BOT_TOKEN).await?;
    for (id, name) in NAMES.iter().filter(|(id, _)| id.starts_with('U')) {
        slack.set_user(id, &name[1..], Some(&format!("{}@example.com", &name[1..])));
    }
    slack.set_group_members("S0ENGINEERS", &[DANA]);
    slack.set_group_members("S0SRE", &[SAM]);
    slack.set_group_members("S0ONCALL", &[]);
    slack.set_group_members("S0SECURITY", &[]);
    slack.set_group_members("S0DBA", &[]);

    let db_path = dir.path().join("jit.db");
    let database_url = format!("sqlite://{}", db_path.display());
    let store = Store::connect(&database_url, Durability::Normal).await?;
    store.migrate().await?;
    // The demo's throwaway database: a fixed audit key keeps its transcript (the hashes in the
    // audit thread) the same from run to run.
    let audit_key = crate::crypto::AuditKey::from_bytes([DEMO_AUDIT_KEY_BYTE; 32]);
    store
        .open_audit_chain(audit_key.clone(), Utc::now())
        .await?;
    let start = options.start.unwrap_or_else(|| {
        Utc::now()
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or_else(Utc::now)
    });
    let clock = ManualClock::new(start);
    let mut providers = Providers::build(
        policy.resources(),
        Some(dir.path()),
        aws_endpoint.as_deref(),
    )
    .await?;
    if let Some(endpoint) = aws_endpoint.as_deref() {
        prepare_moto(endpoint, &policy, &mut providers).await?;
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let signing = SecretString::from(hex::encode(secret));
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let app = bootstrap::build(Parts {
        policy,
        store,
        clock: Arc::new(clock.clone()),
        slack_api_url: slack.api_url(),
        bot_token: SecretString::from(BOT_TOKEN),
        signing_secrets: vec![signing.clone()],
        cipher: Cipher::from_bytes(&key),
        providers,
        settings: Settings::default(),
        posts_per_channel_per_second: std::num::NonZeroU32::new(1000).expect("positive"),
        webhooks: None,
        pagerduty: None,
    })?;
    app.directory
        .refresh_all(&crate::slack::directory::groups_in(&app.policy))
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = crate::server::router(app.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let driver = SlackDriver::new(&url, signing, Arc::new(clock.clone()));

    let mut demo = Demo {
        app: app.clone(),
        slack,
        driver,
        clock,
        out,
        cursor: 0,
        step: 0,
    };
    demo.say("jit demo: the whole flow on a laptop.")?;
    demo.say(format!(
        "The real jit server, worker and providers run on a temporary SQLite database, with the example\npolicy (manifests/jit.toml) adapted to run locally: {} resource(s), {}.",
        app.policy.resources().len(),
        app.policy
            .resources()
            .iter()
            .map(|r| format!("{} ({})", r.id, r.provider.kind()))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    demo.say(
        "Slack is simulated over HTTP; every click below is a signed request, as Slack sends it.",
    )?;
    if aws_endpoint.is_none() {
        demo.say("(Set AWS_ENDPOINT_URL to a moto server to add a real STS grant.)")?;
    }
    demo.say("People: @dana (engineer), @sam (SRE, approves github-admin), @alice (approves AWS), @lee (security admin).")?;

    demo.step("Dana asks for admin on GitHub without a ticket: the resource requires one")?;
    demo.slash(DANA, "request github-admin 1h rotate the deploy keys")
        .await?;

    demo.step("With the incident in the justification, the ticket is picked up and linked")?;
    let reply = demo
        .slash(
            DANA,
            "request github-admin 1h rotate the deploy keys (INC-4242)",
        )
        .await?;
    let first = request_number(&reply)?;

    demo.step("Dana cannot approve her own request")?;
    demo.click(DANA, "Approve", "jit.approve", first, "C0APPROVALS")
        .await?;

    demo.step("Sam approves; the script grants access; Dana gets a DM")?;
    demo.click(SAM, "Approve", "jit.approve", first, "C0APPROVALS")
        .await?;

    demo.step("Dana reveals the credentials (a modal, only for her; audited)")?;
    let dm = demo.slack.dm_channel_for(DANA);
    demo.click(DANA, "Reveal credentials", "jit.reveal", first, &dm)
        .await?;

    if aws_endpoint.is_some() {
        demo.step(
            "AWS: a real STS session from moto, released early (only this session is denied)",
        )?;
        let reply = demo
            .slash(
                DANA,
                "request aws-prod-readonly 1h read the CloudTrail logs",
            )
            .await?;
        let third = request_number(&reply)?;
        demo.click(ALICE, "Approve", "jit.approve", third, "C0APPROVALS")
            .await?;
        demo.click(DANA, "Release now", "jit.release", third, &dm)
            .await?;
    }

    demo.step("Ten minutes before the end, a reminder")?;
    demo.wait(Duration::minutes(50), "").await?;

    demo.step("At expiry, jit removes the access by itself")?;
    demo.wait(Duration::minutes(10), "").await?;

    demo.step("Low risk: staging is approved by policy, and released early")?;
    let reply = demo
        .slash(DANA, "request staging-shell 2h check the canary")
        .await?;
    let second = request_number(&reply)?;
    demo.wait(Duration::minutes(5), "").await?;
    demo.slash(DANA, &format!("release {second}")).await?;

    demo.step("A maintenance window: Dana asks now for access that starts in two hours")?;
    // Two hours from now, on the hour's minute as a person would type it (the demo's people
    // are in UTC, so `at HH:MM` is that time today, or tomorrow if it has passed).
    let start = crate::clock::Clock::now(&demo.clock) + Duration::hours(2);
    let reply = demo
        .slash(
            DANA,
            &format!(
                "request github-admin 1h at {} switch the default branch in the window (INC-4300)",
                start.format("%H:%M")
            ),
        )
        .await?;
    let scheduled = request_number(&reply)?;
    demo.step("Sam approves ahead of time: approved, nothing issued yet")?;
    demo.click(SAM, "Approve", "jit.approve", scheduled, "C0APPROVALS")
        .await?;
    demo.step(
        "At the start the policy is checked again and access is issued, for 1 hour from then",
    )?;
    let until_start = start - crate::clock::Clock::now(&demo.clock);
    demo.wait(until_start, " (the scheduled start)").await?;
    demo.step("An hour after the start (not after the approval), the access is removed")?;
    demo.wait(Duration::hours(1), "").await?;

    demo.step("The audit thread of the first request, in #jit-audit")?;
    let root = demo
        .slack
        .messages("C0AUDIT")
        .into_iter()
        .find(|m| m.text == format!("Audit thread for request #{first}"))
        .context("the audit thread")?;
    demo.say(indent(&humanize(&root.rendered())))?;
    for reply in demo.slack.thread("C0AUDIT", &root.ts) {
        demo.say(indent(&format!(
            "↳ {}",
            humanize(&reply.rendered()).replace('\n', "\n  ")
        )))?;
    }

    demo.step("jit audit verify")?;
    let mut conn = app.store.read().await?;
    let verdict = store::audit::verify(&mut conn, &audit_key).await?;
    drop(conn);
    let intact = matches!(verdict, Verification::Intact { .. });
    match verdict {
        Verification::Intact { rows, .. } => demo.say(format!(
            "  audit log intact: {rows} events, hash chain verified"
        ))?,
        Verification::Broken { seq, reason, .. } => {
            demo.say(format!("  audit log TAMPERED: row {seq}: {reason}"))?
        }
    }

    server.abort();
    app.store.close().await;
    let elapsed = started.elapsed();
    let out = demo.out;
    writeln!(out, "\nDone in {:.1} s.", elapsed.as_secs_f64())?;
    if options.keep {
        let kept = dir.keep();
        writeln!(
            out,
            "The database is kept at {}/jit.db; try: JIT_DATABASE_URL=sqlite://{}/jit.db jit audit export (and `jit audit verify` with JIT_AUDIT_KEY={DEMO_AUDIT_KEY_HEX}, the demo's own key)",
            kept.display(),
            kept.display()
        )?;
    }
    Ok(intact)
}

/// With moto: create the example's role there, so AssumeRole and the early revoke work.
async fn prepare_moto(
    endpoint: &str,
    policy: &Policy,
    providers: &mut Providers,
) -> anyhow::Result<()> {
    let sdk = aws_sts::aws_config_loader(Some(endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "jit-demo",
        ))
        .load()
        .await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    for resource in policy.resources() {
        if let ProviderConfig::AwsSts(config) = &resource.provider {
            let name = aws_sts::role_name(&config.role_arn).map_err(|e| anyhow::anyhow!("{e}"))?;
            let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
            let _ = iam
                .create_role()
                .role_name(name)
                .assume_role_policy_document(trust)
                .send()
                .await;
            providers.insert(
                &resource.id,
                Arc::new(aws_sts::AwsStsProvider::new(
                    resource.id.clone(),
                    config.clone(),
                    &sdk,
                )),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_turns_markup_into_names() {
        assert_eq!(
            humanize(
                "<@U0DANA> asks <!subteam^S0SRE> in <#C0APPROVALS> at <!date^1^{time}|14:03 UTC> &lt;x&gt;"
            ),
            "@dana asks @sre in #approvals at 14:03 UTC <x>"
        );
    }

    #[test]
    fn the_demo_policy_is_the_example_adapted() {
        let policy = demo_policy(Path::new("/tmp/x.sh"), None).unwrap();
        let policy =
            Policy::parse(&policy, &|_: &str| Err(std::io::Error::other("no files"))).unwrap();
        let ids: Vec<&str> = policy.resources().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["github-admin", "staging-shell"]);
    }
}
