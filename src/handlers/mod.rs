//! What jit does, independent of how it was asked: Slack commands and clicks, API calls, CLI
//! commands and queued jobs all end up here.
//!
//! Each action runs in one write transaction that changes the state, appends the audit event
//! and enqueues the follow-up jobs together; then it wakes the worker. Nothing here calls Slack
//! or a provider while a transaction is open.
//!
//! Errors come in two tiers (as in triagebot): [`HandlerError::User`] is shown to the person as
//! is; anything else is logged with a reference and shown as an internal error.

pub mod access;
pub mod committer;
pub mod decision;
pub mod escalation;
pub mod grant;
pub mod identity;
pub mod jobs;
pub mod notify;
pub mod request;

use std::fmt;

use crate::app::App;
use crate::domain::ids::RequestId;
use crate::store::requests::{self, StoredRequest};

#[derive(Debug)]
pub enum HandlerError {
    /// Shown to the person who asked.
    User(String),
    /// A limit said no (shown to the person as is); the API answers with the limit's code.
    Limited { limit: Limit, text: String },
    /// Logged; the person sees a generic message with a reference.
    Internal(anyhow::Error),
}

impl HandlerError {
    pub fn user(text: impl Into<String>) -> Self {
        HandlerError::User(text.into())
    }

    /// The text for a person. Internal errors are logged here, once, with a reference.
    pub fn user_message(&self) -> String {
        match self {
            HandlerError::User(text) | HandlerError::Limited { text, .. } => text.clone(),
            HandlerError::Internal(err) => {
                let reference = error_reference();
                tracing::error!(reference = %reference, error = format!("{err:#}"), "internal error");
                format!(
                    "Something went wrong inside jit, and nothing was changed. Please try again; if it keeps happening, give your admins this reference: `{reference}`."
                )
            }
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::User(text) | HandlerError::Limited { text, .. } => f.write_str(text),
            HandlerError::Internal(err) => write!(f, "internal error: {err:#}"),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.requests_per_user_per_minute`: try again in a minute.
    Rate,
    /// `limits.max_pending_per_user`: one of the requester's pending requests must end first.
    Pending,
}

impl From<anyhow::Error> for HandlerError {
    fn from(err: anyhow::Error) -> Self {
        HandlerError::Internal(err)
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        HandlerError::Internal(err.into())
    }
}

pub type HandlerResult<T> = Result<T, HandlerError>;

fn error_reference() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("E{n:08x}")
}

/// Where the approvers' message about `request` is queued: its channel's chain, ahead of audit
/// posts there, taking turns with other requesters ([`crate::queue::Placement::approval`]).
pub fn approvals_placement(
    app: &App,
    request: &crate::domain::request::Request,
) -> crate::queue::Placement {
    let channel = request.approval_channel.clone().or_else(|| {
        app.policy
            .resource(request.resource.as_str())
            .and_then(|r| r.approvers.channel.clone())
    });
    match channel {
        Some(channel) => crate::queue::Placement::approval(
            &channel,
            &app.policy.audit_channel,
            &request.requester,
        ),
        None => crate::queue::Placement::none(),
    }
}

/// Loads a request or says it does not exist.
pub async fn load(app: &App, id: RequestId) -> HandlerResult<StoredRequest> {
    let mut conn = app.store.read().await?;
    requests::get(&mut conn, id)
        .await?
        .ok_or_else(|| HandlerError::user(format!("There is no request {id}.")))
}
