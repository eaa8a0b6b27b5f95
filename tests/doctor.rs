//! `jit doctor` as operators run it: the real binary, configured like `jit serve`, against the
//! Slack simulator, a SQLite file, PostgreSQL (`JIT_TEST_POSTGRES_URL`) and moto
//! (`JIT_TEST_AWS_ENDPOINT`). A set-up that is right passes with exit status 0 and changes
//! nothing; each failure the issue names is made to happen once, and must turn its own line (and
//! no other) to FAIL and the exit status to 1.
//!
//! moto has no policy simulator and accepts any credentials, so the AWS failures it cannot
//! produce (a simulator that denies `sts:AssumeRole` or `iam:PutRolePolicy`, a refused
//! `iam:GetRolePolicy`, credentials AWS rejects) go through [`AwsProxy`], a stand-in in front of
//! moto that answers those calls as AWS does and passes the rest on.
//!
//! Without `JIT_TEST_POSTGRES_URL` or `JIT_TEST_AWS_ENDPOINT` the checks that need them say so
//! and are left out; set but unreachable, the tests fail.

#[path = "support/db.rs"]
mod db;
#[path = "support/fake_okta.rs"]
mod fake_okta;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use jit::crypto::Cipher;
use jit::slack::simulator::{ChannelState, FakeSlack, TEAM_ID};
use jit::store::{self, Durability, Store};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

const TOKEN: &str = "xoxb-doctor-test";
const ACCOUNT: &str = "123456789012";

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"], groups = ["S0SECURITY"] }

[[resource]]
id = "staging"
provider = "none"
requesters = { groups = ["S0ENGINEERS"], identities = ["ci"] }
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"], groups = ["S0SRE"] }

[[resource]]
id = "github-admin"
provider = "exec"
grant_command = ["./scripts/grant.sh", "add"]
revoke_command = ["./scripts/revoke.sh", "remove"]
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }

[[identity]]
name = "ci"
owner = { users = ["U0ALICE"] }
resources = ["staging"]
"#;

fn postgres_url() -> Option<String> {
    let url = std::env::var("JIT_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!(
            "JIT_TEST_POSTGRES_URL is unset: jit doctor's check of a reachable PostgreSQL admin is not exercised"
        );
    }
    url
}

fn aws_endpoint() -> Option<String> {
    let Ok(url) = std::env::var("JIT_TEST_AWS_ENDPOINT") else {
        eprintln!("JIT_TEST_AWS_ENDPOINT is unset: jit doctor's aws_sts checks are not exercised");
        return None;
    };
    let parsed = url::Url::parse(&url)
        .unwrap_or_else(|e| panic!("JIT_TEST_AWS_ENDPOINT `{url}` is not a URL: {e}"));
    let addr = (
        parsed.host_str().expect("a host"),
        parsed.port_or_known_default().expect("a port"),
    )
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("JIT_TEST_AWS_ENDPOINT `{url}` does not resolve"));
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("JIT_TEST_AWS_ENDPOINT is set to `{url}` but nothing answers there ({e})")
    });
    Some(url)
}

fn unique() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A CREATEROLE admin (not a superuser) and a role it grants, made with the test superuser.
struct Postgres {
    superuser_url: String,
    admin_url: String,
    admin: String,
    role: String,
}

impl Postgres {
    async fn create(superuser_url: &str) -> Postgres {
        let id = unique();
        let admin = format!("jit_doctor_admin_{id}");
        let role = format!("jit_doctor_app_{id}");
        let pool = sqlx::PgPool::connect(superuser_url)
            .await
            .unwrap_or_else(|e| {
                panic!("JIT_TEST_POSTGRES_URL is set but the server cannot be reached: {e}")
            });
        for sql in [
            format!("CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD 'doctor-{id}'"),
            format!("GRANT pg_signal_backend TO {admin}"),
            format!("CREATE ROLE {role} NOLOGIN"),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        pool.close().await;
        let mut url = url::Url::parse(superuser_url).unwrap();
        url.set_username(&admin).unwrap();
        url.set_password(Some(&format!("doctor-{id}"))).unwrap();
        Postgres {
            superuser_url: superuser_url.to_owned(),
            admin_url: url.to_string(),
            admin,
            role,
        }
    }

    async fn drop_roles(&self) {
        let pool = sqlx::PgPool::connect(&self.superuser_url).await.unwrap();
        for sql in [
            format!("DROP ROLE IF EXISTS {}", self.role),
            format!("DROP ROLE IF EXISTS {}", self.admin),
        ] {
            let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await;
        }
        pool.close().await;
    }
}

/// An IAM user whose keys jit runs with, and a role it may assume, in moto.
struct Aws {
    endpoint: String,
    access_key: String,
    secret_key: String,
    role: String,
    role_arn: String,
}

impl Aws {
    async fn create(endpoint: &str) -> Aws {
        let sdk = jit::providers::aws_sts::aws_config_loader(Some(endpoint), Some("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "jit-tests",
            ))
            .load()
            .await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let id = unique();
        let user = format!("jit-doctor-{id}");
        iam.create_user().user_name(&user).send().await.unwrap();
        let key = iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .unwrap();
        let key = key.access_key().unwrap();
        let role = format!("jit-doctor-role-{id}");
        let trust = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/{user}")},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
            }]
        });
        let out = iam
            .create_role()
            .role_name(&role)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .expect("CreateRole in moto");
        Aws {
            endpoint: endpoint.to_owned(),
            access_key: key.access_key_id().to_owned(),
            secret_key: key.secret_access_key().to_owned(),
            role_arn: out.role().unwrap().arn().to_owned(),
            role,
        }
    }

    async fn inline_policies(&self) -> Vec<String> {
        let sdk =
            jit::providers::aws_sts::aws_config_loader(Some(&self.endpoint), Some("us-east-1"))
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing",
                    "testing",
                    None,
                    None,
                    "jit-tests",
                ))
                .load()
                .await;
        aws_sdk_iam::Client::new(&sdk)
            .list_role_policies()
            .role_name(&self.role)
            .send()
            .await
            .unwrap()
            .policy_names()
            .to_vec()
    }
}

/// A set-up that is right: Slack, the policy, the exec scripts, a database with a stored
/// credential and audit events, and PostgreSQL and AWS when they are given.
struct Setup {
    slack: FakeSlack,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    postgres: Option<Postgres>,
    aws: Option<Aws>,
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The lines of check `name` (a check may have several).
    fn lines(&self, name: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| {
                l.get(6..)
                    .and_then(|rest| rest.strip_prefix(name))
                    .is_some_and(|rest| rest.starts_with(": "))
            })
            .collect()
    }

    fn line(&self, name: &str) -> &str {
        let lines = self.lines(name);
        assert_eq!(
            lines.len(),
            1,
            "one `{name}` line expected in\n{}",
            self.stdout
        );
        lines[0]
    }

    fn failing(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .collect()
    }

    fn passes(&self) {
        assert!(
            self.failing().is_empty() && self.code == Some(0),
            "jit doctor should pass:\n{}{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stdout.ends_with(": jit is set up right\n"),
            "{}",
            self.stdout
        );
    }

    /// Exit status 1, a FAIL line for each of `names`, and no other FAIL line.
    fn fails_only(&self, names: &[&str]) {
        assert_eq!(self.code, Some(1), "{}{}", self.stdout, self.stderr);
        for line in self.failing() {
            assert!(
                names
                    .iter()
                    .any(|n| line[6..].starts_with(&format!("{n}: "))),
                "unexpected failure `{line}` in\n{}",
                self.stdout
            );
        }
        for name in names {
            assert!(
                self.lines(name).iter().any(|l| l.starts_with("FAIL ")),
                "`{name}` should fail in\n{}",
                self.stdout
            );
        }
        assert!(
            self.stdout.ends_with(": jit is NOT set up right\n"),
            "{}",
            self.stdout
        );
    }
}

impl Setup {
    async fn new() -> Setup {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let slack = FakeSlack::start(TOKEN).await.unwrap();
        for (id, name) in [("U0SECLEAD", "sec"), ("U0ALICE", "alice"), ("U0BOB", "bob")] {
            slack.set_user(id, name, Some(&format!("{name}@example.com")));
        }
        slack.set_group_members("S0SECURITY", &["U0SECLEAD"]);
        slack.set_group_members("S0ENGINEERS", &["U0DEV"]);
        slack.set_group_members("S0SRE", &["U0ALICE"]);
        slack.set_channel("C0AUDIT", "jit-audit", false);
        slack.set_channel("C0APPROVALS", "approvals", false);
        slack.set_channel("C0DBA", "dba", true);

        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        for script in ["grant.sh", "revoke.sh"] {
            let path = scripts.join(script);
            std::fs::write(&path, "#!/bin/sh\necho '{}'\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let key = jit::crypto::generate_key();
        let db = dir.path().join("jit.db");
        let mut env: Vec<(String, String)> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("SLACK_SIGNING_SECRET", "doctor-test-signing-secret".into()),
            ("SLACK_BOT_TOKEN", TOKEN.into()),
            ("JIT_ENCRYPTION_KEY", key.clone()),
            ("JIT_SLACK_API_URL", slack.api_url()),
            ("JIT_SLACK_TEAM_ID", TEAM_ID.into()),
            ("JIT_DATABASE_URL", format!("sqlite://{}", db.display())),
            (
                "JIT_POLICY",
                dir.path().join("jit.toml").display().to_string(),
            ),
            ("USER", "opsperson".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

        let postgres = match postgres_url() {
            Some(url) => Some(Postgres::create(&url).await),
            None => None,
        };
        let aws = match aws_endpoint() {
            Some(endpoint) => Some(Aws::create(&endpoint).await),
            None => None,
        };
        if let Some(pg) = &postgres {
            env.push(("DOCTOR_PG_URL".into(), pg.admin_url.clone()));
        }
        if let Some(aws) = &aws {
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", aws.access_key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", aws.secret_key.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ENDPOINT_URL", aws.endpoint.as_str()),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ] {
                env.push((k.into(), v.into()));
            }
        }
        let setup = Setup {
            slack,
            dir,
            env,
            postgres,
            aws,
        };
        setup.write_policy(&setup.default_policy());
        setup.store_a_credential(&key).await;
        // Audit events written the way jit writes them.
        let created = setup.jit(&["identity", "token", "create", "ci"]).await;
        assert_eq!(created.code, Some(0), "{}", created.stderr);
        setup
    }

    fn default_policy(&self) -> String {
        let mut policy = POLICY.to_owned();
        if let Some(pg) = &self.postgres {
            policy.push_str(&format!(
                r#"
[[resource]]
id = "pg"
provider = "postgres"
database_url_env = "DOCTOR_PG_URL"
roles = ["{}"]
approvers = {{ channel = "C0DBA", users = ["U0BOB"] }}
"#,
                pg.role
            ));
        }
        if let Some(aws) = &self.aws {
            policy.push_str(&format!(
                r#"
[[resource]]
id = "aws-prod"
provider = "aws_sts"
role_arn = "{}"
max_duration = "1h"
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
"#,
                aws.role_arn
            ));
        }
        policy
    }

    fn write_policy(&self, policy: &str) {
        std::fs::write(self.dir.path().join("jit.toml"), policy).unwrap();
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("jit.db")
    }

    async fn open_url(&self, url: &str) -> Store {
        let store = Store::connect(url, Durability::Full).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// A request with sealed credentials, as a grant leaves them.
    async fn store_a_credential(&self, key: &str) {
        let url = format!("sqlite://{}", self.db_path().display());
        self.store_a_credential_in(&url, key).await;
    }

    /// The same in the database at `url`.
    async fn store_a_credential_in(&self, url: &str, key: &str) {
        let store = self.open_url(url).await;
        let cipher = Cipher::from_base64_or_hex(&SecretString::from(key)).unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let requester = jit::domain::policy::Requester::User(
            jit::domain::ids::SlackUserId::parse("U0ALICE").unwrap(),
        );
        let resource = jit::domain::ids::ResourceId::parse("github-admin").unwrap();
        let now = chrono::Utc::now();
        let id = store::requests::insert(
            &mut tx,
            &store::requests::NewRequest {
                kind: jit::domain::request::Kind::Access,
                parent: None,
                requester: &requester,
                resource: &resource,
                duration: jit::domain::duration::GrantDuration::parse("1h").unwrap(),
                justification: "doctor test",
                ticket: None,
                approvals_required: 1,
                created_at: now,
                pending_until: None,
                origin_channel: None,
            },
        )
        .await
        .unwrap();
        let secret = SecretString::from(r#"{"TOKEN":"doctor-test-credential"}"#);
        let sealed = cipher.seal_secret(&secret, &store::credentials::aad(id));
        store::credentials::put(&mut tx, id, &sealed, now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        store.close().await;
    }

    async fn jit(&self, args: &[&str]) -> Outcome {
        self.jit_with(args, &[]).await
    }

    async fn jit_with(&self, args: &[&str], overrides: &[(&str, &str)]) -> Outcome {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.retain(|(name, _)| name != k);
            env.push(((*k).into(), (*v).into()));
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(args)
            .env_clear()
            .envs(env)
            .output()
            .await
            .unwrap();
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn doctor(&self) -> Outcome {
        self.doctor_with(&[]).await
    }

    async fn doctor_with(&self, overrides: &[(&str, &str)]) -> Outcome {
        self.jit_with(&["doctor"], overrides).await
    }

    async fn finish(self) {
        if let Some(pg) = &self.postgres {
            pg.drop_roles().await;
        }
    }
}

fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[tokio::test]
async fn a_set_up_that_is_right_passes_and_nothing_is_changed() {
    let setup = Setup::new().await;
    let db = setup.db_path();
    let before = file_bytes(&db);
    let calls_before = setup.slack.calls().len();

    let out = setup.doctor().await;
    println!("{}", out.stdout);
    out.passes();
    for (name, expected) in [
        (
            "config",
            "ok    config: the settings jit serve reads are valid",
        ),
        ("policy", "is valid: "),
        (
            "slack token",
            "ok    slack token: valid: bot @jit (U0JITBOT) of workspace \"jit simulator\" (T0JITSIM), the workspace JIT_SLACK_TEAM_ID names",
        ),
        (
            "slack scopes",
            "ok    slack scopes: the bot token has every scope of slack-app.yaml (11)",
        ),
        (
            "slack channel C0AUDIT",
            "ok    slack channel C0AUDIT: the bot is a member of channel #jit-audit (the audit channel)",
        ),
        (
            "slack channel C0APPROVALS",
            "ok    slack channel C0APPROVALS: the bot is a member of channel #approvals (approvers' channel of staging, approvers' channel of github-admin",
        ),
        ("slack users", "ok    slack users: "),
        (
            "slack groups",
            "ok    slack groups: 3 user group(s) of the policy exist: S0ENGINEERS, S0SECURITY, S0SRE",
        ),
        (
            "resource github-admin",
            "ok    resource github-admin: exec: the grant and revoke commands exist and are executable (`./scripts/grant.sh`, `./scripts/revoke.sh`",
        ),
        ("database", "opens read-only; its schema is this jit's"),
        (
            "encryption key",
            "ok    encryption key: JIT_ENCRYPTION_KEY opens the newest stored credentials (request #1)",
        ),
        (
            "audit log",
            "ok    audit log: intact: 1 event, hash chain verified (head 1:",
        ),
    ] {
        let line = out.line(name);
        assert!(
            line.contains(expected),
            "{line:?} should contain {expected:?}"
        );
    }
    assert!(
        out.line("slack users")
            .contains("U0ALICE, U0BOB, U0SECLEAD")
            || setup.postgres.is_none()
    );
    if setup.postgres.is_some() {
        let line = out.line("resource pg");
        assert!(
            line.starts_with("ok    resource pg: postgres (PostgreSQL "),
            "{line}"
        );
        assert!(
            line.contains(
                "can CREATE ROLE, end sessions (pg_signal_backend) and grant jit_doctor_app_"
            ),
            "{line}"
        );
        assert!(
            out.line("slack channel C0DBA")
                .contains("member of private channel #dba")
        );
    }
    if let Some(aws) = &setup.aws {
        assert!(
            out.line("aws identity").contains(&format!(
                "jit's AWS credentials work: arn:aws:iam::{ACCOUNT}:user/jit-doctor-"
            )),
            "{}",
            out.stdout
        );
        let lines = out.lines("resource aws-prod");
        assert_eq!(lines.len(), 3, "{}", out.stdout);
        assert!(lines[0].starts_with(&format!("ok    resource aws-prod: aws_sts: role {} exists; MaxSessionDuration 3600s covers role_max_session 1h; its trust policy allows sts:AssumeRole, sts:SetSourceIdentity and sts:TagSession", aws.role)), "{}", lines[0]);
        assert!(
            lines[1].contains("iam:GetRolePolicy works on"),
            "{}",
            lines[1]
        );
        // moto has no policy simulator: the rights are said to be unverified, not pretended.
        assert!(
            lines[2].starts_with("skip  resource aws-prod: aws_sts: rights not verified (sts:AssumeRole, sts:SetSourceIdentity, sts:TagSession, iam:GetRolePolicy, iam:PutRolePolicy, iam:DeleteRolePolicy): the IAM endpoint did not simulate the policies (HTTP 500"),
            "{}",
            lines[2]
        );
        assert!(
            aws.inline_policies().await.is_empty(),
            "doctor wrote to the role"
        );
    }

    // Read-only: Slack saw read methods only, and the database file is as it was.
    let methods: Vec<String> = setup.slack.calls()[calls_before..]
        .iter()
        .map(|c| c.method.clone())
        .collect();
    assert!(!methods.is_empty());
    for method in &methods {
        assert!(
            [
                "auth.test",
                "conversations.info",
                "users.info",
                "usergroups.users.list"
            ]
            .contains(&method.as_str()),
            "doctor called {method}"
        );
    }
    assert_eq!(file_bytes(&db), before, "doctor changed the database");
    assert!(!PathBuf::from(format!("{}.lock", db.display())).exists());
    assert!(!out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN));
    assert!(!out.stdout.contains("doctor-test-credential"));
    setup.finish().await;
}

#[tokio::test]
async fn json_output_has_every_check() {
    let setup = Setup::new().await;
    setup
        .slack
        .set_channel_state("C0AUDIT", ChannelState::Archived);
    let out = setup.jit(&["doctor", "--json"]).await;
    assert_eq!(out.code, Some(1));
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(report["ok"], false);
    assert_eq!(report["summary"]["failed"], 1);
    let checks = report["checks"].as_array().unwrap();
    let audit = checks
        .iter()
        .find(|c| c["check"] == "slack channel C0AUDIT")
        .unwrap();
    assert_eq!(audit["status"], "fail");
    assert!(audit["message"].as_str().unwrap().contains("is archived"));
    assert_eq!(
        audit["fix"],
        "unarchive it, or name another channel in the policy"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "audit log" && c["status"] == "ok")
    );
    setup.finish().await;
}

#[tokio::test]
async fn without_the_doctor_scopes_channels_are_skipped_not_failed() {
    let setup = Setup::new().await;
    let serve_only: Vec<&str> = jit::slack::api::SCOPES
        .iter()
        .filter(|s| !s.doctor_only)
        .map(|s| s.name)
        .collect();
    setup.slack.set_scopes(&serve_only);
    let out = setup.doctor_with(&[("JIT_SLACK_TEAM_ID", "")]).await;
    // An empty JIT_SLACK_TEAM_ID is refused like any malformed setting.
    assert_eq!(out.code, Some(1));
    assert!(
        out.line("config")
            .starts_with("FAIL  config: JIT_SLACK_TEAM_ID must be a Slack team id"),
        "{}",
        out.stdout
    );

    let mut env = setup.env.clone();
    env.retain(|(k, _)| k != "JIT_SLACK_TEAM_ID");
    let unset = Setup { env, ..setup };
    let out = unset.doctor().await;
    out.passes();
    assert!(out.line("slack token").starts_with("warn  slack token: valid: bot @jit (U0JITBOT) of workspace \"jit simulator\" (T0JITSIM); JIT_SLACK_TEAM_ID is not set. Fix: set JIT_SLACK_TEAM_ID=T0JITSIM"), "{}", out.stdout);
    assert!(
        out.line("slack scopes").starts_with(
            "warn  slack scopes: jit serve has every scope it needs; jit doctor lacks channels:read"
        ),
        "{}",
        out.stdout
    );
    let line = out.line("slack channel C0APPROVALS");
    assert!(
        line.starts_with(
            "skip  slack channel C0APPROVALS: cannot check whether the bot is in C0APPROVALS"
        ),
        "{line}"
    );
    unset.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Each failure, once.

#[tokio::test]
async fn a_refused_bot_token_fails() {
    let setup = Setup::new().await;
    let out = setup
        .doctor_with(&[("SLACK_BOT_TOKEN", "xoxb-not-the-token")])
        .await;
    out.fails_only(&["slack token"]);
    assert!(out.line("slack token").starts_with("FAIL  slack token: Slack refuses SLACK_BOT_TOKEN (invalid_auth). Fix: copy the Bot User OAuth Token"), "{}", out.stdout);
    assert!(
        out.line("slack")
            .starts_with("skip  slack: scopes, channels, users and groups not checked")
    );
    assert!(!out.stdout.contains("xoxb-not-the-token"));
    setup.finish().await;
}

#[tokio::test]
async fn a_token_of_another_workspace_fails() {
    let setup = Setup::new().await;
    let out = setup
        .doctor_with(&[("JIT_SLACK_TEAM_ID", "T0ELSEWHERE")])
        .await;
    out.fails_only(&["slack token"]);
    assert!(out.line("slack token").contains("belongs to workspace \"jit simulator\" (T0JITSIM), not to the configured workspace T0ELSEWHERE (JIT_SLACK_TEAM_ID)"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
async fn a_channel_without_the_bot_fails() {
    let setup = Setup::new().await;
    setup
        .slack
        .set_channel_state("C0APPROVALS", ChannelState::NotInChannel);
    let out = setup.doctor().await;
    out.fails_only(&["slack channel C0APPROVALS"]);
    assert!(out.line("slack channel C0APPROVALS").contains("the bot is not a member of channel #approvals (approvers' channel of staging, approvers' channel of github-admin"), "{}", out.stdout);
    assert!(
        out.line("slack channel C0APPROVALS")
            .ends_with("Fix: type /invite @jit in #approvals")
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_private_channel_without_the_bot_fails() {
    let setup = Setup::new().await;
    setup.slack.set_channel("C0AUDIT", "jit-audit", true);
    setup
        .slack
        .set_channel_state("C0AUDIT", ChannelState::NotInChannel);
    let out = setup.doctor().await;
    out.fails_only(&["slack channel C0AUDIT"]);
    assert!(out.line("slack channel C0AUDIT").contains("channel C0AUDIT (the audit channel) was not found: it does not exist, or it is private and the bot was not invited"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
async fn a_missing_scope_fails() {
    let setup = Setup::new().await;
    let without_email: Vec<&str> = jit::slack::api::SCOPES
        .iter()
        .map(|s| s.name)
        .filter(|s| *s != "users:read.email")
        .collect();
    setup.slack.set_scopes(&without_email);
    let out = setup.doctor().await;
    out.fails_only(&["slack scopes"]);
    assert!(out.line("slack scopes").starts_with("FAIL  slack scopes: the bot token lacks users:read.email (requesters' emails, the AWS SourceIdentity of a grant)"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
async fn an_unknown_user_fails() {
    let setup = Setup::new().await;
    setup.write_policy(&setup.default_policy().replace(
        r#"owner = { users = ["U0ALICE"] }"#,
        r#"owner = { users = ["U0ALICE", "U0GHOST"] }"#,
    ));
    let out = setup.doctor().await;
    out.fails_only(&["slack user U0GHOST"]);
    assert!(out.line("slack user U0GHOST").starts_with("FAIL  slack user U0GHOST: user U0GHOST (owner of identity ci) does not exist in this workspace (user_not_found). Fix: correct the id in the policy"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
async fn escalation_steps_are_checked_like_approvers() {
    let setup = Setup::new().await;
    setup
        .slack
        .set_channel_state("C0ONCALL", ChannelState::NotInChannel);
    setup.write_policy(&setup.default_policy().replace(
        r#"approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }"#,
        r#"approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
escalate = [{ after = "10m", to = { users = ["U0GHOST"], channel = "C0ONCALL" } }]"#,
    ));
    let out = setup.doctor().await;
    out.fails_only(&["slack channel C0ONCALL", "slack user U0GHOST"]);
    assert!(
        out.line("slack user U0GHOST").starts_with(
            "FAIL  slack user U0GHOST: user U0GHOST (approver of github-admin from escalation step 1, "
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.line("slack channel C0ONCALL")
            .contains("escalation step 1 of github-admin"),
        "{}",
        out.stdout
    );
    setup.finish().await;
}

#[tokio::test]
async fn an_unknown_group_fails() {
    let setup = Setup::new().await;
    setup.write_policy(
        &setup
            .default_policy()
            .replace(r#"groups = ["S0SRE"]"#, r#"groups = ["S0SRE", "S0GHOSTS"]"#),
    );
    let out = setup.doctor().await;
    out.fails_only(&["slack group S0GHOSTS"]);
    assert!(out.line("slack group S0GHOSTS").starts_with("FAIL  slack group S0GHOSTS: user group S0GHOSTS (approver of staging) does not exist in this workspace (no_such_subteam)"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_superuser_postgres_admin_fails() {
    let setup = Setup::new().await;
    let Some(pg) = &setup.postgres else {
        panic!(
            "JIT_TEST_POSTGRES_URL was set when this test was built but is unset now (the superuser-admin failure is not exercised)"
        );
    };
    let out = setup
        .doctor_with(&[("DOCTOR_PG_URL", &pg.superuser_url.clone())])
        .await;
    out.fails_only(&["resource pg"]);
    let line = out.line("resource pg");
    assert!(
        line.contains("is a SUPERUSER: grants are refused. Use a CREATEROLE admin"),
        "{line}"
    );
    assert!(
        !line.contains(&pg.superuser_url),
        "no URL in the output: {line}"
    );
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_postgres_admin_without_createrole_fails() {
    let setup = Setup::new().await;
    let Some(pg) = &setup.postgres else {
        panic!(
            "JIT_TEST_POSTGRES_URL was set when this test was built but is unset now (the admin-without-CREATEROLE failure is not exercised)"
        );
    };
    // A throwaway login role with everything the admin needs but CREATEROLE.
    let weak = format!("jit_doctor_weak_{}", unique());
    let password = format!("weak-{}", unique());
    let pool = sqlx::PgPool::connect(&pg.superuser_url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {weak} LOGIN NOCREATEROLE NOSUPERUSER PASSWORD '{password}'"),
        format!("GRANT pg_signal_backend TO {weak}"),
        format!("GRANT {} TO {weak} WITH ADMIN OPTION", pg.role),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut url = url::Url::parse(&pg.superuser_url).unwrap();
    url.set_username(&weak).unwrap();
    url.set_password(Some(&password)).unwrap();
    let out = setup.doctor_with(&[("DOCTOR_PG_URL", url.as_str())]).await;
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {weak}")))
        .execute(&pool)
        .await;
    pool.close().await;

    out.fails_only(&["resource pg"]);
    let line = out.line("resource pg");
    assert!(
        line.starts_with("FAIL  resource pg: postgres (PostgreSQL "),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "the admin `{weak}` lacks CREATEROLE: it cannot create, grant or drop roles"
        )),
        "{line}"
    );
    // Only that is wrong with it.
    assert!(
        !line.contains("pg_signal_backend") && !line.contains("SUPERUSER"),
        "{line}"
    );
    assert!(
        line.contains("Fix: fix the admin role as said (README: Providers, postgres)"),
        "{line}"
    );
    assert!(!out.stdout.contains(&password) && !out.stderr.contains(&password));
    setup.finish().await;
}

#[tokio::test]
async fn an_unreachable_postgres_server_fails() {
    let setup = Setup::new().await;
    // Needs no PostgreSQL: nothing listens on port 1.
    let mut policy = setup.default_policy();
    if setup.postgres.is_none() {
        policy.push_str(
            r#"
[[resource]]
id = "pg"
provider = "postgres"
database_url_env = "DOCTOR_PG_URL"
roles = ["app_rw"]
approvers = { channel = "C0APPROVALS", users = ["U0BOB"] }
"#,
        );
    }
    setup.write_policy(&policy);
    let out = setup
        .doctor_with(&[(
            "DOCTOR_PG_URL",
            "postgres://jit_admin:doctor-secret-pw@127.0.0.1:1/app",
        )])
        .await;
    out.fails_only(&["resource pg"]);
    let line = out.line("resource pg");
    assert!(
        line.starts_with("FAIL  resource pg: postgres: cannot check the admin of $DOCTOR_PG_URL"),
        "{line}"
    );
    assert!(
        line.contains("Fix: check that the server in DOCTOR_PG_URL is up and reachable"),
        "{line}"
    );
    assert!(!out.stdout.contains("doctor-secret-pw") && !out.stderr.contains("doctor-secret-pw"));

    // And without the variable at all.
    let mut env = setup.env.clone();
    env.retain(|(k, _)| k != "DOCTOR_PG_URL");
    let unset = Setup { env, ..setup };
    let out = unset.doctor().await;
    out.fails_only(&["resource pg"]);
    assert!(out.line("resource pg").contains("the environment variable DOCTOR_PG_URL (or DOCTOR_PG_URL_FILE) must hold the admin connection URL"), "{}", out.stdout);
    unset.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_role_missing_in_iam_fails() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!(
            "JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now (the missing-role failure is not exercised)"
        );
    };
    setup.write_policy(&setup.default_policy().replace(
        &aws.role_arn,
        &format!("arn:aws:iam::{ACCOUNT}:role/jit-doctor-nobody"),
    ));
    let out = setup.doctor().await;
    out.fails_only(&["resource aws-prod"]);
    assert_eq!(
        out.line("resource aws-prod"),
        format!(
            "FAIL  resource aws-prod: aws_sts: role jit-doctor-nobody does not exist in account {ACCOUNT} (role_arn arn:aws:iam::{ACCOUNT}:role/jit-doctor-nobody): every grant fails. Fix: create the role, or correct role_arn in the policy"
        )
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_wrong_encryption_key_fails() {
    let setup = Setup::new().await;
    let other = jit::crypto::generate_key();
    let out = setup.doctor_with(&[("JIT_ENCRYPTION_KEY", &other)]).await;
    // The audit key is derived from the encryption key here, so the audit chain fails too.
    out.fails_only(&["encryption key", "audit log"]);
    assert!(out.line("encryption key").starts_with("FAIL  encryption key: JIT_ENCRYPTION_KEY does not open the credentials stored for request #1: it is not the key they were sealed with"), "{}", out.stdout);
    assert!(!out.stdout.contains(&other));
    setup.finish().await;
}

#[tokio::test]
async fn a_tampered_audit_log_fails() {
    let setup = Setup::new().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", setup.db_path().display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = setup.doctor().await;
    out.fails_only(&["audit log"]);
    assert!(out.line("audit log").starts_with("FAIL  audit log: TAMPERED: row 1: its content does not match its keyed hash (the row was edited, or the chain was recomputed without the audit key) (0 rows before it are intact)"), "{}", out.stdout);
    setup.finish().await;
}

#[tokio::test]
async fn a_missing_exec_command_fails() {
    let setup = Setup::new().await;
    std::fs::remove_file(setup.dir.path().join("scripts/revoke.sh")).unwrap();
    let out = setup.doctor().await;
    out.fails_only(&["resource github-admin"]);
    let line = out.line("resource github-admin");
    assert!(line.contains("the revoke command `"), "{line}");
    assert!(
        line.contains("scripts/revoke.sh` cannot be found"),
        "{line}"
    );
    assert!(
        line.contains("access it granted could never be removed"),
        "{line}"
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_database_jit_never_ran_on_is_only_a_warning() {
    let setup = Setup::new().await;
    let fresh = setup.dir.path().join("elsewhere.db");
    let out = setup
        .doctor_with(&[("JIT_DATABASE_URL", &format!("sqlite://{}", fresh.display()))])
        .await;
    out.passes();
    assert!(out.line("database").starts_with(&format!(
        "warn  database: {} does not exist yet",
        fresh.display()
    )));
    assert!(out.line("encryption key").starts_with("skip  encryption key: JIT_ENCRYPTION_KEY is a valid AES-256 key; no credentials are stored yet"));
    assert!(!fresh.exists(), "doctor created the database");
    setup.finish().await;
}

#[tokio::test]
async fn a_deactivated_user_and_an_empty_approver_group_are_warnings() {
    let setup = Setup::new().await;
    setup.slack.deactivate_user("U0SECLEAD");
    setup.slack.set_group_members("S0SRE", &[]);
    let out = setup.doctor().await;
    out.passes();
    assert_eq!(
        out.line("slack user U0SECLEAD"),
        "warn  slack user U0SECLEAD: user U0SECLEAD (@sec, admin) is deactivated. Fix: remove them from the policy, or name someone who can act"
    );
    assert!(out.line("slack group S0SRE").starts_with("warn  slack group S0SRE: user group S0SRE (approver of staging) has no members: nobody in it can approve"), "{}", out.stdout);
    assert!(!out.line("slack users").contains("U0SECLEAD"));
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn an_aws_role_grants_or_teardown_cannot_use_fails() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!(
            "JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now (the trust-policy and account failures are not exercised)"
        );
    };
    // A trust policy without sts:TagSession: every AssumeRole with session tags is refused.
    let sdk = jit::providers::aws_sts::aws_config_loader(Some(&aws.endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "jit-tests",
        ))
        .load()
        .await;
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"]}]});
    aws_sdk_iam::Client::new(&sdk)
        .update_assume_role_policy()
        .role_name(&aws.role)
        .policy_document(trust.to_string())
        .send()
        .await
        .unwrap();
    let out = setup.doctor().await;
    out.fails_only(&["resource aws-prod"]);
    let line = out.lines("resource aws-prod")[0];
    assert!(
        line.contains("its trust policy allows no sts:TagSession: every grant fails"),
        "{line}"
    );

    // A role in another account: teardown's deny statement could never be written.
    setup.write_policy(
        &setup
            .default_policy()
            .replace(&aws.role_arn, "arn:aws:iam::999999999999:role/elsewhere"),
    );
    let out = setup.doctor().await;
    out.fails_only(&["resource aws-prod"]);
    assert!(out.line("resource aws-prod").contains(&format!("role arn:aws:iam::999999999999:role/elsewhere is in account 999999999999, jit's credentials in {ACCOUNT}")), "{}", out.stdout);
    setup.finish().await;
}

/// What the stand-in for AWS does instead of passing a call to moto.
#[derive(Default)]
struct Rules {
    /// `iam:SimulatePrincipalPolicy` is answered (moto has no policy simulator): every action
    /// asked about is `allowed`, except these (`implicitDeny`).
    simulator_denies: Vec<String>,
    /// Calls refused with AWS's error: action → (code, message).
    refused: Vec<(&'static str, &'static str, String)>,
}

/// A stand-in for AWS in front of moto: it answers `iam:SimulatePrincipalPolicy` as AWS's
/// policy simulator would (with the decisions `Rules` gives), refuses the calls `Rules` names
/// with AWS's error shape, and passes everything else to moto. It records every action called,
/// so a test can see that doctor asked the simulator and wrote nothing.
#[derive(Clone)]
struct AwsProxy {
    url: String,
    rules: std::sync::Arc<std::sync::Mutex<Rules>>,
    /// Every call, in order.
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, Form)>>>,
}

/// An AWS query call's form parameters.
type Form = Vec<(String, String)>;

impl AwsProxy {
    async fn start(moto: &str, rules: Rules) -> AwsProxy {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let proxy = AwsProxy {
            url: String::new(),
            rules: std::sync::Arc::new(std::sync::Mutex::new(rules)),
            calls: Default::default(),
        };
        let moto = moto.trim_end_matches('/').to_owned();
        let state = proxy.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            let moto = moto.clone();
            async move {
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let action = form
                    .iter()
                    .find(|(k, _)| k == "Action")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                state
                    .calls
                    .lock()
                    .unwrap()
                    .push((action.clone(), form.clone()));
                let xml = |status: u16, body: String| {
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("content-type", "text/xml")],
                        body,
                    )
                        .into_response()
                };
                let refusal = state
                    .rules
                    .lock()
                    .unwrap()
                    .refused
                    .iter()
                    .find(|(a, _, _)| *a == action)
                    .map(|(_, code, message)| (*code, message.clone()));
                if let Some((code, message)) = refusal {
                    return xml(
                        403,
                        format!(
                            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>proxy-1</RequestId></ErrorResponse>"
                        ),
                    );
                }
                if action == "SimulatePrincipalPolicy" {
                    let denies = state.rules.lock().unwrap().simulator_denies.clone();
                    let resource = form
                        .iter()
                        .find(|(k, _)| k == "ResourceArns.member.1")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let results: String = form
                        .iter()
                        .filter(|(k, _)| k.starts_with("ActionNames.member."))
                        .map(|(_, name)| {
                            let decision = if denies.contains(name) {
                                "implicitDeny"
                            } else {
                                "allowed"
                            };
                            format!(
                                "<member><EvalActionName>{name}</EvalActionName><EvalResourceName>{resource}</EvalResourceName><EvalDecision>{decision}</EvalDecision><MatchedStatements/><MissingContextValues/></member>"
                            )
                        })
                        .collect();
                    return xml(
                        200,
                        format!(
                            "<SimulatePrincipalPolicyResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>proxy-2</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"
                        ),
                    );
                }
                // Everything else: moto, as sent.
                let target = format!(
                    "{moto}{}",
                    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                );
                let mut forward = reqwest::Client::new().request(method, target).body(body);
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.send().await.expect("moto answers");
                let status = answer.status().as_u16();
                let content_type = answer
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("text/xml")
                    .to_owned();
                let bytes = answer.bytes().await.unwrap();
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", content_type)],
                    bytes,
                )
                    .into_response()
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        AwsProxy { url, ..proxy }
    }

    fn actions(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// The form parameters of every `SimulatePrincipalPolicy` call.
    fn simulations(&self) -> Vec<Form> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == "SimulatePrincipalPolicy")
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// What doctor must never do, whatever AWS answers: issue credentials or write to a role.
fn assert_read_only(proxy: &AwsProxy) {
    for action in proxy.actions() {
        assert!(
            ![
                "AssumeRole",
                "PutRolePolicy",
                "DeleteRolePolicy",
                "UpdateAssumeRolePolicy"
            ]
            .contains(&action.as_str()),
            "doctor called {action}"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn the_policy_simulator_decides_the_rights_line() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!(
            "JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now (the policy-simulator checks are not exercised)"
        );
    };
    let proxy = AwsProxy::start(&aws.endpoint, Rules::default()).await;
    let through = [("AWS_ENDPOINT_URL", proxy.url.as_str())];

    // Everything allowed: the rights are verified, not merely "not verified".
    let out = setup.doctor_with(&through).await;
    out.passes();
    let lines = out.lines("resource aws-prod");
    let rights = lines
        .iter()
        .find(|l| l.contains("policy simulator"))
        .unwrap_or_else(|| panic!("a simulator line in\n{}", out.stdout));
    assert!(
        rights.starts_with("ok    resource aws-prod: aws_sts: IAM's policy simulator allows arn:aws:iam::123456789012:user/jit-doctor-"),
        "{rights}"
    );
    // It asked about jit's own user, on the role, for what grants and teardown do, with the
    // trust policy for the sts: actions.
    let simulations = proxy.simulations();
    assert_eq!(simulations.len(), 2, "{simulations:?}");
    let param = |form: &[(String, String)], key: &str| {
        form.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for form in &simulations {
        assert!(
            param(form, "PolicySourceArn").contains(":user/jit-doctor-"),
            "{form:?}"
        );
        assert_eq!(param(form, "ResourceArns.member.1"), aws.role_arn);
    }
    assert_eq!(
        param(&simulations[0], "ActionNames.member.1"),
        "sts:AssumeRole"
    );
    assert!(param(&simulations[0], "ResourcePolicy").contains("sts:TagSession"));
    let teardown: Vec<String> = simulations[1]
        .iter()
        .filter(|(k, _)| k.starts_with("ActionNames.member."))
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        teardown,
        [
            "iam:GetRolePolicy",
            "iam:PutRolePolicy",
            "iam:DeleteRolePolicy"
        ]
    );

    // AssumeRole and PutRolePolicy denied: grants and early revocation would fail.
    proxy.rules.lock().unwrap().simulator_denies =
        vec!["sts:AssumeRole".into(), "iam:PutRolePolicy".into()];
    let out = setup.doctor_with(&through).await;
    out.fails_only(&["resource aws-prod"]);
    let failed: Vec<&str> = out
        .lines("resource aws-prod")
        .into_iter()
        .filter(|l| l.starts_with("FAIL "))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0]
            .contains("IAM's policy simulator denies arn:aws:iam::123456789012:user/jit-doctor-"),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains("sts:AssumeRole (implicitDeny), iam:PutRolePolicy (implicitDeny): early revocation would fail"),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains("Fix: allow them to jit's principal on the role"),
        "{}",
        failed[0]
    );
    // Only AssumeRole: grants would fail.
    proxy.rules.lock().unwrap().simulator_denies = vec!["sts:TagSession".into()];
    let out = setup.doctor_with(&through).await;
    out.fails_only(&["resource aws-prod"]);
    assert!(
        out.stdout
            .contains("sts:TagSession (implicitDeny): grants would fail"),
        "{}",
        out.stdout
    );
    assert_read_only(&proxy);
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_refused_get_role_policy_fails() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!(
            "JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now (the refused-GetRolePolicy failure is not exercised)"
        );
    };
    let proxy = AwsProxy::start(
        &aws.endpoint,
        Rules {
            refused: vec![(
                "GetRolePolicy",
                "AccessDenied",
                format!(
                    "User: arn:aws:iam::{ACCOUNT}:user/jit is not authorized to perform: iam:GetRolePolicy on resource: role {}",
                    aws.role
                ),
            )],
            ..Rules::default()
        },
    )
    .await;
    let out = setup
        .doctor_with(&[("AWS_ENDPOINT_URL", proxy.url.as_str())])
        .await;
    out.fails_only(&["resource aws-prod"]);
    let failed: Vec<&str> = out
        .lines("resource aws-prod")
        .into_iter()
        .filter(|l| l.starts_with("FAIL "))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  resource aws-prod: aws_sts: iam:GetRolePolicy on {} failed (AccessDenied: User: arn:aws:iam::{ACCOUNT}:user/jit is not authorized",
            aws.role
        )),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains("early revocation reads it first, so it would fail. Fix: allow jit's principal iam:GetRolePolicy, iam:PutRolePolicy and iam:DeleteRolePolicy on the role"),
        "{}",
        failed[0]
    );
    assert!(proxy.actions().contains(&"GetRolePolicy".to_owned()));
    assert_read_only(&proxy);
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn aws_credentials_that_do_not_work_fail() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!(
            "JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now (the bad-credentials failure is not exercised)"
        );
    };
    let proxy = AwsProxy::start(
        &aws.endpoint,
        Rules {
            refused: vec![(
                "GetCallerIdentity",
                "InvalidClientTokenId",
                "The security token included in the request is invalid.".into(),
            )],
            ..Rules::default()
        },
    )
    .await;
    let out = setup
        .doctor_with(&[
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "AKIAREVOKEDKEY000000"),
            ("AWS_SECRET_ACCESS_KEY", "revoked-doctor-secret-key"),
        ])
        .await;
    out.fails_only(&["aws identity"]);
    assert_eq!(
        out.line("aws identity"),
        "FAIL  aws identity: jit's AWS credentials do not work (sts:GetCallerIdentity: InvalidClientTokenId: The security token included in the request is invalid.). Fix: give jit AWS credentials as for jit serve (AWS_* variables, a profile, or an instance or task role); AWS_ENDPOINT_URL must point at AWS"
    );
    assert_eq!(
        out.line("resource aws-prod"),
        "skip  resource aws-prod: aws_sts: not checked: jit's AWS credentials do not work"
    );
    // Nothing more was asked of AWS, and the secret key is nowhere in the output.
    assert_eq!(proxy.actions(), ["GetCallerIdentity"]);
    assert!(
        !out.stdout.contains("revoked-doctor-secret-key")
            && !out.stderr.contains("revoked-doctor-secret-key")
    );
    setup.finish().await;
}

// ------------------------------------------------------------------------------------------------
// jit's own database on PostgreSQL

/// The test database's URL with a password in it (the local server trusts, so any password
/// works where the URL had none), to check that doctor never shows it.
fn with_password(url: &str) -> (String, String) {
    let mut parsed = url::Url::parse(url).unwrap();
    if let Some(password) = parsed.password() {
        return (url.to_owned(), password.to_owned());
    }
    parsed.set_password(Some("doctor-db-pw")).unwrap();
    (parsed.to_string(), "doctor-db-pw".to_owned())
}

/// The same checks as on SQLite: read-only, the schema, the key against the newest stored
/// credentials, the audit chain; and each of them fails on PostgreSQL as it does on SQLite.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_postgres_database_is_checked_like_a_sqlite_file() {
    let setup = Setup::new().await;
    let pg = db::TestDb::new(store::Driver::Postgres).await;
    let (url, password) = with_password(&pg.url());
    let key = setup
        .env
        .iter()
        .find(|(k, _)| k == "JIT_ENCRYPTION_KEY")
        .unwrap()
        .1
        .clone();
    setup.store_a_credential_in(&url, &key).await;
    let created = setup
        .jit_with(
            &["identity", "token", "create", "ci"],
            &[("JIT_DATABASE_URL", &url)],
        )
        .await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    let rows = |store: Store| async move {
        let mut conn = store.read().await.unwrap();
        let n: i64 = store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM audit_log) + (SELECT COUNT(*) FROM _sqlx_migrations) \
             + (SELECT COUNT(*) FROM credentials) + (SELECT COUNT(*) FROM jobs)"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        drop(conn);
        store.close().await;
        n
    };
    let before = rows(pg.connect().await).await;

    let out = setup.doctor_with(&[("JIT_DATABASE_URL", &url)]).await;
    out.passes();
    let redacted = jit::store::redact_url(&url);
    assert!(redacted.contains(":***@"), "{redacted}");
    assert_eq!(
        out.line("database"),
        format!("ok    database: PostgreSQL {redacted} opens read-only; its schema is this jit's")
    );
    assert_eq!(
        out.line("encryption key"),
        "ok    encryption key: JIT_ENCRYPTION_KEY opens the newest stored credentials (request #1)"
    );
    assert!(
        out.line("audit log")
            .starts_with("ok    audit log: intact: 1 event, hash chain verified (head 1:"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&password) && !out.stderr.contains(&password));
    assert_eq!(rows(pg.connect().await).await, before, "doctor wrote");

    // Another key: the stored credentials do not open and the chain does not verify.
    let other = jit::crypto::generate_key();
    let out = setup
        .doctor_with(&[("JIT_DATABASE_URL", &url), ("JIT_ENCRYPTION_KEY", &other)])
        .await;
    out.fails_only(&["encryption key", "audit log"]);
    assert!(
        out.line("encryption key").starts_with(
            "FAIL  encryption key: JIT_ENCRYPTION_KEY does not open the credentials stored for request #1"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.line("audit log")
            .starts_with("FAIL  audit log: TAMPERED: row 1: the keyed chain's boundary record"),
        "{}",
        out.stdout
    );
    setup.finish().await;
}

/// A PostgreSQL that cannot be reached fails the database line (jit serve would not start),
/// says where, and never shows the password.
#[tokio::test]
async fn an_unreachable_postgres_database_fails_without_its_password() {
    let setup = Setup::new().await;
    let out = setup
        .doctor_with(&[(
            "JIT_DATABASE_URL",
            "postgres://jit:doctor-db-secret@127.0.0.1:1/jit",
        )])
        .await;
    out.fails_only(&["database"]);
    let line = out.line("database");
    assert!(
        line.starts_with(
            "FAIL  database: cannot connect to PostgreSQL at postgres://jit:***@127.0.0.1:1/jit for reading: "
        ),
        "{line}"
    );
    assert!(
        line.contains("Fix: check that the PostgreSQL server in JIT_DATABASE_URL is up and reachable from here"),
        "{line}"
    );
    assert!(
        out.line("encryption key").starts_with("skip  encryption key: JIT_ENCRYPTION_KEY is a valid AES-256 key; the database cannot be reached"),
        "{}",
        out.stdout
    );
    assert!(
        out.line("audit log")
            .starts_with("skip  audit log: the database cannot be reached"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("doctor-db-secret") && !out.stderr.contains("doctor-db-secret"));
    setup.finish().await;
}

/// A PostgreSQL database jit never ran on is only a warning, as a missing SQLite file is, and
/// doctor creates nothing in it.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn an_unmigrated_postgres_database_is_only_a_warning() {
    let setup = Setup::new().await;
    let pg = db::TestDb::new(store::Driver::Postgres).await;
    let out = setup.doctor_with(&[("JIT_DATABASE_URL", &pg.url())]).await;
    out.passes();
    assert_eq!(
        out.line("database"),
        format!(
            "warn  database: PostgreSQL {} holds no jit tables yet. Fix: nothing to do if jit never ran on it (jit serve creates them; jit db copy moves a SQLite deployment into it); otherwise JIT_DATABASE_URL points at the wrong database or schema",
            jit::store::redact_url(&pg.url())
        )
    );
    assert!(out.line("encryption key").starts_with("skip  encryption key: JIT_ENCRYPTION_KEY is a valid AES-256 key; no credentials are stored yet"));
    assert_eq!(
        out.line("audit log"),
        "skip  audit log: no jit tables yet, so no audit log"
    );
    let store = pg.connect().await;
    let mut conn = store.read().await.unwrap();
    let tables: i64 = store::on!(&mut conn, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    .fetch_one(&mut *c)
    .await)
    .unwrap();
    assert_eq!(tables, 0, "doctor created tables");
    drop(conn);
    store.close().await;
    setup.finish().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn identity_center_resources_are_checked() {
    let setup = Setup::new().await;
    let Some(aws) = &setup.aws else {
        panic!("JIT_TEST_AWS_ENDPOINT was set when this test was built but is unset now");
    };
    let sdk = jit::providers::aws_sts::aws_config_loader(Some(&aws.endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "jit-tests",
        ))
        .load()
        .await;
    let sso = aws_sdk_ssoadmin::Client::new(&sdk);
    let instances = sso.list_instances().send().await.unwrap();
    let instance = instances.instances().first().expect("moto has an instance");
    let (instance_arn, store) = (
        instance.instance_arn().unwrap().to_owned(),
        instance.identity_store_id().unwrap().to_owned(),
    );
    let mut sets = Vec::new();
    for session in ["PT1H", "PT4H"] {
        let set = sso
            .create_permission_set()
            .instance_arn(&instance_arn)
            .name(format!("Doctor{}", rand::random::<u32>()))
            .session_duration(session)
            .send()
            .await
            .unwrap();
        sets.push(
            set.permission_set()
                .unwrap()
                .permission_set_arn()
                .unwrap()
                .to_owned(),
        );
    }
    let resource = |set: &str, store: &str| {
        format!(
            r#"
[[resource]]
id = "aws-ic"
provider = "aws_identity_center"
instance_arn = "{instance_arn}"
identity_store_id = "{store}"
portal_url = "https://portal.example/start"
permission_set_arn = "{set}"
account_id = "{ACCOUNT}"
session_duration = "1h"
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
"#
        )
    };
    setup.write_policy(&format!(
        "{}{}",
        setup.default_policy(),
        resource(&sets[0], &store)
    ));
    let out = setup.doctor().await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines = out.lines("resource aws-ic");
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:#?}");
    assert!(lines[0].contains(&instance_arn), "{}", lines[0]);
    assert!(
        lines[1].contains("sessions last up to PT1H"),
        "{}",
        lines[1]
    );

    // A permission set whose sessions outlast session_duration, and the wrong identity store.
    setup.write_policy(&format!(
        "{}{}",
        setup.default_policy(),
        resource(&sets[1], "d-0000000000")
    ));
    let out = setup.doctor().await;
    out.fails_only(&["resource aws-ic"]);
    let text = out.lines("resource aws-ic").join("\n");
    assert!(text.contains("uses identity store"), "{text}");
    assert!(
        text.contains("lets a session last PT4H, longer than session_duration 1h"),
        "{text}"
    );
    setup.finish().await;
}

#[tokio::test]
async fn an_okta_group_is_checked_against_the_org() {
    let setup = Setup::new().await;
    let okta = fake_okta::FakeOkta::start().await;
    okta.add_user("00ualice", "alice@example.com");
    okta.add_group("00gadmins", "prod-admins");
    let mut policy = setup.default_policy();
    policy.push_str(&format!(
        r#"
[[resource]]
id = "okta-admins"
provider = "okta_group"
org_url = "{}"
group_id = "00gadmins"
api_token_env = "DOCTOR_OKTA_TOKEN"
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
"#,
        okta.url
    ));
    setup.write_policy(&policy);
    let out = setup
        .doctor_with(&[("DOCTOR_OKTA_TOKEN", fake_okta::TOKEN)])
        .await;
    out.passes();
    let line = out.line("resource okta-admins");
    assert!(
        line.starts_with(
            "ok    resource okta-admins: okta_group: group 00gadmins (`prod-admins`) answers"
        ),
        "{line}"
    );
    assert_eq!(okta.count("GET", "/api/v1/groups/00gadmins"), 1);
    assert!(
        okta.calls().iter().all(|c| c.method == "GET"),
        "doctor changes nothing"
    );

    // A token Okta refuses: named, never shown.
    let out = setup
        .doctor_with(&[("DOCTOR_OKTA_TOKEN", "doctor-wrong-okta-token")])
        .await;
    out.fails_only(&["resource okta-admins"]);
    let line = out.line("resource okta-admins");
    assert!(
        line.contains("refused the API token in DOCTOR_OKTA_TOKEN (401)"),
        "{line}"
    );
    assert!(
        !out.stdout.contains("doctor-wrong-okta-token")
            && !out.stderr.contains("doctor-wrong-okta-token")
    );
    assert!(!out.stdout.contains(fake_okta::TOKEN));

    // A group that is not there.
    setup.write_policy(&policy.replace("group_id = \"00gadmins\"", "group_id = \"00gmissing\""));
    let out = setup
        .doctor_with(&[("DOCTOR_OKTA_TOKEN", fake_okta::TOKEN)])
        .await;
    out.fails_only(&["resource okta-admins"]);
    assert!(
        out.line("resource okta-admins")
            .contains("no group 00gmissing"),
        "{}",
        out.stdout
    );

    // No token at all.
    setup.write_policy(&policy);
    let out = setup.doctor().await;
    out.fails_only(&["resource okta-admins"]);
    assert!(
        out.line("resource okta-admins")
            .contains("DOCTOR_OKTA_TOKEN (or DOCTOR_OKTA_TOKEN_FILE)"),
        "{}",
        out.stdout
    );
    setup.finish().await;
}
