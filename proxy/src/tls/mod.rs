//! Reading a TLS ClientHello without terminating TLS, to decide on its SNI.
//!
//! The client's first flight is buffered until the whole ClientHello handshake message is
//! there, then parsed; the buffered bytes are later replayed to the destination unchanged.
//! A ClientHello may be split across TCP segments (handled by reading until complete) and
//! across TLS records (RFC 8446 section 5.1 allows handshake messages to be fragmented
//! over several records: the record payloads are reassembled here before parsing). The
//! handshake message itself is parsed with the `tls-parser` crate.
//!
//! Invariants (fail closed):
//! - anything that is not a well-formed ClientHello is an error, never "no SNI";
//! - zero-length handshake records (forbidden by RFC 8446 5.1), non-handshake records
//!   before the hello is complete, extension blocks that do not parse to their end, more
//!   than one server_name extension, or more than one host_name entry (RFC 6066 section 3)
//!   are all malformed, because two parsers could disagree on which name counts;
//! - the buffer never exceeds the configured maximum.
//!
//! The same module classifies a tunnel's first flight ([`first_flight`],
//! [`classify_flight`]): TLS, plain HTTP ([`sniff`]), the HTTP/2 cleartext preface, or
//! something else, so `crate::gate` can check each kind.

use std::time::Duration;

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake,
};
use tokio::io::{AsyncRead, AsyncReadExt};

pub mod sniff;

use sniff::{sniff_plain, Plain};

/// TLS record content type `handshake` (RFC 8446 section 5.1).
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello` (RFC 8446 section 4).
const CLIENT_HELLO: u8 = 1;
/// Largest record payload of TLSPlaintext (RFC 8446 section 5.1).
const MAX_RECORD: usize = 1 << 14;

/// What the ClientHello said that matters to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The host_name of the server_name extension, as sent (not yet normalised).
    pub sni: Option<String>,
}

/// Why the first bytes are not an acceptable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The stream does not start with a TLS handshake record.
    #[error("not TLS")]
    NotTls,
    /// The bytes break the TLS grammar or one of the rules above.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello would exceed the size limit.
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    /// The client closed before the ClientHello was complete.
    #[error("connection closed before the ClientHello was complete")]
    Truncated,
    /// The ClientHello did not arrive in time.
    #[error("ClientHello not received in time")]
    Timeout,
    /// Reading failed.
    #[error("reading the ClientHello failed: {0}")]
    Io(String),
}

/// Parses `buf` as the start of a TLS stream: `Ok(None)` when more bytes are needed.
pub fn parse_client_hello(buf: &[u8], max: usize) -> Result<Option<ClientHelloInfo>, HelloError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != HANDSHAKE {
        return Err(HelloError::NotTls);
    }
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return need_more(buf, max);
        }
        if rest[0] != HANDSHAKE {
            return Err(HelloError::Malformed(
                "record other than handshake before the hello",
            ));
        }
        if rest[1] != 3 {
            return Err(HelloError::Malformed("record version is not 3.x"));
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("record longer than 2^14"));
        }
        if rest.len() < 5 + len {
            return need_more(buf, max);
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake[0] != CLIENT_HELLO {
            return Err(HelloError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
        if handshake.len() < 4 {
            continue;
        }
        let body = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if 4 + body > max {
            return Err(HelloError::TooLarge(max));
        }
        if handshake.len() >= 4 + body {
            return interpret(&handshake[..4 + body]).map(Some);
        }
    }
}

fn need_more(buf: &[u8], max: usize) -> Result<Option<ClientHelloInfo>, HelloError> {
    if buf.len() >= max {
        Err(HelloError::TooLarge(max))
    } else {
        Ok(None)
    }
}

fn interpret(message: &[u8]) -> Result<ClientHelloInfo, HelloError> {
    let hello = match parse_tls_message_handshake(message) {
        Ok(([], TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Err(HelloError::Malformed("ClientHello does not parse")),
    };
    let Some(ext) = hello.ext else {
        return Ok(ClientHelloInfo { sni: None });
    };
    let extensions = match parse_tls_client_hello_extensions(ext) {
        Ok(([], extensions)) => extensions,
        _ => return Err(HelloError::Malformed("extensions do not parse")),
    };
    let mut sni: Option<String> = None;
    let mut seen = false;
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            if seen {
                return Err(HelloError::Malformed("two server_name extensions"));
            }
            seen = true;
            for (kind, name) in names {
                if kind != SNIType::HostName {
                    continue;
                }
                if sni.is_some() {
                    return Err(HelloError::Malformed("two host names in server_name"));
                }
                let name = std::str::from_utf8(name)
                    .map_err(|_| HelloError::Malformed("server name is not text"))?;
                sni = Some(name.to_owned());
            }
        }
    }
    Ok(ClientHelloInfo { sni })
}

/// Reads from `stream` until a complete ClientHello is buffered. Returns the bytes read
/// (to be replayed to the destination) and what the hello said.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    initial: Vec<u8>,
    max: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, ClientHelloInfo), HelloError> {
    let mut buf = initial;
    let work = async {
        loop {
            if let Some(info) = parse_client_hello(&buf, max)? {
                return Ok(info);
            }
            let mut chunk = [0u8; 4096];
            let room = (max - buf.len()).min(chunk.len());
            let n = stream
                .read(&mut chunk[..room])
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            if n == 0 {
                return Err(HelloError::Truncated);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let info = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => return Err(HelloError::Timeout),
    };
    Ok((buf, info))
}

/// The first bytes a client sends on a tunnel, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstFlight {
    /// A complete ClientHello (the bytes include it and anything after it).
    Tls {
        /// Bytes to replay to the destination.
        bytes: Vec<u8>,
        /// What the hello said.
        info: ClientHelloInfo,
    },
    /// A complete HTTP/1.x request line, possibly after empty lines (see [`sniff`]).
    Http {
        /// Bytes read so far, to be parsed as HTTP.
        bytes: Vec<u8>,
    },
    /// The HTTP/2 cleartext connection preface.
    Http2Preface,
    /// Something that is neither TLS nor HTTP.
    Other {
        /// Bytes to replay to the destination.
        bytes: Vec<u8>,
    },
    /// Nothing within the wait: the protocol may be server-speaks-first.
    Silent,
    /// The client closed without sending anything.
    Closed,
}

/// Why a first flight could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// The flight starts a TLS record but is not an acceptable ClientHello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// What could be an HTTP request line went past the head size limit without ending.
    #[error("request line longer than {0} bytes")]
    LineTooLong(usize),
    /// What could be an HTTP request line did not end in time.
    #[error("request line not received in time")]
    LineTimeout,
    /// The client closed in the middle of what could be an HTTP request line.
    #[error("connection closed before the request line was complete")]
    LineTruncated,
    /// Reading failed.
    #[error("reading the first bytes failed: {0}")]
    Io(String),
}

/// Sizes and times that bound reading a first flight.
#[derive(Debug, Clone, Copy)]
pub struct FlightLimits {
    /// How long to wait for the client's first bytes before calling it silent.
    pub wait: Duration,
    /// Largest ClientHello.
    pub max_client_hello: usize,
    /// Time allowed for a started ClientHello to complete.
    pub hello_timeout: Duration,
    /// Largest first line (with the empty lines before it) of a possible HTTP request.
    pub max_request_line: usize,
    /// Time allowed for a started request line to complete.
    pub line_timeout: Duration,
}

/// Waits up to `limits.wait` for the client's first bytes (unless `initial` already has
/// some), then classifies them with [`classify_flight`].
pub async fn first_flight<S: AsyncRead + Unpin>(
    stream: &mut S,
    initial: Vec<u8>,
    limits: &FlightLimits,
) -> Result<FirstFlight, FlightError> {
    let mut bytes = initial;
    if bytes.is_empty() {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(limits.wait, stream.read(&mut chunk)).await {
            Err(_) => return Ok(FirstFlight::Silent),
            Ok(Ok(0)) => return Ok(FirstFlight::Closed),
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => return Err(FlightError::Io(err.to_string())),
        }
    }
    classify_flight(stream, bytes, limits).await
}

/// Classifies a flight whose first bytes are in `bytes`, reading more as needed: a TLS
/// handshake record is read up to the complete ClientHello, a possible HTTP request up to
/// the end of its first line ([`sniff::sniff_plain`]). Never returns `Silent` or `Closed`.
/// Used both when the client spoke first and when it answered a server-first protocol,
/// so that late bytes get the same checks as early ones.
pub async fn classify_flight<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut bytes: Vec<u8>,
    limits: &FlightLimits,
) -> Result<FirstFlight, FlightError> {
    if bytes.first() == Some(&HANDSHAKE) {
        let (bytes, info) =
            read_client_hello(stream, bytes, limits.max_client_hello, limits.hello_timeout).await?;
        return Ok(FirstFlight::Tls { bytes, info });
    }
    let plain = read_plain(stream, &mut bytes, limits).await?;
    Ok(match plain {
        Plain::Http => FirstFlight::Http { bytes },
        Plain::Http2Preface => FirstFlight::Http2Preface,
        Plain::Other => FirstFlight::Other { bytes },
    })
}

/// Reads into `buf` until [`sniff::sniff_plain`] can tell what it is, within the request
/// line's size and time limits (exceeding either is an error: fail closed).
async fn read_plain<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &FlightLimits,
) -> Result<Plain, FlightError> {
    let max = limits.max_request_line;
    let work = async {
        loop {
            if let Some(plain) = sniff_plain(buf) {
                return Ok(plain);
            }
            if buf.len() >= max {
                return Err(FlightError::LineTooLong(max));
            }
            let mut chunk = [0u8; 4096];
            let room = (max - buf.len()).min(chunk.len());
            let n = stream
                .read(&mut chunk[..room])
                .await
                .map_err(|e| FlightError::Io(e.to_string()))?;
            if n == 0 {
                return Err(FlightError::LineTruncated);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(limits.line_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(FlightError::LineTimeout),
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// Builds a minimal TLS 1.2-style ClientHello carrying `names` as host_name entries of one
/// server_name extension (none: no extension), split into records of at most
/// `record_size` payload bytes. Meant for tests and fuzz seeds: real clients' bytes are in
/// `proxy/testdata/`.
pub fn synthetic_client_hello(names: &[&str], record_size: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[3, 3]); // client_version TLS 1.2
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // empty session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut extensions = Vec::new();
    if !names.is_empty() {
        let mut list = Vec::new();
        for name in names {
            list.push(0); // host_name
            list.extend_from_slice(&u16_be(name.len()));
            list.extend_from_slice(name.as_bytes());
        }
        let mut sni = u16_be(list.len()).to_vec();
        sni.extend_from_slice(&list);
        extensions.extend_from_slice(&[0, 0]); // server_name
        extensions.extend_from_slice(&u16_be(sni.len()));
        extensions.extend_from_slice(&sni);
    }
    body.extend_from_slice(&u16_be(extensions.len()));
    body.extend_from_slice(&extensions);
    let mut handshake = vec![CLIENT_HELLO];
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    records(&handshake, record_size.max(1))
}

/// Wraps handshake bytes into handshake records of at most `size` payload bytes.
pub fn records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size.clamp(1, MAX_RECORD)) {
        out.extend_from_slice(&[HANDSHAKE, 3, 1]);
        out.extend_from_slice(&u16_be(chunk.len()));
        out.extend_from_slice(chunk);
    }
    out
}

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}
