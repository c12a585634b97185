//! `lanemesh-demo` (`make demo`): the product, live, on this machine (root). See
//! [`lanemesh_e2e::demo`] for what runs; this binary builds what it needs, prints each step and
//! tears everything down at the end or on Ctrl-C (`--keep` waits for Ctrl-C, for your own curl).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lanemesh_e2e::demo::{self, Demo, Options, Step, Teardown};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "lanemesh live demo: gateway, lanes and a rate limit in network namespaces"
)]
struct Args {
    /// The repository's examples directory.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// The Go demo app; default: the one `e2e/apps/build.sh go` builds into the cache.
    #[arg(long)]
    app: Option<PathBuf>,
    /// Keep everything running after the steps, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let binaries = lanemesh_e2e::process::lanemesh_binaries(Duration::from_secs(3600))
        .context("building lanemesh-pilot and lanemesh-proxy")?;
    let app = match args.app {
        Some(app) => app,
        None => lanemesh_e2e::cluster::mesh::demo_apps_dir()?.join("demo-go"),
    };
    anyhow::ensure!(
        app.is_file(),
        "{} missing: run e2e/apps/build.sh go",
        app.display()
    );
    let work = tempfile::Builder::new()
        .prefix("lanemesh-demo-")
        .tempdir()?;
    let options = Options {
        binaries,
        app,
        examples: args.examples,
        work_dir: work.path().to_path_buf(),
    };
    let teardown = Teardown::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let on_signal = teardown.clone();
    let logs = work.path().join("logs");
    let keep = args.keep;
    let result = runtime.block_on(async move {
        let demo = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let demo = Demo::start(&options, teardown)?;
            say(&format!(
                "lanemesh demo up in {:.1}s: pilot on a local directory, gateway {}, apps A, Agray, B, C, Cgray each in a network namespace with its sidecar (UID 1337)\n",
                started.elapsed().as_secs_f64(),
                demo.gateway()
            ));
            demo::run(&demo, &mut print_step)?;
            if keep {
                say(&format!(
                    "\nrunning until Ctrl-C: curl -H 'canary: gray' http://{}/a (the pilot's directory: {})",
                    demo.gateway(),
                    demo.dir().display()
                ));
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Ok(())
        });
        tokio::select! {
            done = demo => done.context("the demo thread failed")?,
            _ = tokio::signal::ctrl_c() => {
                say("\ninterrupted: cleaning up");
                Ok(())
            }
        }
    });
    // Also on Ctrl-C, while the demo thread may still hold its handle.
    on_signal.run();
    if let Err(error) = &result {
        say(&format!(
            "lanemesh-demo failed: {error:#}\nlogs: {}",
            logs.display()
        ));
        // Keep the logs for the user.
        let _ = work.keep();
    }
    runtime.shutdown_background();
    result
}

fn print_step(step: &Step) {
    say(&format!("==> {}", step.title));
    for line in step.command.lines() {
        say(&format!("$ {line}"));
    }
    say(&format!("{}\n", step.shown));
}

/// The demo's output is its purpose.
#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}
