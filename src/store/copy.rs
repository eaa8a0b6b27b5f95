//! `jit db copy`: a stopped SQLite deployment copied into an empty PostgreSQL database, the way
//! from one process on a file to several replicas.
//!
//! **Every table, or nothing.** The tables to copy are read from the SQLite file's own schema and
//! each must be one this copier knows ([`TABLES`]): a table added by a later migration makes the
//! copy refuse until it is added here (a test holds [`TABLES`] to the migrations), so no table is
//! ever left behind without a word. Columns are taken from the schema too, and the two databases
//! must agree on them, so a new column is copied without a change here. Every row goes in one
//! PostgreSQL transaction, which is committed only once the copy checks out:
//! - the row count of each table is the source's;
//! - the audit chain verifies on the copy with the audit key, and ends in the source's head.
//!
//! **Rows as they are.** Values are copied unchanged: audit rows byte for byte (their keyed hashes
//! cover the text), sealed credentials as the same bytes (the associated data is the request id,
//! which is kept), jobs with their `run_at`, attempts, unique keys, lanes and chain order. The one
//! exception is a job left `running` by the stopped process: it goes back to `queued` with its
//! lease cleared, as `jit serve` does at start with the jobs of a dead process (its attempt
//! counter stays, so the next claim fences out nothing that still runs). Ids are kept, and each
//! identity sequence is moved past the highest id the SQLite file ever handed out.
//!
//! **Refusals.** A target that holds any jit row (a second copy, a database a `jit serve` already
//! started on); a source that is not at this jit's schema; a source whose audit chain does not
//! verify under the key (copying it would only move the problem). The CLI also refuses while a
//! `jit serve` holds the file's instance lock.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row, TypeInfo, ValueRef};

use super::audit::{self, Verification};
use super::{Conn, Driver, Durability, Raw, Store, redact_url};
use crate::crypto::AuditKey;

/// Every table jit's migrations create, in the order they are copied: a row's foreign keys
/// point at tables earlier in the list (and `requests.parent_id` at an earlier request).
pub const TABLES: &[&str] = &[
    "requests",
    "approvals",
    "approval_copies",
    "credentials",
    "issued",
    "api_tokens",
    "audit_log",
    "audit_chain_boundary",
    "audit_anchors",
    "jobs",
    "slack_deliveries",
    "slack_pace",
    "webhook_cursors",
];

/// Rows copied into PostgreSQL per statement (PostgreSQL takes at most 65,535 parameters).
const BATCH_PARAMETERS: usize = 30_000;

/// What a copy did, for the summary `jit db copy` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table, in [`TABLES`] order.
    pub tables: Vec<(&'static str, u64)>,
    /// `table.column` and the value its identity sequence was set to (the next id is one more).
    pub sequences: Vec<(String, i64)>,
    /// Jobs the stopped process had left `running`, put back in the queue.
    pub requeued: u64,
    /// The audit chain as verified on the copy.
    pub audit_rows: u64,
    pub audit_head: Option<String>,
}

/// jit's tables in a SQLite database: every table but SQLite's own and sqlx's bookkeeping.
pub async fn sqlite_tables(conn: &mut Conn) -> sqlx::Result<Vec<String>> {
    let Raw::Sqlite(c) = conn.raw() else {
        panic!("sqlite_tables reads a SQLite database");
    };
    sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *c)
    .await
}

/// The tables of `found` this copier does not know.
pub fn unknown_tables(found: &[String]) -> Vec<String> {
    found
        .iter()
        .filter(|t| !TABLES.contains(&t.as_str()))
        .cloned()
        .collect()
}

/// A column's type in the PostgreSQL schema, which decides how a SQLite value is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgType {
    Integer,
    Boolean,
    Text,
    Bytes,
}

impl PgType {
    fn of(data_type: &str) -> Option<PgType> {
        match data_type {
            "bigint" | "integer" | "smallint" => Some(PgType::Integer),
            "boolean" => Some(PgType::Boolean),
            "text" | "character varying" => Some(PgType::Text),
            "bytea" => Some(PgType::Bytes),
            _ => None,
        }
    }
}

/// One SQLite value, by its storage class.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Cell {
    fn class(&self) -> &'static str {
        match self {
            Cell::Null => "NULL",
            Cell::Integer(_) => "an INTEGER",
            Cell::Real(_) => "a REAL",
            Cell::Text(_) => "a TEXT",
            Cell::Blob(_) => "a BLOB",
        }
    }
}

/// A table's columns as both databases see them, in the SQLite file's order.
struct Shape {
    table: &'static str,
    columns: Vec<(String, PgType)>,
    /// The primary key's columns, which order the rows read.
    key: Vec<String>,
}

impl Shape {
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|(name, _)| name == column)
    }
}

/// Copies the SQLite database at `from` into the empty PostgreSQL database at `to` (see the
/// module docs), checking the audit chain on both with `key`. The caller holds the SQLite file's
/// instance lock.
pub async fn copy(from: &str, to: &str, key: &AuditKey) -> anyhow::Result<Copied> {
    if Driver::of_url(from) != Some(Driver::Sqlite) {
        bail!(
            "--from must be the SQLite database jit ran on (sqlite://path/to/jit.db), not `{}`",
            redact_url(from)
        );
    }
    if Driver::of_url(to) != Some(Driver::Postgres) {
        bail!(
            "--to must be a PostgreSQL database (postgres://user@host/database), not `{}`",
            redact_url(to)
        );
    }
    let path = crate::bootstrap::sqlite_path(from)
        .with_context(|| format!("--from {from} is not a file: there is nothing to copy"))?;
    if !path.exists() {
        bail!("--from {}: no such file", path.display());
    }
    let source = Store::open_read_only(from).await?;
    let result = copy_from(&source, &path.display().to_string(), to, key).await;
    source.close().await;
    result
}

async fn copy_from(
    source: &Store,
    label: &str,
    to: &str,
    key: &AuditKey,
) -> anyhow::Result<Copied> {
    let mut src = source.read().await?;
    let (pending, unknown) = super::migration_status(&mut src).await?;
    if !unknown.is_empty() {
        bail!(
            "{label} was migrated by a newer jit (migrations {unknown:?} are unknown to this one): copy it with that jit"
        );
    }
    if pending.len() == super::MIGRATOR.iter().count() {
        bail!("{label} holds no jit tables: it is not a jit database");
    }
    if !pending.is_empty() {
        bail!(
            "{label} was last run by an older jit ({} migration(s) of this one are not applied): run `jit migrate` on it first (JIT_DATABASE_URL=sqlite://{label}), then copy",
            pending.len()
        );
    }
    let found = sqlite_tables(&mut src).await?;
    let unknown = unknown_tables(&found);
    if !unknown.is_empty() {
        bail!(
            "{label} holds table(s) {} that jit db copy does not know, so it would not copy them: refusing to leave rows behind (is this database from another jit version, or was a table added by hand?)",
            unknown.join(", ")
        );
    }
    let missing: Vec<&str> = TABLES
        .iter()
        .copied()
        .filter(|t| !found.iter().any(|f| f == t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{label} lacks table(s) {}: it is not at this jit's schema",
            missing.join(", ")
        );
    }
    let (source_rows, source_head) = match audit::verify(&mut src, key).await? {
        Verification::Intact { rows, head } => (rows, head),
        Verification::Broken { seq, reason, .. } => bail!(
            "the audit chain of {label} does not verify under the audit key (row {seq}: {reason}): nothing was copied. Check JIT_AUDIT_KEY (or JIT_ENCRYPTION_KEY it is derived from) and `jit audit verify` on the source"
        ),
    };
    drop(src);

    let target = Store::connect(to, Durability::Normal).await?;
    let result = async {
        target
            .migrate()
            .await
            .with_context(|| format!("cannot migrate {}", redact_url(to)))?;
        copy_into(source, label, &target, to, key, source_rows, source_head).await
    }
    .await;
    target.close().await;
    result
}

async fn copy_into(
    source: &Store,
    label: &str,
    target: &Store,
    to: &str,
    key: &AuditKey,
    source_rows: u64,
    source_head: Option<String>,
) -> anyhow::Result<Copied> {
    // Holding the write lock: a replica started on the target by mistake waits for the copy.
    let mut tx = target.begin_write().await?;
    let held = row_counts(pg(&mut tx)).await?;
    let nonempty: Vec<String> = TABLES
        .iter()
        .filter_map(|t| {
            held.get(t)
                .filter(|n| **n > 0)
                .map(|n| format!("{t} ({n})"))
        })
        .collect();
    if !nonempty.is_empty() {
        tx.rollback().await?;
        bail!(
            "{} is not empty: it already holds jit rows in {}. jit db copy only copies into an empty database (a second copy, or a jit serve or jit migrate that ran on it, leaves rows): create a new database, or drop and recreate this one, and copy again",
            redact_url(to),
            nonempty.join(", ")
        );
    }

    let mut reader = source.read().await?;
    let Raw::Sqlite(sqlite) = reader.raw() else {
        unreachable!("the source is SQLite")
    };
    // One read transaction: every table is read from the same snapshot.
    let mut snapshot = sqlx::Connection::begin(&mut *sqlite).await?;
    let mut tables = Vec::new();
    let mut requeued = 0;
    for &table in TABLES {
        let shape = shape(&mut snapshot, pg(&mut tx), table, label).await?;
        let (rows, back) = copy_table(&mut snapshot, pg(&mut tx), &shape).await?;
        tables.push((table, rows));
        requeued += back;
    }
    let mut sequences = Vec::new();
    for &table in TABLES {
        sequences.extend(advance_sequences(&mut snapshot, pg(&mut tx), table).await?);
    }

    // The copy checks out, or nothing is committed.
    let copied = row_counts(pg(&mut tx)).await?;
    for (table, rows) in &tables {
        let in_source: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
                .fetch_one(&mut *snapshot)
                .await?;
        let in_target = copied.get(table).copied().unwrap_or(-1);
        if in_source != *rows as i64 || in_target != in_source {
            tx.rollback().await?;
            bail!(
                "{table}: {in_source} rows in {label}, {rows} copied, {in_target} in the target: nothing was committed"
            );
        }
    }
    snapshot.rollback().await?;
    let (audit_rows, audit_head) = match audit::verify(&mut tx, key).await? {
        Verification::Intact { rows, head } => (rows, head),
        Verification::Broken { seq, reason, .. } => {
            tx.rollback().await?;
            bail!(
                "the audit chain does not verify on the copy (row {seq}: {reason}): nothing was committed"
            );
        }
    };
    if audit_rows != source_rows || audit_head != source_head {
        tx.rollback().await?;
        bail!(
            "the copy's audit chain ({audit_rows} rows, head {audit_head:?}) is not the source's ({source_rows} rows, head {source_head:?}): nothing was committed"
        );
    }
    tx.commit().await?;
    Ok(Copied {
        tables,
        sequences,
        requeued,
        audit_rows,
        audit_head,
    })
}

/// The PostgreSQL connection of the target's transaction.
fn pg(conn: &mut Conn) -> &mut PgConnection {
    match conn.raw() {
        Raw::Postgres(c) => c,
        Raw::Sqlite(_) => unreachable!("the target is PostgreSQL"),
    }
}

/// Rows in each of [`TABLES`] in the target.
async fn row_counts(pg: &mut PgConnection) -> sqlx::Result<BTreeMap<&'static str, i64>> {
    let mut counts = BTreeMap::new();
    for &table in TABLES {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
            .fetch_one(&mut *pg)
            .await?;
        counts.insert(table, n);
    }
    Ok(counts)
}

/// `table`'s columns in both databases, which must be the same.
async fn shape(
    sqlite: &mut sqlx::SqliteConnection,
    pg: &mut PgConnection,
    table: &'static str,
    label: &str,
) -> anyhow::Result<Shape> {
    let source: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, pk FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut *sqlite)
            .await?;
    let target: BTreeMap<String, String> = sqlx::query_as::<Postgres, (String, String)>(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind(table)
    .fetch_all(&mut *pg)
    .await?
    .into_iter()
    .collect();
    let in_source: BTreeSet<&str> = source.iter().map(|(n, _)| n.as_str()).collect();
    let in_target: BTreeSet<&str> = target.keys().map(String::as_str).collect();
    if in_source != in_target {
        bail!(
            "{table} has other columns in {label} ({}) than in the target ({}): the two schemas must be the same jit's",
            in_source.into_iter().collect::<Vec<_>>().join(", "),
            in_target.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let mut columns = Vec::new();
    for (name, _) in &source {
        let data_type = &target[name];
        let ty = PgType::of(data_type).with_context(|| {
            format!(
                "{table}.{name} is of type {data_type} in the target, which jit db copy cannot fill"
            )
        })?;
        columns.push((name.clone(), ty));
    }
    let mut key: Vec<(i64, String)> = source
        .into_iter()
        .filter(|(_, pk)| *pk > 0)
        .map(|(n, pk)| (pk, n))
        .collect();
    key.sort();
    Ok(Shape {
        table,
        columns,
        key: key.into_iter().map(|(_, n)| n).collect(),
    })
}

/// Copies every row of `shape.table`, in primary-key order, in batches. Returns the rows copied
/// and how many running jobs went back to the queue.
async fn copy_table(
    sqlite: &mut sqlx::SqliteConnection,
    pg: &mut PgConnection,
    shape: &Shape,
) -> anyhow::Result<(u64, u64)> {
    let table = shape.table;
    let order = if shape.key.is_empty() {
        "rowid".to_owned()
    } else {
        shape
            .key
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let select = format!(
        "SELECT {} FROM \"{table}\" ORDER BY {order}",
        shape.column_list()
    );
    let per_batch = (BATCH_PARAMETERS / shape.columns.len().max(1)).max(1);
    let requeue = (table == "jobs")
        .then(|| Some((shape.position("state")?, shape.position("lease_until")?)))
        .flatten();
    if table == "jobs" && requeue.is_none() {
        bail!("jobs has no state or lease_until column: not this jit's schema");
    }
    let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&mut *sqlite);
    let mut batch: Vec<Vec<Cell>> = Vec::with_capacity(per_batch);
    let (mut copied, mut requeued) = (0u64, 0u64);
    while let Some(row) = rows.try_next().await? {
        let mut cells = Vec::with_capacity(shape.columns.len());
        for i in 0..row.columns().len() {
            cells.push(cell(&row, i)?);
        }
        if let Some((state, lease)) = requeue
            && cells[state] == Cell::Text("running".into())
        {
            cells[state] = Cell::Text("queued".into());
            cells[lease] = Cell::Null;
            requeued += 1;
        }
        batch.push(cells);
        if batch.len() == per_batch {
            copied += insert(pg, shape, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        copied += insert(pg, shape, batch).await?;
    }
    Ok((copied, requeued))
}

fn cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> sqlx::Result<Cell> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let class = raw.type_info().name().to_owned();
    Ok(match class.as_str() {
        "INTEGER" => Cell::Integer(row.try_get_unchecked(i)?),
        "REAL" => Cell::Real(row.try_get_unchecked(i)?),
        "BLOB" => Cell::Blob(row.try_get_unchecked(i)?),
        _ => Cell::Text(row.try_get_unchecked(i)?),
    })
}

async fn insert(pg: &mut PgConnection, shape: &Shape, rows: Vec<Vec<Cell>>) -> anyhow::Result<u64> {
    // Checked before building: a value of the wrong kind is named, with its table and column.
    for row in &rows {
        for ((name, ty), value) in shape.columns.iter().zip(row) {
            let fits = matches!(
                (ty, value),
                (_, Cell::Null)
                    | (PgType::Integer, Cell::Integer(_))
                    | (PgType::Boolean, Cell::Integer(0 | 1))
                    | (PgType::Text, Cell::Text(_))
                    | (PgType::Bytes, Cell::Blob(_))
            );
            if !fits {
                bail!(
                    "{}.{name} holds {} value where PostgreSQL has {ty:?}: not copied (a row written outside jit?)",
                    shape.table,
                    value.class()
                );
            }
        }
    }
    let n = rows.len() as u64;
    let mut query = sqlx::QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO \"{}\" ({}) ",
        shape.table,
        shape.column_list()
    ));
    query.push_values(rows, |mut b, row| {
        for ((_, ty), value) in shape.columns.iter().zip(row) {
            match (ty, value) {
                (PgType::Integer, Cell::Integer(v)) => b.push_bind(v),
                (PgType::Integer, _) => b.push_bind(None::<i64>),
                (PgType::Boolean, Cell::Integer(v)) => b.push_bind(v != 0),
                (PgType::Boolean, _) => b.push_bind(None::<bool>),
                (PgType::Text, Cell::Text(v)) => b.push_bind(v),
                (PgType::Text, _) => b.push_bind(None::<String>),
                (PgType::Bytes, Cell::Blob(v)) => b.push_bind(v),
                (PgType::Bytes, _) => b.push_bind(None::<Vec<u8>>),
            };
        }
    });
    let done = query
        .build()
        .execute(&mut *pg)
        .await
        .with_context(|| format!("cannot copy rows into {}", shape.table))?;
    if done.rows_affected() != n {
        bail!(
            "{}: {} of {n} rows went in",
            shape.table,
            done.rows_affected()
        );
    }
    Ok(n)
}

/// Moves each identity sequence of `table` past the highest id the source ever gave out (its
/// `sqlite_sequence` entry, which also counts rows since deleted, or the highest id copied), so
/// the next row gets a new id and no id is handed out twice.
async fn advance_sequences(
    sqlite: &mut sqlx::SqliteConnection,
    pg: &mut PgConnection,
    table: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
           AND pg_get_serial_sequence(quote_ident($1), column_name) IS NOT NULL \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *pg)
    .await?;
    let handed_out: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
            .bind(table)
            .fetch_optional(&mut *sqlite)
            .await?;
    let mut set = Vec::new();
    for column in columns {
        let max: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT MAX(\"{column}\") FROM \"{table}\""
        )))
        .fetch_one(&mut *pg)
        .await?;
        let last = max.unwrap_or(0).max(handed_out.unwrap_or(0));
        // setval(…, 1, false): the next id is 1 (nothing was handed out yet).
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence(quote_ident($1), $2), GREATEST($3, 1), $3 > 0)",
        )
        .bind(table)
        .bind(&column)
        .bind(last)
        .execute(&mut *pg)
        .await?;
        set.push((format!("{table}.{column}"), last));
    }
    Ok(set)
}
