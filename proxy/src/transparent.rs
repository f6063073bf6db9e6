//! The transparent TLS listener: connections the kernel redirected here, decided on the
//! ClientHello's SNI without terminating TLS.
//!
//! Steps: find the original destination ([`crate::origdst`]); read the ClientHello (split
//! segments and records are reassembled); no SNI, or an SNI that is not a name, is denied;
//! the SNI name and the original port are decided by the policy; the proxy resolves the
//! name itself and requires the original address to be one of those addresses and to pass
//! the internal-address check (this is what stops "SNI of an allowed name toward an
//! attacker's address"); only then is the original address dialled and the buffered hello
//! replayed. A client with an interception may have the connection terminated instead
//! (`crate::intercept::plan`), after the same address checks.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::audit::Kind;
use crate::clients::{ClientEntry, ConnSlot};
use crate::gate::TunnelGate;
use crate::origdst::Origin;
use crate::policy::{classify_host, Decision, Host};
use crate::shared::{Shared, Subject};
use crate::tls::read_client_hello;

/// Serves one redirected TLS connection.
pub(crate) async fn serve_tls(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    client: Arc<ClientEntry>,
    _slot: ConnSlot,
    origin: Option<Origin>,
) {
    let mut subject = Subject::new(Kind::Tls);
    let Some(origin) = origin else {
        shared.record(
            Some(&client),
            &subject,
            &Decision::deny("original destination unknown"),
        );
        return;
    };
    let original = origin.destination;
    subject.set_origin(Some(&origin));
    let wanted = original.ip().to_canonical();
    subject.ip = Some(wanted);
    subject.port = Some(original.port());
    let limits = &shared.limits;
    let hello = read_client_hello(
        &mut stream,
        Vec::new(),
        limits.max_client_hello,
        limits.client_hello_timeout,
    )
    .await;
    let (bytes, info) = match hello {
        Ok(found) => found,
        Err(err) => {
            shared.record(Some(&client), &subject, &Decision::deny(err.to_string()));
            return;
        }
    };
    let host = match info.sni.as_deref().map(classify_host) {
        None => {
            shared.record(Some(&client), &subject, &Decision::deny("no SNI"));
            return;
        }
        Some(Ok(Host::Name(name))) => Host::Name(name),
        Some(_) => {
            shared.record(
                Some(&client),
                &subject,
                &Decision::deny("SNI is not a host name"),
            );
            return;
        }
    };
    subject.host = Some(&host);
    let (decision, intercept) = crate::intercept::plan(&client, &host, original.port());
    if !decision.allowed {
        shared.record(Some(&client), &subject, &decision);
        return;
    }
    let addrs = match shared
        .addresses_for(&client.policy, &host, original.port())
        .await
    {
        Ok(addrs) => addrs,
        Err((decision, _)) => {
            shared.record(Some(&client), &subject, &decision);
            return;
        }
    };
    if !addrs.contains(&wanted) {
        shared.record(
            Some(&client),
            &subject,
            &Decision::deny("destination address is not an address of the name"),
        );
        return;
    }
    let gate = TunnelGate {
        kind: Kind::Tls,
        host,
        port: original.port(),
        addrs: vec![wanted],
        decision,
        tls_required: true,
        origin: Some(origin.clone()),
        intercept,
    };
    gate.run(&shared, &client, stream, bytes).await;
}
