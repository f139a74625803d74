//! PostgreSQL v3 wire codec (protocol 3.0 and 3.2): bytes <-> messages, no I/O.
//!
//! This module owns framing and the parsed views of the messages the gateway
//! inspects. It does not read or write sockets, keep session state, or decide
//! anything: a decoder takes `&[u8]` and answers `Ok(None)` when it needs more
//! bytes; an encoder appends to the caller's buffer and patches the length.
//!
//! - Every length a peer supplies is checked against a bound before anything
//!   is reserved or sliced: [`MAX_STARTUP`] for the untagged startup packet,
//!   a caller-supplied `max_len` (policy; [`DEFAULT_MAX_MESSAGE`]) for tagged
//!   messages, checked from the 5 header bytes alone ([`frame_len`]).
//! - Messages are relayed as raw [`Frame`]s; only the tags the gateway inspects
//!   are parsed, on demand, into borrowed views ([`frontend`], [`backend`]).
//!   Views never allocate: repeated fields are iterators over the body slice.
//! - Tags collide between directions ('D' is Describe or DataRow, 'C' Close or
//!   CommandComplete, ...), so frontend and backend views live in separate
//!   modules, each with its own tag constants.
//! - Strings on the wire are in the client encoding, which need not be UTF-8,
//!   so views expose them as [`PgStr`] (raw bytes, UTF-8 checked on request).

mod cursor;
mod encode;
mod startup;

pub mod backend;
pub mod frontend;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_views;

pub use cursor::{CStrIter, I16Iter, OidIter, ValueIter};
pub use encode::{
    authentication_ok, backend_key_data, backend_key_data_var, bind_complete, cancel_request,
    command_complete, data_row, empty_query_response, error_response, flush, gssenc_request,
    notice_response, parameter_status, parse_complete, password_message, query, ready_for_query,
    row_description, sasl_initial_response, sasl_response, ssl_request, startup_message, sync,
    terminate, DataRowBuilder, Diagnostic, Severity, WireBuf,
};
pub use startup::{
    decode_startup, CancelRequest, ParamIter, ProtocolVersion, Startup, StartupMessage,
    StartupParams, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
};

use std::fmt;

/// Largest startup packet accepted, not counting its 4-byte length word
/// (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP: usize = 10_000;
/// Smallest startup packet: the length word and the 4-byte request code.
pub const MIN_STARTUP: usize = 8;
/// Default cap on a tagged message's length field (1 GiB, PostgreSQL's own
/// allocation limit); the gateway takes the real value from policy.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;
/// Bytes before a tagged message's body: the tag and the length word.
pub const FRAME_HEADER_LEN: usize = 5;
/// Shortest and longest cancel key (protocol 3.2 allows up to 256 bytes;
/// 3.0 always uses 4).
pub const MIN_CANCEL_KEY: usize = 4;
/// See [`MIN_CANCEL_KEY`].
pub const MAX_CANCEL_KEY: usize = 256;
/// The single-byte answer refusing an SSLRequest or GSSENCRequest; the
/// client then sends its StartupMessage in the clear on the same connection.
pub const SSL_NOT_SUPPORTED: u8 = b'N';
/// The single-byte answer accepting an SSLRequest (a TLS handshake follows).
pub const SSL_ACCEPTED: u8 = b'S';

/// What was wrong with bytes on the wire (or with an encoder's input).
///
/// Carries no heap data, so it is cheap to copy into an ErrorResponse. The
/// `Display` text is fit to send to a client (the gateway uses SQLSTATE 08P01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A length field below the smallest legal value for its message.
    #[error("invalid message length {0}: too small")]
    LengthTooSmall(u32),
    /// A length above the configured (or protocol) limit.
    #[error("invalid message length {len}: exceeds the limit of {max} bytes")]
    LengthTooLarge { len: usize, max: usize },
    /// A startup packet asking for a protocol version other than 3.0 or 3.2.
    #[error("unsupported frontend protocol {}.{}: server supports 3.0 and 3.2", .0 >> 16, .0 & 0xffff)]
    UnknownProtocol(u32),
    /// A string that must be UTF-8 is not.
    #[error("invalid UTF-8 in message")]
    NotUtf8,
    /// A string is not NUL-terminated within its message.
    #[error("string not terminated within the message")]
    MissingNul,
    /// A field runs past the end of its message.
    #[error("message is shorter than its contents require")]
    Truncated,
    /// Bytes left over after the last field of a message.
    #[error("unexpected bytes after the end of the message")]
    TrailingBytes,
    /// An Authentication message with an unknown request code.
    #[error("unsupported authentication request {0}")]
    BadAuthSubtype(i32),
    /// A cancel key (CancelRequest, BackendKeyData) outside 4..=256 bytes.
    #[error("invalid cancel key length {0}")]
    BadKeyLength(usize),
    /// A value length below -1 (DataRow, Bind, FunctionCall, SASL data).
    #[error("invalid value length {0}")]
    BadValueLength(i32),
    /// A ReadyForQuery status other than 'I', 'T' or 'E'.
    #[error("invalid transaction status {0:#04x}")]
    BadTransactionStatus(u8),
    /// A Describe or Close target other than 'S' (statement) or 'P' (portal).
    #[error("invalid describe/close target {0:#04x}")]
    BadTarget(u8),
    /// A message that must be empty has a body.
    #[error("message must be empty")]
    NotEmpty,
    /// Encoder input: a string to be sent NUL-terminated contains a NUL.
    #[error("string contains a NUL byte")]
    EmbeddedNul,
    /// Encoder input: an empty startup parameter name (it would end the list).
    #[error("startup parameter name is empty")]
    EmptyName,
    /// Encoder input: more items than a 16-bit count can carry.
    #[error("too many items for one message: {0}")]
    TooManyItems(usize),
}

/// A tagged message as it sits in the buffer: tag and body (the bytes after
/// the length word). The whole frame is `buf[..total]` as returned by
/// [`decode_frame`], which is what a relay forwards unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message type byte.
    pub tag: u8,
    /// The message contents after the 4-byte length word.
    pub body: &'a [u8],
}

/// Checks a tagged message header and returns the frame's total size in
/// bytes, including the 5 header bytes.
///
/// For streaming relays: forward the header, then `total - 5` more bytes,
/// without buffering the message whole. The length field must be at least 4
/// and at most `max_len` (clamped to `i32::MAX`, the protocol's own limit).
pub fn frame_len(header: &[u8; FRAME_HEADER_LEN], max_len: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(CodecError::LengthTooSmall(len));
    }
    let max = max_len.min(i32::MAX as usize);
    let len = len as usize;
    if len > max {
        return Err(CodecError::LengthTooLarge { len, max });
    }
    Ok(len + 1)
}

/// Decodes one tagged message from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. The length is checked from the
/// header alone, so an oversized claim fails before the body arrives. The body
/// is not validated: parse it with a [`frontend`] or [`backend`] view when the
/// tag matters.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, CodecError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let total = frame_len(header, max_len)?;
    match buf.get(FRAME_HEADER_LEN..total) {
        Some(body) => Ok(Some((
            Frame {
                tag: header[0],
                body,
            },
            total,
        ))),
        None => Ok(None),
    }
}

/// Checks that a message that carries no data (Sync, Flush, Terminate,
/// CopyDone, NoData, ParseComplete, BindComplete, CloseComplete,
/// PortalSuspended, EmptyQueryResponse) has an empty body.
pub fn parse_empty(body: &[u8]) -> Result<(), CodecError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(CodecError::NotEmpty)
    }
}

/// A string from the wire, without its NUL, in the connection's client
/// encoding (usually but not necessarily UTF-8).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PgStr<'a>(&'a [u8]);

impl<'a> PgStr<'a> {
    /// Wraps raw bytes (which must not contain NUL to be re-encoded).
    pub const fn new(bytes: &'a [u8]) -> Self {
        PgStr(bytes)
    }

    /// The raw bytes, without the terminating NUL.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The text, if it is valid UTF-8.
    pub fn to_str(&self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.0).map_err(|_| CodecError::NotUtf8)
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string (the unnamed statement or portal).
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> From<&'a str> for PgStr<'a> {
    fn from(s: &'a str) -> Self {
        PgStr(s.as_bytes())
    }
}

impl PartialEq<str> for PgStr<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for PgStr<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl fmt::Debug for PgStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

impl fmt::Display for PgStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{FFFD}")?;
            }
        }
        Ok(())
    }
}
