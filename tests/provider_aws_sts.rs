//! The `aws_sts` provider against a real STS/IAM endpoint (moto).
//!
//! Set `JIT_TEST_AWS_ENDPOINT` (for example `http://127.0.0.1:5000`, after
//! `moto_server -H 127.0.0.1 -p 5000`). Unset: the endpoint tests say so and return. Set but
//! unreachable: they fail. moto checks neither durations nor tags nor policies; jit's own
//! checks are unit-tested in the module, and here we check what moto does keep: working
//! credentials, their expiry, and the deny statements written to the role.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use jit::domain::duration::GrantDuration;
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::{AwsStsConfig, Requester, validate_session_policy};
use jit::providers::aws_sts::{
    self, AwsStsProvider, REVOCATION_POLICY_NAME, StsHandle, aws_config_loader,
    decode_policy_document, revocation_sid, session_prefix,
};
use jit::providers::{GrantSpec, Issuance, Issued, Provider, RevokeReason, RevokeSpec};
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";

fn endpoint() -> Option<String> {
    // These tests are built as ignored without the variable (build.rs); built with it, they run
    // and fail if it is gone or nothing answers.
    let Ok(url) = std::env::var("JIT_TEST_AWS_ENDPOINT") else {
        panic!("JIT_TEST_AWS_ENDPOINT was set when these tests were built but is unset now");
    };
    let parsed = url::Url::parse(&url)
        .unwrap_or_else(|e| panic!("JIT_TEST_AWS_ENDPOINT `{url}` is not a URL: {e}"));
    let host = parsed
        .host_str()
        .expect("JIT_TEST_AWS_ENDPOINT has no host");
    let port = parsed.port_or_known_default().expect("no port");
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("JIT_TEST_AWS_ENDPOINT `{url}` does not resolve"));
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!(
            "JIT_TEST_AWS_ENDPOINT is set to `{url}` but nothing answers there ({e}); \
             start moto with `moto_server -H 127.0.0.1 -p 5000`"
        )
    });
    Some(url)
}

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
        .load()
        .await
}

fn unique() -> u64 {
    rand::random::<u32>() as u64
}

/// A fresh role in moto; returns its name and ARN.
async fn create_role(sdk: &SdkConfig) -> (String, String) {
    let iam = aws_sdk_iam::Client::new(sdk);
    let name = format!("jit-test-{:08x}", unique());
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
        }]
    });
    let out = iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust.to_string())
        .max_session_duration(3600)
        .send()
        .await
        .expect("CreateRole in moto");
    let arn = out.role().unwrap().arn().to_owned();
    assert_eq!(arn, format!("arn:aws:iam::{ACCOUNT}:role/{name}"));
    (name, arn)
}

async fn role_id(sdk: &SdkConfig, role: &str) -> String {
    aws_sdk_iam::Client::new(sdk)
        .get_role()
        .role_name(role)
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .role_id()
        .to_owned()
}

/// The revocation policy as JSON, or `None` if the role has none.
async fn revocation_policy(sdk: &SdkConfig, role: &str) -> Option<Value> {
    match aws_sdk_iam::Client::new(sdk)
        .get_role_policy()
        .role_name(role)
        .policy_name(REVOCATION_POLICY_NAME)
        .send()
        .await
    {
        Ok(out) => Some(
            serde_json::from_str(&decode_policy_document(out.policy_document()).unwrap()).unwrap(),
        ),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(e) => panic!("GetRolePolicy: {e:?}"),
    }
}

fn statements(doc: &Value) -> Vec<Value> {
    doc["Statement"].as_array().cloned().unwrap_or_default()
}

fn provider(sdk: &SdkConfig, role_arn: &str, policy: Option<&str>) -> AwsStsProvider {
    let config = AwsStsConfig {
        role_arn: role_arn.to_owned(),
        role_max_session: GrantDuration::from_hours(1),
        session_policy: policy.map(|p| validate_session_policy(p).unwrap()),
        region: None,
    };
    AwsStsProvider::new(ResourceId::parse("aws-test").unwrap(), config, sdk)
}

fn grant_spec(id: i64, email: Option<&str>, now: DateTime<Utc>, secs: i64) -> GrantSpec {
    GrantSpec {
        request_id: RequestId(id),
        requester: Requester::User(SlackUserId::parse("U0TESTER").unwrap()),
        requester_email: email.map(str::to_owned),
        resource: ResourceId::parse("aws-test").unwrap(),
        expires_at: now + chrono::Duration::seconds(secs),
        now,
    }
}

fn revoke_spec(
    grant: &GrantSpec,
    issued: &Issued,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> RevokeSpec {
    revoke_all(grant, &[issued], reason, now)
}

/// A revoke of a grant that issued `all` (oldest first), ending at `grant.expires_at`.
fn revoke_all(
    grant: &GrantSpec,
    all: &[&Issued],
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> RevokeSpec {
    RevokeSpec {
        request_id: grant.request_id,
        requester: grant.requester.clone(),
        resource: grant.resource.clone(),
        handle: all.last().unwrap().handle.clone(),
        issued: all
            .iter()
            .map(|i| Issuance {
                handle: i.handle.clone(),
                expires_at: i.credentials_expire_at,
            })
            .collect(),
        natural_expiry: grant.expires_at,
        reason,
        now,
        baselines: Vec::new(),
    }
}

/// The request's deny statement's `Sid`.
fn sid_of_request(grant: &GrantSpec) -> String {
    revocation_sid(&session_prefix(grant.request_id))
}

/// Whether an IAM `StringLike` pattern with only a trailing `*` matches `value`.
fn like(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix) && !prefix.contains(['*', '?']),
        None => pattern == value,
    }
}

/// The `aws:userid` a session's calls carry, as GetCallerIdentity reports it.
async fn caller_userid(endpoint: &str, issued: &Issued) -> String {
    let creds = issued.credentials.as_ref().unwrap().expose();
    let config = aws_config_loader(Some(endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            &creds["AWS_ACCESS_KEY_ID"],
            &creds["AWS_SECRET_ACCESS_KEY"],
            Some(creds["AWS_SESSION_TOKEN"].clone()),
            None,
            "issued",
        ))
        .load()
        .await;
    aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the issued credentials")
        .user_id()
        .unwrap()
        .to_owned()
}

/// Calls GetCallerIdentity with the issued credentials and returns the caller's ARN.
async fn caller_arn(endpoint: &str, issued: &Issued) -> String {
    let creds = issued.credentials.as_ref().unwrap().expose();
    let config = aws_config_loader(Some(endpoint), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            &creds["AWS_ACCESS_KEY_ID"],
            &creds["AWS_SECRET_ACCESS_KEY"],
            Some(creds["AWS_SESSION_TOKEN"].clone()),
            None,
            "issued",
        ))
        .load()
        .await;
    aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the issued credentials")
        .arn()
        .unwrap()
        .to_owned()
}

fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let diff = (actual - expected).num_seconds().abs();
    assert!(
        diff <= 30,
        "{what}: {actual} is {diff}s away from {expected}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn issued_credentials_work_and_are_capped() {
    let Some(endpoint) = endpoint() else { return };
    let sdk = sdk_config(&endpoint).await;
    let (role, arn) = create_role(&sdk).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    let p = provider(&sdk, &arn, Some(policy));
    let base = (unique() as i64) * 10;
    let now = Utc::now();

    // 30 minutes left: a 30-minute session.
    let spec = grant_spec(base + 1, Some("alice+ops@example.com"), now, 1800);
    let issued = p.grant(&spec).await.expect("grant");
    let handle = StsHandle::parse(&issued.handle).unwrap();
    assert_eq!(
        handle.session,
        format!("jit-{}-alice+ops@example.com", base + 1)
    );
    assert_eq!(handle.source_identity, "alice+ops@example.com");
    assert_eq!(handle.role_arn, arn);
    let expected_userid = format!("{}:{}", role_id(&sdk, &role).await, handle.session);
    assert_eq!(handle.userid.as_deref(), Some(expected_userid.as_str()));
    let expires = issued.credentials_expire_at.unwrap();
    assert_close(expires, now + chrono::Duration::seconds(1800), "30m grant");
    assert_eq!(handle.credentials_expire_at, expires);

    let creds = issued.credentials.as_ref().unwrap().expose();
    assert_eq!(
        creds.keys().cloned().collect::<Vec<_>>(),
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_CREDENTIAL_EXPIRATION",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN"
        ]
    );
    assert_eq!(
        DateTime::parse_from_rfc3339(&creds["AWS_CREDENTIAL_EXPIRATION"]).unwrap(),
        expires
    );
    let caller = caller_arn(&endpoint, &issued).await;
    assert_eq!(
        caller,
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{}",
            handle.session
        )
    );

    // Secrets stay out of Debug output and the handle.
    let debug = format!("{issued:?}");
    for secret in [&creds["AWS_SECRET_ACCESS_KEY"], &creds["AWS_SESSION_TOKEN"]] {
        assert!(!debug.contains(secret.as_str()), "Debug shows a secret");
        assert!(!issued.handle.contains(secret.as_str()));
        assert!(
            !issued
                .instructions
                .as_deref()
                .unwrap()
                .contains(secret.as_str())
        );
    }

    // Two hours left, but the role allows one: a one-hour session.
    let long = p
        .grant(&grant_spec(base + 2, None, now, 7200))
        .await
        .unwrap();
    assert_close(
        long.credentials_expire_at.unwrap(),
        now + chrono::Duration::seconds(3600),
        "capped at the role maximum",
    );
    assert!(long.handle.contains(&format!("jit-{}-U0TESTER", base + 2)));

    // Five minutes left: STS's floor of 900 seconds, reported as such.
    let short = p
        .grant(&grant_spec(base + 3, None, now, 300))
        .await
        .unwrap();
    assert_close(
        short.credentials_expire_at.unwrap(),
        now + chrono::Duration::seconds(900),
        "STS floor",
    );

    // Granting the same request again yields the same session (idempotent per request).
    let again = p.grant(&spec).await.unwrap();
    assert_eq!(
        StsHandle::parse(&again.handle).unwrap().session,
        handle.session
    );

    // Extending re-issues credentials for the same session.
    let extended = p
        .extend(&grant_spec(base + 4, None, now, 3000), &issued.handle)
        .await
        .unwrap();
    assert_eq!(
        StsHandle::parse(&extended.handle).unwrap().session,
        handle.session
    );
    assert_close(
        extended.credentials_expire_at.unwrap(),
        now + chrono::Duration::seconds(3000),
        "extension",
    );
    assert!(
        caller_arn(&endpoint, &extended)
            .await
            .ends_with(&handle.session)
    );
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn early_revoke_denies_exactly_that_session_until_cleanup() {
    let Some(endpoint) = endpoint() else { return };
    let sdk = sdk_config(&endpoint).await;
    let (role, arn) = create_role(&sdk).await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    // Someone else's inline policy on the role stays untouched throughout.
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]});
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("theirs")
        .policy_document(theirs.to_string())
        .send()
        .await
        .unwrap();
    let p = provider(&sdk, &arn, None);
    let role_id = role_id(&sdk, &role).await;
    let base = (unique() as i64) * 10;
    let now = Utc::now();

    let spec_a = grant_spec(base + 1, Some("Zoë O'Brien <zoe@example.com>"), now, 1800);
    // B lives longer, so its statement outlives A's (stale statements are dropped on writes).
    let spec_b = grant_spec(base + 2, Some("bob@example.com"), now, 3000);
    let a = p.grant(&spec_a).await.unwrap();
    let b = p.grant(&spec_b).await.unwrap();
    let session_a = StsHandle::parse(&a.handle).unwrap().session;
    let session_b = StsHandle::parse(&b.handle).unwrap().session;
    let sid_a = sid_of_request(&spec_a);
    let sid_b = sid_of_request(&spec_b);
    assert_eq!(revocation_policy(&sdk, &role).await, None);

    let revoke_now = now + chrono::Duration::seconds(60);
    let revoked = p
        .revoke(&revoke_spec(&spec_a, &a, RevokeReason::Early, revoke_now))
        .await
        .expect("early revoke");
    let cleanup_at = revoked.cleanup_at.expect("cleanup is scheduled");
    assert_close(
        cleanup_at,
        a.credentials_expire_at.unwrap() + aws_sts::CLEANUP_MARGIN,
        "cleanup after the credentials' expiry",
    );
    let detail = revoked.detail.unwrap();
    assert!(
        detail.contains(&sid_a) && detail.contains(&role),
        "{detail}"
    );

    let doc = revocation_policy(&sdk, &role)
        .await
        .expect("policy written");
    let list = statements(&doc);
    assert_eq!(list.len(), 1, "{doc}");
    let stmt = &list[0];
    assert_eq!(stmt["Sid"], json!(sid_a));
    assert_eq!(stmt["Effect"], json!("Deny"));
    assert_eq!(stmt["Action"], json!("*"));
    assert_eq!(stmt["Resource"], json!("*"));
    let pattern = stmt["Condition"]["StringLike"]["aws:userid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(pattern, format!("{role_id}:jit-{}-*", base + 1));
    assert!(like(&pattern, &format!("{role_id}:{session_a}")));
    assert!(like(&pattern, &caller_userid(&endpoint, &a).await));
    assert!(!like(&pattern, &format!("{role_id}:{session_b}")));
    let bound = stmt["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .unwrap();
    assert_eq!(DateTime::parse_from_rfc3339(bound).unwrap(), cleanup_at);

    // A second revoke (a retried job) changes nothing.
    let again = p
        .revoke(&revoke_spec(&spec_a, &a, RevokeReason::Early, revoke_now))
        .await
        .unwrap();
    assert_eq!(again.cleanup_at, Some(cleanup_at));
    assert!(again.detail.unwrap().contains("already on"));
    assert_eq!(revocation_policy(&sdk, &role).await.unwrap(), doc);

    // Revoking B adds B's statement next to A's.
    let revoked_b = p
        .revoke(&revoke_spec(&spec_b, &b, RevokeReason::Early, revoke_now))
        .await
        .unwrap();
    let doc = revocation_policy(&sdk, &role).await.unwrap();
    let sids: Vec<Value> = statements(&doc).iter().map(|s| s["Sid"].clone()).collect();
    assert_eq!(sids, [json!(sid_a), json!(sid_b)]);
    assert_eq!(
        statements(&doc)[1]["Condition"]["StringLike"]["aws:userid"],
        json!(format!("{role_id}:jit-{}-*", base + 2))
    );

    // Cleanup of A removes A's statement only; twice is harmless.
    let cleanup_a = revoke_spec(&spec_a, &a, RevokeReason::Early, cleanup_at);
    p.cleanup(&cleanup_a).await.expect("cleanup");
    p.cleanup(&cleanup_a).await.expect("cleanup again");
    let doc = revocation_policy(&sdk, &role).await.unwrap();
    let sids: Vec<Value> = statements(&doc).iter().map(|s| s["Sid"].clone()).collect();
    assert_eq!(sids, [json!(sid_b)]);

    // Cleanup of B leaves no policy behind.
    p.cleanup(&revoke_spec(
        &spec_b,
        &b,
        RevokeReason::Early,
        revoked_b.cleanup_at.unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(revocation_policy(&sdk, &role).await, None);
    p.cleanup(&cleanup_a).await.expect("cleanup with no policy");

    // The other inline policy was never touched.
    let other = iam
        .get_role_policy()
        .role_name(&role)
        .policy_name("theirs")
        .send()
        .await
        .unwrap();
    let other: Value =
        serde_json::from_str(&decode_policy_document(other.policy_document()).unwrap()).unwrap();
    assert_eq!(other, theirs);
}

#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn expiry_needs_no_deny_unless_the_sts_floor_outlived_the_grant() {
    let Some(endpoint) = endpoint() else { return };
    let sdk = sdk_config(&endpoint).await;
    let (role, arn) = create_role(&sdk).await;
    let p = provider(&sdk, &arn, None);
    let base = (unique() as i64) * 10;
    let now = Utc::now();

    // A normal grant: at its end the session ends too; nothing is written.
    let spec = grant_spec(base + 1, None, now, 1800);
    let issued = p.grant(&spec).await.unwrap();
    let revoked = p
        .revoke(&revoke_spec(
            &spec,
            &issued,
            RevokeReason::Expired,
            spec.expires_at,
        ))
        .await
        .unwrap();
    assert_eq!(revoked.cleanup_at, None);
    assert_eq!(revocation_policy(&sdk, &role).await, None);

    // An early revoke after the credentials expired has nothing left to do either.
    let late = issued.credentials_expire_at.unwrap() + chrono::Duration::minutes(5);
    let revoked = p
        .revoke(&revoke_spec(&spec, &issued, RevokeReason::Early, late))
        .await
        .unwrap();
    assert_eq!(revoked.cleanup_at, None);
    assert_eq!(revocation_policy(&sdk, &role).await, None);

    // Five minutes granted, 900 seconds issued: at the grant's end the rest is denied.
    let spec = grant_spec(base + 2, None, now, 300);
    let issued = p.grant(&spec).await.unwrap();
    let revoked = p
        .revoke(&revoke_spec(
            &spec,
            &issued,
            RevokeReason::Expired,
            spec.expires_at,
        ))
        .await
        .unwrap();
    assert!(revoked.cleanup_at.unwrap() > issued.credentials_expire_at.unwrap());
    let doc = revocation_policy(&sdk, &role).await.expect("deny written");
    assert_eq!(statements(&doc)[0]["Sid"], json!(sid_of_request(&spec)));
    let pattern = statements(&doc)[0]["Condition"]["StringLike"]["aws:userid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(like(&pattern, &caller_userid(&endpoint, &issued).await));
}

/// The attack from the review: a 15-minute grant, extended by an hour, revoked at minute 16 —
/// after the first credentials' expiry. The extension's credentials must be denied, and an
/// unrelated holder of the same role must keep working.
#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_revoke_after_an_extension_denies_the_extended_session() {
    let Some(endpoint) = endpoint() else { return };
    let sdk = sdk_config(&endpoint).await;
    let (role, arn) = create_role(&sdk).await;
    let p = provider(&sdk, &arn, None);
    let base = (unique() as i64) * 10;
    let now = Utc::now();

    let first_spec = grant_spec(base + 1, Some("alice@example.com"), now, 900);
    let first = p.grant(&first_spec).await.unwrap();
    let other_spec = grant_spec(base + 2, Some("bob@example.com"), now, 3600);
    let other = p.grant(&other_spec).await.unwrap();
    // Extended at minute 10 by an hour: the grant now ends at 1h15m.
    let at_10 = now + chrono::Duration::minutes(10);
    let mut ext_spec = grant_spec(base + 1, Some("alice@example.com"), at_10, 3900);
    ext_spec.expires_at = now + chrono::Duration::minutes(75);
    let extended = p.extend(&ext_spec, &first.handle).await.unwrap();
    assert!(
        extended.credentials_expire_at.unwrap() > first.credentials_expire_at.unwrap(),
        "the extension issued longer-lived credentials"
    );

    // Revoked at minute 16: the first credentials have expired, the extended ones have not.
    let at_16 = now + chrono::Duration::minutes(16);
    let grant = GrantSpec {
        expires_at: ext_spec.expires_at,
        ..first_spec.clone()
    };
    let revoked = p
        .revoke(&revoke_all(
            &grant,
            &[&first, &extended],
            RevokeReason::Early,
            at_16,
        ))
        .await
        .expect("revoke");
    let detail = revoked.detail.unwrap();
    assert!(!detail.contains("already expired"), "{detail}");
    let cleanup_at = revoked.cleanup_at.expect("a statement to clean up later");
    assert!(
        cleanup_at >= extended.credentials_expire_at.unwrap() + aws_sts::CLEANUP_MARGIN,
        "the statement lasts until the extended credentials' own expiry: {cleanup_at}"
    );
    let doc = revocation_policy(&sdk, &role).await.expect("deny written");
    let list = statements(&doc);
    assert_eq!(list.len(), 1, "{doc}");
    let pattern = list[0]["Condition"]["StringLike"]["aws:userid"]
        .as_str()
        .unwrap();
    // The extended session's exact aws:userid, as its own calls carry it, is covered...
    assert!(like(pattern, &caller_userid(&endpoint, &extended).await));
    assert!(like(pattern, &caller_userid(&endpoint, &first).await));
    // ...and the unrelated holder's is not.
    assert!(!like(pattern, &caller_userid(&endpoint, &other).await));

    // A cleanup before the extended credentials expire would reopen them: it is scheduled
    // after, and a cleanup at that time removes the statement.
    p.cleanup(&revoke_all(
        &grant,
        &[&first, &extended],
        RevokeReason::Early,
        cleanup_at,
    ))
    .await
    .unwrap();
    assert_eq!(revocation_policy(&sdk, &role).await, None);
}

/// A grant whose AssumeRole failed in doubt is revoked under the presumed handle: the deny
/// statement covers the session such a call would have created, found through iam:GetRole.
#[tokio::test]
#[cfg_attr(
    not(jit_moto_tests),
    ignore = "needs JIT_TEST_AWS_ENDPOINT (moto) at build time"
)]
async fn a_presumed_session_is_denied() {
    let Some(endpoint) = endpoint() else { return };
    let sdk = sdk_config(&endpoint).await;
    let (role, arn) = create_role(&sdk).await;
    let p = provider(&sdk, &arn, None);
    let base = (unique() as i64) * 10;
    let now = Utc::now();
    let spec = grant_spec(base + 1, Some("carol@example.com"), now, 1800);
    // What the call "in doubt" issued, unbeknown to jit.
    let hidden = p.grant(&spec).await.unwrap();
    let presumed = p.presumed_handle(&spec);
    let presumed_handle = StsHandle::parse(&presumed).unwrap();
    assert_eq!(presumed_handle.userid, None);
    assert!(
        presumed_handle.credentials_expire_at >= hidden.credentials_expire_at.unwrap(),
        "the presumed session lasts at least as long as a real one"
    );
    let revoked = p
        .revoke(&RevokeSpec {
            request_id: spec.request_id,
            requester: spec.requester.clone(),
            resource: spec.resource.clone(),
            handle: presumed.clone(),
            issued: vec![Issuance {
                handle: presumed,
                expires_at: None,
            }],
            natural_expiry: spec.now,
            reason: RevokeReason::FailedGrant,
            now,
            baselines: Vec::new(),
        })
        .await
        .unwrap();
    assert!(revoked.cleanup_at.unwrap() > hidden.credentials_expire_at.unwrap());
    let doc = revocation_policy(&sdk, &role).await.expect("deny written");
    let pattern = statements(&doc)[0]["Condition"]["StringLike"]["aws:userid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(like(&pattern, &caller_userid(&endpoint, &hidden).await));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable_and_errors_hold_no_secrets() {
    // No moto needed: nothing listens on port 9 of localhost.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let sdk = aws_config_loader(Some("http://127.0.0.1:9"), Some("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            secret,
            Some("session-token-secret".into()),
            None,
            "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    let p = provider(&sdk, &format!("arn:aws:iam::{ACCOUNT}:role/nowhere"), None);
    let now = Utc::now();
    let err = p
        .grant(&grant_spec(1, None, now, 1800))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err:?}");
    for text in [format!("{err}"), format!("{err:?}")] {
        assert!(text.contains("sts:AssumeRole"), "{text}");
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("session-token-secret"), "{text}");
    }
    // A grant that has already ended is refused before any call (no 900 s session for it).
    let err = p
        .grant(&grant_spec(2, None, now, -1))
        .await
        .expect_err("grant already over");
    assert!(
        !err.is_retryable() && !err.may_have_acted() && err.to_string().contains("ended"),
        "{err}"
    );
    // A malformed handle is a fatal error, not a retry loop.
    let bad = RevokeSpec {
        request_id: RequestId(1),
        requester: Requester::Identity("ci".into()),
        resource: ResourceId::parse("aws-test").unwrap(),
        handle: "jit_1".into(),
        issued: vec![Issuance {
            handle: "jit_1".into(),
            expires_at: None,
        }],
        natural_expiry: now,
        reason: RevokeReason::Early,
        now,
        baselines: Vec::new(),
    };
    assert!(!p.revoke(&bad).await.unwrap_err().is_retryable());
}

#[test]
fn session_policies_over_the_limit_are_refused() {
    let statement = json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket/some/long/prefix/*"});
    let policy = json!({"Version": "2012-10-17", "Statement": vec![statement; 30]});
    let err = validate_session_policy(&policy.to_string()).unwrap_err();
    assert!(err.contains("2048"), "{err}");
    let small = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]});
    assert!(validate_session_policy(&serde_json::to_string_pretty(&small).unwrap()).is_ok());
}
