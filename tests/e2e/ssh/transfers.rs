//! Throughput and lanes: scp (both protocols), sftp and rsync of 200 MiB, both
//! directions of one channel at full speed, and a stuck session beside twenty
//! working ones.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::audit::AuditKind;
use e2e::run;

use super::{gateway, sha256};

/// A file of `mb` MiB of random bytes.
pub(crate) fn random_file(path: &Path, mb: usize) {
    run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {mb}M /dev/urandom > '{}'", path.display())),
        true,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_both_modes_sftp_and_rsync_of_200_mb() {
    let gw = gateway("").await;
    let d = gw.tmp.path();
    let src = d.join("src.bin");
    random_file(&src, 200);
    let want = sha256(&src);
    let remote = |p: &Path| format!("x@{}:{}", gw.host(), p.display());
    let scp = || {
        let mut c = Command::new("scp");
        c.args(gw.opts()).args(["-q", "-P", "22"]);
        c
    };

    // scp upload (SFTP protocol, the default) and download (legacy -O protocol).
    let t = Instant::now();
    run(scp().arg(&src).arg(remote(&d.join("up.bin"))), true);
    eprintln!("scp upload of 200 MiB: {:?}", t.elapsed());
    assert_eq!(sha256(&d.join("up.bin")), want);
    let t = Instant::now();
    run(
        scp()
            .arg("-O")
            .arg(remote(&d.join("up.bin")))
            .arg(d.join("down.bin")),
        true,
    );
    eprintln!("scp -O download of 200 MiB: {:?}", t.elapsed());
    assert_eq!(sha256(&d.join("down.bin")), want);

    // sftp batch: get, rename, remove.
    let batch = d.join("batch");
    std::fs::write(
        &batch,
        format!(
            "get {up} {got}\nrename {up} {moved}\nrm {down}\n",
            up = d.join("up.bin").display(),
            got = d.join("got.bin").display(),
            moved = d.join("moved.bin").display(),
            down = d.join("down.bin").display(),
        ),
    )
    .unwrap();
    let t = Instant::now();
    run(
        Command::new("sftp")
            .args(gw.opts())
            .args(["-q", "-P", "22", "-b"])
            .arg(&batch)
            .arg(format!("x@{}", gw.host())),
        true,
    );
    eprintln!("sftp get of 200 MiB: {:?}", t.elapsed());
    assert_eq!(sha256(&d.join("got.bin")), want);
    assert!(d.join("moved.bin").exists() && !d.join("down.bin").exists());

    // rsync over ssh.
    let rsh = format!("ssh {} -p 22", gw.opts().join(" "));
    let t = Instant::now();
    run(
        Command::new("rsync")
            .args(["-a", "-e", &rsh])
            .arg(&src)
            .arg(remote(&d.join("rsynced.bin"))),
        true,
    );
    eprintln!("rsync of 200 MiB: {:?}", t.elapsed());
    assert_eq!(sha256(&d.join("rsynced.bin")), want);

    // Audit: SFTP operations with paths and bytes, the scp/rsync commands.
    let up = d.join("up.bin").display().to_string();
    let w = gw
        .wait_audit(AuditKind::SshSftp, |r| {
            r.record
                .detail
                .as_ref()
                .is_some_and(|x| x["op"] == "write" && x["path"] == up.as_str())
        })
        .await;
    assert_eq!(w.record.bytes_up, Some(200 * 1024 * 1024));
    gw.wait_audit(AuditKind::SshSftp, |r| {
        r.record
            .detail
            .as_ref()
            .is_some_and(|x| x["op"] == "read" && x["path"] == up.as_str())
    })
    .await;
    gw.wait_audit(AuditKind::SshSftp, |r| {
        r.record.detail.as_ref().is_some_and(|x| {
            x["op"] == "rename" && x["target"] == d.join("moved.bin").display().to_string().as_str()
        })
    })
    .await;
    gw.wait_audit(AuditKind::SshSftp, |r| {
        r.record
            .detail
            .as_ref()
            .is_some_and(|x| x["op"] == "remove" && x["status"] == 0)
    })
    .await;
    gw.wait_audit(AuditKind::SshExec, |r| {
        r.record.detail.as_ref().is_some_and(|x| {
            x["command"]
                .as_str()
                .is_some_and(|c| c.starts_with("scp -f"))
                && x["exit_status"] == 0
        })
    })
    .await;
    gw.wait_audit(AuditKind::SshExec, |r| {
        r.record.detail.as_ref().is_some_and(|x| {
            x["command"]
                .as_str()
                .is_some_and(|c| c.starts_with("rsync --server"))
        })
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_full_speed_through_one_channel() {
    // `cat` upstream reads only as fast as its output is taken: the two
    // directions of the channel depend on each other (flow control end to end).
    let gw = gateway("").await;
    let src = gw.tmp.path().join("in.bin");
    random_file(&src, 64);
    let dst = gw.tmp.path().join("out.bin");
    let mut child = gw
        .ssh()
        .arg("cat")
        .stdin(std::fs::File::open(&src).unwrap())
        .stdout(std::fs::File::create(&dst).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A deadlock between the two directions would hang here: fail instead.
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("64 MiB through `cat` did not finish within 60 s (flow-control deadlock?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    assert_eq!(sha256(&dst), sha256(&src));
    gw.stop().await;
}

/// What the stuck-lane test allows: 20 sessions that each log in, run a
/// command and upload 1 MiB complete within this, while one session of the
/// same person on the same connection is stuck.
const TWENTY_SESSIONS_BOUND: Duration = Duration::from_secs(20);
/// Bytes a client may push into a session whose upstream never reads before
/// it is made to wait (windows and socket buffers of every leg).
const STUCK_BUFFER_BOUND: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_session_does_not_delay_twenty_others() {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let gw = gateway("").await;
    // The upstream command never reads its stdin; the client writes forever.
    let mut stuck = gw
        .ssh()
        .arg("sleep 45")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = stuck.stdin.take().unwrap();
    let pushed = Arc::new(AtomicU64::new(0));
    let counter = pushed.clone();
    std::thread::spawn(move || {
        let buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stdin.write(&buf) {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
    });
    // Stuck: nothing more goes in for a second.
    let mut last = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = pushed.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let stuck_at = pushed.load(Ordering::SeqCst);
    eprintln!(
        "the stuck session took {} KiB before blocking",
        stuck_at / 1024
    );
    assert!(stuck_at > 0 && stuck_at < STUCK_BUFFER_BOUND, "{stuck_at}");

    let payload = gw.tmp.path().join("one-mib.bin");
    random_file(&payload, 1);
    let started = Instant::now();
    let mut jobs = Vec::new();
    for i in 0..20 {
        let mut ssh = gw.ssh();
        ssh.arg(format!("echo ok-{i}"));
        let mut scp = Command::new("scp");
        scp.args(gw.opts())
            .args(["-q", "-P", "22"])
            .arg(&payload)
            .arg(format!(
                "x@{}:{}/copy-{i}.bin",
                gw.host(),
                gw.tmp.path().display()
            ));
        jobs.push(tokio::task::spawn_blocking(move || {
            let o = run(&mut ssh, true);
            assert_eq!(String::from_utf8_lossy(&o.stdout), format!("ok-{i}\n"));
            run(&mut scp, true);
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    let took = started.elapsed();
    eprintln!("20 sessions (login, command, 1 MiB upload) took {took:?} beside the stuck one");
    assert!(took < TWENTY_SESSIONS_BOUND, "{took:?}");
    for i in 0..20 {
        assert_eq!(
            sha256(&gw.tmp.path().join(format!("copy-{i}.bin"))),
            sha256(&payload)
        );
    }
    // The stuck session is still there, still stuck.
    assert!(
        stuck.try_wait().unwrap().is_none(),
        "the stuck session ended"
    );
    assert_eq!(pushed.load(Ordering::SeqCst), stuck_at);
    let _ = stuck.kill();
    let _ = stuck.wait();
    gw.stop().await;
}
