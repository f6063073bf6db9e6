//! `runner-agent` binary: argument parsing only.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("runner-agent: not built yet")
}
