//! `steer-ctl`: dispatches to the verb modules; everything else lives in the library.

mod cli;
mod verbs;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    std::process::exit(verbs::run(cli));
}
