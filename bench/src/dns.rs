//! Finds the loopback address tunnel-lite gives a connection the way users'
//! resolvers do: an A query for `<name>.<suffix>` to its DNS responder. A few
//! lines of wire format, so the harness links none of the product's code.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::UdpSocket;

const QUERY_ID: u16 = 0xbe4c;

/// One A lookup of `fqdn` at `server`; `Ok(None)` for an answer without an A record.
pub async fn lookup_a(server: SocketAddr, fqdn: &str) -> Result<Option<Ipv4Addr>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let query = encode_query(fqdn)?;
    sock.send_to(&query, server).await?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf))
        .await
        .context("no DNS answer within 500 ms")??;
    decode_a(&buf[..n])
}

/// Polls until `fqdn` resolves (tunnel-lite answers once it has the list).
pub async fn wait_for_a(server: SocketAddr, fqdn: &str, within: Duration) -> Result<Ipv4Addr> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last: String;
    loop {
        match lookup_a(server, fqdn).await {
            Ok(Some(ip)) => return Ok(ip),
            Ok(None) => last = "answer without an A record".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{fqdn} did not resolve at {server} within {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn encode_query(fqdn: &str) -> Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + fqdn.len());
    q.extend_from_slice(&QUERY_ID.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1, AN=NS=AR=0
    for label in fqdn.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("bad DNS name {fqdn:?}");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(q)
}

fn decode_a(msg: &[u8]) -> Result<Option<Ipv4Addr>> {
    let u16_at = |i: usize| -> Result<u16> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .context("truncated DNS answer")
    };
    if u16_at(0)? != QUERY_ID {
        bail!("DNS answer for another query");
    }
    let rcode = u16_at(2)? & 0x000f;
    if rcode != 0 {
        bail!("DNS rcode {rcode}");
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let (rtype, rdlen) = (u16_at(i)?, u16_at(i + 8)? as usize);
        let rdata = msg.get(i + 10..i + 10 + rdlen).context("truncated rdata")?;
        if rtype == 1 && rdlen == 4 {
            return Ok(Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])));
        }
        i += 10 + rdlen;
    }
    Ok(None)
}

fn skip_name(msg: &[u8], mut i: usize) -> Result<usize> {
    loop {
        let len = *msg.get(i).context("truncated name")?;
        match len {
            0 => return Ok(i + 1),
            l if l & 0xc0 == 0xc0 => return Ok(i + 2), // compression pointer ends the name
            l => i += 1 + l as usize,
        }
    }
}
