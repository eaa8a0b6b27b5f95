//! The `aws_identity_center` provider against a real IAM Identity Center endpoint (moto), with
//! the real AWS SDK crates.
//!
//! Built as ignored unless `JIT_TEST_AWS_ENDPOINT` (moto) was set at build time (`build.rs`).
//! moto reports every assignment operation as `SUCCEEDED` at once; real AWS reports
//! `IN_PROGRESS` first and sometimes `FAILED`. So the tests talk to moto through a small proxy
//! ([`Proxy`]) that passes every call to moto and, where a test asks, rewrites the status in one
//! answer (`IN_PROGRESS`, `FAILED`) or answers an error (HTTP 500) instead of passing the call on.
//! Everything else, the assignments and users and memberships, is moto's.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_identitystore::types::{Email, MemberId, Name};
use aws_sdk_ssoadmin::types::{PrincipalType, TargetType};
use chrono::{DateTime, Utc};
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::{AwsIdentityCenterConfig, IdentityCenterTarget, Requester};
use jit::providers::aws_identity_center::IdentityCenterProvider;
use jit::providers::aws_sts::aws_config_loader;
use jit::providers::{GrantSpec, Issuance, Provider, ProviderError, RevokeReason, RevokeSpec};

#[path = "support/ic_proxy.rs"]
mod ic_proxy;
use ic_proxy::{Fault, Proxy};

fn endpoint() -> String {
    // Built with the variable (build.rs): it must still be set, and moto must answer.
    let url = std::env::var("JIT_TEST_AWS_ENDPOINT")
        .expect("JIT_TEST_AWS_ENDPOINT was set when these tests were built but is unset now");
    let parsed = url::Url::parse(&url).expect("JIT_TEST_AWS_ENDPOINT is a URL");
    let addr = (
        parsed.host_str().expect("a host"),
        parsed.port_or_known_default().expect("a port"),
    )
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("JIT_TEST_AWS_ENDPOINT resolves");
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("nothing answers at JIT_TEST_AWS_ENDPOINT `{url}` ({e}); start moto_server")
    });
    url
}

/// The SDK as the tests use it: static test credentials, and no SDK-level retries, so that an
/// error reaches the provider (and jit's queue is what retries).
async fn sdk_config(endpoint: &str) -> SdkConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    aws_config_loader(Some(endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "jit-tests",
        ))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

fn unique() -> u64 {
    rand::random::<u32>() as u64
}

/// A fresh account id, permission set and user in moto.
struct World {
    sdk: SdkConfig,
    instance_arn: String,
    identity_store_id: String,
    permission_set_arn: String,
    account_id: String,
    login: String,
    user_id: String,
}

impl World {
    async fn new(moto: &str) -> World {
        let sdk = sdk_config(moto).await;
        let sso = aws_sdk_ssoadmin::Client::new(&sdk);
        let instances = sso.list_instances().send().await.expect("ListInstances");
        let instance = instances.instances().first().expect("moto has an instance");
        let instance_arn = instance.instance_arn().unwrap().to_owned();
        let identity_store_id = instance.identity_store_id().unwrap().to_owned();
        let n = unique();
        let set = sso
            .create_permission_set()
            .instance_arn(&instance_arn)
            .name(format!("JitTest{n}"))
            .session_duration("PT1H")
            .send()
            .await
            .expect("CreatePermissionSet");
        let permission_set_arn = set
            .permission_set()
            .and_then(|p| p.permission_set_arn())
            .unwrap()
            .to_owned();
        let login = format!("user{n}");
        let user_id = create_user(&sdk, &identity_store_id, &login).await;
        World {
            sdk,
            instance_arn,
            identity_store_id,
            permission_set_arn,
            account_id: format!("{:012}", 100_000_000_000 + n),
            login,
            user_id,
        }
    }

    fn config(&self, portal: &str) -> AwsIdentityCenterConfig {
        AwsIdentityCenterConfig {
            instance_arn: self.instance_arn.clone(),
            identity_store_id: self.identity_store_id.clone(),
            target: IdentityCenterTarget::Account {
                account_id: self.account_id.clone(),
                permission_set_arn: self.permission_set_arn.clone(),
            },
            principals: BTreeMap::new(),
            portal_url: portal.to_owned(),
            session_duration: None,
            region: None,
        }
    }

    /// Principal ids holding the permission set in the account, as moto lists them.
    async fn assignees(&self) -> Vec<String> {
        let out = aws_sdk_ssoadmin::Client::new(&self.sdk)
            .list_account_assignments()
            .instance_arn(&self.instance_arn)
            .account_id(&self.account_id)
            .permission_set_arn(&self.permission_set_arn)
            .send()
            .await
            .expect("ListAccountAssignments");
        out.account_assignments()
            .iter()
            .filter_map(|a| a.principal_id().map(str::to_owned))
            .collect()
    }
}

async fn create_user(sdk: &SdkConfig, store: &str, login: &str) -> String {
    aws_sdk_identitystore::Client::new(sdk)
        .create_user()
        .identity_store_id(store)
        .user_name(login)
        .display_name(login)
        .name(
            Name::builder()
                .given_name("Test")
                .family_name(login)
                .build(),
        )
        .emails(
            Email::builder()
                .value(format!("{login}@corp.example"))
                .primary(true)
                .build(),
        )
        .send()
        .await
        .expect("CreateUser")
        .user_id()
        .to_owned()
}

fn alice() -> Requester {
    Requester::User(SlackUserId::parse("U0ALICE").unwrap())
}

fn grant_spec(id: i64, email: &str, now: DateTime<Utc>) -> GrantSpec {
    GrantSpec {
        request_id: RequestId(id),
        requester: alice(),
        requester_email: Some(email.to_owned()),
        resource: ResourceId::parse("aws-ic").unwrap(),
        expires_at: now + chrono::Duration::hours(1),
        now,
    }
}

fn revoke_spec(
    id: i64,
    handle: &str,
    baselines: Vec<String>,
    now: DateTime<Utc>,
    reason: RevokeReason,
) -> RevokeSpec {
    RevokeSpec {
        request_id: RequestId(id),
        requester: alice(),
        resource: ResourceId::parse("aws-ic").unwrap(),
        handle: handle.to_owned(),
        issued: vec![Issuance {
            handle: handle.to_owned(),
            expires_at: None,
        }],
        natural_expiry: now,
        reason,
        now,
        baselines,
    }
}

const PORTAL: &str = "https://d-1234567890.awsapps.com/start";

async fn setup() -> (World, Proxy, IdentityCenterProvider) {
    let moto = endpoint();
    let world = World::new(&moto).await;
    let proxy = Proxy::start(&moto).await;
    let sdk = sdk_config(&proxy.url).await;
    let provider = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        world.config(PORTAL),
        &sdk,
    );
    (world, proxy, provider)
}

fn pending(result: Result<impl std::fmt::Debug, ProviderError>) {
    match result {
        Err(ProviderError::Pending { after, .. }) => assert!(after <= Duration::from_secs(60)),
        other => panic!("expected Pending, got {other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn full_lifecycle_polls_creation_and_deletion() {
    let (world, proxy, p) = setup().await;
    let now = Utc::now();
    let spec = grant_spec(1, &format!("{}@corp.example", world.login), now);

    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    assert!(baseline.starts_with("absent@"), "{baseline}");

    // AWS accepts the assignment and carries it out later: jit is told to ask again.
    proxy.inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    proxy.inject(
        "DescribeAccountAssignmentCreationStatus",
        &[Fault::Status("IN_PROGRESS")],
    );
    pending(p.grant(&spec).await);
    pending(p.grant(&spec).await);
    let issued = p.grant(&spec).await.expect("the creation succeeded");
    assert_eq!(proxy.count("CreateAccountAssignment"), 1, "created once");
    assert_eq!(proxy.count("DescribeAccountAssignmentCreationStatus"), 2);
    assert_eq!(world.assignees().await, vec![world.user_id.clone()]);
    assert!(issued.credentials.is_none());
    let text = issued.instructions.unwrap();
    assert!(text.contains(PORTAL), "{text}");
    assert!(text.contains(&world.account_id), "{text}");
    assert!(text.contains("JitTest"), "{text}");
    assert_eq!(issued.handle, p.presumed_handle(&spec));

    // Teardown, polled the same way.
    proxy.inject("DeleteAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    let revoke = revoke_spec(
        1,
        &issued.handle,
        vec![baseline],
        now,
        RevokeReason::Expired,
    );
    pending(p.revoke(&revoke).await);
    let revoked = p.revoke(&revoke).await.expect("the deletion succeeded");
    assert!(revoked.detail.unwrap().contains("removed"));
    assert!(revoked.attention.is_none());
    assert_eq!(proxy.count("DeleteAccountAssignment"), 1, "deleted once");
    assert_eq!(proxy.count("DescribeAccountAssignmentDeletionStatus"), 1);
    assert!(world.assignees().await.is_empty());
    // Revoking again is harmless.
    p.revoke(&revoke).await.expect("idempotent");
    assert_eq!(proxy.count("DeleteAccountAssignment"), 1);
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn overlapping_grants_share_one_assignment() {
    let (world, proxy, _) = setup().await;
    let t1 = Utc::now();
    let t2 = t1 + chrono::Duration::minutes(5);
    // Looked up by user name through the principals map this time.
    let mut config = world.config(PORTAL);
    config
        .principals
        .insert("U0ALICE".into(), world.login.clone());
    let p2 = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        config,
        &sdk_config(&proxy.url).await,
    );
    let first = grant_spec(10, "someone-else@corp.example", t1);
    let second = grant_spec(11, "someone-else@corp.example", t2);
    let b1 = p2.baseline(&first).await.unwrap().unwrap();
    let a = p2.grant(&first).await.unwrap();
    // The second grant sees the first one's assignment.
    let b2 = p2.baseline(&second).await.unwrap().unwrap();
    assert!(b2.starts_with("standing@"), "{b2}");
    let b = p2.grant(&second).await.unwrap();
    assert_eq!(a.handle, b.handle, "one access, counted by jit");
    assert_eq!(a.handle, p2.presumed_handle(&second));
    assert_eq!(proxy.count("CreateAccountAssignment"), 1);
    assert_eq!(world.assignees().await, vec![world.user_id.clone()]);
    // The last revoke of the stretch gets both baselines: the earliest says the access was not
    // there before jit, so it is removed.
    let revoke = revoke_spec(11, &b.handle, vec![b2, b1], t2, RevokeReason::Expired);
    p2.revoke(&revoke).await.unwrap();
    assert!(world.assignees().await.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn standing_access_is_left_alone() {
    let (world, proxy, p) = setup().await;
    aws_sdk_ssoadmin::Client::new(&world.sdk)
        .create_account_assignment()
        .instance_arn(&world.instance_arn)
        .target_id(&world.account_id)
        .target_type(TargetType::AwsAccount)
        .permission_set_arn(&world.permission_set_arn)
        .principal_type(PrincipalType::User)
        .principal_id(&world.user_id)
        .send()
        .await
        .unwrap();
    let now = Utc::now();
    let spec = grant_spec(20, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    assert!(baseline.starts_with("standing@"), "{baseline}");
    let issued = p.grant(&spec).await.unwrap();
    assert_eq!(proxy.count("CreateAccountAssignment"), 0);
    for reason in [RevokeReason::Expired, RevokeReason::FailedGrant] {
        let revoke = revoke_spec(20, &issued.handle, vec![baseline.clone()], now, reason);
        let revoked = p.revoke(&revoke).await.unwrap();
        assert!(revoked.detail.unwrap().contains("standing access"));
    }
    assert_eq!(proxy.count("DeleteAccountAssignment"), 0);
    assert_eq!(world.assignees().await, vec![world.user_id.clone()]);

    // No baseline at all: nothing removed, and people are told.
    let revoke = revoke_spec(20, &issued.handle, Vec::new(), now, RevokeReason::Expired);
    let revoked = p.revoke(&revoke).await.unwrap();
    assert!(revoked.attention.unwrap().contains("no baseline"));
    assert_eq!(world.assignees().await, vec![world.user_id.clone()]);
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_failed_creation_fails_the_grant_and_the_revoke_cleans_up() {
    let (world, proxy, p) = setup().await;
    let now = Utc::now();
    let spec = grant_spec(30, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    proxy.inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    proxy.inject(
        "DescribeAccountAssignmentCreationStatus",
        &[Fault::Status("FAILED")],
    );
    pending(p.grant(&spec).await);
    let err = p.grant(&spec).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
    assert!(err.may_have_acted());
    assert!(err.to_string().contains("No permission set found"), "{err}");
    // (moto did create it: what a failure left behind is removed by jit's compensating revoke,
    // from the presumed handle alone.)
    let revoke = revoke_spec(
        30,
        &p.presumed_handle(&spec),
        vec![baseline],
        now,
        RevokeReason::FailedGrant,
    );
    p.revoke(&revoke).await.unwrap();
    assert!(world.assignees().await.is_empty());

    // FAILED in the first answer too.
    let spec = grant_spec(31, &format!("{}@corp.example", world.login), now);
    proxy.inject("CreateAccountAssignment", &[Fault::Status("FAILED")]);
    let err = p.grant(&spec).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn teardown_is_retried_after_errors() {
    let (world, proxy, p) = setup().await;
    let now = Utc::now();
    let spec = grant_spec(40, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    let issued = p.grant(&spec).await.unwrap();
    proxy.inject(
        "DeleteAccountAssignment",
        &[Fault::ServerError, Fault::ServerError],
    );
    proxy.inject("ListAccountAssignments", &[Fault::ServerError]);
    let revoke = revoke_spec(40, &issued.handle, vec![baseline], now, RevokeReason::Early);
    // Each failure is retryable (jit's queue retries it, and alerts after repeated failures).
    for _ in 0..3 {
        let err = p.revoke(&revoke).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("InternalServerException"), "{err}");
    }
    assert_eq!(world.assignees().await, vec![world.user_id.clone()]);
    p.revoke(&revoke).await.expect("succeeds once AWS answers");
    assert!(world.assignees().await.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn an_operation_stuck_in_progress_stops_being_pending() {
    let (world, proxy, p) = setup().await;
    let p = p.with_pending_limit(chrono::Duration::minutes(10));
    let now = Utc::now();
    let spec = grant_spec(50, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    proxy.inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    proxy.inject(
        "DescribeAccountAssignmentCreationStatus",
        &[Fault::Status("IN_PROGRESS"), Fault::Status("IN_PROGRESS")],
    );
    pending(p.grant(&spec).await);
    pending(
        p.grant(&GrantSpec {
            now: now + chrono::Duration::minutes(9),
            ..spec.clone()
        })
        .await,
    );
    let err = p
        .grant(&GrantSpec {
            now: now + chrono::Duration::minutes(11),
            ..spec.clone()
        })
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("still in progress"), "{err}");

    // A deletion stuck the same way ends in the counted, alerted teardown failure path.
    let handle = p.presumed_handle(&spec);
    proxy.inject("DeleteAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    proxy.inject(
        "DescribeAccountAssignmentDeletionStatus",
        &[Fault::Status("IN_PROGRESS")],
    );
    let at = |m| {
        revoke_spec(
            50,
            &handle,
            vec![baseline.clone()],
            now + chrono::Duration::minutes(m),
            RevokeReason::Expired,
        )
    };
    pending(p.revoke(&at(12)).await);
    let err = p.revoke(&at(30)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    p.revoke(&at(31)).await.expect("done once AWS says so");
    assert!(world.assignees().await.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_requester_with_no_user_is_refused_before_anything_is_done() {
    let (world, proxy, p) = setup().await;
    let spec = grant_spec(60, "nobody-here@corp.example", Utc::now());
    let err = p.baseline(&spec).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(
        err.to_string().contains("nobody-here@corp.example"),
        "{err}"
    );
    assert!(err.to_string().contains("principals"), "{err}");
    let no_email = GrantSpec {
        requester_email: None,
        ..spec
    };
    let err = p.baseline(&no_email).await.unwrap_err();
    assert!(err.to_string().contains("users:read.email"), "{err}");
    assert_eq!(proxy.count("CreateAccountAssignment"), 0);
    assert!(world.assignees().await.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn session_duration_refuses_a_longer_permission_set() {
    let (world, proxy, _) = setup().await;
    let mut config = world.config(PORTAL);
    config.session_duration = Some(jit::domain::duration::GrantDuration::from_hours(1));
    let ok = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        config.clone(),
        &sdk_config(&proxy.url).await,
    );
    let spec = grant_spec(70, &format!("{}@corp.example", world.login), Utc::now());
    // PT1H within 1h: fine.
    ok.baseline(&spec).await.unwrap();
    // A permission set whose sessions last 4 hours is refused under a 1h limit.
    let sso = aws_sdk_ssoadmin::Client::new(&world.sdk);
    let long = sso
        .create_permission_set()
        .instance_arn(&world.instance_arn)
        .name(format!("JitLong{}", unique()))
        .session_duration("PT4H")
        .send()
        .await
        .unwrap();
    config.target = IdentityCenterTarget::Account {
        account_id: world.account_id.clone(),
        permission_set_arn: long
            .permission_set()
            .unwrap()
            .permission_set_arn()
            .unwrap()
            .to_owned(),
    };
    let refused = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        config,
        &sdk_config(&proxy.url).await,
    );
    let err = refused.baseline(&spec).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("4h"), "{err}");
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn group_mode_adds_and_removes_the_membership_and_keeps_a_standing_one() {
    let (world, proxy, _) = setup().await;
    let store = aws_sdk_identitystore::Client::new(&world.sdk);
    let group = store
        .create_group()
        .identity_store_id(&world.identity_store_id)
        .display_name(format!("jit-admins-{}", unique()))
        .send()
        .await
        .unwrap()
        .group_id()
        .to_owned();
    let mut config = world.config(PORTAL);
    config.target = IdentityCenterTarget::Group {
        group_id: group.clone(),
    };
    let p = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        config,
        &sdk_config(&proxy.url).await,
    );
    let members = || async {
        store
            .list_group_memberships()
            .identity_store_id(&world.identity_store_id)
            .group_id(&group)
            .send()
            .await
            .unwrap()
            .group_memberships()
            .len()
    };
    let now = Utc::now();
    let spec = grant_spec(80, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    assert!(baseline.starts_with("absent@"));
    let issued = p.grant(&spec).await.unwrap();
    p.grant(&spec).await.unwrap();
    assert_eq!(members().await, 1, "granted once");
    assert!(issued.instructions.unwrap().contains(PORTAL));
    let revoke = revoke_spec(
        80,
        &issued.handle,
        vec![baseline],
        now,
        RevokeReason::Expired,
    );
    p.revoke(&revoke).await.unwrap();
    assert_eq!(members().await, 0);

    // A membership the user had before is standing: left alone.
    store
        .create_group_membership()
        .identity_store_id(&world.identity_store_id)
        .group_id(&group)
        .member_id(MemberId::UserId(world.user_id.clone()))
        .send()
        .await
        .unwrap();
    let spec = grant_spec(81, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    assert!(baseline.starts_with("standing@"));
    let issued = p.grant(&spec).await.unwrap();
    let revoke = revoke_spec(
        81,
        &issued.handle,
        vec![baseline],
        now,
        RevokeReason::Expired,
    );
    assert!(
        p.revoke(&revoke)
            .await
            .unwrap()
            .detail
            .unwrap()
            .contains("standing")
    );
    assert_eq!(members().await, 1);
    assert_eq!(proxy.count("CreateGroupMembership"), 1);
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_revoke_waits_for_a_creation_still_in_progress() {
    let (world, proxy, p) = setup().await;
    let now = Utc::now();
    let spec = grant_spec(90, &format!("{}@corp.example", world.login), now);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    proxy.inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    pending(p.grant(&spec).await);
    // The grant is revoked (released, say) while AWS is still creating the assignment: the
    // revoke waits for the creation to end rather than miss an assignment that appears later.
    proxy.inject(
        "DescribeAccountAssignmentCreationStatus",
        &[Fault::Status("IN_PROGRESS")],
    );
    let revoke = revoke_spec(
        90,
        &p.presumed_handle(&spec),
        vec![baseline],
        now,
        RevokeReason::FailedGrant,
    );
    pending(p.revoke(&revoke).await);
    assert_eq!(proxy.count("DeleteAccountAssignment"), 0);
    p.revoke(&revoke).await.expect("removed once created");
    assert_eq!(proxy.count("DescribeAccountAssignmentCreationStatus"), 2);
    assert_eq!(proxy.count("DeleteAccountAssignment"), 1);
    assert!(world.assignees().await.is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_revoke_elsewhere_waits_for_a_creation_it_cannot_see() {
    let (world, proxy, replica_a) = setup().await;
    // Replica B (or replica A after a restart) knows nothing of A's operation in progress.
    let replica_b = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        world.config(PORTAL),
        &sdk_config(&proxy.url).await,
    );
    let now = Utc::now();
    let spec = grant_spec(91, &format!("{}@corp.example", world.login), now);
    let baseline = replica_a.baseline(&spec).await.unwrap().unwrap();
    proxy.inject("CreateAccountAssignment", &[Fault::Status("IN_PROGRESS")]);
    pending(replica_a.grant(&spec).await);
    let revoke = revoke_spec(
        91,
        &replica_a.presumed_handle(&spec),
        vec![baseline.clone()],
        now,
        RevokeReason::FailedGrant,
    );
    // AWS does not list the assignment yet: B looks again later instead of finishing, since
    // the assignment could appear after it looked.
    proxy.inject("ListAccountAssignments", &[Fault::Empty]);
    pending(replica_b.revoke(&revoke).await);
    assert_eq!(proxy.count("DeleteAccountAssignment"), 0);
    // Once it is listed, B removes it.
    replica_b
        .revoke(&revoke)
        .await
        .expect("removed once listed");
    assert_eq!(proxy.count("DeleteAccountAssignment"), 1);
    assert!(world.assignees().await.is_empty());
    // Nothing there and the operation limit past since the grant's baseline: done at once.
    let later = now + chrono::Duration::minutes(11);
    let fresh = IdentityCenterProvider::new(
        ResourceId::parse("aws-ic").unwrap(),
        world.config(PORTAL),
        &sdk_config(&proxy.url).await,
    );
    let mut after_limit = revoke_spec(
        91,
        &replica_a.presumed_handle(&spec),
        vec![baseline],
        later,
        RevokeReason::Expired,
    );
    after_limit.natural_expiry = later;
    fresh
        .revoke(&after_limit)
        .await
        .expect("nothing to wait for");
    assert_eq!(proxy.count("DeleteAccountAssignment"), 1);
}
