//! Exec commands cannot read jit's secrets: the attack from the security review, against the
//! real binary. A grant command dumps its environment and tries `/proc/$PPID/environ` and
//! `/proc/$PPID/mem` (its parent is jit). It must find no secret and no AWS credential.
//!
//! Root reads every process's `/proc` files whatever jit does, so when the suite runs as root
//! (as CI does) jit and its command run as `nobody` through `setpriv`, as a deployment would run
//! them: the same user for jit and its commands, which is the case non-dumpability protects.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jit::clock::SystemClock;
use jit::slack::driver::SlackDriver;
use jit::slack::simulator::FakeSlack;
use secrecy::SecretString;

const SIGNING_SECRET: &str = "isolation-test-signing-secret-7f3a";
const BOT_TOKEN: &str = "xoxb-isolation-test-token-19c2";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYISOLATION";
const AWS_KEY_ID: &str = "AKIAISOLATIONTEST123";
const ADMIN_URL: &str = "postgres://admin:pg-admin-password-55e1@127.0.0.1:1/db";

const SCRIPT: &str = r#"#!/bin/sh
# Reads the request, then looks for jit's secrets everywhere a same-user process could.
cat > /dev/null
out="$(dirname "$0")/loot"
{
  echo "== env"; env
  echo "== parent environ"; tr '\0' '\n' < /proc/$PPID/environ 2>&1
  echo "== parent mem"; head -c 4096 /proc/$PPID/mem 2>&1 | head -c 200
  echo "== parent cmdline"; tr '\0' ' ' < /proc/$PPID/cmdline 2>&1
  echo "== done"
} > "$out.tmp" 2>&1
mv "$out.tmp" "$out"
echo '{}'
"#;

fn policy(script: &Path) -> String {
    format!(
        r#"
[slack]
audit_channel = "C0AUDIT"
admins = {{ users = ["U0SECLEAD"] }}

[[resource]]
id = "looter"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
max_duration = "1h"
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
auto_approve = {{ max_duration = "1h" }}
env = ["LOOTER_VISIBLE"]
"#,
        script = script.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_exec_command_finds_none_of_jits_secrets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(BOT_TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));

    // Everything the server needs lives in a directory `nobody` can use: the binary too (the
    // target directory may sit under a home only root can enter).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let binary = dir.path().join("jit");
    std::fs::copy(env!("CARGO_BIN_EXE_jit"), &binary).unwrap();
    let script = dir.path().join("looter.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    for file in [&binary, &script] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let policy_path = dir.path().join("jit.toml");
    std::fs::write(&policy_path, policy(&script)).unwrap();
    let port = free_port();
    let key = jit::crypto::generate_key();
    let mut command = if rustix::process::geteuid().is_root() {
        println!("running as root: jit and its command run as nobody (setpriv)");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary);
        c
    } else {
        println!("running as an unprivileged user: jit and its command run as this user");
        Command::new(&binary)
    };
    let log = dir.path().join("serve.log");
    let mut child = command
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        .env("SLACK_BOT_TOKEN", BOT_TOKEN)
        .env("JIT_ENCRYPTION_KEY", &key)
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("PROD_DB_ADMIN_URL", ADMIN_URL)
        .env("LOOTER_VISIBLE", "named-in-the-policy")
        .env("JIT_SLACK_API_URL", slack.api_url())
        .env(
            "JIT_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("jit.db").display()),
        )
        .env("JIT_POLICY", &policy_path)
        .env("JIT_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = async {
        loop {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .is_err()
    {
        let _ = child.kill();
        panic!(
            "jit serve did not become ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    let driver = SlackDriver::new(
        &url,
        SecretString::from(SIGNING_SECRET),
        Arc::new(SystemClock::default()),
    );
    let answer = driver
        .slash(
            "U0DEV",
            "C0GENERAL",
            "request looter 30m looking for secrets",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let loot_path = dir.path().join("loot");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loot_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let loot = std::fs::read_to_string(&loot_path).unwrap_or_else(|_| {
        panic!(
            "the grant command never ran:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    println!("{loot}");
    assert!(loot.contains("== done"), "{loot}");
    assert!(
        loot.contains("LOOTER_VISIBLE=named-in-the-policy"),
        "what the policy names does reach the command"
    );
    for secret in [
        SIGNING_SECRET,
        BOT_TOKEN,
        key.as_str(),
        AWS_SECRET,
        AWS_KEY_ID,
        "pg-admin-password-55e1",
    ] {
        assert!(
            !loot.contains(secret),
            "the command found a secret of jit's"
        );
    }
    for name in ["SLACK_", "JIT_", "AWS_", "PROD_DB_ADMIN_URL"] {
        let env_part = loot.split("== parent environ").next().unwrap();
        assert!(
            !env_part.lines().any(|l| l.starts_with(name)),
            "{name}… is in the command's environment"
        );
    }
    let environ = loot
        .split("== parent environ")
        .nth(1)
        .unwrap()
        .split("== parent mem")
        .next()
        .unwrap();
    assert!(
        environ.contains("Permission denied"),
        "reading jit's environ is refused: {environ}"
    );
}
