//! `rollout`: restart a service's backends a batch at a time — drain and wait, run the
//! command, set ready and wait until healthy — and stop at the first failure, leaving that
//! backend drained and the rest untouched.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use steer_ctl::{
    exit,
    model::AdminState,
    proto::{BackendStatus, Request},
};

use super::{admin::active, Ctx};

pub struct Plan<'a> {
    pub service: &'a str,
    pub exec: &'a str,
    pub batch: usize,
    pub drain_timeout: Duration,
    pub healthy_timeout: Duration,
    pub continue_on_error: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const POLL: Duration = Duration::from_millis(100);

/// What happened to one backend.
#[derive(Default, serde::Serialize)]
struct Step {
    backend: String,
    address: String,
    drain_ms: u64,
    /// Flows still open when the drain timeout passed (0 when drained).
    flows_left: u64,
    exec_ms: u64,
    healthy_ms: u64,
    result: String,
}

fn say(ctx: &Ctx, msg: &str) {
    // Progress goes to stderr with --json, so stdout stays one JSON summary.
    if ctx.json {
        eprintln!("{msg}");
    } else {
        println!("{msg}");
    }
}

fn status(ctx: &Ctx) -> Result<Vec<BackendStatus>, i32> {
    Ok(ctx
        .call(&Request::Status)?
        .status
        .unwrap_or_default()
        .backends)
}

fn set(ctx: &Ctx, backend: &str, state: AdminState) -> Result<(), i32> {
    ctx.call(&Request::Admin {
        target: backend.into(),
        state,
    })
    .map(|_| ())
}

pub fn run(ctx: &Ctx, plan: &Plan) -> Result<(), i32> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let now = ctx.call(&Request::Status)?.status.unwrap_or_default();
    // With a group switched to, the rollout is of that group: the others take no new flows.
    let group_filter = now
        .services
        .iter()
        .find(|s| s.name == plan.service)
        .and_then(|s| s.active_group.clone());
    let backends: Vec<BackendStatus> = {
        let mut v: Vec<BackendStatus> = now
            .backends
            .into_iter()
            .filter(|b| b.service == plan.service && b.role == steer_ctl::Role::Pool)
            .filter(|b| group_filter.is_none() || b.group == group_filter)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    if backends.is_empty() {
        ctx.fail(&format!("service {:?} has no pool backend", plan.service));
        return Err(exit::FAILURE);
    }
    let eligible = backends
        .iter()
        .filter(|b| b.admin == AdminState::Ready && b.health == steer_ctl::Health::Up)
        .count();
    if eligible < 2 {
        ctx.fail(&format!(
            "service {:?} has {eligible} eligible backend(s): a rollout would leave it none",
            plan.service
        ));
        return Err(exit::FAILURE);
    }
    // Never take out so many that no eligible backend is left.
    let batch = plan.batch.clamp(1, eligible - 1);
    if batch < plan.batch {
        say(
            ctx,
            &format!(
                "batch of {} lowered to {batch}: {eligible} backends are eligible",
                plan.batch
            ),
        );
    }
    let todo: Vec<&BackendStatus> = backends
        .iter()
        .filter(|b| b.admin == AdminState::Ready)
        .collect();
    let start = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut failed = false;
    // Backends left drained by an interruption (the batch in flight), and whether one came.
    let mut interrupted: Vec<String> = Vec::new();
    let mut was_interrupted = false;
    let mut next = 0;
    while next < todo.len() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            was_interrupted = true;
            break;
        }
        // Recount before each batch: failures left drained, or checks, may have taken some out.
        let eligible_now = status(ctx)?
            .iter()
            .filter(|b| b.service == plan.service && b.role == steer_ctl::Role::Pool)
            .filter(|b| group_filter.is_none() || b.group == group_filter)
            .filter(|b| b.admin == AdminState::Ready && b.health == steer_ctl::Health::Up)
            .count();
        let n = batch.min(eligible_now.saturating_sub(1));
        if n == 0 {
            say(ctx, &format!("stopping: {eligible_now} eligible backend(s) left; taking one out would leave none"));
            failed = true;
            break;
        }
        let group = &todo[next..(next + n).min(todo.len())];
        next += group.len();
        let names: Vec<String> = group.iter().map(|b| b.name.clone()).collect();
        let mut batch_steps: Vec<Step> = group
            .iter()
            .map(|b| Step {
                backend: b.name.clone(),
                address: b.address.clone(),
                ..Step::default()
            })
            .collect();
        // 1. Drain and wait.
        let t = Instant::now();
        for n in &names {
            set(ctx, n, AdminState::Drain)?;
        }
        say(ctx, &format!("{}: draining", names.join(", ")));
        let left = loop {
            let n = active(ctx, &names)?;
            if n == 0 || t.elapsed() >= plan.drain_timeout || INTERRUPTED.load(Ordering::SeqCst) {
                break n;
            }
            std::thread::sleep(POLL);
        };
        for s in &mut batch_steps {
            s.drain_ms = t.elapsed().as_millis() as u64;
            s.flows_left = left;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            was_interrupted = true;
            interrupted = names.clone();
            steps.extend(batch_steps);
            break;
        }
        if left > 0 {
            say(
                ctx,
                &format!(
                    "{}: drain timeout with {left} flows left; going on",
                    names.join(", ")
                ),
            );
        } else {
            say(
                ctx,
                &format!(
                    "{}: drained in {:.1} s",
                    names.join(", "),
                    t.elapsed().as_secs_f64()
                ),
            );
        }
        // 2. Run the command, per backend.
        let mut batch_ok = true;
        for s in &mut batch_steps {
            let cmd = plan
                .exec
                .replace("{backend}", &s.backend)
                .replace("{address}", &s.address);
            let t = Instant::now();
            say(ctx, &format!("{}: running {cmd}", s.backend));
            let st = Command::new("sh").args(["-c", &cmd]).status();
            s.exec_ms = t.elapsed().as_millis() as u64;
            match st {
                Ok(st) if st.success() => {}
                Ok(st) => {
                    s.result = format!("command failed ({st}); left drained");
                    batch_ok = false;
                }
                Err(e) => {
                    s.result = format!("command could not run ({e}); left drained");
                    batch_ok = false;
                }
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            // Stop with the batch in flight drained: it has just been worked on.
            was_interrupted = true;
            interrupted = names.clone();
            for s in &mut batch_steps {
                if s.result.is_empty() {
                    s.result = "interrupted; left drained".into();
                }
            }
            steps.extend(batch_steps);
            break;
        }
        // 3. Wait for fresh passing checks while still drained — a result from before the
        // restart proves nothing — then ready.
        for s in batch_steps.iter_mut().filter(|s| s.result.is_empty()) {
            let t = Instant::now();
            let runs0 = status(ctx)?
                .into_iter()
                .find(|b| b.name == s.backend)
                .map_or(0, |b| b.checks_run);
            let up = loop {
                let b = status(ctx)?.into_iter().find(|b| b.name == s.backend);
                let fresh = b.as_ref().is_some_and(|b| {
                    // A backend without checks is up by definition.
                    (b.checks_run == 0 && b.health == steer_ctl::Health::Up)
                        || (b.checks_run >= runs0 + 2
                            && b.check == "ok"
                            && b.health == steer_ctl::Health::Up)
                });
                if fresh {
                    break true;
                }
                if t.elapsed() >= plan.healthy_timeout {
                    break false;
                }
                std::thread::sleep(POLL);
            };
            s.healthy_ms = t.elapsed().as_millis() as u64;
            if up {
                set(ctx, &s.backend, AdminState::Ready)?;
                s.result = "ok".into();
                say(
                    ctx,
                    &format!(
                        "{}: healthy and back in rotation {:.1} s after the command",
                        s.backend,
                        t.elapsed().as_secs_f64()
                    ),
                );
            } else {
                s.result = "not healthy in time; left drained".into();
                batch_ok = false;
            }
        }
        for s in batch_steps.iter().filter(|s| s.result != "ok") {
            say(ctx, &format!("{}: {}", s.backend, s.result));
        }
        steps.extend(batch_steps);
        if !batch_ok {
            failed = true;
            if !plan.continue_on_error {
                break;
            }
        }
    }
    let ok = !failed && !was_interrupted && steps.len() == todo.len();
    let summary = serde_json::json!({
        "ok": ok,
        "service": plan.service,
        "seconds": start.elapsed().as_secs_f64(),
        "interrupted": was_interrupted,
        "left_drained": interrupted,
        "backends": steps,
    });
    if ctx.json {
        println!("{summary}");
    } else if was_interrupted {
        println!(
            "rollout of {} interrupted: {}; the others are as they were",
            plan.service,
            if interrupted.is_empty() {
                "no backend left drained".to_string()
            } else {
                format!("{} left drained (in flight)", interrupted.join(", "))
            }
        );
    } else if ok {
        println!(
            "rollout of {} done: {} backends in {:.1} s",
            plan.service,
            steps.len(),
            start.elapsed().as_secs_f64()
        );
    } else {
        println!("rollout of {} stopped: see above", plan.service);
    }
    if was_interrupted {
        return Err(130);
    }
    if ok {
        Ok(())
    } else {
        Err(exit::FAILURE)
    }
}
