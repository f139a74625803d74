//! The upstream every setup ends at: a tokio TCP server on 127.0.0.1 in a
//! child process of the harness. The first byte of a connection says what it serves, so one
//! listener (and one socat relay, one policy connection) covers every test:
//!
//! - [`ECHO`]: echoes every byte back until the client closes;
//! - [`SINK`] + `u64` big-endian length: reads exactly that many bytes, then
//!   answers one [`ACK`] byte (no half-close needed, which TLS relays may not
//!   carry);
//! - [`SOURCE`] + `u64` length: writes that many bytes, then waits for the
//!   client to close.
//!
//! Accepted sockets get TCP_NODELAY, as a latency-aware server would set.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ECHO: u8 = b'E';
pub const SINK: u8 = b'S';
pub const SOURCE: u8 = b'G';
pub const ACK: u8 = b'K';

/// Buffer used by the upstream (and the bulk client) per read or write.
pub const CHUNK: usize = 256 * 1024;

/// The upstream child process (this binary run as `bench __upstream`); it is
/// killed when this handle drops, and exits by itself when its stdin closes
/// (so it never outlives the harness, even one killed with SIGKILL).
pub struct Upstream {
    pub addr: SocketAddr,
    pub pid: u32,
    _child: tokio::process::Child,
}

/// The hidden first argument that runs this binary as the upstream.
pub const CHILD_ARG: &str = "__upstream";

/// Starts the upstream as a separate process, so the client and the server
/// never share a thread or a scheduler (as with real clients and servers).
pub async fn spawn() -> anyhow::Result<Upstream> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg(CHILD_ARG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the upstream process")?;
    let pid = child.id().context("upstream has no pid")?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("the upstream did not report its address")??;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("upstream printed {line:?}, not an address"))?;
    Ok(Upstream {
        addr,
        pid,
        _child: child,
    })
}

/// `bench __upstream`: serves on 127.0.0.1:0 (one thread), prints the address,
/// and exits when stdin reaches end of file.
pub fn child_main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench upstream: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r: io::Result<()> = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", listener.local_addr()?)?;
            out.flush()?;
        }
        // The harness is gone when our stdin ends: leave with it.
        std::thread::spawn(|| {
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(async move {
                        let _ = serve(s).await;
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 1];
    if s.read(&mut cmd).await? == 0 {
        return Ok(()); // readiness probes connect and close
    }
    match cmd[0] {
        ECHO => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        SINK => {
            let mut left = s.read_u64().await?;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = s.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            s.write_all(&[ACK]).await?;
            drain_until_eof(&mut s).await
        }
        SOURCE => {
            let mut left = s.read_u64().await?;
            let buf = vec![0x5au8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            drain_until_eof(&mut s).await
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown upstream command byte {other:#x}"),
        )),
    }
}

/// Closing only after the client does keeps the close order the same for
/// every test (client first), so no side resets a connection with unread data.
async fn drain_until_eof(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 512];
    while s.read(&mut buf).await? != 0 {}
    Ok(())
}
