//! The lane in W3C `baggage` (DESIGN §2): a member named like the group's tag header
//! (`baggage: x-mse-tag=gray`).
//!
//! Apps instrumented with OpenTelemetry (by hand, by its Java agent or Python auto-instrumentation
//! that the webhook injects, or Go's `otelhttp`) forward `baggage` on every call they make,
//! while frameworks commonly drop headers they do not know. So wherever the proxy puts a request
//! in a lane it writes the tag both into the tag header and into baggage ([`carry`]), and an
//! inbound request that carries its lane only in the tag header gets the baggage member before
//! the app sees it ([`complete`]): the app's own outbound calls then name their lane exactly,
//! however many requests of other lanes it serves at the same time.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Octets W3C Baggage does not allow in a value unencoded (`baggage-octet` excludes space, `"`,
/// `,`, `;`, `\` and controls); `%` is encoded so decoding gives the tag back.
const VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%')
    .add(0x7f);

/// The value of baggage member `key` (ASCII case-insensitive) in any `baggage` header, per W3C
/// Baggage: comma-separated `key=value` members with optional whitespace and `;` properties;
/// the value is percent-decoded. Empty values count as absent.
pub fn value<'a>(headers: &'a HeaderMap, key: &str) -> Option<Cow<'a, str>> {
    headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .flat_map(|v| v.split(','))
        .find_map(|member| {
            let (k, rest) = member.split_once('=')?;
            if !k.trim().eq_ignore_ascii_case(key) {
                return None;
            }
            let value = rest.split(';').next().unwrap_or("").trim();
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()?;
            (!decoded.is_empty()).then_some(decoded)
        })
}

/// Puts the request in lane `tag`: the tag header `tag_header` and the baggage member of the
/// same name both say `tag`.
pub fn carry(headers: &mut HeaderMap, tag_header: &HeaderName, tag: &HeaderValue) {
    headers.insert(tag_header.clone(), tag.clone());
    if let Ok(tag) = tag.to_str() {
        set_member(headers, tag_header.as_str(), tag);
    }
}

/// An inbound request in lane `tag` whose baggage does not say so gets the member, so an app
/// that forwards baggage carries the lane on.
pub fn complete(headers: &mut HeaderMap, tag_header: &HeaderName, tag: &str) {
    if value(headers, tag_header.as_str()).as_deref() != Some(tag) {
        set_member(headers, tag_header.as_str(), tag);
    }
}

/// Rewrites `baggage` as one header whose member `key` is `value` (replacing any member of that
/// name, ASCII case-insensitive) and whose other members are kept, in order.
pub fn set_member(headers: &mut HeaderMap, key: &str, value: &str) {
    let mut joined = String::new();
    joined.push_str(key);
    joined.push('=');
    joined.extend(utf8_percent_encode(value, VALUE));
    rewrite(headers, |k| k.eq_ignore_ascii_case(key), Some(joined));
}

/// Rewrites `baggage` without the members whose key `drop` names (empty members too), with
/// `first` ahead of the rest; no header at all when nothing is left.
pub fn rewrite(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool, first: Option<String>) {
    let mut joined = first.unwrap_or_default();
    for member in headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let key = member.split_once('=').map_or(member, |(k, _)| k).trim();
        if member.is_empty() || drop(key) {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(member);
    }
    headers.remove(&BAGGAGE);
    if joined.is_empty() {
        return;
    }
    // Parts of valid header values and an encoded member joined by commas: a valid value.
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(BAGGAGE.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn tag() -> HeaderName {
        HeaderName::from_static("x-mse-tag")
    }

    #[test]
    fn parsing() {
        // DESIGN §2: `baggage: x-mse-tag=<tag>` per W3C Baggage.
        let get = |values: &[&str]| {
            let h = headers(&values.iter().map(|v| ("baggage", *v)).collect::<Vec<_>>());
            value(&h, "x-mse-tag").map(Cow::into_owned)
        };
        assert_eq!(get(&["x-mse-tag=gray"]).as_deref(), Some("gray"));
        assert_eq!(get(&["a=1,b=2,x-mse-tag=gray"]).as_deref(), Some("gray"));
        assert_eq!(
            get(&[" a = 1 ,  x-mse-tag  =  gray  , c=3"]).as_deref(),
            Some("gray")
        );
        assert_eq!(
            get(&["x-mse-tag=gray;prop1;p2=v, a=b"]).as_deref(),
            Some("gray")
        );
        assert_eq!(get(&["x-mse-tag = gray ; prop"]).as_deref(), Some("gray"));
        assert_eq!(
            get(&["a=1", "x-mse-tag=gray"]).as_deref(),
            Some("gray"),
            "several headers"
        );
        assert_eq!(
            get(&["x-mse-tag=gr%61y"]).as_deref(),
            Some("gray"),
            "percent-decoded"
        );
        assert_eq!(get(&["X-MSE-TAG=gray"]).as_deref(), Some("gray"));
        assert_eq!(
            get(&["x-mse-tags=gray, mse-tag=blue"]),
            None,
            "whole key only"
        );
        assert_eq!(get(&["x-mse-tag="]), None);
        assert_eq!(get(&["garbage, x-mse-tag"]), None);
    }

    #[test]
    fn carry_writes_the_tag_header_and_the_baggage_member() {
        let mut h = headers(&[
            ("baggage", "user=alice"),
            ("baggage", "X-Mse-Tag=blue;p, k=v"),
        ]);
        carry(&mut h, &tag(), &HeaderValue::from_static("gray"));
        assert_eq!(h.get("x-mse-tag").unwrap(), "gray");
        // One header; the stale lane member replaced, the others kept in order.
        assert_eq!(h.get_all("baggage").iter().count(), 1);
        assert_eq!(h.get("baggage").unwrap(), "x-mse-tag=gray,user=alice,k=v");

        let mut h = HeaderMap::new();
        carry(&mut h, &tag(), &HeaderValue::from_static("gray"));
        assert_eq!(h.get("baggage").unwrap(), "x-mse-tag=gray");
    }

    #[test]
    fn a_tag_that_is_no_baggage_octet_is_encoded_and_reads_back() {
        let mut h = HeaderMap::new();
        set_member(&mut h, "x-mse-tag", "a b,c;d%");
        assert_eq!(h.get("baggage").unwrap(), "x-mse-tag=a%20b%2Cc%3Bd%25");
        assert_eq!(value(&h, "x-mse-tag").as_deref(), Some("a b,c;d%"));
    }

    #[test]
    fn complete_adds_the_member_only_when_baggage_does_not_say_the_lane() {
        let mut h = headers(&[("x-mse-tag", "gray"), ("baggage", "k=v")]);
        complete(&mut h, &tag(), "gray");
        assert_eq!(h.get("baggage").unwrap(), "x-mse-tag=gray,k=v");
        // Already there: untouched (not even reordered).
        let mut h = headers(&[("baggage", "k=v,x-mse-tag=gray")]);
        complete(&mut h, &tag(), "gray");
        assert_eq!(h.get("baggage").unwrap(), "k=v,x-mse-tag=gray");
        // The tag header won over a different member: baggage now agrees.
        let mut h = headers(&[("baggage", "x-mse-tag=blue")]);
        complete(&mut h, &tag(), "gray");
        assert_eq!(h.get("baggage").unwrap(), "x-mse-tag=gray");
    }

    #[test]
    fn rewrite_drops_named_and_empty_members_and_the_header_when_nothing_is_left() {
        let mut h = headers(&[("baggage", "a=1,, x-mse-tag=gray ,b=2")]);
        rewrite(&mut h, |k| k == "x-mse-tag", None);
        assert_eq!(h.get("baggage").unwrap(), "a=1,b=2");
        let mut h = headers(&[("baggage", "x-mse-tag=gray")]);
        rewrite(&mut h, |k| k == "x-mse-tag", None);
        assert!(h.get("baggage").is_none());
    }
}
