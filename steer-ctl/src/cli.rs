//! The command line: one clap derive tree. Every verb but `daemon`, `config check`,
//! `completions` and `man` talks to the daemon through its control socket.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 30s or 500ms: {e}"))
}

/// steer: an XDP layer-4 load balancer. `steer-ctl daemon` runs it; the other verbs drive it.
#[derive(Parser, Debug)]
#[command(name = "steer-ctl", version, about, propagate_version = true)]
pub struct Cli {
    /// The daemon's control socket [default: /run/steer/steer.sock]. With `daemon`, it must
    /// be the config's `[daemon] socket`.
    #[arg(long, global = true, env = "STEER_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output: one JSON object with `ok` on stdout (not for `daemon`).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShowWhat {
    Services,
    Backends,
    Flows,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Run the daemon: load or adopt the XDP datapath, run health checks, serve the socket.
    #[command(
        after_help = "Example:\n  steer-ctl daemon --config /etc/steer/steer.toml --log-format json"
    )]
    Daemon {
        /// The config file (see steer.toml(5)).
        #[arg(long, default_value = steer_ctl::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log lines on stderr as text, or as one JSON object each (for journald or a
        /// collector); the level is set by STEER_LOG (e.g. `info`, `steer_ctl=debug`).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Services, backends, health, admin states, active flows and counters.
    #[command(after_help = "Example:\n  steer-ctl status --json")]
    Status,
    /// One table: services, backends or flows.
    #[command(
        after_help = "Example:\n  steer-ctl show backends\n  steer-ctl show flows --limit 20"
    )]
    Show {
        /// `services`, `backends` (HAProxy's show stat: state, time in it, weight, active
        /// flows, new flows/s, check failures, downs, last check) or `flows`.
        #[arg(value_enum)]
        what: ShowWhat,
        /// Most flows to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Stop sending new flows to a backend (or every backend of a group); its flows go on. With
    /// --wait, return when they end.
    #[command(
        after_help = "Example (a deploy hook):\n  steer-ctl drain web-a --wait --timeout 5m && systemctl restart app"
    )]
    Drain {
        /// A backend, or a group (every backend of it, in one change).
        target: String,
        /// Wait until no active flow is left (flows idle past the service's idle timeout
        /// count as gone), as counted by a flow scan from after the drain; print progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 75).
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
        /// Wait at least this long, even with no flow left.
        #[arg(long, value_parser = duration, default_value = "0s")]
        min: Duration,
    },
    /// Put a backend (or every backend of a group) back in rotation; it takes new flows once
    /// its checks find it up.
    #[command(after_help = "Example:\n  steer-ctl ready web-a --wait-healthy --timeout 1m")]
    Ready {
        /// A backend, or a group.
        target: String,
        /// Set ready only after a check run since this command passed (a backend in maint is
        /// drained meanwhile so that its checks run); on --timeout, leave it as it was.
        #[arg(long)]
        wait_healthy: bool,
        /// Give up waiting after this long (exit 75).
        #[arg(long, value_parser = duration, default_value = "2m")]
        timeout: Duration,
    },
    /// Like drain, and pause the health checks (the server is being worked on).
    #[command(after_help = "Example:\n  steer-ctl maint web-a")]
    Maint {
        /// A backend, or a group.
        target: String,
    },
    /// Take a backend (or group) out and reset every further packet of its flows (fail fast).
    #[command(after_help = "Example:\n  steer-ctl reject web-a")]
    Reject {
        /// A backend, or a group.
        target: String,
    },
    /// Set the Maglev weight of a backend, or of every backend of a group (0 takes it out of
    /// the table).
    #[command(after_help = "Example:\n  steer-ctl weight web-a 3")]
    Weight {
        /// A backend, or a group.
        target: String,
        /// The Maglev weight: a backend gets new flows in proportion to it; 0 takes it out.
        weight: u32,
    },
    /// Send every new flow of a service to its maintenance backend, or stop.
    #[command(after_help = "Example:\n  steer-ctl maintenance web on")]
    Maintenance {
        /// The service (other services on the host are untouched).
        service: String,
        /// `on`: new flows go to the maintenance backend; `off`: back to the pool.
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Make only one group of a service's backends take new flows, in one table swap; flows on
    /// the other groups finish where they are (blue/green).
    #[command(
        after_help = "Example:\n  steer-ctl switch web green && steer-ctl drain blue --wait"
    )]
    Switch {
        /// The service.
        service: String,
        /// The group to switch to; omit with --all to make every group eligible again.
        #[arg(required_unless_present = "all")]
        group: Option<String>,
        /// Make every group eligible again (undo a switch).
        #[arg(long, conflicts_with = "group")]
        all: bool,
        /// Switch even when the group has no eligible backend (new flows then get the
        /// service's fallback or no-backend answer).
        #[arg(long)]
        force: bool,
    },
    /// Restart a service's backends one by one (or N at a time): drain and wait, run the
    /// command, set ready and wait until healthy; stop at the first failure.
    #[command(
        after_help = "Example:\n  steer-ctl rollout web --exec 'ssh {address} systemctl restart app'"
    )]
    Rollout {
        /// The service whose backends are restarted.
        service: String,
        /// Command run by `sh -c` per backend; {backend} and {address} are replaced.
        #[arg(long)]
        exec: String,
        /// Backends at a time (never so many that the service has no eligible backend left).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// How long each backend's flows may take to end once drained.
        #[arg(long, value_parser = duration, default_value = "5m")]
        drain_timeout: Duration,
        /// How long each backend may take to pass its checks again after the command.
        #[arg(long, value_parser = duration, default_value = "2m")]
        healthy_timeout: Duration,
        /// Go on with the next backends after a failure (the failed one stays drained).
        #[arg(long)]
        continue_on_error: bool,
    },
    /// Work on config files without a daemon: check one, or import an haproxy.cfg.
    Config {
        #[command(subcommand)]
        what: ConfigVerb,
    },
    /// Apply the config file again; an invalid one is refused and the running one stays.
    #[command(after_help = "Example:\n  steer-ctl reload")]
    Reload,
    /// Stop the daemon (traffic keeps flowing on the last state); --detach also removes the
    /// XDP program and the pinned maps.
    #[command(after_help = "Example:\n  steer-ctl shutdown --detach")]
    Shutdown {
        /// Also withdraw the VIPs' announcement (then hold 2 s), detach the XDP program and
        /// remove the pinned maps: forwarding stops.
        #[arg(long)]
        detach: bool,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  steer-ctl completions bash > /etc/bash_completion.d/steer-ctl"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print a manual page (roff): steer-ctl(8), every verb with its flags, or steer.toml(5),
    /// the config file.
    #[command(
        after_help = "Examples:\n  steer-ctl man | man -l -\n  steer-ctl man steer.toml | man -l -"
    )]
    Man {
        #[arg(value_enum, default_value = "steer-ctl")]
        page: ManPage,
    },
}

/// The manual pages `steer-ctl man` prints (the Debian package installs both).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ManPage {
    /// steer-ctl(8): the command and every verb.
    #[value(name = "steer-ctl")]
    SteerCtl,
    /// steer.toml(5): every section and key of the config file.
    #[value(name = "steer.toml")]
    SteerToml,
}

impl Verb {
    /// Verbs that must not die when whoever reads their output goes away: the daemon (a client
    /// hanging up must not kill it) and the verbs that change state in several steps and undo
    /// or report them at the end.
    pub fn outlives_its_reader(&self) -> bool {
        matches!(
            self,
            Verb::Daemon { .. }
                | Verb::Rollout { .. }
                | Verb::Ready {
                    wait_healthy: true,
                    ..
                }
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigVerb {
    /// Report every error with file, line and column.
    #[command(after_help = "Example:\n  steer-ctl config check --config /etc/steer/steer.toml")]
    Check {
        #[arg(long, default_value = steer_ctl::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a steer.toml equivalent to an haproxy.cfg's frontends, listens and backends, and
    /// list (with line numbers, on stderr) what could not be translated.
    #[command(
        name = "import-haproxy",
        after_help = "Example:\n  steer-ctl config import-haproxy /etc/haproxy/haproxy.cfg > steer.toml"
    )]
    ImportHaproxy { file: PathBuf },
}
