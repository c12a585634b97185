//! Where the live configuration comes from: the control plane's discovery
//! stream, or a YAML file.
//!
//! Either source is the single writer of the [`SnapshotStore`](crate::snapshot::SnapshotStore).
//! [`DiscoveryArgs`] holds the flags and environment variables `main`
//! flattens into its command line; [`DiscoveryArgs::source`] turns them into
//! a [`ConfigSource`].
//!
//! # Layout
//! - [`client`]: the delta ADS client with ACK/NACK, reconnects and state for metrics.
//! - [`backoff`]: the reconnect schedule (exponential, full jitter).
//! - [`file`](self::file): `--config-file`, the snapshot from multi-document YAML.

pub mod backoff;
pub mod client;
pub mod file;

use std::path::PathBuf;

pub use backoff::{Backoff, BackoffConfig};
pub use client::{
    ClientConfig, ClientError, DiscoveryClient, DiscoveryState, DiscoveryStats, node,
};

use crate::identity::PodIdentity;

/// Discovery flags of `lanemesh-proxy`; each also reads an environment
/// variable so the injected container needs no arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DiscoveryArgs {
    /// Control plane discovery address, `host:port` or `http://host:port`.
    #[arg(long, env = "LANEMESH_DISCOVERY_ADDR", conflicts_with = "config_file")]
    pub discovery_addr: Option<String>,
    /// Load the configuration from this YAML file instead of a control plane.
    #[arg(long, env = "LANEMESH_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// This pod's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    /// This pod's IP (downward API).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
    /// The app name policies refer to (label msePilotCreateAppName).
    #[arg(long, env = "LANEMESH_APP", default_value = "")]
    pub app_name: String,
    /// This pod's lane tag (label alicloud.service.tag); empty = base.
    #[arg(long, env = "LANEMESH_LANE_TAG", default_value = "")]
    pub lane_tag: String,
    /// Projected service-account token presented to the control plane.
    #[arg(long, env = "LANEMESH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA that signed the control plane's certificate: PEM text (what injection puts in
    /// LANEMESH_DISCOVERY_CA) or a file path. Discovery is then TLS, verified against it for
    /// the host of --discovery-addr.
    #[arg(long, env = "LANEMESH_DISCOVERY_CA")]
    pub discovery_ca: Option<String>,
}

/// What fills the snapshot.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    ControlPlane(Box<ClientConfig>),
    File { path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "set --discovery-addr (LANEMESH_DISCOVERY_ADDR) or --config-file (LANEMESH_CONFIG_FILE)"
    )]
    NoSource,
    #[error("cannot read the token file {}: {source}", .path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--discovery-ca: cannot read {}: {source}", .path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--discovery-ca: {0}")]
    Ca(&'static str),
}

impl DiscoveryArgs {
    /// Who the sidecar serves, from the flags (the downward API's env vars in Kubernetes).
    pub fn identity(&self) -> PodIdentity {
        PodIdentity {
            namespace: self.pod_namespace.clone(),
            pod_name: self.pod_name.clone(),
            app: self.app_name.clone(),
            lane_tag: None,
            ip: self.pod_ip.clone(),
            gateway: false,
        }
        .with_lane(self.lane_tag.clone())
    }

    /// The projected service-account token (`--token-file`), empty without one.
    pub fn token(&self) -> Result<String, ConfigError> {
        match &self.token_file {
            Some(path) => Ok(std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Token {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned()),
            None => Ok(String::new()),
        }
    }

    /// The configured source; a file wins when both are somehow set.
    pub fn source(&self) -> Result<ConfigSource, ConfigError> {
        if let Some(path) = &self.config_file {
            return Ok(ConfigSource::File { path: path.clone() });
        }
        let addr = self
            .discovery_addr
            .as_deref()
            .ok_or(ConfigError::NoSource)?;
        let tls = self.discovery_ca()?;
        // Read once here so a missing file fails the start; the client re-reads it on every
        // connect, as the kubelet rotates it.
        let mut config = ClientConfig::new(
            with_scheme(addr, tls.is_some()),
            self.identity(),
            self.token()?,
        );
        config.token_file = self.token_file.clone();
        config.ca_pem = tls;
        Ok(ConfigSource::ControlPlane(Box::new(config)))
    }

    /// The discovery CA as PEM: the flag's text, or the file it names.
    fn discovery_ca(&self) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.discovery_ca.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        let pem = if value.starts_with("-----BEGIN") {
            value.to_owned()
        } else {
            let path = PathBuf::from(value);
            std::fs::read_to_string(&path).map_err(|source| ConfigError::CaFile { path, source })?
        };
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::Ca("no PEM certificate in it"));
        }
        Ok(Some(pem))
    }
}

/// tonic wants a URI; operators write `host:port`.
fn with_scheme(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        discovery: DiscoveryArgs,
    }

    #[test]
    fn flags_build_a_control_plane_source_with_the_node_identity() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret-token\n").unwrap();
        let cli = Cli::try_parse_from([
            "lanemesh-proxy",
            "--discovery-addr",
            "pilot.lanemesh-system:15010",
            "--pod-name",
            "a-1",
            "--pod-namespace",
            "demo",
            "--app-name",
            "a",
            "--lane-tag",
            "gray",
            "--pod-ip",
            "10.0.0.5",
            "--token-file",
            token.to_str().unwrap(),
        ])
        .unwrap();
        let ConfigSource::ControlPlane(config) = cli.discovery.source().unwrap() else {
            panic!("expected a control plane source");
        };
        assert_eq!(config.addr, "http://pilot.lanemesh-system:15010");
        assert_eq!(config.identity.pod_name, "a-1");
        assert_eq!(config.identity.namespace, "demo");
        assert_eq!(config.identity.app, "a");
        assert_eq!(config.identity.lane(), Some("gray"));
        assert_eq!(config.identity.ip, "10.0.0.5");
        assert_eq!(config.token, "secret-token");
        assert!(
            !format!("{config:?}").contains("secret-token"),
            "the token is redacted"
        );
        let node = node(&config.identity, &config.token);
        assert_eq!(
            (node.lane_tag.as_str(), node.token.as_str()),
            ("gray", "secret-token")
        );
        assert!(!node.proxy_version.is_empty());
    }

    #[test]
    fn a_file_source_and_the_missing_source_error() {
        let cli = Cli::try_parse_from([
            "p",
            "--config-file",
            "/etc/lanemesh.yaml",
            "--app-name",
            "a",
        ])
        .unwrap();
        match cli.discovery.source().unwrap() {
            ConfigSource::File { path } => {
                assert_eq!(path, PathBuf::from("/etc/lanemesh.yaml"));
                assert_eq!(cli.discovery.identity().app, "a");
            }
            other => panic!("unexpected {other:?}"),
        }
        let none = DiscoveryArgs::default();
        assert!(matches!(none.source(), Err(ConfigError::NoSource)));
        assert!(
            Cli::try_parse_from(["p", "--config-file", "x", "--discovery-addr", "y:1"]).is_err(),
            "the two sources exclude each other"
        );
    }
}
