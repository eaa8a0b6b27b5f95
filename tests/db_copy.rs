//! `jit db copy`: a SQLite deployment moved to PostgreSQL, through the real binary.
//!
//! The source is made by the real app (signed Slack requests, clicks, the worker, the exec test
//! provider), so it holds every kind of row jit writes: a pending request, an active grant with
//! sealed credentials and an extension, approvals, issued credentials, an API token, deliveries,
//! the keyed audit chain with its boundary and an anchor, Slack's pace, a webhook receiver's
//! delivery cursor, and jobs that are queued, blocked (behind a chain's head), running (left by
//! the stopped process), done and dead. After
//! the copy, every table is compared row by row with the source, `jit audit verify` passes on the
//! copy, a second copy is refused, and `jit serve` on the copy runs the jobs that were waiting.
//!
//! The tests that need PostgreSQL are ignored unless `JIT_TEST_POSTGRES_URL` was set at build
//! time; the refusals that happen before the target is reached (the instance lock, a table the
//! copier does not know) and the table list need none.

#[macro_use]
#[path = "support/db.rs"]
mod db;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jit::app::Settings;
use jit::bootstrap::{self, Parts};
use jit::clock::ManualClock;
use jit::crypto::{AuditKey, Cipher};
use jit::domain::ids::RequestId;
use jit::domain::policy::Policy;
use jit::domain::request::State;
use jit::providers::Providers;
use jit::slack::driver::{SlackDriver, click_payload};
use jit::slack::simulator::FakeSlack;
use jit::store::copy::TABLES;
use jit::store::{self, Driver, Durability, Store};
use secrecy::SecretString;
use sqlx::AssertSqlSafe;

const SECRET: &str = "db-copy-signing-secret";
const TOKEN: &str = "xoxb-db-copy";
const ENCRYPTION_KEY: [u8; 32] = [7; 32];
const AUDIT_KEY: [u8; 32] = [0x5a; 32];
const DEV: &str = "U0DEV";
const ALICE: &str = "U0ALICE";
const BOB: &str = "U0BOB";
const CAROL: &str = "U0CAROL";
const APPROVALS: &str = "C0APPROVALS";
const AUDIT: &str = "C0AUDIT";

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "db"
description = "Production database"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = { log = "{log}" }
max_duration = "4h"
requesters = { users = ["U0DEV", "U0CAROL"], identities = ["ci"] }
# "both": the approvers also get DM copies, so `approval_copies` has rows to copy.
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"], notify = "both" }

[[identity]]
name = "ci"
owner = { users = ["U0CAROL"] }
resources = ["db"]
"#;

fn hex_key(key: [u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn jit_bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jit"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "opsperson");
    command
}

/// `jit db copy --from FROM --to TO` with the deployment's keys.
fn db_copy(from: &str, to: &str) -> Output {
    jit_bin()
        .args(["db", "copy", "--from", from, "--to", to])
        .env("JIT_ENCRYPTION_KEY", hex_key(ENCRYPTION_KEY))
        .env("JIT_AUDIT_KEY", hex_key(AUDIT_KEY))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A SQLite deployment, made and then stopped by the real app.
struct Source {
    dir: tempfile::TempDir,
    slack: FakeSlack,
    /// Request ids: the active grant, its extension, the pending request.
    grant: RequestId,
    extension: RequestId,
    pending: RequestId,
    /// The job the stopped process left running.
    running_job: i64,
}

impl Source {
    fn db_path(&self) -> PathBuf {
        self.dir.path().join("jit.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("jit.toml")
    }

    async fn build() -> Source {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/provider.py");
        let policy_text = POLICY
            .replace("{script}", script.to_str().unwrap())
            .replace("{log}", dir.path().join("provider.log").to_str().unwrap());
        std::fs::write(dir.path().join("jit.toml"), &policy_text).unwrap();
        let policy = Policy::parse(&policy_text, &|p: &str| std::fs::read_to_string(p)).unwrap();
        let slack = FakeSlack::start(TOKEN).await.unwrap();
        for (id, name) in [
            (DEV, "dev"),
            (ALICE, "alice"),
            (BOB, "bob"),
            (CAROL, "carol"),
            ("U0SECLEAD", "seclead"),
        ] {
            slack.set_user(id, name, Some(&format!("{name}@example.com")));
        }

        let url = format!("sqlite://{}", dir.path().join("jit.db").display());
        let store = Store::connect(&url, Durability::Full).await.unwrap();
        store.migrate().await.unwrap();
        // Now, to the millisecond, so that `jit serve` on the copy later finds its jobs due.
        let start = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        store
            .open_audit_chain(AuditKey::from_bytes(AUDIT_KEY), start)
            .await
            .unwrap();
        let clock = ManualClock::new(start);
        let (providers, _) = Providers::with_local(policy.resources(), None);
        let app = bootstrap::build(Parts {
            policy,
            store,
            clock: Arc::new(clock.clone()),
            slack_api_url: slack.api_url(),
            bot_token: SecretString::from(TOKEN),
            signing_secrets: vec![SecretString::from(SECRET)],
            cipher: Cipher::from_bytes(&ENCRYPTION_KEY),
            providers,
            settings: Settings::default(),
            posts_per_channel_per_second: std::num::NonZeroU32::new(1000).unwrap(),
            webhooks: None,
            pagerduty: None,
        })
        .unwrap();
        app.directory
            .refresh_all(&jit::slack::directory::groups_in(&app.policy))
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server =
            tokio::spawn(axum::serve(listener, jit::server::router(app.clone())).into_future());
        let slack_user =
            SlackDriver::new(&base, SecretString::from(SECRET), Arc::new(clock.clone()));
        let run = || async { jit::handlers::jobs::run_due(&app).await.unwrap() };
        let request = async |user: &str, text: &str| -> RequestId {
            let answer = slack_user.slash(user, "C0GENERAL", text).await.unwrap();
            assert_eq!(answer.status, 200, "{answer:?}");
            let reply = answer.text();
            let digits: String = reply[reply.find('#').expect(&reply) + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            RequestId(digits.parse().unwrap())
        };
        let click = async |user: &str, action: &str, id: RequestId| {
            let answer = slack_user
                .interaction(&click_payload(user, action, &id.0.to_string(), APPROVALS))
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{answer:?}");
        };
        let state = async |id: RequestId| {
            let mut conn = app.store.read().await.unwrap();
            store::requests::get(&mut conn, id)
                .await
                .unwrap()
                .unwrap()
                .request
                .state
        };

        // An active grant with sealed credentials, and an extension of it.
        let grant = request(DEV, "request db 2h long migration").await;
        run().await;
        click(ALICE, "jit.approve", grant).await;
        run().await;
        assert_eq!(state(grant).await, State::Active);
        let extension = request(DEV, "extend 1 1h").await;
        run().await;
        click(BOB, "jit.approve", extension).await;
        run().await;
        assert_eq!(state(extension).await, State::Applied);
        // A pending request whose approval message was posted.
        let pending = request(CAROL, "request db 1h look at a slow query").await;
        run().await;
        assert_eq!(state(pending).await, State::Pending);
        // An anchor of the audit chain's head, and Slack's pace in the approvers' channel.
        {
            let mut tx = app.store.begin_write().await.unwrap();
            let (seq, hash) = store::audit::head(&mut tx).await.unwrap().unwrap();
            store::audit::record_anchor(
                &mut tx,
                seq,
                &hash,
                AUDIT,
                Some("1700000000.000900"),
                start,
            )
            .await
            .unwrap();
            assert!(
                store::pace::take(&mut tx, APPROVALS, start, Duration::from_secs(1), 1)
                    .await
                    .unwrap()
                    .is_ok()
            );
            // A webhook receiver's delivery cursor: the audit events it has been sent.
            store::webhooks::advance(&mut tx, "https://siem.example.com/jit", seq, start)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        // A job that died.
        {
            let mut tx = app.store.begin_write().await.unwrap();
            store::jobs::enqueue(
                &mut tx,
                &store::jobs::NewJob {
                    kind: "db_copy.test_dead",
                    payload: "{}".into(),
                    run_at: start,
                    unique_key: Some("db-copy-dead".into()),
                    lane: None,
                    ordered: false,
                    max_attempts: Some(1),
                    priority: store::jobs::PRIORITY_ACCESS,
                    chain_class: store::jobs::CHAIN_NORMAL,
                    chain_key: None,
                },
                start,
            )
            .await
            .unwrap()
            .unwrap();
            let claimed = store::jobs::claim(
                &mut tx,
                start,
                start + chrono::Duration::minutes(1),
                1,
                None,
            )
            .await
            .unwrap();
            assert_eq!(claimed[0].kind, "db_copy.test_dead");
            let buried = store::jobs::bury(
                &mut tx,
                claimed[0].id,
                claimed[0].attempts,
                "gave up",
                start,
            )
            .await
            .unwrap();
            assert!(matches!(buried, store::requests::Fenced::Applied));
            tx.commit().await.unwrap();
        }
        // Requests whose messages were never sent: a chain of Slack messages, its head claimed
        // by a worker when the process stopped (running), the rest queued and blocked behind it.
        for n in 0..3 {
            request(DEV, &format!("request db 30m chained {n}")).await;
        }
        let running_job = {
            let mut tx = app.store.begin_write().await.unwrap();
            let claimed = store::jobs::claim(
                &mut tx,
                start,
                start + chrono::Duration::minutes(5),
                1,
                None,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            claimed[0].id
        };
        server.abort();
        app.store.close().await;
        // An API token of a non-human identity, made the way operators make one.
        let token = jit_bin()
            .args(["identity", "token", "create", "ci"])
            .env("JIT_DATABASE_URL", &url)
            .env("JIT_POLICY", dir.path().join("jit.toml"))
            .env("JIT_AUDIT_KEY", hex_key(AUDIT_KEY))
            .output()
            .unwrap();
        assert_eq!(token.status.code(), Some(0), "{}", text(&token));

        let source = Source {
            dir,
            slack,
            grant,
            extension,
            pending,
            running_job,
        };
        // What the test relies on is there.
        let dump = dump_sqlite(&source.url()).await;
        let states: BTreeSet<String> = dump["jobs"]
            .iter()
            .map(|row| row["state"].clone().unwrap())
            .collect();
        for state in ["queued", "blocked", "running", "done", "dead"] {
            assert!(states.contains(state), "no {state} job in {states:?}");
        }
        assert!(
            dump["jobs"]
                .iter()
                .any(|row| row["state"].as_deref() == Some("queued")
                    && row["run_at"].as_deref().unwrap().parse::<i64>().unwrap()
                        > start.timestamp_millis() + 3_600_000),
            "a teardown queued for later"
        );
        for table in TABLES {
            assert!(!dump[*table].is_empty(), "the source has no {table} row");
        }
        source
    }
}

/// One row: column → value as text (BLOBs in hex, booleans as 0/1), NULL as `None`.
type Dumped = BTreeMap<String, Option<String>>;

/// Every row of every table of [`TABLES`], read with SQL of this test's own (not the copier's),
/// sorted.
async fn dump_sqlite(url: &str) -> BTreeMap<String, Vec<Dumped>> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let mut out = BTreeMap::new();
    for table in TABLES {
        let columns: Vec<(String, String)> =
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(&pool)
                .await
                .unwrap();
        let select = columns
            .iter()
            .map(|(name, ty)| {
                if ty.eq_ignore_ascii_case("BLOB") {
                    format!("CASE WHEN {name} IS NULL THEN NULL ELSE lower(hex({name})) END")
                } else {
                    format!("CAST({name} AS TEXT)")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(
            table.to_string(),
            rows(
                sqlx::query(AssertSqlSafe(format!("SELECT {select} FROM {table}")))
                    .fetch_all(&pool)
                    .await
                    .unwrap(),
                &columns,
            ),
        );
    }
    pool.close().await;
    out
}

async fn dump_postgres(url: &str) -> BTreeMap<String, Vec<Dumped>> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut out = BTreeMap::new();
    for table in TABLES {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        let select = columns
            .iter()
            .map(|(name, ty)| match ty.as_str() {
                "bytea" => format!("encode({name}, 'hex')"),
                "boolean" => {
                    format!("CASE WHEN {name} IS NULL THEN NULL WHEN {name} THEN '1' ELSE '0' END")
                }
                _ => format!("{name}::text"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(
            table.to_string(),
            rows(
                sqlx::query(AssertSqlSafe(format!("SELECT {select} FROM {table}")))
                    .fetch_all(&pool)
                    .await
                    .unwrap(),
                &columns,
            ),
        );
    }
    pool.close().await;
    out
}

fn rows<R: sqlx::Row>(rows: Vec<R>, columns: &[(String, String)]) -> Vec<Dumped>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let mut out: Vec<Dumped> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), row.try_get::<Option<String>, _>(i).unwrap()))
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// `jit serve` on `database_url`, with the source's policy, keys and Slack.
fn serve(source: &Source, database_url: &str) -> (Child, String, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = source.dir.path().join(format!("serve-{port}.log"));
    let child = jit_bin()
        .arg("serve")
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("SLACK_BOT_TOKEN", TOKEN)
        .env("JIT_ENCRYPTION_KEY", hex_key(ENCRYPTION_KEY))
        .env("JIT_AUDIT_KEY", hex_key(AUDIT_KEY))
        .env("JIT_SLACK_API_URL", source.slack.api_url())
        .env("JIT_DATABASE_URL", database_url)
        .env("JIT_POLICY", source.policy_path())
        .env("JIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("JIT_SLACK_CHANNEL_RATE", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"), log)
}

async fn wait_for<F: AsyncFnMut() -> bool>(what: &str, log: &Path, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out waiting for {what}; jit serve logged:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_full_sqlite_deployment_is_copied_row_for_row_and_serves_on_postgres() {
    let source = Source::build().await;
    let target = db::TestDb::new(Driver::Postgres).await;
    let before = dump_sqlite(&source.url()).await;

    let out = db_copy(&source.url(), &target.url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for table in TABLES {
        let line = format!("  {table:<22} {:>10}", before[*table].len());
        assert!(stdout.contains(&line), "`{line}` missing from\n{stdout}");
    }
    assert!(
        stdout.contains("jobs: 1 left running by the stopped jit queued again"),
        "{stdout}"
    );
    let audit_rows = before["audit_log"].len();
    assert!(
        stdout.contains(&format!(
            "audit chain verified on the copy: {audit_rows} events, head {audit_rows}:"
        )),
        "{stdout}"
    );

    // Row for row, every table, every column; the one change: the running job is queued again
    // with its lease cleared (attempts, run_at and the rest as they were).
    let mut expected = before.clone();
    let mut requeued = 0;
    for row in expected.get_mut("jobs").unwrap() {
        if row["state"].as_deref() == Some("running") {
            assert_eq!(row["id"], Some(source.running_job.to_string()));
            assert!(row["lease_until"].is_some());
            row.insert("state".into(), Some("queued".into()));
            row.insert("lease_until".into(), None);
            requeued += 1;
        }
    }
    assert_eq!(requeued, 1);
    expected.get_mut("jobs").unwrap().sort();
    let after = dump_postgres(&target.url()).await;
    for table in TABLES {
        assert_eq!(
            after[*table], expected[*table],
            "{table}: the copy (left) differs from the source (right)"
        );
    }

    // The copy works as jit's database: credentials open with the same key, the grant's
    // teardown is queued at its expiry, new ids follow the copied ones.
    let copy = target.connect().await;
    {
        let mut conn = copy.read().await.unwrap();
        let sealed = store::credentials::get(&mut conn, source.grant)
            .await
            .unwrap()
            .expect("the grant's sealed credentials");
        Cipher::from_bytes(&ENCRYPTION_KEY)
            .open(&sealed, &store::credentials::aad(source.grant))
            .expect("the copied credentials open with the deployment's key");
        let grant = store::requests::get(&mut conn, source.grant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(grant.request.state, State::Active);
        let extension = store::requests::get(&mut conn, source.extension)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(extension.request.state, State::Applied);
        assert_eq!(
            store::requests::approvals(&mut conn, source.extension)
                .await
                .unwrap(),
            [BOB]
        );
    }
    let last_request: i64 = before["requests"]
        .iter()
        .map(|r| r["id"].as_deref().unwrap().parse::<i64>().unwrap())
        .max()
        .unwrap();
    {
        let mut tx = copy.begin_write().await.unwrap();
        let requester = jit::domain::policy::Requester::User(
            jit::domain::ids::SlackUserId::parse(DEV).unwrap(),
        );
        let resource = jit::domain::ids::ResourceId::parse("db").unwrap();
        let id = store::requests::insert(
            &mut tx,
            &store::requests::NewRequest {
                kind: jit::domain::request::Kind::Access,
                parent: None,
                requester: &requester,
                resource: &resource,
                duration: jit::domain::duration::GrantDuration::parse("1h").unwrap(),
                justification: "after the copy",
                ticket: None,
                approvals_required: 1,
                created_at: Utc::now(),
                pending_until: None,
                origin_channel: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            id.0,
            last_request + 1,
            "the identity sequence follows the copied ids"
        );
        tx.rollback().await.unwrap();
    }
    copy.close().await;

    // jit audit verify passes on the copy.
    let verify = jit_bin()
        .args(["audit", "verify"])
        .env("JIT_DATABASE_URL", target.url())
        .env("JIT_AUDIT_KEY", hex_key(AUDIT_KEY))
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(&format!(
            "audit log intact: {audit_rows} events, hash chain verified"
        )),
        "{}",
        text(&verify)
    );

    // A second copy into the same database is refused, and changes nothing.
    let again = db_copy(&source.url(), &target.url());
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("is not empty: it already holds jit rows in requests ("),
        "{stderr}"
    );
    assert_eq!(dump_postgres(&target.url()).await, after);

    // jit serve on the copy runs what was waiting: the job the stopped process held (the audit
    // thread's next post), and the approval messages queued and blocked in the approvers' chain.
    let approval_posts = source.slack.messages(APPROVALS).len();
    assert_eq!(
        approval_posts, 3,
        "the grant's, the extension's and the pending request's"
    );
    let (child, _, log) = serve(&source, &target.url());
    let _serve = Killed(child);
    let pool = sqlx::PgPool::connect(&target.url()).await.unwrap();
    wait_for("the requeued job and the chain behind it to run", &log, async || {
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE id >= $1 AND state IN ('queued', 'blocked', 'running') \
             AND kind <> 'db_copy.test_dead' AND run_at <= $2",
        )
        .bind(source.running_job)
        .bind(Utc::now().timestamp_millis())
        .fetch_one(&pool)
        .await
        .unwrap();
        let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(source.running_job)
            .fetch_one(&pool)
            .await
            .unwrap();
        state == "done" && live == 0
    })
    .await;
    assert_eq!(
        source.slack.messages(APPROVALS).len(),
        approval_posts + 3,
        "one approval message per chained request, each posted once"
    );
    let pending: String = sqlx::query_scalar("SELECT state FROM requests WHERE id = $1")
        .bind(source.pending.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, "pending");
    pool.close().await;
}

/// A `jit serve` running on the file holds its instance lock: the copy refuses, before it
/// reads anything or reaches the target, and names what to do. Once serve stopped, the same
/// command gets past the lock (and here fails on the target, which does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_refuses_while_jit_serve_holds_the_instance_lock() {
    let source = Source::build().await;
    let (child, url, log) = serve(&source, &source.url());
    let mut serve = Killed(child);
    let http = reqwest::Client::new();
    wait_for("jit serve to start", &log, async || {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let unreachable = "postgres://jit:copy-secret-pw@127.0.0.1:1/jit";
    let out = db_copy(&source.url(), unreachable);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "another jit process is serving {} (its lock {}.lock is held)",
            source.db_path().display(),
            source.db_path().display()
        )) && stderr.contains("jit db copy copies a stopped deployment: stop jit serve"),
        "{stderr}"
    );
    assert!(!stderr.contains("copy-secret-pw"), "{stderr}");

    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let out = db_copy(&source.url(), unreachable);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("another jit process"), "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("copy-secret-pw"), "{stderr}");
}

/// The copier's table list is the migrations' tables: a migration that adds a table fails this
/// test until the copier knows it.
#[tokio::test]
async fn the_copier_knows_every_table_the_migrations_create() {
    let sqlite = db::TestDb::new(Driver::Sqlite).await;
    let store = sqlite.store().await;
    let mut conn = store.read().await.unwrap();
    let created = store::copy::sqlite_tables(&mut conn).await.unwrap();
    let created: BTreeSet<&str> = created.iter().map(String::as_str).collect();
    assert_eq!(
        created,
        TABLES.iter().copied().collect::<BTreeSet<_>>(),
        "add the new table to jit::store::copy::TABLES (in foreign-key order)"
    );
}

/// A source whose audit chain does not verify under the key is refused; so is a table the copier
/// does not know (a newer jit's, or one added by hand), which is never left behind
/// silently: the copy refuses before it reaches the target.
#[tokio::test]
async fn a_source_with_an_unknown_table_or_a_chain_that_does_not_verify_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jit.db").display());
    let store = Store::connect(&url, Durability::Full).await.unwrap();
    store.migrate().await.unwrap();
    store
        .open_audit_chain(AuditKey::from_bytes(AUDIT_KEY), Utc::now())
        .await
        .unwrap();

    // A source whose audit chain does not verify under the key given is refused first.
    let wrong_key = jit_bin()
        .args([
            "db",
            "copy",
            "--from",
            &url,
            "--to",
            "postgres://jit@127.0.0.1:1/jit",
        ])
        .env("JIT_AUDIT_KEY", hex_key([1; 32]))
        .output()
        .unwrap();
    assert_eq!(wrong_key.status.code(), Some(1), "{}", text(&wrong_key));
    let stderr = String::from_utf8_lossy(&wrong_key.stderr);
    assert!(
        stderr.contains("does not verify under the audit key")
            && stderr.contains("nothing was copied"),
        "{stderr}"
    );

    store
        .execute_script("CREATE TABLE feature_flags (name TEXT PRIMARY KEY, value TEXT)")
        .await
        .unwrap();
    store.close().await;
    let out = db_copy(&url, "postgres://jit:copy-secret-pw@127.0.0.1:1/jit");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds table(s) feature_flags that jit db copy does not know"),
        "{stderr}"
    );
}
