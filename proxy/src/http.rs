//! The explicit HTTP proxy (absolute-form requests and CONNECT) and the transparent plain
//! HTTP listener, on top of hyper's HTTP/1.1 server and client.
//!
//! Every request on a keep-alive connection is decided on its own (THREATS.md "several
//! requests on one keep-alive connection with different targets"): the decision, the
//! resolution and the choice of upstream connection are made per request, and an upstream
//! connection is only reused for the same name, port and address.
//!
//! Request framing is hyper's: it refuses conflicting Content-Length headers, and when
//! Transfer-Encoding and Content-Length are both present it follows RFC 9112 section 6.3
//! (chunked wins, Content-Length is removed) and re-frames the body toward the upstream,
//! so a smuggled request can only ever be read as a *next request*, which is then checked
//! like any other. Heads larger than the limit, too many headers, or heads that do not
//! arrive in time close that connection; a parse error is recorded as a denial.
//!
//! Decisions:
//! - explicit: the target is the absolute URI's authority (`http` only; `https` URIs must
//!   use CONNECT); a Host header that names anything else is refused rather than guessed;
//! - transparent: the target is the Host header, the port and address are the original
//!   destination's, and that address must be one the proxy itself resolved for the name;
//! - CONNECT: the authority is decided, the tunnel is opened only after the client's
//!   ClientHello shows an SNI equal to the CONNECT host (port 443 requires TLS; other
//!   ports check the SNI when the client speaks TLS; see `crate::gate`); a tunnel whose
//!   client speaks plain HTTP is served here (mode `Tunnel`): each request's Host (and
//!   absolute URI authority) must name exactly the CONNECT host and port, a request
//!   naming anything else is denied and ends the tunnel;
//! - terminated TLS (`crate::intercept`): the connection was decided for one host and
//!   port; each request's Host (or absolute URI authority) must name exactly them, the
//!   policy sees method and path, and the upstream is a TLS connection to an address
//!   checked when the connection was decided (no new resolution).
//!
//! Upstream connections are kept for keep-alive: by the client connection that used one
//! last, then, when that connection ends, in an [`UpstreamPool`] bounded in entries (per
//! key and in all, least recently used evicted first) and in idle time, because the
//! connections it holds cost the proxy, not the job that left them.
//!
//! The same [`forward`] serves all four request paths (explicit, transparent,
//! terminated, tunnelled), so the checks, the credential injection of `crate::intercept` and the
//! audit events cannot drift apart between them.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::audit::{Kind, Source, Verdict};
use crate::body::{Counted, EndEvent};
use crate::clients::{ClientEntry, ConnSlot};
use crate::framing::{Recorder, Tail};
use crate::gate::TunnelGate;
use crate::intercept::{scrub, Terminated};
use crate::limits::Limits;
use crate::origdst::Origin;
use crate::policy::name::split_authority;
use crate::policy::{classify_host, Decision, Host, HttpView};
use crate::shared::{add_reason, event_for, millis, Shared, Subject};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Which listener a connection came in on.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Explicit forward proxy.
    Explicit,
    /// Transparent plain HTTP; the client was headed for `original`.
    Transparent {
        /// The destination the client asked for.
        original: SocketAddr,
    },
    /// Requests inside TLS the proxy terminated.
    Terminated(Arc<Terminated>),
    /// Plain HTTP inside a CONNECT tunnel (`crate::gate`).
    Tunnel(Arc<Tunneled>),
}

impl Mode {
    /// The subject of an event about a whole connection of this mode: what it was decided
    /// for (the address the client dialled, the TLS server name, or the tunnel's host, and
    /// the port; nothing for the explicit proxy, whose connections name none until a
    /// request does) and the connecting process.
    fn connection_subject<'a>(&'a self, origin: Option<&'a Origin>) -> Subject<'a> {
        let mut subject = Subject::new(Kind::Http);
        self.name_target(&mut subject);
        subject.set_origin(origin);
        subject
    }

    /// Names in `subject` what a connection of this mode was decided for (see
    /// [`Mode::connection_subject`]).
    fn name_target<'a>(&'a self, subject: &mut Subject<'a>) {
        match self {
            Mode::Explicit => {}
            Mode::Transparent { original } => {
                subject.ip = Some(original.ip().to_canonical());
                subject.port = Some(original.port());
            }
            Mode::Terminated(target) => {
                subject.host = Some(&target.host);
                subject.port = Some(target.port);
            }
            Mode::Tunnel(target) => {
                subject.host = Some(&target.host);
                subject.port = Some(target.port);
            }
        }
    }
}

/// What a CONNECT tunnel that carries plain HTTP was decided for: every request inside
/// must name exactly this host and port (a shared address serves other tenants under
/// other names), and upstream connections go only to `addrs`, checked at CONNECT time.
#[derive(Debug)]
pub(crate) struct Tunneled {
    /// The CONNECT host.
    pub host: Host,
    /// The CONNECT port.
    pub port: u16,
    /// The addresses already checked for host and port.
    pub addrs: Vec<IpAddr>,
}

impl Mode {
    /// Whether upstream connections are TLS.
    fn tls(&self) -> bool {
        matches!(self, Mode::Terminated(_))
    }
}

struct Upstream {
    key: UpstreamKey,
    sender: SendRequest<ProxyBody>,
}

/// (name, port, address, TLS): a pooled connection is reused only for the same four, so
/// a plain connection is never reused for a request meant for TLS (or the reverse).
type UpstreamKey = (String, u16, IpAddr, bool);

/// Idle upstream connections kept for reuse (HTTP keep-alive). An entry is taken only by
/// the client that left it, so a connection opened for one runner is never reused for
/// another, and only for the same (name, port, address, TLS), so a reused connection goes
/// exactly where a new one would.
///
/// Bounded, because what it holds is the proxy's, not the job's: a job that opens many
/// names times many connections and then closes its sockets holds nothing, while every
/// upstream connection left here costs the proxy a descriptor and some 17 KB outside the
/// job's cgroup. So it keeps at most `max` entries in all and `per_key` per key, evicts
/// (closes) the least recently used one to make room, and closes any left unused for
/// `idle_timeout` ([`UpstreamPool::expire`]). A few dozen serve keep-alive well: a busy
/// client connection keeps its upstream connection itself (`Conn::upstream`), and the pool
/// only hands it on from one client connection to the next. At that size linear scans
/// are cheap, and they keep the least-recently-used order a plain queue.
pub(crate) struct UpstreamPool {
    /// Least recently used first.
    idle: std::sync::Mutex<VecDeque<Idle>>,
    max: usize,
    per_key: usize,
    idle_timeout: Duration,
}

/// One idle connection: whose, to where, and since when.
struct Idle {
    client: u64,
    key: UpstreamKey,
    sender: SendRequest<ProxyBody>,
    since: tokio::time::Instant,
}

impl Idle {
    fn leads_to(&self, client: u64, (host, port, tls): (&str, u16, bool), ip: IpAddr) -> bool {
        let (h, p, i, t) = &self.key;
        self.client == client && h == host && *p == port && *i == ip && *t == tls
    }
}

impl UpstreamPool {
    /// An empty pool with the bounds of `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        UpstreamPool {
            idle: std::sync::Mutex::new(VecDeque::new()),
            max: limits.max_idle_upstream,
            per_key: limits.max_idle_upstream_per_key,
            idle_timeout: limits.upstream_idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the entries that are closed or were idle for the timeout. Dropping the last
    /// `SendRequest` of a connection ends hyper's connection task, which closes the socket.
    fn drop_stale(&self, idle: &mut VecDeque<Idle>, now: tokio::time::Instant) {
        idle.retain(|e| {
            !e.sender.is_closed() && now.saturating_duration_since(e.since) < self.idle_timeout
        });
    }

    /// An idle connection of `client` to (host, port, address, TLS), trying `addrs` in
    /// order; returns it with its address.
    fn take(
        &self,
        client: u64,
        target: (&str, u16, bool),
        addrs: &[IpAddr],
    ) -> Option<(SendRequest<ProxyBody>, IpAddr)> {
        let mut idle = self.lock();
        self.drop_stale(&mut idle, tokio::time::Instant::now());
        for &ip in addrs {
            // Most recent first: the least likely to have been closed by the server.
            while let Some(at) = idle.iter().rposition(|e| e.leads_to(client, target, ip)) {
                let Some(entry) = idle.remove(at) else { break };
                if entry.sender.is_ready() {
                    return Some((entry.sender, ip));
                }
                // Still busy (its client left during a response) or closing: let it go.
            }
        }
        None
    }

    /// Keeps `upstream` for reuse by `client`, making room by closing the least recently
    /// used connection of the same key, or of any key when the pool is full.
    fn put(&self, client: u64, upstream: Upstream) {
        if upstream.sender.is_closed() || self.max == 0 || self.per_key == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut idle = self.lock();
        self.drop_stale(&mut idle, now);
        let same = |e: &Idle| e.client == client && e.key == upstream.key;
        if idle.iter().filter(|e| same(e)).count() >= self.per_key {
            if let Some(oldest) = idle.iter().position(same) {
                idle.remove(oldest);
            }
        }
        if idle.len() >= self.max {
            idle.pop_front();
        }
        idle.push_back(Idle {
            client,
            key: upstream.key,
            sender: upstream.sender,
            since: now,
        });
    }

    /// Closes connections idle for the timeout even when nobody uses the pool any more;
    /// runs until aborted (with the proxy).
    pub(crate) async fn expire(pool: Arc<Self>) {
        // An entry lives at most a quarter longer than the timeout.
        let period = (pool.idle_timeout / 4).max(Duration::from_millis(50));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut idle = pool.lock();
            pool.drop_stale(&mut idle, tokio::time::Instant::now());
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One client connection.
struct Conn {
    shared: Arc<Shared>,
    client: Arc<ClientEntry>,
    mode: Mode,
    tail: Tail,
    /// The connecting process, when the original-destination lookup knew it.
    origin: Option<Origin>,
    upstream: Mutex<Option<Upstream>>,
    /// The client's connection slot; `None` when an enclosing connection holds it
    /// (terminated TLS inside a tunnel).
    _slot: Option<ConnSlot>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(upstream) = self.upstream.get_mut().take() {
            self.shared.pool.put(self.client.id, upstream);
        }
    }
}

/// A transparent connection still waiting for its first request when the proxy stops:
/// the task serving it is dropped mid-await, so the code that records how it ended never
/// runs. It is an attempt to reach its original destination like one that closed before
/// a request, and is recorded on drop instead of vanishing from the log (an attack run
/// found a share of its slow connections, closed as the job ended, in no event).
struct UnservedAtStop {
    /// Set while the outcome is still unknown, for transparent connections only (an
    /// explicit proxy connection names no destination until it sends a request).
    armed: bool,
    shared: Arc<Shared>,
    client: Arc<ClientEntry>,
    mode: Mode,
    origin: Option<Origin>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for UnservedAtStop {
    fn drop(&mut self) {
        if !self.armed || self.requests.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return;
        }
        let subject = self.mode.connection_subject(self.origin.as_ref());
        self.shared.record(
            Some(&self.client),
            &subject,
            &Decision::deny("no request: the connection was still open when the proxy stopped"),
        );
    }
}

/// Serves one accepted connection until it closes or a limit is hit.
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    client: Arc<ClientEntry>,
    slot: Option<ConnSlot>,
    mode: Mode,
    origin: Option<Origin>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits.clone();
    let tail = Tail::new(limits.max_header_bytes.max(8192) * 2);
    let conn = Arc::new(Conn {
        shared: Arc::clone(&shared),
        client: Arc::clone(&client),
        mode: mode.clone(),
        tail: tail.clone(),
        origin,
        upstream: Mutex::new(None),
        _slot: slot,
    });
    // Whether any request was read: a transparent connection that ends before one (the
    // job connected and sent nothing, or something that is not HTTP) is still an attempt
    // to reach its original destination, and is recorded as such.
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let origin = conn.origin.clone();
    let mut unserved = UnservedAtStop {
        armed: !matches!(mode, Mode::Explicit),
        shared: Arc::clone(&shared),
        client: Arc::clone(&client),
        mode: mode.clone(),
        origin: origin.clone(),
        requests: Arc::clone(&requests),
    };
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let served = builder
        .serve_connection(TokioIo::new(Recorder::new(stream, tail)), service)
        .with_upgrades();
    let outcome = tokio::time::timeout(limits.total_timeout, served)
        .await
        // Closing our side after the client left first can fail (a TLS close_notify to a
        // closed socket): the connection ended normally all the same.
        .map(|served| served.or_else(|err| if err.is_shutdown() { Ok(()) } else { Err(err) }));
    // From here on the outcome is recorded below.
    unserved.armed = false;
    let no_request = requests.load(std::sync::atomic::Ordering::Relaxed) == 0;
    // Where the connection was headed, for events about the connection as a whole.
    let subject = mode.connection_subject(origin.as_ref());
    // A transparent or terminated connection is an attempt to reach one destination even
    // when no request came; an explicit proxy connection names none until it sends one.
    let transparent = !matches!(mode, Mode::Explicit);
    match outcome {
        Ok(Ok(())) if transparent && no_request => shared.record(
            Some(&client),
            &subject,
            &Decision::deny("connection closed before a request"),
        ),
        Ok(Ok(())) => {}
        Ok(Err(err)) if err.is_parse() || err.is_parse_too_large() || err.is_parse_status() => {
            shared.record(
                Some(&client),
                &subject,
                &Decision::deny(format!("malformed request: {err}")),
            );
        }
        Ok(Err(err)) if transparent && no_request => shared.record(
            Some(&client),
            &subject,
            &Decision::deny(format!("no request: {err}")),
        ),
        Ok(Err(err)) => tracing::debug!(error = %err, "client connection ended"),
        Err(_) if transparent && no_request => shared.record(
            Some(&client),
            &subject,
            &Decision::deny("no request within the time limit"),
        ),
        Err(_) => tracing::info!("connection closed: total time limit"),
    }
}

/// Takes the policy's `decision` on `host:port` and resolves the addresses to dial;
/// returns the allowing decision (it names the rule) with them. A denial, by the policy
/// or by the address checks, is recorded and returned as the response to send.
async fn admit<'a>(
    shared: &Shared,
    client: &ClientEntry,
    subject: &mut Subject<'a>,
    (host, port): (&'a Host, u16),
    decision: Decision,
) -> Result<(Decision, Vec<IpAddr>), Response<ProxyBody>> {
    if let Some(response) = refusal(shared, client, subject, (host, port), &decision) {
        return Err(response);
    }
    let addrs = resolve(shared, client, subject, (host, port)).await?;
    Ok((decision, addrs))
}

/// Names `host:port` in `subject`; when `decision` is a denial, records it and returns
/// the response to send.
fn refusal<'a>(
    shared: &Shared,
    client: &ClientEntry,
    subject: &mut Subject<'a>,
    (host, port): (&'a Host, u16),
    decision: &Decision,
) -> Option<Response<ProxyBody>> {
    subject.host = Some(host);
    subject.port = Some(port);
    if decision.allowed {
        return None;
    }
    shared.record(Some(client), subject, decision);
    Some(denied(decision))
}

/// The addresses of `host` the policy lets the proxy dial on `port`; a denial by the
/// address checks is recorded and returned as the response to send.
async fn resolve(
    shared: &Shared,
    client: &ClientEntry,
    subject: &mut Subject<'_>,
    (host, port): (&Host, u16),
) -> Result<Vec<IpAddr>, Response<ProxyBody>> {
    shared
        .addresses_for(&client.policy, host, port)
        .await
        .map_err(|(denial, ip)| {
            subject.ip = ip;
            shared.record(Some(client), subject, &denial);
            denied(&denial)
        })
}

fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn denied(decision: &Decision) -> Response<ProxyBody> {
    text(
        StatusCode::FORBIDDEN,
        format!(
            "egress-proxy: denied: {}",
            decision.reason.as_deref().unwrap_or("not allowed")
        ),
    )
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        let reason = match conn.mode {
            Mode::Explicit => return connect(conn, req).await,
            Mode::Transparent { .. } => "CONNECT on the transparent listener",
            Mode::Terminated(_) => "CONNECT inside terminated TLS",
            Mode::Tunnel(_) => "CONNECT inside a CONNECT tunnel",
        };
        // The event names the connection it came on; the method and the reason say what
        // was asked for through it (an attack run found it recorded as nothing but that).
        let asked = req.uri().authority().map_or("", |a| a.as_str());
        let decision = Decision::deny(format!("{reason} (to `{asked}`)"));
        let mut subject = conn.mode.connection_subject(conn.origin.as_ref());
        subject.method = Some("CONNECT");
        conn.shared.record(Some(&conn.client), &subject, &decision);
        return denied(&decision);
    }
    forward(conn, req).await
}

/// The target of a plain request: host, port, and the original address if transparent.
pub(crate) fn http_target(
    mode: &Mode,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Host, u16), String> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header".to_owned());
    }
    let parse = |authority: &str| -> Result<(Host, Option<u16>), String> {
        let (host, port) =
            split_authority(authority).ok_or_else(|| format!("bad authority `{authority}`"))?;
        let host = classify_host(host).map_err(|e| e.to_string())?;
        Ok((host, port))
    };
    let from_header = match host_header {
        Some(value) => Some(parse(
            value
                .to_str()
                .map_err(|_| "Host header is not text".to_owned())?,
        )?),
        None => None,
    };
    match mode {
        Mode::Explicit => {
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => return Err("https requests must use CONNECT".to_owned()),
                Some(other) => return Err(format!("scheme `{other}` is not proxied")),
                None => return Err("request target is not in absolute form".to_owned()),
            }
            let authority = uri
                .authority()
                .ok_or_else(|| "request target has no authority".to_owned())?;
            if authority.as_str().contains('@') {
                return Err("credentials in the request target".to_owned());
            }
            let (host, port) = parse(authority.as_str())?;
            let port = port.unwrap_or(80);
            if let Some((h, p)) = from_header {
                if h != host || p.unwrap_or(80) != port {
                    return Err("Host header differs from the request target".to_owned());
                }
            }
            Ok((host, port))
        }
        Mode::Transparent { original } => {
            let (host, port) = origin_form_target(uri, from_header, parse)?;
            if port.is_some_and(|p| p != original.port()) {
                return Err("Host port differs from the original destination".to_owned());
            }
            Ok((host, original.port()))
        }
        Mode::Terminated(target) => {
            let (host, port) = origin_form_target(uri, from_header, parse)?;
            // Domain fronting: the TLS server name was decided, the request must not
            // name another host (or port) behind it.
            if host != target.host || port.is_some_and(|p| p != target.port) {
                let asked = port.map_or_else(|| host.to_string(), |p| format!("{host}:{p}"));
                return Err(format!("Host `{asked}` differs from the TLS server name"));
            }
            Ok((host, target.port))
        }
        Mode::Tunnel(target) => {
            let (host, port) = origin_form_target(uri, from_header, parse)?;
            tunnel_target(target, host, port)
        }
    }
}

/// Checks a request inside a CONNECT tunnel against the tunnel's host and port. Strict
/// on the port: a Host (or absolute URI) without one means 80, the `http` default (RFC
/// 9110 section 4.2.1), so a tunnel to another port needs the port spelled out, as
/// clients do for non-default ports.
fn tunnel_target(target: &Tunneled, host: Host, port: Option<u16>) -> Result<(Host, u16), String> {
    if host != target.host {
        return Err(format!("Host `{host}` differs from the CONNECT host"));
    }
    let port = port.unwrap_or(80);
    if port != target.port {
        return Err(format!("Host port {port} differs from the CONNECT port"));
    }
    Ok((host, port))
}

/// The target of a request to a known destination: the Host header, or the request
/// target's authority; both, when present, must agree.
fn origin_form_target(
    uri: &Uri,
    from_header: Option<(Host, Option<u16>)>,
    parse: impl Fn(&str) -> Result<(Host, Option<u16>), String>,
) -> Result<(Host, Option<u16>), String> {
    match (uri.authority(), from_header) {
        (Some(authority), Some(from_header)) => {
            let from_uri = parse(authority.as_str())?;
            if from_uri != from_header {
                return Err("Host header differs from the request target".to_owned());
            }
            Ok(from_header)
        }
        (None, Some(from_header)) => Ok(from_header),
        (Some(authority), None) => parse(authority.as_str()),
        (None, None) => Err("no Host header".to_owned()),
    }
}

/// The hop-by-hop headers (RFC 9110 section 7.6.1, with the legacy `Proxy-Connection`
/// and `Keep-Alive`): removed from every forwarded request and response, so a credential
/// may not set one of them (`crate::intercept`).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers ([`HOP_BY_HOP`]) and the ones a Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

async fn forward(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let shared = Arc::clone(&conn.shared);
    let client = Arc::clone(&conn.client);
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let mut subject = Subject::new(Kind::Http);
    subject.method = Some(&method);
    subject.path = Some(&path);
    subject.set_origin(conn.origin.as_ref());
    // A request refused before its own target is known names what its connection was
    // decided for.
    conn.mode.name_target(&mut subject);
    if req.headers().contains_key(header::TRANSFER_ENCODING) && conn.tail.take_conflict() {
        // RFC 9112 section 6.1: reject rather than guess; see crate::framing.
        let decision = Decision::deny("both Content-Length and Transfer-Encoding");
        shared.record(Some(&client), &subject, &decision);
        let mut response = denied(&decision);
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let (host, port) = match http_target(&conn.mode, req.uri(), req.headers()) {
        Ok(target) => target,
        Err(reason) => {
            let decision = Decision::deny(reason);
            shared.record(Some(&client), &subject, &decision);
            let mut response = denied(&decision);
            if matches!(conn.mode, Mode::Tunnel(_)) {
                // The tunnel was decided for one host: one request naming another ends
                // it, so nothing pipelined behind it is read.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }
    };
    let view = HttpView {
        method: &method,
        path: &path,
        overrides: crate::policy::asks_for_another_method_or_path(
            req.headers().keys().map(|name| name.as_str()),
            &path,
        ),
    };
    let decision = client.policy.check(&host, port, Some(view));
    if let Some(response) = refusal(&shared, &client, &mut subject, (&host, port), &decision) {
        return response;
    }
    // Port 443 is TLS only, as for CONNECT and the transparent listeners: a plain request
    // there would carry a bound credential in clear text to a port the operator allowed
    // for HTTPS.
    if port == 443 && !conn.mode.tls() {
        let decision = Decision::deny("plain HTTP to port 443, which takes TLS only");
        shared.record(Some(&client), &subject, &decision);
        return denied(&decision);
    }
    let addrs: Cow<'_, [IpAddr]> = match &conn.mode {
        // Checked when the connection was decided: no new resolution.
        Mode::Terminated(target) => Cow::Borrowed(&target.addrs),
        Mode::Tunnel(target) => Cow::Borrowed(&target.addrs),
        Mode::Explicit => match resolve(&shared, &client, &mut subject, (&host, port)).await {
            Ok(addrs) => Cow::Owned(addrs),
            Err(response) => return response,
        },
        Mode::Transparent { original } => {
            let addrs = match resolve(&shared, &client, &mut subject, (&host, port)).await {
                Ok(addrs) => addrs,
                Err(response) => return response,
            };
            let wanted = original.ip().to_canonical();
            if !addrs.contains(&wanted) {
                subject.ip = Some(wanted);
                let decision = Decision::deny("destination address is not an address of the name");
                shared.record(Some(&client), &subject, &decision);
                return denied(&decision);
            }
            Cow::Owned(vec![wanted])
        }
    };
    let host_text = host.to_string();
    let (sender, ip) = match upstream(&conn, &host_text, port, &addrs).await {
        Ok(found) => found,
        Err(UpstreamError::Unreachable(err)) => {
            let mut event = event_for(Some(&client), Source::Proxy, &subject, &decision);
            add_reason(&mut event.reason, format!("upstream unreachable: {err}"));
            event.duration_ms = Some(millis(start.elapsed()));
            shared.audit.record(event);
            return text(StatusCode::BAD_GATEWAY, format!("egress-proxy: {err}"));
        }
        Err(UpstreamError::Tls(ip, err)) => {
            // Fail closed: an upstream that cannot prove it is `host` gets nothing, and
            // the client connection ends with this answer.
            subject.ip = Some(ip);
            let decision = Decision::deny(format!("upstream TLS failed: {err}"));
            shared.record(Some(&client), &subject, &decision);
            let mut response = text(
                StatusCode::BAD_GATEWAY,
                format!("egress-proxy: denied: upstream TLS failed: {err}"),
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    subject.ip = Some(ip);
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut end = EndEvent {
        event: event_for(Some(&client), Source::Proxy, &subject, &decision),
        up: Arc::clone(&up),
        down: Arc::clone(&down),
        start,
        sink: Arc::clone(&shared.audit),
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // What the response is scrubbed of: set when a credential went into the request.
    let mut scrubber = None;
    if let Some(interception) = &client.interception {
        // After the hop-by-hop strip, so a `Connection: authorization` trick cannot
        // remove the injected header again. The event names the credential, never its
        // value.
        if let Some(bound) = interception.bound(&host) {
            let added = bound.inject(&mut parts.headers);
            for name in &added {
                add_reason(&mut end.event.reason, format!("credential {name} added"));
            }
            if !added.is_empty() {
                scrubber = Some(bound.scrubber.clone());
                scrub::request_scrubbable(&mut parts.headers);
            }
        }
    }
    let default_port = if conn.mode.tls() { 443 } else { 80 };
    let authority = match (&host, port) {
        (Host::Ip(IpAddr::V6(v6)), p) if p == default_port => format!("[{v6}]"),
        (Host::Ip(IpAddr::V6(v6)), p) => format!("[{v6}]:{p}"),
        (h, p) if p == default_port => h.to_string(),
        (h, p) => format!("{h}:{p}"),
    };
    if let Ok(value) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, value);
    }
    parts.uri = match Uri::builder().path_and_query(path.as_str()).build() {
        Ok(uri) => uri,
        Err(_) => Uri::from_static("/"),
    };
    parts.version = http::Version::HTTP_11;
    let outgoing = Request::from_parts(parts, Counted::new(body, up, None).boxed());
    let mut sender = sender;
    match sender.send_request(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            // Responses to HEAD, 204 and 304 have no body (RFC 9110 sections 9.3.2, 15.3.5,
            // 15.4.5): their coding does not matter, their headers are scrubbed below.
            let bodiless = method == "HEAD"
                || matches!(
                    parts.status,
                    StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
                );
            let unreadable = match &scrubber {
                Some(_) if !bodiless => scrub::unreadable_coding(&parts.headers),
                _ => None,
            };
            if let Some(reason) = unreadable {
                // Fail closed: a body that cannot be scrubbed is not passed. The upstream
                // connection is dropped with its unread body, never reused.
                let mut end = end;
                end.event.verdict = Verdict::Deny;
                end.event.rule = None;
                add_reason(&mut end.event.reason, reason.clone());
                drop(end);
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("egress-proxy: denied: {reason}"),
                );
            }
            strip_hop_by_hop(&mut parts.headers);
            if let Some(scrubber) = &scrubber {
                for name in scrubber.headers(&mut parts.headers) {
                    add_reason(
                        &mut end.event.reason,
                        format!("credential {name} scrubbed from the response headers"),
                    );
                }
                // hyper passes an unusual reason phrase on to the client (hyper::ext):
                // it is upstream text too, and the canonical one says as much.
                parts.extensions.remove::<hyper::ext::ReasonPhrase>();
            }
            let previous = conn.upstream.lock().await.replace(Upstream {
                key: (host_text, port, ip, conn.mode.tls()),
                sender,
            });
            if let Some(previous) = previous {
                conn.shared.pool.put(conn.client.id, previous);
            }
            let body = Counted::new(body, down, Some(end)).scrubbed(scrubber.map(|s| s.body()));
            Response::from_parts(parts, body.boxed())
        }
        Err(err) => {
            let mut end = end;
            add_reason(&mut end.event.reason, format!("upstream failed: {err}"));
            drop(end);
            text(
                StatusCode::BAD_GATEWAY,
                format!("egress-proxy: upstream failed: {err}"),
            )
        }
    }
}

/// Why no upstream connection could be had.
enum UpstreamError {
    /// No address answered, or HTTP could not start.
    Unreachable(String),
    /// The TLS handshake with this address failed (terminated TLS only).
    Tls(IpAddr, String),
}

/// An upstream connection for (host, port) on one of `addrs`: the connection's cached one
/// when it matches and is usable, else a new one (TLS in terminated mode).
async fn upstream(
    conn: &Conn,
    host: &str,
    port: u16,
    addrs: &[IpAddr],
) -> Result<(SendRequest<ProxyBody>, IpAddr), UpstreamError> {
    let tls = conn.mode.tls();
    if let Some(cached) = conn.upstream.lock().await.take() {
        let (h, p, ip, t) = &cached.key;
        if h == host && *p == port && *t == tls && addrs.contains(ip) && !cached.sender.is_closed()
        {
            let ip = *ip;
            let mut sender = cached.sender;
            if sender.ready().await.is_ok() {
                return Ok((sender, ip));
            }
        } else {
            conn.shared.pool.put(conn.client.id, cached);
        }
    }
    if let Some(found) = conn
        .shared
        .pool
        .take(conn.client.id, (host, port, tls), addrs)
    {
        return Ok(found);
    }
    let (stream, ip) = conn
        .shared
        .dial(addrs, port)
        .await
        .map_err(UpstreamError::Unreachable)?;
    let sender = match &conn.mode {
        Mode::Terminated(target) => {
            let timeout = conn.shared.limits.connect_timeout;
            let stream =
                crate::intercept::connect_upstream(&target.interception, host, stream, timeout)
                    .await
                    .map_err(|err| UpstreamError::Tls(ip, err))?;
            http1_client(stream).await
        }
        _ => http1_client(stream).await,
    };
    Ok((sender.map_err(UpstreamError::Unreachable)?, ip))
}

/// Starts HTTP/1.1 on an upstream connection; the connection task runs until it closes.
async fn http1_client<S>(stream: S) -> Result<SendRequest<ProxyBody>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "upstream connection ended");
        }
    });
    Ok(sender)
}

async fn connect(conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let shared = Arc::clone(&conn.shared);
    let client = Arc::clone(&conn.client);
    let mut subject = Subject::new(Kind::Connect);
    subject.set_origin(conn.origin.as_ref());
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    // The reason quotes what was asked for, as a bad authority of a request does: the
    // event has no host or port to say it otherwise.
    let target = authority
        .as_deref()
        .and_then(split_authority)
        .ok_or_else(|| {
            format!(
                "CONNECT target `{}` is not host:port",
                authority.as_deref().unwrap_or_default()
            )
        })
        .and_then(|(host, port)| {
            let port = port.ok_or_else(|| "CONNECT target has no port".to_owned())?;
            let host = classify_host(host).map_err(|e| e.to_string())?;
            Ok((host, port))
        });
    let (host, port) = match target {
        Ok(target) => target,
        Err(reason) => {
            let decision = Decision::deny(reason);
            shared.record(Some(&client), &subject, &decision);
            return denied(&decision);
        }
    };
    // With an interception, some tunnels are terminated instead of spliced, and their
    // decision waits for each request (crate::intercept::plan).
    let (decision, intercept) = crate::intercept::plan(&client, &host, port);
    let (decision, addrs) =
        match admit(&shared, &client, &mut subject, (&host, port), decision).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    let gate = TunnelGate {
        kind: Kind::Connect,
        host,
        port,
        addrs,
        decision,
        tls_required: port == 443,
        origin: conn.origin.clone(),
        intercept,
    };
    spawn_tunnel(conn, hyper::upgrade::on(&mut req), gate);
    Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Runs an allowed CONNECT tunnel once the client's connection is handed over.
///
/// A plain function, not part of `connect`'s future: the tunnel may terminate TLS and
/// serve HTTP again (`crate::intercept`), which leads back to `connect`, and the
/// compiler can only prove such a cycle `Send` when the spawn sits outside it.
fn spawn_tunnel(conn: Arc<Conn>, on_upgrade: hyper::upgrade::OnUpgrade, gate: TunnelGate) {
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "CONNECT upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<Recorder<TcpStream>>>() else {
            tracing::error!("CONNECT upgrade is not a TCP stream");
            return;
        };
        let stream = parts.io.into_inner().inner;
        // Tunnels outlive the HTTP connection task that opened them, so they watch the
        // proxy's stop signal themselves: a dropped Proxy leaves no tunnel open.
        let mut stopped = conn.shared.stopped.clone();
        tokio::select! {
            () = gate.run(&conn.shared, &conn.client, stream, parts.read_buf.to_vec()) => {}
            _ = stopped.wait_for(|stop| *stop) => {}
        }
    });
}

#[cfg(test)]
mod stop_tests;
#[cfg(test)]
mod tests;
