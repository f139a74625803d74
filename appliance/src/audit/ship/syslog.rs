//! Syslog sink: RFC 5424 messages, RFC 5425 octet-counting framing
//! (`MSG-LEN SP SYSLOG-MSG`), over TLS or plain TCP. The message codec is a
//! pure function ([`format_message`], [`frame`]); the transport keeps one
//! connection, watches it for EOF, and reports as acknowledged only what was
//! written at least `settle` ago on a connection that is still open.
//!
//! Message layout:
//! `<PRI>1 TIMESTAMP HOSTNAME appliance - KIND [audit@32473 id=".." seq=".." hash=".."] JSON`
//! with PRI = facility * 8 + severity (5 notice for denied/refused outcomes,
//! 6 info otherwise), TIMESTAMP the record's time (UTC, milliseconds), and
//! JSON the record exactly as `audit list --json` prints it. 32473 is the
//! enterprise number RFC 5612 reserves for documentation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ShipError, SinkConfig, SinkKind, SinkStatus};
use crate::audit::{RawRow, StoredRecord};

/// Structured-data id of the audit element.
pub const SD_ID: &str = "audit@32473";

fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn timestamp(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(m) => humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(m))
            .to_string(),
        Err(_) => "-".to_owned(),
    }
}

/// One RFC 5424 message for a stored row (no framing).
pub fn format_message(row: &RawRow, facility: u8, hostname: &str) -> String {
    let severity = match row.outcome.as_deref() {
        Some("denied" | "refused") => 5,
        _ => 6,
    };
    let pri = u16::from(facility) * 8 + severity;
    let json = match StoredRecord::from_raw(row) {
        Ok(rec) => serde_json::to_string(&rec).unwrap_or_default(),
        // A row this version cannot decode still ships, as its raw columns.
        Err(_) => {
            serde_json::json!({ "seq": row.seq, "id": row.id, "kind": row.kind, "hash": row.hash })
                .to_string()
        }
    };
    // MSGID is at most 32 printable ASCII characters.
    let msgid: String = row
        .kind
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    format!(
        "<{pri}>1 {} {hostname} appliance - {} [{SD_ID} id=\"{}\" seq=\"{}\" hash=\"{}\"] {json}",
        timestamp(row.time_ms),
        if msgid.is_empty() { "-" } else { &msgid },
        sd_escape(&row.id),
        row.seq,
        sd_escape(&row.hash),
    )
}

/// RFC 5425 octet counting: `LEN SP MSG`, appended to `out`.
pub fn frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

struct Conn {
    writer: tokio::io::WriteHalf<Box<dyn Stream>>,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type TlsSetup = (
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
);

/// One sink's connection and its in-flight (unsettled) records.
pub struct SyslogTransport {
    address: String,
    tls: Option<TlsSetup>,
    facility: u8,
    hostname: String,
    settle: Duration,
    conn: Option<Conn>,
    /// (last seq of a write, when it was written), oldest first.
    in_flight: VecDeque<(i64, Instant)>,
    buf: Vec<u8>,
}

impl SyslogTransport {
    pub fn new(cfg: &SinkConfig) -> Result<SyslogTransport, ShipError> {
        let SinkKind::Syslog {
            address,
            tls,
            facility,
            hostname,
            settle,
        } = &cfg.kind
        else {
            return Err(ShipError::Config("not a syslog sink".into()));
        };
        let tls = if *tls {
            let host = cfg.server_name.clone().unwrap_or_else(|| {
                address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                    .unwrap_or_default()
            });
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| ShipError::Config(format!("bad TLS server name {host:?}")))?;
            let connector =
                tokio_rustls::TlsConnector::from(super::client_tls(cfg.ca_file.as_deref())?);
            Some((connector, name))
        } else {
            None
        };
        Ok(SyslogTransport {
            address: address.clone(),
            tls,
            facility: *facility,
            hostname: hostname.clone(),
            settle: *settle,
            conn: None,
            in_flight: VecDeque::new(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn connect(address: &str, tls: &Option<TlsSetup>) -> Result<Conn, ShipError> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| ShipError::Connect(address.to_owned(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ShipError::Tls(e.to_string()))?,
            ),
            None => Box::new(tcp),
        };
        let (mut rd, writer) = tokio::io::split(stream);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        // The receiver never sends; a read returning means it closed or reset.
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 512];
            loop {
                match rd.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Conn {
            writer,
            closed,
            reader,
        })
    }

    /// Drops the connection and forgets what was in flight (the caller
    /// rewinds to its cursor).
    pub fn reset(&mut self) {
        self.conn = None;
        self.in_flight.clear();
    }

    fn settled(&mut self) -> Option<i64> {
        let mut acked = None;
        while let Some(&(seq, at)) = self.in_flight.front() {
            if at.elapsed() < self.settle {
                break;
            }
            acked = Some(seq);
            self.in_flight.pop_front();
        }
        acked
    }

    /// Idle check: an error if the receiver closed the connection with
    /// records in flight, else what settled.
    pub fn poll_ack(&mut self) -> Result<Option<i64>, ShipError> {
        if let Some(c) = &self.conn {
            if c.closed.load(Ordering::Acquire) {
                self.conn = None;
                if !self.in_flight.is_empty() {
                    return Err(ShipError::Closed);
                }
            }
        }
        Ok(self.settled())
    }

    pub async fn send(
        &mut self,
        rows: &[RawRow],
        status: &SinkStatus,
    ) -> Result<Option<i64>, ShipError> {
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.closed.load(Ordering::Acquire))
        {
            self.conn = None;
            if !self.in_flight.is_empty() {
                return Err(ShipError::Closed);
            }
        }
        if self.conn.is_none() {
            self.conn = Some(Self::connect(&self.address, &self.tls).await?);
        }
        self.buf.clear();
        for row in rows {
            frame(
                &format_message(row, self.facility, &self.hostname),
                &mut self.buf,
            );
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(ShipError::Closed);
        };
        conn.writer.write_all(&self.buf).await?;
        conn.writer.flush().await?;
        status
            .sent_records
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        status
            .sent_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        if let Some(last) = rows.last() {
            self.in_flight.push_back((last.seq, Instant::now()));
        }
        Ok(self.settled())
    }
}
