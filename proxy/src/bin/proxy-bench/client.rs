//! The client end of the tunnel runs: one trait ([`BulkClient`]) over a socket of this
//! process (loopback topology) and the runner namespace's client helper, which runs the
//! same code ([`open_bulk`], [`read_bulk`]) on the other side of its pipe, so that direct
//! and proxied runs of both topologies share one client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::netns::NsHelper;

/// The bulk server as a client reaches it: directly at `addr`, or through a proxy as
/// `CONNECT name:port`.
pub(crate) struct Destination {
    pub(crate) addr: SocketAddr,
    pub(crate) name: &'static str,
}

/// The client end of the tunnel runs, wherever its socket lives.
pub(crate) trait BulkClient {
    /// Connects to the bulk server directly (`via` None) or opens a tunnel to it through
    /// the proxy at `via`.
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()>;
    /// Sends "GO\n" on the open connection and reads up to `mib` MiB: bytes read and the
    /// seconds from the request to the last byte.
    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)>;
}

/// A client socket of this process (the loopback topology).
pub(crate) struct LocalClient(pub(crate) Option<TcpStream>);

impl BulkClient for LocalClient {
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()> {
        self.0 = Some(open_bulk(via, dest.addr, dest.name)?);
        Ok(())
    }

    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)> {
        read_bulk(self.0.take().context("no connection open")?, mib)
    }
}

/// The runner topology's client helper: the same code in the runner namespace.
impl BulkClient for NsHelper {
    fn open(&mut self, via: Option<SocketAddr>, dest: &Destination) -> anyhow::Result<()> {
        let via = via.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let reply = self.request(&format!("open {via} {} {}", dest.addr, dest.name))?;
        if reply != "ok" {
            bail!("runner client said `{reply}`");
        }
        Ok(())
    }

    fn transfer(&mut self, mib: u64) -> anyhow::Result<(u64, f64)> {
        let reply = self.request(&format!("go {mib}"))?;
        let parsed = reply.strip_prefix("done ").and_then(|r| {
            let (bytes, secs) = r.split_once(' ')?;
            Some((bytes.parse().ok()?, secs.parse().ok()?))
        });
        parsed.with_context(|| format!("runner client said `{reply}`"))
    }
}

pub(crate) fn runner_client_request(
    line: &str,
    stream: &mut Option<TcpStream>,
) -> anyhow::Result<String> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["open", via, addr, name] => {
            let via = match *via {
                "-" => None,
                proxy => Some(proxy.parse()?),
            };
            *stream = Some(open_bulk(via, addr.parse()?, name)?);
            Ok("ok".to_owned())
        }
        ["go", mib] => {
            let s = stream.take().context("no connection open")?;
            let (bytes, secs) = read_bulk(s, mib.parse()?)?;
            Ok(format!("done {bytes} {secs}"))
        }
        _ => bail!("unknown request `{line}`"),
    }
}

/// Connects to the bulk server at `addr` directly (`via` None) or through the proxy at
/// `via` with `CONNECT name:PORT`.
fn open_bulk(via: Option<SocketAddr>, addr: SocketAddr, name: &str) -> anyhow::Result<TcpStream> {
    let Some(proxy) = via else {
        return TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"));
    };
    let mut s = TcpStream::connect(proxy).with_context(|| format!("connecting to {proxy}"))?;
    write!(
        s,
        "CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n",
        port = addr.port()
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            bail!("proxy closed during CONNECT");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(s)
}

/// Asks for the bulk stream and reads up to `mib` MiB of it: bytes read, and seconds from
/// the request to the last byte.
fn read_bulk(mut stream: TcpStream, mib: u64) -> anyhow::Result<(u64, f64)> {
    let start = Instant::now();
    stream.write_all(b"GO\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total >= mib << 20 {
            break;
        }
    }
    Ok((total, start.elapsed().as_secs_f64()))
}
