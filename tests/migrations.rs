//! Migrations stay safe to apply to a database that already has rows.

#[test]
fn added_not_null_columns_have_defaults_and_every_migration_applies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(!names.is_empty());
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

#[tokio::test]
async fn migrations_apply_to_a_database_with_rows_and_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/jit.db", dir.path().display());
    let store = jit::store::Store::connect(&url, jit::store::Durability::Normal)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(applied as usize, jit::store::MIGRATOR.iter().count());
}
