//! What the mesh's traffic looks like, from the sidecars' own metrics: per app and per lane the
//! Total QPS, Exception QPS and GrayQPS of MSE's console, rule hits (rejections by rule and
//! reason), breaker states and transitions, over the last minutes.
//!
//! The pilot scrapes the `/metrics` of the pods it serves ([`scrape`]); this module turns each
//! round of scrapes into rates ([`Traffic::record`], pure: no I/O, time passed in) and keeps a
//! bounded window of them. One writer (the scrape task) publishes an immutable [`TrafficView`]
//! that the admin endpoint `/debug/traffic`, `lanemeshctl lanes` and the console read.
//!
//! # Layout
//! - this module: counters of one pod, the rate window, the view.
//! - [`scrape`]: the task that fetches every ready governed pod's metrics, bounded in
//!   concurrency, time and size.

pub mod scrape;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use lanemesh_api::exposition;
use serde::Serialize;

/// A counter the view is built from, summed over one pod's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    /// Inbound requests of `app` in `lane` ("" = base); `error`: 5xx or no answer.
    Requests {
        app: String,
        lane: String,
        error: bool,
    },
    /// Requests rejected by governance rule `rule` for `reason`.
    Rejection { rule: String, reason: String },
    /// Breaker changes of state.
    Transition {
        app: String,
        rule: String,
        to: String,
    },
}

/// What one scrape of one pod says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodCounters {
    counters: HashMap<Key, f64>,
    /// `(app, rule)` -> 0 closed, 1 half-open, 2 open.
    breakers: Vec<((String, String), f64)>,
}

impl PodCounters {
    /// Reads the families the view needs from a `/metrics` body; other lines, and lines that
    /// are not samples, are skipped.
    pub fn read(text: &str) -> Self {
        let mut out = Self::default();
        for sample in exposition::samples(text).flatten() {
            let key = match sample.name {
                "lanemesh_requests_total" if sample.label("direction") == "inbound" => {
                    Key::Requests {
                        app: sample.label("app").to_owned(),
                        lane: sample.label("lane").to_owned(),
                        error: matches!(sample.label("status"), "5xx" | "error"),
                    }
                }
                "lanemesh_rejections_total" => Key::Rejection {
                    rule: sample.label("rule").to_owned(),
                    reason: sample.label("reason").to_owned(),
                },
                "lanemesh_breaker_transitions_total" => Key::Transition {
                    app: sample.label("app").to_owned(),
                    rule: sample.label("rule").to_owned(),
                    to: sample.label("to").to_owned(),
                },
                "lanemesh_breaker_state" => {
                    out.breakers.push((
                        (
                            sample.label("app").to_owned(),
                            sample.label("rule").to_owned(),
                        ),
                        sample.value,
                    ));
                    continue;
                }
                _ => continue,
            };
            if sample.value.is_finite() && sample.value >= 0.0 {
                *out.counters.entry(key).or_default() += sample.value;
            }
        }
        out
    }
}

/// Rates of one app, or of one lane of an app, per second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    pub total: f64,
    pub errors: f64,
}

/// One app's rates at one point.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AppRates {
    /// Total QPS.
    pub total: f64,
    /// Exception QPS: 5xx answers and requests that got none.
    pub errors: f64,
    /// GrayQPS: requests in any lane.
    pub gray: f64,
    /// By lane tag; `""` is base.
    pub lanes: BTreeMap<String, Rates>,
}

/// Rejections of one rule for one reason, per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleHits {
    pub rule: String,
    pub reason: String,
    pub qps: f64,
}

/// Breaker transitions within one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transitions {
    pub app: String,
    pub rule: String,
    pub to: String,
    pub count: f64,
}

/// The rates between two scrape rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Unix time in milliseconds of the later round.
    pub at: u64,
    pub apps: BTreeMap<String, AppRates>,
    pub rules: Vec<RuleHits>,
    pub transitions: Vec<Transitions>,
}

/// A breaker's current state, the worst over the pods that report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerNow {
    pub app: String,
    pub rule: String,
    /// `closed`, `half_open` or `open`.
    pub state: &'static str,
}

/// Everything the readers see.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrafficView {
    /// Whether the pilot scrapes at all (`--scrape-interval` > 0).
    pub enabled: bool,
    /// Seconds between scrape rounds.
    pub interval_seconds: f64,
    /// Oldest first, at most the window.
    pub points: Vec<Point>,
    pub breakers: Vec<BreakerNow>,
    /// Pods scraped and failed in the last round.
    pub pods_scraped: usize,
    pub pods_failed: usize,
}

impl TrafficView {
    /// The latest point, if any.
    pub fn latest(&self) -> Option<&Point> {
        self.points.last()
    }
}

/// The rate window: fed one scrape round at a time by its one writer.
#[derive(Debug)]
pub struct Traffic {
    /// Points kept at most.
    window: usize,
    interval_seconds: f64,
    /// Each pod's counters at its last successful scrape.
    previous: HashMap<String, (Instant, HashMap<Key, f64>)>,
    points: VecDeque<Point>,
    breakers: Vec<BreakerNow>,
    scraped: usize,
    failed: usize,
}

impl Traffic {
    /// A window of `window` points, scraped every `interval_seconds`.
    pub fn new(window: usize, interval_seconds: f64) -> Self {
        Self {
            window: window.max(1),
            interval_seconds,
            previous: HashMap::new(),
            points: VecDeque::new(),
            breakers: Vec::new(),
            scraped: 0,
            failed: 0,
        }
    }

    /// One round: `pods` scraped at `now` (pod key -> its counters), `failed` the pods that did
    /// not answer. A pod's rate is its counters' growth since its own last scrape (a counter that
    /// went down restarted from 0); a pod seen for the first time adds nothing yet; a failed pod
    /// keeps its last counters for the next round; pods in neither list are forgotten.
    pub fn record(
        &mut self,
        at_unix_ms: u64,
        now: Instant,
        pods: HashMap<String, PodCounters>,
        failed: &[String],
    ) {
        let mut sums: HashMap<Key, f64> = HashMap::new();
        let mut transitions: HashMap<Key, f64> = HashMap::new();
        let mut breakers: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut seen = HashMap::new();
        self.scraped = pods.len();
        self.failed = failed.len();
        for (pod, counters) in pods {
            for (key, state) in &counters.breakers {
                let worst = breakers.entry(key.clone()).or_default();
                *worst = worst.max(*state);
            }
            if let Some((then, before)) = self.previous.get(&pod) {
                let seconds = now.duration_since(*then).as_secs_f64();
                if seconds > 0.0 {
                    for (key, value) in &counters.counters {
                        let delta = match before.get(key) {
                            Some(b) if value >= b => value - b,
                            Some(_) => *value,
                            None => *value,
                        };
                        if let Key::Transition { .. } = key {
                            *transitions.entry(key.clone()).or_default() += delta;
                        } else {
                            *sums.entry(key.clone()).or_default() += delta / seconds;
                        }
                    }
                }
            }
            seen.insert(pod, (now, counters.counters));
        }
        for pod in failed {
            if let Some(last) = self.previous.remove(pod) {
                seen.entry(pod.clone()).or_insert(last);
            }
        }
        self.previous = seen;
        self.breakers = breakers
            .into_iter()
            .map(|((app, rule), state)| BreakerNow {
                app,
                rule,
                state: match state {
                    s if s >= 2.0 => "open",
                    s if s >= 1.0 => "half_open",
                    _ => "closed",
                },
            })
            .collect();
        let mut apps: BTreeMap<String, AppRates> = BTreeMap::new();
        let mut rules = Vec::new();
        for (key, rate) in sums {
            match key {
                Key::Requests { app, lane, error } => {
                    let a = apps.entry(app).or_default();
                    let l = a.lanes.entry(lane.clone()).or_default();
                    if error {
                        a.errors += rate;
                        l.errors += rate;
                    }
                    a.total += rate;
                    l.total += rate;
                    if !lane.is_empty() {
                        a.gray += rate;
                    }
                }
                Key::Rejection { rule, reason } => rules.push(RuleHits {
                    rule,
                    reason,
                    qps: rate,
                }),
                Key::Transition { .. } => {}
            }
        }
        rules.sort_by(|a, b| (&a.rule, &a.reason).cmp(&(&b.rule, &b.reason)));
        let mut transitions: Vec<Transitions> = transitions
            .into_iter()
            .filter_map(|(key, count)| match key {
                Key::Transition { app, rule, to } if count > 0.0 => Some(Transitions {
                    app,
                    rule,
                    to,
                    count,
                }),
                _ => None,
            })
            .collect();
        transitions.sort_by(|a, b| (&a.app, &a.rule, &a.to).cmp(&(&b.app, &b.rule, &b.to)));
        self.points.push_back(Point {
            at: at_unix_ms,
            apps,
            rules,
            transitions,
        });
        while self.points.len() > self.window {
            self.points.pop_front();
        }
    }

    /// The view readers get.
    pub fn view(&self) -> TrafficView {
        TrafficView {
            enabled: true,
            interval_seconds: self.interval_seconds,
            points: self.points.iter().cloned().collect(),
            breakers: self.breakers.clone(),
            pods_scraped: self.scraped,
            pods_failed: self.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;
    use std::time::Duration;

    fn metrics(b_base: u64, b_gray: u64, b_gray_5xx: u64, rejected: u64) -> PodCounters {
        PodCounters::read(&format!(
            "# TYPE lanemesh_requests counter\n\
             lanemesh_requests_total{{direction=\"inbound\",app=\"b\",lane=\"\",status=\"2xx\"}} {b_base}\n\
             lanemesh_requests_total{{direction=\"inbound\",app=\"b\",lane=\"gray\",status=\"2xx\"}} {b_gray}\n\
             lanemesh_requests_total{{direction=\"inbound\",app=\"b\",lane=\"gray\",status=\"5xx\"}} {b_gray_5xx}\n\
             lanemesh_requests_total{{direction=\"outbound\",app=\"c\",lane=\"\",status=\"2xx\"}} 1000\n\
             lanemesh_rejections_total{{reason=\"flow\",rule=\"b-qps\"}} {rejected}\n\
             lanemesh_breaker_state{{app=\"c\",rule=\"c-errors\"}} 2\n\
             lanemesh_breaker_transitions_total{{app=\"c\",rule=\"c-errors\",to=\"open\"}} {rejected}\n\
             garbage line\n"
        ))
    }

    #[test]
    fn rates_per_app_and_lane_from_counter_growth_summed_over_pods() {
        let start = Instant::now();
        let mut traffic = Traffic::new(3, 5.0);
        let round = |pods: Vec<(&str, PodCounters)>| -> HashMap<String, PodCounters> {
            pods.into_iter().map(|(p, c)| (p.to_owned(), c)).collect()
        };
        traffic.record(0, start, round(vec![("b-0", metrics(100, 10, 0, 0))]), &[]);
        assert!(
            traffic.view().latest().unwrap().apps.is_empty(),
            "first sight: no rate yet"
        );
        let t1 = start + Duration::from_secs(5);
        traffic.record(
            5000,
            t1,
            round(vec![
                ("b-0", metrics(150, 30, 5, 10)),
                // New pod: counted from its next scrape.
                ("b-1", metrics(500, 500, 500, 500)),
            ]),
            &[],
        );
        let view = traffic.view();
        let b = &view.latest().unwrap().apps["b"];
        assert_eq!(b.total, (50.0 + 20.0 + 5.0) / 5.0);
        assert_eq!(b.errors, 1.0);
        assert_eq!(b.gray, 5.0);
        assert_eq!(b.lanes[""].total, 10.0);
        assert_eq!(
            b.lanes["gray"],
            Rates {
                total: 5.0,
                errors: 1.0
            }
        );
        assert!(
            !view.latest().unwrap().apps.contains_key("c"),
            "outbound is the caller's view"
        );
        assert_eq!(view.latest().unwrap().rules[0].qps, 2.0);
        assert_eq!(view.latest().unwrap().transitions[0].count, 10.0);
        assert_eq!(view.breakers[0].state, "open");

        // b-0 restarted (its counters went down), b-1 grew: both count.
        let t2 = t1 + Duration::from_secs(5);
        traffic.record(
            10000,
            t2,
            round(vec![
                ("b-0", metrics(5, 0, 0, 0)),
                ("b-1", metrics(510, 500, 500, 500)),
            ]),
            &[],
        );
        let b = &traffic.view().latest().unwrap().apps["b"].clone();
        assert_eq!(b.total, (5.0 + 10.0) / 5.0);
        // b-1 does not answer, b-0 is gone: b-1 keeps its counters, b-0 is forgotten.
        let t3 = t2 + Duration::from_secs(5);
        traffic.record(15000, t3, HashMap::new(), &["b-1".to_owned()]);
        assert_eq!(traffic.view().points.len(), 3, "bounded window");
        assert_eq!(traffic.view().points[0].at, 5000);
        assert_eq!(traffic.view().pods_failed, 1);
        traffic.record(
            20000,
            t3 + Duration::from_secs(5),
            round(vec![
                // Back with higher counters: seen first again, it adds nothing yet.
                ("b-0", metrics(25, 0, 0, 0)),
                ("b-1", metrics(530, 500, 500, 500)),
            ]),
            &[],
        );
        let b = &traffic.view().latest().unwrap().apps["b"].clone();
        assert_eq!(
            b.total,
            20.0 / 10.0,
            "b-1 over the ten seconds since it last answered"
        );
    }
}
