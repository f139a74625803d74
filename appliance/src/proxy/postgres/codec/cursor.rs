//! A bounds-checked reader over a message body. Every read checks the
//! remaining length first and fails with `Truncated` (or `MissingNul`); no
//! read ever panics or allocates.

use super::{CodecError, PgStr};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) const fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub(crate) const fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(CodecError::Truncated)?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, CodecError> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, CodecError> {
        self.array().map(i32::from_be_bytes)
    }

    /// A NUL-terminated string; the NUL is consumed, not returned.
    pub(crate) fn cstr(&mut self) -> Result<PgStr<'a>, CodecError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(CodecError::MissingNul)?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(PgStr::new(s))
    }

    /// An Int32 length (-1 for NULL) followed by that many bytes.
    pub(crate) fn value(&mut self) -> Result<Option<&'a [u8]>, CodecError> {
        match self.i32()? {
            -1 => Ok(None),
            n if n < -1 => Err(CodecError::BadValueLength(n)),
            n => self.bytes(n as usize).map(Some),
        }
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::TrailingBytes)
        }
    }
}

/// `count` Int16 items as a slice of `2 * count` bytes, checked against the
/// remaining length before slicing.
pub(crate) fn i16_array<'a>(cur: &mut Cursor<'a>, count: u16) -> Result<&'a [u8], CodecError> {
    cur.bytes(usize::from(count) * 2)
}

/// `count` Int32 items as a slice of `4 * count` bytes.
pub(crate) fn i32_array<'a>(cur: &mut Cursor<'a>, count: u16) -> Result<&'a [u8], CodecError> {
    cur.bytes(usize::from(count) * 4)
}

/// Iterator over a validated array of big-endian Int16 values.
#[derive(Debug, Clone)]
pub struct I16Iter<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl<'a> I16Iter<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        I16Iter {
            chunks: bytes.chunks_exact(2),
        }
    }
}

impl Iterator for I16Iter<'_> {
    type Item = i16;
    fn next(&mut self) -> Option<i16> {
        let c = self.chunks.next()?;
        Some(i16::from_be_bytes([c[0], c[1]]))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for I16Iter<'_> {}

/// Iterator over a validated array of big-endian Int32 OIDs.
#[derive(Debug, Clone)]
pub struct OidIter<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl<'a> OidIter<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        OidIter {
            chunks: bytes.chunks_exact(4),
        }
    }
}

impl Iterator for OidIter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let c = self.chunks.next()?;
        Some(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for OidIter<'_> {}

/// Iterator over `count` validated (Int32 length, bytes) values, as in
/// DataRow, Bind and FunctionCall. Stops early rather than panicking if the
/// bytes were not validated.
#[derive(Debug, Clone)]
pub struct ValueIter<'a> {
    cur: Cursor<'a>,
    left: u16,
}

impl<'a> ValueIter<'a> {
    pub(crate) fn new(bytes: &'a [u8], count: u16) -> Self {
        ValueIter {
            cur: Cursor::new(bytes),
            left: count,
        }
    }

    /// Walks `count` values from `cur`, returning the slice that holds them.
    pub(crate) fn validate(cur: &mut Cursor<'a>, count: u16) -> Result<&'a [u8], CodecError> {
        let start = *cur;
        for _ in 0..count {
            cur.value()?;
        }
        let used = start.remaining() - cur.remaining();
        let mut start = start;
        start.bytes(used)
    }
}

impl<'a> Iterator for ValueIter<'a> {
    type Item = Option<&'a [u8]>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match self.cur.value() {
            Ok(v) => Some(v),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        // Exact: instances are only built over validated bytes.
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for ValueIter<'_> {}

/// Iterator over validated NUL-terminated strings.
#[derive(Debug, Clone)]
pub struct CStrIter<'a> {
    cur: Cursor<'a>,
}

impl<'a> CStrIter<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        CStrIter {
            cur: Cursor::new(bytes),
        }
    }
}

impl<'a> Iterator for CStrIter<'a> {
    type Item = PgStr<'a>;
    fn next(&mut self) -> Option<PgStr<'a>> {
        if self.cur.remaining() == 0 {
            return None;
        }
        self.cur.cstr().ok()
    }
}
