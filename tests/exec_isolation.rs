//! Exec commands cannot read jit's secrets: the attack from the security review, against the
//! real binary. A grant command dumps its environment and tries `/proc/$PPID/environ` and
//! `/proc/$PPID/mem` (its parent is jit). It must find no secret and no AWS credential.
//!
//! The memory probe reads a range that is really mapped: the start of the target's `[stack]`,
//! found through `/proc/<pid>/maps`. (Offset 0 is never mapped, so reading there fails even
//! against a process that is wide open, and proves nothing.) jit's own `maps` is refused to its
//! command too; when the suite runs as root, the test reads it for the probe (root may) and
//! leaves the address in a file. Against jit, opening `mem` must fail with "Permission denied".
//! The control runs the same probe, as the same user, against a dumpable process: there it reads
//! the environment and the stack page, so the probe can tell the two apart.
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

/// The probe. Its target is its parent (jit, when jit runs it), or with the argument `child` a
/// process it starts itself (the control: a descendant, so that Yama's `ptrace_scope=1`, where
/// enabled, does not refuse it for another reason than dumpability).
const SCRIPT: &str = r#"#!/bin/sh
# Reads the request, then looks for jit's secrets everywhere a same-user process could.
cat > /dev/null
here="$(dirname "$0")"
if [ "$1" = child ]; then
  sleep 60 & target=$!
  # Until the child has become `sleep`, its environ can read empty (it is mid-exec).
  for _ in $(seq 1 100); do
    case "$(tr '\0' ' ' < /proc/$target/cmdline 2>/dev/null)" in sleep*) break ;; esac
    sleep 0.05
  done
else
  target=$PPID
fi
out="$here/loot"
{
  echo "== env"; env
  echo "== target environ"; tr '\0' '\n' < /proc/$target/environ 2>&1
  echo "== target mem"
  echo "owner $(stat -c %u /proc/$target/mem) me $(id -u)"
  if maps="$(cat /proc/$target/maps 2>&1)"; then
    stack="$(printf '%s\n' "$maps" | awk '$NF == "[stack]" { split($1, r, "-"); print r[1]; exit }')"
    echo "maps: read; [stack] at 0x$stack"
  else
    echo "maps: $maps"
    stack="$(cat "$here/stack-hint" 2>/dev/null)"
    [ -n "$stack" ] && echo "[stack] at 0x$stack, read from maps by the test"
  fi
  # (dd and od refuse to seek past the 0 bytes that stat reports for mem.)
  echo "mem: $(python3 -c '
import sys
try:
    mem = open(sys.argv[1], "rb")
except OSError as e:
    sys.exit(print("open failed:", e.strerror))
mem.seek(int(sys.argv[2], 16))
try:
    print("read", len(mem.read(4096)), "bytes")
except OSError as e:
    print("read failed:", e.strerror)
' /proc/$target/mem "${stack:-0}" 2>&1)"
  echo "== target cmdline"; tr '\0' ' ' < /proc/$target/cmdline 2>&1
  echo "== done"
} > "$out.tmp" 2>&1
mv "$out.tmp" "$out"
[ "$1" = child ] && kill $target
echo '{}'
"#;

/// The user jit and the probes run as: `nobody` under root, else this user.
fn as_test_user(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A section of the probe's output.
fn section<'a>(loot: &'a str, name: &str) -> &'a str {
    let start = loot
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no {name} section in {loot}"));
    let rest = &loot[start + name.len() + 4..];
    &rest[..rest.find("\n== ").unwrap_or(rest.len())]
}

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
    if rustix::process::geteuid().is_root() {
        println!("running as root: jit and its command run as nobody (setpriv)");
    } else {
        println!("running as an unprivileged user: jit and its command run as this user");
    }
    let mut command = as_test_user(&binary);
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

    // As root, the test may read jit's maps (its command may not): where jit's stack is.
    if rustix::process::geteuid().is_root() {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
        let stack = maps
            .lines()
            .find(|l| l.ends_with("[stack]"))
            .and_then(|l| l.split('-').next())
            .expect("jit has a [stack] mapping");
        std::fs::write(dir.path().join("stack-hint"), stack).unwrap();
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
        assert!(
            !section(&loot, "env").lines().any(|l| l.starts_with(name)),
            "{name}… is in the command's environment"
        );
    }
    let environ = section(&loot, "target environ");
    assert!(
        environ.contains("Permission denied"),
        "reading jit's environ is refused: {environ}"
    );
    let mem = section(&loot, "target mem");
    let (owner, me) = owner_and_me(mem);
    assert_eq!(
        owner, 0,
        "a non-dumpable process's /proc files belong to root, not to its user ({me}): {mem}"
    );
    assert!(
        mem.lines()
            .any(|l| l.starts_with("maps: ") && l.contains("Permission denied")),
        "jit's maps are refused: {mem}"
    );
    if rustix::process::geteuid().is_root() {
        assert!(
            mem.contains("read from maps by the test"),
            "the probe aims at jit's real stack: {mem}"
        );
    }
    let read = mem.lines().find(|l| l.starts_with("mem: ")).unwrap();
    assert!(
        read == "mem: open failed: Permission denied",
        "opening jit's memory is refused: {read}"
    );
}

fn owner_and_me(mem: &str) -> (u32, u32) {
    let line = mem.lines().find(|l| l.starts_with("owner ")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// The control: the same probe, as the same user, against a dumpable process reads its
/// environment and a page of its stack. Without it, the test above could pass with a probe that
/// can never succeed.
#[test]
fn the_same_probe_reads_a_dumpable_process_of_the_same_user() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = dir.path().join("looter.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_test_user(&script)
        .arg("child")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CONTROL_MARKER", "visible-to-the-same-user")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let loot = std::fs::read_to_string(dir.path().join("loot")).unwrap();
    println!("{loot}");
    assert!(
        section(&loot, "target environ").contains("CONTROL_MARKER=visible-to-the-same-user"),
        "{loot}"
    );
    let mem = section(&loot, "target mem");
    let (owner, me) = owner_and_me(mem);
    assert_eq!(owner, me, "{mem}");
    assert!(mem.contains("maps: read; [stack] at 0x"), "{mem}");
    let read = mem.lines().find(|l| l.starts_with("mem: ")).unwrap();
    assert!(
        read == "mem: read 4096 bytes",
        "the stack page of a dumpable process is read: {read}"
    );
}
