//! `rollout`: the sequence is `steer_ctl::deploy::rollout`; this prints its progress (stdout, or
//! stderr with --json) and its summary, and turns Ctrl-C into "stop after the batch in flight".

use steer_ctl::deploy::{self, Plan, System};

use super::{catch_ctrl_c, err, out, Ctx};

pub fn run(ctx: &Ctx, plan: Plan) -> Result<(), i32> {
    let json = ctx.json;
    // With --json, stdout is the summary alone: progress and the commands' output go to stderr.
    let mut env = System::new(move |m| if json { err(m) } else { out(m) })
        .with_interrupt(catch_ctrl_c())
        .commands_to_stderr(json);
    let r = deploy::rollout(&mut ctx.client(), &mut env, &plan).map_err(|e| ctx.fail(&e))?;
    if json {
        out(serde_json::to_value(&r).expect("summary serializes"));
    } else if r.ok {
        out(format!(
            "rollout of {} done: {} backends in {:.1} s",
            r.service,
            r.backends.len(),
            r.seconds
        ));
    } else {
        let left = if r.left_drained.is_empty() {
            "no backend left drained".to_string()
        } else {
            format!("left drained: {}", r.left_drained.join(", "))
        };
        let why = r.error.as_deref().unwrap_or("see above");
        if r.interrupted {
            out(format!(
                "rollout of {} interrupted; {left}; the others are as they were",
                r.service
            ));
        } else {
            out(format!("rollout of {} stopped: {why}", r.service));
            out(left);
        }
    }
    match r.exit_code {
        0 => Ok(()),
        code => Err(code),
    }
}
