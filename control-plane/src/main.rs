//! `lanemesh-pilot`: the control plane binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("lanemesh-pilot: the control plane is not built yet (issue: control plane)")
}
