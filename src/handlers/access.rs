//! People's actions on a grant: release it, revoke it (an admin, or the CLI), review a
//! break-glass grant, and reveal its credentials. Each applies one write transaction and leaves
//! the provider work to the queued lifecycle jobs (`super::grant`).

use super::request::reload;
use super::{HandlerError, HandlerResult, load};
use crate::app::App;
use crate::audit::{self, AuditEvent, actor};
use crate::domain::ids::{RequestId, SlackUserId};
use crate::domain::policy::Requester;
use crate::domain::request::{Kind, Request, State};
use crate::jobs::keys;
use crate::slack::blocks;
use crate::store;
use crate::store::requests::{self, Fenced};

use super::grant::dm;

/// Ends a grant early (active, or approved and not yet issued) and moves its teardown to now.
async fn end_early(
    app: &App,
    request: &Request,
    to: State,
    actor: &str,
    event: AuditEvent,
) -> HandlerResult<Request> {
    let id = request.id;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let mut ended = false;
    for from in [State::Active, State::Approved] {
        if requests::end(&mut tx, id, from, to, now, None).await? == Fenced::Applied {
            ended = true;
            break;
        }
    }
    if !ended {
        let current = reload(&mut tx, id).await?;
        return Err(HandlerError::user(format!(
            "Request {id} is {}; there is no access to end.",
            current.state.label()
        )));
    }
    audit::record(&mut tx, now, Some(id), actor, &event).await?;
    store::jobs::reschedule(&mut tx, &keys::revoke(id), now, now).await?;
    let current = reload(&mut tx, id).await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(current)
}

/// The holder gives up their access now.
pub async fn release(app: &App, who: &Requester, id: RequestId) -> HandlerResult<Request> {
    let request = load(app, id).await?.request;
    if &request.requester != who {
        return Err(HandlerError::user(format!(
            "Request {id} is not yours, so you cannot release it."
        )));
    }
    end_early(
        app,
        &request,
        State::Released,
        &who.key(),
        AuditEvent::Released,
    )
    .await
}

/// Who is revoking: an admin in Slack, or an operator at the command line.
pub enum Revoker<'a> {
    Slack(&'a SlackUserId),
    Cli(&'a str),
}

/// An admin ends someone's access now.
pub async fn revoke(
    app: &App,
    by: Revoker<'_>,
    id: RequestId,
    reason: &str,
) -> HandlerResult<Request> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(HandlerError::user("Please give a reason for revoking."));
    }
    let actor = match by {
        Revoker::Slack(user) => {
            require_admin(app, user).await?;
            user.to_string()
        }
        Revoker::Cli(os_user) => actor::cli(os_user),
    };
    let request = load(app, id).await?.request;
    let revoked = end_early(
        app,
        &request,
        State::Revoked,
        &actor,
        AuditEvent::Revoked {
            reason: reason.to_owned(),
        },
    )
    .await?;
    // Tell the holder why now; the teardown DM follows once the access is gone.
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    dm(
        &mut tx,
        &revoked,
        blocks::simple(format!(
            ":no_entry: Your access to {} (request {id}) was revoked by {}: {}",
            crate::slack::text::code(revoked.resource.as_str()),
            crate::slack::text::actor(&actor),
            crate::slack::text::escape_truncated(reason, 1000)
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(revoked)
}

pub async fn require_admin(app: &App, user: &SlackUserId) -> HandlerResult<()> {
    app.directory
        .refresh_on_miss(user, &app.policy.admins.groups)
        .await;
    if app.policy.is_admin(user, &app.directory) {
        return Ok(());
    }
    let stale = app.directory.stale(&app.policy.admins.groups);
    if stale.is_empty() {
        Err(HandlerError::user("Only jit admins can do that."))
    } else {
        Err(HandlerError::user(format!(
            "Only jit admins can do that, and jit has not been able to read who is in {} from Slack for over {} minutes, so admin groups grant no rights until it can.",
            stale
                .iter()
                .map(crate::slack::text::group)
                .collect::<Vec<_>>()
                .join(", "),
            crate::slack::directory::MAX_STALENESS.as_secs() / 60
        )))
    }
}

/// An admin's after-the-fact review of a break-glass grant, optionally revoking it.
pub async fn review(
    app: &App,
    admin: &SlackUserId,
    id: RequestId,
    revoke_too: bool,
) -> HandlerResult<Request> {
    require_admin(app, admin).await?;
    let request = load(app, id).await?.request;
    if request.kind != Kind::Breakglass {
        return Err(HandlerError::user(format!(
            "Request {id} is not a break-glass grant."
        )));
    }
    if request.requester.user() == Some(admin) {
        return Err(HandlerError::user(format!(
            "You took break-glass grant {id} yourself, so another admin has to review it."
        )));
    }
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if requests::mark_reviewed(&mut tx, id, admin.as_str(), now).await? == Fenced::Lost {
        let current = reload(&mut tx, id).await?;
        return Err(HandlerError::user(format!(
            "Break-glass grant {id} was already reviewed by {}.",
            current.reviewed_by.as_deref().unwrap_or("an admin")
        )));
    }
    audit::record(
        &mut tx,
        now,
        Some(id),
        admin.as_str(),
        &AuditEvent::Reviewed { revoke: revoke_too },
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    if revoke_too && matches!(request.state, State::Active | State::Approved) {
        return end_early(
            app,
            &request,
            State::Revoked,
            admin.as_str(),
            AuditEvent::Revoked {
                reason: "break-glass review".into(),
            },
        )
        .await;
    }
    Ok(load(app, id).await?.request)
}

/// The holder's credentials, decrypted, for the reveal modal. Nothing is recorded here: the
/// caller records what happened with [`record_reveal`] once it knows whether the holder saw
/// them (Slack may refuse the window).
pub async fn open_credentials(
    app: &App,
    who: &Requester,
    id: RequestId,
) -> HandlerResult<(Request, Vec<(String, String)>)> {
    let stored = load(app, id).await?;
    let request = stored.request;
    if &request.requester != who {
        return Err(HandlerError::user(
            "Only the holder of a grant can reveal its credentials.",
        ));
    }
    if request.state != State::Active {
        return Err(HandlerError::user(format!(
            "Request {id} is {}; its credentials are gone.",
            request.state.label()
        )));
    }
    let sealed = {
        let mut conn = app.store.read().await?;
        store::credentials::get(&mut conn, id).await?
    };
    let Some(sealed) = sealed else {
        return Err(HandlerError::user(format!(
            "Request {id} has no credentials to reveal."
        )));
    };
    let secret = app
        .cipher
        .open_secret(&sealed, &store::credentials::aad(id))
        .map_err(|_| {
            HandlerError::Internal(anyhow::anyhow!(
                "the stored credentials of request {id} cannot be decrypted (was JIT_ENCRYPTION_KEY changed?)"
            ))
        })?;
    let pairs: Vec<(String, String)> = crate::providers::Credentials::from_secret_json(secret)
        .expose()
        .into_iter()
        .collect();
    Ok((request, pairs))
}

/// How a reveal went, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevealOutcome<'a> {
    /// The holder was shown the credentials.
    Shown,
    /// Nothing was shown; `error` is Slack's error code (never the view, which holds them).
    Failed { error: &'a str },
}

/// Records a reveal's outcome: `credentials_revealed`, or `credentials_reveal_failed`.
pub async fn record_reveal(
    app: &App,
    who: &Requester,
    id: RequestId,
    outcome: RevealOutcome<'_>,
) -> HandlerResult<()> {
    let event = match outcome {
        RevealOutcome::Shown => AuditEvent::CredentialsRevealed,
        RevealOutcome::Failed { error } => AuditEvent::CredentialsRevealFailed {
            error: error.to_owned(),
        },
    };
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    audit::record(&mut tx, now, Some(id), &who.key(), &event).await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

/// The holder's credentials, recorded as revealed: for the API, whose answer is the reveal.
pub async fn reveal(
    app: &App,
    who: &Requester,
    id: RequestId,
) -> HandlerResult<(Request, Vec<(String, String)>)> {
    let found = open_credentials(app, who, id).await?;
    record_reveal(app, who, id, RevealOutcome::Shown).await?;
    Ok(found)
}
