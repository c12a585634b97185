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
    /// ip6tables rules too: `auto` (the default) when the pod has a global IPv6 address (a
    /// dual-stack or IPv6 pod; its IPv6 traffic would otherwise bypass the proxy), `on` (also
    /// plain `--ipv6`), `off`.
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub ipv6: Ipv6Mode,
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
    /// The only inbound ports captured (comma-separated); absent = every port.
    #[arg(long, value_delimiter = ',')]
    pub inbound_include_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub outbound_exclude_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone (comma-separated, v4 or v6).
    #[arg(long, value_delimiter = ',')]
    pub outbound_exclude_cidrs: Vec<Cidr>,
}

/// Whether `init` writes ip6tables rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// When the network namespace has a global IPv6 address.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Whether `/proc/net/if_inet6` (address, index, prefix length, scope, flags, device per line)
/// lists an address of global scope: loopback and link-local addresses exist in every
/// namespace with IPv6 enabled and say nothing about the pod's IPv6 traffic.
fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let scope = fields.nth(3);
        let device = fields.nth(1);
        scope == Some("00") && device.is_some_and(|d| d != "lo")
    })
}

impl InitArgs {
    pub fn capture(&self) -> Capture {
        Capture {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_exclude_ports: self.inbound_exclude_ports.clone(),
            inbound_include_ports: self.inbound_include_ports.clone(),
            outbound_exclude_ports: self.outbound_exclude_ports.clone(),
            outbound_exclude_cidrs: self.outbound_exclude_cidrs.clone(),
        }
    }

    fn families(&self) -> Vec<Family> {
        let v6 = match self.ipv6 {
            Ipv6Mode::On => true,
            Ipv6Mode::Off => false,
            Ipv6Mode::Auto => std::fs::read_to_string("/proc/net/if_inet6")
                .is_ok_and(|table| has_global_ipv6(&table)),
        };
        if v6 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_capture_follows_a_global_address() {
        let v4_only = "00000000000000000000000000000001 01 80 10 80       lo\n\
                       fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
        assert!(!has_global_ipv6(v4_only), "loopback and link-local only");
        let dual = format!("{v4_only}fd000000000000000000000000000002 04 40 00 82     eth0\n");
        assert!(has_global_ipv6(&dual));
        assert!(!has_global_ipv6(""));
    }
}
