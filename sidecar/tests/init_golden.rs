//! `lanemesh-proxy init --dry-run` prints exactly the reviewed rule lists in
//! `tests/golden/` (written by hand from DESIGN §5, not generated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use lanemesh_sidecar::init::InitArgs;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    init: InitArgs,
}

fn render(args: &[&str]) -> String {
    let cli = Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).unwrap();
    cli.init.render()
}

fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn default_rules_match_the_golden_list() {
    // IPv6 rules follow the namespace's addresses by default; this list is the IPv4 one.
    assert_eq!(
        render(&["--dry-run", "--ipv6=off"]),
        golden("init-default.txt")
    );
}

#[test]
fn custom_rules_match_the_golden_list() {
    let args = [
        "--dry-run",
        "--ipv6=off",
        "--inbound-port=16006",
        "--outbound-port=16001",
        "--proxy-uid=2000",
        "--proxy-gid=2001",
        "--inbound-exclude-ports=22,9090,15021",
        "--outbound-exclude-ports=3306",
        "--outbound-exclude-cidrs=10.0.0.0/8,169.254.169.254",
    ];
    assert_eq!(render(&args), golden("init-custom.txt"));
}

#[test]
fn a_bad_cidr_is_refused_by_name() {
    let err = Cli::try_parse_from(["init", "--outbound-exclude-cidrs=10.0.0.0/40"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.0.0.0/40") && err.contains("prefix length"),
        "{err}"
    );
}
