//! The gate of an allowed tunnel (CONNECT or transparent TLS): before anything is dialled,
//! the client's first flight is read and, when it is TLS, its SNI must name the host that
//! was decided on; then the destination is dialled, the buffered bytes replayed and the
//! two sockets spliced, and the tunnel's end recorded with its byte counts.
//!
//! Why the order matters: dialling only after the SNI check means a domain-fronting
//! attempt (CONNECT allowed.example, SNI evil.example) never opens a connection to the
//! shared server at all (THREATS.md "name versus address").
//!
//! Plain HTTP inside a tunnel is not spliced: a server behind a shared address picks its
//! tenant from the Host header, so the bytes are handed to the proxy's HTTP code (mode
//! `Tunnel` of `crate::http`), which checks every request's Host against the CONNECT
//! host and port, keep-alive and pipelined requests included. The HTTP/2 cleartext
//! preface is denied: its requests' authority cannot be checked here. Anything that is
//! neither TLS nor HTTP (SSH, SMTP, database protocols) is spliced.
//!
//! A client that stays silent past `client_first_wait` may be waiting for a
//! server-speaks-first protocol: the destination is then dialled and its bytes relayed to
//! the client at once, but the client's direction stays closed until its first bytes
//! arrive and pass exactly the checks above (late TLS or HTTP must not slip through).
//!
//! A tunnel planned for termination (`crate::intercept::plan`) takes the same SNI check
//! and then, instead of dialling, is handed to `crate::intercept::terminate`; such a
//! tunnel must start with a TLS ClientHello naming the host, whatever its port, because
//! its requests must be visible.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::AuditEvent;
use crate::audit::{Kind, Source, Verdict};
use crate::clients::ClientEntry;
use crate::http::{Mode, Tunneled};
use crate::intercept::{replayed, Interception, Terminated};
use crate::limits::Limits;
use crate::origdst::Origin;
use crate::policy::{classify_host, Decision, Host};
use crate::shared::{add_reason, event_for, millis, Shared, Subject};
use crate::tls::{classify_flight, first_flight, FirstFlight, FlightError, FlightLimits};
use crate::tunnel::{splice, SpliceOutcome, Traffic};

/// An allowed tunnel waiting for the client's first flight: checks the SNI against the
/// decided name, then dials, replays and splices, and records the outcome.
pub(crate) struct TunnelGate {
    pub kind: Kind,
    pub host: Host,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
    pub decision: Decision,
    /// Whether the client must speak TLS (CONNECT to port 443).
    pub tls_required: bool,
    /// The connecting process, when the original-destination table knew it.
    pub origin: Option<Origin>,
    /// Terminate TLS with this interception instead of splicing.
    pub intercept: Option<Arc<Interception>>,
}

/// What a checked first flight leads to.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Replay these bytes (a ClientHello naming the host, or neither TLS nor HTTP) and
    /// splice, or terminate TLS.
    Replay(Vec<u8>),
    /// Serve these bytes and the rest of the stream as HTTP, request by request.
    Http(Vec<u8>),
    /// Nothing yet: let the server speak first, then check the client's first bytes.
    ServerFirst,
    /// The client closed without sending anything.
    Closed,
}

/// How the server-first phase ended (see [`relay_until_client_speaks`]).
struct Relayed {
    /// The client's first bytes; empty when it closed or the phase was cut.
    first: Vec<u8>,
    /// Bytes relayed from the destination to the client.
    down: u64,
    /// Why the phase ended without client bytes, when not by the client closing.
    cut: Option<String>,
}

/// One event of the server-first phase.
enum Step {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
}

impl TunnelGate {
    pub async fn run(
        self,
        shared: &Arc<Shared>,
        client: &Arc<ClientEntry>,
        mut stream: TcpStream,
        initial: Vec<u8>,
    ) {
        let start = Instant::now();
        let mut limits = flight_limits(&shared.limits);
        if self.tls_required || self.intercept.is_some() {
            limits.wait = shared.limits.client_hello_timeout;
        }
        let flight = first_flight(&mut stream, initial, &limits).await;
        let next = match self.check(flight) {
            Ok(next) => next,
            Err(reason) => return self.deny(shared, client, reason),
        };
        match next {
            Next::Closed => {
                // Nothing to carry: record the (empty) tunnel without dialling.
                self.open_tunnel(shared, client, None, start).finish(None);
            }
            Next::Http(bytes) => self.serve_http(shared, client, stream, bytes).await,
            Next::Replay(replay) => {
                if let Some(interception) = self.intercept {
                    // Only a ClientHello whose SNI names the host gets here (`check`;
                    // `plan` never terminates a tunnel to an address).
                    let target = Terminated {
                        host: self.host.clone(),
                        port: self.port,
                        addrs: self.addrs,
                        interception,
                    };
                    let (kind, origin) = (self.kind, self.origin);
                    crate::intercept::terminate(
                        shared, client, kind, stream, replay, target, origin,
                    )
                    .await;
                    return;
                }
                let Some((mut server, ip)) = self.dial(shared, client, start).await else {
                    return;
                };
                let open = self.open_tunnel(shared, client, Some(ip), start);
                let total = shared.limits.total_timeout;
                open.carry(&shared.limits, total, &mut stream, &mut server, &replay)
                    .await;
            }
            Next::ServerFirst => self.server_first(shared, client, stream, start).await,
        }
    }

    /// Decides on a first flight: the next step, or the reason to deny.
    fn check(&self, flight: Result<FirstFlight, FlightError>) -> Result<Next, String> {
        let flight = flight.map_err(|err| err.to_string())?;
        let must_be_tls = self.intercept.is_some() || self.tls_required;
        match (flight, &self.host) {
            (FirstFlight::Tls { bytes, info }, Host::Name(name)) => {
                match info.sni.as_deref().map(classify_host) {
                    Some(Ok(Host::Name(sni))) if sni == *name => Ok(Next::Replay(bytes)),
                    Some(_) => {
                        let shown: String =
                            info.sni.unwrap_or_default().chars().take(255).collect();
                        Err(format!("SNI `{shown}` differs from the CONNECT host"))
                    }
                    None => Err("TLS without SNI".to_owned()),
                }
            }
            (FirstFlight::Tls { bytes, .. }, Host::Ip(_)) => Ok(Next::Replay(bytes)),
            (FirstFlight::Closed, _) => Ok(Next::Closed),
            (_, Host::Name(_)) if must_be_tls => Err(if self.intercept.is_some() {
                "no TLS ClientHello on a tunnel whose requests must be visible".to_owned()
            } else {
                "no TLS ClientHello on a port-443 tunnel".to_owned()
            }),
            (FirstFlight::Http2Preface, _) => Err(
                "HTTP/2 cleartext preface in a CONNECT tunnel: its requests' authority \
                 cannot be checked"
                    .to_owned(),
            ),
            (FirstFlight::Http { bytes }, _) => Ok(Next::Http(bytes)),
            (FirstFlight::Other { bytes }, _) => Ok(Next::Replay(bytes)),
            (FirstFlight::Silent, _) => Ok(Next::ServerFirst),
        }
    }

    /// Where events of this tunnel say it went.
    fn subject(&self) -> Subject<'_> {
        let mut subject = Subject::new(self.kind);
        subject.host = Some(&self.host);
        subject.port = Some(self.port);
        subject.set_origin(self.origin.as_ref());
        subject
    }

    fn deny(&self, shared: &Shared, client: &Arc<ClientEntry>, reason: String) {
        shared.record(Some(client), &self.subject(), &Decision::deny(reason));
    }

    /// The end event of this allowed tunnel, to [`OpenTunnel::finish`] once it ends.
    fn open_tunnel(
        &self,
        shared: &Arc<Shared>,
        client: &Arc<ClientEntry>,
        ip: Option<IpAddr>,
        start: Instant,
    ) -> OpenTunnel {
        let mut subject = self.subject();
        subject.ip = ip;
        let event = event_for(Some(client), Source::Proxy, &subject, &self.decision);
        debug_assert_eq!(event.verdict, Verdict::Allow);
        OpenTunnel {
            shared: Arc::clone(shared),
            event: Some(event),
            start,
            traffic: Traffic::default(),
        }
    }

    /// Dials the destination; an unreachable one is recorded and gives `None`.
    async fn dial(
        &self,
        shared: &Shared,
        client: &Arc<ClientEntry>,
        start: Instant,
    ) -> Option<(TcpStream, IpAddr)> {
        match shared.dial(&self.addrs, self.port).await {
            Ok(found) => Some(found),
            Err(err) => {
                let subject = self.subject();
                let mut event = event_for(Some(client), Source::Proxy, &subject, &self.decision);
                add_reason(&mut event.reason, format!("upstream unreachable: {err}"));
                event.duration_ms = Some(millis(start.elapsed()));
                shared.audit.record(event);
                None
            }
        }
    }

    /// Serves plain HTTP inside the tunnel: every request is checked against the CONNECT
    /// host and port and forwarded on its own (`crate::http`, mode `Tunnel`); the events
    /// are the requests'. The enclosing connection holds the client's slot.
    async fn serve_http(
        self,
        shared: &Arc<Shared>,
        client: &Arc<ClientEntry>,
        stream: TcpStream,
        bytes: Vec<u8>,
    ) {
        let target = Tunneled {
            host: self.host,
            port: self.port,
            addrs: self.addrs,
        };
        crate::http::serve(
            Arc::clone(shared),
            replayed(bytes, stream),
            Arc::clone(client),
            None,
            Mode::Tunnel(Arc::new(target)),
            self.origin,
        )
        .await;
    }

    /// The server-speaks-first path: dial, relay the destination's bytes to the client,
    /// and check the client's first bytes, whenever they come, like an early flight.
    async fn server_first(
        self,
        shared: &Arc<Shared>,
        client: &Arc<ClientEntry>,
        mut stream: TcpStream,
        start: Instant,
    ) {
        let Some((mut server, ip)) = self.dial(shared, client, start).await else {
            return;
        };
        let open = self.open_tunnel(shared, client, Some(ip), start);
        let limits = &shared.limits;
        let relayed = match tokio::time::timeout(
            limits.total_timeout,
            relay_until_client_speaks(&mut stream, &mut server, limits.idle_timeout),
        )
        .await
        {
            Ok(relayed) => relayed,
            Err(_) => Relayed {
                first: Vec::new(),
                down: 0,
                cut: Some("total timeout".to_owned()),
            },
        };
        open.traffic
            .down
            .fetch_add(relayed.down, std::sync::atomic::Ordering::Relaxed);
        if relayed.first.is_empty() {
            return open.finish(relayed.cut);
        }
        let flight = classify_flight(&mut stream, relayed.first, &flight_limits(limits)).await;
        match self.check(flight) {
            Err(reason) => {
                open.end_early("the client's first bytes were refused");
                self.deny(shared, client, reason)
            }
            Ok(Next::Http(bytes)) => {
                // Requests are forwarded one by one on connections of their own, and
                // each is recorded.
                drop(server);
                open.end_early("the client's first bytes were an HTTP request, served on its own");
                self.serve_http(shared, client, stream, bytes).await;
            }
            Ok(Next::Replay(replay)) => {
                // The server-first relay already used part of the tunnel's total time.
                let total = limits.total_timeout.saturating_sub(start.elapsed());
                open.carry(limits, total, &mut stream, &mut server, &replay)
                    .await;
            }
            // `classify_flight` never reports silence or a close.
            Ok(Next::ServerFirst | Next::Closed) => {
                open.end_early("no first flight");
                self.deny(shared, client, "no first flight".to_owned());
            }
        }
    }
}

/// The limits of a first flight, from the proxy's.
fn flight_limits(limits: &Limits) -> FlightLimits {
    FlightLimits {
        wait: limits.client_first_wait,
        max_client_hello: limits.max_client_hello,
        hello_timeout: limits.client_hello_timeout,
        max_request_line: limits.max_header_bytes,
        line_timeout: limits.header_timeout,
    }
}

/// The end event of an allowed tunnel (kind connect or tls), with what moved through it.
/// Written by [`OpenTunnel::finish`] when the tunnel ends, or, when it is dropped
/// unfinished, then: the proxy stopped (at the runner's end its tasks are dropped) with
/// the tunnel open, and what went through must still be in the log. A tunnel a job held
/// open until its end used to leave no event at all (found by an attack run).
struct OpenTunnel {
    shared: Arc<Shared>,
    /// The allow event; taken when written.
    event: Option<AuditEvent>,
    start: Instant,
    /// What has moved so far.
    traffic: Traffic,
}

impl OpenTunnel {
    /// Writes the checked first flight to the destination, then splices both ways for at
    /// most `total`, and records the tunnel's end.
    async fn carry(
        self,
        limits: &Limits,
        total: Duration,
        stream: &mut TcpStream,
        server: &mut TcpStream,
        replay: &[u8],
    ) {
        if server.write_all(replay).await.is_err() {
            return self.finish(Some("write to destination failed".to_owned()));
        }
        self.traffic
            .up
            .fetch_add(replay.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let spliced = splice(stream, server, limits.idle_timeout, total, &self.traffic).await;
        self.finish(spliced.cut);
    }

    /// Records the tunnel's end; `cut` says why it ended when not by both sides closing.
    fn finish(mut self, cut: Option<String>) {
        self.record(self.traffic.outcome(cut), None);
    }

    /// Ends the tunnel before the client's first flight went through, because what the
    /// client sent is refused or handled otherwise (recorded by those paths). When the
    /// destination already sent bytes (a server that speaks first), the tunnel's event is
    /// written with them and `why`; otherwise it is dropped unwritten. (Dropping it always
    /// let a job receive any amount from a server-first destination unrecorded: found by
    /// an attack run.)
    fn end_early(mut self, why: &str) {
        let outcome = self.traffic.outcome(None);
        if outcome.up == 0 && outcome.down == 0 {
            self.event = None;
        } else {
            self.record(outcome, Some(why));
        }
    }

    fn record(&mut self, outcome: SpliceOutcome, note: Option<&str>) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.bytes_up = Some(outcome.up);
        event.bytes_down = Some(outcome.down);
        event.duration_ms = Some(millis(self.start.elapsed()));
        if let Some(note) = note {
            add_reason(&mut event.reason, note.to_owned());
        }
        tracing::info!(
            host = event.host.as_deref(), ip = ?event.ip, port = event.port, up = outcome.up,
            down = outcome.down, cut = outcome.cut.as_deref(), "tunnel closed"
        );
        self.shared.audit.record(event);
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        let outcome = self.traffic.outcome(None);
        self.record(outcome, Some("still open when the proxy stopped"));
    }
}

/// Relays the destination's bytes to the client until the client sends its first bytes
/// (returned unread by the destination), closes, or nothing moves for `idle`. The
/// destination's end of stream is passed on as a half-close.
async fn relay_until_client_speaks(
    stream: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
) -> Relayed {
    let mut relayed = Relayed {
        first: Vec::new(),
        down: 0,
        cut: None,
    };
    let mut server_open = true;
    let mut from_client = [0u8; 4096];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                read = stream.read(&mut from_client) => Step::Client(read),
                read = server.read(&mut from_server), if server_open => Step::Server(read),
            }
        })
        .await;
        let failed = match step {
            Err(_) => "idle timeout".to_owned(),
            Ok(Step::Client(Ok(n))) => {
                relayed.first = from_client[..n].to_vec();
                return relayed;
            }
            Ok(Step::Server(Ok(0))) => {
                server_open = false;
                match stream.shutdown().await {
                    Ok(()) => continue,
                    Err(err) => err.to_string(),
                }
            }
            Ok(Step::Server(Ok(n))) => match stream.write_all(&from_server[..n]).await {
                Ok(()) => {
                    relayed.down += n as u64;
                    continue;
                }
                Err(err) => err.to_string(),
            },
            Ok(Step::Client(Err(err)) | Step::Server(Err(err))) => err.to_string(),
        };
        relayed.cut = Some(failed);
        return relayed;
    }
}

#[cfg(test)]
mod tests;
