//! Pods on loopback for the mesh and governance tests: each "pod" is a sidecar bound to its own
//! loopback IP (127.0.0.N, its pod IP) with its app on 127.0.1.N; an endpoint's address is the pod
//! IP and the sidecar's inbound port, as iptables would capture it. Apps reach their sidecar's
//! outbound listener with the original destination (a cluster IP) registered in a `PeerMap`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lanemesh_api::proto;
use lanemesh_sidecar::app::{App, AppConfig};
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::lane::PropagationRule;
use lanemesh_sidecar::mesh::MeshRouter;
use lanemesh_sidecar::proxy::ProxyConfig;
use lanemesh_sidecar::proxy::orig_dst::OrigDstError;
use lanemesh_sidecar::proxy::{OriginalDst, PeerMap, ShutdownHandle};
use lanemesh_sidecar::snapshot::{Snapshot, SnapshotBuilder, SnapshotStore};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Bound of every single step of a test.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Outbound connections: the destination the app registered. Inbound ones (from other sidecars,
/// which register nothing): the pod IP and the app's port, as if the caller had connected to the
/// app and iptables had redirected it.
#[derive(Clone)]
pub(crate) struct TestDst {
    pub(crate) map: PeerMap,
    pub(crate) app_port: u16,
}

impl OriginalDst for TestDst {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
        match self.map.original_dst(stream) {
            Err(OrigDstError::Unknown(_)) => {
                Ok(SocketAddr::new(stream.local_addr()?.ip(), self.app_port))
            }
            other => other,
        }
    }
}

pub(crate) struct Sidecar {
    /// The pod IP and inbound port: the endpoint address of this pod.
    pub(crate) pod: SocketAddr,
    pub(crate) outbound: SocketAddr,
    pub(crate) app_ip: IpAddr,
    pub(crate) map: PeerMap,
    /// Who the pod is (its lane is what the control plane's Workload says).
    identity: PodIdentity,
    pub(crate) router: Arc<MeshRouter>,
    pub(crate) store: Arc<SnapshotStore>,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) run: JoinHandle<lanemesh_sidecar::proxy::DrainReport>,
}

impl Sidecar {
    /// A sidecar for pod `n` (pod IP 127.0.0.n, app on 127.0.1.n) of `app`, lane `tag`, built by
    /// the same [`App`] as `lanemesh-proxy`, and the listener its app must serve on.
    pub(crate) async fn start(n: u8, app: &str, tag: Option<&str>) -> (Self, TcpListener) {
        Self::start_draining(n, app, tag, Duration::ZERO).await
    }

    /// [`Sidecar::start`] with listeners that keep accepting for `drain` after the shutdown.
    pub(crate) async fn start_draining(
        n: u8,
        app: &str,
        tag: Option<&str>,
        drain: Duration,
    ) -> (Self, TcpListener) {
        Self::start_with(n, app, tag, |config| config.proxy.drain_duration = drain).await
    }

    /// [`Sidecar::start`] with the app's configuration changed by `configure`.
    pub(crate) async fn start_with(
        n: u8,
        app: &str,
        tag: Option<&str>,
        configure: impl FnOnce(&mut AppConfig),
    ) -> (Self, TcpListener) {
        let pod_ip: IpAddr = format!("127.0.0.{n}").parse().unwrap();
        let app_ip: IpAddr = format!("127.0.1.{n}").parse().unwrap();
        let app_listener = TcpListener::bind(SocketAddr::new(app_ip, 0)).await.unwrap();
        let app_port = app_listener.local_addr().unwrap().port();
        let proxy = ProxyConfig {
            outbound_port: 0,
            inbound_port: 0,
            bind_address: pod_ip,
            app_address: Some(app_ip),
            grace_period: Duration::from_secs(2),
            drain_duration: Duration::ZERO,
            connect_timeout: Duration::from_secs(2),
            ..ProxyConfig::default()
        };
        let identity = PodIdentity {
            pod_name: format!("{app}-{n}"),
            ..PodIdentity::app("demo", app).with_lane(tag.unwrap_or_default())
        };
        let map = PeerMap::new();
        let mut config = AppConfig::new(proxy, identity.clone());
        configure(&mut config);
        let built = App::build(
            config,
            Arc::new(TestDst {
                map: map.clone(),
                app_port,
            }),
        )
        .await
        .unwrap();
        let sidecar = Self {
            pod: built.inbound_addr(),
            outbound: built.outbound_addr(),
            app_ip,
            map,
            identity,
            router: Arc::clone(&built.router),
            store: Arc::clone(&built.store),
            shutdown: built.shutdown_handle(),
            run: tokio::spawn(built.run()),
        };
        (sidecar, app_listener)
    }

    /// `GET path` sent to this pod's app by a caller outside the mesh (captured inbound).
    pub(crate) async fn inbound_get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let stream = timeout(STEP, TcpStream::connect(self.pod))
            .await
            .unwrap()
            .unwrap();
        send_to(stream, "app.demo", path, headers).await
    }

    /// Stores `snapshot`, with this pod's Workload as the control plane sends it (its app and
    /// lane), and waits until the router runs on it.
    pub(crate) async fn install(&self, snapshot: Snapshot) {
        self.install_as(snapshot, false).await;
    }

    /// [`Sidecar::install`], with the Workload saying whether the pod is being deleted.
    pub(crate) async fn install_as(&self, snapshot: Snapshot, terminating: bool) {
        let mut builder = SnapshotBuilder::from_snapshot(&snapshot);
        builder
            .insert_all([proto::Workload {
                name: format!("{}/{}", self.identity.namespace, self.identity.pod_name),
                namespace: self.identity.namespace.clone(),
                pod_name: self.identity.pod_name.clone(),
                app: self.identity.app.clone(),
                lane_tag: self.identity.lane().unwrap_or_default().to_owned(),
                terminating,
            }])
            .unwrap();
        let generation = self.store.store(builder.build());
        timeout(STEP, async {
            while self.router.generation() != Some(generation) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the runtime builder did not pick up the snapshot");
    }

    /// An outbound client of this pod's app to `dst`.
    pub(crate) fn client(&self) -> AppClient {
        AppClient {
            outbound: self.outbound,
            app_ip: self.app_ip,
            map: self.map.clone(),
        }
    }

    pub(crate) fn count(&self, rule: PropagationRule) -> u64 {
        self.router
            .rule_counts()
            .iter()
            .find(|(r, _)| *r == rule)
            .unwrap()
            .1
    }

    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        timeout(STEP, self.run).await.unwrap().unwrap();
    }
}

#[derive(Clone)]
pub(crate) struct AppClient {
    pub(crate) outbound: SocketAddr,
    pub(crate) app_ip: IpAddr,
    pub(crate) map: PeerMap,
}

impl AppClient {
    /// `GET /` over a fresh connection that "was going to" `dst`.
    pub(crate) async fn get(
        &self,
        dst: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        self.get_path(dst, "/", headers).await
    }

    /// `GET path` over a fresh connection that "was going to" `dst`.
    pub(crate) async fn get_path(
        &self,
        dst: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        send_to(self.connect(dst).await, dst, path, headers).await
    }

    /// A fresh connection from the app, captured by the outbound listener, that "was going
    /// to" `dst`.
    pub(crate) async fn connect(&self, dst: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(self.app_ip, 0)).unwrap();
        self.map
            .insert(socket.local_addr().unwrap(), dst.parse().unwrap());
        timeout(STEP, socket.connect(self.outbound))
            .await
            .unwrap()
            .unwrap()
    }
}

/// `GET /` on `stream` with `Host: host`.
pub(crate) async fn send(
    stream: TcpStream,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    send_to(stream, host, "/", headers).await
}

/// `GET path` on `stream` with `Host: host`; the whole response.
pub(crate) async fn send_to(
    stream: TcpStream,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    exchange(stream, req.body(Empty::<Bytes>::new()).unwrap()).await
}

/// Sends `req` over HTTP/1.1 on `stream`; the whole response.
pub(crate) async fn exchange<B>(
    stream: TcpStream,
    req: Request<B>,
) -> (StatusCode, HeaderMap, String)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = timeout(STEP, sender.send_request(req))
        .await
        .expect("no response in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = timeout(STEP, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}
