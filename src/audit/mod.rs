//! Audit events: what happened, by whom, to which request.
//!
//! [`record`] appends an event to the hash-chained log (`store::audit`) inside the caller's
//! transaction and enqueues its post to the request's audit thread in the same transaction. If
//! the audit write fails, the whole action rolls back: the log never misses an action that
//! happened. Rows are keyed with the audit key the write transaction carries (see
//! `store::audit`); [`anchor`] posts the chain's head to the audit channel.

pub mod anchor;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::RequestId;
use crate::jobs::Job;
use crate::queue::{self, Placement};
use crate::store::{self, WriteTx};

/// Who did something, as stored in the `actor` column.
pub mod actor {
    /// The policy's auto-approval rules.
    pub const POLICY: &str = "policy";
    /// jit itself (timers, workers).
    pub const SYSTEM: &str = "jit";

    pub fn cli(os_user: &str) -> String {
        format!("cli:{os_user}")
    }
}

/// Every audit event. Names (`event`) are stable: exports and SIEM rules rely on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    Requested {
        kind: String,
        resource: String,
        duration: String,
        justification: String,
        #[serde(default)]
        ticket: Option<String>,
        via: String,
        #[serde(default)]
        extension: Option<i64>,
        /// A scheduled start (RFC 3339). Absent, not null, when access starts at approval, so
        /// the events of unscheduled requests read as they always did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<String>,
    },
    AutoApproved {
        #[serde(default)]
        extension: Option<i64>,
        /// The PagerDuty schedule the requester was on call in (`auto_approve.oncall`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_call: Option<String>,
    },
    /// One approval of several needed.
    Approval {
        count: u32,
        required: u32,
        #[serde(default)]
        extension: Option<i64>,
    },
    Approved {
        approvers: Vec<String>,
        #[serde(default)]
        extension: Option<i64>,
    },
    Denied {
        reason: String,
        #[serde(default)]
        extension: Option<i64>,
    },
    Cancelled {
        #[serde(default)]
        extension: Option<i64>,
    },
    TimedOut {
        #[serde(default)]
        extension: Option<i64>,
    },
    Nudged,
    /// An escalation step ran: the people it names may decide from now on, and a channel it
    /// names got the request too.
    Escalated {
        /// 1-based, in the resource's `escalate` order.
        step: u32,
        after: String,
        #[serde(default)]
        users: Vec<String>,
        #[serde(default)]
        groups: Vec<String>,
        #[serde(default)]
        channel: Option<String>,
        #[serde(default)]
        extension: Option<i64>,
    },
    Granted {
        expires_at: String,
        handle: String,
        credentials: bool,
    },
    GrantFailed {
        error: String,
        attempt: u32,
        last: bool,
    },
    /// At a scheduled start the policy no longer allows the grant (the requester lost the
    /// right, the resource was removed, …): nothing is issued.
    ActivationRefused {
        reason: String,
    },
    /// Issuing (or extending) failed in a way that may still have acted: the access is treated
    /// as issued under `handle` and revoked.
    GrantUncertain {
        handle: String,
    },
    Reminded {
        expires_at: String,
    },
    Extended {
        extension: i64,
        expires_at: String,
    },
    ExtensionFailed {
        extension: i64,
        error: String,
    },
    Released,
    Revoked {
        reason: String,
    },
    Expired,
    /// The provider confirmed the teardown (or it was skipped because the access is still held
    /// under other grants).
    TornDown {
        #[serde(default)]
        still_held_by: Vec<i64>,
        #[serde(default)]
        detail: Option<String>,
    },
    TeardownFailed {
        attempt: u32,
        error: String,
    },
    /// Loud: repeated teardown failures, mentioning the admins.
    TeardownAlert {
        attempts: u32,
        error: String,
    },
    /// Loud: the teardown ran, but the provider changed, could not check or found something
    /// people must look at (postgres: objects made through the granted roles during the grant,
    /// whose definer rights it stripped; okta_group: the member re-added by something outside
    /// jit, so the access may still be held).
    TeardownAttention {
        detail: String,
    },
    Breakglass {
        reason: String,
    },
    Reviewed {
        revoke: bool,
    },
    CredentialsRevealed,
    /// A reveal that showed nothing: Slack refused the window. `error` is Slack's error code.
    CredentialsRevealFailed {
        error: String,
    },
    CredentialsErased,
    CleanedUp {
        #[serde(default)]
        detail: Option<String>,
    },
    /// Loud: a job gave up.
    JobDead {
        job: String,
        error: String,
    },
    TokenCreated {
        identity: String,
        token_id: i64,
    },
    TokenRevoked {
        identity: String,
        token_id: i64,
    },
    /// A call to the HTTP API by a non-human identity.
    ApiCall {
        method: String,
        path: String,
        status: u16,
        token_id: i64,
    },
    /// Loud: a webhook has refused or missed events for a while (they wait, none is dropped).
    WebhookFailing {
        url: String,
        attempts: u32,
        error: String,
    },
}

impl AuditEvent {
    /// The family of the event for webhooks (`policy::EVENT_FAMILIES`): a webhook's event type
    /// is `family.name`, such as `grant.granted`.
    pub fn family(&self) -> &'static str {
        use AuditEvent::*;
        match self {
            Requested { .. }
            | AutoApproved { .. }
            | Approval { .. }
            | Approved { .. }
            | Denied { .. }
            | Cancelled { .. }
            | TimedOut { .. }
            | Nudged
            | Escalated { .. } => "request",
            Granted { .. }
            | GrantFailed { .. }
            | ActivationRefused { .. }
            | GrantUncertain { .. }
            | Reminded { .. }
            | Extended { .. }
            | ExtensionFailed { .. }
            | Released
            | Revoked { .. }
            | Expired
            | TornDown { .. }
            | TeardownFailed { .. }
            | TeardownAlert { .. }
            | TeardownAttention { .. }
            | Breakglass { .. }
            | Reviewed { .. }
            | CleanedUp { .. } => "grant",
            CredentialsRevealed | CredentialsRevealFailed { .. } | CredentialsErased => {
                "credentials"
            }
            TokenCreated { .. } | TokenRevoked { .. } => "token",
            ApiCall { .. } => "api",
            JobDead { .. } | WebhookFailing { .. } => "system",
        }
    }

    /// The stable event name.
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }

    /// The event's fields without the name.
    pub fn detail(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("event");
        }
        value
    }

    /// Reads back a stored event.
    pub fn from_row(event: &str, detail: &str) -> Option<AuditEvent> {
        let mut value: serde_json::Value = serde_json::from_str(detail).ok()?;
        value
            .as_object_mut()?
            .insert("event".into(), serde_json::Value::String(event.to_owned()));
        serde_json::from_value(value).ok()
    }

    /// Events that must reach people even if nobody reads the thread.
    pub fn is_alert(&self) -> bool {
        matches!(
            self,
            AuditEvent::TeardownAlert { .. }
                | AuditEvent::TeardownAttention { .. }
                | AuditEvent::JobDead { .. }
                | AuditEvent::WebhookFailing { .. }
                | AuditEvent::Breakglass { .. }
        )
    }
}

/// Appends `event` to the log without posting it to Slack (API calls, token changes: too
/// frequent or too detached from a request to deserve a thread reply).
pub async fn record_quietly(
    tx: &mut WriteTx,
    now: DateTime<Utc>,
    request: Option<RequestId>,
    actor: &str,
    event: &AuditEvent,
) -> sqlx::Result<i64> {
    store::audit::append(tx, now, request, actor, &event.name(), &event.detail()).await
}

/// Appends `event` and schedules its post to the audit thread. Returns the sequence number.
pub async fn record(
    tx: &mut WriteTx,
    now: DateTime<Utc>,
    request: Option<RequestId>,
    actor: &str,
    event: &AuditEvent,
) -> sqlx::Result<i64> {
    let seq = store::audit::append(tx, now, request, actor, &event.name(), &event.detail()).await?;
    let placement = Placement::audit_event(request, event.is_alert());
    queue::enqueue(tx, &Job::AuditPost { seq }, placement, now, now).await?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_into_name_and_detail_and_back() {
        let event = AuditEvent::Denied {
            reason: "not during the freeze".into(),
            extension: None,
        };
        assert_eq!(event.name(), "denied");
        assert_eq!(
            event.detail(),
            serde_json::json!({"reason": "not during the freeze", "extension": null})
        );
        let back = AuditEvent::from_row("denied", &event.detail().to_string()).unwrap();
        assert_eq!(back, event);
        assert_eq!(AuditEvent::Released.name(), "released");
        assert!(AuditEvent::from_row("nonsense", "{}").is_none());
    }
}
