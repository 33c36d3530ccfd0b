//! One module per verb group: parse, call the library, print. Each returns the process's exit
//! code (see `exit`).
//!
//! With `--json`, every verb prints exactly one JSON object on stdout, and it has `ok`: on
//! failure `{"ok": false, "error": …, "kind": …}` (plus details of that failure), whatever
//! failed. Progress goes to stderr.

mod admin;
mod docs;
mod ops;
mod rollout;
mod show;

use std::{
    fmt::Display,
    io::Write,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use serde_json::{json, Value};
use steer_ctl::{
    client::{Client, DEFAULT_SOCKET},
    deploy::{self, DeployError},
    exit,
    model::AdminState,
    proto::{Request, Response},
};

use crate::cli::{Cli, ConfigVerb, OnOff, Verb};

/// What every verb that talks to the daemon needs.
pub struct Ctx {
    pub socket: PathBuf,
    pub json: bool,
}

/// A line on stdout; a reader that went away is not an error (see `main`'s SIGPIPE).
pub fn out(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr.
pub fn err(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C set a flag instead of killing the process, for sequences that must put things
/// back (or finish the batch in flight) before they exit.
pub fn catch_ctrl_c() -> &'static AtomicBool {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    &INTERRUPTED
}

/// `{"ok": false, "error": …, "kind": …}` and the details of the failure.
pub fn error_json(e: &DeployError) -> Value {
    let mut v = json!({"ok": false, "error": e.to_string(), "kind": e.kind()});
    match e {
        DeployError::DrainTimeout {
            target,
            active_flows,
            waited,
        } => {
            v["target"] = json!(target);
            v["active_flows"] = json!(active_flows);
            v["waited_ms"] = json!(waited.as_millis() as u64);
        }
        DeployError::NotHealthy { waited, backends } => {
            v["backends"] = json!(backends);
            v["waited_ms"] = json!(waited.as_millis() as u64);
        }
        DeployError::FlowsUnknown { target, .. } => v["target"] = json!(target),
        DeployError::Interrupted { left } => {
            let left: serde_json::Map<String, Value> =
                left.iter().map(|(b, s)| (b.clone(), json!(s))).collect();
            v["left"] = Value::Object(left);
        }
        _ => {}
    }
    v
}

impl Ctx {
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Sends a request. On failure prints why and returns the exit code.
    pub fn call(&self, req: &Request) -> Result<Response, i32> {
        deploy::call(&mut self.client(), req).map_err(|e| self.fail(&e))
    }

    /// Prints an error (on stdout as JSON with --json, else on stderr) and returns its exit
    /// code.
    pub fn fail(&self, e: &DeployError) -> i32 {
        if self.json {
            out(error_json(e));
        } else {
            for line in e.to_string().lines() {
                err(format!("steer-ctl: {line}"));
            }
        }
        e.exit_code()
    }

    /// Prints a failure found by the verb itself (not by the daemon).
    pub fn fail_msg(&self, msg: &str, kind: &str, code: i32) -> i32 {
        if self.json {
            out(json!({"ok": false, "error": msg, "kind": kind}));
        } else {
            err(format!("steer-ctl: {msg}"));
        }
        code
    }

    /// Prints a success: `value` (which has `"ok": true`) with --json, `text` otherwise.
    pub fn done(&self, value: Value, text: &str) {
        if self.json {
            out(value);
        } else if !text.is_empty() {
            out(text);
        }
    }
}

/// A usage error found after parsing (clap's own end with 2 as well).
fn usage(msg: &str) -> i32 {
    err(format!("steer-ctl: {msg}"));
    exit::USAGE
}

pub fn run(cli: Cli) -> i32 {
    if let Verb::Daemon { config, log_format } = &cli.verb {
        if cli.json {
            return usage("daemon logs with --log-format json; --json is for the verbs");
        }
        if let Some(code) = cli
            .socket
            .as_deref()
            .and_then(|s| ops::socket_mismatch(config, s))
        {
            return code;
        }
        return ops::daemon(config, *log_format).err().unwrap_or(exit::OK);
    }
    let ctx = Ctx {
        socket: cli.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
        json: cli.json,
    };
    let r = match cli.verb {
        Verb::Daemon { .. } => unreachable!("handled above"),
        Verb::Status => show::status(&ctx),
        Verb::Show { what, limit } => show::show(&ctx, what, limit),
        Verb::Drain {
            target,
            wait,
            timeout,
            min,
        } => admin::drain(&ctx, &target, wait, timeout, min),
        Verb::Ready {
            target,
            wait_healthy,
            timeout,
        } => admin::ready(&ctx, &target, wait_healthy, timeout),
        Verb::Maint { target } => admin::set(&ctx, &target, AdminState::Maint),
        Verb::Reject { target } => admin::set(&ctx, &target, AdminState::Reject),
        Verb::Weight { target, weight } => admin::weight(&ctx, &target, weight),
        Verb::Maintenance { service, state } => {
            admin::maintenance(&ctx, &service, state == OnOff::On)
        }
        Verb::Switch {
            service,
            group,
            all,
            force,
        } => admin::switch(
            &ctx,
            &service,
            if all { None } else { group.as_deref() },
            force,
        ),
        Verb::Rollout {
            service,
            exec,
            batch,
            drain_timeout,
            healthy_timeout,
            continue_on_error,
        } => rollout::run(
            &ctx,
            deploy::Plan {
                service,
                exec,
                batch,
                drain_timeout,
                healthy_timeout,
                continue_on_error,
            },
        ),
        Verb::Config { what } => match what {
            ConfigVerb::Check { config } => ops::config_check(&ctx, &config),
            ConfigVerb::ImportHaproxy { file } => ops::import_haproxy(&ctx, &file),
        },
        Verb::Reload => ops::reload(&ctx),
        Verb::Shutdown { detach } => ops::shutdown(&ctx, detach),
        Verb::Completions { shell } => docs::completions(shell),
        Verb::Man { page } => docs::man(page),
    };
    match r {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}
