//! `cargo xtask`: see the library's docs for the commands.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match xtask::run(xtask::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
