#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `lanemesh-scale-bench` end to end at a tiny scale: it starts the real
//! pilot, syncs every stream, measures every change for every stream and
//! reports it. Timing targets are not asserted (a loaded test machine must
//! not fail this); that every stream ACKed every change is.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanemesh_e2e::process::lanemesh_binaries;

#[test]
fn tiny_run_measures_every_stream_for_every_change() {
    let pilot = lanemesh_binaries(Duration::from_secs(20 * 60))
        .unwrap()
        .pilot;
    let dir = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(dir.path().join("bench.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanemesh-scale-bench"))
        .arg("--pilot")
        .arg(&pilot)
        .args(["--streams", "20", "--namespaces", "2"])
        .args(["--apps-per-namespace", "2", "--pods-per-app", "50"])
        .args(["--changes", "2", "--settle", "300ms"])
        .args(["--sync-timeout", "60s", "--change-timeout", "20s"])
        .arg("--keep-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the benchmark ran longer than 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut table = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut table)
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("bench.log")).unwrap();
    // 1 = a missed target, which only timing can cause here; anything else
    // is an error or a crash.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{status}\n{table}\n{log}"
    );
    let verdict = if status.success() {
        "**PASS**"
    } else {
        "**FAIL**"
    };
    assert!(table.contains(verdict), "{table}");

    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| streams") && !l.starts_with("| change")
        })
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "one summary row and one per change:\n{table}"
    );
    assert_eq!(
        rows[0][..3],
        ["20", "200", "4"],
        "streams, pods, apps:\n{table}"
    );
    for (i, row) in rows[1..].iter().enumerate() {
        assert_eq!(
            row[..3],
            [(i + 1).to_string().as_str(), "20", "0"],
            "every stream ACKed change {}:\n{table}\n{log}",
            i + 1
        );
    }
    assert!(
        dir.path().join("source/lanes.yaml").is_file() && dir.path().join("pilot.log").is_file(),
        "--keep-dir keeps the directory and the pilot log"
    );
    let lanes = std::fs::read_to_string(dir.path().join("source/lanes.yaml")).unwrap();
    assert!(
        lanes.contains("round-2"),
        "the last change is on disk: {lanes}"
    );
}
