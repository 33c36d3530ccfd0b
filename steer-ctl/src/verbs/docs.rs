//! `completions` and `man`, generated from the clap tree.

use clap::CommandFactory;

use crate::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<(), i32> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "steer-ctl",
        &mut std::io::stdout(),
    );
    Ok(())
}

pub fn man() -> Result<(), i32> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| {
            eprintln!("steer-ctl: {e}");
            steer_ctl::exit::FAILURE
        })
}
