//! The policy file: who may request what, for how long, who approves, and how access is issued.
//!
//! [`Policy::parse`] turns TOML text into a validated [`Policy`]; every error carries the line and
//! column it refers to. Evaluation ([`Policy::evaluate`], [`Policy::explain`]) is pure: group
//! membership is supplied by the caller through [`Membership`], so the ack path never waits on Slack.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::duration::GrantDuration;
use super::ids::{ResourceId, SlackChannelId, SlackGroupId, SlackUserId};

/// AWS caps AssumeRole sessions at 12 hours.
pub const AWS_MAX_SESSION: GrantDuration = GrantDuration::from_hours(12);
/// AWS's floor for AssumeRole `DurationSeconds`.
pub const AWS_MIN_SESSION: GrantDuration = GrantDuration::from_mins(15);
/// AWS's limit on session-policy plaintext.
pub const AWS_SESSION_POLICY_MAX_CHARS: usize = 2048;

// ---------------------------------------------------------------------------------------------
// File shape
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    slack: SlackFile,
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    resource: Vec<Spanned<ResourceFile>>,
    #[serde(default)]
    identity: Vec<Spanned<IdentityFile>>,
    #[serde(default)]
    webhook: Vec<Spanned<WebhookFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    events: Vec<String>,
    secret_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackFile {
    audit_channel: SlackChannelId,
    admins: PrincipalsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    #[serde(default = "default_reminder_before")]
    reminder_before: GrantDuration,
    #[serde(default = "default_pending_timeout")]
    pending_timeout: GrantDuration,
    #[serde(default = "default_max_duration")]
    max_duration: GrantDuration,
    #[serde(default)]
    default_duration: Option<GrantDuration>,
    #[serde(default = "one")]
    approvals_required: u32,
    #[serde(default)]
    justification: Option<JustificationFile>,
    #[serde(default)]
    ticket: Option<TicketFile>,
    #[serde(default = "default_max_start_ahead")]
    max_start_ahead: GrantDuration,
    /// Every resource's escalation unless it has its own (default: one reminder at half the
    /// pending timeout).
    #[serde(default)]
    escalate: Option<Vec<EscalationStepFile>>,
    /// Every resource's `approvers.notify` unless it sets its own (default: `channel`).
    #[serde(default)]
    approvers_notify: Option<Notify>,
}

impl Default for DefaultsFile {
    fn default() -> Self {
        Self {
            reminder_before: default_reminder_before(),
            pending_timeout: default_pending_timeout(),
            max_duration: default_max_duration(),
            default_duration: None,
            approvals_required: 1,
            justification: None,
            ticket: None,
            max_start_ahead: default_max_start_ahead(),
            escalate: None,
            approvers_notify: None,
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct JustificationFile {
    #[serde(default)]
    min_length: usize,
    pattern: Option<String>,
    hint: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct TicketFile {
    #[serde(default)]
    required: bool,
    pattern: Option<String>,
    url: Option<String>,
}

fn default_reminder_before() -> GrantDuration {
    GrantDuration::from_mins(10)
}
fn default_pending_timeout() -> GrantDuration {
    GrantDuration::from_mins(30)
}
fn default_max_duration() -> GrantDuration {
    GrantDuration::from_hours(4)
}
fn default_max_start_ahead() -> GrantDuration {
    GrantDuration::from_secs(7 * 86_400)
}

/// The furthest ahead `max_start_ahead` may reach: a start a year out is a calendar entry, not
/// a maintenance window, and nobody reviews the policy it would be checked against.
pub const MAX_START_AHEAD_LIMIT: GrantDuration = GrantDuration::from_secs(365 * 86_400);
fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default = "default_requests_per_minute")]
    requests_per_user_per_minute: u32,
    #[serde(default = "default_alert_after")]
    teardown_alert_after_failures: u32,
    #[serde(default = "default_max_pending")]
    max_pending_per_user: Spanned<u32>,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            requests_per_user_per_minute: default_requests_per_minute(),
            teardown_alert_after_failures: default_alert_after(),
            max_pending_per_user: default_max_pending(),
        }
    }
}

fn default_requests_per_minute() -> u32 {
    10
}
fn default_alert_after() -> u32 {
    5
}
/// Requests one requester may have waiting for approval at once. It also bounds what a few
/// people can put ahead of everyone else in an approvers' channel, which Slack paces at about
/// one message per second.
pub const DEFAULT_MAX_PENDING_PER_USER: u32 = 3;
fn default_max_pending() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_MAX_PENDING_PER_USER)
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    users: Vec<SlackUserId>,
    #[serde(default)]
    groups: Vec<SlackGroupId>,
    #[serde(default)]
    identities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproversFile {
    channel: Option<SlackChannelId>,
    #[serde(default)]
    users: Vec<SlackUserId>,
    #[serde(default)]
    groups: Vec<SlackGroupId>,
    notify: Option<Notify>,
}

/// One step of `escalate = [{ after = "10m", to = { users = […], groups = […], channel = "C…" } }]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct EscalationStepFile {
    after: GrantDuration,
    to: Option<EscalationTargetFile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct EscalationTargetFile {
    #[serde(default)]
    users: Vec<SlackUserId>,
    #[serde(default)]
    groups: Vec<SlackGroupId>,
    channel: Option<SlackChannelId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoApproveFile {
    max_duration: GrantDuration,
    #[serde(default)]
    users: Vec<SlackUserId>,
    #[serde(default)]
    groups: Vec<SlackGroupId>,
    #[serde(default)]
    identities: Vec<String>,
    oncall: Option<OnCallFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnCallFile {
    pagerduty_schedules: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ProviderKind {
    None,
    Exec,
    AwsSts,
    Postgres,
    AwsIdentityCenter,
    OktaGroup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    id: ResourceId,
    #[serde(default)]
    description: String,
    provider: ProviderKind,
    max_duration: Option<GrantDuration>,
    default_duration: Option<GrantDuration>,
    max_lifetime: Option<GrantDuration>,
    requesters: Option<PrincipalsFile>,
    approvers: ApproversFile,
    approvals_required: Option<u32>,
    auto_approve: Option<AutoApproveFile>,
    #[serde(default)]
    breakglass: bool,
    reminder_before: Option<GrantDuration>,
    pending_timeout: Option<GrantDuration>,
    /// Replaces `defaults.escalate` for this resource (`[]`: no reminder, no escalation).
    escalate: Option<Vec<EscalationStepFile>>,
    /// Replaces `defaults.justification` for this resource.
    justification: Option<JustificationFile>,
    /// Replaces `defaults.ticket` for this resource.
    ticket: Option<TicketFile>,
    /// How far ahead a scheduled start may be (`at …`); default `defaults.max_start_ahead`.
    max_start_ahead: Option<GrantDuration>,

    // exec
    grant_command: Option<Vec<String>>,
    revoke_command: Option<Vec<String>>,
    timeout: Option<GrantDuration>,
    parameters: Option<toml::Table>,
    env: Option<Vec<String>>,

    // aws_sts
    role_arn: Option<String>,
    role_max_session: Option<GrantDuration>,
    session_policy: Option<String>,
    session_policy_file: Option<String>,
    region: Option<String>,

    // postgres
    database_url_env: Option<String>,
    mode: Option<PostgresModeKind>,
    roles: Option<Vec<String>>,
    connection_limit: Option<i32>,
    db_users: Option<BTreeMap<String, String>>,
    terminate_sessions: Option<bool>,
    connect_host: Option<String>,
    objects_owner: Option<String>,
    allow_superuser_admin: Option<bool>,

    // aws_identity_center (and `region`)
    instance_arn: Option<String>,
    identity_store_id: Option<String>,
    account_id: Option<OneOrMany>,
    permission_set_arn: Option<String>,
    portal_url: Option<String>,
    session_duration: Option<GrantDuration>,

    // okta_group
    org_url: Option<String>,
    api_token_env: Option<String>,
    client_id: Option<String>,
    private_key_env: Option<String>,
    key_id: Option<String>,

    // aws_identity_center and okta_group
    group_id: Option<String>,
    principals: Option<BTreeMap<String, String>>,
}

/// `account_id = "111111111111"` or `account_id = ["111111111111", "222222222222"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum PostgresModeKind {
    Ephemeral,
    Elevation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    name: String,
    #[serde(default)]
    description: String,
    owner: PrincipalsFile,
    resources: Vec<ResourceId>,
}

// ---------------------------------------------------------------------------------------------
// Validated model
// ---------------------------------------------------------------------------------------------

/// Users, user groups and (for requesters) non-human identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    pub users: Vec<SlackUserId>,
    pub groups: Vec<SlackGroupId>,
    pub identities: Vec<String>,
}

impl Principals {
    fn from_file(file: PrincipalsFile) -> Self {
        Self {
            users: file.users,
            groups: file.groups,
            identities: file.identities,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.identities.is_empty()
    }

    /// Whether `who` is listed directly, through a group, or as a named identity.
    pub fn contains(&self, who: &Requester, membership: &dyn Membership) -> bool {
        match who {
            Requester::User(user) => self.contains_user(user, membership),
            Requester::Identity(name) => self.identities.iter().any(|i| i == name),
        }
    }

    /// Named directly, or (for full members of the workspace only) through a group.
    pub fn contains_user(&self, user: &SlackUserId, membership: &dyn Membership) -> bool {
        self.users.contains(user)
            || (membership.standing(user) == Standing::Member
                && self.groups.iter().any(|g| membership.is_member(user, g)))
    }
}

/// Who is asking: a person in Slack, or a non-human identity over the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requester {
    User(SlackUserId),
    Identity(String),
}

impl Requester {
    /// The stable string stored in the database: the Slack user ID, or `identity:<name>`.
    pub fn key(&self) -> String {
        match self {
            Requester::User(u) => u.to_string(),
            Requester::Identity(name) => format!("identity:{name}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        match key.strip_prefix("identity:") {
            Some(name) => Some(Requester::Identity(name.to_owned())),
            None => SlackUserId::parse(key).ok().map(Requester::User),
        }
    }

    pub fn user(&self) -> Option<&SlackUserId> {
        match self {
            Requester::User(u) => Some(u),
            Requester::Identity(_) => None,
        }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Answers "is this user in that Slack user group?" and "is this a full member of our
/// workspace?" from whatever the caller has cached.
pub trait Membership {
    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool;

    /// Who `user` is to the workspace jit serves. Anyone but a full member has only the rights
    /// the policy gives them by name: no "anyone may request", no rights through groups, no
    /// auto-approval unless the rule names them.
    fn standing(&self, _user: &SlackUserId) -> Standing {
        Standing::Member
    }

    /// Whether `user` is on call now in one of `schedules`, from a cache the caller keeps fresh
    /// in the background (never a call in the ack path).
    fn on_call(&self, _user: &SlackUserId, _schedules: &[String]) -> OnCall {
        OnCall::Unknown {
            why: "no on-call source is configured".into(),
        }
    }
}

/// A Slack user's standing in the workspace jit serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A full member.
    Member,
    /// A multi- or single-channel guest (`is_restricted`, `is_ultra_restricted`).
    Guest,
    /// A member of another workspace (Slack Connect).
    External,
    /// Not in jit's directory (yet): treated like an outsider until it is.
    Unknown,
}

impl Standing {
    pub fn describe(self) -> &'static str {
        match self {
            Standing::Member => "a member of the workspace",
            Standing::Guest => "a guest of the workspace",
            Standing::External => "from another workspace",
            Standing::Unknown => "not (yet) known to jit as a member of the workspace",
        }
    }
}

/// Membership for callers that know no groups (the policy check CLI, unit tests).
pub struct NoGroups;

impl Membership for NoGroups {
    fn is_member(&self, _: &SlackUserId, _: &SlackGroupId) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approvers {
    /// Where the request is posted; `None` only with `notify = "dm"`.
    pub channel: Option<SlackChannelId>,
    pub users: Vec<SlackUserId>,
    pub groups: Vec<SlackGroupId>,
    /// Where each request reaches its approvers: the channel, a DM to each, or both.
    pub notify: Notify,
}

impl Approvers {
    /// Named directly, or (for full members of the workspace only) through a group.
    pub fn includes(&self, user: &SlackUserId, membership: &dyn Membership) -> bool {
        self.users.contains(user)
            || (membership.standing(user) == Standing::Member
                && self.groups.iter().any(|g| membership.is_member(user, g)))
    }
}

/// `approvers.notify`: where the approvers are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// One message in the approvers' channel (the default).
    #[default]
    Channel,
    /// A DM to each approver, with the same buttons; nothing in the channel.
    Dm,
    /// The channel's message and a DM to each approver.
    Both,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Channel => "channel",
            Notify::Dm => "dm",
            Notify::Both => "both",
        }
    }

    /// Whether the request is posted in the approvers' channel.
    pub fn in_channel(self) -> bool {
        self != Notify::Dm
    }

    /// Whether each approver gets the request as a DM.
    pub fn by_dm(self) -> bool {
        self != Notify::Channel
    }
}

/// One step of a resource's escalation: `after` the request was made, while it still waits,
/// jit reminds the approvers and, with `to`, adds the people named there to those who may
/// decide (a channel only says where the request is posted too: it gives nobody rights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationStep {
    pub after: GrantDuration,
    /// `None`: a reminder to the approvers so far (the default half-time nudge is one).
    pub to: Option<EscalationTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationTarget {
    pub users: Vec<SlackUserId>,
    pub groups: Vec<SlackGroupId>,
    pub channel: Option<SlackChannelId>,
}

/// The most escalation steps a resource may have.
pub const MAX_ESCALATION_STEPS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoApprove {
    pub max_duration: GrantDuration,
    /// Empty (and no `oncall`): every permitted requester qualifies.
    pub who: Principals,
    /// Whoever is on call now in one of these schedules qualifies too. With `oncall` and no
    /// principals, only on-call people qualify.
    pub oncall: Option<OnCallRule>,
}

/// `auto_approve.oncall`: the PagerDuty schedules whose current on-call people are approved by
/// policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCallRule {
    pub pagerduty_schedules: Vec<String>,
}

/// Whether someone is on call now, as far as the caller's cache knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCall {
    /// On call now in `schedule`.
    Yes { schedule: String },
    /// Known not to be on call in any of the schedules.
    No,
    /// Cannot tell (no fresh answer from PagerDuty, no email for the user…): treated as not on
    /// call, so the rule fails closed.
    Unknown { why: String },
}

/// A PagerDuty object ID as it appears in a schedule's URL (`…/schedules/PABC123`): upper-case
/// letters and digits, starting with `P`.
pub fn is_pagerduty_id(id: &str) -> bool {
    (2..=20).contains(&id.len())
        && id.starts_with('P')
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    pub grant_command: Vec<String>,
    pub revoke_command: Vec<String>,
    pub timeout: GrantDuration,
    pub parameters: serde_json::Value,
    /// Variables of jit's environment passed to the commands, beyond the fixed allowlist.
    pub env: Vec<String>,
}

/// Variables an exec resource may never pass to its commands: jit's own secrets and
/// credentials. (The admin URLs of `postgres` resources are refused as well.)
pub const RESERVED_ENV: &[&str] = &[
    "SLACK_SIGNING_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "JIT_ENCRYPTION_KEY",
    "JIT_AUDIT_KEY",
    "JIT_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// Whether `name` is one of [`RESERVED_ENV`] or its `_FILE` variant.
pub fn is_reserved_env(name: &str) -> bool {
    let base = name.strip_suffix("_FILE").unwrap_or(name);
    RESERVED_ENV.contains(&base) || RESERVED_ENV.contains(&name)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsStsConfig {
    pub role_arn: String,
    /// The role's configured MaxSessionDuration (AWS default: 1 hour).
    pub role_max_session: GrantDuration,
    /// Compact JSON of the inline session policy, already checked against AWS's size limit.
    pub session_policy: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresMode {
    /// A fresh `LOGIN` role per grant, `IN ROLE` the granted roles.
    Ephemeral {
        connection_limit: i32,
        /// Where teardown reassigns what the holder created. `None`: it is dropped.
        objects_owner: Option<String>,
    },
    /// `GRANT role TO <existing user>`, the user mapped from the requester.
    Elevation {
        db_users: BTreeMap<String, String>,
        /// End every session of the user at teardown (default): a session that ran `SET ROLE`
        /// keeps the role after `REVOKE`.
        terminate_sessions: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Name of the environment variable that holds the admin connection URL.
    pub database_url_env: String,
    pub roles: Vec<String>,
    pub mode: PostgresMode,
    /// Host (and optionally port) to put in the handed-over connection string.
    pub connect_host: Option<String>,
    /// Accept an admin URL that logs in as a superuser (refused by default).
    pub allow_superuser_admin: bool,
}

impl PostgresConfig {
    /// What `jit policy check` warns about: settings that let access outlive a teardown or widen
    /// what a holder can do.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let PostgresMode::Elevation {
            terminate_sessions: false,
            ..
        } = self.mode
        {
            out.push(
                "terminate_sessions = false: sessions the user has open keep the granted roles after \
                 teardown (a session that ran SET ROLE keeps the role's rights until it disconnects). \
                 By default jit ends every session of the mapped user, including those opened before \
                 the grant, because PostgreSQL cannot show which session used the role."
                    .to_owned(),
            );
        }
        if self.allow_superuser_admin {
            out.push(format!(
                "allow_superuser_admin = true: jit accepts a superuser admin URL in ${}; a mistake in \
                 teardown or in the granted roles then runs with superuser rights. Prefer a CREATEROLE admin.",
                self.database_url_env
            ));
        }
        out
    }
}

/// `aws_identity_center`: an IAM Identity Center account assignment (a permission set in an
/// account) or a group membership, for the requester's Identity Center user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIdentityCenterConfig {
    pub instance_arn: String,
    pub identity_store_id: String,
    pub target: IdentityCenterTarget,
    /// Slack user ID or `identity:<name>` → Identity Center user name or email; otherwise the
    /// requester's Slack email.
    pub principals: BTreeMap<String, String>,
    /// The AWS access portal, where the holder signs in.
    pub portal_url: String,
    /// The longest session the permission set may give (its SessionDuration): grants refuse and
    /// `jit doctor` fails when it is longer, since a session started during the grant outlives
    /// the assignment by up to that much.
    pub session_duration: Option<GrantDuration>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCenterTarget {
    /// One account (a resource naming several becomes one resource per account).
    Account {
        account_id: String,
        permission_set_arn: String,
    },
    /// Membership of an Identity Center group.
    Group { group_id: String },
}

impl AwsIdentityCenterConfig {
    /// What `jit policy check` warns about.
    pub fn warnings(&self) -> Vec<String> {
        match (&self.target, self.session_duration) {
            (IdentityCenterTarget::Account { .. }, None) => vec![
                "no session_duration: an IAM Identity Center session started during a grant outlives \
                 the assignment by up to the permission set's session duration (up to 12h). Set \
                 session_duration to refuse grants of a permission set whose sessions last longer."
                    .to_owned(),
            ],
            (IdentityCenterTarget::Group { .. }, _) => vec![
                "group_id: sessions started through the group's assignments outlive the membership by \
                 up to their permission sets' session durations, which jit does not check."
                    .to_owned(),
            ],
            _ => Vec::new(),
        }
    }
}

/// An Okta group whose membership jit grants (`okta_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OktaGroupConfig {
    /// `https://example.okta.com`, without a trailing slash.
    pub org_url: String,
    /// The group's Okta ID (`00g…`).
    pub group_id: String,
    pub auth: OktaAuth,
    /// Requester key (Slack user ID or `identity:<name>`) → Okta login; else the Slack email.
    pub principals: BTreeMap<String, String>,
}

/// How jit authenticates to Okta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OktaAuth {
    /// An API token (`SSWS`), from this environment variable (or `<name>_FILE`).
    ApiToken { env: String },
    /// OAuth 2.0 client credentials of a service app, with a `private_key_jwt` assertion signed
    /// by the PEM private key in this environment variable (or `<name>_FILE`).
    PrivateKey {
        client_id: String,
        private_key_env: String,
        /// The key's `kid` in the app's key set, when it has several.
        key_id: Option<String>,
    },
}

impl OktaGroupConfig {
    /// The environment variable holding the secret (token or private key).
    pub fn secret_env(&self) -> &str {
        match &self.auth {
            OktaAuth::ApiToken { env } => env,
            OktaAuth::PrivateKey {
                private_key_env, ..
            } => private_key_env,
        }
    }
}

/// The longest session AWS lets a permission set give.
pub const IDENTITY_CENTER_MAX_SESSION: GrantDuration = GrantDuration::from_hours(12);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    None,
    Exec(ExecConfig),
    AwsSts(AwsStsConfig),
    Postgres(PostgresConfig),
    AwsIdentityCenter(AwsIdentityCenterConfig),
    OktaGroup(OktaGroupConfig),
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::None => "none",
            ProviderConfig::Exec(_) => "exec",
            ProviderConfig::AwsSts(_) => "aws_sts",
            ProviderConfig::Postgres(_) => "postgres",
            ProviderConfig::AwsIdentityCenter(_) => "aws_identity_center",
            ProviderConfig::OktaGroup(_) => "okta_group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub id: ResourceId,
    pub description: String,
    pub provider: ProviderConfig,
    pub max_duration: GrantDuration,
    pub default_duration: GrantDuration,
    /// The longest a grant may last from its first issue to its end, extensions included.
    pub max_lifetime: GrantDuration,
    /// `None`: any Slack user may request (identities must always be named).
    pub requesters: Option<Principals>,
    pub approvers: Approvers,
    pub approvals_required: u32,
    pub auto_approve: Option<AutoApprove>,
    pub breakglass: bool,
    pub reminder_before: GrantDuration,
    pub pending_timeout: GrantDuration,
    /// In `after` order, each before the pending timeout.
    pub escalate: Vec<EscalationStep>,
    /// Whether `escalate` is the built-in default (one reminder at half the pending timeout).
    pub escalate_is_default: bool,
    pub justification: JustificationRule,
    pub ticket: TicketRule,
    /// How far ahead of the request a scheduled start may be.
    pub max_start_ahead: GrantDuration,
}

impl Resource {
    /// Who may decide a request of this resource once its first `steps_run` escalation steps
    /// have run: the approvers, and the users and groups those steps named. Deduplicated, in
    /// policy order.
    pub fn deciders(&self, steps_run: u32) -> (Vec<SlackUserId>, Vec<SlackGroupId>) {
        let mut users = self.approvers.users.clone();
        let mut groups = self.approvers.groups.clone();
        for step in self.escalate.iter().take(steps_run as usize) {
            if let Some(to) = &step.to {
                for u in &to.users {
                    if !users.contains(u) {
                        users.push(u.clone());
                    }
                }
                for g in &to.groups {
                    if !groups.contains(g) {
                        groups.push(g.clone());
                    }
                }
            }
        }
        (users, groups)
    }

    /// Whether `user` is among [`Resource::deciders`] (named, or through a group for full
    /// members of the workspace only).
    pub fn is_decider(
        &self,
        user: &SlackUserId,
        steps_run: u32,
        membership: &dyn Membership,
    ) -> bool {
        let (users, groups) = self.deciders(steps_run);
        users.contains(user)
            || (membership.standing(user) == Standing::Member
                && groups.iter().any(|g| membership.is_member(user, g)))
    }

    /// Every group that may ever decide (the approvers' and every escalation step's).
    pub fn all_decider_groups(&self) -> Vec<SlackGroupId> {
        self.deciders(self.escalate.len() as u32).1
    }
}

/// A regular expression from the policy, compared by its text.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    /// At most this much compiled program: a policy pattern cannot make matching expensive.
    const SIZE_LIMIT: usize = 1 << 20;

    fn compile(text: &str) -> Result<Pattern, String> {
        regex::RegexBuilder::new(text)
            .size_limit(Self::SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(|e| format!("`{text}` is not a valid regular expression: {e}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

/// What a justification must be (`justification = { min_length, pattern, hint }`). The default
/// asks only that it is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JustificationRule {
    /// Characters, after trimming.
    pub min_length: usize,
    pub pattern: Option<Pattern>,
    /// Shown with every refusal: what a good justification looks like.
    pub hint: Option<String>,
}

/// What a ticket must be (`ticket = { required, pattern, url }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketRule {
    pub required: bool,
    /// A ticket must match it; the first word of a justification that matches is taken as the
    /// ticket when none is given.
    pub pattern: Option<Pattern>,
    /// Where a ticket is shown, with `{ticket}` in place of the ticket.
    pub url: Option<String>,
}

/// A justification or ticket that breaks its rule: a stable code (the API's) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleBreach {
    pub code: &'static str,
    pub message: String,
}

impl JustificationRule {
    pub fn check(&self, resource: &ResourceId, text: &str) -> Result<(), RuleBreach> {
        let text = text.trim();
        let hint = self
            .hint
            .as_deref()
            .map(|h| format!(" {h}"))
            .unwrap_or_default();
        let length = text.chars().count();
        if length < self.min_length {
            return Err(RuleBreach {
                code: "justification_too_short",
                message: format!(
                    "The justification for `{resource}` is too short: at least {} characters, and it has {length}.{hint}",
                    self.min_length
                ),
            });
        }
        if let Some(pattern) = &self.pattern
            && !pattern.is_match(text)
        {
            return Err(RuleBreach {
                code: "justification_mismatch",
                message: match &self.hint {
                    Some(hint) => format!(
                        "The justification for `{resource}` does not follow its rule. {hint}"
                    ),
                    None => format!(
                        "The justification for `{resource}` must match `{}`.",
                        pattern.as_str()
                    ),
                },
            });
        }
        Ok(())
    }

    /// The rule in words, for `/jit why` and the request form.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.min_length > 0 {
            parts.push(format!("at least {} characters", self.min_length));
        }
        if let Some(pattern) = &self.pattern {
            parts.push(format!("matching `{}`", pattern.as_str()));
        }
        if parts.is_empty() && self.hint.is_none() {
            return None;
        }
        let mut text = parts.join(", ");
        if let Some(hint) = &self.hint {
            if !text.is_empty() {
                text.push_str(". ");
            }
            text.push_str(hint);
        }
        Some(text)
    }
}

impl TicketRule {
    /// The first word of `text` that matches the pattern (trimmed of punctuation around it).
    pub fn find_in(&self, text: &str) -> Option<String> {
        let pattern = self.pattern.as_ref()?;
        text.split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
            .find(|w| !w.is_empty() && pattern.is_match(w))
            .map(str::to_owned)
    }

    pub fn check(&self, resource: &ResourceId, ticket: Option<&str>) -> Result<(), RuleBreach> {
        match ticket.map(str::trim).filter(|t| !t.is_empty()) {
            None if self.required => Err(RuleBreach {
                code: "ticket_required",
                message: match &self.pattern {
                    Some(p) => format!(
                        "`{resource}` needs a ticket (matching `{}`): put it in the justification or the ticket field.",
                        p.as_str()
                    ),
                    None => format!(
                        "`{resource}` needs a ticket: put it in the ticket field (or the API's `ticket`)."
                    ),
                },
            }),
            None => Ok(()),
            Some(ticket) => match &self.pattern {
                Some(p) if !p.is_match(ticket) => Err(RuleBreach {
                    code: "ticket_mismatch",
                    message: format!(
                        "The ticket `{ticket}` is not one `{resource}` accepts: it must match `{}`.",
                        p.as_str()
                    ),
                }),
                _ => Ok(()),
            },
        }
    }

    /// The rule in words, for `/jit why`.
    pub fn describe(&self) -> Option<String> {
        match (self.required, &self.pattern) {
            (false, None) => None,
            (true, None) => Some("required".into()),
            (true, Some(p)) => Some(format!("required, matching `{}`", p.as_str())),
            (false, Some(p)) => Some(format!("optional, matching `{}`", p.as_str())),
        }
    }

    /// The ticket's address, from `url` (the ticket percent-encoded), if the rule has one.
    pub fn link(&self, ticket: &str) -> Option<String> {
        let template = self.url.as_deref()?;
        let encoded: String = ticket
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Some(template.replace("{ticket}", &encoded))
    }
}

fn justification_rule(file: Option<&JustificationFile>) -> Result<JustificationRule, String> {
    let Some(file) = file else {
        return Ok(JustificationRule::default());
    };
    if file.min_length > 2000 {
        return Err(format!(
            "justification.min_length {} is longer than a justification may be (2000)",
            file.min_length
        ));
    }
    if file.hint.as_ref().is_some_and(|h| h.chars().count() > 300) {
        return Err("justification.hint must be at most 300 characters".into());
    }
    Ok(JustificationRule {
        min_length: file.min_length,
        pattern: file
            .pattern
            .as_deref()
            .map(Pattern::compile)
            .transpose()
            .map_err(|e| format!("justification.pattern: {e}"))?,
        hint: file.hint.clone(),
    })
}

fn ticket_rule(file: Option<&TicketFile>) -> Result<TicketRule, String> {
    let Some(file) = file else {
        return Ok(TicketRule::default());
    };
    if let Some(url) = &file.url
        && (!(url.starts_with("https://") || url.starts_with("http://"))
            || !url.contains("{ticket}"))
    {
        return Err(format!(
            "ticket.url `{url}` must be an http(s) address with `{{ticket}}` where the ticket goes"
        ));
    }
    Ok(TicketRule {
        required: file.required,
        pattern: file
            .pattern
            .as_deref()
            .map(Pattern::compile)
            .transpose()
            .map_err(|e| format!("ticket.pattern: {e}"))?,
        url: file.url.clone(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub description: String,
    pub owner: Principals,
    pub resources: Vec<ResourceId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_user_per_minute: u32,
    pub teardown_alert_after_failures: u32,
    /// Requests (and extensions) one requester, person or identity, may have waiting for
    /// approval at once; requests approved by policy at once never wait and are not counted.
    pub max_pending_per_user: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub audit_channel: SlackChannelId,
    pub admins: Principals,
    pub limits: Limits,
    resources: Vec<Resource>,
    identities: Vec<Identity>,
    webhooks: Vec<Webhook>,
}

/// The families of audit events a webhook can ask for (`events = ["request.*", …]`); each event
/// type is `family.event`, such as `grant.granted` or `request.denied`.
pub const EVENT_FAMILIES: &[&str] = &["request", "grant", "credentials", "token", "api", "system"];

/// Where audit events are POSTed, signed (`[[webhook]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// `*`, `family.*` or `family.event`.
    pub events: Vec<String>,
    /// The variable (or `<name>_FILE`) holding the signing secret.
    pub secret_env: String,
}

impl Webhook {
    /// Whether events of `event_type` (`family.event`) go to this webhook.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|pattern| {
            pattern == "*"
                || pattern == event_type
                || pattern
                    .strip_suffix(".*")
                    .is_some_and(|family| event_type.split('.').next() == Some(family))
        })
    }
}

fn build_webhook(raw: WebhookFile) -> Result<Webhook, String> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| raw.url.starts_with(p) && raw.url[p.len()..].starts_with([':', '/']));
    if !(raw.url.starts_with("https://") || loopback) || raw.url.contains(char::is_whitespace) {
        return Err(format!(
            "url `{}` must be https:// (plain http only to this machine: 127.0.0.1, localhost)",
            raw.url
        ));
    }
    if raw.events.is_empty() {
        return Err("events must name at least one event type, `family.*` or `*`".into());
    }
    for pattern in &raw.events {
        let family = pattern.split('.').next().unwrap_or_default();
        let well_formed = pattern == "*"
            || (EVENT_FAMILIES.contains(&family)
                && pattern.split('.').count() == 2
                && !pattern.ends_with('.'));
        if !well_formed {
            return Err(format!(
                "events: `{pattern}` is not `*`, `family.*` or `family.event` (families: {})",
                EVENT_FAMILIES.join(", ")
            ));
        }
    }
    let name_ok = !raw.secret_env.is_empty()
        && raw
            .secret_env
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(format!(
            "secret_env `{}` must name an environment variable (A-Z, 0-9, _)",
            raw.secret_env
        ));
    }
    Ok(Webhook {
        url: raw.url,
        events: raw.events,
        secret_env: raw.secret_env,
    })
}

/// A policy error with the position it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for PolicyError {}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Reads a file named in the policy (a session policy, say). Supplied by the caller so that
/// parsing stays free of I/O.
pub type FileReader<'a> = &'a dyn Fn(&str) -> std::io::Result<String>;

/// Validates an AWS session policy: JSON, and at most 2,048 characters once compacted.
/// Returns the compact form that is sent to AWS.
pub fn validate_session_policy(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("session policy is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("session policy must be a JSON object".into());
    }
    let compact = value.to_string();
    let chars = compact.chars().count();
    if chars > AWS_SESSION_POLICY_MAX_CHARS {
        return Err(format!(
            "session policy is {chars} characters once compacted; AWS allows at most {AWS_SESSION_POLICY_MAX_CHARS}"
        ));
    }
    Ok(compact)
}

/// Checks an IAM role ARN's shape: `arn:<partition>:iam::<12-digit account>:role/<path/name>`.
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|name| !name.is_empty())
}

/// A PostgreSQL role or user name jit is willing to handle (quoted safely either way).
fn is_reasonable_pg_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.contains('\0')
}

/// `objects_owner` must name a role of its own: not one jit creates and drops (`jit_<digits>`),
/// not a reserved or predefined role, not a granted role (whose holders would then own what
/// earlier holders left). That it exists and holds no power is checked against the server
/// (`PostgresProvider::check_admin`, at startup and before each reassignment).
fn check_objects_owner(owner: &str, roles: &[String]) -> Result<(), String> {
    let lower = owner.to_ascii_lowercase();
    let ephemeral = lower
        .strip_prefix("jit_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !is_reasonable_pg_name(owner)
        || ephemeral
        || lower.starts_with("pg_")
        || matches!(lower.as_str(), "public" | "none")
    {
        return Err(format!(
            "objects_owner `{owner}` cannot be used: name a NOLOGIN role of its own (not jit_<number>, \
             pg_*, public or none), for example objects_owner = \"jit_leftovers\""
        ));
    }
    if roles.iter().any(|r| r == owner) {
        return Err(format!(
            "objects_owner `{owner}` is also a granted role; holders would own what earlier holders \
             left behind. Name a separate NOLOGIN role that holds nothing"
        ));
    }
    Ok(())
}

impl Policy {
    /// Parses and validates policy text. `read_file` resolves `session_policy_file` paths.
    pub fn parse(text: &str, read_file: FileReader<'_>) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| position(text, s.start)).unwrap_or((1, 1));
            PolicyError {
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        let defaults = file.defaults;
        if defaults.approvals_required == 0 {
            return Err(PolicyError {
                line: 1,
                column: 1,
                message: "defaults.approvals_required must be at least 1".into(),
            });
        }

        let mut identity_names = HashSet::new();
        let mut identities = Vec::new();
        for spanned in file.identity {
            let (line, column) = position(text, spanned.span().start);
            let err = |message: String| PolicyError {
                line,
                column,
                message,
            };
            let identity = spanned.into_inner();
            let name_ok = (1..=64).contains(&identity.name.len())
                && identity
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(err(format!(
                    "identity name `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
                    identity.name
                )));
            }
            if !identity_names.insert(identity.name.clone()) {
                return Err(err(format!(
                    "identity `{}` is declared twice",
                    identity.name
                )));
            }
            let owner = Principals::from_file(identity.owner);
            if owner.users.is_empty() && owner.groups.is_empty() {
                return Err(err(format!(
                    "identity `{}` needs an owner: a Slack user or user group",
                    identity.name
                )));
            }
            identities.push(Identity {
                name: identity.name,
                description: identity.description,
                owner,
                resources: identity.resources,
            });
        }

        let mut seen = HashSet::new();
        let mut resources = Vec::new();
        let mut positions = Vec::new();
        for spanned in file.resource {
            let (line, column) = position(text, spanned.span().start);
            positions.push((line, column));
            let err = |message: String| PolicyError {
                line,
                column,
                message,
            };
            let raw = spanned.into_inner();
            let id = raw.id.clone();
            let err_for = |message: String| err(format!("resource `{id}`: {message}"));
            if !seen.insert(raw.id.clone()) {
                return Err(err_for("declared twice".into()));
            }
            let built =
                build_resource(raw, &defaults, &identity_names, read_file).map_err(err_for)?;
            if built.len() > 1 {
                // Expanded per account: the ids are the expanded ones.
                seen.remove(&id);
                positions.pop();
            }
            for resource in built {
                if resource.id != id && !seen.insert(resource.id.clone()) {
                    return Err(err(format!("resource `{}`: declared twice", resource.id)));
                }
                if resource.id != id {
                    positions.push((line, column));
                }
                resources.push(resource);
            }
        }

        // No command may see the admin URL of a postgres resource (or an Okta API token).
        let admin_urls: Vec<&str> = resources
            .iter()
            .filter_map(|r| match &r.provider {
                ProviderConfig::Postgres(c) => Some(c.database_url_env.as_str()),
                ProviderConfig::OktaGroup(c) => Some(c.secret_env()),
                _ => None,
            })
            .collect();
        for (resource, (line, column)) in resources.iter().zip(&positions) {
            if let ProviderConfig::Exec(exec) = &resource.provider
                && let Some(name) = exec
                    .env
                    .iter()
                    .find(|n| admin_urls.contains(&n.strip_suffix("_FILE").unwrap_or(n)))
            {
                return Err(PolicyError {
                    line: *line,
                    column: *column,
                    message: format!(
                        "resource `{}`: env may not pass `{name}`: it holds the admin URL of a postgres resource or an Okta API token",
                        resource.id
                    ),
                });
            }
        }

        for identity in &identities {
            for resource in &identity.resources {
                if !seen.contains(resource) {
                    return Err(PolicyError {
                        line: 1,
                        column: 1,
                        message: format!(
                            "identity `{}` names resource `{resource}`, which is not declared",
                            identity.name
                        ),
                    });
                }
            }
        }

        let mut webhooks: Vec<Webhook> = Vec::new();
        for spanned in file.webhook {
            let (line, column) = position(text, spanned.span().start);
            let webhook = build_webhook(spanned.into_inner()).map_err(|message| PolicyError {
                line,
                column,
                message: format!("webhook: {message}"),
            })?;
            if webhooks.iter().any(|w| w.url == webhook.url) {
                return Err(PolicyError {
                    line,
                    column,
                    message: format!("webhook: `{}` is declared twice", webhook.url),
                });
            }
            webhooks.push(webhook);
        }

        let admins = Principals::from_file(file.slack.admins);
        if admins.users.is_empty() && admins.groups.is_empty() {
            return Err(PolicyError {
                line: 1,
                column: 1,
                message: "slack.admins must name at least one user or user group".into(),
            });
        }
        if file.limits.requests_per_user_per_minute == 0 {
            return Err(PolicyError {
                line: 1,
                column: 1,
                message: "limits.requests_per_user_per_minute must be at least 1".into(),
            });
        }
        let max_pending = &file.limits.max_pending_per_user;
        if *max_pending.get_ref() == 0 {
            let (line, column) = position(text, max_pending.span().start);
            return Err(PolicyError {
                line,
                column,
                message: "limits.max_pending_per_user must be at least 1 (it is how many requests one requester may have waiting for approval at once)".into(),
            });
        }
        Ok(Policy {
            audit_channel: file.slack.audit_channel,
            admins,
            limits: Limits {
                requests_per_user_per_minute: file.limits.requests_per_user_per_minute,
                teardown_alert_after_failures: file.limits.teardown_alert_after_failures.max(1),
                max_pending_per_user: *max_pending.get_ref(),
            },
            resources,
            identities,
            webhooks,
        })
    }

    /// Every PagerDuty schedule an `auto_approve.oncall` rule names, sorted, once each.
    pub fn oncall_schedules(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .resources
            .iter()
            .filter_map(|r| r.auto_approve.as_ref()?.oncall.as_ref())
            .flat_map(|o| o.pagerduty_schedules.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Where audit events are POSTed (`[[webhook]]`).
    pub fn webhooks(&self) -> &[Webhook] {
        &self.webhooks
    }

    /// What `jit policy check` warns about for the policy as a whole (resources have their own).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let breakglass: Vec<&str> = self
            .resources
            .iter()
            .filter(|r| r.breakglass)
            .map(|r| r.id.as_str())
            .collect();
        if !breakglass.is_empty() && self.admins.groups.is_empty() && self.admins.users.len() < 2 {
            out.push(format!(
                "break-glass is allowed on {} but only one admin is named: nobody can review it (an admin may not review their own break-glass). Name a second admin or an admin group.",
                breakglass.join(", ")
            ));
        }
        out
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id.as_str() == id)
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    pub fn identity(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }

    pub fn is_admin(&self, user: &SlackUserId, membership: &dyn Membership) -> bool {
        self.admins.contains_user(user, membership)
    }

    /// The resources `who` may request, in policy order.
    pub fn requestable_by<'a>(
        &'a self,
        who: &'a Requester,
        membership: &'a dyn Membership,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources
            .iter()
            .filter(move |r| self.may_request(r, who, membership))
    }

    fn may_request(
        &self,
        resource: &Resource,
        who: &Requester,
        membership: &dyn Membership,
    ) -> bool {
        match who {
            Requester::User(user) if membership.standing(user) != Standing::Member => resource
                .requesters
                .as_ref()
                .is_some_and(|p| p.users.contains(user)),
            Requester::User(_) => resource
                .requesters
                .as_ref()
                .is_none_or(|p| p.contains(who, membership)),
            Requester::Identity(name) => {
                let declared = self
                    .identity(name)
                    .is_some_and(|i| i.resources.contains(&resource.id));
                declared
                    && resource
                        .requesters
                        .as_ref()
                        .is_some_and(|p| p.contains(who, membership))
            }
        }
    }

    /// Ids close to `given`, best first, for "did you mean".
    pub fn suggest(&self, given: &str) -> Vec<String> {
        let given = given.to_ascii_lowercase();
        let mut scored: Vec<(f64, &str)> = self
            .resources
            .iter()
            .map(|r| {
                let id = r.id.as_str();
                let mut score = strsim::jaro_winkler(&given, id);
                if id.contains(&given) || given.contains(id) {
                    score = score.max(0.9);
                }
                (score, id)
            })
            .filter(|(score, _)| *score >= 0.75)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(3)
            .map(|(_, id)| id.to_owned())
            .collect()
    }

    /// Decides how a request would be handled, or why it is refused.
    pub fn evaluate<'a>(
        &'a self,
        resource_id: &str,
        who: &Requester,
        duration: Option<GrantDuration>,
        membership: &dyn Membership,
    ) -> Result<Evaluation<'a>, Refusal> {
        let resource = self
            .resource(resource_id)
            .ok_or_else(|| Refusal::UnknownResource {
                given: resource_id.to_owned(),
                suggestions: self.suggest(resource_id),
            })?;
        if !self.may_request(resource, who, membership) {
            if let Requester::User(user) = who {
                let standing = membership.standing(user);
                if standing != Standing::Member {
                    return Err(Refusal::NotNamed {
                        resource: resource.id.clone(),
                        standing,
                    });
                }
            }
            return Err(Refusal::NotAllowed {
                resource: resource.id.clone(),
            });
        }
        let duration = duration.unwrap_or(resource.default_duration);
        if duration > resource.max_duration {
            return Err(Refusal::TooLong {
                resource: resource.id.clone(),
                requested: duration,
                max: resource.max_duration,
            });
        }
        let outsider = who
            .user()
            .is_some_and(|u| membership.standing(u) != Standing::Member);
        let (route, on_call) = match &resource.auto_approve {
            Some(rule) if duration <= rule.max_duration => {
                let everyone = rule.who.is_empty() && rule.oncall.is_none() && !outsider;
                if everyone || rule.who.contains(who, membership) {
                    (Route::Auto, None)
                } else {
                    match (&rule.oncall, who) {
                        // Only full members of the workspace qualify through a schedule, as
                        // through a group.
                        (Some(oncall), Requester::User(user)) if !outsider => {
                            let status = membership.on_call(user, &oncall.pagerduty_schedules);
                            let route = if matches!(status, OnCall::Yes { .. }) {
                                Route::Auto
                            } else {
                                Route::Approval
                            };
                            (route, Some(status))
                        }
                        _ => (Route::Approval, None),
                    }
                }
            }
            _ => (Route::Approval, None),
        };
        Ok(Evaluation {
            resource,
            duration,
            route,
            on_call,
        })
    }

    /// Whether `resource` may be asked for with access starting at `start`, at `now`: not in the
    /// past, and at most its `max_start_ahead` away.
    pub fn check_start(
        &self,
        resource: &Resource,
        now: chrono::DateTime<chrono::Utc>,
        start: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Refusal> {
        if start <= now {
            return Err(Refusal::StartPassed { start });
        }
        let ahead = (start - now).num_seconds().max(0) as u64;
        if ahead > resource.max_start_ahead.as_secs() {
            return Err(Refusal::StartTooFar {
                resource: resource.id.clone(),
                start,
                // Rounded up to the minute: seconds only add noise.
                ahead: GrantDuration::from_secs(ahead.div_ceil(60) * 60),
                max: resource.max_start_ahead,
            });
        }
        Ok(())
    }

    /// Decides how an extension by `duration` would be handled. `committed` is the grant's
    /// lifetime so far: from its first issue to its current end, plus extensions approved or
    /// waiting that would still add to it. The total may not pass the resource's
    /// `max_lifetime`, and the auto-approval rule applies only while the total stays within the
    /// rule's own `max_duration`: a chain of small extensions never adds up to an unapproved
    /// long grant.
    pub fn evaluate_extension<'a>(
        &'a self,
        resource_id: &str,
        who: &Requester,
        duration: GrantDuration,
        committed: GrantDuration,
        membership: &dyn Membership,
    ) -> Result<Evaluation<'a>, Refusal> {
        let mut evaluation = self.evaluate(resource_id, who, Some(duration), membership)?;
        let resource = evaluation.resource;
        let total =
            GrantDuration::from_secs(committed.as_secs().saturating_add(duration.as_secs()));
        if total > resource.max_lifetime {
            return Err(Refusal::LifetimeExceeded {
                resource: resource.id.clone(),
                requested: duration,
                total,
                max_lifetime: resource.max_lifetime,
            });
        }
        if resource
            .auto_approve
            .as_ref()
            .is_none_or(|rule| total > rule.max_duration)
        {
            evaluation.route = Route::Approval;
            // The rule does not cover the whole grant, on call or not: no on-call verdict to
            // report.
            evaluation.on_call = None;
        }
        Ok(evaluation)
    }

    /// Whether `approver` may decide a request by `requester` on `resource` whose first
    /// `steps_run` escalation steps have run ([`Resource::deciders`]).
    pub fn may_decide(
        &self,
        resource: &Resource,
        requester: &Requester,
        approver: &SlackUserId,
        steps_run: u32,
        membership: &dyn Membership,
    ) -> Result<(), DecisionRefusal> {
        if requester.user() == Some(approver) {
            return Err(DecisionRefusal::OwnRequest);
        }
        if let Requester::Identity(name) = requester {
            // The owner of a non-human identity asks on its behalf; they do not approve it.
            if self
                .identity(name)
                .is_some_and(|i| i.owner.contains_user(approver, membership))
            {
                return Err(DecisionRefusal::OwnIdentity);
            }
        }
        if !resource.is_decider(approver, steps_run, membership) {
            return Err(DecisionRefusal::NotAnApprover);
        }
        Ok(())
    }
}

fn build_resource(
    raw: ResourceFile,
    defaults: &DefaultsFile,
    identity_names: &HashSet<String>,
    read_file: FileReader<'_>,
) -> Result<Vec<Resource>, String> {
    let max_duration = raw.max_duration.unwrap_or(defaults.max_duration);
    let default_duration = raw
        .default_duration
        .or(defaults.default_duration)
        .unwrap_or_else(|| max_duration.min(GrantDuration::from_hours(1)));
    if default_duration > max_duration {
        return Err(format!(
            "default_duration {default_duration} is longer than max_duration {max_duration}"
        ));
    }
    let max_lifetime = raw
        .max_lifetime
        .unwrap_or_else(|| default_lifetime(max_duration));
    if max_lifetime < max_duration {
        return Err(format!(
            "max_lifetime {max_lifetime} is shorter than max_duration {max_duration}; a grant could not even last its own maximum"
        ));
    }
    let max_start_ahead = raw.max_start_ahead.unwrap_or(defaults.max_start_ahead);
    if max_start_ahead > MAX_START_AHEAD_LIMIT {
        return Err(format!(
            "max_start_ahead {max_start_ahead} is too far: a start may be scheduled at most {MAX_START_AHEAD_LIMIT} (365 days) ahead"
        ));
    }
    let approvals_required = raw
        .approvals_required
        .unwrap_or(defaults.approvals_required);
    if approvals_required == 0 {
        return Err("approvals_required must be at least 1".into());
    }
    if raw.approvers.users.is_empty() && raw.approvers.groups.is_empty() {
        return Err(
            "approvers must name at least one user or user group (the channel only says where to ask)"
                .into(),
        );
    }
    if raw.approvers.groups.is_empty() && (raw.approvers.users.len() as u32) < approvals_required {
        return Err(format!(
            "approvals_required is {approvals_required} but only {} approver(s) are listed",
            raw.approvers.users.len()
        ));
    }
    let check_identities = |names: &[String], what: &str| -> Result<(), String> {
        match names.iter().find(|n| !identity_names.contains(*n)) {
            Some(unknown) => Err(format!(
                "{what} names identity `{unknown}`, which has no [[identity]] entry"
            )),
            None => Ok(()),
        }
    };
    let requesters = raw.requesters.map(Principals::from_file);
    if let Some(p) = &requesters {
        check_identities(&p.identities, "requesters")?;
    }
    let auto_approve = match raw.auto_approve {
        Some(rule) => {
            if rule.max_duration > max_duration {
                return Err(format!(
                    "auto_approve.max_duration {} is longer than max_duration {max_duration}",
                    rule.max_duration
                ));
            }
            check_identities(&rule.identities, "auto_approve")?;
            let oncall = rule.oncall.map(on_call_rule).transpose()?;
            Some(AutoApprove {
                max_duration: rule.max_duration,
                who: Principals {
                    users: rule.users,
                    groups: rule.groups,
                    identities: rule.identities,
                },
                oncall,
            })
        }
        None => None,
    };

    let kind = raw.provider;
    let mut misplaced: Vec<&str> = Vec::new();
    let mut not_for = |present: bool, key: &'static str, allowed: ProviderKind| {
        if present && kind != allowed {
            misplaced.push(key);
        }
    };
    not_for(
        raw.grant_command.is_some(),
        "grant_command",
        ProviderKind::Exec,
    );
    not_for(
        raw.revoke_command.is_some(),
        "revoke_command",
        ProviderKind::Exec,
    );
    not_for(raw.timeout.is_some(), "timeout", ProviderKind::Exec);
    not_for(raw.parameters.is_some(), "parameters", ProviderKind::Exec);
    not_for(raw.env.is_some(), "env", ProviderKind::Exec);
    not_for(raw.role_arn.is_some(), "role_arn", ProviderKind::AwsSts);
    not_for(
        raw.role_max_session.is_some(),
        "role_max_session",
        ProviderKind::AwsSts,
    );
    not_for(
        raw.session_policy.is_some(),
        "session_policy",
        ProviderKind::AwsSts,
    );
    not_for(
        raw.session_policy_file.is_some(),
        "session_policy_file",
        ProviderKind::AwsSts,
    );
    not_for(
        raw.region.is_some() && kind != ProviderKind::AwsIdentityCenter,
        "region",
        ProviderKind::AwsSts,
    );
    for (present, key) in [
        (raw.instance_arn.is_some(), "instance_arn"),
        (raw.identity_store_id.is_some(), "identity_store_id"),
        (raw.account_id.is_some(), "account_id"),
        (raw.permission_set_arn.is_some(), "permission_set_arn"),
        (raw.portal_url.is_some(), "portal_url"),
        (raw.session_duration.is_some(), "session_duration"),
    ] {
        not_for(present, key, ProviderKind::AwsIdentityCenter);
    }
    not_for(
        raw.database_url_env.is_some(),
        "database_url_env",
        ProviderKind::Postgres,
    );
    not_for(raw.mode.is_some(), "mode", ProviderKind::Postgres);
    not_for(raw.roles.is_some(), "roles", ProviderKind::Postgres);
    not_for(
        raw.connection_limit.is_some(),
        "connection_limit",
        ProviderKind::Postgres,
    );
    not_for(raw.db_users.is_some(), "db_users", ProviderKind::Postgres);
    not_for(
        raw.terminate_sessions.is_some(),
        "terminate_sessions",
        ProviderKind::Postgres,
    );
    not_for(
        raw.connect_host.is_some(),
        "connect_host",
        ProviderKind::Postgres,
    );
    not_for(
        raw.objects_owner.is_some(),
        "objects_owner",
        ProviderKind::Postgres,
    );
    not_for(
        raw.allow_superuser_admin.is_some(),
        "allow_superuser_admin",
        ProviderKind::Postgres,
    );
    not_for(raw.org_url.is_some(), "org_url", ProviderKind::OktaGroup);
    not_for(
        raw.api_token_env.is_some(),
        "api_token_env",
        ProviderKind::OktaGroup,
    );
    not_for(
        raw.client_id.is_some(),
        "client_id",
        ProviderKind::OktaGroup,
    );
    not_for(
        raw.private_key_env.is_some(),
        "private_key_env",
        ProviderKind::OktaGroup,
    );
    not_for(raw.key_id.is_some(), "key_id", ProviderKind::OktaGroup);
    // Keys of both identity-provider kinds.
    let identity_provider = matches!(
        kind,
        ProviderKind::AwsIdentityCenter | ProviderKind::OktaGroup
    );
    for (present, key) in [
        (raw.group_id.is_some(), "group_id"),
        (raw.principals.is_some(), "principals"),
    ] {
        if present && !identity_provider {
            misplaced.push(key);
        }
    }
    if !misplaced.is_empty() {
        return Err(format!(
            "{} only apply to another provider than `{}`",
            misplaced.join(", "),
            ProviderConfig::kind_name(kind)
        ));
    }

    // An aws_identity_center resource naming several accounts becomes one resource per account.
    let mut accounts: Vec<String> = Vec::new();
    let provider = match kind {
        ProviderKind::None => ProviderConfig::None,
        ProviderKind::AwsIdentityCenter => {
            let (config, all) = identity_center_config(IdentityCenterKeys {
                instance_arn: raw.instance_arn,
                identity_store_id: raw.identity_store_id,
                account_id: raw.account_id,
                permission_set_arn: raw.permission_set_arn,
                group_id: raw.group_id,
                principals: raw.principals,
                portal_url: raw.portal_url,
                session_duration: raw.session_duration,
                region: raw.region,
            })?;
            accounts = all;
            ProviderConfig::AwsIdentityCenter(config)
        }
        ProviderKind::Exec => {
            let command = |c: Option<Vec<String>>, key: &str| match c {
                Some(argv) if !argv.is_empty() && !argv[0].is_empty() => Ok(argv),
                _ => Err(format!(
                    "provider `exec` needs {key} = [\"program\", \"arg\", …]"
                )),
            };
            let parameters = match raw.parameters {
                Some(table) => serde_json::to_value(table)
                    .map_err(|e| format!("parameters cannot be passed as JSON: {e}"))?,
                None => serde_json::Value::Object(Default::default()),
            };
            let env = raw.env.unwrap_or_default();
            if let Some(bad) = env.iter().find(|n| !is_env_name(n)) {
                return Err(format!(
                    "env names environment variables such as KUBECONFIG; `{bad}` is not one"
                ));
            }
            if let Some(secret) = env.iter().find(|n| is_reserved_env(n)) {
                return Err(format!(
                    "env may not pass `{secret}` to the commands: it is one of jit's own secrets or credentials (give the commands their own, e.g. AWS_PROFILE with a profile of theirs)"
                ));
            }
            ProviderConfig::Exec(ExecConfig {
                grant_command: command(raw.grant_command, "grant_command")?,
                revoke_command: command(raw.revoke_command, "revoke_command")?,
                timeout: raw.timeout.unwrap_or(GrantDuration::from_secs(30)),
                parameters,
                env,
            })
        }
        ProviderKind::AwsSts => {
            let role_arn = raw.role_arn.ok_or("provider `aws_sts` needs role_arn")?;
            if !is_role_arn(&role_arn) {
                return Err(format!(
                    "role_arn `{role_arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"
                ));
            }
            let role_max_session = raw.role_max_session.unwrap_or(GrantDuration::from_hours(1));
            if role_max_session > AWS_MAX_SESSION || role_max_session < AWS_MIN_SESSION {
                return Err(format!(
                    "role_max_session {role_max_session} must be between 15m and 12h, as in IAM"
                ));
            }
            if max_duration > role_max_session {
                return Err(format!(
                    "max_duration {max_duration} is longer than the role's maximum session ({role_max_session}); \
                     AWS credentials cannot outlive it (raise role_max_session if the role allows up to 12h)"
                ));
            }
            let session_policy = match (raw.session_policy, raw.session_policy_file) {
                (Some(_), Some(_)) => {
                    return Err("set session_policy or session_policy_file, not both".into());
                }
                (Some(text), None) => Some(validate_session_policy(&text)?),
                (None, Some(path)) => {
                    let text = read_file(&path)
                        .map_err(|e| format!("cannot read session_policy_file `{path}`: {e}"))?;
                    Some(validate_session_policy(&text)?)
                }
                (None, None) => None,
            };
            ProviderConfig::AwsSts(AwsStsConfig {
                role_arn,
                role_max_session,
                session_policy,
                region: raw.region,
            })
        }
        ProviderKind::Postgres => {
            let database_url_env = raw
                .database_url_env
                .ok_or("provider `postgres` needs database_url_env, the name of the environment variable holding the admin URL")?;
            let env_ok = !database_url_env.is_empty()
                && database_url_env
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !env_ok {
                return Err(format!(
                    "database_url_env must be an environment variable name such as PROD_DB_ADMIN_URL, not `{database_url_env}`"
                ));
            }
            let roles = raw.roles.unwrap_or_default();
            if roles.is_empty() {
                return Err("provider `postgres` needs roles = [\"role\", …] to grant".into());
            }
            if let Some(bad) = roles.iter().find(|r| !is_reasonable_pg_name(r)) {
                return Err(format!("role name `{bad}` is not a valid PostgreSQL name"));
            }
            let mode = match raw.mode.unwrap_or(PostgresModeKind::Ephemeral) {
                PostgresModeKind::Ephemeral => {
                    if raw.db_users.is_some() || raw.terminate_sessions.is_some() {
                        return Err(
                            "db_users and terminate_sessions apply to mode = \"elevation\" only"
                                .into(),
                        );
                    }
                    let connection_limit = raw.connection_limit.unwrap_or(5);
                    if !(1..=1000).contains(&connection_limit) {
                        return Err("connection_limit must be between 1 and 1000".into());
                    }
                    if let Some(owner) = &raw.objects_owner {
                        check_objects_owner(owner, &roles)?;
                    }
                    PostgresMode::Ephemeral {
                        connection_limit,
                        objects_owner: raw.objects_owner,
                    }
                }
                PostgresModeKind::Elevation => {
                    if raw.connection_limit.is_some() {
                        return Err("connection_limit applies to mode = \"ephemeral\" only".into());
                    }
                    if raw.objects_owner.is_some() {
                        return Err(
                            "objects_owner applies to mode = \"ephemeral\" only (in elevation mode, \
                             what the user creates belongs to their own database user)"
                                .into(),
                        );
                    }
                    let db_users = raw.db_users.unwrap_or_default();
                    if db_users.is_empty() {
                        return Err(
                            "mode = \"elevation\" needs db_users = { U0123ABCD = \"db_user\" } to map requesters to database users"
                                .into(),
                        );
                    }
                    for (key, user) in &db_users {
                        if Requester::from_key(key).is_none() {
                            return Err(format!(
                                "db_users key `{key}` is neither a Slack user ID nor identity:<name>"
                            ));
                        }
                        if !is_reasonable_pg_name(user) {
                            return Err(format!(
                                "db_users value `{user}` is not a valid PostgreSQL name"
                            ));
                        }
                    }
                    PostgresMode::Elevation {
                        db_users,
                        terminate_sessions: raw.terminate_sessions.unwrap_or(true),
                    }
                }
            };
            ProviderConfig::Postgres(PostgresConfig {
                database_url_env,
                roles,
                mode,
                connect_host: raw.connect_host,
                allow_superuser_admin: raw.allow_superuser_admin.unwrap_or(false),
            })
        }
        ProviderKind::OktaGroup => {
            let auth = okta_auth(
                raw.api_token_env,
                raw.client_id,
                raw.private_key_env,
                raw.key_id,
            )?;
            ProviderConfig::OktaGroup(okta_group(raw.org_url, raw.group_id, auth, raw.principals)?)
        }
    };

    let notify = raw
        .approvers
        .notify
        .or(defaults.approvers_notify)
        .unwrap_or_default();
    if notify.in_channel() && raw.approvers.channel.is_none() {
        return Err(format!(
            "approvers needs a channel, where the request is posted (notify is \"{}\"; only with notify = \"dm\" may it be left out)",
            notify.as_str()
        ));
    }
    let pending_timeout = raw.pending_timeout.unwrap_or(defaults.pending_timeout);
    let (escalate, escalate_is_default) = match (&raw.escalate, &defaults.escalate) {
        (Some(steps), _) => (escalation(steps, pending_timeout, "escalate")?, false),
        (None, Some(steps)) => (
            escalation(steps, pending_timeout, "escalate (from [defaults])")?,
            false,
        ),
        (None, None) => (
            vec![EscalationStep {
                after: pending_timeout.half(),
                to: None,
            }],
            true,
        ),
    };

    let resource = Resource {
        id: raw.id,
        description: raw.description,
        provider,
        max_duration,
        default_duration,
        max_lifetime,
        requesters,
        approvers: Approvers {
            channel: raw.approvers.channel,
            users: raw.approvers.users,
            groups: raw.approvers.groups,
            notify,
        },
        approvals_required,
        auto_approve,
        breakglass: raw.breakglass,
        reminder_before: raw.reminder_before.unwrap_or(defaults.reminder_before),
        pending_timeout,
        escalate,
        escalate_is_default,
        justification: justification_rule(
            raw.justification
                .as_ref()
                .or(defaults.justification.as_ref()),
        )?,
        ticket: ticket_rule(raw.ticket.as_ref().or(defaults.ticket.as_ref()))?,
        max_start_ahead,
    };
    per_account(resource, &accounts)
}

/// `<id>.<account>` for each of several accounts, each with the resource's rules; one account:
/// the resource as written.
fn per_account(resource: Resource, accounts: &[String]) -> Result<Vec<Resource>, String> {
    if accounts.len() < 2 {
        return Ok(vec![resource]);
    }
    accounts
        .iter()
        .map(|account| {
            let id = ResourceId::parse(&format!("{}.{account}", resource.id)).map_err(|_| {
                format!(
                    "the id is too long to name one resource per account (`{}.{account}` must be at most 64 characters)",
                    resource.id
                )
            })?;
            let mut one = resource.clone();
            one.id = id;
            one.description = match resource.description.as_str() {
                "" => format!("account {account}"),
                d => format!("{d} (account {account})"),
            };
            if let ProviderConfig::AwsIdentityCenter(c) = &mut one.provider
                && let IdentityCenterTarget::Account { account_id, .. } = &mut c.target
            {
                account_id.clone_from(account);
            }
            Ok(one)
        })
        .collect()
}

/// The `aws_identity_center` keys of a resource, as written.
struct IdentityCenterKeys {
    instance_arn: Option<String>,
    identity_store_id: Option<String>,
    account_id: Option<OneOrMany>,
    permission_set_arn: Option<String>,
    group_id: Option<String>,
    principals: Option<BTreeMap<String, String>>,
    portal_url: Option<String>,
    session_duration: Option<GrantDuration>,
    region: Option<String>,
}

/// The `aws_identity_center` keys, checked; and every account named.
fn identity_center_config(
    raw: IdentityCenterKeys,
) -> Result<(AwsIdentityCenterConfig, Vec<String>), String> {
    let need = |v: &Option<String>, key: &str, example: &str| match v {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(format!(
            "provider `aws_identity_center` needs {key} (for example {key} = \"{example}\")"
        )),
    };
    let instance_arn = need(
        &raw.instance_arn,
        "instance_arn",
        "arn:aws:sso:::instance/ssoins-1234567890abcdef",
    )?;
    if !instance_arn.starts_with("arn:aws") || !instance_arn.contains(":sso:::instance/") {
        return Err(format!(
            "instance_arn `{instance_arn}` is not an IAM Identity Center instance ARN (arn:aws:sso:::instance/ssoins-…)"
        ));
    }
    let identity_store_id = need(&raw.identity_store_id, "identity_store_id", "d-1234567890")?;
    let portal_url = need(
        &raw.portal_url,
        "portal_url",
        "https://d-1234567890.awsapps.com/start",
    )?;
    if !portal_url.starts_with("https://") && !portal_url.starts_with("http://") {
        return Err(format!(
            "portal_url `{portal_url}` is not a URL (the AWS access portal, e.g. https://d-1234567890.awsapps.com/start)"
        ));
    }
    let principals = raw.principals.clone().unwrap_or_default();
    for (key, login) in &principals {
        if Requester::from_key(key).is_none() {
            return Err(format!(
                "principals key `{key}` is neither a Slack user ID nor identity:<name>"
            ));
        }
        if login.trim().is_empty() {
            return Err(format!(
                "principals maps `{key}` to an empty Identity Center user name"
            ));
        }
    }
    if let Some(d) = raw.session_duration
        && (d < GrantDuration::from_hours(1) || d > IDENTITY_CENTER_MAX_SESSION)
    {
        return Err(format!(
            "session_duration {d} must be between 1h and 12h, as a permission set's session duration in IAM Identity Center"
        ));
    }
    let (target, accounts) = if let Some(group) = &raw.group_id {
        if raw.account_id.is_some() || raw.permission_set_arn.is_some() {
            return Err(
                "set group_id (group membership) or account_id with permission_set_arn (an account assignment), not both"
                    .into(),
            );
        }
        if group.trim().is_empty() {
            return Err("group_id is empty".into());
        }
        if raw.session_duration.is_some() {
            return Err(
                "session_duration applies to account assignments (account_id), not to group_id"
                    .into(),
            );
        }
        (
            IdentityCenterTarget::Group {
                group_id: group.trim().to_owned(),
            },
            Vec::new(),
        )
    } else {
        let account = &raw.account_id;
        let accounts = match account {
            Some(OneOrMany::One(a)) => vec![a.clone()],
            Some(OneOrMany::Many(list)) => list.clone(),
            None => Vec::new(),
        };
        if accounts.is_empty() {
            return Err(
                "provider `aws_identity_center` needs account_id = \"123456789012\" (or a list of accounts, or group_id for group membership)"
                    .into(),
            );
        }
        let mut seen = HashSet::new();
        for a in &accounts {
            if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "account_id `{a}` is not an AWS account ID (12 digits)"
                ));
            }
            if !seen.insert(a.as_str()) {
                return Err(format!("account_id names `{a}` twice"));
            }
        }
        let permission_set_arn = need(
            &raw.permission_set_arn,
            "permission_set_arn",
            "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-1234567890abcdef",
        )?;
        // AWS writes arn:aws:sso:::permissionSet/ssoins-…/ps-… (moto: …:instance/ssoins-…/ps-…).
        if !permission_set_arn.starts_with("arn:aws")
            || !permission_set_arn.contains(":sso:::")
            || !permission_set_arn.contains("/ps-")
        {
            return Err(format!(
                "permission_set_arn `{permission_set_arn}` is not a permission set ARN (arn:aws:sso:::permissionSet/ssoins-…/ps-…)"
            ));
        }
        (
            IdentityCenterTarget::Account {
                account_id: accounts[0].clone(),
                permission_set_arn,
            },
            accounts,
        )
    };
    Ok((
        AwsIdentityCenterConfig {
            instance_arn,
            identity_store_id,
            target,
            principals,
            portal_url,
            session_duration: raw.session_duration,
            region: raw.region.clone(),
        },
        accounts,
    ))
}

/// Validates escalation steps against the resource's pending timeout.
fn escalation(
    steps: &[EscalationStepFile],
    pending_timeout: GrantDuration,
    key: &str,
) -> Result<Vec<EscalationStep>, String> {
    if steps.len() > MAX_ESCALATION_STEPS {
        return Err(format!(
            "{key} has {} steps; at most {MAX_ESCALATION_STEPS} are allowed",
            steps.len()
        ));
    }
    let mut out: Vec<EscalationStep> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        if let Some(previous) = out.last()
            && step.after <= previous.after
        {
            return Err(format!(
                "{key} step {n} (after {}) must come later than step {} (after {}): steps are in increasing order",
                step.after,
                n - 1,
                previous.after
            ));
        }
        if step.after >= pending_timeout {
            return Err(format!(
                "{key} step {n} (after {}) comes at or after pending_timeout ({pending_timeout}): the request has expired by then",
                step.after
            ));
        }
        let to = match &step.to {
            None => None,
            Some(t) if t.users.is_empty() && t.groups.is_empty() && t.channel.is_none() => {
                return Err(format!(
                    "{key} step {n}: `to` names nobody; give users, groups or a channel, or leave `to` out to remind the approvers so far"
                ));
            }
            Some(t) => Some(EscalationTarget {
                users: t.users.clone(),
                groups: t.groups.clone(),
                channel: t.channel.clone(),
            }),
        };
        out.push(EscalationStep {
            after: step.after,
            to,
        });
    }
    Ok(out)
}

fn on_call_rule(file: OnCallFile) -> Result<OnCallRule, String> {
    let schedules = file.pagerduty_schedules;
    if schedules.is_empty() {
        return Err(
            "auto_approve.oncall.pagerduty_schedules must name at least one PagerDuty schedule ID, such as \"PABC123\""
                .into(),
        );
    }
    if let Some(bad) = schedules.iter().find(|s| !is_pagerduty_id(s)) {
        return Err(format!(
            "auto_approve.oncall.pagerduty_schedules: `{bad}` is not a PagerDuty schedule ID (upper-case letters and digits starting with P, as in the schedule's address …/schedules/PABC123)"
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = schedules.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(format!(
            "auto_approve.oncall.pagerduty_schedules names `{twice}` twice"
        ));
    }
    Ok(OnCallRule {
        pagerduty_schedules: schedules,
    })
}

impl ProviderConfig {
    fn kind_name(kind: ProviderKind) -> &'static str {
        match kind {
            ProviderKind::None => "none",
            ProviderKind::Exec => "exec",
            ProviderKind::AwsSts => "aws_sts",
            ProviderKind::Postgres => "postgres",
            ProviderKind::AwsIdentityCenter => "aws_identity_center",
            ProviderKind::OktaGroup => "okta_group",
        }
    }
}

/// Checks the keys of an `okta_group` resource.
fn okta_group(
    org_url: Option<String>,
    group_id: Option<String>,
    auth: OktaAuth,
    principals: Option<BTreeMap<String, String>>,
) -> Result<OktaGroupConfig, String> {
    let org_url = org_url
        .ok_or("provider `okta_group` needs org_url, such as \"https://example.okta.com\"")?
        .trim_end_matches('/')
        .to_owned();
    let host = org_url
        .strip_prefix("https://")
        .or_else(|| {
            // Plain HTTP only to this machine (a test double); the token must not cross a network.
            org_url
                .strip_prefix("http://")
                .filter(|h| h.starts_with("127.0.0.1:") || h.starts_with("localhost:"))
        })
        .ok_or_else(|| {
            format!("org_url `{org_url}` must be an https:// URL such as https://example.okta.com")
        })?;
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "org_url `{org_url}` must be the org's address only, such as https://example.okta.com"
        ));
    }
    let group_id = group_id.ok_or(
        "provider `okta_group` needs group_id, the group's Okta ID (00g…, from the group's page in the Admin Console)",
    )?;
    if group_id.is_empty()
        || group_id.len() > 64
        || !group_id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "group_id `{group_id}` is not an Okta group ID (letters and digits, such as 00g1a2b3c4d5e6f7g8h9)"
        ));
    }
    let principals = principals.unwrap_or_default();
    for (key, login) in &principals {
        if Requester::from_key(key).is_none() {
            return Err(format!(
                "principals key `{key}` is neither a Slack user ID nor identity:<name>"
            ));
        }
        if login.trim().is_empty() || login.contains(['/', '?', '#']) {
            return Err(format!(
                "principals value `{login}` (for {key}) is not an Okta login"
            ));
        }
    }
    Ok(OktaGroupConfig {
        org_url,
        group_id,
        auth,
        principals,
    })
}

/// An API token, or OAuth 2.0 client credentials with a private key: one of the two.
fn okta_auth(
    api_token_env: Option<String>,
    client_id: Option<String>,
    private_key_env: Option<String>,
    key_id: Option<String>,
) -> Result<OktaAuth, String> {
    let env_name = |key: &str, name: String| {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if ok && !is_reserved_env(&name) {
            Ok(name)
        } else {
            Err(format!(
                "{key} must name an environment variable of its own, such as OKTA_API_TOKEN, not `{name}`"
            ))
        }
    };
    match (api_token_env, client_id, private_key_env) {
        (Some(env), None, None) => {
            if key_id.is_some() {
                return Err("key_id goes with client_id and private_key_env".into());
            }
            Ok(OktaAuth::ApiToken {
                env: env_name("api_token_env", env)?,
            })
        }
        (None, Some(client_id), Some(private_key_env)) => {
            let plain = |v: &str| {
                !v.is_empty()
                    && v.len() <= 100
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !plain(&client_id) {
                return Err(format!(
                    "client_id `{client_id}` is not an Okta client ID (such as 0oa1b2c3d4e5f6g7h8i9)"
                ));
            }
            if let Some(kid) = key_id.as_deref().filter(|k| !plain(k)) {
                return Err(format!("key_id `{kid}` is not a key ID"));
            }
            Ok(OktaAuth::PrivateKey {
                client_id,
                private_key_env: env_name("private_key_env", private_key_env)?,
                key_id,
            })
        }
        (None, None, None) => Err(
            "provider `okta_group` needs api_token_env (the environment variable holding an Okta API token), or client_id and private_key_env (OAuth 2.0 client credentials with a private key)"
                .into(),
        ),
        _ => Err(
            "set api_token_env, or client_id and private_key_env, not a mix (an API token, or OAuth 2.0 client credentials with a private key)"
                .into(),
        ),
    }
}

/// A grant's lifetime cap when the resource names none: three times its `max_duration`.
pub fn default_lifetime(max_duration: GrantDuration) -> GrantDuration {
    GrantDuration::from_secs(max_duration.as_secs().saturating_mul(3))
}

/// How an allowed request proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Approved at once by policy.
    Auto,
    /// Posted to the approvers.
    Approval,
}

#[derive(Debug, Clone)]
pub struct Evaluation<'a> {
    pub resource: &'a Resource,
    pub duration: GrantDuration,
    pub route: Route,
    /// What the rule's `oncall` said, when it was consulted: the requester was not otherwise
    /// in the rule and the duration was within it.
    pub on_call: Option<OnCall>,
}

impl Evaluation<'_> {
    /// The schedule that got this request approved by policy, if on-call did.
    pub fn on_call_schedule(&self) -> Option<&str> {
        match (&self.on_call, self.route) {
            (Some(OnCall::Yes { schedule }), Route::Auto) => Some(schedule),
            _ => None,
        }
    }

    /// For the approvers: why the on-call rule did not approve it, when it could not tell.
    pub fn on_call_note(&self) -> Option<String> {
        match &self.on_call {
            Some(OnCall::Unknown { why }) if self.route == Route::Approval => Some(format!(
                "On-call auto-approval did not apply: {why}. It fails closed, so this request waits for approval."
            )),
            _ => None,
        }
    }
}

/// Why a request is refused. Shown to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("There is no resource `{given}`.{}", did_you_mean(.suggestions))]
    UnknownResource {
        given: String,
        suggestions: Vec<String>,
    },
    #[error("You are not allowed to request `{resource}`. `/jit why {resource}` shows who may.")]
    NotAllowed { resource: ResourceId },
    #[error(
        "You are {}, and such people may request `{resource}` only where the policy names them (by user ID in its requesters). If you just joined the workspace, try again in a few minutes.",
        .standing.describe()
    )]
    NotNamed {
        resource: ResourceId,
        standing: Standing,
    },
    #[error("`{resource}` can be granted for at most {max} ({}); you asked for {requested}.", .max.humanize())]
    TooLong {
        resource: ResourceId,
        requested: GrantDuration,
        max: GrantDuration,
    },
    #[error(
        "With {requested} more, this grant of `{resource}` would last {} in all since it was issued; `{resource}` grants last at most {max_lifetime} ({}), extensions included. Please ask for a new grant instead.",
        .total.humanize(), .max_lifetime.humanize()
    )]
    LifetimeExceeded {
        resource: ResourceId,
        requested: GrantDuration,
        /// From first issue to the end the extension would give.
        total: GrantDuration,
        max_lifetime: GrantDuration,
    },
    #[error(
        "The start you asked for ({}) has already passed. Give a time in the future, or leave `at …` out to start as soon as it is approved.",
        .start.format("%Y-%m-%d %H:%M UTC")
    )]
    StartPassed {
        start: chrono::DateTime<chrono::Utc>,
    },
    #[error(
        "`{resource}` may be scheduled at most {max} ({}) ahead; the start you asked for ({}) is {} from now.",
        .max.humanize(), .start.format("%Y-%m-%d %H:%M UTC"), .ahead.humanize()
    )]
    StartTooFar {
        resource: ResourceId,
        start: chrono::DateTime<chrono::Utc>,
        ahead: GrantDuration,
        max: GrantDuration,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => " `/jit request` without arguments lists the resources you can request.".into(),
        [one] => format!(" Did you mean `{one}`?"),
        many => format!(
            " Did you mean one of {}?",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Why someone may not approve or deny a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecisionRefusal {
    #[error("You cannot approve or deny your own request.")]
    OwnRequest,
    #[error("You own this identity, so someone else has to decide its requests.")]
    OwnIdentity,
    #[error("You are not an approver for this resource.")]
    NotAnApprover,
}

#[cfg(test)]
mod tests;
