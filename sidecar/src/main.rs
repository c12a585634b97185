//! `lanemesh-proxy`: the sidecar binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("lanemesh-proxy: the data plane is not built yet (issue: sidecar data plane)")
}
