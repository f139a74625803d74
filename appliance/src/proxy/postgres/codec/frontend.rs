//! Views of frontend (client -> server) messages the gateway inspects.
//!
//! Each `parse` takes a frame body, validates its whole layout (every length
//! against the bytes present, no trailing bytes) and returns a view borrowing
//! from it. Repeated fields are iterators over the validated slice. Messages
//! without a body (Sync, Flush, Terminate, CopyDone) are checked with
//! [`super::parse_empty`].

use super::cursor::{i16_array, i32_array, Cursor, I16Iter, OidIter, ValueIter};
use super::{CodecError, PgStr};

/// Simple query.
pub const QUERY_TAG: u8 = b'Q';
/// Extended query: prepare a statement.
pub const PARSE_TAG: u8 = b'P';
/// Extended query: bind parameters to a portal.
pub const BIND_TAG: u8 = b'B';
/// Extended query: run a portal.
pub const EXECUTE_TAG: u8 = b'E';
/// Extended query: describe a statement or portal.
pub const DESCRIBE_TAG: u8 = b'D';
/// Extended query: close a statement or portal.
pub const CLOSE_TAG: u8 = b'C';
/// Extended query: end of a pipeline step.
pub const SYNC_TAG: u8 = b'S';
/// Extended query: flush pending output.
pub const FLUSH_TAG: u8 = b'H';
/// End of session.
pub const TERMINATE_TAG: u8 = b'X';
/// COPY FROM STDIN data.
pub const COPY_DATA_TAG: u8 = b'd';
/// COPY FROM STDIN done.
pub const COPY_DONE_TAG: u8 = b'c';
/// COPY FROM STDIN aborted by the client.
pub const COPY_FAIL_TAG: u8 = b'f';
/// Fast-path function call.
pub const FUNCTION_CALL_TAG: u8 = b'F';
/// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share
/// this tag; which one it is depends on the authentication exchange.
pub const PASSWORD_TAG: u8 = b'p';

/// 'Q': one or more SQL statements as a single string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub sql: PgStr<'a>,
}

impl<'a> Query<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let sql = cur.cstr()?;
        cur.finish()?;
        Ok(Query { sql })
    }
}

/// 'P': prepare `query` as statement `name` (empty: the unnamed statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: PgStr<'a>,
    pub query: PgStr<'a>,
    param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    // Every view is built by `parse`; the Parse message is no exception.
    #[allow(clippy::self_named_constructors)]
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let name = cur.cstr()?;
        let query = cur.cstr()?;
        let n = cur.u16()?;
        let param_types = i32_array(&mut cur, n)?;
        cur.finish()?;
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    /// How many parameter types the client specified (may be fewer than
    /// the query's parameters; 0 means "infer").
    pub fn param_type_count(&self) -> usize {
        self.param_types.len() / 4
    }

    /// The specified parameter type OIDs (0: unspecified).
    pub fn param_types(&self) -> OidIter<'a> {
        OidIter::new(self.param_types)
    }
}

/// 'B': bind parameter values to statement `statement`, creating `portal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: PgStr<'a>,
    pub statement: PgStr<'a>,
    param_formats: &'a [u8],
    param_count: u16,
    params: &'a [u8],
    result_formats: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let portal = cur.cstr()?;
        let statement = cur.cstr()?;
        let n = cur.u16()?;
        let param_formats = i16_array(&mut cur, n)?;
        let param_count = cur.u16()?;
        let params = ValueIter::validate(&mut cur, param_count)?;
        let n = cur.u16()?;
        let result_formats = i16_array(&mut cur, n)?;
        cur.finish()?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            param_count,
            params,
            result_formats,
        })
    }

    /// Parameter format codes as sent (none: all text; one: applies to all).
    pub fn param_formats(&self) -> I16Iter<'a> {
        I16Iter::new(self.param_formats)
    }

    /// The format (0 text, 1 binary) of parameter `index`, by the protocol's
    /// rule for zero, one or one-per-parameter codes.
    pub fn param_format(&self, index: usize) -> i16 {
        format_at(self.param_formats, index)
    }

    /// Number of parameter values.
    pub fn param_count(&self) -> usize {
        usize::from(self.param_count)
    }

    /// Parameter values; `None` is SQL NULL.
    pub fn params(&self) -> ValueIter<'a> {
        ValueIter::new(self.params, self.param_count)
    }

    /// Result-column format codes as sent.
    pub fn result_formats(&self) -> I16Iter<'a> {
        I16Iter::new(self.result_formats)
    }

    /// The format (0 text, 1 binary) the client asked for result column
    /// `index` (what masking must produce for that column).
    pub fn result_format(&self, index: usize) -> i16 {
        format_at(self.result_formats, index)
    }
}

/// Resolves the zero / one / one-per-item format-code rule.
fn format_at(codes: &[u8], index: usize) -> i16 {
    let at = if codes.len() == 2 {
        0
    } else {
        index.saturating_mul(2)
    };
    match codes.get(at..at.saturating_add(2)) {
        Some(&[hi, lo]) => i16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

/// 'E': run `portal`, returning at most `max_rows` rows (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: PgStr<'a>,
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let portal = cur.cstr()?;
        let max_rows = cur.i32()?;
        cur.finish()?;
        Ok(Execute { portal, max_rows })
    }
}

/// What a Describe or Close refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// 'S': a prepared statement.
    Statement,
    /// 'P': a portal.
    Portal,
}

impl Target {
    fn parse(cur: &mut Cursor<'_>) -> Result<Self, CodecError> {
        match cur.u8()? {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            other => Err(CodecError::BadTarget(other)),
        }
    }

    /// The wire byte ('S' or 'P').
    pub const fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

fn target_and_name(body: &[u8]) -> Result<(Target, PgStr<'_>), CodecError> {
    let mut cur = Cursor::new(body);
    let target = Target::parse(&mut cur)?;
    let name = cur.cstr()?;
    cur.finish()?;
    Ok((target, name))
}

/// 'D' (frontend): describe a statement or portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    pub target: Target,
    pub name: PgStr<'a>,
}

impl<'a> Describe<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let (target, name) = target_and_name(body)?;
        Ok(Describe { target, name })
    }
}

/// 'C' (frontend): close a statement or portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    pub target: Target,
    pub name: PgStr<'a>,
}

impl<'a> Close<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let (target, name) = target_and_name(body)?;
        Ok(Close { target, name })
    }
}

/// 'd': a chunk of COPY data (either direction; the layout is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyData<'a> {
    pub data: &'a [u8],
}

impl<'a> CopyData<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        Ok(CopyData { data: body })
    }
}

/// 'f': the client aborts COPY FROM STDIN with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFail<'a> {
    pub message: PgStr<'a>,
}

impl<'a> CopyFail<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let message = cur.cstr()?;
        cur.finish()?;
        Ok(CopyFail { message })
    }
}

/// 'F': fast-path call of function `function` (an OID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub function: u32,
    arg_formats: &'a [u8],
    arg_count: u16,
    args: &'a [u8],
    pub result_format: i16,
}

impl<'a> FunctionCall<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let function = cur.u32()?;
        let n = cur.u16()?;
        let arg_formats = i16_array(&mut cur, n)?;
        let arg_count = cur.u16()?;
        let args = ValueIter::validate(&mut cur, arg_count)?;
        let result_format = cur.i16()?;
        cur.finish()?;
        Ok(FunctionCall {
            function,
            arg_formats,
            arg_count,
            args,
            result_format,
        })
    }

    /// Argument format codes as sent.
    pub fn arg_formats(&self) -> I16Iter<'a> {
        I16Iter::new(self.arg_formats)
    }

    /// Number of arguments.
    pub fn arg_count(&self) -> usize {
        usize::from(self.arg_count)
    }

    /// Argument values; `None` is SQL NULL.
    pub fn args(&self) -> ValueIter<'a> {
        ValueIter::new(self.args, self.arg_count)
    }
}

/// 'p' answering a cleartext or MD5 password request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordMessage<'a> {
    pub password: PgStr<'a>,
}

impl<'a> PasswordMessage<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let password = cur.cstr()?;
        cur.finish()?;
        Ok(PasswordMessage { password })
    }
}

/// 'p' opening a SASL exchange: the chosen mechanism and the client-first
/// message (`None` when the length is -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: PgStr<'a>,
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let mechanism = cur.cstr()?;
        let data = cur.value()?;
        cur.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }
}

/// 'p' continuing a SASL exchange (also the layout of a GSSResponse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslResponse<'a> {
    pub data: &'a [u8],
}

impl<'a> SaslResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        Ok(SaslResponse { data: body })
    }
}
