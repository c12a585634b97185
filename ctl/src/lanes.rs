//! Lanes through the API server: `lanemeshctl lanes` lists them, `lanemeshctl lane
//! enable|disable` switches one. The pilot sees a change like any `kubectl patch` and streams
//! it to the sidecars.

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use lanemesh_api::crd::{Lane, LaneGroup};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no cluster configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("building the API client: {0}")]
    Client(kube::Error),
    #[error("lane {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("the API server refused or could not be reached: {0}")]
    Api(kube::Error),
}

/// A client from `kubeconfig` (like `kubectl --kubeconfig`), else as kubectl finds one.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ClusterError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => Config::infer().await?,
    };
    Client::try_from(config).map_err(ClusterError::Client)
}

/// The LaneGroups and Lanes of `namespace`, or of every namespace.
pub async fn list(
    client: Client,
    namespace: Option<&str>,
) -> Result<(Vec<LaneGroup>, Vec<Lane>), ClusterError> {
    let (groups, lanes): (Api<LaneGroup>, Api<Lane>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let params = ListParams::default();
    let groups = groups.list(&params).await.map_err(ClusterError::Api)?;
    let lanes = lanes.list(&params).await.map_err(ClusterError::Api)?;
    Ok((groups.items, lanes.items))
}

/// Sets `spec.enabled` of Lane `namespace/name`; returns the lane's group.
pub async fn set_enabled(
    client: Client,
    namespace: &str,
    name: &str,
    enabled: bool,
) -> Result<String, ClusterError> {
    let lanes: Api<Lane> = Api::namespaced(client, namespace);
    let patch = serde_json::json!({ "spec": { "enabled": enabled } });
    match lanes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(lane) => Ok(lane.spec.group),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(ClusterError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Err(e) => Err(ClusterError::Api(e)),
    }
}
