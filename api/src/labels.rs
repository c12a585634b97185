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
    fn empty_tag_is_base() {
        assert_eq!(
            lane_tag(&labels(&[("alicloud.service.tag", "gray")])),
            Some("gray")
        );
        assert_eq!(lane_tag(&labels(&[("alicloud.service.tag", "")])), None);
        assert_eq!(lane_tag(&labels(&[])), None);
    }
}
