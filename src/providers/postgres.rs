//! The `postgres` provider: a temporary login role per grant (`mode = "ephemeral"`), or a role
//! granted to an existing user for the grant's length (`mode = "elevation"`).
//!
//! jit connects with the admin URL held in the environment variable the resource names
//! (`database_url_env`); the caller reads it at startup and passes it in as a secret. The URL
//! and every password stay out of logs, `Debug` output and error texts: statement logging is
//! off on jit's admin connections, and error texts are scrubbed of the secrets they could echo.
//!
//! **The admin.** A `CREATEROLE` role that is a member of `pg_signal_backend`, never a
//! superuser: a superuser admin is refused for grants unless the resource says
//! `allow_superuser_admin = true` ([`PostgresProvider::check_admin`] reports what the admin can
//! do; `jit serve` runs it at startup). Revokes are never refused.
//!
//! **Ephemeral.** `CREATE ROLE "jit_<request number>" LOGIN PASSWORD … VALID UNTIL <grant end>
//! CONNECTION LIMIT n IN ROLE <roles>`. The password is 40 random letters and digits; jit sends
//! PostgreSQL its SCRAM-SHA-256 verifier, never the password itself, so even a server that logs
//! statements (or logs the failing one) never sees it. Running the grant again (after a crash)
//! finds the role, sets a new password and expiry, and grants the roles again. The holder gets
//! `DATABASE_URL` (`postgres://jit_42:<password>@<host:port>/<db>`, host from `connect_host` or
//! the admin URL), `PGUSER`, `PGPASSWORD`, `PGHOST`, `PGPORT` and `PGDATABASE`. Extending moves
//! `VALID UNTIL` and keeps the password.
//!
//! Teardown fails closed. First it *locks* the role: `NOLOGIN`, every membership revoked (the
//! roles it is in, and any role in it), every session terminated. Each of the three runs even
//! if another failed, and nothing else happens until all three succeeded. Only then does it
//! remove what the role owns, in every database of the server where it owns objects or holds
//! privileges (found through `pg_shdepend`; jit connects to each with the admin's credentials):
//! `DROP OWNED BY`, or with `objects_owner`, first strip definer rights from what it owns
//! (functions become `SECURITY INVOKER`, views `security_invoker`), then `REASSIGN OWNED BY … TO
//! <objects_owner>` (after checking that role is still powerless) and `DROP OWNED BY`. Never to
//! the admin. Last, `DROP ROLE`. A failure after the lock is still an error, so the revoke job
//! retries and alerts, and its text says the role is already locked. jit only ever drops roles
//! named `jit_<digits>`.
//!
//! **Made through the granted roles.** Between the lock and the drop, what a holder made owned by
//! a *granted* role (`SET ROLE`, or `ALTER … OWNER TO`) during the grant loses its definer rights:
//! the grant records the server's transaction counter first ([`Provider::baseline`]), and
//! teardown neutralises the definer functions, views, rules and triggers of the granted roles
//! (and the roles they are in) written since, in every database (see [`leftovers`]). The same
//! runs after an elevation's `REVOKE`. What it changed goes into a loud audit event; what it
//! cannot reach fails the teardown, which is retried and alerted.
//!
//! **Elevation.** The requester's key (Slack user ID or `identity:<name>`) is mapped through
//! `db_users` to an existing database user, and `GRANT <roles> TO <user>` runs in one statement.
//! A role the user already holds directly through someone else's grant is standing access: jit
//! does not grant it and never revokes it. The handle (`elevation:<user>:<role>,<role>`) lists the
//! roles jit granted (older handles, written before standing access was detected, list every
//! role, and mean just that). It is the same for every grant of the same roles to the same user,
//! so overlapping grants are counted as one access: a membership the admin role itself granted
//! counts as jit's. Teardown revokes those roles, then (unless `terminate_sessions = false`)
//! terminates every session of the user, not only those opened during the grant: a session
//! opened before it can `SET ROLE` into the granted role during the grant, keeps the role after
//! `REVOKE`, and `pg_stat_activity` cannot show which session did.
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
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgDatabaseError, PgExecutor, PgPool, PgPoolOptions,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Credentials, GrantSpec, Issued, Provider, ProviderError, RevokeSpec, Revoked};
use crate::domain::ids::{RequestId, ResourceId};

pub mod leftovers;
use crate::domain::policy::{PostgresConfig, PostgresMode};
pub use leftovers::{BASELINE_PREFIX, encode_baseline, parse_baseline};

/// Length of generated passwords (letters and digits: about 238 bits).
pub const PASSWORD_LEN: usize = 40;
/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// Iterations of the SCRAM-SHA-256 verifiers jit writes (PostgreSQL's default).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Prefix of elevation handles.
pub const ELEVATION_PREFIX: &str = "elevation:";
/// How long `jit serve` waits for the admin check of one resource at startup.
pub const STARTUP_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

const ROLE_PREFIX: &str = "jit_";
const MAX_ERROR_CHARS: usize = 1000;
/// PostgreSQL 16 changed what CREATEROLE may do (only roles it holds ADMIN OPTION on).
const PG16: i32 = 160_000;

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
    acquire_timeout: Duration,
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

/// What the admin URL's role can do, for `jit serve` at startup and for `jit doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminReport {
    /// The role the admin URL logs in as.
    pub user: String,
    /// `server_version_num`, for example 150020.
    pub server_version: i32,
    pub superuser: bool,
    /// The resource says `allow_superuser_admin = true`.
    pub superuser_allowed: bool,
    pub createrole: bool,
    /// A superuser, or has the privileges of `pg_signal_backend` (to end holders' sessions).
    pub can_signal_backends: bool,
    /// Granted roles the admin cannot grant or revoke, each with the reason.
    pub ungrantable_roles: Vec<String>,
    /// Granted roles a holder could `SET ROLE` to and gain attributes from (SUPERUSER,
    /// CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION).
    pub powerful_roles: Vec<String>,
    /// Granted roles that may create objects (CREATE on a schema of the admin's database, or on
    /// a database): what a holder makes as them outlives the grant, and teardown has to
    /// neutralise it. One line per role.
    pub create_privileges: Vec<String>,
    /// `objects_owner`, when the resource names one.
    pub objects_owner: Option<OwnerReport>,
}

/// Whether `objects_owner` is fit to own what holders leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerReport {
    pub name: String,
    /// Empty when the role exists and is powerless: NOLOGIN, not superuser, no CREATEROLE,
    /// CREATEDB, BYPASSRLS or REPLICATION, member of nothing. (It may, and with a CREATEROLE
    /// admin must, hold CREATE on the schemas holders create objects in: `REASSIGN` needs it.)
    pub problems: Vec<String>,
}

impl AdminReport {
    /// Grants are refused: a superuser admin the policy does not allow.
    pub fn refuses_grants(&self) -> bool {
        self.superuser && !self.superuser_allowed
    }

    /// One line per thing to fix or to know, worst first. Empty: nothing to say.
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.superuser {
            out.push(if self.superuser_allowed {
                format!(
                    "the admin `{}` is a SUPERUSER (allowed by allow_superuser_admin = true); \
                     use a CREATEROLE admin instead",
                    self.user
                )
            } else {
                format!(
                    "the admin `{}` is a SUPERUSER: grants are refused. Use a CREATEROLE admin, \
                     or set allow_superuser_admin = true on the resource",
                    self.user
                )
            });
        } else {
            if !self.createrole {
                out.push(format!(
                    "the admin `{}` lacks CREATEROLE: it cannot create, grant or drop roles",
                    self.user
                ));
            }
            if !self.can_signal_backends {
                out.push(format!(
                    "the admin `{}` is not a member of pg_signal_backend: teardown cannot end holders' sessions \
                     (GRANT pg_signal_backend TO \"{}\")",
                    self.user, self.user
                ));
            }
        }
        out.extend(self.ungrantable_roles.iter().cloned());
        out.extend(self.powerful_roles.iter().cloned());
        out.extend(self.create_privileges.iter().cloned());
        if let Some(owner) = &self.objects_owner {
            for problem in &owner.problems {
                out.push(format!("objects_owner `{}` {problem}", owner.name));
            }
        }
        out
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
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            target,
        })
    }

    /// How long a call waits for an admin connection before failing (retryably). Default 5 s.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.pool = pool(self.options.clone(), timeout);
        self.acquire_timeout = timeout;
        self
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    pub fn resource(&self) -> &ResourceId {
        &self.resource
    }

    fn objects_owner(&self) -> Option<&str> {
        match &self.config.mode {
            PostgresMode::Ephemeral { objects_owner, .. } => objects_owner.as_deref(),
            PostgresMode::Elevation { .. } => None,
        }
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

    // --- the admin ----------------------------------------------------------------------------

    /// What the admin URL's role can do: superuser or not, CREATEROLE, whether it can end
    /// sessions and grant the resource's roles, and whether `objects_owner` is powerless. Makes
    /// no change.
    pub async fn check_admin(&self) -> Result<AdminReport, ProviderError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| classify("check the admin role", &e, &[]))?;
        let (user, superuser, createrole, can_signal, server_version): (
            String,
            bool,
            bool,
            bool,
            i32,
        ) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, rolcreaterole, \
                    rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), \
                    current_setting('server_version_num')::int \
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify("check the admin role", &e, &[]))?;

        let roles: Vec<(String, bool, Vec<String>, bool)> = sqlx::query_as(
            "SELECT r.rolname::text, r.rolsuper, \
                    array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, \
                                       CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, \
                                       CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, \
                                       CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, \
                                       CASE WHEN r.rolreplication THEN 'REPLICATION' END], NULL), \
                    EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member \
                            WHERE m.roleid = r.oid AND a.rolname = current_user AND m.admin_option) \
             FROM pg_roles r WHERE r.rolname = ANY($1)",
        )
        .bind(&self.config.roles)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify("check the granted roles", &e, &[]))?;
        let mut ungrantable_roles = Vec::new();
        let mut powerful_roles = Vec::new();
        for name in &self.config.roles {
            let Some((_, role_super, attributes, admin_option)) =
                roles.iter().find(|(n, ..)| n == name)
            else {
                ungrantable_roles.push(format!("granted role `{name}` does not exist"));
                continue;
            };
            let grantable =
                superuser || *admin_option || (createrole && !role_super && server_version < PG16);
            if !grantable {
                ungrantable_roles.push(if *role_super {
                    format!("granted role `{name}` is a superuser role: only a superuser can grant it")
                } else {
                    format!(
                        "the admin `{user}` cannot grant `{name}`: on PostgreSQL 16+ it needs ADMIN OPTION \
                         (GRANT \"{name}\" TO \"{user}\" WITH ADMIN OPTION)"
                    )
                });
            }
            if !attributes.is_empty() {
                powerful_roles.push(format!(
                    "granted role `{name}` has {}: a holder can SET ROLE to it, and what it creates then \
                     belongs to `{name}` and outlives the grant",
                    attributes.join(", ")
                ));
            }
        }
        let create_privileges = create_privileges(&mut conn, &self.config.roles).await?;
        let objects_owner = match self.objects_owner() {
            Some(owner) => Some(OwnerReport {
                name: owner.to_owned(),
                problems: owner_problems(&mut conn, owner).await?,
            }),
            None => None,
        };
        Ok(AdminReport {
            user,
            server_version,
            superuser,
            superuser_allowed: self.config.allow_superuser_admin,
            createrole,
            can_signal_backends: can_signal,
            ungrantable_roles,
            powerful_roles,
            create_privileges,
            objects_owner,
        })
    }

    /// `jit serve`'s startup check, bounded by `timeout`. `Err` (one line naming the resource
    /// and the key) stops startup: a superuser admin the policy does not allow. An unreachable
    /// server only warns; every grant checks again before it acts.
    pub async fn check_at_startup(&self, timeout: Duration) -> Result<(), String> {
        let resource = &self.resource;
        match tokio::time::timeout(timeout, self.check_admin()).await {
            Ok(Ok(report)) => {
                if report.refuses_grants() {
                    return Err(format!(
                        "{}. Until then jit does not start, and no teardown runs",
                        superuser_refusal(resource, &self.config.database_url_env, &report.user)
                    ));
                }
                if report.superuser {
                    tracing::warn!(
                        resource = %resource,
                        admin = %report.user,
                        "SUPERUSER ADMIN: the admin URL of postgres resource `{resource}` logs in as a superuser, \
                         accepted only because allow_superuser_admin = true. Use a CREATEROLE admin."
                    );
                }
                for finding in report
                    .findings()
                    .into_iter()
                    .skip(usize::from(report.superuser))
                {
                    tracing::warn!(resource = %resource, "postgres resource `{resource}`: {finding}");
                }
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    resource = %resource,
                    error = %e,
                    "cannot check the admin of postgres resource `{resource}` at startup; every grant checks it first"
                );
                Ok(())
            }
            Err(_) => {
                tracing::warn!(
                    resource = %resource,
                    timeout_s = timeout.as_secs(),
                    "the admin check of postgres resource `{resource}` timed out at startup; every grant checks it first"
                );
                Ok(())
            }
        }
    }

    /// Grants (and extensions) with a superuser admin are refused unless the policy allows it.
    /// Revokes never call this.
    async fn refuse_superuser_admin(&self) -> Result<(), ProviderError> {
        if self.config.allow_superuser_admin {
            return Ok(());
        }
        let (user, superuser): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("check the admin role", &e, &[]))?;
        if superuser {
            return Err(ProviderError::Refused(superuser_refusal(
                &self.resource,
                &self.config.database_url_env,
                &user,
            )));
        }
        Ok(())
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
            "LOGIN NOCREATEDB NOCREATEROLE INHERIT \
             PASSWORD {} VALID UNTIL {until} CONNECTION LIMIT {connection_limit}",
            quote_literal(&verifier)?
        );
        let create = format!(
            "CREATE ROLE {role_q} WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS {attributes} IN ROLE {granted}"
        );
        match self
            .execute("create the login role", create, &secrets)
            .await
        {
            Ok(()) => {}
            Err(e) if !e.is_retryable() && self.role_exists(&role).await? => {
                // A re-run after a crash: the role is there; refresh it. (A CREATEROLE admin
                // may not name the superuser-only attributes in ALTER ROLE, even to turn
                // them off: check them instead.)
                let alter = format!("ALTER ROLE {role_q} WITH {attributes}");
                self.execute("refresh the login role", alter, &secrets)
                    .await?;
                let powerful: bool = sqlx::query_scalar(
                    "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = $1",
                )
                .bind(&role)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| classify("check the login role", &e, &[]))?;
                if powerful {
                    return Err(ProviderError::Fatal(format!(
                        "postgres: {role} already exists with SUPERUSER, REPLICATION or BYPASSRLS; \
                         jit will not hand it out. Drop the role and retry"
                    )));
                }
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
        let leftovers = match self.objects_owner() {
            Some(owner) => format!("are handed to {owner} when access ends"),
            None => "are dropped when access ends".to_owned(),
        };
        Ok(Issued {
            instructions: Some(format!(
                "Log in as {role} to database {} on {} until {} (member of {}). Objects you create as {role} {leftovers}.",
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

    /// Revokes every membership of `role` in other roles, and of other roles in it (except the
    /// admin's own, which teardown needs), then checks that none is left. Returns the
    /// memberships revoked, as (role, member).
    async fn revoke_memberships(&self, role: &str) -> Result<Vec<(String, String)>, ProviderError> {
        const MEMBERSHIPS: &str = "SELECT g.rolname::text, m.rolname::text \
             FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
             WHERE m.rolname = $1 OR (g.rolname = $1 AND m.rolname <> current_user) ORDER BY 1, 2";
        let list = |what: &'static str| async move {
            sqlx::query_as::<_, (String, String)>(MEMBERSHIPS)
                .bind(role)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| classify(what, &e, &[]))
        };
        let before = list("list the role's memberships").await?;
        for (group, member) in &before {
            let sql = format!(
                "REVOKE {} FROM {}",
                quote_ident(group)?,
                quote_ident(member)?
            );
            // One statement each: a role dropped meanwhile does not block the others. What
            // could not be revoked shows up below.
            let _ = self
                .execute("revoke a membership", sql, &[])
                .await
                .or_else(ignore_missing_role);
        }
        let left = list("list the role's memberships").await?;
        if !left.is_empty() {
            let names: Vec<String> = left.iter().map(|(g, m)| format!("{m} in {g}")).collect();
            return Err(ProviderError::Fatal(format!(
                "postgres: cannot revoke the memberships of {role} ({}); the admin needs CREATEROLE, \
                 or ADMIN OPTION on those roles",
                names.join(", ")
            )));
        }
        Ok(before)
    }

    /// Step 1 of teardown: no login, no memberships, no sessions. Every step runs even if one
    /// before it failed; the error names each failure. Returns the memberships revoked and the
    /// number of sessions ended.
    async fn lock_role(&self, role: &str) -> Result<(Vec<(String, String)>, u64), ProviderError> {
        let role_q = quote_ident(role)?;
        let mut failures = Vec::new();
        if let Err(e) = self
            .execute(
                "disable the login",
                format!("ALTER ROLE {role_q} NOLOGIN"),
                &[],
            )
            .await
            .or_else(ignore_missing_role)
        {
            failures.push(e);
        }
        let memberships = self
            .revoke_memberships(role)
            .await
            .map_err(|e| failures.push(e))
            .unwrap_or_default();
        let sessions = self
            .terminate_sessions(role)
            .await
            .map_err(|e| failures.push(e))
            .unwrap_or(0);
        if failures.is_empty() {
            return Ok((memberships, sessions));
        }
        let text = format!(
            "postgres: teardown of {role} could not lock it yet (nothing it owns was touched): {}",
            failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(with_text(&failures[0], truncate(&text)))
    }

    /// The admin needs the privileges of `role` for `DROP OWNED` and `REASSIGN OWNED` (a
    /// superuser has them; a CREATEROLE admin grants itself the role).
    async fn act_as(&self, role: &str) -> Result<(), ProviderError> {
        let has: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1::text, 'USAGE')")
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("check the admin's membership", &e, &[]))?;
        if !has {
            self.execute(
                "let the admin act for the role",
                format!("GRANT {} TO CURRENT_USER", quote_ident(role)?),
                &[],
            )
            .await?;
        }
        Ok(())
    }

    /// The databases where `role` owns objects or holds privileges, the admin's own first,
    /// each with the number of objects owned there (shared objects count in the admin's).
    async fn footprint(&self, role: &str) -> Result<Vec<(String, i64)>, ProviderError> {
        let rows: Vec<(Option<String>, i64, bool)> = sqlx::query_as(
            "SELECT d.datname::text, count(*) FILTER (WHERE s.deptype = 'o'), \
                    COALESCE(d.datname = current_database(), true) \
             FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass \
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
             GROUP BY 1, 3",
        )
        .bind(role)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("find the role's objects", &e, &[]))?;
        let mut here = 0;
        let mut others = Vec::new();
        for (name, owned, current) in rows {
            match name {
                Some(name) if !current => others.push((name, owned)),
                _ => here += owned,
            }
        }
        others.sort();
        let mut out = vec![(self.target_database_name().await?, here)];
        out.extend(others);
        Ok(out)
    }

    async fn target_database_name(&self) -> Result<String, ProviderError> {
        sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("read the database name", &e, &[]))
    }

    /// What removes the role's objects in one database, as one implicit transaction.
    fn clear_objects_sql(&self, role: &str) -> Result<String, ProviderError> {
        let role_q = quote_ident(role)?;
        let drop = format!("DROP OWNED BY {role_q};");
        let Some(owner) = self.objects_owner() else {
            return Ok(drop);
        };
        // Kept objects lose definer rights before they change hands: a SECURITY DEFINER
        // function or a view would otherwise run with the new owner's rights.
        let literal = quote_literal(role)?;
        Ok(format!(
            "DO $jit$ DECLARE r record; holder oid := (SELECT oid FROM pg_roles WHERE rolname = {literal}); BEGIN \
               FOR r IN SELECT oid::regprocedure AS f FROM pg_proc WHERE proowner = holder AND prosecdef LOOP \
                 EXECUTE format('ALTER ROUTINE %s SECURITY INVOKER', r.f); \
               END LOOP; \
               IF current_setting('server_version_num')::int >= 150000 THEN \
                 FOR r IN SELECT oid::regclass AS v FROM pg_class WHERE relowner = holder AND relkind = 'v' LOOP \
                   EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', r.v); \
                 END LOOP; \
               END IF; \
             END $jit$; \
             REASSIGN OWNED BY {role_q} TO {}; {drop}",
            quote_ident(owner)?
        ))
    }

    async fn clear_objects_in<'c>(
        &self,
        conn: impl PgExecutor<'c>,
        role: &str,
        database: &str,
    ) -> Result<(), ProviderError> {
        let what = match self.objects_owner() {
            Some(owner) => format!("hand what {role} owns in database `{database}` to {owner}"),
            None => format!("drop what {role} owns in database `{database}`"),
        };
        sqlx::raw_sql(AssertSqlSafe(self.clear_objects_sql(role)?))
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(|e| classify_with_detail(&what, &e))
    }

    /// Step 2 of teardown, once the role is locked: what it owns goes (or goes to
    /// `objects_owner`) in every database, then the role itself.
    async fn remove_objects(&self, role: &str) -> Result<String, ProviderError> {
        self.act_as(role).await?;
        if let Some(owner) = self.objects_owner() {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| classify("check objects_owner", &e, &[]))?;
            let problems = owner_problems(&mut conn, owner).await?;
            drop(conn);
            if !problems.is_empty() {
                return Err(ProviderError::Fatal(format!(
                    "postgres: objects_owner `{owner}` {}; jit will not hand {role}'s objects to it. \
                     Make it a NOLOGIN role that holds nothing",
                    problems.join(", ")
                )));
            }
            self.act_as(owner).await?;
        }
        let footprint = self.footprint(role).await?;
        let mut owned = Vec::new();
        for (i, (database, count)) in footprint.iter().enumerate() {
            if i == 0 {
                self.clear_objects_in(&self.pool, role, database).await?;
            } else {
                let options = self.options.clone().database(database);
                let mut conn = tokio::time::timeout(self.acquire_timeout, options.connect())
                    .await
                    .map_err(|_| {
                        ProviderError::Retryable(format!(
                            "postgres: cannot connect to database `{database}` (where {role} owns objects): timed out"
                        ))
                    })?
                    .map_err(|e| {
                        classify(
                            &format!("connect to database `{database}` (where {role} owns objects)"),
                            &e,
                            &[],
                        )
                    })?;
                let result = self.clear_objects_in(&mut conn, role, database).await;
                let _ = conn.close().await;
                result?;
            }
            if *count > 0 {
                owned.push(format!("{database}: {count}"));
            }
        }
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {}",
            quote_ident(role)?
        )))
        .execute(&self.pool)
        .await
        .map_err(|e| classify_with_detail("drop the login role", &e))?;
        let verb = match self.objects_owner() {
            Some(owner) => format!("handed to {owner} without definer rights"),
            None => "dropped".to_owned(),
        };
        Ok(if owned.is_empty() {
            "it owned nothing".to_owned()
        } else {
            format!("its objects {verb} ({})", owned.join(", "))
        })
    }

    async fn revoke_ephemeral(
        &self,
        role: &str,
        spec: &RevokeSpec,
    ) -> Result<Revoked, ProviderError> {
        if !self.role_exists(role).await? {
            // Dropped by an earlier run (which checked the granted roles' objects first), or
            // never created (a grant in doubt that had not acted): the holder never had the role.
            return Ok(Revoked {
                cleanup_at: None,
                detail: Some(format!("role {role} was already gone")),
                attention: None,
            });
        }
        // When the grant began: read before the lock revokes the memberships it shows. Best
        // effort: nothing may delay the lock (the recorded baselines usually say it anyway).
        let since = leftovers::earliest(
            &spec.baselines,
            self.membership_baseline(role, None).await.ok().flatten(),
        );
        let (memberships, sessions) = self.lock_role(role).await?;
        let locked = format!(
            "login disabled, {}, {}",
            plural(memberships.len(), "membership", "revoked"),
            plural(sessions as usize, "session", "terminated")
        );
        let locked_text = |e: String| {
            format!(
                "postgres: {role} can no longer log in, holds no role memberships and has no open \
                 sessions ({locked}), but it is not dropped yet: {}. jit retries until it succeeds",
                e.trim_start_matches("postgres: ")
            )
        };
        let mut granted = self.config.roles.clone();
        granted.extend(
            memberships
                .iter()
                .filter(|(_, member)| member == role)
                .map(|(group, _)| group.clone()),
        );
        let (through_roles, attention) = match self.leftovers(&granted, None, since).await {
            Ok(found) => found,
            Err(e) => {
                let text = truncate(&locked_text(e.to_string()));
                return Err(with_text(&e, text));
            }
        };
        match self.remove_objects(role).await {
            Ok(objects) => Ok(Revoked {
                cleanup_at: None,
                detail: Some(format!(
                    "role {role} dropped ({locked}; {objects}; {through_roles})"
                )),
                attention,
            }),
            Err(e) => {
                let text = truncate(&locked_text(e.to_string()));
                Err(with_text(&e, text))
            }
        }
    }

    /// Neutralises what was made through `granted` (and the roles they are in) since `since`,
    /// once the holder is locked out ([`leftovers`]). Returns the line for the teardown's
    /// detail and the text of the loud attention event; an error (what still runs with an
    /// owner's rights, and why) fails the teardown so that it is retried and alerted.
    async fn leftovers(
        &self,
        granted: &[String],
        still_reaches: Option<&str>,
        since: Option<i64>,
    ) -> Result<(String, Option<String>), ProviderError> {
        let owners = self.owner_roles(granted, still_reaches).await?;
        let Some(since) = since else {
            let attention = (!owners.is_empty()).then(|| {
                format!(
                    "jit has no record of when this grant began (it was issued before jit recorded \
                     baselines), so objects made through {} during it were not checked; review their \
                     SECURITY DEFINER functions, views, rules and triggers",
                    owners.join(", ")
                )
            });
            return Ok((
                "objects made through the granted roles not checked (no baseline)".to_owned(),
                attention,
            ));
        };
        let outcome = self.neutralise(&owners, since).await?;
        if !outcome.unresolved.is_empty() {
            let mut text = format!(
                "objects made through {} during the grant still run with their owner's rights: {}",
                owners.join(", "),
                outcome.unresolved.join("; ")
            );
            if !outcome.fixed.is_empty() {
                text.push_str(&format!(
                    " (neutralised meanwhile: {})",
                    outcome.fixed.join("; ")
                ));
            }
            return Err(if outcome.retryable {
                ProviderError::Retryable(truncate(&text))
            } else {
                ProviderError::Fatal(truncate(&text))
            });
        }
        Ok((outcome.summary(), outcome.attention(&owners)))
    }

    // --- elevation --------------------------------------------------------------------------

    fn db_user(&self, spec: &GrantSpec) -> Result<String, ProviderError> {
        let PostgresMode::Elevation { db_users, .. } = &self.config.mode else {
            unreachable!("only called in elevation mode")
        };
        let key = spec.requester.key();
        db_users.get(&key).cloned().ok_or_else(|| {
            ProviderError::Refused(format!(
                "no database user is mapped for {key} on resource {}; add `{key} = \"<db user>\"` to its db_users",
                self.resource
            ))
        })
    }

    /// The configured roles `user` holds directly through a grant by someone other than the
    /// admin: standing access, which jit neither grants nor revokes. A membership the admin
    /// granted is taken for jit's own (an overlapping grant), so overlapping grants get equal
    /// handles.
    async fn standing_roles(&self, user: &str) -> Result<Vec<String>, ProviderError> {
        sqlx::query_scalar(
            "SELECT DISTINCT g.rolname::text FROM pg_auth_members a \
             JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
             WHERE m.rolname = $1 AND g.rolname = ANY($2) \
               AND a.grantor IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        )
        .bind(user)
        .bind(&self.config.roles)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("look up the user's memberships", &e, &[]))
    }

    async fn grant_elevation(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        let user = self.db_user(spec)?;
        if self.options.get_username() == user {
            return Err(ProviderError::Fatal(format!(
                "db_users maps {} to `{user}`, the admin role itself; map requesters to their own database users",
                spec.requester.key()
            )));
        }
        let user_q = quote_ident(&user)?;
        let standing = self.standing_roles(&user).await?;
        let to_grant: Vec<String> = self
            .config
            .roles
            .iter()
            .filter(|r| !standing.contains(r))
            .cloned()
            .collect();
        if !to_grant.is_empty() {
            let quoted: Result<Vec<String>, ProviderError> =
                to_grant.iter().map(|r| quote_ident(r)).collect();
            // One statement grants every role, or none.
            self.execute(
                "grant the roles",
                format!("GRANT {} TO {user_q}", quoted?.join(", ")),
                &[],
            )
            .await?;
        }
        let until = pg_timestamp(spec.expires_at);
        let mut instructions = if to_grant.is_empty() {
            format!(
                "Your database user {user} already holds {}; nothing was granted.",
                self.config.roles.join(", ")
            )
        } else {
            format!(
                "Your database user {user} has {} until {until}.",
                to_grant.join(", ")
            )
        };
        if !standing.is_empty() && !to_grant.is_empty() {
            instructions.push_str(&format!(
                " You already held {}; it stays.",
                standing.join(", ")
            ));
        }
        if !to_grant.is_empty()
            && matches!(
                self.config.mode,
                PostgresMode::Elevation {
                    terminate_sessions: true,
                    ..
                }
            )
        {
            instructions.push_str(&format!(
                " When access ends, every session of {user} is terminated."
            ));
        }
        Ok(Issued {
            handle: elevation_handle(&user, &to_grant),
            credentials: None,
            instructions: Some(instructions),
            credentials_expire_at: None,
        })
    }

    async fn revoke_elevation(
        &self,
        user: &str,
        roles: &[String],
        terminate: bool,
        spec: &RevokeSpec,
    ) -> Result<Revoked, ProviderError> {
        if roles.is_empty() {
            return Ok(Revoked {
                cleanup_at: None,
                detail: Some(format!(
                    "nothing to revoke: {user} held every role before the grant"
                )),
                attention: None,
            });
        }
        let user_q = quote_ident(user)?;
        // Checked again at revoke time: a handle presumed after a failed grant lists every
        // configured role, and standing access must survive that too.
        let standing = self.standing_roles(user).await?;
        let ours: Vec<String> = roles
            .iter()
            .filter(|r| !standing.contains(r))
            .cloned()
            .collect();
        // When the elevation began: read before the REVOKE removes the rows that show it (best
        // effort, like the ephemeral lock).
        let since = leftovers::earliest(
            &spec.baselines,
            self.membership_baseline(user, Some(&ours))
                .await
                .ok()
                .flatten(),
        );
        let mut revoked = Vec::new();
        let mut failures = Vec::new();
        for role in &ours {
            // One statement per role: a role dropped meanwhile does not block the others.
            let sql = format!("REVOKE {} FROM {user_q}", quote_ident(role)?);
            match self.execute("revoke the role", sql, &[]).await {
                Ok(()) => revoked.push(role.as_str()),
                Err(e) => {
                    if let Err(e) = ignore_missing_role(e) {
                        failures.push(e);
                    }
                }
            }
        }
        // Sessions go even when a REVOKE failed: fewer places keep the role.
        let mut detail = format!("revoked {} from {user}", revoked.join(", "));
        if terminate {
            match self.terminate_sessions(user).await {
                Ok(n) => detail.push_str(&format!(
                    ", {}",
                    plural(n as usize, "session", "terminated")
                )),
                Err(e) => failures.push(e),
            }
        }
        if let Some(first) = failures.first() {
            let text = failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(with_text(first, truncate(&text)));
        }
        // Only now, with the roles gone (and the sessions, unless kept), what was made through
        // them during the grant.
        let (through_roles, attention) = self.leftovers(&ours, Some(user), since).await.map_err(
            |e| {
                let text = format!(
                    "postgres: {user} no longer holds {}{}, but {}. jit retries until it succeeds",
                    ours.join(", "),
                    if terminate {
                        " and has no open session"
                    } else {
                        ""
                    },
                    e.to_string().trim_start_matches("postgres: ")
                );
                with_text(&e, truncate(&text))
            },
        )?;
        detail.push_str(&format!("; {through_roles}"));
        Ok(Revoked {
            cleanup_at: None,
            detail: Some(detail),
            attention,
        })
    }

    fn quoted_roles(&self) -> Result<String, ProviderError> {
        let quoted: Result<Vec<String>, ProviderError> =
            self.config.roles.iter().map(|r| quote_ident(r)).collect();
        Ok(quoted?.join(", "))
    }
}

/// One line per granted role that may create objects: CREATE on a schema of this database
/// (directly, through a role it is in, or through PUBLIC, as on `public` before PostgreSQL 15),
/// or on a database of the server.
async fn create_privileges(
    conn: &mut PgConnection,
    roles: &[String],
) -> Result<Vec<String>, ProviderError> {
    let rows: Vec<(String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT g.rolname::text, \
                ARRAY(SELECT quote_ident(n.nspname) FROM pg_namespace n \
                      WHERE has_schema_privilege(g.oid, n.oid, 'CREATE') \
                        AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' ORDER BY 1), \
                ARRAY(SELECT quote_ident(d.datname) FROM pg_database d \
                      WHERE d.datallowconn AND has_database_privilege(g.oid, d.oid, 'CREATE') ORDER BY 1) \
         FROM pg_roles g WHERE g.rolname = ANY($1) AND NOT g.rolsuper ORDER BY 1",
    )
    .bind(roles)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify("check what the granted roles may create", &e, &[]))?;
    Ok(rows
        .into_iter()
        .filter(|(_, schemas, databases)| !schemas.is_empty() || !databases.is_empty())
        .map(|(role, schemas, databases)| {
            let mut places = Vec::new();
            if !schemas.is_empty() {
                places.push(format!("schema {}", listing(&schemas)));
            }
            if !databases.is_empty() {
                places.push(format!("database {}", listing(&databases)));
            }
            format!(
                "granted role `{role}` holds CREATE on {}: a holder can make objects owned by it (SET ROLE, \
                 or ALTER … OWNER TO) that outlive the grant; teardown strips definer rights from those \
                 made during the grant and says so in the audit thread (README: provider postgres)",
                places.join(" and ")
            )
        })
        .collect())
}

fn listing(names: &[String]) -> String {
    const SHOWN: usize = 5;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

/// Why `owner` is unfit to own what holders leave behind; empty when it is powerless.
async fn owner_problems(
    conn: &mut PgConnection,
    owner: &str,
) -> Result<Vec<String>, ProviderError> {
    let row: Option<(bool, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT r.rolcanlogin, \
                array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, \
                                   CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, \
                                   CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, \
                                   CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, \
                                   CASE WHEN r.rolreplication THEN 'REPLICATION' END], NULL), \
                ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                      WHERE m.member = r.oid ORDER BY 1) \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| classify("check objects_owner", &e, &[]))?;
    let Some((login, attributes, member_of)) = row else {
        return Ok(vec![format!(
            "does not exist (CREATE ROLE \"{owner}\" NOLOGIN, as the admin)"
        )]);
    };
    let mut problems = Vec::new();
    if login {
        problems.push("can log in (ALTER ROLE … NOLOGIN)".to_owned());
    }
    if !attributes.is_empty() {
        problems.push(format!("has {}", attributes.join(", ")));
    }
    if !member_of.is_empty() {
        problems.push(format!("is a member of {}", member_of.join(", ")));
    }
    Ok(problems)
}

/// The one line that refuses a superuser admin, naming the resource and the key.
fn superuser_refusal(resource: &ResourceId, env: &str, user: &str) -> String {
    format!(
        "resource `{resource}`: the admin URL in ${env} logs in as `{user}`, a superuser, which jit refuses \
         (what holders leave behind could end up running with its rights). Use a CREATEROLE admin \
         (README, provider postgres), or set allow_superuser_admin = true on the resource to accept the risk"
    )
}

fn plural(n: usize, noun: &str, verb: &str) -> String {
    match n {
        1 => format!("1 {noun} {verb}"),
        n => format!("{n} {noun}s {verb}"),
    }
}

#[async_trait::async_trait]
impl Provider for PostgresProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        if spec.expires_at <= spec.now {
            return Err(ProviderError::Refused(format!(
                "the grant ended at {}, before access was provisioned",
                pg_timestamp(spec.expires_at)
            )));
        }
        self.refuse_superuser_admin().await?;
        match &self.config.mode {
            PostgresMode::Ephemeral {
                connection_limit, ..
            } => self.grant_ephemeral(spec, *connection_limit).await,
            PostgresMode::Elevation { .. } => self.grant_elevation(spec).await,
        }
    }

    async fn extend(&self, spec: &GrantSpec, handle: &str) -> Result<Issued, ProviderError> {
        match &self.config.mode {
            PostgresMode::Ephemeral { .. } if spec.expires_at > spec.now => {
                self.refuse_superuser_admin().await?;
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
            // Only an explicit `terminate_sessions = false` keeps the user's sessions.
            let terminate = !matches!(
                self.config.mode,
                PostgresMode::Elevation {
                    terminate_sessions: false,
                    ..
                }
            );
            return self.revoke_elevation(&user, &roles, terminate, spec).await;
        }
        let role = parse_ephemeral_handle(&spec.handle)?;
        self.revoke_ephemeral(role, spec).await
    }

    /// The server's next transaction ID: teardown neutralises what was made through the
    /// granted roles from then on ([`leftovers`]).
    async fn baseline(&self, _spec: &GrantSpec) -> Result<Option<String>, ProviderError> {
        Ok(Some(encode_baseline(self.next_xid().await?)))
    }

    /// The login role of the request, or the elevation of its mapped user with every configured
    /// role (the revoke leaves standing memberships alone).
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

/// `elevation:<user>:<role>,<role>`, with `%`, `:` and `,` inside names escaped as `%XX`: the
/// roles jit granted (none: `elevation:<user>:`). Equal for equal grants, so jit counts
/// overlapping grants as one access.
pub fn elevation_handle(user: &str, roles: &[String]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| escape_handle_part(r)).collect();
    format!(
        "{ELEVATION_PREFIX}{}:{}",
        escape_handle_part(user),
        roles.join(",")
    )
}

/// `Some((user, roles jit granted))` for an elevation handle, `None` for any other handle.
/// Handles written before standing access was detected list every configured role, which is
/// what jit granted then.
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
    if roles.is_empty() {
        // jit granted nothing: the user held every role already.
        return Ok(Some((user, Vec::new())));
    }
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

/// The same kind of error with another text.
fn with_text(kind: &ProviderError, text: String) -> ProviderError {
    match kind {
        ProviderError::Retryable(_) => ProviderError::Retryable(text),
        ProviderError::Fatal(_) => ProviderError::Fatal(text),
        ProviderError::Refused(_) => ProviderError::Refused(text),
        ProviderError::Pending { after, .. } => ProviderError::Pending {
            after: *after,
            detail: text,
        },
    }
}

/// Like [`classify`], with PostgreSQL's DETAIL appended: for a failed `DROP`, it names what
/// still depends on the role. Used where no secret is in play.
fn classify_with_detail(what: &str, err: &sqlx::Error) -> ProviderError {
    let base = classify(what, err, &[]);
    let detail = err
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .and_then(|d| d.detail())
        .map(|d| d.replace('\n', "; "));
    match detail {
        Some(detail) => with_text(&base, truncate(&format!("{base} ({detail})"))),
        None => base,
    }
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
        // Nothing granted (the user held every role already).
        assert_eq!(elevation_handle("u", &[]), "elevation:u:");
        assert_eq!(
            parse_elevation_handle("elevation:u:").unwrap(),
            Some(("u".to_owned(), Vec::new()))
        );
        // A handle written before standing access was detected still means every role.
        assert_eq!(
            parse_elevation_handle("elevation:alice:app_rw,app_ro").unwrap(),
            Some(("alice".to_owned(), vec!["app_rw".into(), "app_ro".into()]))
        );
        for bad in [
            "elevation:",
            "elevation:u",
            "elevation::r",
            "elevation:u:r,",
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
