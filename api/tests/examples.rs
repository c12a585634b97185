//! Every example in `examples/` parses and converts with nothing refused.

// Test support: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use std::path::{Path, PathBuf};

use lanemesh_api::convert;
use lanemesh_api::manifest::Manifest;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_converts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.sort();
    assert!(files.len() >= 4, "examples missing in {}", dir.display());
    let mut m = Manifest::default();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        m.add_yaml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let converted = convert::manifest(&m, &|_, _| 1);
    let refused: Vec<_> = converted.rejected().collect();
    assert!(refused.is_empty(), "{refused:?}");
    let (lanes, inbound, outbound) = (
        &converted.lane_groups,
        &converted.inbound,
        &converted.outbound,
    );
    // The three Services of the canary apps convert too.
    assert_eq!(converted.services.resources.len(), 3);

    // The canary scenario: header canary: gray enters the gray lane of a
    // group spanning a -> b -> c.
    let group = &lanes.resources[0];
    assert_eq!(
        group.apps,
        ["spring-cloud-a", "spring-cloud-b", "spring-cloud-c"]
    );
    let condition = &group.lanes[0].r#match.as_ref().unwrap().conditions[0];
    assert_eq!(
        (
            group.lanes[0].tag.as_str(),
            condition.name.as_str(),
            condition.value.as_str()
        ),
        ("gray", "canary", "gray")
    );
    let gray_pods = m.others.iter().filter(|o| {
        o.pointer("/spec/template/metadata/labels/alicloud.service.tag")
            .is_some_and(|t| t == "gray")
    });
    assert_eq!(gray_pods.count(), 2, "gray versions of a and c");

    // /greet1a at 1 QPS with a custom 429 message.
    let rule = &inbound
        .resources
        .iter()
        .find(|p| p.app == "spring-cloud-a")
        .unwrap()
        .rules[0];
    assert_eq!(rule.qps.as_ref().unwrap().threshold, 1.0);
    let fallback = rule.fallback.as_ref().unwrap();
    assert_eq!(fallback.status, 429);
    assert!(fallback.body.contains("limited"));

    // A breaker on slow calls to c.
    let app = |name: &str| outbound.resources.iter().find(|p| p.app == name).unwrap();
    let breaker = app("spring-cloud-c");
    assert_eq!(
        breaker.breakers[0].strategy,
        lanemesh_api::proto::BreakerStrategy::SlowRequestRatio as i32
    );

    // The seed's resilience policy towards b: timeout 1s, one retry, breaker at 50 % errors.
    let b = app("spring-cloud-b");
    let default = b.routes.last().unwrap();
    assert_eq!(default.timeout.unwrap().seconds, 1);
    assert_eq!(default.retries.as_ref().unwrap().attempts, 1);
    assert_eq!(
        b.breakers[0].strategy,
        lanemesh_api::proto::BreakerStrategy::ErrorRatio as i32
    );
    assert_eq!(b.breakers[0].threshold, 0.5);
}
