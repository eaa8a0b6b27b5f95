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
//!
//! **Who people are.** The directory also holds the workspace jit serves (from
//! `JIT_SLACK_TEAM_ID`, or `auth.test` at startup) and every user of it (`users.list`, with the
//! refresh), so the ack path can tell a member from a guest or from someone of another workspace
//! without a call to Slack ([`Membership::standing`]). Someone not in the list yet is looked up
//! in the background (`users.info`) and treated as an outsider until then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::SharedClock;
use crate::domain::ids::{SlackGroupId, SlackUserId};
use crate::domain::policy::{Membership, OnCall, Policy, Standing};
use crate::oncall::OnCallCache;
use crate::slack::api::{SlackApi, UserFacts, WorkspaceInfo};

/// Groups are not refetched on a miss more often than this.
const MISS_REFRESH_AFTER: Duration = Duration::from_secs(30);

/// Membership read from Slack longer ago than this is no longer trusted (see the module docs).
/// Refreshes run every five minutes, so this is about six failed refreshes in a row.
pub const MAX_STALENESS: Duration = Duration::from_secs(30 * 60);

#[derive(Default)]
struct Cache {
    groups: HashMap<SlackGroupId, (HashSet<SlackUserId>, DateTime<Utc>)>,
    users: HashMap<SlackUserId, UserFacts>,
    users_loaded: bool,
    workspace: Option<WorkspaceInfo>,
    /// Users being looked up in the background, so a burst of requests asks once.
    looking_up: HashSet<SlackUserId>,
}

/// Why a Slack delivery from elsewhere is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    /// jit has not learned its own workspace yet (`auth.test` has not answered).
    NotYet,
    /// From another workspace (or organisation) than the one jit serves.
    Elsewhere,
}

#[derive(Clone)]
pub struct Directory {
    cache: Arc<RwLock<Cache>>,
    api: SlackApi,
    clock: SharedClock,
    /// Who is on call (`auto_approve.oncall`), matched by the profile emails held here.
    oncall: Option<OnCallCache>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

impl Directory {
    /// `user`'s UTC offset in seconds from their cached Slack profile, if jit has read it (the
    /// ack path never asks Slack; an unknown user is looked up in the background).
    pub fn tz_offset(&self, user: &SlackUserId) -> Option<i32> {
        let offset = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            cache.users.get(user).map(|facts| facts.tz_offset)
        };
        match offset {
            Some(offset) => offset,
            None => {
                self.learn_user(user);
                None
            }
        }
    }
}

/// Every user group the policy mentions.
pub fn groups_in(policy: &Policy) -> Vec<SlackGroupId> {
    let mut groups: HashSet<SlackGroupId> = policy.admins.groups.iter().cloned().collect();
    for r in policy.resources() {
        groups.extend(r.all_decider_groups());
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
            oncall: None,
        }
    }

    /// Answers [`Membership::on_call`] from `cache`.
    pub fn with_oncall(mut self, cache: OnCallCache) -> Self {
        self.oncall = Some(cache);
        self
    }

    pub fn oncall(&self) -> Option<&OnCallCache> {
        self.oncall.as_ref()
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

    /// Learns the workspace (once), then every user and every group in `groups`.
    pub async fn refresh_all(&self, groups: &[SlackGroupId]) {
        self.learn_workspace().await;
        self.refresh_users().await;
        for group in groups {
            self.refresh(group).await;
        }
    }

    /// Serves the given workspace (`JIT_SLACK_TEAM_ID`) without asking `auth.test`.
    pub fn set_workspace(&self, workspace: WorkspaceInfo) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .workspace = Some(workspace);
    }

    /// Whether jit knows its workspace and has read its users once (readiness).
    pub fn ready(&self) -> bool {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.workspace.is_some() && cache.users_loaded
    }

    /// Forgets the workspace, as before `auth.test` first answers (tests).
    pub fn forget_workspace(&self) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .workspace = None;
    }

    pub fn workspace(&self) -> Option<WorkspaceInfo> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .workspace
            .clone()
    }

    async fn learn_workspace(&self) {
        if self.workspace().is_some() {
            return;
        }
        match self.api.workspace_info().await {
            Ok(workspace) => {
                tracing::info!(team = %workspace.team_id, enterprise = ?workspace.enterprise_id, "serving this Slack workspace");
                self.set_workspace(workspace);
            }
            Err(err) => tracing::warn!(
                error = %err,
                "cannot learn the Slack workspace (auth.test); Slack requests are refused until it answers (or set JIT_SLACK_TEAM_ID)"
            ),
        }
    }

    /// Reloads every user of the workspace. Errors leave the previous list in place.
    pub async fn refresh_users(&self) {
        match self.api.all_users().await {
            Ok(users) => {
                let users: HashMap<SlackUserId, UserFacts> = users
                    .into_iter()
                    .filter_map(|u| SlackUserId::parse(&u.id).ok().map(|id| (id, u)))
                    .collect();
                let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                cache.users = users;
                cache.users_loaded = true;
            }
            Err(err) => tracing::warn!(error = %err, "cannot refresh the users of the workspace"),
        }
    }

    /// Whether a delivery stamped with `team` (and `enterprise`) comes from the workspace jit
    /// serves. With an org-wide (Enterprise Grid) install, any workspace of the organisation.
    pub fn serves(&self, team: Option<&str>, enterprise: Option<&str>) -> Result<(), NotServed> {
        let Some(ours) = self.workspace() else {
            return Err(NotServed::NotYet);
        };
        let same = if ours.enterprise_install {
            enterprise.is_some() && enterprise == ours.enterprise_id.as_deref()
        } else {
            team == Some(ours.team_id.as_str())
        };
        if same {
            Ok(())
        } else {
            Err(NotServed::Elsewhere)
        }
    }

    /// Looks `user` up with `users.info` in the background (not in the ack path), once.
    fn learn_user(&self, user: &SlackUserId) {
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            if !cache.looking_up.insert(user.clone()) {
                return;
            }
        }
        let this = self.clone();
        let user = user.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let facts = this.api.user_facts(user.as_str()).await;
            let mut cache = this.cache.write().unwrap_or_else(|e| e.into_inner());
            cache.looking_up.remove(&user);
            match facts {
                Ok(Some(facts)) => {
                    cache.users.insert(user, facts);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(user = %user, error = %err, "cannot look up a Slack user")
                }
            }
        });
    }

    /// Before deciding a click: if the cache does not place `user` in any of `groups`, refetch
    /// the groups whose answer is older than 30 seconds (at most 2 seconds in all).
    pub async fn refresh_on_miss(&self, user: &SlackUserId, groups: &[SlackGroupId]) {
        if groups.is_empty() || groups.iter().any(|g| self.is_member(user, g)) {
            return;
        }
        // Someone new to jit: learn who they are first (a click may wait; a command may not).
        let known = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .contains_key(user);
        if !known
            && let Ok(Ok(Some(facts))) =
                tokio::time::timeout(Duration::from_secs(2), self.api.user_facts(user.as_str()))
                    .await
        {
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .users
                .insert(user.clone(), facts);
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
    /// The members of `group` jit knows, if its membership is fresh (see [`MAX_STALENESS`]);
    /// sorted. Nobody for a group never read or read too long ago: it grants nothing then.
    pub fn members(&self, group: &SlackGroupId) -> Vec<SlackUserId> {
        let now = self.clock.now();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let mut members: Vec<SlackUserId> = cache
            .groups
            .get(group)
            .filter(|(_, at)| fresh(now, *at))
            .map(|(m, _)| m.iter().cloned().collect())
            .unwrap_or_default();
        members.sort();
        members
    }

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
    fn standing(&self, user: &SlackUserId) -> Standing {
        let standing = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            match cache.users.get(user) {
                None => None,
                Some(facts) if facts.deleted => Some(Standing::Unknown),
                Some(facts) if facts.guest => Some(Standing::Guest),
                Some(facts) => match &cache.workspace {
                    Some(ours)
                        if !ours.enterprise_install
                            && facts.team_id.as_deref().is_some_and(|t| t != ours.team_id) =>
                    {
                        Some(Standing::External)
                    }
                    _ => Some(Standing::Member),
                },
            }
        };
        standing.unwrap_or_else(|| {
            self.learn_user(user);
            Standing::Unknown
        })
    }

    fn on_call(&self, user: &SlackUserId, schedules: &[String]) -> OnCall {
        let Some(oncall) = &self.oncall else {
            return OnCall::Unknown {
                why: "no on-call source is configured".into(),
            };
        };
        let email = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .get(user)
            .and_then(|facts| facts.email.clone());
        oncall.lookup(email.as_deref(), schedules)
    }

    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool {
        let now = self.clock.now();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .groups
            .get(group)
            .is_some_and(|(members, at)| fresh(now, *at) && members.contains(user))
    }
}
