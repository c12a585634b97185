//! A simulated sidecar: one delta discovery stream that subscribes to every
//! type with a pod's node identity, ACKs every response by echoing its nonce
//! and reports when it is synced and which lane marker it holds.
//!
//! It does what the real discovery client does on the wire and nothing else
//! (no snapshot building), so thousands fit in one process.

use std::time::Instant;

use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use lanemesh_api::proto::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use lanemesh_api::resource::{ALL_TYPE_URLS, DiscoveryResource};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::fixture::PodRef;

const LANE_GROUP: &str = <proto::LaneGroup as DiscoveryResource>::TYPE_URL;

/// What a stream tells the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The first response of every type has been ACKed.
    Synced,
    /// A LaneGroup response was ACKed; the gray lane now matches `marker`.
    Marker(String),
    /// The stream failed or ended.
    Failed(String),
}

/// One report, stamped when it happened (after the ACK was queued).
#[derive(Debug, Clone)]
pub struct Event {
    pub stream: usize,
    pub at: Instant,
    pub report: Report,
}

/// Runs stream `id` for `pod` over `channel` until the server ends it or
/// the receiver of `events` is gone.
pub async fn run(id: usize, pod: PodRef, channel: Channel, events: mpsc::UnboundedSender<Event>) {
    let send = |report: Report| {
        events.send(Event {
            stream: id,
            at: Instant::now(),
            report,
        })
    };
    if let Err(e) = stream(&pod, channel, &send).await {
        let _ = send(Report::Failed(format!(
            "{}/{}: {e}",
            pod.namespace, pod.name
        )));
    }
}

type Sent<'a> = dyn Fn(Report) -> Result<(), mpsc::error::SendError<Event>> + Sync + 'a;

async fn stream(pod: &PodRef, channel: Channel, send: &Sent<'_>) -> Result<(), String> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    // The server reads the first request before it answers the call, so the
    // subscriptions are queued before the call is made.
    let (tx, rx) = mpsc::channel(ALL_TYPE_URLS.len() + 4);
    for (i, type_url) in ALL_TYPE_URLS.iter().enumerate() {
        let node = (i == 0).then(|| Node {
            pod_name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            app: pod.app.clone(),
            lane_tag: pod.lane_tag.clone(),
            ip: pod.ip.clone(),
            proxy_version: "scale-bench".into(),
            ..Default::default()
        });
        tx.send(DeltaDiscoveryRequest {
            node,
            type_url: (*type_url).into(),
            ..Default::default()
        })
        .await
        .map_err(|_| "request queue closed".to_owned())?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut seen = [false; ALL_TYPE_URLS.len()];
    let mut synced = false;
    loop {
        let response: DeltaDiscoveryResponse = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("the server ended the stream".into()),
            Err(status) => return Err(status.to_string()),
        };
        let marker = (response.type_url == LANE_GROUP).then(|| marker_of(&response));
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .map_err(|_| "request queue closed".to_owned())?;
        if let Some(at) = ALL_TYPE_URLS.iter().position(|t| *t == response.type_url) {
            seen[at] = true;
        }
        if let Some(Some(marker)) = marker
            && send(Report::Marker(marker)).is_err()
        {
            return Ok(());
        }
        if !synced && seen.iter().all(|s| *s) {
            synced = true;
            if send(Report::Synced).is_err() {
                return Ok(());
            }
        }
    }
}

/// The value the first condition of the first lane matches on, in the first
/// LaneGroup of the response that decodes.
fn marker_of(response: &DeltaDiscoveryResponse) -> Option<String> {
    response
        .resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .filter_map(|any| proto::LaneGroup::from_any(any).ok())
        .find_map(|g| {
            let lane = g.lanes.first()?;
            let condition = lane.r#match.as_ref()?.conditions.first()?;
            Some(condition.value.clone())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_marker_is_read_from_the_lane_condition() {
        let group = proto::LaneGroup {
            name: "ns/flow".into(),
            lanes: vec![proto::Lane {
                name: "gray".into(),
                r#match: Some(proto::Match {
                    conditions: vec![proto::Condition {
                        value: "round-3".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = DeltaDiscoveryResponse {
            type_url: LANE_GROUP.into(),
            resources: vec![proto::Resource {
                name: group.name.clone(),
                version: "1".into(),
                resource: Some(group.to_any()),
            }],
            ..Default::default()
        };
        assert_eq!(marker_of(&response).as_deref(), Some("round-3"));
        let removed_only = DeltaDiscoveryResponse {
            type_url: LANE_GROUP.into(),
            removed_resources: vec!["ns/flow".into()],
            ..Default::default()
        };
        assert_eq!(marker_of(&removed_only), None);
    }
}
