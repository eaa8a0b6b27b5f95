//! The hardened edge (security review, second round): each test does what the attacker did.

use jit::domain::request::State;

use crate::harness::*;

/// An admin who took break-glass could mark it reviewed themselves.
#[tokio::test]
async fn nobody_reviews_their_own_breakglass() {
    let h = Harness::start().await;
    h.slack.set_group_members("S0SECURITY", &[CAROL]);
    h.app
        .directory
        .refresh(&jit::domain::ids::SlackGroupId::parse("S0SECURITY").unwrap())
        .await;
    let reply = h.slash(SECLEAD, "breakglass db the site is down").await;
    let id = Harness::id_in(&reply.text());
    h.run_jobs().await;
    assert_eq!(h.state(id).await, State::Active);

    for action in ["jit.review", "jit.review_revoke"] {
        h.interaction(Harness::click_payload(
            SECLEAD,
            action,
            &id.0.to_string(),
            AUDIT,
        ))
        .await;
        h.run_jobs().await;
        let review = h.request(id).await;
        assert_eq!(
            review.reviewed_by, None,
            "{action} by the taker changes nothing"
        );
        assert_eq!(review.state, State::Active);
    }
    assert!(
        h.ephemeral_texts(SECLEAD)
            .iter()
            .any(|t| t.contains("another admin has to review it")),
        "{:?}",
        h.ephemeral_texts(SECLEAD)
    );
    // Another admin can.
    h.interaction(Harness::click_payload(
        CAROL,
        "jit.review",
        &id.0.to_string(),
        AUDIT,
    ))
    .await;
    assert_eq!(h.request(id).await.reviewed_by.as_deref(), Some(CAROL));
}

/// Stale group membership (Slack unreachable for longer than the documented maximum) grants
/// no approver rights: fail closed, and say why.
#[tokio::test]
async fn stale_group_membership_grants_no_rights() {
    use jit::slack::simulator::Fault;
    let h = Harness::start().await;
    h.slack
        .inject("usergroups.users.list", Fault::ServerError(503), 1000);
    h.advance(chrono::Duration::seconds(
        jit::slack::directory::MAX_STALENESS.as_secs() as i64 + 60,
    ));
    h.app
        .directory
        .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
        .await;
    let id = h.request_access(DEV, "db 1h needs an sre").await;
    h.run_jobs().await;
    h.click("U0SRE1", "jit.approve", id).await;
    h.run_jobs().await;
    assert_eq!(
        h.state(id).await,
        State::Pending,
        "stale membership approves nothing"
    );
    let told = h.ephemeral_texts("U0SRE1");
    assert!(
        told.iter()
            .any(|t| t.contains("has not been able to read who is in") && t.contains("S0SRE")),
        "{told:?}"
    );
    // Slack answers again: the next click refreshes the group and the member may approve.
    h.slack.clear_faults();
    h.advance(chrono::Duration::minutes(1));
    h.click("U0SRE1", "jit.approve", id).await;
    assert_eq!(h.state(id).await, State::Approved);
}
