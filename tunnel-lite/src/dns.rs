//! The DNS responder for `<name>.<suffix>` (suffix default `hoop`).
//!
//! [`answer`] is the whole protocol: a pure function from query bytes and a
//! [`DnsTable`] to response bytes, tested with byte vectors. [`serve_udp`] and
//! [`serve_tcp`] are the I/O loops around it; the table reaches them through a
//! `watch::Receiver` so policy changes apply to the next query. The responder is
//! authoritative for the suffix only: it never recurses and refuses everything else.
//! Wire format via hickory-proto; no state is kept between queries.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::debug;

/// TTL of every record we serve, and the negative-caching time (SOA minimum): names
/// come and go with the policy, so resolvers must not remember them for long.
pub const TTL: u32 = 5;
/// A TCP client silent for this long is disconnected.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest DNS message accepted (UDP datagram or TCP frame).
pub const MAX_MESSAGE: usize = 65_535;
/// TCP clients served at once; further connections are closed on accept.
pub const MAX_TCP_CONNECTIONS: usize = 64;

const HEADER_LEN: usize = 12;
const OPT_TYPE: u16 = 41;
/// UDP payload size we advertise in EDNS (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// The names the responder answers for.
#[derive(Clone, Debug, Default)]
pub struct DnsTable {
    /// Zone apex, e.g. `hoop` (a trailing dot is ignored). Empty: refuse everything.
    pub suffix: String,
    /// Label (the part before `.<suffix>`, matched case-insensitively) -> its address.
    pub names: BTreeMap<String, Ipv4Addr>,
}

/// Builds the response to one DNS message, or `None` when there is nothing sensible to
/// send back: fewer than 12 bytes, or a message that is itself a response (answering
/// those could loop between two responders).
///
/// - One question, class IN (or ANY), opcode QUERY; QNAME compared case-insensitively,
///   echoed as sent.
/// - `<name>.<suffix>` in the table: A (and ANY) -> one A record, TTL [`TTL`]; any other
///   type -> NOERROR without answers and the zone SOA in the authority section.
/// - Other names under the suffix (unknown, or deeper) -> NXDOMAIN with the SOA.
/// - The apex: SOA and NS are answered (the name server is `localhost.`, as nothing is
///   delegated), other types get NOERROR with the SOA.
/// - Outside the suffix, another class, or a zone transfer -> REFUSED.
/// - AA is set under the suffix, RA never; RD and CD are copied.
/// - Other opcodes -> NOTIMP; unparsable question, additional section, or a question
///   count other than 1 -> FORMERR (header only, same id).
/// - EDNS: an OPT in the query gets an OPT (version 0, 1232 bytes) in the response;
///   version > 0 gets BADVERS.
pub fn answer(query_bytes: &[u8], table: &DnsTable) -> Option<Vec<u8>> {
    let zone = Zone::new(table);
    let mut out = Vec::with_capacity(512);
    zone.respond(query_bytes, &mut out).then_some(out)
}

/// Answers DNS over UDP on `socket` until the socket fails.
///
/// Malformed datagrams are dropped or answered with an error; they never stop the loop.
/// Failing to send one reply (the client went away) is logged and ignored.
pub async fn serve_udp(socket: UdpSocket, mut table: watch::Receiver<DnsTable>) -> io::Result<()> {
    let mut zone = Zone::current(&mut table);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut out = Vec::with_capacity(512);
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e),
        };
        zone.refresh(&mut table);
        let message = buf.get(..len).unwrap_or_default();
        if !zone.respond(message, &mut out) {
            debug!(%peer, len, "dns: dropped unanswerable datagram");
            continue;
        }
        if let Err(e) = socket.send_to(&out, peer).await {
            debug!(%peer, error = %e, "dns: reply not sent");
        }
    }
}

/// Answers DNS over TCP (RFC 1035/7766 two-byte length framing) until accepting fails.
///
/// Each connection runs on its own task, answers queries in order, and is closed after
/// [`TCP_IDLE_TIMEOUT`] of silence or on a message too broken to answer. Connection
/// tasks are aborted when this future is dropped.
pub async fn serve_tcp(listener: TcpListener, table: watch::Receiver<DnsTable>) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_transient(&e) => continue,
            // Out of file descriptors (EMFILE, ENFILE): back off instead of spinning.
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                debug!(error = %e, "dns: accept failed, backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "dns: too many TCP clients, closing");
            continue;
        };
        let table = table.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_tcp_connection(stream, table).await {
                debug!(%peer, error = %e, "dns: TCP client ended with an error");
            }
        });
    }
}

async fn serve_tcp_connection(
    mut stream: TcpStream,
    mut table: watch::Receiver<DnsTable>,
) -> io::Result<()> {
    let mut zone = Zone::current(&mut table);
    let mut message = Vec::new();
    let mut out = Vec::with_capacity(512);
    let mut frame = Vec::with_capacity(514);
    loop {
        let mut len = [0u8; 2];
        match timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Err(_elapsed) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        // A u16 length is at most MAX_MESSAGE: the buffer is bounded by construction.
        message.resize(usize::from(u16::from_be_bytes(len)), 0);
        match timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut message)).await {
            Err(_elapsed) => return Ok(()),
            Ok(result) => result?,
        };
        zone.refresh(&mut table);
        if !zone.respond(&message, &mut out) {
            return Ok(());
        }
        let Ok(out_len) = u16::try_from(out.len()) else {
            return Ok(());
        };
        frame.clear();
        frame.extend_from_slice(&out_len.to_be_bytes());
        frame.extend_from_slice(&out);
        match timeout(TCP_IDLE_TIMEOUT, stream.write_all(&frame)).await {
            Err(_elapsed) => return Ok(()),
            Ok(result) => result?,
        }
    }
}

/// Errors that concern one peer, not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A table with its apex records built once, rebuilt only when the table changes.
struct Zone {
    names: BTreeMap<String, Ipv4Addr>,
    apex: Option<Apex>,
}

struct Apex {
    name: Name,
    soa: Record,
    ns: Record,
}

/// Where a question's name falls relative to the zone.
enum Target<'z> {
    Outside,
    Apex(&'z Apex),
    Known(&'z Apex, Ipv4Addr),
    Missing(&'z Apex),
}

impl Zone {
    fn new(table: &DnsTable) -> Self {
        Self {
            // Keys should already be lowercase; normalizing once here costs nothing per query.
            names: table
                .names
                .iter()
                .map(|(name, ip)| (name.to_ascii_lowercase(), *ip))
                .collect(),
            apex: Apex::new(&table.suffix),
        }
    }

    fn current(rx: &mut watch::Receiver<DnsTable>) -> Self {
        Self::new(&rx.borrow_and_update())
    }

    /// Picks up a new table if one was published (a closed sender keeps the last one).
    fn refresh(&mut self, rx: &mut watch::Receiver<DnsTable>) {
        if rx.has_changed().unwrap_or(false) {
            *self = Self::current(rx);
        }
    }

    /// Writes the response to `msg` into `out`; false when nothing should be sent.
    fn respond(&self, msg: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if msg.len() < HEADER_LEN {
            return false;
        }
        let mut decoder = BinDecoder::new(msg);
        let Ok(request) = Header::read(&mut decoder) else {
            return false;
        };
        if request.message_type() == MessageType::Response {
            return false;
        }
        let mut header = Header::new();
        header
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_checking_disabled(request.checking_disabled());
        if request.op_code() != OpCode::Query {
            return header_only(out, header, ResponseCode::NotImp);
        }
        if request.query_count() != 1 {
            return header_only(out, header, ResponseCode::FormErr);
        }
        let Ok(query) = Query::read(&mut decoder) else {
            return header_only(out, header, ResponseCode::FormErr);
        };
        let Ok(edns) = read_edns(&mut decoder, &request) else {
            return header_only(out, header, ResponseCode::FormErr);
        };
        if edns.is_some_and(|version| version > 0) {
            header.set_response_code(ResponseCode::BADVERS);
            return emit(out, header, &query, [None, None], None, Some(1)) || servfail(out, header);
        }
        let edns = edns.map(|_| 0);

        let a_record;
        let qtype = query.query_type();
        let (rcode, answers, authority): (_, [Option<&Record>; 2], _) = match self.classify(&query)
        {
            Target::Outside => (ResponseCode::Refused, [None, None], None),
            Target::Missing(apex) => (ResponseCode::NXDomain, [None, None], Some(&apex.soa)),
            Target::Apex(apex) => match qtype {
                RecordType::SOA => (ResponseCode::NoError, [Some(&apex.soa), None], None),
                RecordType::NS => (ResponseCode::NoError, [Some(&apex.ns), None], None),
                RecordType::ANY => (
                    ResponseCode::NoError,
                    [Some(&apex.soa), Some(&apex.ns)],
                    None,
                ),
                _ => (ResponseCode::NoError, [None, None], Some(&apex.soa)),
            },
            Target::Known(apex, ip) => match qtype {
                RecordType::A | RecordType::ANY => {
                    a_record = Record::from_rdata(query.name().clone(), TTL, RData::A(A(ip)));
                    (ResponseCode::NoError, [Some(&a_record), None], None)
                }
                _ => (ResponseCode::NoError, [None, None], Some(&apex.soa)),
            },
        };
        header
            .set_authoritative(rcode != ResponseCode::Refused)
            .set_response_code(rcode);
        emit(out, header, &query, answers, authority, edns) || servfail(out, header)
    }

    fn classify(&self, query: &Query) -> Target<'_> {
        let Some(apex) = &self.apex else {
            return Target::Outside;
        };
        let class_ok = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
        let transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
        if !class_ok || transfer {
            return Target::Outside;
        }
        let qname = query.name();
        let (q_labels, apex_labels) = (qname.iter().len(), apex.name.iter().len());
        let Some(prefix) = q_labels.checked_sub(apex_labels) else {
            return Target::Outside;
        };
        let under_apex = qname
            .iter()
            .skip(prefix)
            .zip(apex.name.iter())
            .all(|(q, a)| q.eq_ignore_ascii_case(a));
        if !under_apex {
            return Target::Outside;
        }
        if prefix == 0 {
            return Target::Apex(apex);
        }
        // The part before the suffix, lowercased into a stack buffer (no allocation).
        // A wire name is at most 255 bytes, so its dotted form fits.
        let mut buf = [0u8; 255];
        let mut len = 0;
        for (i, label) in qname.iter().take(prefix).enumerate() {
            let dot = usize::from(i > 0);
            let Some(dst) = buf.get_mut(len..len + dot + label.len()) else {
                return Target::Missing(apex);
            };
            if label.contains(&b'.') {
                return Target::Missing(apex);
            }
            let (sep, body) = dst.split_at_mut(dot);
            sep.fill(b'.');
            for (d, s) in body.iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            len += dot + label.len();
        }
        let key = buf.get(..len).and_then(|k| std::str::from_utf8(k).ok());
        match key.and_then(|k| self.names.get(k)) {
            Some(ip) => Target::Known(apex, *ip),
            None => Target::Missing(apex),
        }
    }
}

impl Apex {
    /// `None` (refuse everything) for an empty or unparsable suffix.
    fn new(suffix: &str) -> Option<Self> {
        let suffix = suffix.trim_end_matches('.');
        if suffix.is_empty() {
            return None;
        }
        let name = Name::from_ascii(format!("{suffix}.")).ok()?.to_lowercase();
        let server = Name::from_ascii("localhost.").ok()?;
        let mailbox = name.prepend_label("hostmaster").ok()?;
        let soa = SOA::new(server.clone(), mailbox, 1, 3600, 600, 86_400, TTL);
        Some(Self {
            soa: Record::from_rdata(name.clone(), TTL, RData::SOA(soa)),
            ns: Record::from_rdata(name.clone(), TTL, RData::NS(NS(server))),
            name,
        })
    }
}

/// Skips the answer and authority sections and reads the additional one, returning the
/// EDNS version if an OPT record is present. Any malformed record, a second OPT, or an
/// OPT not owned by the root is an error (FORMERR, RFC 6891 6.1.1).
fn read_edns(decoder: &mut BinDecoder<'_>, request: &Header) -> Result<Option<u8>, ProtoError> {
    let skipped = u32::from(request.answer_count()) + u32::from(request.name_server_count());
    for _ in 0..skipped {
        read_record_header(decoder)?;
    }
    let mut version = None;
    for _ in 0..request.additional_count() {
        let (owner_is_root, rtype, ttl) = read_record_header(decoder)?;
        if rtype == OPT_TYPE {
            if version.is_some() || !owner_is_root {
                return Err("bad OPT record".into());
            }
            version = Some(ttl.to_be_bytes()[1]);
        }
    }
    Ok(version)
}

/// Reads one resource record, keeping only what EDNS detection needs.
fn read_record_header(decoder: &mut BinDecoder<'_>) -> Result<(bool, u16, u32), ProtoError> {
    let owner = Name::read(decoder)?;
    let rtype = decoder.read_u16()?.unverified(/* any type may be skipped */);
    let _class = decoder.read_u16()?.unverified(/* unused */);
    let ttl = decoder.read_u32()?.unverified(/* only EDNS bits are read from it */);
    let rdlength = decoder.read_u16()?.unverified(/* read_slice checks the bounds */);
    decoder.read_slice(usize::from(rdlength))?;
    Ok((owner.is_root(), rtype, ttl))
}

/// Writes header, the echoed question, records and (if `edns` holds the extended rcode)
/// our OPT record. False if encoding failed, leaving `out` to be overwritten.
fn emit(
    out: &mut Vec<u8>,
    mut header: Header,
    query: &Query,
    answers: [Option<&Record>; 2],
    authority: Option<&Record>,
    edns: Option<u8>,
) -> bool {
    out.clear();
    header
        .set_query_count(1)
        .set_answer_count(answers.iter().flatten().count() as u16)
        .set_name_server_count(u16::from(authority.is_some()))
        .set_additional_count(u16::from(edns.is_some()));
    let mut encoder = BinEncoder::new(out);
    let result = (|| -> Result<(), ProtoError> {
        header.emit(&mut encoder)?;
        query.emit(&mut encoder)?;
        for record in answers.into_iter().flatten().chain(authority) {
            record.emit(&mut encoder)?;
        }
        if let Some(extended_rcode) = edns {
            encoder.emit(0)?; // owner: root
            encoder.emit_u16(OPT_TYPE)?;
            encoder.emit_u16(EDNS_PAYLOAD)?; // class: our UDP payload size
            encoder.emit_u32(u32::from(extended_rcode) << 24)?; // version 0, DO off
            encoder.emit_u16(0)?; // no options
        }
        Ok(())
    })();
    result.is_ok()
}

fn header_only(out: &mut Vec<u8>, mut header: Header, rcode: ResponseCode) -> bool {
    out.clear();
    header.set_response_code(rcode);
    header.emit(&mut BinEncoder::new(out)).is_ok()
}

fn servfail(out: &mut Vec<u8>, header: Header) -> bool {
    header_only(out, header, ResponseCode::ServFail)
}

#[cfg(test)]
mod tests;
