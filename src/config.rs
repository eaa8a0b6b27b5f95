//! Settings from the environment, loaded and validated once at startup.
//!
//! Secrets can be given directly (`SLACK_BOT_TOKEN=…`) or as a file (`SLACK_BOT_TOKEN_FILE=/run/…`),
//! not both. Every problem is reported as one line that names the variable.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::store::Durability;

/// A configuration problem, shown as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads environment variables; injected so tests need not touch the process environment.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads a secret from `NAME` or `NAME_FILE`.
pub fn secret(env: EnvFn<'_>, name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env(name), env(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "{name} and {file_var} are both set; set only one"
        ))),
        (Some(value), None) => {
            if value.trim().is_empty() {
                Err(ConfigError(format!("{name} is set but empty")))
            } else {
                Ok(Some(SecretString::from(value.trim().to_owned())))
            }
        }
        (None, Some(path)) => {
            let content = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{file_var}: cannot read `{path}`: {e}")))?;
            let content = content.trim();
            if content.is_empty() {
                return Err(ConfigError(format!("{file_var}: `{path}` is empty")));
            }
            Ok(Some(SecretString::from(content.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

pub fn required_secret(env: EnvFn<'_>, name: &str) -> Result<SecretString, ConfigError> {
    secret(env, name)?
        .ok_or_else(|| ConfigError(format!("{name} is not set (set {name} or {name}_FILE)")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Settings every command needs: where the database and the policy are.
#[derive(Clone)]
pub struct BaseConfig {
    /// May hold a password (PostgreSQL): shown only through [`crate::store::redact_url`].
    pub database_url: String,
    pub durability: Durability,
    pub policy_path: PathBuf,
}

impl std::fmt::Debug for BaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseConfig")
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("durability", &self.durability)
            .field("policy_path", &self.policy_path)
            .finish()
    }
}

impl BaseConfig {
    pub fn from_env(env: EnvFn<'_>) -> Result<Self, ConfigError> {
        // A PostgreSQL URL may carry a password, so it may also come from a file.
        let database_url = secret(env, "JIT_DATABASE_URL")?
            .map(|url| secrecy::ExposeSecret::expose_secret(&url).trim().to_owned())
            .unwrap_or_else(|| "sqlite://jit.db".into());
        if crate::store::Driver::of_url(&database_url).is_none() {
            return Err(ConfigError(format!(
                "JIT_DATABASE_URL must be a sqlite: URL such as sqlite://jit.db, or a postgres:// URL such as postgres://jit@db.internal/jit, not `{}`",
                crate::store::redact_url(&database_url)
            )));
        }
        let durability = match env("JIT_SQLITE_SYNCHRONOUS") {
            None => Durability::Full,
            Some(value) => Durability::parse(&value).ok_or_else(|| {
                ConfigError(format!(
                    "JIT_SQLITE_SYNCHRONOUS must be `full` or `normal`, not `{value}`"
                ))
            })?,
        };
        Ok(Self {
            database_url,
            durability,
            policy_path: PathBuf::from(env("JIT_POLICY").unwrap_or_else(|| "jit.toml".into())),
        })
    }
}

/// Everything `jit serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub base: BaseConfig,
    pub signing_secrets: Vec<SecretString>,
    pub bot_token: SecretString,
    pub app_token: Option<SecretString>,
    pub slack_api_url: String,
    /// The Slack workspace (team id, `T…`) jit belongs to, if configured (`JIT_SLACK_TEAM_ID`).
    /// `jit doctor` checks the bot token against it.
    pub slack_team_id: Option<String>,
    pub listen: SocketAddr,
    pub encryption_key: SecretString,
    /// `JIT_AUDIT_KEY`; when unset the audit key is derived from `encryption_key`.
    pub audit_key: Option<SecretString>,
    /// How often the audit chain's head is posted to the audit channel (if it moved).
    pub audit_anchor_interval: Duration,
    pub workers: usize,
    pub posts_per_channel_per_second: NonZeroU32,
    /// Timeouts and the connection cap of the HTTP edge.
    pub edge: crate::edge::EdgeConfig,
    /// A separate address for `/metrics`; when set, the main listener does not serve it.
    pub metrics_listen: Option<SocketAddr>,
    /// API calls per minute per source address that do not authenticate.
    pub unauthenticated_per_minute: u32,
    /// Proxies in front of jit whose `X-Forwarded-For` entries are trusted (0: none).
    pub trusted_proxy_hops: usize,
    /// `PAGERDUTY_TOKEN` (or `_FILE`) and `JIT_PAGERDUTY_API_URL`, for `auto_approve.oncall`.
    pub pagerduty: Option<crate::oncall::PagerDutyConfig>,
}

/// `PAGERDUTY_TOKEN` (or `PAGERDUTY_TOKEN_FILE`) and `JIT_PAGERDUTY_API_URL` (default
/// <https://api.pagerduty.com>). No token: `None`.
pub fn pagerduty(env: EnvFn<'_>) -> Result<Option<crate::oncall::PagerDutyConfig>, ConfigError> {
    let Some(token) = secret(env, "PAGERDUTY_TOKEN")? else {
        return Ok(None);
    };
    if secrecy::ExposeSecret::expose_secret(&token)
        .trim()
        .is_empty()
    {
        return Err(ConfigError("PAGERDUTY_TOKEN is empty".into()));
    }
    let token = SecretString::from(
        secrecy::ExposeSecret::expose_secret(&token)
            .trim()
            .to_owned(),
    );
    let api_url =
        env("JIT_PAGERDUTY_API_URL").unwrap_or_else(|| crate::oncall::DEFAULT_API_URL.into());
    if url::Url::parse(&api_url).is_err() {
        return Err(ConfigError(format!(
            "JIT_PAGERDUTY_API_URL `{api_url}` is not a URL"
        )));
    }
    Ok(Some(crate::oncall::PagerDutyConfig { api_url, token }))
}

fn parse_number<T: std::str::FromStr>(
    env: EnvFn<'_>,
    name: &str,
    default: T,
    valid: impl Fn(&T) -> bool,
    what: &str,
) -> Result<T, ConfigError> {
    match env(name) {
        None => Ok(default),
        Some(text) => match text.trim().parse::<T>() {
            Ok(value) if valid(&value) => Ok(value),
            _ => Err(ConfigError(format!("{name} must be {what}, not `{text}`"))),
        },
    }
}

/// A duration setting such as `10s` or `1m`, within `max_secs`; `zero_ok` also accepts `0`.
fn parse_duration(
    env: EnvFn<'_>,
    name: &str,
    default: Duration,
    max_secs: u64,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    let Some(text) = env(name) else {
        return Ok(default);
    };
    let text = text.trim();
    if zero_ok && text == "0" {
        return Ok(Duration::ZERO);
    }
    let what = if zero_ok {
        format!("a duration such as 30s or 2m, at most {max_secs}s, or 0 to turn it off")
    } else {
        format!("a duration such as 10s or 1m, at most {max_secs}s")
    };
    match crate::domain::duration::GrantDuration::parse(text) {
        Ok(d) if d.as_secs() <= max_secs => Ok(Duration::from_secs(d.as_secs())),
        _ => Err(ConfigError(format!("{name} must be {what}, not `{text}`"))),
    }
}

fn parse_edge(env: EnvFn<'_>) -> Result<crate::edge::EdgeConfig, ConfigError> {
    let defaults = crate::edge::EdgeConfig::default();
    let max_connections = match env("JIT_HTTP_MAX_CONNECTIONS") {
        None => None,
        Some(_) => Some(parse_number(
            env,
            "JIT_HTTP_MAX_CONNECTIONS",
            0usize,
            |n| *n >= crate::edge::MIN_CONNECTIONS,
            &format!(
                "a number of connections, at least {}",
                crate::edge::MIN_CONNECTIONS
            ),
        )?),
    };
    Ok(crate::edge::EdgeConfig {
        header_timeout: parse_duration(
            env,
            "JIT_HTTP_HEADER_TIMEOUT",
            defaults.header_timeout,
            600,
            false,
        )?,
        body_timeout: parse_duration(
            env,
            "JIT_HTTP_BODY_TIMEOUT",
            defaults.body_timeout,
            600,
            false,
        )?,
        idle_timeout: parse_duration(
            env,
            "JIT_HTTP_IDLE_TIMEOUT",
            defaults.idle_timeout,
            3600,
            true,
        )?,
        max_connections,
        fd_reserve: parse_number(
            env,
            "JIT_FD_RESERVE",
            defaults.fd_reserve,
            |n| (64..=1_000_000).contains(n),
            "a number of file descriptors from 64 to 1000000",
        )?,
    })
}

impl ServeConfig {
    pub fn from_env(env: EnvFn<'_>) -> Result<Self, ConfigError> {
        let base = BaseConfig::from_env(env)?;
        let signing = required_secret(env, "SLACK_SIGNING_SECRET")?;
        let signing_secrets: Vec<SecretString> = {
            use secrecy::ExposeSecret;
            signing
                .expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| SecretString::from(s.to_owned()))
                .collect()
        };
        if signing_secrets.is_empty() {
            return Err(ConfigError(
                "SLACK_SIGNING_SECRET holds no secret (a comma-separated list is allowed)".into(),
            ));
        }
        let bot_token = required_secret(env, "SLACK_BOT_TOKEN")?;
        {
            use secrecy::ExposeSecret;
            if !bot_token.expose_secret().starts_with("xoxb-") {
                return Err(ConfigError(
                    "SLACK_BOT_TOKEN must be a bot token (it starts with xoxb-)".into(),
                ));
            }
        }
        let app_token = secret(env, "SLACK_APP_TOKEN")?;
        if let Some(token) = &app_token {
            use secrecy::ExposeSecret;
            if !token.expose_secret().starts_with("xapp-") {
                return Err(ConfigError(
                    "SLACK_APP_TOKEN must be an app-level token (it starts with xapp-)".into(),
                ));
            }
        }
        let slack_api_url =
            env("JIT_SLACK_API_URL").unwrap_or_else(|| "https://slack.com/api".into());
        if url::Url::parse(&slack_api_url).is_err() {
            return Err(ConfigError(format!(
                "JIT_SLACK_API_URL `{slack_api_url}` is not a URL"
            )));
        }
        let slack_team_id = match env("JIT_SLACK_TEAM_ID") {
            None => None,
            Some(text) => {
                let id = text.trim();
                // Workspaces are `T…`; an Enterprise Grid organization is `E…`.
                let valid = id.len() >= 3
                    && id.starts_with(['T', 'E'])
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
                if !valid {
                    return Err(ConfigError(format!(
                        "JIT_SLACK_TEAM_ID must be a Slack team id such as T0123ABCD (jit doctor shows it), not `{text}`"
                    )));
                }
                Some(id.to_owned())
            }
        };
        let listen_text = env("JIT_LISTEN").unwrap_or_else(|| "0.0.0.0:3000".into());
        let listen = listen_text.parse().map_err(|_| {
            ConfigError(format!(
                "JIT_LISTEN must be an address such as 0.0.0.0:3000, not `{listen_text}`"
            ))
        })?;
        let encryption_key = required_secret(env, "JIT_ENCRYPTION_KEY")?;
        let audit_key = secret(env, "JIT_AUDIT_KEY")?;
        let audit_anchor_interval = parse_duration(
            env,
            "JIT_AUDIT_ANCHOR_INTERVAL",
            crate::audit::anchor::DEFAULT_INTERVAL,
            86_400,
            false,
        )?;
        if audit_anchor_interval < Duration::from_secs(60) {
            return Err(ConfigError(format!(
                "JIT_AUDIT_ANCHOR_INTERVAL must be at least 1m, not `{}`",
                env("JIT_AUDIT_ANCHOR_INTERVAL").unwrap_or_default()
            )));
        }
        let workers = parse_number(
            env,
            "JIT_WORKERS",
            16usize,
            |n| (1..=256).contains(n),
            "a number from 1 to 256",
        )?;
        let posts = parse_number(
            env,
            "JIT_SLACK_CHANNEL_RATE",
            1u32,
            |n| (1..=1000).contains(n),
            "messages per second per channel, from 1 to 1000",
        )?;
        let edge = parse_edge(env)?;
        let metrics_listen = match env("JIT_METRICS_LISTEN") {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.trim().parse().map_err(|_| {
                    ConfigError(format!(
                        "JIT_METRICS_LISTEN must be an address such as 127.0.0.1:9090, not `{text}`"
                    ))
                })?;
                if addr == listen {
                    return Err(ConfigError(format!(
                        "JIT_METRICS_LISTEN ({addr}) must differ from JIT_LISTEN"
                    )));
                }
                Some(addr)
            }
        };
        let unauthenticated_per_minute = parse_number(
            env,
            "JIT_API_UNAUTHENTICATED_RATE",
            30u32,
            |n| (1..=1_000_000).contains(n),
            "calls per minute per address, from 1 to 1000000",
        )?;
        let trusted_proxy_hops = parse_number(
            env,
            "JIT_TRUSTED_PROXY_HOPS",
            0usize,
            |n| *n <= 10,
            "a number of proxies from 0 to 10",
        )?;
        Ok(Self {
            base,
            signing_secrets,
            bot_token,
            app_token,
            slack_api_url,
            slack_team_id,
            listen,
            encryption_key,
            audit_key,
            audit_anchor_interval,
            workers,
            posts_per_channel_per_second: NonZeroU32::new(posts).expect("validated above"),
            edge,
            metrics_listen,
            unauthenticated_per_minute,
            trusted_proxy_hops,
            pagerduty: pagerduty(env)?,
        })
    }
}

/// The audit chain's key for commands that verify or append (`jit audit verify`, the admin
/// commands): `JIT_AUDIT_KEY` (or `_FILE`), else derived from `JIT_ENCRYPTION_KEY` (or `_FILE`).
pub fn audit_key(env: EnvFn<'_>) -> Result<crate::crypto::AuditKey, ConfigError> {
    let own = secret(env, "JIT_AUDIT_KEY")?;
    let encryption = match own {
        Some(_) => None,
        None => secret(env, "JIT_ENCRYPTION_KEY")?,
    };
    crate::crypto::AuditKey::from_settings(own.as_ref(), encryption.as_ref()).map_err(ConfigError)
}

pub fn log_format(env: EnvFn<'_>) -> Result<LogFormat, ConfigError> {
    match env("JIT_LOG_FORMAT").as_deref() {
        None | Some("pretty") => Ok(LogFormat::Pretty),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(ConfigError(format!(
            "JIT_LOG_FORMAT must be `json` or `pretty`, not `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const GOOD: &[(&str, &str)] = &[
        ("SLACK_SIGNING_SECRET", "s1, s2"),
        ("SLACK_BOT_TOKEN", "xoxb-123"),
        ("JIT_ENCRYPTION_KEY", "k"),
    ];

    #[test]
    fn defaults_and_rotation_list() {
        let env = env_of(GOOD);
        let config = ServeConfig::from_env(&env).unwrap();
        assert_eq!(config.signing_secrets.len(), 2);
        assert_eq!(config.signing_secrets[1].expose_secret(), "s2");
        assert_eq!(config.base.database_url, "sqlite://jit.db");
        assert_eq!(config.base.policy_path, PathBuf::from("jit.toml"));
        assert_eq!(config.listen.to_string(), "0.0.0.0:3000");
        assert_eq!(config.slack_api_url, "https://slack.com/api");
        assert_eq!(config.base.durability, Durability::Full);
        assert_eq!(config.edge, crate::edge::EdgeConfig::default());
        assert_eq!(config.edge.header_timeout, Duration::from_secs(10));
        assert_eq!(config.edge.body_timeout, Duration::from_secs(10));
        assert_eq!(config.edge.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.edge.max_connections, None);
        assert_eq!(config.edge.fd_reserve, 512);
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.unauthenticated_per_minute, 30);
        assert_eq!(config.trusted_proxy_hops, 0);
        assert_eq!(config.slack_team_id, None);
        assert!(config.audit_key.is_none());
        assert_eq!(config.audit_anchor_interval, Duration::from_secs(3600));
    }

    #[test]
    fn audit_key_and_anchor_interval() {
        let key = "0101010101010101010101010101010101010101010101010101010101010101";
        let pairs = [
            GOOD,
            &[("JIT_AUDIT_KEY", key), ("JIT_AUDIT_ANCHOR_INTERVAL", "15m")],
        ]
        .concat();
        let env = env_of(&pairs);
        let config = ServeConfig::from_env(&env).unwrap();
        assert_eq!(config.audit_key.as_ref().unwrap().expose_secret(), key);
        assert_eq!(config.audit_anchor_interval, Duration::from_secs(900));
        assert!(!format!("{config:?}").contains(key));
        // The CLI's key: its own variable first, else derived from the encryption key.
        let own = audit_key(&env).unwrap();
        let derived = audit_key(&env_of(&[(
            "JIT_ENCRYPTION_KEY",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        )]))
        .unwrap();
        assert_ne!(own.mac_hex(&[b"x"]), derived.mac_hex(&[b"x"]));
        assert_eq!(
            own.mac_hex(&[b"x"]),
            crate::crypto::AuditKey::from_bytes([1u8; 32]).mac_hex(&[b"x"])
        );
        let missing = audit_key(&env_of(&[])).unwrap_err().to_string();
        assert!(
            missing.starts_with("the audit key is not set: set JIT_AUDIT_KEY"),
            "{missing}"
        );
    }

    #[test]
    fn slack_team_id() {
        let pairs = [GOOD, &[("JIT_SLACK_TEAM_ID", " T0123ABCD ")]].concat();
        let env = env_of(&pairs);
        let config = ServeConfig::from_env(&env).unwrap();
        assert_eq!(config.slack_team_id.as_deref(), Some("T0123ABCD"));
    }

    #[test]
    fn edge_settings() {
        let pairs = [
            GOOD,
            &[
                ("JIT_HTTP_HEADER_TIMEOUT", "2s"),
                ("JIT_HTTP_BODY_TIMEOUT", "1m"),
                ("JIT_HTTP_IDLE_TIMEOUT", "0"),
                ("JIT_HTTP_MAX_CONNECTIONS", "5000"),
                ("JIT_FD_RESERVE", "256"),
                ("JIT_METRICS_LISTEN", "127.0.0.1:9090"),
                ("JIT_API_UNAUTHENTICATED_RATE", "5"),
                ("JIT_TRUSTED_PROXY_HOPS", "1"),
            ],
        ]
        .concat();
        let env = env_of(&pairs);
        let config = ServeConfig::from_env(&env).unwrap();
        assert_eq!(config.edge.header_timeout, Duration::from_secs(2));
        assert_eq!(config.edge.body_timeout, Duration::from_secs(60));
        assert_eq!(config.edge.idle_timeout, Duration::ZERO);
        assert_eq!(config.edge.max_connections, Some(5000));
        assert_eq!(config.edge.fd_reserve, 256);
        assert_eq!(config.metrics_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(config.unauthenticated_per_minute, 5);
        assert_eq!(config.trusted_proxy_hops, 1);
    }

    #[test]
    fn each_problem_names_its_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "SLACK_SIGNING_SECRET is not set"),
            (
                vec![("SLACK_SIGNING_SECRET", "s")],
                "SLACK_BOT_TOKEN is not set",
            ),
            (
                vec![("SLACK_SIGNING_SECRET", "s"), ("SLACK_BOT_TOKEN", "xoxp-1")],
                "SLACK_BOT_TOKEN must be a bot token",
            ),
            (
                vec![("SLACK_SIGNING_SECRET", "s"), ("SLACK_BOT_TOKEN", "xoxb-1")],
                "JIT_ENCRYPTION_KEY is not set",
            ),
            (
                [GOOD, &[("JIT_LISTEN", "nowhere")]].concat(),
                "JIT_LISTEN must be an address",
            ),
            (
                [GOOD, &[("JIT_DATABASE_URL", "mysql://u:p@h/db")]].concat(),
                "JIT_DATABASE_URL must be a sqlite: URL such as sqlite://jit.db, or a postgres:// URL such as postgres://jit@db.internal/jit, not `mysql://u:***@h/db`",
            ),
            (
                [GOOD, &[("JIT_WORKERS", "0")]].concat(),
                "JIT_WORKERS must be a number from 1 to 256",
            ),
            (
                [GOOD, &[("SLACK_BOT_TOKEN_FILE", "/x")]].concat(),
                "SLACK_BOT_TOKEN and SLACK_BOT_TOKEN_FILE are both set",
            ),
            (
                vec![("SLACK_SIGNING_SECRET_FILE", "/nonexistent/jit-secret")],
                "SLACK_SIGNING_SECRET_FILE: cannot read `/nonexistent/jit-secret`",
            ),
            (
                [GOOD, &[("JIT_HTTP_HEADER_TIMEOUT", "0")]].concat(),
                "JIT_HTTP_HEADER_TIMEOUT must be a duration such as 10s or 1m, at most 600s, not `0`",
            ),
            (
                [GOOD, &[("JIT_HTTP_BODY_TIMEOUT", "soon")]].concat(),
                "JIT_HTTP_BODY_TIMEOUT must be a duration",
            ),
            (
                [GOOD, &[("JIT_HTTP_IDLE_TIMEOUT", "2h")]].concat(),
                "JIT_HTTP_IDLE_TIMEOUT must be a duration such as 30s or 2m, at most 3600s, or 0",
            ),
            (
                [GOOD, &[("JIT_HTTP_MAX_CONNECTIONS", "10")]].concat(),
                "JIT_HTTP_MAX_CONNECTIONS must be a number of connections, at least 64",
            ),
            (
                [GOOD, &[("JIT_FD_RESERVE", "1")]].concat(),
                "JIT_FD_RESERVE must be a number of file descriptors from 64",
            ),
            (
                [GOOD, &[("JIT_METRICS_LISTEN", "9090")]].concat(),
                "JIT_METRICS_LISTEN must be an address such as 127.0.0.1:9090",
            ),
            (
                [GOOD, &[("JIT_METRICS_LISTEN", "0.0.0.0:3000")]].concat(),
                "JIT_METRICS_LISTEN (0.0.0.0:3000) must differ from JIT_LISTEN",
            ),
            (
                [GOOD, &[("JIT_API_UNAUTHENTICATED_RATE", "0")]].concat(),
                "JIT_API_UNAUTHENTICATED_RATE must be calls per minute per address",
            ),
            (
                [GOOD, &[("JIT_TRUSTED_PROXY_HOPS", "x")]].concat(),
                "JIT_TRUSTED_PROXY_HOPS must be a number of proxies from 0 to 10",
            ),
            (
                [GOOD, &[("JIT_AUDIT_ANCHOR_INTERVAL", "30s")]].concat(),
                "JIT_AUDIT_ANCHOR_INTERVAL must be at least 1m",
            ),
            (
                [GOOD, &[("JIT_AUDIT_ANCHOR_INTERVAL", "2d")]].concat(),
                "JIT_AUDIT_ANCHOR_INTERVAL must be a duration such as 10s or 1m, at most 86400s",
            ),
            (
                [GOOD, &[("JIT_AUDIT_KEY", "  ")]].concat(),
                "JIT_AUDIT_KEY is set but empty",
            ),
            (
                [GOOD, &[("JIT_SQLITE_SYNCHRONOUS", "off")]].concat(),
                "JIT_SQLITE_SYNCHRONOUS must be `full` or `normal`",
            ),
            (
                [GOOD, &[("JIT_SLACK_TEAM_ID", "my-workspace")]].concat(),
                "JIT_SLACK_TEAM_ID must be a Slack team id such as T0123ABCD",
            ),
        ];
        for (pairs, expected) in cases {
            let env = env_of(&pairs);
            let err = ServeConfig::from_env(&env).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
            assert!(!err.contains('\n'));
            assert!(!err.contains("p@h"), "no URL credentials in errors: {err}");
        }
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "xoxb-from-file\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let pairs = [
            ("SLACK_SIGNING_SECRET", "s"),
            ("SLACK_BOT_TOKEN_FILE", path.as_str()),
            ("JIT_ENCRYPTION_KEY", "k"),
        ];
        let env = env_of(&pairs);
        let config = ServeConfig::from_env(&env).unwrap();
        assert_eq!(config.bot_token.expose_secret(), "xoxb-from-file");
        let debug = format!("{config:?}");
        assert!(!debug.contains("xoxb-from-file"), "{debug}");
    }
}
