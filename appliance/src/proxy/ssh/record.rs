//! Session recordings: interactive shells written as asciicast v2 files
//! (`DATA_DIR/recordings/<id>.cast`, mode 0600), playable with
//! `asciinema play`, and the `appliance recordings list | show` commands.
//!
//! The data path hands events to a writer task through a bounded queue; the
//! writer owns the file. Terminal bytes become JSON strings: a UTF-8
//! sequence split across two chunks is carried over, invalid bytes become
//! U+FFFD.

use std::io::{self, BufRead, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

/// Events queued per recording before the data path waits for the disk.
const QUEUE: usize = 256;

/// Subdirectory of the data dir holding recordings.
pub const DIR: &str = "recordings";

/// The asciicast v2 header line.
#[derive(Debug, Clone, Serialize)]
pub struct CastHeader {
    pub version: u8,
    pub width: u32,
    pub height: u32,
    pub timestamp: u64,
    pub title: String,
    pub env: serde_json::Value,
}

enum Event {
    Out(f64, Bytes),
    In(f64, Bytes),
    Resize(f64, u32, u32),
}

/// A recording in progress; dropping it ends the file.
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    started: Instant,
    pub id: String,
}

/// Where recordings of this data dir live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// A recording id is `[A-Za-z0-9_-]+` (session id and channel number).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Recorder {
    /// Creates `<data_dir>/recordings/<id>.cast` and starts its writer.
    pub fn start(data_dir: &Path, id: &str, header: &CastHeader) -> io::Result<Recorder> {
        let d = dir(data_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)?;
        let path = d.join(format!("{id}.cast"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut out = io::BufWriter::new(file);
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        out.flush()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || write_events(out, rx));
        Ok(Recorder {
            tx,
            started: Instant::now(),
            id: id.to_string(),
        })
    }

    fn t(&self) -> f64 {
        (self.started.elapsed().as_micros() as f64) / 1e6
    }

    /// Terminal output.
    pub async fn output(&self, data: Bytes) {
        let _ = self.tx.send(Event::Out(self.t(), data)).await;
    }

    /// Typed input (only when the policy asks for it).
    pub async fn input(&self, data: Bytes) {
        let _ = self.tx.send(Event::In(self.t(), data)).await;
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.tx.send(Event::Resize(self.t(), cols, rows)).await;
    }
}

fn write_events(mut out: io::BufWriter<std::fs::File>, mut rx: mpsc::Receiver<Event>) {
    let (mut carry_out, mut carry_in) = (Vec::new(), Vec::new());
    while let Some(ev) = rx.blocking_recv() {
        let mut next = Some(ev);
        // Write everything queued, then flush once.
        while let Some(ev) = next {
            let line = match ev {
                Event::Out(t, d) => serde_json::json!([t, "o", decode(&mut carry_out, &d)]),
                Event::In(t, d) => serde_json::json!([t, "i", decode(&mut carry_in, &d)]),
                Event::Resize(t, c, r) => serde_json::json!([t, "r", format!("{c}x{r}")]),
            };
            if serde_json::to_writer(&mut out, &line).is_err() || out.write_all(b"\n").is_err() {
                tracing::warn!("writing a session recording failed; recording stops");
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            tracing::warn!("flushing a session recording failed; recording stops");
            return;
        }
    }
}

/// `carry` + `data` as text; an incomplete UTF-8 sequence at the end is kept
/// in `carry` for the next chunk.
pub fn decode(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let mut text = String::with_capacity(carry.len());
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        text.push('\u{fffd}');
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    text
}

/// Why a recordings command failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("no recording {0:?} (see `appliance recordings list`)")]
    NotFound(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// One recording as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    pub id: String,
    pub started: u64,
    pub duration_secs: f64,
    pub size: u64,
    pub title: String,
    pub path: PathBuf,
}

/// Every recording under `data_dir`, oldest first.
pub fn list(data_dir: &Path) -> Result<Vec<RecordingInfo>, RecordingError> {
    let d = dir(data_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RecordingError::Io(d.display().to_string(), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".cast"))
        else {
            continue;
        };
        if let Ok(info) = info(id, &path) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
    Ok(out)
}

fn info(id: &str, path: &Path) -> io::Result<RecordingInfo> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut first = String::new();
    io::BufReader::new(&mut f).read_line(&mut first)?;
    let header: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
    // The last event's time is the duration: read the file's tail only.
    let tail_len = size.min(64 * 1024);
    f.seek(io::SeekFrom::End(-(tail_len as i64)))?;
    let mut tail = Vec::new();
    f.take(tail_len).read_to_end(&mut tail)?;
    let duration_secs = String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.get(0)?.as_f64()
        })
        .unwrap_or(0.0);
    Ok(RecordingInfo {
        id: id.to_string(),
        started: header["timestamp"].as_u64().unwrap_or(0),
        duration_secs,
        size,
        title: header["title"].as_str().unwrap_or("").to_string(),
        path: path.to_path_buf(),
    })
}

/// The file of recording `id`.
pub fn path_of(data_dir: &Path, id: &str) -> Result<PathBuf, RecordingError> {
    let id = id.strip_suffix(".cast").unwrap_or(id);
    if !valid_id(id) {
        return Err(RecordingError::NotFound(id.to_string()));
    }
    let p = dir(data_dir).join(format!("{id}.cast"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(RecordingError::NotFound(id.to_string()))
    }
}

/// `appliance recordings ...`
#[derive(Debug, clap::Subcommand)]
pub enum RecordingsCommand {
    /// List recorded interactive SSH sessions (asciicast v2 files).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a recording (asciicast v2) or export it with --out; play it with
    /// `asciinema play FILE`.
    Show {
        /// The recording id, as listed (also in the ssh_shell audit record).
        id: String,
        /// Write the recording to FILE instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs a recordings command, printing to standard output.
pub fn run_command(cmd: RecordingsCommand) -> Result<(), RecordingError> {
    let io_err = |what: &Path| {
        let shown = what.display().to_string();
        move |e| RecordingError::Io(shown, e)
    };
    let stdout = io::stdout();
    let mut stdout = stdout.lock();
    match cmd {
        RecordingsCommand::List { json, config } => {
            let cfg = crate::config::RuntimeConfig::load(config.as_deref())?;
            for r in list(&cfg.data_dir)? {
                let line = if json {
                    serde_json::to_string(&r).unwrap_or_default()
                } else {
                    let started = crate::gate::rfc3339(r.started);
                    format!(
                        "{}\t{}\t{:.1}s\t{} bytes\t{}",
                        r.id, started, r.duration_secs, r.size, r.title
                    )
                };
                writeln!(stdout, "{line}").map_err(io_err(Path::new("stdout")))?;
            }
            Ok(())
        }
        RecordingsCommand::Show { id, out, config } => {
            let cfg = crate::config::RuntimeConfig::load(config.as_deref())?;
            let path = path_of(&cfg.data_dir, &id)?;
            match out {
                Some(dest) => {
                    std::fs::copy(&path, &dest).map_err(io_err(&dest))?;
                    writeln!(
                        stdout,
                        "wrote {} (play it: asciinema play {})",
                        dest.display(),
                        dest.display()
                    )
                    .map_err(io_err(Path::new("stdout")))?;
                }
                None => {
                    let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
                    io::copy(&mut f, &mut stdout).map_err(io_err(&path))?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_carried() {
        let mut c = Vec::new();
        let e = "é".as_bytes();
        assert_eq!(decode(&mut c, &[b'a', e[0]]), "a");
        assert_eq!(decode(&mut c, &[e[1], b'b']), "éb");
        assert_eq!(decode(&mut c, &[0xff, b'c']), "\u{fffd}c");
        assert!(c.is_empty());
    }

    #[test]
    fn ids() {
        assert!(valid_id("0123abcd-1"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
    }
}
