//! Boots the real server on a random port with a temporary SQLite file, a manual clock and the
//! fake Slack Web API over HTTP. Tests talk to it the way Slack does: signed HTTP requests.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use jit::app::{App, Settings};
use jit::bootstrap::{self, Parts};
use jit::clock::ManualClock;
use jit::crypto::Cipher;
use jit::domain::ids::RequestId;
use jit::domain::policy::Policy;
use jit::domain::request::{Request, State};
use jit::providers::Providers;
use jit::slack::simulator::{FakeSlack, Message};
use jit::store::requests::StoredRequest;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const SIGNING_SECRET: &str = "test-signing-secret";

/// The audit chain's key in every harness.
pub fn audit_key() -> jit::crypto::AuditKey {
    jit::crypto::AuditKey::from_bytes([0x5a; 32])
}

/// [`audit_key`] as `JIT_AUDIT_KEY`, for the admin CLI run beside a harness.
pub const AUDIT_KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub const BOT_TOKEN: &str = "xoxb-test-token";
/// The signing secret of the tests' webhooks (`secret_env = "TEST_HOOK_SECRET"`).
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

pub const DEV: &str = "U0DEV";
pub const ALICE: &str = "U0ALICE";
pub const BOB: &str = "U0BOB";
pub const CAROL: &str = "U0CAROL";
pub const MALLORY: &str = "U0MALLORY";
pub const ONCALL: &str = "U0ONCALL";
pub const SECLEAD: &str = "U0SECLEAD";
pub const APPROVALS: &str = "C0APPROVALS";
pub const AUDIT: &str = "C0AUDIT";
pub const ORIGIN: &str = "C0GENERAL";

/// The harness policy. `{log}` and `{script}` are filled in per harness.
pub const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"], groups = ["S0SECURITY"] }

[defaults]
reminder_before = "10m"
pending_timeout = "30m"

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000
teardown_alert_after_failures = 2

[[resource]]
id = "db"
description = "Production database"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = { log = "{log}" }
max_duration = "4h"
default_duration = "1h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"], groups = ["S0SRE"] }
auto_approve = { max_duration = "30m", groups = ["S0ONCALL"] }
breakglass = true

[[resource]]
id = "db-shared"
description = "Membership of a shared group"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
parameters = { log = "{log}", shared = true }
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "4h" }

[[resource]]
id = "two-person"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
parameters = { log = "{log}" }
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB", "U0CAROL"] }
approvals_required = 2

[[resource]]
id = "staging"
provider = "none"
max_duration = "1d"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "8h" }

[[resource]]
id = "ci-db"
description = "The CI database"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
parameters = { log = "{log}" }
max_duration = "2h"
requesters = { identities = ["ci"], users = ["U0DEV"] }
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0CAROL"] }

[[identity]]
name = "ci"
description = "The deploy pipeline"
owner = { users = ["U0CAROL"] }
resources = ["ci-db"]

[[identity]]
name = "other-bot"
owner = { users = ["U0BOB"] }
resources = ["ci-db"]

[[resource]]
id = "restricted"
provider = "none"
max_duration = "1h"
requesters = { users = ["U0CAROL"] }
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

/// Everything logged by any test in this binary (one global subscriber, installed once).
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .init();
        buffer
    })
    .clone()
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap()
}

pub struct Harness {
    pub app: Arc<App>,
    pub slack: FakeSlack,
    pub clock: ManualClock,
    pub url: String,
    pub http: reqwest::Client,
    pub driver: jit::slack::driver::SlackDriver,
    pub provider_log: PathBuf,
    pub _dir: Arc<tempfile::TempDir>,
    /// The SQLite file (empty on PostgreSQL; see [`Harness::db`]).
    pub db_path: PathBuf,
    /// The test's database, on the driver the test runs on (shared by its replicas).
    pub db: Arc<crate::db::TestDb>,
    /// What a replica needs to join this harness: its options' policy text.
    policy_text: String,
    options_start: DateTime<Utc>,
    aws_endpoint: Option<String>,
    postgres_url: Option<String>,
    slack_timeout: std::time::Duration,
    pagerduty: Option<jit::oncall::PagerDutyConfig>,
    okta: Option<(String, String)>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
        // A failing test shows what jit logged as an error or a warning (the log is shared by
        // the tests of this binary, so lines of other tests may appear too).
        if std::thread::panicking() {
            let text = logs().text();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains(" WARN "))
                .collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("jit log: {line}");
            }
        }
    }
}

/// A slash-command answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn text(&self) -> String {
        self.body["text"].as_str().unwrap_or_default().to_owned()
    }
}

/// How to start a harness beyond the defaults.
pub struct Options {
    pub policy: String,
    pub start: DateTime<Utc>,
    /// Builds `aws_sts` resources against this endpoint (moto), with static test credentials.
    pub aws_endpoint: Option<String>,
    /// Builds `postgres` resources with this admin URL.
    pub postgres_url: Option<String>,
    /// How long jit waits for a Slack call.
    pub slack_timeout: std::time::Duration,
    /// How long a claimed job is leased (the worker's heartbeat renews it).
    pub lease: std::time::Duration,
    /// PagerDuty (a fake one) for `auto_approve.oncall`.
    pub pagerduty: Option<jit::oncall::PagerDutyConfig>,
    /// Builds `okta_group` resources against this org (a fake one), with this API token.
    pub okta: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: POLICY.to_owned(),
            start: t0(),
            aws_endpoint: None,
            postgres_url: None,
            slack_timeout: std::time::Duration::from_secs(10),
            lease: jit::app::DEFAULT_LEASE,
            pagerduty: None,
            okta: None,
        }
    }
}

/// The AWS SDK configuration the tests use against moto.
pub async fn moto_sdk(endpoint: &str) -> aws_config::SdkConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    jit::providers::aws_sts::aws_config_loader(Some(endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "jit-tests",
        ))
        .load()
        .await
}

impl Harness {
    pub async fn start() -> Harness {
        Self::with_options(Options::default()).await
    }

    pub async fn with_options(options: Options) -> Harness {
        Self::build(options, None).await
    }

    /// jit restarted on this harness's database, Slack and clock with another policy (the
    /// operator edited the file): a new app, with nothing of the old one's memory.
    pub async fn restart_with_policy(&self, policy: &str) -> Harness {
        let options = Options {
            policy: policy.to_owned(),
            start: self.options_start,
            aws_endpoint: self.aws_endpoint.clone(),
            postgres_url: self.postgres_url.clone(),
            slack_timeout: self.slack_timeout,
            lease: self.app.settings.lease,
            pagerduty: self.pagerduty.clone(),
            okta: self.okta.clone(),
        };
        Self::build(options, Some(self)).await
    }

    /// Another replica of this harness's jit: its own app, store connection, HTTP server and
    /// worker state, on the same database, the same fake Slack and the same clock (PostgreSQL
    /// tests of several replicas).
    pub async fn replica(&self) -> Harness {
        let options = Options {
            policy: self.policy_text.clone(),
            start: self.options_start,
            aws_endpoint: self.aws_endpoint.clone(),
            postgres_url: self.postgres_url.clone(),
            slack_timeout: self.slack_timeout,
            lease: self.app.settings.lease,
            pagerduty: self.pagerduty.clone(),
            okta: self.okta.clone(),
        };
        Self::build(options, Some(self)).await
    }

    async fn build(options: Options, join: Option<&Harness>) -> Harness {
        // JIT_TEST_LOGS=1: capture jit's log from the start, so a failing test shows its errors.
        if std::env::var_os("JIT_TEST_LOGS").is_some() {
            logs();
        }
        let template = options.policy.as_str();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = match join {
            Some(first) => first._dir.clone(),
            None => Arc::new(tempfile::tempdir().unwrap()),
        };
        let provider_log = dir.path().join("provider.log");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/provider.py");
        let text = template
            .replace("{log}", provider_log.to_str().unwrap())
            .replace("{script}", script.to_str().unwrap());
        let policy = Policy::parse(&text, &|p: &str| std::fs::read_to_string(p)).unwrap();
        let policy_for_hooks = policy.clone();

        let slack = match join {
            Some(first) => first.slack.clone(),
            None => FakeSlack::start(BOT_TOKEN).await.unwrap(),
        };
        for (id, name) in [
            (DEV, "dev"),
            (ALICE, "alice"),
            (BOB, "bob"),
            (CAROL, "carol"),
            (MALLORY, "mallory"),
            (ONCALL, "oncall"),
            (SECLEAD, "seclead"),
            ("U0SRE1", "sre1"),
        ] {
            slack.set_user(id, name, Some(&format!("{name}@example.com")));
        }
        slack.set_group_members("S0SRE", &["U0SRE1"]);
        slack.set_group_members("S0ONCALL", &[ONCALL]);
        slack.set_group_members("S0SECURITY", &[]);

        let db = match join {
            Some(first) => first.db.clone(),
            None => Arc::new(crate::db::TestDb::current().await),
        };
        let db_path = db
            .sqlite_path()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let store = db.store().await;
        store
            .open_audit_chain(audit_key(), options.start)
            .await
            .unwrap();
        let clock = match join {
            Some(first) => first.clock.clone(),
            None => ManualClock::new(options.start),
        };
        let (mut providers, external) = Providers::with_local(policy.resources(), None);
        for resource in external {
            match &resource.provider {
                jit::domain::policy::ProviderConfig::AwsSts(config) => {
                    let endpoint = options
                        .aws_endpoint
                        .as_deref()
                        .expect("an aws_sts resource needs Options::aws_endpoint");
                    let sdk = moto_sdk(endpoint).await;
                    providers.insert(
                        &resource.id,
                        Arc::new(jit::providers::aws_sts::AwsStsProvider::new(
                            resource.id.clone(),
                            config.clone(),
                            &sdk,
                        )),
                    );
                }
                jit::domain::policy::ProviderConfig::Postgres(config) => {
                    let url = options
                        .postgres_url
                        .as_deref()
                        .expect("a postgres resource needs Options::postgres_url");
                    let provider = jit::providers::postgres::PostgresProvider::new(
                        resource.id.clone(),
                        config.clone(),
                        &SecretString::from(url.to_owned()),
                    )
                    .unwrap();
                    providers.insert(&resource.id, Arc::new(provider));
                }
                jit::domain::policy::ProviderConfig::AwsIdentityCenter(config) => {
                    let endpoint = options
                        .aws_endpoint
                        .as_deref()
                        .expect("an aws_identity_center resource needs Options::aws_endpoint");
                    let sdk = moto_sdk(endpoint).await;
                    providers.insert(
                        &resource.id,
                        Arc::new(
                            jit::providers::aws_identity_center::IdentityCenterProvider::new(
                                resource.id.clone(),
                                config.clone(),
                                &sdk,
                            ),
                        ),
                    );
                }
                jit::domain::policy::ProviderConfig::OktaGroup(config) => {
                    let (org_url, token) = options
                        .okta
                        .clone()
                        .expect("an okta_group resource needs Options::okta");
                    let mut config = config.clone();
                    config.org_url = org_url;
                    // A short timeout: the fake answers at once unless a test makes it hang.
                    let provider = jit::providers::okta::OktaProvider::with_timeout(
                        resource.id.clone(),
                        config,
                        SecretString::from(token),
                        std::time::Duration::from_secs(2),
                    )
                    .unwrap();
                    providers.insert(&resource.id, Arc::new(provider));
                }
                _ => {}
            }
        }
        let app = bootstrap::build(Parts {
            policy,
            store,
            clock: Arc::new(clock.clone()),
            slack_api_url: slack.api_url(),
            bot_token: SecretString::from(BOT_TOKEN),
            signing_secrets: vec![
                SecretString::from("old-secret"),
                SecretString::from(SIGNING_SECRET),
            ],
            cipher: Cipher::from_bytes(&[7u8; 32]),
            providers,
            settings: Settings {
                slack_timeout: options.slack_timeout,
                lease: options.lease,
                ..Settings::default()
            },
            posts_per_channel_per_second: std::num::NonZeroU32::new(1000).unwrap(),
            // The tests' webhook secrets: `secret_env = "TEST_HOOK_SECRET"` reads this.
            webhooks: Some(
                jit::webhooks::Targets::from_policy(&policy_for_hooks, &|name| {
                    (name == "TEST_HOOK_SECRET").then(|| WEBHOOK_SECRET.to_owned())
                })
                .unwrap(),
            ),
            pagerduty: options.pagerduty.clone(),
        })
        .unwrap();
        let groups = jit::slack::directory::groups_in(&app.policy);
        app.directory.refresh_all(&groups).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = jit::server::router(app.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let driver = jit::slack::driver::SlackDriver::new(
            &url,
            SecretString::from(SIGNING_SECRET),
            Arc::new(clock.clone()),
        );
        Harness {
            app,
            slack,
            clock,
            url,
            http: reqwest::Client::new(),
            driver,
            provider_log,
            _dir: dir,
            db_path,
            db,
            policy_text: options.policy.clone(),
            options_start: options.start,
            aws_endpoint: options.aws_endpoint.clone(),
            postgres_url: options.postgres_url.clone(),
            slack_timeout: options.slack_timeout,
            pagerduty: options.pagerduty.clone(),
            okta: options.okta.clone(),
            server,
        }
    }

    /// The driver this test runs on.
    pub fn driver(&self) -> jit::store::Driver {
        self.app.store.driver()
    }

    /// Runs SQL statements (no parameters) on the test's database, as someone with access to
    /// it would.
    pub async fn sql(&self, statements: &str) {
        self.app
            .store
            .execute_script(statements)
            .await
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// Everything the database holds, as text: the files on SQLite (after a checkpoint, so
    /// nothing hides in the WAL), every row of every table on PostgreSQL. For checks that a
    /// secret is stored nowhere.
    pub async fn stored_text(&self) -> String {
        match self.driver() {
            jit::store::Driver::Sqlite => {
                self.sql("PRAGMA wal_checkpoint(FULL)").await;
                let mut all = String::new();
                for suffix in ["", "-wal", "-shm"] {
                    if let Ok(bytes) = std::fs::read(format!("{}{suffix}", self.db_path.display()))
                    {
                        all.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                assert!(!all.is_empty(), "the database file could not be read");
                all
            }
            jit::store::Driver::Postgres => {
                let mut conn = self.app.store.read().await.unwrap();
                let tables: Vec<String> = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
                .fetch_all(&mut *c)
                .await)
                .unwrap();
                assert!(tables.iter().any(|t| t == "requests"), "{tables:?}");
                let mut all = String::new();
                for table in tables {
                    let sql =
                        format!("SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM {table} t");
                    let text: String = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
                        sqlx::AssertSqlSafe(sql)
                    )
                    .fetch_one(&mut *c)
                    .await)
                    .unwrap();
                    all.push_str(&text);
                    all.push('\n');
                }
                all
            }
        }
    }

    /// What an attacker with write access to the database does first: lifts the triggers that
    /// keep the audit log append-only.
    pub async fn drop_audit_triggers(&self) {
        match self.driver() {
            jit::store::Driver::Sqlite => {
                self.sql(
                    "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; \
                     DROP TRIGGER audit_chain_boundary_no_update; DROP TRIGGER audit_chain_boundary_no_delete",
                )
                .await
            }
            jit::store::Driver::Postgres => {
                self.sql(
                    "ALTER TABLE audit_log DISABLE TRIGGER USER; \
                     ALTER TABLE audit_chain_boundary DISABLE TRIGGER USER",
                )
                .await
            }
        }
    }

    /// Makes every audit append fail (a full disk, say).
    pub async fn break_audit_writes(&self) {
        match self.driver() {
            jit::store::Driver::Sqlite => {
                self.sql("CREATE TRIGGER audit_full BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END")
                    .await
            }
            jit::store::Driver::Postgres => {
                self.sql(
                    "CREATE FUNCTION audit_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN RAISE EXCEPTION 'disk full'; END $$; \
                     CREATE TRIGGER audit_full BEFORE INSERT ON audit_log \
                     FOR EACH ROW EXECUTE FUNCTION audit_full()",
                )
                .await
            }
        }
    }

    /// Makes the next request's id `n + 1`.
    pub async fn set_last_request_id(&self, n: i64) {
        match self.driver() {
            jit::store::Driver::Sqlite => {
                self.sql(&format!(
                    "INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES ('requests', {n})"
                ))
                .await
            }
            jit::store::Driver::Postgres => {
                self.sql(&format!(
                    "SELECT setval(pg_get_serial_sequence('requests', 'id'), {n})"
                ))
                .await
            }
        }
    }

    /// Signs `body` as Slack would, at the harness clock's time.
    pub fn sign(&self, body: &str) -> (String, String) {
        let ts = jit::clock::Clock::wall(&self.clock).timestamp();
        let sig =
            jit::slack::verify::sign(&SecretString::from(SIGNING_SECRET), ts, body.as_bytes());
        (ts.to_string(), sig)
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        jit::clock::Clock::now(&self.clock)
    }

    pub async fn post_signed(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> reqwest::Response {
        let (ts, sig) = self.sign(&body);
        self.http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `/jit <text>` typed by `user` in #general.
    pub async fn slash(&self, user: &str, text: &str) -> Reply {
        let answer = self.driver.slash(user, ORIGIN, text).await.unwrap();
        Reply {
            status: answer.status,
            body: answer.body,
        }
    }

    pub async fn interaction(&self, payload: Value) -> Reply {
        let answer = self.driver.interaction(&payload).await.unwrap();
        Reply {
            status: answer.status,
            body: answer.body,
        }
    }

    /// A button click by `user` on a message in `channel` (the fixture's shape).
    pub fn click_payload(user: &str, action_id: &str, value: &str, channel: &str) -> Value {
        let mut payload: Value =
            serde_json::from_str(include_str!("../fixtures/slack/block-actions.json")).unwrap();
        payload["user"]["id"] = json!(user);
        payload["channel"]["id"] = json!(channel);
        payload["container"]["channel_id"] = json!(channel);
        payload["actions"][0]["action_id"] = json!(action_id);
        payload["actions"][0]["value"] = json!(value);
        // Every click is its own delivery, as in Slack (a replayed body has no effect).
        payload["trigger_id"] = json!(jit::slack::driver::trigger_id(user, action_id));
        payload["team"]["id"] = json!(jit::slack::simulator::TEAM_ID);
        payload["user"]["team_id"] = json!(jit::slack::simulator::TEAM_ID);
        payload
    }

    pub async fn click(&self, user: &str, action_id: &str, id: RequestId) -> Reply {
        let channel = if action_id == "jit.approve" || action_id == "jit.deny" {
            APPROVALS.to_owned()
        } else {
            self.slack.dm_channel_for(user)
        };
        self.interaction(Self::click_payload(
            user,
            action_id,
            &id.0.to_string(),
            &channel,
        ))
        .await
    }

    /// A modal submission with the given `(block, action, value)` inputs.
    pub async fn submit(
        &self,
        user: &str,
        callback_id: &str,
        metadata: &str,
        inputs: &[(&str, &str, &str)],
    ) -> Reply {
        let mut payload: Value =
            serde_json::from_str(include_str!("../fixtures/slack/view-submission.json")).unwrap();
        payload["user"]["id"] = json!(user);
        payload["trigger_id"] = json!(jit::slack::driver::trigger_id(user, "submit"));
        payload["team"]["id"] = json!(jit::slack::simulator::TEAM_ID);
        payload["user"]["team_id"] = json!(jit::slack::simulator::TEAM_ID);
        payload["view"]["callback_id"] = json!(callback_id);
        payload["view"]["private_metadata"] = json!(metadata);
        let mut values = serde_json::Map::new();
        for (block, action, value) in inputs {
            let state = if action.ends_with("_select") {
                json!({"type": "static_select", "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value}})
            } else if action.ends_with("_datetime") {
                // Slack sends a datetimepicker's choice as unix seconds, a number.
                json!({"type": "datetimepicker", "selected_date_time": value.parse::<i64>().unwrap()})
            } else {
                json!({"type": "plain_text_input", "value": value})
            };
            values.insert((*block).to_owned(), json!({ *action: state }));
        }
        payload["view"]["state"]["values"] = Value::Object(values);
        self.interaction(payload).await
    }

    /// Runs every due job, as the worker would.
    pub async fn run_jobs(&self) -> usize {
        jit::handlers::jobs::run_due(&self.app).await.unwrap()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn advance_and_run(&self, by: Duration) -> usize {
        self.advance(by);
        self.run_jobs().await
    }

    pub async fn stored(&self, id: RequestId) -> StoredRequest {
        let mut conn = self.app.store.read().await.unwrap();
        jit::store::requests::get(&mut conn, id)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn request(&self, id: RequestId) -> Request {
        self.stored(id).await.request
    }

    pub async fn state(&self, id: RequestId) -> State {
        self.request(id).await.state
    }

    /// Audit event names for a request's thread, in order.
    pub async fn audit_events(&self, id: RequestId) -> Vec<String> {
        let mut conn = self.app.store.read().await.unwrap();
        jit::store::audit::for_request(&mut conn, id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect()
    }

    /// Provider calls logged by the test script, as (action, request id).
    pub fn provider_calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.provider_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn provider_actions(&self, id: RequestId) -> Vec<String> {
        self.provider_calls()
            .into_iter()
            .filter(|c| c["request_id"] == json!(id.0))
            .map(|c| match c.get("failed") {
                Some(code) => format!("{}!{code}", c["action"].as_str().unwrap()),
                None => c["action"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    /// Makes the test provider fail its next `times` calls with exit `code`.
    pub fn fail_provider(&self, times: u32, code: i32) {
        std::fs::write(
            format!("{}.fail", self.provider_log.display()),
            format!("{times} {code}"),
        )
        .unwrap();
    }

    /// The last top-level message in the approvers' channel.
    pub fn approval_message(&self) -> Message {
        self.slack
            .messages(APPROVALS)
            .last()
            .cloned()
            .expect("an approval message")
    }

    pub fn dm_texts(&self, user: &str) -> Vec<String> {
        self.slack
            .dms(user)
            .into_iter()
            .map(|m| m.rendered())
            .collect()
    }

    pub fn ephemeral_texts(&self, user: &str) -> Vec<String> {
        self.slack
            .ephemerals(user)
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    /// The audit thread of the request whose root mentions `id`, rendered.
    pub fn audit_thread(&self, id: RequestId) -> Vec<String> {
        let root = self
            .slack
            .messages(AUDIT)
            .into_iter()
            .find(|m| m.text == format!("Audit thread for request {id}"))
            .expect("an audit thread root");
        self.slack
            .thread(AUDIT, &root.ts)
            .into_iter()
            .map(|m| m.rendered())
            .collect()
    }

    /// The id in a reply such as "Request #3 for …".
    pub fn id_in(text: &str) -> RequestId {
        let start = text.find('#').expect("a request id in the reply");
        let digits: String = text[start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        RequestId(digits.parse().unwrap())
    }

    /// Submits `/jit request …` and returns the new request's id.
    pub async fn request_access(&self, user: &str, text: &str) -> RequestId {
        let reply = self.slash(user, &format!("request {text}")).await;
        assert_eq!(reply.status, 200);
        Self::id_in(&reply.text())
    }
}
