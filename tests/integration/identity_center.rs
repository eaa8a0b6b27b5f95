//! `aws_identity_center` through jit's own flow, against moto behind the fault-injecting proxy:
//! an assignment AWS is still carrying out defers the grant job (no worker waits, no attempt is
//! counted), the holder is told only once it succeeded, and the expiry's revoke removes it.

use chrono::Duration;
use jit::domain::request::State;

use crate::harness::*;
use crate::ic_proxy::{Fault, Proxy};

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "aws-admin"
provider = "aws_identity_center"
instance_arn = "{instance}"
identity_store_id = "{store}"
portal_url = "https://portal.example/start"
permission_set_arn = "{set}"
account_id = ["{account}", "{other}"]
principals = { U0DEV = "{login}" }
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

/// A permission set, an Identity Center user and two accounts in moto, and jit in front of the
/// fault-injecting proxy.
struct World {
    sso: aws_sdk_ssoadmin::Client,
    instance_arn: String,
    set: String,
    user: String,
    account: String,
    proxy: Proxy,
    h: Harness,
}

impl World {
    async fn new() -> World {
        let moto = std::env::var("JIT_TEST_AWS_ENDPOINT")
            .expect("JIT_TEST_AWS_ENDPOINT was set when these tests were built but is unset now");
        let sdk = moto_sdk(&moto).await;
        let sso = aws_sdk_ssoadmin::Client::new(&sdk);
        let instances = sso
            .list_instances()
            .send()
            .await
            .expect("moto answers ListInstances");
        let instance = instances.instances().first().expect("moto has an instance");
        let (instance_arn, store) = (
            instance.instance_arn().unwrap().to_owned(),
            instance.identity_store_id().unwrap().to_owned(),
        );
        let n = rand::random::<u32>() as u64;
        let set = sso
            .create_permission_set()
            .instance_arn(&instance_arn)
            .name(format!("JitFlow{n}"))
            // Without it moto answers DescribePermissionSet with a number the SDK refuses.
            .session_duration("PT1H")
            .send()
            .await
            .unwrap()
            .permission_set()
            .unwrap()
            .permission_set_arn()
            .unwrap()
            .to_owned();
        let login = format!("flow{n}");
        let user = aws_sdk_identitystore::Client::new(&sdk)
            .create_user()
            .identity_store_id(&store)
            .user_name(&login)
            .display_name(&login)
            .name(
                aws_sdk_identitystore::types::Name::builder()
                    .given_name("Flow")
                    .family_name(&login)
                    .build(),
            )
            // moto fails every lookup by email (HTTP 500) once a user without one exists.
            .emails(
                aws_sdk_identitystore::types::Email::builder()
                    .value(format!("{login}@corp.example"))
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .user_id()
            .to_owned();
        let (account, other) = (
            format!("{:012}", 200_000_000_000 + n),
            format!("{:012}", 300_000_000_000 + n),
        );
        let proxy = Proxy::start(&moto).await;
        let policy = POLICY
            .replace("{instance}", &instance_arn)
            .replace("{store}", &store)
            .replace("{set}", &set)
            .replace("{account}", &account)
            .replace("{other}", &other)
            .replace("{login}", &login);
        let h = Harness::with_options(Options {
            policy,
            start: chrono::Utc::now(),
            aws_endpoint: Some(proxy.url.clone()),
            ..Options::default()
        })
        .await;
        World {
            sso,
            instance_arn,
            set,
            user,
            account,
            proxy,
            h,
        }
    }

    async fn assignees(&self) -> Vec<String> {
        self.sso
            .list_account_assignments()
            .instance_arn(&self.instance_arn)
            .account_id(&self.account)
            .permission_set_arn(&self.set)
            .send()
            .await
            .unwrap()
            .account_assignments()
            .iter()
            .filter_map(|a| a.principal_id().map(str::to_owned))
            .collect()
    }

    fn told(&self) -> bool {
        self.h.slack.dms(DEV).iter().any(|m| {
            m.blocks
                .to_string()
                .contains("https://portal.example/start")
                || m.text.contains("https://portal.example/start")
        })
    }

    /// Requested (picking the account) and approved; AWS still carrying the assignment out.
    async fn approved_and_pending(&self) -> jit::domain::ids::RequestId {
        self.proxy
            .inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
        self.proxy.inject(
            "DescribeAccountAssignmentCreationStatus",
            &[Fault::Status("IN_PROGRESS")],
        );
        let h = &self.h;
        let id = h
            .request_access(
                DEV,
                &format!("aws-admin.{} 1h fix the billing alarm", self.account),
            )
            .await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        // AWS is still carrying it out: the grant job was put back, nobody told yet.
        assert_eq!(
            h.state(id).await,
            State::Approved,
            "{:?}",
            h.audit_events(id).await
        );
        assert_eq!(self.proxy.count("CreateAccountAssignment"), 1);
        assert!(!self.told());
        id
    }
}

driver_tests! {
    #[cfg_attr(not(jit_moto_tests), ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time")]
    async fn identity_center_grant_polls_then_expiry_removes_it() {
        let w = World::new().await;
        let id = w.approved_and_pending().await;
        let h = &w.h;
        // Three: the SDK's own retries (standard mode) are used up before jit sees an error.
        w.proxy.inject(
            "DeleteAccountAssignment",
            &[Fault::ServerError, Fault::ServerError, Fault::ServerError],
        );
        h.advance_and_run(Duration::seconds(5)).await;
        assert_eq!(h.state(id).await, State::Approved);
        h.advance_and_run(Duration::seconds(5)).await;
        assert_eq!(h.state(id).await, State::Active, "{:?}", h.audit_events(id).await);
        assert_eq!(w.proxy.count("CreateAccountAssignment"), 1, "created once");
        assert_eq!(w.assignees().await, vec![w.user.clone()]);
        assert!(w.told(), "the holder is told where to sign in");
        let handle = h.stored(id).await.grant_handle.unwrap();
        assert!(handle.contains(&w.account), "{handle}");

        // Expiry: the first revoke fails (HTTP 500s) and is retried; then the assignment is gone.
        h.advance_and_run(Duration::minutes(61)).await;
        assert!(h.request(id).await.revoked_at.is_none());
        assert!(
            h.audit_events(id).await.iter().any(|e| e.contains("teardown_failed")),
            "{:?}",
            h.audit_events(id).await
        );
        h.advance_and_run(Duration::minutes(5)).await;
        assert!(h.request(id).await.revoked_at.is_some(), "{:?}", h.audit_events(id).await);
        assert!(w.assignees().await.is_empty());
    }

    #[cfg_attr(not(jit_moto_tests), ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time")]
    async fn identity_center_released_while_pending_is_removed() {
        let w = World::new().await;
        let id = w.approved_and_pending().await;
        let h = &w.h;
        // Released before AWS finished: the creation (which went ahead at AWS) is treated as
        // issued and torn down, though no attempt of the grant job failed.
        h.click(DEV, "jit.release", id).await;
        h.advance_and_run(Duration::seconds(5)).await;
        h.advance_and_run(Duration::seconds(5)).await;
        let events = h.audit_events(id).await;
        assert!(events.iter().any(|e| e.contains("grant_uncertain")), "{events:?}");
        assert!(h.request(id).await.revoked_at.is_some(), "{events:?}");
        assert!(w.assignees().await.is_empty());
        assert!(!w.told());
    }
}
