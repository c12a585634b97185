//! Carrying the lane across a hop (DESIGN §4).
//!
//! A sidecar sees its app's inbound requests and, later, the app's own outbound requests. The
//! lane of an outbound request is decided by the first rule that applies:
//! 1. the tag header;
//! 2. a `baggage` member named like the tag header;
//! 3. a trace id (from any configured trace header) that an inbound request registered recently;
//! 4. with `inflight`, the lane shared by every in-flight inbound request of the pod;
//! 5. with `colorByNode`, the pod's own tag;
//! 6. base.
//!
//! The proxy injects the tag header only when rules 3-5 decided, so a tag set upstream is never
//! overwritten. [`PropagationRule::as_str`] labels the metric counting outbound requests by
//! deciding rule.
//!
//! Thread safety: one [`Propagator`] serves every connection. The trace table is sharded, each
//! shard behind a mutex held for one or two LRU operations; the in-flight counts are atomics in
//! a short list behind a read-write lock, written only when a lane starts or stops having
//! requests in flight. No lock is ever held across an await (there
//! are none here) nor while calling out.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use lru::LruCache;

use super::decide::{baggage_value, header_str};
use super::rules::{DEFAULT_TAG_HEADER, LaneGroupConfig, PropagationConfig, TraceHeader};
use crate::policy::clock::Clock;
use crate::policy::lock;

/// The propagation settings of one pod: the merge of the lane groups listing its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagationSettings {
    /// Tag headers of those groups, in group order, without repeats; never empty.
    pub tag_headers: Vec<HeaderName>,
    /// Trace headers of those groups, first occurrence order.
    pub trace_headers: Vec<TraceHeader>,
    /// Rule (4) is on in any of the groups.
    pub inflight: bool,
    /// Rule (5) is on in any of the groups.
    pub color_by_node: bool,
    /// The largest trace table bound of the groups.
    pub trace_table_size: usize,
    /// The longest trace TTL of the groups.
    pub trace_ttl: Duration,
}

impl Default for PropagationSettings {
    /// The CRD defaults, for a pod whose app belongs to no lane group: upstream tags still cross it.
    fn default() -> Self {
        let p = PropagationConfig::default();
        Self {
            tag_headers: vec![HeaderName::from_static(DEFAULT_TAG_HEADER)],
            trace_headers: p.trace_headers,
            inflight: p.inflight,
            color_by_node: p.color_by_node,
            trace_table_size: p.trace_table_size,
            trace_ttl: p.trace_ttl,
        }
    }
}

impl PropagationSettings {
    /// Merges the settings of `groups`; the defaults when there is none.
    pub fn merge<'a>(groups: impl IntoIterator<Item = &'a LaneGroupConfig>) -> Self {
        let mut merged: Option<Self> = None;
        for g in groups {
            let p = &g.propagation;
            let Some(m) = merged.as_mut() else {
                merged = Some(Self {
                    tag_headers: vec![g.tag_header.clone()],
                    trace_headers: p.trace_headers.clone(),
                    inflight: p.inflight,
                    color_by_node: p.color_by_node,
                    trace_table_size: p.trace_table_size,
                    trace_ttl: p.trace_ttl,
                });
                continue;
            };
            if !m.tag_headers.contains(&g.tag_header) {
                m.tag_headers.push(g.tag_header.clone());
            }
            for h in &p.trace_headers {
                if !m.trace_headers.contains(h) {
                    m.trace_headers.push(h.clone());
                }
            }
            m.inflight |= p.inflight;
            m.color_by_node |= p.color_by_node;
            m.trace_table_size = m.trace_table_size.max(p.trace_table_size);
            m.trace_ttl = m.trace_ttl.max(p.trace_ttl);
        }
        merged.unwrap_or_default()
    }

    /// The tag an inbound request carries (rules 1-2): a tag header, else baggage.
    pub fn carried_tag<'a>(
        &self,
        headers: &'a HeaderMap,
    ) -> Option<(Cow<'a, str>, PropagationRule)> {
        for h in &self.tag_headers {
            if let Some(tag) = header_str(headers, h).map(str::trim)
                && !tag.is_empty()
            {
                return Some((Cow::Borrowed(tag), PropagationRule::TagHeader));
            }
        }
        self.tag_headers
            .iter()
            .find_map(|h| baggage_value(headers, h.as_str()))
            .map(|tag| (tag, PropagationRule::Baggage))
    }
}

/// Which rule decided an outbound request's lane; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropagationRule {
    /// (1) The request carried the tag header.
    TagHeader,
    /// (2) The request carried the tag in baggage.
    Baggage,
    /// (3) A trace id linked it to a recent inbound request.
    TraceId,
    /// (4) All in-flight inbound requests share one lane.
    Inflight,
    /// (5) The pod's own tag.
    ColorByNode,
    /// (6) Nothing applied.
    Base,
}

impl PropagationRule {
    /// Every rule, in precedence order, for pre-registering metric label values.
    pub const ALL: [Self; 6] = [
        Self::TagHeader,
        Self::Baggage,
        Self::TraceId,
        Self::Inflight,
        Self::ColorByNode,
        Self::Base,
    ];

    /// The stable metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TagHeader => "tag_header",
            Self::Baggage => "baggage",
            Self::TraceId => "trace_id",
            Self::Inflight => "inflight",
            Self::ColorByNode => "color_by_node",
            Self::Base => "base",
        }
    }
}

impl std::fmt::Display for PropagationRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lane tag read from a request or shared from the sidecar's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneTag<'a> {
    /// From the request's headers.
    Request(Cow<'a, str>),
    /// From the trace table, the in-flight counts or the pod's tag.
    Shared(Arc<str>),
}

impl Deref for LaneTag<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Request(tag) => tag,
            Self::Shared(tag) => tag,
        }
    }
}

/// The lane of an outbound request and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundLane<'a> {
    /// `None` = base.
    pub tag: Option<LaneTag<'a>>,
    /// The deciding rule.
    pub rule: PropagationRule,
}

impl OutboundLane<'_> {
    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The tag to write into the tag header(s): only when rules 3-5 decided (a tag the request
    /// carries is never rewritten).
    pub fn injection(&self) -> Option<&str> {
        match self.rule {
            PropagationRule::TraceId | PropagationRule::Inflight | PropagationRule::ColorByNode => {
                self.tag()
            }
            PropagationRule::TagHeader | PropagationRule::Baggage | PropagationRule::Base => None,
        }
    }
}

/// The per-pod propagation state: trace table and in-flight counts.
#[derive(Debug)]
pub struct Propagator {
    pod_tag: Option<Arc<str>>,
    clock: Arc<dyn Clock>,
    traces: TraceTable,
    inflight: Arc<InflightCounts>,
}

impl Propagator {
    /// State for a pod tagged `pod_tag` (`None` = base pod), with the trace table bounded by
    /// `settings`.
    pub fn new(
        pod_tag: Option<&str>,
        settings: &PropagationSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pod_tag: pod_tag.filter(|t| !t.is_empty()).map(Arc::from),
            clock,
            traces: TraceTable::new(settings.trace_table_size, settings.trace_ttl),
            inflight: Arc::default(),
        }
    }

    /// Applies new trace table bounds (after a configuration change); entries are kept up to the
    /// new bound.
    pub fn apply(&self, settings: &PropagationSettings) {
        self.traces
            .set_bounds(settings.trace_table_size, settings.trace_ttl);
    }

    /// The trace table, for observability.
    pub fn traces(&self) -> &TraceTable {
        &self.traces
    }

    /// Registers an inbound request in lane `lane` (`None` = base): its trace ids link later
    /// outbound requests to the lane, and it counts as in flight until the guard drops.
    pub fn register_inbound(
        &self,
        settings: &PropagationSettings,
        lane: Option<&str>,
        headers: &HeaderMap,
    ) -> InboundGuard {
        let lane = self.inflight.enter(lane.filter(|t| !t.is_empty()));
        let now = self.clock.now();
        for th in &settings.trace_headers {
            if let Some(id) = header_str(headers, &th.name).and_then(|v| th.format.extract(v)) {
                self.traces.insert(id, lane.clone(), now);
            }
        }
        InboundGuard {
            counts: Arc::clone(&self.inflight),
            lane,
        }
    }

    /// Decides the lane of an outbound request (rules 1-6).
    pub fn outbound_lane<'a>(
        &self,
        settings: &PropagationSettings,
        headers: &'a HeaderMap,
    ) -> OutboundLane<'a> {
        if let Some((tag, rule)) = settings.carried_tag(headers) {
            return OutboundLane {
                tag: Some(LaneTag::Request(tag)),
                rule,
            };
        }
        if !settings.trace_headers.is_empty() {
            let now = self.clock.now();
            for th in &settings.trace_headers {
                let Some(id) = header_str(headers, &th.name).and_then(|v| th.format.extract(v))
                else {
                    continue;
                };
                if let Some(lane) = self.traces.lookup(id, now) {
                    return OutboundLane {
                        tag: lane.map(LaneTag::Shared),
                        rule: PropagationRule::TraceId,
                    };
                }
            }
        }
        if settings.inflight
            && let Some(lane) = self.inflight.single_lane()
        {
            return OutboundLane {
                tag: lane.map(LaneTag::Shared),
                rule: PropagationRule::Inflight,
            };
        }
        if settings.color_by_node
            && let Some(tag) = &self.pod_tag
        {
            return OutboundLane {
                tag: Some(LaneTag::Shared(Arc::clone(tag))),
                rule: PropagationRule::ColorByNode,
            };
        }
        OutboundLane {
            tag: None,
            rule: PropagationRule::Base,
        }
    }
}

/// In-flight inbound requests per lane. The list holds one entry per lane with requests in
/// flight (a handful at most; entries reaching zero are removed, so tags a caller makes up do not
/// pile up). Counting a request of a lane already listed takes only the read lock and an atomic
/// add, so concurrent requests do not queue behind each other.
#[derive(Debug, Default)]
struct InflightCounts {
    lanes: RwLock<Vec<(Option<Arc<str>>, AtomicU64)>>,
}

impl InflightCounts {
    /// Counts one request of `lane` and returns the shared copy of its tag (allocated only for
    /// the first request of a lane currently not in flight).
    fn enter(&self, lane: Option<&str>) -> Option<Arc<str>> {
        {
            let lanes = read(&self.lanes);
            if let Some((tag, count)) = lanes.iter().find(|(t, _)| t.as_deref() == lane) {
                count.fetch_add(1, Ordering::AcqRel);
                return tag.clone();
            }
        }
        let mut lanes = write(&self.lanes);
        if let Some((tag, count)) = lanes.iter().find(|(t, _)| t.as_deref() == lane) {
            count.fetch_add(1, Ordering::AcqRel);
            return tag.clone();
        }
        let tag: Option<Arc<str>> = lane.map(Arc::from);
        lanes.push((tag.clone(), AtomicU64::new(1)));
        tag
    }

    fn leave(&self, lane: Option<&str>) {
        let last = {
            let lanes = read(&self.lanes);
            lanes
                .iter()
                .find(|(t, _)| t.as_deref() == lane)
                .is_some_and(|(_, count)| count.fetch_sub(1, Ordering::AcqRel) == 1)
        };
        if last {
            // Removed only if still at zero: a request may have entered since (it held the read
            // lock, which the write lock excludes).
            let mut lanes = write(&self.lanes);
            if let Some(i) = lanes
                .iter()
                .position(|(t, count)| t.as_deref() == lane && count.load(Ordering::Acquire) == 0)
            {
                lanes.swap_remove(i);
            }
        }
    }

    /// `Some(lane)` when every in-flight request shares one lane (`Some(None)` = all base).
    fn single_lane(&self) -> Option<Option<Arc<str>>> {
        let lanes = read(&self.lanes);
        let mut busy = lanes
            .iter()
            .filter(|(_, count)| count.load(Ordering::Acquire) > 0);
        match (busy.next(), busy.next()) {
            (Some((tag, _)), None) => Some(tag.clone()),
            _ => None,
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps an inbound request counted as in flight; dropping it ends the request.
#[derive(Debug)]
#[must_use = "dropping the guard ends the inbound request at once"]
pub struct InboundGuard {
    counts: Arc<InflightCounts>,
    lane: Option<Arc<str>>,
}

impl InboundGuard {
    /// The registered lane (`None` = base).
    pub fn lane(&self) -> Option<&str> {
        self.lane.as_deref()
    }
}

impl Drop for InboundGuard {
    fn drop(&mut self) {
        self.counts.leave(self.lane.as_deref());
    }
}

/// Shards used when the table is large enough that each shard still holds 64 entries.
const SHARDS: usize = 16;

/// Trace id -> lane of the inbound request that carried it, bounded in size and in time (an
/// entry unused for `ttl` is gone).
///
/// Eviction is a segmented LRU: a new trace enters a probation segment, and moves to a protected
/// one when an outbound request of the app uses it. A caller that floods the pod with unique
/// trace ids only churns the probation segment; the traces the app is actually linking stay
/// (a plain LRU would let such a caller flush them and misroute other users' requests).
///
/// Keys are keyed SipHash digests of the ASCII-lower-cased trace id (no allocation per request;
/// a false link needs a 64-bit collision between live entries, about 1 in 10^15 at 10 000
/// entries, and cannot be aimed at without the per-process key).
#[derive(Debug)]
pub struct TraceTable {
    hasher: RandomState,
    shards: Box<[Mutex<Segments>]>,
    ttl_nanos: AtomicU64,
}

#[derive(Debug)]
struct TraceEntry {
    lane: Option<Arc<str>>,
    last_used: Duration,
}

/// One shard's two segments.
#[derive(Debug)]
struct Segments {
    probation: LruCache<u64, TraceEntry>,
    protected: LruCache<u64, TraceEntry>,
}

impl Segments {
    fn new(capacity: usize) -> Self {
        let (probation, protected) = split(capacity);
        Self {
            probation: LruCache::new(probation),
            protected: LruCache::new(protected),
        }
    }

    fn resize(&mut self, capacity: usize) {
        let (probation, protected) = split(capacity);
        self.probation.resize(probation);
        self.protected.resize(protected);
    }

    fn len(&self) -> usize {
        self.probation.len() + self.protected.len()
    }
}

/// Probation and protected sizes for a shard of `capacity` entries: half each, at least one.
fn split(capacity: usize) -> (NonZeroUsize, NonZeroUsize) {
    let probation = capacity.div_ceil(2);
    let protected = capacity - probation;
    (
        NonZeroUsize::new(probation).unwrap_or(NonZeroUsize::MIN),
        NonZeroUsize::new(protected).unwrap_or(NonZeroUsize::MIN),
    )
}

impl TraceTable {
    /// A table of at most `capacity` entries (rounded up to a multiple of 16 above 1024, where it
    /// is split into 16 shards; at least two per shard) whose entries expire `ttl` after their
    /// last use.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let shards = if capacity >= SHARDS * 64 { SHARDS } else { 1 };
        let per_shard = per_shard(capacity, shards);
        Self {
            hasher: RandomState::new(),
            shards: (0..shards)
                .map(|_| Mutex::new(Segments::new(per_shard)))
                .collect(),
            ttl_nanos: AtomicU64::new(crate::policy::nanos(ttl)),
        }
    }

    /// Changes the bounds; the shard count stays as created.
    pub fn set_bounds(&self, capacity: usize, ttl: Duration) {
        let per_shard = per_shard(capacity, self.shards.len());
        for shard in &self.shards {
            lock(shard).resize(per_shard);
        }
        self.ttl_nanos
            .store(crate::policy::nanos(ttl), Ordering::Relaxed);
    }

    /// Entries currently held (expired ones included until evicted or looked up).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, id: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        for b in id.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
        h.finish()
    }

    fn shard(&self, key: u64) -> &Mutex<Segments> {
        // The low bits of a SipHash digest are uniform; `% len` keeps any shard count valid.
        let i = usize::try_from(key % self.shards.len() as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Links trace id `id` to `lane` at time `now`.
    pub fn insert(&self, id: &str, lane: Option<Arc<str>>, now: Duration) {
        let key = self.key(id);
        let entry = TraceEntry {
            lane,
            last_used: now,
        };
        let mut shard = lock(self.shard(key));
        if let Some(held) = shard.protected.get_mut(&key) {
            *held = entry;
        } else {
            shard.probation.put(key, entry);
        }
    }

    /// The lane linked to `id` (`Some(None)` = base), refreshing the entry and protecting it
    /// from floods of new traces; `None` when unknown or expired.
    pub fn lookup(&self, id: &str, now: Duration) -> Option<Option<Arc<str>>> {
        let key = self.key(id);
        let ttl = Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed));
        let mut shard = lock(self.shard(key));
        let shard = &mut *shard;
        if let Some(entry) = shard.protected.get_mut(&key) {
            if now.saturating_sub(entry.last_used) >= ttl {
                shard.protected.pop(&key);
                return None;
            }
            entry.last_used = now;
            return Some(entry.lane.clone());
        }
        let mut entry = shard.probation.pop(&key)?;
        if now.saturating_sub(entry.last_used) >= ttl {
            return None;
        }
        entry.last_used = now;
        let lane = entry.lane.clone();
        // The protected segment's least recently used entry goes back on probation.
        if let Some((demoted, old)) = shard.protected.push(key, entry)
            && demoted != key
        {
            shard.probation.put(demoted, old);
        }
        Some(lane)
    }
}

fn per_shard(capacity: usize, shards: usize) -> usize {
    capacity.div_ceil(shards).max(2)
}

#[cfg(test)]
mod tests {
    use super::super::rules::TraceIdFormat;
    use super::*;
    use crate::policy::clock::ManualClock;
    use http::HeaderValue;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn setup(pod_tag: Option<&str>) -> (Propagator, PropagationSettings, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(100)));
        let settings = PropagationSettings::default();
        let p = Propagator::new(pod_tag, &settings, clock.clone());
        (p, settings, clock)
    }

    fn decide(
        p: &Propagator,
        s: &PropagationSettings,
        h: &[(&str, &str)],
    ) -> (Option<String>, PropagationRule, Option<String>) {
        let map = headers(h);
        let out = p.outbound_lane(s, &map);
        (
            out.tag().map(str::to_owned),
            out.rule,
            out.injection().map(str::to_owned),
        )
    }

    #[test]
    fn rule_labels_are_stable() {
        // DESIGN §4: outbound requests are counted by deciding rule.
        let labels: Vec<&str> = PropagationRule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tag_header",
                "baggage",
                "trace_id",
                "inflight",
                "color_by_node",
                "base"
            ]
        );
    }

    #[test]
    fn rule_1_tag_header_is_kept_and_not_injected() {
        // DESIGN §4 rule (1); a tag set upstream is never overwritten (§2).
        let (p, s, _) = setup(Some("blue"));
        let _in = p.register_inbound(&s, Some("green"), &headers(&[("traceparent", TRACEPARENT)]));
        let got = decide(
            &p,
            &s,
            &[("x-mse-tag", "gray"), ("traceparent", TRACEPARENT)],
        );
        assert_eq!(got, (Some("gray".into()), PropagationRule::TagHeader, None));
    }

    #[test]
    fn rule_2_baggage_beats_trace_inflight_and_node() {
        // DESIGN §4 rule (2).
        let (p, s, _) = setup(Some("blue"));
        let _in = p.register_inbound(&s, Some("green"), &headers(&[("traceparent", TRACEPARENT)]));
        let got = decide(
            &p,
            &s,
            &[
                ("baggage", "userId=1, x-mse-tag=gray;p"),
                ("traceparent", TRACEPARENT),
            ],
        );
        assert_eq!(got, (Some("gray".into()), PropagationRule::Baggage, None));
    }

    #[test]
    fn rule_3_trace_id_links_outbound_to_inbound_under_concurrency() {
        // DESIGN §4 rule (3): exact propagation under any concurrency when the app forwards
        // a trace context. Two inbound requests of different lanes are in flight at once.
        let (p, s, _) = setup(Some("blue"));
        let _gray = p.register_inbound(&s, Some("gray"), &headers(&[("traceparent", TRACEPARENT)]));
        let _base = p.register_inbound(&s, None, &headers(&[("x-request-id", "req-7")]));
        // A new span of the same trace: only the trace-id field must match.
        let child = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let got = decide(&p, &s, &[("traceparent", child)]);
        assert_eq!(
            got,
            (
                Some("gray".into()),
                PropagationRule::TraceId,
                Some("gray".into())
            )
        );
        // A trace linked to a base request decides base (and injects nothing).
        let got = decide(&p, &s, &[("x-request-id", "req-7")]);
        assert_eq!(got, (None, PropagationRule::TraceId, None));
        // Unknown trace: falls through (lanes differ, so not inflight) to the pod's tag.
        let got = decide(&p, &s, &[("x-request-id", "other")]);
        assert_eq!(got.1, PropagationRule::ColorByNode);
    }

    #[test]
    fn rule_3_every_trace_header_format() {
        // DESIGN §4 rule (3): the trace id of traceparent, x-b3-traceid, uber-trace-id, sw8 and
        // x-request-id.
        let cases: [(&str, &str, &str); 5] = [
            (
                "traceparent",
                TRACEPARENT,
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-aaaaaaaaaaaaaaaa-00",
            ),
            (
                "x-b3-traceid",
                "80f198ee56343ba864fe8b2a57d3eff7",
                "80f198ee56343ba864fe8b2a57d3eff7",
            ),
            ("uber-trace-id", "abc123:1:0:1", "abc123%3A77%3A1%3A1"),
            (
                "sw8",
                "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-MWU3YzIwNGE3YmY3MTFlYWI4NThhY2RlNDgwMDExMjI=-0-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=",
                "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-OTHERSEGMENT=-3-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=",
            ),
            (
                "x-request-id",
                "f9f1a6a2-5d0b-4c4e-9c4b-6f8a0d1e2b3c",
                "f9f1a6a2-5d0b-4c4e-9c4b-6f8a0d1e2b3c",
            ),
        ];
        for (name, inbound, outbound) in cases {
            let (p, mut s, _) = setup(None);
            s.inflight = false;
            let _in = p.register_inbound(&s, Some("gray"), &headers(&[(name, inbound)]));
            let got = decide(&p, &s, &[(name, outbound)]);
            assert_eq!(got.1, PropagationRule::TraceId, "{name}");
            assert_eq!(got.0.as_deref(), Some("gray"), "{name}");
        }
        assert_eq!(
            TraceIdFormat::TraceParent.extract(TRACEPARENT),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(TraceIdFormat::Jaeger.extract("abc:1:0:1"), Some("abc"));
        assert_eq!(
            TraceIdFormat::Sw8.extract("1-dHJhY2U=-c2Vn-0"),
            Some("dHJhY2U=")
        );
        assert_eq!(TraceIdFormat::B3Single.extract("abc-def-1"), Some("abc"));
        assert_eq!(TraceIdFormat::Whole.extract(" id "), Some("id"));
        // Malformed or invalid (all-zero) ids link nothing.
        assert_eq!(TraceIdFormat::TraceParent.extract("garbage"), None);
        assert_eq!(
            TraceIdFormat::TraceParent
                .extract("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(TraceIdFormat::Whole.extract(""), None);
    }

    #[test]
    fn rule_4_inflight_only_when_all_share_one_lane() {
        // DESIGN §4 rule (4): if inflight and all in-flight inbound requests share one lane.
        let (p, s, _) = setup(None);
        let gray1 = p.register_inbound(&s, Some("gray"), &HeaderMap::new());
        let gray2 = p.register_inbound(&s, Some("gray"), &HeaderMap::new());
        assert_eq!(
            decide(&p, &s, &[]),
            (
                Some("gray".into()),
                PropagationRule::Inflight,
                Some("gray".into())
            )
        );
        let base = p.register_inbound(&s, None, &HeaderMap::new());
        // gray and base in flight: base counts as its own lane, so rule 4 does not apply.
        assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Base, None));
        drop(gray1);
        drop(gray2);
        // Only base in flight: rule 4 decides base.
        assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Inflight, None));
        drop(base);
        // Nothing in flight: rule 4 does not apply.
        assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Base, None));
        // Switched off: not consulted.
        let off = PropagationSettings {
            inflight: false,
            ..s.clone()
        };
        let _g = p.register_inbound(&off, Some("gray"), &HeaderMap::new());
        assert_eq!(decide(&p, &off, &[]), (None, PropagationRule::Base, None));
        assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Inflight);
    }

    #[test]
    fn rule_5_color_by_node_and_rule_6_base() {
        // DESIGN §4 rules (5) and (6).
        let (p, s, _) = setup(Some("gray"));
        assert_eq!(
            decide(&p, &s, &[]),
            (
                Some("gray".into()),
                PropagationRule::ColorByNode,
                Some("gray".into())
            )
        );
        let off = PropagationSettings {
            color_by_node: false,
            ..s.clone()
        };
        assert_eq!(decide(&p, &off, &[]), (None, PropagationRule::Base, None));
        let (untagged, s, _) = setup(None);
        assert_eq!(
            decide(&untagged, &s, &[]),
            (None, PropagationRule::Base, None)
        );
        // An empty pod tag is the base pod.
        let (empty, s, _) = setup(Some(""));
        assert_eq!(decide(&empty, &s, &[]).1, PropagationRule::Base);
    }

    #[test]
    fn precedence_trace_beats_inflight_beats_node() {
        // DESIGN §4: rules apply in order (3) before (4) before (5).
        let (p, s, _) = setup(Some("node"));
        let _blue = p.register_inbound(&s, Some("blue"), &headers(&[("x-request-id", "r1")]));
        // All in flight are blue, but the trace id says gray (an earlier, finished request).
        drop(p.register_inbound(&s, Some("gray"), &headers(&[("x-request-id", "r0")])));
        assert_eq!(
            decide(&p, &s, &[("x-request-id", "r0")]).0.as_deref(),
            Some("gray")
        );
        assert_eq!(decide(&p, &s, &[]).0.as_deref(), Some("blue"));
        assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Inflight);
    }

    #[test]
    fn trace_entries_expire_after_ttl() {
        // DESIGN §4 rule (3): a table with TTL.
        let (p, mut s, clock) = setup(None);
        s.inflight = false;
        s.trace_ttl = Duration::from_secs(10);
        p.apply(&s);
        drop(p.register_inbound(&s, Some("gray"), &headers(&[("x-request-id", "r")])));
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            decide(&p, &s, &[("x-request-id", "r")]).1,
            PropagationRule::TraceId
        );
        // The hit refreshed the entry: 9 s more is still within the TTL.
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            decide(&p, &s, &[("x-request-id", "r")]).1,
            PropagationRule::TraceId
        );
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            decide(&p, &s, &[("x-request-id", "r")]).1,
            PropagationRule::Base
        );
        assert!(p.traces().is_empty(), "the expired entry is removed");
    }

    #[test]
    fn trace_table_is_bounded_and_evicts_least_recently_used() {
        // DESIGN §4 rule (3): a table with a size bound. Four entries: two on probation, two
        // protected.
        let t = TraceTable::new(4, Duration::from_secs(60));
        let now = Duration::ZERO;
        let gray: Option<Arc<str>> = Some(Arc::from("gray"));
        for id in ["a", "b", "c"] {
            t.insert(id, gray.clone(), now);
        }
        assert_eq!(t.len(), 2, "probation holds two new traces");
        assert!(
            t.lookup("a", now).is_none(),
            "a, the oldest new trace, was evicted"
        );
        assert!(t.lookup("b", now).is_some(), "b used: protected");
        t.insert("d", gray.clone(), now);
        t.insert("e", gray.clone(), now);
        assert_eq!(t.len(), 3);
        assert!(t.lookup("c", now).is_none(), "c evicted from probation");
        for id in ["b", "d", "e"] {
            assert!(t.lookup(id, now).is_some(), "{id} kept");
        }
        // Trace ids compare case-insensitively (hex ids may be upper-cased by some agents).
        assert_eq!(t.lookup("D", now), Some(gray.clone()));
        // A large table splits into shards and still honours its bound.
        let big = TraceTable::new(2_048, Duration::from_secs(60));
        for i in 0..10_000 {
            big.insert(&format!("trace-{i}"), None, now);
        }
        // New traces fill the probation segments: half the table.
        assert!(big.len() <= 1_024, "{}", big.len());
        assert!(big.len() > 950, "shards are used evenly: {}", big.len());
        // Shrinking applies at once.
        big.set_bounds(160, Duration::from_secs(60));
        assert!(big.len() <= 160);
    }

    #[test]
    fn a_flood_of_new_trace_ids_does_not_flush_the_traces_in_use() {
        let t = TraceTable::new(1_000, Duration::from_secs(60));
        let now = Duration::ZERO;
        let gray: Option<Arc<str>> = Some(Arc::from("gray"));
        for i in 0..100 {
            t.insert(&format!("user-{i}"), gray.clone(), now);
            assert!(t.lookup(&format!("user-{i}"), now).is_some());
        }
        // A caller sends 100 000 requests with unique trace ids.
        for i in 0..100_000 {
            t.insert(&format!("flood-{i}"), None, now);
        }
        assert!(t.len() <= 1_000);
        for i in 0..100 {
            assert_eq!(
                t.lookup(&format!("user-{i}"), now),
                Some(gray.clone()),
                "user-{i}"
            );
        }
    }

    #[test]
    fn inbound_guard_counts_across_threads() {
        // The propagator is shared by every connection.
        let (p, s, _) = setup(None);
        let p = Arc::new(p);
        let s = Arc::new(s);
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (p, s) = (Arc::clone(&p), Arc::clone(&s));
                std::thread::spawn(move || {
                    let lane = if i % 2 == 0 { Some("gray") } else { None };
                    for _ in 0..1_000 {
                        let g = p.register_inbound(&s, lane, &HeaderMap::new());
                        assert_eq!(g.lane(), lane);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        // Every guard dropped: nothing in flight.
        assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Base);
    }

    #[test]
    fn settings_merge_groups_of_the_app() {
        use super::super::LaneGroupConfig;
        use super::super::rules::tests::group;
        let mut g1 = group("ns/a", &["x"], vec![]);
        g1.propagation = Some(lanemesh_api::proto::Propagation {
            trace_headers: vec!["traceparent".into()],
            inflight: false,
            color_by_node: false,
            trace_table_size: 10,
            trace_ttl: None,
        });
        let mut g2 = group("ns/b", &["x"], vec![]);
        g2.tag_header = "x-lane".into();
        g2.propagation = Some(lanemesh_api::proto::Propagation {
            trace_headers: vec!["sw8".into(), "traceparent".into()],
            inflight: true,
            color_by_node: false,
            trace_table_size: 20,
            trace_ttl: None,
        });
        let c1 = LaneGroupConfig::try_from(&g1).unwrap();
        let c2 = LaneGroupConfig::try_from(&g2).unwrap();
        let m = PropagationSettings::merge([&c1, &c2]);
        let tags: Vec<&str> = m.tag_headers.iter().map(HeaderName::as_str).collect();
        assert_eq!(tags, ["x-mse-tag", "x-lane"]);
        let traces: Vec<&str> = m.trace_headers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(traces, ["traceparent", "sw8"]);
        assert!(m.inflight && !m.color_by_node);
        assert_eq!(m.trace_table_size, 20);
        assert_eq!(
            PropagationSettings::merge([]),
            PropagationSettings::default()
        );
        // Either group's tag header carries the tag.
        let map = headers(&[("x-lane", "gray")]);
        assert_eq!(
            m.carried_tag(&map).map(|(t, _)| t.into_owned()).as_deref(),
            Some("gray")
        );
    }
}
