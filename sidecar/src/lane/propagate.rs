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

use super::baggage;
use super::decide::header_str;
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
            .find_map(|h| baggage::value(headers, h.as_str()))
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
    /// Nothing linked the request to a lane and the destination is an entry app of a lane
    /// group: this sidecar took the group's lane decision for it, so the first governed hop is
    /// lane-aware (the entry's own inbound then keeps the decision).
    EntryDecision,
    /// (6) Nothing applied.
    Base,
}

impl PropagationRule {
    /// Every rule, in precedence order, for pre-registering metric label values.
    pub const ALL: [Self; 7] = [
        Self::TagHeader,
        Self::Baggage,
        Self::TraceId,
        Self::Inflight,
        Self::ColorByNode,
        Self::EntryDecision,
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
            Self::EntryDecision => "entry_decision",
            Self::Base => "base",
        }
    }
}

impl crate::metrics::LabelValue for PropagationRule {
    const ALL: &'static [Self] = &Self::ALL;

    fn label(self) -> &'static str {
        self.as_str()
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
    /// carries is never rewritten; an entry decision writes its group's own tag header).
    pub fn injection(&self) -> Option<&str> {
        match self.rule {
            PropagationRule::TraceId | PropagationRule::Inflight | PropagationRule::ColorByNode => {
                self.tag()
            }
            PropagationRule::TagHeader
            | PropagationRule::Baggage
            | PropagationRule::EntryDecision
            | PropagationRule::Base => None,
        }
    }
}

/// The per-pod propagation state: trace table and in-flight counts.
#[derive(Debug)]
pub struct Propagator {
    clock: Arc<dyn Clock>,
    traces: TraceTable,
    inflight: Arc<InflightCounts>,
}

impl Propagator {
    /// State with the trace table bounded by `settings`.
    pub fn new(settings: &PropagationSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
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
        let lane = lane.filter(|t| !t.is_empty());
        if is_health_probe(headers) {
            // The kubelet's probes never call out: counted in flight, one arriving while a lane's
            // request runs would make this pod's outbound calls ambiguous (rule 4).
            return InboundGuard {
                counts: None,
                lane: lane.map(Arc::from),
            };
        }
        let lane = self.inflight.enter(lane);
        let now = self.clock.now();
        for th in &settings.trace_headers {
            if let Some(id) = header_str(headers, &th.name).and_then(|v| th.format.extract(v)) {
                self.traces.insert(id, lane.clone(), now);
            }
        }
        InboundGuard {
            counts: Some(Arc::clone(&self.inflight)),
            lane,
        }
    }

    /// Decides the lane of an outbound request (rules 1-6) of a pod tagged `pod_tag` (`None` =
    /// base pod).
    pub fn outbound_lane<'a>(
        &self,
        settings: &PropagationSettings,
        headers: &'a HeaderMap,
        pod_tag: Option<&Arc<str>>,
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
            && let Some(tag) = pod_tag.filter(|t| !t.is_empty())
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
    /// `None` for a request not counted (a health probe).
    counts: Option<Arc<InflightCounts>>,
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
        if let Some(counts) = &self.counts {
            counts.leave(self.lane.as_deref());
        }
    }
}

/// A kubelet probe (`User-Agent: kube-probe/<version>`, as the kubelet sends it).
pub fn is_health_probe(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::USER_AGENT)
        .is_some_and(|v| v.as_bytes().starts_with(b"kube-probe/"))
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
mod tests;
