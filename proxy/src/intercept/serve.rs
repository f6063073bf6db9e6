//! Serving one terminated TLS connection: the client's buffered ClientHello is replayed
//! into a rustls server presenting the job CA's leaf for the decided host, then the
//! decrypted stream is served by the proxy's HTTP code (`crate::http`, mode
//! `Terminated`), which checks and forwards every request. Also the upstream side: a TLS
//! client connection to an address that was already checked.
//!
//! Why replay: the gate (`crate::gate`) must read the whole ClientHello to check its SNI
//! before deciding anything, so those bytes are no longer in the socket; [`replayed`]
//! hands them to the TLS acceptor first, then reads the socket.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Interception;
use crate::audit::Kind;
use crate::clients::ClientEntry;
use crate::http::Mode;
use crate::origdst::Origin;
use crate::policy::{Decision, Host};
use crate::shared::{Shared, Subject};

/// What a terminated connection was decided for: every request inside must name this
/// host and port, and upstream connections go only to `addrs`.
#[derive(Debug)]
pub(crate) struct Terminated {
    /// The SNI (equal to the CONNECT host, or the transparent decision's name).
    pub host: Host,
    /// The port decided on.
    pub port: u16,
    /// The addresses already checked for host and port.
    pub addrs: Vec<IpAddr>,
    /// Leaves, credentials, upstream trust.
    pub interception: Arc<Interception>,
}

/// Terminates TLS on `stream` (after replaying `hello`) and serves the requests inside.
/// `kind` is the entry point's (CONNECT or transparent TLS), for connection-level events.
pub(crate) async fn terminate(
    shared: &Arc<Shared>,
    client: &Arc<ClientEntry>,
    kind: Kind,
    stream: TcpStream,
    hello: Vec<u8>,
    target: Terminated,
    origin: Option<Origin>,
) {
    let mut subject = Subject::new(kind);
    subject.host = Some(&target.host);
    subject.port = Some(target.port);
    subject.set_origin(origin.as_ref());
    let deny = |reason: String| shared.record(Some(client), &subject, &Decision::deny(reason));
    let Host::Name(name) = &target.host else {
        return deny("TLS termination needs a host name".to_owned());
    };
    let config = match target.interception.server_config(name) {
        Ok(config) => config,
        Err(err) => return deny(err.to_string()),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = acceptor.accept(replayed(hello, stream));
    let tls = match tokio::time::timeout(shared.limits.client_hello_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return deny(format!("TLS handshake with the client failed: {err}")),
        Err(_) => return deny("TLS handshake with the client timed out".to_owned()),
    };
    let mode = Mode::Terminated(Arc::new(target));
    crate::http::serve(
        Arc::clone(shared),
        tls,
        Arc::clone(client),
        None,
        mode,
        origin,
    )
    .await;
}

/// `stream` with `prefix` put back in front of what it will read.
pub(crate) fn replayed(prefix: Vec<u8>, stream: TcpStream) -> impl AsyncRead + AsyncWrite + Unpin {
    let (read, write) = stream.into_split();
    tokio::io::join(std::io::Cursor::new(prefix).chain(read), write)
}

/// Opens TLS to `host` over `stream` (already connected to a checked address), verified
/// against the interception's upstream roots, ALPN `http/1.1`.
pub(crate) async fn connect_upstream(
    interception: &Interception,
    host: &str,
    stream: TcpStream,
    timeout: std::time::Duration,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(interception.upstream_config());
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("TLS handshake timed out".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_replayed_prefix_comes_before_the_socket_and_writes_go_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        far.write_all(b" world").await.unwrap();
        far.shutdown().await.unwrap();
        let mut replay = replayed(b"hello".to_vec(), near);
        let mut out = String::new();
        replay.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        replay.write_all(b"back").await.unwrap();
        replay.shutdown().await.unwrap();
        let mut back = String::new();
        far.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, "back");
    }
}
