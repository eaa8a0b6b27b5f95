//! Where a benchmark keeps its data: a fresh SQLite file in a temporary directory, or a fresh
//! schema of its own in the PostgreSQL database that `jit bench --database postgres://…` names.
//! Either is removed when the benchmark ends, so a benchmark never touches existing data.

use std::path::Path;

use anyhow::Context;

use crate::store::{Driver, Durability, Store, redact_url};

/// A benchmark's database, fresh and empty until [`Place::store`] migrates it.
pub enum Place {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        /// The URL the operator gave, without a schema.
        base: String,
        schema: String,
    },
}

impl Place {
    /// A fresh database on the driver of `database` (`None`: SQLite), named after `what`.
    pub async fn fresh(database: Option<&str>, what: &str) -> anyhow::Result<Place> {
        let Some(base) = database else {
            let dir = tempfile::Builder::new()
                .prefix(&format!("jit-bench-{what}-"))
                .tempdir()?;
            return Ok(Place::Sqlite { dir });
        };
        anyhow::ensure!(
            Driver::of_url(base) == Some(Driver::Postgres),
            "--database takes a postgres:// URL (SQLite is always measured, in a temporary file)"
        );
        let schema = format!(
            "jit_bench_{what}_{}_{:06x}",
            chrono::Utc::now().timestamp(),
            rand::random::<u32>() & 0xff_ffff
        );
        let admin = Store::connect(base, Durability::Normal)
            .await
            .with_context(|| format!("cannot reach {}", redact_url(base)))?;
        let created = admin
            .execute_script(&format!("CREATE SCHEMA {schema}"))
            .await;
        admin.close().await;
        created.with_context(|| format!("cannot create schema {schema}"))?;
        Ok(Place::Postgres {
            base: base.to_owned(),
            schema,
        })
    }

    pub fn driver(&self) -> Driver {
        match self {
            Place::Sqlite { .. } => Driver::Sqlite,
            Place::Postgres { .. } => Driver::Postgres,
        }
    }

    /// The name the figures are printed under.
    pub fn name(&self) -> &'static str {
        match self {
            Place::Sqlite { .. } => "SQLite",
            Place::Postgres { .. } => "PostgreSQL",
        }
    }

    /// A directory for the benchmark's other files (the policy, the key).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Place::Sqlite { dir } => Some(dir.path()),
            Place::Postgres { .. } => None,
        }
    }

    /// `JIT_DATABASE_URL` for this database.
    pub fn url(&self) -> String {
        match self {
            Place::Sqlite { dir } => format!("sqlite://{}", dir.path().join("jit.db").display()),
            Place::Postgres { base, schema } => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options=-csearch_path%3D{schema}")
            }
        }
    }

    /// The database connected and migrated.
    pub async fn store(&self, durability: Durability) -> anyhow::Result<Store> {
        let store = Store::connect(&self.url(), durability).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Removes the database: the SQLite directory, or the PostgreSQL schema with everything in it.
    pub async fn remove(self) -> anyhow::Result<()> {
        match self {
            Place::Sqlite { dir } => Ok(dir.close()?),
            Place::Postgres { base, schema } => {
                let admin = Store::connect(&base, Durability::Normal).await?;
                let dropped = admin
                    .execute_script(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await;
                admin.close().await;
                Ok(dropped?)
            }
        }
    }
}

/// The PostgreSQL server's version, for the line that describes the run.
pub async fn postgres_version(url: &str) -> anyhow::Result<String> {
    let store = Store::connect(url, Durability::Normal).await?;
    let mut conn = store.read().await?;
    let version = match conn.raw() {
        crate::store::Raw::Postgres(c) => {
            sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut *c)
                .await?
        }
        crate::store::Raw::Sqlite(_) => unreachable!("connected to a postgres:// URL"),
    };
    drop(conn);
    store.close().await;
    Ok(version)
}
