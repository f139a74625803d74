//! A connection the gateway opens for its own queries, beside the client's:
//! the ephemeral-role admin and masking's catalog lookups. Simple protocol,
//! text results.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::codec::{self, backend};
use super::error::PgError;
use super::upstream::{self, UpstreamStream};

/// One row: each column as text (`None` for NULL).
pub type Row = Vec<Option<String>>;

/// A logged-in connection of the gateway's own.
pub struct SideConn {
    stream: UpstreamStream,
    buf: BytesMut,
    max: usize,
}

/// Why a side query failed.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Connection(#[from] PgError),
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
}

impl SideConn {
    /// Connects and logs in as `login` says.
    pub async fn open(
        login: &upstream::Login<'_>,
        timeout: std::time::Duration,
    ) -> Result<SideConn, PgError> {
        let tcp = crate::proxy::tcp::connect_upstream(login.upstream, timeout).await?;
        let up = upstream::login(tcp, login).await?;
        Ok(SideConn {
            stream: up.stream,
            buf: up.leftover,
            max: login.settings.max_message_bytes,
        })
    }

    /// Runs `sql` and returns every row (all statements' rows, in order).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, SideError> {
        let mut out = Vec::new();
        codec::query(&mut out, sql).map_err(PgError::ClientProtocol)?;
        self.stream.write_all(&out).await.map_err(PgError::Io)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, total) =
                upstream::read_frame(&mut self.stream, &mut self.buf, self.max).await?;
            let frame = self.buf.split_to(total);
            let body = &frame[codec::FRAME_HEADER_LEN..];
            match tag {
                backend::DATA_ROW_TAG => {
                    let row = backend::DataRow::parse(body).map_err(PgError::UpstreamProtocol)?;
                    rows.push(
                        row.values()
                            .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect(),
                    );
                }
                backend::ERROR_RESPONSE_TAG => {
                    let e = backend::ErrorNotice::parse(body).map_err(PgError::UpstreamProtocol)?;
                    error = Some(e.message().map(|m| m.to_string()).unwrap_or_default());
                }
                backend::READY_FOR_QUERY_TAG => break,
                _ => {}
            }
        }
        match error {
            Some(message) => Err(SideError::Server(message)),
            None => Ok(rows),
        }
    }

    /// Says goodbye (Terminate) and closes.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        codec::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

/// `s` as an SQL string literal that means the same whatever
/// `standard_conforming_strings` says (an `E''` string).
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `s` as a quoted identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(literal("it's a \\ test"), "E'it''s a \\\\ test'");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
