//! Deploy-hook verbs: `drain`, `ready`, `maint`, `reject`, `weight`, `maintenance`, `switch`.
//! Every target is a backend or a group, sent as is: the daemon resolves it and changes every
//! member in one step. The waits live in `steer_ctl::deploy`.

use std::time::Duration;

use serde_json::json;
use steer_ctl::{
    deploy::{self, DrainOpts, ReadyOpts, System},
    model::AdminState,
    proto::{ErrorKind, Request},
};

use super::{catch_ctrl_c, err, Ctx};

/// "web-a", or "blue (b0, b1)" when a group stands for its members.
fn named(target: &str, backends: &[String]) -> String {
    if backends.is_empty() || backends == [target] {
        target.to_string()
    } else {
        format!("{target} ({})", backends.join(", "))
    }
}

pub fn set(ctx: &Ctx, target: &str, state: AdminState) -> Result<(), i32> {
    let r = ctx.call(&Request::Admin {
        target: target.into(),
        state,
    })?;
    ctx.done(
        json!({"ok": true, "target": target, "backends": r.backends, "admin": state}),
        &format!("{}: {state}", named(target, &r.backends)),
    );
    Ok(())
}

pub fn drain(
    ctx: &Ctx,
    target: &str,
    wait: bool,
    timeout: Duration,
    min: Duration,
) -> Result<(), i32> {
    let opts = DrainOpts { wait, timeout, min };
    let d = deploy::drain(&mut ctx.client(), &mut System::stderr(), target, opts)
        .map_err(|e| ctx.fail(&e))?;
    let who = named(target, &d.backends);
    let text = if wait {
        let mut t = format!("{who}: drained in {:.1} s", d.waited_ms as f64 / 1000.0);
        if !d.hosts.is_empty() {
            t += &format!(" on this host and {}", d.hosts.join(", "));
        }
        if !d.gone.is_empty() {
            t += &format!(" ({} gone meanwhile: not waited for)", d.gone.join(", "));
        }
        t
    } else {
        format!("{who}: drain (new flows stop now; its flows go on)")
    };
    let mut v = json!({"ok": true, "target": target, "backends": d.backends, "admin": "drain"});
    if wait {
        v["active_flows"] = json!(0);
        v["waited_ms"] = json!(d.waited_ms);
        if !d.hosts.is_empty() {
            v["hosts"] = json!(d.hosts);
            v["gone"] = json!(d.gone);
        }
    }
    if let Some(scan) = d.scan {
        v["scan"] = json!(scan);
    }
    ctx.done(v, &text);
    Ok(())
}

pub fn ready(ctx: &Ctx, target: &str, wait_healthy: bool, timeout: Duration) -> Result<(), i32> {
    let mut env = System::stderr();
    if wait_healthy {
        // Ctrl-C puts back what the wait changed (maint -> drain) before exiting.
        env = env.with_interrupt(catch_ctrl_c());
    }
    let r = deploy::ready(
        &mut ctx.client(),
        &mut env,
        target,
        ReadyOpts::new(wait_healthy, timeout),
    )
    .map_err(|e| ctx.fail(&e))?;
    let who = named(target, &r.backends);
    let mut v = json!({"ok": true, "target": target, "backends": r.backends, "admin": "ready"});
    let text = if wait_healthy {
        v["health"] = json!("up");
        v["waited_ms"] = json!(r.waited_ms);
        format!(
            "{who}: ready, after a passing check, in {:.1} s",
            r.waited_ms as f64 / 1000.0
        )
    } else {
        format!("{who}: ready (takes new flows once its checks find it up)")
    };
    ctx.done(v, &text);
    Ok(())
}

pub fn weight(ctx: &Ctx, target: &str, weight: u32) -> Result<(), i32> {
    let r = ctx.call(&Request::Weight {
        target: target.into(),
        weight,
    })?;
    ctx.done(
        json!({"ok": true, "target": target, "backends": r.backends, "weight": weight}),
        &format!("{}: weight {weight}", named(target, &r.backends)),
    );
    Ok(())
}

pub fn maintenance(ctx: &Ctx, service: &str, on: bool) -> Result<(), i32> {
    ctx.call(&Request::Maintenance {
        service: service.into(),
        on,
    })?;
    ctx.done(
        json!({"ok": true, "service": service, "maintenance": on}),
        &format!("{service}: maintenance {}", if on { "on" } else { "off" }),
    );
    Ok(())
}

pub fn switch(ctx: &Ctx, service: &str, group: Option<&str>, force: bool) -> Result<(), i32> {
    let req = Request::Switch {
        service: service.into(),
        group: group.map(String::from),
        force,
    };
    // The daemon's refusal is printed as is (exit 1); --force is the way past it.
    let r = deploy::call(&mut ctx.client(), &req).map_err(|e| {
        let code = ctx.fail(&e);
        let refused = matches!(
            e,
            deploy::DeployError::Daemon {
                kind: Some(ErrorKind::Refused),
                ..
            }
        );
        if refused && !ctx.json && !force {
            err("steer-ctl: (switch --force switches anyway)");
        }
        code
    })?;
    let text = match group {
        Some(g) => {
            format!("{service}: new flows go to group {g}; the others' flows finish where they are")
        }
        None => format!("{service}: every group takes new flows"),
    };
    let mut v = json!({"ok": true, "service": service, "group": group, "force": force});
    if let Some(m) = r.message {
        v["message"] = json!(m);
    }
    ctx.done(v, &text);
    Ok(())
}
