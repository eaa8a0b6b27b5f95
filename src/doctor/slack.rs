//! The Slack checks: the token and its workspace, the scopes, the bot's channels, and the
//! users and groups the policy names. Read-only methods only.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use futures::StreamExt;

use super::{Check, listing};
use crate::config::ServeConfig;
use crate::domain::policy::{Policy, PostgresMode, ProviderConfig, Requester};
use crate::metrics::Metrics;
use crate::slack::api::{SCOPES, SlackApi, SlackError};

/// Calls to Slack at once (users and groups are checked one call each).
const PARALLEL_CALLS: usize = 4;
/// A rate-limited call is tried again this many times, after Slack's `Retry-After`.
const RATE_LIMIT_RETRIES: usize = 3;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Slack codes that mean the token itself is refused.
const TOKEN_REFUSED: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "not_allowed_token_type",
    "no_permission",
];

/// Calls `call`, again after Slack's `Retry-After` when rate limited.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, SlackError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SlackError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(SlackError::RateLimited { retry_after }) if tries < RATE_LIMIT_RETRIES => {
                tries += 1;
                tokio::time::sleep(retry_after.min(MAX_RETRY_WAIT)).await;
            }
            other => return other,
        }
    }
}

/// Ids the policy names, each with where it is used (`approver of db`, `admin`, …).
type Uses = BTreeMap<String, Vec<String>>;

fn add(uses: &mut Uses, id: &str, role: String) {
    let roles = uses.entry(id.to_owned()).or_default();
    if !roles.contains(&role) {
        roles.push(role);
    }
}

/// Every channel the bot must be in: the audit channel and each approvers' channel.
fn channels_in(policy: &Policy) -> Uses {
    let mut uses = Uses::new();
    add(
        &mut uses,
        policy.audit_channel.as_str(),
        "the audit channel".into(),
    );
    for r in policy.resources() {
        if let Some(channel) = &r.approvers.channel {
            add(
                &mut uses,
                channel.as_str(),
                format!("approvers' channel of {}", r.id),
            );
        }
        for (i, step) in r.escalate.iter().enumerate() {
            if let Some(channel) = step.to.as_ref().and_then(|t| t.channel.as_ref()) {
                add(
                    &mut uses,
                    channel.as_str(),
                    format!("escalation step {} of {}", i + 1, r.id),
                );
            }
        }
    }
    uses
}

/// Every user and every group the policy names.
fn principals_in(policy: &Policy) -> (Uses, Uses) {
    let mut users = Uses::new();
    let mut groups = Uses::new();
    let mut principals = |p: &crate::domain::policy::Principals, role: &dyn Fn() -> String| {
        for u in &p.users {
            add(&mut users, u.as_str(), role());
        }
        for g in &p.groups {
            add(&mut groups, g.as_str(), role());
        }
    };
    principals(&policy.admins, &|| "admin".into());
    for r in policy.resources() {
        if let Some(p) = &r.requesters {
            principals(p, &|| format!("requester of {}", r.id));
        }
        let approvers = crate::domain::policy::Principals {
            users: r.approvers.users.clone(),
            groups: r.approvers.groups.clone(),
            identities: Vec::new(),
        };
        principals(&approvers, &|| format!("approver of {}", r.id));
        for (i, step) in r.escalate.iter().enumerate() {
            if let Some(to) = &step.to {
                let added = crate::domain::policy::Principals {
                    users: to.users.clone(),
                    groups: to.groups.clone(),
                    identities: Vec::new(),
                };
                principals(&added, &|| {
                    format!("approver of {} from escalation step {}", r.id, i + 1)
                });
            }
        }
        if let Some(a) = &r.auto_approve {
            principals(&a.who, &|| format!("auto-approved for {}", r.id));
        }
    }
    for i in policy.identities() {
        principals(&i.owner, &|| format!("owner of identity {}", i.name));
    }
    for r in policy.resources() {
        if let ProviderConfig::Postgres(c) = &r.provider
            && let PostgresMode::Elevation { db_users, .. } = &c.mode
        {
            for key in db_users.keys() {
                if let Some(Requester::User(user)) = Requester::from_key(key) {
                    add(&mut users, user.as_str(), format!("db_users of {}", r.id));
                }
            }
        }
        if let ProviderConfig::OktaGroup(c) = &r.provider {
            for key in c.principals.keys() {
                if let Some(Requester::User(user)) = Requester::from_key(key) {
                    add(&mut users, user.as_str(), format!("principals of {}", r.id));
                }
            }
        }
    }
    (users, groups)
}

fn roles(uses: &[String]) -> String {
    listing(uses, 3)
}

pub async fn checks(config: &ServeConfig, policy: Option<&Policy>) -> Vec<Check> {
    let api = match SlackApi::new(
        &config.slack_api_url,
        config.bot_token.clone(),
        NonZeroU32::new(1).expect("one"),
        Metrics::new(),
    ) {
        Ok(api) => api.with_timeout(Duration::from_secs(10)),
        Err(e) => {
            return vec![Check::fail(
                "slack token",
                format!("cannot set up the Slack client: {e}"),
                "check JIT_SLACK_API_URL",
            )];
        }
    };
    let mut out = Vec::new();
    let info = match patiently(|| api.auth_test()).await {
        Ok(info) => info,
        Err(e) => {
            out.push(token_refused(config, &e));
            out.push(Check::skip(
                "slack",
                "scopes, channels, users and groups not checked: auth.test failed",
            ));
            return out;
        }
    };
    let team = match (&info.team, &info.team_id) {
        (Some(name), Some(id)) => format!("workspace \"{name}\" ({id})"),
        (None, Some(id)) => format!("workspace {id}"),
        _ => "an unnamed workspace".into(),
    };
    let bot = match (&info.user, &info.user_id) {
        (Some(name), Some(id)) => format!("bot @{name} ({id})"),
        (_, Some(id)) => format!("bot {id}"),
        _ => "the bot".into(),
    };
    let handle = info.user.clone().unwrap_or_else(|| "jit".into());
    match (&config.slack_team_id, &info.team_id) {
        (Some(configured), Some(actual)) if configured == actual => out.push(Check::ok(
            "slack token",
            format!("valid: {bot} of {team}, the workspace JIT_SLACK_TEAM_ID names"),
        )),
        (Some(configured), actual) => {
            out.push(Check::fail(
                "slack token",
                format!(
                    "the token is valid but belongs to {team}, not to the configured workspace {configured} (JIT_SLACK_TEAM_ID){}",
                    if actual.is_none() { "; auth.test named no team" } else { "" }
                ),
                "use the bot token of the app installed in the configured workspace, or correct JIT_SLACK_TEAM_ID",
            ));
            out.push(Check::skip(
                "slack",
                "scopes, channels, users and groups not checked: the token is for another workspace",
            ));
            return out;
        }
        (None, Some(actual)) => out.push(Check::warn(
            "slack token",
            format!("valid: {bot} of {team}; JIT_SLACK_TEAM_ID is not set"),
            format!("set JIT_SLACK_TEAM_ID={actual} so jit knows which workspace it serves"),
        )),
        (None, None) => out.push(Check::ok("slack token", format!("valid: {bot} of {team}"))),
    }
    out.extend(scope_checks(info.scopes.as_deref()));
    let Some(policy) = policy else {
        out.push(Check::skip(
            "slack",
            "channels, users and groups not checked: the policy did not load",
        ));
        return out;
    };
    for (channel, uses) in channels_in(policy) {
        out.push(channel_check(&api, &channel, &uses, &handle).await);
    }
    let (users, groups) = principals_in(policy);
    out.extend(user_checks(&api, users).await);
    out.extend(group_checks(&api, policy, groups).await);
    out
}

fn token_refused(config: &ServeConfig, e: &SlackError) -> Check {
    match e {
        SlackError::Fatal { code, .. } if TOKEN_REFUSED.contains(&code.as_str()) => Check::fail(
            "slack token",
            format!("Slack refuses SLACK_BOT_TOKEN ({code})"),
            "copy the Bot User OAuth Token (xoxb-…) from the app's Install App page into SLACK_BOT_TOKEN; reinstall the app if it was uninstalled",
        ),
        SlackError::Fatal { .. } => Check::fail(
            "slack token",
            format!("auth.test failed: {e}"),
            "check SLACK_BOT_TOKEN and JIT_SLACK_API_URL",
        ),
        SlackError::Transient(_) | SlackError::RateLimited { .. } => Check::fail(
            "slack token",
            format!("cannot reach Slack at {}: {e}", config.slack_api_url),
            "check the network path to Slack (proxy, firewall, DNS) and JIT_SLACK_API_URL, then run jit doctor again",
        ),
    }
}

/// The scopes `auth.test`'s answer listed, compared with `slack-app.yaml`'s.
fn scope_checks(granted: Option<&[String]>) -> Vec<Check> {
    let Some(granted) = granted else {
        return vec![Check::skip(
            "slack scopes",
            "Slack did not list the token's scopes (no x-oauth-scopes header), so they cannot be compared with slack-app.yaml",
        )];
    };
    let has = |name: &str| granted.iter().any(|g| g == name);
    let missing = |doctor_only: bool| -> Vec<String> {
        SCOPES
            .iter()
            .filter(|s| s.doctor_only == doctor_only && !has(s.name))
            .map(|s| format!("{} ({})", s.name, s.used_for))
            .collect()
    };
    let reinstall = "add them under OAuth & Permissions → Bot Token Scopes (or recreate the app from slack-app.yaml) and reinstall the app to the workspace; if Slack then shows a new bot token, update SLACK_BOT_TOKEN";
    let mut out = Vec::new();
    let needed = missing(false);
    let for_doctor = missing(true);
    if !needed.is_empty() {
        out.push(Check::fail(
            "slack scopes",
            format!(
                "the bot token lacks {}{}",
                needed.join(", "),
                if for_doctor.is_empty() {
                    String::new()
                } else {
                    format!("; and, for jit doctor only, {}", for_doctor.join(", "))
                }
            ),
            reinstall,
        ));
    } else if !for_doctor.is_empty() {
        out.push(Check::warn(
            "slack scopes",
            format!(
                "jit serve has every scope it needs; jit doctor lacks {}, so it cannot check channel membership",
                for_doctor.join(", ")
            ),
            format!("to let it, {reinstall}"),
        ));
    } else {
        out.push(Check::ok(
            "slack scopes",
            format!(
                "the bot token has every scope of slack-app.yaml ({})",
                granted.len()
            ),
        ));
    }
    let extra: Vec<&str> = granted
        .iter()
        .map(String::as_str)
        .filter(|g| !SCOPES.iter().any(|s| s.name == *g))
        .collect();
    if !extra.is_empty() {
        out.push(Check::warn(
            "slack extra scopes",
            format!(
                "the bot token has scopes jit never uses: {}",
                extra.join(", ")
            ),
            "remove them under OAuth & Permissions and reinstall the app: jit needs only those of slack-app.yaml",
        ));
    }
    out
}

async fn channel_check(api: &SlackApi, channel: &str, uses: &[String], handle: &str) -> Check {
    let name = format!("slack channel {channel}");
    let used = roles(uses);
    let invite = |place: &str| format!("type /invite @{handle} in {place}");
    match patiently(|| api.channel_info(channel)).await {
        Ok(info) => {
            let shown = info
                .name
                .as_deref()
                .map(|n| format!("#{n}"))
                .unwrap_or_else(|| channel.to_owned());
            let private = if info.is_private { "private " } else { "" };
            if info.is_archived {
                Check::fail(
                    name,
                    format!(
                        "{private}channel {shown} ({used}) is archived: nothing can be posted there"
                    ),
                    "unarchive it, or name another channel in the policy",
                )
            } else {
                match info.is_member {
                    Some(true) => Check::ok(
                        name,
                        format!("the bot is a member of {private}channel {shown} ({used})"),
                    ),
                    Some(false) => Check::fail(
                        name,
                        format!(
                            "the bot is not a member of {private}channel {shown} ({used}): every post there is refused (not_in_channel)"
                        ),
                        invite(&shown),
                    ),
                    None => Check::skip(
                        name,
                        format!("Slack did not say whether the bot is in {shown} ({used})"),
                    ),
                }
            }
        }
        Err(SlackError::Fatal { code, .. }) if code == "channel_not_found" => Check::fail(
            name,
            format!(
                "channel {channel} ({used}) was not found: it does not exist, or it is private and the bot was not invited"
            ),
            format!(
                "{} if it is private, or correct the channel ID in the policy (channel details → About → Channel ID; names such as #ops are not IDs)",
                invite("the channel")
            ),
        ),
        Err(SlackError::Fatal { code, .. }) if code == "missing_scope" => Check::skip(
            name,
            format!(
                "cannot check whether the bot is in {channel} ({used}): conversations.info needs channels:read (public channels) or groups:read (private ones), which the token lacks"
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot check channel {channel} ({used}): {e}"),
            "run jit doctor again; if it persists, check Slack's status",
        ),
    }
}

async fn user_checks(api: &SlackApi, users: Uses) -> Vec<Check> {
    if users.is_empty() {
        return Vec::new();
    }
    let results: Vec<(String, Vec<String>, _)> = futures::stream::iter(users)
        .map(|(id, uses)| async move {
            let result = patiently(|| api.user_info(&id)).await;
            (id, uses, result)
        })
        .buffered(PARALLEL_CALLS)
        .collect()
        .await;
    let mut out = Vec::new();
    let mut found = Vec::new();
    for (id, uses, result) in results {
        let name = format!("slack user {id}");
        match result {
            Ok(user) if user.deleted => out.push(Check::warn(
                name,
                format!(
                    "user {id} ({}{}) is deactivated",
                    user.name.map(|n| format!("@{n}, ")).unwrap_or_default(),
                    roles(&uses)
                ),
                "remove them from the policy, or name someone who can act",
            )),
            Ok(_) => found.push(id),
            Err(SlackError::Fatal { code, .. }) if code == "missing_scope" => {
                out.push(Check::skip(
                    "slack users",
                    "cannot check the policy's users: users.info needs users:read, which the token lacks",
                ));
                return out;
            }
            Err(SlackError::Fatal { code, .. })
                if code == "user_not_found" || code == "user_not_visible" =>
            {
                out.push(Check::fail(
                    name,
                    format!(
                        "user {id} ({}) does not exist in this workspace ({code})",
                        roles(&uses)
                    ),
                    "correct the id in the policy (in Slack: the person's profile → ⋮ → Copy member ID)",
                ))
            }
            Err(e) => out.push(Check::fail(
                name,
                format!("cannot check user {id} ({}): {e}", roles(&uses)),
                "run jit doctor again; if it persists, check Slack's status",
            )),
        }
    }
    if !found.is_empty() {
        out.insert(
            0,
            Check::ok(
                "slack users",
                format!(
                    "{} user id(s) of the policy exist: {}",
                    found.len(),
                    listing(&found, 8)
                ),
            ),
        );
    }
    out
}

async fn group_checks(api: &SlackApi, policy: &Policy, groups: Uses) -> Vec<Check> {
    if groups.is_empty() {
        return Vec::new();
    }
    let results: Vec<(String, Vec<String>, _)> = futures::stream::iter(groups)
        .map(|(id, uses)| async move {
            let result = patiently(|| api.group_members(&id)).await;
            (id, uses, result)
        })
        .buffered(PARALLEL_CALLS)
        .collect()
        .await;
    let approver_groups: Vec<crate::domain::ids::SlackGroupId> = policy
        .resources()
        .iter()
        .flat_map(|r| r.all_decider_groups())
        .collect();
    let mut out = Vec::new();
    let mut found = Vec::new();
    for (id, uses, result) in results {
        let name = format!("slack group {id}");
        match result {
            Ok(members)
                if members.is_empty() && approver_groups.iter().any(|g| g.as_str() == id) =>
            {
                out.push(Check::warn(
                    name,
                    format!(
                        "user group {id} ({}) has no members: nobody in it can approve",
                        roles(&uses)
                    ),
                    "add its approvers in Slack, or name another group in the policy",
                ))
            }
            Ok(_) => found.push(id),
            Err(SlackError::Fatal { code, .. }) if code == "missing_scope" => {
                out.push(Check::skip(
                    "slack groups",
                    "cannot check the policy's user groups: usergroups.users.list needs usergroups:read, which the token lacks",
                ));
                return out;
            }
            Err(SlackError::Fatal { code, .. }) if code == "no_such_subteam" => {
                out.push(Check::fail(
                    name,
                    format!(
                        "user group {id} ({}) does not exist in this workspace (no_such_subteam)",
                        roles(&uses)
                    ),
                    "correct the id in the policy (user groups are S…; Slack shows the id in the group's URL)",
                ))
            }
            Err(e) => out.push(Check::fail(
                name,
                format!("cannot check user group {id} ({}): {e}", roles(&uses)),
                "run jit doctor again; if it persists, check Slack's status",
            )),
        }
    }
    if !found.is_empty() {
        out.insert(
            0,
            Check::ok(
                "slack groups",
                format!(
                    "{} user group(s) of the policy exist: {}",
                    found.len(),
                    listing(&found, 8)
                ),
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SEC"], groups = ["S0SEC"] }

[[resource]]
id = "db"
provider = "none"
requesters = { groups = ["S0ENG"] }
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"], groups = ["S0SRE"] }
auto_approve = { max_duration = "1h", users = ["U0ONCALL"] }

[[resource]]
id = "web"
provider = "none"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"] }
"#;

    #[test]
    fn every_id_is_found_with_its_uses() {
        let policy = Policy::parse(POLICY, &|_| Err(std::io::Error::other("no files"))).unwrap();
        let channels = channels_in(&policy);
        assert_eq!(
            channels.keys().collect::<Vec<_>>(),
            ["C0APPROVALS", "C0AUDIT"]
        );
        assert_eq!(
            channels["C0APPROVALS"],
            ["approvers' channel of db", "approvers' channel of web"]
        );
        let (users, groups) = principals_in(&policy);
        assert_eq!(
            users.keys().collect::<Vec<_>>(),
            ["U0ALICE", "U0BOB", "U0ONCALL", "U0SEC"]
        );
        assert_eq!(users["U0ALICE"], ["approver of db", "approver of web"]);
        assert_eq!(users["U0ONCALL"], ["auto-approved for db"]);
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            ["S0ENG", "S0SEC", "S0SRE"]
        );
        assert_eq!(groups["S0ENG"], ["requester of db"]);
    }

    #[test]
    fn scopes_are_compared_with_the_manifest() {
        let all: Vec<String> = SCOPES.iter().map(|s| s.name.to_owned()).collect();
        let checks = scope_checks(Some(&all));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Ok);

        let serve_only: Vec<String> = SCOPES
            .iter()
            .filter(|s| !s.doctor_only)
            .map(|s| s.name.to_owned())
            .collect();
        let checks = scope_checks(Some(&serve_only));
        assert_eq!(checks[0].status, Status::Warn, "{checks:?}");
        assert!(checks[0].message.contains("channels:read"));

        let mut lacking = all.clone();
        lacking.retain(|s| s != "users:read.email");
        lacking.push("files:write".into());
        let checks = scope_checks(Some(&lacking));
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].message.contains("users:read.email"), "{checks:?}");
        assert_eq!(checks[1].status, Status::Warn);
        assert!(checks[1].message.ends_with("files:write"));

        assert_eq!(scope_checks(None)[0].status, Status::Skip);
    }
}
