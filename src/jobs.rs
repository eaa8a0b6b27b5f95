//! The work jit queues, one [`Job`] per kind, with how each is retried, its priority and where it
//! goes in the queue ([`Placement`]: one person's access to one resource is one lane; one Slack
//! channel's messages one chain). What runs each kind is the dispatch table beside the handlers,
//! `handlers::jobs`; the queue itself (`crate::queue`) knows none of this.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::domain::policy::Requester;
use crate::domain::request::Request;
use crate::queue::{JobSpec, Placement, RetryPolicy};
use crate::store::jobs;

/// Every kind of job, with its payload. The `kind` names are stable: they are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Job {
    /// Issue access for an approved request.
    #[serde(rename = "grant")]
    Grant { request: RequestId },
    /// Remove access (at expiry, or earlier when rescheduled).
    #[serde(rename = "revoke")]
    Revoke { request: RequestId },
    /// Apply an approved extension to its grant.
    #[serde(rename = "extend")]
    Extend { extension: RequestId },
    /// Deferred provider work after a revoke (e.g. lifting an AWS session deny).
    #[serde(rename = "cleanup")]
    Cleanup { request: RequestId },
    /// Remind the holder before expiry.
    #[serde(rename = "remind")]
    Remind { request: RequestId },
    /// Runs escalation step `step` (0-based) of a waiting request: a reminder, and with the
    /// step's `to`, more people who may decide. The default step 0 is the half-time nudge (a job
    /// queued before escalation existed carries no `step`: it is step 0).
    #[serde(rename = "nudge")]
    Nudge {
        request: RequestId,
        #[serde(default)]
        step: u32,
    },
    /// Expire an undecided request.
    #[serde(rename = "pending_timeout")]
    PendingTimeout { request: RequestId },
    /// Post or update the approvers' message to match the request's state.
    #[serde(rename = "slack.approval")]
    ApprovalMessage { request: RequestId },
    /// Remind the approvers in the approval message's thread; with `step` (1-based: the
    /// escalation that brought the request to that many steps), mention whom that step added.
    #[serde(rename = "slack.nudge")]
    ApprovalNudge {
        request: RequestId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
    },
    /// Post a copy of the approval message (a DM to `user`, or a post in `channel`), or update
    /// the copy already posted to the request's current state.
    #[serde(rename = "slack.approval_copy")]
    ApprovalCopy {
        request: RequestId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<SlackUserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<SlackChannelId>,
    },
    /// Send the request as a DM to each approver (`step` 0), or to the people escalation step
    /// `step` (1-based) added: resolves groups off the ack path, then queues one
    /// [`Job::ApprovalCopy`] per person.
    #[serde(rename = "slack.approver_dms")]
    ApproverDms { request: RequestId, step: u32 },
    /// Post one audit event in its request's audit thread (or the audit channel).
    #[serde(rename = "slack.audit")]
    AuditPost { seq: i64 },
    /// Post the audit chain's head to the audit channel if rows were appended since the last
    /// anchor, then come back after the anchor interval: one live job (`audit::anchor`).
    #[serde(rename = "slack.audit_anchor")]
    AuditAnchor,
    /// A direct message. Never carries secrets.
    #[serde(rename = "slack.dm")]
    Dm {
        user: SlackUserId,
        text: String,
        #[serde(default)]
        blocks: Option<serde_json::Value>,
    },
    /// A message only `user` sees in `channel`.
    #[serde(rename = "slack.ephemeral")]
    Ephemeral {
        channel: SlackChannelId,
        user: SlackUserId,
        text: String,
    },
    /// Refresh a user's App Home.
    #[serde(rename = "slack.home")]
    Home { user: SlackUserId },
    /// Sends the audit events a webhook has not acknowledged yet, in order, then comes back:
    /// one live job per webhook (`crate::webhooks`).
    #[serde(rename = "webhook.deliver")]
    Webhook { url: String },
    /// Does nothing: measures the queue itself (`jit bench queue`).
    #[serde(rename = "noop")]
    Noop,
}

impl JobSpec for Job {
    fn kind(&self) -> &'static str {
        match self {
            Job::Grant { .. } => "grant",
            Job::Revoke { .. } => "revoke",
            Job::Extend { .. } => "extend",
            Job::Cleanup { .. } => "cleanup",
            Job::Remind { .. } => "remind",
            Job::Nudge { .. } => "nudge",
            Job::PendingTimeout { .. } => "pending_timeout",
            Job::ApprovalMessage { .. } => "slack.approval",
            Job::ApprovalNudge { .. } => "slack.nudge",
            Job::ApprovalCopy { .. } => "slack.approval_copy",
            Job::ApproverDms { .. } => "slack.approver_dms",
            Job::AuditPost { .. } => "slack.audit",
            Job::AuditAnchor => "slack.audit_anchor",
            Job::Dm { .. } => "slack.dm",
            Job::Ephemeral { .. } => "slack.ephemeral",
            Job::Home { .. } => "slack.home",
            Job::Webhook { .. } => "webhook.deliver",
            Job::Noop => "noop",
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        let secs = Duration::from_secs;
        match self {
            Job::Revoke { .. } => RetryPolicy {
                max_attempts: None,
                base: secs(2),
                cap: secs(300),
            },
            // Never buried: the handlers give up on the provider after
            // `handlers::grant::GRANT_ATTEMPTS` and record the outcome themselves (with the
            // compensating revoke of a grant that may have acted); a database fault in between
            // must not drop that.
            Job::Grant { .. } | Job::Extend { .. } => RetryPolicy {
                max_attempts: None,
                base: secs(2),
                cap: secs(120),
            },
            // Never buried: the job is the anchor schedule itself.
            // Never buried: the job is the webhook's delivery stream; nothing it carries may be
            // dropped. It alerts after repeated failure (`crate::webhooks`).
            Job::Webhook { .. } => RetryPolicy {
                max_attempts: None,
                base: secs(2),
                cap: secs(300),
            },
            Job::AuditAnchor => RetryPolicy {
                max_attempts: None,
                base: secs(5),
                cap: secs(900),
            },
            Job::Cleanup { .. } => RetryPolicy {
                max_attempts: Some(30),
                base: secs(30),
                cap: secs(3600),
            },
            Job::Remind { .. } | Job::Nudge { .. } | Job::PendingTimeout { .. } | Job::Noop => {
                RetryPolicy {
                    max_attempts: Some(10),
                    base: secs(2),
                    cap: secs(60),
                }
            }
            Job::ApprovalMessage { .. }
            | Job::ApprovalNudge { .. }
            | Job::ApprovalCopy { .. }
            | Job::ApproverDms { .. }
            | Job::AuditPost { .. }
            | Job::Dm { .. }
            | Job::Ephemeral { .. }
            | Job::Home { .. } => RetryPolicy {
                max_attempts: Some(15),
                base: secs(2),
                cap: secs(600),
            },
        }
    }

    /// Access changes first: a backlog of messages never delays a teardown.
    fn priority(&self) -> u8 {
        match self {
            Job::Revoke { .. } | Job::Grant { .. } | Job::Extend { .. } | Job::Cleanup { .. } => {
                crate::store::jobs::PRIORITY_ACCESS
            }
            _ => crate::store::jobs::PRIORITY_MESSAGES,
        }
    }

    fn request(&self) -> Option<i64> {
        self.request_id().map(|r| r.0)
    }
}

impl Job {
    /// The request this job is about, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Job::Grant { request }
            | Job::Revoke { request }
            | Job::Cleanup { request }
            | Job::Remind { request }
            | Job::Nudge { request, .. }
            | Job::PendingTimeout { request }
            | Job::ApprovalMessage { request }
            | Job::ApprovalNudge { request, .. }
            | Job::ApprovalCopy { request, .. }
            | Job::ApproverDms { request, .. } => Some(*request),
            Job::Extend { extension } => Some(*extension),
            Job::AuditPost { .. }
            | Job::AuditAnchor
            | Job::Webhook { .. }
            | Job::Dm { .. }
            | Job::Ephemeral { .. }
            | Job::Home { .. }
            | Job::Noop => None,
        }
    }
}

/// The lane of the messages to a Slack channel. The audit channel's lane is `slack:audit`
/// whatever is posted there, so when approvers share the audit channel their messages and the
/// audit posts form one chain and spend one pace in chain order.
pub fn channel_lane(channel: &SlackChannelId, audit_channel: &SlackChannelId) -> String {
    if channel == audit_channel {
        AUDIT_LANE.to_owned()
    } else {
        format!("slack:{channel}")
    }
}

const AUDIT_LANE: &str = "slack:audit";

/// jit's placements.
impl Placement {
    /// Messages to one Slack channel: one at a time, in order. Slack paces posting per channel,
    /// so a channel's messages wait their turn in the lane instead of being retried in a crowd,
    /// and a request's messages in that channel (its audit thread) keep their order.
    pub fn channel(channel: &SlackChannelId) -> Self {
        Self::chain(format!("slack:{channel}"))
    }

    /// The audit channel's messages (one audit channel per policy).
    pub fn audit() -> Self {
        Self::chain(AUDIT_LANE.into())
    }

    /// The post of one audit event: in its request's thread, whose posts keep their order (and
    /// may be carried by one reply, see `handlers::notify::audit_post`), or at the top of the
    /// channel. Alerts go ahead of the channel's other waiting posts (after the earlier events
    /// of their own request, which their thread shows first).
    pub fn audit_event(request: Option<RequestId>, alert: bool) -> Self {
        Self {
            urgent: alert,
            chain_key: request.map(audit_thread_key),
            ..Self::audit()
        }
    }

    /// The approvers' message about a request of `requester` in `channel` (its post, updates
    /// and nudges): ahead of audit posts in the same channel, and taking turns with other
    /// requesters, so a few people with many requests cannot hold everyone else's back.
    pub fn approval(
        channel: &SlackChannelId,
        audit_channel: &SlackChannelId,
        requester: &Requester,
    ) -> Self {
        Self {
            urgent: true,
            chain_key: Some(format!("approvals:{}", requester.key())),
            ..Self::chain(channel_lane(channel, audit_channel))
        }
    }

    /// Direct messages to one person, in order.
    pub fn dm(user: &SlackUserId) -> Self {
        Self::chain(format!("dm:{user}"))
    }

    /// Provider calls for one person's access to one resource: never concurrent.
    pub fn access_of(request: &Request, unique_key: String) -> Self {
        Self {
            unique_key: Some(unique_key),
            lane: Some(access_lane(request)),
            ..Self::default()
        }
    }
}

pub fn access_lane(request: &Request) -> String {
    format!("access:{}:{}", request.resource, request.requester.key())
}

/// The chain key of one request's audit posts.
fn audit_thread_key(request: RequestId) -> String {
    format!("audit:{}", request.0)
}

/// The audit posts of `request` waiting in the audit chain behind the one running, oldest
/// first, as (job id, audit seq), up to `limit`; it stops at a job it cannot read.
pub async fn waiting_audit_posts(
    conn: &mut crate::store::Conn,
    request: RequestId,
    limit: u32,
) -> sqlx::Result<Vec<(i64, i64)>> {
    let rows = jobs::waiting_in_chain(conn, AUDIT_LANE, &audit_thread_key(request), limit).await?;
    Ok(rows
        .into_iter()
        .map_while(|(id, payload)| match serde_json::from_str(&payload) {
            Ok(Job::AuditPost { seq }) => Some((id, seq)),
            _ => None,
        })
        .collect())
}

/// Marks the waiting jobs `ids` done: a running job of their chain did their work (one reply
/// carrying several audit events). Returns how many were still waiting.
pub async fn complete_carried(
    conn: &mut crate::store::Conn,
    ids: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    jobs::complete_waiting(conn, ids, now).await
}

/// How many jobs wait in the audit chain behind its head, counting up to `at_most`.
pub async fn audit_backlog(conn: &mut crate::store::Conn, at_most: u32) -> sqlx::Result<u32> {
    jobs::chain_backlog(conn, AUDIT_LANE, at_most).await
}

/// Unique keys, in one place.
pub mod keys {
    use crate::domain::ids::RequestId;

    pub fn grant(id: RequestId) -> String {
        format!("grant:{}", id.0)
    }
    pub fn revoke(id: RequestId) -> String {
        format!("revoke:{}", id.0)
    }
    pub fn extend(id: RequestId) -> String {
        format!("extend:{}", id.0)
    }
    pub fn cleanup(id: RequestId) -> String {
        format!("cleanup:{}", id.0)
    }
    pub fn remind(id: RequestId) -> String {
        format!("remind:{}", id.0)
    }
    /// Escalation step `step` (0-based) of a request; step 0 keeps the key of the half-time
    /// nudge it replaces, so a queue from before escalation holds one live job per step too.
    pub fn nudge(id: RequestId, step: u32) -> String {
        match step {
            0 => format!("nudge:{}", id.0),
            n => format!("nudge:{}:{n}", id.0),
        }
    }
    /// The DM copy of a request for one approver.
    pub fn approval_copy(id: RequestId, user: &str) -> String {
        format!("approval-copy:{}:{user}", id.0)
    }
    pub fn pending_timeout(id: RequestId) -> String {
        format!("pending_timeout:{}", id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_and_round_trip() {
        let job = Job::Revoke {
            request: RequestId(7),
        };
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(json, r#"{"kind":"revoke","request":7}"#);
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), job);
        assert!(serde_json::from_str::<Job>(r#"{"kind":"mystery"}"#).is_err());
        let anchor = serde_json::to_string(&Job::AuditAnchor).unwrap();
        assert_eq!(anchor, r#"{"kind":"slack.audit_anchor"}"#);
        assert_eq!(Job::AuditAnchor.kind(), "slack.audit_anchor");
        assert_eq!(
            serde_json::from_str::<Job>(&anchor).unwrap(),
            Job::AuditAnchor
        );
        assert_eq!(Job::AuditAnchor.retry_policy().max_attempts, None);
    }

    #[test]
    fn a_nudge_queued_before_escalation_is_step_0() {
        let legacy: Job = serde_json::from_str(r#"{"kind":"nudge","request":7}"#).unwrap();
        assert_eq!(
            legacy,
            Job::Nudge {
                request: RequestId(7),
                step: 0
            }
        );
        assert_eq!(keys::nudge(RequestId(7), 0), "nudge:7");
        assert_eq!(keys::nudge(RequestId(7), 2), "nudge:7:2");
        let old: Job = serde_json::from_str(r#"{"kind":"slack.nudge","request":7}"#).unwrap();
        assert_eq!(
            old,
            Job::ApprovalNudge {
                request: RequestId(7),
                step: None
            }
        );
        let copy = Job::ApprovalCopy {
            request: RequestId(7),
            user: Some(SlackUserId::parse("U0ALICE").unwrap()),
            channel: None,
        };
        let json = serde_json::to_string(&copy).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"slack.approval_copy","request":7,"user":"U0ALICE"}"#
        );
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), copy);
    }
}
