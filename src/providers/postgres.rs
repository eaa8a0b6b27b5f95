//! The `postgres` provider: a temporary login role per grant (`mode = "ephemeral"`), or a role
//! granted to an existing user for the grant's length (`mode = "elevation"`).
//!
//! jit connects with the admin URL held in the environment variable the resource names
//! (`database_url_env`); the caller reads it at startup and passes it in as a secret. The URL
//! and every password stay out of logs, `Debug` output and error texts: statement logging is
//! off on jit's admin connections, and error texts are scrubbed of the secrets they could echo.
//!
//! **Ephemeral.** `CREATE ROLE "jit_<request number>" LOGIN PASSWORD … VALID UNTIL <grant end>
//! CONNECTION LIMIT n IN ROLE <roles>`. The password is 40 random letters and digits; jit sends
//! PostgreSQL its SCRAM-SHA-256 verifier, never the password itself, so even a server that logs
//! statements (or logs the failing one) never sees it. Running the grant again (after a crash)
//! finds the role, sets a new password and expiry, and grants the roles again. The holder gets
//! `DATABASE_URL` (`postgres://jit_42:<password>@<host:port>/<db>`, host from `connect_host` or
//! the admin URL), `PGUSER`, `PGPASSWORD`, `PGHOST`, `PGPORT` and `PGDATABASE`. Extending moves
//! `VALID UNTIL` and keeps the password. Teardown: `NOLOGIN`, terminate the role's sessions
//! (until none is left), `REASSIGN OWNED BY … TO CURRENT_USER`, `DROP OWNED BY …` (both in the
//! admin URL's database), `DROP ROLE IF EXISTS`. jit only ever drops roles named `jit_<digits>`.
//!
//! **Elevation.** The requester's key (Slack user ID or `identity:<name>`) is mapped through
//! `db_users` to an existing database user; `GRANT <role> TO <user>` for each role, in one
//! transaction. The handle (`elevation:<user>:<role>,<role>`) is the same for every grant of the
//! same roles to the same user, so overlapping grants are counted as one access. Teardown:
//! `REVOKE <role> FROM <user>`, and with `terminate_sessions = true`, every session of the user
//! is terminated — not only those opened during the grant, because a session opened before it
//! can `SET ROLE` into the granted role and would keep it after `REVOKE`.
//!
//! Connection failures, timeouts, lock waits and server shutdowns are retryable; permission,
//! syntax and missing-object errors are not.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};

use super::{Credentials, GrantSpec, Issued, Provider, ProviderError, RevokeSpec, Revoked};
use crate::domain::ids::{RequestId, ResourceId};
use crate::domain::policy::{PostgresConfig, PostgresMode};

/// Length of generated passwords (letters and digits: about 238 bits).
pub const PASSWORD_LEN: usize = 40;
/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Iterations of the SCRAM-SHA-256 verifiers jit writes (PostgreSQL's default).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Prefix of elevation handles.
pub const ELEVATION_PREFIX: &str = "elevation:";

const ROLE_PREFIX: &str = "jit_";
const MAX_ERROR_CHARS: usize = 600;

/// Where the holder connects: from `connect_host`, else the admin URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host` or `host:port` as written in `connect_host`, or from the admin URL.
    host_port: String,
    host: String,
    port: u16,
    database: String,
    sslmode: Option<String>,
}

pub struct PostgresProvider {
    resource: ResourceId,
    config: PostgresConfig,
    pool: PgPool,
    options: PgConnectOptions,
    target: Target,
}

const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A small lazy pool: jit's calls are few and short.
fn pool(options: PgConnectOptions, acquire_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(Duration::from_secs(120))
        .connect_lazy_with(options)
}

impl fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresProvider")
            .field("resource", &self.resource)
            .field("config", &self.config)
            .field("host", &self.target.host_port)
            .field("database", &self.target.database)
            .finish_non_exhaustive()
    }
}

/// Reads the admin URL from the variable named by `database_url_env`, or from the file named by
/// `<that name>_FILE`. The error names the variable, never its value.
pub fn admin_url_from_env(config: &PostgresConfig) -> Result<SecretString, String> {
    let name = &config.database_url_env;
    if let Ok(value) = std::env::var(name)
        && !value.trim().is_empty()
    {
        return Ok(SecretString::from(value.trim().to_owned()));
    }
    let file_var = format!("{name}_FILE");
    if let Ok(path) = std::env::var(&file_var) {
        return std::fs::read_to_string(&path)
            .map(|text| SecretString::from(text.trim().to_owned()))
            .map_err(|e| format!("cannot read {file_var} ({path}): {e}"));
    }
    Err(format!(
        "the environment variable {name} (or {file_var}) must hold the admin connection URL of this postgres resource"
    ))
}

impl PostgresProvider {
    /// `admin_url` is the `postgres://` URL from the variable named by `database_url_env`. The
    /// pool connects lazily (at most 2 connections), so this needs no database, only a Tokio
    /// runtime.
    pub fn new(
        resource: ResourceId,
        config: PostgresConfig,
        admin_url: &SecretString,
    ) -> Result<Self, ProviderError> {
        let env = &config.database_url_env;
        let url = admin_url.expose_secret();
        let options = PgConnectOptions::from_str(url).map_err(|_| {
            ProviderError::Fatal(format!(
                "the admin URL in {env} is not a valid postgres:// URL"
            ))
        })?;
        let target = target(url, config.connect_host.as_deref(), env)?;
        let options = options
            .application_name("jit")
            .options([("lock_timeout", "10s"), ("statement_timeout", "60s")])
            .disable_statement_logging();
        Ok(Self {
            resource,
            config,
            pool: pool(options.clone(), DEFAULT_ACQUIRE_TIMEOUT),
            options,
            target,
        })
    }

    /// How long a call waits for an admin connection before failing (retryably). Default 5 s.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.pool = pool(self.options.clone(), timeout);
        self
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    async fn execute(
        &self,
        what: &str,
        sql: String,
        secrets: &[&str],
    ) -> Result<(), ProviderError> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| classify(what, &e, secrets))
    }

    // --- ephemeral --------------------------------------------------------------------------

    async fn grant_ephemeral(
        &self,
        spec: &GrantSpec,
        connection_limit: i32,
    ) -> Result<Issued, ProviderError> {
        let role = ephemeral_role_name(spec.request_id);
        let password = random_password();
        let verifier =
            scram_sha256_verifier(password.expose_secret(), &random_salt(), SCRAM_ITERATIONS);
        let secrets = [password.expose_secret(), verifier.as_str()];
        let role_q = quote_ident(&role)?;
        let granted = self.quoted_roles()?;
        let until = quote_literal(&pg_timestamp(spec.expires_at))?;
        let attributes = format!(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT \
             PASSWORD {} VALID UNTIL {until} CONNECTION LIMIT {connection_limit}",
            quote_literal(&verifier)?
        );
        let create = format!("CREATE ROLE {role_q} WITH {attributes} IN ROLE {granted}");
        match self
            .execute("create the login role", create, &secrets)
            .await
        {
            Ok(()) => {}
            Err(e) if !e.is_retryable() && self.role_exists(&role).await? => {
                // A re-run after a crash: the role is there; refresh it.
                let alter = format!("ALTER ROLE {role_q} WITH {attributes}");
                self.execute("refresh the login role", alter, &secrets)
                    .await?;
                let grant = format!("GRANT {granted} TO {role_q}");
                self.execute("grant the roles", grant, &secrets).await?;
            }
            Err(e) => return Err(e),
        }
        let url = connection_url(&self.target, &role, password.expose_secret());
        let credentials = Credentials::from_pairs([
            ("DATABASE_URL", url),
            ("PGHOST", self.target.host.clone()),
            ("PGPORT", self.target.port.to_string()),
            ("PGDATABASE", self.target.database.clone()),
            ("PGUSER", role.clone()),
            ("PGPASSWORD", password.expose_secret().to_owned()),
        ]);
        Ok(Issued {
            instructions: Some(format!(
                "Log in as {role} to database {} on {} until {} (member of {}).",
                self.target.database,
                self.target.host_port,
                pg_timestamp(spec.expires_at),
                self.config.roles.join(", "),
            )),
            handle: role,
            credentials: Some(credentials),
            credentials_expire_at: None,
        })
    }

    async fn role_exists(&self, role: &str) -> Result<bool, ProviderError> {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("look up the role", &e, &[]))
    }

    /// Terminates every session of `user` until none is left (a few seconds at most).
    async fn terminate_sessions(&self, user: &str) -> Result<u64, ProviderError> {
        let mut terminated = 0u64;
        for _ in 0..50 {
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = $1 AND pid <> pg_backend_pid()",
            )
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("terminate sessions", &e, &[]))?;
            terminated += killed as u64;
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            )
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("count sessions", &e, &[]))?;
            if left == 0 {
                return Ok(terminated);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ProviderError::Retryable(format!(
            "sessions of {user} are still open after being terminated"
        )))
    }

    async fn revoke_ephemeral(&self, role: &str) -> Result<Revoked, ProviderError> {
        let role_q = quote_ident(role)?;
        // 1. No new logins.
        match self
            .execute(
                "lock the login role",
                format!("ALTER ROLE {role_q} NOLOGIN"),
                &[],
            )
            .await
        {
            Ok(()) => {}
            Err(e) if !e.is_retryable() && !self.role_exists(role).await? => {
                return Ok(Revoked {
                    cleanup_at: None,
                    detail: Some(format!("role {role} was already gone")),
                });
            }
            Err(e) => return Err(e),
        }
        // 2. No open sessions.
        let terminated = self.terminate_sessions(role).await?;
        // 3. Nothing owned (in the admin URL's database), then the role itself.
        self.execute(
            "reassign objects owned by the login role",
            format!("REASSIGN OWNED BY {role_q} TO CURRENT_USER"),
            &[],
        )
        .await
        .or_else(ignore_missing_role)?;
        self.execute(
            "drop privileges of the login role",
            format!("DROP OWNED BY {role_q}"),
            &[],
        )
        .await
        .or_else(ignore_missing_role)?;
        let sessions = match terminated {
            0 => String::new(),
            1 => ", 1 session terminated".to_owned(),
            n => format!(", {n} sessions terminated"),
        };
        match sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {role_q}")))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(Revoked {
                cleanup_at: None,
                detail: Some(format!("role {role} dropped{sessions}")),
            }),
            // Objects in other databases still depend on it: access has ended (NOLOGIN, no
            // sessions); strip its memberships and say what is left to do.
            Err(e) if sqlstate(&e).as_deref() == Some("2BP01") => {
                let granted = self.quoted_roles()?;
                self.execute(
                    "revoke the roles from the login role",
                    format!("REVOKE {granted} FROM {role_q}"),
                    &[],
                )
                .await
                .or_else(ignore_missing_role)?;
                Ok(Revoked {
                    cleanup_at: None,
                    detail: Some(format!(
                        "role {role} locked (NOLOGIN{sessions}, roles revoked) but not dropped: {}",
                        scrub(&e.to_string(), &[])
                    )),
                })
            }
            Err(e) => Err(classify("drop the login role", &e, &[])),
        }
    }

    // --- elevation --------------------------------------------------------------------------

    fn db_user(&self, spec: &GrantSpec) -> Result<String, ProviderError> {
        let PostgresMode::Elevation { db_users, .. } = &self.config.mode else {
            unreachable!("only called in elevation mode")
        };
        let key = spec.requester.key();
        db_users.get(&key).cloned().ok_or_else(|| {
            ProviderError::Fatal(format!(
                "no database user is mapped for {key} on resource {}; add `{key} = \"<db user>\"` to its db_users",
                self.resource
            ))
        })
    }

    async fn grant_elevation(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        let user = self.db_user(spec)?;
        let user_q = quote_ident(&user)?;
        let granted = self.quoted_roles()?;
        // One statement grants every role, or none.
        self.execute(
            "grant the roles",
            format!("GRANT {granted} TO {user_q}"),
            &[],
        )
        .await?;
        Ok(Issued {
            handle: elevation_handle(&user, &self.config.roles),
            credentials: None,
            instructions: Some(format!(
                "Your database user {user} has {} until {}.",
                self.config.roles.join(", "),
                pg_timestamp(spec.expires_at)
            )),
            credentials_expire_at: None,
        })
    }

    async fn revoke_elevation(
        &self,
        user: &str,
        roles: &[String],
        terminate: bool,
    ) -> Result<Revoked, ProviderError> {
        let user_q = quote_ident(user)?;
        let mut revoked = Vec::new();
        for role in roles {
            // One statement per role: a role dropped meanwhile does not block the others.
            let sql = format!("REVOKE {} FROM {user_q}", quote_ident(role)?);
            match self.execute("revoke the role", sql, &[]).await {
                Ok(()) => revoked.push(role.as_str()),
                Err(e) => {
                    ignore_missing_role(e)?;
                }
            }
        }
        let mut detail = format!("revoked {} from {user}", revoked.join(", "));
        if terminate {
            let n = self.terminate_sessions(user).await?;
            detail.push_str(&format!(", {n} session(s) terminated"));
        }
        Ok(Revoked {
            cleanup_at: None,
            detail: Some(detail),
        })
    }

    fn quoted_roles(&self) -> Result<String, ProviderError> {
        let quoted: Result<Vec<String>, ProviderError> =
            self.config.roles.iter().map(|r| quote_ident(r)).collect();
        Ok(quoted?.join(", "))
    }
}

#[async_trait::async_trait]
impl Provider for PostgresProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        if spec.expires_at <= spec.now {
            return Err(ProviderError::Fatal(format!(
                "the grant ended at {}, before access was provisioned",
                pg_timestamp(spec.expires_at)
            )));
        }
        match &self.config.mode {
            PostgresMode::Ephemeral { connection_limit } => {
                self.grant_ephemeral(spec, *connection_limit).await
            }
            PostgresMode::Elevation { .. } => self.grant_elevation(spec).await,
        }
    }

    async fn extend(&self, spec: &GrantSpec, handle: &str) -> Result<Issued, ProviderError> {
        match &self.config.mode {
            PostgresMode::Ephemeral { .. } if spec.expires_at > spec.now => {
                let role = parse_ephemeral_handle(handle)?;
                let sql = format!(
                    "ALTER ROLE {} VALID UNTIL {}",
                    quote_ident(role)?,
                    quote_literal(&pg_timestamp(spec.expires_at))?
                );
                match self.execute("extend the login role", sql, &[]).await {
                    Ok(()) => Ok(Issued {
                        handle: role.to_owned(),
                        credentials: None,
                        instructions: Some(format!(
                            "{role} keeps its password and now works until {}.",
                            pg_timestamp(spec.expires_at)
                        )),
                        credentials_expire_at: None,
                    }),
                    // Gone meanwhile: a fresh grant.
                    Err(e) if !e.is_retryable() && !self.role_exists(role).await? => {
                        self.grant(spec).await
                    }
                    Err(e) => Err(e),
                }
            }
            _ => self.grant(spec).await,
        }
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Revoked, ProviderError> {
        if let Some((user, roles)) = parse_elevation_handle(&spec.handle)? {
            let terminate = matches!(
                self.config.mode,
                PostgresMode::Elevation {
                    terminate_sessions: true,
                    ..
                }
            );
            return self.revoke_elevation(&user, &roles, terminate).await;
        }
        let role = parse_ephemeral_handle(&spec.handle)?;
        self.revoke_ephemeral(role).await
    }

    /// The login role of the request, or the elevation of its mapped user.
    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        match &self.config.mode {
            PostgresMode::Elevation { .. } => match self.db_user(spec) {
                Ok(user) => elevation_handle(&user, &self.config.roles),
                Err(_) => ephemeral_role_name(spec.request_id),
            },
            PostgresMode::Ephemeral { .. } => ephemeral_role_name(spec.request_id),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/// `jit_<request number>`.
pub fn ephemeral_role_name(request_id: RequestId) -> String {
    format!("{ROLE_PREFIX}{}", request_id.0)
}

/// The role named by an ephemeral handle; only `jit_<digits>` is accepted, so a bad handle can
/// never make jit drop someone else's role.
pub fn parse_ephemeral_handle(handle: &str) -> Result<&str, ProviderError> {
    let ok = handle
        .strip_prefix(ROLE_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(handle)
    } else {
        Err(ProviderError::Fatal(format!(
            "`{}` is not a postgres handle jit issued (jit_<number> or elevation:…)",
            truncate(handle)
        )))
    }
}

fn escape_handle_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' | ':' | ',' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape_handle_part(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `elevation:<user>:<role>,<role>`, with `%`, `:` and `,` inside names escaped as `%XX`. Equal
/// for equal grants, so jit counts overlapping grants as one access.
pub fn elevation_handle(user: &str, roles: &[String]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| escape_handle_part(r)).collect();
    format!(
        "{ELEVATION_PREFIX}{}:{}",
        escape_handle_part(user),
        roles.join(",")
    )
}

/// `Some((user, roles))` for an elevation handle, `None` for any other handle.
pub fn parse_elevation_handle(
    handle: &str,
) -> Result<Option<(String, Vec<String>)>, ProviderError> {
    let Some(rest) = handle.strip_prefix(ELEVATION_PREFIX) else {
        return Ok(None);
    };
    let bad = || ProviderError::Fatal(format!("malformed elevation handle `{}`", truncate(handle)));
    let (user, roles) = rest.split_once(':').ok_or_else(bad)?;
    let user = unescape_handle_part(user)
        .filter(|u| !u.is_empty())
        .ok_or_else(bad)?;
    let roles: Option<Vec<String>> = roles
        .split(',')
        .map(|r| unescape_handle_part(r).filter(|r| !r.is_empty()))
        .collect();
    Ok(Some((user, roles.ok_or_else(bad)?)))
}

/// A double-quoted SQL identifier, embedded `"` doubled. Refuses NUL (PostgreSQL cannot hold
/// it), empty names, and names over 63 bytes (PostgreSQL would silently truncate them and then
/// act on a different role).
pub fn quote_ident(name: &str) -> Result<String, ProviderError> {
    if name.is_empty() || name.contains('\0') || name.len() > MAX_IDENTIFIER_BYTES {
        return Err(ProviderError::Fatal(format!(
            "`{}` is not a usable PostgreSQL name (1-{MAX_IDENTIFIER_BYTES} bytes, no NUL)",
            truncate(&name.replace('\0', "\\0"))
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A single-quoted SQL string literal that means the same whatever
/// `standard_conforming_strings` says: `'` is doubled, and a value holding a backslash is
/// written as an `E'…'` literal with the backslash doubled (as PostgreSQL's own
/// `quote_literal` does). Refuses NUL.
pub fn quote_literal(value: &str) -> Result<String, ProviderError> {
    if value.contains('\0') {
        return Err(ProviderError::Fatal(
            "a SQL literal cannot contain a NUL character".into(),
        ));
    }
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        Ok(format!("E'{}'", body.replace('\\', "\\\\")))
    } else {
        Ok(format!("'{body}'"))
    }
}

/// `2026-11-20 15:00:00+00`, as `VALID UNTIL` reads it.
pub fn pg_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// 40 random letters and digits from the thread's CSPRNG.
pub fn random_password() -> SecretString {
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect();
    SecretString::from(password)
}

fn random_salt() -> [u8; 16] {
    rand::rng().random()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64. The password must
/// already be in SASLprep normal form (jit's are ASCII letters and digits).
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    // PBKDF2-HMAC-SHA-256 with one output block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u.iter()) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn target(url: &str, connect_host: Option<&str>, env: &str) -> Result<Target, ProviderError> {
    let bad = || {
        ProviderError::Fatal(format!(
            "the admin URL in {env} is not a valid postgres:// URL"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad());
    }
    let query = |key: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let database = match parsed.path().trim_start_matches('/') {
        "" => query("dbname").unwrap_or_else(|| decode(parsed.username())),
        path => decode(path),
    };
    let admin_host = parsed
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| query("host"));
    let admin_port = parsed
        .port()
        .or_else(|| query("port").and_then(|p| p.parse().ok()))
        .unwrap_or(5432);
    let (host, port) = match connect_host {
        Some(hp) => split_host_port(hp).ok_or_else(|| {
            ProviderError::Fatal(format!("connect_host `{hp}` is not host or host:port"))
        })?,
        None => (
            admin_host.ok_or_else(|| {
                ProviderError::Fatal(format!(
                    "the admin URL in {env} names no host; set connect_host for the holders"
                ))
            })?,
            admin_port,
        ),
    };
    let host_port = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        host_port,
        host,
        port,
        database,
        sslmode: query("sslmode"),
    })
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 5432,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_owned(), port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
        }
        Some(_) => Some((text.to_owned(), 5432)), // a bare IPv6 address
        None if !text.is_empty() => Some((text.to_owned(), 5432)),
        None => None,
    }
}

/// `postgres://<user>:<password>@<host:port>/<db>[?sslmode=…]`, user, password and database
/// percent-encoded.
fn connection_url(target: &Target, user: &str, password: &str) -> String {
    let mut url = format!(
        "postgres://{}:{}@{}/{}",
        percent_encode(user),
        percent_encode(password),
        target.host_port,
        percent_encode(&target.database)
    );
    if let Some(mode) = &target.sslmode {
        url.push_str(&format!("?sslmode={}", percent_encode(mode)));
    }
    url
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// Replaces every secret in `text` with `[REDACTED]`.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "[REDACTED]");
    }
    truncate(&out)
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A missing role or user (SQLSTATE 42704) means the work is done.
fn ignore_missing_role(err: ProviderError) -> Result<(), ProviderError> {
    match &err {
        ProviderError::Fatal(text) if text.contains("SQLSTATE 42704") => Ok(()),
        _ => Err(err),
    }
}

/// SQLSTATE classes and codes worth a retry: connection exceptions (08), insufficient
/// resources (53), operator intervention (57: shutdown, cancel by statement_timeout), system
/// errors (58), serialization failures and deadlocks (40001, 40P01), lock timeouts (55P03).
fn is_retryable_sqlstate(code: &str) -> bool {
    ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
        || matches!(code, "40001" | "40P01" | "55P03" | "55006")
}

fn classify(what: &str, err: &sqlx::Error, secrets: &[&str]) -> ProviderError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let text = scrub(
                &format!(
                    "postgres: cannot {what}: {} (SQLSTATE {code})",
                    db.message()
                ),
                secrets,
            );
            if is_retryable_sqlstate(&code) {
                ProviderError::Retryable(text)
            } else {
                ProviderError::Fatal(text)
            }
        }
        E::Configuration(_) => ProviderError::Fatal(format!(
            "postgres: cannot {what}: the admin connection is misconfigured"
        )),
        E::PoolTimedOut => ProviderError::Retryable(format!(
            "postgres: cannot {what}: timed out waiting for a connection"
        )),
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolClosed | E::WorkerCrashed => {
            ProviderError::Retryable(scrub(&format!("postgres: cannot {what}: {err}"), secrets))
        }
        _ => ProviderError::Fatal(scrub(&format!("postgres: cannot {what}: {err}"), secrets)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_double_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("reader").unwrap(), r#""reader""#);
        assert_eq!(quote_ident(r#"a"b"#).unwrap(), r#""a""b""#);
        assert_eq!(
            quote_ident("'; DROP ROLE x; --").unwrap(),
            r#""'; DROP ROLE x; --""#
        );
        assert_eq!(
            quote_ident(r#""; DROP ROLE x; --"#).unwrap(),
            r#""""; DROP ROLE x; --""#
        );
        assert_eq!(quote_ident("with space").unwrap(), r#""with space""#);
        assert_eq!(quote_ident("Zoë_日本").unwrap(), "\"Zoë_日本\"");
        assert_eq!(quote_ident(r"back\slash").unwrap(), r#""back\slash""#);
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        // 63 bytes, counted in bytes, not characters.
        assert!(quote_ident(&"é".repeat(32)).is_err());
    }

    /// Every quoted identifier is one token: it starts and ends with `"` and every inner `"`
    /// comes in a pair.
    #[test]
    fn quoted_identifiers_cannot_be_broken_out_of() {
        for name in [
            r#"""#,
            r#""""#,
            r#"a""#,
            r#"x" OR "1"="1"#,
            "\"\n\"; SELECT 1; --",
        ] {
            let q = quote_ident(name).unwrap();
            let inner = &q[1..q.len() - 1];
            assert!(q.starts_with('"') && q.ends_with('"'));
            assert_eq!(inner.replace("\"\"", ""), name.replace('"', ""), "{q}");
        }
    }

    #[test]
    fn literals_are_single_quoted_and_backslashes_are_safe() {
        assert_eq!(quote_literal("plain").unwrap(), "'plain'");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(
            quote_literal("'; DROP ROLE x; --").unwrap(),
            "'''; DROP ROLE x; --'"
        );
        assert_eq!(quote_literal(r"a\'b").unwrap(), r"E'a\\''b'");
        assert_eq!(quote_literal(r"end\").unwrap(), r"E'end\\'");
        assert_eq!(quote_literal("ünï").unwrap(), "'ünï'");
        assert!(quote_literal("a\0").is_err());
    }

    #[test]
    fn role_names_and_handles() {
        assert_eq!(ephemeral_role_name(RequestId(42)), "jit_42");
        assert_eq!(parse_ephemeral_handle("jit_42").unwrap(), "jit_42");
        for bad in ["jit_", "jit_4a", "postgres", "jit_42; DROP", "JIT_1", ""] {
            assert!(parse_ephemeral_handle(bad).is_err(), "{bad}");
        }
        let roles = vec!["read:only".to_owned(), "odd\"role'x,y%".to_owned()];
        let handle = elevation_handle("alice:db", &roles);
        assert_eq!(
            handle,
            "elevation:alice%3Adb:read%3Aonly,odd\"role'x%2Cy%25"
        );
        assert_eq!(
            parse_elevation_handle(&handle).unwrap(),
            Some(("alice:db".to_owned(), roles))
        );
        assert_eq!(
            elevation_handle("u", &["r".into()]),
            elevation_handle("u", &["r".into()])
        );
        assert_eq!(parse_elevation_handle("jit_42").unwrap(), None);
        for bad in [
            "elevation:",
            "elevation:u",
            "elevation::r",
            "elevation:u:",
            "elevation:u:%zz",
        ] {
            assert!(parse_elevation_handle(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_long_random_and_alphanumeric() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.expose_secret().len(), PASSWORD_LEN);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains(a.expose_secret()));
    }

    /// Checked against Python's `hashlib.pbkdf2_hmac` and `hmac` for the same inputs.
    #[test]
    fn scram_verifier_matches_a_reference() {
        let verifier = scram_sha256_verifier("pencil", b"0123456789abcdef", 4096);
        assert_eq!(verifier, REFERENCE_VERIFIER);
    }

    const REFERENCE_VERIFIER: &str = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20=";

    #[test]
    fn targets_come_from_the_admin_url_or_connect_host() {
        let t = target(
            "postgres://admin:s3cr%40t@db.internal:6543/app%20db?sslmode=require",
            None,
            "X",
        )
        .unwrap();
        assert_eq!(t.host_port, "db.internal:6543");
        assert_eq!(t.database, "app db");
        assert_eq!(t.sslmode.as_deref(), Some("require"));
        let t = target(
            "postgresql://admin@10.0.0.1/app",
            Some("public.example.com"),
            "X",
        )
        .unwrap();
        assert_eq!(t.host_port, "public.example.com:5432");
        assert_eq!(t.database, "app");
        let t = target("postgres://admin@h/app", Some("[::1]:7000"), "X").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        assert_eq!(t.host_port, "[::1]:7000");
        let t = target("postgres://admin@[::1]/app", None, "X").unwrap();
        assert_eq!(t.host_port, "[::1]:5432");
        let t = target("postgres://admin@h", None, "X").unwrap();
        assert_eq!(t.database, "admin");
        assert!(target("postgres:///app", None, "X").is_err());
        assert!(target("postgres:///app", Some("h:5"), "X").is_ok());
        assert!(target("postgres://h/app", Some("h:notaport"), "X").is_err());
        let err = target("mysql://root:topsecret@h/db", None, "PROD_DB").unwrap_err();
        assert!(err.to_string().contains("PROD_DB"));
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn connection_urls_encode_their_parts() {
        let t = target(
            "postgres://a@db:5433/my%2Fdb?sslmode=verify-full",
            None,
            "X",
        )
        .unwrap();
        let url = connection_url(&t, "jit_42", "p@ss:w/rd%");
        assert_eq!(
            url,
            "postgres://jit_42:p%40ss%3Aw%2Frd%25@db:5433/my%2Fdb?sslmode=verify-full"
        );
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.username(), "jit_42");
        assert_eq!(parsed.password(), Some("p%40ss%3Aw%2Frd%25"));
    }

    #[test]
    fn errors_are_scrubbed_and_classified() {
        assert_eq!(scrub("a hunter2 b", &["hunter2"]), "a [REDACTED] b");
        assert!(is_retryable_sqlstate("08006"));
        assert!(is_retryable_sqlstate("57P01"));
        assert!(is_retryable_sqlstate("40P01"));
        assert!(!is_retryable_sqlstate("42501"));
        assert!(!is_retryable_sqlstate("42601"));
        assert!(!is_retryable_sqlstate("42704"));
        assert!(!is_retryable_sqlstate("28P01"));
        let e = classify("x", &sqlx::Error::PoolTimedOut, &[]);
        assert!(e.is_retryable());
    }

    #[test]
    fn timestamps_are_what_valid_until_reads() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T15:04:05.9Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(pg_timestamp(t), "2026-11-20 15:04:05+00");
    }
}
