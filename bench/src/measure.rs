//! The client side of each measurement, the same code for every setup: only
//! the address differs. Each returns raw samples; statistics live in `stats`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::{ACK, CHUNK, ECHO, SINK, SOURCE};

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `bytes` to the upstream sink; Gbit/s from the request until the
/// upstream acknowledged the last byte.
pub async fn bulk_up(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let mut s = connect(addr).await?;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let mut header = [0u8; 9];
    header[0] = SINK;
    header[1..].copy_from_slice(&bytes.to_be_bytes());
    s.write_all(&header).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)
        .await
        .context("waiting for the sink's ack")?;
    let secs = start.elapsed().as_secs_f64();
    if ack[0] != ACK {
        bail!("sink answered {:#x}", ack[0]);
    }
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}

/// Receives `bytes` from the upstream source; Gbit/s from the request to the
/// last byte.
pub async fn bulk_down(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let mut s = connect(addr).await?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut header = [0u8; 9];
    header[0] = SOURCE;
    header[1..].copy_from_slice(&bytes.to_be_bytes());
    s.write_all(&header).await?;
    let mut left = bytes;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let n = s.read(&mut buf[..want]).await?;
        if n == 0 {
            bail!("the source closed with {left} bytes still due");
        }
        left -= n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}

/// 1-byte ping-pong on one connection (TCP_NODELAY): `warmup` unrecorded
/// round trips, then `rounds` recorded ones; nanoseconds each.
pub async fn ping_pong(addr: SocketAddr, warmup: usize, rounds: usize) -> Result<Vec<u64>> {
    let mut s = connect(addr).await?;
    s.write_all(&[ECHO]).await?;
    let mut samples = Vec::with_capacity(rounds);
    let mut b = [0u8; 1];
    for i in 0..warmup + rounds {
        let t = Instant::now();
        s.write_all(&[i as u8]).await?;
        s.read_exact(&mut b).await?;
        let ns = t.elapsed().as_nanos() as u64;
        if b[0] != i as u8 {
            bail!("echo out of step at round {i}");
        }
        if i >= warmup {
            samples.push(ns);
        }
    }
    Ok(samples)
}

/// New connections one after another: connect, send ECHO and one byte, read
/// it back (the first byte through the whole path), close. Nanoseconds each.
pub async fn setup_times(addr: SocketAddr, warmup: usize, conns: usize) -> Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(conns);
    for i in 0..warmup + conns {
        let t = Instant::now();
        let mut s = connect(addr).await?;
        s.write_all(&[ECHO, 1]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .with_context(|| format!("first echo on connection {i}"))?;
        let ns = t.elapsed().as_nanos() as u64;
        drop(s);
        if i >= warmup {
            samples.push(ns);
        }
    }
    Ok(samples)
}

/// Opens `n` sessions (each proven end to end by one echo), `parallel` at a
/// time, and returns them open.
pub async fn open_sessions(addr: SocketAddr, n: usize, parallel: usize) -> Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while open.len() < n {
        while started < n && set.len() < parallel {
            started += 1;
            set.spawn(async move {
                let mut s = connect(addr).await?;
                s.write_all(&[ECHO, 3]).await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                anyhow::Ok(s)
            });
        }
        match tokio::time::timeout(Duration::from_secs(30), set.join_next()).await {
            Ok(Some(r)) => {
                open.push(r?.with_context(|| format!("opening session {} of {n}", open.len() + 1))?)
            }
            Ok(None) => bail!("session tasks ended early"),
            Err(_) => bail!("no session opened within 30 s ({} of {n} open)", open.len()),
        }
    }
    Ok(open)
}
