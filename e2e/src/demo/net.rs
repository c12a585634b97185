//! Pods as network namespaces on one Linux bridge, for the live demo: each pod gets a netns
//! (`lmd-<name>`), a veth pair with one end on the bridge, an address of the demo subnet and a
//! default route via the bridge (so an app's connect to a cluster IP is routed, then captured
//! by its sidecar's iptables rules). Processes run inside with `ip netns exec`. Everything is
//! removed when the [`Net`] is dropped, and [`Net::create`] first removes what a killed run
//! left behind.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::process::ChildGuard;

/// The demo subnet's first three octets; the bridge is `.1`.
pub const SUBNET: &str = "10.78.0";
/// The bridge's name, and the prefix of every name the demo creates.
const BRIDGE: &str = "lmdemo0";
const PREFIX: &str = "lmd-";

/// Runs `ip` with `args`; an error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bridge and the pods on it.
#[derive(Debug)]
pub struct Net {
    pods: Vec<String>,
}

/// One pod: its netns and address.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Network namespace name.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: String,
}

impl Net {
    /// Creates the bridge (`SUBNET.1/24`), after removing any leftovers of an earlier run.
    pub fn create() -> Result<Self> {
        cleanup_leftovers();
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Self { pods: Vec::new() })
    }

    /// The bridge's address: where pods reach processes of the host's namespace.
    pub fn host_ip() -> String {
        format!("{SUBNET}.1")
    }

    /// A pod `name` with address `SUBNET.<host>`.
    pub fn pod(&mut self, name: &str, host: u8) -> Result<Pod> {
        let netns = format!("{PREFIX}{name}");
        // Interface names are at most 15 bytes: number them by host octet.
        let (outside, inside) = (format!("lmdv{host}"), format!("lmdp{host}"));
        let ip_addr = format!("{SUBNET}.{host}");
        ip(&["netns", "add", &netns])?;
        self.pods.push(netns.clone());
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &outside, "master", BRIDGE, "up"])?;
        ip(&["link", "set", &inside, "netns", &netns])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            &inside,
        ])?;
        ip(&["-n", &netns, "link", "set", &inside, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &Self::host_ip(),
        ])?;
        Ok(Pod { netns, ip: ip_addr })
    }
}

impl Pod {
    /// Runs `program args` in this pod to completion (e.g. `lanemesh-proxy init`).
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} in {}", program.display(), self.netns))?;
        if !out.status.success() {
            bail!(
                "{} {} in {}: {}",
                program.display(),
                args.join(" "),
                self.netns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts `program args` in this pod with `env`, as UID/GID `uid` when given (the sidecar
    /// runs as 1337, which its capture rules exempt); output goes to `log`.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
        log: &Path,
    ) -> Result<ChildGuard> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]);
        if let Some(uid) = uid {
            let uid = uid.to_string();
            command.args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ]);
        }
        command.arg(program).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        Ok(ChildGuard::spawn(name, command, log)?)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for netns in &self.pods {
            // Deleting the netns deletes its veth end, and with it the bridge end.
            let _ = ip(&["netns", "del", netns]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }
}

/// Removes the bridge and every `lmd-*` netns a killed run left.
fn cleanup_leftovers() {
    let _ = ip(&["link", "del", BRIDGE]);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}
