//! Who is in which Slack user group, cached.
//!
//! The cache is filled at startup and refreshed in the background every few minutes. The
//! slash-command ack path only reads it. A click by someone the cache does not place in the
//! relevant groups triggers one refresh of those groups (bounded by a short timeout), so a new
//! member of an approver group can approve without waiting for the next refresh.
//!
//! **Fail closed.** Membership older than [`MAX_STALENESS`] (Slack unreachable for that long)
//! counts for nothing: it grants no approver or admin rights, no requester rights through a
//! group, and no auto-approval, until a refresh succeeds. [`Directory::stale`] lets callers
//! say so instead of a plain "you are not an approver".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::SharedClock;
use crate::domain::ids::{SlackGroupId, SlackUserId};
use crate::domain::policy::{Membership, Policy};
use crate::slack::api::SlackApi;

/// Groups are not refetched on a miss more often than this.
const MISS_REFRESH_AFTER: Duration = Duration::from_secs(30);

/// Membership read from Slack longer ago than this is no longer trusted (see the module docs).
/// Refreshes run every five minutes, so this is about six failed refreshes in a row.
pub const MAX_STALENESS: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
struct Cache {
    groups: HashMap<SlackGroupId, (HashSet<SlackUserId>, DateTime<Utc>)>,
}

#[derive(Clone)]
pub struct Directory {
    cache: Arc<RwLock<Cache>>,
    api: SlackApi,
    clock: SharedClock,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

/// Every user group the policy mentions.
pub fn groups_in(policy: &Policy) -> Vec<SlackGroupId> {
    let mut groups: HashSet<SlackGroupId> = policy.admins.groups.iter().cloned().collect();
    for r in policy.resources() {
        groups.extend(r.approvers.groups.iter().cloned());
        if let Some(p) = &r.requesters {
            groups.extend(p.groups.iter().cloned());
        }
        if let Some(a) = &r.auto_approve {
            groups.extend(a.who.groups.iter().cloned());
        }
    }
    for i in policy.identities() {
        groups.extend(i.owner.groups.iter().cloned());
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort();
    groups
}

impl Directory {
    pub fn new(api: SlackApi, clock: SharedClock) -> Self {
        Self {
            cache: Arc::new(RwLock::new(Cache::default())),
            api,
            clock,
        }
    }

    /// Fetches one group's members. Errors are logged and leave the previous answer in place.
    pub async fn refresh(&self, group: &SlackGroupId) -> bool {
        match self.api.group_members(group.as_str()).await {
            Ok(members) => {
                let members: HashSet<SlackUserId> = members
                    .iter()
                    .filter_map(|m| SlackUserId::parse(m).ok())
                    .collect();
                let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                cache
                    .groups
                    .insert(group.clone(), (members, self.clock.now()));
                true
            }
            Err(err) => {
                tracing::warn!(group = %group, error = %err, "cannot refresh user group members");
                false
            }
        }
    }

    pub async fn refresh_all(&self, groups: &[SlackGroupId]) {
        for group in groups {
            self.refresh(group).await;
        }
    }

    /// Before deciding a click: if the cache does not place `user` in any of `groups`, refetch
    /// the groups whose answer is older than 30 seconds (at most 2 seconds in all).
    pub async fn refresh_on_miss(&self, user: &SlackUserId, groups: &[SlackGroupId]) {
        if groups.is_empty() || groups.iter().any(|g| self.is_member(user, g)) {
            return;
        }
        let now = self.clock.now();
        let stale: Vec<SlackGroupId> = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            groups
                .iter()
                .filter(|g| {
                    cache.groups.get(*g).is_none_or(|(_, at)| {
                        (now - *at).to_std().unwrap_or_default() >= MISS_REFRESH_AFTER
                    })
                })
                .cloned()
                .collect()
        };
        let work = async {
            for g in &stale {
                self.refresh(g).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
    }

    /// Refreshes every group in `policy` now and then every `every`, until the task is dropped.
    pub async fn keep_fresh(self, groups: Vec<SlackGroupId>, every: Duration) {
        loop {
            self.refresh_all(&groups).await;
            tokio::time::sleep(every).await;
        }
    }
}

impl Directory {
    /// Which of `groups` jit has no trustworthy membership for: never read, or read longer ago
    /// than [`MAX_STALENESS`].
    pub fn stale(&self, groups: &[SlackGroupId]) -> Vec<SlackGroupId> {
        let now = self.clock.now();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .filter(|g| cache.groups.get(*g).is_none_or(|(_, at)| !fresh(now, *at)))
            .cloned()
            .collect()
    }
}

fn fresh(now: DateTime<Utc>, at: DateTime<Utc>) -> bool {
    (now - at).to_std().unwrap_or_default() <= MAX_STALENESS
}

impl Membership for Directory {
    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool {
        let now = self.clock.now();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .groups
            .get(group)
            .is_some_and(|(members, at)| fresh(now, *at) && members.contains(user))
    }
}
