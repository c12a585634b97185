//! What a gateway does to a request from outside before the lane decision: it removes the lane
//! claims a client may not make, and starts a W3C trace so instrumented apps carry one.

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use rand::Rng;

use crate::lane::{LaneTable, baggage};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// The marker a governed caller sets when it decided "base" (the router's own header).
static DECIDED: HeaderName = HeaderName::from_static("x-lanemesh-lane-decided");

/// Removes every lane claim a client sent: the tag header of each group, the `baggage` members
/// named like them (other members are kept, in order), and the "already decided" marker. Then
/// only the gateway's own decision puts the request in a lane.
pub fn strip_lane_claims(headers: &mut HeaderMap, lanes: &LaneTable) {
    headers.remove(&DECIDED);
    for group in lanes.groups() {
        headers.remove(&group.tag_header);
    }
    if !headers.contains_key(&BAGGAGE) {
        return;
    }
    baggage::rewrite(
        headers,
        |key| {
            lanes
                .groups()
                .iter()
                .any(|g| g.tag_header.as_str().eq_ignore_ascii_case(key))
        },
        None,
    );
}

/// Starts a W3C trace (`traceparent: 00-<trace id>-<span id>-01`) when the request has none, so
/// apps instrumented with OpenTelemetry continue it and the sidecars' trace-id table can link
/// the hops of one request.
pub fn ensure_traceparent<R: Rng + ?Sized>(headers: &mut HeaderMap, rng: &mut R) {
    if headers.contains_key(&TRACEPARENT) {
        return;
    }
    // All-zero ids are invalid in W3C Trace Context; 0 or 1 random bits short is not a concern.
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    let mut value = String::with_capacity(55);
    let _ = write!(value, "00-{trace:032x}-{span:016x}-01");
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(TRACEPARENT.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::lane::LaneGroupConfig;
    use crate::lane::rules::tests::{group, lane};

    fn lanes() -> LaneTable {
        let g = group("shop/order", &["a"], vec![lane("gray", "gray", true, None)]);
        LaneTable::new([LaneGroupConfig::try_from(&g).unwrap()])
    }

    #[test]
    fn client_lane_claims_are_removed_and_other_baggage_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mse-tag", "gray".parse().unwrap());
        headers.insert("x-lanemesh-lane-decided", "base".parse().unwrap());
        headers.append(
            "baggage",
            "user=alice, X-MSE-TAG=gray;prop=1".parse().unwrap(),
        );
        headers.append("baggage", "region=eu".parse().unwrap());
        strip_lane_claims(&mut headers, &lanes());
        assert!(headers.get("x-mse-tag").is_none());
        assert!(headers.get("x-lanemesh-lane-decided").is_none());
        assert_eq!(headers.get("baggage").unwrap(), "user=alice,region=eu");
        let mut only_claim = HeaderMap::new();
        only_claim.insert("baggage", "x-mse-tag=gray".parse().unwrap());
        strip_lane_claims(&mut only_claim, &lanes());
        assert!(only_claim.get("baggage").is_none());
    }

    #[test]
    fn a_trace_is_started_only_when_none_came() {
        let mut headers = HeaderMap::new();
        ensure_traceparent(&mut headers, &mut rand::rng());
        let value = headers
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{value}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_ne!(parts[1], "0".repeat(32));
        ensure_traceparent(&mut headers, &mut rand::rng());
        assert_eq!(headers.get("traceparent").unwrap(), value.as_str(), "kept");
    }
}
