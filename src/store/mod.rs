//! Storage: every SQL statement of jit lives under this module.
//!
//! SQLite runs in WAL mode with `busy_timeout` and foreign keys, all set on the connect options
//! so that every pooled connection gets them. Transactions that read and then write start with
//! `BEGIN IMMEDIATE` ([`Store::begin_write`]): a deferred transaction that upgrades to a writer
//! can fail with SQLITE_BUSY regardless of the timeout. No write transaction is held across a
//! network call; callers claim, commit, call, and then record.
//!
//! Functions take `&mut SqliteConnection`, so a caller can run several of them inside its own
//! transaction (`&mut *tx`).

pub mod audit;
pub mod credentials;
pub mod deliveries;
pub mod jobs;
pub mod requests;
pub mod tokens;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// The schema, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How hard SQLite works to keep the last commits through a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced.
    Full,
    /// `synchronous=NORMAL` (WAL): an application crash loses nothing, a power loss may lose the
    /// last commits.
    Normal,
}

impl Durability {
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "full" => Some(Durability::Full),
            "normal" => Some(Durability::Normal),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// One writer at a time inside this process. Writers queue here, in order, instead of
    /// polling SQLite's lock in `busy_timeout` steps (which costs milliseconds under load);
    /// other processes (the admin CLI) still meet SQLite's lock and its timeout.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The audit chain's key, once [`Store::open_audit_chain`] checked it against the database.
    /// Write transactions carry it, so audit appends can key their rows.
    audit_key: Arc<std::sync::OnceLock<crate::crypto::AuditKey>>,
    /// The application's clock ([`Store::use_clock`]), which write transactions read once they
    /// hold the write lock ([`WriteTx::now_under_lock`]).
    clock: Arc<StoreClock>,
}

#[derive(Default)]
struct StoreClock(std::sync::OnceLock<crate::clock::SharedClock>);

impl std::fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "StoreClock(set)"
        } else {
            "StoreClock(wall clock)"
        })
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) holding the process's writer turn until it ends.
/// Dereferences to the transaction, so `&mut *tx` is a `&mut SqliteConnection`.
pub struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
    audit_key: Option<crate::crypto::AuditKey>,
    clock: Option<crate::clock::SharedClock>,
}

impl WriteTx {
    /// The time now, read while this transaction holds the database's write lock (it began
    /// with `BEGIN IMMEDIATE`): the application's clock ([`Store::use_clock`]), or the wall
    /// clock when none was given (the admin CLI). No other writer, in this process or another,
    /// can commit between this reading and this transaction's commit.
    pub fn now_under_lock(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock
            .as_ref()
            .map_or_else(chrono::Utc::now, |clock| clock.now())
    }

    /// The audit chain's key (`None` until [`Store::open_audit_chain`] ran).
    pub fn audit_key(&self) -> Option<&crate::crypto::AuditKey> {
        self.audit_key.as_ref()
    }

    /// The connection, for statements run directly.
    pub fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Sqlite>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`).
    pub async fn connect(url: &str, durability: Durability) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("JIT_DATABASE_URL `{url}` is not a SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted rows (erased credentials) are overwritten, not left in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A SQLite connection is a thread in this process; pinging it before every use
            // only adds a round trip to each transaction.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the database at {url}"))?;
        Ok(Store {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            audit_key: Arc::default(),
            clock: Arc::default(),
        })
    }

    /// Opens an existing database for reading only (`jit doctor`): nothing is created,
    /// migrated or written, and a write through this store fails.
    pub async fn open_read_only(url: &str) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("JIT_DATABASE_URL `{url}` is not a SQLite URL"))?
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the database at {url} for reading"))?;
        Ok(Store {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            audit_key: Arc::default(),
            clock: Arc::default(),
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("cannot apply database migrations")
    }

    /// Opens the keyed audit chain (after [`Store::migrate`]): checks `key` against the chain's
    /// boundary, or records the boundary after verifying the rows written before jit keyed its
    /// chain (see [`audit::open_chain`]). Until then, audit appends fail closed.
    pub async fn open_audit_chain(
        &self,
        key: crate::crypto::AuditKey,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<audit::ChainOpened> {
        let mut tx = self.begin_write().await?;
        let opened = audit::open_chain(&mut tx, &key, now).await?;
        tx.commit().await?;
        // A second open with the same store keeps the first key (the one checked first).
        let _ = self.audit_key.set(key);
        Ok(opened)
    }

    /// The clock write transactions read under the write lock (the app's: injected in tests).
    /// Set once, when the app is assembled; later calls change nothing.
    pub fn use_clock(&self, clock: crate::clock::SharedClock) {
        let _ = self.clock.0.set(clock);
    }

    /// Starts a write transaction that holds the write lock from the start.
    pub async fn begin_write(&self) -> sqlx::Result<WriteTx> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx {
            tx,
            _turn: turn,
            audit_key: self.audit_key.get().cloned(),
            clock: self.clock.0.get().cloned(),
        })
    }

    /// A pooled connection for reads.
    pub async fn read(&self) -> sqlx::Result<sqlx::pool::PoolConnection<Sqlite>> {
        self.pool.acquire().await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> sqlx::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The versions of this binary's migrations that the database has not applied (all of them
/// for a database jit never migrated), and the applied versions this binary does not know (a
/// newer jit migrated it).
pub async fn migration_status(
    conn: &mut sqlx::SqliteConnection,
) -> sqlx::Result<(Vec<i64>, Vec<i64>)> {
    let table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let applied: Vec<i64> = match table {
        Some(_) => {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        None => Vec::new(),
    };
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let pending = known
        .iter()
        .copied()
        .filter(|v| !applied.contains(v))
        .collect();
    let unknown = applied.into_iter().filter(|v| !known.contains(v)).collect();
    Ok((pending, unknown))
}

/// The latest time jit wrote down: the last audit event, or the last change to a job. A
/// restarted jit never runs its clock behind it (see [`crate::clock::SystemClock::floored`]).
pub async fn latest_recorded_time(
    conn: &mut sqlx::SqliteConnection,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let audit: Option<String> =
        sqlx::query_scalar("SELECT at FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let jobs: Option<i64> = sqlx::query_scalar("SELECT MAX(updated_at) FROM jobs")
        .fetch_one(&mut *conn)
        .await?;
    let audit = audit.as_deref().map(parse_time).transpose()?;
    Ok(audit.max(jobs.map(from_millis)))
}

/// Timestamps stored as text use one fixed format, so the hash chain and exports are stable.
pub fn format_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("bad timestamp `{text}` in the database"))?
        .with_timezone(&chrono::Utc))
}

/// Unix milliseconds, as used by the job queue.
pub fn millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
