//! `lanemesh-proxy init` against real iptables, inside a throwaway network
//! namespace (root only): installing twice changes nothing, and uninstall
//! removes exactly what install added.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

/// A network namespace deleted on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Option<Self> {
        if !support::root::can_run_as_root("init_netns", &["ip", "iptables-save"]) {
            return None;
        }
        let name = format!("lm-init-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self(name))
    }

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .unwrap()
    }

    fn nat_rules(&self) -> String {
        let out = self.exec("iptables-save", &["-t", "nat"]);
        assert!(out.status.success());
        // Drop comments and packet counters, which change between runs.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                if l.starts_with(':') {
                    l.split(' ').next().unwrap_or(l)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn init(&self, args: &[&str]) {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = self.exec(env!("CARGO_BIN_EXE_lanemesh-proxy"), &all);
        assert!(
            out.status.success(),
            "init {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn init_is_idempotent_and_uninstall_restores_the_table() {
    let Some(ns) = Netns::new() else { return };
    let before = ns.nat_rules();
    ns.init(&["--outbound-exclude-cidrs=10.0.0.0/8"]);
    let once = ns.nat_rules();
    assert!(
        once.contains("-A OUTPUT -p tcp -j LANEMESH_OUTPUT"),
        "{once}"
    );
    assert!(
        once.contains("-A PREROUTING -p tcp -j LANEMESH_INBOUND"),
        "{once}"
    );
    assert!(
        once.contains("-A LANEMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{once}"
    );
    assert!(
        once.contains("-A LANEMESH_OUTPUT -d 10.0.0.0/8 -j RETURN"),
        "{once}"
    );
    ns.init(&["--outbound-exclude-cidrs=10.0.0.0/8"]);
    assert_eq!(ns.nat_rules(), once, "a second init changed the rules");
    ns.init(&["--uninstall"]);
    assert_eq!(ns.nat_rules(), before, "uninstall left rules behind");
}
