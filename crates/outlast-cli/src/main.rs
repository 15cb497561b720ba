//! The `outlast` command: an outage demo, a load generator, and tools for operators to
//! inspect, verify and replay a spool. See `outlast --help`.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod args;
mod console;
mod demo;
mod demo_otel;
mod error;
mod generate;
mod replay;
mod spoolview;

use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;

use crate::args::{Cli, Command};
use crate::console::Console;
use crate::error::{CliError, EXIT_USAGE};

/// Worker threads of the runtime: the machine this runs on may be small, and the pipeline
/// needs little: one thread for callers, one for the drain task and I/O.
const WORKER_THREADS: usize = 2;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_error(&e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outlast: error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// Help and version go to stdout with exit 0; anything else is a one-line error and exit 2.
fn parse_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE as u8)
        }
        _ => {
            // clap's message is a paragraph (e.g. the list of missing arguments), then usage
            // and hints: keep the paragraph, on one line.
            let rendered = e.render().to_string();
            let paragraph: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let message = paragraph.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let message = if message.is_empty() {
                "invalid arguments"
            } else {
                message
            };
            eprintln!("outlast: error: {message} (see 'outlast --help')");
            ExitCode::from(EXIT_USAGE as u8)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let console = Console::new();
    match &cli.command {
        Command::Inspect(a) => {
            console::init_tracing(&console, "warn");
            spoolview::run_inspect(a)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => {
            console::init_tracing(&console, "warn");
            spoolview::run_verify(a)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => {
            console::init_tracing(&console, "info");
            block_on(demo::run(a, &console), &console)
        }
        Command::Gen(a) => {
            console::init_tracing(&console, "warn");
            block_on(generate::run(a), &console)
        }
        Command::Replay(a) => {
            console::init_tracing(&console, "info");
            block_on(replay::run(a, &console), &console)
        }
    }
}

/// Runs `fut` on a multi-thread runtime; Ctrl-C drops it (which removes a temporary spool)
/// and exits 130.
fn block_on(
    fut: impl Future<Output = Result<(), CliError>>,
    console: &Console,
) -> Result<ExitCode, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .map_err(|e| CliError::io("starting the async runtime", e))?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = fut => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Background tasks (drain task, receiver) must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Some(r) => r.map(|()| ExitCode::SUCCESS),
        None => {
            console.finish();
            eprintln!("outlast: interrupted");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}
