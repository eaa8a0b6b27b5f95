//! Migrations stay safe to apply to a database that already has rows, and the two drivers'
//! migrations stay in step: the same versions, and the same tables and columns once applied.

#[macro_use]
#[path = "support/db.rs"]
mod db;

use std::collections::BTreeMap;

use jit::store::{Driver, MIGRATOR, PG_MIGRATOR};

fn migration_files(driver: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(driver);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

#[test]
fn added_not_null_columns_have_defaults() {
    for driver in ["sqlite", "postgres"] {
        let names = migration_files(driver);
        assert!(!names.is_empty(), "no migrations for {driver}");
        for path in &names {
            let sql = std::fs::read_to_string(path).unwrap().to_uppercase();
            for statement in sql.split(';') {
                let flat = statement.split_whitespace().collect::<Vec<_>>().join(" ");
                if flat.contains("ADD COLUMN") && flat.contains("NOT NULL") {
                    assert!(
                        flat.contains("DEFAULT"),
                        "{}: a NOT NULL column added to an existing table needs a DEFAULT: {flat}",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Every migration exists for both drivers, under the same version and name.
#[test]
fn both_drivers_have_the_same_migrations() {
    let names = |d: &str| -> Vec<String> {
        migration_files(d)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names("sqlite"), names("postgres"));
    let versions = |m: &sqlx::migrate::Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
    assert_eq!(versions(&MIGRATOR), versions(&PG_MIGRATOR));
}

/// Each table's columns, as the database reports them after every migration ran.
async fn schema(store: &jit::store::Store) -> BTreeMap<String, Vec<String>> {
    let mut conn = store.read().await.unwrap();
    let rows: Vec<(String, String)> = match store.driver() {
        Driver::Sqlite => jit::store::on!(&mut conn, |c| sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'"
        )
        .fetch_all(&mut *c)
        .await)
        .unwrap(),
        Driver::Postgres => jit::store::on!(&mut conn, |c| sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
        )
        .fetch_all(&mut *c)
        .await)
        .unwrap(),
    };
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, column) in rows {
        tables.entry(table).or_default().push(column);
    }
    for columns in tables.values_mut() {
        columns.sort();
    }
    tables
}

#[tokio::test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn both_drivers_end_with_the_same_tables_and_columns() {
    let sqlite = db::TestDb::new(Driver::Sqlite).await;
    let postgres = db::TestDb::new(Driver::Postgres).await;
    let (a, b) = (
        schema(&sqlite.store().await).await,
        schema(&postgres.store().await).await,
    );
    assert!(
        a.contains_key("jobs") && a.contains_key("audit_log"),
        "{a:?}"
    );
    assert_eq!(
        a, b,
        "the SQLite schema (left) and the PostgreSQL schema (right) differ"
    );
}

driver_tests! {
    async fn migrations_apply_twice_and_record_every_version() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        store.migrate().await.unwrap();
        let mut conn = store.read().await.unwrap();
        let (pending, unknown) = jit::store::migration_status(&mut conn).await.unwrap();
        assert!(pending.is_empty() && unknown.is_empty(), "{pending:?} {unknown:?}");
        let applied: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(applied as usize, store.migrator().iter().count());
    }
}
