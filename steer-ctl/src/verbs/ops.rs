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
    use steer_ctl::haproxy::{import, ImportError, Note};
    let text = std::fs::read_to_string(path)
        .map_err(|e| ctx.fail_msg(&format!("{}: {e}", path.display()), "config", exit::CONFIG))?;
    let notes = |list: &[Note]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|n| json!({"line": n.line, "message": n.message}))
            .collect()
    };
    // `FILE:LINE: not translated: …` (or `note: …`), as compilers say where, in line order.
    let say = |skipped: &[Note], notices: &[Note]| {
        let mut all: Vec<(&Note, &str)> = skipped.iter().map(|n| (n, "not translated")).collect();
        all.extend(notices.iter().map(|n| (n, "note")));
        all.sort_by_key(|(n, _)| n.line);
        for (n, what) in all {
            err(format!(
                "{}:{}: {what}: {}",
                path.display(),
                n.line,
                n.message
            ));
        }
    };
    match import(&text) {
        Ok(imp) => {
            if ctx.json {
                out(json!({
                    "ok": true,
                    "toml": imp.toml,
                    "skipped": notes(&imp.skipped),
                    "notices": notes(&imp.notices),
                }));
            } else {
                out(imp.toml.trim_end());
                say(&imp.skipped, &imp.notices);
            }
            Ok(())
        }
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            match &e {
                ImportError::Nothing { skipped } if ctx.json => {
                    out(
                        json!({"ok": false, "error": msg, "kind": "config", "skipped": notes(skipped)}),
                    );
                    Err(exit::CONFIG)
                }
                ImportError::Nothing { skipped } => {
                    say(skipped, &[]);
                    Err(ctx.fail_msg(&msg, "config", exit::CONFIG))
                }
                _ => Err(ctx.fail_msg(&msg, "config", exit::CONFIG)),
            }
        }
    }
}
