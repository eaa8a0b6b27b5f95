use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Nobody else running as this user, exec commands included, may read jit's environment or
    // memory through /proc or ptrace: they hold the signing secret, the bot token, the
    // encryption key and the AWS credentials. (Root is not stopped by this.)
    if let Err(err) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("jit: cannot make the process non-dumpable: {err}");
        return ExitCode::from(1);
    }
    // slack-morphism and the AWS SDK both use rustls: pick one crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = jit::cli::Cli::parse();
    // Benchmarks print their figures; per-job log lines would drown them (and slow them down).
    let default_level = match cli.command {
        jit::cli::Command::Bench(_) => "warn",
        // Doctor reports every problem on its own lines; the clients' warnings would repeat them.
        jit::cli::Command::Doctor { .. } => "error",
        // The copy prints its own summary; sqlx's notices (a table that exists) are noise.
        jit::cli::Command::Db { .. } => "warn",
        _ => "info",
    };
    if let Err(message) = jit::logging::init(&jit::config::process_env, default_level) {
        eprintln!("jit: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("jit: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(jit::cli::run(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("jit: {err:#}");
            ExitCode::from(1)
        }
    }
}
