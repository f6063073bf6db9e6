//! State shared by every listener of one proxy, and the steps all of them take: find the
//! client, record a decision, resolve a name to the addresses that may be dialled, dial.
//!
//! Invariant: the only addresses ever dialled come out of [`Shared::addresses_for`] (or
//! are a transparent connection's original destination after it was checked against that
//! same function's answer), so "resolve, check, dial exactly what was checked" holds on
//! every path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::audit::{AuditEvent, AuditSink, Kind, Source, Verdict};
use crate::clients::{ClientEntry, ClientTable};
use crate::limits::Limits;
use crate::origdst::{Origin, OriginalDestination};
use crate::policy::{Decision, Host, Policy, SpecialNets};
use crate::resolve::Resolver;

/// Everything a connection handler needs.
pub(crate) struct Shared {
    pub clients: Arc<ClientTable>,
    pub resolver: Resolver,
    pub audit: Arc<dyn AuditSink>,
    pub limits: Limits,
    pub special: SpecialNets,
    pub origdst: Option<Arc<dyn OriginalDestination>>,
    pub pool: Arc<crate::http::UpstreamPool>,
    /// Becomes true when the owning `Proxy` is dropped.
    pub stopped: tokio::sync::watch::Receiver<bool>,
}

/// What a decision event is about.
#[derive(Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub kind: Kind,
    pub host: Option<&'a Host>,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
}

impl<'a> Subject<'a> {
    pub fn new(kind: Kind) -> Self {
        Subject {
            kind,
            host: None,
            ip: None,
            port: None,
            method: None,
            path: None,
            pid: None,
            comm: None,
        }
    }

    /// Names the connecting process, when the original-destination lookup knew it.
    pub fn set_origin(&mut self, origin: Option<&'a Origin>) {
        if let Some(origin) = origin {
            self.pid = origin.pid;
            self.comm = origin.comm.as_deref();
        }
    }
}

/// The event for `decision` about `subject`, from `client` (or an unknown client).
pub(crate) fn event_for(
    client: Option<&ClientEntry>,
    source: Source,
    subject: &Subject<'_>,
    decision: &Decision,
) -> AuditEvent {
    let verdict = if decision.allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    let mut event = match client {
        Some(client) => client.event(source, subject.kind, verdict),
        None => AuditEvent::new(source, subject.kind, verdict),
    };
    match subject.host {
        Some(Host::Name(name)) => event.host = Some(name.clone()),
        Some(Host::Ip(ip)) => event.ip = Some(*ip),
        None => {}
    }
    if subject.ip.is_some() {
        event.ip = subject.ip;
    }
    event.port = subject.port;
    event.method = subject.method.map(str::to_owned);
    event.path = subject.path.map(str::to_owned);
    event.pid = subject.pid;
    event.comm = subject.comm.map(str::to_owned);
    event.reason.clone_from(&decision.reason);
    event.rule.clone_from(&decision.rule);
    event
}

impl Shared {
    /// Records a denial (or any decision) at once.
    pub fn record(&self, client: Option<&ClientEntry>, subject: &Subject<'_>, decision: &Decision) {
        let event = event_for(client, Source::Proxy, subject, decision);
        tracing::info!(
            kind = ?subject.kind,
            host = event.host.as_deref(),
            ip = ?event.ip,
            port = event.port,
            verdict = ?event.verdict,
            reason = event.reason.as_deref(),
            "egress decision"
        );
        self.audit.record(event);
    }

    /// Records that a connection from an address without a registration was refused.
    pub fn record_unknown_client(&self, kind: Kind, peer: SocketAddr) {
        tracing::warn!(%peer, "connection from an unregistered address refused");
        let subject = Subject::new(kind);
        self.record(
            None,
            &subject,
            &Decision::deny(format!("unknown client {}", peer.ip())),
        );
    }

    /// The addresses of `host` the policy lets the proxy dial on `port`, in dial order.
    /// `Err` carries the denial (with the offending address when there is one).
    pub async fn addresses_for(
        &self,
        policy: &Policy,
        host: &Host,
        port: u16,
    ) -> Result<Vec<IpAddr>, (Decision, Option<IpAddr>)> {
        let candidates: Vec<IpAddr> = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => match self.resolver.lookup_ip(name).await {
                Ok(addrs) => addrs.to_vec(),
                Err(err) => return Err((Decision::deny(format!("cannot resolve: {err}")), None)),
            },
        };
        if candidates.is_empty() {
            return Err((Decision::deny("name does not resolve"), None));
        }
        let mut allowed = Vec::with_capacity(candidates.len());
        let mut refused = None;
        for ip in candidates {
            let decision = policy.check_resolved(ip, port, &self.special);
            if decision.allowed {
                allowed.push(ip.to_canonical());
            } else if refused.is_none() {
                refused = Some((decision, Some(ip)));
            }
        }
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(refused),
            (true, None) => Err((Decision::deny("name does not resolve"), None)),
        }
    }

    /// Dials the first address that answers; returns the stream and the address used.
    pub async fn dial(&self, addrs: &[IpAddr], port: u16) -> Result<(TcpStream, IpAddr), String> {
        let mut last = String::from("no address");
        for ip in addrs {
            let target = SocketAddr::new(*ip, port);
            match tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(target))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, *ip));
                }
                Ok(Err(err)) => last = format!("{target}: {err}"),
                Err(_) => last = format!("{target}: connect timed out"),
            }
        }
        Err(last)
    }
}

/// Appends `more` to an event's reason, keeping an audit-mode reason in front.
pub(crate) fn add_reason(reason: &mut Option<String>, more: String) {
    *reason = Some(match reason.take() {
        Some(first) => format!("{first}; {more}"),
        None => more,
    });
}

/// Milliseconds in a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
