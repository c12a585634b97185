//! The scrape task: every interval, `GET /metrics` from the sidecar of every ready governed pod
//! in the latest world, at most [`ScrapeOptions::concurrency`] at once, each bounded in time and
//! body size, then one [`Traffic::record`] and a new view published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{PodCounters, Traffic, TrafficView};
use crate::snapshot::World;

/// How the pilot scrapes.
#[derive(Debug, Clone)]
pub struct ScrapeOptions {
    /// Between rounds.
    pub interval: Duration,
    /// Of one pod's scrape, connect to body.
    pub timeout: Duration,
    /// Pods scraped at once.
    pub concurrency: usize,
    /// Pods scraped per round at most (the first by namespace and name).
    pub max_pods: usize,
    /// A larger body is not read.
    pub max_body: usize,
    /// The sidecars' metrics port.
    pub port: u16,
    /// How long the view reaches back.
    pub window: Duration,
}

impl Default for ScrapeOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            concurrency: 16,
            max_pods: 2000,
            max_body: 4 * 1024 * 1024,
            port: 15020,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Scrapes until `shutdown`, publishing each round's view into `views`.
pub async fn run(
    options: ScrapeOptions,
    worlds: watch::Receiver<Arc<World>>,
    views: watch::Sender<Arc<TrafficView>>,
    shutdown: watch::Receiver<bool>,
) {
    let interval = options.interval.max(Duration::from_millis(100));
    let points = (options.window.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    let mut traffic = Traffic::new(points, interval.as_secs_f64());
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = crate::stopped(shutdown.clone()) => return,
        }
        let targets: Vec<(String, String)> = {
            let world = worlds.borrow();
            let mut pods: Vec<_> = world
                .pods
                .iter()
                .filter(|(_, p)| p.ready && !p.ip.is_empty())
                .map(|((ns, name), p)| (format!("{ns}/{name}"), p.ip.clone()))
                .collect();
            pods.sort();
            pods.truncate(options.max_pods);
            pods
        };
        let results: Vec<(String, Option<PodCounters>)> = futures::stream::iter(targets)
            .map(|(pod, ip)| {
                let options = &options;
                async move {
                    let counters = scrape(&ip, options).await;
                    (pod, counters)
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        let mut pods: HashMap<String, PodCounters> = HashMap::new();
        let mut failed = Vec::new();
        for (pod, counters) in results {
            match counters {
                Some(c) => {
                    pods.insert(pod, c);
                }
                None => failed.push(pod),
            }
        }
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        traffic.record(at, Instant::now(), pods, &failed);
        views.send_replace(Arc::new(traffic.view()));
    }
}

/// One pod's counters, `None` when it could not be read in time.
async fn scrape(ip: &str, options: &ScrapeOptions) -> Option<PodCounters> {
    let addr = format!("{ip}:{}", options.port);
    let fetch = async {
        let stream = TcpStream::connect(&addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get("/metrics")
            .header(http::header::HOST, &addr)
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(req).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), options.max_body)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some(PodCounters::read(&String::from_utf8_lossy(&body)))
    };
    match tokio::time::timeout(options.timeout, fetch).await {
        Ok(counters) => counters,
        Err(_) => {
            tracing::debug!(%addr, "metrics scrape timed out");
            None
        }
    }
}
