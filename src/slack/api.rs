//! Outbound calls to the Slack Web API, through slack-morphism.
//!
//! Every call has a timeout. Errors are reduced to what the caller acts on: slow down
//! ([`SlackError::RateLimited`]), try again ([`SlackError::Transient`]), or give up
//! ([`SlackError::Fatal`], with Slack's error code). Error values never carry response bodies:
//! a `views.open` response echoes the view, and the reveal modal's view holds credentials.
//!
//! Posting is paced per channel with governor, since Slack allows about one message per second
//! per channel.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::metrics::Metrics;

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    #[error("rate limited by Slack (retry after {retry_after:?})")]
    RateLimited { retry_after: Duration },
    #[error("Slack did not answer properly: {0}")]
    Transient(String),
    #[error("Slack refused the call: {code}")]
    Fatal { code: String },
}

impl SlackError {
    pub fn code(&self) -> &str {
        match self {
            SlackError::RateLimited { .. } => "ratelimited",
            SlackError::Transient(_) => "transient",
            SlackError::Fatal { code } => code,
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

fn classify(err: SlackClientError) -> SlackError {
    match err {
        SlackClientError::RateLimitError(e) => SlackError::RateLimited {
            retry_after: e.retry_after.unwrap_or(Duration::from_secs(1)),
        },
        SlackClientError::ApiError(e) if e.code == "ratelimited" => SlackError::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        SlackClientError::ApiError(e) if TRANSIENT_CODES.contains(&e.code.as_str()) => {
            SlackError::Transient(e.code)
        }
        SlackClientError::ApiError(e) => SlackError::Fatal { code: e.code },
        SlackClientError::HttpError(e) if e.status_code.is_server_error() => {
            SlackError::Transient(format!("HTTP {}", e.status_code.as_u16()))
        }
        SlackClientError::HttpError(e) => SlackError::Fatal {
            code: format!("http_{}", e.status_code.as_u16()),
        },
        SlackClientError::ProtocolError(_) => {
            SlackError::Transient("unexpected response from Slack".into())
        }
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::EndOfStream(_)
        | SlackClientError::SystemError(_)
        | SlackClientError::SocketModeProtocolError(_) => {
            SlackError::Transient("connection to Slack failed".into())
        }
    }
}

/// Builds a slack-morphism client that speaks https, and plain http for a local simulator.
pub fn new_client(api_url: &str) -> anyhow::Result<Arc<SlackClient<Connector>>> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build();
    let mut connector = SlackClientHyperConnector::with_connector(https);
    let base = api_url.trim_end_matches('/');
    if base != "https://slack.com/api" {
        connector = connector.with_slack_api_url(base);
    }
    Ok(Arc::new(SlackClient::new(connector)))
}

#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackClient<Connector>>,
    token: SecretString,
    pacing: Arc<DefaultKeyedRateLimiter<String>>,
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackApi")
    }
}

fn blocks_from(value: Option<&Value>) -> Option<Vec<SlackBlock>> {
    let blocks = value?;
    serde_json::from_value(blocks.clone()).ok()
}

fn view_from(value: &Value) -> Result<SlackView, SlackError> {
    serde_json::from_value(value.clone()).map_err(|e| SlackError::Fatal {
        code: format!("invalid_view ({e})"),
    })
}

impl SlackApi {
    /// `posts_per_channel_per_second` paces `chat.postMessage` per channel.
    /// How long a call may take before it counts as a transient failure (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn new(
        api_url: &str,
        token: SecretString,
        posts_per_channel_per_second: NonZeroU32,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: new_client(api_url)?,
            token,
            // Slack tolerates short bursts above one message per second per channel.
            pacing: Arc::new(RateLimiter::keyed(
                Quota::per_second(posts_per_channel_per_second).allow_burst(
                    posts_per_channel_per_second.saturating_mul(NonZeroU32::new(3).expect("3")),
                ),
            )),
            timeout: Duration::from_secs(10),
            metrics,
        })
    }

    async fn call<T, F>(&self, method: &'static str, f: F) -> Result<T, SlackError>
    where
        F: for<'s> AsyncFnOnce(SlackClientSession<'s, Connector>) -> ClientResult<T>,
    {
        let token = SlackApiToken::new(SlackApiTokenValue(self.token.expose_secret().to_owned()));
        let session = self.client.open_session(&token);
        let result = match tokio::time::timeout(self.timeout, f(session)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(classify(err)),
            Err(_) => Err(SlackError::Transient(format!(
                "no answer within {}s",
                self.timeout.as_secs()
            ))),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics.slack_call(method, outcome);
        result
    }

    /// Posts a message (a thread reply when `thread_ts` is set). Returns its `ts`.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: Option<&Value>,
        broadcast: bool,
    ) -> Result<String, SlackError> {
        // Over the channel's pace, the job is put back rather than holding a worker while it waits.
        if let Err(not_until) = self.pacing.check_key(&channel.to_owned()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(SlackError::RateLimited {
                retry_after: wait.max(Duration::from_millis(10)),
            });
        }
        let request = SlackApiChatPostMessageRequest::new(
            channel.into(),
            SlackMessageContent::new()
                .with_text(text.to_owned())
                .opt_blocks(blocks_from(blocks)),
        )
        .opt_thread_ts(thread_ts.map(|t| t.into()))
        .opt_reply_broadcast(broadcast.then_some(true))
        .with_unfurl_links(false);
        let response = self
            .call("chat.postMessage", async |s| {
                s.chat_post_message(&request).await
            })
            .await?;
        Ok(response.ts.0)
    }

    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: Option<&Value>,
    ) -> Result<(), SlackError> {
        let request = SlackApiChatUpdateRequest::new(
            channel.into(),
            SlackMessageContent::new()
                .with_text(text.to_owned())
                .with_blocks(blocks_from(blocks).unwrap_or_default()),
            ts.into(),
        );
        self.call("chat.update", async |s| s.chat_update(&request).await)
            .await
            .map(|_| ())
    }

    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackError> {
        let request = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_owned()),
        );
        self.call("chat.postEphemeral", async |s| {
            s.chat_post_ephemeral(&request).await
        })
        .await
        .map(|_| ())
    }

    /// The DM channel with `user`.
    pub async fn open_dm(&self, user: &str) -> Result<String, SlackError> {
        let request = SlackApiConversationsOpenRequest::new().with_users(vec![user.into()]);
        let response = self
            .call("conversations.open", async |s| {
                s.conversations_open(&request).await
            })
            .await?;
        Ok(response.channel.id.0)
    }

    /// Opens a modal. Must run within three seconds of the interaction that gave `trigger_id`.
    pub async fn open_view(&self, trigger_id: &str, view: &Value) -> Result<String, SlackError> {
        let request = SlackApiViewsOpenRequest::new(trigger_id.into(), view_from(view)?);
        let response = self
            .call("views.open", async |s| s.views_open(&request).await)
            .await?;
        Ok(response.view.state_params.id.0)
    }

    pub async fn publish_home(&self, user: &str, view: &Value) -> Result<(), SlackError> {
        let request = SlackApiViewsPublishRequest::new(user.into(), view_from(view)?);
        self.call("views.publish", async |s| s.views_publish(&request).await)
            .await
            .map(|_| ())
    }

    /// The user's email, if Slack shares it (needs `users:read.email`).
    pub async fn user_email(&self, user: &str) -> Result<Option<String>, SlackError> {
        let request = SlackApiUsersInfoRequest::new(user.into());
        let response = self
            .call("users.info", async |s| s.users_info(&request).await)
            .await?;
        Ok(response.user.profile.and_then(|p| p.email).map(|e| e.0))
    }

    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, SlackError> {
        let request = SlackApiUserGroupsUsersListRequest::new(group.into());
        let response = self
            .call("usergroups.users.list", async |s| {
                s.usergroups_users_list(&request).await
            })
            .await?;
        Ok(response.users.into_iter().map(|u| u.0).collect())
    }
}
