//! The untagged startup phase, frontend side: SSLRequest, GSSENCRequest,
//! CancelRequest and StartupMessage, told apart by the 4-byte code after the
//! length word.

use super::{CodecError, MAX_CANCEL_KEY, MAX_STARTUP, MIN_CANCEL_KEY, MIN_STARTUP};

/// Request code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A protocol version the codec accepts: 3.0 or 3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolVersion(u32);

impl ProtocolVersion {
    /// Protocol 3.0 (196608), every PostgreSQL since 7.4.
    pub const V3_0: ProtocolVersion = ProtocolVersion(3 << 16);
    /// Protocol 3.2 (196610), PostgreSQL 18: variable-length cancel keys.
    pub const V3_2: ProtocolVersion = ProtocolVersion((3 << 16) | 2);

    /// Accepts 3.0 and 3.2; anything else is [`CodecError::UnknownProtocol`].
    pub fn from_code(code: u32) -> Result<Self, CodecError> {
        match code {
            c if c == Self::V3_0.0 || c == Self::V3_2.0 => Ok(ProtocolVersion(c)),
            c => Err(CodecError::UnknownProtocol(c)),
        }
    }

    /// The version as sent on the wire (major << 16 | minor).
    pub const fn code(self) -> u32 {
        self.0
    }

    /// Major version (3).
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// Minor version (0 or 2).
    pub const fn minor(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

/// One decoded startup-phase packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMessage<'a> {
    /// The client asks for TLS; answer one byte ([`super::SSL_NOT_SUPPORTED`]).
    SslRequest,
    /// The client asks for GSSAPI encryption; answer one byte.
    GssEncRequest,
    /// Cancel the query running on another connection.
    Cancel(CancelRequest<'a>),
    /// A session start: protocol version and parameters.
    Startup(Startup<'a>),
}

/// A CancelRequest: the target backend's process id and secret key
/// (4 bytes in protocol 3.0, up to 256 in 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest<'a> {
    pub process_id: i32,
    pub secret_key: &'a [u8],
}

/// A StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startup<'a> {
    pub version: ProtocolVersion,
    pub params: StartupParams<'a>,
}

/// The validated parameter list of a StartupMessage, iterated as borrowed
/// `(name, value)` pairs without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartupParams<'a> {
    /// `name\0value\0` repeated, without the final terminator; validated.
    text: &'a str,
}

impl<'a> StartupParams<'a> {
    /// The pairs in the order the client sent them.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { rest: self.text }
    }

    /// The value of the first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The `user` parameter (required by PostgreSQL, not by this codec).
    pub fn user(&self) -> Option<&'a str> {
        self.get("user")
    }

    /// The `database` parameter (PostgreSQL defaults it to the user name).
    pub fn database(&self) -> Option<&'a str> {
        self.get("database")
    }

    /// True when the client sent no parameters.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl<'a> IntoIterator for StartupParams<'a> {
    type Item = (&'a str, &'a str);
    type IntoIter = ParamIter<'a>;
    fn into_iter(self) -> ParamIter<'a> {
        self.iter()
    }
}

/// Iterator over startup parameters.
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let (key, rest) = self.rest.split_once('\0')?;
        let (value, rest) = rest.split_once('\0')?;
        self.rest = rest;
        Some((key, value))
    }
}

/// Decodes one startup-phase packet from the front of `buf`, returning it
/// and the number of bytes it used.
///
/// `Ok(None)` means more bytes are needed. The declared length is checked
/// from its 4 bytes alone (at least [`MIN_STARTUP`], at most [`MAX_STARTUP`]
/// plus the length word, as PostgreSQL does), and the request code from the
/// next 4, so a lying packet fails before its body is awaited.
pub fn decode_startup(buf: &[u8]) -> Result<Option<(StartupMessage<'_>, usize)>, CodecError> {
    let Some(len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let declared = u32::from_be_bytes(*len);
    let len = declared as usize;
    if len < MIN_STARTUP {
        return Err(CodecError::LengthTooSmall(declared));
    }
    if len - 4 > MAX_STARTUP {
        return Err(CodecError::LengthTooLarge {
            len,
            max: MAX_STARTUP + 4,
        });
    }
    let Some(code) = buf.get(4..8) else {
        return Ok(None);
    };
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let version = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if len != MIN_STARTUP {
                return Err(CodecError::TrailingBytes);
            }
            let msg = if code == SSL_REQUEST_CODE {
                StartupMessage::SslRequest
            } else {
                StartupMessage::GssEncRequest
            };
            return Ok(Some((msg, len)));
        }
        CANCEL_REQUEST_CODE => {
            let key_len = len.saturating_sub(12);
            if len < 12 + MIN_CANCEL_KEY || key_len > MAX_CANCEL_KEY {
                return Err(CodecError::BadKeyLength(key_len));
            }
            None
        }
        other => Some(ProtocolVersion::from_code(other)?),
    };
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let body = &packet[8..];
    let msg = match version {
        None => {
            let (pid, key) = body.split_first_chunk::<4>().ok_or(CodecError::Truncated)?;
            StartupMessage::Cancel(CancelRequest {
                process_id: i32::from_be_bytes(*pid),
                secret_key: key,
            })
        }
        Some(version) => StartupMessage::Startup(Startup {
            version,
            params: parse_params(body)?,
        }),
    };
    Ok(Some((msg, len)))
}

/// Validates `name\0value\0...\0` (the list ends with an empty name) filling
/// the packet exactly.
fn parse_params(body: &[u8]) -> Result<StartupParams<'_>, CodecError> {
    let Some((&0, pairs)) = body.split_last() else {
        return Err(CodecError::MissingNul);
    };
    let mut rest = pairs;
    while !rest.is_empty() {
        let key = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(CodecError::MissingNul)?;
        if key == 0 {
            // An empty name ends the list; anything after it is garbage.
            return Err(CodecError::TrailingBytes);
        }
        rest = &rest[key + 1..];
        let value = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(CodecError::MissingNul)?;
        rest = &rest[value + 1..];
    }
    let text = std::str::from_utf8(pairs).map_err(|_| CodecError::NotUtf8)?;
    Ok(StartupParams { text })
}
