//! The life of a grant after approval, as queued jobs: issue, remind, extend, time out, tear
//! down. (People's actions on a grant, release, revoke, review and reveal, are in
//! `super::access`; they end a grant by moving its teardown here.)
//!
//! These run as queue jobs (`run_*`, dispatched by `super::jobs`). Provider calls happen outside any
//! transaction; their results are recorded with fenced updates afterwards, so a crash between
//! the call and the record only means the (idempotent) call is made again.
//!
//! **Access always ends.** Every credential a grant issued (the first, each extension, each
//! re-issue) is recorded in `issued`, and the revoke is told about all of them. A grant or an
//! extension that fails in a way that may still have acted (a timeout, an ambiguous error, a
//! request that ended while its issue was in doubt) is treated as issued: the provider's
//! presumed handle is recorded and the same durable, retried and alerted revoke removes it.
//! Only a provider's [`ProviderError::Refused`] (nothing was done) skips that, and only on the
//! first attempt: a job on a later attempt had an earlier one fail retryably, crash mid-call or
//! lose what the provider returned, any of which may have acted, so its failure compensates
//! whatever the last error says. (The job's attempt count is durable.)
//!
//! A provider whose work AWS carries out asynchronously answers [`ProviderError::Pending`]: the
//! job runs again shortly without counting an attempt and without holding a worker, and the
//! provider bounds the wait itself. A job run again after it (its baseline is recorded) is
//! treated like a later attempt: whatever it ends in compensates.
//!
//! Before the first grant call, the provider's baseline ([`Provider::baseline`]) is recorded,
//! so the revoke can tell what changed while the access was held.

use super::HandlerError;
use super::request::reload;
use crate::app::App;
use crate::audit::{self, AuditEvent, actor};
use crate::domain::ids::RequestId;
use crate::domain::policy::{Refusal, Requester};
use crate::domain::request::{Kind, Request, State};
use crate::jobs::{Job, keys};
use crate::providers::{
    GrantSpec, Issued, MAX_PENDING_WAIT, Provider, ProviderError, RevokeReason, RevokeSpec, Revoked,
};
use crate::queue::worker::{JobCtx, Outcome};
use crate::queue::{self, Placement};
use crate::slack::blocks;
use crate::store::requests::{self, Fenced, StoredRequest};
use crate::store::{self, WriteTx, format_time};
use chrono::{DateTime, Utc};

async fn get(app: &App, id: RequestId) -> anyhow::Result<Option<StoredRequest>> {
    let mut conn = app.store.read().await?;
    requests::get(&mut conn, id).await
}

/// Provider calls a grant or an extension makes before it gives up. The jobs themselves are
/// never dropped (a database fault retries them for ever); the handlers give up on the provider
/// after this many attempts and record the outcome, compensating revoke included.
pub const GRANT_ATTEMPTS: u32 = 6;

/// The key under which overlapping grants of the same access are counted: the same resource,
/// the same person and the same provider handle. Two people whose grants share a handle (an exec
/// command naming a shared group) each get their own teardown.
fn access_key(request: &Request, handle: &str) -> String {
    format!(
        "{}\n{}\n{handle}",
        request.resource,
        request.requester.key()
    )
}

/// When a grant issued at `now` ends: its duration from its scheduled start (a late issue, after
/// downtime, gets no more than the window that was approved), or else from now.
fn grant_expiry(request: &Request, now: DateTime<Utc>) -> DateTime<Utc> {
    let from = request.start_at.filter(|s| *s <= now).unwrap_or(now);
    from + request.duration.to_chrono()
}

/// What a grant for `request` issued at `now` asks the provider for.
async fn grant_spec(app: &App, request: &Request, now: DateTime<Utc>) -> GrantSpec {
    GrantSpec {
        request_id: request.id,
        requester: request.requester.clone(),
        requester_email: requester_email(app, &request.requester).await,
        resource: request.resource.clone(),
        expires_at: grant_expiry(request, now),
        now,
    }
}

/// How long an activation waits for jit to know who may request (see [`Activation::Wait`])
/// before it looks again.
const ACTIVATION_RECHECK: chrono::Duration = chrono::Duration::seconds(30);

/// What the policy says at a scheduled start.
enum Activation {
    Issue,
    /// Refused for good: the reason, for the requester and the audit.
    Refuse(String),
    /// Who may request is read from Slack, and jit has not read it yet (just started) or cannot
    /// (Slack unreachable for a while): a refusal now could be a list not loaded rather than a
    /// right lost. Nothing is issued; it looks again shortly, until the window ends.
    Wait(String),
}

/// Whether a scheduled request may be issued at its start, now: the policy is checked again
/// (the requester may have lost the right, the resource may be gone or changed), and the
/// approved window must not have passed (jit was down through it).
fn activation(app: &App, request: &Request, now: DateTime<Utc>) -> Activation {
    let Some(start) = request.start_at else {
        return Activation::Issue;
    };
    let end = start + request.duration.to_chrono();
    if end <= now {
        return Activation::Refuse(format!(
            "its window ({} to {}) had ended before jit could issue it.",
            crate::slack::text::utc(start),
            crate::slack::text::utc(end)
        ));
    }
    match app.policy.evaluate(
        request.resource.as_str(),
        &request.requester,
        Some(request.duration),
        &app.directory,
    ) {
        Ok(_) => Activation::Issue,
        Err(refusal @ (Refusal::NotAllowed { .. } | Refusal::NotNamed { .. })) => {
            let groups: Vec<_> = app
                .policy
                .resource(request.resource.as_str())
                .and_then(|r| r.requesters.as_ref())
                .map(|p| p.groups.clone())
                .unwrap_or_default();
            let unsure = request.requester.user().is_some()
                && (!app.directory.ready() || !app.directory.stale(&groups).is_empty());
            if unsure {
                Activation::Wait(refusal.to_string())
            } else {
                Activation::Refuse(refusal.to_string())
            }
        }
        Err(refusal) => Activation::Refuse(refusal.to_string()),
    }
}

/// Everything a revoke of `stored` must reach.
async fn revoke_spec(
    app: &App,
    stored: &StoredRequest,
    handle: String,
    reason: RevokeReason,
    now: DateTime<Utc>,
) -> anyhow::Result<RevokeSpec> {
    let request = &stored.request;
    let mut issued = {
        let mut conn = app.store.read().await?;
        requests::issuances(&mut conn, request.id).await?
    };
    if !issued.iter().any(|i| i.handle == handle) {
        issued.push(crate::providers::Issuance {
            handle: handle.clone(),
            expires_at: None,
        });
    }
    let baselines = {
        let mut conn = app.store.read().await?;
        requests::access_baselines(&mut conn, request.id, stored.access_key.as_deref()).await?
    };
    Ok(RevokeSpec {
        request_id: request.id,
        requester: request.requester.clone(),
        resource: request.resource.clone(),
        handle,
        issued,
        natural_expiry: request.expires_at.unwrap_or(now),
        reason,
        now,
        baselines,
    })
}

async fn requester_email(app: &App, requester: &Requester) -> Option<String> {
    let user = requester.user()?;
    match app.slack.user_email(user.as_str()).await {
        Ok(email) => email,
        Err(err) => {
            tracing::warn!(user = %user, error = %err, "cannot look up the requester's email; using the Slack user id");
            None
        }
    }
}

pub(super) async fn dm(
    tx: &mut WriteTx,
    request: &Request,
    msg: blocks::Msg,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if let Some(user) = request.requester.user() {
        queue::enqueue(
            tx,
            &Job::Dm {
                user: user.clone(),
                text: msg.text,
                blocks: Some(msg.blocks),
            },
            Placement::dm(user),
            now,
            now,
        )
        .await?;
    }
    Ok(())
}

async fn update_approval_message(
    tx: &mut WriteTx,
    app: &App,
    request: &Request,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if request.pending_until.is_some() {
        super::escalation::refresh_messages(tx, app, request, now).await?;
    }
    Ok(())
}

/// When the reminder for a grant ending at `expires_at` goes out.
fn remind_at(
    app: &App,
    request: &Request,
    granted_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> DateTime<Utc> {
    let lead = app
        .policy
        .resource(request.resource.as_str())
        .map(|r| r.reminder_before.to_chrono())
        .unwrap_or_else(|| chrono::Duration::minutes(10));
    // Short grants are reminded at half time rather than at once.
    let lead = lead.min((expires_at - granted_at) / 2);
    expires_at - lead
}

// ---------------------------------------------------------------------------------------------
// Issue
// ---------------------------------------------------------------------------------------------

pub async fn run_grant(app: &App, id: RequestId, ctx: JobCtx) -> anyhow::Result<Outcome> {
    let Some(stored) = get(app, id).await? else {
        return Ok(Outcome::Fail(format!("request {id} does not exist")));
    };
    let request = &stored.request;
    let provider = app.providers.get(&request.resource);
    match request.state {
        State::Approved => {}
        // An earlier attempt may have issued access and died (or timed out) before recording
        // it, and the request ended since. Issuing again would hand out access nobody holds a
        // grant for: treat it as issued and tear it down.
        State::Released | State::Revoked | State::Cancelled
            if stored.grant_handle.is_none() && earlier_run_may_have_acted(&stored, ctx) =>
        {
            if let Some(provider) = provider {
                let spec = grant_spec(app, request, app.clock.now()).await;
                let mut tx = app.store.begin_write().await?;
                compensate(&mut tx, request, provider.as_ref(), &spec).await?;
                tx.commit().await?;
                app.waker.wake();
            }
            return Ok(Outcome::Done);
        }
        _ => return Ok(Outcome::Done),
    }
    if let Some(start) = request.starts_later(app.clock.now()) {
        // Brought forward (a cancel that lost its race, a clock stepped back): wait for it.
        return Ok(Outcome::RunAt(start));
    }
    // At a scheduled start, before anything is asked of the provider. A later attempt checks
    // again (the first may have died between its check and its record), and a refusal then
    // removes whatever an earlier attempt may have issued.
    match activation(app, request, app.clock.now()) {
        Activation::Issue => {}
        Activation::Wait(why) => {
            tracing::warn!(
                request_id = id.0,
                why,
                "at the scheduled start, jit cannot yet tell whether the requester may still request; looking again shortly"
            );
            return Ok(Outcome::RunAt(app.clock.now() + ACTIVATION_RECHECK));
        }
        Activation::Refuse(reason) => {
            let spec;
            let uncertain = match (&provider, earlier_run_may_have_acted(&stored, ctx)) {
                (Some(provider), true) => {
                    spec = grant_spec(app, request, app.clock.now()).await;
                    Some((provider.as_ref(), &spec))
                }
                _ => None,
            };
            refuse_activation(app, request, &reason, uncertain).await?;
            return Ok(Outcome::Done);
        }
    }
    let Some(provider) = provider else {
        fail_grant(
            app,
            request,
            "the resource has no provider (was it removed from the policy?)",
            ctx,
            None,
        )
        .await?;
        return Ok(Outcome::Done);
    };
    let now = app.clock.now();
    let spec = grant_spec(app, request, now).await;
    let result = match record_baseline(app, &stored, provider.as_ref(), &spec).await? {
        Ok(()) => provider.grant(&spec).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(issued) => {
            record_issued(app, &stored, issued, now, spec.expires_at).await?;
            Ok(Outcome::Done)
        }
        // Accepted and still being carried out: ask again later, without holding a worker or
        // counting an attempt (the provider bounds the wait and then fails retryably).
        Err(ProviderError::Pending { after, detail }) => {
            tracing::info!(request_id = id.0, detail, "issuing is still in progress");
            Ok(Outcome::Defer(after.min(MAX_PENDING_WAIT)))
        }
        Err(ProviderError::Retryable(error)) if ctx.attempt < GRANT_ATTEMPTS => {
            let mut tx = app.store.begin_write().await?;
            audit::record(
                &mut tx,
                now,
                Some(id),
                actor::SYSTEM,
                &AuditEvent::GrantFailed {
                    error: error.clone(),
                    attempt: ctx.attempt,
                    last: false,
                },
            )
            .await?;
            tx.commit().await?;
            Ok(Outcome::Retry(error))
        }
        Err(err) => {
            let acted = may_have_acted(&err, ctx) || earlier_run_may_have_acted(&stored, ctx);
            let uncertain = acted.then_some((provider.as_ref(), &spec));
            fail_grant(app, request, &err.to_string(), ctx, uncertain).await?;
            Ok(Outcome::Done)
        }
    }
}

/// Whether an earlier run of this grant job may have acted: an earlier attempt failed, crashed
/// or lost what the provider returned, or the provider was called before (its baseline is
/// recorded just before the first call) and answered [`ProviderError::Pending`], which jit
/// does not count as an attempt.
fn earlier_run_may_have_acted(stored: &StoredRequest, ctx: JobCtx) -> bool {
    ctx.attempt > 1 || stored.grant_baseline.is_some()
}

/// Whether a grant (or extension) job that ends with `err` may have left access behind: the
/// error says so, or an earlier attempt of the job failed retryably, crashed mid-call or could not
/// record what the provider returned (the job's attempt count is durable).
fn may_have_acted(err: &ProviderError, ctx: JobCtx) -> bool {
    err.may_have_acted() || ctx.attempt > 1
}

/// Takes and records the provider's baseline before the first grant call (a retry keeps the
/// first one). The inner error means no grant was attempted: a failure to take the baseline
/// never acted, so it is passed on as retryable or refused.
async fn record_baseline(
    app: &App,
    stored: &StoredRequest,
    provider: &dyn Provider,
    spec: &GrantSpec,
) -> anyhow::Result<Result<(), ProviderError>> {
    if stored.grant_baseline.is_some() {
        return Ok(Ok(()));
    }
    let baseline = match provider.baseline(spec).await {
        Ok(Some(baseline)) => baseline,
        Ok(None) => return Ok(Ok(())),
        Err(ProviderError::Retryable(text)) => {
            return Ok(Err(ProviderError::Retryable(format!(
                "before granting: {text}"
            ))));
        }
        Err(err) => {
            return Ok(Err(ProviderError::Refused(format!(
                "before granting: {err}"
            ))));
        }
    };
    let mut tx = app.store.begin_write().await?;
    requests::record_baseline(&mut tx, stored.request.id, &baseline).await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// Treats a grant whose outcome is in doubt as issued under the provider's presumed handle, and
/// schedules its teardown now (the same durable, retried and alerted revoke as any teardown).
/// Nothing happens when a handle is already recorded: then the revoke knows what to remove.
async fn compensate(
    tx: &mut WriteTx,
    request: &Request,
    provider: &dyn Provider,
    spec: &GrantSpec,
) -> anyhow::Result<()> {
    let id = request.id;
    let now = spec.now;
    let handle = provider.presumed_handle(spec);
    let key = access_key(request, &handle);
    if !requests::record_handle(tx, id, &handle, &key).await? {
        return Ok(());
    }
    requests::record_issuance(tx, id, &handle, now, None).await?;
    audit::record(
        tx,
        now,
        Some(id),
        actor::SYSTEM,
        &AuditEvent::GrantUncertain {
            handle: handle.clone(),
        },
    )
    .await?;
    let current = reload(tx, id).await.map_err(anyhow_of)?;
    queue::enqueue(
        tx,
        &Job::Revoke { request: id },
        Placement::access_of(&current, keys::revoke(id)),
        now,
        now,
    )
    .await?;
    tracing::warn!(
        request_id = id.0,
        handle = %handle,
        "issuing may have acted before it failed; revoking whatever it did"
    );
    Ok(())
}

async fn record_issued(
    app: &App,
    stored: &StoredRequest,
    issued: Issued,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let request = &stored.request;
    let id = request.id;
    let key = access_key(request, &issued.handle);
    let mut tx = app.store.begin_write().await?;
    requests::record_issuance(
        &mut tx,
        id,
        &issued.handle,
        now,
        issued.credentials_expire_at,
    )
    .await?;
    if requests::activate(&mut tx, id, now, expires_at, &issued.handle, &key).await? == Fenced::Lost
    {
        // Released or revoked while the provider was working: remove what was just issued.
        requests::record_handle(&mut tx, id, &issued.handle, &key).await?;
        let current = reload(&mut tx, id).await.map_err(anyhow_of)?;
        queue::enqueue(
            &mut tx,
            &Job::Revoke { request: id },
            Placement::access_of(&current, keys::revoke(id)),
            now,
            now,
        )
        .await?;
        tx.commit().await?;
        app.waker.wake();
        return Ok(());
    }
    if let Some(credentials) = &issued.credentials {
        let sealed = app
            .cipher
            .seal_secret(credentials.to_secret_json(), &store::credentials::aad(id));
        store::credentials::put(&mut tx, id, &sealed, now).await?;
    }
    audit::record(
        &mut tx,
        now,
        Some(id),
        actor::SYSTEM,
        &AuditEvent::Granted {
            expires_at: format_time(expires_at),
            handle: issued.handle.clone(),
            credentials: issued.credentials.is_some(),
        },
    )
    .await?;
    let active = reload(&mut tx, id).await.map_err(anyhow_of)?;
    queue::enqueue(
        &mut tx,
        &Job::Revoke { request: id },
        Placement::access_of(&active, keys::revoke(id)),
        expires_at,
        now,
    )
    .await?;
    queue::enqueue(
        &mut tx,
        &Job::Remind { request: id },
        Placement::unique(keys::remind(id)),
        remind_at(app, &active, now, expires_at),
        now,
    )
    .await?;
    tracing::info!(
        request_id = id.0,
        resource = %active.resource,
        expires_at = %format_time(expires_at),
        handle = %issued.handle,
        "access issued"
    );
    dm(
        &mut tx,
        &active,
        blocks::issued_dm(
            &active,
            expires_at,
            issued.instructions.as_deref(),
            issued.credentials.is_some(),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

/// Ends a scheduled request whose start came but that the policy no longer allows: nothing was
/// issued. The requester (or an identity's owners), the approvers' message and the audit
/// thread say why.
///
/// With `uncertain`, an earlier attempt of the job may have issued access (it died after its
/// check): that is treated as issued and revoked ([`compensate`]).
async fn refuse_activation(
    app: &App,
    request: &Request,
    reason: &str,
    uncertain: Option<(&dyn Provider, &GrantSpec)>,
) -> anyhow::Result<()> {
    let now = app.clock.now();
    let id = request.id;
    let mut tx = app.store.begin_write().await?;
    if let Some((provider, spec)) = uncertain {
        compensate(&mut tx, request, provider, spec).await?;
    }
    if requests::end(
        &mut tx,
        id,
        State::Approved,
        State::Failed,
        now,
        Some(reason),
    )
    .await?
        == Fenced::Lost
    {
        tx.commit().await?;
        app.waker.wake();
        return Ok(());
    }
    audit::record(
        &mut tx,
        now,
        Some(id),
        actor::SYSTEM,
        &AuditEvent::ActivationRefused {
            reason: reason.to_owned(),
        },
    )
    .await?;
    let failed = reload(&mut tx, id).await.map_err(anyhow_of)?;
    update_approval_message(&mut tx, app, &failed, now).await?;
    dm(
        &mut tx,
        &failed,
        blocks::activation_refused_dm(&failed, reason),
        now,
    )
    .await?;
    super::identity::notify_owners(
        &mut tx,
        app,
        &failed,
        blocks::owner_dm(
            &failed,
            &format!(
                "not issued at its scheduled start: {}",
                crate::slack::text::escape_truncated(reason, 500)
            ),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    tracing::info!(
        request_id = id.0,
        reason,
        "scheduled request not issued at its start"
    );
    Ok(())
}

fn anyhow_of(err: HandlerError) -> anyhow::Error {
    match err {
        HandlerError::Internal(e) => e,
        HandlerError::User(text) | HandlerError::Limited { text, .. } => anyhow::anyhow!(text),
    }
}

/// Ends an approved request as failed. With `uncertain`, the failed call may have acted: the
/// access is treated as issued and revoked ([`compensate`]), even when the request ended some
/// other way meanwhile.
async fn fail_grant(
    app: &App,
    request: &Request,
    error: &str,
    ctx: JobCtx,
    uncertain: Option<(&dyn Provider, &GrantSpec)>,
) -> anyhow::Result<()> {
    let now = app.clock.now();
    let id = request.id;
    let mut tx = app.store.begin_write().await?;
    let failed_now = requests::end(
        &mut tx,
        id,
        State::Approved,
        State::Failed,
        now,
        Some(error),
    )
    .await?
        == Fenced::Applied;
    if failed_now {
        audit::record(
            &mut tx,
            now,
            Some(id),
            actor::SYSTEM,
            &AuditEvent::GrantFailed {
                error: error.to_owned(),
                attempt: ctx.attempt,
                last: true,
            },
        )
        .await?;
    }
    if let Some((provider, spec)) = uncertain {
        compensate(&mut tx, request, provider, spec).await?;
    }
    if !failed_now {
        tx.commit().await?;
        app.waker.wake();
        return Ok(());
    }
    let failed = reload(&mut tx, id).await.map_err(anyhow_of)?;
    update_approval_message(&mut tx, app, &failed, now).await?;
    dm(&mut tx, &failed, blocks::failed_dm(&failed, error), now).await?;
    super::identity::notify_owners(
        &mut tx,
        app,
        &failed,
        blocks::owner_dm(
            &failed,
            &format!(
                "approved, but issuing failed: {}",
                crate::slack::text::escape_truncated(error, 500)
            ),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tear down
// ---------------------------------------------------------------------------------------------

pub async fn run_revoke(app: &App, id: RequestId, ctx: JobCtx) -> anyhow::Result<Outcome> {
    let Some(stored) = get(app, id).await? else {
        return Ok(Outcome::Fail(format!("request {id} does not exist")));
    };
    if stored.request.revoked_at.is_some() {
        return Ok(Outcome::Done);
    }
    let now = app.clock.now();
    let mut request = stored.request.clone();
    if request.state == State::Active {
        let expires = request.expires_at.unwrap_or(now);
        if now < expires {
            // Extended since this job was scheduled: come back at the new expiry.
            return Ok(Outcome::RunAt(expires));
        }
        let mut tx = app.store.begin_write().await?;
        if requests::end(&mut tx, id, State::Active, State::Expired, now, None).await?
            == Fenced::Applied
        {
            audit::record(&mut tx, now, Some(id), actor::SYSTEM, &AuditEvent::Expired).await?;
        }
        request = reload(&mut tx, id).await.map_err(anyhow_of)?;
        tx.commit().await?;
    }
    let Some(handle) = stored.grant_handle.clone() else {
        // Ended before anything was issued.
        finish_teardown(
            app,
            &request,
            Vec::new(),
            Revoked {
                detail: Some("nothing had been issued".into()),
                ..Revoked::default()
            },
        )
        .await?;
        return Ok(Outcome::Done);
    };
    let key = stored
        .access_key
        .clone()
        .unwrap_or_else(|| access_key(&request, &handle));
    let holders = {
        let mut conn = app.store.read().await?;
        requests::other_holders(&mut conn, id, &key).await?
    };
    if !holders.is_empty() {
        finish_teardown(app, &request, holders, Revoked::default()).await?;
        return Ok(Outcome::Done);
    }
    let Some(provider) = app.providers.get(&request.resource) else {
        let error = format!(
            "`{}` has no provider any more (was it removed from the policy?); remove the access by hand",
            request.resource
        );
        record_teardown_failure(app, &request, ctx, &error).await?;
        return Ok(Outcome::Retry(error));
    };
    let reason = match request.state {
        State::Expired => RevokeReason::Expired,
        State::Failed => RevokeReason::FailedGrant,
        _ => RevokeReason::Early,
    };
    let spec = revoke_spec(app, &stored, handle, reason, now).await?;
    match provider.revoke(&spec).await {
        Ok(revoked) => {
            finish_teardown(app, &request, Vec::new(), revoked).await?;
            Ok(Outcome::Done)
        }
        // Still being carried out: ask again later. The provider bounds the wait and then fails
        // retryably, so a stuck removal ends in the counted, alerted path below.
        Err(ProviderError::Pending { after, detail }) => {
            tracing::info!(request_id = id.0, detail, "the revoke is still in progress");
            Ok(Outcome::Defer(after.min(MAX_PENDING_WAIT)))
        }
        Err(err) => {
            let error = err.to_string();
            record_teardown_failure(app, &request, ctx, &error).await?;
            // Teardowns are never dropped, fatal or not: a person may fix the cause.
            Ok(Outcome::Retry(error))
        }
    }
}

async fn record_teardown_failure(
    app: &App,
    request: &Request,
    ctx: JobCtx,
    error: &str,
) -> anyhow::Result<()> {
    let alert_after = app.policy.limits.teardown_alert_after_failures;
    let event = if ctx.attempt == alert_after
        || (ctx.attempt > alert_after && ctx.attempt.is_multiple_of(12))
    {
        Some(AuditEvent::TeardownAlert {
            attempts: ctx.attempt,
            error: error.to_owned(),
        })
    } else if ctx.attempt < alert_after {
        Some(AuditEvent::TeardownFailed {
            attempt: ctx.attempt,
            error: error.to_owned(),
        })
    } else {
        None
    };
    if let Some(event) = event {
        let now = app.clock.now();
        let mut tx = app.store.begin_write().await?;
        audit::record(&mut tx, now, Some(request.id), actor::SYSTEM, &event).await?;
        tx.commit().await?;
        app.waker.wake();
    }
    Ok(())
}

async fn finish_teardown(
    app: &App,
    request: &Request,
    still_held_by: Vec<i64>,
    revoked: Revoked,
) -> anyhow::Result<()> {
    let Revoked {
        cleanup_at,
        detail,
        attention,
    } = revoked;
    let now = app.clock.now();
    let id = request.id;
    let mut tx = app.store.begin_write().await?;
    if requests::mark_revoked(&mut tx, id, now).await? == Fenced::Lost {
        return Ok(());
    }
    if store::credentials::erase(&mut tx, id).await? {
        audit::record(
            &mut tx,
            now,
            Some(id),
            actor::SYSTEM,
            &AuditEvent::CredentialsErased,
        )
        .await?;
    }
    audit::record(
        &mut tx,
        now,
        Some(id),
        actor::SYSTEM,
        &AuditEvent::TornDown {
            still_held_by,
            detail,
        },
    )
    .await?;
    if let Some(detail) = attention {
        tracing::warn!(request_id = id.0, %detail, "teardown needs attention");
        audit::record(
            &mut tx,
            now,
            Some(id),
            actor::SYSTEM,
            &AuditEvent::TeardownAttention { detail },
        )
        .await?;
    }
    for extension in requests::pending_extensions(&mut tx, id).await? {
        let extension = RequestId(extension);
        if requests::decide(
            &mut tx,
            extension,
            State::Cancelled,
            actor::SYSTEM,
            Some("the grant ended"),
            now,
        )
        .await?
            == Fenced::Applied
        {
            audit::record(
                &mut tx,
                now,
                Some(id),
                actor::SYSTEM,
                &AuditEvent::Cancelled {
                    extension: Some(extension.0),
                },
            )
            .await?;
            let cancelled = reload(&mut tx, extension).await.map_err(anyhow_of)?;
            update_approval_message(&mut tx, app, &cancelled, now).await?;
        }
    }
    if let Some(at) = cleanup_at {
        queue::enqueue(
            &mut tx,
            &Job::Cleanup { request: id },
            Placement::access_of(request, keys::cleanup(id)),
            at,
            now,
        )
        .await?;
    }
    if request.granted_at.is_some() {
        dm(&mut tx, request, blocks::ended_dm(request, None), now).await?;
    }
    tx.commit().await?;
    app.waker.wake();
    tracing::info!(request_id = id.0, state = %request.state, "access removed");
    if let (State::Expired, Some(expires)) = (request.state, request.expires_at) {
        app.metrics
            .teardown_lag((now - expires).num_milliseconds() as f64 / 1000.0);
    }
    Ok(())
}

pub async fn run_cleanup(app: &App, id: RequestId, _ctx: JobCtx) -> anyhow::Result<Outcome> {
    let Some(stored) = get(app, id).await? else {
        return Ok(Outcome::Done);
    };
    let request = &stored.request;
    let (Some(handle), Some(provider)) = (
        stored.grant_handle.clone(),
        app.providers.get(&request.resource),
    ) else {
        return Ok(Outcome::Done);
    };
    let now = app.clock.now();
    let spec = revoke_spec(app, &stored, handle, RevokeReason::Early, now).await?;
    match provider.cleanup(&spec).await {
        Ok(()) => {
            let mut tx = app.store.begin_write().await?;
            audit::record(
                &mut tx,
                now,
                Some(id),
                actor::SYSTEM,
                &AuditEvent::CleanedUp { detail: None },
            )
            .await?;
            tx.commit().await?;
            app.waker.wake();
            Ok(Outcome::Done)
        }
        Err(ProviderError::Pending { after, .. }) => {
            Ok(Outcome::Defer(after.min(MAX_PENDING_WAIT)))
        }
        Err(err) => Ok(Outcome::Retry(err.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Extend
// ---------------------------------------------------------------------------------------------

pub async fn run_extend(app: &App, ext_id: RequestId, ctx: JobCtx) -> anyhow::Result<Outcome> {
    let Some(ext) = get(app, ext_id).await? else {
        return Ok(Outcome::Done);
    };
    let ext = ext.request;
    if ext.state != State::Approved || ext.kind != Kind::Extension {
        return Ok(Outcome::Done);
    }
    let parent_id = ext.parent.unwrap_or(ext_id);
    let parent = get(app, parent_id).await?;
    let Some(parent) =
        parent.filter(|p| p.request.state == State::Active && p.grant_handle.is_some())
    else {
        fail_extension(app, &ext, parent_id, "the grant has already ended", None).await?;
        return Ok(Outcome::Done);
    };
    let now = app.clock.now();
    let current = parent.request.expires_at.unwrap_or(now);
    // Extensions add to the current end; a clock that stepped back never shortens or stretches it.
    let new_expiry = current + ext.duration.to_chrono();
    // The cap is checked when the extension is asked for; check it again now (the policy may
    // have changed since), so no extension ever carries a grant past it.
    if let (Some(resource), Some(granted_at)) = (
        app.policy.resource(parent.request.resource.as_str()),
        parent.request.granted_at,
    ) && new_expiry - granted_at > resource.max_lifetime.to_chrono()
    {
        let error = format!(
            "it would carry the grant past `{}`'s max_lifetime of {} ({})",
            resource.id,
            resource.max_lifetime,
            resource.max_lifetime.humanize()
        );
        fail_extension(app, &ext, parent_id, &error, None).await?;
        return Ok(Outcome::Done);
    }
    let Some(provider) = app.providers.get(&parent.request.resource) else {
        fail_extension(
            app,
            &ext,
            parent_id,
            "the resource has no provider any more",
            None,
        )
        .await?;
        return Ok(Outcome::Done);
    };
    let spec = GrantSpec {
        request_id: parent_id,
        requester: parent.request.requester.clone(),
        requester_email: requester_email(app, &parent.request.requester).await,
        resource: parent.request.resource.clone(),
        expires_at: new_expiry,
        now,
    };
    let handle = parent.grant_handle.clone().unwrap_or_default();
    let issued = match provider.extend(&spec, &handle).await {
        Ok(issued) => issued,
        Err(ProviderError::Pending { after, .. }) => {
            return Ok(Outcome::Defer(after.min(MAX_PENDING_WAIT)));
        }
        Err(ProviderError::Retryable(error)) if ctx.attempt < GRANT_ATTEMPTS => {
            return Ok(Outcome::Retry(error));
        }
        Err(err) => {
            // New credentials may exist anyway (from this attempt or an earlier one): the
            // grant's teardown must reach them.
            let presumed = may_have_acted(&err, ctx).then(|| provider.presumed_handle(&spec));
            fail_extension(app, &ext, parent_id, &err.to_string(), presumed).await?;
            return Ok(Outcome::Done);
        }
    };
    let mut tx = app.store.begin_write().await?;
    requests::record_issuance(
        &mut tx,
        parent_id,
        &issued.handle,
        now,
        issued.credentials_expire_at,
    )
    .await?;
    if requests::set_expiry(&mut tx, parent_id, new_expiry).await? == Fenced::Lost {
        // Keep the record of what was issued: the grant's teardown (due now) reaches it.
        tx.commit().await?;
        fail_extension(
            app,
            &ext,
            parent_id,
            "the grant ended while it was being extended",
            None,
        )
        .await?;
        return Ok(Outcome::Done);
    }
    requests::set_handle(&mut tx, parent_id, &issued.handle).await?;
    let _ = requests::end(&mut tx, ext_id, State::Approved, State::Applied, now, None).await?;
    if let Some(credentials) = &issued.credentials {
        let sealed = app.cipher.seal_secret(
            credentials.to_secret_json(),
            &store::credentials::aad(parent_id),
        );
        store::credentials::put(&mut tx, parent_id, &sealed, now).await?;
    }
    let grant = reload(&mut tx, parent_id).await.map_err(anyhow_of)?;
    if !store::jobs::reschedule(&mut tx, &keys::revoke(parent_id), new_expiry, now).await? {
        queue::enqueue(
            &mut tx,
            &Job::Revoke { request: parent_id },
            Placement::access_of(&grant, keys::revoke(parent_id)),
            new_expiry,
            now,
        )
        .await?;
    }
    let remind = remind_at(app, &grant, now, new_expiry);
    if !store::jobs::reschedule(&mut tx, &keys::remind(parent_id), remind, now).await? {
        queue::enqueue(
            &mut tx,
            &Job::Remind { request: parent_id },
            Placement::unique(keys::remind(parent_id)),
            remind,
            now,
        )
        .await?;
    }
    audit::record(
        &mut tx,
        now,
        Some(parent_id),
        actor::SYSTEM,
        &AuditEvent::Extended {
            extension: ext_id.0,
            expires_at: format_time(new_expiry),
        },
    )
    .await?;
    dm(
        &mut tx,
        &grant,
        blocks::extended_dm(&grant, new_expiry),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(Outcome::Done)
}

/// Ends an approved extension as failed. `presumed`: the failed call may have issued something
/// under this handle, which is recorded on the grant so its teardown reaches it.
async fn fail_extension(
    app: &App,
    ext: &Request,
    parent: RequestId,
    error: &str,
    presumed: Option<String>,
) -> anyhow::Result<()> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if let Some(handle) = &presumed {
        requests::record_issuance(&mut tx, parent, handle, now, None).await?;
        audit::record(
            &mut tx,
            now,
            Some(parent),
            actor::SYSTEM,
            &AuditEvent::GrantUncertain {
                handle: handle.clone(),
            },
        )
        .await?;
    }
    if requests::end(
        &mut tx,
        ext.id,
        State::Approved,
        State::Failed,
        now,
        Some(error),
    )
    .await?
        == Fenced::Lost
    {
        tx.commit().await?;
        return Ok(());
    }
    audit::record(
        &mut tx,
        now,
        Some(parent),
        actor::SYSTEM,
        &AuditEvent::ExtensionFailed {
            extension: ext.id.0,
            error: error.to_owned(),
        },
    )
    .await?;
    let failed = reload(&mut tx, ext.id).await.map_err(anyhow_of)?;
    update_approval_message(&mut tx, app, &failed, now).await?;
    dm(
        &mut tx,
        &failed,
        blocks::simple(format!(
            ":warning: Your extension {} could not be applied: {}",
            ext.id,
            crate::slack::text::escape_truncated(error, 500)
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------------

pub async fn run_remind(app: &App, id: RequestId) -> anyhow::Result<Outcome> {
    let Some(stored) = get(app, id).await? else {
        return Ok(Outcome::Done);
    };
    let request = stored.request;
    let (State::Active, Some(expires), Some(granted)) =
        (request.state, request.expires_at, request.granted_at)
    else {
        return Ok(Outcome::Done);
    };
    let now = app.clock.now();
    if now >= expires {
        return Ok(Outcome::Done);
    }
    let at = remind_at(app, &request, granted, expires);
    if now < at {
        return Ok(Outcome::RunAt(at));
    }
    let mut tx = app.store.begin_write().await?;
    audit::record(
        &mut tx,
        now,
        Some(id),
        actor::SYSTEM,
        &AuditEvent::Reminded {
            expires_at: format_time(expires),
        },
    )
    .await?;
    dm(
        &mut tx,
        &request,
        blocks::reminder_dm(&request, expires, now),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(Outcome::Done)
}

pub async fn run_pending_timeout(app: &App, id: RequestId) -> anyhow::Result<Outcome> {
    let Some(stored) = get(app, id).await? else {
        return Ok(Outcome::Done);
    };
    let request = &stored.request;
    if request.state != State::Pending {
        return Ok(Outcome::Done);
    }
    let now = app.clock.now();
    if let Some(until) = request.pending_until.filter(|u| now < *u) {
        return Ok(Outcome::RunAt(until));
    }
    let mut tx = app.store.begin_write().await?;
    if requests::decide(&mut tx, id, State::TimedOut, actor::SYSTEM, None, now).await?
        == Fenced::Lost
    {
        return Ok(Outcome::Done);
    }
    audit::record(
        &mut tx,
        now,
        Some(request.parent.unwrap_or(id)),
        actor::SYSTEM,
        &AuditEvent::TimedOut {
            extension: request.parent.map(|_| id.0),
        },
    )
    .await?;
    let timed_out = reload(&mut tx, id).await.map_err(anyhow_of)?;
    update_approval_message(&mut tx, app, &timed_out, now).await?;
    // A request whose approvers' message was refused never reached them: say so.
    let channel = app
        .policy
        .resource(request.resource.as_str())
        .and_then(|r| r.approvers.channel.clone())
        .or_else(|| request.approval_channel.clone());
    let undelivered = stored
        .delivery_failure
        .as_deref()
        .zip(channel.as_ref())
        .filter(|_| request.approval_ts.is_none());
    dm(
        &mut tx,
        &timed_out,
        blocks::timed_out_dm(&timed_out, undelivered),
        now,
    )
    .await?;
    let status = match undelivered {
        None => "expired without a decision".to_owned(),
        Some((code, channel)) => format!(
            "expired without a decision: it never reached the approvers, because {}",
            blocks::undeliverable(code, channel).0
        ),
    };
    super::identity::notify_owners(
        &mut tx,
        app,
        &timed_out,
        blocks::owner_dm(&timed_out, &status),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    app.metrics.request("timed_out");
    tracing::info!(request_id = id.0, "request timed out without a decision");
    Ok(Outcome::Done)
}
