//! Issued secrets: revealed once in a modal to the holder only, encrypted at rest, erased at
//! the end, and never in chat, logs or the audit. Also the real providers end to end through
//! the Slack flow (moto and PostgreSQL, when their variables are set).

use chrono::Duration;
use jit::domain::ids::RequestId;
use jit::domain::request::State;
use serde_json::Value;

use crate::harness::*;

fn reveal_views(h: &Harness) -> Vec<Value> {
    h.slack
        .opened_views()
        .into_iter()
        .filter(|v| v.view["callback_id"] == "jit.reveal_modal")
        .map(|v| v.view)
        .collect()
}

/// Every place a secret must never be: logs, the database files, Slack messages and API calls
/// other than the reveal modal, and the audit log.
async fn assert_nowhere(h: &Harness, logs: &LogBuffer, secrets: &[String]) {
    assert!(!secrets.is_empty());
    let logs = logs.text();
    assert!(logs.contains("jit"), "the log capture works");
    let files = vec![("the database".to_owned(), h.stored_text().await)];
    let calls: Vec<String> = h
        .slack
        .calls()
        .into_iter()
        .filter(|c| {
            !(c.method == "views.open" && c.body["view"]["callback_id"] == "jit.reveal_modal")
        })
        .map(|c| c.body.to_string())
        .collect();
    for secret in secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        for (path, content) in &files {
            assert!(
                !content.contains(secret.as_str()),
                "a secret is in plaintext in {path}"
            );
        }
        for call in &calls {
            assert!(
                !call.contains(secret.as_str()),
                "a secret reached Slack outside the reveal modal: {call}"
            );
        }
    }
}

driver_tests! {
    async fn credentials_are_revealed_to_the_holder_only_and_stored_nowhere_else() {
        let logs = logs();
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h secret work").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let secret = h.provider_calls()[0]["secret"].as_str().unwrap().to_owned();

        // Someone else clicking the holder's button gets nothing.
        h.interaction(Harness::click_payload(
            MALLORY,
            "jit.reveal",
            "1",
            &h.slack.dm_channel_for(MALLORY),
        ))
        .await;
        h.run_jobs().await;
        assert!(reveal_views(&h).is_empty());
        assert_eq!(
            h.ephemeral_texts(MALLORY),
            ["Only the holder of a grant can reveal its credentials."]
        );

        // The holder sees them in a modal; the reveal is audited.
        h.click(DEV, "jit.reveal", id).await;
        let views = reveal_views(&h);
        assert_eq!(views.len(), 1);
        let shown = views[0].to_string();
        assert!(shown.contains(&secret), "the modal shows the credentials");
        assert!(shown.contains("export PASSWORD="), "{shown}");
        h.click(DEV, "jit.reveal", id).await;
        let events = h.audit_events(id).await;
        assert_eq!(
            events
                .iter()
                .filter(|e| *e == "credentials_revealed")
                .count(),
            2
        );

        // At the end they are erased, and revealing is refused.
        h.advance_and_run(Duration::hours(1)).await;
        h.click(DEV, "jit.reveal", id).await;
        h.run_jobs().await;
        assert_eq!(reveal_views(&h).len(), 2);
        assert!(
            h.ephemeral_texts(DEV)
                .last()
                .unwrap()
                .contains("is expired; its credentials are gone"),
            "{:?}",
            h.ephemeral_texts(DEV)
        );

        // A second grant, still active at the end of the test: its sealed secret is in the database.
        let id2 = h.request_access(DEV, "db 1h more").await;
        h.run_jobs().await;
        h.click(BOB, "jit.approve", id2).await;
        h.run_jobs().await;
        let secret2 = h
            .provider_calls()
            .iter()
            .find(|c| c["request_id"] == id2.0 && c["action"] == "grant")
            .unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::credentials::get(&mut conn, id2)
                .await
                .unwrap()
                .is_some()
        );
        drop(conn);
        assert_nowhere(&h, &logs, &[secret, secret2]).await;
        // The audit export carries no secret either (it is in the database files checked above,
        // and here as rendered for a SIEM).
        let mut conn = h.app.store.read().await.unwrap();
        let rows = jit::store::audit::page(&mut conn, 0, 1000).await.unwrap();
        assert!(rows.iter().all(|r| !r.detail.contains("s3cr3t-")));
    }
}

/// The server a test needs. Such tests are built as ignored without the variable (build.rs);
/// built with it, they run, and fail if it is gone at run time.
fn env_or_skip(name: &str, what: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) => panic!("{name} was set when {what} was built but is unset now"),
    }
}

const AWS_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "aws-prod"
provider = "aws_sts"
role_arn = "{role_arn}"
role_max_session = "2h"
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

driver_tests! {
    #[cfg_attr(not(jit_moto_tests), ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time")]
    async fn aws_sts_end_to_end_through_slack() {
        let Some(endpoint) = env_or_skip("JIT_TEST_AWS_ENDPOINT", "the STS flow against moto") else {
            return;
        };
        let sdk = moto_sdk(&endpoint).await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let role = format!("jit-flow-{:08x}", rand::random::<u32>());
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
        let created = iam
            .create_role()
            .role_name(&role)
            .assume_role_policy_document(trust)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "JIT_TEST_AWS_ENDPOINT is set but moto at {endpoint} did not create a role: {e:?}"
                )
            });
        let arn = created.role().unwrap().arn().to_owned();

        let now = chrono::Utc::now();
        let h = Harness::with_options(Options {
            policy: AWS_POLICY.replace("{role_arn}", &arn),
            start: now,
            aws_endpoint: Some(endpoint.clone()),
            ..Options::default()
        })
        .await;
        let id = h.request_access(DEV, "aws-prod 1h read the logs").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.state(id).await,
            State::Active,
            "{:?}",
            h.audit_events(id).await
        );

        h.click(DEV, "jit.reveal", id).await;
        let view = reveal_views(&h).pop().expect("the reveal modal");
        let text = view.to_string();
        let grab = |name: &str| -> String {
            let start = text
                .find(&format!("export {name}='"))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                + name.len()
                + 9;
            text[start..].split('\'').next().unwrap().to_owned()
        };
        let (key, secret, token) = (
            grab("AWS_ACCESS_KEY_ID"),
            grab("AWS_SECRET_ACCESS_KEY"),
            grab("AWS_SESSION_TOKEN"),
        );
        // The credentials work: moto says who they belong to.
        let issued = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .http_client(sdk.http_client().unwrap())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        key,
                        secret.clone(),
                        Some(token),
                        None,
                        "issued",
                    ),
                ),
            )
            .build();
        let me = aws_sdk_sts::Client::new(&issued)
            .get_caller_identity()
            .send()
            .await
            .unwrap();
        let who = me.arn().unwrap();
        assert!(
            who.contains(&format!("assumed-role/{role}/jit-{}-", id.0)),
            "{who}"
        );
        // No secret in chat.
        for m in h.slack.dms(DEV) {
            assert!(!m.text.contains(&secret) && !m.blocks.to_string().contains(&secret));
        }

        // Release: the early revoke writes a deny statement for exactly this session.
        h.click(DEV, "jit.release", id).await;
        h.run_jobs().await;
        assert!(h.request(id).await.revoked_at.is_some());
        let doc = iam
            .get_role_policy()
            .role_name(&role)
            .policy_name(jit::providers::aws_sts::REVOCATION_POLICY_NAME)
            .send()
            .await
            .unwrap();
        let doc = jit::providers::aws_sts::decode_policy_document(doc.policy_document()).unwrap();
        assert!(doc.contains(&format!("jit-{}-", id.0)), "{doc}");
        // The cleanup job removes it after the credentials' natural expiry.
        h.advance_and_run(Duration::hours(2)).await;
        let after = iam
            .get_role_policy()
            .role_name(&role)
            .policy_name(jit::providers::aws_sts::REVOCATION_POLICY_NAME)
            .send()
            .await;
        assert!(after.is_err(), "the revocation policy is gone once empty");
        assert!(h.audit_events(id).await.contains(&"cleaned_up".to_owned()));
        let _ = iam.delete_role().role_name(&role).send().await;
    }
}

const PG_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "pg"
provider = "postgres"
database_url_env = "UNUSED_IN_TESTS"
roles = ["{role}"]
allow_superuser_admin = true   # JIT_TEST_POSTGRES_URL is a superuser (postgres.rs uses a CREATEROLE admin)
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

driver_tests! {
    #[cfg_attr(not(jit_postgres_tests), ignore = "needs JIT_TEST_POSTGRES_URL at build time")]
    async fn postgres_end_to_end_through_slack() {
        let Some(url) = env_or_skip("JIT_TEST_POSTGRES_URL", "the PostgreSQL flow") else {
            return;
        };
        let admin = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| {
            panic!("JIT_TEST_POSTGRES_URL is set but PostgreSQL cannot be reached: {e}")
        });
        let n = rand::random::<u32>() >> 1;
        let (role, table) = (
            format!("jit_flow_reader_{n}"),
            format!("jit_flow_table_{n}"),
        );
        for sql in [
            format!("CREATE ROLE {role} NOLOGIN"),
            format!("CREATE TABLE {table} (x int)"),
            format!("INSERT INTO {table} VALUES (42)"),
            format!("GRANT SELECT ON {table} TO {role}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .unwrap();
        }
        // Request ids restart at 1 in every harness; keep this run's role names apart from others.
        let h = Harness::with_options(Options {
            policy: PG_POLICY.replace("{role}", &role),
            start: chrono::Utc::now(),
            postgres_url: Some(url.clone()),
            ..Options::default()
        })
        .await;
        h.set_last_request_id(n as i64).await;
        let id = h.request_access(DEV, "pg 1h check the numbers").await;
        assert_eq!(id, RequestId(n as i64 + 1));
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.state(id).await,
            State::Active,
            "{:?}",
            h.audit_events(id).await
        );
        h.click(DEV, "jit.reveal", id).await;
        let text = reveal_views(&h).pop().unwrap().to_string();
        let start = text.find("export DATABASE_URL='").unwrap() + "export DATABASE_URL='".len();
        let database_url = text[start..].split('\'').next().unwrap().to_owned();
        let mut holder = sqlx::PgConnection::connect(&database_url).await.unwrap();
        let x: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT x FROM {table}")))
            .fetch_one(&mut holder)
            .await
            .unwrap();
        assert_eq!(x, 42, "the ephemeral role reads through the granted role");

        h.click(DEV, "jit.release", id).await;
        h.run_jobs().await;
        assert!(h.request(id).await.revoked_at.is_some());
        assert!(
            sqlx::query("SELECT 1").execute(&mut holder).await.is_err(),
            "the open session was terminated"
        );
        assert!(
            sqlx::PgConnection::connect(&database_url).await.is_err(),
            "the login is gone"
        );
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(format!("jit_{}", id.0))
                .fetch_one(&admin)
                .await
                .unwrap();
        assert!(!exists);
        for sql in [format!("DROP TABLE {table}"), format!("DROP ROLE {role}")] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}

use sqlx::Connection;
