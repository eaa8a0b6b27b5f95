//! Providers issue and remove access. A provider is told *what* to grant and *until when*; the
//! queue decides *when* to call it, retries it, and records the outcome.
//!
//! Both calls are idempotent: a job interrupted after the provider call and before its completion
//! is run again, so granting twice must not issue two grants, and revoking twice must be harmless.
//! Errors say whether a retry may help ([`ProviderError::Retryable`]) or not
//! ([`ProviderError::Fatal`]), and whether the failed call may still have acted: only
//! [`ProviderError::Refused`] promises that nothing was done. After any other failed grant the
//! caller treats the access as issued under [`Provider::presumed_handle`] and revokes it through
//! the durable teardown path. Error texts are shown to people and stored in the audit log, so they
//! must never contain a secret.
//!
//! A revoke is told about every credential the grant issued ([`RevokeSpec::issued`]): the first
//! one, every extension and every re-issue, each with its own expiry, so that none outlives the
//! teardown.
//!
//! A provider may also take a *baseline* before a grant acts ([`Provider::baseline`]): a
//! non-secret marker of the target's state that the revoke gets back ([`RevokeSpec::baselines`])
//! to tell what changed while the access was held (`postgres`: the server's transaction counter,
//! so teardown finds objects made through the granted roles). A revoke that succeeded but found
//! something people must look at says so in [`Revoked::attention`], which jit records as a loud
//! audit event.

pub mod aws_identity_center;
pub mod aws_sts;
pub mod exec;
pub mod okta;
pub mod postgres;
pub mod principal;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{RequestId, ResourceId};
use crate::domain::policy::{ProviderConfig, Requester, Resource};

/// What to grant.
#[derive(Debug, Clone)]
pub struct GrantSpec {
    pub request_id: RequestId,
    pub requester: Requester,
    /// The requester's Slack email, where Slack gave one.
    pub requester_email: Option<String>,
    pub resource: ResourceId,
    /// When access must end. Providers cap credentials at this instant.
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Why access is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The grant ran out.
    Expired,
    /// Ended early by its holder, an admin, or a failed activation.
    Early,
    /// Issuing failed in a way that may still have acted (a timeout, a crash mid-call, an
    /// ambiguous error): whatever it did is removed. The handle may be the
    /// [`Provider::presumed_handle`], not one the provider returned.
    FailedGrant,
}

/// One credential (or change) a grant issued, as recorded: the first grant, each extension and
/// each re-issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    pub handle: String,
    /// When the issued credentials stop working on their own, if the provider said so (STS);
    /// `None`: they end with the grant.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub struct RevokeSpec {
    pub request_id: RequestId,
    pub requester: Requester,
    pub resource: ResourceId,
    /// The latest handle [`Issued::handle`] returned (or the presumed one after a failed grant).
    pub handle: String,
    /// Everything the grant issued, oldest first; always contains `handle`.
    pub issued: Vec<Issuance>,
    /// When the grant would have ended on its own (credentials issued for it expire by then).
    pub natural_expiry: DateTime<Utc>,
    pub reason: RevokeReason,
    pub now: DateTime<Utc>,
    /// What [`Provider::baseline`] returned before this grant acted, and before every grant that
    /// held the same access without a break up to now (overlapping grants of one access are
    /// torn down once, by the last). Empty for providers that take none, and for grants issued
    /// before jit recorded baselines.
    pub baselines: Vec<String>,
}

/// Secret values handed to the holder, such as AWS keys or a connection string. `Debug` never
/// shows them; only [`Credentials::expose`] does, and only the reveal modal and the encrypted
/// store call it.
#[derive(Clone)]
pub struct Credentials(SecretString);

impl Credentials {
    /// From name → value pairs, kept in the given order.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), serde_json::Value::String(v.into())))
            .collect();
        Credentials(SecretString::from(
            serde_json::Value::Object(map).to_string(),
        ))
    }

    /// From a JSON object whose values are strings (anything else is turned into its JSON text).
    pub fn from_json_object(object: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::from_pairs(object.iter().map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), value)
        }))
    }

    /// The serialized form stored (encrypted) at rest.
    pub fn to_secret_json(&self) -> &SecretString {
        &self.0
    }

    pub fn from_secret_json(json: SecretString) -> Self {
        Credentials(json)
    }

    /// The name → value pairs. Call only where the secret is meant to go.
    pub fn expose(&self) -> BTreeMap<String, String> {
        let value: serde_json::Value =
            serde_json::from_str(self.0.expose_secret()).unwrap_or_default();
        value
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names only, safe to log and show.
    pub fn names(&self) -> Vec<String> {
        self.expose().into_keys().collect()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}: [REDACTED])", self.names())
    }
}

/// What a grant produced.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Identifies the issued access for the revoke call. Not secret; stored and shown in the audit.
    pub handle: String,
    /// Secret values for the holder, if any.
    pub credentials: Option<Credentials>,
    /// Non-secret text for the holder (how to connect, what changed).
    pub instructions: Option<String>,
    /// When the issued credentials stop working, if before the grant's end.
    pub credentials_expire_at: Option<DateTime<Utc>>,
}

/// What a revoke produced.
#[derive(Debug, Clone, Default)]
pub struct Revoked {
    /// Work left for later: the provider's [`Provider::cleanup`] is called at this time.
    pub cleanup_at: Option<DateTime<Utc>>,
    /// Non-secret detail for the audit.
    pub detail: Option<String>,
    /// The access is gone, but people must look at something (what the provider changed on its
    /// own authority, what it could not check). Recorded as a loud `teardown_attention` event
    /// that mentions the admins. Non-secret.
    pub attention: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// A retry may succeed (timeouts, throttling, unreachable endpoints). The call may have
    /// acted.
    #[error("{0}")]
    Retryable(String),
    /// A retry will not help (bad configuration, access denied, invalid input), and the call may
    /// have acted before it failed (a script that exited non-zero half-way, say).
    #[error("{0}")]
    Fatal(String),
    /// A retry will not help, and nothing was done: the provider refused before acting (a
    /// request the remote side rejected as a whole, a program that could not be started).
    #[error("{0}")]
    Refused(String),
    /// Accepted and still being carried out (an asynchronous AWS operation): call again after
    /// `after`. The call has acted. jit runs the job again without counting an attempt, so the
    /// provider itself must bound the wait and turn a request stuck past its deadline into
    /// [`ProviderError::Retryable`] or [`ProviderError::Fatal`].
    #[error("{detail}")]
    Pending {
        after: std::time::Duration,
        detail: String,
    },
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Retryable(_))
    }

    /// Whether the failed call may still have changed something (so a grant must be treated
    /// as issued and revoked).
    pub fn may_have_acted(&self) -> bool {
        !matches!(self, ProviderError::Refused(_))
    }
}

/// How often jit asks again about an operation that is [`ProviderError::Pending`] at most.
pub const MAX_PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Issues access until `spec.expires_at`. Idempotent per request id.
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError>;

    /// Removes the access behind `spec.handle`. Idempotent.
    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError>;

    /// Moves the end of issued access to `spec.expires_at`. Returns new credentials if the old
    /// ones cannot outlive their original expiry. The default grants again.
    async fn extend(&self, spec: &GrantSpec, handle: &str) -> Result<Issued, ProviderError> {
        let _ = handle;
        self.grant(spec).await
    }

    /// A non-secret marker of the target's state, taken before a grant acts and handed back to
    /// every revoke of the access ([`RevokeSpec::baselines`]), so the revoke can tell what changed
    /// while the access was held. jit records it durably before calling [`Provider::grant`]; an
    /// error means nothing was granted. The default takes none.
    async fn baseline(&self, spec: &GrantSpec) -> Result<Option<String>, ProviderError> {
        let _ = spec;
        Ok(None)
    }

    /// Deferred work requested by [`Revoked::cleanup_at`]. Idempotent.
    async fn cleanup(&self, spec: &RevokeSpec) -> Result<(), ProviderError> {
        let _ = spec;
        Ok(())
    }

    /// The handle a grant for `spec` would have had, for revoking after a grant (or an
    /// extension) that failed but may have acted: the provider never returned a handle, so the
    /// revoke must find what was done from the request alone.
    fn presumed_handle(&self, spec: &GrantSpec) -> String;
}

/// Approval only: records the grant, provisions nothing.
pub struct NoneProvider;

#[async_trait::async_trait]
impl Provider for NoneProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        Ok(Issued {
            handle: self.presumed_handle(spec),
            credentials: None,
            instructions: None,
            credentials_expire_at: None,
        })
    }

    async fn revoke(&self, _: &RevokeSpec) -> Result<Revoked, ProviderError> {
        Ok(Revoked::default())
    }

    /// Shared by every grant of this resource to this person, so overlapping grants are counted
    /// as one access.
    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        format!("none:{}:{}", spec.resource, spec.requester.key())
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: the credential names jit accepts from providers, since they become
/// shell variable names (`jit request --format env`, the reveal modal's `export` lines).
pub fn is_shell_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// The distinct handles of `issued`, newest first: what a revoke must reach.
pub fn distinct_handles(spec: &RevokeSpec) -> Vec<&str> {
    let mut out: Vec<&str> = vec![spec.handle.as_str()];
    for issuance in spec.issued.iter().rev() {
        if !out.contains(&issuance.handle.as_str()) {
            out.push(&issuance.handle);
        }
    }
    out
}

/// One lock per key in the process, for a provider's check-then-change steps that must not
/// race (`aws_sts`: a role's deny policy; `aws_identity_center`: one assignment). Keys name
/// their provider, so providers never share a lock by accident.
pub(crate) fn keyed_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: std::sync::OnceLock<Locks> = std::sync::OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(key.to_owned()).or_default().clone()
}

/// The provider of each resource, built once at startup.
#[derive(Clone, Default)]
pub struct Providers {
    by_resource: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    pub fn insert(&mut self, resource: &ResourceId, provider: Arc<dyn Provider>) {
        self.by_resource.insert(resource.to_string(), provider);
    }

    pub fn get(&self, resource: &ResourceId) -> Option<Arc<dyn Provider>> {
        self.by_resource.get(resource.as_str()).cloned()
    }

    /// Builds the providers that need no outside configuration (`none`, `exec`), and returns the
    /// resources that still need one. `exec` commands run in `workdir` (the policy file's
    /// directory) and never see the admin URLs of `postgres` resources.
    pub fn with_local(
        resources: &[Resource],
        workdir: Option<&std::path::Path>,
    ) -> (Self, Vec<Resource>) {
        let hidden: Vec<String> = resources
            .iter()
            .filter_map(|r| match &r.provider {
                ProviderConfig::Postgres(c) => Some(c.database_url_env.clone()),
                ProviderConfig::OktaGroup(c) => Some(c.secret_env().to_owned()),
                _ => None,
            })
            .flat_map(|name| [format!("{name}_FILE"), name])
            .collect();
        let mut providers = Providers::default();
        let mut rest = Vec::new();
        for resource in resources {
            match &resource.provider {
                ProviderConfig::None => providers.insert(&resource.id, Arc::new(NoneProvider)),
                ProviderConfig::Exec(config) => {
                    let mut exec = exec::ExecProvider::new(resource.id.clone(), config.clone())
                        .hiding_env(hidden.clone());
                    if let Some(dir) = workdir {
                        exec = exec.in_dir(dir.to_path_buf());
                    }
                    providers.insert(&resource.id, Arc::new(exec))
                }
                ProviderConfig::AwsSts(_)
                | ProviderConfig::Postgres(_)
                | ProviderConfig::AwsIdentityCenter(_)
                | ProviderConfig::OktaGroup(_) => rest.push(resource.clone()),
            }
        }
        (providers, rest)
    }

    /// Builds every resource's provider. `aws_endpoint` overrides the AWS endpoint (tests and the
    /// demo point it at moto; in production aws-config reads `AWS_ENDPOINT_URL` itself). A
    /// missing admin URL for a postgres resource stops startup with a message naming the variable,
    /// and so does a superuser admin the policy does not allow (checked within a few seconds per
    /// resource; an unreachable server only warns).
    pub async fn build(
        resources: &[Resource],
        workdir: Option<&std::path::Path>,
        aws_endpoint: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (mut providers, rest) = Self::with_local(resources, workdir);
        let mut sdk = None;
        let mut postgres_checks: Vec<Arc<postgres::PostgresProvider>> = Vec::new();
        for resource in rest {
            match &resource.provider {
                ProviderConfig::AwsSts(config) => {
                    if sdk.is_none() {
                        sdk = Some(aws_sts::load_aws_config(aws_endpoint, None).await);
                    }
                    let sdk = sdk.as_ref().expect("loaded above");
                    providers.insert(
                        &resource.id,
                        Arc::new(aws_sts::AwsStsProvider::new(
                            resource.id.clone(),
                            config.clone(),
                            sdk,
                        )),
                    );
                }
                ProviderConfig::Postgres(config) => {
                    let url = postgres::admin_url_from_env(config)
                        .map_err(|e| anyhow::anyhow!("resource `{}`: {e}", resource.id))?;
                    let provider =
                        postgres::PostgresProvider::new(resource.id.clone(), config.clone(), &url)
                            .map_err(|e| anyhow::anyhow!("resource `{}`: {e}", resource.id))?;
                    postgres_checks.push(Arc::new(provider));
                }
                ProviderConfig::AwsIdentityCenter(config) => {
                    let sdk =
                        aws_sts::load_aws_config(aws_endpoint, config.region.as_deref()).await;
                    providers.insert(
                        &resource.id,
                        Arc::new(aws_identity_center::IdentityCenterProvider::new(
                            resource.id.clone(),
                            config.clone(),
                            &sdk,
                        )),
                    );
                }
                ProviderConfig::OktaGroup(config) => {
                    let provider = okta::token_from_env(config, &crate::config::process_env)
                        .and_then(|token| {
                            okta::OktaProvider::new(resource.id.clone(), config.clone(), token)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| anyhow::anyhow!("resource `{}`: {e}", resource.id))?;
                    providers.insert(&resource.id, Arc::new(provider));
                }
                ProviderConfig::None | ProviderConfig::Exec(_) => {}
            }
        }
        let checks = postgres_checks
            .iter()
            .map(|p| p.check_at_startup(postgres::STARTUP_CHECK_TIMEOUT));
        for refused in futures::future::join_all(checks).await {
            refused.map_err(anyhow::Error::msg)?;
        }
        for provider in postgres_checks {
            providers.insert(&provider.resource().clone(), provider);
        }
        Ok(providers)
    }
}
