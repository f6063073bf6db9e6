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
//!   answer section are kept; addresses in internal ranges (rebinding) and the addresses
//!   of the proxy's own network namespace (`policy::addr`, asked of the kernel for each
//!   address left after the range check) are removed unless a `cidr` rule lists them,
//!   with a deny event naming the first one removed.
//!
//! Every decision is an audit event with source `dns`. Over TCP, every length-prefixed
//! message of the stream is parsed and decided on its own (RFC 7766 pipelining), so a
//! second query in the same segment cannot ride on the first.
//!
//! The work a client can cause is bounded: DNS-over-TCP connections per client
//! (`max_dns_tcp_per_client`, one message at a time each), and UDP questions in flight
//! upstream per listener (`max_dns_udp_in_flight`, each holding an upstream socket). A UDP
//! question past that cap is dropped and never forwarded; such queries are recorded as a
//! count, in one deny event per client and second (`Shed`), because one event per
//! datagram would let the flood grow the log without bound instead. Datagrams the kernel
//! drops before the filter reads them (a full receive queue) are counted from
//! `SO_RXQ_OVFL` and recorded the same way ([`udp_receive`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::audit::{Kind, Source};
use crate::clients::{ClientEntry, SlotKind};
use crate::origdst::Origin;
use crate::policy::{normalise_name, Decision, Host, Policy, SpecialNets};
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
    match first_step(shared, peer, wire, udp) {
        Step::Done(reply) => reply,
        Step::Ask(question) => ask_upstream(shared, question, udp).await,
    }
}

/// Where a message stands after the part of the decision that needs no network.
// Moved once, from `first_step` to its caller: boxing the large variant would only add
// an allocation per forwarded question.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Decided and recorded; the reply to send, if any.
    Done(Option<Vec<u8>>),
    /// An allowed address question, to resolve upstream.
    Ask(Question),
}

/// An allowed question and what its answer is recorded against.
struct Question {
    client: Arc<ClientEntry>,
    query: Message,
    host: Host,
    decision: Decision,
    /// Who asked: looked up for the record only once the question goes upstream (a
    /// question shed at the cap costs no lookup).
    peer: SocketAddr,
}

/// Finds the client and takes the local decision ([`local_decision`]), recording it
/// unless the question goes upstream. Synchronous, so the UDP listener runs it inline
/// and only questions that go upstream become tasks (and count against its cap).
fn first_step(shared: &Shared, peer: SocketAddr, wire: &[u8], udp: bool) -> Step {
    let Some(client) = shared.clients.get(peer.ip()) else {
        shared.record(
            None,
            &Subject::new(Kind::Dns),
            &Decision::deny(format!("unknown client {}", peer.ip())),
        );
        return Step::Done(None);
    };
    match local_decision(&client.policy, wire) {
        Local::Reply {
            reply,
            host,
            decision,
        } => {
            let origin = asker(shared, peer);
            let subject = dns_subject(host.as_ref(), origin.as_ref());
            record(shared, &client, &subject, &decision);
            Step::Done(reply.and_then(|reply| encode(reply, udp)))
        }
        Local::Forward {
            query,
            host,
            decision,
        } => Step::Ask(Question {
            client,
            query,
            host,
            decision,
            peer,
        }),
    }
}

/// Which process sent `peer`'s message, and where to: the fence records the runner's
/// datagrams and connections to the filter as they leave (nothing in standalone use).
fn asker(shared: &Shared, peer: SocketAddr) -> Option<Origin> {
    shared.origdst.as_ref().and_then(|o| o.lookup_peer(peer))
}

/// The subject of a DNS decision, naming the process that sent the message (`origin`).
/// A decision about a name (`host`) leaves `ip` for the answer's address; one about a
/// message or connection no name was read from has the address and port it was sent to
/// instead (the resolver the job addressed; its traffic to any :53 is redirected here),
/// so that it too says who tried to reach what.
fn dns_subject<'a>(host: Option<&'a Host>, origin: Option<&'a Origin>) -> Subject<'a> {
    let mut subject = Subject::new(Kind::Dns);
    subject.set_origin(origin);
    subject.host = host;
    if let (None, Some(origin)) = (host, origin) {
        subject.ip = Some(origin.destination.ip());
        subject.port = Some(origin.destination.port());
    }
    subject
}

/// The reply in wire form; over UDP, a reply too large loses its answers and carries
/// the TC bit, so the client asks again over TCP (RFC 1035 section 4.2.1).
fn encode(reply: Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if !udp || bytes.len() <= UDP_MAX {
        return Some(bytes);
    }
    let mut truncated = reply;
    truncated.take_answers();
    truncated.set_truncated(true);
    truncated.to_vec().ok()
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

/// What the filter does with a message before (or instead of) asking upstream.
#[derive(Debug)]
pub enum Local {
    /// Answer locally (or drop, with `None`), recording `decision` about `host`.
    Reply {
        /// The reply to send, if any.
        reply: Option<Message>,
        /// The normalised question name, when there was a valid one.
        host: Option<Host>,
        /// The decision to record.
        decision: Decision,
    },
    /// Ask upstream: an allowed name and an address type.
    Forward {
        /// The query as received.
        query: Message,
        /// The normalised question name.
        host: Host,
        /// The allow decision.
        decision: Decision,
    },
}

fn local_reply(reply: Option<Message>, host: Option<Host>, reason: impl Into<String>) -> Local {
    Local::Reply {
        reply,
        host,
        decision: Decision::deny(reason),
    }
}

/// The part of the decision that needs no network: parsing, the one-question rule, the
/// name check and the type check. Pure, so it is unit-tested and fuzzed directly.
pub fn local_decision(policy: &Policy, wire: &[u8]) -> Local {
    let query = match Message::from_vec(wire) {
        Ok(query) => query,
        Err(err) => {
            // FORMERR needs the id; without a full header there is nobody to answer.
            let reply = (wire.len() >= 12).then(|| {
                let mut reply = Message::new();
                reply
                    .set_id(u16::from_be_bytes([wire[0], wire[1]]))
                    .set_message_type(MessageType::Response)
                    .set_response_code(ResponseCode::FormErr);
                reply
            });
            return local_reply(reply, None, format!("malformed DNS message: {err}"));
        }
    };
    if query.message_type() == MessageType::Response {
        return local_reply(None, None, "DNS response sent to the filter");
    }
    if query.op_code() != OpCode::Query {
        let reply = reply_to(&query, ResponseCode::NotImp);
        return local_reply(Some(reply), None, "DNS operation other than a query");
    }
    if query.queries().len() != 1 {
        let reply = reply_to(&query, ResponseCode::FormErr);
        return local_reply(Some(reply), None, question_count_reason(&query));
    }
    let question = &query.queries()[0];
    let name = match normalise_name(&question.name().to_ascii()) {
        Ok(name) => name,
        Err(err) => {
            let reply = reply_to(&query, ResponseCode::NXDomain);
            return local_reply(Some(reply), None, err.to_string());
        }
    };
    let decision = policy.check_dns_name(&name);
    let host = Host::Name(name);
    if !decision.allowed {
        return Local::Reply {
            reply: Some(reply_to(&query, ResponseCode::NXDomain)),
            host: Some(host),
            decision,
        };
    }
    let rtype = question.query_type();
    if rtype != RecordType::A && rtype != RecordType::AAAA {
        let reply = reply_to(&query, ResponseCode::NoError);
        return local_reply(
            Some(reply),
            Some(host),
            format!("record type {rtype} not served"),
        );
    }
    Local::Forward {
        query,
        host,
        decision,
    }
}

/// Why a message without exactly one question is refused, naming the questions it has
/// (at most [`NAMED_QUESTIONS`]): a second question is a way to carry data, and the log
/// must show what it carried.
fn question_count_reason(query: &Message) -> String {
    let queries = query.queries();
    if queries.is_empty() {
        return "DNS message without a question".to_owned();
    }
    let mut names: Vec<String> = queries
        .iter()
        .take(NAMED_QUESTIONS)
        .map(|q| q.name().to_ascii())
        .collect();
    if queries.len() > NAMED_QUESTIONS {
        names.push("...".to_owned());
    }
    format!(
        "DNS message with {} questions (one allowed): {}",
        queries.len(),
        names.join(" ")
    )
}

/// How many questions of a refused multi-question message its event names.
const NAMED_QUESTIONS: usize = 4;

/// Rebuilds an upstream answer for the client: only the question's chain
/// ([`chain::on_chain`]: its CNAMEs and the A or AAAA records of the name it ends at),
/// internal addresses (`special`: ranges and, in the proxy, the host's own addresses)
/// removed unless a `cidr` rule lists them. Returns the reply, the first address kept,
/// the first address removed, and how many records were off the chain.
pub fn filter_answer(
    query: &Message,
    upstream: &Message,
    policy: &Policy,
    special: &SpecialNets,
) -> (Message, Option<IpAddr>, Option<IpAddr>, usize) {
    let mut reply = reply_to(query, upstream.response_code());
    let mut first_ip = None;
    let mut removed = None;
    let Some(question) = query.queries().first() else {
        return (reply, None, None, upstream.answers().len());
    };
    let chain = chain::on_chain(upstream.answers(), question.name(), question.query_type());
    for answer in chain.records {
        let ip = match answer.data() {
            RData::A(a) => Some(IpAddr::V4((*a).into())),
            RData::AAAA(a) => Some(IpAddr::V6((*a).into())),
            RData::CNAME(_) => None,
            _ => continue,
        };
        if let Some(ip) = ip {
            // The cheap rule lookup first: `contains` may ask the kernel (a bind).
            if !policy.lists_address(ip) && special.contains(ip) {
                removed.get_or_insert(ip);
                continue;
            }
            first_ip.get_or_insert(ip);
        }
        reply.add_answer(Record::clone(answer));
    }
    (reply, first_ip, removed, chain.stray)
}

/// Resolves an allowed question upstream and rebuilds the answer ([`filter_answer`]),
/// recording the decision with the address handed out (and any address removed).
async fn ask_upstream(shared: &Shared, question: Question, udp: bool) -> Option<Vec<u8>> {
    let Question {
        client,
        query,
        host,
        decision,
        peer,
    } = question;
    let client = &*client;
    let origin = asker(shared, peer);
    let mut subject = dns_subject(Some(&host), origin.as_ref());
    let question = &query.queries()[0];
    // Upstream gets the name in lower case: the letter case the job chose would otherwise
    // reach the resolver and the allowed zone's servers as it is, a bit per letter of data
    // even under an exact-name rule (found by an attack run). The job's reply keeps its
    // question as asked; resolvers compare names without regard to case.
    let upstream = match shared
        .resolver
        .exchange(&question.name().to_lowercase(), question.query_type())
        .await
    {
        Ok(upstream) => upstream,
        Err(err) => {
            let mut failed = decision.clone();
            failed.reason = Some(err.to_string());
            record(shared, client, &subject, &failed);
            return encode(reply_to(&query, ResponseCode::ServFail), udp);
        }
    };
    let (reply, first_ip, removed, stray) =
        filter_answer(&query, &upstream, &client.policy, &shared.special);
    if stray > 0 {
        record(
            shared,
            client,
            &subject,
            &Decision::deny(format!(
                "{stray} answer records off the question's chain dropped"
            )),
        );
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
    encode(reply, udp)
}

/// How often a UDP listener reports the queries it shed ([`Shed`]).
const SHED_REPORT: Duration = Duration::from_secs(1);

/// Serves DNS over UDP until the task is dropped.
///
/// Whatever is decided locally (denied names, other record types, malformed messages) is
/// answered inline. A question that goes upstream holds an upstream socket for up to the
/// DNS timeout, so at most `max_dns_udp_in_flight` of them are in flight at once; one
/// past that is shed: dropped unanswered and never forwarded. Dropping took about half
/// the CPU per shed datagram that answering SERVFAIL did in a local flood (no reply to
/// build and send), and what a resolver does with silence is retry after its timeout, so
/// a burst that meets the cap ends up delayed rather than failed. Shed queries are counted into
/// summary events ([`Shed`]), not one event each, so a flood does not flood the log too.
pub(crate) async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let cap = shared.limits.max_dns_udp_in_flight;
    let mut shed = Shed::new(Arc::clone(&shared), cap);
    // Questions being asked upstream; aborted with this task, so none outlives the proxy.
    let mut asking = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    udp_receive::prepare(&socket);
    let mut dropped_before = 0u32;
    loop {
        let due = shed.due;
        let received = tokio::select! {
            // Cancel safe: a datagram is never half taken.
            received = udp_receive::receive(&socket, &mut buf) => received,
            () = until(due) => {
                shed.report();
                continue;
            }
        };
        let (n, peer) = match received {
            Ok(datagram) => {
                let dropped =
                    udp_receive::dropped_since(&mut dropped_before, datagram.dropped_total);
                if dropped > 0 {
                    shed.count_dropped(shared.clients.get(datagram.peer.ip()), dropped);
                }
                (datagram.len, datagram.peer)
            }
            Err(err) => {
                tracing::warn!(error = %err, "dns udp receive failed");
                continue;
            }
        };
        let question = match first_step(&shared, peer, &buf[..n], true) {
            Step::Done(Some(reply)) => {
                let _ = socket.send_to(&reply, peer).await;
                continue;
            }
            Step::Done(None) => continue,
            Step::Ask(question) => question,
        };
        // Finished questions leave the set here, so what it holds is what is in flight.
        while asking.try_join_next().is_some() {}
        if asking.len() >= cap {
            shed.count(question.client);
            continue;
        }
        let shared = Arc::clone(&shared);
        let socket = Arc::clone(&socket);
        asking.spawn(async move {
            if let Some(reply) = ask_upstream(&shared, question, true).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// Completes at `due`; never, without one.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The queries one UDP listener shed since its last report, and the datagrams the kernel
/// dropped before the listener could read them ([`udp_receive`]), per client. Reported as
/// deny events, one per client and kind at most every [`SHED_REPORT`], so the log grows by
/// a line or two a second under a flood, not a line a datagram, and still says how many
/// and whose they were. What is pending when the listener stops is reported then.
struct Shed {
    shared: Arc<Shared>,
    cap: usize,
    /// Client id (`None`: an address no runner has) → what to report.
    pending: HashMap<Option<u64>, Pending>,
    /// When to report; set by the first count after a report.
    due: Option<tokio::time::Instant>,
}

/// What a [`Shed`] reports for one client.
struct Pending {
    client: Option<Arc<ClientEntry>>,
    /// Queries dropped by the listener at its in-flight cap.
    shed: u64,
    /// Datagrams the kernel dropped, counted when this client's next one arrived: the
    /// kernel does not say whose the dropped ones were, only how many.
    dropped: u64,
}

impl Shed {
    fn new(shared: Arc<Shared>, cap: usize) -> Self {
        Shed {
            shared,
            cap,
            pending: HashMap::new(),
            due: None,
        }
    }

    fn pending(&mut self, client: Option<Arc<ClientEntry>>) -> &mut Pending {
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + SHED_REPORT);
        self.pending
            .entry(client.as_ref().map(|c| c.id))
            .or_insert(Pending {
                client,
                shed: 0,
                dropped: 0,
            })
    }

    fn count(&mut self, client: Arc<ClientEntry>) {
        self.pending(Some(client)).shed += 1;
    }

    fn count_dropped(&mut self, client: Option<Arc<ClientEntry>>, datagrams: u32) {
        self.pending(client).dropped += u64::from(datagrams);
    }

    fn report(&mut self) {
        self.due = None;
        for (_, pending) in self.pending.drain() {
            let mut reasons = Vec::new();
            if pending.shed > 0 {
                reasons.push(format!(
                    "{} DNS queries over UDP dropped, not forwarded: {} already in flight \
                     on this listener",
                    pending.shed, self.cap
                ));
            }
            if pending.dropped > 0 {
                reasons.push(format!(
                    "{} DNS datagrams dropped by the kernel before the filter read them \
                     (its receive queue was full), not forwarded; counted at this client's \
                     next datagram",
                    pending.dropped
                ));
            }
            for reason in reasons {
                let event = event_for(
                    pending.client.as_deref(),
                    Source::Dns,
                    &Subject::new(Kind::Dns),
                    &Decision::deny(reason),
                );
                tracing::warn!(
                    runner = event.runner.as_deref(),
                    shed = pending.shed,
                    dropped = pending.dropped,
                    "dns datagrams dropped"
                );
                self.shared.audit.record(event);
            }
        }
    }
}

impl Drop for Shed {
    fn drop(&mut self) {
        self.report();
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
    let origin = asker(&shared, peer);
    let deny = |reason: &str| {
        shared.record(
            Some(&client),
            &dns_subject(None, origin.as_ref()),
            &Decision::deny(reason),
        );
    };
    let max = shared.limits.max_dns_tcp_per_client;
    let Some(_slot) = client.try_acquire_kind(SlotKind::Dns, max) else {
        // Recorded like the proxy listeners' cap: queries on this connection are never
        // read, so this event is all the log will hold of them.
        return deny("too many DNS connections from this client");
    };
    let idle = shared.limits.header_timeout;
    let incomplete = || deny("incomplete DNS message over TCP");
    let mut messages = 0u64;
    loop {
        // A connection that ends or idles between messages ends quietly; one that stops
        // inside a message (holding a slot with a partial query), or that never sent one
        // (the proxy's listeners record the same), is recorded.
        let first = match tokio::time::timeout(idle, stream.read_u8()).await {
            Ok(Ok(byte)) => byte,
            _ if messages == 0 => return deny("connection closed before a DNS message"),
            _ => return,
        };
        messages += 1;
        let second = match tokio::time::timeout(idle, stream.read_u8()).await {
            Ok(Ok(byte)) => byte,
            _ => return incomplete(),
        };
        let len = usize::from(u16::from_be_bytes([first, second]));
        let mut wire = vec![0u8; len];
        match tokio::time::timeout(idle, stream.read_exact(&mut wire)).await {
            Ok(Ok(_)) => {}
            _ => return incomplete(),
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

pub mod chain;
mod udp_receive;

#[cfg(test)]
mod udp_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EgressConfig, RuleConfig, RuleTarget, DEFAULT_PORTS};
    use hickory_proto::op::Query;
    use hickory_proto::rr::{rdata, Name};

    /// `*.example.com` on the default ports.
    pub(super) fn policy() -> Policy {
        Policy::new(&EgressConfig {
            allow: vec![RuleConfig {
                target: RuleTarget::Host("*.example.com".into()),
                ports: DEFAULT_PORTS.to_vec(),
                methods: None,
                paths: None,
            }],
            ..EgressConfig::default()
        })
        .unwrap()
    }

    /// A query for `name` of type `rtype`, id 42.
    pub(super) fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(42)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    fn reason(local: &Local) -> Option<&str> {
        match local {
            Local::Reply { decision, .. } => decision.reason.as_deref(),
            Local::Forward { .. } => None,
        }
    }

    #[test]
    fn local_decisions() {
        let p = policy();
        let wire = |name, rtype| query(name, rtype).to_vec().unwrap();
        assert!(matches!(
            local_decision(&p, &wire("API.Example.com.", RecordType::A)),
            Local::Forward { .. }
        ));
        assert!(matches!(
            local_decision(&p, &wire("a.example.com.", RecordType::AAAA)),
            Local::Forward { .. }
        ));
        assert_eq!(
            reason(&local_decision(&p, &wire("example.com.", RecordType::A))),
            Some("name not allowed")
        );
        assert_eq!(
            reason(&local_decision(&p, &wire("x.evil.net.", RecordType::A))),
            Some("name not allowed")
        );
        assert_eq!(
            reason(&local_decision(
                &p,
                &wire("a.example.com.", RecordType::TXT)
            )),
            Some("record type TXT not served")
        );
        let mut two = query("a.example.com.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.evil.net.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            reason(&local_decision(&p, &two.to_vec().unwrap())),
            Some("DNS message with 2 questions (one allowed): a.example.com. b.evil.net.")
        );
        for extra in ["c", "d", "e"] {
            two.add_query(Query::query(
                Name::from_ascii(format!("{extra}.evil.net.")).unwrap(),
                RecordType::A,
            ));
        }
        assert_eq!(
            reason(&local_decision(&p, &two.to_vec().unwrap())),
            Some("DNS message with 5 questions (one allowed): a.example.com. b.evil.net. c.evil.net. d.evil.net. ...")
        );
        let mut none = query("a.example.com.", RecordType::A);
        none.take_queries();
        assert_eq!(
            reason(&local_decision(&p, &none.to_vec().unwrap())),
            Some("DNS message without a question")
        );
        let mut response = query("a.example.com.", RecordType::A);
        response.set_message_type(MessageType::Response);
        let local = local_decision(&p, &response.to_vec().unwrap());
        assert!(matches!(local, Local::Reply { reply: None, .. }));
        assert!(matches!(
            local_decision(&p, &[1, 2, 3]),
            Local::Reply { reply: None, .. }
        ));
        match local_decision(&p, &[0xab, 0xcd, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 7]) {
            Local::Reply { reply: Some(r), .. } => {
                assert_eq!((r.id(), r.response_code()), (0xabcd, ResponseCode::FormErr))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_are_rebuilt_and_rebinding_removed() {
        let p = policy();
        let q = query("a.example.com.", RecordType::A);
        let mut upstream = q.clone();
        upstream.set_message_type(MessageType::Response);
        let name = Name::from_ascii("a.example.com.").unwrap();
        let cdn = Name::from_ascii("cdn.example.net.").unwrap();
        upstream.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::CNAME(rdata::CNAME(cdn.clone())),
        ));
        upstream.add_answer(Record::from_rdata(
            cdn.clone(),
            60,
            RData::A(rdata::A::new(127, 0, 0, 1)),
        ));
        upstream.add_answer(Record::from_rdata(
            cdn.clone(),
            60,
            RData::A(rdata::A::new(203, 0, 113, 5)),
        ));
        upstream.add_answer(Record::from_rdata(
            cdn,
            60,
            RData::TXT(rdata::TXT::new(vec!["x".into()])),
        ));
        let (reply, first, removed, _) = filter_answer(&q, &upstream, &p, &SpecialNets::default());
        assert_eq!(reply.answers().len(), 2);
        assert_eq!(first, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(removed, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(reply.id(), 42);
    }

    #[test]
    fn the_hosts_own_addresses_are_removed_unless_a_cidr_rule_lists_them() {
        let q = query("self.example.com.", RecordType::A);
        let mut upstream = q.clone();
        upstream.set_message_type(MessageType::Response);
        let name = Name::from_ascii("self.example.com.").unwrap();
        for data in [
            RData::A(rdata::A::new(198, 51, 100, 1)),
            RData::AAAA(rdata::AAAA("2001:db8:100::1".parse().unwrap())),
            RData::A(rdata::A::new(203, 0, 113, 5)),
        ] {
            upstream.add_answer(Record::from_rdata(name.clone(), 60, data));
        }
        let own: [IpAddr; 2] = [
            "198.51.100.1".parse().unwrap(),
            "2001:db8:100::1".parse().unwrap(),
        ];
        let special = SpecialNets::default().with_local(Arc::new(move |ip| own.contains(&ip)));
        let (reply, first, removed, _) = filter_answer(&q, &upstream, &policy(), &special);
        assert_eq!(reply.answers().len(), 1);
        assert_eq!(first, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(removed, Some("198.51.100.1".parse().unwrap()));
        // Without the check (the ranges alone), both A records would have been handed
        // out. (The AAAA record answers no A question: it is off the chain.)
        let (reply, _, removed, stray) =
            filter_answer(&q, &upstream, &policy(), &SpecialNets::default());
        assert_eq!((reply.answers().len(), removed, stray), (2, None, 1));
        // A cidr rule listing the address lets it through.
        let mut allow = policy_rules();
        allow.push(RuleConfig {
            target: RuleTarget::Cidr("198.51.100.1/32".parse().unwrap()),
            ports: vec![8080],
            methods: None,
            paths: None,
        });
        let config = EgressConfig {
            allow,
            ..EgressConfig::default()
        };
        let listed = Policy::new(&config).unwrap();
        let (reply, first, removed, _) = filter_answer(&q, &upstream, &listed, &special);
        assert_eq!(reply.answers().len(), 2);
        assert_eq!(first, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(removed, None);
        // The host's own IPv6 address, asked for, is removed: no rule lists it.
        let q6 = query("self.example.com.", RecordType::AAAA);
        let mut upstream6 = upstream.clone();
        upstream6.take_queries();
        upstream6.add_query(q6.queries()[0].clone());
        let (reply, _, removed, _) = filter_answer(&q6, &upstream6, &listed, &special);
        assert_eq!(reply.answers().len(), 0);
        assert_eq!(removed, Some("2001:db8:100::1".parse().unwrap()));
    }

    fn policy_rules() -> Vec<RuleConfig> {
        vec![RuleConfig {
            target: RuleTarget::Host("*.example.com".into()),
            ports: DEFAULT_PORTS.to_vec(),
            methods: None,
            paths: None,
        }]
    }
}
