//! Storage: every SQL statement of jit lives under this module.
//!
//! **Two drivers, one seam.** `JIT_DATABASE_URL` chooses the driver by its scheme: SQLite
//! (`sqlite://…`, the embedded default) or PostgreSQL (`postgres://…`, for several replicas).
//! Everything outside `store/` holds a [`Store`] and passes a [`Conn`] (a pooled connection or a
//! [`WriteTx`]) to the functions of this module's files; none of it knows which driver runs. Inside,
//! [`on!`] compiles a statement once per driver, so a statement that both dialects accept (both
//! take `$1` placeholders and `RETURNING`) is written once; where they differ, the two statements
//! stand side by side in the same function. Migrations live in one folder per driver
//! (`migrations/sqlite`, `migrations/postgres`), kept in step: the same versions, the same tables
//! and columns (`tests/migrations.rs` checks both). One suite (`store::suite`, run by
//! `tests/store_suite.rs`) holds every driver to the same behaviour, the way River's
//! `riverdrivertest` does.
//!
//! **One writer at a time, on both drivers.** Transactions that write start with
//! [`Store::begin_write`], which holds the write lock from the first statement to the commit:
//! - SQLite: `BEGIN IMMEDIATE` (a deferred transaction that upgrades to a writer can fail with
//!   SQLITE_BUSY regardless of `busy_timeout`), and an in-process queue so writers wait in order.
//! - PostgreSQL: `pg_advisory_xact_lock` on one key, so writers of every replica take turns just
//!   as processes do on one SQLite file. Every read-then-write in this module (the audit chain's
//!   head, a chain's next head, the per-requester pending cap) is then as safe on PostgreSQL as on
//!   SQLite, with no isolation level to reason about; the lock is released by the commit, the
//!   rollback, or the death of the connection (a replica killed mid-transaction).
//!
//! No write transaction is held across a network call: callers claim, commit, call, and record.
//!
//! SQLite runs in WAL mode with `busy_timeout` and foreign keys, all set on the connect options so
//! that every pooled connection gets them.

pub mod audit;
pub mod batch;
pub mod copy;
pub mod credentials;
pub mod deliveries;
pub mod jobs;
pub mod pace;
pub mod requests;
pub mod tokens;
pub mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

/// The SQLite schema, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The PostgreSQL schema, in step with [`MIGRATOR`].
pub static PG_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock every PostgreSQL write transaction holds (see the module docs): "jit" and
/// a version, so it cannot collide with a lock another application on the database chose.
const PG_WRITE_LOCK: i64 = 0x6a69_7400_0000_0001;

/// The channel `LISTEN`ed on by every replica: a commit that may have made work wakes them.
pub const PG_WAKE_CHANNEL: &str = "jit_wake";

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Sqlite,
    Postgres,
}

impl Driver {
    /// The driver a `JIT_DATABASE_URL` names, by its scheme.
    pub fn of_url(url: &str) -> Option<Driver> {
        if url.starts_with("sqlite:") {
            Some(Driver::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Driver::Postgres)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Driver::Sqlite => "sqlite",
            Driver::Postgres => "postgres",
        }
    }
}

/// How hard SQLite works to keep the last commits through a power loss. (PostgreSQL's own
/// `synchronous_commit` setting governs it there.)
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

/// Pushes the binds of an `IN (…)` list, `$1, $2, …`, between the parentheses the caller wrote.
pub(crate) fn push_list<'t, DB, T>(
    query: &mut sqlx::QueryBuilder<DB>,
    values: impl IntoIterator<Item = T>,
) where
    DB: sqlx::Database,
    T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// One writer at a time inside this process. Writers queue here, in order, instead of
    /// polling the database's lock (SQLite's `busy_timeout` steps cost milliseconds under load,
    /// and on PostgreSQL a queue of connections parked on the advisory lock would empty the
    /// pool); other processes meet the database's own lock.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// SQLite: the one connection every write transaction of this process runs on. SQLite
    /// discards a connection's page cache whenever another connection wrote since its last
    /// transaction, so writes spread over a pool each start cold and read their pages again;
    /// on one connection they find them cached, with their prepared statements.
    sqlite_writes: Option<SqlitePool>,
    /// The audit chain's key, once [`Store::open_audit_chain`] checked it against the database.
    /// Write transactions carry it, so audit appends can key their rows.
    audit_key: Arc<std::sync::OnceLock<crate::crypto::AuditKey>>,
    /// The application's clock ([`Store::use_clock`]), which write transactions read once they
    /// hold the write lock ([`WriteTx::now_under_lock`]).
    clock: Arc<StoreClock>,
    /// This process's liveness lock on PostgreSQL ([`Store::hold_liveness`]).
    liveness: Arc<Liveness>,
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

/// A connection of either driver, for the functions of this module: a pooled connection (reads,
/// and statements that stand alone) or an open transaction (inside a [`WriteTx`]).
pub enum Conn {
    Sqlite(SqliteHold),
    Postgres(PgHold),
}

#[doc(hidden)]
pub enum SqliteHold {
    Pooled(PoolConnection<Sqlite>),
    Tx(Transaction<'static, Sqlite>),
}

#[doc(hidden)]
pub enum PgHold {
    Pooled(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
}

/// The driver's own connection inside a [`Conn`], for [`on!`].
#[doc(hidden)]
pub enum Raw<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl From<PoolConnection<Sqlite>> for Conn {
    fn from(conn: PoolConnection<Sqlite>) -> Conn {
        Conn::Sqlite(SqliteHold::Pooled(conn))
    }
}

impl From<PoolConnection<Postgres>> for Conn {
    fn from(conn: PoolConnection<Postgres>) -> Conn {
        Conn::Postgres(PgHold::Pooled(conn))
    }
}

impl Conn {
    pub fn driver(&self) -> Driver {
        match self {
            Conn::Sqlite(_) => Driver::Sqlite,
            Conn::Postgres(_) => Driver::Postgres,
        }
    }

    #[doc(hidden)]
    pub fn raw(&mut self) -> Raw<'_> {
        match self {
            Conn::Sqlite(SqliteHold::Pooled(c)) => Raw::Sqlite(c),
            Conn::Sqlite(SqliteHold::Tx(t)) => Raw::Sqlite(t),
            Conn::Postgres(PgHold::Pooled(c)) => Raw::Postgres(c),
            Conn::Postgres(PgHold::Tx(t)) => Raw::Postgres(t),
        }
    }
}

/// Which driver a `sqlx::Database` type is, for [`on!`] bodies whose statement differs by dialect.
pub trait Dialect {
    const DRIVER: Driver;
}

impl Dialect for Sqlite {
    const DRIVER: Driver = Driver::Sqlite;
}

impl Dialect for Postgres {
    const DRIVER: Driver = Driver::Postgres;
}

impl Driver {
    pub fn of<DB: Dialect>() -> Driver {
        DB::DRIVER
    }
}

/// Runs `$body` with `$c` bound to the driver's own connection (`&mut SqliteConnection` or
/// `&mut PgConnection`) and `$db` to its `sqlx::Database` type. The body is compiled once per
/// driver, so the binds are checked against both.
#[macro_export]
#[doc(hidden)]
macro_rules! __store_on {
    ($conn:expr, |$c:ident, $db:ident| $body:expr) => {
        match $crate::store::Conn::raw($conn) {
            $crate::store::Raw::Sqlite($c) => {
                #[allow(dead_code)]
                type $db = ::sqlx::Sqlite;
                $body
            }
            $crate::store::Raw::Postgres($c) => {
                #[allow(dead_code)]
                type $db = ::sqlx::Postgres;
                $body
            }
        }
    };
    ($conn:expr, |$c:ident| $body:expr) => {
        $crate::__store_on!($conn, |$c, _Db| $body)
    };
}
pub use crate::__store_on as on;

/// A write transaction holding the write lock (see the module docs) until it ends.
/// Dereferences to a [`Conn`], so `&mut tx` goes wherever a `&mut Conn` does.
pub struct WriteTx {
    conn: Conn,
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

    pub async fn commit(self) -> sqlx::Result<()> {
        match self.conn {
            Conn::Sqlite(SqliteHold::Tx(tx)) => tx.commit().await,
            Conn::Postgres(PgHold::Tx(mut tx)) => {
                // Delivered to every listening replica at commit, and only if it commits.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(PG_WAKE_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            _ => unreachable!("a WriteTx always holds a transaction"),
        }
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        match self.conn {
            Conn::Sqlite(SqliteHold::Tx(tx)) => tx.rollback().await,
            Conn::Postgres(PgHold::Tx(tx)) => tx.rollback().await,
            _ => unreachable!("a WriteTx always holds a transaction"),
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// The first key of every replica's liveness lock (`pg_advisory_lock(LIVENESS_LOCK_CLASS,
/// holder)`); the second is the replica's holder key, recorded on the jobs it claims.
pub const LIVENESS_LOCK_CLASS: i32 = 1_785_295_220;

/// How often the liveness connection is checked.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Liveness {
    holder: i64,
    held: std::sync::atomic::AtomicBool,
}

/// Keeps [`Store::hold_liveness`]'s lock held; dropping it releases the lock.
pub struct LivenessGuard {
    task: tokio::task::JoinHandle<()>,
    liveness: Arc<Liveness>,
}

impl Drop for LivenessGuard {
    fn drop(&mut self) {
        self.liveness
            .held
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // The task's connection goes with it, and PostgreSQL releases the lock.
        self.task.abort();
    }
}

/// Takes the liveness lock on a connection of its own and keeps it until that connection fails.
async fn hold_liveness_once(options: &PgConnectOptions, liveness: &Liveness) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let holder = i32::try_from(liveness.holder).expect("holder keys are below 2^31");
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LIVENESS_LOCK_CLASS)
        .bind(holder)
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(
        taken,
        "another session holds this replica's liveness key {holder}"
    );
    liveness
        .held
        .store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        tokio::time::sleep(LIVENESS_CHECK).await;
        conn.ping().await?;
    }
}

/// Connections a PostgreSQL store keeps: the request path's group commit, the worker's claims
/// and outcomes, reads, and the `LISTEN` connection.
const PG_MAX_CONNECTIONS: u32 = 10;

/// How many times SQLite has re-prepared the statements cached on this connection since each
/// was prepared (`SQLITE_STMTSTATUS_REPREPARE`, summed); `None` on PostgreSQL. With
/// [`Store::stable_plans`] in force it stays 0 however the statements' parameters are bound.
pub async fn reprepared(conn: &mut Conn) -> sqlx::Result<Option<u64>> {
    let Raw::Sqlite(c) = conn.raw() else {
        return Ok(None);
    };
    let mut handle = c.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let mut total = 0u64;
    // SAFETY: `db` is held exclusively through the lock while the connection's statements are
    // walked; `sqlite3_next_stmt` and `sqlite3_stmt_status` only read them.
    unsafe {
        let mut stmt = libsqlite3_sys::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            let n = libsqlite3_sys::sqlite3_stmt_status(
                stmt,
                libsqlite3_sys::SQLITE_STMTSTATUS_REPREPARE,
                0,
            );
            total += u64::try_from(n).unwrap_or(0);
            stmt = libsqlite3_sys::sqlite3_next_stmt(db, stmt);
        }
    }
    Ok(Some(total))
}

impl Store {
    /// Opens the database at `url`: `sqlite://path` (created if needed), `sqlite::memory:`, or
    /// `postgres://…` (the database must exist; [`Store::migrate`] creates the tables).
    pub async fn connect(url: &str, durability: Durability) -> anyhow::Result<Store> {
        match Driver::of_url(url) {
            Some(Driver::Sqlite) => Self::connect_sqlite(url, durability).await,
            Some(Driver::Postgres) => Self::connect_postgres(pg_options(url)?).await,
            None => anyhow::bail!(
                "JIT_DATABASE_URL must start with sqlite: (for example sqlite://jit.db) or postgres:// (for example postgres://jit@db.internal/jit), not `{}`",
                redact_url(url)
            ),
        }
    }

    async fn connect_sqlite(url: &str, durability: Durability) -> anyhow::Result<Store> {
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
            .pragma("secure_delete", "ON")
            // Statement journals (the page images SQLite keeps to undo one statement of a
            // transaction, such as a batch's multi-row INSERT) and other temporary data stay in
            // memory: no temporary file per batch, and no copy of a page on disk outside the
            // database and its WAL.
            .pragma("temp_store", "MEMORY");
        let pool_of = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .min_connections(1)
                // A SQLite connection is a thread in this process; pinging it before every use
                // only adds a round trip to each transaction.
                .test_before_acquire(false)
                .after_connect(|conn, _| Box::pin(Self::stable_plans(conn)))
                .connect_with(options.clone())
        };
        let pool = pool_of(7)
            .await
            .with_context(|| format!("cannot open the database at {url}"))?;
        let writes = pool_of(1)
            .await
            .with_context(|| format!("cannot open the database at {url}"))?;
        let mut store = Self::with_pool(Pool::Sqlite(pool));
        store.sqlite_writes = Some(writes);
        Ok(store)
    }

    /// Turns on SQLite's query planner stability guarantee (`SQLITE_DBCONFIG_ENABLE_QPSG`) for a
    /// connection. Without it, SQLite lets the values bound to a statement shape its plan (a
    /// `LIMIT $3`, a parameter compared with a partial index's condition), marks the prepared
    /// statement expired whenever such a parameter is bound again, and parses and plans it anew on
    /// the next step: every claim of the queue was a full re-prepare. jit's statements name their
    /// states and kinds as literals where a plan depends on them, so a plan built without the bound
    /// values is the same plan, and the statement cache works as meant.
    async fn stable_plans(conn: &mut SqliteConnection) -> sqlx::Result<()> {
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        let mut now_on: std::os::raw::c_int = 0;
        // SAFETY: `db` is this connection's open handle, held exclusively through the lock for the
        // duration of the call; the arguments match the documented signature of this option (an
        // int, then a pointer to an int that receives the new setting).
        let rc = unsafe {
            libsqlite3_sys::sqlite3_db_config(
                db,
                libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
                1 as std::os::raw::c_int,
                &mut now_on as *mut std::os::raw::c_int,
            )
        };
        if rc != libsqlite3_sys::SQLITE_OK || now_on != 1 {
            return Err(sqlx::Error::Configuration(
                format!("SQLite refused the query planner stability guarantee (code {rc})").into(),
            ));
        }
        Ok(())
    }

    /// Opens a PostgreSQL store with `options` (tests pass their own schema this way).
    pub async fn connect_postgres(options: PgConnectOptions) -> anyhow::Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {}:{} (database {})",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("(default)")
                )
            })?;
        Ok(Self::with_pool(Pool::Postgres(pool)))
    }

    fn with_pool(pool: Pool) -> Store {
        Store {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            sqlite_writes: None,
            audit_key: Arc::default(),
            clock: Arc::default(),
            liveness: Arc::new(Liveness {
                holder: i64::from(rand::random::<u32>() >> 1).max(1),
                held: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// PostgreSQL: holds this process's liveness lock, a session advisory lock
    /// (`pg_advisory_lock(LIVENESS_LOCK_CLASS, holder)`) on a connection of its own, until the
    /// returned guard is dropped. Jobs this process claims while it holds the lock carry its
    /// holder key; when the process dies, PostgreSQL ends its session and releases the lock, and
    /// the other replicas take those jobs over at their next look (within a second) instead of
    /// waiting out the lease. A lost connection is opened again; meanwhile claims fall back to
    /// the lease alone. `None` on SQLite, where one process serves the file.
    pub fn hold_liveness(&self) -> Option<LivenessGuard> {
        let Pool::Postgres(pool) = &self.pool else {
            return None;
        };
        let options = pool.connect_options();
        let liveness = self.liveness.clone();
        let task = tokio::spawn(async move {
            loop {
                match hold_liveness_once(&options, &liveness).await {
                    Ok(()) => {}
                    Err(err) => tracing::warn!(
                        error = format!("{err:#}"),
                        "lost this replica's liveness lock; other replicas may take its running jobs over; taking it again"
                    ),
                }
                liveness
                    .held
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(LivenessGuard {
            task,
            liveness: self.liveness.clone(),
        })
    }

    /// The holder key claims carry: `Some` while this process holds its liveness lock.
    pub fn holder(&self) -> Option<i64> {
        self.liveness
            .held
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(self.liveness.holder)
    }

    /// Opens an existing database for reading only (`jit doctor`): nothing is created,
    /// migrated or written, and a write through this store fails.
    pub async fn open_read_only(url: &str) -> anyhow::Result<Store> {
        match Driver::of_url(url) {
            Some(Driver::Sqlite) => {
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
                Ok(Self::with_pool(Pool::Sqlite(pool)))
            }
            Some(Driver::Postgres) => {
                let options = pg_options(url)?.options([("default_transaction_read_only", "on")]);
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot connect to PostgreSQL at {} for reading",
                            redact_url(url)
                        )
                    })?;
                Ok(Self::with_pool(Pool::Postgres(pool)))
            }
            None => anyhow::bail!(
                "JIT_DATABASE_URL must start with sqlite: or postgres://, not `{}`",
                redact_url(url)
            ),
        }
    }

    pub fn driver(&self) -> Driver {
        match self.pool {
            Pool::Sqlite(_) => Driver::Sqlite,
            Pool::Postgres(_) => Driver::Postgres,
        }
    }

    /// The migrations of this store's driver.
    pub fn migrator(&self) -> &'static Migrator {
        match self.driver() {
            Driver::Sqlite => &MIGRATOR,
            Driver::Postgres => &PG_MIGRATOR,
        }
    }

    /// Applies pending migrations. On PostgreSQL, replicas starting together take turns (sqlx
    /// holds an advisory lock while it migrates).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => MIGRATOR.run(pool).await,
            Pool::Postgres(pool) => PG_MIGRATOR.run(pool).await,
        }
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
        let conn = match &self.pool {
            Pool::Sqlite(pool) => {
                let pool = self.sqlite_writes.as_ref().unwrap_or(pool);
                Conn::Sqlite(SqliteHold::Tx(pool.begin_with("BEGIN IMMEDIATE").await?))
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Conn::Postgres(PgHold::Tx(tx))
            }
        };
        Ok(WriteTx {
            conn,
            _turn: turn,
            audit_key: self.audit_key.get().cloned(),
            clock: self.clock.0.get().cloned(),
        })
    }

    /// A pooled connection for reads.
    pub async fn read(&self) -> sqlx::Result<Conn> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => Conn::Sqlite(SqliteHold::Pooled(pool.acquire().await?)),
            Pool::Postgres(pool) => Conn::Postgres(PgHold::Pooled(pool.acquire().await?)),
        })
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> sqlx::Result<()> {
        let mut conn = self.read().await?;
        on!(&mut conn, |c| sqlx::query("SELECT 1")
            .execute(&mut *c)
            .await
            .map(|_| ()))
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => {
                if let Some(writes) = &self.sqlite_writes {
                    writes.close().await;
                }
                pool.close().await
            }
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// A listener for [`PG_WAKE_CHANNEL`] on PostgreSQL (`None` on SQLite, where one process
    /// writes and wakes itself).
    pub async fn wake_listener(&self) -> sqlx::Result<Option<sqlx::postgres::PgListener>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(pool) => {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(PG_WAKE_CHANNEL).await?;
                Ok(Some(listener))
            }
        }
    }

    /// Runs `sql` (several statements, no parameters) outside any transaction: for tests and
    /// benchmarks that set up or tamper with a database on purpose.
    pub async fn execute_script(&self, sql: &str) -> sqlx::Result<()> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
            Pool::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
        }
    }
}

/// Single-row INSERT+COMMIT per second on `store`'s database for `for_how_long`: the floor the
/// queue's figures are compared with (`jit bench queue`). Uses a table of its own.
pub async fn raw_commit_rate(store: &Store, for_how_long: Duration) -> sqlx::Result<f64> {
    let mut conn = store.read().await?;
    match conn.raw() {
        Raw::Sqlite(c) => sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)",
        )
        .execute(&mut *c)
        .await
        .map(|_| ())?,
        Raw::Postgres(c) => sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_raw (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, payload TEXT NOT NULL)",
        )
        .execute(&mut *c)
        .await
        .map(|_| ())?,
    }
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < for_how_long {
        on!(&mut conn, |c| sqlx::query(
            "INSERT INTO bench_raw (payload) VALUES ($1)"
        )
        .bind("{\"kind\":\"noop\"}")
        .execute(&mut *c)
        .await
        .map(|_| ()))?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// PostgreSQL connect options from a URL; `?options=-c search_path=…` selects a schema.
pub fn pg_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).with_context(|| {
        format!(
            "JIT_DATABASE_URL `{}` is not a PostgreSQL URL",
            redact_url(url)
        )
    })
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The versions of this binary's migrations that the database has not applied (all of them
/// for a database jit never migrated), and the applied versions this binary does not know (a
/// newer jit migrated it).
pub async fn migration_status(conn: &mut Conn) -> sqlx::Result<(Vec<i64>, Vec<i64>)> {
    let (migrator, table): (&Migrator, Option<String>) = match conn.raw() {
        Raw::Sqlite(c) => (
            &MIGRATOR,
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_optional(&mut *c)
            .await?,
        ),
        Raw::Postgres(c) => (
            &PG_MIGRATOR,
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&mut *c)
                .await?,
        ),
    };
    let applied: Vec<i64> = match table {
        Some(_) => on!(conn, |c| sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version"
        )
        .fetch_all(&mut *c)
        .await)?,
        None => Vec::new(),
    };
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
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
    conn: &mut Conn,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let audit: Option<String> = on!(conn, |c| sqlx::query_scalar(
        "SELECT at FROM audit_log ORDER BY seq DESC LIMIT 1"
    )
    .fetch_optional(&mut *c)
    .await)?;
    let jobs: Option<i64> = on!(conn, |c| sqlx::query_scalar(
        "SELECT MAX(updated_at) FROM jobs"
    )
    .fetch_one(&mut *c)
    .await)?;
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
