//! The `okta_group` provider through jit's own flow, against the fake Okta over HTTP: request,
//! approval, grant job, expiry and teardown; overlapping grants of the same group to the same
//! person counted as one access; a member re-added outside jit after teardown alerts loudly.

use chrono::Duration;
use jit::domain::request::State;

use crate::fake_okta::{FakeOkta, TOKEN};
use crate::harness::*;

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "okta-admins"
provider = "okta_group"
org_url = "https://replaced-in-tests.okta.com"
group_id = "00gadmins"
api_token_env = "UNUSED_IN_TESTS"
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

const DEV_ID: &str = "00udev";

async fn setup() -> (FakeOkta, Harness) {
    let fake = FakeOkta::start().await;
    fake.add_user(DEV_ID, "dev@example.com");
    fake.add_group("00gadmins", "admins");
    let h = Harness::with_options(Options {
        policy: POLICY.to_owned(),
        okta: Some((fake.url.clone(), TOKEN.to_owned())),
        ..Options::default()
    })
    .await;
    (fake, h)
}

async fn granted(h: &Harness, text: &str) -> jit::domain::ids::RequestId {
    let id = h.request_access(DEV, text).await;
    h.run_jobs().await;
    h.click(ALICE, "jit.approve", id).await;
    h.run_jobs().await;
    assert_eq!(
        h.state(id).await,
        State::Active,
        "{:?}",
        h.audit_events(id).await
    );
    id
}

driver_tests! {
    async fn an_okta_grant_adds_the_member_until_expiry() {
        let (fake, h) = setup().await;
        let id = granted(&h, "okta-admins 1h rotate the signing key").await;
        assert!(fake.is_member("00gadmins", DEV_ID));
        assert_eq!(
            h.stored(id).await.grant_handle.as_deref(),
            Some("okta:00gadmins:dev@example.com")
        );
        h.advance_and_run(Duration::minutes(61)).await;
        assert!(h.request(id).await.revoked_at.is_some(), "{:?}", h.audit_events(id).await);
        assert!(!fake.is_member("00gadmins", DEV_ID));
        assert!(h.audit_events(id).await.contains(&"torn_down".to_owned()));
    }

    async fn overlapping_okta_grants_are_removed_once_by_the_last() {
        let (fake, h) = setup().await;
        let first = granted(&h, "okta-admins 1h first").await;
        h.advance_and_run(Duration::minutes(30)).await;
        let second = granted(&h, "okta-admins 1h second").await;
        h.advance_and_run(Duration::minutes(31)).await;
        assert!(h.request(first).await.revoked_at.is_some());
        assert!(fake.is_member("00gadmins", DEV_ID), "the second grant still holds it");
        assert_eq!(fake.count("DELETE", "/"), 0);
        h.advance_and_run(Duration::minutes(30)).await;
        assert!(h.request(second).await.revoked_at.is_some());
        assert!(!fake.is_member("00gadmins", DEV_ID), "{:?}", h.audit_events(second).await);
    }

    async fn an_okta_grant_whose_put_acted_then_timed_out_is_revoked() {
        let (fake, h) = setup().await;
        // The first PUT adds the member and never answers; every later call fails.
        fake.hang_next_put();
        let id = h.request_access(DEV, "okta-admins 1h the PUT hangs").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert!(fake.is_member("00gadmins", DEV_ID), "the PUT acted");
        fake.fail_next(1000);
        for _ in 1..jit::handlers::grant::GRANT_ATTEMPTS {
            h.advance_and_run(Duration::minutes(3)).await;
        }
        assert_eq!(h.state(id).await, State::Failed, "{:?}", h.audit_events(id).await);
        assert!(h.audit_events(id).await.contains(&"grant_uncertain".to_owned()));
        // Okta answers again: the compensating teardown, retried, removes the membership.
        fake.fail_next(0);
        for _ in 0..10 {
            if h.request(id).await.revoked_at.is_some() {
                break;
            }
            h.advance_and_run(Duration::minutes(5)).await;
        }
        assert!(h.request(id).await.revoked_at.is_some(), "{:?}", h.audit_events(id).await);
        assert!(!fake.is_member("00gadmins", DEV_ID));
        assert_eq!(
            h.stored(id).await.grant_handle.as_deref(),
            Some("okta:00gadmins:dev@example.com"),
            "revoked under the presumed handle"
        );
    }

    async fn an_okta_member_re_added_outside_jit_alerts_at_teardown() {
        let (fake, h) = setup().await;
        let id = granted(&h, "okta-admins 1h check the alert").await;
        fake.readd_after_delete();
        h.advance_and_run(Duration::minutes(61)).await;
        let events = h.audit_events(id).await;
        assert!(events.contains(&"teardown_attention".to_owned()), "{events:?}");
        let alert = h
            .audit_thread(id)
            .into_iter()
            .find(|m| m.contains("outside jit"))
            .expect("the alert in the audit thread");
        assert!(alert.contains("<@U0SECLEAD>"), "{alert}");
    }
}
