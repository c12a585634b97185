#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web console over HTTP, on a control plane with a local source: the page and its assets,
//! the overview (lanes with computed status, refused objects, traffic), a read-only console
//! refusing lane switches, and a writing one switching a lane off by rewriting its file, with
//! cross-origin and non-JSON writes refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lanemesh_control_plane::console::LaneWriter;
use lanemesh_control_plane::run::ControlPlane;
use lanemesh_control_plane::source::local::LocalSource;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

const OBJECTS: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a, b], entryApps: [a]}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  enabled: true
  match: {logic: All, conditions: [{source: Header, name: canary, operator: Equal, value: gray}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: broken, namespace: shop}
spec:
  app: a
  rules: [{name: all, qps: {threshold: -1}}]
"#;

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn overview(addr: SocketAddr) -> Value {
    let (status, body) = request(addr, "GET", "/api/overview", &[], "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn gray(overview: &Value) -> Value {
    overview["lanes"]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metadata"]["name"] == "gray")
        .cloned()
        .unwrap()
}

async fn start(dir: &Path) -> (ControlPlane, SocketAddr, SocketAddr) {
    let source = LocalSource::new(dir).with_interval(Duration::from_millis(50));
    let mut plane = ControlPlane::start(
        move |tx| async move {
            source.run(tx).await.unwrap();
        },
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Duration::from_millis(50),
    );
    let read_only = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let writing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (
        read_only.local_addr().unwrap(),
        writing.local_addr().unwrap(),
    );
    plane.start_console(read_only, None);
    plane.start_console(writing, Some(LaneWriter::Directory(dir.to_path_buf())));
    (plane, addrs.0, addrs.1)
}

#[tokio::test]
async fn the_console_shows_lanes_and_refusals_and_switches_a_lane_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("objects.yaml"), OBJECTS).unwrap();
    let (plane, read_only, writing) = start(dir.path()).await;
    let mut ready = overview(read_only).await;
    for _ in 0..100 {
        if ready["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = overview(read_only).await;
    }

    let (status, page) = request(read_only, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("chart-gray") && page.contains("/assets/uPlot.iife.min.js"));
    let (status, script) = request(read_only, "GET", "/assets/uPlot.iife.min.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(script.contains("uPlot"));

    let lane = gray(&ready);
    assert_eq!(lane["spec"]["enabled"], true);
    assert_eq!(lane["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(lane["status"]["conditions"][0]["status"], "True");
    assert_eq!(ready["writes"], false);
    assert_eq!(ready["traffic"]["enabled"], false, "no scraper started");
    let refused = ready["refused"].to_string();
    assert!(refused.contains("RateLimitPolicy shop/broken"), "{refused}");

    let json = [("content-type", "application/json")];
    let off = r#"{"enabled": false}"#;
    let (status, body) = request(read_only, "POST", "/api/lanes/shop/gray", &json, off).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--console-writes"), "{body}");
    let (status, _) = request(writing, "POST", "/api/lanes/shop/gray", &[], off).await;
    assert_eq!(status, 415, "a form post is not a lane switch");
    let evil = [
        ("content-type", "application/json"),
        ("origin", "http://evil.example"),
    ];
    let (status, _) = request(writing, "POST", "/api/lanes/shop/gray", &evil, off).await;
    assert_eq!(status, 403, "another site's page cannot switch lanes");
    let (status, body) = request(writing, "POST", "/api/lanes/shop/red", &json, off).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = request(writing, "POST", "/api/lanes/shop/gray", &json, "{}").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        gray(&overview(read_only).await)["spec"]["enabled"],
        true,
        "nothing switched yet"
    );

    let own = format!("http://{writing}");
    let from_page = [
        ("content-type", "application/json"),
        ("origin", own.as_str()),
    ];
    let (status, body) = request(writing, "POST", "/api/lanes/shop/gray", &from_page, off).await;
    assert_eq!(status, 200, "{body}");
    let mut enabled = Value::Null;
    for _ in 0..100 {
        enabled = gray(&overview(read_only).await)["spec"]["enabled"].clone();
        if enabled == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(enabled, false, "the source read the rewritten file");
    plane.stop(Duration::from_secs(2)).await;
}
