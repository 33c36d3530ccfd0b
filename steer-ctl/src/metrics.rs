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

use crate::{balancer::Balancer, model::Mode, proto::Status};

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
struct ReasonLabels {
    reason: String,
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
pub fn render(status: &Status, _bal: &Balancer) -> String {
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
    let dp = counter::<ReasonLabels>(
        &mut reg,
        "datapath_packets",
        "Packets by datapath outcome or event",
    );

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
    let f = &status.flow_scan;
    if f.seq > 0 && f.error.is_none() {
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
    for (reason, n) in &status.datapath {
        dp.get_or_create(&ReasonLabels {
            reason: reason.clone(),
        })
        .inc_by(*n);
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("encoding to a String");
    out
}

/// Connections served at once; more are closed at once (any local user can connect).
const MAX_CONNS: usize = 32;
/// A connection gets this long for its request and the answer, whatever it does.
const CONN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `GET /metrics` (any path) with `render()` on `addr`: one request per connection,
/// at most `MAX_CONNS` at once, each closed after `CONN_TIMEOUT`.
pub async fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "metrics endpoint listening");
    let render = Arc::new(render);
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
        let render = render.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let render = render.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || render())
                        .await
                        .unwrap_or_default();
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
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
