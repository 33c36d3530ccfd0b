//! `steer-ctl`: dispatches to the verb modules; everything else lives in the library.

mod cli;
mod verbs;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if !cli.verb.outlives_its_reader() {
        // Like other Unix tools: `steer-ctl status | head -1` ends quietly when the reader goes
        // away, instead of panicking on the broken pipe (exit 101). Rust ignores SIGPIPE.
        // SAFETY: restoring a default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    std::process::exit(verbs::run(cli));
}
