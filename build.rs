//! Rebuilds when the migrations change (they are embedded), and tells the tests which servers
//! they may use: a test that needs PostgreSQL or moto is compiled as ignored (with the reason
//! shown by `cargo test`) unless its variable was set when it was built.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
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
