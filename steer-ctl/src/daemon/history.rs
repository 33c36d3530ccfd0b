//! What changed and when, per backend, and recent rates: what `show`, the stats page and the
//! metrics report beside the state itself (HAProxy's `lastchg`, `chkdown`, `rate`).
//!
//! Transitions are noted after every change the daemon applies (a verb, a reload, a check
//! result, passive health), by comparing each backend's admin state and health with what was
//! last noted, so no path that changes a state can forget to record it. Rates are taken from
//! the counters at the moments someone reads them (a status, a scrape, the stats page): no
//! timer runs while nobody looks.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    balancer::BackendInfo,
    model::{AdminState, Health},
};

/// A backend's last noted state and its last change.
#[derive(Clone, Debug)]
struct Seen {
    admin: AdminState,
    health: Health,
    at: Instant,
    what: String,
    /// Health transitions since the daemon started: to up, to down.
    went_up: u64,
    went_down: u64,
}

/// What the status reports of a backend's history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// How long ago the last change was.
    pub ago: Duration,
    /// What it was ("health up → down: connect: refused", "admin ready → drain").
    pub what: String,
    pub went_up: u64,
    pub went_down: u64,
}

/// Counters of one sample: per name (backend or service), packets and new flows.
type Counts = BTreeMap<String, (u64, u64)>;

struct Sample {
    at: Instant,
    counts: Counts,
}

/// Rates over the window since the sample they are measured from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub packets_per_s: f64,
    pub new_flows_per_s: f64,
}

/// Rates are measured over at least this long (a read within it reuses an older sample).
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Samples kept: enough that a reader polling every second or two always finds one at least
/// `MIN_WINDOW` old.
const SAMPLES: usize = 4;

#[derive(Default)]
pub struct History {
    seen: BTreeMap<String, Seen>,
    samples: VecDeque<Sample>,
}

impl History {
    /// Notes the state of every backend; a backend not seen before starts its history now
    /// (`first` says why: "daemon started", "added by a reload"). `reason` gives why a
    /// backend's health is what it is (the last check result, or passive health's finding).
    pub fn note(
        &mut self,
        infos: &[BackendInfo],
        first: &str,
        reason: impl Fn(&str) -> Option<String>,
    ) {
        let now = Instant::now();
        self.seen
            .retain(|name, _| infos.iter().any(|b| &b.name == name));
        for b in infos {
            let Some(s) = self.seen.get_mut(&b.name) else {
                self.seen.insert(
                    b.name.clone(),
                    Seen {
                        admin: b.admin,
                        health: b.health,
                        at: now,
                        what: first.to_string(),
                        went_up: 0,
                        went_down: 0,
                    },
                );
                continue;
            };
            let mut parts = Vec::new();
            if s.admin != b.admin {
                parts.push(format!("admin {} → {}", s.admin, b.admin));
            }
            if s.health != b.health {
                let mut p = format!("health {} → {}", s.health.as_str(), b.health.as_str());
                if let Some(r) = reason(&b.name) {
                    p += &format!(": {r}");
                }
                parts.push(p);
                match b.health {
                    Health::Up => s.went_up += 1,
                    Health::Down => s.went_down += 1,
                    Health::Unknown => {}
                }
            }
            if !parts.is_empty() {
                s.admin = b.admin;
                s.health = b.health;
                s.at = now;
                s.what = parts.join("; ");
            }
        }
    }

    /// A backend's last change, if it is known.
    pub fn change(&self, name: &str) -> Option<Change> {
        self.seen.get(name).map(|s| Change {
            ago: s.at.elapsed(),
            what: s.what.clone(),
            went_up: s.went_up,
            went_down: s.went_down,
        })
    }

    /// Rates per name from `counts` (now) against the newest sample at least `MIN_WINDOW`
    /// old (or the oldest, if none is), and the window they cover; `None` on the first read.
    /// Keeps `counts` as a sample when the newest one is `MIN_WINDOW` old.
    pub fn rates(&mut self, counts: Counts) -> (BTreeMap<String, Rate>, Option<Duration>) {
        let now = Instant::now();
        let base = self
            .samples
            .iter()
            .rev()
            .find(|s| now.duration_since(s.at) >= MIN_WINDOW)
            .or(self.samples.front());
        let mut rates = BTreeMap::new();
        let mut window = None;
        if let Some(base) = base {
            let secs = now.duration_since(base.at).as_secs_f64();
            if secs > 0.0 {
                window = Some(now.duration_since(base.at));
                for (name, (p, n)) in &counts {
                    // A backend new since the sample (or whose counters were reset) starts
                    // from zero.
                    let (p0, n0) = base.counts.get(name).copied().unwrap_or((0, 0));
                    let (p0, n0) = if p0 > *p || n0 > *n { (0, 0) } else { (p0, n0) };
                    rates.insert(
                        name.clone(),
                        Rate {
                            packets_per_s: (p - p0) as f64 / secs,
                            new_flows_per_s: (n - n0) as f64 / secs,
                        },
                    );
                }
            }
        }
        if self
            .samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= MIN_WINDOW)
        {
            self.samples.push_back(Sample { at: now, counts });
            while self.samples.len() > SAMPLES {
                self.samples.pop_front();
            }
        }
        (rates, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn info(name: &str, admin: AdminState, health: Health) -> BackendInfo {
        BackendInfo {
            name: name.into(),
            service: "web".into(),
            id: 0,
            gen: 1,
            addr: "10.0.0.2".parse().unwrap(),
            mac: [0; 6],
            weight: 1,
            role: Role::Pool,
            admin,
            health,
            group: None,
            port: 80,
            snat: None,
        }
    }

    #[test]
    fn notes_admin_and_health_changes_with_the_reason() {
        let mut h = History::default();
        h.note(
            &[info("a", AdminState::Ready, Health::Unknown)],
            "daemon started",
            |_| None,
        );
        assert_eq!(h.change("a").unwrap().what, "daemon started");
        h.note(&[info("a", AdminState::Ready, Health::Down)], "-", |_| {
            Some("connect: refused".into())
        });
        let c = h.change("a").unwrap();
        assert_eq!(c.what, "health unknown → down: connect: refused");
        assert_eq!((c.went_up, c.went_down), (0, 1));
        h.note(&[info("a", AdminState::Drain, Health::Up)], "-", |_| {
            Some("ok".into())
        });
        let c = h.change("a").unwrap();
        assert_eq!(c.what, "admin ready → drain; health down → up: ok");
        assert_eq!((c.went_up, c.went_down), (1, 1));
        // Nothing changed: the last change stays.
        h.note(&[info("a", AdminState::Drain, Health::Up)], "-", |_| None);
        assert_eq!(h.change("a").unwrap().what, c.what);
        // Gone from the config: forgotten.
        h.note(&[], "-", |_| None);
        assert!(h.change("a").is_none());
    }

    #[test]
    fn rates_are_measured_over_at_least_a_second() {
        let mut h = History::default();
        let c = |p: u64, n: u64| BTreeMap::from([("a".to_string(), (p, n))]);
        let (r, w) = h.rates(c(0, 0));
        assert!(r.is_empty() && w.is_none());
        // Backdate the first sample by 2 s.
        h.samples[0].at -= Duration::from_secs(2);
        let (r, w) = h.rates(c(200, 20));
        let w = w.unwrap().as_secs_f64();
        assert!((2.0..2.5).contains(&w), "{w}");
        assert!((r["a"].new_flows_per_s - 20.0 / w).abs() < 1e-6);
        // Counters that went backwards (a backend readded) count from zero.
        for s in &mut h.samples {
            s.at -= Duration::from_secs(2);
        }
        let (r, w) = h.rates(c(10, 1));
        let w = w.unwrap().as_secs_f64();
        assert!((r["a"].packets_per_s - 10.0 / w).abs() < 1e-6, "{r:?}");
    }
}
