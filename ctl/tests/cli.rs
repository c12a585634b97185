#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `lanemeshctl check` as CI runs it: output and exit codes.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn lanemeshctl(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanemeshctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_examples_directory_passes_with_exit_code_0() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let canary = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/canary");
    let (code, out, err) = lanemeshctl(&["check", "-f", examples, "-f", canary], "");
    assert_eq!((code, out.as_str()), (0, "no problems found\n"), "{err}");
}

#[test]
fn a_problem_is_printed_with_its_field_and_exits_1_in_every_format() {
    let bad = "apiVersion: lanemesh.io/v1alpha1\nkind: CircuitBreakerPolicy\nmetadata: {name: cb, namespace: shop}\nspec:\n  app: c\n  rules:\n  - name: slow\n    strategy: SlowRequestRatio\n    threshold: 0.5\n    slowRequestDuration: 200xs\n";
    let (code, out, _) = lanemeshctl(&["check", "-f", "-"], bad);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("FILE"), "{out}");
    assert!(
        lines[1].contains("CircuitBreakerPolicy shop/cb")
            && lines[1].contains("spec.rules[0].slowRequestDuration")
            && lines[1].contains("invalid duration \"200xs\""),
        "{out}"
    );
    let (code, out, _) = lanemeshctl(&["check", "-f", "-", "-o", "json"], bad);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["field"], "spec.rules[0].slowRequestDuration");
    assert_eq!(json[0]["file"], "-");
}

#[test]
fn an_unreadable_file_is_exit_code_2_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let (code, out, err) = lanemeshctl(&["check", "-f", missing.to_str().unwrap()], "");
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("nope.yaml"), "{err}");
}
