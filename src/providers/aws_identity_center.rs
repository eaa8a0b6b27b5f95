//! `aws_identity_center`: access through IAM Identity Center (AWS SSO). A grant is an account
//! assignment (a permission set in an account, for the requester's Identity Center user) or, with
//! `group_id`, a membership of an Identity Center group. The holder signs in at the AWS access
//! portal; there are no keys to reveal.
//!
//! **Who.** The requester's Identity Center user is found in the identity store from the login
//! [`principal::login_for`] gives (the resource's `principals` map, else the Slack email), by user
//! name first and then by email. This happens in the baseline ([`Provider::baseline`]), taken in
//! the grant job before anything is changed: a requester with no user is refused there, with the
//! reason, and nothing is done. (Never in the slash-command ack path.)
//!
//! **Asynchronous operations.** `CreateAccountAssignment` and `DeleteAccountAssignment` are
//! accepted and carried out later. While one is in progress the call returns
//! [`ProviderError::Pending`] and jit calls again after a short wait without holding a worker;
//! the next call asks for the operation's status (`DescribeAccountAssignment{Creation,Deletion}Status`)
//! with the request id kept in memory. An operation still in progress [`PENDING_LIMIT`] after
//! jit first saw it turns into [`ProviderError::Retryable`]: a grant then ends in jit's failure
//! path (an uncertain grant is revoked), and a revoke is retried and alerted like any other
//! failed teardown. After a restart (or on another replica) the request id is gone: the call
//! starts over from the assignments AWS lists, and a `ConflictException` (an operation on the same
//! assignment in progress) is again [`ProviderError::Pending`]. A revoke waits for a creation it
//! knows to be in progress before it looks; one started before a restart it cannot see (AWS's
//! `ListAccountAssignmentCreationStatus` could; moto lacks it).
//!
//! **Idempotent.** A grant first lists the assignments of the permission set in the account
//! (`ListAccountAssignments`) and creates nothing when the user already has it; a revoke deletes
//! only what is listed. Calls for the same assignment are serialised within the process.
//!
//! **Standing access.** The baseline is `standing@<time>` when the user already had the
//! assignment (or membership) before the grant, else `absent@<time>`. Overlapping grants of the
//! same access are torn down once, by the last, which gets every overlapping grant's baseline:
//! the earliest one tells how things were before jit's first grant of the stretch, and when it
//! says `standing` the revoke removes nothing. A revoke with no baseline at all (the grant never
//! got as far as acting) removes nothing either, and says so loudly.
//!
//! **Handles** (`aws_identity_center:account=<id>;permission_set=<arn>;user=<login>` or
//! `aws_identity_center:group=<id>;user=<login>`) are the same for every grant of the same access
//! to the same person, so overlapping grants are counted as one access, and a revoke can work from
//! the handle alone.
//!
//! **Sessions.** Identity Center sessions already started outlive the assignment, for up to the
//! permission set's session duration. With `session_duration` set, the baseline refuses a grant
//! whose permission set allows longer sessions (jit never changes a permission set: it is shared).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_identitystore::types::{AlternateIdentifier, MemberId, UniqueAttribute};
use aws_sdk_ssoadmin::error::ProvideErrorMetadata;
use aws_sdk_ssoadmin::types::{
    AccountAssignmentOperationStatus, PrincipalType, StatusValues, TargetType,
};
use chrono::{DateTime, SecondsFormat, Utc};

use super::aws_sts::{classify, truncate};
use super::{GrantSpec, Issued, Provider, ProviderError, RevokeSpec, Revoked, principal};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::ResourceId;
use crate::domain::policy::{AwsIdentityCenterConfig, IdentityCenterTarget};

/// How long an assignment operation may stay in progress before jit stops waiting for it.
pub const PENDING_LIMIT: chrono::Duration = chrono::Duration::minutes(10);
/// How long jit waits before asking again about an operation in progress.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
const HANDLE_PREFIX: &str = "aws_identity_center:";
const PROVIDER_NAME: &str = "IAM Identity Center";
/// What is granted, as named in a handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub target: IdentityCenterTarget,
    /// The Identity Center user name or email jit looked the user up by.
    pub login: String,
}

impl Access {
    pub fn handle(&self) -> String {
        match &self.target {
            IdentityCenterTarget::Account {
                account_id,
                permission_set_arn,
            } => format!(
                "{HANDLE_PREFIX}account={account_id};permission_set={permission_set_arn};user={}",
                self.login
            ),
            IdentityCenterTarget::Group { group_id } => {
                format!("{HANDLE_PREFIX}group={group_id};user={}", self.login)
            }
        }
    }

    pub fn parse(handle: &str) -> Option<Access> {
        let rest = handle.strip_prefix(HANDLE_PREFIX)?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in rest.splitn(3, ';') {
            let (k, v) = part.split_once('=')?;
            fields.insert(k, v);
        }
        let login = fields.get("user").filter(|u| !u.is_empty())?.to_string();
        let target = match (
            fields.get("account"),
            fields.get("permission_set"),
            fields.get("group"),
        ) {
            (Some(a), Some(p), None) => IdentityCenterTarget::Account {
                account_id: a.to_string(),
                permission_set_arn: p.to_string(),
            },
            (None, None, Some(g)) => IdentityCenterTarget::Group {
                group_id: g.to_string(),
            },
            _ => return None,
        };
        Some(Access { target, login })
    }
}

/// Whether the access was there before the grant: `standing@<time>` / `absent@<time>`.
pub fn encode_baseline(standing: bool, at: DateTime<Utc>) -> String {
    format!(
        "{}@{}",
        if standing { "standing" } else { "absent" },
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
}

/// The earliest of `baselines` this provider wrote: whether the access was standing before the
/// first grant of the stretch. `None`: none was recorded.
pub fn standing_before(baselines: &[String]) -> Option<bool> {
    baselines
        .iter()
        .filter_map(|b| {
            let (state, at) = b.split_once('@')?;
            let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
            match state {
                "standing" => Some((at, true)),
                "absent" => Some((at, false)),
                _ => None,
            }
        })
        .min()
        .map(|(_, standing)| standing)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Delete,
}

/// When the latest grant of the stretch took its baseline (it acted only after that): `None`
/// when no baseline of this provider was recorded.
pub fn latest_baseline_at(baselines: &[String]) -> Option<DateTime<Utc>> {
    baselines
        .iter()
        .filter_map(|b| {
            let (_, at) = b.split_once('@')?;
            Some(DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc))
        })
        .max()
}

/// An assignment operation jit started and has not seen finish.
#[derive(Debug, Clone)]
struct InFlight {
    op: Op,
    /// `None`: AWS said another operation on the assignment was in progress.
    request_id: Option<String>,
    since: DateTime<Utc>,
}

pub struct IdentityCenterProvider {
    resource: ResourceId,
    config: AwsIdentityCenterConfig,
    sso: aws_sdk_ssoadmin::Client,
    store: aws_sdk_identitystore::Client,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// When this process last saw an operation on an assignment finish (handle → time): a
    /// creation that succeeded or failed, a deletion carried out. A revoke that finds no
    /// assignment after that need not wait for a creation that may still be under way
    /// ([`IdentityCenterProvider::creation_may_be_under_way`]).
    settled: Mutex<HashMap<String, DateTime<Utc>>>,
    pending_limit: chrono::Duration,
    poll: Duration,
}

impl IdentityCenterProvider {
    pub fn new(resource: ResourceId, config: AwsIdentityCenterConfig, sdk: &SdkConfig) -> Self {
        Self {
            resource,
            config,
            sso: aws_sdk_ssoadmin::Client::new(sdk),
            store: aws_sdk_identitystore::Client::new(sdk),
            in_flight: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            pending_limit: PENDING_LIMIT,
            poll: POLL_INTERVAL,
        }
    }

    /// Replaces [`PENDING_LIMIT`] (tests).
    pub fn with_pending_limit(mut self, limit: chrono::Duration) -> Self {
        self.pending_limit = limit;
        self
    }

    pub fn config(&self) -> &AwsIdentityCenterConfig {
        &self.config
    }

    pub fn resource(&self) -> &ResourceId {
        &self.resource
    }

    fn access(&self, spec: &GrantSpec) -> Result<Access, ProviderError> {
        Ok(Access {
            target: self.config.target.clone(),
            login: principal::login_for(spec, &self.config.principals, PROVIDER_NAME)?,
        })
    }

    fn in_flight(&self, handle: &str) -> Option<InFlight> {
        self.lock_map().get(handle).cloned()
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, handle: &str) {
        self.lock_map().remove(handle);
    }

    /// The operation in progress on `handle` is over (it succeeded or failed), as seen at `now`.
    fn settle(&self, handle: &str, now: DateTime<Utc>) {
        self.forget(handle);
        self.settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.to_owned(), now);
    }

    /// A revoke that finds no assignment cannot tell a creation that never happened from one
    /// AWS is still carrying out, started by another replica or by this process before a
    /// restart (the request id of an operation in progress is kept in memory), which would
    /// add the assignment after the revoke looked. So until the operation limit has passed
    /// since the latest grant of the stretch took its baseline (a grant acts only after it),
    /// the revoke looks again later, unless this process saw the operations on the assignment
    /// finish after that baseline.
    fn creation_may_be_under_way(
        &self,
        handle: &str,
        started: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<ProviderError> {
        let started = started?;
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(handle)
            .copied();
        if settled.is_some_and(|at| at >= started) {
            return None;
        }
        let until = started + self.pending_limit;
        (now < until).then(|| ProviderError::Pending {
            after: self.poll,
            detail: format!(
                "the account assignment is not there, but a creation started after {} may still be under way in IAM Identity Center (on another replica, or before a restart); looking again until {}",
                started.to_rfc3339_opts(SecondsFormat::Secs, true),
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        })
    }

    /// How the operation jit started (`request_id`) is going, as AWS reports it.
    async fn operation_status(
        &self,
        op: Op,
        request_id: &str,
        account_id: &str,
    ) -> Result<Option<AccountAssignmentOperationStatus>, ProviderError> {
        match op {
            Op::Create => self
                .sso
                .describe_account_assignment_creation_status()
                .instance_arn(&self.config.instance_arn)
                .account_assignment_creation_request_id(request_id)
                .send()
                .await
                .map(|out| out.account_assignment_creation_status().cloned())
                .map_err(|e| {
                    classify("sso:DescribeAccountAssignmentCreationStatus", account_id, e)
                }),
            Op::Delete => self
                .sso
                .describe_account_assignment_deletion_status()
                .instance_arn(&self.config.instance_arn)
                .account_assignment_deletion_request_id(request_id)
                .send()
                .await
                .map(|out| out.account_assignment_deletion_status().cloned())
                .map_err(|e| {
                    classify("sso:DescribeAccountAssignmentDeletionStatus", account_id, e)
                }),
        }
    }

    /// Records `op` as in progress (keeping the time jit first saw it) and says so: `Pending`,
    /// or `Retryable` once it has been in progress longer than the limit.
    fn still_in_progress(
        &self,
        handle: &str,
        op: Op,
        request_id: Option<String>,
        now: DateTime<Utc>,
        what: &str,
    ) -> ProviderError {
        let since = {
            let mut map = self.lock_map();
            let entry = map.entry(handle.to_owned()).or_insert(InFlight {
                op,
                request_id: None,
                since: now,
            });
            if entry.op != op {
                *entry = InFlight {
                    op,
                    request_id: None,
                    since: now,
                };
            }
            if request_id.is_some() {
                entry.request_id = request_id;
            }
            entry.since
        };
        let waited = now - since;
        if waited >= self.pending_limit {
            ProviderError::Retryable(format!(
                "{what} is still in progress in IAM Identity Center after {} (jit keeps checking)",
                GrantDuration::from_secs(waited.num_seconds().max(0) as u64)
            ))
        } else {
            ProviderError::Pending {
                after: self.poll,
                detail: format!("{what} is in progress in IAM Identity Center"),
            }
        }
    }

    /// The identity store's user id for `login`: by user name, then by email. `None`: no such
    /// user.
    pub async fn user_id(&self, login: &str) -> Result<Option<String>, ProviderError> {
        for path in ["userName", "emails.value"] {
            let attribute = UniqueAttribute::builder()
                .attribute_path(path)
                .attribute_value(aws_smithy_types::Document::String(login.to_owned()))
                .build()
                .map_err(|e| ProviderError::Fatal(format!("cannot build GetUserId: {e}")))?;
            let result = self
                .store
                .get_user_id()
                .identity_store_id(&self.config.identity_store_id)
                .alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute))
                .send()
                .await;
            match result {
                Ok(out) => return Ok(Some(out.user_id().to_owned())),
                Err(e) if e.code() == Some("ResourceNotFoundException") => continue,
                Err(e) => {
                    return Err(classify(
                        "identitystore:GetUserId",
                        &self.config.identity_store_id,
                        e,
                    ));
                }
            }
        }
        Ok(None)
    }

    async fn require_user(&self, login: &str) -> Result<String, ProviderError> {
        self.user_id(login).await?.ok_or_else(|| {
            ProviderError::Refused(format!(
                "there is no IAM Identity Center user `{login}` (by user name or email) in identity store {}; \
                 ask an admin to create it, or map your Slack user to your Identity Center user name in the resource's `principals`",
                self.config.identity_store_id
            ))
        })
    }

    /// Whether `user` has the permission set in the account.
    async fn has_assignment(
        &self,
        account_id: &str,
        permission_set_arn: &str,
        user: &str,
    ) -> Result<bool, ProviderError> {
        let mut token: Option<String> = None;
        loop {
            let out = self
                .sso
                .list_account_assignments()
                .instance_arn(&self.config.instance_arn)
                .account_id(account_id)
                .permission_set_arn(permission_set_arn)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("sso:ListAccountAssignments", account_id, e))?;
            if out.account_assignments().iter().any(|a| {
                a.principal_id() == Some(user) && a.principal_type() == Some(&PrincipalType::User)
            }) {
                return Ok(true);
            }
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(false),
            }
        }
    }

    /// The id of `user`'s membership of `group`, if any.
    async fn membership(&self, group: &str, user: &str) -> Result<Option<String>, ProviderError> {
        let mut token: Option<String> = None;
        loop {
            let out = self
                .store
                .list_group_memberships_for_member()
                .identity_store_id(&self.config.identity_store_id)
                .member_id(MemberId::UserId(user.to_owned()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("identitystore:ListGroupMembershipsForMember", group, e))?;
            if let Some(m) = out
                .group_memberships()
                .iter()
                .find(|m| m.group_id() == Some(group))
            {
                return Ok(Some(m.membership_id().to_owned()));
            }
            match out.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(None),
            }
        }
    }

    /// The permission set's name and session duration (ISO 8601, e.g. `PT1H`).
    pub async fn permission_set(
        &self,
        permission_set_arn: &str,
    ) -> Result<(Option<String>, Option<String>), ProviderError> {
        let out = self
            .sso
            .describe_permission_set()
            .instance_arn(&self.config.instance_arn)
            .permission_set_arn(permission_set_arn)
            .send()
            .await
            .map_err(|e| classify("sso:DescribePermissionSet", permission_set_arn, e))?;
        let set = out.permission_set();
        Ok((
            set.and_then(|s| s.name()).map(str::to_owned),
            set.and_then(|s| s.session_duration()).map(str::to_owned),
        ))
    }

    fn instructions(
        &self,
        access: &Access,
        set_name: Option<&str>,
        session: Option<&str>,
    ) -> String {
        let portal = &self.config.portal_url;
        match &access.target {
            IdentityCenterTarget::Account { account_id, .. } => {
                let mut text = format!(
                    "Sign in at {portal} and pick account {account_id}, permission set {}.",
                    set_name.unwrap_or("(see the resource)")
                );
                if let Some(session) = session.and_then(iso_duration) {
                    text.push_str(&format!(
                        " A session you start lasts up to {} ({}), even past the end of this grant: sign out when you are done.",
                        session,
                        session.humanize()
                    ));
                }
                text
            }
            IdentityCenterTarget::Group { group_id } => format!(
                "You are in the IAM Identity Center group {group_id}. Sign in at {portal} to use what it gives."
            ),
        }
    }

    async fn grant_account(
        &self,
        access: &Access,
        account_id: &str,
        permission_set_arn: &str,
        now: DateTime<Utc>,
    ) -> Result<Issued, ProviderError> {
        let handle = access.handle();
        let user = self.require_user(&access.login).await?;
        if let Some(flight) = self.in_flight(&handle).filter(|f| f.op == Op::Create)
            && let Some(request_id) = &flight.request_id
        {
            match self
                .operation_status(Op::Create, request_id, account_id)
                .await?
                .as_ref()
            {
                Some(s) if s.status() == Some(&StatusValues::InProgress) => {
                    return Err(self.still_in_progress(
                        &handle,
                        Op::Create,
                        None,
                        now,
                        "the account assignment",
                    ));
                }
                Some(s) if s.status() == Some(&StatusValues::Failed) => {
                    self.settle(&handle, now);
                    return Err(ProviderError::Fatal(failed("create", account_id, s)));
                }
                _ => self.settle(&handle, now),
            }
        }
        if !self
            .has_assignment(account_id, permission_set_arn, &user)
            .await?
        {
            let created = self
                .sso
                .create_account_assignment()
                .instance_arn(&self.config.instance_arn)
                .target_id(account_id)
                .target_type(TargetType::AwsAccount)
                .permission_set_arn(permission_set_arn)
                .principal_type(PrincipalType::User)
                .principal_id(&user)
                .send()
                .await;
            let status = match created {
                Ok(out) => out.account_assignment_creation_status().cloned(),
                Err(e) if e.code() == Some("ConflictException") => {
                    return Err(self.still_in_progress(
                        &handle,
                        Op::Create,
                        None,
                        now,
                        "another operation on the account assignment",
                    ));
                }
                Err(e) => return Err(classify("sso:CreateAccountAssignment", account_id, e)),
            };
            match status.as_ref().and_then(|s| s.status()) {
                Some(StatusValues::Succeeded) => self.settle(&handle, now),
                Some(StatusValues::Failed) => {
                    self.settle(&handle, now);
                    let s = status.as_ref().expect("has a status");
                    return Err(ProviderError::Fatal(failed("create", account_id, s)));
                }
                _ => {
                    let request_id = status.and_then(|s| s.request_id().map(str::to_owned));
                    return Err(self.still_in_progress(
                        &handle,
                        Op::Create,
                        request_id,
                        now,
                        "the account assignment",
                    ));
                }
            }
        }
        let (name, session) = self
            .permission_set(permission_set_arn)
            .await
            .unwrap_or((None, None));
        Ok(Issued {
            handle,
            credentials: None,
            instructions: Some(self.instructions(access, name.as_deref(), session.as_deref())),
            credentials_expire_at: None,
        })
    }

    async fn revoke_account(
        &self,
        access: &Access,
        handle: &str,
        account_id: &str,
        permission_set_arn: &str,
        started: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Revoked, ProviderError> {
        let Some(user) = self.user_id(&access.login).await? else {
            return Ok(Revoked {
                detail: Some(format!(
                    "no IAM Identity Center user `{}` any more; its assignments went with it",
                    access.login
                )),
                ..Revoked::default()
            });
        };
        // A creation still in progress (a grant revoked while AWS carries it out) would add the
        // assignment after the revoke looked: wait for it, then remove it.
        if let Some(flight) = self.in_flight(handle).filter(|f| f.op == Op::Create)
            && let Some(request_id) = &flight.request_id
        {
            match self
                .operation_status(Op::Create, request_id, account_id)
                .await?
                .as_ref()
            {
                Some(s) if s.status() == Some(&StatusValues::InProgress) => {
                    return Err(self.still_in_progress(
                        handle,
                        Op::Create,
                        None,
                        now,
                        "the account assignment to remove is still being created",
                    ));
                }
                _ => self.settle(handle, now),
            }
        }
        if let Some(flight) = self.in_flight(handle).filter(|f| f.op == Op::Delete)
            && let Some(request_id) = &flight.request_id
        {
            match self
                .operation_status(Op::Delete, request_id, account_id)
                .await?
                .as_ref()
            {
                Some(s) if s.status() == Some(&StatusValues::InProgress) => {
                    return Err(self.still_in_progress(
                        handle,
                        Op::Delete,
                        None,
                        now,
                        "removing the account assignment",
                    ));
                }
                Some(s) if s.status() == Some(&StatusValues::Failed) => {
                    self.settle(handle, now);
                    return Err(ProviderError::Retryable(failed("delete", account_id, s)));
                }
                _ => self.settle(handle, now),
            }
        }
        if !self
            .has_assignment(account_id, permission_set_arn, &user)
            .await?
        {
            self.forget(handle);
            if let Some(wait) = self.creation_may_be_under_way(handle, started, now) {
                return Err(wait);
            }
            return Ok(Revoked {
                detail: Some(format!(
                    "account assignment removed: {} no longer has the permission set in account {account_id}",
                    access.login
                )),
                ..Revoked::default()
            });
        }
        let deleted = self
            .sso
            .delete_account_assignment()
            .instance_arn(&self.config.instance_arn)
            .target_id(account_id)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(permission_set_arn)
            .principal_type(PrincipalType::User)
            .principal_id(&user)
            .send()
            .await;
        let status = match deleted {
            Ok(out) => out.account_assignment_deletion_status().cloned(),
            Err(e) if e.code() == Some("ResourceNotFoundException") => None,
            Err(e) if e.code() == Some("ConflictException") => {
                return Err(self.still_in_progress(
                    handle,
                    Op::Delete,
                    None,
                    now,
                    "another operation on the account assignment",
                ));
            }
            Err(e) => return Err(classify("sso:DeleteAccountAssignment", account_id, e)),
        };
        match status.as_ref().and_then(|s| s.status()) {
            Some(StatusValues::InProgress) => {
                let request_id = status.and_then(|s| s.request_id().map(str::to_owned));
                Err(self.still_in_progress(
                    handle,
                    Op::Delete,
                    request_id,
                    now,
                    "removing the account assignment",
                ))
            }
            Some(StatusValues::Failed) => {
                self.forget(handle);
                let s = status.as_ref().expect("has a status");
                Err(ProviderError::Retryable(failed("delete", account_id, s)))
            }
            _ => {
                self.settle(handle, now);
                Ok(Revoked {
                    detail: Some(format!(
                        "account assignment removed: {} no longer has the permission set in account {account_id}",
                        access.login
                    )),
                    ..Revoked::default()
                })
            }
        }
    }

    async fn grant_group(&self, access: &Access, group: &str) -> Result<Issued, ProviderError> {
        let user = self.require_user(&access.login).await?;
        if self.membership(group, &user).await?.is_none() {
            let created = self
                .store
                .create_group_membership()
                .identity_store_id(&self.config.identity_store_id)
                .group_id(group)
                .member_id(MemberId::UserId(user.clone()))
                .send()
                .await;
            match created {
                Ok(_) => {}
                // Already a member (a concurrent grant won).
                Err(e) if e.code() == Some("ConflictException") => {}
                Err(e) => return Err(classify("identitystore:CreateGroupMembership", group, e)),
            }
        }
        Ok(Issued {
            handle: access.handle(),
            credentials: None,
            instructions: Some(self.instructions(access, None, None)),
            credentials_expire_at: None,
        })
    }

    async fn revoke_group(&self, access: &Access, group: &str) -> Result<Revoked, ProviderError> {
        let Some(user) = self.user_id(&access.login).await? else {
            return Ok(Revoked {
                detail: Some(format!(
                    "no IAM Identity Center user `{}` any more; its memberships went with it",
                    access.login
                )),
                ..Revoked::default()
            });
        };
        if let Some(membership) = self.membership(group, &user).await? {
            match self
                .store
                .delete_group_membership()
                .identity_store_id(&self.config.identity_store_id)
                .membership_id(&membership)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceNotFoundException") => {}
                Err(e) => return Err(classify("identitystore:DeleteGroupMembership", group, e)),
            }
            if self.membership(group, &user).await?.is_some() {
                return Err(ProviderError::Retryable(format!(
                    "{} is still in group {group} after DeleteGroupMembership",
                    access.login
                )));
            }
        }
        Ok(Revoked {
            detail: Some(format!(
                "group membership removed: {} is no longer in group {group}",
                access.login
            )),
            ..Revoked::default()
        })
    }
}

#[async_trait::async_trait]
impl Provider for IdentityCenterProvider {
    /// Never [`ProviderError::Refused`]: a call made again after [`ProviderError::Pending`] (which
    /// jit does not count as an attempt) follows one that acted. Refusals come from the baseline.
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        // The baseline found the user before the first call; not knowing them now means Slack did
        // not give the email this time: ask again rather than presume a different handle.
        let access = self.access(spec).map_err(|e| {
            ProviderError::Retryable(format!(
                "{e} (the grant had found them before: trying again)"
            ))
        })?;
        let _serial = serial(&access.handle()).lock_owned().await;
        let result = match &access.target {
            IdentityCenterTarget::Account {
                account_id,
                permission_set_arn,
            } => {
                self.grant_account(&access, account_id, permission_set_arn, spec.now)
                    .await
            }
            IdentityCenterTarget::Group { group_id } => self.grant_group(&access, group_id).await,
        };
        result.map_err(acted)
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError> {
        let Some(access) = Access::parse(&spec.handle) else {
            return Err(ProviderError::Fatal(format!(
                "`{}` is not an aws_identity_center handle; remove the access by hand",
                spec.handle
            )));
        };
        match standing_before(&spec.baselines) {
            Some(true) => {
                return Ok(Revoked {
                    detail: Some(format!(
                        "left alone: {} had this access before the grant (standing access)",
                        access.login
                    )),
                    ..Revoked::default()
                });
            }
            Some(false) => {}
            None => {
                return Ok(Revoked {
                    attention: Some(format!(
                        "no baseline was recorded for this grant, so jit cannot tell whether {} had the access before; \
                         nothing was removed (a grant records its baseline before it acts, so this one never acted). \
                         Check the user's assignments in IAM Identity Center.",
                        access.login
                    )),
                    ..Revoked::default()
                });
            }
        }
        let handle = access.handle();
        let _serial = serial(&handle).lock_owned().await;
        match &access.target {
            IdentityCenterTarget::Account {
                account_id,
                permission_set_arn,
            } => {
                let started = latest_baseline_at(&spec.baselines);
                self.revoke_account(
                    &access,
                    &handle,
                    account_id,
                    permission_set_arn,
                    started,
                    spec.now,
                )
                .await
            }
            IdentityCenterTarget::Group { group_id } => self.revoke_group(&access, group_id).await,
        }
        .map_err(acted)
    }

    /// Resolves the user (a requester with none is refused here, before anything is done),
    /// checks the permission set's session duration against `session_duration`, and records
    /// whether the user already has the access.
    async fn baseline(&self, spec: &GrantSpec) -> Result<Option<String>, ProviderError> {
        let access = self.access(spec)?;
        let user = self.require_user(&access.login).await?;
        let standing = match &access.target {
            IdentityCenterTarget::Account {
                account_id,
                permission_set_arn,
            } => {
                if let Some(limit) = self.config.session_duration {
                    let (_, session) = self.permission_set(permission_set_arn).await?;
                    let session = session.as_deref().and_then(iso_duration);
                    // AWS's default is one hour.
                    let session = session.unwrap_or(GrantDuration::from_hours(1));
                    if session > limit {
                        return Err(ProviderError::Refused(format!(
                            "the permission set {permission_set_arn} lets a session last {session}, longer than this resource's \
                             session_duration {limit}: a session started during the grant could outlive it by that much. \
                             Ask an admin to shorten the permission set's session duration."
                        )));
                    }
                }
                self.has_assignment(account_id, permission_set_arn, &user)
                    .await?
            }
            IdentityCenterTarget::Group { group_id } => {
                self.membership(group_id, &user).await?.is_some()
            }
        };
        Ok(Some(encode_baseline(standing, spec.now)))
    }

    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        match self.access(spec) {
            Ok(access) => access.handle(),
            // Nobody known: nothing can have been granted to them.
            Err(_) => Access {
                target: self.config.target.clone(),
                login: spec.requester.key(),
            }
            .handle(),
        }
    }
}

/// A grant-side refusal after the first call may follow one that acted.
fn acted(err: ProviderError) -> ProviderError {
    match err {
        ProviderError::Refused(text) => ProviderError::Fatal(text),
        other => other,
    }
}

fn failed(op: &str, account: &str, status: &AccountAssignmentOperationStatus) -> String {
    truncate(&format!(
        "IAM Identity Center could not {op} the account assignment in account {account}: {}",
        status.failure_reason().unwrap_or("no reason given")
    ))
}

/// `PT1H`, `PT12H`, `PT1H30M`, `PT3600S` (what permission sets use) as a duration.
pub fn iso_duration(text: &str) -> Option<GrantDuration> {
    let rest = text.strip_prefix("PT")?;
    let mut secs: u64 = 0;
    let mut number = String::new();
    for c in rest.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        secs += match c {
            'H' => n * 3600,
            'M' => n * 60,
            'S' => n,
            _ => return None,
        };
    }
    (number.is_empty() && secs > 0).then(|| GrantDuration::from_secs(secs))
}

/// One lock per assignment in the process: two grants (or a grant and a revoke) of the same
/// access never race between their check and their change.
fn serial(handle: &str) -> Arc<tokio::sync::Mutex<()>> {
    super::keyed_lock(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn handles_round_trip() {
        for target in [
            IdentityCenterTarget::Account {
                account_id: "111111111111".into(),
                permission_set_arn: "arn:aws:sso:::permissionSet/ssoins-1/ps-2".into(),
            },
            IdentityCenterTarget::Group {
                group_id: "9a67-group".into(),
            },
        ] {
            let access = Access {
                target,
                login: "alice@corp.example".into(),
            };
            assert_eq!(Access::parse(&access.handle()), Some(access));
        }
        assert_eq!(Access::parse("elevation:bob:role"), None);
        assert_eq!(Access::parse("aws_identity_center:group=g"), None);
    }

    #[test]
    fn the_earliest_baseline_decides() {
        let absent = encode_baseline(false, t("2026-12-07T10:00:00Z"));
        let standing_later = encode_baseline(true, t("2026-12-07T11:00:00Z"));
        // A second, overlapping grant sees the first one's assignment: not standing access.
        assert_eq!(
            standing_before(&[standing_later.clone(), absent.clone()]),
            Some(false)
        );
        let standing = encode_baseline(true, t("2026-12-07T09:00:00Z"));
        assert_eq!(standing_before(&[absent, standing]), Some(true));
        assert_eq!(standing_before(&["12345".into()]), None);
        assert_eq!(standing_before(&[]), None);
    }

    #[test]
    fn permission_set_durations() {
        assert_eq!(iso_duration("PT1H"), Some(GrantDuration::from_hours(1)));
        assert_eq!(iso_duration("PT1H30M").map(|d| d.as_secs()), Some(5400));
        assert_eq!(iso_duration("PT3600S"), Some(GrantDuration::from_hours(1)));
        assert_eq!(iso_duration("P1D"), None);
        assert_eq!(iso_duration("PT"), None);
        assert_eq!(iso_duration("PT5"), None);
    }
}
