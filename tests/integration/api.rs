//! The HTTP API for non-human identities, and the `jit` CLI as its client.

use std::time::Duration as StdDuration;

use jit::domain::ids::RequestId;
use jit::domain::request::State;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::harness::*;

async fn token(h: &Harness, identity: &str) -> String {
    let (_, token) = jit::handlers::identity::create_token(
        &h.app.store,
        &h.app.policy,
        identity,
        "cli:test",
        h.clock_now(),
    )
    .await
    .unwrap();
    token.expose_secret().to_owned()
}

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let mut request = h
        .http
        .request(method.parse().unwrap(), format!("{}/api/v1{path}", h.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn new_request(resource: &str) -> String {
    json!({"resource": resource, "duration": "1h", "justification": "deploy build 1234", "ticket": "CHG-1"}).to_string()
}

async fn request_count(h: &Harness) -> usize {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::requests::list(&mut conn, false, 100)
        .await
        .unwrap()
        .len()
}

driver_tests! {
    async fn an_identity_requests_gets_approved_in_slack_and_fetches_credentials() {
        let h = Harness::start().await;
        let token = token(&h, "ci").await;

        let (status, created) = call(
            &h,
            "POST",
            "/requests",
            Some(&token),
            Some(new_request("ci-db")),
        )
        .await;
        assert_eq!(status, 202, "{created}");
        assert_eq!(created["state"], "pending");
        let id = RequestId(created["id"].as_i64().unwrap());
        h.run_jobs().await;

        // Approvers see that the requester is an identity, and who owns it; the owner is told.
        let message = h.approval_message().rendered();
        assert!(
            message.contains("identity `ci` asks for `ci-db`"),
            "{message}"
        );
        assert!(
            message.contains(":robot_face: Non-human identity `ci`, owned by <@U0CAROL>"),
            "{message}"
        );
        let owner_dms = h.dm_texts(CAROL);
        assert!(owner_dms[0].starts_with(":robot_face: identity `ci` asked for `ci-db` for *1 hour* (request #1): waiting for approval"), "{owner_dms:?}");
        // The owner may not approve what their identity asked for.
        h.click(CAROL, "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Pending);

        let (status, shown) = call(
            &h,
            "GET",
            &format!("/requests/{}", id.0),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(shown["state"], "pending");
        // Credentials only while active.
        let (status, refused) = call(
            &h,
            "GET",
            &format!("/requests/{}/credentials", id.0),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (status, refused["code"].as_str()),
            (409, Some("not_active"))
        );

        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let (_, shown) = call(
            &h,
            "GET",
            &format!("/requests/{}", id.0),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(shown["state"], "active");
        assert!(
            h.dm_texts(CAROL)
                .last()
                .unwrap()
                .contains("approved by <@U0ALICE>"),
            "{:?}",
            h.dm_texts(CAROL)
        );

        let (status, creds) = call(
            &h,
            "GET",
            &format!("/requests/{}/credentials", id.0),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{creds}");
        let secret = h.provider_calls()[0]["secret"].as_str().unwrap().to_owned();
        assert_eq!(creds["credentials"]["PASSWORD"], secret.as_str());
        // Another identity cannot see it (and learns nothing about it).
        let other = token_for_other(&h).await;
        let (status, body) = call(
            &h,
            "GET",
            &format!("/requests/{}/credentials", id.0),
            Some(&other),
            None,
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

        let (status, released) = call(
            &h,
            "POST",
            &format!("/requests/{}/release", id.0),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (status, released["state"].as_str()),
            (200, Some("released"))
        );
        h.run_jobs().await;
        assert!(h.request(id).await.revoked_at.is_some());
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        let events = h.audit_events(id).await;
        assert!(
            events.iter().filter(|e| *e == "api_call").count() >= 4,
            "{events:?}"
        );
        assert_eq!(
            h.request(id).await.requester,
            jit::domain::policy::Requester::Identity("ci".into())
        );
    }
}

async fn token_for_other(h: &Harness) -> String {
    token(h, "other-bot").await
}

driver_tests! {
    async fn long_poll_waits_for_the_decision() {
        let h = Harness::start().await;
        let token = token(&h, "ci").await;
        let (_, created) = call(
            &h,
            "POST",
            "/requests",
            Some(&token),
            Some(new_request("ci-db")),
        )
        .await;
        let id = created["id"].as_i64().unwrap();
        h.run_jobs().await;
        let started = std::time::Instant::now();
        let path = format!("/requests/{id}?wait=30s");
        let poll = call(&h, "GET", &path, Some(&token), None);
        let decide = async {
            tokio::time::sleep(StdDuration::from_millis(300)).await;
            h.click(ALICE, "jit.approve", RequestId(id)).await;
            h.run_jobs().await;
        };
        let ((status, body), ()) = tokio::join!(poll, decide);
        assert_eq!(status, 200);
        assert_eq!(body["state"], "active", "{body}");
        let waited = started.elapsed();
        assert!(
            waited >= StdDuration::from_millis(300),
            "it waited for the decision"
        );
        assert!(
            waited < StdDuration::from_secs(20),
            "it returned when the decision came, not at the timeout"
        );
        // A short wait on an undecided request returns the current state when it runs out.
        let (_, created) = call(
            &h,
            "POST",
            "/requests",
            Some(&token),
            Some(new_request("ci-db")),
        )
        .await;
        let (status, body) = call(
            &h,
            "GET",
            &format!("/requests/{}?wait=1", created["id"]),
            Some(&token),
            None,
        )
        .await;
        assert_eq!((status, body["state"].as_str()), (200, Some("pending")));
        let (status, body) = call(
            &h,
            "GET",
            &format!("/requests/{}?wait=forever", created["id"]),
            Some(&token),
            None,
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_wait")));
    }
}

driver_tests! {
    async fn bad_calls_get_the_right_status_and_change_nothing() {
        let h = Harness::start().await;
        let good = token(&h, "ci").await;
        let (revoked_id, revoked) = {
            let (id, t) = jit::handlers::identity::create_token(
                &h.app.store,
                &h.app.policy,
                "ci",
                "cli:test",
                h.clock_now(),
            )
            .await
            .unwrap();
            (id, t.expose_secret().to_owned())
        };
        jit::handlers::identity::revoke_token(&h.app.store, revoked_id, "cli:test", h.clock_now())
            .await
            .unwrap();
        let other = token(&h, "other-bot").await;
        let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
            ("no token", None, new_request("ci-db"), 401, "unauthorized"),
            (
                "wrong token",
                Some("jit_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                new_request("ci-db"),
                401,
                "unauthorized",
            ),
            (
                "not a jit token",
                Some("xoxb-123"),
                new_request("ci-db"),
                401,
                "unauthorized",
            ),
            (
                "revoked token",
                Some(&revoked),
                new_request("ci-db"),
                401,
                "unauthorized",
            ),
            (
                "identity not allowed",
                Some(&other),
                new_request("ci-db"),
                403,
                "forbidden",
            ),
            (
                "unknown resource",
                Some(&good),
                new_request("no-such-thing"),
                403,
                "forbidden",
            ),
            (
                "resource not declared for it",
                Some(&good),
                new_request("db"),
                403,
                "forbidden",
            ),
            (
                "malformed JSON",
                Some(&good),
                "{\"resource\": ".into(),
                400,
                "invalid_json",
            ),
            (
                "unknown field",
                Some(&good),
                json!({"resource": "ci-db", "duration": "1h", "justification": "x", "admin": true})
                    .to_string(),
                400,
                "invalid_json",
            ),
            (
                "bad duration",
                Some(&good),
                json!({"resource": "ci-db", "duration": "1 hour", "justification": "x"}).to_string(),
                400,
                "invalid_duration",
            ),
            (
                "too long",
                Some(&good),
                json!({"resource": "ci-db", "duration": "3h", "justification": "x"}).to_string(),
                400,
                "duration_too_long",
            ),
            (
                "empty justification",
                Some(&good),
                json!({"resource": "ci-db", "duration": "1h", "justification": " "}).to_string(),
                400,
                "invalid_justification",
            ),
            (
                "oversized body",
                Some(&good),
                json!({"resource": "ci-db", "duration": "1h", "justification": "x".repeat(20_000)})
                    .to_string(),
                413,
                "payload_too_large",
            ),
        ];
        for (what, token, body, status, code) in cases {
            let (got, answer) = call(&h, "POST", "/requests", token, Some(body)).await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (status, Some(code)),
                "{what}: {answer}"
            );
            assert!(
                answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}"
            );
            assert!(
                !answer.to_string().contains("ci-db, "),
                "{what}: no policy detail leaks"
            );
        }
        let (status, body) = call(&h, "GET", "/requests/abc", Some(&good), None).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_id")));
        let (status, body) = call(&h, "GET", "/nothing-here", Some(&good), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("no_such_endpoint"))
        );
        assert_eq!(request_count(&h).await, 0, "nothing was stored");
        // The 403s were audited as calls by the identity; nothing was posted to Slack.
        let mut conn = h.app.store.read().await.unwrap();
        let calls = jit::store::audit::page(&mut conn, 0, 1000).await.unwrap();
        assert!(calls.iter().any(|r| r.event == "api_call"
            && r.actor == "identity:other-bot"
            && r.detail.contains("403")));
        assert!(h.slack.messages(AUDIT).is_empty());
    }
}

driver_tests! {
    async fn calls_are_rate_limited_per_token() {
        let h = Harness::start().await;
        let token = token(&h, "ci").await;
        let mut statuses = Vec::new();
        for _ in 0..125 {
            statuses.push(call(&h, "GET", "/requests", Some(&token), None).await.0);
        }
        assert!(statuses[..120].iter().all(|s| *s == 200), "{statuses:?}");
        let (status, body) = call(&h, "GET", "/requests", Some(&token), None).await;
        assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
        // Another token is not affected.
        let fresh = self::token(&h, "ci").await;
        assert_eq!(
            call(&h, "GET", "/requests", Some(&fresh), None).await.0,
            200
        );
    }
}

driver_tests! {
    async fn tokens_are_stored_only_as_hashes_and_never_logged() {
        let logs = logs();
        let h = Harness::start().await;
        let token = token(&h, "ci").await;
        call(
            &h,
            "POST",
            "/requests",
            Some(&token),
            Some(new_request("ci-db")),
        )
        .await;
        call(&h, "GET", "/requests", Some(&token), None).await;
        let mut conn = h.app.store.read().await.unwrap();
        let stored: String = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT token_hash FROM api_tokens"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(stored, jit::handlers::identity::hash(&token));
        drop(conn);
        let stored = h.stored_text().await;
        assert!(stored.contains(&jit::handlers::identity::hash(&token)), "the dump holds the table");
        assert!(!stored.contains(&token), "the token is in the database");
        assert!(!logs.text().contains(&token), "the token reached the logs");
    }
}

/// Waits for a client process without blocking the server's runtime.
async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Runs the `jit` binary as a client of the harness's server.
fn cli(h: &Harness, token: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(args)
        .env_clear()
        .env("JIT_URL", &h.url)
        .env("JIT_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

driver_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_requests_waits_and_prints_credentials() {
        let h = Harness::start().await;
        let token = token(&h, "ci").await;
        // Without --wait: the id.
        let out = finish(cli(
            &h,
            &token,
            &["request", "ci-db", "30m", "--reason", "nightly migration"],
        ))
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

        // With --wait: approve in Slack while it waits; it prints env exports.
        let child = cli(
            &h,
            &token,
            &[
                "request",
                "ci-db",
                "30m",
                "--reason",
                "deploy",
                "--wait",
                "--timeout",
                "1m",
            ],
        );
        for _ in 0..200 {
            if request_count(&h).await == 2 {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(25)).await;
        }
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", RequestId(2)).await;
        h.run_jobs().await;
        let out = finish(child).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secret = h
            .provider_calls()
            .iter()
            .find(|c| c["request_id"] == 2)
            .unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            stdout.contains(&format!("export PASSWORD='{secret}'")),
            "{stdout}"
        );
        assert!(stdout.contains("export USERNAME='jit_2'"), "{stdout}");

        // Denied while waiting: a non-zero exit that says why.
        let child = cli(
            &h,
            &token,
            &[
                "request", "ci-db", "30m", "--reason", "again", "--wait", "--format", "json",
            ],
        );
        for _ in 0..200 {
            if request_count(&h).await == 3 {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(25)).await;
        }
        h.run_jobs().await;
        jit::handlers::decision::deny(
            &h.app,
            &jit::domain::ids::SlackUserId::parse(ALICE).unwrap(),
            RequestId(3),
            "not tonight",
        )
        .await
        .unwrap();
        let out = finish(child).await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
            "jit: request #3 was denied by U0ALICE: not tonight"
        );

        // Release.
        let out = finish(cli(&h, &token, &["release", "2"])).await;
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "request #2 is released\n"
        );
        // A wrong token: a clear error.
        let out = finish(cli(&h, "jit_wrong", &["release", "2"])).await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "jit: A valid API token is required. (unauthorized, HTTP 401)\n"
        );
    }
}

driver_tests! {
    /// The README's `~/.aws/config` line, run as written (only the binary's path differs): the
    /// documented `--format credential_process` must be accepted, and print the AWS CLI's JSON.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_readmes_credential_process_line_works_as_written() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let line = readme
            .lines()
            .find_map(|l| l.strip_prefix("credential_process = "))
            .expect("the README shows a credential_process line");
        let words = shlex::split(line).expect("a shell command line");
        assert_eq!(words[0], "/usr/local/bin/jit");
        assert!(words.contains(&"credential_process".to_owned()), "{line}");
        let resource = words[2].clone();
        let policy = format!(
            r#"{POLICY}
    [[resource]]
    id = "{resource}"
    provider = "exec"
    grant_command = ["{{script}}"]
    revoke_command = ["{{script}}"]
    parameters = {{ log = "{{log}}", aws = true }}
    max_duration = "4h"
    requesters = {{ identities = ["ci"] }}
    approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
    auto_approve = {{ max_duration = "1h", identities = ["ci"] }}
    "#
        )
        .replace(
            r#"resources = ["ci-db"]"#,
            &format!(r#"resources = ["ci-db", "{resource}"]"#),
        );
        // The client compares the grant's end with the real clock.
        let h = Harness::with_options(Options {
            policy,
            start: chrono::Utc::now(),
            ..Options::default()
        })
        .await;
        let token = token(&h, "ci").await;
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let child = cli(&h, &token, &args);
        // The client asks, then waits: run the grant while it waits.
        for _ in 0..200 {
            if request_count(&h).await == 1 {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(25)).await;
        }
        h.run_jobs().await;
        let out = finish(child).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["Version"], 1);
        assert_eq!(json["AccessKeyId"], "ASIAJIT00000001");
        assert!(
            json["SecretAccessKey"]
                .as_str()
                .unwrap()
                .starts_with("s3cr3t-")
        );
        // The kebab spelling stays accepted.
        let kebab = finish(cli(
            &h,
            &token,
            &["credentials", &resource, "--format", "credential-process"],
        ))
        .await;
        assert!(
            kebab.status.success(),
            "{}",
            String::from_utf8_lossy(&kebab.stderr)
        );
    }
}
