//! Who a sidecar serves: one type for the pod, its app and its lane, used by discovery (the
//! node a stream claims), the snapshot (which Services and policies are the pod's own) and the
//! router (the pod's lane for color-by-node and opaque TCP).

/// The pod a sidecar serves, as Kubernetes and the MSE labels name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name; empty outside Kubernetes (tests, local runs).
    pub pod_name: String,
    /// The app policies and lane groups refer to (label `msePilotCreateAppName`).
    pub app: String,
    /// The pod's lane tag (label `alicloud.service.tag`); `None` = base. Never `Some("")`: see
    /// [`PodIdentity::with_lane`].
    pub lane_tag: Option<String>,
    /// The pod IP as the downward API gives it; empty when unknown.
    pub ip: String,
    /// A gateway (`lanemesh-proxy gateway`), not a sidecar: it also receives the gateway routes.
    pub gateway: bool,
}

impl PodIdentity {
    /// A pod of `app` in `namespace`, base lane, name and IP unknown.
    pub fn app(namespace: impl Into<String>, app: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            app: app.into(),
            ..Self::default()
        }
    }

    /// The same pod in lane `tag`; an empty tag is base (flags and env vars give "" for none).
    #[must_use]
    pub fn with_lane(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        self.lane_tag = (!tag.is_empty()).then_some(tag);
        self
    }

    /// The lane tag, `None` for base.
    pub fn lane(&self) -> Option<&str> {
        self.lane_tag.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_tag_is_base() {
        let pod = PodIdentity::app("demo", "a").with_lane("");
        assert_eq!(pod.lane(), None);
        assert_eq!(pod.with_lane("gray").lane(), Some("gray"));
    }
}
