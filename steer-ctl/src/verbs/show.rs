//! `status` and `show services|backends|flows`.

use steer_ctl::proto::{Request, Status};

use super::Ctx;
use crate::cli::ShowWhat;

fn fetch(ctx: &Ctx) -> Result<Status, i32> {
    Ok(ctx.call(&Request::Status)?.status.unwrap_or_default())
}

fn print_services(s: &Status) {
    println!(
        "{:<12} {:<24} {:<5} {:<11} {:>8} {:>12} {:>10}",
        "SERVICE", "ADDRESS", "PROTO", "MAINTENANCE", "ELIGIBLE", "PACKETS", "NEW FLOWS"
    );
    for v in &s.services {
        let addr = if v.vip.contains(':') {
            format!("[{}]:{}", v.vip, v.port)
        } else {
            format!("{}:{}", v.vip, v.port)
        };
        println!(
            "{:<12} {:<24} {:<5} {:<11} {:>8} {:>12} {:>10}",
            v.name,
            addr,
            v.protocol,
            if v.maintenance { "on" } else { "off" },
            v.eligible,
            v.counters.packets,
            v.counters.new_flows
        );
    }
}

fn print_backends(s: &Status) {
    println!(
        "{:<12} {:<10} {:<16} {:<11} {:<7} {:<6} {:>6} {:>7} {:>12}  CHECK",
        "BACKEND", "SERVICE", "ADDRESS", "ROLE", "ADMIN", "HEALTH", "WEIGHT", "ACTIVE", "PACKETS"
    );
    for b in &s.backends {
        println!(
            "{:<12} {:<10} {:<16} {:<11} {:<7} {:<6} {:>6} {:>7} {:>12}  {}",
            b.name,
            b.service,
            b.address,
            b.role,
            b.admin.to_string(),
            b.health,
            b.weight,
            b.active_flows.map_or("?".to_string(), |n| n.to_string()),
            b.counters.packets,
            b.check
        );
    }
}

pub fn status(ctx: &Ctx) -> Result<(), i32> {
    let s = fetch(ctx)?;
    if ctx.json {
        println!("{}", serde_json::to_string(&s).expect("status serializes"));
        return Ok(());
    }
    println!("config: {}", s.config);
    println!();
    print_services(&s);
    println!();
    print_backends(&s);
    Ok(())
}

pub fn show(ctx: &Ctx, what: ShowWhat, limit: usize) -> Result<(), i32> {
    match what {
        ShowWhat::Services | ShowWhat::Backends => {
            let s = fetch(ctx)?;
            if ctx.json {
                let v = match what {
                    ShowWhat::Services => serde_json::to_value(&s.services),
                    _ => serde_json::to_value(&s.backends),
                };
                println!("{}", v.expect("serializes"));
            } else if matches!(what, ShowWhat::Services) {
                print_services(&s);
            } else {
                print_backends(&s);
            }
        }
        ShowWhat::Flows => {
            let flows = ctx
                .call(&Request::Flows { limit })?
                .flows
                .unwrap_or_default();
            if ctx.json {
                println!("{}", serde_json::to_string(&flows).expect("serializes"));
            } else {
                println!(
                    "{:<46} {:<46} {:<5} {:<12} {:<12} {:>9}",
                    "CLIENT", "VIP", "PROTO", "BACKEND", "STATE", "IDLE MS"
                );
                for f in flows {
                    println!(
                        "{:<46} {:<46} {:<5} {:<12} {:<12} {:>9}",
                        f.client, f.vip, f.protocol, f.backend, f.state, f.idle_ms
                    );
                }
            }
        }
    }
    Ok(())
}
