//! The request state machine.
//!
//! ```text
//! pending ──approve──▶ approved ──issue──▶ active ──expire / release / revoke──▶ expired / released / revoked
//!    │                    │  └─fail──▶ failed
//!    │                    ├─release / revoke (before issue)──▶ released / revoked
//!    │                    └─cancel (an access request scheduled to start later, before its start)──▶ cancelled
//!    └─deny / cancel / time out──▶ denied / cancelled / timed_out
//! extension: pending ──approve──▶ approved ──apply──▶ applied   (or ──fail──▶ failed)
//! ```
//!
//! [`transition`] is the only place that decides what may follow what. The store applies the
//! result with an update fenced on the expected state, so a lost race is seen, not repeated.

use std::fmt;

use chrono::{DateTime, Utc};

use super::duration::GrantDuration;
use super::ids::{RequestId, ResourceId, SlackChannelId};
use super::policy::Requester;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Approved,
    Active,
    Expired,
    Released,
    Revoked,
    Denied,
    Cancelled,
    TimedOut,
    Failed,
    /// An extension whose time was added to its grant.
    Applied,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Pending,
        State::Approved,
        State::Active,
        State::Expired,
        State::Released,
        State::Revoked,
        State::Denied,
        State::Cancelled,
        State::TimedOut,
        State::Failed,
        State::Applied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Active => "active",
            State::Expired => "expired",
            State::Released => "released",
            State::Revoked => "revoked",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed_out",
            State::Failed => "failed",
            State::Applied => "applied",
        }
    }

    pub fn parse(value: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Approved | State::Active)
    }

    /// Words for people.
    pub fn label(self) -> &'static str {
        match self {
            State::Pending => "waiting for approval",
            State::Approved => "approved, being issued",
            State::Active => "active",
            State::Expired => "expired",
            State::Released => "released",
            State::Revoked => "revoked",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::TimedOut => "expired without a decision",
            State::Failed => "failed",
            State::Applied => "added to the grant",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A normal request for access.
    Access,
    /// More time on an active grant; linked to it by `parent`.
    Extension,
    /// Emergency access, granted at once and reviewed afterwards.
    Breakglass,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Extension => "extension",
            Kind::Breakglass => "breakglass",
        }
    }

    pub fn parse(value: &str) -> Option<Kind> {
        [Kind::Access, Kind::Extension, Kind::Breakglass]
            .into_iter()
            .find(|k| k.as_str() == value)
    }

    /// Whether requests of this kind are provisioned themselves (extensions are not).
    pub fn issues_access(self) -> bool {
        !matches!(self, Kind::Extension)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Approve,
    Deny,
    Cancel,
    TimeOut,
    Issue,
    Apply,
    Fail,
    Expire,
    Release,
    Revoke,
}

impl Transition {
    pub const ALL: [Transition; 10] = [
        Transition::Approve,
        Transition::Deny,
        Transition::Cancel,
        Transition::TimeOut,
        Transition::Issue,
        Transition::Apply,
        Transition::Fail,
        Transition::Expire,
        Transition::Release,
        Transition::Revoke,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} request that is {from} cannot be {transition:?}d")]
pub struct IllegalTransition {
    pub kind: &'static str,
    pub from: State,
    pub transition: Transition,
}

/// The state that follows `from` under `transition`, or why it cannot happen.
pub fn transition(kind: Kind, from: State, t: Transition) -> Result<State, IllegalTransition> {
    use State::*;
    use Transition::*;
    let next = match (from, t) {
        (Pending, Approve) => Some(Approved),
        (Pending, Deny) => Some(Denied),
        (Pending, Cancel) => Some(Cancelled),
        (Pending, TimeOut) => Some(TimedOut),
        (Approved, Issue) if kind.issues_access() => Some(Active),
        (Approved, Apply) if !kind.issues_access() => Some(Applied),
        (Approved, Fail) => Some(Failed),
        // A scheduled start that has not come yet: the handler checks the time.
        (Approved, Cancel) if kind == Kind::Access => Some(Cancelled),
        (Approved, Release) if kind.issues_access() => Some(Released),
        (Approved, Revoke) if kind.issues_access() => Some(Revoked),
        (Active, Expire) if kind.issues_access() => Some(Expired),
        (Active, Release) if kind.issues_access() => Some(Released),
        (Active, Revoke) if kind.issues_access() => Some(Revoked),
        _ => None,
    };
    next.ok_or(IllegalTransition {
        kind: kind.as_str(),
        from,
        transition: t,
    })
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub kind: Kind,
    /// For an extension: the grant it extends.
    pub parent: Option<RequestId>,
    pub requester: Requester,
    pub resource: ResourceId,
    pub duration: GrantDuration,
    pub justification: String,
    pub ticket: Option<String>,
    pub state: State,
    pub approvals_required: u32,
    pub created_at: DateTime<Utc>,
    /// A scheduled start: access is issued then (not at approval), and lasts `duration` from it.
    pub start_at: Option<DateTime<Utc>>,
    pub pending_until: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    /// `policy`, `breakglass`, or Slack user IDs separated by commas.
    pub decided_by: Option<String>,
    pub decision_note: Option<String>,
    pub granted_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When the provider confirmed the teardown.
    pub revoked_at: Option<DateTime<Utc>>,
    pub failure: Option<String>,
    pub approval_channel: Option<SlackChannelId>,
    pub approval_ts: Option<String>,
    pub audit_ts: Option<String>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<DateTime<Utc>>,
}

impl Request {
    /// The scheduled start, while it is still ahead at `now`.
    pub fn starts_later(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.start_at.filter(|s| *s > now)
    }

    /// Time left in the grant at `now`, if it is active.
    pub fn remaining(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        match (self.state, self.expires_at) {
            (State::Active, Some(expires)) if expires > now => Some(expires - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_paths() {
        use State::*;
        use Transition::*;
        let access = [
            (Pending, Approve, Approved),
            (Pending, Deny, Denied),
            (Pending, Cancel, Cancelled),
            (Pending, TimeOut, TimedOut),
            (Approved, Issue, Active),
            (Approved, Fail, Failed),
            (Approved, Release, Released),
            (Approved, Revoke, Revoked),
            (Active, Expire, Expired),
            (Active, Release, Released),
            (Active, Revoke, Revoked),
        ];
        for kind in [Kind::Access, Kind::Breakglass] {
            for (from, t, to) in access {
                assert_eq!(transition(kind, from, t), Ok(to), "{kind:?} {from} {t:?}");
            }
        }
        // Only an access request can be scheduled, so only it is cancelled once approved.
        assert_eq!(transition(Kind::Access, Approved, Cancel), Ok(Cancelled));
        assert!(transition(Kind::Breakglass, Approved, Cancel).is_err());
        assert!(transition(Kind::Extension, Approved, Cancel).is_err());
        for (from, t, to) in [
            (Pending, Approve, Approved),
            (Pending, Deny, Denied),
            (Pending, Cancel, Cancelled),
            (Pending, TimeOut, TimedOut),
            (Approved, Apply, Applied),
            (Approved, Fail, Failed),
        ] {
            assert_eq!(transition(Kind::Extension, from, t), Ok(to));
        }
    }

    /// Every pair not listed above is refused: checked exhaustively.
    #[test]
    fn every_other_transition_is_illegal() {
        let mut legal = 0;
        for kind in [Kind::Access, Kind::Extension, Kind::Breakglass] {
            for from in State::ALL {
                for t in Transition::ALL {
                    match transition(kind, from, t) {
                        Ok(to) => {
                            legal += 1;
                            assert!(!from.is_final(), "{from} is final but {t:?} leads to {to}");
                            assert_ne!(from, to);
                        }
                        Err(e) => {
                            assert_eq!(e.from, from);
                            assert!(e.to_string().contains(from.as_str()));
                        }
                    }
                }
            }
        }
        assert_eq!(
            legal,
            12 + 11 + 6,
            "the legal paths are exactly those listed"
        );
    }

    #[test]
    fn final_states_have_no_way_out() {
        for from in State::ALL.into_iter().filter(|s| s.is_final()) {
            for t in Transition::ALL {
                assert!(transition(Kind::Access, from, t).is_err());
            }
        }
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("nonsense"), None);
    }
}
