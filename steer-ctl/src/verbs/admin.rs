//! Deploy-hook verbs: `drain`, `ready`, `maint`, `reject`, `weight`, `maintenance`.

use std::time::{Duration, Instant};

use steer_ctl::{
    daemon::exit,
    proto::{BackendStatus, Request},
    state::AdminState,
};

use super::Ctx;

const POLL: Duration = Duration::from_millis(100);

fn backend(ctx: &Ctx, name: &str) -> Result<BackendStatus, i32> {
    let s = ctx.call(&Request::Status)?.status.unwrap_or_default();
    s.backends
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| {
            ctx.fail(&format!("no backend named {name:?}"));
            exit::FAILURE
        })
}

/// Progress goes to stderr, so stdout stays one result (text or JSON).
fn progress(msg: &str) {
    eprintln!("{msg}");
}

pub fn set(ctx: &Ctx, name: &str, state: AdminState) -> Result<(), i32> {
    ctx.call(&Request::Admin {
        backend: name.into(),
        state,
    })?;
    ctx.done(
        serde_json::json!({"ok": true, "backend": name, "admin": state}),
        &format!("{name}: {state}"),
    );
    Ok(())
}

pub fn drain(
    ctx: &Ctx,
    name: &str,
    wait: bool,
    timeout: Duration,
    min: Duration,
) -> Result<(), i32> {
    let start = Instant::now();
    ctx.call(&Request::Admin {
        backend: name.into(),
        state: AdminState::Drain,
    })?;
    if !wait {
        ctx.done(
            serde_json::json!({"ok": true, "backend": name, "admin": "drain"}),
            &format!("{name}: drain (new flows stop now; its flows go on)"),
        );
        return Ok(());
    }
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let b = backend(ctx, name)?;
        let elapsed = start.elapsed();
        if b.active_flows == 0 && elapsed >= min {
            ctx.done(
                serde_json::json!({"ok": true, "backend": name, "admin": "drain", "active_flows": 0, "waited_ms": elapsed.as_millis() as u64}),
                &format!("{name}: drained in {:.1} s", elapsed.as_secs_f64()),
            );
            return Ok(());
        }
        if elapsed >= timeout {
            let msg = format!(
                "{name}: {} active flows left after {:.1} s (--timeout)",
                b.active_flows,
                elapsed.as_secs_f64()
            );
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "backend": name, "active_flows": b.active_flows, "error": msg})
                );
            } else {
                eprintln!("steer-ctl: {msg}");
            }
            return Err(exit::TIMEOUT);
        }
        let changed = last
            .is_none_or(|(n, at)| n != b.active_flows || at.elapsed() >= Duration::from_secs(5));
        if changed {
            progress(&format!("{name}: {} active flows", b.active_flows));
            last = Some((b.active_flows, Instant::now()));
        }
        std::thread::sleep(POLL);
    }
}

pub fn ready(ctx: &Ctx, name: &str, wait_healthy: bool, timeout: Duration) -> Result<(), i32> {
    let start = Instant::now();
    ctx.call(&Request::Admin {
        backend: name.into(),
        state: AdminState::Ready,
    })?;
    if !wait_healthy {
        ctx.done(
            serde_json::json!({"ok": true, "backend": name, "admin": "ready"}),
            &format!("{name}: ready"),
        );
        return Ok(());
    }
    let mut said = String::new();
    loop {
        let b = backend(ctx, name)?;
        if b.health == "up" {
            let t = start.elapsed();
            ctx.done(
                serde_json::json!({"ok": true, "backend": name, "admin": "ready", "health": "up", "waited_ms": t.as_millis() as u64}),
                &format!("{name}: ready and up in {:.1} s", t.as_secs_f64()),
            );
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let msg = format!(
                "{name}: still down after {:.1} s (last check: {})",
                start.elapsed().as_secs_f64(),
                b.check
            );
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "backend": name, "health": "down", "error": msg})
                );
            } else {
                eprintln!("steer-ctl: {msg}");
            }
            return Err(exit::TIMEOUT);
        }
        if b.check != said {
            progress(&format!("{name}: down (last check: {})", b.check));
            said = b.check.clone();
        }
        std::thread::sleep(POLL);
    }
}

pub fn weight(ctx: &Ctx, name: &str, weight: u32) -> Result<(), i32> {
    ctx.call(&Request::Weight {
        backend: name.into(),
        weight,
    })?;
    ctx.done(
        serde_json::json!({"ok": true, "backend": name, "weight": weight}),
        &format!("{name}: weight {weight}"),
    );
    Ok(())
}

pub fn maintenance(ctx: &Ctx, service: &str, on: bool) -> Result<(), i32> {
    ctx.call(&Request::Maintenance {
        service: service.into(),
        on,
    })?;
    ctx.done(
        serde_json::json!({"ok": true, "service": service, "maintenance": on}),
        &format!("{service}: maintenance {}", if on { "on" } else { "off" }),
    );
    Ok(())
}
