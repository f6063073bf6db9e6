//! The DNS filter: answers the runner's DNS over UDP and TCP, resolving only names the
//! policy allows and only for address records.
//!
//! Per message (THREATS.md "DNS as a channel"):
//! - a message that does not parse, is a response (QR set), is not a standard query, or
//!   does not carry exactly one question is refused locally (FORMERR/NOTIMP/REFUSED);
//! - a name no host rule matches is answered NXDOMAIN locally and never sent upstream, so
//!   data encoded in labels toward an attacker's zone goes nowhere;
//! - an allowed name is resolved upstream only for A and AAAA; other types (TXT, NULL,
//!   ANY, ...) get an empty NOERROR answer locally;
//! - the upstream answer is rebuilt, not relayed: only A, AAAA and CNAME records of the
//!   answer section are kept; addresses in internal ranges (rebinding) are removed unless
//!   a `cidr` rule lists them.
//!
//! Every decision is an audit event with source `dns`. Over TCP, every length-prefixed
//! message of the stream is parsed and decided on its own (RFC 7766 pipelining), so a
//! second query in the same segment cannot ride on the first.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::audit::{Kind, Source};
use crate::clients::ClientEntry;
use crate::policy::{normalise_name, Decision, Host};
use crate::shared::{event_for, Shared, Subject};

/// Largest UDP answer without EDNS (RFC 1035 section 2.3.4).
const UDP_MAX: usize = 512;

/// Decides one DNS message from `peer`; returns the reply to send, if any.
pub(crate) async fn answer(
    shared: &Shared,
    peer: SocketAddr,
    wire: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    let client = shared.clients.get(peer.ip());
    let Some(client) = client else {
        shared.record(
            None,
            &Subject::new(Kind::Dns),
            &Decision::deny(format!("unknown client {}", peer.ip())),
        );
        return None;
    };
    let reply = decide(shared, &client, wire).await?;
    let mut bytes = reply.to_vec().ok()?;
    if udp && bytes.len() > UDP_MAX {
        let mut truncated = reply;
        truncated.take_answers();
        truncated.set_truncated(true);
        bytes = truncated.to_vec().ok()?;
    }
    Some(bytes)
}

fn record(shared: &Shared, client: &ClientEntry, subject: &Subject<'_>, decision: &Decision) {
    let event = event_for(Some(client), Source::Dns, subject, decision);
    tracing::info!(host = event.host.as_deref(), verdict = ?event.verdict, reason = event.reason.as_deref(), "dns decision");
    shared.audit.record(event);
}

fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in query.queries() {
        reply.add_query(q.clone());
    }
    reply
}

async fn decide(shared: &Shared, client: &ClientEntry, wire: &[u8]) -> Option<Message> {
    let subject = Subject::new(Kind::Dns);
    let query = match Message::from_vec(wire) {
        Ok(query) => query,
        Err(err) => {
            record(
                shared,
                client,
                &subject,
                &Decision::deny(format!("malformed DNS message: {err}")),
            );
            // FORMERR needs the id; without a parsable header there is nobody to answer.
            if wire.len() < 12 {
                return None;
            }
            let mut reply = Message::new();
            reply
                .set_id(u16::from_be_bytes([wire[0], wire[1]]))
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return Some(reply);
        }
    };
    if query.message_type() == MessageType::Response {
        record(
            shared,
            client,
            &subject,
            &Decision::deny("DNS response sent to the filter"),
        );
        return None;
    }
    if query.op_code() != OpCode::Query {
        record(
            shared,
            client,
            &subject,
            &Decision::deny("DNS operation other than a query"),
        );
        return Some(reply_to(&query, ResponseCode::NotImp));
    }
    if query.queries().len() != 1 {
        record(
            shared,
            client,
            &subject,
            &Decision::deny("DNS message without exactly one question"),
        );
        return Some(reply_to(&query, ResponseCode::FormErr));
    }
    let question = &query.queries()[0];
    let name = match normalise_name(&question.name().to_ascii()) {
        Ok(name) => Host::Name(name),
        Err(err) => {
            record(shared, client, &subject, &Decision::deny(err.to_string()));
            return Some(reply_to(&query, ResponseCode::NXDomain));
        }
    };
    let mut subject = subject;
    subject.host = Some(&name);
    let Host::Name(name_text) = &name else {
        return None;
    };
    let decision = client.policy.check_dns_name(name_text);
    if !decision.allowed {
        record(shared, client, &subject, &decision);
        return Some(reply_to(&query, ResponseCode::NXDomain));
    }
    let rtype = question.query_type();
    if rtype != RecordType::A && rtype != RecordType::AAAA {
        record(
            shared,
            client,
            &subject,
            &Decision::deny(format!("record type {rtype} not served")),
        );
        return Some(reply_to(&query, ResponseCode::NoError));
    }
    let upstream = match shared.resolver.exchange(question.name(), rtype).await {
        Ok(upstream) => upstream,
        Err(err) => {
            let mut failed = decision.clone();
            failed.reason = Some(err.to_string());
            record(shared, client, &subject, &failed);
            return Some(reply_to(&query, ResponseCode::ServFail));
        }
    };
    let mut reply = reply_to(&query, upstream.response_code());
    let mut first_ip = None;
    let mut removed = None;
    for answer in upstream.answers() {
        let ip = match answer.data() {
            RData::A(a) => Some(std::net::IpAddr::V4((*a).into())),
            RData::AAAA(a) => Some(std::net::IpAddr::V6((*a).into())),
            RData::CNAME(_) => None,
            _ => continue,
        };
        if let Some(ip) = ip {
            if shared.special.contains(ip) && !client.policy.lists_address(ip) {
                removed.get_or_insert(ip);
                continue;
            }
            first_ip.get_or_insert(ip);
        }
        reply.add_answer(Record::clone(answer));
    }
    if let Some(ip) = removed {
        let rebinding = Subject {
            ip: Some(ip),
            ..subject
        };
        record(
            shared,
            client,
            &rebinding,
            &Decision::deny("answer points to an internal address"),
        );
    }
    subject.ip = first_ip;
    record(shared, client, &subject, &decision);
    Some(reply)
}

/// Serves DNS over UDP until the task is dropped.
pub(crate) async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::warn!(error = %err, "dns udp receive failed");
                continue;
            }
        };
        let wire = buf[..n].to_vec();
        let shared = Arc::clone(&shared);
        let socket = Arc::clone(&socket);
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, peer, &wire, true).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// Serves DNS over TCP until the task is dropped.
pub(crate) async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(tcp_connection(Arc::clone(&shared), stream, peer));
    }
}

async fn tcp_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let Some(client) = shared.clients.get(peer.ip()) else {
        shared.record_unknown_client(Kind::Dns, peer);
        return;
    };
    let Some(_slot) = client.try_acquire(shared.limits.max_dns_tcp_per_client) else {
        return;
    };
    let idle = shared.limits.header_timeout;
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut wire = vec![0u8; len];
        match tokio::time::timeout(idle, stream.read_exact(&mut wire)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = answer(&shared, peer, &wire, false).await else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = reply_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
