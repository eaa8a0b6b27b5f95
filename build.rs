//! Rebuilds when the migrations change (they are embedded), and tells the tests which servers
//! they may use: a test that needs PostgreSQL or moto is compiled as ignored (with the reason
//! shown by `cargo test`) unless its variable was set when it was built.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    startup_layout();
    for (var, cfg) in [
        ("JIT_TEST_POSTGRES_URL", "jit_postgres_tests"),
        ("JIT_TEST_AWS_ENDPOINT", "jit_moto_tests"),
        // The long reliability tests (kill -9 loops, replica failover, the 20,000-socket flood).
        ("JIT_TEST_LONG", "jit_long_tests"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0") {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

/// The release binary's start-up code laid out together: `link/startup-symbols.txt` lists the
/// functions `jit serve` runs from start to idle (`link/startup-symbols.sh` records them), and
/// lld places them first in `.text`. The kernel maps the cached pages around every page fault
/// (64 KB), so start-up code spread over a 23 MB `.text` made most of it resident in an idle
/// process (README, Performance). Only on x86_64 Linux, where rustc links with lld (mold takes
/// the option too; GNU ld does not: `JIT_STARTUP_LAYOUT=0` builds without it); names missing
/// from the binary are skipped.
fn startup_layout() {
    println!("cargo:rerun-if-changed=link/startup-symbols.txt");
    println!("cargo:rerun-if-env-changed=JIT_STARTUP_LAYOUT");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("PROFILE") != "release"
        || env("JIT_STARTUP_LAYOUT") == "0"
        || env("CARGO_CFG_TARGET_ARCH") != "x86_64"
        || env("CARGO_CFG_TARGET_OS") != "linux"
        || env("CARGO_CFG_TARGET_ENV") != "gnu"
    {
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("link/startup-symbols.txt");
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=jit=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=jit=-Wl,--no-warn-symbol-ordering");
    }
}
