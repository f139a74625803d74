//! Encoders: free functions appending one message to the caller's buffer
//! (`Vec<u8>` or `BytesMut`), writing a placeholder length and patching it
//! once the body is written. They allocate nothing beyond growing that
//! buffer. A fallible encoder that fails leaves the buffer as it found it,
//! so a half-written message can never be sent.

use bytes::{BufMut, BytesMut};

use super::backend::{Field, TransactionStatus};
use super::startup::{ProtocolVersion, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};
use super::{CodecError, MAX_CANCEL_KEY, MAX_STARTUP, MIN_CANCEL_KEY};

/// A buffer the encoders can append to and patch lengths in.
pub trait WireBuf: BufMut {
    /// Bytes written so far.
    fn written(&self) -> usize;
    /// Overwrites already-written bytes starting at `at`.
    fn patch(&mut self, at: usize, bytes: &[u8]);
    /// Drops everything after the first `len` bytes.
    fn rewind(&mut self, len: usize);
}

impl WireBuf for Vec<u8> {
    fn written(&self) -> usize {
        self.len()
    }
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn rewind(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl WireBuf for BytesMut {
    fn written(&self) -> usize {
        self.len()
    }
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn rewind(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Writes `[tag] len body` with `body` from `f`, patching the length, or
/// rewinds and returns the error.
fn message<B, F>(buf: &mut B, tag: Option<u8>, f: F) -> Result<(), CodecError>
where
    B: WireBuf,
    F: FnOnce(&mut B) -> Result<(), CodecError>,
{
    let start = buf.written();
    if let Some(tag) = tag {
        buf.put_u8(tag);
    }
    let len_at = buf.written();
    buf.put_i32(0);
    let result = f(buf).and_then(|()| {
        let len = buf.written() - len_at;
        let len32 = i32::try_from(len).map_err(|_| CodecError::LengthTooLarge {
            len,
            max: i32::MAX as usize,
        })?;
        buf.patch(len_at, &len32.to_be_bytes());
        Ok(())
    });
    if result.is_err() {
        buf.rewind(start);
    }
    result
}

/// A NUL-terminated string; refuses embedded NULs, which would end it early
/// and shift every field after it.
fn put_cstr<B: WireBuf>(buf: &mut B, s: &[u8]) -> Result<(), CodecError> {
    if s.contains(&0) {
        return Err(CodecError::EmbeddedNul);
    }
    buf.put_slice(s);
    buf.put_u8(0);
    Ok(())
}

/// An Int32 length then the bytes.
fn put_value<B: WireBuf>(buf: &mut B, v: &[u8]) -> Result<(), CodecError> {
    let len = i32::try_from(v.len()).map_err(|_| CodecError::LengthTooLarge {
        len: v.len(),
        max: i32::MAX as usize,
    })?;
    buf.put_i32(len);
    buf.put_slice(v);
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), CodecError> {
    if (MIN_CANCEL_KEY..=MAX_CANCEL_KEY).contains(&key.len()) {
        Ok(())
    } else {
        Err(CodecError::BadKeyLength(key.len()))
    }
}

// ---------------------------------------------------------------- backend

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    /// The non-localized wire text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse the appliance sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    pub severity: Severity,
    /// Five-character SQLSTATE, e.g. `08P01`, `42501`, `28000`.
    pub sqlstate: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> Diagnostic<'a> {
    /// A diagnostic without detail or hint.
    pub const fn new(severity: Severity, sqlstate: &'a str, message: &'a str) -> Self {
        Diagnostic {
            severity,
            sqlstate,
            message,
            detail: None,
            hint: None,
        }
    }

    /// Adds the 'D' field.
    pub const fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds the 'H' field.
    pub const fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }
}

fn error_or_notice<B: WireBuf>(buf: &mut B, tag: u8, d: &Diagnostic<'_>) -> Result<(), CodecError> {
    message(buf, Some(tag), |buf| {
        let severity = d.severity.as_str().as_bytes();
        for (code, value) in [
            (b'S', Some(severity)),
            (b'V', Some(severity)),
            (b'C', Some(d.sqlstate.as_bytes())),
            (b'M', Some(d.message.as_bytes())),
            (b'D', d.detail.map(str::as_bytes)),
            (b'H', d.hint.map(str::as_bytes)),
        ] {
            if let Some(value) = value {
                buf.put_u8(code);
                put_cstr(buf, value)?;
            }
        }
        buf.put_u8(0);
        Ok(())
    })
}

/// ErrorResponse ('E'): fields S, V, C, M, then D and H when present.
pub fn error_response<B: WireBuf>(buf: &mut B, d: &Diagnostic<'_>) -> Result<(), CodecError> {
    error_or_notice(buf, b'E', d)
}

/// NoticeResponse ('N'), same fields as [`error_response`].
pub fn notice_response<B: WireBuf>(buf: &mut B, d: &Diagnostic<'_>) -> Result<(), CodecError> {
    error_or_notice(buf, b'N', d)
}

/// AuthenticationOk: `R 00000008 00000000`.
pub fn authentication_ok<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(0);
}

/// ParameterStatus ('S'): `name\0value\0`.
pub fn parameter_status<B: WireBuf>(
    buf: &mut B,
    name: &str,
    value: &str,
) -> Result<(), CodecError> {
    message(buf, Some(b'S'), |buf| {
        put_cstr(buf, name.as_bytes())?;
        put_cstr(buf, value.as_bytes())
    })
}

/// BackendKeyData ('K') with the protocol 3.0 fixed 4-byte key.
pub fn backend_key_data<B: WireBuf>(buf: &mut B, process_id: i32, key: [u8; 4]) {
    buf.put_u8(b'K');
    buf.put_i32(12);
    buf.put_i32(process_id);
    buf.put_slice(&key);
}

/// BackendKeyData ('K') with a protocol 3.2 variable key (4..=256 bytes).
pub fn backend_key_data_var<B: WireBuf>(
    buf: &mut B,
    process_id: i32,
    key: &[u8],
) -> Result<(), CodecError> {
    check_key(key)?;
    message(buf, Some(b'K'), |buf| {
        buf.put_i32(process_id);
        buf.put_slice(key);
        Ok(())
    })
}

/// ReadyForQuery ('Z').
pub fn ready_for_query<B: WireBuf>(buf: &mut B, status: TransactionStatus) {
    buf.put_u8(b'Z');
    buf.put_i32(5);
    buf.put_u8(status.byte());
}

/// RowDescription ('T') from fields (e.g. those of a parsed one, some
/// changed: masking may turn a binary column into text).
pub fn row_description<'f, B, I>(buf: &mut B, fields: I) -> Result<(), CodecError>
where
    B: WireBuf,
    I: IntoIterator<Item = Field<'f>>,
{
    message(buf, Some(b'T'), |buf| {
        let count_at = buf.written();
        buf.put_u16(0);
        let mut count = 0usize;
        for f in fields {
            put_cstr(buf, f.name.as_bytes())?;
            buf.put_u32(f.table_oid);
            buf.put_i16(f.column_id);
            buf.put_u32(f.type_oid);
            buf.put_i16(f.type_size);
            buf.put_i32(f.type_modifier);
            buf.put_i16(f.format);
            count += 1;
        }
        patch_count(buf, count_at, count)
    })
}

/// Writes a 16-bit count into the placeholder at `at`.
fn patch_count<B: WireBuf>(buf: &mut B, at: usize, count: usize) -> Result<(), CodecError> {
    let count = u16::try_from(count).map_err(|_| CodecError::TooManyItems(count))?;
    buf.patch(at, &count.to_be_bytes());
    Ok(())
}

/// DataRow ('D') from column values (`None`: NULL). For rewriting a row
/// value by value without a scratch buffer, see [`DataRowBuilder`].
pub fn data_row<'v, B, I>(buf: &mut B, values: I) -> Result<(), CodecError>
where
    B: WireBuf,
    I: IntoIterator<Item = Option<&'v [u8]>>,
{
    message(buf, Some(b'D'), |buf| {
        let count_at = buf.written();
        buf.put_u16(0);
        let mut count = 0usize;
        for v in values {
            match v {
                None => buf.put_i32(-1),
                Some(v) => put_value(buf, v)?,
            }
            count += 1;
        }
        patch_count(buf, count_at, count)
    })
}

/// CommandComplete ('C'), e.g. `SELECT 3`.
pub fn command_complete<B: WireBuf>(buf: &mut B, tag: &str) -> Result<(), CodecError> {
    message(buf, Some(b'C'), |buf| put_cstr(buf, tag.as_bytes()))
}

/// EmptyQueryResponse: `I 00000004`.
pub fn empty_query_response<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'I');
    buf.put_i32(4);
}

/// ParseComplete: `1 00000004`.
pub fn parse_complete<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'1');
    buf.put_i32(4);
}

/// BindComplete: `2 00000004`.
pub fn bind_complete<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'2');
    buf.put_i32(4);
}

/// Builds a DataRow value by value, writing straight into the buffer: the
/// masking path copies unchanged values and writes replacements in place,
/// with no scratch buffer. Counts and lengths are patched at the end.
///
/// Dropping a builder without [`finish`](Self::finish) removes the partial
/// message from the buffer.
#[derive(Debug)]
pub struct DataRowBuilder<'b, B: WireBuf> {
    buf: &'b mut B,
    start: usize,
    count: usize,
    error: Option<CodecError>,
    done: bool,
}

impl<'b, B: WireBuf> DataRowBuilder<'b, B> {
    /// Starts a DataRow at the end of `buf`.
    pub fn new(buf: &'b mut B) -> Self {
        let start = buf.written();
        buf.put_u8(b'D');
        buf.put_i32(0);
        buf.put_u16(0);
        DataRowBuilder {
            buf,
            start,
            count: 0,
            error: None,
            done: false,
        }
    }

    /// Appends a NULL.
    pub fn null(&mut self) {
        self.buf.put_i32(-1);
        self.count += 1;
    }

    /// Appends a value.
    pub fn value(&mut self, v: &[u8]) {
        if let Err(e) = put_value(self.buf, v) {
            self.error.get_or_insert(e);
        }
        self.count += 1;
    }

    /// Appends a value or NULL.
    pub fn push(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.null(),
            Some(v) => self.value(v),
        }
    }

    /// Appends a value that `write` produces directly into the buffer; its
    /// length is patched afterwards.
    pub fn value_with<F: FnOnce(&mut B)>(&mut self, write: F) {
        let len_at = self.buf.written();
        self.buf.put_i32(0);
        write(self.buf);
        let len = self.buf.written() - len_at - 4;
        match i32::try_from(len) {
            Ok(n) => self.buf.patch(len_at, &n.to_be_bytes()),
            Err(_) => {
                self.error.get_or_insert(CodecError::LengthTooLarge {
                    len,
                    max: i32::MAX as usize,
                });
            }
        }
        self.count += 1;
    }

    /// Number of values appended so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True before the first value.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Patches the count and length; on error the buffer is rewound.
    pub fn finish(mut self) -> Result<(), CodecError> {
        self.done = true;
        let result = self.patch();
        if result.is_err() {
            self.buf.rewind(self.start);
        }
        result
    }

    fn patch(&mut self) -> Result<(), CodecError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        patch_count(self.buf, self.start + 5, self.count)?;
        let len = self.buf.written() - self.start - 1;
        let len32 = i32::try_from(len).map_err(|_| CodecError::LengthTooLarge {
            len,
            max: i32::MAX as usize,
        })?;
        self.buf.patch(self.start + 1, &len32.to_be_bytes());
        Ok(())
    }
}

impl<B: WireBuf> Drop for DataRowBuilder<'_, B> {
    fn drop(&mut self) {
        if !self.done {
            self.buf.rewind(self.start);
        }
    }
}

// --------------------------------------------------------------- frontend

/// StartupMessage: length, protocol version, `name\0value\0` pairs, and the
/// terminating empty name. Bounded by [`MAX_STARTUP`] like the server does.
pub fn startup_message<'p, B, I>(
    buf: &mut B,
    version: ProtocolVersion,
    params: I,
) -> Result<(), CodecError>
where
    B: WireBuf,
    I: IntoIterator<Item = (&'p str, &'p str)>,
{
    message(buf, None, |buf| {
        let start = buf.written() - 4;
        buf.put_u32(version.code());
        for (name, value) in params {
            if name.is_empty() {
                return Err(CodecError::EmptyName);
            }
            put_cstr(buf, name.as_bytes())?;
            put_cstr(buf, value.as_bytes())?;
        }
        buf.put_u8(0);
        let len = buf.written() - start;
        if len - 4 > MAX_STARTUP {
            return Err(CodecError::LengthTooLarge {
                len,
                max: MAX_STARTUP + 4,
            });
        }
        Ok(())
    })
}

/// SSLRequest: `00000008 04d2162f`.
pub fn ssl_request<B: WireBuf>(buf: &mut B) {
    buf.put_i32(8);
    buf.put_u32(SSL_REQUEST_CODE);
}

/// GSSENCRequest: `00000008 04d21630`.
pub fn gssenc_request<B: WireBuf>(buf: &mut B) {
    buf.put_i32(8);
    buf.put_u32(GSSENC_REQUEST_CODE);
}

/// CancelRequest: process id and key (4 bytes for 3.0, up to 256 for 3.2).
pub fn cancel_request<B: WireBuf>(
    buf: &mut B,
    process_id: i32,
    key: &[u8],
) -> Result<(), CodecError> {
    check_key(key)?;
    message(buf, None, |buf| {
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_i32(process_id);
        buf.put_slice(key);
        Ok(())
    })
}

/// PasswordMessage ('p'): a cleartext password or an `md5...` hash.
pub fn password_message<B: WireBuf>(buf: &mut B, password: &[u8]) -> Result<(), CodecError> {
    message(buf, Some(b'p'), |buf| put_cstr(buf, password))
}

/// SASLInitialResponse ('p'): mechanism name and client-first message.
pub fn sasl_initial_response<B: WireBuf>(
    buf: &mut B,
    mechanism: &str,
    data: &[u8],
) -> Result<(), CodecError> {
    message(buf, Some(b'p'), |buf| {
        put_cstr(buf, mechanism.as_bytes())?;
        put_value(buf, data)
    })
}

/// SASLResponse ('p'): the next client message, unframed.
pub fn sasl_response<B: WireBuf>(buf: &mut B, data: &[u8]) -> Result<(), CodecError> {
    message(buf, Some(b'p'), |buf| {
        buf.put_slice(data);
        Ok(())
    })
}

/// Query ('Q').
pub fn query<B: WireBuf>(buf: &mut B, sql: &str) -> Result<(), CodecError> {
    message(buf, Some(b'Q'), |buf| put_cstr(buf, sql.as_bytes()))
}

/// Terminate: `X 00000004`.
pub fn terminate<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'X');
    buf.put_i32(4);
}

/// Sync: `S 00000004`.
pub fn sync<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'S');
    buf.put_i32(4);
}

/// Flush: `H 00000004`.
pub fn flush<B: WireBuf>(buf: &mut B) {
    buf.put_u8(b'H');
    buf.put_i32(4);
}
