//! Developer tools of the dsvl workspace, run from the repository as `cargo xtask <command>`
//! (an alias in `.cargo/config.toml`). They stay out of the `dsvl` binary users install.
//!
//! - [`make_checkpoint`]: random-weight checkpoints with the exact published layout of
//!   DeepSeek-VL 1.3B/7B and DeepSeek-VL2 tiny/small/base, for speed benchmarks.
//!
//! [`Cli`] is the command line and [`run`] runs it; `src/main.rs` only reports errors. The
//! library exists so that other crates' tests can write a checkpoint without this binary.

pub mod make_checkpoint;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tools of the dsvl workspace (run from the repository: cargo xtask COMMAND)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    // about/long_about/after_help: on `MakeCheckpointArgs` (make_checkpoint.rs).
    MakeCheckpoint(make_checkpoint::MakeCheckpointArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::MakeCheckpoint(a) => make_checkpoint::run(a),
    }
}
