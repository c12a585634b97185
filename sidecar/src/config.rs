//! The flags of `lanemesh-proxy run` and `lanemesh-proxy gateway` (each also a `LANEMESH_*` environment variable, so the
//! injected container needs no arguments): parsed once at start-up, turned into the proxy
//! core's [`ProxyConfig`] and the app's other settings, then immutable.
//!
//! Every default is a constant of [`crate::proxy::config::defaults`]; nothing here repeats one.
//! Live configuration (lanes, routes, policies) does not belong here: it arrives over the
//! discovery stream as snapshots.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use humantime::Duration as Human;

use crate::admin::{HEALTH_ADDR, LogControl, METRICS_ADDR};
use crate::app::{AppConfig, Listeners};
use crate::discovery::{self, DiscoveryArgs};
use crate::proxy::config::{ProxyConfig, defaults};
use crate::trace::{TraceArgs, TraceConfigError};

/// Flags of `lanemesh-proxy run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Port of the outbound capture listener (traffic the app sends out).
    #[arg(long, env = "LANEMESH_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// Port of the inbound capture listener (traffic sent to the app).
    #[arg(long, env = "LANEMESH_INBOUND_PORT", default_value_t = defaults::INBOUND_PORT)]
    pub inbound_port: u16,

    /// Admin listener (`/config_dump`, `/logging`, `POST /shutdown`); loopback only.
    #[arg(long, env = "LANEMESH_ADMIN_ADDR", default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, defaults::ADMIN_PORT)))]
    pub admin_addr: SocketAddr,

    /// Health listener (`/healthz/ready`).
    #[arg(long, env = "LANEMESH_HEALTH_ADDR", default_value = HEALTH_ADDR)]
    pub health_addr: SocketAddr,

    /// Metrics listener (`/metrics`).
    #[arg(long, env = "LANEMESH_METRICS_ADDR", default_value = METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Address both capture listeners bind to (on the IPv4 wildcard, `[::]` too).
    #[arg(long, env = "LANEMESH_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,

    /// Address inbound traffic is delivered to, on the original port. Unset (the default):
    /// the address the caller sent it to, i.e. the pod IP, so a port the app binds only to
    /// loopback stays private to the pod, as in Istio since 1.10. Setting `127.0.0.1` delivers
    /// everything to loopback and so exposes loopback-only ports (pprof, actuator) to callers.
    #[arg(long, env = "LANEMESH_APP_ADDRESS")]
    pub app_address: Option<IpAddr>,

    /// How long in-flight requests may run after SIGTERM before the proxy exits.
    #[arg(long, env = "LANEMESH_GRACE_PERIOD", default_value_t = defaults::GRACE_PERIOD.into())]
    pub grace_period: Human,

    /// How long every listener keeps accepting after SIGTERM (capped at the grace period):
    /// callers that have not yet learned this pod is going are still served, with
    /// `Connection: close`. The proxy exits once it is over and no connection is left.
    #[arg(long, env = "LANEMESH_DRAIN_DURATION", default_value_t = defaults::DRAIN_DURATION.into())]
    pub drain_duration: Human,

    /// How long protocol detection waits for the client's first bytes; a client that stays
    /// silent this long is forwarded as opaque TCP (and detected again if it speaks before
    /// the server).
    #[arg(long, env = "LANEMESH_DETECT_TIMEOUT", default_value_t = defaults::DETECT_TIMEOUT.into())]
    pub detect_timeout: Human,

    /// Most bytes read while detecting the protocol.
    #[arg(long, env = "LANEMESH_DETECT_MAX_BYTES", default_value_t = defaults::DETECT_MAX_BYTES)]
    pub detect_max_bytes: usize,

    /// Destination ports that skip detection (server-first protocols), comma separated.
    #[arg(long, env = "LANEMESH_SERVER_FIRST_PORTS", value_delimiter = ',', default_values_t = defaults::SERVER_FIRST_PORTS.to_vec())]
    pub server_first_ports: Vec<u16>,

    /// Time a client has to send a complete HTTP/1 request head (slowloris guard).
    #[arg(long, env = "LANEMESH_HEADER_READ_TIMEOUT", default_value_t = defaults::HEADER_READ_TIMEOUT.into())]
    pub header_read_timeout: Human,

    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted, in bytes; larger ones
    /// get 431.
    #[arg(long, env = "LANEMESH_MAX_HEADER_BYTES", default_value_t = defaults::MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// How long an idle pooled upstream connection is kept.
    #[arg(long, env = "LANEMESH_POOL_IDLE_TIMEOUT", default_value_t = defaults::POOL_IDLE_TIMEOUT.into())]
    pub pool_idle_timeout: Human,

    /// TCP keepalive on client and upstream connections: idle time before the first probe, and
    /// the interval between probes. A peer that vanished without FIN or RST (node lost, cable
    /// cut) is noticed and its connection closed instead of being held forever; the same
    /// default as linkerd2-proxy.
    #[arg(long, env = "LANEMESH_TCP_KEEPALIVE", default_value_t = defaults::TCP_KEEPALIVE.into())]
    pub tcp_keepalive: Human,

    /// Most connections each capture listener holds open at once; past it new connections are
    /// closed at once and the open ones keep being served (file descriptors and memory stay
    /// bounded whatever callers do).
    #[arg(long, env = "LANEMESH_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// An opaque TCP relay with no byte in either direction for this long is closed (Envoy's
    /// `tcp_proxy` default); TCP keepalive only notices peers that vanished.
    #[arg(long, env = "LANEMESH_TCP_IDLE_TIMEOUT", default_value_t = defaults::TCP_IDLE_TIMEOUT.into())]
    pub tcp_idle_timeout: Human,

    /// A keep-alive HTTP/1 client connection that sends no byte of a next request for this
    /// long is closed.
    #[arg(long, env = "LANEMESH_HTTP_IDLE_TIMEOUT", default_value_t = defaults::HTTP_IDLE_TIMEOUT.into())]
    pub http_idle_timeout: Human,

    /// A request body, response head or response body that makes no progress for this long
    /// ends the exchange (Envoy's `stream_idle_timeout`).
    #[arg(long, env = "LANEMESH_BODY_IDLE_TIMEOUT", default_value_t = defaults::BODY_IDLE_TIMEOUT.into())]
    pub body_idle_timeout: Human,

    /// HTTP/2 keepalive: a PING after this much silence on a client or upstream connection; a
    /// connection whose PING is not answered within the same time is closed.
    #[arg(long, env = "LANEMESH_HTTP2_KEEPALIVE", default_value_t = defaults::HTTP2_KEEPALIVE.into())]
    pub http2_keepalive: Human,

    /// Concurrent streams a client may open on one HTTP/2 connection.
    #[arg(long, env = "LANEMESH_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = defaults::HTTP2_MAX_CONCURRENT_STREAMS)]
    pub http2_max_concurrent_streams: u32,

    /// Protocols an HTTP/1.1 `Upgrade` may switch a connection to, comma separated; any other
    /// upgrade (e.g. `h2c`, which would make the connection a tunnel past routing and
    /// governance) is forwarded as a plain request without its upgrade headers.
    #[arg(long, env = "LANEMESH_UPGRADE_PROTOCOLS", value_delimiter = ',', default_values_t = defaults::UPGRADE_PROTOCOLS.iter().map(|p| (*p).to_owned()))]
    pub upgrade_protocols: Vec<String>,

    /// Proxies in front of this pod (ingress, load balancer) whose `X-Forwarded-For` entries
    /// are trusted, as Envoy's `xff_num_trusted_hops`: the `ClientIP` hot-parameter source then
    /// reads the entry this many places from the right. 0 (the default): the connection's peer
    /// address, so a caller cannot pick the key its requests are limited under.
    #[arg(long, env = "LANEMESH_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,

    /// Timeout for connecting to an upstream.
    #[arg(long, env = "LANEMESH_CONNECT_TIMEOUT", default_value_t = defaults::CONNECT_TIMEOUT.into())]
    pub connect_timeout: Human,

    /// The pod's cgroup v2 directory, whose `cpu.stat` and `cpu.max` overload protection
    /// samples; when it has no `cpu.stat` the host's `/proc/stat` is used instead.
    #[arg(long, env = "LANEMESH_CGROUP_DIR", default_value = "/sys/fs/cgroup")]
    pub cgroup_dir: PathBuf,

    /// Data-plane worker threads (each serves its share of the connections on its own
    /// single-threaded runtime). Default: the CPUs the pod's cgroup allows (`cpu.max`, rounded
    /// up), else every CPU of the host: a sidecar should not run more busy threads than its CPU
    /// limit pays for.
    #[arg(long, env = "LANEMESH_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Seed of the lane decisions' random draws (Percentage mode): one generator shared by every
    /// worker, so the same sequence of requests gets the same lanes. For tests and demos; unset
    /// (the default) each worker draws from its own thread's generator, without a lock.
    #[arg(long, env = "LANEMESH_LANE_SEED")]
    pub lane_seed: Option<u64>,

    /// Where the live configuration comes from and who this pod is
    /// (`--discovery-addr`, `--config-file`, `--app-name`, `--lane-tag`, ...).
    #[command(flatten)]
    pub discovery: DiscoveryArgs,

    /// Request spans over OTLP (`--trace-endpoint`, `--trace-sampling`, ...).
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Flags that cannot work together or with this machine.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// Discovery and identity flags.
    #[error(transparent)]
    Discovery(#[from] discovery::ConfigError),
    /// Trace flags.
    #[error(transparent)]
    Trace(#[from] TraceConfigError),
}

/// Worker threads for a CPU quota: whole CPUs rounded up, at least one.
fn workers_for_quota(cpus: f64) -> Option<usize> {
    (cpus.is_finite() && cpus > 0.0).then(|| cpus.ceil().max(1.0) as usize)
}

impl RunConfig {
    /// The runtime's worker threads: `--worker-threads`, else the cgroup's CPU limit rounded
    /// up, else `None` (one per host CPU).
    pub fn workers(&self) -> Option<usize> {
        self.worker_threads.or_else(|| {
            let cpu_max = std::fs::read_to_string(self.cgroup_dir.join("cpu.max")).ok()?;
            workers_for_quota(crate::govern::cpu::parse_cpu_max(&cpu_max)?)
        })
    }

    /// Everything [`crate::app::App::build`] needs. Neither `--discovery-addr` nor
    /// `--config-file` is allowed (everything then passes through, with a warning); a token file
    /// that cannot be read is not.
    pub fn app(&self, logging: Option<LogControl>) -> Result<AppConfig, FlagError> {
        let source = match self.discovery.source() {
            Ok(source) => Some(source),
            Err(discovery::ConfigError::NoSource) => {
                tracing::warn!(
                    "neither --discovery-addr nor --config-file given; passing all traffic through"
                );
                None
            }
            Err(error) => return Err(error.into()),
        };
        Ok(AppConfig {
            proxy: self.proxy(),
            identity: self.discovery.identity(),
            source,
            listeners: Some(Listeners {
                admin: self.admin_addr,
                health: self.health_addr,
                metrics: self.metrics_addr,
            }),
            trusted_proxy_hops: self.trusted_proxy_hops,
            cgroup_dir: Some(self.cgroup_dir.clone()),
            logging,
            lane_seed: self.lane_seed,
            tracing: self.trace.settings()?,
        })
    }

    /// The proxy core's settings.
    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            reserved_ports: vec![self.admin_addr.port()],
            bind_address: self.bind_address,
            app_address: self.app_address,
            workers: self.workers(),
            grace_period: *self.grace_period,
            drain_duration: *self.drain_duration,
            detect_timeout: *self.detect_timeout,
            detect_max_bytes: self.detect_max_bytes,
            server_first_ports: self.server_first_ports.clone(),
            header_read_timeout: *self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            pool_idle_timeout: *self.pool_idle_timeout,
            tcp_keepalive: *self.tcp_keepalive,
            max_connections: self.max_connections,
            tcp_idle_timeout: *self.tcp_idle_timeout,
            http_idle_timeout: *self.http_idle_timeout,
            body_idle_timeout: *self.body_idle_timeout,
            connect_timeout: *self.connect_timeout,
            http2_keepalive: *self.http2_keepalive,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            upgrade_protocols: self
                .upgrade_protocols
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            gateway_ports: Vec::new(),
        }
    }
}

/// Flags of `lanemesh-proxy gateway`: the same data plane as a standalone ingress. No capture:
/// plain HTTP listeners on `--port`, routes from the discovery stream (HTTPRoutes and Ingresses
/// of the `lanemesh` class) or from `--config-file`, the lane decided for each route's backend.
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Ports the gateway listens on (on `--bind-address`), comma separated.
    #[arg(long = "port", env = "LANEMESH_GATEWAY_PORTS", value_delimiter = ',', default_values_t = [8080_u16])]
    pub ports: Vec<u16>,

    /// Every flag of `run` that applies to a gateway (timeouts, limits, discovery, admin).
    #[command(flatten)]
    pub run: RunConfig,
}

impl GatewayConfig {
    /// The proxy core's settings: gateway listeners instead of capture ones.
    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            gateway_ports: self.ports.clone(),
            ..self.run.proxy()
        }
    }

    /// Everything [`crate::app::App::build`] needs, for a gateway node.
    pub fn app(&self, logging: Option<LogControl>) -> Result<AppConfig, FlagError> {
        let mut app = self.run.app(logging)?;
        app.proxy = self.proxy();
        app.identity.gateway = true;
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proxy::config::ConfigError;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: RunConfig,
    }

    fn parse(args: &[&str]) -> RunConfig {
        Cli::try_parse_from(std::iter::once("lanemesh-proxy").chain(args.iter().copied()))
            .unwrap()
            .config
    }

    #[test]
    fn workers_follow_the_flag_else_the_cgroup_cpu_limit() {
        assert_eq!(workers_for_quota(0.5), Some(1));
        assert_eq!(workers_for_quota(1.0), Some(1));
        assert_eq!(workers_for_quota(2.5), Some(3));
        assert_eq!(workers_for_quota(0.0), None);
        let dir = tempfile::tempdir().unwrap();
        let cgroup = dir.path().to_str().unwrap();
        let config = parse(&["--cgroup-dir", cgroup]);
        assert_eq!(config.workers(), None, "no cpu.max: one per host CPU");
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(config.workers(), None, "unlimited: one per host CPU");
        std::fs::write(dir.path().join("cpu.max"), "150000 100000\n").unwrap();
        assert_eq!(config.workers(), Some(2));
        assert_eq!(config.proxy().workers, Some(2));
        let config = parse(&["--cgroup-dir", cgroup, "--worker-threads", "1"]);
        assert_eq!(config.workers(), Some(1), "the flag wins");
        let config = parse(&["--worker-threads", "0"]);
        assert_eq!(config.proxy().validate(), Err(ConfigError::ZeroWorkers));
    }

    #[test]
    fn no_flags_give_the_proxy_cores_defaults_and_the_design_ports() {
        let parsed = parse(&[]).proxy();
        let default = ProxyConfig::default();
        // DESIGN §5 fixes the ports.
        assert_eq!((parsed.outbound_port, parsed.inbound_port), (15001, 15006));
        assert_eq!(parsed.reserved_ports, vec![15000]);
        assert_eq!(parsed.grace_period, default.grace_period);
        assert_eq!(parsed.detect_timeout, default.detect_timeout);
        assert_eq!(parsed.server_first_ports, default.server_first_ports);
        assert_eq!(parsed.max_header_bytes, default.max_header_bytes);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(parsed.tcp_idle_timeout, default.tcp_idle_timeout);
        assert_eq!(parsed.http_idle_timeout, default.http_idle_timeout);
        assert_eq!(parsed.body_idle_timeout, default.body_idle_timeout);
        assert_eq!(parsed.http2_keepalive, default.http2_keepalive);
        assert_eq!(parsed.app_address, None);
        assert!(parsed.server_first_ports.contains(&5432));
        parsed.validate().unwrap();
    }

    #[test]
    fn server_first_ports_and_durations_parse() {
        let parsed = parse(&[
            "--server-first-ports",
            "3306,6379",
            "--detect-timeout",
            "150ms",
            "--grace-period",
            "3s",
        ])
        .proxy();
        assert_eq!(parsed.server_first_ports, vec![3306, 6379]);
        assert_eq!(parsed.detect_timeout, Duration::from_millis(150));
        assert_eq!(parsed.grace_period, Duration::from_secs(3));
    }

    #[test]
    fn discovery_flags_are_part_of_run() {
        let parsed = parse(&[
            "--discovery-addr",
            "pilot:15010",
            "--app-name",
            "b",
            "--lane-tag",
            "gray",
        ]);
        assert_eq!(
            parsed.discovery.discovery_addr.as_deref(),
            Some("pilot:15010")
        );
        assert_eq!(parsed.discovery.app_name, "b");
        assert_eq!(parsed.discovery.lane_tag, "gray");
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--discovery-address", "x:1"]).is_err());
    }

    #[test]
    fn bad_values_fail_fast() {
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--outbound-port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--grace-period", "soon"]).is_err());
        let same = parse(&["--inbound-port", "15001"]).proxy();
        assert_eq!(same.validate(), Err(ConfigError::SamePort(15001)));
        let zero = parse(&["--tcp-idle-timeout", "0s"]).proxy();
        assert_eq!(
            zero.validate(),
            Err(ConfigError::ZeroDuration("tcp-idle-timeout"))
        );
    }
}
