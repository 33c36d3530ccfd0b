//! Deploy-hook verbs: `drain`, `ready`, `maint`, `reject`, `weight`, `maintenance`.

use std::time::{Duration, Instant};

use steer_ctl::{
    exit,
    model::AdminState,
    proto::{BackendStatus, Request},
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
        target: name.into(),
        state,
    })?;
    ctx.done(
        serde_json::json!({"ok": true, "backend": name, "admin": state}),
        &format!("{name}: {state}"),
    );
    Ok(())
}

/// The backends a name stands for: the backend of that name, or every backend of that group.
pub fn members(ctx: &Ctx, name: &str) -> Result<Vec<String>, i32> {
    let s = ctx.call(&Request::Status)?.status.unwrap_or_default();
    if s.backends.iter().any(|b| b.name == name) {
        return Ok(vec![name.to_string()]);
    }
    let group: Vec<String> = s
        .backends
        .iter()
        .filter(|b| b.group.as_deref() == Some(name))
        .map(|b| b.name.clone())
        .collect();
    if group.is_empty() {
        ctx.fail(&format!("no backend or group named {name:?}"));
        return Err(exit::FAILURE);
    }
    Ok(group)
}

/// Active flows of `names`, summed.
pub fn active(ctx: &Ctx, names: &[String]) -> Result<u64, i32> {
    let s = ctx.call(&Request::Status)?.status.unwrap_or_default();
    Ok(s.backends
        .iter()
        .filter(|b| names.contains(&b.name))
        .map(|b| b.active_flows.unwrap_or(0))
        .sum())
}

pub fn switch(ctx: &Ctx, service: &str, group: Option<&str>) -> Result<(), i32> {
    ctx.call(&Request::Switch {
        service: service.into(),
        group: group.map(String::from),
        force: false,
    })?;
    let text = match group {
        Some(g) => {
            format!("{service}: new flows go to group {g}; the others' flows finish where they are")
        }
        None => format!("{service}: every group takes new flows"),
    };
    ctx.done(
        serde_json::json!({"ok": true, "service": service, "group": group}),
        &text,
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
    // A backend name first, in one round trip: a deploy hook's drain takes effect at once.
    let first = steer_ctl::client::request(
        ctx.socket,
        &Request::Admin {
            target: name.into(),
            state: AdminState::Drain,
        },
        Duration::from_secs(30),
    );
    let names = match first {
        Ok(r) if r.ok => vec![name.to_string()],
        Ok(r)
            if r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("no backend named")) =>
        {
            // Not a backend: a group.
            let names = members(ctx, name)?;
            for b in &names {
                ctx.call(&Request::Admin {
                    target: b.clone(),
                    state: AdminState::Drain,
                })?;
            }
            names
        }
        _ => {
            // Report it as every other verb does.
            ctx.call(&Request::Admin {
                target: name.into(),
                state: AdminState::Drain,
            })?;
            vec![name.to_string()]
        }
    };
    if !wait {
        ctx.done(
            serde_json::json!({"ok": true, "backend": name, "admin": "drain"}),
            &format!("{name}: drain (new flows stop now; its flows go on)"),
        );
        return Ok(());
    }
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let active_flows = active(ctx, &names)?;
        let elapsed = start.elapsed();
        if active_flows == 0 && elapsed >= min {
            ctx.done(
                serde_json::json!({"ok": true, "backend": name, "admin": "drain", "active_flows": 0, "waited_ms": elapsed.as_millis() as u64}),
                &format!("{name}: drained in {:.1} s", elapsed.as_secs_f64()),
            );
            return Ok(());
        }
        if elapsed >= timeout {
            let msg = format!(
                "{name}: {} active flows left after {:.1} s (--timeout)",
                active_flows,
                elapsed.as_secs_f64()
            );
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "backend": name, "active_flows": active_flows, "error": msg})
                );
            } else {
                eprintln!("steer-ctl: {msg}");
            }
            return Err(exit::TIMEOUT);
        }
        let changed =
            last.is_none_or(|(n, at)| n != active_flows || at.elapsed() >= Duration::from_secs(5));
        if changed {
            progress(&format!("{name}: {} active flows", active_flows));
            last = Some((active_flows, Instant::now()));
        }
        std::thread::sleep(POLL);
    }
}

pub fn ready(ctx: &Ctx, name: &str, wait_healthy: bool, timeout: Duration) -> Result<(), i32> {
    let start = Instant::now();
    // Checks run so far: "healthy" needs a passing check from after this command.
    let runs0 = if wait_healthy {
        backend(ctx, name)?.checks_run
    } else {
        0
    };
    ctx.call(&Request::Admin {
        target: name.into(),
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
        let unchecked = b.checks_run == 0;
        if b.health == steer_ctl::Health::Up
            && (unchecked || (b.checks_run > runs0 && b.check == "ok"))
        {
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
        target: name.into(),
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
