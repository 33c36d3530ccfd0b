use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// steer's control program.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP datapath into the kernel and unload it: checks that this host can run steer
    /// (root, BPF, BTF, a verifier that accepts the program).
    Probe,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Probe => {
            let dp = steer_ctl::Datapath::load(&steer_ctl::Options {
                max_services: 1,
                ..Default::default()
            })
            .context("probe")?;
            drop(dp);
            println!("ok: the steer datapath loads on this kernel");
        }
    }
    Ok(())
}
