//! A fresh database for one test, on either driver: a SQLite file in a temporary directory, or a
//! schema of its own in the PostgreSQL that `JIT_TEST_POSTGRES_URL` names (so tests run in
//! parallel). Included by the test binaries that need it (`#[path]`).
//!
//! PostgreSQL tests are compiled as ignored unless `JIT_TEST_POSTGRES_URL` was set when they were
//! built (see `build.rs`), so `cargo test` says "ignored, needs JIT_TEST_POSTGRES_URL" instead of
//! passing a test that checked nothing; when it is set and the server cannot be reached, they fail.

#![allow(dead_code)]

use std::path::PathBuf;

use jit::store::{Driver, Durability, Store};

/// The PostgreSQL server the tests use, or a panic that says how to set it.
pub fn postgres_url() -> String {
    match std::env::var("JIT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "this test needs a PostgreSQL: set JIT_TEST_POSTGRES_URL (for example postgres://postgres@127.0.0.1:5432/test) and build the tests again"
        ),
    }
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        base: String,
        schema: String,
    },
}

impl TestDb {
    pub async fn new(driver: Driver) -> TestDb {
        match driver {
            Driver::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("jit.db");
                TestDb::Sqlite { _dir: dir, path }
            }
            Driver::Postgres => {
                let base = postgres_url();
                let schema = format!(
                    "jit_t_{}_{:08x}",
                    chrono::Utc::now().timestamp(),
                    rand::random::<u32>()
                );
                let admin = Store::connect(&base, Durability::Normal)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "JIT_TEST_POSTGRES_URL is set but PostgreSQL cannot be reached: {e:#}"
                        )
                    });
                sweep_old_schemas(&admin).await;
                admin
                    .execute_script(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .unwrap();
                admin.close().await;
                TestDb::Postgres { base, schema }
            }
        }
    }

    pub fn driver(&self) -> Driver {
        match self {
            TestDb::Sqlite { .. } => Driver::Sqlite,
            TestDb::Postgres { .. } => Driver::Postgres,
        }
    }

    /// `JIT_DATABASE_URL` for this database.
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDb::Postgres { base, schema } => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options=-csearch_path%3D{schema}")
            }
        }
    }

    /// The SQLite file (SQLite only).
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            TestDb::Sqlite { path, .. } => Some(path),
            TestDb::Postgres { .. } => None,
        }
    }

    /// A connected store, not migrated.
    pub async fn connect(&self) -> Store {
        Store::connect(&self.url(), Durability::Normal)
            .await
            .unwrap()
    }

    /// A connected and migrated store.
    pub async fn store(&self) -> Store {
        let store = self.connect().await;
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for TestDb {
    /// A passing test's PostgreSQL schema goes with it; a failing test's stays for a look (and
    /// is swept a few hours later).
    fn drop(&mut self) {
        let TestDb::Postgres { base, schema } = self else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        let (base, schema) = (base.clone(), schema.clone());
        // A thread of its own: Drop cannot await, and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = Store::connect(&base, Durability::Normal).await {
                    let _ = admin
                        .execute_script(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Test schemas are left behind when a test fails; those older than a few hours go.
async fn sweep_old_schemas(admin: &Store) {
    let cutoff = chrono::Utc::now().timestamp() - 3 * 3600;
    let mut conn = admin.read().await.unwrap();
    let names: Vec<String> = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'jit\\_t\\_%'"
    )
    .fetch_all(&mut *c)
    .await)
    .unwrap_or_default();
    drop(conn);
    for name in names {
        let stamp: Option<i64> = name
            .strip_prefix("jit_t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse().ok());
        if stamp.is_some_and(|s| s < cutoff) {
            let _ = admin
                .execute_script(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}

/// Declares each test once and runs it on both drivers: `name::sqlite` and `name::postgres`
/// (ignored unless `JIT_TEST_POSTGRES_URL` was set at build time). The body reads the driver
/// from [`driver`], which the harness and [`TestDb::current`] use.
#[macro_export]
macro_rules! driver_tests {
    ($( $(#[doc = $doc:literal])* $(#[cfg_attr($($when:tt)*)])* $(#[tokio::test $($args:tt)*])? async fn $name:ident() $body:block )*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                // The body is expanded in each test (not shared as one function), so insta
                // names each variant's snapshots after it and sees no duplicate assertion.
                #[tokio::test $($($args)*)?]
                $(#[cfg_attr($($when)*)])*
                async fn sqlite() {
                    $crate::db::DRIVER.scope(jit::store::Driver::Sqlite, async $body).await
                }

                #[tokio::test $($($args)*)?]
                #[cfg_attr(not(jit_postgres_tests), ignore = "needs JIT_TEST_POSTGRES_URL at build time")]
                $(#[cfg_attr($($when)*)])*
                async fn postgres() {
                    $crate::db::DRIVER.scope(jit::store::Driver::Postgres, async $body).await
                }
            }
        )*
    };
}

tokio::task_local! {
    /// The driver the running test was declared for (see [`driver_tests!`]).
    pub static DRIVER: Driver;
}

/// The driver of the running test: SQLite outside [`driver_tests!`].
pub fn driver() -> Driver {
    DRIVER.try_with(|d| *d).unwrap_or(Driver::Sqlite)
}

impl TestDb {
    /// A fresh database on the running test's driver.
    pub async fn current() -> TestDb {
        TestDb::new(driver()).await
    }
}
