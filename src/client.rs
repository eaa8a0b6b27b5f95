//! `jit` as a client of a jit server's HTTP API, for CI jobs and scripts (`JIT_URL`, `JIT_TOKEN`).
//!
//! `jit request` asks for access (and with `--wait`, waits for the decision and prints the
//! credentials); `jit credentials <resource> --format credential_process` speaks the AWS CLI's
//! credential_process protocol, asking for access only when no grant is active; `jit release`
//! gives access back.
//!
//! The bearer token and the credentials cross the network, so `JIT_URL` must be `https://`. Plain
//! `http://` is accepted only to a loopback address (`127.0.0.0/8`, `::1`, `localhost`), or with
//! `--insecure`; redirects are held to the same rule.

use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::{self, EnvFn};

/// What the server said when it refused a call.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiRefusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

/// How to print credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `export NAME='value'` lines for a shell.
    Env,
    /// One JSON object.
    Json,
    /// The AWS CLI's credential_process JSON (Version 1).
    #[value(name = "credential_process", alias = "credential-process")]
    CredentialProcess,
}

/// Whether plain HTTP to `url` is acceptable without `--insecure`: only to this machine.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Refuses a URL that would send the token in clear text, unless `insecure`.
pub fn check_transport(url: &url::Url, insecure: bool) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure || is_loopback(url) => Ok(()),
        "http" => bail!(
            "JIT_URL `{url}` is plain HTTP: the API token and the credentials would cross the \
             network unencrypted. Use an https:// URL, or pass --insecure if this network is \
             trusted (plain HTTP is allowed without it only to a loopback address)"
        ),
        _ => bail!("JIT_URL must be an https:// URL (or http:// to a loopback address)"),
    }
}

impl Client {
    /// `insecure` allows a plain `http://` URL to a host other than this machine.
    pub fn new(base: &str, token: SecretString, insecure: bool) -> anyhow::Result<Self> {
        let url =
            url::Url::parse(base).with_context(|| format!("JIT_URL `{base}` is not a URL"))?;
        check_transport(&url, insecure)?;
        // A redirect may not downgrade the connection either.
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if check_transport(attempt.url(), insecure).is_err() {
                attempt.error("the jit server redirected to plain HTTP; refusing to follow")
            } else {
                attempt.follow()
            }
        });
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .redirect(redirects)
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn from_env(env: EnvFn<'_>, insecure: bool) -> anyhow::Result<Self> {
        let base = env("JIT_URL").context(
            "JIT_URL is not set (the jit server's address, e.g. https://jit.example.com)",
        )?;
        let token = config::required_secret(env, "JIT_TOKEN")?;
        Self::new(&base, token, insecure)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(self.token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the jit server at {}", self.base))?;
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(ApiRefusal {
            status,
            code: value["code"].as_str().unwrap_or("unknown").to_owned(),
            message: value["message"]
                .as_str()
                .unwrap_or("the jit server refused the call")
                .to_owned(),
        }
        .into())
    }

    /// `start_at` (RFC 3339) schedules the start; `None`: as soon as it is approved.
    pub async fn create(
        &self,
        resource: &str,
        duration: &str,
        reason: &str,
        ticket: Option<&str>,
        start_at: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut body = json!({"resource": resource, "duration": duration, "justification": reason, "ticket": ticket});
        if let Some(start_at) = start_at {
            body["start_at"] = json!(start_at);
        }
        self.call(reqwest::Method::POST, "/requests", Some(body))
            .await
    }

    pub async fn get(&self, id: i64, wait: Option<Duration>) -> anyhow::Result<Value> {
        let query = wait
            .map(|w| format!("?wait={}s", w.as_secs()))
            .unwrap_or_default();
        self.call(
            reqwest::Method::GET,
            &format!("/requests/{id}{query}"),
            None,
        )
        .await
    }

    pub async fn list(&self, resource: &str) -> anyhow::Result<Vec<Value>> {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/requests?resource={}", urlencode(resource)),
                None,
            )
            .await?;
        Ok(value["requests"].as_array().cloned().unwrap_or_default())
    }

    pub async fn credentials(&self, id: i64) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/requests/{id}/credentials"),
            None,
        )
        .await
    }

    pub async fn release(&self, id: i64) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("/requests/{id}/release"),
            None,
        )
        .await
    }

    /// Long-polls until the request is active, or fails with why it never will be.
    pub async fn wait_active(&self, id: i64, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let request = self
                .get(id, Some(left.min(Duration::from_secs(60))))
                .await?;
            match request["state"].as_str().unwrap_or_default() {
                "active" => return Ok(request),
                "pending" | "approved" if !left.is_zero() => continue,
                "pending" | "approved" => bail!(
                    "request #{id} is still {} after {}s; not waiting longer",
                    request["state"].as_str().unwrap_or_default(),
                    timeout.as_secs()
                ),
                "denied" => bail!(
                    "request #{id} was denied by {}: {}",
                    request["decided_by"].as_str().unwrap_or("an approver"),
                    request["reason"].as_str().unwrap_or("no reason given")
                ),
                "failed" => bail!(
                    "request #{id} failed: {}",
                    request["failure"].as_str().unwrap_or("unknown error")
                ),
                other => bail!("request #{id} is {other}"),
            }
        }
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Renders the credentials answer of the API.
pub fn render(answer: &Value, format: Format) -> anyhow::Result<String> {
    let credentials = answer["credentials"]
        .as_object()
        .context("the server returned no credentials")?;
    match format {
        // The output is sourced by CI jobs: a name that is not a shell identifier, or a value
        // that cannot be quoted, is refused outright rather than printed.
        Format::Env => {
            let mut out = String::new();
            for (name, value) in credentials {
                if !crate::providers::is_shell_identifier(name) {
                    bail!(
                        "the server returned a credential named {:?}, which is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*); refusing to print shell code (use --format json)",
                        name.chars().take(80).collect::<String>()
                    );
                }
                let value = value.as_str().with_context(|| {
                    format!("credential {name} is not a string; use --format json")
                })?;
                if value.contains('\0') {
                    bail!(
                        "credential {name} holds a NUL byte, which a shell cannot hold; use --format json"
                    );
                }
                out.push_str(&format!("export {name}={}\n", shell_quote(value)));
            }
            Ok(out)
        }
        Format::Json => Ok(format!("{}\n", serde_json::to_string_pretty(answer)?)),
        Format::CredentialProcess => {
            let field = |name: &str| {
                credentials
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .with_context(|| {
                        format!(
                            "`{}` does not issue AWS credentials ({name} is missing)",
                            answer["resource"].as_str().unwrap_or("this resource")
                        )
                    })
            };
            let expiration = credentials
                .get("AWS_CREDENTIAL_EXPIRATION")
                .and_then(|v| v.as_str())
                .or_else(|| answer["expires_at"].as_str())
                .context("no expiry")?;
            // The earlier of the credentials' and the grant's end.
            let expiration = match answer["expires_at"].as_str() {
                Some(grant_end) if grant_end < expiration => grant_end,
                _ => expiration,
            };
            let expiration = chrono::DateTime::parse_from_rfc3339(expiration)
                .context("the expiry is not RFC 3339")?
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            Ok(format!(
                "{}\n",
                json!({
                    "Version": 1,
                    "AccessKeyId": field("AWS_ACCESS_KEY_ID")?,
                    "SecretAccessKey": field("AWS_SECRET_ACCESS_KEY")?,
                    "SessionToken": field("AWS_SESSION_TOKEN")?,
                    "Expiration": expiration,
                })
            ))
        }
    }
}

/// `jit request`.
/// What `jit request` asks for.
pub struct Ask<'a> {
    pub resource: &'a str,
    pub duration: &'a str,
    pub reason: &'a str,
    pub ticket: Option<&'a str>,
    /// A scheduled start, RFC 3339.
    pub start_at: Option<&'a str>,
}

pub async fn request(
    client: &Client,
    ask: Ask<'_>,
    wait: Option<Duration>,
    format: Format,
) -> anyhow::Result<String> {
    let resource = ask.resource;
    let created = client
        .create(resource, ask.duration, ask.reason, ask.ticket, ask.start_at)
        .await?;
    let id = created["id"]
        .as_i64()
        .context("the server returned no request id")?;
    let starts = ask
        .start_at
        .map(|s| format!(", to start at {s}"))
        .unwrap_or_default();
    let Some(timeout) = wait else {
        eprintln!(
            "jit: request #{id} for {resource}{starts} is {}",
            if created["auto_approved"] == true {
                "approved by policy"
            } else {
                "waiting for approval in Slack"
            }
        );
        return Ok(format!("{id}\n"));
    };
    eprintln!("jit: request #{id} for {resource} submitted; waiting for the decision…");
    client.wait_active(id, timeout).await?;
    let answer = client.credentials(id).await?;
    render(&answer, format)
}

/// `jit credentials <resource>`: the active grant's credentials, asking for access if none.
pub async fn credentials(
    client: &Client,
    resource: &str,
    duration: &str,
    reason: Option<&str>,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now();
    let usable = |r: &Value| {
        r["state"] == "active"
            && r["expires_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| {
                    t.with_timezone(&chrono::Utc) > now + chrono::Duration::seconds(60)
                })
    };
    let active = client
        .list(resource)
        .await?
        .into_iter()
        .filter(usable)
        .max_by_key(|r| r["expires_at"].as_str().unwrap_or_default().to_owned());
    let id = match active {
        Some(r) => r["id"].as_i64().context("a request without id")?,
        None => {
            let reason = reason
                .map(str::to_owned)
                .unwrap_or_else(|| format!("credentials for {resource} (jit credentials)"));
            let created = client
                .create(resource, duration, &reason, None, None)
                .await?;
            let id = created["id"]
                .as_i64()
                .context("the server returned no request id")?;
            eprintln!(
                "jit: no active grant of {resource}; requested #{id}, waiting for the decision…"
            );
            client.wait_active(id, timeout).await?;
            id
        }
    };
    let answer = client.credentials(id).await?;
    render(&answer, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Value {
        json!({
            "id": 7,
            "resource": "aws-prod",
            "expires_at": "2026-11-23T15:00:00.000Z",
            "credentials": {
                "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "s'ecret",
                "AWS_SESSION_TOKEN": "token",
                "AWS_CREDENTIAL_EXPIRATION": "2026-11-23T14:59:30Z"
            }
        })
    }

    /// The shape the AWS CLI expects from a credential_process (its documentation's example).
    #[test]
    fn credential_process_output_has_the_aws_cli_shape() {
        let out = render(&answer(), Format::CredentialProcess).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "Version",
                "AccessKeyId",
                "SecretAccessKey",
                "SessionToken",
                "Expiration"
            ]
        );
        assert_eq!(value["Version"], 1);
        assert_eq!(value["Expiration"], "2026-11-23T14:59:30Z");
        assert!(
            chrono::DateTime::parse_from_rfc3339(value["Expiration"].as_str().unwrap()).is_ok()
        );

        let mut later = answer();
        later["credentials"]["AWS_CREDENTIAL_EXPIRATION"] = json!("2026-11-23T16:00:00Z");
        let value: Value =
            serde_json::from_str(&render(&later, Format::CredentialProcess).unwrap()).unwrap();
        assert_eq!(
            value["Expiration"], "2026-11-23T15:00:00Z",
            "never later than the grant"
        );

        let mut not_aws = answer();
        not_aws["credentials"] = json!({"PASSWORD": "x"});
        let err = render(&not_aws, Format::CredentialProcess)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not issue AWS credentials"), "{err}");
    }

    #[test]
    fn plain_http_only_to_loopback_or_with_insecure() {
        let token = || SecretString::from("jit_test");
        for url in [
            "https://jit.example.com",
            "http://127.0.0.1:3000",
            "http://127.8.9.10",
            "http://[::1]:3000/",
            "http://localhost:3000",
            "http://LOCALHOST",
        ] {
            assert!(Client::new(url, token(), false).is_ok(), "{url}");
        }
        for url in [
            "http://jit.example.com",
            "http://10.0.0.5:3000",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
        ] {
            let err = Client::new(url, token(), false).unwrap_err().to_string();
            assert!(err.contains("is plain HTTP"), "{url}: {err}");
            assert!(err.contains("--insecure"), "{err}");
            assert!(
                Client::new(url, token(), true).is_ok(),
                "{url} with --insecure"
            );
        }
        let err = Client::new("ftp://jit.example.com", token(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be an https:// URL"), "{err}");
    }

    /// A hostile provider output must not become shell code in a CI job that sources it.
    #[test]
    fn env_output_refuses_names_that_are_not_identifiers() {
        for name in ["A;rm -rf ~;B", "1ABC", "A B", "A=B", "$(id)", "", "Ä"] {
            let mut a = answer();
            a["credentials"][name] = json!("x");
            let err = render(&a, Format::Env).unwrap_err().to_string();
            assert!(err.contains("not a shell variable name"), "{name}: {err}");
        }
        let mut nul = answer();
        nul["credentials"]["OK"] = json!("a\u{0}b");
        assert!(render(&nul, Format::Env).is_err());
        // Values of any content are quoted so the shell reads them back exactly.
        let mut odd = answer();
        let value = "it's $(rm -rf ~) `id` \"q\" \\ ${HOME}\nline two;";
        odd["credentials"] = json!({ "ODD_VALUE": value });
        let out = render(&odd, Format::Env).unwrap();
        let echoed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{out}printf %s \"$ODD_VALUE\""))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(echoed.stdout).unwrap(), value);
    }

    #[test]
    fn env_output_is_quoted_for_the_shell() {
        let out = render(&answer(), Format::Env).unwrap();
        assert!(
            out.contains("export AWS_SECRET_ACCESS_KEY='s'\\''ecret'\n"),
            "{out}"
        );
    }
}
