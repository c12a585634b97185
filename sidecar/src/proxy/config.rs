//! The proxy core's own settings: a plain struct, checked once by [`ProxyConfig::validate`].
//!
//! The core knows nothing of flags: `lanemesh-proxy` parses its command line (the app layer's
//! `config` module) into this struct, and tests and benches build it directly. The documented
//! defaults live in [`defaults`] and nowhere else; the flags' defaults are these constants.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The documented default of every setting (DESIGN §5 for the ports).
pub mod defaults {
    use std::time::Duration;

    /// Outbound capture port.
    pub const OUTBOUND_PORT: u16 = 15001;
    /// Inbound capture port.
    pub const INBOUND_PORT: u16 = 15006;
    /// Admin port (on loopback).
    pub const ADMIN_PORT: u16 = 15000;
    /// How long in-flight work may run after the shutdown starts.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(25);
    /// How long every listener keeps accepting after the shutdown starts (Istio's minimum drain
    /// duration), so callers that have not yet learned the endpoint is gone are still served.
    pub const DRAIN_DURATION: Duration = Duration::from_secs(5);
    /// How long detection waits for a client's first bytes.
    pub const DETECT_TIMEOUT: Duration = Duration::from_millis(200);
    /// Most bytes read while detecting.
    pub const DETECT_MAX_BYTES: usize = 4096;
    /// Time for a complete HTTP/1 request head.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Largest request head (HTTP/1) or header list (HTTP/2).
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    /// How long an idle pooled upstream connection is kept.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    /// TCP keepalive idle time and probe interval (linkerd2-proxy's default).
    pub const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
    /// Connections each capture listener holds at once.
    pub const MAX_CONNECTIONS: usize = 16_384;
    /// An opaque relay with no byte either way for this long is closed (Envoy's `tcp_proxy`).
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// A keep-alive HTTP/1 client connection silent this long between requests is closed.
    /// Longer than the idle timeouts of common client pools (Go 90 s, OkHttp 5 min), so the
    /// client, which knows whether it is about to send, is the one that closes: a proxy closing
    /// first races the client's next request. Bounded so idle connections cannot pile up.
    pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    /// A request or response body (or the wait for a response head) making no progress for
    /// this long ends the exchange: Envoy's `stream_idle_timeout` default, long enough for long
    /// polls and quiet streams, short enough that a stalled peer does not hold two connections
    /// forever.
    pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Timeout for connecting to an upstream.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// HTTP/2 keepalive: a PING after this much silence on a connection, both directions.
    pub const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
    /// Concurrent streams a client may open on one HTTP/2 connection.
    pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 1024;

    /// Protocols an HTTP/1.1 `Upgrade` may switch a connection to. Every other upgrade (above
    /// all `h2c`, which would turn the connection into a tunnel that skips per-request routing
    /// and governance) is forwarded as a plain request without its upgrade headers.
    pub const UPGRADE_PROTOCOLS: &[&str] = &["websocket"];

    /// Ports whose protocols speak first (the server greets the client), so the proxy must not
    /// wait for client bytes to detect a protocol: MySQL, PostgreSQL, Redis, memcached, SMTP,
    /// POP3, IMAP, submission, MongoDB, Cassandra, NATS, FTP, SSH.
    pub const SERVER_FIRST_PORTS: &[u16] = &[
        21, 22, 25, 110, 143, 587, 3306, 4222, 5432, 6379, 9042, 11211, 27017,
    ];
}

/// Everything the proxy core needs; see [`defaults`] for each default.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Outbound capture listener port (0 = any free port, for tests).
    pub outbound_port: u16,
    /// Inbound capture listener port.
    pub inbound_port: u16,
    /// Other ports of this proxy (the admin port) that inbound traffic must never reach.
    pub reserved_ports: Vec<u16>,
    /// Address both capture listeners bind to; on the IPv4 wildcard, `[::]` is bound too.
    pub bind_address: IpAddr,
    /// Where inbound traffic is delivered, on the original port; `None` = the original
    /// destination (the pod IP), so loopback-only app ports stay private.
    pub app_address: Option<IpAddr>,
    /// Data-plane worker threads; `None` = one per host CPU.
    pub workers: Option<usize>,
    /// How long in-flight work may run after the shutdown starts.
    pub grace_period: Duration,
    /// How long the listeners keep accepting after the shutdown starts (at most the grace
    /// period); the proxy exits once it is over and no connection is left.
    pub drain_duration: Duration,
    /// How long detection waits for a client's first bytes.
    pub detect_timeout: Duration,
    /// Most bytes read while detecting.
    pub detect_max_bytes: usize,
    /// Destination ports that skip detection (server-first protocols).
    pub server_first_ports: Vec<u16>,
    /// Time a client has to send a complete HTTP/1 request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// TCP keepalive idle time and probe interval on client and upstream sockets.
    pub tcp_keepalive: Duration,
    /// Connections each capture listener holds at once; past it new ones are closed.
    pub max_connections: usize,
    /// An opaque relay with no byte either way for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A keep-alive HTTP/1 client connection silent this long between requests is closed.
    pub http_idle_timeout: Duration,
    /// A body (or the wait for a response head) making no progress this long ends the exchange.
    pub body_idle_timeout: Duration,
    /// Timeout for connecting to an upstream.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive PING interval (and the time its answer may take).
    pub http2_keepalive: Duration,
    /// Concurrent streams a client may open on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Protocols an HTTP/1.1 upgrade may switch to (lower case, e.g. `websocket`); see
    /// [`defaults::UPGRADE_PROTOCOLS`].
    pub upgrade_protocols: Vec<String>,
    /// Gateway mode: plain HTTP listeners on these ports (on `bind_address`) replace the two
    /// capture listeners; empty = a sidecar. Port 0 picks a free port (tests).
    pub gateway_ports: Vec<u16>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            outbound_port: defaults::OUTBOUND_PORT,
            inbound_port: defaults::INBOUND_PORT,
            reserved_ports: vec![defaults::ADMIN_PORT],
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            app_address: None,
            workers: None,
            grace_period: defaults::GRACE_PERIOD,
            drain_duration: defaults::DRAIN_DURATION,
            detect_timeout: defaults::DETECT_TIMEOUT,
            detect_max_bytes: defaults::DETECT_MAX_BYTES,
            server_first_ports: defaults::SERVER_FIRST_PORTS.to_vec(),
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            pool_idle_timeout: defaults::POOL_IDLE_TIMEOUT,
            tcp_keepalive: defaults::TCP_KEEPALIVE,
            max_connections: defaults::MAX_CONNECTIONS,
            tcp_idle_timeout: defaults::TCP_IDLE_TIMEOUT,
            http_idle_timeout: defaults::HTTP_IDLE_TIMEOUT,
            body_idle_timeout: defaults::BODY_IDLE_TIMEOUT,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            http2_keepalive: defaults::HTTP2_KEEPALIVE,
            http2_max_concurrent_streams: defaults::HTTP2_MAX_CONCURRENT_STREAMS,
            upgrade_protocols: defaults::UPGRADE_PROTOCOLS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            gateway_ports: Vec::new(),
        }
    }
}

/// A combination of settings the proxy cannot run with; messages name the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A runtime needs at least one worker.
    #[error("--worker-threads must be at least 1")]
    ZeroWorkers,
    /// Two listeners would bind the same port.
    #[error("two listeners would bind port {0} (--outbound-port, --inbound-port, --port)")]
    SamePort(u16),
    /// A listener that may hold no connection serves nothing.
    #[error("--max-connections must be at least 1")]
    ZeroConnections,
    /// An HTTP/2 connection that may carry no stream serves nothing.
    #[error("--http2-max-concurrent-streams must be at least 1")]
    ZeroStreams,
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
    /// Checks what the types cannot; [`crate::proxy::Proxy::bind`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == Some(0) {
            return Err(ConfigError::ZeroWorkers);
        }
        let mut gateway = self.gateway_ports.clone();
        gateway.sort_unstable();
        if let Some(twice) = gateway.windows(2).find(|w| w[0] == w[1] && w[0] != 0) {
            return Err(ConfigError::SamePort(twice[0]));
        }
        if gateway.is_empty() && self.outbound_port == self.inbound_port && self.outbound_port != 0
        {
            return Err(ConfigError::SamePort(self.outbound_port));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroConnections);
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::ZeroStreams);
        }
        for (name, value) in [
            ("grace-period", self.grace_period),
            ("detect-timeout", self.detect_timeout),
            ("header-read-timeout", self.header_read_timeout),
            ("connect-timeout", self.connect_timeout),
            ("tcp-keepalive", self.tcp_keepalive),
            ("tcp-idle-timeout", self.tcp_idle_timeout),
            ("http-idle-timeout", self.http_idle_timeout),
            ("body-idle-timeout", self.body_idle_timeout),
            ("http2-keepalive", self.http2_keepalive),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_name_their_flag() {
        ProxyConfig::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let same = ProxyConfig {
            inbound_port: defaults::OUTBOUND_PORT,
            ..ProxyConfig::default()
        };
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
        let none = ProxyConfig {
            workers: Some(0),
            ..ProxyConfig::default()
        };
        assert_eq!(none.validate(), Err(ConfigError::ZeroWorkers));
    }
}
