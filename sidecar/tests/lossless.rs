#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Lossless offline, in process: a rolling restart of app `c` (two pods replaced one by one,
//! each old pod's sidecar told to stop at the moment the control plane's endpoint removal is
//! still on its way to the caller) under a steady load of more than 200 requests per second
//! from pod `a` loses no request; a deleted pod's sidecar serves and asks clients to leave.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::snapshot::Snapshot;
use support::pod::{STEP, Sidecar};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const C_CLUSTER: &str = "10.96.0.40:80";
/// How long a stopping sidecar keeps accepting (`--drain-duration`).
const DRAIN: Duration = Duration::from_millis(800);
/// How long the control plane's push takes to reach the caller in this test.
const PUSH_DELAY: Duration = Duration::from_millis(100);

/// An app of `c`: answers `200 <name>` after 2 ms; on `stop` it stops accepting and lets its
/// connections finish what they are doing.
struct App {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl App {
    fn serve(listener: TcpListener, name: &'static str) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { break };
                        let service = service_fn(move |_req: Request<Incoming>| async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        let watched = graceful.watch(conn);
                        tokio::spawn(async move {
                            let _ = watched.await;
                        });
                    }
                }
            }
            drop(listener);
            let _ = timeout(STEP, graceful.shutdown()).await;
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        timeout(STEP, self.task).await.unwrap().unwrap();
    }
}

/// A pod of `c`: its sidecar (draining for [`DRAIN`]) and its app.
struct Pod {
    sidecar: Sidecar,
    app: App,
}

impl Pod {
    async fn start(n: u8, name: &'static str) -> Self {
        let (sidecar, listener) = Sidecar::start_draining(n, "c", None, DRAIN).await;
        let app = App::serve(listener, name);
        sidecar.install(c_snapshot()).await;
        Self { sidecar, app }
    }
}

/// What a pod of `c` knows: only itself.
fn c_snapshot() -> Snapshot {
    Snapshot::from_resources(PodIdentity::app("demo", "c"), [], [], None, None).unwrap()
}

/// What `a` knows: Service `c` with these pods as its ready endpoints.
fn a_snapshot(pods: &[&Pod]) -> Snapshot {
    let endpoints: Vec<(SocketAddr, &str, bool)> =
        pods.iter().map(|p| (p.sidecar.pod, "", true)).collect();
    Snapshot::from_resources(
        PodIdentity::app("demo", "a"),
        [support::service("c", C_CLUSTER, &endpoints)],
        [],
        None,
        None,
    )
    .unwrap()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_steady_load_loses_no_request() {
    let (a, _a_app) = Sidecar::start(81, "a", None).await;
    let mut old = vec![Pod::start(82, "c1").await, Pod::start(83, "c2").await];
    a.install(a_snapshot(&old.iter().collect::<Vec<_>>())).await;

    // The load: 8 clients, each a request every 5 ms (several hundred per second together), every
    // request on a fresh connection from a's app, as many HTTP clients do.
    let tally = Arc::new(Tally::default());
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, tally, failures, running) = (
                a.client(),
                Arc::clone(&tally),
                Arc::clone(&failures),
                Arc::clone(&running),
            );
            tokio::spawn(async move {
                while running.load(Ordering::SeqCst) {
                    let (status, _, body) = client.get_path(C_CLUSTER, "/", &[]).await;
                    if status == StatusCode::OK {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        failures.lock().unwrap().push(format!("{status} {body}"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    // Replace c1 by c3, then c2 by c4.
    let mut served_by_new = Vec::new();
    for (n, name) in [(84u8, "c3"), (85u8, "c4")] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = Pod::start(n, name).await;
        let mut all: Vec<&Pod> = old.iter().collect();
        all.push(&new);
        a.install(a_snapshot(&all)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The pod is deleted: the control plane tells its sidecar (which starts closing
        // keep-alive connections after each answer), its sidecar gets SIGTERM, and the
        // endpoint removal is still on its way to the caller.
        let going = old.remove(0);
        going.sidecar.install_as(c_snapshot(), true).await;
        going.sidecar.shutdown.trigger();
        tokio::time::sleep(PUSH_DELAY).await;
        let mut remaining: Vec<&Pod> = old.iter().collect();
        remaining.push(&new);
        a.install(a_snapshot(&remaining)).await;
        let report = timeout(STEP, going.sidecar.run).await.unwrap().unwrap();
        assert_eq!(report.abandoned, 0);
        going.app.stop().await;
        served_by_new.push(name);
        old.push(new);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);
    for client in clients {
        timeout(STEP, client).await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    let ok = tally.ok.load(Ordering::SeqCst);
    let failed = tally.failed.load(Ordering::SeqCst);
    let rate = (ok + failed) as f64 / elapsed.as_secs_f64();
    println!(
        "rolling restart of c: {ok} ok, {failed} failed over {elapsed:.1?} ({rate:.0} requests/s)"
    );
    assert!(rate >= 200.0, "the load was only {rate:.0} requests/s");
    assert_eq!(failed, 0, "lost: {:?}", failures.lock().unwrap());
    // The new pods took the traffic.
    let (_, _, body) = a.client().get_path(C_CLUSTER, "/", &[]).await;
    assert!(served_by_new.contains(&body.as_str()), "{body}");
    for pod in old {
        pod.sidecar.stop().await;
        pod.app.stop().await;
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_sidecar_still_serves_and_asks_keep_alive_clients_to_leave() {
    let pod = Pod::start(86, "c5").await;
    let (status, headers, _) = pod.sidecar.inbound_get("/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("connection").is_none(), "{headers:?}");
    // The control plane's Workload says the pod is being deleted.
    pod.sidecar.install_as(c_snapshot(), true).await;
    let (status, headers, body) = pod.sidecar.inbound_get("/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "c5"));
    assert_eq!(headers["connection"], "close");
    pod.sidecar.stop().await;
    pod.app.stop().await;
}
