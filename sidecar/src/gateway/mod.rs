//! The gateway's routes as pure logic: which backend Service a request entering the mesh goes
//! to (Gateway API HTTPRoute and Ingress semantics), and the route's lane settings (edge trust,
//! per-route Percentage weights). No I/O: the router asks [`GatewayTable::route`] per request.
//!
//! Precedence follows Gateway API: among the rules whose match holds, the most specific host
//! wins (exact, then the longest wildcard, then routes without hostnames); then an exact path,
//! a regex path, the longest path prefix; then a method match, more header matches, more query
//! matches; then the older route, the route name, rule and match order. Ingress paths are
//! converted into the same rules, so both kinds compete by the same order.

pub mod edge;
mod from_proto;

use std::sync::Arc;

use http::{HeaderName, Method};
use rand::Rng;
use regex::Regex;

use crate::lane::{LaneWeights, RequestView};

pub use from_proto::GatewayRouteError;

/// One route (an HTTPRoute or an Ingress) as the gateway runs it.
#[derive(Debug)]
pub struct GatewayRouteConfig {
    /// `namespace/Kind/name` (shared with the metrics label).
    pub name: Arc<str>,
    /// Keep lane tags and baggage lane members clients send.
    pub trust_lane_tags: bool,
    /// The route's own Percentage-mode weights; `None` = the Lanes' own.
    pub lane_weights: Option<LaneWeights>,
    /// RFC 3339 creation time: older routes win ties.
    created: String,
    rules: Vec<Rule>,
}

/// One rule: where its matches send requests.
#[derive(Debug)]
pub struct Rule {
    hosts: Vec<Host>,
    matches: Vec<RequestMatch>,
    /// The backends, with their cumulative weights (for one draw per request).
    backends: Vec<(u64, Backend)>,
}

/// A Service port a rule sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/name`.
    pub service: String,
    /// Which port of it.
    pub port: BackendPort,
}

/// A Service port by number (HTTPRoute, Ingress) or by name (Ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendPort {
    /// The Service port number.
    Number(u16),
    /// The Service port's name.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    /// Whole segments; `/` matches everything.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueTest {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct RequestMatch {
    path: Option<PathMatch>,
    headers: Vec<(HeaderName, ValueTest)>,
    query: Vec<(String, ValueTest)>,
    method: Option<Method>,
}

impl Rule {
    /// One backend for a request, drawn by weight; `None` when every weight is 0.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&Backend> {
        let total = self.backends.last().map_or(0, |(upper, _)| *upper);
        if total == 0 {
            return None;
        }
        let draw = rng.random_range(0..total);
        self.backends
            .iter()
            .find(|(upper, _)| draw < *upper)
            .map(|(_, backend)| backend)
    }
}

impl Host {
    /// How specifically this host names `host`: `None` when it does not match.
    fn score(&self, host: &str) -> Option<(u8, usize)> {
        match self {
            Self::Exact(h) => (h == host).then_some((2, h.len())),
            // A wildcard matches one or more labels in front of the suffix, never the bare suffix.
            Self::Suffix(s) => {
                (host.len() > s.len() && host.ends_with(s.as_str())).then_some((1, s.len()))
            }
        }
    }
}

impl PathMatch {
    fn holds(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => {
                p == "/"
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Self::Regex(re) => re.is_match(path),
        }
    }

    /// Precedence among path matches: exact, then regex, then the longest prefix.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(p) => (3, p.len()),
            Self::Regex(_) => (2, 0),
            Self::Prefix(p) => (1, p.len()),
        }
    }
}

impl ValueTest {
    fn holds(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

impl RequestMatch {
    fn holds(&self, method: &Method, view: &RequestView<'_>, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.as_ref().is_none_or(|p| p.holds(path))
            && self
                .headers
                .iter()
                .all(|(name, test)| view.header(name).is_some_and(|v| test.holds(v)))
            && self
                .query
                .iter()
                .all(|(name, test)| view.query(name).is_some_and(|v| test.holds(&v)))
    }

    /// Gateway API's precedence key within one host score, larger first.
    fn rank(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = self.path.as_ref().map_or((1, 1), PathMatch::rank);
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// The route that matched.
    pub route: &'a GatewayRouteConfig,
    /// Its rule that matched.
    pub rule: &'a Rule,
}

/// One (route, rule, match) in precedence order, without the host part.
#[derive(Debug)]
struct Entry {
    route: usize,
    rule: usize,
    /// Index into the rule's matches; `None` = the rule matches every request.
    matched: Option<usize>,
}

/// Every route of the gateway, ordered for matching. Built once per snapshot.
#[derive(Debug, Default)]
pub struct GatewayTable {
    routes: Vec<Arc<GatewayRouteConfig>>,
    /// In precedence order, host aside.
    entries: Vec<Entry>,
}

impl GatewayTable {
    /// Orders the matches of `routes` by precedence (the host is scored per request).
    pub fn new(routes: impl IntoIterator<Item = Arc<GatewayRouteConfig>>) -> Self {
        let mut routes: Vec<Arc<GatewayRouteConfig>> = routes.into_iter().collect();
        routes.sort_by(|a, b| (&a.created, &*a.name).cmp(&(&b.created, &*b.name)));
        let mut keyed = Vec::new();
        for (ri, route) in routes.iter().enumerate() {
            for (ui, rule) in route.rules.iter().enumerate() {
                if rule.matches.is_empty() {
                    keyed.push((
                        (1, 1, false, 0, 0),
                        Entry {
                            route: ri,
                            rule: ui,
                            matched: None,
                        },
                    ));
                }
                for (mi, m) in rule.matches.iter().enumerate() {
                    keyed.push((
                        m.rank(),
                        Entry {
                            route: ri,
                            rule: ui,
                            matched: Some(mi),
                        },
                    ));
                }
            }
        }
        // Stable: equal ranks keep route (age, name), rule and match order.
        keyed.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        Self {
            routes,
            entries: keyed.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// No routes at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes, oldest first.
    pub fn routes(&self) -> &[Arc<GatewayRouteConfig>] {
        &self.routes
    }

    /// The rule a request goes by: `host` without port, lower case (`None` when the request
    /// names none). `None` when no route matches.
    pub fn route(
        &self,
        host: Option<&str>,
        method: &Method,
        view: &RequestView<'_>,
        path: &str,
    ) -> Option<Matched<'_>> {
        let mut best: Option<((u8, usize), &Entry)> = None;
        for entry in &self.entries {
            let Some(route) = self.routes.get(entry.route) else {
                continue;
            };
            let Some(rule) = route.rules.get(entry.rule) else {
                continue;
            };
            let score = if rule.hosts.is_empty() {
                Some((0, 0))
            } else {
                host.and_then(|h| rule.hosts.iter().filter_map(|r| r.score(h)).max())
            };
            let Some(score) = score else { continue };
            // Entries are in precedence order: a later one wins only with a better host.
            if best.as_ref().is_some_and(|(b, _)| *b >= score) {
                continue;
            }
            let holds = match entry.matched {
                None => true,
                Some(i) => rule
                    .matches
                    .get(i)
                    .is_some_and(|m| m.holds(method, view, path)),
            };
            if holds {
                best = Some((score, entry));
                if score.0 == 2 {
                    break;
                }
            }
        }
        let (_, entry) = best?;
        let route = self.routes.get(entry.route)?;
        Some(Matched {
            route,
            rule: route.rules.get(entry.rule)?,
        })
    }
}

/// The request's host as routes name it: the `Host` header, else the URI's authority (HTTP/2),
/// without port, lower case.
pub fn request_host(parts: &http::request::Parts) -> Option<String> {
    let raw = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.host())?;
    let host = match raw.rsplit_once(':') {
        // IPv6 literals keep their colons inside brackets.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => raw,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
