//! The `postgres` provider against a real server, with both kinds of admin URL: the superuser
//! from `JIT_TEST_POSTGRES_URL` (accepted only with `allow_superuser_admin = true`) and a
//! `CREATEROLE` role, member of `pg_signal_backend`, that each test creates (the admin the
//! README recommends).
//!
//! Set `JIT_TEST_POSTGRES_URL` to a superuser URL (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Unset: the tests say so and return. Set but
//! unreachable: they fail. Every run uses fresh random names, so runs may overlap; each test
//! drops what it created.
//!
//! The attacks follow the security review of issue 11: a holder leaves SECURITY DEFINER
//! functions, views and other objects behind and grants them to PUBLIC; an elevated user keeps
//! a `SET ROLE` session open across the teardown.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::{PostgresConfig, PostgresMode, Requester};
use jit::providers::postgres::{
    PostgresProvider, ephemeral_role_name, quote_ident, random_password, scram_sha256_verifier,
};
use jit::providers::{GrantSpec, Issued, Provider, ProviderError, RevokeReason, RevokeSpec};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

fn admin_url() -> Option<String> {
    match std::env::var("JIT_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        // Built as ignored without the variable (build.rs); built with it, these tests run and
        // fail if it is gone or the server cannot be reached.
        Err(_) => {
            panic!("JIT_TEST_POSTGRES_URL was set when these tests were built but is unset now")
        }
    }
}

async fn admin_pool(url: &str) -> PgPool {
    PgPool::connect(url).await.unwrap_or_else(|e| {
        panic!("JIT_TEST_POSTGRES_URL is set but the server cannot be reached: {e}")
    })
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn exec_on(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A query that must fail, with the error's text.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => panic!("`{sql}` succeeded"),
        Err(e) => e.to_string(),
    }
}

async fn text_on(conn: &mut PgConnection, sql: &str) -> String {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn unique() -> u32 {
    rand::random::<u32>() >> 1
}

fn q(name: &str) -> String {
    quote_ident(name).unwrap()
}

/// `url` with another user (and password), or another database.
fn url_as(url: &str, user: &str, password: Option<&str>) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(password).unwrap();
    u.to_string()
}

fn url_in(url: &str, database: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_path(&format!("/{database}"));
    u.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admin {
    /// The superuser of `JIT_TEST_POSTGRES_URL`, with `allow_superuser_admin = true`.
    Superuser,
    /// A `CREATEROLE` role in `pg_signal_backend`, as the README recommends.
    CreateRole,
}

const BOTH: [Admin; 2] = [Admin::Superuser, Admin::CreateRole];

/// Fixtures: a table readable by a plain role and by a role with an awkward name, a schema
/// the plain role may create in, a secret only it may read, a read-only login role, and a
/// CREATEROLE admin.
struct Fixture {
    pool: PgPool,
    url: String,
    n: u32,
    table: String,
    reader: String,
    odd: String,
    schema: String,
    /// Readable (and writable) by `reader` only.
    secret: String,
    /// A login role that may use the schema and nothing else.
    readonly: String,
    readonly_password: String,
    /// The CREATEROLE admin.
    admin: String,
    admin_password: String,
}

impl Fixture {
    async fn new(url: &str) -> Self {
        let pool = admin_pool(url).await;
        let n = unique();
        let f = Fixture {
            table: format!("jit_test_table_{n}"),
            reader: format!("jit_test_reader_{n}"),
            odd: format!("odd\"role'x {n} ü"),
            schema: format!("jit_test_schema_{n}"),
            secret: format!("jit_test_secret_{n}"),
            readonly: format!("jit_test_readonly_{n}"),
            readonly_password: random_password().expose_secret().to_owned(),
            admin: format!("jit_test_admin_{n}"),
            admin_password: random_password().expose_secret().to_owned(),
            url: url.to_owned(),
            pool,
            n,
        };
        let (t, r, o, s, sec, ro, a) = (
            q(&f.table),
            q(&f.reader),
            q(&f.odd),
            q(&f.schema),
            q(&f.secret),
            q(&f.readonly),
            q(&f.admin),
        );
        for sql in [
            format!("CREATE TABLE {t} (v text)"),
            format!("INSERT INTO {t} VALUES ('visible')"),
            format!("CREATE ROLE {r} NOLOGIN"),
            format!("CREATE ROLE {o} NOLOGIN"),
            format!("GRANT SELECT, INSERT ON {t} TO {r}"),
            format!("GRANT SELECT ON {t} TO {o}"),
            format!("CREATE SCHEMA {s}"),
            format!("GRANT USAGE, CREATE ON SCHEMA {s} TO {r}"),
            format!("CREATE TABLE {s}.{sec} (v text)"),
            format!("INSERT INTO {s}.{sec} VALUES ('top secret')"),
            format!("GRANT SELECT, INSERT ON {s}.{sec} TO {r}"),
            format!("CREATE ROLE {ro} LOGIN PASSWORD '{}'", f.readonly_password),
            format!("GRANT USAGE ON SCHEMA {s} TO {ro}"),
            format!(
                "CREATE ROLE {a} LOGIN CREATEROLE PASSWORD '{}'",
                f.admin_password
            ),
            format!("GRANT pg_signal_backend TO {a}"),
        ] {
            exec(&f.pool, &sql).await;
        }
        f
    }

    fn admin_url(&self, admin: Admin) -> String {
        match admin {
            Admin::Superuser => self.url.clone(),
            Admin::CreateRole => url_as(&self.url, &self.admin, Some(&self.admin_password)),
        }
    }

    fn provider(&self, admin: Admin, mut config: PostgresConfig) -> PostgresProvider {
        config.allow_superuser_admin = admin == Admin::Superuser;
        PostgresProvider::new(
            resource(),
            config,
            &SecretString::from(self.admin_url(admin)),
        )
        .unwrap()
    }

    async fn readonly_conn(&self) -> PgConnection {
        PgConnection::connect(&url_as(
            &self.url,
            &self.readonly,
            Some(&self.readonly_password),
        ))
        .await
        .expect("the read-only role logs in")
    }

    async fn drop(self) {
        for sql in [
            format!("DROP TABLE IF EXISTS {}", q(&self.table)),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", q(&self.schema)),
        ] {
            exec(&self.pool, &sql).await;
        }
        for role in [&self.reader, &self.odd, &self.readonly, &self.admin] {
            exec(&self.pool, &format!("DROP OWNED BY {}", q(role))).await;
            exec(&self.pool, &format!("DROP ROLE IF EXISTS {}", q(role))).await;
        }
    }
}

fn resource() -> ResourceId {
    ResourceId::parse("pg-test").unwrap()
}

fn tester() -> Requester {
    Requester::User(SlackUserId::parse("U0TESTER").unwrap())
}

fn grant_spec(id: i64, requester: Requester, secs: i64) -> GrantSpec {
    let now = Utc::now();
    GrantSpec {
        request_id: RequestId(id),
        requester,
        requester_email: None,
        resource: resource(),
        expires_at: now + chrono::Duration::seconds(secs),
        now,
    }
}

fn revoke_spec(grant: &GrantSpec, handle: &str, reason: RevokeReason) -> RevokeSpec {
    RevokeSpec {
        request_id: grant.request_id,
        requester: grant.requester.clone(),
        resource: grant.resource.clone(),
        handle: handle.to_owned(),
        issued: vec![jit::providers::Issuance {
            handle: handle.to_owned(),
            expires_at: None,
        }],
        natural_expiry: grant.expires_at,
        reason,
        now: Utc::now(),
        baselines: Vec::new(),
    }
}

fn ephemeral(roles: Vec<String>) -> PostgresConfig {
    PostgresConfig {
        database_url_env: "JIT_TEST_POSTGRES_URL".into(),
        roles,
        mode: PostgresMode::Ephemeral {
            connection_limit: 3,
            objects_owner: None,
        },
        connect_host: None,
        allow_superuser_admin: false,
    }
}

fn keeping(roles: Vec<String>, owner: &str) -> PostgresConfig {
    PostgresConfig {
        mode: PostgresMode::Ephemeral {
            connection_limit: 3,
            objects_owner: Some(owner.to_owned()),
        },
        ..ephemeral(roles)
    }
}

fn elevation(roles: Vec<String>, user: &str, terminate_sessions: bool) -> PostgresConfig {
    PostgresConfig {
        mode: PostgresMode::Elevation {
            db_users: BTreeMap::from([(tester().key(), user.to_owned())]),
            terminate_sessions,
        },
        ..ephemeral(roles)
    }
}

fn creds(issued: &Issued) -> BTreeMap<String, String> {
    issued.credentials.as_ref().expect("credentials").expose()
}

async fn role_exists(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn can_login(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn is_superuser(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn is_member(pool: &PgPool, member: &str, role: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE r.rolname = $1 AND u.rolname = $2)",
    )
    .bind(role)
    .bind(member)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every membership `role` takes part in, either way, except the admin's own membership in it
/// (which teardown grants itself to drop what the role owns).
async fn memberships(f: &Fixture, role: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT r.rolname::text, u.rolname::text FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE u.rolname = $1 OR (r.rolname = $1 AND u.rolname <> $2)",
    )
    .bind(role)
    .bind(&f.admin)
    .fetch_all(&f.pool)
    .await
    .unwrap()
}

async fn sessions_of(pool: &PgPool, role: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Definer-rights objects left in `schema`: SECURITY DEFINER routines and views that run with
/// their owner's rights.
async fn definer_objects(pool: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.prosecdef \
         UNION ALL \
         SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'v' \
           AND NOT COALESCE('security_invoker=true' = ANY(c.reloptions), false)",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The stored SCRAM verifier of `role` was made from `password`.
async fn assert_password(pool: &PgPool, role: &str, password: &str) {
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!stored.contains(password));
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let rest = stored
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM verifier");
    let (params, _) = rest.split_once('$').unwrap();
    let (iterations, salt) = params.split_once(':').unwrap();
    let salt = STANDARD.decode(salt).unwrap();
    assert_eq!(
        scram_sha256_verifier(password, &salt, iterations.parse().unwrap()),
        stored
    );
}

/// A login role with a random password; returns its URL.
async fn login_role(f: &Fixture, name: &str) -> String {
    let password = random_password().expose_secret().to_owned();
    exec(
        &f.pool,
        &format!("CREATE ROLE {} LOGIN PASSWORD '{password}'", q(name)),
    )
    .await;
    url_as(&f.url, name, Some(&password))
}

fn assert_no_secret(text: &str, secret: &str) {
    assert!(!text.contains(secret), "a secret leaked into: {text}");
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn ephemeral_login_works_until_teardown() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    for admin in BOTH {
        let p = f.provider(admin, ephemeral(vec![f.reader.clone(), f.odd.clone()]));
        let id = unique() as i64;
        let role = ephemeral_role_name(RequestId(id));
        let spec = grant_spec(id, tester(), 1800);

        let issued = p.grant(&spec).await.expect("grant");
        assert_eq!(issued.handle, role);
        let c = creds(&issued);
        let password = c["PGPASSWORD"].clone();
        assert!(password.len() >= 32);
        assert_eq!(c["PGUSER"], role);
        assert!(c["DATABASE_URL"].starts_with(&format!("postgres://{role}:{password}@")));
        assert_password(&f.pool, &role, &password).await;
        assert!(
            issued
                .instructions
                .as_deref()
                .unwrap()
                .contains("are dropped when access ends"),
            "{:?}",
            issued.instructions
        );

        // Secrets stay out of Debug, the handle and the instructions.
        assert_no_secret(&format!("{issued:?}"), &password);
        assert_no_secret(&issued.handle, &password);
        assert_no_secret(issued.instructions.as_deref().unwrap(), &password);

        // The role's attributes: expiry, connection limit, memberships, nothing more.
        let (valid_until, conn_limit, superuser, createrole): (DateTime<Utc>, i32, bool, bool) =
            sqlx::query_as(
                "SELECT rolvaliduntil, rolconnlimit, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1",
            )
            .bind(&role)
            .fetch_one(&f.pool)
            .await
            .unwrap();
        assert_eq!(valid_until.timestamp(), spec.expires_at.timestamp());
        assert_eq!(conn_limit, 3);
        assert!(!superuser && !createrole);
        assert!(is_member(&f.pool, &role, &f.reader).await);
        assert!(is_member(&f.pool, &role, &f.odd).await);

        // The holder logs in with the URL handed over and reads through the granted role.
        let mut conn = PgConnection::connect(&c["DATABASE_URL"])
            .await
            .expect("login with the issued DATABASE_URL");
        assert_eq!(text_on(&mut conn, "SELECT current_user::text").await, role);
        let value = text_on(&mut conn, &format!("SELECT v FROM {}", q(&f.table))).await;
        assert_eq!(value, "visible");

        // Granting again (a re-run after a crash) works and hands out a fresh password.
        let again = p.grant(&spec).await.expect("grant again");
        let new_password = creds(&again)["PGPASSWORD"].clone();
        assert_ne!(new_password, password);
        assert_password(&f.pool, &role, &new_password).await;

        // Extending moves VALID UNTIL and keeps the password.
        let longer = grant_spec(id + 1, tester(), 3600);
        let extended = p.extend(&longer, &issued.handle).await.expect("extend");
        assert_eq!(extended.handle, role);
        assert!(extended.credentials.is_none());
        let valid_until: DateTime<Utc> =
            sqlx::query_scalar("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1")
                .bind(&role)
                .fetch_one(&f.pool)
                .await
                .unwrap();
        assert_eq!(valid_until.timestamp(), longer.expires_at.timestamp());
        assert_password(&f.pool, &role, &new_password).await;

        // The holder creates a temporary object; teardown must not trip over it.
        exec_on(&mut conn, "CREATE TEMP TABLE scratch (x int)").await;

        // Teardown: the open session dies, no new login, the role is gone.
        let revoked = p
            .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Early))
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        let detail = revoked.detail.unwrap();
        assert!(
            detail.contains("dropped")
                && detail.contains("1 session terminated")
                && detail.contains("2 memberships revoked"),
            "{detail}"
        );
        assert!(
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut conn)
                .await
                .is_err(),
            "the open session survived teardown"
        );
        assert!(
            PgConnection::connect(&c["DATABASE_URL"]).await.is_err(),
            "logged in after teardown"
        );
        assert!(!role_exists(&f.pool, &role).await);

        // Twice is harmless.
        let again = p
            .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
            .await
            .expect("second revoke");
        assert!(again.detail.unwrap().contains("already gone"));
    }
    f.drop().await;
}

/// The review's attack: a holder with CREATE on a schema leaves definer-rights objects behind,
/// granted to PUBLIC, so that a read-only role reads the granted role's secret through them
/// (and, had they been handed to a superuser, could become one).
async fn plant_leftovers(f: &Fixture, holder: &mut PgConnection, with_database_objects: bool) {
    let (s, sec, ro) = (q(&f.schema), q(&f.secret), q(&f.readonly));
    let n = f.n;
    let mut statements = vec![
        format!("CREATE TABLE {s}.made (x int)"),
        format!("INSERT INTO {s}.made VALUES (1)"),
        format!("GRANT ALL ON {s}.made TO PUBLIC"),
        format!("CREATE VIEW {s}.peek AS SELECT v FROM {s}.{sec}"),
        format!("GRANT SELECT ON {s}.peek TO PUBLIC"),
        format!(
            "CREATE FUNCTION {s}.leak() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT v FROM {s}.{sec}'"
        ),
        format!(
            "CREATE FUNCTION {s}.whoami() RETURNS text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT current_user::text'"
        ),
        format!(
            "CREATE FUNCTION {s}.escalate() RETURNS void SECURITY DEFINER LANGUAGE plpgsql \
             AS $$ BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', session_user); END $$"
        ),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO PUBLIC"),
        format!("CREATE SEQUENCE {s}.counter"),
        format!("GRANT USAGE ON SEQUENCE {s}.counter TO PUBLIC"),
        format!("CREATE TYPE {s}.mood AS ENUM ('fine')"),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO PUBLIC"),
        format!("GRANT SELECT ON {s}.made TO {ro} WITH GRANT OPTION"),
    ];
    if with_database_objects {
        statements.extend([
            format!("CREATE SCHEMA jit_test_own_{n}"),
            format!("CREATE TABLE jit_test_own_{n}.t (x int)"),
            format!("GRANT USAGE ON SCHEMA jit_test_own_{n} TO PUBLIC"),
            format!("CREATE PUBLICATION jit_test_pub_{n} FOR TABLE {s}.made"),
        ]);
    }
    for sql in statements {
        exec_on(holder, &sql).await;
    }
    // A large object, readable by anyone.
    let lo: i64 = sqlx::query_scalar("SELECT lo_from_bytea(0, 'holder data')::bigint")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    exec_on(
        holder,
        &format!("GRANT SELECT ON LARGE OBJECT {lo} TO PUBLIC"),
    )
    .await;

    // While the grant lasts, the attack works: the read-only role reads the secret.
    let mut ro_conn = f.readonly_conn().await;
    assert_eq!(
        text_on(&mut ro_conn, &format!("SELECT v FROM {s}.peek")).await,
        "top secret"
    );
    assert_eq!(
        text_on(&mut ro_conn, &format!("SELECT {s}.leak()")).await,
        "top secret"
    );
    ro_conn.close().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_holders_leftovers_are_dropped_and_nothing_runs_with_elevated_rights() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    // The granted role may create schemas and publications in the database, too.
    exec(
        &f.pool,
        &format!(
            "GRANT CREATE ON DATABASE {} TO {}",
            q(&database),
            q(&f.reader)
        ),
    )
    .await;
    let s = q(&f.schema);
    for admin in BOTH {
        let p = f.provider(admin, ephemeral(vec![f.reader.clone()]));
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let issued = p.grant(&spec).await.expect("grant");
        let role = issued.handle.clone();
        let mut holder = PgConnection::connect(&creds(&issued)["DATABASE_URL"])
            .await
            .unwrap();
        plant_leftovers(&f, &mut holder, true).await;
        let lo: Vec<i64> = sqlx::query_scalar(
            "SELECT oid::bigint FROM pg_largeobject_metadata WHERE lomowner = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(&role)
        .fetch_all(&f.pool)
        .await
        .unwrap();
        assert_eq!(lo.len(), 1);

        let revoked = p
            .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        let detail = revoked.detail.unwrap();
        assert!(
            detail.contains(&format!("role {role} dropped")) && detail.contains("objects dropped"),
            "{detail}"
        );
        assert!(!role_exists(&f.pool, &role).await);
        assert!(
            sqlx::query("SELECT 1").execute(&mut holder).await.is_err(),
            "the holder's session survived"
        );

        // Nothing the holder made is left: no definer-rights object, no table, sequence, type,
        // schema, publication, large object or default privilege.
        assert_eq!(
            definer_objects(&f.pool, &f.schema).await,
            Vec::<String>::new()
        );
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname <> $2 \
             UNION ALL SELECT t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = $1 AND t.typname = 'mood' \
             UNION ALL SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 \
             UNION ALL SELECT nspname::text FROM pg_namespace WHERE nspname = $3 \
             UNION ALL SELECT pubname::text FROM pg_publication WHERE pubname = $4 \
             UNION ALL SELECT 'default privileges' FROM pg_default_acl d \
               JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE n.nspname = $1 \
             UNION ALL SELECT 'large object' FROM pg_largeobject_metadata WHERE oid::bigint = $5",
        )
        .bind(&f.schema)
        .bind(&f.secret)
        .bind(format!("jit_test_own_{}", f.n))
        .bind(format!("jit_test_pub_{}", f.n))
        .bind(lo[0])
        .fetch_all(&f.pool)
        .await
        .unwrap();
        assert_eq!(left, Vec::<String>::new(), "left behind by {role}");

        // The read-only role gets nowhere through what was there.
        let mut ro = f.readonly_conn().await;
        for sql in [
            format!("SELECT v FROM {s}.peek"),
            format!("SELECT {s}.leak()"),
            format!("SELECT {s}.escalate()"),
            format!("SELECT v FROM {s}.{}", q(&f.secret)),
            format!("SELECT lo_get({})", lo[0]),
        ] {
            refused(&mut ro, &sql).await;
        }
        ro.close().await.unwrap();
        assert!(!is_superuser(&f.pool, &f.readonly).await);
    }
    f.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn kept_leftovers_go_to_a_powerless_owner_without_definer_rights() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let owner = format!("jit_test_leftovers_{}", f.n);
    let s = q(&f.schema);
    // REASSIGN by a non-superuser needs the new owner to hold CREATE on the schema.
    exec(&f.pool, &format!("CREATE ROLE {} NOLOGIN", q(&owner))).await;
    exec(
        &f.pool,
        &format!("GRANT USAGE, CREATE ON SCHEMA {s} TO {}", q(&owner)),
    )
    .await;
    for admin in BOTH {
        let p = f.provider(admin, keeping(vec![f.reader.clone()], &owner));
        let report = p.check_admin().await.expect("check the admin");
        assert_eq!(
            report.objects_owner.as_ref().map(|o| o.problems.clone()),
            Some(Vec::new()),
            "{report:?}"
        );
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let issued = p.grant(&spec).await.expect("grant");
        assert!(
            issued
                .instructions
                .as_deref()
                .unwrap()
                .contains(&format!("are handed to {owner}")),
            "{:?}",
            issued.instructions
        );
        let role = issued.handle.clone();
        let mut holder = PgConnection::connect(&creds(&issued)["DATABASE_URL"])
            .await
            .unwrap();
        plant_leftovers(&f, &mut holder, false).await;
        holder.close().await.unwrap();

        let revoked = p
            .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        let detail = revoked.detail.unwrap();
        assert!(
            detail.contains(&format!("handed to {owner} without definer rights")),
            "{detail}"
        );
        assert!(!role_exists(&f.pool, &role).await);

        // The objects stay, owned by the powerless role, and none runs with definer rights.
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname IN ('made', 'peek') \
             UNION SELECT DISTINCT pg_get_userbyid(p.proowner)::text FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        )
        .bind(&f.schema)
        .fetch_all(&f.pool)
        .await
        .unwrap();
        assert_eq!(owners, vec![owner.clone()]);
        assert_eq!(
            definer_objects(&f.pool, &f.schema).await,
            Vec::<String>::new()
        );
        // Default privileges the holder set are gone with it.
        let defaults: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE n.nspname = $1",
        )
        .bind(&f.schema)
        .fetch_one(&f.pool)
        .await
        .unwrap();
        assert_eq!(defaults, 0);

        // The read-only role: what was granted to PUBLIC stays readable (the documented
        // consequence), but nothing reaches the secret or raises it.
        let mut ro = f.readonly_conn().await;
        assert_eq!(
            text_on(&mut ro, &format!("SELECT x::text FROM {s}.made")).await,
            "1"
        );
        assert_eq!(
            text_on(&mut ro, &format!("SELECT {s}.whoami()")).await,
            f.readonly,
            "whoami() runs with the caller's rights now"
        );
        for (sql, expected) in [
            (format!("SELECT v FROM {s}.peek"), "permission denied"),
            (format!("SELECT {s}.leak()"), "permission denied"),
            (format!("SELECT {s}.escalate()"), "must be superuser"),
        ] {
            let err = refused(&mut ro, &sql).await;
            assert!(err.contains(expected), "{sql}: {err}");
        }
        ro.close().await.unwrap();
        assert!(!is_superuser(&f.pool, &f.readonly).await);
        let report = p.check_admin().await.unwrap();
        assert_eq!(
            report.objects_owner.map(|o| o.problems),
            Some(Vec::new()),
            "the owner is still powerless"
        );
        for sql in [
            format!("DROP VIEW {s}.peek"),
            format!("DROP TABLE {s}.made"),
            format!("DROP SEQUENCE {s}.counter"),
            format!("DROP TYPE {s}.mood"),
            format!("DROP FUNCTION {s}.leak(), {s}.whoami(), {s}.escalate()"),
        ] {
            exec(&f.pool, &sql).await;
        }
    }

    // An owner that is not powerless any more receives nothing; the role stays locked.
    exec(&f.pool, &format!("ALTER ROLE {} CREATEDB", q(&owner))).await;
    let p = f.provider(Admin::CreateRole, keeping(vec![f.reader.clone()], &owner));
    let report = p.check_admin().await.unwrap();
    let findings = report.findings();
    assert!(
        findings
            .iter()
            .any(|l| l.contains(&format!("objects_owner `{owner}` has CREATEDB"))),
        "{findings:?}"
    );
    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 600);
    let issued = p.grant(&spec).await.expect("grant");
    let role = issued.handle.clone();
    let err = p
        .revoke(&revoke_spec(&spec, &role, RevokeReason::Early))
        .await
        .expect_err("an owner with CREATEDB is refused");
    assert!(
        err.to_string().contains("has CREATEDB")
            && err.to_string().contains("can no longer log in"),
        "{err}"
    );
    assert!(!can_login(&f.pool, &role).await);
    assert_eq!(memberships(&f, &role).await, Vec::new());
    exec(&f.pool, &format!("ALTER ROLE {} NOCREATEDB", q(&owner))).await;
    p.revoke(&revoke_spec(&spec, &role, RevokeReason::Early))
        .await
        .expect("the retry succeeds");
    assert!(!role_exists(&f.pool, &role).await);

    exec(&f.pool, &format!("DROP OWNED BY {}", q(&owner))).await;
    exec(&f.pool, &format!("DROP ROLE {}", q(&owner))).await;
    f.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_failed_object_step_leaves_the_role_locked_and_says_so() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let s = q(&f.schema);
    for admin in BOTH {
        let p = f.provider(admin, ephemeral(vec![f.reader.clone(), f.odd.clone()]));
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let issued = p.grant(&spec).await.expect("grant");
        let role = issued.handle.clone();
        let url = creds(&issued)["DATABASE_URL"].clone();
        let mut holder = PgConnection::connect(&url).await.unwrap();
        exec_on(&mut holder, &format!("CREATE TABLE {s}.made (x int)")).await;
        // A session that took the granted role directly: it would keep the role's rights.
        exec_on(&mut holder, &format!("SET ROLE {}", q(&f.reader))).await;
        exec_on(
            &mut holder,
            &format!("INSERT INTO {s}.{} VALUES ('w')", q(&f.secret)),
        )
        .await;
        // Someone else's object depends on the holder's table: DROP OWNED cannot proceed.
        let dep = format!("jit_test_dep_{}", unique());
        exec(
            &f.pool,
            &format!("CREATE VIEW {s}.{dep} AS SELECT x FROM {s}.made"),
        )
        .await;

        let err = p
            .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
            .await
            .expect_err("the object step fails");
        let text = err.to_string();
        for expected in [
            format!(
                "{role} can no longer log in, holds no role memberships and has no open sessions"
            ),
            "not dropped yet".to_owned(),
            "2BP01".to_owned(),
            dep.clone(),
            "jit retries".to_owned(),
        ] {
            assert!(
                text.contains(&expected),
                "{expected:?} missing from: {text}"
            );
        }
        // Locked all the same: no login, no memberships, no session; the SET ROLE session is gone.
        assert!(role_exists(&f.pool, &role).await);
        assert!(!can_login(&f.pool, &role).await);
        assert_eq!(memberships(&f, &role).await, Vec::new());
        assert_eq!(sessions_of(&f.pool, &role).await, 0);
        assert!(
            sqlx::query("SELECT 1").execute(&mut holder).await.is_err(),
            "the SET ROLE session survived"
        );
        assert!(
            PgConnection::connect(&url).await.is_err(),
            "logged in again"
        );

        // Once the dependency is gone, the retry finishes the job.
        exec(&f.pool, &format!("DROP VIEW {s}.{dep}")).await;
        let revoked = p
            .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
            .await
            .expect("the retry succeeds");
        assert!(revoked.detail.unwrap().contains("dropped"));
        assert!(!role_exists(&f.pool, &role).await);
        exec(
            &f.pool,
            &format!("DELETE FROM {s}.{} WHERE v = 'w'", q(&f.secret)),
        )
        .await;
    }
    f.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn objects_in_other_databases_are_dropped_too() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let db = format!("jit_test_db_{}", f.n);
    exec(
        &f.pool,
        &format!("CREATE DATABASE {} TEMPLATE template0", q(&db)),
    )
    .await;
    {
        let other = admin_pool(&url_in(&url, &db)).await;
        exec(
            &other,
            &format!("GRANT CREATE ON SCHEMA public TO {}", q(&f.reader)),
        )
        .await;
        other.close().await;
    }
    for admin in BOTH {
        let p = f.provider(admin, ephemeral(vec![f.reader.clone()]));
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let issued = p.grant(&spec).await.expect("grant");
        let role = issued.handle.clone();
        let mut holder = PgConnection::connect(&url_in(&creds(&issued)["DATABASE_URL"], &db))
            .await
            .expect("the holder reaches the other database");
        exec_on(&mut holder, "CREATE TABLE public.elsewhere (x int)").await;
        exec_on(
            &mut holder,
            "CREATE FUNCTION public.whoami() RETURNS text SECURITY DEFINER LANGUAGE sql AS 'SELECT current_user::text'",
        )
        .await;

        if admin == Admin::CreateRole {
            // A database the admin may not connect to: the role is locked, and the error
            // names the database.
            exec(
                &f.pool,
                &format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&db)),
            )
            .await;
            exec(
                &f.pool,
                &format!("GRANT CONNECT ON DATABASE {} TO {}", q(&db), q(&f.reader)),
            )
            .await;
            let err = p
                .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
                .await
                .expect_err("the admin cannot reach the other database");
            assert!(
                err.to_string().contains(&format!("database `{db}`"))
                    && err.to_string().contains("can no longer log in"),
                "{err}"
            );
            assert!(!can_login(&f.pool, &role).await);
            assert_eq!(memberships(&f, &role).await, Vec::new());
            exec(
                &f.pool,
                &format!("GRANT CONNECT ON DATABASE {} TO PUBLIC", q(&db)),
            )
            .await;
        }
        let revoked = p
            .revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        let detail = revoked.detail.unwrap();
        assert!(detail.contains(&format!("{db}: 2")), "{detail}");
        assert!(!role_exists(&f.pool, &role).await);
        let other = admin_pool(&url_in(&url, &db)).await;
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_class WHERE relname = 'elsewhere') \
                  + (SELECT count(*) FROM pg_proc WHERE proname = 'whoami')",
        )
        .fetch_one(&other)
        .await
        .unwrap();
        assert_eq!(left, 0, "objects left in {db}");
        other.close().await;
    }
    exec(&f.pool, &format!("DROP DATABASE {} WITH (FORCE)", q(&db))).await;
    f.drop().await;
}

/// Elevation: a user with a session open before the grant takes the role with `SET ROLE` and
/// writes; at teardown that session ends, and the user keeps nothing.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn elevation_ends_set_role_sessions_by_default() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let t = q(&f.table);
    for admin in BOTH {
        let user = format!("jit test user \"{}'", unique());
        let user_url = login_role(&f, &user).await;
        let p = f.provider(
            admin,
            elevation(vec![f.reader.clone(), f.odd.clone()], &user, true),
        );
        // Opened before the grant.
        let mut early = PgConnection::connect(&user_url).await.unwrap();
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 900);
        let issued = p.grant(&spec).await.expect("grant");
        assert!(issued.credentials.is_none());
        assert!(issued.handle.starts_with("elevation:"));
        assert!(
            issued
                .instructions
                .as_deref()
                .unwrap()
                .contains("every session of"),
            "{:?}",
            issued.instructions
        );
        assert!(is_member(&f.pool, &user, &f.reader).await);
        assert!(is_member(&f.pool, &user, &f.odd).await);
        // Overlapping grants of the same access share the handle.
        let second = p.grant(&grant_spec(id + 1, tester(), 900)).await.unwrap();
        assert_eq!(second.handle, issued.handle);

        exec_on(&mut early, &format!("SET ROLE {}", q(&f.reader))).await;
        exec_on(&mut early, &format!("INSERT INTO {t} VALUES ('during')")).await;
        let mut during = PgConnection::connect(&user_url).await.unwrap();
        assert_eq!(
            text_on(&mut during, &format!("SELECT v FROM {t} LIMIT 1")).await,
            "visible"
        );

        let revoked = p
            .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        assert!(
            revoked.detail.unwrap().contains("2 sessions terminated"),
            "both sessions end"
        );
        assert!(!is_member(&f.pool, &user, &f.reader).await);
        assert!(!is_member(&f.pool, &user, &f.odd).await);
        for conn in [&mut early, &mut during] {
            assert!(
                sqlx::query("SELECT 1").execute(&mut *conn).await.is_err(),
                "a session survived"
            );
        }
        // The user itself is untouched and can still log in, without the role.
        let mut conn = PgConnection::connect(&user_url).await.unwrap();
        refused(&mut conn, &format!("SELECT v FROM {t}")).await;
        refused(&mut conn, &format!("SET ROLE {}", q(&f.reader))).await;
        conn.close().await.unwrap();

        // Twice is harmless.
        p.revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Early))
            .await
            .expect("second revoke");

        // Someone not in db_users gets a clear, fatal error.
        let stranger = Requester::User(SlackUserId::parse("U0STRANGER").unwrap());
        let err = p
            .grant(&grant_spec(id + 2, stranger, 900))
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("U0STRANGER") && err.to_string().contains("db_users"));
        exec(&f.pool, &format!("DROP ROLE {}", q(&user))).await;
    }
    exec(&f.pool, &format!("DELETE FROM {t} WHERE v = 'during'")).await;
    f.drop().await;
}

/// What `policy check` warns about is true: with `terminate_sessions = false`, a session that
/// ran `SET ROLE` keeps writing after the teardown.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn without_terminate_sessions_a_set_role_session_keeps_the_role() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let t = q(&f.table);
    let user = format!("jit_test_user_{}", f.n);
    let user_url = login_role(&f, &user).await;
    let p = f.provider(
        Admin::CreateRole,
        elevation(vec![f.reader.clone()], &user, false),
    );
    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 900);
    let issued = p.grant(&spec).await.expect("grant");
    let mut session = PgConnection::connect(&user_url).await.unwrap();
    exec_on(&mut session, &format!("SET ROLE {}", q(&f.reader))).await;
    let revoked = p
        .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
        .await
        .expect("revoke");
    assert!(!revoked.detail.unwrap().contains("terminated"));
    assert!(!is_member(&f.pool, &user, &f.reader).await);
    exec_on(&mut session, &format!("INSERT INTO {t} VALUES ('after')")).await;
    session.close().await.unwrap();
    exec(&f.pool, &format!("DELETE FROM {t} WHERE v = 'after'")).await;
    exec(&f.pool, &format!("DROP ROLE {}", q(&user))).await;
    f.drop().await;
}

/// Standing access (design §6): a role the user held before the grant, granted by someone
/// other than jit's admin, is neither granted nor revoked by jit.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn elevation_never_removes_standing_access() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let dba = format!("jit_test_dba_{}", f.n);
    exec(&f.pool, &format!("CREATE ROLE {} NOLOGIN", q(&dba))).await;
    for admin in BOTH {
        let user = format!("jit_test_user_{}", unique());
        let user_url = login_role(&f, &user).await;
        // The standing membership, recorded as granted by the DBA role.
        exec(
            &f.pool,
            &format!(
                "GRANT {} TO {} GRANTED BY {}",
                q(&f.reader),
                q(&user),
                q(&dba)
            ),
        )
        .await;
        let mut session = PgConnection::connect(&user_url).await.unwrap();

        // reader is standing, odd is not: jit grants and revokes only odd.
        let p = f.provider(
            admin,
            elevation(vec![f.reader.clone(), f.odd.clone()], &user, true),
        );
        let spec = grant_spec(unique() as i64, tester(), 900);
        let issued = p.grant(&spec).await.expect("grant");
        assert_eq!(
            issued.handle,
            jit::providers::postgres::elevation_handle(&user, std::slice::from_ref(&f.odd))
        );
        let instructions = issued.instructions.clone().unwrap();
        assert!(
            instructions.contains(&format!("You already held {}; it stays", f.reader)),
            "{instructions}"
        );
        assert!(is_member(&f.pool, &user, &f.odd).await);
        // An overlapping grant (odd is now held through jit's admin) gets the same handle.
        let overlap = p
            .grant(&grant_spec(unique() as i64, tester(), 900))
            .await
            .unwrap();
        assert_eq!(overlap.handle, issued.handle);
        p.revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
            .await
            .expect("revoke");
        assert!(
            is_member(&f.pool, &user, &f.reader).await,
            "standing access was removed"
        );
        assert!(!is_member(&f.pool, &user, &f.odd).await);
        assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err());

        // Every role standing: nothing granted, nothing revoked, no session ended.
        let mut session = PgConnection::connect(&user_url).await.unwrap();
        let p = f.provider(admin, elevation(vec![f.reader.clone()], &user, true));
        let spec = grant_spec(unique() as i64, tester(), 900);
        let issued = p.grant(&spec).await.expect("grant");
        assert_eq!(issued.handle, format!("elevation:{user}:"));
        assert!(
            issued.instructions.unwrap().contains("nothing was granted"),
            "no change to announce"
        );
        let revoked = p
            .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
            .await
            .expect("revoke");
        assert!(revoked.detail.unwrap().contains("nothing to revoke"));
        assert!(is_member(&f.pool, &user, &f.reader).await);
        sqlx::query("SELECT 1")
            .execute(&mut session)
            .await
            .expect("the session was left alone");
        session.close().await.unwrap();
        exec(&f.pool, &format!("DROP ROLE {}", q(&user))).await;
    }
    exec(&f.pool, &format!("DROP ROLE {}", q(&dba))).await;
    f.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn a_superuser_admin_is_refused_for_grants_but_never_for_revokes() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let config = ephemeral(vec![f.reader.clone()]);
    let strict =
        PostgresProvider::new(resource(), config.clone(), &SecretString::from(url.clone()))
            .unwrap();

    let report = strict.check_admin().await.expect("check");
    assert!(report.superuser && !report.superuser_allowed && report.refuses_grants());
    assert!(report.server_version >= 150_000, "{report:?}");
    assert!(report.findings()[0].contains("SUPERUSER"), "{report:?}");
    let line = strict
        .check_at_startup(std::time::Duration::from_secs(30))
        .await
        .expect_err("startup refuses a superuser admin");
    assert!(
        line.contains("resource `pg-test`")
            && line.contains("$JIT_TEST_POSTGRES_URL")
            && line.contains("allow_superuser_admin = true")
            && !line.contains('\n'),
        "{line}"
    );

    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 600);
    let err = strict.grant(&spec).await.expect_err("refused");
    assert!(
        matches!(err, ProviderError::Refused(_)),
        "refused before acting, so no compensating revoke follows: {err:?}"
    );
    assert!(err.to_string().contains("allow_superuser_admin"), "{err}");
    assert!(!role_exists(&f.pool, &ephemeral_role_name(RequestId(id))).await);

    // Allowed: the grant works, startup only warns.
    let allowed = f.provider(Admin::Superuser, config.clone());
    allowed
        .check_at_startup(std::time::Duration::from_secs(30))
        .await
        .expect("allowed");
    let issued = allowed.grant(&spec).await.expect("grant");
    // A refused superuser admin still tears down.
    strict
        .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Early))
        .await
        .expect("revokes are never refused");
    assert!(!role_exists(&f.pool, &issued.handle).await);

    // The recommended admin, and a granted role that may create nothing: nothing to report.
    let p = f.provider(Admin::CreateRole, ephemeral(vec![f.odd.clone()]));
    let report = p.check_admin().await.unwrap();
    assert!(!report.superuser && report.createrole && report.can_signal_backends);
    assert_eq!(report.findings(), Vec::<String>::new(), "{report:?}");
    p.check_at_startup(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    // A granted role that may CREATE in a schema (or a database) is reported: what a holder
    // makes as it outlives the grant.
    let p = f.provider(Admin::CreateRole, config);
    let report = p.check_admin().await.unwrap();
    assert_eq!(
        report.create_privileges,
        vec![format!(
            "granted role `{}` holds CREATE on schema {}: a holder can make objects owned by it \
             (SET ROLE, or ALTER … OWNER TO) that outlive the grant; teardown strips definer rights \
             from those made during the grant and says so in the audit thread (README: provider postgres)",
            f.reader, f.schema
        )],
        "{report:?}"
    );
    assert_eq!(report.findings(), report.create_privileges);

    // A missing role, a role that is too strong, an admin that cannot signal, a LOGIN owner.
    let strong = format!("jit_test_strong_{}", f.n);
    let owner = format!("jit_test_owner_{}", f.n);
    exec(
        &f.pool,
        &format!("CREATE ROLE {} NOLOGIN CREATEDB", q(&strong)),
    )
    .await;
    exec(&f.pool, &format!("CREATE ROLE {} LOGIN", q(&owner))).await;
    exec(
        &f.pool,
        &format!("REVOKE pg_signal_backend FROM {}", q(&f.admin)),
    )
    .await;
    let p = f.provider(
        Admin::CreateRole,
        keeping(vec![strong.clone(), "jit_test_no_such_role".into()], &owner),
    );
    let findings = p.check_admin().await.unwrap().findings();
    for expected in [
        "pg_signal_backend".to_owned(),
        "granted role `jit_test_no_such_role` does not exist".to_owned(),
        format!("granted role `{strong}` has CREATEDB"),
        format!("objects_owner `{owner}` can log in"),
    ] {
        assert!(
            findings.iter().any(|l| l.contains(&expected)),
            "{expected:?} missing from {findings:?}"
        );
    }
    let missing = f.provider(
        Admin::CreateRole,
        keeping(vec![f.reader.clone()], "jit_test_no_such_owner"),
    );
    let findings = missing.check_admin().await.unwrap().findings();
    assert!(
        findings.iter().any(|l| l.contains("does not exist")),
        "{findings:?}"
    );
    exec(&f.pool, &format!("DROP ROLE {}, {}", q(&strong), q(&owner))).await;
    f.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn bad_configuration_is_fatal_and_outages_are_retryable_without_secrets() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    // A role that does not exist: fatal, and nothing is left behind.
    let missing = format!("jit_test_missing_{}", unique());
    let p = f.provider(Admin::CreateRole, ephemeral(vec![missing.clone()]));
    let id = unique() as i64;
    let err = p.grant(&grant_spec(id, tester(), 600)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!role_exists(&f.pool, &ephemeral_role_name(RequestId(id))).await);

    // A handle jit never issued is refused, and the role it names is left alone.
    let spec = grant_spec(id, tester(), 600);
    let err = p
        .revoke(&revoke_spec(&spec, &f.reader, RevokeReason::Early))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(role_exists(&f.pool, &f.reader).await);

    // Elevation of the admin role itself is refused.
    let p = f.provider(
        Admin::CreateRole,
        elevation(vec![f.reader.clone()], &f.admin, true),
    );
    let err = p.grant(&spec).await.unwrap_err();
    assert!(err.to_string().contains("the admin role itself"), "{err}");
    assert!(!is_member(&f.pool, &f.admin, &f.reader).await);
    f.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_retryable_and_errors_hold_no_secrets() {
    // No server needed: nothing listens on port 9 of localhost.
    let url = "postgres://admin:TopSecretAdminPassword@127.0.0.1:9/db";
    let p = PostgresProvider::new(
        resource(),
        ephemeral(vec!["reader".into()]),
        &SecretString::from(url),
    )
    .unwrap()
    .with_acquire_timeout(std::time::Duration::from_secs(1));
    assert!(!format!("{p:?}").contains("TopSecret"));
    let err = p.grant(&grant_spec(1, tester(), 600)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    for text in [err.to_string(), format!("{err:?}")] {
        assert_no_secret(&text, "TopSecretAdminPassword");
        assert_no_secret(&text, url);
    }
    // Startup goes on (with a warning); the grant above shows the check runs again first.
    p.check_at_startup(std::time::Duration::from_secs(30))
        .await
        .expect("an unreachable server does not stop startup");
    // A grant that has already ended is refused before any call.
    let err = p.grant(&grant_spec(2, tester(), -1)).await.unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("ended"),
        "{err}"
    );
    // A URL that is not one is refused without being echoed.
    let err = PostgresProvider::new(
        resource(),
        ephemeral(vec!["reader".into()]),
        &SecretString::from("not a url with s3cret"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("JIT_TEST_POSTGRES_URL"), "{err}");
    assert_no_secret(&err.to_string(), "s3cret");
}

/// `jit serve` as operators run it: a superuser admin URL stops startup with one line naming
/// the resource and the key; with `allow_superuser_admin = true` it starts, and says so loudly.
#[test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
fn jit_serve_refuses_a_superuser_admin_unless_the_policy_allows_it() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let Some(url) = admin_url() else { return };
    // A granted role that may create objects in the database: startup warns about it.
    let creator = format!("jit_test_creator_{}", unique());
    let database = url::Url::parse(&url).unwrap().path()[1..].to_owned();
    let psql = |sql: String| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = admin_pool(&url).await;
            exec(&pool, &sql).await;
            pool.close().await;
        });
    };
    psql(format!(
        "CREATE ROLE {c} NOLOGIN; GRANT CREATE ON DATABASE {d} TO {c}",
        c = q(&creator),
        d = q(&database)
    ));
    let policy = |extra: &str| {
        format!(
            r#"
[slack]
audit_channel = "C0AUDIT"
admins = {{ users = ["U0SECLEAD"] }}

[[resource]]
id = "pg-prod"
provider = "postgres"
database_url_env = "PG_PROD_ADMIN_URL"
roles = ["pg_read_all_data", "{creator}"]
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
{extra}
"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    // One key for both starts: the first start keys the database's audit chain with it.
    let key = jit::crypto::generate_key();
    let serve = |policy_text: &str, log: &std::path::Path| {
        let path = dir.path().join("jit.toml");
        std::fs::write(&path, policy_text).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Command::new(env!("CARGO_BIN_EXE_jit"))
            .arg("serve")
            .env_clear()
            .env("SLACK_SIGNING_SECRET", "serve-test-secret")
            .env("SLACK_BOT_TOKEN", "xoxb-serve-test")
            .env("JIT_ENCRYPTION_KEY", &key)
            .env("JIT_SLACK_API_URL", "http://127.0.0.1:9/api")
            .env(
                "JIT_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("jit.db").display()),
            )
            .env("JIT_POLICY", &path)
            .env("JIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("JIT_LOG_FORMAT", "json")
            .env("PG_PROD_ADMIN_URL", &url)
            .stdout(Stdio::null())
            // Logs (JSON lines) and the final error both go to stderr.
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    // A guard against a hang, not a timing check.
    let deadline = Instant::now() + Duration::from_secs(120);

    let refused_log = dir.path().join("refused.log");
    let mut child = serve(&policy(""), &refused_log);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "jit serve neither failed nor started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&refused_log).unwrap();
    assert!(!status.success());
    assert!(!stderr.contains("jit is ready"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("jit: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    assert!(
        line.contains("resource `pg-prod`")
            && line.contains("$PG_PROD_ADMIN_URL")
            && line.contains("a superuser")
            && line.contains("allow_superuser_admin = true"),
        "{stderr}"
    );
    assert_no_secret(&stderr, &url);

    let log = dir.path().join("allowed.log");
    let mut child = serve(&policy("allow_superuser_admin = true"), &log);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("jit is ready") {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("jit serve stopped ({status}): {text}");
        }
        assert!(Instant::now() < deadline, "jit serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let warning = text
        .lines()
        .find(|l| l.contains("SUPERUSER ADMIN"))
        .unwrap_or_else(|| panic!("no superuser warning in: {text}"));
    assert!(
        warning.contains("\"level\":\"WARN\"") && warning.contains("pg-prod"),
        "{warning}"
    );
    let create = text
        .lines()
        .find(|l| l.contains("holds CREATE"))
        .unwrap_or_else(|| panic!("no warning about CREATE privileges in: {text}"));
    assert!(
        create.contains("\"level\":\"WARN\"")
            && create.contains(&format!(
                "granted role `{creator}` holds CREATE on database"
            ))
            && create.contains("outlive the grant"),
        "{create}"
    );
    assert_no_secret(&text, &url);
    psql(format!(
        "REVOKE CREATE ON DATABASE {} FROM {c}; DROP ROLE {c}",
        q(&database),
        c = q(&creator)
    ));
}

/// The audit's attack on issue 11, point 1, through the *granted* role: a holder whose granted
/// role may create in a schema leaves definer-rights objects owned by that role (not by its own
/// login role, which teardown drops), granted to PUBLIC, by both paths the review named:
/// creating as itself and then `ALTER … OWNER TO` the granted role, and `SET ROLE` to the
/// granted role before creating. Also a rule (its actions run as the table's owner), a
/// trigger, and a definer function the granted role owned before the grant, replaced during it.
/// Returns the names planted, as `(functions, view, rule table, trigger table)`.
async fn plant_through_the_granted_role(
    f: &Fixture,
    holder: &mut PgConnection,
    tag: &str,
) -> Vec<String> {
    let (s, sec, r) = (q(&f.schema), q(&f.secret), q(&f.reader));
    for sql in [
        // Path 1: made as the holder, then handed to the granted role.
        format!(
            "CREATE FUNCTION {s}.leak_owner_{tag}() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT v FROM {s}.{sec}'"
        ),
        format!("ALTER FUNCTION {s}.leak_owner_{tag}() OWNER TO {r}"),
        format!("GRANT EXECUTE ON FUNCTION {s}.leak_owner_{tag}() TO PUBLIC"),
        // Path 2: SET ROLE first.
        format!("SET ROLE {r}"),
        format!(
            "CREATE FUNCTION {s}.leak_set_{tag}() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT v FROM {s}.{sec}'"
        ),
        format!("GRANT EXECUTE ON FUNCTION {s}.leak_set_{tag}() TO PUBLIC"),
        format!("CREATE VIEW {s}.peek_{tag} AS SELECT v FROM {s}.{sec}"),
        format!("GRANT SELECT ON {s}.peek_{tag} TO PUBLIC"),
        format!("CREATE TABLE {s}.inbox_{tag} (v text)"),
        format!("GRANT INSERT ON {s}.inbox_{tag} TO PUBLIC"),
        format!(
            "CREATE RULE copy AS ON INSERT TO {s}.inbox_{tag} DO ALSO INSERT INTO {s}.{sec} VALUES (NEW.v)"
        ),
        format!("CREATE TABLE {s}.log_{tag} (v text)"),
        format!("GRANT INSERT ON {s}.log_{tag} TO PUBLIC"),
        format!(
            "CREATE FUNCTION {s}.trap_{tag}() RETURNS trigger SECURITY DEFINER LANGUAGE plpgsql \
             AS $$ BEGIN INSERT INTO {s}.{sec} VALUES (NEW.v); RETURN NEW; END $$"
        ),
        format!(
            "CREATE TRIGGER trap BEFORE INSERT ON {s}.log_{tag} FOR EACH ROW EXECUTE FUNCTION {s}.trap_{tag}()"
        ),
        // The granted role's own function, replaced with a new body.
        format!(
            "CREATE OR REPLACE FUNCTION {s}.replaced() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT v FROM {s}.{sec}'"
        ),
        "RESET ROLE".to_owned(),
    ] {
        exec_on(holder, &sql).await;
    }
    vec![
        format!("leak_owner_{tag}"),
        format!("leak_set_{tag}"),
        format!("peek_{tag}"),
        format!("inbox_{tag}"),
        format!("log_{tag}"),
        format!("trap_{tag}"),
        "replaced".to_owned(),
    ]
}

/// What the read-only role gets through the leftovers of [`plant_through_the_granted_role`]:
/// `true` when it reaches the secret (reads it, or writes into it).
async fn readonly_escalates(f: &Fixture, tag: &str) -> Vec<(String, bool)> {
    let (s, sec) = (q(&f.schema), q(&f.secret));
    let mut ro = f.readonly_conn().await;
    let mut out = Vec::new();
    for sql in [
        format!("SELECT {s}.leak_owner_{tag}()"),
        format!("SELECT {s}.leak_set_{tag}()"),
        format!("SELECT v FROM {s}.peek_{tag}"),
        format!("SELECT {s}.replaced()"),
    ] {
        let read = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()))
            .fetch_all(&mut ro)
            .await;
        out.push((
            sql,
            read.is_ok_and(|v| v.contains(&"top secret".to_owned())),
        ));
    }
    for (table, marker) in [("inbox", "via-rule"), ("log", "via-trigger")] {
        let sql = format!("INSERT INTO {s}.{table}_{tag} VALUES ('{marker}-{tag}')");
        let _ = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut ro)
            .await;
        let written: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {s}.{sec} WHERE v = '{marker}-{tag}'"
        )))
        .fetch_one(&f.pool)
        .await
        .unwrap();
        out.push((sql, written > 0));
        exec(
            &f.pool,
            &format!("DELETE FROM {s}.{sec} WHERE v = '{marker}-{tag}'"),
        )
        .await;
    }
    ro.close().await.unwrap();
    out
}

async fn drop_planted(f: &Fixture, tag: &str) {
    let s = q(&f.schema);
    for sql in [
        format!("DROP FUNCTION IF EXISTS {s}.leak_owner_{tag}(), {s}.leak_set_{tag}()"),
        format!("DROP VIEW IF EXISTS {s}.peek_{tag}"),
        format!("DROP TABLE IF EXISTS {s}.inbox_{tag}, {s}.log_{tag}"),
        format!("DROP FUNCTION IF EXISTS {s}.trap_{tag}()"),
    ] {
        exec(&f.pool, &sql).await;
    }
}

/// Makes `{schema}.replaced()` (and `{schema}.legit()`) the granted role's own definer
/// functions, as they were before any grant: harmless bodies.
async fn reset_granted_roles_functions(f: &Fixture) {
    let (s, r) = (q(&f.schema), q(&f.reader));
    for sql in [
        format!(
            "CREATE OR REPLACE FUNCTION {s}.replaced() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT ''harmless''::text'"
        ),
        format!("ALTER FUNCTION {s}.replaced() OWNER TO {r}"),
        format!(
            "CREATE OR REPLACE FUNCTION {s}.legit() RETURNS text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT current_user::text'"
        ),
        format!("ALTER FUNCTION {s}.legit() OWNER TO {r}"),
        format!(
            "GRANT EXECUTE ON FUNCTION {s}.legit() TO {}",
            q(&f.readonly)
        ),
    ] {
        exec(&f.pool, &sql).await;
    }
}

/// Whether `{schema}.{name}` (a function) still runs with its owner's rights.
async fn is_definer(f: &Fixture, name: &str) -> bool {
    sqlx::query_scalar(
        "SELECT p.prosecdef FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.proname = $2",
    )
    .bind(&f.schema)
    .bind(name)
    .fetch_one(&f.pool)
    .await
    .unwrap()
}

fn assert_neutralised_all(attention: &str, planted: &[String], f: &Fixture, tag: &str) {
    for name in planted {
        assert!(
            attention.contains(name.as_str()),
            "{name} missing from the attention text: {attention}"
        );
    }
    let s = &f.schema;
    let db = url::Url::parse(&f.url).unwrap().path()[1..].to_owned();
    for expected in [
        format!(
            "function {s}.leak_set_{tag}() (owner {}, database `{db}`) is SECURITY INVOKER now \
             (undo: ALTER ROUTINE {s}.leak_set_{tag}() SECURITY DEFINER)",
            f.reader
        ),
        format!(
            "view {s}.peek_{tag} (owner {}, database `{db}`) has security_invoker now \
             (undo: ALTER VIEW {s}.peek_{tag} RESET (security_invoker))",
            f.reader
        ),
        format!(
            "rule copy on {s}.inbox_{tag} (owner {}, database `{db}`) dropped (it was: CREATE RULE copy AS",
            f.reader
        ),
        format!(
            "trigger trap on {s}.log_{tag} (owner {}, database `{db}`) disabled \
             (undo: ALTER TABLE {s}.log_{tag} ENABLE TRIGGER trap)",
            f.reader
        ),
        format!(
            "function {s}.replaced() (owner {}, database `{db}`) is SECURITY INVOKER now",
            f.reader
        ),
        "If one of them was legitimate, restore it".to_owned(),
    ] {
        assert!(
            attention.contains(&expected),
            "{expected:?} missing from the attention text: {attention}"
        );
    }
    assert!(
        !attention.contains(".legit()"),
        "an untouched function was neutralised: {attention}"
    );
}

/// Ephemeral grants, both admin kinds, both attack paths: while the grant lasts the read-only
/// role reaches the granted role's secret through every leftover; after teardown through none,
/// and the audit's attention text lists each neutralised object with the command that undoes
/// it. The granted role's own definer function, untouched during the grant, keeps its rights.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn leftovers_owned_by_the_granted_role_lose_their_rights_at_teardown() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    reset_granted_roles_functions(&f).await;
    for admin in BOTH {
        let tag = format!("{admin:?}").to_lowercase();
        let p = f.provider(admin, ephemeral(vec![f.reader.clone()]));
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let baseline = p
            .baseline(&spec)
            .await
            .expect("a baseline")
            .expect("postgres takes one");
        assert!(
            jit::providers::postgres::parse_baseline(&baseline).is_some(),
            "{baseline}"
        );
        let issued = p.grant(&spec).await.expect("grant");
        let role = issued.handle.clone();
        let mut holder = PgConnection::connect(&creds(&issued)["DATABASE_URL"])
            .await
            .unwrap();
        let planted = plant_through_the_granted_role(&f, &mut holder, &tag).await;
        // The attack works while the grant lasts.
        for (sql, escalates) in readonly_escalates(&f, &tag).await {
            assert!(escalates, "during the grant: {sql}");
        }

        let mut revoke = revoke_spec(&spec, &role, RevokeReason::Expired);
        revoke.baselines = vec![baseline];
        let revoked = p
            .revoke(&revoke)
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        assert!(!role_exists(&f.pool, &role).await);
        let detail = revoked.detail.unwrap();
        assert!(
            detail.contains("7 objects made through the granted roles neutralised"),
            "{detail}"
        );
        let attention = revoked.attention.expect("a loud attention text");
        assert_neutralised_all(&attention, &planted, &f, &tag);

        // The read-only role escalates through nothing the holder left.
        for (sql, escalates) in readonly_escalates(&f, &tag).await {
            assert!(
                !escalates,
                "after teardown, with the {admin:?} admin: {sql}"
            );
        }
        assert!(!is_superuser(&f.pool, &f.readonly).await);
        for name in &planted[..2] {
            assert!(!is_definer(&f, name).await, "{name}");
        }
        assert!(!is_definer(&f, "replaced").await);
        assert!(!is_definer(&f, &format!("trap_{tag}")).await);
        assert!(is_definer(&f, "legit").await, "untouched, so left alone");
        let mut ro = f.readonly_conn().await;
        assert_eq!(
            text_on(&mut ro, &format!("SELECT {}.legit()", q(&f.schema))).await,
            f.reader
        );
        ro.close().await.unwrap();
        // A CREATEROLE admin took the granted role's rights for the change, and gave them up.
        assert!(!is_member(&f.pool, &f.admin, &f.reader).await);

        // Again: nothing left to neutralise, nothing to say.
        drop_planted(&f, &tag).await;
        reset_granted_roles_functions(&f).await;
    }
    f.drop().await;
}

/// Elevation: the user's granted role is revoked, and what the user made as that role during
/// the grant (SET ROLE, or ALTER … OWNER TO) loses its rights too.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn leftovers_of_an_elevation_through_the_granted_role_lose_their_rights() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    reset_granted_roles_functions(&f).await;
    for admin in BOTH {
        let tag = format!("elev_{admin:?}").to_lowercase();
        let user = format!("jit_test_user_{}", unique());
        let user_url = login_role(&f, &user).await;
        let p = f.provider(admin, elevation(vec![f.reader.clone()], &user, true));
        let id = unique() as i64;
        let spec = grant_spec(id, tester(), 600);
        let baseline = p.baseline(&spec).await.unwrap().unwrap();
        let issued = p.grant(&spec).await.expect("grant");
        let mut holder = PgConnection::connect(&user_url).await.unwrap();
        let planted = plant_through_the_granted_role(&f, &mut holder, &tag).await;
        for (sql, escalates) in readonly_escalates(&f, &tag).await {
            assert!(escalates, "during the grant: {sql}");
        }
        let mut revoke = revoke_spec(&spec, &issued.handle, RevokeReason::Early);
        revoke.baselines = vec![baseline];
        let revoked = p
            .revoke(&revoke)
            .await
            .unwrap_or_else(|e| panic!("revoke with the {admin:?} admin: {e}"));
        assert!(!is_member(&f.pool, &user, &f.reader).await);
        assert_neutralised_all(&revoked.attention.expect("attention"), &planted, &f, &tag);
        for (sql, escalates) in readonly_escalates(&f, &tag).await {
            assert!(
                !escalates,
                "after teardown, with the {admin:?} admin: {sql}"
            );
        }
        assert!(is_definer(&f, "legit").await);
        drop_planted(&f, &tag).await;
        reset_granted_roles_functions(&f).await;
        exec(
            &f.pool,
            &format!("DROP OWNED BY {0}; DROP ROLE {0}", q(&user)),
        )
        .await;
    }
    f.drop().await;
}

/// A CREATEROLE admin that cannot reach what was made through the granted role (here: a
/// database it may not connect to) cannot neutralise it. The teardown then fails, names the
/// database and what is there, and leaves the holder locked out; the retry finishes once the
/// admin can connect.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn leftovers_the_admin_cannot_reach_fail_the_teardown_and_say_what_remains() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let db = format!("jit_test_far_{}", f.n);
    exec(
        &f.pool,
        &format!("CREATE DATABASE {} TEMPLATE template0", q(&db)),
    )
    .await;
    {
        let other = admin_pool(&url_in(&url, &db)).await;
        exec(
            &other,
            &format!("GRANT CREATE ON SCHEMA public TO {}", q(&f.reader)),
        )
        .await;
        other.close().await;
    }
    let p = f.provider(Admin::CreateRole, ephemeral(vec![f.reader.clone()]));
    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 600);
    let baseline = p.baseline(&spec).await.unwrap().unwrap();
    let issued = p.grant(&spec).await.expect("grant");
    let role = issued.handle.clone();
    let mut holder = PgConnection::connect(&url_in(&creds(&issued)["DATABASE_URL"], &db))
        .await
        .unwrap();
    exec_on(&mut holder, &format!("SET ROLE {}", q(&f.reader))).await;
    exec_on(
        &mut holder,
        "CREATE FUNCTION public.far_leak() RETURNS text SECURITY DEFINER LANGUAGE sql AS 'SELECT current_user::text'",
    )
    .await;
    holder.close().await.unwrap();
    exec(
        &f.pool,
        &format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&db)),
    )
    .await;
    exec(
        &f.pool,
        &format!("GRANT CONNECT ON DATABASE {} TO {}", q(&db), q(&f.reader)),
    )
    .await;

    let mut revoke = revoke_spec(&spec, &role, RevokeReason::Expired);
    revoke.baselines = vec![baseline];
    let err = p
        .revoke(&revoke)
        .await
        .expect_err("the admin cannot reach the leftover");
    let text = err.to_string();
    for expected in [
        format!("{role} can no longer log in"),
        format!(
            "objects made through {} during the grant still run with their owner's rights",
            f.reader
        ),
        format!("database `{db}`: 1 object(s) owned by {}", f.reader),
        "jit cannot connect there".to_owned(),
        "jit retries".to_owned(),
    ] {
        assert!(
            text.contains(&expected),
            "{expected:?} missing from: {text}"
        );
    }
    assert!(role_exists(&f.pool, &role).await, "not dropped yet");
    assert!(!can_login(&f.pool, &role).await);
    assert_eq!(memberships(&f, &role).await, Vec::new());

    exec(
        &f.pool,
        &format!("GRANT CONNECT ON DATABASE {} TO PUBLIC", q(&db)),
    )
    .await;
    let revoked = p.revoke(&revoke).await.expect("the retry succeeds");
    assert!(!role_exists(&f.pool, &role).await);
    let attention = revoked.attention.unwrap();
    assert!(
        attention.contains("public.far_leak()") && attention.contains(&format!("database `{db}`")),
        "{attention}"
    );
    let other = admin_pool(&url_in(&url, &db)).await;
    let definer: bool =
        sqlx::query_scalar("SELECT prosecdef FROM pg_proc WHERE proname = 'far_leak'")
            .fetch_one(&other)
            .await
            .unwrap();
    assert!(!definer);
    exec(
        &other,
        &format!(
            "DROP FUNCTION public.far_leak(); REVOKE ALL ON SCHEMA public FROM {}",
            q(&f.reader)
        ),
    )
    .await;
    other.close().await;
    exec(&f.pool, &format!("DROP DATABASE {} WITH (FORCE)", q(&db))).await;
    f.drop().await;
}

/// A grant issued before jit recorded baselines (none is handed to the revoke): the window
/// starts when jit's memberships of the login role began, so what was made through the granted
/// role is neutralised all the same.
#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn without_a_recorded_baseline_the_window_starts_with_the_memberships() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let (s, sec, r) = (q(&f.schema), q(&f.secret), q(&f.reader));
    let p = f.provider(Admin::CreateRole, ephemeral(vec![f.reader.clone()]));
    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 600);
    let issued = p.grant(&spec).await.expect("grant");
    let mut holder = PgConnection::connect(&creds(&issued)["DATABASE_URL"])
        .await
        .unwrap();
    for sql in [
        format!("SET ROLE {r}"),
        format!(
            "CREATE FUNCTION {s}.old_grant_leak() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT v FROM {s}.{sec}'"
        ),
    ] {
        exec_on(&mut holder, &sql).await;
    }
    let revoked = p
        .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
        .await
        .expect("revoke");
    assert!(
        revoked
            .attention
            .as_deref()
            .is_some_and(|a| a.contains("old_grant_leak()")),
        "{:?}",
        revoked.attention
    );
    assert!(!is_definer(&f, "old_grant_leak").await);
    exec(&f.pool, &format!("DROP FUNCTION {s}.old_grant_leak()")).await;
    f.drop().await;
}
