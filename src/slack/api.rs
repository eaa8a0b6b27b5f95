//! Outbound calls to the Slack Web API, over reqwest.
//!
//! - **Timeout.** Every call has one; a call without an answer in time is transient.
//! - **What is read.** Answers are parsed as plain JSON, and only the fields jit uses are read
//!   (`ts`, `channel.id`, `view.id`, `user.profile.email`, `users`, a history message's `ts`,
//!   `user` and `text`; `users.list`'s ids, teams and guest flags; for `jit doctor` also
//!   `auth.test`'s ids, `conversations.info`'s membership, `users.info`'s `deleted`, and the
//!   granted scopes Slack lists in the `x-oauth-scopes` header). An answer that says
//!   `ok: true` is a success whatever else it holds: a field Slack adds one day, or an odd shape
//!   in a field jit does not read, never turns an accepted call into a "transient" failure that
//!   would be repeated (a repeated `chat.postMessage` is a duplicate approval message).
//! - **Errors** are reduced to what the caller acts on: slow down ([`SlackError::RateLimited`],
//!   from HTTP 429 with `Retry-After` or `ratelimited`), try again ([`SlackError::Transient`]:
//!   5xx, Slack's own transient codes, no answer, an answer that is not JSON), or give up
//!   ([`SlackError::Fatal`], with Slack's error code and its explanation: the lines of
//!   `response_metadata.messages` and the `errors` field, which name json-pointers, not
//!   values).
//! - **Never a response body** in an error or a log: a `views.open` answer echoes the view, and
//!   the reveal modal's view holds credentials. Explanations are kept short and any quoted text
//!   in them is dropped.
//!
//! Posting is paced per channel with governor, since Slack allows about one message per second
//! per channel.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::metrics::Metrics;

pub use jit_core::slack::scopes::{METHOD_SCOPES, SCOPES, Scope};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    #[error("rate limited by Slack (retry after {retry_after:?})")]
    RateLimited { retry_after: Duration },
    #[error("Slack did not answer properly: {0}")]
    Transient(String),
    /// Slack refused the call. `details`: Slack's explanation (json-pointers, never values).
    #[error("Slack refused the call: {code}{}", explained(details))]
    Fatal { code: String, details: Vec<String> },
}

fn explained(details: &[String]) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join("; "))
    }
}

impl SlackError {
    pub fn code(&self) -> &str {
        match self {
            SlackError::RateLimited { .. } => "ratelimited",
            SlackError::Transient(_) => "transient",
            SlackError::Fatal { code, .. } => code,
        }
    }

    fn fatal(code: impl Into<String>) -> SlackError {
        SlackError::Fatal {
            code: code.into(),
            details: Vec::new(),
        }
    }
}

/// Slack error codes worth retrying.
const TRANSIENT_CODES: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
];

/// At most this many lines of Slack's explanation, each at most this long.
const MAX_DETAILS: usize = 10;
const MAX_DETAIL_LEN: usize = 300;

/// One line of Slack's explanation, without anything quoted in it (Slack's messages name
/// json-pointers; a quoted part could be a value).
fn sanitize(line: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted && !c.is_control() {
            out.push(c);
        }
    }
    super::limits::truncate_plain(out.trim(), MAX_DETAIL_LEN)
}

/// `response_metadata.messages` and `errors` of a refusal, sanitized.
fn explanation(answer: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let messages = answer
        .pointer("/response_metadata/messages")
        .and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        if let Some(text) = message.as_str() {
            lines.push(sanitize(text));
        }
    }
    // `missing_scope` names the scope the call needed (not a value).
    if let Some(needed) = answer.get("needed").and_then(Value::as_str) {
        lines.push(sanitize(&format!("needed scope: {needed}")));
    }
    for error in answer
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match error {
            Value::String(text) => lines.push(sanitize(text)),
            Value::Object(object) => {
                let text = ["error", "code", "message"]
                    .iter()
                    .find_map(|k| object.get(*k).and_then(Value::as_str))
                    .unwrap_or("error");
                let line = match object.get("pointer").and_then(Value::as_str) {
                    Some(pointer) => format!("{text} [json-pointer:{pointer}]"),
                    None => text.to_owned(),
                };
                lines.push(sanitize(&line));
            }
            _ => {}
        }
    }
    lines.truncate(MAX_DETAILS);
    lines
}

/// What an answer means: the JSON of a success, or the error to act on.
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<Value, SlackError> {
    if status == 429 {
        return Err(SlackError::RateLimited {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        });
    }
    if (500..600).contains(&status) {
        return Err(SlackError::Transient(format!("HTTP {status}")));
    }
    if !(200..300).contains(&status) {
        return Err(SlackError::fatal(format!("http_{status}")));
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Err(SlackError::Transient(
            "unexpected response from Slack (not JSON)".into(),
        ));
    };
    let code = answer.get("error").and_then(Value::as_str);
    let refused = answer.get("ok") == Some(&Value::Bool(false)) || code.is_some();
    if answer.get("ok") == Some(&Value::Bool(true)) || !refused {
        return Ok(answer);
    }
    let code = code.unwrap_or("unknown_error");
    if code == "ratelimited" || code == "rate_limited" {
        return Err(SlackError::RateLimited {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        });
    }
    if TRANSIENT_CODES.contains(&code) {
        return Err(SlackError::Transient(code.to_owned()));
    }
    Err(SlackError::Fatal {
        code: code.to_owned(),
        details: explanation(&answer),
    })
}

/// A string field of an answer, if it is one.
fn field<'v>(answer: &'v Value, pointer: &str) -> Option<&'v str> {
    answer.pointer(pointer).and_then(Value::as_str)
}

/// A boolean field of an answer, if it is one.
fn flag(answer: &Value, pointer: &str) -> Option<bool> {
    answer.pointer(pointer).and_then(Value::as_bool)
}

/// A successful answer.
struct Answer {
    json: Value,
    /// The `x-oauth-scopes` header: the scopes the token has, comma-separated.
    scopes: Option<String>,
}

/// What `auth.test` says about the bot token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub team_id: Option<String>,
    pub team: Option<String>,
    /// The bot's user id.
    pub user_id: Option<String>,
    /// The bot's handle.
    pub user: Option<String>,
    pub bot_id: Option<String>,
    /// The workspace's address, such as `https://example.slack.com/`.
    pub url: Option<String>,
    /// The scopes granted to the token (from `x-oauth-scopes`); `None` when Slack did not say.
    pub scopes: Option<Vec<String>>,
    pub enterprise_id: Option<String>,
    /// An org-wide (Enterprise Grid) install.
    pub enterprise_install: bool,
}

/// What `conversations.info` says about a channel, as far as jit reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: Option<String>,
    /// `None` when Slack did not say (DMs have no `is_member`).
    pub is_member: Option<bool>,
    pub is_archived: bool,
    pub is_private: bool,
}

/// What jit writes into the metadata of each message it posts: a key naming the message (the
/// same for every attempt to post it) and its request. A post retried after a crash or an
/// unanswered call looks for its key first ([`SlackApi::find_post`]) and posts nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostTag<'a> {
    pub key: &'a str,
    pub request: Option<i64>,
}

/// The metadata `event_type` of jit's posts.
pub const POST_EVENT_TYPE: &str = "jit_post";

impl PostTag<'_> {
    pub fn metadata(&self) -> Value {
        let mut payload = json!({ "key": self.key });
        if let Some(request) = self.request {
            payload["request"] = json!(request);
        }
        json!({ "event_type": POST_EVENT_TYPE, "event_payload": payload })
    }

    /// Whether a message's `metadata` is this tag's.
    pub fn matches(&self, metadata: Option<&Value>) -> bool {
        metadata.is_some_and(|m| {
            m.get("event_type").and_then(Value::as_str) == Some(POST_EVENT_TYPE)
                && m.pointer("/event_payload/key").and_then(Value::as_str) == Some(self.key)
        })
    }
}

/// What `users.info` says about a user, as far as `jit doctor` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: Option<String>,
    /// The account is deactivated.
    pub deleted: bool,
    pub is_bot: bool,
}

/// A message read from a channel's history: only what `jit audit verify --slack` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    pub ts: String,
    /// The author's user id (the bot's own user id for the bot's messages).
    pub user: Option<String>,
    pub text: String,
}

/// One page of `conversations.history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<HistoryMessage>,
    /// The cursor of the next (older) page, if there is one.
    pub next_cursor: Option<String>,
}

#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: Arc<str>,
    token: SecretString,
    pacing: Arc<DefaultKeyedRateLimiter<String>>,
    /// The same pace as (time between posts, burst), for pacing shared by replicas.
    pace: (Duration, u32),
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackApi")
    }
}

/// How a method is called: a JSON body (write methods) or a query string (read methods).
enum Params<'a> {
    Json(Value),
    Query(&'a [(&'a str, &'a str)]),
}

impl SlackApi {
    /// How long a call may take before it counts as a transient failure (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `api_url`: `https://slack.com/api`, or a local simulator's `http://127.0.0.1:PORT/api`.
    /// `posts_per_channel_per_second` paces `chat.postMessage` per channel.
    pub fn new(
        api_url: &str,
        token: SecretString,
        posts_per_channel_per_second: NonZeroU32,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("jit/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: api_url.trim_end_matches('/').into(),
            token,
            // Slack tolerates short bursts above one message per second per channel.
            pacing: Arc::new(RateLimiter::keyed(
                Quota::per_second(posts_per_channel_per_second).allow_burst(
                    posts_per_channel_per_second.saturating_mul(NonZeroU32::new(3).expect("3")),
                ),
            )),
            pace: (
                Duration::from_secs(1) / posts_per_channel_per_second.get(),
                posts_per_channel_per_second.get().saturating_mul(3),
            ),
            timeout: Duration::from_secs(10),
            metrics,
        })
    }

    /// Slack's posting pace per channel: the time between posts and the burst allowed.
    pub fn pace(&self) -> (Duration, u32) {
        self.pace
    }

    async fn send(&self, method: &str, params: Params<'_>) -> Result<Answer, SlackError> {
        let url = format!("{}/{method}", self.base);
        let request = match params {
            Params::Json(body) => self
                .http
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(body.to_string()),
            Params::Query(query) => self.http.get(url).query(query),
        }
        .bearer_auth(self.token.expose_secret());
        let response = request
            .send()
            .await
            .map_err(|_| SlackError::Transient("connection to Slack failed".into()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let scopes = response
            .headers()
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|_| SlackError::Transient("connection to Slack failed".into()))?;
        classify(status, retry_after, &body).map(|json| Answer { json, scopes })
    }

    /// Calls `method` with a timeout, and counts the outcome.
    async fn call(&self, method: &'static str, params: Params<'_>) -> Result<Answer, SlackError> {
        let result = match tokio::time::timeout(self.timeout, self.send(method, params)).await {
            Ok(result) => result,
            Err(_) => Err(SlackError::Transient(format!(
                "no answer within {}s",
                self.timeout.as_secs()
            ))),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        if let Err(SlackError::Fatal { code, details }) = &result {
            // Slack's explanation names json-pointers, never values (see `explanation`).
            tracing::warn!(method, code = %code, explanation = ?details, "Slack refused a call");
        }
        self.metrics.slack_call(method, outcome);
        result
    }

    /// Posts a message (a thread reply when `thread_ts` is set). Returns its `ts`, or `None`
    /// when Slack accepted the message but its answer has no readable `ts`. A `tag` goes into
    /// the message's metadata, where [`SlackApi::find_post`] finds it again.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: Option<&Value>,
        broadcast: bool,
        tag: Option<&PostTag<'_>>,
    ) -> Result<Option<String>, SlackError> {
        // Over the channel's pace, the job is put back rather than holding a worker while it waits.
        if let Err(not_until) = self.pacing.check_key(&channel.to_owned()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(SlackError::RateLimited {
                retry_after: wait.max(Duration::from_millis(10)),
            });
        }
        let mut body = json!({"channel": channel, "text": text, "unfurl_links": false});
        if let Some(blocks) = blocks {
            body["blocks"] = blocks.clone();
        }
        if let Some(thread_ts) = thread_ts {
            body["thread_ts"] = json!(thread_ts);
            if broadcast {
                body["reply_broadcast"] = json!(true);
            }
        }
        if let Some(tag) = tag {
            body["metadata"] = tag.metadata();
        }
        let answer = self
            .call("chat.postMessage", Params::Json(body))
            .await?
            .json;
        let ts = field(&answer, "/ts").map(str::to_owned);
        if ts.is_none() {
            tracing::warn!(
                channel,
                "Slack accepted a message but its answer has no ts; it cannot be updated"
            );
        }
        Ok(ts)
    }

    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<(), SlackError> {
        let body = json!({
            "channel": channel,
            "ts": ts,
            "text": text,
            "blocks": blocks.cloned().unwrap_or_else(|| json!([])),
        });
        self.call("chat.update", Params::Json(body))
            .await
            .map(|_| ())
    }

    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackError> {
        let body = json!({"channel": channel, "user": user, "text": text});
        self.call("chat.postEphemeral", Params::Json(body))
            .await
            .map(|_| ())
    }

    /// The DM channel with `user`.
    pub async fn open_dm(&self, user: &str) -> Result<String, SlackError> {
        let answer = self
            .call("conversations.open", Params::Json(json!({"users": user})))
            .await?
            .json;
        // Opening a DM is idempotent: an answer without a channel id may be asked again.
        field(&answer, "/channel/id")
            .map(str::to_owned)
            .ok_or_else(|| {
                SlackError::Transient("conversations.open answered no channel id".into())
            })
    }

    /// Opens a modal. Must run within three seconds of the interaction that gave `trigger_id`.
    /// Returns the view's id when Slack's answer has one.
    pub async fn open_view(
        &self,
        trigger_id: &str,
        view: &Value,
    ) -> Result<Option<String>, SlackError> {
        let body = json!({"trigger_id": trigger_id, "view": view});
        let answer = self.call("views.open", Params::Json(body)).await?.json;
        Ok(field(&answer, "/view/id").map(str::to_owned))
    }

    pub async fn publish_home(&self, user: &str, view: &Value) -> Result<(), SlackError> {
        let body = json!({"user_id": user, "view": view});
        self.call("views.publish", Params::Json(body))
            .await
            .map(|_| ())
    }

    /// The user's email, if Slack shares it (needs `users:read.email`).
    pub async fn user_email(&self, user: &str) -> Result<Option<String>, SlackError> {
        let answer = self
            .call("users.info", Params::Query(&[("user", user)]))
            .await?
            .json;
        Ok(field(&answer, "/user/profile/email").map(str::to_owned))
    }

    /// Which workspace (and Enterprise Grid organisation) the bot token belongs to.
    pub async fn workspace_info(&self) -> Result<WorkspaceInfo, SlackError> {
        let token = self.auth_test().await?;
        Ok(WorkspaceInfo {
            team_id: token
                .team_id
                .ok_or_else(|| SlackError::Transient("auth.test named no team".into()))?,
            enterprise_id: token.enterprise_id,
            enterprise_install: token.enterprise_install,
        })
    }

    /// One user's facts (`users.info`), or `None` if Slack knows no such user.
    pub async fn user_facts(&self, user: &str) -> Result<Option<UserFacts>, SlackError> {
        match self
            .call("users.info", Params::Query(&[("user", user)]))
            .await
        {
            Ok(answer) => Ok(answer.json.get("user").and_then(UserFacts::from_value)),
            Err(SlackError::Fatal { code, .. }) if code == "user_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every user of the workspace (`users.list`, page by page).
    pub async fn all_users(&self) -> Result<Vec<UserFacts>, SlackError> {
        let mut users = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let mut query: Vec<(&str, &str)> = vec![("limit", "200")];
            if !cursor.is_empty() {
                query.push(("cursor", &cursor));
            }
            let answer = self.call("users.list", Params::Query(&query)).await?.json;
            users.extend(
                answer
                    .get("members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(UserFacts::from_value),
            );
            match field(&answer, "/response_metadata/next_cursor") {
                Some(next) if !next.is_empty() => cursor = next.to_owned(),
                _ => return Ok(users),
            }
        }
        Ok(users)
    }

    /// The bot's own user id (`auth.test`), the author of every message jit posts.
    pub async fn bot_user_id(&self) -> Result<String, SlackError> {
        self.auth_test()
            .await?
            .user_id
            .ok_or_else(|| SlackError::Transient("auth.test answered no user_id".into()))
    }

    /// One page of a channel's top-level messages from `oldest` (a ts, inclusive) on, newest
    /// first (needs `channels:history`, or `groups:history` for a private channel). A message
    /// without a readable `ts` or `text` is skipped; other fields are not read.
    pub async fn history(
        &self,
        channel: &str,
        oldest: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<HistoryPage, SlackError> {
        let mut query = vec![
            ("channel", channel),
            ("limit", "200"),
            ("inclusive", "true"),
        ];
        if let Some(oldest) = oldest {
            query.push(("oldest", oldest));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let answer = self
            .call("conversations.history", Params::Query(&query))
            .await?
            .json;
        let messages = answer
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some(HistoryMessage {
                    ts: field(m, "/ts")?.to_owned(),
                    user: field(m, "/user").map(str::to_owned),
                    text: field(m, "/text")?.to_owned(),
                })
            })
            .collect();
        let next_cursor = field(&answer, "/response_metadata/next_cursor")
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        // A page that says there is more must name where it continues; Slack's own answer
        // marks the end with has_more = false (and an empty cursor).
        let more = answer.get("has_more").and_then(Value::as_bool) == Some(true);
        if more && next_cursor.is_none() {
            return Err(SlackError::Transient(
                "conversations.history said has_more without a cursor".into(),
            ));
        }
        Ok(HistoryPage {
            messages,
            next_cursor: next_cursor.filter(|_| more),
        })
    }

    /// The `ts` of a message jit posted with `tag`: among the newest top-level messages of
    /// `channel` (a few pages), or in the thread `thread_ts`. `None`: not there, so it was never
    /// posted. Needs the history scopes of the channel's kind.
    pub async fn find_post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        tag: &PostTag<'_>,
    ) -> Result<Option<String>, SlackError> {
        const PAGES: usize = 3;
        let mut cursor: Option<String> = None;
        for _ in 0..PAGES {
            let mut query = vec![
                ("channel", channel),
                ("limit", "200"),
                ("include_all_metadata", "true"),
            ];
            let method = match thread_ts {
                Some(ts) => {
                    query.push(("ts", ts));
                    "conversations.replies"
                }
                None => "conversations.history",
            };
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let answer = self.call(method, Params::Query(&query)).await?.json;
            let found = answer
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|m| tag.matches(m.get("metadata")))
                .and_then(|m| field(m, "/ts"))
                .map(str::to_owned);
            if found.is_some() {
                return Ok(found);
            }
            cursor = field(&answer, "/response_metadata/next_cursor")
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            if cursor.is_none() || answer.get("has_more").and_then(Value::as_bool) != Some(true) {
                break;
            }
        }
        Ok(None)
    }

    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, SlackError> {
        let query = Params::Query(&[("usergroup", group)]);
        let answer = self.call("usergroups.users.list", query).await?.json;
        Ok(answer
            .get("users")
            .and_then(Value::as_array)
            .map(|users| {
                users
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Who the token is, and the scopes it has (`jit doctor`).
    pub async fn auth_test(&self) -> Result<TokenInfo, SlackError> {
        let answer = self.call("auth.test", Params::Query(&[])).await?;
        let text = |name: &str| field(&answer.json, &format!("/{name}")).map(str::to_owned);
        Ok(TokenInfo {
            team_id: text("team_id"),
            team: text("team"),
            user_id: text("user_id"),
            user: text("user"),
            bot_id: text("bot_id"),
            url: text("url"),
            enterprise_id: text("enterprise_id").filter(|e| !e.is_empty()),
            enterprise_install: answer
                .json
                .get("is_enterprise_install")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            scopes: answer.scopes.as_deref().map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
        })
    }

    /// A channel's name, whether the bot is in it and whether it is archived (`jit doctor`;
    /// needs `channels:read`, or `groups:read` for a private channel).
    pub async fn channel_info(&self, channel: &str) -> Result<ChannelInfo, SlackError> {
        let answer = self
            .call("conversations.info", Params::Query(&[("channel", channel)]))
            .await?
            .json;
        Ok(ChannelInfo {
            name: field(&answer, "/channel/name").map(str::to_owned),
            is_member: flag(&answer, "/channel/is_member"),
            is_archived: flag(&answer, "/channel/is_archived").unwrap_or(false),
            is_private: flag(&answer, "/channel/is_private").unwrap_or(false),
        })
    }

    /// Whether a user exists and is active (`jit doctor`).
    pub async fn user_info(&self, user: &str) -> Result<UserInfo, SlackError> {
        let answer = self
            .call("users.info", Params::Query(&[("user", user)]))
            .await?
            .json;
        Ok(UserInfo {
            name: field(&answer, "/user/name").map(str::to_owned),
            deleted: flag(&answer, "/user/deleted").unwrap_or(false),
            is_bot: flag(&answer, "/user/is_bot").unwrap_or(false),
        })
    }
}

/// What `auth.test` says about the token's workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceInfo {
    pub team_id: String,
    pub enterprise_id: Option<String>,
    /// An org-wide install: every workspace of the Enterprise Grid organisation is served.
    pub enterprise_install: bool,
}

/// The fields of a Slack user jit reads (`users.info` / `users.list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub id: String,
    pub team_id: Option<String>,
    /// `is_restricted` or `is_ultra_restricted`.
    pub guest: bool,
    pub deleted: bool,
    /// The person's UTC offset in seconds, as their Slack profile says (`tz_offset`, which
    /// follows daylight saving time as of when it was read).
    pub tz_offset: Option<i32>,
    /// `profile.email` (needs the `users:read.email` scope): matches people to PagerDuty.
    pub email: Option<String>,
}

impl UserFacts {
    fn from_value(user: &Value) -> Option<UserFacts> {
        let flag = |key: &str| user.get(key).and_then(Value::as_bool).unwrap_or(false);
        Some(UserFacts {
            id: user.get("id")?.as_str()?.to_owned(),
            team_id: user
                .get("team_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            guest: flag("is_restricted") || flag("is_ultra_restricted"),
            deleted: flag("deleted"),
            tz_offset: user
                .get("tz_offset")
                .and_then(Value::as_i64)
                .and_then(|o| i32::try_from(o).ok())
                .filter(|o| o.abs() < 86_400),
            email: user
                .pointer("/profile/email")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_true_is_success_whatever_else_the_answer_holds() {
        let odd = br#"{"ok":true,"ts":"1.2","message":{"blocks":"odd"},"warning":"x","new":[1]}"#;
        assert_eq!(classify(200, None, odd).unwrap()["ts"], "1.2");
        assert!(classify(200, None, br#"{"ok":true}"#).is_ok());
    }

    #[test]
    fn refusals_keep_the_explanation_but_no_values() {
        let body = br#"{"ok":false,"error":"invalid_arguments","response_metadata":{"messages":[
            "[ERROR] must be less than 3001 characters [json-pointer:/view/blocks/1/text/text]",
            "[ERROR] invalid value \"s3cr3t\" [json-pointer:/view/blocks/2]"]},
            "errors":[{"message":"bad","pointer":"/blocks/0"}, "plain error"],
            "view":{"blocks":[{"text":{"text":"s3cr3t"}}]}}"#;
        let err = classify(200, None, body).unwrap_err();
        assert_eq!(
            err,
            SlackError::Fatal {
                code: "invalid_arguments".into(),
                details: vec![
                    "[ERROR] must be less than 3001 characters [json-pointer:/view/blocks/1/text/text]".into(),
                    "[ERROR] invalid value \"…\" [json-pointer:/view/blocks/2]".into(),
                    "bad [json-pointer:/blocks/0]".into(),
                    "plain error".into(),
                ],
            }
        );
        let shown = err.to_string();
        assert!(shown.starts_with("Slack refused the call: invalid_arguments ([ERROR] must be"));
        assert!(!shown.contains("s3cr3t"));
    }

    #[test]
    fn what_to_retry_and_what_to_slow_down_for() {
        assert_eq!(
            classify(429, Some(Duration::from_secs(7)), b"{}"),
            Err(SlackError::RateLimited {
                retry_after: Duration::from_secs(7)
            })
        );
        assert_eq!(
            classify(503, None, b"<html>").unwrap_err().code(),
            "transient"
        );
        assert_eq!(
            classify(200, None, b"<html>").unwrap_err().code(),
            "transient"
        );
        assert_eq!(
            classify(200, None, br#"{"ok":false,"error":"internal_error"}"#)
                .unwrap_err()
                .code(),
            "transient"
        );
        assert_eq!(
            classify(200, None, br#"{"ok":false,"error":"not_in_channel"}"#),
            Err(SlackError::fatal("not_in_channel"))
        );
        assert_eq!(classify(404, None, b"").unwrap_err().code(), "http_404");
        assert_eq!(
            classify(200, None, br#"{"ok":false}"#).unwrap_err().code(),
            "unknown_error"
        );
    }
}
