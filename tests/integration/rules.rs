//! Justification and ticket rules (`justification = { … }`, `ticket = { … }`), on every path a
//! request comes by: the slash command, the form and the API; the ticket linked in the approval
//! message and the audit thread; the rules shown by `/jit why`.

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::harness::*;

const RULES_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[defaults]
justification = { min_length = 20, hint = "Say what you will change and why." }
ticket = { required = true, pattern = "^(INC|CHG)-[0-9]+$", url = "https://tracker.example.com/browse/{ticket}" }

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "prod-db"
description = "Production database"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"] }
requesters = { users = ["U0DEV"], identities = ["ci"] }

[[identity]]
name = "ci"
owner = { users = ["U0CAROL"] }
resources = ["prod-db"]
"#;

async fn rules_harness() -> Harness {
    Harness::with_options(Options {
        policy: RULES_POLICY.to_owned(),
        ..Options::default()
    })
    .await
}

driver_tests! {
    /// On the slash command: each rule refuses with what to do, the ticket is picked out of the
    /// justification, and it is linked in the approval message and the audit thread.
    async fn rules_hold_on_the_slash_command_and_the_ticket_is_linked() {
        let h = rules_harness().await;
        let short = h.slash(DEV, "request prod-db 1h fix it INC-1").await;
        insta::assert_snapshot!(short.text(), @r"
        :warning: The justification for `prod-db` is too short: at least 20 characters, and it has 12. Say what you will change and why.
        Usage: `/jit request &lt;resource&gt; &lt;duration&gt; [at &lt;time&gt;] &lt;justification…&gt;`
        ");
        let no_ticket = h
            .slash(DEV, "request prod-db 1h rotating the replica certificates tonight")
            .await;
        insta::assert_snapshot!(no_ticket.text(), @r"
        :warning: `prod-db` needs a ticket (matching `^(INC|CHG)-[0-9]+$`): put it in the justification or the ticket field.
        Usage: `/jit request &lt;resource&gt; &lt;duration&gt; [at &lt;time&gt;] &lt;justification…&gt;`
        ");
        assert!(
            h.slack.messages(APPROVALS).is_empty(),
            "nothing refused reaches the approvers"
        );
        let id = h
            .request_access(DEV, "prod-db 1h rotating the replica certificates, CHG-77")
            .await;
        h.run_jobs().await;
        assert_eq!(h.stored(id).await.request.ticket.as_deref(), Some("CHG-77"));
        let approval = h.slack.messages(APPROVALS).pop().unwrap().rendered();
        assert!(
            approval.contains("Ticket: <https://tracker.example.com/browse/CHG-77|CHG-77>"),
            "{approval}"
        );
        let thread = h.audit_thread(id).join("\n");
        assert!(
            thread.contains("Ticket: <https://tracker.example.com/browse/CHG-77|CHG-77>"),
            "{thread}"
        );
        let why = h.slash(DEV, "why prod-db").await.text();
        assert!(
            why.contains("• Justification: at least 20 characters. Say what you will change and why.")
                && why.contains("• Ticket: required, matching `^(INC|CHG)-[0-9]+$` · linked to the tracker in the approval message"),
            "{why}"
        );
    }

    /// In the form, each refusal shows next to its field; a preselected resource's rules are
    /// shown under the fields before anything is typed.
    async fn rules_hold_in_the_form_next_to_their_fields() {
        let h = rules_harness().await;
        h.slash(DEV, "request prod-db").await;
        let view = h.slack.opened_views().pop().unwrap().view;
        let hints: Vec<&str> = view["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["hint"]["text"].as_str())
            .collect();
        assert_eq!(
            hints,
            [
                "prod-db: at least 20 characters. Say what you will change and why.",
                "prod-db: required, matching `^(INC|CHG)-[0-9]+$`",
                "For a maintenance window: access is issued at this time (up to 7 days ahead) and lasts the duration from then. Leave it empty to start once approved.",
            ]
        );
        let form = |justification: &'static str, ticket: Option<&'static str>| {
            let mut inputs = vec![
                ("resource", "resource_select", "prod-db"),
                ("duration", "duration_select", "1h"),
                ("justification", "justification_input", justification),
            ];
            if let Some(ticket) = ticket {
                inputs.push(("ticket", "ticket_input", ticket));
            }
            inputs
        };
        let short = h
            .submit(DEV, "jit.request_modal", ORIGIN, &form("too short", Some("INC-1")))
            .await;
        assert_eq!(short.body["response_action"], "errors");
        assert!(
            short.body["errors"]["justification"]
                .as_str()
                .unwrap()
                .starts_with("The justification for `prod-db` is too short"),
            "{}",
            short.body
        );
        let wrong = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &form("rotating the replica certificates tonight", Some("JIRA-9")),
            )
            .await;
        assert_eq!(
            wrong.body["errors"]["ticket"],
            "The ticket `JIRA-9` is not one `prod-db` accepts: it must match `^(INC|CHG)-[0-9]+$`."
        );
        let fine = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &form("rotating the replica certificates tonight", Some("INC-5")),
            )
            .await;
        assert_eq!(fine.body["response_action"], "clear", "{}", fine.body);
    }

    /// The API applies the same rules, with stable codes.
    async fn rules_hold_on_the_api_with_stable_codes() {
        let h = rules_harness().await;
        let (_, token) = jit::handlers::identity::create_token(
            &h.app.store,
            &h.app.policy,
            "ci",
            "cli:test",
            h.clock_now(),
        )
        .await
        .unwrap();
        let ask = |body: Value| {
            let h = &h;
            let token = token.expose_secret().to_owned();
            async move {
                let response = h
                    .http
                    .post(format!("{}/api/v1/requests", h.url))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            }
        };
        let cases = [
            (json!({"resource": "prod-db", "duration": "1h", "justification": "nightly"}), "justification_too_short"),
            (json!({"resource": "prod-db", "duration": "1h", "justification": "nightly schema migration of the orders table"}), "ticket_required"),
            (json!({"resource": "prod-db", "duration": "1h", "justification": "nightly schema migration of the orders table", "ticket": "BUG-1"}), "ticket_mismatch"),
        ];
        for (body, code) in cases {
            let (status, answer) = ask(body).await;
            assert_eq!((status, answer["code"].as_str()), (400, Some(code)), "{answer}");
            assert!(answer["message"].as_str().unwrap().contains("prod-db"), "{answer}");
        }
        let (status, answer) = ask(json!({"resource": "prod-db", "duration": "1h", "justification": "nightly schema migration of the orders table", "ticket": "CHG-12"})).await;
        assert_eq!((status, answer["state"].as_str()), (202, Some("pending")), "{answer}");
    }
}
