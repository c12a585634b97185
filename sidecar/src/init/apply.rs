//! Installing and removing the rules with the iptables tools.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules::{CHAINS, RuleSet};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{tool} not found: install the iptables package (Debian: apt-get install iptables)")]
    Missing { tool: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("running `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
}

/// Installs `rules`. Idempotent: our chains are recreated whole by
/// `iptables-restore --noflush` (a `:CHAIN` line empties it), and each jump
/// is added only when `-C` does not find it.
pub fn install(rules: &RuleSet) -> Result<(), ApplyError> {
    let tool = rules.family.iptables();
    run(
        &format!("{tool}-restore"),
        &["--noflush"],
        Some(&rules.restore),
    )?;
    for (chain, spec) in &rules.jumps {
        if !present(tool, chain, spec)? {
            let mut args = vec!["-t", "nat", "-A", chain];
            args.extend(spec.iter().map(String::as_str));
            run(tool, &args, None)?;
        }
    }
    Ok(())
}

/// Removes the jumps and our chains; absent ones are skipped.
pub fn uninstall(rules: &RuleSet) -> Result<(), ApplyError> {
    let tool = rules.family.iptables();
    for (chain, spec) in &rules.jumps {
        while present(tool, chain, spec)? {
            let mut args = vec!["-t", "nat", "-D", chain];
            args.extend(spec.iter().map(String::as_str));
            run(tool, &args, None)?;
        }
    }
    // Flush all first: a chain cannot be deleted while another references it.
    for chain in CHAINS {
        if chain_exists(tool, chain)? {
            run(tool, &["-t", "nat", "-F", chain], None)?;
        }
    }
    for chain in CHAINS {
        if chain_exists(tool, chain)? {
            run(tool, &["-t", "nat", "-X", chain], None)?;
        }
    }
    Ok(())
}

fn present(tool: &str, chain: &str, spec: &[String]) -> Result<bool, ApplyError> {
    let mut args = vec!["-t", "nat", "-C", chain];
    args.extend(spec.iter().map(String::as_str));
    status(tool, &args)
}

fn chain_exists(tool: &str, chain: &str) -> Result<bool, ApplyError> {
    status(tool, &["-t", "nat", "-S", chain])
}

/// Whether the command succeeded; iptables answers "no" with exit 1.
fn status(tool: &str, args: &[&str]) -> Result<bool, ApplyError> {
    let output = command(tool, args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status();
    match output {
        Ok(status) => Ok(status.success()),
        Err(e) => Err(spawn_error(tool, args, e)),
    }
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<(), ApplyError> {
    let mut child = command(tool, args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(tool, args, e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| ApplyError::Io {
                command: line(tool, args),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| ApplyError::Io {
        command: line(tool, args),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ApplyError::Failed {
        command: line(tool, args),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn command(tool: &str, args: &[&str]) -> Command {
    let mut command = Command::new(tool);
    // -w: wait for the xtables lock instead of failing when another init runs.
    if !tool.ends_with("-restore") {
        command.arg("-w");
    }
    command.args(args);
    command
}

fn spawn_error(tool: &str, args: &[&str], e: std::io::Error) -> ApplyError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ApplyError::Missing {
            tool: tool.to_owned(),
        }
    } else {
        ApplyError::Io {
            command: line(tool, args),
            source: e,
        }
    }
}

fn line(tool: &str, args: &[&str]) -> String {
    std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
