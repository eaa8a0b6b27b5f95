//! The front door: signatures, sizes, the Events API handshake, health, and the audit chain.

use chrono::Duration;
use jit::store::audit::Verification;
use serde_json::json;

use crate::harness::*;

fn slash_body(text: &str) -> String {
    serde_urlencoded::to_string([
        ("user_id", DEV),
        ("channel_id", ORIGIN),
        ("command", "/jit"),
        ("text", text),
        ("trigger_id", "1.2.3"),
    ])
    .unwrap()
}

async fn post(h: &Harness, path: &str, body: String, ts: String, sig: String) -> (u16, String) {
    let r = h
        .http
        .post(format!("{}{path}", h.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

driver_tests! {
    async fn forged_stale_and_oversized_requests_are_refused() {
        let h = Harness::start().await;
        let body = slash_body("request db 1h forged");
        let (ts, sig) = h.sign(&body);
        for path in ["/slack/commands", "/slack/interactions", "/slack/events"] {
            // Wrong signature.
            let bad = format!("v0={}", "0".repeat(64));
            assert_eq!(
                post(&h, path, body.clone(), ts.clone(), bad).await,
                (401, String::new()),
                "{path}"
            );
            // Body changed after signing.
            let tampered = body.replace("1h", "4h");
            assert_eq!(
                post(&h, path, tampered, ts.clone(), sig.clone()).await.0,
                401,
                "{path}"
            );
            // Signed by a secret we do not have.
            let other = jit::slack::verify::sign(
                &secrecy::SecretString::from("nope"),
                ts.parse().unwrap(),
                body.as_bytes(),
            );
            assert_eq!(
                post(&h, path, body.clone(), ts.clone(), other).await.0,
                401,
                "{path}"
            );
            // No headers at all.
            let r = h
                .http
                .post(format!("{}{path}", h.url))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401, "{path}");
        }
        // Stale: signed correctly, but six minutes old.
        let old = (h.clock_now() - Duration::minutes(6)).timestamp();
        let stale_sig = jit::slack::verify::sign(
            &secrecy::SecretString::from(SIGNING_SECRET),
            old,
            body.as_bytes(),
        );
        assert_eq!(
            post(
                &h,
                "/slack/commands",
                body.clone(),
                old.to_string(),
                stale_sig
            )
            .await,
            (401, String::new())
        );
        // A rotated-out secret that is still configured is accepted.
        let by_old = jit::slack::verify::sign(
            &secrecy::SecretString::from("old-secret"),
            ts.parse().unwrap(),
            slash_body("help").as_bytes(),
        );
        assert_eq!(
            post(
                &h,
                "/slack/commands",
                slash_body("help"),
                ts.clone(),
                by_old
            )
            .await
            .0,
            200
        );
        // Oversized: 413 before any signature check.
        let huge = slash_body(&"x".repeat(70 * 1024));
        let (hts, hsig) = h.sign(&huge);
        assert_eq!(
            post(&h, "/slack/commands", huge, hts, hsig).await,
            (413, String::new())
        );

        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::requests::list(&mut conn, false, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let metrics = h
            .http
            .get(format!("{}/metrics", h.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("jit_http_rejected_total{reason=\"bad_signature\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("jit_http_rejected_total{reason=\"stale\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("jit_http_rejected_total{reason=\"too_large\"} 1"),
            "{metrics}"
        );
    }
}

driver_tests! {
    async fn the_published_fixture_body_is_accepted_when_signed() {
        let h = Harness::start().await;
        // The fixture comes from Slack's documentation, workspace T0001.
        h.app
            .directory
            .set_workspace(jit::slack::api::WorkspaceInfo {
                team_id: "T0001".into(),
                enterprise_id: None,
                enterprise_install: false,
            });
        let body = include_str!("../fixtures/slack/slash-command.form")
            .trim()
            .to_owned();
        let reply = h
            .post_signed("/slack/commands", "application/x-www-form-urlencoded", body)
            .await;
        assert_eq!(reply.status(), 200);
        let json: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(
            json["text"],
            ":warning: There is no resource `aws-prod-readonly`. `/jit request` without arguments lists the resources you can request.\nUsage: `/jit request &lt;resource&gt; &lt;duration&gt; [at &lt;time&gt;] &lt;justification…&gt;`"
        );
    }
}

driver_tests! {
    async fn events_handshake_and_app_home() {
        let h = Harness::start().await;
        let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
        let r = h
            .post_signed("/slack/events", "application/json", challenge.to_string())
            .await;
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
        );

        let opened = json!({"type": "event_callback", "team_id": "T0JITSIM", "event_id": "Ev1", "event": {"type": "app_home_opened", "user": ALICE, "tab": "home"}});
        let r = h
            .post_signed("/slack/events", "application/json", opened.to_string())
            .await;
        assert_eq!(r.status(), 200);
        h.run_jobs().await;
        let home = h.slack.published_view(ALICE).expect("App Home published");
        let rendered = jit::slack::simulator::render_blocks(&home);
        assert!(rendered.contains("[Request access*]"), "{rendered}");
        assert!(rendered.contains("Waiting for your decision"), "{rendered}");
    }
}

driver_tests! {
    async fn health_and_readiness() {
        let h = Harness::start().await;
        let r = h
            .http
            .get(format!("{}/healthz", h.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // No worker loop runs in the harness, so the server is not ready.
        let r = h
            .http
            .get(format!("{}/readyz", h.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.unwrap(), "worker not running");
        h.app.health.worker_beat.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let r = h
            .http
            .get(format!("{}/readyz", h.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

driver_tests! {
    async fn the_hash_chain_detects_an_edited_row() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h chain").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let mut conn = h.app.store.read().await.unwrap();
        let verdict = jit::store::audit::verify(&mut conn, &crate::harness::audit_key())
            .await
            .unwrap();
        assert!(
            matches!(
                verdict,
                Verification::Intact {
                    rows: 3,
                    head: Some(_)
                }
            ),
            "{verdict:?}"
        );
        // The triggers refuse edits and deletions.
        let edit = jit::store::on!(&mut conn, |c| sqlx::query(
            "UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2"
        )
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .unwrap_err();
        assert!(edit.to_string().contains("append-only"), "{edit}");
        assert!(
            jit::store::on!(&mut conn, |c| sqlx::query(
                "DELETE FROM audit_log WHERE seq = 2"
            )
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))
            .is_err()
        );
        // Someone with file access drops the trigger and edits a row: verify names it.
        h.drop_audit_triggers().await;
        jit::store::on!(&mut conn, |c| sqlx::query(
            "UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2"
        )
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        match jit::store::audit::verify(&mut conn, &crate::harness::audit_key())
            .await
            .unwrap()
        {
            Verification::Broken {
                seq,
                rows_checked,
                reason,
            } => {
                assert_eq!((seq, rows_checked), (2, 1));
                assert!(reason.contains("edited"), "{reason}");
            }
            other => panic!("tampering not detected: {other:?}"),
        }
    }
}

driver_tests! {
    async fn app_home_for_a_requester_and_for_an_approver() {
        let h = Harness::start().await;
        let pending = h.request_access(DEV, "db 1h pending one").await;
        let active = h.request_access(DEV, "staging 2h active one").await;
        h.run_jobs().await;
        let open = |user: &str| json!({"type": "event_callback", "team_id": "T0JITSIM", "event_id": format!("Ev{user}"), "event": {"type": "app_home_opened", "user": user, "tab": "home"}});
        h.post_signed("/slack/events", "application/json", open(DEV).to_string())
            .await;
        h.post_signed("/slack/events", "application/json", open(ALICE).to_string())
            .await;
        h.run_jobs().await;

        let home = jit::slack::simulator::render_blocks(&h.slack.published_view(DEV).unwrap());
        insta::assert_snapshot!(home.replace(
            &format!("{}", jit::clock::Clock::now(&h.clock).timestamp() + 7200),
            "TS"
        ));
        assert!(home.contains(&format!("*{active}* `staging`")), "{home}");
        assert!(home.contains(&format!("*{pending}* `db`")), "{home}");
        assert!(
            !home.contains("Waiting for your decision"),
            "DEV approves nothing: {home}"
        );

        let home = jit::slack::simulator::render_blocks(&h.slack.published_view(ALICE).unwrap());
        assert!(home.contains("*Waiting for your decision*"), "{home}");
        assert!(
            home.contains(&format!(
                "*{pending}* `db` for 1 hour · waiting for approval · <@U0DEV>"
            )),
            "{home}"
        );
        assert!(home.contains("[Approve*] [Deny!]"), "{home}");

        // Approving from App Home works like the channel button; feedback goes by DM.
        let mut click = Harness::click_payload(ALICE, "jit.approve", &pending.0.to_string(), APPROVALS);
        click["container"] = json!({"type": "view", "view_id": "V1"});
        click.as_object_mut().unwrap().remove("channel");
        h.interaction(click).await;
        assert_eq!(
            h.state(pending).await,
            jit::domain::request::State::Approved
        );

        // The "Request access" button opens the form.
        let mut form = Harness::click_payload(DEV, "jit.open_form", "", APPROVALS);
        form["container"] = json!({"type": "view", "view_id": "V2"});
        form.as_object_mut().unwrap().remove("channel");
        h.interaction(form).await;
        assert_eq!(
            h.slack.opened_views().last().unwrap().view["callback_id"],
            "jit.request_modal"
        );
    }
}
