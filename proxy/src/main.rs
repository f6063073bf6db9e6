//! `egress-proxy` binary: parses arguments, sets up tracing, loads the policy file and
//! hands over to the library (DESIGN.md section 6, standalone use).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use egress_proxy::audit::{AuditSink, JsonLinesSink};
use egress_proxy::config::PolicyFile;
use egress_proxy::origdst::FixedTable;
use egress_proxy::policy::Policy;
use egress_proxy::server::Proxy;

/// L7 allow-list egress proxy and DNS filter.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Policy file (`upstream_dns` and `egress`, DESIGN.md 3.3) served to every client.
    #[arg(long)]
    policy: PathBuf,
    /// Explicit HTTP proxy listener (absolute-form and CONNECT).
    #[arg(long, default_value = "127.0.0.1:3128")]
    listen: SocketAddr,
    /// DNS filter listener (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    dns_listen: SocketAddr,
    /// Transparent TLS listener (decides on SNI); needs --original-destination.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Transparent plain-HTTP listener (decides on Host); needs --original-destination.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// The destination every transparent connection is taken to have asked for (for use
    /// behind a port forward; under runner-agent the eBPF layer supplies it per socket).
    #[arg(long)]
    original_destination: Option<SocketAddr>,
    /// Audit events as JSON lines; default: standard output.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Control socket for registering per-client policies (JSON lines).
    #[arg(long)]
    control: Option<PathBuf>,
}

/// `nameserver` lines of resolv.conf(5): the default when the policy names no resolver.
fn host_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let file: PolicyFile = egress_proxy::yaml::parse_file(&args.policy)?;
    let policy = Policy::new(&file.egress)
        .with_context(|| format!("{}: invalid policy", args.policy.display()))?;
    let upstream: Vec<SocketAddr> = file
        .upstream_dns
        .unwrap_or_else(host_resolvers)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    let sink: Arc<dyn AuditSink> = match &args.audit_log {
        Some(path) => Arc::new(JsonLinesSink::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open audit log {}", path.display()))?,
        )),
        None => Arc::new(JsonLinesSink::new(std::io::stdout())),
    };
    let mut builder = Proxy::builder()
        .http_listen(args.listen)
        .dns_listen(args.dns_listen)
        .upstream_dns(upstream)
        .audit(sink);
    if let Some(addr) = args.tls_listen {
        builder = builder.tls_listen(addr);
    }
    if let Some(addr) = args.http_listen {
        builder = builder.plain_http_listen(addr);
    }
    if let Some(original) = args.original_destination {
        let table = FixedTable::default();
        table.set_fallback(Some(original));
        builder = builder.original_destination(Arc::new(table));
    }
    if let Some(path) = args.control {
        builder = builder.control_socket(path);
    }
    let mut proxy = builder.start().await?;
    proxy.set_default_policy(Some(Arc::new(policy)));
    tracing::info!(listen = ?proxy.http_addrs(), dns = ?proxy.dns_addrs(), "egress-proxy serving");
    tokio::select! {
        () = proxy.wait() => anyhow::bail!("a listener stopped"),
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for SIGINT")?;
            Ok(())
        }
    }
}
