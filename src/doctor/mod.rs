//! `jit doctor`: is jit set up right? Checks the configuration `jit serve` would run with
//! against the live Slack workspace, the providers and the database, and reports one line per
//! check.
//!
//! **Read-only.** Doctor never writes: no message, DM or view in Slack (only `auth.test`,
//! `conversations.info`, `users.info` and `usergroups.users.list`; PagerDuty only `GET /oncalls`), no test grant and no
//! `AssumeRole` (which would issue real credentials), no `PutRolePolicy`, nothing created in
//! PostgreSQL (`check_admin` only reads the catalogs), and jit's own database (a SQLite file, or
//! PostgreSQL in sessions with `default_transaction_read_only`) is opened read-only, without
//! migrating it.
//!
//! **Statuses.** `ok`; `FAIL`: jit would not work as configured (a refused token, a channel the
//! bot is not in, an unknown user, a provider teardown would fail on, a key that does not open
//! the stored credentials, a tampered audit log); `warn`: jit works but something is off (a
//! deactivated approver, a scope jit does not use); `skip`: the check could not be made, and the
//! line says why (a scope doctor lacks, an endpoint that cannot simulate IAM policies). The exit
//! status is 1 when any check failed, else 0.

mod database;
mod oncall;
mod providers;
mod slack;

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{EnvFn, ServeConfig};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Status {
    /// As printed at the start of a line.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked: `slack token`, `slack channel C0AUDIT`, `resource db`, `audit log`, …
    pub check: String,
    /// What was found.
    pub message: String,
    /// What to do about it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn new(status: Status, check: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            status,
            check: check.into(),
            message: message.into(),
            fix: None,
        }
    }

    pub fn ok(check: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(Status::Ok, check, message)
    }

    pub fn skip(check: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(Status::Skip, check, message)
    }

    pub fn warn(
        check: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(Status::Warn, check, message).with_fix(fix)
    }

    pub fn fail(
        check: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(Status::Fail, check, message).with_fix(fix)
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Check {
        let fix = fix.into();
        self.fix = (!fix.is_empty()).then_some(fix);
        self
    }

    /// The printed line.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<5} {}: {}",
            self.status.label(),
            self.check,
            self.message
        );
        if let Some(fix) = &self.fix {
            let _ = write!(line, ". Fix: {fix}");
        }
        // One check, one line, whatever a message quoted.
        line.replace(['\n', '\r'], " ")
    }
}

/// Every check, in the order they are printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// `2 failed, 1 warning, 3 skipped, 14 ok`.
    pub fn summary(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}, {}, {}, {} ok",
            plural(self.count(Status::Fail), "failed", "failed"),
            plural(self.count(Status::Warn), "warning", "warnings"),
            plural(self.count(Status::Skip), "skipped", "skipped"),
            self.count(Status::Ok),
        )
    }

    /// What `jit doctor` prints.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&check.line());
            out.push('\n');
        }
        let verdict = if self.failed() {
            "jit is NOT set up right"
        } else {
            "jit is set up right"
        };
        let _ = writeln!(out, "jit doctor: {}: {verdict}", self.summary());
        out
    }

    /// What `jit doctor --json` prints.
    pub fn json(&self) -> Value {
        json!({
            "ok": !self.failed(),
            "summary": {
                "failed": self.count(Status::Fail),
                "warnings": self.count(Status::Warn),
                "skipped": self.count(Status::Skip),
                "ok": self.count(Status::Ok),
            },
            "checks": self.checks,
        })
    }
}

/// Runs every check with the configuration `jit serve` would read from `env`.
pub async fn run(env: EnvFn<'_>) -> Report {
    let config = match ServeConfig::from_env(env) {
        Ok(config) => config,
        Err(e) => {
            return Report {
                checks: vec![Check::fail(
                    "config",
                    e.to_string(),
                    "set it as for jit serve (README: Configuration), then run jit doctor again",
                )],
            };
        }
    };
    let mut checks = vec![Check::ok(
        "config",
        "the settings jit serve reads are valid",
    )];
    let path = &config.base.policy_path;
    let policy = match crate::bootstrap::load_policy(path) {
        Ok(policy) => {
            checks.push(Check::ok(
                "policy",
                format!(
                    "{} is valid: {} resource(s), {} identit{}",
                    path.display(),
                    policy.resources().len(),
                    policy.identities().len(),
                    if policy.identities().len() == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                ),
            ));
            Some(policy)
        }
        Err(message) => {
            checks.push(Check::fail(
                "policy",
                message,
                "fix the file (jit policy check shows the same error)",
            ));
            None
        }
    };
    let dir = crate::bootstrap::policy_dir(path);
    let (slack, providers, database, oncall) = tokio::join!(
        slack::checks(&config, policy.as_ref()),
        providers::checks(policy.as_ref(), &dir, env),
        database::checks(&config),
        oncall::checks(&config, policy.as_ref()),
    );
    checks.extend(slack);
    checks.extend(providers);
    checks.extend(database);
    checks.extend(oncall);
    Report { checks }
}

/// A list of names for a message: `a, b and 3 more`.
fn listing<S: AsRef<str>>(items: &[S], at_most: usize) -> String {
    let shown: Vec<&str> = items.iter().take(at_most).map(AsRef::as_ref).collect();
    let mut out = shown.join(", ");
    if items.len() > at_most {
        let _ = write!(out, " and {} more", items.len() - at_most);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_per_check_with_its_fix() {
        let check = Check::fail("slack channel C0X", "the bot is not\nin #x", "invite it");
        assert_eq!(
            check.line(),
            "FAIL  slack channel C0X: the bot is not in #x. Fix: invite it"
        );
        assert_eq!(
            Check::ok("audit log", "intact").line(),
            "ok    audit log: intact"
        );
    }

    #[test]
    fn any_failure_fails_the_report() {
        let mut report = Report {
            checks: vec![
                Check::ok("a", "fine"),
                Check::warn("b", "odd", "look"),
                Check::skip("c", "cannot tell"),
            ],
        };
        assert!(!report.failed());
        assert!(
            report.text().ends_with(
                "jit doctor: 0 failed, 1 warning, 1 skipped, 1 ok: jit is set up right\n"
            )
        );
        report.checks.push(Check::fail("d", "broken", "mend it"));
        assert!(report.failed());
        let json = report.json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["summary"]["failed"], 1);
        assert_eq!(json["checks"][3]["status"], "fail");
        assert_eq!(json["checks"][3]["fix"], "mend it");
        assert!(json["checks"][0].get("fix").is_none());
    }

    #[test]
    fn listings_are_short() {
        assert_eq!(listing(&["a", "b", "c", "d"], 2), "a, b and 2 more");
        assert_eq!(listing(&["a"], 2), "a");
    }
}
