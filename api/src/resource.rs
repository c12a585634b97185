//! Type URLs of the discovery resources and their packing into `Any`.

use prost::Message;

use crate::proto;

/// A message that travels as a discovery resource.
pub trait DiscoveryResource: Message + Default + Sized {
    /// `type.googleapis.com/lanemesh.v1.<Message>`.
    const TYPE_URL: &'static str;

    /// The resource's unique name within its type.
    fn resource_name(&self) -> &str;

    fn to_any(&self) -> prost_types::Any {
        prost_types::Any {
            type_url: Self::TYPE_URL.to_owned(),
            value: self.encode_to_vec(),
        }
    }

    fn from_any(any: &prost_types::Any) -> Result<Self, DecodeError> {
        if any.type_url != Self::TYPE_URL {
            return Err(DecodeError::WrongType {
                expected: Self::TYPE_URL,
                got: any.type_url.clone(),
            });
        }
        Self::decode(any.value.as_slice()).map_err(DecodeError::Malformed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("expected a resource of type {expected}, got {got:?}")]
    WrongType { expected: &'static str, got: String },
    #[error("malformed resource: {0}")]
    Malformed(prost::DecodeError),
}

macro_rules! discovery_resource {
    ($ty:ident) => {
        impl DiscoveryResource for proto::$ty {
            const TYPE_URL: &'static str =
                concat!("type.googleapis.com/lanemesh.v1.", stringify!($ty));

            fn resource_name(&self) -> &str {
                &self.name
            }
        }
    };
}

discovery_resource!(Service);
discovery_resource!(LaneGroup);
discovery_resource!(InboundPolicy);
discovery_resource!(OutboundPolicy);
discovery_resource!(Workload);
discovery_resource!(GatewayRoute);

/// Every type a sidecar subscribes to; it is ready once it holds a first
/// snapshot of each.
pub const ALL_TYPE_URLS: [&str; 5] = [
    <proto::Service as DiscoveryResource>::TYPE_URL,
    <proto::LaneGroup as DiscoveryResource>::TYPE_URL,
    <proto::InboundPolicy as DiscoveryResource>::TYPE_URL,
    <proto::OutboundPolicy as DiscoveryResource>::TYPE_URL,
    <proto::Workload as DiscoveryResource>::TYPE_URL,
];

/// What a gateway subscribes to besides [`ALL_TYPE_URLS`].
pub const GATEWAY_TYPE_URL: &str = <proto::GatewayRoute as DiscoveryResource>::TYPE_URL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_round_trip_keeps_the_resource() {
        let policy = proto::InboundPolicy {
            name: "default/a".into(),
            app: "a".into(),
            ..Default::default()
        };
        let any = policy.to_any();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/lanemesh.v1.InboundPolicy"
        );
        assert_eq!(proto::InboundPolicy::from_any(&any).unwrap(), policy);
    }

    #[test]
    fn wrong_type_is_refused_by_name() {
        let any = proto::Service::default().to_any();
        let err = proto::LaneGroup::from_any(&any).unwrap_err();
        assert!(err.to_string().contains("lanemesh.v1.Service"), "{err}");
    }
}
