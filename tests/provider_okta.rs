//! The `okta_group` provider's real client against a stateful fake Okta served over HTTP
//! (`support/fake_okta.rs`): users, groups, memberships, paging, rate limits and faults. The
//! fake runs in-process, so these tests always run.

#[path = "support/fake_okta.rs"]
mod fake_okta;

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use chrono::Utc;
use fake_okta::{FakeOkta, TOKEN};
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::{OktaAuth, OktaGroupConfig, Requester};
use jit::providers::okta::{OktaProvider, parse_baseline};
use jit::providers::{GrantSpec, Provider, ProviderError, RevokeReason, RevokeSpec};
use secrecy::SecretString;

const GROUP: &str = "00gprodadmins";
const ALICE: &str = "00ualice";

fn config(fake: &FakeOkta) -> OktaGroupConfig {
    OktaGroupConfig {
        org_url: fake.url.clone(),
        group_id: GROUP.into(),
        auth: OktaAuth::ApiToken {
            env: "OKTA_API_TOKEN".into(),
        },
        principals: BTreeMap::from([("U0BOB".to_owned(), "robert@corp.example".to_owned())]),
    }
}

fn provider_with(fake: &FakeOkta, token: &str, timeout: Duration) -> OktaProvider {
    OktaProvider::with_timeout(
        ResourceId::parse("okta-admins").unwrap(),
        config(fake),
        SecretString::from(token.to_owned()),
        timeout,
    )
    .unwrap()
}

fn provider(fake: &FakeOkta) -> OktaProvider {
    provider_with(fake, TOKEN, Duration::from_secs(5))
}

/// A fake with alice (by her Slack email), bob (by the principals map) and the group, plus
/// five other groups alice is in (paging: two per page).
async fn fake() -> FakeOkta {
    let fake = FakeOkta::start().await;
    fake.add_user(ALICE, "alice@corp.example");
    fake.add_user("00urobert", "robert@corp.example");
    fake.add_group(GROUP, "prod-admins");
    for i in 0..5 {
        let id = format!("00gother{i}");
        fake.add_group(&id, &format!("other-{i}"));
        fake.add_member(&id, ALICE);
    }
    fake
}

fn spec(id: i64, user: &str, email: Option<&str>) -> GrantSpec {
    let now = Utc::now();
    GrantSpec {
        request_id: RequestId(id),
        requester: Requester::User(SlackUserId::parse(user).unwrap()),
        requester_email: email.map(str::to_owned),
        resource: ResourceId::parse("okta-admins").unwrap(),
        expires_at: now + chrono::Duration::hours(1),
        now,
    }
}

fn alice(id: i64) -> GrantSpec {
    spec(id, "U0ALICE", Some("Alice@corp.example"))
}

fn revoke_spec(grant: &GrantSpec, handle: &str, baselines: Vec<String>) -> RevokeSpec {
    RevokeSpec {
        request_id: grant.request_id,
        requester: grant.requester.clone(),
        resource: grant.resource.clone(),
        handle: handle.to_owned(),
        issued: vec![jit::providers::Issuance {
            handle: handle.to_owned(),
            expires_at: None,
        }],
        natural_expiry: grant.expires_at,
        reason: RevokeReason::Expired,
        now: Utc::now(),
        baselines,
    }
}

fn no_secret(err: &ProviderError) {
    assert!(!err.to_string().contains(TOKEN), "the token leaked: {err}");
}

#[tokio::test]
async fn a_grant_adds_the_member_and_the_revoke_removes_it() {
    let fake = fake().await;
    let okta = provider(&fake);
    let grant = alice(1);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    let parsed = parse_baseline(&baseline).unwrap();
    assert!(!parsed.standing);
    assert_eq!(parsed.user_id, ALICE);
    // Alice's other groups take three pages: all were read.
    assert_eq!(
        fake.count("GET", &format!("/api/v1/users/{ALICE}/groups")),
        3
    );

    let issued = okta.grant(&grant).await.unwrap();
    assert!(fake.is_member(GROUP, ALICE));
    assert_eq!(issued.handle, format!("okta:{GROUP}:alice@corp.example"));
    assert_eq!(issued.handle, okta.presumed_handle(&grant));
    assert!(issued.credentials.is_none());
    assert!(
        issued.instructions.unwrap().contains("Alice@corp.example"),
        "the holder is told which user"
    );

    let revoked = okta
        .revoke(&revoke_spec(&grant, &issued.handle, vec![baseline]))
        .await
        .unwrap();
    assert!(!fake.is_member(GROUP, ALICE));
    assert!(revoked.attention.is_none(), "{revoked:?}");
    assert_eq!(
        revoked.detail.as_deref(),
        Some(format!("removed Okta user alice@corp.example from group {GROUP}").as_str())
    );
    // Every call carried the token and was answered.
    assert!(
        fake.calls().iter().all(|c| c.status < 400),
        "{:?}",
        fake.calls()
    );
    assert_eq!(fake.count("GET", "/api/v1/users/Alice@corp.example"), 2);
    // Other memberships are untouched.
    assert!(fake.is_member("00gother4", ALICE));
}

#[tokio::test]
async fn grant_and_revoke_are_idempotent() {
    let fake = fake().await;
    let okta = provider(&fake);
    let grant = alice(2);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    let first = okta.grant(&grant).await.unwrap();
    let second = okta.grant(&grant).await.unwrap();
    assert_eq!(first.handle, second.handle);
    assert!(fake.is_member(GROUP, ALICE));
    assert_eq!(fake.count("PUT", "/api/v1/groups/"), 2);

    let spec = revoke_spec(&grant, &first.handle, vec![baseline]);
    let once = okta.revoke(&spec).await.unwrap();
    let twice = okta.revoke(&spec).await.unwrap();
    assert!(!fake.is_member(GROUP, ALICE));
    assert!(once.attention.is_none() && twice.attention.is_none());
    assert_eq!(fake.count("DELETE", "/api/v1/groups/"), 2);
}

#[tokio::test]
async fn overlapping_grants_share_one_handle_and_the_first_baseline_decides() {
    let fake = fake().await;
    let okta = provider(&fake);
    let first = alice(3);
    let first_baseline = okta.baseline(&first).await.unwrap().unwrap();
    let issued_first = okta.grant(&first).await.unwrap();

    // A second request of the same group by the same person, while the first holds it: its
    // baseline sees jit's own membership.
    let mut second = alice(4);
    second.now = first.now + chrono::Duration::minutes(5);
    let second_baseline = okta.baseline(&second).await.unwrap().unwrap();
    assert!(parse_baseline(&second_baseline).unwrap().standing);
    let issued_second = okta.grant(&second).await.unwrap();

    // One handle, so jit counts one access and tears it down once, with both baselines.
    assert_eq!(issued_first.handle, issued_second.handle);
    assert_eq!(okta.presumed_handle(&first), okta.presumed_handle(&second));
    let mut baselines = vec![second_baseline, first_baseline];
    baselines.sort(); // as jit hands them over
    let revoked = okta
        .revoke(&revoke_spec(&second, &issued_second.handle, baselines))
        .await
        .unwrap();
    assert!(
        !fake.is_member(GROUP, ALICE),
        "jit's own earlier grant is not standing access: {revoked:?}"
    );
}

#[tokio::test]
async fn standing_membership_is_never_removed() {
    let fake = fake().await;
    fake.add_member(GROUP, ALICE);
    let okta = provider(&fake);
    let grant = alice(5);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    assert!(parse_baseline(&baseline).unwrap().standing);
    let issued = okta.grant(&grant).await.unwrap();
    let revoked = okta
        .revoke(&revoke_spec(&grant, &issued.handle, vec![baseline]))
        .await
        .unwrap();
    assert!(fake.is_member(GROUP, ALICE));
    assert_eq!(fake.count("DELETE", "/"), 0);
    let detail = revoked.detail.unwrap();
    assert!(detail.contains("standing membership"), "{detail}");
    assert!(revoked.attention.is_none());
}

#[tokio::test]
async fn an_unknown_user_is_refused_before_anything_changes() {
    let fake = fake().await;
    let okta = provider(&fake);
    let stranger = spec(6, "U0CAROL", Some("carol@corp.example"));
    let err = okta.baseline(&stranger).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("no Okta user with login `carol@corp.example`"),
        "{err}"
    );
    let err = okta.grant(&stranger).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert_eq!(fake.count("PUT", "/"), 0);

    // Nobody known at all: refused with the reason, no call made.
    let calls = fake.calls().len();
    let err = okta.grant(&spec(7, "U0DAVE", None)).await.unwrap_err();
    assert!(err.to_string().contains("principals"), "{err}");
    assert_eq!(fake.calls().len(), calls);
}

#[tokio::test]
async fn the_principals_map_names_the_okta_login() {
    let fake = fake().await;
    let okta = provider(&fake);
    // Bob's Slack email is not his Okta login; the map says which it is.
    let bob = spec(8, "U0BOB", Some("bob@other.example"));
    let issued = okta.grant(&bob).await.unwrap();
    assert!(fake.is_member(GROUP, "00urobert"));
    assert_eq!(issued.handle, format!("okta:{GROUP}:robert@corp.example"));
    okta.revoke(&revoke_spec(&bob, &issued.handle, Vec::new()))
        .await
        .unwrap();
    assert!(!fake.is_member(GROUP, "00urobert"));
}

#[tokio::test]
async fn a_429_waits_for_the_reset_and_the_call_succeeds() {
    let fake = fake().await;
    let okta = provider(&fake);
    fake.throttle_next(2);
    let started = std::time::Instant::now();
    let issued = okta.grant(&alice(9)).await.unwrap();
    assert!(fake.is_member(GROUP, ALICE));
    assert!(issued.handle.starts_with("okta:"));
    let calls = fake.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 429, 200, 204], "{calls:?}");
    // Each retry came after the reset the 429 announced (one second ahead, in whole seconds).
    assert!(started.elapsed() >= Duration::from_millis(1000), "no wait");
}

#[tokio::test]
async fn a_used_up_rate_limit_paces_the_next_call() {
    let fake = fake().await;
    let okta = provider(&fake);
    // Two calls per two-second window: the user lookup and the PUT use it up.
    fake.rate_limit(2, 2);
    let grant = alice(10);
    okta.grant(&grant).await.unwrap();
    okta.grant(&grant).await.unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.status != 429),
        "pacing avoids the 429: {calls:?}"
    );
    // The third call waited for the window's reset (a whole second after the second call's).
    let second = calls[1].at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let third = calls[2].at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(third > second, "not paced: {calls:?}");
}

#[tokio::test]
async fn a_rate_limit_that_outlasts_the_retries_is_retryable_with_the_reset_time() {
    let fake = fake().await;
    let okta = provider(&fake);
    fake.throttle_next(10);
    let err = okta.grant(&alice(11)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("resets at"), "{err}");
    assert_eq!(fake.count("GET", "/"), 4, "the first try and three retries");
}

#[tokio::test]
async fn server_errors_are_retryable_and_a_retry_succeeds() {
    let fake = fake().await;
    let okta = provider(&fake);
    let grant = alice(12);
    fake.fail_next(1);
    let err = okta.grant(&grant).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let issued = okta.grant(&grant).await.unwrap();
    assert!(fake.is_member(GROUP, ALICE));

    fake.fail_next(1);
    let spec = revoke_spec(&grant, &issued.handle, Vec::new());
    let err = okta.revoke(&spec).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    okta.revoke(&spec).await.unwrap();
    assert!(!fake.is_member(GROUP, ALICE));
}

#[tokio::test]
async fn an_uncertain_grant_is_removed_through_the_presumed_handle() {
    let fake = fake().await;
    let okta = provider_with(&fake, TOKEN, Duration::from_millis(500));
    let grant = alice(13);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    // The PUT applies, then the answer never comes.
    fake.hang_next_put();
    let err = okta.grant(&grant).await.unwrap_err();
    assert!(err.is_retryable() && err.may_have_acted(), "{err:?}");
    assert!(fake.is_member(GROUP, ALICE), "the PUT did act");

    // What jit does next: revoke under the presumed handle.
    let mut spec = revoke_spec(&grant, &okta.presumed_handle(&grant), vec![baseline]);
    spec.reason = RevokeReason::FailedGrant;
    let revoked = okta.revoke(&spec).await.unwrap();
    assert!(!fake.is_member(GROUP, ALICE), "{revoked:?}");
}

#[tokio::test]
async fn a_member_re_added_outside_jit_after_teardown_is_a_loud_alert() {
    let fake = fake().await;
    let okta = provider(&fake);
    let grant = alice(14);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    let issued = okta.grant(&grant).await.unwrap();
    fake.readd_after_delete();
    let revoked = okta
        .revoke(&revoke_spec(&grant, &issued.handle, vec![baseline]))
        .await
        .unwrap();
    let attention = revoked.attention.expect("an alert");
    assert!(attention.contains("outside jit"), "{attention}");
    assert!(attention.contains(GROUP), "{attention}");
    // The read-back came after the DELETE.
    let calls = fake.calls();
    let last_delete = calls.iter().rposition(|c| c.method == "DELETE").unwrap();
    assert!(
        calls[last_delete + 1..]
            .iter()
            .any(|c| c.path.contains("/groups"))
    );
}

#[tokio::test]
async fn a_refused_token_is_named_but_never_shown() {
    let fake = fake().await;
    let okta = provider_with(&fake, "not-the-token", Duration::from_secs(5));
    let err = okta.grant(&alice(15)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("OKTA_API_TOKEN"), "{err}");
    assert!(!err.to_string().contains("not-the-token"), "{err}");
    let err = okta
        .revoke(&revoke_spec(
            &alice(15),
            &format!("okta:{GROUP}:alice@corp.example"),
            Vec::new(),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("OKTA_API_TOKEN"), "{err}");
    no_secret(&err);
    let check = okta.check().await.unwrap_err();
    assert!(check.contains("401"), "{check}");
}

#[tokio::test]
async fn the_doctor_check_reads_the_group_and_users() {
    let fake = fake().await;
    let okta = provider(&fake);
    let ok = okta.check().await.unwrap();
    assert!(ok.contains("prod-admins"), "{ok}");
    assert_eq!(fake.count("GET", &format!("/api/v1/groups/{GROUP}")), 1);
    assert_eq!(fake.count("GET", "/api/v1/users?limit=1"), 1);

    // A group that is not there, or whose members come from elsewhere.
    let mut config = config(&fake);
    config.group_id = "00gmissing".into();
    let missing = OktaProvider::new(
        ResourceId::parse("okta-admins").unwrap(),
        config.clone(),
        SecretString::from(TOKEN),
    )
    .unwrap();
    let err = missing.check().await.unwrap_err();
    assert!(err.contains("no group 00gmissing"), "{err}");
    fake.add_group_of_type("00gfromad", "ad-admins", "APP_GROUP");
    config.group_id = "00gfromad".into();
    let app_group = OktaProvider::new(
        ResourceId::parse("okta-admins").unwrap(),
        config,
        SecretString::from(TOKEN),
    )
    .unwrap();
    let err = app_group.check().await.unwrap_err();
    assert!(err.contains("APP_GROUP"), "{err}");
}

#[tokio::test]
async fn a_grant_to_a_missing_group_is_refused() {
    let fake = fake().await;
    let mut config = config(&fake);
    config.group_id = "00gmissing".into();
    let okta = OktaProvider::new(
        ResourceId::parse("okta-admins").unwrap(),
        config,
        SecretString::from(TOKEN),
    )
    .unwrap();
    let err = okta.grant(&alice(16)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("00gmissing"), "{err}");
}

#[tokio::test]
async fn teardown_removes_the_membership_of_the_group_the_grant_named() {
    let fake = fake().await;
    fake.add_group("00gnewadmins", "new-admins");
    let okta = provider(&fake);
    let grant = alice(17);
    let baseline = okta.baseline(&grant).await.unwrap().unwrap();
    let issued = okta.grant(&grant).await.unwrap();
    // The policy now names another group; the grant's own membership still goes.
    let mut config = config(&fake);
    config.group_id = "00gnewadmins".into();
    let changed = OktaProvider::new(
        ResourceId::parse("okta-admins").unwrap(),
        config,
        SecretString::from(TOKEN),
    )
    .unwrap();
    let revoked = changed
        .revoke(&revoke_spec(&grant, &issued.handle, vec![baseline]))
        .await
        .unwrap();
    assert!(!fake.is_member(GROUP, ALICE), "{revoked:?}");
    assert!(revoked.attention.is_none());
}

// ---------------------------------------------------------------------------------------------
// OAuth 2.0 client credentials with a private key

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn oauth_provider(fake: &FakeOkta, key_pem: &str) -> Result<OktaProvider, ProviderError> {
    let mut config = config(fake);
    config.auth = OktaAuth::PrivateKey {
        client_id: "0oajitservice".into(),
        private_key_env: "OKTA_PRIVATE_KEY".into(),
        key_id: Some("jit-key-1".into()),
    };
    OktaProvider::new(
        ResourceId::parse("okta-admins").unwrap(),
        config,
        SecretString::from(key_pem.to_owned()),
    )
}

/// A fresh P-256 key: (PEM, public key).
fn ec_key() -> (String, Vec<u8>) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    (pem(pkcs8.as_ref()), pair.public_key().as_ref().to_vec())
}

/// The RSA test key of `tests/fixtures` (made for these tests only): (PEM, public key).
fn rsa_key() -> (String, Vec<u8>) {
    use base64::Engine;
    use ring::signature::{KeyPair, RsaKeyPair};
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/okta-test-rsa-key.pem"),
    )
    .unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
    (text, pair.public_key().as_ref().to_vec())
}

#[tokio::test]
async fn oauth_client_credentials_with_a_p256_or_an_rsa_key_grant_and_revoke() {
    for (alg, (key_pem, public)) in [("ES256", ec_key()), ("RS256", rsa_key())] {
        let fake = fake().await;
        fake.add_client("0oajitservice", &public, alg);
        let okta = oauth_provider(&fake, &key_pem).unwrap();
        let grant = alice(20);
        let baseline = okta.baseline(&grant).await.unwrap().unwrap();
        let issued = okta.grant(&grant).await.unwrap();
        assert!(fake.is_member(GROUP, ALICE), "{alg}");
        okta.revoke(&revoke_spec(&grant, &issued.handle, vec![baseline]))
            .await
            .unwrap();
        assert!(!fake.is_member(GROUP, ALICE), "{alg}");
        // One access token served every call.
        assert_eq!(fake.count("POST", "/oauth2/v1/token"), 1, "{alg}");
        assert!(
            fake.calls().iter().all(|c| c.status < 400),
            "{alg}: {:?}",
            fake.calls()
        );
        assert!(okta.check().await.is_ok(), "{alg}");
    }
}

#[tokio::test]
async fn a_refused_access_token_is_renewed_once() {
    let (key_pem, public) = ec_key();
    let fake = fake().await;
    fake.add_client("0oajitservice", &public, "ES256");
    let okta = oauth_provider(&fake, &key_pem).unwrap();
    okta.grant(&alice(21)).await.unwrap();
    fake.expire_access_tokens();
    okta.grant(&alice(21)).await.unwrap();
    assert_eq!(fake.count("POST", "/oauth2/v1/token"), 2);
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![200, 200, 204, 401, 200, 200, 204]);
}

#[tokio::test]
async fn a_client_okta_does_not_know_by_that_key_is_refused_without_the_key() {
    let (key_pem, _) = ec_key();
    let (_, other_public) = ec_key();
    let fake = fake().await;
    fake.add_client("0oajitservice", &other_public, "ES256");
    let okta = oauth_provider(&fake, &key_pem).unwrap();
    let err = okta.grant(&alice(22)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Okta refused jit's OAuth client 0oajitservice"),
        "{text}"
    );
    assert!(
        text.contains("okta.groups.manage okta.users.read"),
        "{text}"
    );
    let key_body: String = key_pem.lines().nth(1).unwrap().to_owned();
    assert!(!text.contains(&key_body), "{text}");
    assert_eq!(fake.count("PUT", "/"), 0);

    // Not a key at all: the variable is named, the text is not shown.
    let err = oauth_provider(
        &fake,
        "-----BEGIN PRIVATE KEY-----\nnot-a-key-5ecret\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("OKTA_PRIVATE_KEY"), "{err}");
    assert!(!err.to_string().contains("5ecret"), "{err}");
}
