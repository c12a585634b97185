//! The `kubernetes` source: one kube-rs watcher per kind, with kube's
//! default exponential backoff on errors. Objects are watched untyped and
//! decoded one by one, so an object the Rust types cannot hold (stored
//! before the schema bounded it, say) is skipped instead of stalling its kind.
//!
//! Each (re)list is sent as `ReplaceKind` (so objects deleted while the
//! watch was down disappear), later changes as `Apply`/`Delete`; `Synced`
//! follows once every kind has been listed. Pods are watched with the
//! onboarding selector `msePilotAutoEnable=on`: only governed pods matter
//! (lane tags, app names, ready replicas), endpoints come from EndpointSlices.

use std::collections::HashSet;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::core::{ApiResource, DynamicObject, TypeMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use lanemesh_api::convert::DEFAULT_NAMESPACE;
use lanemesh_api::crd::gateway_api::{Gateway, HTTPRoute};
use lanemesh_api::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy, TrafficPolicy,
};
use lanemesh_api::labels::GOVERNED_SELECTOR;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{Kind, Object, ObjectKey, SourceEvent};

/// Watches the whole cluster (all namespaces).
#[derive(Clone)]
pub struct KubernetesSource {
    client: Client,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource").finish_non_exhaustive()
    }
}

impl KubernetesSource {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Runs until the receiver is dropped. Watch errors are logged and
    /// retried with backoff; they never end the source.
    pub async fn run(self, tx: mpsc::Sender<SourceEvent>) {
        let (listed_tx, mut listed) = mpsc::channel::<Kind>(Kind::ALL.len());
        let all = watcher::Config::default();
        let mut watches = Watches {
            client: &self.client,
            tx: &tx,
            listed: &listed_tx,
            handles: Vec::with_capacity(Kind::ALL.len()),
        };
        watches.add::<LaneGroup>(all.clone(), |o| Object::LaneGroup(Box::new(o)));
        watches.add::<Lane>(all.clone(), |o| Object::Lane(Box::new(o)));
        watches.add::<RateLimitPolicy>(all.clone(), |o| Object::RateLimitPolicy(Box::new(o)));
        watches.add::<CircuitBreakerPolicy>(all.clone(), |o| {
            Object::CircuitBreakerPolicy(Box::new(o))
        });
        watches.add::<OverloadProtectionPolicy>(all.clone(), |o| {
            Object::OverloadProtectionPolicy(Box::new(o))
        });
        watches.add::<TrafficPolicy>(all.clone(), |o| Object::TrafficPolicy(Box::new(o)));
        watches.add::<Service>(all.clone(), |o| Object::Service(Box::new(o)));
        watches.add::<EndpointSlice>(all.clone(), |o| Object::EndpointSlice(Box::new(o)));
        watches.add::<HTTPRoute>(all.clone(), |o| Object::HttpRoute(Box::new(o)));
        watches.add::<Gateway>(all.clone(), |o| Object::Gateway(Box::new(o)));
        watches.add::<Ingress>(all.clone(), |o| Object::Ingress(Box::new(o)));
        watches.add::<Pod>(all.labels(GOVERNED_SELECTOR), |o| Object::Pod(Box::new(o)));
        let mut watches = watches.handles;
        drop(listed_tx);
        let mut seen = HashSet::new();
        while seen.len() < Kind::ALL.len() {
            let Some(kind) = listed.recv().await else {
                break;
            };
            seen.insert(kind);
        }
        if seen.len() == Kind::ALL.len() {
            tracing::info!("kubernetes source: every kind listed");
            if tx.send(SourceEvent::Synced).await.is_err() {
                return;
            }
        }
        tx.closed().await;
        for w in &mut watches {
            w.abort();
        }
    }
}

/// The watcher tasks of one source, one per kind.
struct Watches<'a> {
    client: &'a Client,
    tx: &'a mpsc::Sender<SourceEvent>,
    listed: &'a mpsc::Sender<Kind>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Watches<'_> {
    /// Watches kind `K` with `config`, wrapping each object with `wrap`.
    fn add<K>(&mut self, config: watcher::Config, wrap: fn(K) -> Object)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        self.handles.push(tokio::spawn(watch::<K>(
            self.client.clone(),
            config,
            wrap,
            self.tx.clone(),
            self.listed.clone(),
        )));
    }
}

/// Why one object of a watched kind could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {namespace}/{name} does not decode: {source}")]
pub struct Undecodable {
    kind: String,
    namespace: String,
    name: String,
    source: kube::core::dynamic::ParseDynamicObjectError,
}

/// Decodes one object of the watched kind. Watching `DynamicObject`s and
/// decoding each here (instead of a typed watcher) keeps one bad object
/// from failing the whole list: kube's typed watcher would fail the list,
/// retry with backoff and never deliver that kind again.
pub fn decode<K>(mut object: DynamicObject) -> Result<K, Undecodable>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    // List items of core kinds carry no apiVersion/kind.
    object.types = Some(TypeMeta {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
    });
    let kind = K::kind(&()).into_owned();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    object.try_parse::<K>().map_err(|source| Undecodable {
        kind,
        namespace,
        name,
        source,
    })
}

/// The API server does not serve the kind (its CRD is not installed), or this replica may not
/// read it (an RBAC without the optional kinds). By code: for a path it does not serve the API
/// server answers a plain-text 404, which kube turns into a `Status` without the NotFound reason.
fn not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 404 || status.code == 403
    )
}

fn key_of(kind: Kind, object: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: (object.metadata.namespace.clone())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

async fn watch<K>(
    client: Client,
    config: watcher::Config,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<SourceEvent>,
    listed: mpsc::Sender<Kind>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind_name = K::kind(&()).into_owned();
    let Some(kind) = Kind::parse(&kind_name) else {
        tracing::error!(kind = %kind_name, "kubernetes source: unexpected kind");
        return;
    };
    let api = Api::<DynamicObject>::all_with(client, &ApiResource::erase::<K>(&()));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer = Vec::new();
    let mut first = true;
    // An undecodable object is skipped: on a (re)list it is left out, on a
    // change its previous version stays indexed. Its deletion still works.
    let usable = |o: DynamicObject| match decode::<K>(o) {
        Ok(o) => Some(wrap(o)),
        Err(e) => {
            tracing::warn!(error = %e, "kubernetes source: object skipped");
            None
        }
    };
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            () = tx.closed() => return,
        };
        let send = match event {
            None => return,
            Some(Err(e)) if kind.is_optional() && not_served(&e) => {
                // Gateway API CRDs are not installed: nothing of the kind exists. The watcher
                // keeps retrying with backoff, so routes show up once the CRDs are installed.
                if !first {
                    tracing::debug!(kind = %kind_name, error = %e, "kubernetes source: kind still not served");
                    continue;
                }
                tracing::info!(kind = %kind_name, "kubernetes source: kind not served by the API server; counted as empty until it is");
                SourceEvent::ReplaceKind(kind, Vec::new())
            }
            Some(Err(e)) => {
                tracing::warn!(kind = %kind_name, error = %e, "kubernetes source: watch failed; retrying with backoff");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                buffer.clear();
                continue;
            }
            Some(Ok(watcher::Event::InitApply(o))) => {
                buffer.extend(usable(o));
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                SourceEvent::ReplaceKind(kind, std::mem::take(&mut buffer))
            }
            Some(Ok(watcher::Event::Apply(o))) => match usable(o) {
                Some(o) => SourceEvent::Apply(o),
                None => continue,
            },
            Some(Ok(watcher::Event::Delete(o))) => SourceEvent::Delete(key_of(kind, &o)),
        };
        let was_list = matches!(send, SourceEvent::ReplaceKind(..));
        if tx.send(send).await.is_err() {
            return;
        }
        if was_list && first {
            first = false;
            let _ = listed.send(kind).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_object_outside_the_rust_types_is_an_error_not_a_failed_list() {
        let bad = object(serde_json::json!({
            "apiVersion": "lanemesh.io/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": "big", "namespace": "shop"},
            "spec": {"app": "a", "rules": [{"name": "r", "concurrency": {"max": 4_294_967_296_u64}}]},
        }));
        let err = decode::<RateLimitPolicy>(bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("RateLimitPolicy shop/big does not decode"),
            "{err}"
        );

        // A core list item, without apiVersion and kind, decodes.
        let pod = object(serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}}));
        let pod: Pod = decode(pod).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn a_kind_the_api_server_does_not_serve_is_recognised_by_its_code() {
        // What kube makes of the API server's plain-text "404 page not found".
        let status = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(
                kube::core::Status::failure("404 page not found", "Failed to parse error data")
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert!(not_served(&status(404)));
        assert!(not_served(&status(403)));
        assert!(!not_served(&status(500)));
    }

    #[test]
    fn a_deleted_object_is_keyed_without_decoding_it() {
        let bad = object(serde_json::json!({
            "apiVersion": "lanemesh.io/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": "big"}, "spec": "garbage",
        }));
        let key = key_of(Kind::RateLimitPolicy, &bad);
        assert_eq!(
            (key.namespace.as_str(), key.name.as_str()),
            ("default", "big")
        );
    }
}
