//! The PagerDuty token of `auto_approve.oncall` rules: one read-only `GET /oncalls` for the
//! schedules the policy names (as `jit serve` makes every minute).

use super::{Check, listing};
use crate::config::ServeConfig;
use crate::domain::policy::Policy;
use crate::oncall::PagerDuty;

pub async fn checks(config: &ServeConfig, policy: Option<&Policy>) -> Vec<Check> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let schedules = policy.oncall_schedules();
    if schedules.is_empty() {
        return Vec::new();
    }
    let name = "pagerduty";
    let Some(pd) = config.pagerduty.clone() else {
        return vec![Check::warn(
            name,
            format!(
                "the policy's on-call rules name schedule(s) {} but PAGERDUTY_TOKEN is not set: they approve nobody",
                listing(&schedules, 5)
            ),
            "set PAGERDUTY_TOKEN (or PAGERDUTY_TOKEN_FILE) to a PagerDuty REST API key",
        )];
    };
    let client = match PagerDuty::new(pd) {
        Ok(client) => client,
        Err(e) => return vec![Check::fail(name, e.to_string(), "")],
    };
    match client.on_call_now(&schedules).await {
        Ok(by_schedule) => {
            let people: usize = by_schedule.values().map(|p| p.len()).sum();
            let empty: Vec<&String> = schedules
                .iter()
                .filter(|s| by_schedule.get(*s).is_none_or(|p| p.is_empty()))
                .collect();
            if empty.is_empty() {
                vec![Check::ok(
                    name,
                    format!(
                        "the token reads who is on call: {people} on-call email(s) in {} schedule(s)",
                        schedules.len()
                    ),
                )]
            } else {
                vec![Check::warn(
                    name,
                    format!(
                        "nobody with an email is on call now in {} (a wrong schedule ID, or an empty rota?)",
                        listing(&empty, 5)
                    ),
                    "check the IDs in the schedules' addresses (…/schedules/PABC123)",
                )]
            }
        }
        Err(e) => vec![Check::fail(
            name,
            e.to_string(),
            "check PAGERDUTY_TOKEN and JIT_PAGERDUTY_API_URL; until PagerDuty answers, on-call rules approve nobody",
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Policy;

    const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "prod"
provider = "none"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "1h", oncall = { pagerduty_schedules = ["PABC123"] } }
"#;

    async fn fake_pagerduty() -> String {
        let router = axum::Router::new().route(
            "/oncalls",
            axum::routing::get(|headers: axum::http::HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Token token=good")
                {
                    return (axum::http::StatusCode::UNAUTHORIZED, "{}".to_owned());
                }
                (
                    axum::http::StatusCode::OK,
                    serde_json::json!({"oncalls": [{
                        "schedule": {"id": "PABC123"},
                        "user": {"id": "PU1", "email": "a@example.com"}
                    }], "more": false})
                    .to_string(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    fn config(url: Option<&str>, token: &str) -> ServeConfig {
        let url = url.map(str::to_owned);
        let token = token.to_owned();
        let env = move |name: &str| -> Option<String> {
            match name {
                "SLACK_SIGNING_SECRET" => Some("s".into()),
                "SLACK_BOT_TOKEN" => Some("xoxb-x".into()),
                "JIT_ENCRYPTION_KEY" => Some("00".repeat(32)),
                "PAGERDUTY_TOKEN" => url.as_ref().map(|_| token.clone()),
                "JIT_PAGERDUTY_API_URL" => url.clone(),
                _ => None,
            }
        };
        ServeConfig::from_env(&env).unwrap()
    }

    #[tokio::test]
    async fn the_pagerduty_token_is_tried_once() {
        let policy = Policy::parse(POLICY, &|_| Err(std::io::ErrorKind::NotFound.into())).unwrap();
        let url = fake_pagerduty().await;

        let ok = checks(&config(Some(&url), "good"), Some(&policy)).await;
        assert_eq!(ok[0].status, super::super::Status::Ok, "{ok:?}");
        assert!(
            ok[0]
                .message
                .contains("1 on-call email(s) in 1 schedule(s)"),
            "{ok:?}"
        );

        let refused = checks(&config(Some(&url), "bad"), Some(&policy)).await;
        assert_eq!(refused[0].status, super::super::Status::Fail, "{refused:?}");
        assert!(refused[0].message.contains("401"), "{refused:?}");
        assert!(!refused[0].line().contains("bad\""), "{refused:?}");

        let unset = checks(&config(None, ""), Some(&policy)).await;
        assert_eq!(unset[0].status, super::super::Status::Warn, "{unset:?}");
        assert!(
            unset[0].message.contains("PAGERDUTY_TOKEN is not set"),
            "{unset:?}"
        );
    }
}
