//! `jit bench` modes that broke silently once run end to end here, so they cannot again. They
//! assert outcomes only, never a timing.
//!
//! - `flood` sent its slash commands from a workspace jit does not serve, for people jit did not
//!   know, so every request was refused: a small flood through the real binary, both layouts;
//!   every request is accepted and the new request's approval message is posted.
//! - `footprint` restarted jit on its database with a new encryption key each time, which jit
//!   (rightly) refuses, since the audit chain is keyed from it: two starts on one database.
//! - `--database postgres://…` runs `ack` (replicas), `queue` and `teardown` on SQLite and on
//!   PostgreSQL and prints both side by side; each run leaves no schema behind.

use std::process::Command;

#[test]
fn the_flood_benchmark_gets_its_new_request_accepted_and_its_approval_message_posted() {
    let out = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args([
            "bench",
            "--durability",
            "normal",
            "flood",
            "--users",
            "2",
            "--requests",
            "2",
            "--max-pending",
            "10",
            "--timeout",
            "120",
        ])
        .env_remove("SLACK_APP_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "jit bench flood failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for layout in [
        "approvers in their own channel",
        "approvers in the audit channel",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(layout))
            .unwrap_or_else(|| panic!("no line for {layout}:\n{stdout}"));
        assert!(
            line.contains(
                "flood requests accepted 4, refused by the pending cap 0, refused otherwise 0"
            ),
            "every flood request is accepted: {line}"
        );
    }
    let posted: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("new request's approval message"))
        .collect();
    assert_eq!(posted.len(), 2, "one figure per layout:\n{stdout}");
    for line in posted {
        assert!(
            !line.contains("not posted"),
            "the new request's approval message was posted: {line}"
        );
    }
}

#[test]
fn the_footprint_benchmark_restarts_jit_on_its_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args([
            "bench",
            "--durability",
            "normal",
            "footprint",
            "--starts",
            "2",
            "--idle",
            "1",
        ])
        .env_remove("SLACK_APP_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "jit bench footprint failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("start to ready          median"),
        "{stdout}"
    );
}

/// `jit bench … --database $JIT_TEST_POSTGRES_URL {args}`: its output, after checking it passed.
fn bench_on_postgres(args: &[&str]) -> String {
    let url = std::env::var("JIT_TEST_POSTGRES_URL")
        .expect("JIT_TEST_POSTGRES_URL is set when the PostgreSQL tests are built");
    let out = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["bench", "--durability", "normal", "--database", &url])
        .args(args)
        .env_remove("SLACK_APP_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "jit bench {args:?} --database failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("· PostgreSQL "),
        "the run names the PostgreSQL server:\n{stdout}"
    );
    stdout
}

/// The row of the side-by-side table for `figure`: its SQLite and PostgreSQL values.
fn side_by_side(stdout: &str, figure: &str) -> (String, String) {
    let table = stdout
        .split("side by side")
        .nth(1)
        .unwrap_or_else(|| panic!("no side-by-side table:\n{stdout}"));
    let header = table.lines().nth(1).unwrap_or("");
    assert!(
        header.contains("SQLite") && header.contains("PostgreSQL"),
        "both databases head the table: {header}"
    );
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(figure))
        .unwrap_or_else(|| panic!("no `{figure}` row:\n{table}"));
    let values = row.trim_start()[figure.len()..].trim();
    let (sqlite, postgres) = values
        .rsplit_once("  ")
        .unwrap_or_else(|| panic!("two values in `{row}`"));
    (sqlite.trim().to_owned(), postgres.trim().to_owned())
}

/// The leading number of a figure such as `1234 jobs/s` or `0`.
fn number(value: &str) -> f64 {
    value
        .split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("`{value}` is not a figure"))
}

/// The benchmark schemas left in the PostgreSQL database, by the prefix of their names.
fn bench_schemas(prefix: &str) -> Vec<String> {
    let url = std::env::var("JIT_TEST_POSTGRES_URL").unwrap();
    let out = Command::new("psql")
        .args([
            &url,
            "-Atc",
            &format!("SELECT nspname FROM pg_namespace WHERE nspname LIKE '{prefix}%'"),
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
fn the_queue_benchmark_runs_on_postgres_beside_sqlite_and_drops_its_schema() {
    let stdout = bench_on_postgres(&["queue", "--jobs", "300", "--seconds", "1", "--workers", "4"]);
    assert!(stdout.contains("queue on SQLite:"), "{stdout}");
    assert!(stdout.contains("queue on PostgreSQL:"), "{stdout}");
    let (sqlite, postgres) = side_by_side(&stdout, "queue claim+complete");
    assert!(
        number(&sqlite) > 0.0 && number(&postgres) > 0.0,
        "{sqlite} / {postgres}"
    );
    let (sqlite, postgres) = side_by_side(&stdout, "raw INSERT+COMMIT");
    assert!(
        number(&sqlite) > 0.0 && number(&postgres) > 0.0,
        "{sqlite} / {postgres}"
    );
    assert_eq!(bench_schemas("jit_bench_queue_"), Vec::<String>::new());
}

#[test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
fn the_teardown_benchmark_misses_no_teardown_on_postgres() {
    let stdout = bench_on_postgres(&[
        "teardown",
        "--grants",
        "40",
        "--spread",
        "2",
        "--revoke-latency-ms",
        "1",
        "--workers",
        "4",
    ]);
    assert!(
        stdout.contains("(40 revoked, "),
        "every grant revoked on both:\n{stdout}"
    );
    assert_eq!(
        side_by_side(&stdout, "teardowns missed"),
        ("0".to_owned(), "0".to_owned())
    );
    assert_eq!(bench_schemas("jit_bench_teardown_"), Vec::<String>::new());
}

#[test]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
fn the_ack_benchmark_spreads_its_load_over_replicas_on_postgres() {
    let stdout = bench_on_postgres(&[
        "ack",
        "--seconds",
        "1",
        "--connections",
        "4",
        "--replicas",
        "2",
        "--no-bolt",
    ]);
    assert!(
        stdout.contains("4 connections over 2 `jit serve` replicas"),
        "{stdout}"
    );
    assert_eq!(
        side_by_side(&stdout, "jit serve processes"),
        ("1".to_owned(), "2".to_owned())
    );
    let (sqlite, postgres) = side_by_side(&stdout, "ack throughput");
    assert!(
        number(&sqlite) > 0.0 && number(&postgres) > 0.0,
        "{sqlite} / {postgres}"
    );
    // Every ack on PostgreSQL was stored there: the stored count is printed per run.
    let stored: Vec<f64> = stdout
        .lines()
        .filter(|l| l.contains("requests stored"))
        .map(|l| number(l.trim_start()))
        .collect();
    assert_eq!(stored.len(), 2, "{stdout}");
    assert!(stored.iter().all(|n| *n > 0.0), "{stored:?}");
    assert_eq!(bench_schemas("jit_bench_ack_"), Vec::<String>::new());
}
