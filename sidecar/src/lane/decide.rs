//! The lane decision at an entry app's inbound or at a gateway (DESIGN §4 "Lane decision").
//!
//! - A request that already carries a tag (the group's tag header, else a W3C `baggage` member
//!   named like the tag header) keeps it.
//! - Content mode: lanes are tried in name order; the first enabled lane whose match holds wins.
//!   `All` = every condition holds, `Any` = at least one. A condition on an absent key is false,
//!   whatever its operator (so `NotEqual`/`NotIn` never match an absent key).
//! - Percentage mode: one uniform draw in `0..100` per request against the cumulative weights of
//!   the enabled lanes (name order); the remainder stays base. A lane that also has a match only
//!   takes the requests of its slice that satisfy it (the rest stay base), so a weight is always
//!   an upper bound of the lane's share.

use std::borrow::Cow;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, Uri};
use rand::Rng;

use super::rules::{Condition, LaneGroupConfig, LaneMatch, Logic, Operator, RoutingMode, Source};

use lanemesh_api::hash::fnv1a64;

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// A view of a request's URI and headers.
    pub fn new(uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self { uri, headers }
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The first value of header `name`, if it is valid UTF-8.
    pub fn header(&self, name: &HeaderName) -> Option<&'a str> {
        header_str(self.headers, name)
    }

    /// The first query parameter `name` (case-sensitive), percent- and `+`-decoded. A parameter
    /// without `=` is present with an empty value.
    pub fn query(&self, name: &str) -> Option<Cow<'a, str>> {
        let query = self.uri.query()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The first cookie `name` (case-sensitive) of any `cookie` header, surrounding quotes removed.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| {
                    let v = v.trim();
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v)
                })
            })
    }
}

impl<'a> From<&'a http::request::Parts> for RequestView<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        Self::new(&parts.uri, &parts.headers)
    }
}

/// A header's first value as text; non-UTF-8 values count as absent.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// How a request carries a tag it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// In the tag header.
    TagHeader,
    /// In a `baggage` member named like the tag header.
    Baggage,
}

/// The tag a request already carries: the tag header first, then baggage (DESIGN §2). Empty
/// values count as absent.
pub fn carried_tag<'a>(
    headers: &'a HeaderMap,
    tag_header: &HeaderName,
) -> Option<(Cow<'a, str>, Carried)> {
    if let Some(tag) = header_str(headers, tag_header).map(str::trim)
        && !tag.is_empty()
    {
        return Some((Cow::Borrowed(tag), Carried::TagHeader));
    }
    super::baggage::value(headers, tag_header.as_str()).map(|tag| (tag, Carried::Baggage))
}

/// Why a request is (or is not) in a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// It already carried the tag in the tag header.
    TagHeader,
    /// It already carried the tag in baggage.
    Baggage,
    /// A Content-mode lane's match held.
    Matched,
    /// The Percentage-mode draw fell in a lane's slice.
    Weighted,
    /// No lane took it: base.
    NoMatch,
}

impl DecisionReason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [Self; 5] = [
        Self::TagHeader,
        Self::Baggage,
        Self::Matched,
        Self::Weighted,
        Self::NoMatch,
    ];

    /// The stable metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TagHeader => "tag_header",
            Self::Baggage => "baggage",
            Self::Matched => "matched",
            Self::Weighted => "weighted",
            Self::NoMatch => "no_match",
        }
    }
}

impl crate::metrics::LabelValue for DecisionReason {
    const ALL: &'static [Self] = &Self::ALL;

    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// The lane decision for one request in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneDecision<'a> {
    /// The lane's tag; `None` = base.
    pub tag: Option<Cow<'a, str>>,
    /// Why.
    pub reason: DecisionReason,
    /// The deciding lane's name, when a lane rule decided.
    pub lane: Option<&'a str>,
    /// The group that decided (`namespace/name`).
    pub group: &'a str,
    /// The header to carry the tag in.
    pub tag_header: &'a HeaderName,
}

impl LaneDecision<'_> {
    /// Whether the proxy must set the tag header: a lane rule put the request in a lane (a tag
    /// that arrived in baggage stays there; the next hops read baggage too). The proxy writes it
    /// with [`super::baggage::carry`], into baggage as well.
    pub fn sets_tag_header(&self) -> bool {
        self.tag.is_some()
            && matches!(
                self.reason,
                DecisionReason::Matched | DecisionReason::Weighted
            )
    }
}

/// Percentage-mode weights by lane tag that replace the Lanes' own for some requests (a gateway
/// route's `lanemesh.io/lane-weights`): a lane whose tag is not listed takes none of them. The
/// control plane checks the sum (<= 100); the draw treats a larger sum as capped anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneWeights(Vec<(String, u8)>);

impl LaneWeights {
    /// Weights by tag; each capped at 100.
    pub fn new(weights: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self(
            weights
                .into_iter()
                .map(|(tag, w)| (tag, u8::try_from(w.min(100)).unwrap_or(100)))
                .collect(),
        )
    }

    /// The weight of lane `tag`; 0 when not listed.
    pub fn of(&self, tag: &str) -> u8 {
        self.0.iter().find(|(t, _)| t == tag).map_or(0, |(_, w)| *w)
    }

    /// No weights at all (the Lanes' own apply).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl LaneGroupConfig {
    /// Decides the lane of `request` in this group; `rng` draws for Percentage mode only.
    pub fn decide<'a, R: Rng + ?Sized>(
        &'a self,
        request: &RequestView<'a>,
        rng: &mut R,
    ) -> LaneDecision<'a> {
        self.decide_weighted(request, rng, None)
    }

    /// [`LaneGroupConfig::decide`] with `weights` instead of the lanes' own in Percentage mode.
    pub fn decide_weighted<'a, R: Rng + ?Sized>(
        &'a self,
        request: &RequestView<'a>,
        rng: &mut R,
        weights: Option<&LaneWeights>,
    ) -> LaneDecision<'a> {
        let decision = |tag, reason, lane| LaneDecision {
            tag,
            reason,
            lane,
            group: &self.name,
            tag_header: &self.tag_header,
        };
        if let Some((tag, carried)) = carried_tag(request.headers, &self.tag_header) {
            let reason = match carried {
                Carried::TagHeader => DecisionReason::TagHeader,
                Carried::Baggage => DecisionReason::Baggage,
            };
            return decision(Some(tag), reason, None);
        }
        let enabled = self.lanes.iter().filter(|l| l.enabled);
        match self.routing_mode {
            RoutingMode::Content => {
                let hit = enabled
                    .clone()
                    .find(|l| l.lane_match.as_ref().is_some_and(|m| m.holds(request)));
                match hit {
                    Some(l) => decision(
                        Some(Cow::Borrowed(&l.tag)),
                        DecisionReason::Matched,
                        Some(&l.name),
                    ),
                    None => decision(None, DecisionReason::NoMatch, None),
                }
            }
            RoutingMode::Percentage => {
                let draw: u32 = rng.random_range(0..100);
                let mut upper = 0u32;
                for l in enabled {
                    upper += u32::from(weights.map_or(l.weight, |w| w.of(&l.tag)));
                    if draw < upper {
                        if l.lane_match.as_ref().is_none_or(|m| m.holds(request)) {
                            return decision(
                                Some(Cow::Borrowed(&l.tag)),
                                DecisionReason::Weighted,
                                Some(&l.name),
                            );
                        }
                        break;
                    }
                }
                decision(None, DecisionReason::NoMatch, None)
            }
        }
    }
}

impl LaneMatch {
    /// Whether the match holds for `request`. An empty `All` holds, an empty `Any` does not.
    pub fn holds(&self, request: &RequestView<'_>) -> bool {
        match self.logic {
            Logic::All => self.conditions.iter().all(|c| c.holds(request)),
            Logic::Any => self.conditions.iter().any(|c| c.holds(request)),
        }
    }
}

impl Condition {
    /// Whether the condition holds; false when its key is absent.
    pub fn holds(&self, request: &RequestView<'_>) -> bool {
        match &self.source {
            Source::Header(name) => request.header(name).is_some_and(|v| self.operator.test(v)),
            Source::Query(name) => request.query(name).is_some_and(|v| self.operator.test(&v)),
            Source::Cookie(name) => request.cookie(name).is_some_and(|v| self.operator.test(v)),
        }
    }
}

impl Operator {
    /// Tests a present value.
    pub fn test(&self, value: &str) -> bool {
        match self {
            Self::Equal(want) => value == want,
            Self::NotEqual(want) => value != want,
            Self::In(set) => set.iter().any(|s| s == value),
            Self::NotIn(set) => !set.iter().any(|s| s == value),
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Regex(re) => re.is_match(value),
            Self::Percentage(n) => fnv1a64(value.as_bytes()) % 100 < u64::from(*n),
        }
    }
}

#[cfg(test)]
mod tests;
