//! SFTP (version 3, draft-ietf-secsh-filexfer-02) as seen passing through a
//! `sftp` subsystem channel, for the audit trail: which files were opened,
//! read, written, removed, renamed. A codec with no I/O: the bridge feeds it
//! copies of the bytes it forwards, it never changes them.
//!
//! Best effort by design: only the first [`HEAD_MAX`] bytes of a packet are
//! kept (enough for paths and handles; file data is counted, not stored),
//! lengths are checked against [`MAX_PACKET`] before anything is kept, and
//! any inconsistency disables the tracker for the rest of the channel rather
//! than disturb the transfer.

use std::collections::HashMap;

/// Largest SFTP packet accepted (OpenSSH uses at most 256 KiB).
pub const MAX_PACKET: usize = 1024 * 1024;
/// Bytes of a packet kept for parsing (type, id, handle, up to two paths).
pub const HEAD_MAX: usize = 9 * 1024;
/// Open handles and pending requests tracked per channel.
pub const MAX_TRACKED: usize = 4096;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_SETSTAT: u8 = 9;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_EXTENDED: u8 = 200;

const PFLAG_READ: u32 = 0x1;
const PFLAG_WRITE: u32 = 0x2;

/// One audited file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpOp {
    /// `open`, `read`, `write`, `remove`, `rename`, `mkdir`, `rmdir`, `setstat`, `symlink`.
    pub op: &'static str,
    pub path: String,
    /// Second path of `rename` / `symlink`.
    pub target: Option<String>,
    /// For `open`: `r`, `w` or `rw`; for the rest: empty.
    pub mode: &'static str,
    /// File bytes read (for `read`) or written (for `write`).
    pub bytes: u64,
    /// SFTP status code of the reply (0 = OK), when one was seen.
    pub status: Option<u32>,
}

/// Splits one direction of the stream into packet heads.
#[derive(Debug, Default)]
struct Framer {
    head: Vec<u8>,
    /// Bytes of the current packet (after its length) still to come; 0 when
    /// reading a length.
    remaining: usize,
    /// Full body length of the current packet.
    head_total: usize,
    len_buf: Vec<u8>,
}

enum Framed {
    /// A packet head (at most `HEAD_MAX` bytes of the body) and the body's full length.
    Packet(Vec<u8>, usize),
}

impl Framer {
    /// Feeds bytes; calls `out` for each packet whose head is complete.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<Framed>) -> Result<(), ()> {
        while !data.is_empty() {
            if self.remaining == 0 {
                let need = 4 - self.len_buf.len();
                let take = need.min(data.len());
                self.len_buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.len_buf.len() == 4 {
                    let len = u32::from_be_bytes([
                        self.len_buf[0],
                        self.len_buf[1],
                        self.len_buf[2],
                        self.len_buf[3],
                    ]) as usize;
                    self.len_buf.clear();
                    if len == 0 || len > MAX_PACKET {
                        return Err(());
                    }
                    self.remaining = len;
                    self.head.clear();
                    self.head_total = len;
                }
                continue;
            }
            let take = self.remaining.min(data.len());
            let keep = (HEAD_MAX.saturating_sub(self.head.len())).min(take);
            self.head.extend_from_slice(&data[..keep]);
            data = &data[take..];
            self.remaining -= take;
            if self.remaining == 0 {
                out.push(Framed::Packet(
                    std::mem::take(&mut self.head),
                    self.head_total,
                ));
            }
        }
        Ok(())
    }
}

/// Reads big-endian fields from a packet head.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        if self.0.len() < 4 {
            return None;
        }
        let (a, rest) = self.0.split_at(4);
        self.0 = rest;
        Some(u32::from_be_bytes([a[0], a[1], a[2], a[3]]))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return None;
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(a)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[derive(Debug)]
enum Pending {
    Open { path: String, mode: &'static str },
    Read { handle: Vec<u8> },
    Simple(SftpOp),
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    read: u64,
    written: u64,
}

/// Follows one SFTP channel in both directions.
#[derive(Debug, Default)]
pub struct SftpTracker {
    requests: Framer,
    replies: Framer,
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
    disabled: bool,
}

impl SftpTracker {
    /// Whether parsing gave up (the transfer itself is unaffected).
    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// Client -> server bytes. Returns operations completed by them.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<SftpOp> {
        self.feed(data, true)
    }

    /// Server -> client bytes. Returns operations completed by them.
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<SftpOp> {
        self.feed(data, false)
    }

    /// Files still open when the channel ends, reported as read/write summaries.
    pub fn finish(&mut self) -> Vec<SftpOp> {
        let files = std::mem::take(&mut self.files);
        files.into_values().filter_map(summary).collect()
    }

    fn feed(&mut self, data: &[u8], from_client: bool) -> Vec<SftpOp> {
        let mut ops = Vec::new();
        if self.disabled {
            return ops;
        }
        let mut packets = Vec::new();
        let framer = if from_client {
            &mut self.requests
        } else {
            &mut self.replies
        };
        if framer.feed(data, &mut packets).is_err() {
            self.disable();
            return ops;
        }
        for Framed::Packet(head, total) in packets {
            let ok = if from_client {
                self.request(&head, total, &mut ops)
            } else {
                self.reply(&head, total, &mut ops)
            };
            if ok.is_none() {
                self.disable();
                break;
            }
        }
        ops
    }

    fn disable(&mut self) {
        self.disabled = true;
        self.pending.clear();
        self.files.clear();
    }

    fn remember(&mut self, id: u32, p: Pending) {
        if self.pending.len() < MAX_TRACKED {
            self.pending.insert(id, p);
        }
    }

    fn request(&mut self, head: &[u8], _total: usize, ops: &mut Vec<SftpOp>) -> Option<()> {
        let mut r = Reader(head);
        let kind = r.u8()?;
        if kind < FXP_OPEN {
            return Some(()); // INIT
        }
        let id = r.u32()?;
        let simple = |op, path: String, target| SftpOp {
            op,
            path,
            target,
            mode: "",
            bytes: 0,
            status: None,
        };
        match kind {
            FXP_OPEN => {
                let path = r.string()?;
                let flags = r.u32()?;
                let mode = match (flags & PFLAG_READ != 0, flags & PFLAG_WRITE != 0) {
                    (true, true) => "rw",
                    (false, true) => "w",
                    _ => "r",
                };
                self.remember(id, Pending::Open { path, mode });
            }
            FXP_READ => {
                let handle = r.bytes()?.to_vec();
                self.remember(id, Pending::Read { handle });
            }
            FXP_WRITE => {
                let handle = r.bytes()?;
                let _offset_hi = r.u32()?;
                let _offset_lo = r.u32()?;
                let len = r.u32()? as u64;
                if let Some(f) = self.files.get_mut(handle) {
                    f.written += len;
                }
            }
            FXP_CLOSE => {
                let handle = r.bytes()?;
                if let Some(f) = self.files.remove(handle) {
                    ops.extend(summary(f));
                }
            }
            FXP_REMOVE | FXP_MKDIR | FXP_RMDIR | FXP_SETSTAT => {
                let path = r.string()?;
                let op = match kind {
                    FXP_REMOVE => "remove",
                    FXP_MKDIR => "mkdir",
                    FXP_RMDIR => "rmdir",
                    _ => "setstat",
                };
                self.remember(id, Pending::Simple(simple(op, path, None)));
            }
            FXP_RENAME | FXP_SYMLINK => {
                let a = r.string()?;
                let b = r.string()?;
                let op = if kind == FXP_RENAME {
                    "rename"
                } else {
                    "symlink"
                };
                self.remember(id, Pending::Simple(simple(op, a, Some(b))));
            }
            FXP_EXTENDED => {
                let name = r.string()?;
                if name == "posix-rename@openssh.com" || name == "hardlink@openssh.com" {
                    let a = r.string()?;
                    let b = r.string()?;
                    let op = if name.starts_with("posix") {
                        "rename"
                    } else {
                        "link"
                    };
                    self.remember(id, Pending::Simple(simple(op, a, Some(b))));
                }
            }
            _ => {}
        }
        Some(())
    }

    fn reply(&mut self, head: &[u8], total: usize, ops: &mut Vec<SftpOp>) -> Option<()> {
        let mut r = Reader(head);
        let kind = r.u8()?;
        if kind < FXP_STATUS {
            return Some(()); // VERSION
        }
        let id = r.u32()?;
        let Some(pending) = self.pending.remove(&id) else {
            return Some(());
        };
        match (kind, pending) {
            (FXP_HANDLE, Pending::Open { path, mode }) => {
                let handle = r.bytes()?.to_vec();
                ops.push(SftpOp {
                    op: "open",
                    path: path.clone(),
                    target: None,
                    mode,
                    bytes: 0,
                    status: Some(0),
                });
                if self.files.len() < MAX_TRACKED {
                    self.files.insert(
                        handle,
                        OpenFile {
                            path,
                            read: 0,
                            written: 0,
                        },
                    );
                }
            }
            (FXP_STATUS, Pending::Open { path, mode }) => {
                ops.push(SftpOp {
                    op: "open",
                    path,
                    target: None,
                    mode,
                    bytes: 0,
                    status: r.u32(),
                });
            }
            (FXP_DATA, Pending::Read { handle }) => {
                // type(1) + id(4) + data length(4) precede the data.
                let len = total.saturating_sub(9) as u64;
                if let Some(f) = self.files.get_mut(&handle) {
                    f.read += len;
                }
            }
            (FXP_STATUS, Pending::Simple(mut op)) => {
                op.status = r.u32();
                ops.push(op);
            }
            _ => {}
        }
        Some(())
    }
}

fn summary(f: OpenFile) -> Option<SftpOp> {
    let (op, bytes) = if f.written > 0 {
        ("write", f.written)
    } else if f.read > 0 {
        ("read", f.read)
    } else {
        return None;
    };
    Some(SftpOp {
        op,
        path: f.path,
        target: None,
        mode: "",
        bytes,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(body);
        p
    }
    fn s(v: &[u8]) -> Vec<u8> {
        let mut p = (v.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(v);
        p
    }
    fn id(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    #[test]
    fn upload_download_remove_rename() {
        let mut t = SftpTracker::default();
        // INIT / VERSION
        assert!(t.client_bytes(&packet(1, &id(3))).is_empty());
        assert!(t.server_bytes(&packet(2, &id(3))).is_empty());
        // open for write, handle "h1"
        let open = [id(1), s(b"/tmp/up.bin"), id(0x1a), id(0)].concat();
        assert!(t.client_bytes(&packet(FXP_OPEN, &open)).is_empty());
        let ops = t.server_bytes(&packet(FXP_HANDLE, &[id(1), s(b"h1")].concat()));
        assert_eq!(ops[0].op, "open");
        assert_eq!(ops[0].mode, "w");
        assert_eq!(ops[0].path, "/tmp/up.bin");
        // two writes of 1000 bytes, fed one byte at a time for the first
        let w = packet(
            FXP_WRITE,
            &[id(2), s(b"h1"), vec![0; 8], s(&[7u8; 1000])].concat(),
        );
        for b in &w {
            assert!(t.client_bytes(&[*b]).is_empty());
        }
        let w2 = packet(
            FXP_WRITE,
            &[id(3), s(b"h1"), vec![0; 8], s(&[7u8; 1000])].concat(),
        );
        t.client_bytes(&w2);
        let ops = t.client_bytes(&packet(FXP_CLOSE, &[id(4), s(b"h1")].concat()));
        assert_eq!(
            ops,
            vec![SftpOp {
                op: "write",
                path: "/tmp/up.bin".into(),
                target: None,
                mode: "",
                bytes: 2000,
                status: None
            }]
        );
        // read: open r, read, data reply of 500 bytes, close
        t.client_bytes(&packet(
            FXP_OPEN,
            &[id(5), s(b"/etc/hosts"), id(1), id(0)].concat(),
        ));
        t.server_bytes(&packet(FXP_HANDLE, &[id(5), s(b"h2")].concat()));
        t.client_bytes(&packet(
            FXP_READ,
            &[id(6), s(b"h2"), vec![0; 8], id(32768)].concat(),
        ));
        t.server_bytes(&packet(FXP_DATA, &[id(6), s(&[1u8; 500])].concat()));
        let ops = t.client_bytes(&packet(FXP_CLOSE, &[id(7), s(b"h2")].concat()));
        assert_eq!((ops[0].op, ops[0].bytes), ("read", 500));
        // remove and rename, completed by their STATUS replies
        t.client_bytes(&packet(FXP_REMOVE, &[id(8), s(b"/tmp/x")].concat()));
        let ops = t.server_bytes(&packet(
            FXP_STATUS,
            &[id(8), id(2), s(b"no such file"), s(b"")].concat(),
        ));
        assert_eq!(
            (ops[0].op, ops[0].path.as_str(), ops[0].status),
            ("remove", "/tmp/x", Some(2))
        );
        t.client_bytes(&packet(FXP_RENAME, &[id(9), s(b"/a"), s(b"/b")].concat()));
        let ops = t.server_bytes(&packet(
            FXP_STATUS,
            &[id(9), id(0), s(b""), s(b"")].concat(),
        ));
        assert_eq!(ops[0].target.as_deref(), Some("/b"));
        assert!(!t.disabled());
    }

    #[test]
    fn garbage_disables_without_panicking() {
        let mut t = SftpTracker::default();
        assert!(t
            .client_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .is_empty());
        assert!(t.disabled());
        assert!(t.client_bytes(b"anything").is_empty());
        let mut t = SftpTracker::default();
        // A truncated OPEN (length says 5, fields missing) disables too.
        t.client_bytes(&packet(FXP_OPEN, &id(1)));
        assert!(t.disabled());
    }
}
