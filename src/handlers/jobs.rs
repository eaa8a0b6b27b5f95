//! The dispatch table: which handler runs each kind of [`Job`], and the alert when one gives up.
//! It registers jit's jobs with the generic queue (`queue::worker::Runner`), which calls nothing
//! above itself. Also the entry points that run jit's worker ([`run`], [`run_due`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{grant, notify};
use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::jobs::Job;
use crate::queue::worker::{self, JobCtx, Outcome, Runner};
use crate::store::WriteTx;

/// Runs jit's jobs with the app's services.
pub struct Dispatch {
    pub app: Arc<App>,
}

impl Runner for Dispatch {
    type Job = Job;

    async fn run(&self, job: &Job, ctx: JobCtx) -> anyhow::Result<Outcome> {
        let app = self.app.as_ref();
        match job {
            Job::Grant { request } => grant::run_grant(app, *request, ctx).await,
            Job::Revoke { request } => grant::run_revoke(app, *request, ctx).await,
            Job::Extend { extension } => grant::run_extend(app, *extension, ctx).await,
            Job::Cleanup { request } => grant::run_cleanup(app, *request, ctx).await,
            Job::Remind { request } => grant::run_remind(app, *request).await,
            Job::Nudge { request, step } => super::escalation::run_step(app, *request, *step).await,
            Job::PendingTimeout { request } => grant::run_pending_timeout(app, *request).await,
            Job::ApprovalMessage { request } => notify::approval_message(app, ctx, *request).await,
            Job::AuditPost { seq } => notify::audit_post(app, ctx, *seq).await,
            Job::AuditAnchor => notify::audit_anchor(app, ctx).await,
            Job::Dm { user, text, blocks } => {
                notify::dm(app, ctx, user, text, blocks.as_ref()).await
            }
            Job::Ephemeral {
                channel,
                user,
                text,
            } => notify::ephemeral(app, channel, user, text).await,
            Job::Home { user } => notify::home(app, user).await,
            Job::ApprovalNudge { request, step } => {
                notify::approval_nudge(app, ctx, *request, *step).await
            }
            Job::ApprovalCopy {
                request,
                user,
                channel,
            } => notify::approval_copy(app, ctx, *request, user.as_ref(), channel.as_ref()).await,
            Job::ApproverDms { request, step } => notify::approver_dms(app, *request, *step).await,
            Job::Webhook { url } => crate::webhooks::deliver(app, ctx, url).await,
            Job::Noop => Ok(Outcome::Done),
        }
    }

    async fn buried(
        &self,
        tx: &mut WriteTx,
        job: Option<&Job>,
        kind: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let event = AuditEvent::JobDead {
            job: kind.to_owned(),
            error: error.to_owned(),
        };
        match job {
            // A failed audit post must not post another audit message about itself forever:
            // record the event without posting it.
            Some(Job::AuditPost { .. }) | None => {
                crate::store::audit::append(
                    tx,
                    now,
                    None,
                    audit::actor::SYSTEM,
                    &event.name(),
                    &event.detail(),
                )
                .await?;
            }
            // Other Slack messages: alert at the top of the audit channel, not in the (possibly
            // broken) request thread.
            Some(
                Job::Dm { .. }
                | Job::Ephemeral { .. }
                | Job::ApprovalMessage { .. }
                | Job::ApprovalNudge { .. }
                | Job::ApprovalCopy { .. }
                | Job::ApproverDms { .. }
                | Job::Home { .. }
                | Job::Webhook { .. },
            ) => {
                audit::record(tx, now, None, audit::actor::SYSTEM, &event).await?;
            }
            Some(Job::Noop) => {}
            Some(other) => {
                audit::record(tx, now, other.request_id(), audit::actor::SYSTEM, &event).await?;
            }
        }
        Ok(())
    }
}

/// jit's worker loop (see [`worker::run`]), until `shutdown` turns true.
pub async fn run(app: Arc<App>, shutdown: watch::Receiver<bool>) {
    let env = app.worker_env();
    worker::run(env, Arc::new(Dispatch { app }), shutdown).await
}

/// Runs every job due now, one after another (tests and the demo drive time with it).
pub async fn run_due(app: &Arc<App>) -> anyhow::Result<usize> {
    let dispatch = Dispatch { app: app.clone() };
    worker::run_due(&app.worker_env(), &dispatch).await
}

/// At startup: puts back the jobs a dead process left running (see [`worker::recover`]).
pub async fn recover(app: &App) -> anyhow::Result<u64> {
    worker::recover(&app.worker_env()).await
}

/// Wakes this replica's worker when another replica commits (see [`worker::listen_for_wakes`]).
pub async fn listen_for_wakes(app: Arc<App>) {
    worker::listen_for_wakes(app.worker_env()).await
}
