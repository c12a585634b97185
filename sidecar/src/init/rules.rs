//! The nat rules that send a pod's traffic through the sidecar (pure).
//!
//! Istio-like: our own chains, rebuilt whole on every run, so running `init`
//! twice changes nothing; one jump each from `PREROUTING` and `OUTPUT`,
//! added only when missing.
//! - Inbound TCP -> the inbound capture port, except the sidecar's own
//!   health/metrics ports and the excluded ports.
//! - Outbound TCP -> the outbound capture port, except traffic of the proxy's
//!   UID/GID (or it would loop into itself), loopback, and the excluded
//!   ports and CIDRs.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Chains we own; `iptables-restore --noflush` recreates them empty.
pub const CHAINS: [&str; 4] = [
    "LANEMESH_INBOUND",
    "LANEMESH_IN_REDIRECT",
    "LANEMESH_OUTPUT",
    "LANEMESH_REDIRECT",
];

/// The sidecar's own inbound ports that must never be captured: metrics and health.
pub const SIDECAR_INBOUND_PORTS: [u16; 2] = [15020, 15021];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// An address range `addr/len`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {value:?}: {reason}")]
pub struct InvalidCidr {
    value: String,
    reason: &'static str,
}

impl std::str::FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidCidr {
            value: value.to_owned(),
            reason,
        };
        let (addr, len) = match value.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (value, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len
                .parse::<u8>()
                .map_err(|_| invalid("prefix length is not a number"))?,
            None => max,
        };
        if len > max {
            return Err(invalid("prefix length too long for the address family"));
        }
        Ok(Self { addr, len })
    }
}

impl Cidr {
    fn family(self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What to capture. Defaults follow DESIGN §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_exclude_ports: Vec<u16>,
    /// Only these inbound ports are captured; empty = every port.
    pub inbound_include_ports: Vec<u16>,
    pub outbound_exclude_ports: Vec<u16>,
    pub outbound_exclude_cidrs: Vec<Cidr>,
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_exclude_ports: Vec::new(),
            inbound_include_ports: Vec::new(),
            outbound_exclude_ports: Vec::new(),
            outbound_exclude_cidrs: Vec::new(),
        }
    }
}

/// The rules of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    /// Input for `iptables-restore --noflush`.
    pub restore: String,
    /// Jumps into our chains: (built-in chain, rule spec after the chain name).
    pub jumps: Vec<(&'static str, Vec<String>)>,
}

impl Capture {
    pub fn rules(&self, family: Family) -> RuleSet {
        let mut r = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(r, ":{chain} - [0:0]");
        }
        let mut inbound_skip: Vec<u16> = SIDECAR_INBOUND_PORTS.to_vec();
        for port in &self.inbound_exclude_ports {
            if !inbound_skip.contains(port) {
                inbound_skip.push(*port);
            }
        }
        for port in inbound_skip {
            let _ = writeln!(r, "-A LANEMESH_INBOUND -p tcp --dport {port} -j RETURN");
        }
        if self.inbound_include_ports.is_empty() {
            r.push_str("-A LANEMESH_INBOUND -p tcp -j LANEMESH_IN_REDIRECT\n");
        } else {
            // Exclusions (and the sidecar's own ports) returned above; the rest falls through
            // to the built-in chain, uncaptured.
            for port in &self.inbound_include_ports {
                let _ = writeln!(
                    r,
                    "-A LANEMESH_INBOUND -p tcp --dport {port} -j LANEMESH_IN_REDIRECT"
                );
            }
        }
        let _ = writeln!(
            r,
            "-A LANEMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            r,
            "-A LANEMESH_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(
            r,
            "-A LANEMESH_OUTPUT -m owner --gid-owner {} -j RETURN",
            self.proxy_gid
        );
        r.push_str("-A LANEMESH_OUTPUT -o lo -j RETURN\n");
        let _ = writeln!(r, "-A LANEMESH_OUTPUT -d {} -j RETURN", family.loopback());
        for port in &self.outbound_exclude_ports {
            let _ = writeln!(r, "-A LANEMESH_OUTPUT -p tcp --dport {port} -j RETURN");
        }
        for cidr in self
            .outbound_exclude_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            let _ = writeln!(
                r,
                "-A LANEMESH_OUTPUT -d {}/{} -j RETURN",
                cidr.addr, cidr.len
            );
        }
        r.push_str("-A LANEMESH_OUTPUT -j LANEMESH_REDIRECT\n");
        let _ = writeln!(
            r,
            "-A LANEMESH_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        r.push_str("COMMIT\n");
        let jump = |chain: &str| ["-p", "tcp", "-j", chain].map(str::to_owned).to_vec();
        RuleSet {
            family,
            restore: r,
            jumps: vec![
                ("PREROUTING", jump("LANEMESH_INBOUND")),
                ("OUTPUT", jump("LANEMESH_OUTPUT")),
            ],
        }
    }
}

impl RuleSet {
    /// A shell-readable rendering: what `--dry-run` prints.
    pub fn render(&self) -> String {
        let tool = self.family.iptables();
        let mut out = format!(
            "# lanemesh-proxy init: nat rules for {tool} ({})\n",
            self.family.name()
        );
        let _ = writeln!(out, "# {tool}-restore --noflush <<'RULES'");
        out.push_str(&self.restore);
        out.push_str("# RULES\n");
        for (chain, spec) in &self.jumps {
            let spec = spec.join(" ");
            let _ = writeln!(
                out,
                "# {tool} -t nat -C {chain} {spec} || {tool} -t nat -A {chain} {spec}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_with_and_without_length() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            Cidr {
                addr: "10.0.0.0".parse().unwrap(),
                len: 8
            }
        );
        assert_eq!("fd00::1".parse::<Cidr>().unwrap().len, 128);
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string();
        assert!(
            err.contains("10.0.0.0/33") && err.contains("too long"),
            "{err}"
        );
        assert!("example.com/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn each_family_gets_its_own_loopback_and_cidrs() {
        let capture = Capture {
            outbound_exclude_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..Capture::default()
        };
        let v6 = capture.rules(Family::V6).render();
        assert!(
            v6.contains("-d ::1/128 -j RETURN") && v6.contains("-d fd00::/8 -j RETURN"),
            "{v6}"
        );
        assert!(
            !v6.contains("10.0.0.0/8") && v6.contains("ip6tables-restore"),
            "{v6}"
        );
        let v4 = capture.rules(Family::V4).render();
        assert!(
            !v4.contains("fd00::/8") && v4.contains("-d 10.0.0.0/8 -j RETURN"),
            "{v4}"
        );
    }

    #[test]
    fn proxy_traffic_returns_before_anything_is_redirected() {
        // Otherwise the proxy's own upstream connections would loop into 15001.
        let rules = Capture::default().rules(Family::V4).restore;
        let uid = rules.find("--uid-owner 1337 -j RETURN").unwrap();
        let redirect = rules
            .find("-A LANEMESH_OUTPUT -j LANEMESH_REDIRECT")
            .unwrap();
        assert!(uid < redirect);
    }

    #[test]
    fn included_inbound_ports_are_the_only_ones_redirected() {
        let capture = Capture {
            inbound_include_ports: vec![8080, 9090],
            inbound_exclude_ports: vec![9090],
            ..Capture::default()
        };
        let rules = capture.rules(Family::V4).restore;
        let inbound: Vec<_> = rules
            .lines()
            .filter(|l| l.starts_with("-A LANEMESH_INBOUND "))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A LANEMESH_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A LANEMESH_INBOUND -p tcp --dport 15021 -j RETURN",
                "-A LANEMESH_INBOUND -p tcp --dport 9090 -j RETURN",
                "-A LANEMESH_INBOUND -p tcp --dport 8080 -j LANEMESH_IN_REDIRECT",
                "-A LANEMESH_INBOUND -p tcp --dport 9090 -j LANEMESH_IN_REDIRECT",
            ]
        );
        // No catch-all: any other port falls through uncaptured.
        assert!(!rules.contains("-A LANEMESH_INBOUND -p tcp -j LANEMESH_IN_REDIRECT"));
    }
}
