//! The provider checks: can each provider issue what the policy asks for, and, above all, can
//! it tear it down? Nothing is granted, assumed or written.
//!
//! - `exec`: the grant and revoke commands exist and are executable (resolved as jit runs them:
//!   relative to the policy directory, or through `PATH` for a bare name).
//! - `aws_sts`: jit's AWS identity (`sts:GetCallerIdentity`); per role, `iam:GetRole` (it
//!   exists, in jit's account, with a MaxSessionDuration that covers `role_max_session`, and a
//!   trust policy that allows `sts:AssumeRole`, `sts:SetSourceIdentity` and `sts:TagSession`,
//!   which every grant uses), `iam:GetRolePolicy` on the revocation policy (teardown reads it),
//!   and `iam:SimulatePrincipalPolicy` for the rest of what teardown writes
//!   (`iam:PutRolePolicy`, `iam:DeleteRolePolicy`). Doctor never calls `AssumeRole`: it would
//!   issue real credentials. What cannot be simulated is reported as not verified.
//! - `postgres`: [`PostgresProvider::check_admin`], which only reads the catalogs.
//! - `okta_group`: the API token is set, and with it `GET /api/v1/groups/{id}` (the org answers,
//!   the group exists and is an `OKTA_GROUP`, whose members the API may change) and
//!   `GET /api/v1/users?limit=1` (the token may read users, as every grant does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_iam::types::PolicyEvaluationDecisionType;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde_json::Value;

use super::{Check, Status, listing};
use crate::config::EnvFn;
use crate::domain::policy::{AwsStsConfig, ExecConfig, Policy, ProviderConfig, Resource};
use crate::providers::aws_sts::{self, REVOCATION_POLICY_NAME, ROLE_INLINE_POLICY_LIMIT};
use crate::providers::postgres::{self, PostgresProvider};

/// How long one provider's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// An AWS call gives up after this (the SDK retries once within it).
const AWS_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ERROR_CHARS: usize = 300;

pub async fn checks(policy: Option<&Policy>, dir: &Path, env: EnvFn<'_>) -> Vec<Check> {
    let Some(policy) = policy else {
        return vec![Check::skip(
            "resources",
            "providers not checked: the policy did not load",
        )];
    };
    let aws: Vec<&Resource> = policy
        .resources()
        .iter()
        .filter(|r| matches!(r.provider, ProviderConfig::AwsSts(_)))
        .collect();
    let others = futures::future::join_all(
        policy
            .resources()
            .iter()
            .map(|r| resource_checks(r, dir, env)),
    );
    let (aws, others) = tokio::join!(aws_checks(&aws), others);
    // In the policy's order, with jit's AWS identity before the first aws_sts resource.
    let mut aws = aws.into_iter();
    let mut out = Vec::new();
    let mut identity_shown = false;
    for (resource, checks) in policy.resources().iter().zip(others) {
        if let ProviderConfig::AwsSts(_) = resource.provider {
            if !identity_shown {
                out.extend(aws.next().into_iter().flatten());
                identity_shown = true;
            }
            out.extend(aws.next().into_iter().flatten());
        }
        out.extend(checks);
    }
    out
}

async fn resource_checks(resource: &Resource, dir: &Path, env: EnvFn<'_>) -> Vec<Check> {
    let name = format!("resource {}", resource.id);
    match &resource.provider {
        ProviderConfig::Exec(config) => vec![exec_check(&name, config, dir, env)],
        ProviderConfig::Postgres(_) => vec![postgres_check(&name, resource).await],
        ProviderConfig::AwsIdentityCenter(_) => identity_center_checks(&name, resource).await,
        ProviderConfig::OktaGroup(config) => vec![okta_check(&name, resource, config, env).await],
        ProviderConfig::None | ProviderConfig::AwsSts(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// okta_group

/// The token is set, the org answers, the group exists and is Okta's own, and the token may read
/// users ([`crate::providers::okta::OktaProvider::check`]).
async fn okta_check(
    name: &str,
    resource: &Resource,
    config: &crate::domain::policy::OktaGroupConfig,
    env: EnvFn<'_>,
) -> Check {
    use crate::providers::okta::{self, OktaProvider};
    let var = config.secret_env();
    let provider = match okta::token_from_env(config, env).and_then(|token| {
        OktaProvider::with_timeout(
            resource.id.clone(),
            config.clone(),
            token,
            AWS_OPERATION_TIMEOUT,
        )
        .map_err(|e| e.to_string())
    }) {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                name,
                format!("okta_group: {e}"),
                format!("set {var} (or {var}_FILE) as for jit serve"),
            );
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, provider.check()).await {
        Ok(Ok(text)) => Check::ok(name, format!("okta_group: {text}")),
        Ok(Err(e)) => Check::fail(
            name,
            format!("okta_group: {e}"),
            "grants and teardowns of this resource fail until it is fixed: see the README's okta_group section for the token's admin role",
        ),
        Err(_) => Check::fail(
            name,
            format!(
                "okta_group: {} did not answer within {}s",
                config.org_url,
                CHECK_TIMEOUT.as_secs()
            ),
            format!("check that {} is reachable from here", config.org_url),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// exec

/// Where jit would find `program`: a path with a `/` is taken relative to the policy directory
/// (where commands run), a bare name is looked up in `PATH` (which the command inherits).
fn resolve(program: &str, dir: &Path, path_var: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(dir.join(program));
    }
    path_var?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// `Err`: why `program` cannot be run.
fn runnable(program: &str, dir: &Path, path_var: Option<&str>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = resolve(program, dir, path_var) else {
        return Err(format!("`{program}` is not in PATH"));
    };
    match std::fs::metadata(&path) {
        Err(e) => Err(format!("`{}` cannot be found ({e})", path.display())),
        Ok(meta) if !meta.is_file() => Err(format!("`{}` is not a file", path.display())),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Err(format!("`{}` is not executable", path.display()))
        }
        Ok(_) => Ok(path),
    }
}

fn exec_check(name: &str, config: &ExecConfig, dir: &Path, env: EnvFn<'_>) -> Check {
    let path_var = env("PATH");
    let mut problems = Vec::new();
    for (what, argv) in [
        ("grant", &config.grant_command),
        ("revoke", &config.revoke_command),
    ] {
        let Some(program) = argv.first() else {
            problems.push(format!("the {what} command is empty"));
            continue;
        };
        if let Err(why) = runnable(program, dir, path_var.as_deref()) {
            problems.push(if what == "revoke" {
                format!("the revoke command {why}: access it granted could never be removed")
            } else {
                format!("the grant command {why}")
            });
        }
    }
    if problems.is_empty() {
        Check::ok(
            name,
            format!(
                "exec: the grant and revoke commands exist and are executable (`{}`, `{}`, run in {})",
                config.grant_command[0],
                config.revoke_command[0],
                dir.display()
            ),
        )
    } else {
        Check::fail(
            name,
            format!("exec: {}", problems.join("; ")),
            format!(
                "install the command, or correct its path in the policy (relative paths start from {}); make it executable with chmod +x",
                dir.display()
            ),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// postgres

async fn postgres_check(name: &str, resource: &Resource) -> Check {
    let ProviderConfig::Postgres(config) = &resource.provider else {
        unreachable!("called for postgres resources only");
    };
    let var = &config.database_url_env;
    let url = match postgres::admin_url_from_env(config) {
        Ok(url) => url,
        Err(e) => {
            return Check::fail(
                name,
                format!("postgres: {e}"),
                format!("set {var} (or {var}_FILE) as for jit serve"),
            );
        }
    };
    let provider = match PostgresProvider::new(resource.id.clone(), config.clone(), &url) {
        Ok(p) => p.with_acquire_timeout(Duration::from_secs(5)),
        Err(e) => {
            return Check::fail(
                name,
                format!("postgres: {e}"),
                format!("put a postgres://user:password@host:port/database URL in {var}"),
            );
        }
    };
    let report = match tokio::time::timeout(CHECK_TIMEOUT, provider.check_admin()).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            return Check::fail(
                name,
                format!("postgres: cannot check the admin of ${var}: {e}"),
                format!(
                    "check that the server in {var} is up and reachable from here, and its user and password; teardowns fail until it is"
                ),
            );
        }
        Err(_) => {
            return Check::fail(
                name,
                format!(
                    "postgres: the server in ${var} did not answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ),
                format!("check that the server in {var} is up and reachable from here"),
            );
        }
    };
    let version = format!(
        "PostgreSQL {}.{}",
        report.server_version / 10_000,
        report.server_version % 10_000
    );
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    for (i, finding) in report.findings().into_iter().enumerate() {
        let warning = report.powerful_roles.contains(&finding)
            || report.create_privileges.contains(&finding)
            || (i == 0 && report.superuser && report.superuser_allowed);
        if warning {
            warnings.push(finding);
        } else {
            failures.push(finding);
        }
    }
    if !failures.is_empty() {
        let mut message = format!("postgres ({version}): {}", failures.join("; "));
        if !warnings.is_empty() {
            message.push_str(&format!("; also: {}", warnings.join("; ")));
        }
        return Check::fail(
            name,
            message,
            "fix the admin role as said (README: Providers, postgres); grants or teardowns fail until then",
        );
    }
    let what = if report.superuser {
        format!("the admin `{}` is a superuser", report.user)
    } else {
        format!(
            "the admin `{}` can CREATE ROLE, end sessions (pg_signal_backend) and grant {}, and is not a superuser",
            report.user,
            listing(&config.roles, 5)
        )
    };
    if warnings.is_empty() {
        Check::ok(name, format!("postgres ({version}): {what}"))
    } else {
        Check::warn(
            name,
            format!("postgres ({version}): {}", warnings.join("; ")),
            "see README: Providers, postgres",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// aws_sts

/// An SDK error in one line: the service's code and message, or what went wrong on the way.
fn sdk_error<E>(err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = match err {
        SdkError::ServiceError(ctx) => match (ctx.err().code(), ctx.err().message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            // No AWS error in the answer (an endpoint that does not implement the call).
            (None, _) => format!("HTTP {} without an AWS error", ctx.raw().status().as_u16()),
        },
        SdkError::TimeoutError(_) => "timed out".into(),
        other => DisplayErrorContext(other).to_string(),
    };
    crate::slack::limits::truncate_plain(text.trim(), MAX_ERROR_CHARS)
}

fn service_code<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Option<&str> {
    match err {
        SdkError::ServiceError(ctx) => ctx.err().code(),
        _ => None,
    }
}

fn is_access_denied(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation")
    )
}

/// jit's AWS identity: the `iam` ARN `iam:SimulatePrincipalPolicy` takes for it, if any.
fn policy_source_arn(caller_arn: &str) -> Option<String> {
    if caller_arn.starts_with("arn:aws:iam::") && caller_arn.contains(":user/") {
        return Some(caller_arn.to_owned());
    }
    let (prefix, rest) = caller_arn.split_once(":assumed-role/")?;
    let account = prefix.strip_prefix("arn:aws:sts::")?;
    let role = rest.split('/').next().filter(|r| !r.is_empty())?;
    Some(format!("arn:aws:iam::{account}:role/{role}"))
}

/// The account of an IAM ARN (`arn:aws:iam::123456789012:role/x`).
fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// Whether an IAM action pattern (`sts:*`, `sts:Assume*`, `*`) matches `action`.
fn action_matches(pattern: &str, action: &str) -> bool {
    fn glob(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], a) || (!a.is_empty() && glob(p, &a[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => glob(&p[1..], &a[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), action.as_bytes())
}

/// The actions of `wanted` no `Allow` statement of the trust policy `doc` grants (the
/// principal and conditions are not evaluated). `None`: the document cannot be read that way
/// (it is not JSON, or uses `NotAction`).
fn trust_gaps(doc: &Value, wanted: &[&'static str]) -> Option<Vec<&'static str>> {
    let statements = match doc.get("Statement")? {
        Value::Array(list) => list.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        _ => return None,
    };
    let mut allowed: Vec<String> = Vec::new();
    for s in &statements {
        if s.get("NotAction").is_some() {
            return None;
        }
        if s.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        match s.get("Action") {
            Some(Value::String(a)) => allowed.push(a.clone()),
            Some(Value::Array(list)) => {
                allowed.extend(list.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    Some(
        wanted
            .iter()
            .copied()
            .filter(|w| !allowed.iter().any(|a| action_matches(a, w)))
            .collect(),
    )
}

/// Every grant calls AssumeRole with a SourceIdentity and session tags.
const ASSUME_ACTIONS: &[&str] = &["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"];
/// What early revocation does to the role.
const REVOKE_ACTIONS: &[&str] = &[
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
];

/// What a policy simulation says: `Err` lists the denied actions, `Ok(None)` means some
/// decisions hinge on condition keys the simulation had no value for.
fn simulated(
    results: &[(String, String, Vec<String>)],
) -> Result<Option<Vec<String>>, Vec<String>> {
    let denied: Vec<String> = results
        .iter()
        .filter(|(_, decision, missing)| decision != "allowed" && missing.is_empty())
        .map(|(action, decision, _)| format!("{action} ({decision})"))
        .collect();
    if !denied.is_empty() {
        return Err(denied);
    }
    let conditional: Vec<String> = results
        .iter()
        .filter(|(_, decision, missing)| decision != "allowed" && !missing.is_empty())
        .map(|(action, _, missing)| format!("{action} (depends on {})", missing.join(", ")))
        .collect();
    Ok((!conditional.is_empty()).then_some(conditional))
}

struct Aws {
    iam: aws_sdk_iam::Client,
    /// jit's identity, as `sts:GetCallerIdentity` gave it.
    caller_arn: String,
    account: String,
}

/// The identity line first, then each aws_sts resource's lines, in `resources`' order.
async fn aws_checks(resources: &[&Resource]) -> Vec<Vec<Check>> {
    if resources.is_empty() {
        return Vec::new();
    }
    let sdk = doctor_sdk(None).await;
    let sts = aws_sdk_sts::Client::new(&sdk);
    let identity = sts.get_caller_identity().send().await;
    let mut out = Vec::new();
    let aws = match identity {
        Ok(who) => {
            let caller_arn = who.arn().unwrap_or_default().to_owned();
            let account = who.account().unwrap_or_default().to_owned();
            out.push(vec![Check::ok(
                "aws identity",
                format!("jit's AWS credentials work: {caller_arn} (account {account})"),
            )]);
            Aws {
                iam: aws_sdk_iam::Client::new(&sdk),
                caller_arn,
                account,
            }
        }
        Err(e) => {
            out.push(vec![Check::fail(
                "aws identity",
                format!(
                    "jit's AWS credentials do not work (sts:GetCallerIdentity: {})",
                    sdk_error(&e)
                ),
                "give jit AWS credentials as for jit serve (AWS_* variables, a profile, or an instance or task role); AWS_ENDPOINT_URL must point at AWS",
            )]);
            for r in resources {
                out.push(vec![Check::skip(
                    format!("resource {}", r.id),
                    "aws_sts: not checked: jit's AWS credentials do not work",
                )]);
            }
            return out;
        }
    };
    for r in resources {
        let ProviderConfig::AwsSts(config) = &r.provider else {
            continue;
        };
        let name = format!("resource {}", r.id);
        let checks =
            match tokio::time::timeout(CHECK_TIMEOUT * 2, role_checks(&aws, &name, config)).await {
                Ok(checks) => checks,
                Err(_) => vec![Check::fail(
                    name,
                    "aws_sts: AWS did not answer in time",
                    "check the network path to AWS and run jit doctor again",
                )],
            };
        out.push(checks);
    }
    out
}

async fn role_checks(aws: &Aws, name: &str, config: &AwsStsConfig) -> Vec<Check> {
    let arn = &config.role_arn;
    let Ok(role_name) = aws_sts::role_name(arn) else {
        return vec![Check::fail(
            name,
            format!("aws_sts: `{arn}` is not an IAM role ARN"),
            "correct role_arn in the policy",
        )];
    };
    let role_account = account_of(arn).unwrap_or_default();
    if role_account != aws.account {
        return vec![Check::fail(
            name,
            format!(
                "aws_sts: role {arn} is in account {role_account}, jit's credentials in {}: early revocation writes a deny statement to the role with jit's own credentials (iam:PutRolePolicy), which cannot reach another account",
                aws.account
            ),
            "run jit with credentials of the role's account, or use a role in jit's account",
        )];
    }
    let mut out = Vec::new();
    let trust = match aws.iam.get_role().role_name(role_name).send().await {
        Ok(output) => {
            let Some(role) = output.role() else {
                return vec![Check::fail(
                    name,
                    format!("aws_sts: iam:GetRole returned no role for {role_name}"),
                    "run jit doctor again",
                )];
            };
            out.push(role_check(name, config, role));
            role.assume_role_policy_document().map(str::to_owned)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return vec![Check::fail(
                name,
                format!(
                    "aws_sts: role {role_name} does not exist in account {} (role_arn {arn}): every grant fails",
                    aws.account
                ),
                "create the role, or correct role_arn in the policy",
            )];
        }
        Err(e) if is_access_denied(service_code(&e)) => {
            out.push(Check::skip(
                name,
                format!(
                    "aws_sts: role {role_name} not checked: jit may not call iam:GetRole on it ({}); teardown needs it only rarely",
                    sdk_error(&e)
                ),
            ));
            None
        }
        Err(e) => {
            return vec![Check::fail(
                name,
                format!(
                    "aws_sts: iam:GetRole on {role_name} failed: {}",
                    sdk_error(&e)
                ),
                "check the network path to AWS and run jit doctor again",
            )];
        }
    };
    out.push(revocation_policy_check(aws, name, role_name).await);
    out.push(simulation_check(aws, name, arn, trust.as_deref()).await);
    out
}

/// The role's session limit and trust policy.
fn role_check(name: &str, config: &AwsStsConfig, role: &aws_sdk_iam::types::Role) -> Check {
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let max = i64::from(role.max_session_duration().unwrap_or(3600));
    let wanted = config.role_max_session.as_secs() as i64;
    if wanted > max {
        failures.push(format!(
            "role_max_session = {} but the role's MaxSessionDuration is {}s: grants longer than that are refused by STS",
            config.role_max_session, max
        ));
    } else {
        notes.push(format!(
            "MaxSessionDuration {max}s covers role_max_session {}",
            config.role_max_session
        ));
    }
    if role.arn() != config.role_arn {
        notes.push(format!(
            "its ARN is {} (the policy says {})",
            role.arn(),
            config.role_arn
        ));
    }
    let doc = role
        .assume_role_policy_document()
        .and_then(|d| aws_sts::decode_policy_document(d).ok())
        .and_then(|d| serde_json::from_str::<Value>(&d).ok());
    match doc.as_ref().and_then(|d| trust_gaps(d, ASSUME_ACTIONS)) {
        Some(gaps) if gaps.is_empty() => notes.push(
            "its trust policy allows sts:AssumeRole, sts:SetSourceIdentity and sts:TagSession (the principal is not evaluated)".into(),
        ),
        Some(gaps) => failures.push(format!(
            "its trust policy allows no {}: every grant fails (jit sets a SourceIdentity and session tags)",
            gaps.join(", ")
        )),
        None => notes.push("its trust policy could not be read, so it is not verified".into()),
    }
    if failures.is_empty() {
        Check::ok(
            name,
            format!(
                "aws_sts: role {} exists; {}",
                role.role_name(),
                notes.join("; ")
            ),
        )
    } else {
        Check::fail(
            name,
            format!(
                "aws_sts: role {}: {}",
                role.role_name(),
                failures.join("; ")
            ),
            "allow those actions to jit's principal in the role's trust policy, and make MaxSessionDuration at least role_max_session",
        )
    }
}

/// Teardown reads the revocation policy before it writes it: that read is made here.
async fn revocation_policy_check(aws: &Aws, name: &str, role: &str) -> Check {
    let read = aws
        .iam
        .get_role_policy()
        .role_name(role)
        .policy_name(REVOCATION_POLICY_NAME)
        .send()
        .await;
    match read {
        Ok(output) => {
            let text =
                aws_sts::decode_policy_document(output.policy_document()).unwrap_or_default();
            let size = aws_sts::policy_size(&text);
            let statements = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|d| d.get("Statement").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0);
            let message = format!(
                "aws_sts: iam:GetRolePolicy works on {role}: {REVOCATION_POLICY_NAME} holds {statements} deny statement(s), {size} of the role's {ROLE_INLINE_POLICY_LIMIT} characters"
            );
            if size * 10 > ROLE_INLINE_POLICY_LIMIT * 8 {
                Check::warn(
                    name,
                    message,
                    "the role's inline policies are near IAM's limit: remove other inline policies from the role, or it may not take more revocations",
                )
            } else {
                Check::ok(name, message)
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            Check::ok(
                name,
                format!(
                    "aws_sts: iam:GetRolePolicy works on {role} (no {REVOCATION_POLICY_NAME} yet: no early revocation in force)"
                ),
            )
        }
        Err(e) => Check::fail(
            name,
            format!(
                "aws_sts: iam:GetRolePolicy on {role} failed ({}): early revocation reads it first, so it would fail",
                sdk_error(&e)
            ),
            "allow jit's principal iam:GetRolePolicy, iam:PutRolePolicy and iam:DeleteRolePolicy on the role",
        ),
    }
}

/// `iam:SimulatePrincipalPolicy` for AssumeRole (with the trust policy) and for what teardown
/// writes. The simulation evaluates jit's identity policies; it is what AWS offers to check a
/// right without using it.
async fn simulation_check(aws: &Aws, name: &str, role_arn: &str, trust: Option<&str>) -> Check {
    let not_verified = |why: String| {
        Check::skip(
            name,
            format!(
                "aws_sts: rights not verified ({}): {why}",
                listing(&[ASSUME_ACTIONS, REVOKE_ACTIONS].concat(), 6)
            ),
        )
    };
    let Some(source) = policy_source_arn(&aws.caller_arn) else {
        return not_verified(format!(
            "IAM cannot simulate the policies of {}",
            aws.caller_arn
        ));
    };
    let trust = trust.and_then(|t| aws_sts::decode_policy_document(t).ok());
    let mut results = Vec::new();
    for (actions, resource_policy) in [(ASSUME_ACTIONS, trust.as_deref()), (REVOKE_ACTIONS, None)] {
        let mut call = aws
            .iam
            .simulate_principal_policy()
            .policy_source_arn(&source)
            .resource_arns(role_arn);
        for action in actions {
            call = call.action_names(*action);
        }
        if let Some(doc) = resource_policy {
            call = call.resource_policy(doc);
        }
        match call.send().await {
            Ok(output) => {
                for r in output.evaluation_results() {
                    let decision = match r.eval_decision() {
                        PolicyEvaluationDecisionType::Allowed => "allowed".to_owned(),
                        other => other.as_str().to_owned(),
                    };
                    results.push((
                        r.eval_action_name().to_owned(),
                        decision,
                        r.missing_context_values().to_vec(),
                    ));
                }
            }
            Err(e) if is_access_denied(service_code(&e)) => {
                return not_verified(format!(
                    "jit may not call iam:SimulatePrincipalPolicy on itself ({}); allow it to let jit doctor check",
                    sdk_error(&e)
                ));
            }
            Err(e) => {
                return not_verified(format!(
                    "the IAM endpoint did not simulate the policies ({})",
                    sdk_error(&e)
                ));
            }
        }
    }
    match simulated(&results) {
        Ok(None) => Check::ok(
            name,
            format!(
                "aws_sts: IAM's policy simulator allows {} {}",
                source,
                listing(&[ASSUME_ACTIONS, REVOKE_ACTIONS].concat(), 6)
            ),
        ),
        Ok(Some(conditional)) => Check::new(
            Status::Skip,
            name,
            format!(
                "aws_sts: rights not fully verified: {} depend on condition keys the simulator has no values for",
                conditional.join(", ")
            ),
        ),
        Err(denied) => Check::fail(
            name,
            format!(
                "aws_sts: IAM's policy simulator denies {source} {}: {}",
                denied.join(", "),
                if denied.iter().any(|d| d.starts_with("iam:")) {
                    "early revocation would fail"
                } else {
                    "grants would fail"
                }
            ),
            "allow them to jit's principal on the role (README: Providers, aws_sts)",
        ),
    }
}

/// `aws_identity_center`: with jit's AWS credentials (as `jit serve` loads them), the instance
/// is listed (`sso:ListInstances`) with the configured identity store, the permission set exists
/// (`sso:DescribePermissionSet`) with a session duration within `session_duration`, the
/// assignments can be read (`sso:ListAccountAssignments`), and the identity store answers
/// (`identitystore:ListUsers`; `identitystore:DescribeGroup` for `group_id`). Nothing is written.
async fn identity_center_checks(name: &str, resource: &Resource) -> Vec<Check> {
    use crate::domain::policy::IdentityCenterTarget;
    use crate::providers::aws_identity_center::iso_duration;
    let ProviderConfig::AwsIdentityCenter(config) = &resource.provider else {
        return Vec::new();
    };
    let fix_creds = "give jit AWS credentials as for jit serve, with the IAM permissions the README lists for aws_identity_center";
    let sdk = doctor_sdk(config.region.as_deref()).await;
    let sso = aws_sdk_ssoadmin::Client::new(&sdk);
    let store = aws_sdk_identitystore::Client::new(&sdk);
    let mut out = Vec::new();
    let work = async {
        match sso.list_instances().send().await {
            Ok(list) => match list
                .instances()
                .iter()
                .find(|i| i.instance_arn() == Some(config.instance_arn.as_str()))
            {
                Some(i) if i.identity_store_id() == Some(config.identity_store_id.as_str()) => {
                    out.push(Check::ok(
                        name,
                        format!(
                            "aws_identity_center: instance {} with identity store {} is reachable",
                            config.instance_arn, config.identity_store_id
                        ),
                    ))
                }
                Some(i) => out.push(Check::fail(
                    name,
                    format!(
                        "aws_identity_center: instance {} uses identity store {}, not {}",
                        config.instance_arn,
                        i.identity_store_id().unwrap_or("?"),
                        config.identity_store_id
                    ),
                    "set identity_store_id to the instance's identity store (IAM Identity Center > Settings)",
                )),
                None => out.push(Check::fail(
                    name,
                    format!(
                        "aws_identity_center: jit's credentials do not see instance {}",
                        config.instance_arn
                    ),
                    "check instance_arn and region (Identity Center lives in one region), and that jit runs in the organization's management or delegated administrator account",
                )),
            },
            Err(e) => out.push(Check::fail(
                name,
                format!("aws_identity_center: sso:ListInstances: {}", sdk_error(&e)),
                fix_creds,
            )),
        }
        match &config.target {
            IdentityCenterTarget::Account {
                account_id,
                permission_set_arn,
            } => {
                match sso
                    .describe_permission_set()
                    .instance_arn(&config.instance_arn)
                    .permission_set_arn(permission_set_arn)
                    .send()
                    .await
                {
                    Ok(d) => {
                        let set = d.permission_set();
                        let set_name = set.and_then(|s| s.name()).unwrap_or("?");
                        let session = set.and_then(|s| s.session_duration()).unwrap_or("PT1H");
                        let longer = match (config.session_duration, iso_duration(session)) {
                            (Some(limit), Some(actual)) => actual > limit,
                            _ => false,
                        };
                        if longer {
                            out.push(Check::fail(
                                name,
                                format!(
                                    "aws_identity_center: permission set {set_name} lets a session last {session}, longer than session_duration {}; grants are refused",
                                    config.session_duration.expect("compared above")
                                ),
                                "shorten the permission set's session duration, or raise session_duration",
                            ));
                        } else {
                            out.push(Check::ok(
                                name,
                                format!(
                                    "aws_identity_center: permission set {set_name} exists (sessions last up to {session}, and can outlive a grant by that much)"
                                ),
                            ));
                        }
                    }
                    Err(e) => out.push(Check::fail(
                        name,
                        format!(
                            "aws_identity_center: sso:DescribePermissionSet {permission_set_arn}: {}",
                            sdk_error(&e)
                        ),
                        "check permission_set_arn and jit's IAM permissions",
                    )),
                }
                match sso
                    .list_account_assignments()
                    .instance_arn(&config.instance_arn)
                    .account_id(account_id)
                    .permission_set_arn(permission_set_arn)
                    .max_results(1)
                    .send()
                    .await
                {
                    Ok(_) => out.push(Check::ok(
                        name,
                        format!(
                            "aws_identity_center: assignments in account {account_id} can be read"
                        ),
                    )),
                    Err(e) => out.push(Check::fail(
                        name,
                        format!(
                            "aws_identity_center: sso:ListAccountAssignments in {account_id}: {}",
                            sdk_error(&e)
                        ),
                        fix_creds,
                    )),
                }
            }
            IdentityCenterTarget::Group { group_id } => {
                match store
                    .describe_group()
                    .identity_store_id(&config.identity_store_id)
                    .group_id(group_id)
                    .send()
                    .await
                {
                    Ok(g) => out.push(Check::ok(
                        name,
                        format!(
                            "aws_identity_center: group {} ({group_id}) exists",
                            g.display_name().unwrap_or("?")
                        ),
                    )),
                    Err(e) => out.push(Check::fail(
                        name,
                        format!(
                            "aws_identity_center: identitystore:DescribeGroup {group_id}: {}",
                            sdk_error(&e)
                        ),
                        "check group_id and jit's IAM permissions",
                    )),
                }
            }
        }
        match store
            .list_users()
            .identity_store_id(&config.identity_store_id)
            .max_results(1)
            .send()
            .await
        {
            Ok(_) => out.push(Check::ok(
                name,
                format!(
                    "aws_identity_center: identity store {} answers (users are looked up there)",
                    config.identity_store_id
                ),
            )),
            Err(e) => out.push(Check::fail(
                name,
                format!(
                    "aws_identity_center: identitystore:ListUsers: {}",
                    sdk_error(&e)
                ),
                fix_creds,
            )),
        }
    };
    if tokio::time::timeout(CHECK_TIMEOUT * 2, work).await.is_err() {
        return vec![Check::fail(
            name,
            "aws_identity_center: AWS did not answer in time",
            "check the network path to AWS and run jit doctor again",
        )];
    }
    out
}

/// The AWS configuration jit serve loads (the standard chain, `AWS_ENDPOINT_URL`), with one
/// retry and a timeout, so an unreachable endpoint fails a check rather than hanging it; a
/// region is needed to sign, so one stands in when none is configured.
async fn doctor_sdk(region: Option<&str>) -> aws_config::SdkConfig {
    let sdk = aws_sts::aws_config_loader(None, region)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(AWS_OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    if sdk.region().is_some() {
        sdk
    } else {
        sdk.into_builder()
            .region(aws_config::Region::from_static("us-east-1"))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_resolve_as_jit_runs_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("grant.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = runnable("./grant.sh", dir.path(), None).unwrap_err();
        assert!(err.ends_with("grant.sh` is not executable"), "{err}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            runnable("./grant.sh", dir.path(), None).unwrap(),
            dir.path().join("./grant.sh")
        );
        assert!(
            runnable("./missing.sh", dir.path(), None)
                .unwrap_err()
                .contains("cannot be found")
        );
        assert!(runnable(".", dir.path(), None).is_err());
        let path = dir.path().display().to_string();
        assert!(runnable("grant.sh", Path::new("/"), Some(&path)).is_ok());
        assert_eq!(
            runnable("grant.sh", Path::new("/"), Some("/nonexistent")).unwrap_err(),
            "`grant.sh` is not in PATH"
        );
    }

    #[test]
    fn trust_policies_must_allow_what_every_grant_uses() {
        let doc = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:root"}, "Action": "sts:AssumeRole"},
            {"Effect": "Deny", "Principal": "*", "Action": "sts:TagSession"}
        ]});
        assert_eq!(
            trust_gaps(&doc, ASSUME_ACTIONS).unwrap(),
            ["sts:SetSourceIdentity", "sts:TagSession"]
        );
        let doc = json!({"Statement": {"Effect": "Allow", "Action": ["sts:AssumeRole", "STS:Set*", "sts:TagSession"]}});
        assert!(trust_gaps(&doc, ASSUME_ACTIONS).unwrap().is_empty());
        assert!(
            trust_gaps(
                &json!({"Statement": [{"Effect": "Allow", "Action": "*"}]}),
                ASSUME_ACTIONS
            )
            .unwrap()
            .is_empty()
        );
        assert_eq!(
            trust_gaps(
                &json!({"Statement": [{"Effect": "Allow", "NotAction": "x"}]}),
                ASSUME_ACTIONS
            ),
            None
        );
        assert!(action_matches("sts:Assume?ole", "sts:AssumeRole"));
        assert!(!action_matches("sts:Assume", "sts:AssumeRole"));
    }

    #[test]
    fn simulations_fail_on_denials_only() {
        let r = |a: &str, d: &str, m: &[&str]| {
            (
                a.to_owned(),
                d.to_owned(),
                m.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            simulated(&[r("iam:PutRolePolicy", "allowed", &[])]),
            Ok(None)
        );
        assert_eq!(
            simulated(&[
                r("iam:PutRolePolicy", "implicitDeny", &[]),
                r("sts:AssumeRole", "allowed", &[])
            ]),
            Err(vec!["iam:PutRolePolicy (implicitDeny)".to_owned()])
        );
        assert_eq!(
            simulated(&[r("sts:AssumeRole", "implicitDeny", &["aws:SourceIp"])]),
            Ok(Some(vec![
                "sts:AssumeRole (depends on aws:SourceIp)".to_owned()
            ]))
        );
    }

    #[test]
    fn the_simulated_principal_is_jits_iam_identity() {
        assert_eq!(
            policy_source_arn("arn:aws:sts::123456789012:assumed-role/jit-runner/i-0abc")
                .as_deref(),
            Some("arn:aws:iam::123456789012:role/jit-runner")
        );
        assert_eq!(
            policy_source_arn("arn:aws:iam::123456789012:user/ops/jit").as_deref(),
            Some("arn:aws:iam::123456789012:user/ops/jit")
        );
        assert_eq!(policy_source_arn("arn:aws:iam::123456789012:root"), None);
        assert_eq!(
            account_of("arn:aws:iam::123456789012:role/x"),
            Some("123456789012")
        );
    }
}
