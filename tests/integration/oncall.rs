//! On-call-aware auto-approval (`auto_approve.oncall`, issue 15 point 5), against a stateful
//! fake PagerDuty REST API served over HTTP: who is on call is read in the background and
//! cached; requests only read the cache; PagerDuty failing or stale fails closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jit::domain::request::State;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::harness::*;

const PD_TOKEN: &str = "pd-test-token-u+8xZ";

const ONCALL_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD", "U0BOB"] }

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "prod"
description = "Production"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "2h", oncall = { pagerduty_schedules = ["PPRIMARY", "PSECOND"] } }
"#;

#[derive(Default)]
struct PdState {
    /// Schedule → (PagerDuty user id, email) on call now.
    schedules: HashMap<String, Vec<(String, String)>>,
    /// People on an escalation rule directly (no schedule): PagerDuty lists them with
    /// `schedule: null`.
    direct: Vec<(String, String)>,
    /// Answer 500 to everything.
    failing: bool,
    /// The most entries per page (PagerDuty's is 100).
    page_size: usize,
    /// Every /oncalls call, answered or not.
    calls: usize,
    unauthorized: usize,
}

/// A fake PagerDuty REST API: `GET /oncalls` with `schedule_ids[]`, `include[]=users`,
/// `limit`/`offset` pagination and token authentication.
#[derive(Clone)]
struct FakePagerDuty {
    state: Arc<Mutex<PdState>>,
    url: String,
}

impl FakePagerDuty {
    async fn start() -> FakePagerDuty {
        let state = Arc::new(Mutex::new(PdState {
            page_size: 100,
            ..PdState::default()
        }));
        let router = axum::Router::new()
            .route("/oncalls", axum::routing::get(oncalls))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakePagerDuty { state, url }
    }

    fn on_call(&self, schedule: &str, people: &[(&str, &str)]) {
        self.state.lock().unwrap().schedules.insert(
            schedule.into(),
            people
                .iter()
                .map(|(id, email)| ((*id).into(), (*email).into()))
                .collect(),
        );
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }

    fn config(&self, token: &str) -> jit::oncall::PagerDutyConfig {
        jit::oncall::PagerDutyConfig {
            api_url: self.url.clone(),
            token: SecretString::from(token.to_owned()),
        }
    }
}

async fn oncalls(
    AxumState(state): AxumState<Arc<Mutex<PdState>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut state = state.lock().unwrap();
    state.calls += 1;
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Token token={PD_TOKEN}"))
    {
        state.unauthorized += 1;
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Unauthorized", "code": 2006}})),
        )
            .into_response();
    }
    if headers.get("accept").and_then(|v| v.to_str().ok())
        != Some("application/vnd.pagerduty+json;version=2")
    {
        return StatusCode::NOT_ACCEPTABLE.into_response();
    }
    if state.failing {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut schedule_ids = Vec::new();
    let (mut offset, mut limit, mut users_included) = (0usize, 25usize, false);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "schedule_ids[]" => schedule_ids.push(value.into_owned()),
            "offset" => offset = value.parse().unwrap(),
            "limit" => limit = value.parse().unwrap(),
            "include[]" if value == "users" => users_included = true,
            _ => {}
        }
    }
    let limit = limit.min(state.page_size);
    let user = |id: &str, email: &str| {
        if users_included {
            json!({"id": id, "type": "user", "summary": email, "email": email, "name": id})
        } else {
            json!({"id": id, "type": "user_reference", "summary": email})
        }
    };
    let mut all: Vec<Value> = Vec::new();
    for (id, email) in &state.direct {
        all.push(json!({
            "escalation_policy": {"id": "PEP1", "type": "escalation_policy_reference"},
            "escalation_level": 1,
            "schedule": null,
            "user": user(id, email),
            "start": null, "end": null
        }));
    }
    for schedule in &schedule_ids {
        for (id, email) in state.schedules.get(schedule).into_iter().flatten() {
            all.push(json!({
                "escalation_policy": {"id": "PEP1", "type": "escalation_policy_reference"},
                "escalation_level": 2,
                "schedule": {"id": schedule, "type": "schedule_reference"},
                "user": user(id, email),
                "start": "2026-11-23T09:00:00Z", "end": "2026-11-24T09:00:00Z"
            }));
        }
    }
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    axum::Json(json!({
        "oncalls": page,
        "limit": limit,
        "offset": offset,
        "more": offset + limit < all.len(),
        "total": null
    }))
    .into_response()
}

async fn oncall_harness(pd: &FakePagerDuty, token: &str) -> Harness {
    Harness::with_options(Options {
        policy: ONCALL_POLICY.to_owned(),
        pagerduty: Some(pd.config(token)),
        ..Options::default()
    })
    .await
}

async fn refresh(h: &Harness) -> bool {
    h.app.directory.oncall().unwrap().refresh().await
}

/// The detail of the request's `auto_approved` audit event, if any.
async fn auto_approved_detail(h: &Harness, id: jit::domain::ids::RequestId) -> Option<Value> {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::audit::for_request(&mut conn, id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.event == "auto_approved")
        .map(|r| serde_json::from_str(&r.detail).unwrap())
}

driver_tests! {
    /// On call in a schedule: approved by policy and audited with the schedule; not on call:
    /// to the approvers; the ack path never calls PagerDuty; `/jit why` says which applies.
    async fn on_call_requesters_are_approved_by_policy_and_others_go_to_approvers() {
        let pd = FakePagerDuty::start().await;
        pd.on_call("PPRIMARY", &[("PUSER1", "sre1@example.com")]);
        // Matched by email, whatever its case.
        pd.on_call("PSECOND", &[("PUSER2", "DEV@Example.com")]);
        pd.state.lock().unwrap().direct = vec![("PUSER3".into(), "carol@example.com".into())];
        let h = oncall_harness(&pd, PD_TOKEN).await;
        assert!(refresh(&h).await);
        let calls = pd.calls();
        assert_eq!(calls, 1);

        let ack = h.slash(DEV, "request prod 1h hotfix for INC-1").await.text();
        assert!(
            ack.contains("was approved by policy (you are on call in PagerDuty schedule `PSECOND`)"),
            "{ack}"
        );
        let id = Harness::id_in(&ack);
        assert_eq!(pd.calls(), calls, "the ack path makes no PagerDuty call");
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        let detail = auto_approved_detail(&h, id).await.expect("auto-approved");
        assert_eq!(detail["on_call"], "PSECOND", "{detail}");
        let thread = h.audit_thread(id).join("\n");
        assert!(
            thread.contains("Approved by policy: the requester is on call in PagerDuty schedule `PSECOND`"),
            "{thread}"
        );
        assert!(h.slack.messages(APPROVALS).is_empty(), "nothing to approve");

        // An extension within the rule's 2h in all is approved by on-call too, and audited so.
        let extended = h.slash(DEV, &format!("extend {} 30m", id.0)).await.text();
        assert!(extended.contains("approved by policy"), "{extended}");
        h.run_jobs().await;
        let details: Vec<Value> = {
            let mut conn = h.app.store.read().await.unwrap();
            jit::store::audit::for_request(&mut conn, id)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.event == "auto_approved")
                .map(|r| serde_json::from_str(&r.detail).unwrap())
                .collect()
        };
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(details[1]["extension"].is_i64(), "{details:?}");
        assert_eq!(details[1]["on_call"], "PSECOND", "{details:?}");

        // Longer than the rule: to the approvers even on call.
        let long = h.request_access(DEV, "prod 3h long migration INC-2").await;
        assert_eq!(h.state(long).await, State::Pending);
        h.run_jobs().await;

        // Not on call (Carol is on the escalation policy directly, not in a schedule): the
        // approvers decide, and with no note (PagerDuty answered).
        let carol = h.request_access(CAROL, "prod 1h look at the logs").await;
        h.run_jobs().await;
        assert_eq!(h.state(carol).await, State::Pending);
        assert!(auto_approved_detail(&h, carol).await.is_none());
        let approval = h.approval_message().rendered();
        assert!(approval.contains("look at the logs"), "{approval}");
        assert!(!approval.contains("On-call auto-approval"), "{approval}");
        assert_eq!(pd.calls(), calls, "no request called PagerDuty");

        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(
            why.contains("whoever is on call in PagerDuty schedule `PPRIMARY`, `PSECOND` up to 2h")
                && why.contains("*yes* for you at 1h: you are on call now in `PSECOND`"),
            "{why}"
        );
        let why = h.slash(CAROL, "why prod 1h").await.text();
        assert!(why.contains("not on call now"), "{why}");
        assert_eq!(pd.calls(), calls, "`/jit why` reads the cache too");
    }

    /// PagerDuty answering 500: the last answer holds for three refreshes' time, then the rule
    /// fails closed, the approvers see why and `/jit why` says so; it recovers with PagerDuty.
    async fn pagerduty_failing_fails_closed_with_a_note_for_the_approvers() {
        let pd = FakePagerDuty::start().await;
        pd.on_call("PPRIMARY", &[("PUSER2", "dev@example.com")]);
        let h = oncall_harness(&pd, PD_TOKEN).await;

        // No answer yet: fails closed.
        let before = h.request_access(DEV, "prod 1h before the first refresh").await;
        h.run_jobs().await;
        assert_eq!(h.state(before).await, State::Pending);
        let approval = h.approval_message().rendered();
        assert!(
            approval.contains("On-call auto-approval did not apply: PagerDuty's on-call data is not fresh (jit has no answer from it yet)"),
            "{approval}"
        );
        assert!(
            h.stored(before).await.route_note.is_some(),
            "the note is kept with the request"
        );

        assert!(refresh(&h).await);
        pd.set_failing(true);
        h.advance(chrono::Duration::seconds(60));
        assert!(!refresh(&h).await);
        // A minute-old answer still counts.
        let cached = h.request_access(DEV, "prod 1h while PagerDuty hiccups").await;
        assert_eq!(h.state(cached).await, State::Approved);

        // Past the staleness bound with PagerDuty still down.
        h.advance(chrono::Duration::seconds(150));
        assert!(!refresh(&h).await);
        let ack = h.slash(DEV, "request prod 1h PagerDuty is down").await.text();
        assert!(
            ack.contains("was sent to") && ack.contains(":warning: On-call auto-approval did not apply: PagerDuty could not be reached"),
            "{ack}"
        );
        let stale = Harness::id_in(&ack);
        h.run_jobs().await;
        assert_eq!(h.state(stale).await, State::Pending);
        let approval = h.approval_message().rendered();
        assert!(
            approval.contains(":warning: On-call auto-approval did not apply: PagerDuty could not be reached (its last answer is 3 minutes old)"),
            "{approval}"
        );
        // The note stays when the message is updated after a decision.
        h.click(ALICE, "jit.approve", stale).await;
        h.run_jobs().await;
        assert_eq!(h.state(stale).await, State::Active);
        let approval = h.approval_message().rendered();
        assert!(approval.contains("PagerDuty could not be reached"), "{approval}");

        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(
            why.contains("no for you now: on-call cannot be checked (PagerDuty could not be reached"),
            "{why}"
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
            metrics.contains("jit_pagerduty_refreshes_total{outcome=\"failed\"} 2")
                && metrics.contains("jit_pagerduty_refreshes_total{outcome=\"ok\"} 1"),
            "{metrics}"
        );

        pd.set_failing(false);
        assert!(refresh(&h).await);
        let back = h.request_access(DEV, "prod 1h PagerDuty is back").await;
        assert_eq!(h.state(back).await, State::Approved);
        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(why.contains("*yes* for you at 1h"), "{why}");
    }

    /// A wrong token is refused by PagerDuty (401): nobody is approved by the on-call rule, and
    /// the token never reaches the log.
    async fn a_wrong_token_fails_closed() {
        let pd = FakePagerDuty::start().await;
        pd.on_call("PPRIMARY", &[("PUSER2", "dev@example.com")]);
        let logs = logs();
        let h = oncall_harness(&pd, "wrong-token-Zq7").await;
        assert!(!refresh(&h).await);
        assert_eq!(pd.state.lock().unwrap().unauthorized, 1);
        let id = h.request_access(DEV, "prod 1h with a bad token").await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Pending);
        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(why.contains("on-call cannot be checked"), "{why}");
        let text = logs.text();
        assert!(text.contains("401"), "the refusal is logged");
        assert!(!text.contains("wrong-token-Zq7") && !text.contains(PD_TOKEN));
    }

    /// Many people on call: every page is read (`more`, `offset`, `limit`).
    async fn every_page_of_on_calls_is_read() {
        let pd = FakePagerDuty::start().await;
        let many: Vec<(String, String)> = (0..7)
            .map(|i| (format!("PU{i}"), format!("person{i}@example.com")))
            .collect();
        let mut people: Vec<(&str, &str)> =
            many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        people.push(("PUDEV", "dev@example.com"));
        pd.on_call("PPRIMARY", &people);
        pd.state.lock().unwrap().page_size = 3;
        let h = oncall_harness(&pd, PD_TOKEN).await;
        assert!(refresh(&h).await);
        assert_eq!(pd.calls(), 3, "8 on-calls in pages of 3");
        let id = h.request_access(DEV, "prod 1h on call, last page").await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        assert_eq!(
            auto_approved_detail(&h, id).await.unwrap()["on_call"],
            "PPRIMARY"
        );
    }
}

driver_tests! {
    /// Nothing listens where PagerDuty should be: nobody is approved through the rule, and the
    /// approvers and `/jit why` say PagerDuty could not be reached.
    async fn an_unreachable_pagerduty_fails_closed() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let h = Harness::with_options(Options {
            policy: ONCALL_POLICY.to_owned(),
            pagerduty: Some(jit::oncall::PagerDutyConfig {
                api_url: closed,
                token: SecretString::from(PD_TOKEN),
            }),
            ..Options::default()
        })
        .await;
        assert!(!refresh(&h).await);
        let id = h.request_access(DEV, "prod 1h PagerDuty is unreachable").await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Pending);
        let approval = h.approval_message().rendered();
        assert!(
            approval.contains("On-call auto-approval did not apply: PagerDuty could not be reached (jit has no answer from it yet)"),
            "{approval}"
        );
        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(why.contains("PagerDuty could not be reached"), "{why}");
    }

    /// No PagerDuty token: the on-call rule approves nobody, and `/jit why` says why.
    async fn without_a_token_the_rule_approves_nobody() {
        let h = Harness::with_options(Options {
            policy: ONCALL_POLICY.to_owned(),
            ..Options::default()
        })
        .await;
        let id = h.request_access(DEV, "prod 1h no token configured").await;
        assert_eq!(h.state(id).await, State::Pending);
        let why = h.slash(DEV, "why prod 1h").await.text();
        assert!(why.contains("no PagerDuty token is configured"), "{why}");
    }
}
