//! Running and managing the daemon: `daemon`, `config check`, `reload`, `shutdown`.

use std::path::Path;

use serde_json::json;
use steer_ctl::{config::Config, exit, proto::Request};

use super::{err, out, usage, Ctx};
use crate::cli::LogFormat;

/// `--socket` (or STEER_SOCKET) given to `daemon`: the daemon listens where its config says, so
/// a different socket is a usage error (exit 2) rather than a flag silently ignored. A config
/// that does not load is left for the daemon to report.
pub fn socket_mismatch(config: &Path, socket: &Path) -> Option<i32> {
    let cfg = Config::load(config).ok()?;
    (cfg.daemon.socket != socket).then(|| {
        usage(&format!(
            "--socket (or STEER_SOCKET) is {}, but the daemon listens on {} ([daemon] socket in \
             {}); set it there, or leave --socket out",
            socket.display(),
            cfg.daemon.socket.display(),
            config.display()
        ))
    })
}

pub fn daemon(config: &Path, log: LogFormat) -> Result<(), i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    match steer_ctl::daemon::run(config) {
        0 => Ok(()),
        code => Err(code),
    }
}

pub fn config_check(ctx: &Ctx, path: &Path) -> Result<(), i32> {
    match Config::load(path) {
        Ok(c) => {
            let backends: usize = c.services.iter().map(|s| s.backends.len()).sum();
            ctx.done(
                json!({"ok": true, "config": path, "services": c.services.len(), "backends": backends}),
                &format!("{}: ok ({} services, {backends} backends)", path.display(), c.services.len()),
            );
            Ok(())
        }
        Err(errs) => {
            if ctx.json {
                let list: Vec<_> = errs
                    .0
                    .iter()
                    .map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
                    .collect();
                let error = format!("{}: {} error(s)", path.display(), list.len());
                out(json!({"ok": false, "error": error, "kind": "config", "errors": list}));
            } else {
                err(&errs);
            }
            Err(exit::CONFIG)
        }
    }
}

pub fn reload(ctx: &Ctx) -> Result<(), i32> {
    let r = ctx.call(&Request::Reload {})?;
    let msg = r.message.unwrap_or_else(|| "reloaded".into());
    let mut text = msg.clone();
    for c in &r.changes {
        text += &format!("\n  {c}");
    }
    ctx.done(
        json!({"ok": true, "message": msg, "changes": r.changes}),
        &text,
    );
    Ok(())
}

pub fn shutdown(ctx: &Ctx, detach: bool) -> Result<(), i32> {
    ctx.call(&Request::Shutdown { detach })?;
    ctx.done(
        json!({"ok": true, "detach": detach}),
        if detach {
            "daemon stopping; XDP program and maps being removed"
        } else {
            "daemon stopping; traffic goes on with the last state"
        },
    );
    Ok(())
}

pub fn import_haproxy(ctx: &Ctx, path: &Path) -> Result<(), i32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ctx.fail_msg(&format!("{}: {e}", path.display()), "config", exit::CONFIG))?;
    match steer_ctl::haproxy::import(&text) {
        Ok(imp) => {
            let skipped: Vec<String> = imp
                .skipped
                .iter()
                .map(|s| format!("{}:{s}", path.display()))
                .collect();
            if ctx.json {
                out(
                    json!({"ok": true, "toml": imp.toml, "skipped": imp.skipped.iter().map(|s| json!({"line": s.line, "message": s.message})).collect::<Vec<_>>()}),
                );
            } else {
                out(imp.toml.trim_end());
                for s in &skipped {
                    err(format!("not translated: {s}"));
                }
            }
            Ok(())
        }
        Err(e) => Err(ctx.fail_msg(&format!("{}: {e}", path.display()), "config", exit::CONFIG)),
    }
}
