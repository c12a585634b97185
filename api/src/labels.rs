//! The MSE onboarding labels (DESIGN §2) and what they say about a pod.

use std::collections::BTreeMap;

/// `"on"` = the pod is governed: injected and watched.
pub const AUTO_ENABLE: &str = "msePilotAutoEnable";
/// The pod's lane tag; absent = base.
pub const SERVICE_TAG: &str = "alicloud.service.tag";
/// The app name policies refer to.
pub const APP_NAME: &str = "msePilotCreateAppName";
/// App-name fallbacks, in order.
pub const APP_NAME_FALLBACKS: [&str; 2] = ["app.kubernetes.io/name", "app"];
/// The label selector for governed pods.
pub const GOVERNED_SELECTOR: &str = "msePilotAutoEnable=on";

/// Whether the pod is governed. Only the exact value `on` counts, as in MSE.
pub fn is_governed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(AUTO_ENABLE).is_some_and(|v| v == "on")
}

/// The app name: `msePilotCreateAppName`, else `app.kubernetes.io/name`,
/// else `app`; empty values are skipped.
pub fn app_name(labels: &BTreeMap<String, String>) -> Option<&str> {
    std::iter::once(APP_NAME)
        .chain(APP_NAME_FALLBACKS)
        .filter_map(|key| labels.get(key))
        .map(String::as_str)
        .find(|v| !v.is_empty())
}

/// The lane tag; `None` (and an empty value) = base.
pub fn lane_tag(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(SERVICE_TAG)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A valid Kubernetes label value that is not empty (what a lane tag must be): at most 63
/// characters, alphanumerics, `-`, `_` and `.`, alphanumeric at both ends. The rule of
/// `crd::common::LABEL_VALUE_PATTERN`, without a regex.
pub fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn governed_only_when_exactly_on() {
        assert!(is_governed(&labels(&[("msePilotAutoEnable", "on")])));
        assert!(!is_governed(&labels(&[("msePilotAutoEnable", "off")])));
        assert!(!is_governed(&labels(&[("msePilotAutoEnable", "ON")])));
        assert!(!is_governed(&labels(&[])));
    }

    #[test]
    fn app_name_falls_back_in_order() {
        let all = labels(&[
            ("msePilotCreateAppName", "a"),
            ("app.kubernetes.io/name", "b"),
            ("app", "c"),
        ]);
        assert_eq!(app_name(&all), Some("a"));
        assert_eq!(
            app_name(&labels(&[("app.kubernetes.io/name", "b"), ("app", "c")])),
            Some("b")
        );
        assert_eq!(
            app_name(&labels(&[("msePilotCreateAppName", ""), ("app", "c")])),
            Some("c")
        );
        assert_eq!(app_name(&labels(&[])), None);
    }

    #[test]
    fn label_values() {
        for ok in ["gray", "v1.2", "a_b-c", "x"] {
            assert!(is_valid_value(ok), "{ok}");
        }
        for bad in ["", "-gray", "gray.", "gr ay", "grä", &"a".repeat(64)] {
            assert!(!is_valid_value(bad), "{bad}");
        }
    }

    #[test]
    fn empty_tag_is_base() {
        assert_eq!(
            lane_tag(&labels(&[("alicloud.service.tag", "gray")])),
            Some("gray")
        );
        assert_eq!(lane_tag(&labels(&[("alicloud.service.tag", "")])), None);
        assert_eq!(lane_tag(&labels(&[])), None);
    }
}
