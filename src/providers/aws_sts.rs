//! The `aws_sts` provider: one STS `AssumeRole` session per grant, and a targeted deny statement
//! on the role for early revocation.
//!
//! **Grant.** `AssumeRole` with
//! - `DurationSeconds` = the time left in the grant, capped at the role's maximum session, and
//!   never below STS's floor of 900 s (a grant with less left still gets a 900 s session; the
//!   real expiry is reported in [`Issued::credentials_expire_at`], and revoking at the grant's
//!   end then denies the rest — see below);
//! - `RoleSessionName` = `jit-<request number>-<requester>`, sanitized to STS's alphabet and
//!   deterministic per request, so a grant job that runs twice yields the same session;
//! - `SourceIdentity` = the requester's email (or Slack user ID / `identity-<name>`), which AWS
//!   carries through role chaining and into CloudTrail;
//! - session tags `jit-request-id`, `jit-requester` and `jit-resource`;
//! - the resource's compact session policy, if any.
//!
//! The handle is a small JSON object (role ARN, session name, source identity, the session's
//! `aws:userid` and the credentials' expiry). It holds nothing secret.
//!
//! **Revoke.** Credentials issued by STS cannot be recalled, and a grant may hold several sets:
//! the first session, one per extension (each re-issues credentials under the same session name)
//! and any re-issue after a crash. The revoke is told about every one of them
//! ([`RevokeSpec::issued`]) with its own expiry. When the grant ends at its natural end and no
//! credentials outlive it, there is nothing to do. Otherwise (early, or when the 900 s floor or an
//! extension made credentials outlive the grant) jit adds one statement per grant to the role's
//! inline policy `jit-session-revocations`:
//!
//! ```json
//! {"Sid": "JitRevoke…", "Effect": "Deny", "Action": "*", "Resource": "*",
//!  "Condition": {"StringLike": {"aws:userid": "AROA…:jit-42-*"},
//!                "DateLessThan": {"aws:TokenIssueTime": "2026-11-20T15:05:00Z"}}}
//! ```
//!
//! `aws:userid` of an assumed-role session is `<role id>:<session name>`, and every session of
//! request 42 is named `jit-42-…`, so the statement hits every session of that grant (including
//! one a timed-out call may have issued under a label jit never saw) and nothing else; other
//! holders of the role are unaffected (unlike the console's "revoke active sessions", which cuts
//! off everyone). Two jit deployments must therefore not share a role. The `Sid` is derived from
//! the request number, so a second revoke changes nothing. The `DateLessThan` bound is the latest
//! expiry of any of the grant's credentials (or the grant's end, if later) plus a margin: it
//! records when the statement becomes useless (every token it matches has expired by then), and
//! it lets jit drop stale statements on every write, keeping the policy under IAM's
//! 10,240-character limit for a role's inline policies. [`Revoked::cleanup_at`] is that bound;
//! [`Provider::cleanup`] then removes the statement (and the policy once it is empty).
//!
//! **In doubt.** A grant that failed in a way that may have issued credentials (a timeout, a
//! 5xx) is revoked with [`Provider::presumed_handle`]: the session name and the longest expiry
//! such a session could have, and the role's ID looked up with `iam:GetRole`.
//!
//! IAM has no compare-and-swap, so writes are serialized per role inside the process and each
//! write is read back; a statement lost to a concurrent writer elsewhere is written again.
//!
//! Permissions jit needs: `sts:AssumeRole` (+ `sts:SetSourceIdentity`, `sts:TagSession` in the
//! role's trust policy) and, for early revocation, `iam:GetRolePolicy`, `iam:PutRolePolicy`,
//! `iam:DeleteRolePolicy` on the role (`iam:GetRole` only if STS did not report the session's ID).

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    Credentials, GrantSpec, Issued, Provider, ProviderError, RevokeReason, RevokeSpec, Revoked,
};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{RequestId, ResourceId};
use crate::domain::policy::{AwsStsConfig, Requester};

/// The role inline policy that holds jit's deny statements.
pub const REVOCATION_POLICY_NAME: &str = "jit-session-revocations";
/// STS's shortest session.
pub const MIN_SESSION_SECS: i64 = 900;
/// STS's longest session (and IAM's largest MaxSessionDuration).
pub const MAX_SESSION_SECS: i64 = 43_200;
/// IAM's limit on the aggregate size of a role's inline policies (whitespace not counted).
pub const ROLE_INLINE_POLICY_LIMIT: usize = 10_240;
/// Prefix of the `Sid` of every statement jit writes.
pub const SID_PREFIX: &str = "JitRevoke";
/// How long a deny statement stays after the credentials it targets expire (clock skew).
pub const CLEANUP_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// Credentials ending this little after the grant are treated as ending with it (clock skew
/// between jit and AWS; STS counts the duration from when it receives the call).
pub const EXPIRY_TOLERANCE: chrono::Duration = chrono::Duration::seconds(60);

const MAX_ERROR_CHARS: usize = 600;

/// The SDK configuration every `aws_sts` resource shares, from the standard chain (environment,
/// profile, SSO, container and instance credentials; `AWS_REGION`; `AWS_ENDPOINT_URL`).
///
/// `endpoint_override` wins over `AWS_ENDPOINT_URL` (tests point it at moto). `region`, if
/// given, wins over the environment; with neither, jit uses `us-east-1` (STS is global; a
/// resource's own `region` still applies to its STS client). The HTTP client is hyper with
/// rustls on the ring backend, because the AWS crates are built without their own TLS stack.
/// Call `rustls::crypto::ring::default_provider().install_default()` once per process.
pub async fn load_aws_config(endpoint_override: Option<&str>, region: Option<&str>) -> SdkConfig {
    let config = aws_config_loader(endpoint_override, region).load().await;
    if config.region().is_some() {
        config
    } else {
        config
            .into_builder()
            .region(Region::from_static("us-east-1"))
            .build()
    }
}

/// Like [`load_aws_config`], but returns the loader so callers can adjust it (tests set static
/// credentials with `.credentials_provider(..)`). No region fallback here.
pub fn aws_config_loader(endpoint_override: Option<&str>, region: Option<&str>) -> ConfigLoader {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    // The loader's own region chain (environment, profile, IMDS) uses this HTTP client; a
    // separately built `RegionProviderChain::default_provider()` would not, and panics.
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint_override {
        loader = loader.endpoint_url(endpoint);
    }
    loader
}

/// What jit needs at revoke time. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsHandle {
    pub role_arn: String,
    pub session: String,
    pub source_identity: String,
    /// `<role id>:<session name>`, the session's `aws:userid`, as STS reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<String>,
    pub credentials_expire_at: DateTime<Utc>,
}

impl StsHandle {
    pub fn parse(handle: &str) -> Result<Self, ProviderError> {
        serde_json::from_str(handle).map_err(|e| {
            ProviderError::Fatal(format!("not an aws_sts handle ({e}): {}", truncate(handle)))
        })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a handle serializes")
    }
}

pub struct AwsStsProvider {
    resource: ResourceId,
    config: AwsStsConfig,
    sts: aws_sdk_sts::Client,
    iam: aws_sdk_iam::Client,
}

impl AwsStsProvider {
    /// `sdk` is the shared configuration from [`load_aws_config`]; the resource's `region`, if
    /// set, overrides its region for STS.
    pub fn new(resource: ResourceId, config: AwsStsConfig, sdk: &SdkConfig) -> Self {
        let mut sts_config = aws_sdk_sts::config::Builder::from(sdk);
        if let Some(region) = &config.region {
            sts_config = sts_config.region(Region::new(region.clone()));
        }
        Self {
            resource,
            sts: aws_sdk_sts::Client::from_conf(sts_config.build()),
            iam: aws_sdk_iam::Client::new(sdk),
            config,
        }
    }

    pub fn config(&self) -> &AwsStsConfig {
        &self.config
    }

    async fn assume(
        &self,
        spec: &GrantSpec,
        session: &str,
        source_identity: &str,
    ) -> Result<Issued, ProviderError> {
        let duration =
            session_duration_secs(spec.now, spec.expires_at, self.config.role_max_session);
        let requester_tag = tag_value(
            spec.requester_email
                .as_deref()
                .unwrap_or(&spec.requester.key()),
        );
        let tags = [
            ("jit-request-id", spec.request_id.0.to_string()),
            ("jit-requester", requester_tag),
            ("jit-resource", tag_value(spec.resource.as_str())),
        ];
        let mut call = self
            .sts
            .assume_role()
            .role_arn(&self.config.role_arn)
            .role_session_name(session)
            .source_identity(source_identity)
            .duration_seconds(duration);
        for (key, value) in tags {
            let tag = aws_sdk_sts::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| ProviderError::Fatal(format!("session tag {key}: {e}")))?;
            call = call.tags(tag);
        }
        if let Some(policy) = &self.config.session_policy {
            call = call.policy(policy);
        }
        // STS either issues a session or refuses the whole call: a definite refusal (access
        // denied, a validation error) issued nothing. Timeouts and 5xx stay in doubt.
        let output = call.send().await.map_err(|e| {
            match classify("sts:AssumeRole", &self.config.role_arn, e) {
                ProviderError::Fatal(text) => ProviderError::Refused(text),
                other => other,
            }
        })?;
        let creds = output.credentials().ok_or_else(|| {
            ProviderError::Retryable("sts:AssumeRole returned no credentials".into())
        })?;
        // Whole seconds, as real STS reports it (moto adds microseconds).
        let expires_at =
            DateTime::<Utc>::from_timestamp(creds.expiration().secs(), 0).ok_or_else(|| {
                ProviderError::Retryable("sts:AssumeRole returned a bad expiry".into())
            })?;
        let userid = output
            .assumed_role_user()
            .map(|u| u.assumed_role_id().to_owned())
            .filter(|id| id.ends_with(&format!(":{session}")));
        let assumed_arn = output.assumed_role_user().map(|u| u.arn().to_owned());
        let handle = StsHandle {
            role_arn: self.config.role_arn.clone(),
            session: session.to_owned(),
            source_identity: source_identity.to_owned(),
            userid,
            credentials_expire_at: expires_at,
        };
        let expiration = expires_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut pairs = vec![
            ("AWS_ACCESS_KEY_ID", creds.access_key_id().to_owned()),
            (
                "AWS_SECRET_ACCESS_KEY",
                creds.secret_access_key().to_owned(),
            ),
            ("AWS_SESSION_TOKEN", creds.session_token().to_owned()),
            ("AWS_CREDENTIAL_EXPIRATION", expiration.clone()),
        ];
        if let Some(region) = &self.config.region {
            pairs.push(("AWS_REGION", region.clone()));
        }
        let instructions = format!(
            "Role {} as session {session}{}; the credentials expire at {expiration}.",
            self.config.role_arn,
            assumed_arn
                .map(|arn| format!(" ({arn})"))
                .unwrap_or_default(),
        );
        Ok(Issued {
            handle: handle.encode(),
            credentials: Some(Credentials::from_pairs(pairs)),
            instructions: Some(instructions),
            credentials_expire_at: Some(expires_at),
        })
    }

    /// The role's unique ID (`AROA…`), the first part of its sessions' `aws:userid`: from a
    /// handle where STS reported it, else from `iam:GetRole`.
    async fn role_id(&self, sessions: &[StsHandle]) -> Result<String, ProviderError> {
        if let Some(id) = sessions
            .iter()
            .filter_map(|h| h.userid.as_deref())
            .find_map(|u| u.split_once(':').map(|(role_id, _)| role_id.to_owned()))
        {
            return Ok(id);
        }
        let handle = sessions
            .first()
            .ok_or_else(|| ProviderError::Fatal("no STS session to revoke".into()))?;
        let role = role_name(&handle.role_arn)?;
        let output = self
            .iam
            .get_role()
            .role_name(role)
            .send()
            .await
            .map_err(|e| classify("iam:GetRole", role, e))?;
        output
            .role()
            .map(|r| r.role_id().to_owned())
            .ok_or_else(|| ProviderError::Retryable("iam:GetRole returned no role".into()))
    }

    async fn read_policy(&self, role: &str) -> Result<Option<Value>, ProviderError> {
        match self
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(REVOCATION_POLICY_NAME)
            .send()
            .await
        {
            Ok(output) => {
                let text = decode_policy_document(output.policy_document())?;
                let value: Value = serde_json::from_str(&text).map_err(|e| {
                    ProviderError::Fatal(format!(
                        "inline policy {REVOCATION_POLICY_NAME} of role {role} is not JSON: {e}"
                    ))
                })?;
                Ok(Some(value))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("iam:GetRolePolicy", role, e)),
        }
    }

    async fn write_policy(
        &self,
        role: &str,
        document: Option<&Value>,
    ) -> Result<(), ProviderError> {
        match document {
            Some(doc) => {
                let text = doc.to_string();
                check_size(role, &text)?;
                self.iam
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(REVOCATION_POLICY_NAME)
                    .policy_document(text)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.as_service_error()
                            .is_some_and(|s| s.is_limit_exceeded_exception())
                        {
                            ProviderError::Retryable(format!(
                                "role {role} has no room left for inline policies (IAM's {ROLE_INLINE_POLICY_LIMIT}-character limit); \
                                 {REVOCATION_POLICY_NAME} empties as revoked sessions expire"
                            ))
                        } else {
                            classify("iam:PutRolePolicy", role, e)
                        }
                    })?;
            }
            None => {
                match self
                    .iam
                    .delete_role_policy()
                    .role_name(role)
                    .policy_name(REVOCATION_POLICY_NAME)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_no_such_entity_exception()) => {}
                    Err(e) => return Err(classify("iam:DeleteRolePolicy", role, e)),
                }
            }
        }
        Ok(())
    }

    /// Read-modify-write of the revocation policy until a read-back shows `done`.
    async fn update_policy<F, D>(
        &self,
        role: &str,
        mut change: F,
        done: D,
    ) -> Result<bool, ProviderError>
    where
        F: FnMut(Option<&Value>) -> Option<Value>,
        D: Fn(Option<&Value>) -> bool,
    {
        let lock = role_lock(role);
        let _guard = lock.lock().await;
        let mut wrote = false;
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let current = self.read_policy(role).await?;
            let next = change(current.as_ref());
            if next == current {
                if done(current.as_ref()) {
                    return Ok(wrote);
                }
            } else {
                self.write_policy(role, next.as_ref()).await?;
                wrote = true;
            }
            let back = self.read_policy(role).await?;
            if done(back.as_ref()) {
                return Ok(wrote);
            }
        }
        Err(ProviderError::Retryable(format!(
            "inline policy {REVOCATION_POLICY_NAME} of role {role} kept changing under jit (a concurrent writer?)"
        )))
    }
}

#[async_trait::async_trait]
impl Provider for AwsStsProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        ensure_not_over(spec)?;
        let session = session_name(spec.request_id, &requester_label(spec));
        let identity = source_identity(&spec.requester, spec.requester_email.as_deref());
        tracing::debug!(resource = %self.resource, %session, "assuming role");
        self.assume(spec, &session, &identity).await
    }

    async fn extend(&self, spec: &GrantSpec, handle: &str) -> Result<Issued, ProviderError> {
        // The same session name, so an early revoke of either request covers both.
        ensure_not_over(spec)?;
        let old = StsHandle::parse(handle)?;
        self.assume(spec, &old.session, &old.source_identity).await
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError> {
        let sessions = sessions_of(spec)?;
        let creds_end = latest_expiry(&sessions);
        if spec.now > creds_end + EXPIRY_TOLERANCE {
            return Ok(Revoked {
                cleanup_at: None,
                detail: Some(format!(
                    "every STS session of the grant ({}) had already expired, the last at {}",
                    session_list(&sessions),
                    rfc3339(creds_end)
                )),
                attention: None,
            });
        }
        if spec.reason == RevokeReason::Expired
            && creds_end <= spec.natural_expiry + EXPIRY_TOLERANCE
        {
            // Every session ends by itself, with the grant.
            return Ok(Revoked::default());
        }
        let prefix = session_prefix(spec.request_id);
        let sid = revocation_sid(&prefix);
        let now = spec.now;
        let mut latest_bound = None;
        let mut details = Vec::new();
        // One statement per role the grant's sessions were issued for (one, unless the policy
        // moved the resource to another role between the grant and an extension).
        for (role_arn, of_role) in by_role(&sessions) {
            let role = role_name(role_arn)?.to_owned();
            let role_id = self.role_id(&of_role).await?;
            let pattern = format!("{role_id}:{prefix}*");
            let bound =
                ceil_to_second(latest_expiry(&of_role).max(spec.natural_expiry) + CLEANUP_MARGIN);
            let statement = deny_statement(&sid, &pattern, bound);
            let added = self
                .update_policy(
                    &role,
                    |current| Some(with_statement(current, &statement, now)),
                    |doc| doc.is_some_and(|d| covers(d, &sid, bound)),
                )
                .await?;
            details.push(format!(
                "deny statement {sid} {} role {role} (sessions {pattern}, until {})",
                if added { "added to" } else { "already on" },
                rfc3339(bound)
            ));
            latest_bound = latest_bound.max(Some(bound));
        }
        Ok(Revoked {
            cleanup_at: latest_bound,
            detail: Some(details.join("; ")),
            attention: None,
        })
    }

    async fn cleanup(&self, spec: &RevokeSpec) -> Result<(), ProviderError> {
        let sessions = sessions_of(spec)?;
        let sid = revocation_sid(&session_prefix(spec.request_id));
        let now = spec.now;
        for (role_arn, of_role) in by_role(&sessions) {
            let role = role_name(role_arn)?.to_owned();
            // Statements written before jit named them by request were named by session.
            let mut sids: Vec<String> =
                of_role.iter().map(|h| revocation_sid(&h.session)).collect();
            sids.push(sid.clone());
            self.update_policy(
                &role,
                |current| {
                    let mut doc = current.cloned();
                    for sid in &sids {
                        doc = doc.and_then(|d| without_statement(&d, sid, now));
                    }
                    doc
                },
                |doc| {
                    !sids
                        .iter()
                        .any(|sid| doc.is_some_and(|d| has_statement(d, sid)))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The request's session, lasting as long as a session for this grant could: the STS
    /// session a failed call may have created.
    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        let duration =
            session_duration_secs(spec.now, spec.expires_at, self.config.role_max_session);
        StsHandle {
            role_arn: self.config.role_arn.clone(),
            session: session_name(spec.request_id, &requester_label(spec)),
            source_identity: source_identity(&spec.requester, spec.requester_email.as_deref()),
            userid: None,
            // STS counts from when it received the call, a little after `spec.now`.
            credentials_expire_at: spec.now
                + chrono::Duration::seconds(i64::from(duration))
                + EXPIRY_TOLERANCE,
        }
        .encode()
    }
}

/// Every STS session a grant issued, from its handles.
fn sessions_of(spec: &RevokeSpec) -> Result<Vec<StsHandle>, ProviderError> {
    super::distinct_handles(spec)
        .into_iter()
        .map(StsHandle::parse)
        .collect()
}

fn latest_expiry(sessions: &[StsHandle]) -> DateTime<Utc> {
    sessions
        .iter()
        .map(|h| h.credentials_expire_at)
        .max()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn session_list(sessions: &[StsHandle]) -> String {
    let mut names: Vec<&str> = sessions.iter().map(|h| h.session.as_str()).collect();
    names.dedup();
    names.join(", ")
}

/// Sessions grouped by the role they were issued for, in first-seen order.
fn by_role(sessions: &[StsHandle]) -> Vec<(&str, Vec<StsHandle>)> {
    let mut out: Vec<(&str, Vec<StsHandle>)> = Vec::new();
    for h in sessions {
        match out.iter_mut().find(|(arn, _)| *arn == h.role_arn) {
            Some((_, list)) => list.push(h.clone()),
            None => out.push((h.role_arn.as_str(), vec![h.clone()])),
        }
    }
    out
}

/// `jit-<request>-`: the start of every session name of that request (see [`session_name`]).
pub fn session_prefix(request_id: RequestId) -> String {
    format!("jit-{}-", request_id.0)
}

/// Whether `doc` holds statement `sid` with a bound at least `bound`.
fn covers(doc: &Value, sid: &str, bound: DateTime<Utc>) -> bool {
    statements(doc)
        .iter()
        .any(|s| sid_of(s) == Some(sid) && statement_bound(s).is_some_and(|b| b >= bound))
}

// ---------------------------------------------------------------------------------------------
// Pure helpers (unit-tested below)
// ---------------------------------------------------------------------------------------------

/// A grant whose end has passed (a job delayed by downtime, say) is not issued: STS's 900 s
/// floor would otherwise hand out access the grant no longer covers.
fn ensure_not_over(spec: &GrantSpec) -> Result<(), ProviderError> {
    if spec.expires_at <= spec.now {
        return Err(ProviderError::Refused(format!(
            "the grant ended at {}, before credentials were issued",
            rfc3339(spec.expires_at)
        )));
    }
    Ok(())
}

/// `DurationSeconds` for a grant ending at `expires_at`: the whole seconds left, capped at the
/// role's maximum session (and STS's 12 h), and at least STS's 900 s.
pub fn session_duration_secs(
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    role_max: GrantDuration,
) -> i32 {
    let left = (expires_at - now).num_seconds();
    let max = (role_max.as_secs() as i64).clamp(MIN_SESSION_SECS, MAX_SESSION_SECS);
    left.clamp(MIN_SESSION_SECS, max) as i32
}

fn is_sts_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// Maps `input` onto STS's `[\w+=,.@-]` alphabet (other characters become `-`) and cuts it to
/// `max` characters. Pads to STS's minimum of 2 characters.
pub fn sanitize_sts_name(input: &str, max: usize) -> String {
    let mut out: String = input
        .chars()
        .map(|c| if is_sts_name_char(c) { c } else { '-' })
        .take(max)
        .collect();
    while out.len() < 2 {
        out.push('-');
    }
    out
}

/// `RoleSessionName`: `jit-<request number>-<requester>`, at most 64 characters of STS's
/// alphabet. The request number always survives truncation, so names are unique per request.
pub fn session_name(request_id: RequestId, requester: &str) -> String {
    sanitize_sts_name(&format!("jit-{}-{requester}", request_id.0), 64)
}

fn requester_label(spec: &GrantSpec) -> String {
    match &spec.requester_email {
        Some(email) if !email.trim().is_empty() => email.trim().to_owned(),
        _ => spec.requester.key(),
    }
}

/// `SourceIdentity`: the requester's email if known, else the Slack user ID or
/// `identity-<name>`, sanitized to STS's alphabet (2–64 characters). AWS reserves the `aws:`
/// prefix; sanitizing turns `:` into `-`, so it can never be produced.
pub fn source_identity(requester: &Requester, email: Option<&str>) -> String {
    let raw = match (email.map(str::trim), requester) {
        (Some(e), _) if !e.is_empty() => e.to_owned(),
        (_, Requester::User(u)) => u.to_string(),
        (_, Requester::Identity(name)) => format!("identity-{name}"),
    };
    sanitize_sts_name(&raw, 64)
}

/// A session tag value within AWS's alphabet (`[\p{L}\p{Z}\p{N}_.:/=+\-@]`, at most 256
/// characters). jit keeps to its ASCII part — letters, digits, space and `_.:/=+-@` — and
/// replaces anything else with `_`, so no locale question can make AWS refuse a grant.
pub fn tag_value(input: &str) -> String {
    input
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// The `Sid` of a deny statement: `JitRevoke` and 16 hex digits of the SHA-256 of `name` (the
/// request's [`session_prefix`]; statements of older versions used the session name). IAM allows
/// only letters and digits; the condition names the sessions for people reading the policy.
/// Short, because the role's inline policies share 10,240 characters.
pub fn revocation_sid(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("{SID_PREFIX}{}", &hex::encode(digest)[..16])
}

/// The statement that denies everything to the sessions whose `aws:userid` matches `pattern`
/// (`<role id>:jit-42-*`), for tokens issued before `bound`. STS session names cannot contain
/// `*` or `?`, so the pattern's only wildcard is the one jit puts at its end.
pub fn deny_statement(sid: &str, pattern: &str, bound: DateTime<Utc>) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {
            "StringLike": { "aws:userid": pattern },
            "DateLessThan": { "aws:TokenIssueTime": rfc3339(bound) },
        }
    })
}

fn statements(doc: &Value) -> Vec<Value> {
    match doc.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        Some(single @ Value::Object(_)) => vec![single.clone()],
        _ => Vec::new(),
    }
}

fn sid_of(statement: &Value) -> Option<&str> {
    statement.get("Sid").and_then(Value::as_str)
}

/// When a jit statement stops mattering (its `DateLessThan` bound); `None` for other statements.
fn statement_bound(statement: &Value) -> Option<DateTime<Utc>> {
    if !sid_of(statement)?.starts_with(SID_PREFIX) {
        return None;
    }
    let text = statement
        .pointer("/Condition/DateLessThan/aws:TokenIssueTime")?
        .as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a jit statement no longer matches any live token.
fn is_stale(statement: &Value, now: DateTime<Utc>) -> bool {
    statement_bound(statement).is_some_and(|bound| bound <= now)
}

pub fn has_statement(doc: &Value, sid: &str) -> bool {
    statements(doc).iter().any(|s| sid_of(s) == Some(sid))
}

fn document(list: Vec<Value>) -> Value {
    json!({ "Version": "2012-10-17", "Statement": list })
}

/// `current` with `statement` in it and stale jit statements dropped. A statement with the same
/// `Sid` is kept if its bound is at least as late (so a second revoke changes nothing), else
/// replaced. Statements jit did not write are kept as they are.
pub fn with_statement(current: Option<&Value>, statement: &Value, now: DateTime<Utc>) -> Value {
    let sid = sid_of(statement).unwrap_or_default();
    let mut list: Vec<Value> = current
        .map(statements)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !is_stale(s, now) || sid_of(s) == Some(sid))
        .collect();
    match list.iter().position(|s| sid_of(s) == Some(sid)) {
        Some(i) => {
            if statement_bound(&list[i]) < statement_bound(statement) {
                list[i] = statement.clone();
            }
        }
        None => list.push(statement.clone()),
    }
    let mut doc = current.cloned().unwrap_or_else(|| document(Vec::new()));
    doc["Statement"] = Value::Array(list);
    if doc.get("Version").is_none() {
        doc["Version"] = json!("2012-10-17");
    }
    doc
}

/// `current` without the statement `sid` and without stale jit statements; `None` when nothing
/// is left (the policy is then deleted).
pub fn without_statement(current: &Value, sid: &str, now: DateTime<Utc>) -> Option<Value> {
    let list: Vec<Value> = statements(current)
        .into_iter()
        .filter(|s| sid_of(s) != Some(sid) && !is_stale(s, now))
        .collect();
    if list.is_empty() {
        return None;
    }
    let mut doc = current.clone();
    doc["Statement"] = Value::Array(list);
    Some(doc)
}

/// Refuses a revocation policy that IAM would refuse for its size. Retryable: the policy
/// shrinks as the sessions it names expire (their statements are dropped on every write).
pub fn check_size(role: &str, text: &str) -> Result<(), ProviderError> {
    let size = policy_size(text);
    if size > ROLE_INLINE_POLICY_LIMIT {
        return Err(ProviderError::Retryable(format!(
            "inline policy {REVOCATION_POLICY_NAME} of role {role} would be {size} characters, over IAM's \
             {ROLE_INLINE_POLICY_LIMIT}; it shrinks as revoked sessions expire"
        )));
    }
    Ok(())
}

/// Size as IAM counts it: characters other than whitespace.
pub fn policy_size(text: &str) -> usize {
    text.chars().filter(|c| !c.is_whitespace()).count()
}

/// IAM returns policy documents URL-encoded (RFC 3986). Decodes `%XX` escapes only (a `+` stays
/// a `+`); a document that is already plain JSON is returned as it is.
pub fn decode_policy_document(text: &str) -> Result<String, ProviderError> {
    if text.trim_start().starts_with('{') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        ProviderError::Fatal(format!(
            "inline policy {REVOCATION_POLICY_NAME} is not valid UTF-8 once decoded"
        ))
    })
}

/// The role's name: the last path segment of `arn:aws:iam::123456789012:role/path/name`.
pub fn role_name(arn: &str) -> Result<&str, ProviderError> {
    arn.split_once(":role/")
        .map(|(_, path)| path.rsplit('/').next().unwrap_or(path))
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ProviderError::Fatal(format!("`{arn}` is not an IAM role ARN")))
}

/// `t` rounded up to a whole second (policy conditions carry whole seconds).
pub fn ceil_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = DateTime::<Utc>::from_timestamp(t.timestamp(), 0).unwrap_or(t);
    if floor < t {
        floor + chrono::Duration::seconds(1)
    } else {
        floor
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// Error codes AWS uses for "slow down" or "try later".
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServiceFailure",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "InternalServerException",
    "IDPCommunicationError",
    "RequestTimeout",
    "RequestTimeoutException",
    "ConcurrentModification",
    "ConcurrentModificationException",
];

/// Maps an SDK error: throttling, 5xx, timeouts and dispatch failures may pass on retry;
/// access denied, validation and malformed input will not. AWS error texts name ARNs and
/// actions, never the caller's secret key; jit adds only the operation and the target.
pub(crate) fn classify<E>(operation: &str, target: &str, err: SdkError<E>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = err.code().unwrap_or("Unknown");
            let message = err.message().unwrap_or("");
            let text = truncate(&format!("{operation} on {target}: {code}: {message}"));
            if status >= 500 || status == 429 || RETRYABLE_CODES.contains(&code) {
                ProviderError::Retryable(text)
            } else {
                ProviderError::Fatal(text)
            }
        }
        SdkError::ConstructionFailure(_) => ProviderError::Fatal(truncate(&format!(
            "{operation} on {target}: cannot build the request: {}",
            DisplayErrorContext(&err)
        ))),
        SdkError::TimeoutError(_) => {
            ProviderError::Retryable(format!("{operation} on {target}: timed out"))
        }
        _ => ProviderError::Retryable(truncate(&format!(
            "{operation} on {target}: {}",
            DisplayErrorContext(&err)
        ))),
    }
}

/// One lock per role name, shared by every resource of the process that uses that role.
fn role_lock(role: &str) -> Arc<tokio::sync::Mutex<()>> {
    super::keyed_lock(&format!("aws_sts role {role}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::SlackUserId;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn duration_is_time_left_capped_and_floored() {
        let now = t("2026-01-01T00:00:00Z");
        let hour = GrantDuration::from_hours(1);
        let max12 = GrantDuration::from_hours(12);
        let at = |secs: i64| now + chrono::Duration::seconds(secs);
        assert_eq!(session_duration_secs(now, at(1800), hour), 1800);
        assert_eq!(session_duration_secs(now, at(3600), hour), 3600);
        assert_eq!(session_duration_secs(now, at(7200), hour), 3600);
        assert_eq!(session_duration_secs(now, at(7200), max12), 7200);
        assert_eq!(session_duration_secs(now, at(100_000), max12), 43_200);
        // Below STS's floor: 900 s all the same.
        assert_eq!(session_duration_secs(now, at(300), hour), 900);
        assert_eq!(session_duration_secs(now, at(0), hour), 900);
        assert_eq!(session_duration_secs(now, at(-50), hour), 900);
        // Fractions of a second round down (never past the grant).
        let almost = now + chrono::Duration::milliseconds(1_800_999);
        assert_eq!(session_duration_secs(now, almost, hour), 1800);
    }

    fn valid_sts_name(s: &str) -> bool {
        (2..=64).contains(&s.len()) && s.chars().all(is_sts_name_char)
    }

    #[test]
    fn session_names_are_sanitized_and_unique_per_request() {
        let nasty = [
            "alice@example.com",
            "Ünïcødé ñame",
            "a\"b'c; DROP",
            "",
            "x",
            "identity:ci/deploy bot",
            &"very-long-name".repeat(10),
            "日本語",
            "tab\there\nnewline",
        ];
        for requester in nasty {
            for id in [1, 42, i64::MAX] {
                let name = session_name(RequestId(id), requester);
                assert!(valid_sts_name(&name), "{name:?} from {requester:?}");
                assert!(name.starts_with(&format!("jit-{id}-")), "{name}");
            }
        }
        assert_eq!(
            session_name(RequestId(42), "alice@example.com"),
            "jit-42-alice@example.com"
        );
        assert_eq!(session_name(RequestId(7), "a b:c"), "jit-7-a-b-c");
        assert_ne!(
            session_name(RequestId(1), "same"),
            session_name(RequestId(2), "same")
        );
    }

    #[test]
    fn source_identity_prefers_email_and_is_sanitized() {
        let user = Requester::User(SlackUserId::parse("U0123ABCD").unwrap());
        let bot = Requester::Identity("ci:deploy".into());
        assert_eq!(
            source_identity(&user, Some("alice@example.com")),
            "alice@example.com"
        );
        assert_eq!(source_identity(&user, None), "U0123ABCD");
        assert_eq!(source_identity(&user, Some("  ")), "U0123ABCD");
        assert_eq!(source_identity(&bot, None), "identity-ci-deploy");
        for email in [
            "aws:root@example.com",
            "Zoë Ünïcode <zoe@example.com>",
            "a",
            &"x".repeat(100),
        ] {
            let id = source_identity(&user, Some(email));
            assert!(valid_sts_name(&id), "{id:?}");
            assert!(!id.starts_with("aws:"));
        }
        assert_eq!(source_identity(&user, Some("a")), "a-");
        assert_eq!(source_identity(&user, Some(&"x".repeat(100))).len(), 64);
    }

    #[test]
    fn tag_values_stay_in_the_alphabet() {
        assert_eq!(tag_value("alice@example.com"), "alice@example.com");
        assert_eq!(tag_value("identity:ci bot/x=1+2"), "identity:ci bot/x=1+2");
        assert_eq!(tag_value("a\"b'c;<d>"), "a_b_c__d_");
        assert_eq!(tag_value("Zoë"), "Zo_");
        assert_eq!(tag_value(&"y".repeat(300)).len(), 256);
    }

    #[test]
    fn sids_are_alphanumeric_stable_and_distinct() {
        let a = revocation_sid("jit-42-alice@example.com");
        assert_eq!(a, revocation_sid("jit-42-alice@example.com"));
        assert!(a.starts_with("JitRevoke"), "{a}");
        assert_eq!(a.len(), 25);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        // Names that differ only in punctuation still get different Sids.
        assert_ne!(revocation_sid("jit-4-2a"), revocation_sid("jit-42-a"));
        assert!(revocation_sid(&"z".repeat(64)).len() <= 64);
    }

    #[test]
    fn adding_is_idempotent_and_keeps_other_statements() {
        let now = t("2026-01-01T00:00:00Z");
        let bound = t("2026-01-01T01:05:00Z");
        let foreign = json!({"Version": "2012-10-17", "Statement": {"Sid": "Theirs", "Effect": "Deny", "Action": "s3:*", "Resource": "*"}});
        let a = deny_statement(&revocation_sid("jit-1-a"), "AROA1:jit-1-a", bound);
        let b = deny_statement(&revocation_sid("jit-2-b"), "AROA1:jit-2-b", bound);
        let one = with_statement(Some(&foreign), &a, now);
        assert_eq!(statements(&one).len(), 2);
        assert_eq!(with_statement(Some(&one), &a, now), one);
        let two = with_statement(Some(&one), &b, now);
        assert_eq!(statements(&two).len(), 3);
        assert!(has_statement(&two, "Theirs"));
        // A later bound for the same session replaces the statement; an earlier one does not.
        let later = deny_statement(
            &revocation_sid("jit-1-a"),
            "AROA1:jit-1-a",
            bound + chrono::Duration::hours(1),
        );
        let replaced = with_statement(Some(&two), &later, now);
        assert_eq!(statements(&replaced).len(), 3);
        assert_eq!(with_statement(Some(&replaced), &a, now), replaced);
        // Removing one leaves the others; removing the rest of jit's leaves the foreign one.
        let without_a = without_statement(&two, &revocation_sid("jit-1-a"), now).unwrap();
        assert!(has_statement(&without_a, &revocation_sid("jit-2-b")));
        assert!(!has_statement(&without_a, &revocation_sid("jit-1-a")));
        let only_foreign = without_statement(&without_a, &revocation_sid("jit-2-b"), now).unwrap();
        assert_eq!(statements(&only_foreign).len(), 1);
        // Removing from a jit-only policy empties it.
        let mine = with_statement(None, &a, now);
        assert_eq!(
            without_statement(&mine, &revocation_sid("jit-1-a"), now),
            None
        );
        // Removing something absent changes nothing.
        assert_eq!(
            without_statement(&mine, "JitRevokeOther", now),
            Some(mine.clone())
        );
    }

    #[test]
    fn stale_statements_are_dropped_on_every_write() {
        let now = t("2026-01-01T12:00:00Z");
        let old = deny_statement(
            &revocation_sid("jit-1-a"),
            "R:jit-1-a",
            t("2026-01-01T11:00:00Z"),
        );
        let live = deny_statement(
            &revocation_sid("jit-2-b"),
            "R:jit-2-b",
            t("2026-01-01T13:00:00Z"),
        );
        let new = deny_statement(
            &revocation_sid("jit-3-c"),
            "R:jit-3-c",
            t("2026-01-01T14:00:00Z"),
        );
        let doc = document(vec![old.clone(), live.clone()]);
        let next = with_statement(Some(&doc), &new, now);
        assert!(!has_statement(&next, &revocation_sid("jit-1-a")));
        assert!(has_statement(&next, &revocation_sid("jit-2-b")));
        assert!(has_statement(&next, &revocation_sid("jit-3-c")));
        let cleaned = without_statement(&doc, &revocation_sid("jit-2-b"), now);
        assert_eq!(cleaned, None);
    }

    #[test]
    fn the_policy_holds_dozens_of_revocations_then_refuses_clearly() {
        let now = t("2026-01-01T00:00:00Z");
        let mut doc: Option<Value> = None;
        let email = "someone.with.a.long.name@example-corporation.com";
        let mut fitted = 0;
        for id in 0..100 {
            let session = session_name(RequestId(1_000_000 + id), email);
            let stmt = deny_statement(
                &revocation_sid(&session),
                &format!("AROAABCDEFGHIJKLMNOPQ:{session}"),
                now + chrono::Duration::hours(12),
            );
            let next = with_statement(doc.as_ref(), &stmt, now);
            match check_size("r", &next.to_string()) {
                Ok(()) => {
                    fitted += 1;
                    doc = Some(next);
                }
                Err(e) => {
                    assert!(e.is_retryable());
                    assert!(e.to_string().contains("10240"), "{e}");
                    break;
                }
            }
        }
        // Long email addresses, 12-hour sessions, all revoked early within one session's life.
        assert!(fitted >= 35, "{fitted}");
        // Twelve hours later they are all stale, and the next write starts afresh.
        let later = now + chrono::Duration::hours(13);
        let stmt = deny_statement(
            "JitRevokeNew",
            "AROA:new",
            later + chrono::Duration::hours(1),
        );
        let next = with_statement(doc.as_ref(), &stmt, later);
        assert_eq!(statements(&next).len(), 1);
    }

    #[test]
    fn policy_documents_are_url_decoded() {
        let encoded = "%7B%22Version%22%3A%20%222012-10-17%22%2C%20%22Statement%22%3A%20%5B%7B%22Sid%22%3A%20%22A%22%2C%20%22Condition%22%3A%20%7B%22StringEquals%22%3A%20%7B%22aws%3Auserid%22%3A%20%22X%3Aa%2Bb%20c%22%7D%7D%7D%5D%7D";
        let decoded = decode_policy_document(encoded).unwrap();
        let value: Value = serde_json::from_str(&decoded).unwrap();
        assert_eq!(
            value.pointer("/Statement/0/Condition/StringEquals/aws:userid"),
            Some(&json!("X:a+b c"))
        );
        let plain = r#"{"Statement": [{"Sid": "100%"}]}"#;
        assert_eq!(decode_policy_document(plain).unwrap(), plain);
        assert_eq!(decode_policy_document("%7").unwrap(), "%7");
        assert_eq!(decode_policy_document("%zz%41").unwrap(), "%zzA");
    }

    #[test]
    fn bounds_round_up_to_whole_seconds() {
        assert_eq!(
            ceil_to_second(t("2026-01-01T00:00:00.001Z")),
            t("2026-01-01T00:00:01Z")
        );
        assert_eq!(
            ceil_to_second(t("2026-01-01T00:00:05Z")),
            t("2026-01-01T00:00:05Z")
        );
    }

    #[test]
    fn role_names_come_from_arns() {
        assert_eq!(role_name("arn:aws:iam::123456789012:role/r").unwrap(), "r");
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/path/to/r").unwrap(),
            "r"
        );
        assert!(role_name("arn:aws:iam::123456789012:user/u").is_err());
    }

    #[test]
    fn handles_round_trip_and_bad_ones_are_fatal() {
        let h = StsHandle {
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            session: "jit-1-a".into(),
            source_identity: "a@example.com".into(),
            userid: Some("AROA:jit-1-a".into()),
            credentials_expire_at: t("2026-01-01T01:00:00Z"),
        };
        assert_eq!(StsHandle::parse(&h.encode()).unwrap(), h);
        assert!(!StsHandle::parse("jit_42").unwrap_err().is_retryable());
    }
}
