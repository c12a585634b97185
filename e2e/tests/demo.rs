#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! `make demo` in `make test`, so it cannot rot (root only): the gateway, the pilot on a local
//! directory and the seed's apps in network namespaces behind the real capture rules, each step
//! of [`lanemesh_e2e::demo::run`] checked (base; the content lane decided at the gateway;
//! one gray request traced as one trace of gateway, A, B and C spans in an OTLP receiver;
//! `lanemeshctl lanes` showing the gray lane with matched pods and QPS; the console's data,
//! and the console itself in headless chromium (GrayQPS drawn, the lane switched off and on);
//! client tags stripped, a trusted route keeping them; 30 % over 300 requests; the lane
//! disabled; gray C gone; the 429 of /greet1a; timeout, retry and breaker of
//! examples/resilience.yaml; the gateway's metrics), then nothing left.

use std::path::Path;
use std::time::Duration;

use lanemesh_e2e::cluster::{self, is_root};
use lanemesh_e2e::demo::{self, Demo, Options, Teardown};
use lanemesh_e2e::process::lanemesh_binaries;

#[test]
fn the_demo_shows_the_seed_through_the_gateway_and_cleans_up() {
    if cluster::skip_requested("the_demo_shows_the_seed_through_the_gateway_and_cleans_up") {
        return;
    }
    assert!(
        is_root(),
        "the demo needs root (network namespaces, iptables); run as root or set {}=1",
        cluster::SKIP_ENV
    );
    let binaries = lanemesh_binaries(Duration::from_secs(15 * 60)).unwrap();
    let app = cluster::mesh::demo_apps_dir().unwrap().join("demo-go");
    assert!(
        app.is_file(),
        "{} missing: e2e/apps/build.sh go",
        app.display()
    );
    let work = tempfile::tempdir().unwrap();
    let options = Options {
        binaries,
        app,
        examples: Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"),
        work_dir: work.path().to_path_buf(),
    };
    let demo = Demo::start(&options, Teardown::default()).unwrap_or_else(|e| {
        panic!("{e:#}\n{}", logs(work.path()));
    });
    let mut steps = Vec::new();
    if let Err(e) = demo::run(&demo, &mut |step| {
        println!("==> {}\n$ {}\n{}\n", step.title, step.command, step.shown);
        steps.push(step.title.clone());
    }) {
        panic!("{e:#}\n{}", logs(work.path()));
    }
    assert_eq!(steps.len(), 12, "{steps:?}");
    // The console in a real browser, on the demo's traffic: the gray lane, a GrayQPS chart with
    // data, and the lane switched off and on from the page (screenshots kept).
    let artifacts = lanemesh_e2e::console::artifacts_dir().unwrap();
    match lanemesh_e2e::console::browser_check(
        &demo.console_url(),
        &artifacts,
        "canary-demo/gray",
        true,
    ) {
        Ok(seen) => println!(
            "console in chromium: {seen}\nscreenshots: {}",
            artifacts.display()
        ),
        Err(e) => panic!("{e:#}\n{}", logs(work.path())),
    }
    drop(demo);
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("lmd-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(netns, Vec::<String>::new(), "namespaces left behind");
    let bridge = std::process::Command::new("ip")
        .args(["link", "show", "lmdemo0"])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "the demo bridge is left behind");
}

/// The last lines of every log, for a failure message.
fn logs(work: &Path) -> String {
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(work.join("logs")) else {
        return out;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        out.push_str(&format!("--- {}\n", entry.path().display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
