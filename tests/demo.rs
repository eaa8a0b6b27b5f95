//! `jit demo` runs end to end, exits 0, and tells the story it should.

use std::process::Command;

#[test]
fn the_demo_runs_and_its_transcript_is_stable() {
    let output = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["demo", "--at", "2026-11-23T14:00:00Z"])
        .env_remove("AWS_ENDPOINT_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("jit demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "jit demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let transcript: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("Done in "))
        .collect();
    insta::assert_snapshot!(transcript.join("\n"));
}

#[test]
fn the_demo_keeps_its_database_when_asked() {
    let output = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["demo", "--keep"])
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("jit demo runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("The database is kept at "))
        .expect("the kept path");
    let path = line
        .trim_start_matches("The database is kept at ")
        .split(';')
        .next()
        .unwrap();
    assert!(std::path::Path::new(path).exists(), "{path}");
    // The kept database verifies with the CLI.
    let dir = std::path::Path::new(path).parent().unwrap().to_owned();
    let verify = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["audit", "verify"])
        .env("JIT_DATABASE_URL", format!("sqlite://{path}"))
        .env("JIT_AUDIT_KEY", jit_audit_key(&stdout))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("audit log intact: 19 events"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The demo's audit key, as its last line prints it.
fn jit_audit_key(stdout: &str) -> String {
    stdout
        .split("JIT_AUDIT_KEY=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the demo prints its audit key")
        .to_owned()
}
