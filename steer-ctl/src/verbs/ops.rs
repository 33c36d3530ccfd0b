//! Running and managing the daemon: `daemon`, `config check`, `reload`, `shutdown`.

use std::path::Path;

use steer_ctl::{config::Config, exit, proto::Request};

use super::Ctx;
use crate::cli::LogFormat;

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
                serde_json::json!({"ok": true, "config": path, "services": c.services.len(), "backends": backends}),
                &format!("{}: ok ({} services, {backends} backends)", path.display(), c.services.len()),
            );
            Ok(())
        }
        Err(errs) => {
            if ctx.json {
                let list: Vec<_> = errs
                    .0
                    .iter()
                    .map(|e| serde_json::json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
                    .collect();
                println!("{}", serde_json::json!({"ok": false, "errors": list}));
            } else {
                eprintln!("{errs}");
            }
            Err(exit::CONFIG)
        }
    }
}

pub fn reload(ctx: &Ctx) -> Result<(), i32> {
    let r = ctx.call(&Request::Reload)?;
    let msg = r.message.unwrap_or_else(|| "reloaded".into());
    ctx.done(serde_json::json!({"ok": true, "message": msg}), &msg);
    Ok(())
}

pub fn shutdown(ctx: &Ctx, detach: bool) -> Result<(), i32> {
    ctx.call(&Request::Shutdown { detach })?;
    ctx.done(
        serde_json::json!({"ok": true, "detach": detach}),
        if detach {
            "daemon stopping; XDP program and maps being removed"
        } else {
            "daemon stopping; traffic goes on with the last state"
        },
    );
    Ok(())
}
