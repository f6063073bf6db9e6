//! `egress-proxy` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("egress-proxy: not built yet")
}
