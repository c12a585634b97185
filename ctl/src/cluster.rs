//! What the API server says about a lanemesh installation, for `lanemeshctl status` without
//! `--pilot`: the pilot replicas and which one holds the status Lease (the leader), how many
//! governed pods there are, and every lanemesh object the control plane refused (its
//! `Accepted=False` condition, NACKs included).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use crate::lanes::ClusterError;
use crate::view::{ClusterStatus, PilotReplica, Refused};

/// The lanemesh kinds with an `Accepted` condition, by plural.
const KINDS: [(&str, &str); 6] = [
    ("LaneGroup", "lanegroups"),
    ("Lane", "lanes"),
    ("RateLimitPolicy", "ratelimitpolicies"),
    ("CircuitBreakerPolicy", "circuitbreakerpolicies"),
    ("OverloadProtectionPolicy", "overloadprotectionpolicies"),
    ("TrafficPolicy", "trafficpolicies"),
];

/// The pilot pods of `namespace` (label `app.kubernetes.io/name=lanemesh-pilot`), the holder of
/// Lease `lease` there, the governed pods and the refused objects of every namespace.
pub async fn status(
    client: Client,
    namespace: &str,
    lease: &str,
) -> Result<ClusterStatus, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pilots = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=lanemesh-pilot"))
        .await
        .map_err(ClusterError::Api)?;
    let holder = match Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(lease)
        .await
        .map_err(ClusterError::Api)?
    {
        Some(lease) => lease.spec.and_then(|s| s.holder_identity),
        None => None,
    };
    let mut replicas: Vec<PilotReplica> = pilots
        .items
        .iter()
        .map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            // The pilot's Lease identity is its host name (the pod's name) and its process id.
            let leader = holder
                .as_deref()
                .is_some_and(|h| h == name || h.starts_with(&format!("{name}-")));
            PilotReplica {
                ready,
                ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
                node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                leader,
                name,
            }
        })
        .collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));
    let governed = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(lanemesh_api::labels::GOVERNED_SELECTOR))
        .await
        .map_err(ClusterError::Api)?;
    let governed_ready = governed
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .count();
    let mut refused = Vec::new();
    for (kind, plural) in KINDS {
        let resource = ApiResource {
            group: "lanemesh.io".to_owned(),
            version: "v1alpha1".to_owned(),
            api_version: "lanemesh.io/v1alpha1".to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        };
        let objects = Api::<DynamicObject>::all_with(client.clone(), &resource)
            .list(&ListParams::default())
            .await
            .map_err(ClusterError::Api)?;
        for object in objects.items {
            let conditions = object.data["status"]["conditions"].as_array().cloned();
            let Some(accepted) = conditions
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Accepted")
            else {
                continue;
            };
            if accepted["status"] != "False" {
                continue;
            }
            refused.push(Refused {
                object: format!(
                    "{kind} {}/{}",
                    object.metadata.namespace.unwrap_or_default(),
                    object.metadata.name.unwrap_or_default()
                ),
                message: format!(
                    "{}: {}",
                    accepted["reason"].as_str().unwrap_or_default(),
                    accepted["message"].as_str().unwrap_or_default()
                ),
            });
        }
    }
    Ok(ClusterStatus {
        namespace: namespace.to_owned(),
        pilots: replicas,
        leader: holder,
        governed_pods: governed.items.len(),
        governed_ready,
        refused,
    })
}
