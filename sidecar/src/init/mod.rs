//! `lanemesh-proxy init`: installs the nat rules that capture a pod's traffic.
//!
//! Runs once per pod, as root (an init container in Kubernetes, or the test
//! harness inside a network namespace), before the app starts.

pub mod apply;
pub mod rules;

pub use apply::ApplyError;
pub use rules::{Capture, Cidr, Family, RuleSet};

/// `lanemesh-proxy init` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules instead (jumps and chains); absent ones are skipped.
    #[arg(long, conflicts_with = "dry_run")]
    pub uninstall: bool,
    /// Also write ip6tables rules.
    #[arg(long)]
    pub ipv6: bool,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The proxy's UID: its own traffic is never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's GID: its own traffic is never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_gid: u32,
    /// Inbound ports left alone (comma-separated); 15020 and 15021 always are.
    #[arg(long, value_delimiter = ',')]
    pub inbound_exclude_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub outbound_exclude_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone (comma-separated, v4 or v6).
    #[arg(long, value_delimiter = ',')]
    pub outbound_exclude_cidrs: Vec<Cidr>,
}

impl InitArgs {
    pub fn capture(&self) -> Capture {
        Capture {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_exclude_ports: self.inbound_exclude_ports.clone(),
            outbound_exclude_ports: self.outbound_exclude_ports.clone(),
            outbound_exclude_cidrs: self.outbound_exclude_cidrs.clone(),
        }
    }

    fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// The rule sets, rendered: what `--dry-run` prints.
    pub fn render(&self) -> String {
        let capture = self.capture();
        self.families()
            .into_iter()
            .map(|f| capture.rules(f).render())
            .collect()
    }

    /// Installs (or with `--uninstall` removes) the rules.
    pub fn apply(&self) -> Result<(), ApplyError> {
        let capture = self.capture();
        for family in self.families() {
            let rules = capture.rules(family);
            if self.uninstall {
                apply::uninstall(&rules)?
            } else {
                apply::install(&rules)?
            }
        }
        Ok(())
    }
}
