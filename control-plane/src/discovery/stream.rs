//! One sidecar's stream: what it subscribed to, what it holds, and which
//! responses it has yet to answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use lanemesh_api::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource};
use lanemesh_api::resource::{ALL_TYPE_URLS, GATEWAY_TYPE_URL};
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
    id: u64,
    node: Node,
    key: NodeKey,
    shared: Discovery,
    out: Out,
    types: BTreeMap<String, TypeState>,
    next_nonce: u64,
    cached: Option<Arc<NodeSnapshot>>,
}

/// Counts the stream as connected and, when it ends, forgets its NACKs:
/// they describe what this client refused, and nobody vouches for them
/// once it is gone.
struct Connected {
    id: u64,
    shared: Discovery,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.shared.metrics.connected.dec();
        self.shared.lock_streams().remove(&self.id);
        if self.shared.lock_nacks().remove(&self.id).is_some() {
            self.shared.nacks_changed.send_modify(|n| *n += 1);
        }
    }
}

/// `Service` of `type.googleapis.com/lanemesh.v1.Service`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn truncated(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

impl StreamTask {
    pub(super) fn new(id: u64, node: Node, shared: Discovery, out: Out) -> Self {
        Self {
            id,
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

    /// Publishes what this stream's sidecar holds (after every request and push; a few
    /// counts per type under a lock held for no await).
    fn publish(&self, connected: &str) {
        let nacked: BTreeMap<String, usize> = {
            let all = self.shared.lock_nacks();
            let mut by_type = BTreeMap::new();
            for (type_url, _) in all.get(&self.id).into_iter().flat_map(|n| n.keys()) {
                *by_type.entry(short_type(type_url).to_owned()).or_default() += 1;
            }
            by_type
        };
        let types = self
            .types
            .iter()
            .map(|(type_url, state)| {
                let name = short_type(type_url);
                let view = super::TypeView {
                    resources: state.known.len(),
                    pending: state.pending.len() + usize::from(state.needs_response),
                    nacked: nacked.get(name).copied().unwrap_or(0),
                };
                (name.to_owned(), view)
            })
            .collect();
        let app = self
            .cached
            .as_ref()
            .map_or_else(|| self.node.app.clone(), |s| s.app.clone());
        self.shared.lock_streams().insert(
            self.id,
            super::StreamView {
                node: self.node_name(),
                app,
                gateway: self.node.gateway,
                connected: connected.to_owned(),
                types,
            },
        );
    }

    pub(super) async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
    ) {
        self.shared.metrics.connected.inc();
        let _connected = Connected {
            id: self.id,
            shared: self.shared.clone(),
        };
        let mut worlds = self.shared.worlds.clone();
        let shutdown = self.shared.shutdown.clone();
        let connected = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut next = Some(first);
        loop {
            if let Some(request) = next.take()
                && let Err(status) = self.handle(request)
            {
                let wait = self.shared.limits.send_timeout;
                let _ = tokio::time::timeout(wait, self.out.send(Err(status))).await;
                return;
            }
            let world = Arc::clone(&worlds.borrow_and_update());
            if world.ready && self.push(&world).await.is_err() {
                break;
            }
            self.publish(&connected);
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
        if !ALL_TYPE_URLS.contains(&type_url.as_str()) && type_url != GATEWAY_TYPE_URL {
            return Err(Status::invalid_argument(format!(
                "unknown type_url {type_url:?}; known: {}, {GATEWAY_TYPE_URL}",
                ALL_TYPE_URLS.join(", ")
            )));
        }
        if request.response_nonce.is_empty() {
            let state = self.types.entry(type_url).or_default();
            state.known = request.initial_resource_versions.into_iter().collect();
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
        // Only what this stream was sent in the answered response counts, at
        // the version sent: a client cannot blame resources (or versions) it
        // never received. Without per-resource errors the whole response
        // was refused.
        let limits = &self.shared.limits;
        let mut ignored = 0_u64;
        let refused: Vec<(String, String, String)> = if error.resource_errors.is_empty() {
            let message = truncated(error.message, limits.max_nack_message);
            sent.into_iter()
                .map(|(name, version)| (name, version, message.clone()))
                .collect()
        } else {
            let mut refused = Vec::new();
            for e in error.resource_errors {
                let version = sent.iter().find(|(n, _)| *n == e.name).map(|(_, v)| v);
                match version {
                    Some(v) if e.version.is_empty() || e.version == *v => refused.push((
                        e.name,
                        v.clone(),
                        truncated(e.message, limits.max_nack_message),
                    )),
                    _ => ignored += 1,
                }
            }
            refused
        };
        let mut recorded = false;
        let mut all = self.shared.lock_nacks();
        let nacks = all.entry(self.id).or_default();
        for (name, version, message) in refused {
            let key = (type_url.clone(), name);
            if !nacks.contains_key(&key) && nacks.len() >= limits.max_nacks_per_stream {
                ignored += 1;
                continue;
            }
            tracing::warn!(%node, %type_url, resource = %key.1, %version, %message, "NACK");
            nacks.insert(
                key,
                Nack {
                    version,
                    message,
                    node: node.clone(),
                },
            );
            recorded = true;
        }
        if nacks.is_empty() {
            all.remove(&self.id);
        }
        drop(all);
        if ignored > 0 {
            tracing::debug!(%node, %type_url, ignored, "NACKs of resources not sent on this stream (or over its bound) ignored");
            self.shared
                .metrics
                .nacks_ignored
                .get_or_create(&type_label(&type_url))
                .inc_by(ignored);
        }
        if recorded {
            self.shared.nacks_changed.send_modify(|n| *n += 1);
        }
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
            // A stuck sidecar parks only this task, and only for the send
            // timeout: then the stream ends, releasing the task and the
            // snapshot it holds. Shutdown ends it at once.
            let shutdown = self.shared.shutdown.clone();
            let wait = self.shared.limits.send_timeout;
            tokio::select! {
                sent = tokio::time::timeout(wait, self.out.send(Ok(response))) => match sent {
                    Ok(sent) => sent.map_err(|_| Gone)?,
                    Err(_) => {
                        tracing::warn!(node = %self.node_name(), timeout = ?wait, "sidecar does not read its responses; closing the stream");
                        return Err(Gone);
                    }
                },
                () = crate::stopped(shutdown.clone()) => return Err(Gone),
            }
        }
        Ok(())
    }
}
