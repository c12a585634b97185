//! Load balancing: power of two choices over a peak EWMA of latency (DESIGN §4 "Endpoint choice").
//!
//! The cost of an endpoint is `ewma_latency * (outstanding + 1)`, as Finagle's and linkerd's
//! "peak EWMA" balancers compute it: the estimate jumps to any observed latency above it (so a
//! slowing endpoint is avoided at once) and otherwise moves towards new observations with a time
//! constant `decay`; the first observation replaces the default. With no observations the estimate decays towards zero, so an endpoint that
//! was slow once gets probed again later rather than being starved for ever.
//!
//! Statistics live in [`EndpointStats`], shared by address through the [`Balancer`]'s registry:
//! a new configuration snapshot asks for the same address and gets the same statistics, so
//! learned latencies survive configuration updates. The per-request path touches only atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::policy::clock::Clock;
use crate::policy::{lock, nanos};

/// Tuning of the peak EWMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancerConfig {
    /// The latency assumed for an endpoint never observed.
    pub default_rtt: Duration,
    /// Time constant of the moving average and of the decay without observations.
    pub decay: Duration,
    /// The latency recorded for a failed request ([`Pick::fail`]) when it failed faster: a
    /// refusing endpoint answers in microseconds and must not look like the fastest one.
    pub failure_penalty: Duration,
}

impl Default for BalancerConfig {
    /// linkerd's defaults (30 ms initial estimate, 10 s decay) and a 1 s failure penalty.
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// Latency estimate and outstanding requests of one endpoint address.
#[derive(Debug)]
pub struct EndpointStats {
    /// `f64` nanoseconds, as bits.
    ewma_bits: AtomicU64,
    /// Clock reading (nanoseconds) of the last update.
    updated: AtomicU64,
    /// Whether a latency was ever observed; the first one replaces the default estimate.
    observed: AtomicBool,
    outstanding: AtomicU64,
}

impl EndpointStats {
    fn new(default_rtt: Duration, now: Duration) -> Self {
        Self {
            ewma_bits: AtomicU64::new((nanos(default_rtt) as f64).to_bits()),
            updated: AtomicU64::new(nanos(now)),
            observed: AtomicBool::new(false),
            outstanding: AtomicU64::new(0),
        }
    }

    /// Requests picked and not yet finished.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`, decayed for the time since the last observation.
    pub fn latency_estimate(&self, now: Duration, decay: Duration) -> Duration {
        Duration::from_nanos(self.estimate_nanos(now, decay) as u64)
    }

    fn estimate_nanos(&self, now: Duration, decay: Duration) -> f64 {
        let ewma = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = nanos(now).saturating_sub(self.updated.load(Ordering::Relaxed));
        ewma * decay_weight(elapsed, decay)
    }

    /// `ewma * (outstanding + 1)` at `now`.
    fn cost(&self, now: Duration, decay: Duration) -> f64 {
        self.estimate_nanos(now, decay) * (self.outstanding() + 1) as f64
    }

    /// Folds in one observed latency.
    fn observe(&self, rtt: Duration, now: Duration, decay: Duration) {
        let rtt = nanos(rtt) as f64;
        let previous = self.updated.swap(nanos(now), Ordering::Relaxed);
        if !self.observed.swap(true, Ordering::Relaxed) {
            // The default only ranks endpoints nobody has measured; averaging it with real data
            // would hide the difference between endpoints for a whole `decay`.
            self.ewma_bits.store(rtt.to_bits(), Ordering::Relaxed);
            return;
        }
        let w = decay_weight(nanos(now).saturating_sub(previous), decay);
        // Concurrent observations may interleave between the two atomics; each still folds in
        // its latency with a weight for a real interval, which is all an estimate needs.
        let _ = self
            .ewma_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if rtt > old {
                    rtt
                } else {
                    old * w + rtt * (1.0 - w)
                };
                Some(new.to_bits())
            });
    }
}

/// `exp(-elapsed / decay)`.
fn decay_weight(elapsed_nanos: u64, decay: Duration) -> f64 {
    let decay = nanos(decay).max(1) as f64;
    (-(elapsed_nanos as f64) / decay).exp()
}

/// Envoy's slow start: an endpoint ready for `age < duration` weighs
/// `max(min_weight, (age / duration) ^ (1 / aggression))` of a warm one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupConfig {
    pub duration: Duration,
    /// 1 = linear; larger ramps faster at the start.
    pub aggression: f64,
    /// In (0, 1].
    pub min_weight: f64,
}

impl WarmupConfig {
    /// The weight of an endpoint ready for `age`, in `[min_weight, 1]`.
    pub fn weight(&self, age: Duration) -> f64 {
        if age >= self.duration || self.duration.is_zero() {
            return 1.0;
        }
        let progress = age.as_secs_f64() / self.duration.as_secs_f64();
        progress
            .powf(1.0 / self.aggression)
            .clamp(self.min_weight, 1.0)
    }
}

/// A warming endpoint: how long it had been ready when the snapshot was built, and when that
/// was on the balancer's clock. (Not a ready time on that clock: an endpoint may have become
/// ready before the clock's origin, the sidecar's start.)
#[derive(Debug, Clone, Copy, PartialEq)]
struct Warming {
    age_at_build: Duration,
    built_at: Duration,
    config: WarmupConfig,
}

impl Warming {
    fn age(&self, now: Duration) -> Duration {
        self.age_at_build
            .saturating_add(now.saturating_sub(self.built_at))
    }
}

/// An endpoint as configuration snapshots hold it: its address and its shared statistics.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    stats: Arc<EndpointStats>,
    /// `None` once warm (or without warm-up).
    warming: Option<Warming>,
}

impl Endpoint {
    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its share of traffic relative to a warm endpoint at `now`, in (0, 1].
    pub fn weight(&self, now: Duration) -> f64 {
        match self.warming {
            Some(w) => w.config.weight(w.age(now)),
            None => 1.0,
        }
    }

    fn is_warming(&self, now: Duration) -> bool {
        self.warming.is_some_and(|w| w.age(now) < w.config.duration)
    }

    /// Its statistics.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl Eq for Endpoint {}

/// Chooses endpoints; owns the registry of per-address statistics.
#[derive(Debug)]
pub struct Balancer {
    clock: Arc<dyn Clock>,
    config: BalancerConfig,
    registry: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl Balancer {
    /// A balancer reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>, config: BalancerConfig) -> Self {
        Self {
            clock,
            config,
            registry: Mutex::default(),
        }
    }

    /// The endpoint at `addr` with the statistics already learned for it, if any. Called while
    /// building a snapshot, off the hot path.
    pub fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        let mut registry = lock(&self.registry);
        let stats = registry.entry(addr).or_insert_with(|| {
            Arc::new(EndpointStats::new(
                self.config.default_rtt,
                self.clock.now(),
            ))
        });
        Endpoint {
            addr,
            stats: Arc::clone(stats),
            warming: None,
        }
    }

    /// [`Balancer::endpoint`] for an endpoint that became ready `age` ago, warming up by
    /// `warmup`: the age is taken once, here, so the request path reads no wall clock.
    pub fn warming_endpoint(
        &self,
        addr: SocketAddr,
        warmup: WarmupConfig,
        age: Duration,
    ) -> Endpoint {
        let mut endpoint = self.endpoint(addr);
        if age < warmup.duration {
            endpoint.warming = Some(Warming {
                age_at_build: age,
                built_at: self.clock.now(),
                config: warmup,
            });
        }
        endpoint
    }

    /// Forgets the statistics no snapshot or request holds any more; returns how many. Call after
    /// swapping in a new snapshot.
    pub fn prune(&self) -> usize {
        let mut registry = lock(&self.registry);
        let before = registry.len();
        registry.retain(|_, stats| Arc::strong_count(stats) > 1);
        before - registry.len()
    }

    /// Addresses with statistics.
    pub fn tracked(&self) -> usize {
        lock(&self.registry).len()
    }

    /// The cost of `endpoint` now: `ewma_latency * (outstanding + 1)`, in nanoseconds.
    pub fn cost(&self, endpoint: &Endpoint) -> f64 {
        endpoint.stats.cost(self.clock.now(), self.config.decay)
    }

    /// Power of two choices: two distinct candidates drawn at random, the cheaper wins. `None`
    /// when there is no candidate. The handle counts the request as outstanding until dropped,
    /// then records its latency.
    ///
    /// While an endpoint warms up, both candidates are drawn by weight and a draw involving a
    /// warming endpoint keeps the first: its share then follows the warm-up curve exactly,
    /// rather than its latency estimate, which for a new endpoint is only the default.
    pub fn pick<R: Rng + ?Sized>(&self, candidates: &[Endpoint], rng: &mut R) -> Option<Pick> {
        let chosen = match candidates.len() {
            0 => return None,
            1 => &candidates[0],
            // Only endpoints of an app with a warm-up carry a ready time: otherwise a pointer
            // check per candidate, and the clock is read once.
            _ if candidates.iter().any(|e| e.warming.is_some()) && {
                let now = self.clock.now();
                candidates.iter().any(|e| e.is_warming(now))
            } =>
            {
                self.weighted_pick(candidates, rng)
            }
            n => {
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&candidates[a], &candidates[b]);
                let now = self.clock.now();
                if eb.stats.cost(now, self.config.decay) < ea.stats.cost(now, self.config.decay) {
                    eb
                } else {
                    ea
                }
            }
        };
        chosen.stats.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            endpoint: chosen.clone(),
            clock: Arc::clone(&self.clock),
            decay: self.config.decay,
            started: self.clock.now(),
            floor: Duration::ZERO,
            penalty: self.config.failure_penalty,
        })
    }
}

impl Balancer {
    /// Power of two choices with candidates drawn by warm-up weight (at least two candidates).
    fn weighted_pick<'a, R: Rng + ?Sized>(
        &self,
        candidates: &'a [Endpoint],
        rng: &mut R,
    ) -> &'a Endpoint {
        let now = self.clock.now();
        let total: f64 = candidates.iter().map(|e| e.weight(now)).sum();
        let a = draw(candidates, total, None, now, rng);
        let b = draw(
            candidates,
            total - candidates[a].weight(now),
            Some(a),
            now,
            rng,
        );
        let (ea, eb) = (&candidates[a], &candidates[b]);
        if ea.is_warming(now) || eb.is_warming(now) {
            return ea;
        }
        if eb.stats.cost(now, self.config.decay) < ea.stats.cost(now, self.config.decay) {
            eb
        } else {
            ea
        }
    }
}

/// The index of one candidate drawn with probability proportional to its weight, `skip`
/// excluded; `total` is the sum of the weights considered.
fn draw<R: Rng + ?Sized>(
    candidates: &[Endpoint],
    total: f64,
    skip: Option<usize>,
    now: Duration,
    rng: &mut R,
) -> usize {
    let mut target = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, e) in candidates.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        last = i;
        target -= e.weight(now);
        if target < 0.0 {
            return i;
        }
    }
    // Rounding left a sliver past the last weight.
    last
}

/// A request sent to a picked endpoint; dropping it records the latency since the pick and ends
/// the outstanding count.
#[derive(Debug)]
#[must_use = "dropping the pick at once records a zero latency"]
pub struct Pick {
    endpoint: Endpoint,
    clock: Arc<dyn Clock>,
    decay: Duration,
    started: Duration,
    /// Smallest latency to record; raised to `penalty` by [`Pick::fail`].
    floor: Duration,
    penalty: Duration,
}

impl Pick {
    /// Ends the request as failed (connect error, reset, 5xx): records at least the failure
    /// penalty, so the endpoint is avoided until its estimate decays.
    pub fn fail(mut self) {
        self.floor = self.penalty;
    }

    /// Where to send the request.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The picked endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        let now = self.clock.now();
        let stats = &self.endpoint.stats;
        let latency = now.saturating_sub(self.started).max(self.floor);
        stats.observe(latency, now, self.decay);
        stats.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn setup() -> (Balancer, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
        (
            Balancer::new(clock.clone(), BalancerConfig::default()),
            clock,
        )
    }

    #[test]
    fn no_endpoint_none_single_endpoint_always() {
        let (b, _) = setup();
        let mut rng = StdRng::seed_from_u64(7);
        assert!(b.pick(&[], &mut rng).is_none());
        let only = [b.endpoint(addr(1))];
        for _ in 0..100 {
            assert_eq!(b.pick(&only, &mut rng).unwrap().addr(), addr(1));
        }
    }

    #[test]
    fn fast_endpoint_gets_the_large_majority() {
        // DESIGN §4: balance with power-of-two-choices over a latency EWMA. One endpoint 10x
        // slower than the other.
        let (b, clock) = setup();
        let endpoints = [b.endpoint(addr(1)), b.endpoint(addr(2))];
        let latency = |a: SocketAddr| {
            if a == addr(1) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            }
        };
        let mut rng = StdRng::seed_from_u64(11);
        let mut fast = 0;
        for _ in 0..1_000 {
            let pick = b.pick(&endpoints, &mut rng).unwrap();
            fast += usize::from(pick.addr() == addr(1));
            clock.advance(latency(pick.addr()));
            drop(pick);
        }
        assert!(fast >= 950, "fast endpoint got {fast} of 1000");
        // And the estimates reflect the observations.
        let now = clock.now();
        let decay = BalancerConfig::default().decay;
        assert!(endpoints[0].stats().latency_estimate(now, decay) < Duration::from_millis(2));
    }

    #[test]
    fn outstanding_requests_raise_the_cost() {
        // cost = ewma * (outstanding + 1): with equal latency, a busy endpoint loses.
        let (b, _) = setup();
        let endpoints = [b.endpoint(addr(1)), b.endpoint(addr(2))];
        let mut rng = StdRng::seed_from_u64(5);
        let held: Vec<Pick> = (0..3)
            .map(|_| b.pick(&endpoints[..1], &mut rng).unwrap())
            .collect();
        assert_eq!(endpoints[0].stats().outstanding(), 3);
        assert!(b.cost(&endpoints[0]) > b.cost(&endpoints[1]) * 3.9);
        for _ in 0..50 {
            let p = b.pick(&endpoints, &mut rng).unwrap();
            assert_eq!(p.addr(), addr(2));
        }
        drop(held);
        assert_eq!(endpoints[0].stats().outstanding(), 0);
    }

    #[test]
    fn slow_endpoint_is_probed_again_after_decay() {
        // Without observations the estimate decays, so a once-slow endpoint is not starved.
        let (b, clock) = setup();
        let endpoints = [b.endpoint(addr(1)), b.endpoint(addr(2))];
        let mut rng = StdRng::seed_from_u64(3);
        let slow = b.pick(&endpoints[1..], &mut rng).unwrap();
        clock.advance(Duration::from_secs(1));
        drop(slow);
        let fast = b.pick(&endpoints[..1], &mut rng).unwrap();
        clock.advance(Duration::from_millis(1));
        drop(fast);
        assert!(b.cost(&endpoints[1]) > b.cost(&endpoints[0]));
        // Two minutes later, with no traffic to it, the 1 s estimate has decayed below the cost
        // of the fast endpoint's fresh 1 ms observation, so the next pick probes it.
        clock.advance(Duration::from_secs(120));
        let fast = b.pick(&endpoints[..1], &mut rng).unwrap();
        clock.advance(Duration::from_millis(1));
        drop(fast);
        assert!(b.cost(&endpoints[1]) < b.cost(&endpoints[0]));
        assert_eq!(b.pick(&endpoints, &mut rng).unwrap().addr(), addr(2));
    }

    #[test]
    fn a_failure_counts_as_slow() {
        // A refusing endpoint fails in no time; it must not win every comparison.
        let (b, clock) = setup();
        let endpoints = [b.endpoint(addr(1)), b.endpoint(addr(2))];
        let mut rng = StdRng::seed_from_u64(9);
        let ok = b.pick(&endpoints[..1], &mut rng).unwrap();
        clock.advance(Duration::from_millis(20));
        drop(ok);
        b.pick(&endpoints[1..], &mut rng).unwrap().fail();
        let decay = BalancerConfig::default().decay;
        assert_eq!(
            endpoints[1].stats().latency_estimate(clock.now(), decay),
            Duration::from_secs(1)
        );
        for _ in 0..20 {
            assert_eq!(b.pick(&endpoints, &mut rng).unwrap().addr(), addr(1));
        }
    }

    #[test]
    fn statistics_survive_snapshot_swaps_and_are_pruned_when_unused() {
        let (b, clock) = setup();
        let old = b.endpoint(addr(1));
        let p = b
            .pick(std::slice::from_ref(&old), &mut StdRng::seed_from_u64(1))
            .unwrap();
        clock.advance(Duration::from_millis(400));
        drop(p);
        // A new snapshot asks for the same address: same statistics.
        let new = b.endpoint(addr(1));
        assert!(Arc::ptr_eq(&old.stats, &new.stats));
        let decay = BalancerConfig::default().decay;
        assert!(new.stats().latency_estimate(clock.now(), decay) > Duration::from_millis(300));
        let gone = b.endpoint(addr(2));
        drop(gone);
        assert_eq!(b.prune(), 1, "only the unused address is forgotten");
        assert_eq!(b.tracked(), 1);
        drop((old, new));
        assert_eq!(b.prune(), 1);
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn the_warmup_curve_is_envoys_slow_start() {
        let linear = WarmupConfig {
            duration: Duration::from_secs(100),
            aggression: 1.0,
            min_weight: 0.1,
        };
        assert_eq!(linear.weight(Duration::ZERO), 0.1);
        assert!((linear.weight(Duration::from_secs(50)) - 0.5).abs() < 1e-9);
        assert_eq!(linear.weight(Duration::from_secs(100)), 1.0);
        assert_eq!(linear.weight(Duration::from_secs(500)), 1.0);
        let aggressive = WarmupConfig {
            aggression: 2.0,
            ..linear
        };
        // sqrt(0.25) = 0.5: faster at the start.
        assert!((aggressive.weight(Duration::from_secs(25)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_new_endpoint_among_four_old_ones_ramps_up_along_the_curve() {
        // 4 old endpoints and 1 that just became ready, warming up linearly over 100 s from
        // 10 %. Its expected share at age t is w / (4 + w), w = max(0.1, t / 100).
        let (b, clock) = setup();
        let warmup = WarmupConfig {
            duration: Duration::from_secs(100),
            aggression: 1.0,
            min_weight: 0.1,
        };
        let mut endpoints: Vec<Endpoint> = (1..=4).map(|p| b.endpoint(addr(p))).collect();
        endpoints.push(b.warming_endpoint(addr(5), warmup, Duration::ZERO));
        let mut rng = StdRng::seed_from_u64(21);
        for age in [0u64, 20, 50, 80, 100, 150] {
            clock.set(Duration::from_secs(1 + age));
            let draws = 20_000;
            let mut new = 0;
            for _ in 0..draws {
                let pick = b.pick(&endpoints, &mut rng).unwrap();
                new += usize::from(pick.addr() == addr(5));
                // Every endpoint answers alike, so the old ones tie among themselves.
                drop(pick);
            }
            let w = warmup.weight(Duration::from_secs(age));
            let expected = w / (4.0 + w);
            let share = new as f64 / f64::from(draws);
            // 4 standard deviations of a binomial share, plus 1 point for the old endpoints'
            // own latency-based choice once the new one is warm.
            let tolerance = 4.0 * (expected * (1.0 - expected) / f64::from(draws)).sqrt() + 0.01;
            assert!(
                (share - expected).abs() <= tolerance,
                "age {age}s: share {share:.4}, curve {expected:.4} +- {tolerance:.4}"
            );
        }
    }

    #[test]
    fn an_endpoint_ready_long_ago_does_not_warm_again() {
        // A sidecar that restarts learns the ready time from the control plane: an endpoint
        // ready for longer than the warm-up is warm at once.
        // The clock of a sidecar that just started reads 1 s: ages beyond it still count.
        let (b, clock) = setup();
        let warmup = WarmupConfig {
            duration: Duration::from_secs(120),
            aggression: 1.0,
            min_weight: 0.1,
        };
        let old = b.warming_endpoint(addr(1), warmup, Duration::from_secs(3600));
        assert_eq!(old.weight(clock.now()), 1.0);
        let half = b.warming_endpoint(addr(2), warmup, Duration::from_secs(60));
        assert!((half.weight(clock.now()) - 0.5).abs() < 1e-6);
        assert_eq!(half.weight(clock.now() + Duration::from_secs(60)), 1.0);
    }

    #[test]
    fn concurrent_picks_keep_outstanding_exact() {
        let (b, _) = setup();
        let b = Arc::new(b);
        let endpoints: Arc<[Endpoint]> = (1..=4).map(|p| b.endpoint(addr(p))).collect();
        let workers: Vec<_> = (0..4u64)
            .map(|seed| {
                let (b, endpoints) = (Arc::clone(&b), Arc::clone(&endpoints));
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    for _ in 0..2_000 {
                        drop(b.pick(&endpoints, &mut rng).unwrap());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(endpoints.iter().all(|e| e.stats().outstanding() == 0));
    }
}
