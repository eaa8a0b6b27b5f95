//! The `okta_group` provider: membership of an Okta group for the grant's length, and with it
//! whatever the group grants in the apps federated through Okta.
//!
//! **Who.** The requester's Okta login comes from the resource's `principals` map, else from
//! their Slack email ([`super::principal::login_for`]); `GET /api/v1/users/{login}` turns it into
//! the Okta user ID. No such user: the grant is refused before anything changes.
//!
//! **Grant and teardown.** `PUT /api/v1/groups/{group}/users/{user}` adds the member and
//! `DELETE` on the same path removes it; both are idempotent at Okta, and a DELETE answered 404
//! means already gone. The handle (`okta:<group id>:<login>`) is the same for every grant of the
//! group to the same person, so overlapping grants are counted by jit as one access and torn
//! down once, by the last; it is also the presumed handle, so a grant whose PUT timed out is
//! revoked like any other. Teardown removes the user ID the baseline recorded (else it looks
//! the login up again; a login gone from Okta is an alert, since a renamed user keeps the
//! membership) from the group the handle names, even if the policy names another one by now.
//!
//! **Standing membership.** Before a grant acts, the baseline ([`Provider::baseline`]) records
//! whether the user already was a member, with the Okta user ID and the time it was taken
//! (`okta:<time>:<standing|absent>:<user id>`). Baselines sort by time, and the earliest one of
//! an unbroken run of overlapping grants tells what held before jit: a later grant of the run
//! sees jit's own membership. A member before jit is never removed; the revoke says so.
//!
//! **Read-back.** After the DELETE, teardown reads the user's groups again. A member still (or
//! again) there means something outside jit grants the same access (a group rule, another admin,
//! a directory sync): the revoke succeeds with [`Revoked::attention`], a loud alert.
//!
//! **Rate limits.** Okta answers every call with `X-Rate-Limit-Limit`, `-Remaining` and `-Reset`
//! (epoch seconds). When `Remaining` reaches 0 the next call waits for the reset; a 429 waits for
//! the reset too (at most [`MAX_RATE_WAIT`]) and is retried up to [`RATE_RETRIES`] times, after
//! which the call fails retryably with the reset time in the text.
//!
//! **Errors.** Timeouts, connection failures and 5xx are retryable. A 4xx answer to the PUT or to
//! a read made before it means nothing changed ([`ProviderError::Refused`]); 401 and 403 name
//! the secret's variable and the permission missing, never the secret.
//!
//! **Authentication.** An API token (`Authorization: SSWS <token>`, from `api_token_env` or its
//! `_FILE` variant), or OAuth 2.0 client credentials of a service app with a private key
//! (`client_id`, `private_key_env`: [`oauth`], `Authorization: Bearer <access token>`). The secret
//! is read once at startup and kept as a [`SecretString`]; it is only sent to the configured org
//! (pagination links elsewhere are not followed).

pub mod oauth;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use reqwest::{Method, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{GrantSpec, Issued, Provider, ProviderError, RevokeSpec, Revoked};
use crate::config::EnvFn;
use crate::domain::ids::ResourceId;
use crate::domain::policy::{OktaAuth, OktaGroupConfig};

/// Prefix of handles and baselines.
pub const PREFIX: &str = "okta:";
/// A call gives up after this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a call waits for a rate limit to reset; a later reset fails the call retryably.
pub const MAX_RATE_WAIT: Duration = Duration::from_secs(60);
/// 429s retried within one call.
pub const RATE_RETRIES: u32 = 3;
/// Pages of a user's groups read at most.
const MAX_PAGES: usize = 50;
const PAGE_SIZE: u32 = 200;
const MAX_ERROR_CHARS: usize = 300;

/// Reads the API token (`api_token_env`) or the private key (`private_key_env`) from the
/// variable or its `_FILE` variant. The error names the variable, never its value.
pub fn token_from_env(config: &OktaGroupConfig, env: EnvFn<'_>) -> Result<SecretString, String> {
    let name = config.secret_env();
    let what = match config.auth {
        OktaAuth::ApiToken { .. } => "the Okta API token",
        OktaAuth::PrivateKey { .. } => "the private key (PEM) of the Okta service app",
    };
    match crate::config::secret(env, name) {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err(format!(
            "the environment variable {name} (or {name}_FILE) must hold {what} of this okta_group resource"
        )),
        Err(e) => Err(e.to_string()),
    }
}

enum Credential {
    ApiToken(SecretString),
    PrivateKey(Box<oauth::ClientKey>),
}

pub struct OktaProvider {
    resource: ResourceId,
    config: OktaGroupConfig,
    credential: Credential,
    http: reqwest::Client,
    /// No call starts before this (the rate limit was used up until its reset).
    paced_until: Mutex<Option<SystemTime>>,
    max_rate_wait: Duration,
}

impl std::fmt::Debug for OktaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OktaProvider")
            .field("resource", &self.resource)
            .field("config", &self.config)
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct User {
    id: String,
}

#[derive(Deserialize)]
struct Group {
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    profile: GroupProfile,
}

#[derive(Deserialize, Default)]
struct GroupProfile {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct OktaError {
    #[serde(default, rename = "errorCode")]
    code: String,
    #[serde(default, rename = "errorSummary")]
    summary: String,
}

/// What a call was for: worded into error texts, and what a 403 lacks.
#[derive(Clone, Copy)]
enum Call {
    ReadUser,
    ReadGroups,
    ReadGroup,
    Add,
    Remove,
}

impl Call {
    fn what(self) -> &'static str {
        match self {
            Call::ReadUser => "look up the Okta user",
            Call::ReadGroups => "read the user's Okta groups",
            Call::ReadGroup => "read the Okta group",
            Call::Add => "add the user to the Okta group",
            Call::Remove => "remove the user from the Okta group",
        }
    }

    fn permission(self) -> &'static str {
        match self {
            Call::ReadUser | Call::ReadGroups => {
                "an admin who can read users (OAuth scope okta.users.read)"
            }
            Call::ReadGroup | Call::Add | Call::Remove => {
                "an admin who may manage this group's membership: Group Admin for the group, or a custom role with \"Manage group membership\" (OAuth scope okta.groups.manage)"
            }
        }
    }
}

/// Whether the user was in the group before jit granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    pub taken_at: DateTime<Utc>,
    pub standing: bool,
    pub user_id: String,
}

/// `okta:<time, fixed width so baselines sort by it>:<standing|absent>:<user id>`.
pub fn encode_baseline(baseline: &Baseline) -> String {
    format!(
        "{PREFIX}{}:{}:{}",
        baseline.taken_at.format("%Y%m%dT%H%M%S%.6fZ"),
        if baseline.standing {
            "standing"
        } else {
            "absent"
        },
        baseline.user_id
    )
}

pub fn parse_baseline(text: &str) -> Option<Baseline> {
    let rest = text.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    let time = parts.next()?;
    let standing = match parts.next()? {
        "standing" => true,
        "absent" => false,
        _ => return None,
    };
    let user_id = parts.next()?.to_owned();
    let taken_at = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.6fZ")
        .ok()?
        .and_utc();
    Some(Baseline {
        taken_at,
        standing,
        user_id,
    })
}

/// The earliest baseline: the state before the first grant of an unbroken run.
fn earliest(baselines: &[String]) -> Option<Baseline> {
    baselines
        .iter()
        .filter_map(|b| parse_baseline(b))
        .min_by_key(|b| (b.taken_at, b.standing))
}

/// `okta:<group id>:<login, lower-cased>`: one per group and person.
pub fn handle(group_id: &str, login: &str) -> String {
    format!("{PREFIX}{group_id}:{}", login.to_lowercase())
}

/// (group id, login); the login is empty for a handle presumed without one.
pub fn parse_handle(handle: &str) -> Result<(&str, &str), ProviderError> {
    handle
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| ProviderError::Fatal(format!("`{handle}` is not an okta_group handle")))
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(MAX_ERROR_CHARS).collect();
        out.push('…');
        out
    }
}

fn header_u64(response: &Response, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn reset_of(response: &Response) -> Option<SystemTime> {
    header_u64(response, "x-rate-limit-reset").map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

fn show_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).format("%H:%M:%S UTC").to_string()
}

/// The `rel="next"` target of a `Link` header.
fn next_link(response: &Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            (start < end).then(|| part[start..end].to_owned())
        })
}

impl OktaProvider {
    pub fn new(
        resource: ResourceId,
        config: OktaGroupConfig,
        token: SecretString,
    ) -> Result<Self, ProviderError> {
        Self::with_timeout(resource, config, token, DEFAULT_TIMEOUT)
    }

    /// `secret`: the API token, or the service app's private key (PEM), as the config says.
    /// `timeout` bounds each call (tests shorten it).
    pub fn with_timeout(
        resource: ResourceId,
        config: OktaGroupConfig,
        secret: SecretString,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        url::Url::parse(&config.org_url).map_err(|_| {
            ProviderError::Fatal(format!("org_url `{}` is not a URL", config.org_url))
        })?;
        let credential = match &config.auth {
            OktaAuth::ApiToken { .. } => Credential::ApiToken(secret),
            OktaAuth::PrivateKey {
                client_id,
                private_key_env,
                key_id,
            } => Credential::PrivateKey(Box::new(oauth::ClientKey::new(
                client_id,
                key_id.as_deref(),
                &secret,
                &config.org_url,
                private_key_env,
            )?)),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Fatal(format!("cannot set up the Okta client: {e}")))?;
        Ok(Self {
            resource,
            config,
            credential,
            http,
            paced_until: Mutex::new(None),
            max_rate_wait: MAX_RATE_WAIT,
        })
    }

    pub fn resource(&self) -> &ResourceId {
        &self.resource
    }

    /// `org_url` + the path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = url::Url::parse(&self.config.org_url).expect("checked in new");
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        url
    }

    async fn wait_for_pace(&self) {
        let until = *self.paced_until.lock().expect("not poisoned");
        if let Some(until) = until
            && let Ok(wait) = until.duration_since(SystemTime::now())
        {
            tokio::time::sleep(wait.min(self.max_rate_wait)).await;
        }
    }

    /// Remembers a used-up rate limit, so the next call waits for its reset.
    fn note_rate_limit(&self, response: &Response) {
        let used_up = header_u64(response, "x-rate-limit-remaining") == Some(0);
        let mut paced = self.paced_until.lock().expect("not poisoned");
        *paced = if used_up {
            // Okta's reset is in whole seconds: wait past it.
            reset_of(response).map(|t| t + Duration::from_millis(100))
        } else {
            None
        };
    }

    /// One call, following the rate limit. Errors: the call could not be made or kept being
    /// throttled (retryable; it may have reached Okta).
    async fn send(
        &self,
        call: Call,
        method: Method,
        url: url::Url,
    ) -> Result<Response, ProviderError> {
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            self.wait_for_pace().await;
            let authorization = match &self.credential {
                Credential::ApiToken(token) => format!("SSWS {}", token.expose_secret()),
                Credential::PrivateKey(key) => format!(
                    "Bearer {}",
                    key.access_token(&self.http).await?.expose_secret()
                ),
            };
            let response = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::AUTHORIZATION, authorization)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| {
                    // reqwest errors name the URL, never the headers.
                    let e = e.without_url();
                    ProviderError::Retryable(if e.is_timeout() {
                        format!("Okta did not answer in time when asked to {}", call.what())
                    } else {
                        format!(
                            "cannot reach Okta at {} to {}: {e}",
                            self.config.org_url,
                            call.what()
                        )
                    })
                })?;
            self.note_rate_limit(&response);
            if let Credential::PrivateKey(key) = &self.credential
                && response.status() == StatusCode::UNAUTHORIZED
                && !renewed
            {
                // The access token expired or was revoked early: once more with a new one.
                key.forget().await;
                renewed = true;
                continue;
            }
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            let reset = reset_of(&response);
            let wait = reset
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(1))
                + Duration::from_millis(100);
            attempt += 1;
            if attempt > RATE_RETRIES || wait > self.max_rate_wait {
                return Err(ProviderError::Retryable(format!(
                    "Okta's rate limit stopped jit from being able to {} (429 after {attempt} tries){}",
                    call.what(),
                    reset
                        .map(|t| format!("; it resets at {}", show_time(t)))
                        .unwrap_or_default()
                )));
            }
            tracing::info!(
                resource = %self.resource,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "Okta rate limit reached; waiting for its reset"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The error for a non-success answer. `acted`: whether a failed call may have changed
    /// something (a 4xx to the PUT or to a read did not).
    async fn error(&self, call: Call, response: Response, acted: bool) -> ProviderError {
        let status = response.status();
        let body: OktaError = response.json().await.unwrap_or_default();
        let okta = if body.summary.is_empty() {
            String::new()
        } else {
            format!(" ({} {})", body.code, cut(&body.summary))
        };
        let var = self.config.secret_env();
        let text = match (status.as_u16(), &self.config.auth) {
            (401, OktaAuth::ApiToken { .. }) => format!(
                "Okta refused the API token in {var} (401) when jit tried to {}{okta}: it is wrong, expired or revoked, or its admin was deactivated",
                call.what()
            ),
            (401, OktaAuth::PrivateKey { client_id, .. }) => format!(
                "Okta refused the access token of OAuth client {client_id} (401) when jit tried to {}{okta}",
                call.what()
            ),
            (403, _) => format!(
                "jit's Okta credentials in {var} may not {} (403){okta}: they need {}",
                call.what(),
                call.permission()
            ),
            _ => format!(
                "Okta answered {status} when jit tried to {}{okta}",
                call.what()
            ),
        };
        if status.is_server_error() {
            ProviderError::Retryable(text)
        } else if acted {
            ProviderError::Fatal(text)
        } else {
            ProviderError::Refused(text)
        }
    }

    /// The Okta user ID of `login`; `None`: no such user.
    async fn user_id(&self, login: &str) -> Result<Option<String>, ProviderError> {
        let response = self
            .send(Call::ReadUser, Method::GET, self.url(&["users", login]))
            .await?;
        match response.status() {
            s if s.is_success() => response
                .json::<User>()
                .await
                .map(|u| Some(u.id))
                .map_err(|e| {
                    ProviderError::Retryable(format!("Okta's user answer was not understood: {e}"))
                }),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.error(Call::ReadUser, response, false).await),
        }
    }

    async fn require_user_id(&self, login: &str) -> Result<String, ProviderError> {
        self.user_id(login).await?.ok_or_else(|| {
            ProviderError::Refused(format!(
                "no Okta user with login `{login}` in {}: map the requester to their Okta login in the resource's `principals`",
                self.config.org_url
            ))
        })
    }

    /// Whether `user_id` is in `group` (the user's groups, page by page).
    pub async fn is_member(&self, user_id: &str, group: &str) -> Result<bool, ProviderError> {
        let mut url = self.url(&["users", user_id, "groups"]);
        url.query_pairs_mut()
            .append_pair("limit", &PAGE_SIZE.to_string());
        let origin = url.origin();
        for _ in 0..MAX_PAGES {
            let response = self
                .send(Call::ReadGroups, Method::GET, url.clone())
                .await?;
            if !response.status().is_success() {
                return Err(self.error(Call::ReadGroups, response, false).await);
            }
            let next = next_link(&response);
            let groups: Vec<Group> = response.json().await.map_err(|e| {
                ProviderError::Retryable(format!("Okta's list of groups was not understood: {e}"))
            })?;
            if groups.iter().any(|g| g.id == group) {
                return Ok(true);
            }
            match next.and_then(|n| url::Url::parse(&n).ok()) {
                // The token goes to the org only.
                Some(next) if next.origin() == origin => url = next,
                Some(_) => {
                    return Err(ProviderError::Fatal(format!(
                        "Okta's next page of groups points away from {}; not followed",
                        self.config.org_url
                    )));
                }
                None => return Ok(false),
            }
        }
        Err(ProviderError::Fatal(format!(
            "the user belongs to more than {MAX_PAGES} pages of Okta groups; jit stopped reading"
        )))
    }

    /// The group's name and type, for `jit doctor`, and whether the token may read users.
    /// Changes nothing. `Err`: one line saying what is wrong.
    pub async fn check(&self) -> Result<String, String> {
        let response = self
            .send(
                Call::ReadGroup,
                Method::GET,
                self.url(&["groups", &self.config.group_id]),
            )
            .await
            .map_err(|e| e.to_string())?;
        let group: Group = match response.status() {
            s if s.is_success() => response
                .json()
                .await
                .map_err(|e| format!("Okta's group answer was not understood: {e}"))?,
            StatusCode::NOT_FOUND => {
                return Err(format!(
                    "no group {} in {}: check group_id",
                    self.config.group_id, self.config.org_url
                ));
            }
            _ => {
                return Err(self
                    .error(Call::ReadGroup, response, false)
                    .await
                    .to_string());
            }
        };
        if group.kind != "OKTA_GROUP" {
            return Err(format!(
                "group {} (`{}`) is of type {}: only groups mastered in Okta (OKTA_GROUP) can have members added through the API",
                group.id, group.profile.name, group.kind
            ));
        }
        let mut users = self.url(&["users"]);
        users.query_pairs_mut().append_pair("limit", "1");
        let response = self
            .send(Call::ReadUser, Method::GET, users)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(self
                .error(Call::ReadUser, response, false)
                .await
                .to_string());
        }
        Ok(format!(
            "group {} (`{}`) answers in {}, and the token may read users",
            group.id, group.profile.name, self.config.org_url
        ))
    }

    fn login(&self, spec: &GrantSpec) -> Result<String, ProviderError> {
        super::principal::login_for(spec, &self.config.principals, "Okta")
    }

    async fn remove(&self, user_id: &str, group: &str) -> Result<(), ProviderError> {
        let url = self.url(&["groups", group, "users", user_id]);
        let response = self.send(Call::Remove, Method::DELETE, url).await?;
        match response.status() {
            // 404: the membership (or the group, or the user) is gone already.
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(self.error(Call::Remove, response, true).await),
        }
    }
}

#[async_trait::async_trait]
impl Provider for OktaProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        if spec.expires_at <= spec.now {
            return Err(ProviderError::Refused(
                "the grant ended before access was provisioned".into(),
            ));
        }
        let login = self.login(spec)?;
        let user_id = self.require_user_id(&login).await?;
        let url = self.url(&["groups", &self.config.group_id, "users", &user_id]);
        let response = self.send(Call::Add, Method::PUT, url).await?;
        if !response.status().is_success() {
            let status = response.status();
            let err = self.error(Call::Add, response, false).await;
            return Err(match err {
                ProviderError::Refused(text) if status == StatusCode::NOT_FOUND => {
                    ProviderError::Refused(format!(
                        "{text}: check that group {} exists in {}",
                        self.config.group_id, self.config.org_url
                    ))
                }
                other => other,
            });
        }
        Ok(Issued {
            handle: handle(&self.config.group_id, &login),
            credentials: None,
            instructions: Some(format!(
                "Your Okta user {login} is in group {} until {}. Apps federated through Okta apply it at your next sign-in to them.",
                self.config.group_id,
                spec.expires_at.format("%Y-%m-%d %H:%M UTC")
            )),
            credentials_expire_at: None,
        })
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError> {
        let (group, login) = parse_handle(&spec.handle)?;
        // The group the grant added the user to, even if the policy names another one now.
        let before = earliest(&spec.baselines);
        if let Some(b) = before.as_ref().filter(|b| b.standing) {
            return Ok(Revoked {
                detail: Some(format!(
                    "left Okta user {} in group {group}: a member before jit granted it (standing membership)",
                    if login.is_empty() {
                        b.user_id.as_str()
                    } else {
                        login
                    }
                )),
                ..Revoked::default()
            });
        }
        // The user ID taken before the grant acted, else from the login.
        let user_id = match (before, login) {
            (Some(b), _) => b.user_id,
            (None, "") => {
                return Err(ProviderError::Fatal(format!(
                    "jit does not know the Okta login of {}: check group {group} for them and remove them by hand",
                    spec.requester.key()
                )));
            }
            (None, login) => match self.user_id(login).await? {
                Some(id) => id,
                None => {
                    return Ok(Revoked {
                        detail: Some(format!(
                            "no Okta user with login `{login}`: nothing to remove"
                        )),
                        attention: Some(format!(
                            "no Okta user has the login `{login}` any more, so jit removed nobody from group {group}; if the user was renamed rather than deleted, remove them from the group by hand"
                        )),
                        ..Revoked::default()
                    });
                }
            },
        };
        let who = if login.is_empty() {
            user_id.as_str()
        } else {
            login
        };
        self.remove(&user_id, group).await?;
        if self.is_member(&user_id, group).await? {
            return Ok(Revoked {
                detail: Some(format!(
                    "removed Okta user {who} from group {group}, but the read-back still finds them there"
                )),
                attention: Some(format!(
                    "the read-back right after jit removed Okta user {who} from group {group} finds them a member again: something outside jit (a group rule, another admin, a directory or app sync) grants the same access, which they may still hold. Find it in Okta's System Log and remove the member by hand"
                )),
                ..Revoked::default()
            });
        }
        Ok(Revoked {
            detail: Some(format!("removed Okta user {who} from group {group}")),
            ..Revoked::default()
        })
    }

    /// Whether the user is in the group before the grant acts (standing membership).
    async fn baseline(&self, spec: &GrantSpec) -> Result<Option<String>, ProviderError> {
        let login = self.login(spec)?;
        let user_id = self.require_user_id(&login).await?;
        let standing = self.is_member(&user_id, &self.config.group_id).await?;
        Ok(Some(encode_baseline(&Baseline {
            taken_at: spec.now,
            standing,
            user_id,
        })))
    }

    /// The same for every grant of the group to the person: overlapping grants count as one.
    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        handle(&self.config.group_id, &self.login(spec).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_sort_by_time_and_round_trip() {
        let early = Baseline {
            taken_at: DateTime::parse_from_rfc3339("2026-12-07T09:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            standing: false,
            user_id: "00u1".into(),
        };
        let late = Baseline {
            taken_at: DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            standing: true,
            user_id: "00u1".into(),
        };
        let mut texts = vec![encode_baseline(&late), encode_baseline(&early)];
        texts.sort();
        assert_eq!(parse_baseline(&texts[0]), Some(early.clone()));
        assert_eq!(earliest(&texts), Some(early));
        assert_eq!(parse_baseline("xid:12"), None);
    }

    #[test]
    fn handles_are_per_group_and_login() {
        assert_eq!(
            handle("00g1", "Alice@Example.com"),
            "okta:00g1:alice@example.com"
        );
        assert_eq!(
            parse_handle("okta:00g1:alice@example.com").unwrap(),
            ("00g1", "alice@example.com")
        );
        assert_eq!(parse_handle("okta:00g1:").unwrap(), ("00g1", ""));
        assert!(parse_handle("elevation:x").is_err());
    }
}
