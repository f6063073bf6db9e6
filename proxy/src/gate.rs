//! The gate of an allowed tunnel (CONNECT or transparent TLS): before anything is dialled,
//! the client's first flight is read and, when it is TLS, its SNI must name the host that
//! was decided on; then the destination is dialled, the buffered bytes replayed and the
//! two sockets spliced, and the tunnel's end recorded with its byte counts.
//!
//! Why the order matters: dialling only after the SNI check means a domain-fronting
//! attempt (CONNECT allowed.example, SNI evil.example) never opens a connection to the
//! shared server at all (THREATS.md "name versus address").
//!
//! A tunnel planned for termination (`crate::intercept::plan`) takes the same SNI check
//! and then, instead of dialling, is handed to `crate::intercept::terminate`; such a
//! tunnel must start with a TLS ClientHello naming the host, whatever its port, because
//! its requests must be visible.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::audit::{Kind, Source, Verdict};
use crate::clients::ClientEntry;
use crate::intercept::{Interception, Terminated};
use crate::origdst::Origin;
use crate::policy::{classify_host, Decision, Host};
use crate::shared::{add_reason, event_for, millis, Shared, Subject};
use crate::tls::{first_flight, FirstFlight};
use crate::tunnel::splice;

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
    /// The connecting process, when known (transparent connections).
    pub origin: Option<Origin>,
    /// Terminate TLS with this interception instead of splicing.
    pub intercept: Option<Arc<Interception>>,
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
        let limits = &shared.limits;
        let mut subject = Subject::new(self.kind);
        subject.host = Some(&self.host);
        subject.port = Some(self.port);
        subject.set_origin(self.origin.as_ref());
        let wait = if self.tls_required || self.intercept.is_some() {
            limits.client_hello_timeout
        } else {
            limits.client_first_wait
        };
        let flight = first_flight(
            &mut stream,
            initial,
            wait,
            limits.max_client_hello,
            limits.client_hello_timeout,
        )
        .await;
        let deny = |subject: &Subject<'_>, reason: String| {
            shared.record(Some(client), subject, &Decision::deny(reason));
        };
        let replay = match (flight, &self.host) {
            (Err(err), _) => return deny(&subject, err.to_string()),
            (Ok(FirstFlight::Closed), _) => {
                // Nothing to carry: record the (empty) tunnel without dialling.
                let mut event = event_for(Some(client), Source::Proxy, &subject, &self.decision);
                event.bytes_up = Some(0);
                event.bytes_down = Some(0);
                event.duration_ms = Some(millis(start.elapsed()));
                shared.audit.record(event);
                return;
            }
            (Ok(FirstFlight::Tls { bytes, info }), Host::Name(name)) => {
                let sni = info.sni.as_deref().map(classify_host);
                match sni {
                    Some(Ok(Host::Name(sni))) if sni == *name => bytes,
                    Some(_) => {
                        let shown: String =
                            info.sni.unwrap_or_default().chars().take(255).collect();
                        return deny(
                            &subject,
                            format!("SNI `{shown}` differs from the CONNECT host"),
                        );
                    }
                    None => return deny(&subject, "TLS without SNI".to_owned()),
                }
            }
            (Ok(FirstFlight::Tls { bytes, .. }), Host::Ip(_)) => bytes,
            (Ok(FirstFlight::Other { .. } | FirstFlight::Silent), Host::Name(_))
                if self.intercept.is_some() || self.tls_required =>
            {
                let reason = if self.intercept.is_some() {
                    "no TLS ClientHello on a tunnel whose requests must be visible"
                } else {
                    "no TLS ClientHello on a port-443 tunnel"
                };
                return deny(&subject, reason.to_owned());
            }
            (Ok(FirstFlight::Other { bytes }), _) => bytes,
            (Ok(FirstFlight::Silent), _) => Vec::new(),
        };
        if let Some(interception) = self.intercept {
            // Only a ClientHello whose SNI names the host gets here (the arms above; `plan`
            // never terminates a tunnel to an address).
            let target = Terminated {
                host: self.host.clone(),
                port: self.port,
                addrs: self.addrs,
                interception,
            };
            let (kind, origin) = (self.kind, self.origin);
            crate::intercept::terminate(shared, client, kind, stream, replay, target, origin).await;
            return;
        }
        let (mut server, ip) = match shared.dial(&self.addrs, self.port).await {
            Ok(found) => found,
            Err(err) => {
                let mut event = event_for(Some(client), Source::Proxy, &subject, &self.decision);
                add_reason(&mut event.reason, format!("upstream unreachable: {err}"));
                event.duration_ms = Some(millis(start.elapsed()));
                shared.audit.record(event);
                return;
            }
        };
        subject.ip = Some(ip);
        let outcome = if server.write_all(&replay).await.is_ok() {
            let mut outcome = splice(
                &mut stream,
                &mut server,
                limits.idle_timeout,
                limits.total_timeout,
            )
            .await;
            outcome.up += replay.len() as u64;
            outcome
        } else {
            crate::tunnel::SpliceOutcome {
                up: 0,
                down: 0,
                cut: Some("write to destination failed".to_owned()),
            }
        };
        let mut event = event_for(Some(client), Source::Proxy, &subject, &self.decision);
        debug_assert_eq!(event.verdict, Verdict::Allow);
        event.bytes_up = Some(outcome.up);
        event.bytes_down = Some(outcome.down);
        event.duration_ms = Some(millis(start.elapsed()));
        tracing::info!(
            host = %self.host, %ip, port = self.port, up = outcome.up, down = outcome.down,
            cut = outcome.cut.as_deref(), "tunnel closed"
        );
        shared.audit.record(event);
    }
}
