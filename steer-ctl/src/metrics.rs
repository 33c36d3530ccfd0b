//! Prometheus text exposition, rendered at scrape time from the per-CPU maps (summed) and the
//! daemon's state. Names carry the `steer_` prefix (added by the registry), labels `service`
//! and `backend`, and counters end in `_total`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{model::Mode, proto::Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SvcLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SvcModeLabels {
    service: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BeLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BeStateLabels {
    service: String,
    backend: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BeResultLabels {
    service: String,
    backend: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BeToLabels {
    service: String,
    backend: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    /// FNV-1a of the embedded eBPF object: which datapath this binary loads.
    datapath: String,
}

/// The embedded eBPF object's fingerprint, computed once.
fn datapath_digest() -> &'static str {
    static D: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let h = crate::datapath::OBJECT
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{h:016x}")
    })
}

fn counter<
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
>(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Counter> {
    let f = Family::<L, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge<
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
>(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<L, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

/// The text exposition of one scrape.
pub fn render(status: &Status) -> String {
    let mut reg = Registry::with_prefix("steer");
    let s_packets = counter::<SvcLabels>(&mut reg, "service_packets", "Packets to the service");
    let s_bytes = counter::<SvcLabels>(&mut reg, "service_bytes", "Bytes to the service");
    let s_new = counter::<SvcLabels>(
        &mut reg,
        "service_new_flows",
        "Flows steered for the service",
    );
    let s_rst = counter::<SvcLabels>(
        &mut reg,
        "service_rst_sent",
        "RSTs sent from XDP for the service",
    );
    let s_refused = counter::<SvcLabels>(
        &mut reg,
        "service_refused",
        "NAT: connection attempts a backend of the service refused (RST to a SYN)",
    );
    let s_syn_timeouts = counter::<SvcLabels>(
        &mut reg,
        "service_syn_timeouts",
        "NAT: connection attempts a backend of the service left unanswered for syn_timeout",
    );
    let s_exhausted = counter::<SvcLabels>(
        &mut reg,
        "service_nat_exhausted",
        "NAT: new flows of the service that found no free source port",
    );
    let s_mode = gauge::<SvcModeLabels>(
        &mut reg,
        "service_mode",
        "1 for the service's forwarding mode",
    );
    let s_maint = gauge::<SvcLabels>(
        &mut reg,
        "service_maintenance",
        "1 while the service is in maintenance",
    );
    let b_packets = counter::<BeLabels>(
        &mut reg,
        "backend_packets",
        "Packets forwarded to the backend",
    );
    let b_bytes = counter::<BeLabels>(&mut reg, "backend_bytes", "Bytes forwarded to the backend");
    let b_new = counter::<BeLabels>(&mut reg, "backend_new_flows", "Flows pinned to the backend");
    let b_ended = counter::<BeLabels>(
        &mut reg,
        "backend_ended_flows",
        "Flows of the backend that saw a FIN or RST",
    );
    let b_rst = counter::<BeLabels>(
        &mut reg,
        "backend_rst_sent",
        "RSTs sent from XDP for the backend's flows",
    );
    let b_refused = counter::<BeLabels>(
        &mut reg,
        "backend_refused",
        "NAT: connection attempts the backend refused (RST to a SYN)",
    );
    let b_syn_timeouts = counter::<BeLabels>(
        &mut reg,
        "backend_syn_timeouts",
        "NAT: connection attempts the backend left unanswered for syn_timeout",
    );
    let b_exhausted = counter::<BeLabels>(
        &mut reg,
        "backend_nat_exhausted",
        "NAT: new flows for the backend that found no free source port",
    );
    let b_fails = gauge::<BeLabels>(
        &mut reg,
        "backend_observed_fails",
        "NAT passive health: consecutive failed attempts (at the service's error_limit the backend is marked down)",
    );
    let b_active = gauge::<BeLabels>(
        &mut reg,
        "backend_active_flows",
        "Flows not ended and seen within the idle timeout",
    );
    let b_up = gauge::<BeLabels>(
        &mut reg,
        "backend_up",
        "1 when the health checks find the backend up",
    );
    let b_admin = gauge::<BeStateLabels>(
        &mut reg,
        "backend_admin_state",
        "1 for the backend's admin state",
    );
    let b_weight = gauge::<BeLabels>(&mut reg, "backend_weight", "Maglev weight");
    let b_lat = gauge::<BeLabels>(
        &mut reg,
        "backend_check_latency_seconds",
        "Duration of the last health check",
    );
    let b_checks = counter::<BeResultLabels>(
        &mut reg,
        "backend_checks",
        "Health checks run, by result (ok, failed; not_run: could not run from this host)",
    );
    let b_transitions = counter::<BeToLabels>(
        &mut reg,
        "backend_health_transitions",
        "Health changes of the backend, by the health it went to",
    );
    let b_passive = counter::<BeLabels>(
        &mut reg,
        "backend_passive_downs",
        "NAT passive health: times the backend was marked down for failed attempts",
    );
    let b_since = gauge::<BeLabels>(
        &mut reg,
        "backend_state_age_seconds",
        "Time since the backend's last change of admin state or health",
    );
    let dp = counter::<OutcomeLabels>(
        &mut reg,
        "datapath_packets",
        "Packets seen by the datapath, by outcome: every packet is counted under exactly one",
    );
    let ev = counter::<EventLabels>(
        &mut reg,
        "datapath_events",
        "Datapath events (a packet may cause several, or none): redispatches, stale SYNs, flow misses, NAT and passive-health events",
    );
    let build = Family::<BuildLabels, Gauge>::default();
    reg.register(
        "build_info",
        "1, labelled with the steer-ctl version and a fingerprint of the datapath it loads",
        build.clone(),
    );
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            datapath: datapath_digest().into(),
        })
        .set(1);

    for s in &status.services {
        let l = SvcLabels {
            service: s.name.clone(),
        };
        s_packets.get_or_create(&l).inc_by(s.counters.packets);
        s_bytes.get_or_create(&l).inc_by(s.counters.bytes);
        s_new.get_or_create(&l).inc_by(s.counters.new_flows);
        s_rst.get_or_create(&l).inc_by(s.counters.rst_sent);
        s_refused.get_or_create(&l).inc_by(s.counters.refused);
        s_syn_timeouts
            .get_or_create(&l)
            .inc_by(s.counters.syn_timeouts);
        s_exhausted
            .get_or_create(&l)
            .inc_by(s.counters.nat_exhausted);
        for m in [Mode::Dsr, Mode::Nat] {
            s_mode
                .get_or_create(&SvcModeLabels {
                    service: s.name.clone(),
                    mode: m.to_string(),
                })
                .set((s.mode == m) as u8 as f64);
        }
        s_maint.get_or_create(&l).set(s.maintenance as u8 as f64);
    }
    for b in &status.backends {
        let l = BeLabels {
            service: b.service.clone(),
            backend: b.name.clone(),
        };
        b_packets.get_or_create(&l).inc_by(b.counters.packets);
        b_bytes.get_or_create(&l).inc_by(b.counters.bytes);
        b_new.get_or_create(&l).inc_by(b.counters.new_flows);
        b_ended.get_or_create(&l).inc_by(b.counters.ended_flows);
        b_rst.get_or_create(&l).inc_by(b.counters.rst_sent);
        b_refused.get_or_create(&l).inc_by(b.counters.refused);
        b_syn_timeouts
            .get_or_create(&l)
            .inc_by(b.counters.syn_timeouts);
        b_exhausted
            .get_or_create(&l)
            .inc_by(b.counters.nat_exhausted);
        if let Some(n) = b.observed_fails {
            b_fails.get_or_create(&l).set(n as f64);
        }
        // Unknown (no scan yet, or it failed): absent rather than a wrong zero.
        if let Some(n) = b.active_flows {
            b_active.get_or_create(&l).set(n as f64);
        }
        b_up.get_or_create(&l)
            .set((b.health == crate::model::Health::Up) as u8 as f64);
        b_weight.get_or_create(&l).set(b.weight as f64);
        if let Some(ms) = b.check_ms {
            b_lat.get_or_create(&l).set(ms / 1000.0);
        }
        let ok = b
            .checks_run
            .saturating_sub(b.check_failures + b.checks_not_run);
        for (result, n) in [
            ("ok", ok),
            ("failed", b.check_failures),
            ("not_run", b.checks_not_run),
        ] {
            b_checks
                .get_or_create(&BeResultLabels {
                    service: b.service.clone(),
                    backend: b.name.clone(),
                    result: result.into(),
                })
                .inc_by(n);
        }
        for (to, n) in [("up", b.went_up), ("down", b.went_down)] {
            b_transitions
                .get_or_create(&BeToLabels {
                    service: b.service.clone(),
                    backend: b.name.clone(),
                    to: to.into(),
                })
                .inc_by(n);
        }
        b_passive.get_or_create(&l).inc_by(b.passive_downs);
        b_since
            .get_or_create(&l)
            .set(b.last_change_ms as f64 / 1000.0);
        for st in ["ready", "drain", "maint", "reject"] {
            b_admin
                .get_or_create(&BeStateLabels {
                    service: b.service.clone(),
                    backend: b.name.clone(),
                    state: st.into(),
                })
                .set((b.admin.to_string() == st) as u8 as f64);
        }
    }
    let tables = gauge::<TableLabels>(
        &mut reg,
        "flow_table_entries",
        "Entries of a connection table at the last scan (established; transient: ended, and NAT half-open; attempts: DSR half-open)",
    );
    let capacity = gauge::<TableLabels>(
        &mut reg,
        "flow_table_capacity",
        "Capacity of a connection table",
    );
    let evictions = counter::<TableLabels>(
        &mut reg,
        "flow_table_evictions",
        "Entries a new one displaced while still in use. Counted for the attempts table (a SYN taking the slot of another connection attempt in progress); the kernel does not count its LRU tables' evictions: see steer_flow_table_full",
    );
    let full = gauge::<TableLabels>(
        &mut reg,
        "flow_table_full",
        "1 when the last scan found the established table (nearly) full of live connections: its LRU then evicts connections still in use",
    );
    if let Some(n) = status.datapath.get("attempt_evicted") {
        evictions
            .get_or_create(&TableLabels {
                table: "attempts".into(),
            })
            .inc_by(*n);
    }
    let f = &status.flow_scan;
    if f.seq > 0 && f.error.is_none() {
        full.get_or_create(&TableLabels {
            table: "established".into(),
        })
        .set((f.last_full_seq == f.seq) as u8 as f64);
        for (table, n, cap) in [
            ("established", f.established, f.capacity),
            ("transient", f.transient, f.transient_capacity),
            ("attempts", f.attempts, f.attempts_capacity),
        ] {
            let l = TableLabels {
                table: table.into(),
            };
            tables.get_or_create(&l).set(n as f64);
            capacity.get_or_create(&l).set(cap as f64);
        }
    }
    for (name, n) in &status.datapath {
        if steer_common::event::NAMES.contains(&name.as_str()) {
            ev.get_or_create(&EventLabels {
                event: name.clone(),
            })
            .inc_by(*n);
        } else {
            dp.get_or_create(&OutcomeLabels {
                outcome: name.clone(),
            })
            .inc_by(*n);
        }
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding to a String");
    out
}

/// Connections served at once; more are closed at once (any local user can connect).
const MAX_CONNS: usize = 32;
/// A connection gets this long for its request and the answer, whatever it does.
const CONN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One answer of the endpoint.
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Content type of the exposition (`encode` writes OpenMetrics text).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `route(path)` on `addr` (`/metrics`, the stats page): one request per connection,
/// at most `MAX_CONNS` at once, each closed after `CONN_TIMEOUT`.
pub async fn serve(
    addr: SocketAddr,
    route: impl Fn(&str) -> Page + Send + Sync + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "metrics endpoint and stats page listening");
    if !addr.ip().is_loopback() {
        tracing::warn!(address = %addr, "metrics and the stats page are served beyond this host: whoever reaches the address sees the services, backends and their states");
    }
    let route = Arc::new(route);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    let mut errors = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: say so now and then, never spin.
                if errors.is_multiple_of(1000) {
                    tracing::warn!(error = %e, held_back = errors, "accept on the metrics endpoint");
                }
                errors += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let route = route.clone();
                let path = req.uri().path().to_string();
                let get = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
                async move {
                    let page = if get {
                        tokio::task::spawn_blocking(move || route(&path))
                            .await
                            .unwrap_or(Page {
                                status: 500,
                                content_type: "text/plain; charset=utf-8",
                                body: "internal error\n".into(),
                            })
                    } else {
                        Page {
                            status: 405,
                            content_type: "text/plain; charset=utf-8",
                            body: "only GET\n".into(),
                        }
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(page.body)));
                    *resp.status_mut() = hyper::StatusCode::from_u16(page.status)
                        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(page.content_type),
                    );
                    resp.headers_mut().insert(
                        hyper::header::CACHE_CONTROL,
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BackendStatus, Counters};

    /// The value of the sample line that starts with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn outcomes_and_events_are_families_of_their_own() {
        let mut status = Status::default();
        let outcomes = [("tx_forward", 90), ("pass_not_service", 10), ("tx_rst", 5)];
        for (n, v) in outcomes {
            status.datapath.insert(n.into(), v);
        }
        status.datapath.insert("redispatch".into(), 3);
        status.datapath.insert("stale_syn".into(), 2);
        status.datapath.insert("attempt_evicted".into(), 7);
        status.backends.push(BackendStatus {
            name: "a".into(),
            service: "web".into(),
            checks_run: 10,
            check_failures: 3,
            checks_not_run: 1,
            went_down: 1,
            went_up: 2,
            last_change_ms: 1500,
            counters: Counters::default(),
            ..BackendStatus::default()
        });
        let text = render(&status);
        // Every packet under exactly one outcome: the family sums to the packets seen.
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with("steer_datapath_packets_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(sum, 105.0, "{text}");
        assert_eq!(
            sample(&text, "steer_datapath_events_total{event=\"redispatch\"}"),
            Some(3.0)
        );
        assert!(!text.contains("outcome=\"redispatch\""), "{text}");
        assert_eq!(
            sample(
                &text,
                "steer_flow_table_evictions_total{table=\"attempts\"}"
            ),
            Some(7.0)
        );
        assert!(text.contains("# TYPE steer_datapath_events counter"));
        assert_eq!(
            sample(
                &text,
                "steer_backend_checks_total{service=\"web\",backend=\"a\",result=\"ok\"}"
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(
                &text,
                "steer_backend_health_transitions_total{service=\"web\",backend=\"a\",to=\"down\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "steer_backend_state_age_seconds{service=\"web\",backend=\"a\"}"
            ),
            Some(1.5)
        );
        let build = text
            .lines()
            .find(|l| l.starts_with("steer_build_info{"))
            .expect("build_info");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && build.ends_with(" 1"),
            "{build}"
        );
    }
}
