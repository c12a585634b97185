//! The lane in W3C `baggage` (`lane::baggage`): hand-written parsing and rewriting of a header
//! every caller controls.
//!
//! Input: lines; the first is the lane tag, the others `baggage` header values (those that are
//! not valid header values are skipped, as hyper would refuse them).
//! Invariants: reading never panics; after [`set_member`] the lane member reads back as exactly
//! the tag (percent-encoding round-trips) and every other member of the readable values is kept,
//! in order; dropping every key leaves no `baggage` header.

use http::{HeaderMap, HeaderValue};
use lanemesh_sidecar::lane::baggage::{rewrite, set_member, value};

const KEY: &str = "x-mse-tag";

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let tag = lines.next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_str(line) {
            headers.append("baggage", v);
        }
    }
    let _ = value(&headers, KEY);
    let others = |h: &HeaderMap| -> Vec<String> {
        h.get_all("baggage")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .filter(|m| {
                !m.split_once('=')
                    .map_or(*m, |(k, _)| k)
                    .trim()
                    .eq_ignore_ascii_case(KEY)
            })
            .map(str::to_owned)
            .collect()
    };
    let before = others(&headers);

    let mut set = headers.clone();
    set_member(&mut set, KEY, tag);
    if !tag.is_empty() {
        assert_eq!(
            value(&set, KEY).as_deref(),
            Some(tag),
            "the lane member of {:?}",
            set.get("baggage")
        );
    }
    assert!(set.get_all("baggage").iter().count() <= 1);
    assert_eq!(
        others(&set),
        before,
        "other members of {:?}",
        set.get("baggage")
    );

    let mut none = headers;
    rewrite(&mut none, |_| true, None);
    assert!(none.get("baggage").is_none());
}
