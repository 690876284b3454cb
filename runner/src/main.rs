//! The `runbox` binary: parses the command line and prints any error as one line.
#![deny(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = runner::cli::Cli::parse();
    match runner::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("runbox: error: {e}");
            std::process::exit(125);
        }
    }
}
