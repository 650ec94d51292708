//! `dsvl`: DeepSeek-VL from the command line. Flags and glue only; the engine is the `dsvl` crate.

mod args;
mod cmd;
mod model_path;
mod pdf_input;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Flushes the Chrome trace when dropped, after the command has run.
    let _trace = match init_logging(cli.verbose, cli.trace_chrome.as_deref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`dsvl run … | head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Batch(a) => cmd::batch::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    }
}

/// Logs to stderr at the level `-v` asks for (or `DSVL_LOG`), and with `--trace-chrome` every
/// span of the engine to a Chrome trace file, whose guard must live until the command ends.
fn init_logging(
    verbose: u8,
    trace_chrome: Option<&Path>,
) -> anyhow::Result<Option<tracing_chrome::FlushGuard>> {
    use tracing_subscriber::prelude::*;

    let default = match verbose {
        0 => "warn,dsvl=info",
        1 => "info,dsvl=debug",
        _ => "debug,dsvl=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DSVL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);
    let (chrome, guard) = match trace_chrome {
        None => (None, None),
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| {
                format!(
                    "cannot create the --trace-chrome file {}; check that its folder exists and \
                     is writable",
                    path.display()
                )
            })?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(std::io::BufWriter::new(file))
                .include_args(true)
                .build();
            let spans = tracing_subscriber::EnvFilter::new("dsvl=trace,dsvl_server=debug");
            (Some(layer.with_filter(spans)), Some(guard))
        }
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(chrome)
        .init();
    Ok(guard)
}
