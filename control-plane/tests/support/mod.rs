//! Shared by the control plane's integration tests: a discovery client
//! that acts as a sidecar (the generated tonic client on a real socket).
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use lanemesh_api::proto::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, ErrorDetail, Node, ResourceError,
};
use lanemesh_api::resource::ALL_TYPE_URLS;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A loopback port that was free a moment ago (for binaries that bind their own listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// How long one expected message may take.
pub const WAIT: Duration = Duration::from_secs(5);

pub mod cluster;

pub struct Sidecar {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

pub type Versions = HashMap<String, BTreeMap<String, String>>;

impl Sidecar {
    pub async fn connect(
        addr: std::net::SocketAddr,
        pod: &str,
        namespace: &str,
        initial: &Versions,
    ) -> Self {
        Self::try_connect(addr, pod, namespace, "", initial)
            .await
            .unwrap()
    }

    /// Opens a stream presenting `token`; the server's refusal (the first answer) is the error.
    pub async fn try_connect(
        addr: std::net::SocketAddr,
        pod: &str,
        namespace: &str,
        token: &str,
        initial: &Versions,
    ) -> Result<Self, tonic::Status> {
        let node = Node {
            pod_name: pod.into(),
            namespace: namespace.into(),
            token: token.into(),
            ..Default::default()
        };
        Self::open(addr, node, &ALL_TYPE_URLS, initial).await
    }

    /// A gateway's stream: the sidecar's types and the gateway routes.
    pub async fn gateway(addr: std::net::SocketAddr, pod: &str, namespace: &str) -> Self {
        let node = Node {
            pod_name: pod.into(),
            namespace: namespace.into(),
            app: "lanemesh-gateway".into(),
            gateway: true,
            ..Default::default()
        };
        let mut types = ALL_TYPE_URLS.to_vec();
        types.push(lanemesh_api::resource::GATEWAY_TYPE_URL);
        Self::open(addr, node, &types, &Versions::new())
            .await
            .unwrap()
    }

    /// Sends one request per type (`node` in the first) and opens the stream.
    async fn open(
        addr: std::net::SocketAddr,
        node: Node,
        types: &[&str],
        initial: &Versions,
    ) -> Result<Self, tonic::Status> {
        // A small HTTP/2 window, so that a sidecar that stops reading
        // pushes back on the server soon (hyper's default is 2 MiB).
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let mut node = Some(node);
        for type_url in types {
            tx.send(DeltaDiscoveryRequest {
                node: node.take(),
                type_url: (*type_url).into(),
                initial_resource_versions: initial.get(*type_url).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let rx = tokio::time::timeout(
            WAIT,
            client.delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .unwrap()?
        .into_inner();
        Ok(Self { tx, rx })
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    /// The next response of `type_url`, ACKing any other on the way.
    pub async fn recv_type(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        loop {
            let r = self.recv().await;
            if r.type_url == type_url {
                return r;
            }
            self.ack(&r).await;
        }
    }

    /// The first response of each type, ACKed.
    pub async fn initial(&mut self) -> HashMap<String, DeltaDiscoveryResponse> {
        let mut out = HashMap::new();
        while out.len() < ALL_TYPE_URLS.len() {
            let r = self.recv().await;
            self.ack(&r).await;
            assert!(
                out.insert(r.type_url.clone(), r).is_none(),
                "two initial responses of one type"
            );
        }
        out
    }

    pub async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, r: &DeltaDiscoveryResponse, name: &str) {
        let version = r
            .resources
            .iter()
            .find(|x| x.name == name)
            .unwrap()
            .version
            .clone();
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(ErrorDetail {
                    message: "refused".into(),
                    resource_errors: vec![ResourceError {
                        name: name.into(),
                        version,
                        message: "unsupported".into(),
                    }],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(r) = tokio::time::timeout(quiet, self.rx.message()).await {
            panic!(
                "unexpected response: {:?}",
                r.map(|r| r.map(|r| summary(&r)))
            );
        }
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut n: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    n.sort_unstable();
    n
}

pub fn summary(r: &DeltaDiscoveryResponse) -> String {
    format!(
        "{} resources={:?} removed={:?}",
        r.type_url,
        names(r),
        r.removed_resources
    )
}

pub fn versions(initial: &HashMap<String, DeltaDiscoveryResponse>) -> Versions {
    initial
        .iter()
        .map(|(t, r)| {
            let v = r
                .resources
                .iter()
                .map(|x| (x.name.clone(), x.version.clone()))
                .collect();
            (t.clone(), v)
        })
        .collect()
}
