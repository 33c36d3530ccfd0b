//! One module per verb group. Each returns the process's exit code (see `exit`).

mod admin;
mod docs;
mod ops;
mod rollout;
mod show;

use std::{path::Path, time::Duration};

use steer_ctl::{
    client,
    exit,
    proto::{Request, Response},
};

use crate::cli::{Cli, Verb};

/// What every verb needs.
pub struct Ctx<'a> {
    pub socket: &'a Path,
    pub json: bool,
}

impl Ctx<'_> {
    /// Sends a request. On failure prints why (as JSON with --json) and returns the exit code.
    pub fn call(&self, req: &Request) -> Result<Response, i32> {
        match client::request(self.socket, req, Duration::from_secs(30)) {
            Ok(r) if r.ok => Ok(r),
            Ok(r) => {
                let msg = r
                    .error
                    .clone()
                    .unwrap_or_else(|| "the daemon refused".into());
                self.fail(&msg);
                Err(r.exit_code())
            }
            Err(e) => {
                self.fail(&e.to_string());
                Err(e.exit_code())
            }
        }
    }

    /// Prints an error: to stdout as `{"ok": false, "error": …}` with --json, else to stderr.
    pub fn fail(&self, msg: &str) {
        if self.json {
            println!("{}", serde_json::json!({"ok": false, "error": msg}));
        } else {
            eprintln!("steer-ctl: {msg}");
        }
    }

    /// Prints a success: `value` with --json, `text` otherwise.
    pub fn done(&self, value: serde_json::Value, text: &str) {
        if self.json {
            println!("{value}");
        } else if !text.is_empty() {
            println!("{text}");
        }
    }
}

pub fn run(cli: Cli) -> i32 {
    let ctx = Ctx {
        socket: &cli.socket,
        json: cli.json,
    };
    let r = match cli.verb {
        Verb::Daemon { config, log_format } => ops::daemon(&config, log_format),
        Verb::Status => show::status(&ctx),
        Verb::Show { what, limit } => show::show(&ctx, what, limit),
        Verb::Drain {
            backend,
            wait,
            timeout,
            min,
        } => admin::drain(&ctx, &backend, wait, timeout, min),
        Verb::Ready {
            backend,
            wait_healthy,
            timeout,
        } => admin::ready(&ctx, &backend, wait_healthy, timeout),
        Verb::Maint { backend } => admin::set(&ctx, &backend, steer_ctl::state::AdminState::Maint),
        Verb::Reject { backend } => {
            admin::set(&ctx, &backend, steer_ctl::state::AdminState::Reject)
        }
        Verb::Weight { backend, weight } => admin::weight(&ctx, &backend, weight),
        Verb::Maintenance { service, state } => {
            admin::maintenance(&ctx, &service, state == crate::cli::OnOff::On)
        }
        Verb::Switch {
            service,
            group,
            all,
        } => admin::switch(&ctx, &service, if all { None } else { group.as_deref() }),
        Verb::Rollout {
            service,
            exec,
            batch,
            drain_timeout,
            healthy_timeout,
            continue_on_error,
        } => rollout::run(
            &ctx,
            &rollout::Plan {
                service: &service,
                exec: &exec,
                batch,
                drain_timeout,
                healthy_timeout,
                continue_on_error,
            },
        ),
        Verb::Config { what } => match what {
            crate::cli::ConfigVerb::Check { config } => ops::config_check(&ctx, &config),
        },
        Verb::Reload => ops::reload(&ctx),
        Verb::Shutdown { detach } => ops::shutdown(&ctx, detach),
        Verb::Completions { shell } => docs::completions(shell),
        Verb::Man => docs::man(),
    };
    match r {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}
