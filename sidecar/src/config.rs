//! Static proxy configuration: parsed once at start-up from flags (and their
//! `LANEMESH_*` environment variables), validated, then immutable.
//!
//! Live configuration (lanes, routes, policies) does not belong here: it
//! arrives over the discovery stream as snapshots.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::discovery::DiscoveryArgs;

/// Ports whose protocols speak first (the server greets the client), so the
/// proxy must not wait for client bytes to detect a protocol: MySQL, PostgreSQL,
/// Redis, memcached, SMTP, POP3, IMAP, submission, MongoDB, Cassandra, NATS,
/// FTP, SSH and ZooKeeper's admin ports are the usual suspects.
pub const DEFAULT_SERVER_FIRST_PORTS: &[u16] = &[
    21, 22, 25, 110, 143, 587, 3306, 4222, 5432, 6379, 9042, 11211, 27017,
];

/// Flags of `lanemesh-proxy run`.
#[derive(Debug, Clone, Args)]
pub struct ProxyConfig {
    /// Port of the outbound capture listener (traffic the app sends out).
    #[arg(long, env = "LANEMESH_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Port of the inbound capture listener (traffic sent to the app).
    #[arg(long, env = "LANEMESH_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Admin listener (`/config_dump`, `/logging`, `POST /shutdown`); loopback only.
    #[arg(long, env = "LANEMESH_ADMIN_ADDR", default_value = crate::admin::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Health listener (`/healthz/ready`).
    #[arg(long, env = "LANEMESH_HEALTH_ADDR", default_value = crate::admin::HEALTH_ADDR)]
    pub health_addr: SocketAddr,

    /// Metrics listener (`/metrics`).
    #[arg(long, env = "LANEMESH_METRICS_ADDR", default_value = crate::admin::METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Address both capture listeners bind to.
    #[arg(long, env = "LANEMESH_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,

    /// Address inbound traffic is delivered to, on the original port. Unset (the default):
    /// the address the caller sent it to, i.e. the pod IP, so a port the app binds only to
    /// loopback stays private to the pod, as in Istio since 1.10. Setting `127.0.0.1` delivers
    /// everything to loopback and so exposes loopback-only ports (pprof, actuator) to callers.
    #[arg(long, env = "LANEMESH_APP_ADDRESS")]
    pub app_address: Option<IpAddr>,

    /// How long in-flight requests may run after SIGTERM before the proxy exits.
    #[arg(long, env = "LANEMESH_GRACE_PERIOD", default_value = "25s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,

    /// How long protocol detection waits for the client's first bytes; a client
    /// that stays silent this long is forwarded as opaque TCP.
    #[arg(long, env = "LANEMESH_DETECT_TIMEOUT", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub detect_timeout: Duration,

    /// Most bytes read while detecting the protocol.
    #[arg(long, env = "LANEMESH_DETECT_MAX_BYTES", default_value_t = 4096)]
    pub detect_max_bytes: usize,

    /// Destination ports that skip detection (server-first protocols), comma separated.
    #[arg(long, env = "LANEMESH_SERVER_FIRST_PORTS", value_delimiter = ',', default_values_t = DEFAULT_SERVER_FIRST_PORTS.to_vec())]
    pub server_first_ports: Vec<u16>,

    /// Time a client has to send a complete HTTP/1 request head (slowloris guard).
    #[arg(long, env = "LANEMESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted, in bytes;
    /// larger ones get 431.
    #[arg(long, env = "LANEMESH_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// How long an idle pooled upstream connection is kept.
    #[arg(long, env = "LANEMESH_POOL_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub pool_idle_timeout: Duration,

    /// TCP keepalive on client and upstream connections: idle time before the first probe, and
    /// the interval between probes. A peer that vanished without FIN or RST (node lost, cable
    /// cut) is noticed and its connection closed instead of being held forever; the same
    /// default as linkerd2-proxy.
    #[arg(long, env = "LANEMESH_TCP_KEEPALIVE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,

    /// Most connections each capture listener holds open at once; past it new connections are
    /// closed at once and the open ones keep being served (file descriptors and memory stay
    /// bounded whatever callers do).
    #[arg(long, env = "LANEMESH_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// An opaque TCP relay with no byte in either direction for this long is closed (Envoy's
    /// `tcp_proxy` default); TCP keepalive only notices peers that vanished.
    #[arg(long, env = "LANEMESH_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Proxies in front of this pod (ingress, load balancer) whose `X-Forwarded-For` entries
    /// are trusted, as Envoy's `xff_num_trusted_hops`: the `ClientIP` hot-parameter source then
    /// reads the entry this many places from the right. 0 (the default): the connection's peer
    /// address, so a caller cannot pick the key its requests are limited under.
    #[arg(long, env = "LANEMESH_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,

    /// Timeout for connecting to an upstream.
    #[arg(long, env = "LANEMESH_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

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

    /// Where the live configuration comes from and who this pod is
    /// (`--discovery-addr`, `--config-file`, `--app-name`, `--lane-tag`, ...).
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// Worker threads for a CPU quota: whole CPUs rounded up, at least one.
fn workers_for_quota(cpus: f64) -> Option<usize> {
    (cpus.is_finite() && cpus > 0.0).then(|| cpus.ceil().max(1.0) as usize)
}

/// A flag combination the proxy cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A runtime needs at least one worker.
    #[error("--worker-threads must be at least 1")]
    ZeroWorkers,
    /// Both listeners would bind the same port.
    #[error("--outbound-port and --inbound-port must differ (both are {0})")]
    SamePort(u16),
    /// A listener that may hold no connection serves nothing.
    #[error("--max-connections must be at least 1")]
    ZeroConnections,
    /// A duration that must be positive is zero.
    #[error("--{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The detection buffer cannot hold the HTTP/2 preface.
    #[error("--detect-max-bytes must be at least {min} (got {got})")]
    DetectBufferTooSmall {
        /// Smallest usable value.
        min: usize,
        /// Configured value.
        got: usize,
    },
    /// The header limit is below what hyper can enforce or above what HTTP/2 can express.
    #[error("--max-header-bytes must be between {min} and {max} (got {got})")]
    HeaderLimitOutOfRange {
        /// Smallest usable value.
        min: usize,
        /// Largest usable value.
        max: usize,
        /// Configured value.
        got: usize,
    },
}

/// hyper refuses HTTP/1 read buffers below 8 KiB.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = u32::MAX as usize;
const PREFACE_LEN: usize = 24;

impl ProxyConfig {
    /// The runtime's worker threads: `--worker-threads`, else the cgroup's CPU limit rounded
    /// up, else `None` (the runtime's default, one per host CPU).
    pub fn workers(&self) -> Option<usize> {
        self.worker_threads.or_else(|| {
            let cpu_max = std::fs::read_to_string(self.cgroup_dir.join("cpu.max")).ok()?;
            workers_for_quota(crate::govern::cpu::parse_cpu_max(&cpu_max)?)
        })
    }

    /// Checks what clap's types cannot; call once before starting the proxy.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_threads == Some(0) {
            return Err(ConfigError::ZeroWorkers);
        }
        if self.outbound_port == self.inbound_port && self.outbound_port != 0 {
            return Err(ConfigError::SamePort(self.outbound_port));
        }
        for (name, value) in [
            ("grace-period", self.grace_period),
            ("detect-timeout", self.detect_timeout),
            ("header-read-timeout", self.header_read_timeout),
            ("connect-timeout", self.connect_timeout),
            ("tcp-keepalive", self.tcp_keepalive),
            ("tcp-idle-timeout", self.tcp_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroConnections);
        }
        if self.detect_max_bytes < PREFACE_LEN {
            return Err(ConfigError::DetectBufferTooSmall {
                min: PREFACE_LEN,
                got: self.detect_max_bytes,
            });
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(ConfigError::HeaderLimitOutOfRange {
                min: MIN_HEADER_BYTES,
                max: MAX_HEADER_BYTES,
                got: self.max_header_bytes,
            });
        }
        Ok(())
    }
}

impl Default for ProxyConfig {
    /// The documented flag defaults, for embedding the proxy in-process.
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            health_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15021)),
            metrics_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15020)),
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            app_address: None,
            grace_period: Duration::from_secs(25),
            detect_timeout: Duration::from_millis(200),
            detect_max_bytes: 4096,
            server_first_ports: DEFAULT_SERVER_FIRST_PORTS.to_vec(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            pool_idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(10),
            max_connections: 16_384,
            tcp_idle_timeout: Duration::from_secs(3600),
            trusted_proxy_hops: 0,
            cgroup_dir: PathBuf::from("/sys/fs/cgroup"),
            worker_threads: None,
            discovery: DiscoveryArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: ProxyConfig,
    }

    #[test]
    fn workers_follow_the_flag_else_the_cgroup_cpu_limit() {
        assert_eq!(workers_for_quota(0.5), Some(1));
        assert_eq!(workers_for_quota(1.0), Some(1));
        assert_eq!(workers_for_quota(2.5), Some(3));
        assert_eq!(workers_for_quota(0.0), None);
        let dir = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig {
            cgroup_dir: dir.path().to_owned(),
            ..ProxyConfig::default()
        };
        assert_eq!(config.workers(), None, "no cpu.max: the runtime's default");
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(config.workers(), None, "unlimited: the runtime's default");
        std::fs::write(dir.path().join("cpu.max"), "150000 100000\n").unwrap();
        assert_eq!(config.workers(), Some(2));
        config.worker_threads = Some(1);
        assert_eq!(config.workers(), Some(1), "the flag wins");
        config.worker_threads = Some(0);
        assert_eq!(config.validate(), Err(ConfigError::ZeroWorkers));
    }

    #[test]
    fn flag_defaults_match_default_impl_and_design_ports() {
        let parsed = Cli::try_parse_from(["lanemesh-proxy"]).unwrap().config;
        let default = ProxyConfig::default();
        // DESIGN §5 fixes the capture ports.
        assert_eq!(parsed.outbound_port, 15001);
        assert_eq!(parsed.inbound_port, 15006);
        assert_eq!(parsed.grace_period, default.grace_period);
        assert_eq!(parsed.detect_timeout, default.detect_timeout);
        assert_eq!(parsed.server_first_ports, default.server_first_ports);
        assert_eq!(parsed.max_header_bytes, default.max_header_bytes);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(parsed.tcp_idle_timeout, default.tcp_idle_timeout);
        assert!(parsed.server_first_ports.contains(&5432));
        parsed.validate().unwrap();
    }

    #[test]
    fn server_first_ports_and_durations_parse() {
        let parsed = Cli::try_parse_from([
            "lanemesh-proxy",
            "--server-first-ports",
            "3306,6379",
            "--detect-timeout",
            "150ms",
            "--grace-period",
            "3s",
        ])
        .unwrap()
        .config;
        assert_eq!(parsed.server_first_ports, vec![3306, 6379]);
        assert_eq!(parsed.detect_timeout, Duration::from_millis(150));
        assert_eq!(parsed.grace_period, Duration::from_secs(3));
    }

    #[test]
    fn discovery_flags_are_part_of_run() {
        let parsed = Cli::try_parse_from([
            "lanemesh-proxy",
            "--discovery-addr",
            "pilot:15010",
            "--app-name",
            "b",
            "--lane-tag",
            "gray",
        ])
        .unwrap()
        .config;
        assert_eq!(
            parsed.discovery.discovery_addr.as_deref(),
            Some("pilot:15010")
        );
        assert_eq!(parsed.discovery.app_name, "b");
        assert_eq!(parsed.discovery.lane_tag, "gray");
        // The placeholder flag of the proxy core is gone: one set of flags.
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--discovery-address", "x:1"]).is_err());
    }

    #[test]
    fn bad_values_fail_fast() {
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--outbound-port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["lanemesh-proxy", "--grace-period", "soon"]).is_err());
        let same = Cli::try_parse_from(["lanemesh-proxy", "--inbound-port", "15001"])
            .unwrap()
            .config;
        assert_eq!(same.validate(), Err(ConfigError::SamePort(15001)));
        let zero = ProxyConfig {
            detect_timeout: Duration::ZERO,
            ..ProxyConfig::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConfigError::ZeroDuration("detect-timeout"))
        );
        let tiny = ProxyConfig {
            max_header_bytes: 100,
            ..ProxyConfig::default()
        };
        assert!(matches!(
            tiny.validate(),
            Err(ConfigError::HeaderLimitOutOfRange { got: 100, .. })
        ));
    }
}
