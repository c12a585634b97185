//! The `kubernetes` source: one kube-rs watcher per kind, with kube's
//! default exponential backoff on errors.
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
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use lanemesh_api::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy,
};
use lanemesh_api::labels::GOVERNED_SELECTOR;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{Kind, Object, SourceEvent};

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
        let c = &self.client;
        let all = watcher::Config::default();
        let mut watches = vec![
            tokio::spawn(watch(
                Api::<LaneGroup>::all(c.clone()),
                all.clone(),
                |o| Object::LaneGroup(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<Lane>::all(c.clone()),
                all.clone(),
                |o| Object::Lane(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<RateLimitPolicy>::all(c.clone()),
                all.clone(),
                |o| Object::RateLimitPolicy(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<CircuitBreakerPolicy>::all(c.clone()),
                all.clone(),
                |o| Object::CircuitBreakerPolicy(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<OverloadProtectionPolicy>::all(c.clone()),
                all.clone(),
                |o| Object::OverloadProtectionPolicy(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<Service>::all(c.clone()),
                all.clone(),
                |o| Object::Service(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<EndpointSlice>::all(c.clone()),
                all.clone(),
                |o| Object::EndpointSlice(Box::new(o)),
                tx.clone(),
                listed_tx.clone(),
            )),
            tokio::spawn(watch(
                Api::<Pod>::all(c.clone()),
                all.labels(GOVERNED_SELECTOR),
                |o| Object::Pod(Box::new(o)),
                tx.clone(),
                listed_tx,
            )),
        ];
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

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<SourceEvent>,
    listed: mpsc::Sender<Kind>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind_name = K::kind(&K::DynamicType::default()).into_owned();
    let Some(kind) = Kind::parse(&kind_name) else {
        tracing::error!(kind = %kind_name, "kubernetes source: unexpected kind");
        return;
    };
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer = Vec::new();
    let mut first = true;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            () = tx.closed() => return,
        };
        let send = match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(kind = %kind_name, error = %e, "kubernetes source: watch failed; retrying with backoff");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                buffer.clear();
                continue;
            }
            Some(Ok(watcher::Event::InitApply(o))) => {
                buffer.push(wrap(o));
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                SourceEvent::ReplaceKind(kind, std::mem::take(&mut buffer))
            }
            Some(Ok(watcher::Event::Apply(o))) => SourceEvent::Apply(wrap(o)),
            Some(Ok(watcher::Event::Delete(o))) => SourceEvent::Delete(wrap(o).key()),
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
