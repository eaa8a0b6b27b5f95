//! `jit bench` modes that broke silently once run end to end here, so they cannot again. They
//! assert outcomes only, never a timing.
//!
//! - `flood` sent its slash commands from a workspace jit does not serve, for people jit did not
//!   know, so every request was refused: a small flood through the real binary, both layouts;
//!   every request is accepted and the new request's approval message is posted.
//! - `footprint` restarted jit on its database with a new encryption key each time, which jit
//!   (rightly) refuses, since the audit chain is keyed from it: two starts on one database.

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
