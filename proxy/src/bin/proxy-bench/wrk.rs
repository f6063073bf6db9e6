//! The HTTP runs: wrk through the forward proxies (or straight to the origin), and the
//! parsing of its requests per second and latency percentiles.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{bail, Context};

use crate::{Args, Scratch, TARGET};

pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

fn parse_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

pub(crate) fn wrk(
    args: &Args,
    via: Option<SocketAddr>,
    origin: SocketAddr,
    close: bool,
    conns: usize,
) -> anyhow::Result<WrkResult> {
    let dir = Scratch::new("wrk")?;
    let script = dir.path().join("req.lua");
    let mut lua = String::new();
    let url = match via {
        Some(proxy) => {
            lua.push_str(&format!(
                "wrk.path = \"http://{TARGET}:{port}/\"\nwrk.headers[\"Host\"] = \"{TARGET}:{port}\"\n",
                port = origin.port()
            ));
            format!("http://{proxy}/")
        }
        None => format!("http://{origin}/"),
    };
    if close {
        lua.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    }
    std::fs::write(&script, lua)?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{}s", args.duration),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(&url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx answers via {via:?}: {text}");
    }
    let p50 = field("50%").and_then(|v| parse_us(&v)).context("wrk p50")?;
    let p99 = field("99%").and_then(|v| parse_us(&v)).context("wrk p99")?;
    Ok(WrkResult {
        rps,
        p50_us: p50,
        p99_us: p99,
    })
}
