//! Views of backend (server -> client) messages the gateway inspects.
//!
//! Same contract as [`super::frontend`]: `parse` validates the whole body and
//! returns a borrowed view; repeated fields are zero-copy iterators. Messages
//! without a body (NoData, ParseComplete, BindComplete, CloseComplete,
//! PortalSuspended, EmptyQueryResponse, CopyDone) are checked with
//! [`super::parse_empty`]; CopyData has the frontend layout
//! ([`super::frontend::CopyData`]).

use super::cursor::{i16_array, i32_array, CStrIter, Cursor, I16Iter, OidIter, ValueIter};
use super::{CodecError, PgStr, MAX_CANCEL_KEY, MIN_CANCEL_KEY};

/// Authentication request or outcome.
pub const AUTHENTICATION_TAG: u8 = b'R';
/// ParameterStatus (frontend 'S' is Sync).
pub const PARAMETER_STATUS_TAG: u8 = b'S';
/// BackendKeyData: the cancel key.
pub const BACKEND_KEY_DATA_TAG: u8 = b'K';
/// ReadyForQuery.
pub const READY_FOR_QUERY_TAG: u8 = b'Z';
/// RowDescription.
pub const ROW_DESCRIPTION_TAG: u8 = b'T';
/// DataRow (frontend 'D' is Describe).
pub const DATA_ROW_TAG: u8 = b'D';
/// CommandComplete (frontend 'C' is Close).
pub const COMMAND_COMPLETE_TAG: u8 = b'C';
/// ErrorResponse (frontend 'E' is Execute).
pub const ERROR_RESPONSE_TAG: u8 = b'E';
/// NoticeResponse.
pub const NOTICE_RESPONSE_TAG: u8 = b'N';
/// NotificationResponse (LISTEN/NOTIFY).
pub const NOTIFICATION_RESPONSE_TAG: u8 = b'A';
/// ParameterDescription.
pub const PARAMETER_DESCRIPTION_TAG: u8 = b't';
/// NoData.
pub const NO_DATA_TAG: u8 = b'n';
/// ParseComplete.
pub const PARSE_COMPLETE_TAG: u8 = b'1';
/// BindComplete.
pub const BIND_COMPLETE_TAG: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE_TAG: u8 = b'3';
/// PortalSuspended (Execute row limit reached).
pub const PORTAL_SUSPENDED_TAG: u8 = b's';
/// EmptyQueryResponse.
pub const EMPTY_QUERY_RESPONSE_TAG: u8 = b'I';
/// CopyInResponse.
pub const COPY_IN_RESPONSE_TAG: u8 = b'G';
/// CopyOutResponse (frontend 'H' is Flush).
pub const COPY_OUT_RESPONSE_TAG: u8 = b'H';
/// CopyBothResponse (replication).
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
/// CopyData (COPY TO STDOUT).
pub const COPY_DATA_TAG: u8 = b'd';
/// CopyDone.
pub const COPY_DONE_TAG: u8 = b'c';
/// FunctionCallResponse.
pub const FUNCTION_CALL_RESPONSE_TAG: u8 = b'V';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// 'R': an authentication request (or the final AuthenticationOk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authenticated.
    Ok,
    /// 2: Kerberos V5 (unsupported by modern servers).
    KerberosV5,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send `md5(md5(password + user) + salt)`.
    Md5Password { salt: [u8; 4] },
    /// 7: start GSSAPI.
    Gss,
    /// 8: GSSAPI or SSPI continuation data.
    GssContinue { data: &'a [u8] },
    /// 9: start SSPI.
    Sspi,
    /// 10: start SASL; the server's mechanisms in preference order.
    Sasl(SaslMechanisms<'a>),
    /// 11: SASL challenge (SCRAM server-first-message).
    SaslContinue { data: &'a [u8] },
    /// 12: SASL outcome (SCRAM server-final-message).
    SaslFinal { data: &'a [u8] },
}

impl<'a> Authentication<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let auth = match cur.i32()? {
            0 => Authentication::Ok,
            2 => Authentication::KerberosV5,
            3 => Authentication::CleartextPassword,
            5 => {
                let s = cur.bytes(4)?;
                Authentication::Md5Password {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            7 => Authentication::Gss,
            8 => Authentication::GssContinue { data: cur.rest() },
            9 => Authentication::Sspi,
            10 => Authentication::Sasl(SaslMechanisms::parse(&mut cur)?),
            11 => Authentication::SaslContinue { data: cur.rest() },
            12 => Authentication::SaslFinal { data: cur.rest() },
            other => return Err(CodecError::BadAuthSubtype(other)),
        };
        cur.finish()?;
        Ok(auth)
    }
}

/// The validated mechanism list of an AuthenticationSASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a> {
    /// `name\0` repeated, without the final empty name.
    list: &'a [u8],
}

impl<'a> SaslMechanisms<'a> {
    fn parse(cur: &mut Cursor<'a>) -> Result<Self, CodecError> {
        let start = *cur;
        while !cur.cstr()?.is_empty() {}
        let used = start.remaining() - cur.remaining();
        let mut start = start;
        let all = start.bytes(used)?;
        // Drop the NUL of the empty name that ends the list.
        let list = all.split_last().map_or(all, |(_, list)| list);
        Ok(SaslMechanisms { list })
    }

    /// Mechanism names, e.g. `SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`.
    pub fn iter(&self) -> CStrIter<'a> {
        CStrIter::new(self.list)
    }

    /// True if the server offers `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|m| m == name)
    }
}

/// 'S' (backend): a run-time parameter's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    pub name: PgStr<'a>,
    pub value: PgStr<'a>,
}

impl<'a> ParameterStatus<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let name = cur.cstr()?;
        let value = cur.cstr()?;
        cur.finish()?;
        Ok(ParameterStatus { name, value })
    }
}

/// 'K': the cancel key for this session (4 bytes in 3.0, up to 256 in 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData<'a> {
    pub process_id: i32,
    pub secret_key: &'a [u8],
}

impl<'a> BackendKeyData<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let process_id = cur.i32()?;
        let secret_key = cur.rest();
        if !(MIN_CANCEL_KEY..=MAX_CANCEL_KEY).contains(&secret_key.len()) {
            return Err(CodecError::BadKeyLength(secret_key.len()));
        }
        Ok(BackendKeyData {
            process_id,
            secret_key,
        })
    }
}

/// The transaction state reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block (statements refused until rollback).
    Failed,
}

impl TransactionStatus {
    /// The wire byte.
    pub const fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// 'Z': the backend is ready for a new query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery {
    pub status: TransactionStatus,
}

impl ReadyForQuery {
    pub fn parse(body: &[u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let status = match cur.u8()? {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            other => return Err(CodecError::BadTransactionStatus(other)),
        };
        cur.finish()?;
        Ok(ReadyForQuery { status })
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: PgStr<'a>,
    /// Source table OID, or 0 when the column is not a plain table column.
    pub table_oid: u32,
    /// Attribute number in that table, or 0.
    pub column_id: i16,
    pub type_oid: u32,
    /// `pg_type.typlen` (negative: variable width).
    pub type_size: i16,
    /// `pg_attribute.atttypmod` (-1: none).
    pub type_modifier: i32,
    /// 0 text, 1 binary (0 also when unknown: Describe of a statement).
    pub format: i16,
}

impl<'a> Field<'a> {
    fn read(cur: &mut Cursor<'a>) -> Result<Self, CodecError> {
        Ok(Field {
            name: cur.cstr()?,
            table_oid: cur.u32()?,
            column_id: cur.i16()?,
            type_oid: cur.u32()?,
            type_size: cur.i16()?,
            type_modifier: cur.i32()?,
            format: cur.i16()?,
        })
    }
}

/// 'T': the columns of the rows that follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDescription<'a> {
    count: u16,
    fields: &'a [u8],
}

impl<'a> RowDescription<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let count = cur.u16()?;
        let fields = cur.rest();
        let mut walk = Cursor::new(fields);
        for _ in 0..count {
            Field::read(&mut walk)?;
        }
        walk.finish()?;
        Ok(RowDescription { count, fields })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True for a description of zero columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The columns in order.
    pub fn fields(&self) -> FieldIter<'a> {
        FieldIter {
            cur: Cursor::new(self.fields),
            left: self.count,
        }
    }
}

/// Iterator over the validated fields of a RowDescription.
#[derive(Debug, Clone)]
pub struct FieldIter<'a> {
    cur: Cursor<'a>,
    left: u16,
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = Field<'a>;
    fn next(&mut self) -> Option<Field<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Field::read(&mut self.cur).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        // Exact: only built over validated bytes.
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for FieldIter<'_> {}

/// 'D' (backend): one result row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRow<'a> {
    count: u16,
    values: &'a [u8],
}

impl<'a> DataRow<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let count = cur.u16()?;
        let values = ValueIter::validate(&mut cur, count)?;
        cur.finish()?;
        Ok(DataRow { count, values })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True for a row of zero columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Column values in order; `None` is SQL NULL.
    pub fn values(&self) -> ValueIter<'a> {
        ValueIter::new(self.values, self.count)
    }
}

/// 'C' (backend): a statement finished; the command tag, e.g. `SELECT 5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    pub tag: &'a str,
}

impl<'a> CommandComplete<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let tag = cur.cstr()?.to_str()?;
        cur.finish()?;
        Ok(CommandComplete { tag })
    }

    /// The command word (`SELECT`, `INSERT`, `CREATE`, ...).
    pub fn command(&self) -> &'a str {
        self.tag.split(' ').next().unwrap_or("")
    }

    /// Rows affected or returned, for the tags that carry a count:
    /// `SELECT n`, `INSERT oid n`, `UPDATE n`, `DELETE n`, `MERGE n`,
    /// `COPY n`, `FETCH n`, `MOVE n`.
    pub fn rows(&self) -> Option<u64> {
        let mut words = self.tag.split(' ');
        let count = match words.next()? {
            "INSERT" => words.nth(1)?,
            "SELECT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => words.next()?,
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        count.parse().ok()
    }
}

/// 'E' / 'N': an ErrorResponse or NoticeResponse, as (code, value) fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorNotice<'a> {
    /// `code value\0` repeated, without the final zero byte.
    fields: &'a [u8],
}

/// 'E' (backend).
pub type ErrorResponse<'a> = ErrorNotice<'a>;
/// 'N'.
pub type NoticeResponse<'a> = ErrorNotice<'a>;

impl<'a> ErrorNotice<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        while cur.u8()? != 0 {
            cur.cstr()?;
        }
        cur.finish()?;
        // Drop the zero byte that ends the field list.
        let fields = body.split_last().map_or(body, |(_, fields)| fields);
        Ok(ErrorNotice { fields })
    }

    /// All fields in order: (code byte, value), e.g. (b'C', "42P01").
    pub fn fields(&self) -> ErrorFieldIter<'a> {
        ErrorFieldIter {
            cur: Cursor::new(self.fields),
        }
    }

    /// The first field with `code`.
    pub fn get(&self, code: u8) -> Option<PgStr<'a>> {
        self.fields().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// 'C': the SQLSTATE code (always ASCII).
    pub fn sqlstate(&self) -> Option<&'a str> {
        self.get(b'C').and_then(|v| v.to_str().ok())
    }

    /// 'M': the primary message.
    pub fn message(&self) -> Option<PgStr<'a>> {
        self.get(b'M')
    }

    /// 'V' (never localized) when present, else 'S': ERROR, FATAL, WARNING...
    pub fn severity(&self) -> Option<PgStr<'a>> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// 'D': detail.
    pub fn detail(&self) -> Option<PgStr<'a>> {
        self.get(b'D')
    }

    /// 'H': hint.
    pub fn hint(&self) -> Option<PgStr<'a>> {
        self.get(b'H')
    }
}

/// Iterator over validated error/notice fields.
#[derive(Debug, Clone)]
pub struct ErrorFieldIter<'a> {
    cur: Cursor<'a>,
}

impl<'a> Iterator for ErrorFieldIter<'a> {
    type Item = (u8, PgStr<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let code = self.cur.u8().ok()?;
        let value = self.cur.cstr().ok()?;
        Some((code, value))
    }
}

/// 'A': a NOTIFY delivered to a LISTEN-ing session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    pub process_id: i32,
    pub channel: PgStr<'a>,
    pub payload: PgStr<'a>,
}

impl<'a> NotificationResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let process_id = cur.i32()?;
        let channel = cur.cstr()?;
        let payload = cur.cstr()?;
        cur.finish()?;
        Ok(NotificationResponse {
            process_id,
            channel,
            payload,
        })
    }
}

/// 't': the parameter types of a described statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterDescription<'a> {
    types: &'a [u8],
}

impl<'a> ParameterDescription<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let n = cur.u16()?;
        let types = i32_array(&mut cur, n)?;
        cur.finish()?;
        Ok(ParameterDescription { types })
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.types.len() / 4
    }

    /// True when the statement has no parameters.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Parameter type OIDs.
    pub fn types(&self) -> OidIter<'a> {
        OidIter::new(self.types)
    }
}

/// 'G' / 'H' / 'W': COPY IN, OUT or BOTH starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse<'a> {
    /// 0 textual (all column formats 0), 1 binary.
    pub format: u8,
    column_formats: &'a [u8],
}

impl<'a> CopyResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let format = cur.u8()?;
        let n = cur.u16()?;
        let column_formats = i16_array(&mut cur, n)?;
        cur.finish()?;
        Ok(CopyResponse {
            format,
            column_formats,
        })
    }

    /// Per-column format codes.
    pub fn column_formats(&self) -> I16Iter<'a> {
        I16Iter::new(self.column_formats)
    }
}

/// 'V': the result of a fast-path FunctionCall (`None`: NULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCallResponse<'a> {
    pub value: Option<&'a [u8]>,
}

impl<'a> FunctionCallResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let value = cur.value()?;
        cur.finish()?;
        Ok(FunctionCallResponse { value })
    }
}

/// 'v': the server supports an older minor version than requested, and/or
/// did not recognize some `_pq_.` startup options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    /// Newest minor protocol version the server supports.
    pub newest_minor: i32,
    options: &'a [u8],
}

impl<'a> NegotiateProtocolVersion<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut cur = Cursor::new(body);
        let newest_minor = cur.i32()?;
        let n = cur.u32()?;
        let options = cur.rest();
        // Each option takes at least its NUL: a bigger count is a lie.
        if n as usize > options.len() {
            return Err(CodecError::Truncated);
        }
        let mut walk = Cursor::new(options);
        for _ in 0..n {
            walk.cstr()?;
        }
        walk.finish()?;
        Ok(NegotiateProtocolVersion {
            newest_minor,
            options,
        })
    }

    /// The startup options the server did not recognize.
    pub fn unrecognized_options(&self) -> CStrIter<'a> {
        CStrIter::new(self.options)
    }
}
