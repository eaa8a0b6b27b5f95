//! The `postgres` provider against a real server.
//!
//! Set `JIT_TEST_POSTGRES_URL` to a superuser URL (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Unset: the tests say so and return. Set but
//! unreachable: they fail. Every run uses fresh random names, so runs may overlap; each test
//! drops what it created.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::{PostgresConfig, PostgresMode, Requester};
use jit::providers::postgres::{
    PostgresProvider, ephemeral_role_name, quote_ident, scram_sha256_verifier,
};
use jit::providers::{GrantSpec, Issued, Provider, ProviderError, RevokeReason, RevokeSpec};
use secrecy::SecretString;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

fn admin_url() -> Option<String> {
    match std::env::var("JIT_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("JIT_TEST_POSTGRES_URL is unset: skipping the PostgreSQL provider tests");
            None
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

fn unique() -> u32 {
    rand::random::<u32>() >> 1
}

/// Fixtures: a table readable by a plain role and by a role with an awkward name.
struct Fixture {
    pool: PgPool,
    table: String,
    reader: String,
    odd: String,
}

impl Fixture {
    async fn new(url: &str) -> Self {
        let pool = admin_pool(url).await;
        let n = unique();
        let f = Fixture {
            table: format!("jit_test_table_{n}"),
            reader: format!("jit_test_reader_{n}"),
            odd: format!("odd\"role'x {n} ü"),
            pool,
        };
        let (t, r, o) = (
            quote_ident(&f.table).unwrap(),
            quote_ident(&f.reader).unwrap(),
            quote_ident(&f.odd).unwrap(),
        );
        exec(&f.pool, &format!("CREATE TABLE {t} (v text)")).await;
        exec(&f.pool, &format!("INSERT INTO {t} VALUES ('visible')")).await;
        exec(&f.pool, &format!("CREATE ROLE {r} NOLOGIN")).await;
        exec(&f.pool, &format!("CREATE ROLE {o} NOLOGIN")).await;
        exec(&f.pool, &format!("GRANT SELECT ON {t} TO {r}")).await;
        exec(&f.pool, &format!("GRANT SELECT ON {t} TO {o}")).await;
        f
    }

    async fn drop(self) {
        let (t, r, o) = (
            quote_ident(&self.table).unwrap(),
            quote_ident(&self.reader).unwrap(),
            quote_ident(&self.odd).unwrap(),
        );
        exec(&self.pool, &format!("DROP TABLE IF EXISTS {t}")).await;
        exec(&self.pool, &format!("DROP ROLE IF EXISTS {r}")).await;
        exec(&self.pool, &format!("DROP ROLE IF EXISTS {o}")).await;
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
    }
}

fn ephemeral(roles: Vec<String>) -> PostgresConfig {
    PostgresConfig {
        database_url_env: "JIT_TEST_POSTGRES_URL".into(),
        roles,
        mode: PostgresMode::Ephemeral {
            connection_limit: 3,
        },
        connect_host: None,
    }
}

fn provider(url: &str, config: PostgresConfig) -> PostgresProvider {
    PostgresProvider::new(resource(), config, &SecretString::from(url.to_owned())).unwrap()
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

fn assert_no_secret(text: &str, secret: &str) {
    assert!(!text.contains(secret), "a secret leaked into: {text}");
}

#[tokio::test]
async fn ephemeral_login_works_until_teardown() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let p = provider(&url, ephemeral(vec![f.reader.clone(), f.odd.clone()]));
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
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(me, role);
    let value: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT v FROM {}",
        quote_ident(&f.table).unwrap()
    )))
    .fetch_one(&mut conn)
    .await
    .expect("SELECT through the granted role");
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

    // The holder creates an object; teardown must not trip over it.
    sqlx::raw_sql("CREATE TEMP TABLE scratch (x int)")
        .execute(&mut conn)
        .await
        .unwrap();

    // Teardown: the open session dies, no new login, the role is gone.
    let revoked = p
        .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Early))
        .await
        .expect("revoke");
    let detail = revoked.detail.unwrap();
    assert!(
        detail.contains("dropped") && detail.contains("1 session"),
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
    f.drop().await;
}

#[tokio::test]
async fn ephemeral_teardown_reassigns_what_the_holder_created() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let p = provider(&url, ephemeral(vec![f.reader.clone()]));
    let id = unique() as i64;
    let spec = grant_spec(id, tester(), 600);
    let issued = p.grant(&spec).await.unwrap();
    let role = issued.handle.clone();
    // Let the role create a table in a schema of its own.
    let schema = format!("jit_test_schema_{id}");
    let sq = quote_ident(&schema).unwrap();
    exec(
        &f.pool,
        &format!(
            "CREATE SCHEMA {sq} AUTHORIZATION {}",
            quote_ident(&role).unwrap()
        ),
    )
    .await;
    let mut conn = PgConnection::connect(&creds(&issued)["DATABASE_URL"])
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE TABLE {sq}.made (x int)")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    p.revoke(&revoke_spec(&spec, &role, RevokeReason::Expired))
        .await
        .expect("revoke");
    assert!(!role_exists(&f.pool, &role).await);
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::regclass",
    )
    .bind(format!("{sq}.made"))
    .fetch_one(&f.pool)
    .await
    .unwrap();
    let admin: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(owner, admin);
    exec(&f.pool, &format!("DROP SCHEMA {sq} CASCADE")).await;
    f.drop().await;
}

#[tokio::test]
async fn elevation_grants_then_revokes_and_terminates_sessions() {
    let Some(url) = admin_url() else { return };
    let f = Fixture::new(&url).await;
    let n = unique();
    let user = format!("jit test user \"{n}'");
    exec(
        &f.pool,
        &format!("CREATE ROLE {} LOGIN", quote_ident(&user).unwrap()),
    )
    .await;
    let requester = tester();
    let config = PostgresConfig {
        database_url_env: "JIT_TEST_POSTGRES_URL".into(),
        roles: vec![f.reader.clone(), f.odd.clone()],
        mode: PostgresMode::Elevation {
            db_users: BTreeMap::from([(requester.key(), user.clone())]),
            terminate_sessions: true,
        },
        connect_host: None,
    };
    let p = provider(&url, config);
    let id = unique() as i64;
    let spec = grant_spec(id, requester.clone(), 900);

    let issued = p.grant(&spec).await.expect("grant");
    assert!(issued.credentials.is_none());
    assert!(issued.handle.starts_with("elevation:"));
    assert!(is_member(&f.pool, &user, &f.reader).await);
    assert!(is_member(&f.pool, &user, &f.odd).await);
    // Overlapping grants of the same access share the handle.
    let second = p
        .grant(&grant_spec(id + 1, requester.clone(), 900))
        .await
        .unwrap();
    assert_eq!(second.handle, issued.handle);

    // The user opens a session during the grant and uses the role.
    let mut user_url = url::Url::parse(&url).unwrap();
    user_url.set_username(&user).unwrap();
    user_url.set_password(None).unwrap();
    let mut conn = PgConnection::connect(user_url.as_str()).await.unwrap();
    let value: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT v FROM {}",
        quote_ident(&f.table).unwrap()
    )))
    .fetch_one(&mut conn)
    .await
    .expect("SELECT through the granted role");
    assert_eq!(value, "visible");

    let revoked = p
        .revoke(&revoke_spec(&spec, &issued.handle, RevokeReason::Expired))
        .await
        .expect("revoke");
    assert!(revoked.detail.unwrap().contains("1 session"));
    assert!(!is_member(&f.pool, &user, &f.reader).await);
    assert!(!is_member(&f.pool, &user, &f.odd).await);
    assert!(
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .is_err(),
        "the session survived"
    );
    // The user itself is untouched and can still log in, without the role.
    let mut conn = PgConnection::connect(user_url.as_str()).await.unwrap();
    assert!(
        sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
            "SELECT v FROM {}",
            quote_ident(&f.table).unwrap()
        )))
        .fetch_one(&mut conn)
        .await
        .is_err()
    );
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

    exec(
        &f.pool,
        &format!("DROP ROLE {}", quote_ident(&user).unwrap()),
    )
    .await;
    f.drop().await;
}

#[tokio::test]
async fn bad_configuration_is_fatal_and_outages_are_retryable_without_secrets() {
    let Some(url) = admin_url() else { return };
    let pool = admin_pool(&url).await;
    // A role that does not exist: fatal, and nothing is left behind.
    let missing = format!("jit_test_missing_{}", unique());
    let p = provider(&url, ephemeral(vec![missing.clone()]));
    let id = unique() as i64;
    let err = p.grant(&grant_spec(id, tester(), 600)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!role_exists(&pool, &ephemeral_role_name(RequestId(id))).await);

    // A handle jit never issued is refused, and the role it names is left alone.
    let admin: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    let spec = grant_spec(id, tester(), 600);
    let err = p
        .revoke(&revoke_spec(&spec, &admin, RevokeReason::Early))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(role_exists(&pool, &admin).await);
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
