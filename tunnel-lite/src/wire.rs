//! The tunnel wire protocol (`tunnel-lite/1`), spoken by tunnel-lite and the
//! appliance over one TLS 1.3 stream per proxied TCP connection.
//!
//! After the handshake the laptop sends one request header; the appliance
//! answers with one response header; then raw bytes flow both ways.
//!
//! ```text
//! request   "TL" | version u8 = 1 | flags u8 = 0
//!           | token_len u16 BE (1..=MAX_TOKEN) | token (ASCII)
//!           | target_len u8 (1..=MAX_TARGET) | target (DNS name, ASCII)
//!           | port u16 BE (nonzero)
//! response  version u8 = 1 | status u8 | reason_len u16 BE (<= MAX_REASON) | reason (UTF-8)
//! ```
//!
//! This module is a codec only: it does no I/O and never allocates. Every
//! length is checked against its bound before anything is read past it, and
//! a decoder returns `Ok(None)` while it needs more bytes.

/// First two bytes of a request: lets the appliance reject a stray protocol fast.
pub const MAGIC: [u8; 2] = *b"TL";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// ALPN protocol id negotiated for tunnel streams.
pub const ALPN: &[u8] = b"tunnel-lite/1";
/// Longest session token accepted (appliance tokens are ~400 bytes).
pub const MAX_TOKEN: usize = 4096;
/// Longest target name (a DNS name).
pub const MAX_TARGET: usize = 253;
/// Longest human-readable reason in a response.
pub const MAX_REASON: usize = 1024;
/// Upper bound of an encoded request; the appliance's read buffer has this size.
pub const MAX_REQUEST: usize = 2 + 1 + 1 + 2 + MAX_TOKEN + 1 + MAX_TARGET + 2;
/// Upper bound of an encoded response.
pub const MAX_RESPONSE: usize = 1 + 1 + 2 + MAX_REASON;

/// A decoded request header, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub token: &'a str,
    pub target: &'a str,
    pub port: u16,
}

/// A decoded response header, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: Status,
    pub reason: &'a str,
}

/// The appliance's verdict on a request. Each refusal has its own code so
/// tunnel-lite can tell the user exactly what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    UnknownTarget = 1,
    NotAllowed = 2,
    PortNotAllowed = 3,
    TokenExpired = 4,
    TokenInvalid = 5,
    IdentityRevoked = 6,
    UpstreamUnreachable = 7,
    PolicyNotLoaded = 8,
    MalformedRequest = 9,
    UnsupportedVersion = 10,
    Internal = 11,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        use Status::*;
        Some(match v {
            0 => Ok,
            1 => UnknownTarget,
            2 => NotAllowed,
            3 => PortNotAllowed,
            4 => TokenExpired,
            5 => TokenInvalid,
            6 => IdentityRevoked,
            7 => UpstreamUnreachable,
            8 => PolicyNotLoaded,
            9 => MalformedRequest,
            10 => UnsupportedVersion,
            11 => Internal,
            _ => return None,
        })
    }

    /// Short stable name, used in logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::UnknownTarget => "unknown target",
            Status::NotAllowed => "not allowed",
            Status::PortNotAllowed => "port not allowed",
            Status::TokenExpired => "token expired",
            Status::TokenInvalid => "token invalid",
            Status::IdentityRevoked => "identity revoked",
            Status::UpstreamUnreachable => "upstream unreachable",
            Status::PolicyNotLoaded => "policy not loaded",
            Status::MalformedRequest => "malformed request",
            Status::UnsupportedVersion => "unsupported version",
            Status::Internal => "internal error",
        }
    }

    /// Whether logging in again is the fix.
    pub fn needs_login(self) -> bool {
        matches!(self, Status::TokenExpired | Status::TokenInvalid)
    }
}

/// Why bytes are not a valid header. Carries no heap data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a tunnel-lite stream (bad magic bytes)")]
    BadMagic,
    #[error("unsupported tunnel protocol version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved flags must be zero, got {0:#04x}")]
    BadFlags(u8),
    #[error("session token length {0} is outside 1..={MAX_TOKEN}")]
    TokenLength(usize),
    #[error("session token is not printable ASCII")]
    TokenNotAscii,
    #[error("target name length {0} is outside 1..={MAX_TARGET}")]
    TargetLength(usize),
    #[error("target name has a character outside [a-z0-9.-]")]
    TargetCharset,
    #[error("port 0 is not a port")]
    PortZero,
    #[error("unknown status code {0}")]
    UnknownStatus(u8),
    #[error("reason length {0} exceeds {MAX_REASON}")]
    ReasonLength(usize),
    #[error("reason is not UTF-8")]
    ReasonNotUtf8,
    #[error("header does not fit the {0}-byte buffer")]
    BufferTooSmall(usize),
}

/// Decodes a request header from the start of `buf`. Returns the header and
/// how many bytes it used, or `Ok(None)` when `buf` is a valid prefix.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, WireError> {
    // Check each field as soon as its bytes are present, so garbage is
    // refused at once instead of after waiting for a claimed length.
    if (!buf.is_empty() && buf[0] != MAGIC[0]) || (buf.len() >= 2 && buf[1] != MAGIC[1]) {
        return Err(WireError::BadMagic);
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[2]));
    }
    if buf.len() >= 4 && buf[3] != 0 {
        return Err(WireError::BadFlags(buf[3]));
    }
    if buf.len() < 6 {
        return Ok(None);
    }
    let token_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if token_len == 0 || token_len > MAX_TOKEN {
        return Err(WireError::TokenLength(token_len));
    }
    let token_end = 6 + token_len;
    let available_token = &buf[6..buf.len().min(token_end)];
    if !available_token.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(WireError::TokenNotAscii);
    }
    if buf.len() <= token_end {
        return Ok(None);
    }
    let target_len = buf[token_end] as usize;
    if target_len == 0 || target_len > MAX_TARGET {
        return Err(WireError::TargetLength(target_len));
    }
    let target_start = token_end + 1;
    let target_end = target_start + target_len;
    let available_target = &buf[target_start..buf.len().min(target_end)];
    if !available_target.iter().all(|&b| is_target_byte(b)) {
        return Err(WireError::TargetCharset);
    }
    if buf.len() < target_end + 2 {
        return Ok(None);
    }
    let port = u16::from_be_bytes([buf[target_end], buf[target_end + 1]]);
    if port == 0 {
        return Err(WireError::PortZero);
    }
    // Both slices were checked to be ASCII above.
    let token = std::str::from_utf8(&buf[6..token_end]).map_err(|_| WireError::TokenNotAscii)?;
    let target = std::str::from_utf8(&buf[target_start..target_end])
        .map_err(|_| WireError::TargetCharset)?;
    Ok(Some((
        Request {
            token,
            target,
            port,
        },
        target_end + 2,
    )))
}

fn is_target_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Encodes a request header into `out`, returning the number of bytes written.
pub fn encode_request(req: &Request<'_>, out: &mut [u8]) -> Result<usize, WireError> {
    let token = req.token.as_bytes();
    let target = req.target.as_bytes();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(WireError::TokenLength(token.len()));
    }
    if !token.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(WireError::TokenNotAscii);
    }
    if target.is_empty() || target.len() > MAX_TARGET {
        return Err(WireError::TargetLength(target.len()));
    }
    if !target.iter().all(|&b| is_target_byte(b)) {
        return Err(WireError::TargetCharset);
    }
    if req.port == 0 {
        return Err(WireError::PortZero);
    }
    let len = 6 + token.len() + 1 + target.len() + 2;
    if out.len() < len {
        return Err(WireError::BufferTooSmall(out.len()));
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = 0;
    out[4..6].copy_from_slice(&(token.len() as u16).to_be_bytes());
    let mut at = 6;
    out[at..at + token.len()].copy_from_slice(token);
    at += token.len();
    out[at] = target.len() as u8;
    at += 1;
    out[at..at + target.len()].copy_from_slice(target);
    at += target.len();
    out[at..at + 2].copy_from_slice(&req.port.to_be_bytes());
    Ok(len)
}

/// Decodes a response header from the start of `buf` (`Ok(None)`: need more).
pub fn decode_response(buf: &[u8]) -> Result<Option<(Response<'_>, usize)>, WireError> {
    if !buf.is_empty() && buf[0] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[0]));
    }
    if buf.len() < 4 {
        return Ok(None);
    }
    let status = Status::from_u8(buf[1]).ok_or(WireError::UnknownStatus(buf[1]))?;
    let reason_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if reason_len > MAX_REASON {
        return Err(WireError::ReasonLength(reason_len));
    }
    if buf.len() < 4 + reason_len {
        return Ok(None);
    }
    let reason =
        std::str::from_utf8(&buf[4..4 + reason_len]).map_err(|_| WireError::ReasonNotUtf8)?;
    Ok(Some((Response { status, reason }, 4 + reason_len)))
}

/// Encodes a response header into `out`. A reason longer than `MAX_REASON`
/// is cut at a character boundary rather than refused.
pub fn encode_response(status: Status, reason: &str, out: &mut [u8]) -> Result<usize, WireError> {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let len = 4 + reason.len();
    if out.len() < len {
        return Err(WireError::BufferTooSmall(out.len()));
    }
    out[0] = VERSION;
    out[1] = status as u8;
    out[2..4].copy_from_slice(&(reason.len() as u16).to_be_bytes());
    out[4..len].copy_from_slice(reason);
    Ok(len)
}

#[cfg(test)]
mod tests;
