//! The `hearth` binary: parse arguments, start logging, dispatch, map errors to an exit code.

use clap::Parser;
use hearth::cli::{Cli, Command};
use hearth::commands;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The server logs its work; the one-shot commands stay quiet unless asked (stdout is theirs).
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,hearth=info",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => commands::serve::run(a).await,
            Command::Run(a) => commands::run::run(a).await,
            Command::Stdio(a) => commands::stdio::run(a).await,
            Command::List(a) => commands::list::run(a),
            Command::Ps(a) => commands::ps::run(a).await,
            Command::Show(a) => commands::show::run(a),
            Command::Stop(a) => commands::stop::run(a).await,
            Command::Pull(a) => commands::pull::run(a).await,
            Command::Create(a) => commands::create::run(a),
            Command::Cp(a) => commands::cp::run(a),
            Command::Rm(a) => commands::rm::run(a),
        }
    });
    // Don't wait for a blocked stdin reader or a draining worker after the answer is out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
