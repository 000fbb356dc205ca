//! The `hearth` binary: parse arguments, start logging, dispatch, map errors to an exit code.

use clap::{CommandFactory, FromArgMatches};
use hearth::cli::{Cli, Command};
use hearth::commands;

fn main() -> std::process::ExitCode {
    // Two malloc arenas, not glibc's 8 per core: every tokio and blocking thread that allocates
    // otherwise gets an arena of its own, each keeping freed memory, and a server's RSS climbed
    // ~40 MiB over 50 model load cycles (flat with two). Allocation is not on the hot path.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first in main, before any other thread exists; mallopt only sets a limit.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // `--version` names the CPU kernels this machine gets, decided here at run time.
    let long_version: &'static str =
        Box::leak(format!("{}\n{}", hearth::LONG_VERSION, hearth::cpu_description()).into_boxed_str());
    let cli = match Cli::from_arg_matches(&Cli::command().long_version(long_version).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A server may hold several models: it starts itself again with OpenMP's wait set (see the
    // function), before any thread exists. Not the one-model commands, which also run under
    // qemu-user to emulate older CPUs, where a new start would leave the emulation.
    if matches!(cli.command, Command::Serve(_)) {
        hearth::ensure_openmp_wait_policy();
    }
    // The server starts its own logging once it has read its config (the format may be set
    // there); the one-shot commands stay quiet unless asked (stdout is theirs).
    if !matches!(cli.command, Command::Serve(_)) {
        commands::init_logging(false, "error");
    }

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
            Command::Config(a) => commands::config_check::run(a),
            Command::Key(a) => commands::key::run(a),
            Command::Bench(a) => commands::bench::run(a).await,
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
