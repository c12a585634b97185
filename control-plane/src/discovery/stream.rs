//! One sidecar's stream: what it subscribed to, what it holds, and which
//! responses it has yet to answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use lanemesh_api::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource};
use lanemesh_api::resource::ALL_TYPE_URLS;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{Discovery, Nack};
use crate::metrics::type_label;
use crate::snapshot::{self, NodeKey, NodeSnapshot, World};

/// Unanswered responses remembered per type; older ones count as superseded.
const MAX_PENDING: usize = 16;

type Out = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Debug, Default)]
struct TypeState {
    /// name -> the version the sidecar holds or was last sent (ACKed,
    /// pending or NACKed alike): a NACKed version stays here, so it is not
    /// sent again until the resource changes.
    known: HashMap<String, String>,
    /// A (re)subscription is answered even when nothing differs, so the
    /// sidecar knows its state is complete.
    needs_response: bool,
    /// nonce -> (name, version) sent in that response.
    pending: VecDeque<(String, Vec<(String, String)>)>,
}

/// The sidecar went away.
struct Gone;

pub(super) struct StreamTask {
    node: Node,
    key: NodeKey,
    shared: Discovery,
    out: Out,
    types: BTreeMap<String, TypeState>,
    next_nonce: u64,
    cached: Option<Arc<NodeSnapshot>>,
}

struct Connected(Arc<crate::metrics::Metrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.dec();
    }
}

impl StreamTask {
    pub(super) fn new(node: Node, shared: Discovery, out: Out) -> Self {
        Self {
            key: NodeKey::from(&node),
            node,
            shared,
            out,
            types: BTreeMap::new(),
            next_nonce: 0,
            cached: None,
        }
    }

    fn node_name(&self) -> String {
        format!("{}/{}", self.node.namespace, self.node.pod_name)
    }

    pub(super) async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
    ) {
        self.shared.metrics.connected.inc();
        let _connected = Connected(Arc::clone(&self.shared.metrics));
        let mut worlds = self.shared.worlds.clone();
        let shutdown = self.shared.shutdown.clone();
        let mut next = Some(first);
        loop {
            if let Some(request) = next.take()
                && let Err(status) = self.handle(request)
            {
                let _ = self.out.send(Err(status)).await;
                return;
            }
            let world = Arc::clone(&worlds.borrow_and_update());
            if world.ready && self.push(&world).await.is_err() {
                break;
            }
            tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(request)) => next = Some(request),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.node_name(), %status, "stream error");
                        break;
                    }
                },
                changed = worlds.changed() => if changed.is_err() { break },
                () = crate::stopped(shutdown.clone()) => break,
            }
        }
        tracing::info!(node = %self.node_name(), "sidecar disconnected");
    }

    fn handle(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        let type_url = request.type_url;
        if !ALL_TYPE_URLS.contains(&type_url.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown type_url {type_url:?}; known: {}",
                ALL_TYPE_URLS.join(", ")
            )));
        }
        if request.response_nonce.is_empty() {
            let state = self.types.entry(type_url).or_default();
            state.known = request.initial_resource_versions;
            state.needs_response = true;
            state.pending.clear();
            return Ok(());
        }
        let node = self.node_name();
        let Some(state) = self.types.get_mut(&type_url) else {
            tracing::warn!(%node, %type_url, "answer for a type never subscribed; ignored");
            return Ok(());
        };
        let sent = match state
            .pending
            .iter()
            .position(|(nonce, _)| *nonce == request.response_nonce)
        {
            Some(at) => {
                let sent = state.pending.get(at).map(|(_, s)| s.clone());
                state.pending.drain(..=at);
                sent.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let Some(error) = request.error_detail else {
            tracing::debug!(%node, %type_url, nonce = %request.response_nonce, "ACK");
            return Ok(());
        };
        self.shared
            .metrics
            .nacks
            .get_or_create(&type_label(&type_url))
            .inc();
        // Without per-resource errors the whole response was refused.
        let refused: Vec<(String, String, String)> = if error.resource_errors.is_empty() {
            sent.into_iter()
                .map(|(name, version)| (name, version, error.message.clone()))
                .collect()
        } else {
            error
                .resource_errors
                .into_iter()
                .map(|e| {
                    let version = if e.version.is_empty() {
                        sent.iter()
                            .find(|(n, _)| *n == e.name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    } else {
                        e.version
                    };
                    (e.name, version, e.message)
                })
                .collect()
        };
        let mut nacks = self
            .shared
            .nacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, version, message) in refused {
            tracing::warn!(%node, %type_url, resource = %name, %version, %message, "NACK");
            nacks.insert(
                (type_url.clone(), name),
                Nack {
                    version,
                    message,
                    node: node.clone(),
                },
            );
        }
        drop(nacks);
        self.shared.nacks_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Sends, per subscribed type, what differs from what the sidecar holds.
    async fn push(&mut self, world: &World) -> Result<(), Gone> {
        let snapshot = match &self.cached {
            Some(s) if s.generation == world.generation => Arc::clone(s),
            _ => {
                let s = Arc::new(snapshot::for_node(world, &self.key));
                self.cached = Some(Arc::clone(&s));
                s
            }
        };
        let mut responses = Vec::new();
        for (type_url, state) in &mut self.types {
            let Some(desired) = snapshot.of_type(type_url) else {
                continue;
            };
            let changed: Vec<&Arc<snapshot::Encoded>> = desired
                .values()
                .filter(|r| state.known.get(&r.name) != Some(&r.version))
                .collect();
            let mut removed: Vec<String> = state
                .known
                .keys()
                .filter(|name| !desired.contains_key(*name))
                .cloned()
                .collect();
            removed.sort();
            let initial = state.needs_response;
            if changed.is_empty() && removed.is_empty() && !initial {
                continue;
            }
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            for name in &removed {
                state.known.remove(name);
            }
            let mut sent = Vec::with_capacity(changed.len());
            let mut resources = Vec::with_capacity(changed.len());
            for r in changed {
                state.known.insert(r.name.clone(), r.version.clone());
                sent.push((r.name.clone(), r.version.clone()));
                resources.push(Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                });
            }
            state.needs_response = false;
            state.pending.push_back((nonce.clone(), sent));
            while state.pending.len() > MAX_PENDING {
                state.pending.pop_front();
            }
            responses.push((
                initial,
                DeltaDiscoveryResponse {
                    system_version_info: world.generation.to_string(),
                    type_url: type_url.clone(),
                    resources,
                    removed_resources: removed,
                    nonce,
                },
            ));
        }
        for (initial, response) in responses {
            tracing::debug!(
                node = %self.node_name(),
                type_url = %response.type_url,
                resources = response.resources.len(),
                removed = response.removed_resources.len(),
                nonce = %response.nonce,
                "push"
            );
            let metrics = &self.shared.metrics;
            metrics
                .pushes
                .get_or_create(&type_label(&response.type_url))
                .inc();
            if !initial {
                metrics
                    .push_latency
                    .observe(world.built_at.elapsed().as_secs_f64());
            }
            // A stuck sidecar parks only this task; shutdown still ends it.
            let shutdown = self.shared.shutdown.clone();
            tokio::select! {
                sent = self.out.send(Ok(response)) => sent.map_err(|_| Gone)?,
                () = crate::stopped(shutdown.clone()) => return Err(Gone),
            }
        }
        Ok(())
    }
}
