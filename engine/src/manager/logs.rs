//! Container logs in Docker's json-file format: one JSON object a line,
//! `{"log":"...","stream":"stdout","time":"2006-01-02T15:04:05.999999999Z"}`,
//! in `<id>-json.log`, rotated at a size to `<id>-json.log.1`, `.2`, ...
//! (`.1` the newest), keeping a number of files.
//!
//! [`LogWriter`] is used by the container's monitor, which pumps the
//! container's stdout and stderr pipes through [`pump`]; [`LogStream`]
//! reads them back for `logs`, following the current file across
//! rotations.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A partial line longer than this is written as its own entry (Docker's
/// buffer size).
pub const MAX_LINE: usize = 16 * 1024;
/// How often a following reader looks for new lines (the monitor writes
/// them, so nothing in berthd can say when). A stop ends the wait at once.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// One line (or a piece of a long line) of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its stream.
    pub stream: Stream,
    /// When the engine read it.
    pub time: SystemTime,
    /// The bytes, with the line's `\n` when it had one.
    pub bytes: Vec<u8>,
}

/// What `logs` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep reading new lines until the container stops.
    pub follow: bool,
    /// Only the last N lines (of the selected streams).
    pub tail: Option<usize>,
    /// Include stdout.
    pub stdout: bool,
    /// Include stderr.
    pub stderr: bool,
    /// Only lines from this time on.
    pub since: Option<SystemTime>,
    /// Only lines before this time.
    pub until: Option<SystemTime>,
    /// The caller wants timestamps shown (entries always carry them).
    pub timestamps: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            follow: false,
            tail: None,
            stdout: true,
            stderr: true,
            since: None,
            until: None,
            timestamps: false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct JsonLine {
    log: String,
    stream: Stream,
    time: String,
}

/// Formats a time as RFC 3339 in UTC with nanoseconds.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses RFC 3339 (`Z` or `±hh:mm`, any fraction length).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let mut text: String = frac[..digits].chars().take(9).collect();
        while text.len() < 9 {
            text.push('0');
        }
        nanos = text.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Encodes one entry as a json-file line (with its `\n`).
pub fn encode(entry: &LogEntry) -> Vec<u8> {
    let line = JsonLine {
        log: String::from_utf8_lossy(&entry.bytes).into_owned(),
        stream: entry.stream,
        time: format_time(entry.time),
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Decodes one json-file line (without its `\n`).
pub fn decode(line: &[u8]) -> Option<LogEntry> {
    let l: JsonLine = serde_json::from_slice(line).ok()?;
    Some(LogEntry {
        stream: l.stream,
        time: parse_time(&l.time)?,
        bytes: l.log.into_bytes(),
    })
}

/// The `n`th rotated file (`path.n`); `n == 0` is `path` itself.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The file written after the one with inode `inode`, which rotation moved
/// from `path` to `path.k`: `path.(k-1)`, or `path` itself for k = 1. When
/// it was rotated out altogether, the oldest kept file (all are newer).
/// Inode 0 is a reader that started before the log existed: `path`.
fn successor(path: &Path, inode: u64, max_files: u32) -> PathBuf {
    if inode == 0 {
        return path.to_owned();
    }
    let mut oldest = None;
    // Every kept file is looked at: a rotation in progress leaves a gap.
    for n in 1..max_files.max(1) {
        match fs::metadata(rotated(path, n)) {
            Ok(m) if m.ino() == inode => return rotated(path, n - 1),
            Ok(_) => oldest = Some(n),
            Err(_) => {}
        }
    }
    oldest.map_or_else(|| path.to_owned(), |n| rotated(path, n))
}

/// Opens [`successor`], checking that no rotation moved it while it was
/// opened (else it tries again, a few times). `None`: not now.
fn open_successor(path: &Path, inode: u64, max_files: u32) -> io::Result<Option<(File, u64)>> {
    for _ in 0..3 {
        let Ok(file) = File::open(successor(path, inode, max_files)) else {
            continue;
        };
        let opened = file.metadata()?.ino();
        if fs::metadata(successor(path, inode, max_files)).is_ok_and(|m| m.ino() == opened) {
            return Ok(Some((file, opened)));
        }
    }
    Ok(None)
}

/// Appends entries to a log file, rotating it at `max_size`.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    file: File,
    size: u64,
}

impl LogWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    /// Writes one entry, rotating first if it would not fit.
    pub fn write(&mut self, entry: &LogEntry) -> io::Result<()> {
        let line = encode(entry);
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files > 1 {
            for n in (1..self.max_files).rev() {
                let from = rotated(&self.path, n - 1);
                match fs::rename(&from, rotated(&self.path, n)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// A writer shared by a container's two streams.
pub type SharedWriter = Arc<Mutex<LogWriter>>;

/// Reads `from` until EOF, writing each line (and each [`MAX_LINE`] piece
/// of a longer one) as an entry of `stream`; `mirror` gets every entry too.
pub fn pump(
    mut from: impl Read,
    stream: Stream,
    to: &SharedWriter,
    mirror: Option<&dyn Fn(&LogEntry)>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let emit = |bytes: Vec<u8>| -> io::Result<()> {
        let entry = LogEntry {
            stream,
            time: SystemTime::now(),
            bytes,
        };
        if let Some(m) = mirror {
            m(&entry);
        }
        to.lock().unwrap_or_else(|e| e.into_inner()).write(&entry)
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(i + 1);
            emit(std::mem::replace(&mut pending, rest))?;
        }
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            emit(std::mem::replace(&mut pending, rest))?;
        }
    }
    if !pending.is_empty() {
        emit(pending)?;
    }
    Ok(())
}

/// Whether a following reader should keep waiting for more lines, after
/// waiting up to the given time for that to change (zero: no wait). A
/// reader that is told at once when the container stops ends its stream
/// then, not at its next poll: `berth run` returns as the container exits.
pub type StillRunning = Box<dyn Fn(Duration) -> bool + Send>;

/// The entries of a container's log, oldest first; with `follow`, blocks
/// for new entries until `still_running` says the container stopped.
pub struct LogStream {
    ready: std::collections::VecDeque<LogEntry>,
    opts: LogOptions,
    follow: Option<Follow>,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStream")
            .field("ready", &self.ready.len())
            .field("following", &self.follow.is_some())
            .finish()
    }
}

struct Follow {
    path: PathBuf,
    /// How many files rotation keeps (`path` and `path.1` .. `path.N-1`).
    max_files: u32,
    file: File,
    inode: u64,
    /// The file was seen rotated away; one more read before leaving it.
    rotated: bool,
    partial: Vec<u8>,
    still_running: StillRunning,
    /// One last read after the container stopped.
    draining: bool,
}

impl LogStream {
    /// Opens the log at `path` (and its `max_files - 1` rotated files).
    pub fn open(
        path: &Path,
        max_files: u32,
        opts: LogOptions,
        still_running: StillRunning,
    ) -> io::Result<LogStream> {
        // Open the current file first, so a rotation while the older ones
        // are read cannot make the follower skip it.
        let current = match File::open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let mut rotated_files: Vec<PathBuf> = (1..max_files.max(1))
            .map(|n| rotated(path, n))
            .filter(|p| p.exists())
            .collect();
        rotated_files.reverse();
        for p in rotated_files {
            let mut bytes = Vec::new();
            match File::open(&p) {
                Ok(mut f) => {
                    f.read_to_end(&mut bytes)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            entries.extend(bytes.split(|&b| b == b'\n').filter_map(decode));
        }
        let mut follow = None;
        let mut partial = Vec::new();
        if let Some(mut f) = current {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            partial = bytes[complete..].to_vec();
            entries.extend(bytes[..complete].split(|&b| b == b'\n').filter_map(decode));
            let inode = f.metadata()?.ino();
            follow = Some((f, inode));
        }
        entries.retain(|e| wanted(&opts, e));
        if let Some(n) = opts.tail {
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
        }
        let follow = if opts.follow {
            let (file, inode) = match follow {
                Some(x) => x,
                None => {
                    // Not written yet: wait for it to appear.
                    (File::open("/dev/null")?, 0)
                }
            };
            Some(Follow {
                path: path.to_path_buf(),
                max_files,
                file,
                inode,
                rotated: false,
                partial,
                still_running,
                draining: false,
            })
        } else {
            None
        };
        Ok(LogStream {
            ready: entries.into(),
            opts,
            follow,
        })
    }

    /// Also ends a following stream once `cancelled` says so (the client
    /// went away), after one last read, instead of only when the container
    /// stops: a reader of a silent container would otherwise hold its
    /// thread and the log file until the container's next line.
    pub fn cancel_when(mut self, cancelled: impl Fn() -> bool + Send + 'static) -> LogStream {
        if let Some(f) = &mut self.follow {
            let still = std::mem::replace(&mut f.still_running, Box::new(|_| false));
            f.still_running = Box::new(move |wait| !cancelled() && still(wait));
        }
        self
    }

    fn poll(&mut self) -> io::Result<bool> {
        let Some(f) = &mut self.follow else {
            return Ok(false);
        };
        loop {
            let mut bytes = Vec::new();
            f.file.read_to_end(&mut bytes)?;
            if !bytes.is_empty() {
                f.partial.extend_from_slice(&bytes);
                let complete = f
                    .partial
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let rest = f.partial.split_off(complete);
                let lines = std::mem::replace(&mut f.partial, rest);
                let before = self.ready.len();
                self.ready.extend(
                    lines
                        .split(|&b| b == b'\n')
                        .filter_map(decode)
                        .filter(|e| wanted(&self.opts, e)),
                );
                if self.ready.len() > before {
                    return Ok(true);
                }
                continue;
            }
            // At the end of what we have: rotated away? The writer may have
            // added lines between our last read and its rotation, so the
            // old file, final now, is read once more. Then on to the file
            // written after it, which is not always the current one (a slow
            // reader can be several rotations behind).
            if fs::metadata(&f.path).is_ok_and(|m| m.ino() != f.inode) {
                if !f.rotated {
                    f.rotated = true;
                    continue;
                }
                if let Some((file, inode)) = open_successor(&f.path, f.inode, f.max_files)? {
                    f.inode = inode;
                    f.file = file;
                    f.partial.clear();
                    f.rotated = false;
                    continue;
                }
            }
            if f.draining {
                self.follow = None;
                return Ok(false);
            }
            if !(f.still_running)(Duration::ZERO) {
                // Everything the container wrote is on disk once it is
                // recorded as stopped: read once more, then end.
                f.draining = true;
                continue;
            }
            // Wakes early when the container stops; the loop then reads
            // its last lines.
            (f.still_running)(FOLLOW_POLL);
            // Keep the reader's position; a truncation (single-file
            // rotation) restarts at 0.
            let pos = f.file.stream_position()?;
            if f.file.metadata()?.len() < pos {
                f.file.seek(SeekFrom::Start(0))?;
            }
        }
    }
}

fn wanted(opts: &LogOptions, e: &LogEntry) -> bool {
    let stream = match e.stream {
        Stream::Stdout => opts.stdout,
        Stream::Stderr => opts.stderr,
    };
    stream && opts.since.is_none_or(|s| e.time >= s) && opts.until.is_none_or(|u| e.time < u)
}

impl Iterator for LogStream {
    type Item = io::Result<LogEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            match self.poll() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.follow = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let s = format_time(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_time("2000-02-29T00:00:00Z")
                .map(format_time)
                .as_deref(),
            Some("2000-02-29T00:00:00.000000000Z")
        );
        assert_eq!(parse_time("nope"), None);
    }

    #[test]
    fn lines_are_dockers_json_file_format() {
        let e = LogEntry {
            stream: Stream::Stderr,
            time: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            bytes: b"hi \"there\"\n".to_vec(),
        };
        let line = encode(&e);
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"log\":\"hi \\\"there\\\"\\n\",\"stream\":\"stderr\",\"time\":\"2023-11-14T22:13:20.000000005Z\"}\n"
        );
        assert_eq!(decode(&line[..line.len() - 1]), Some(e));
    }

    #[test]
    fn pump_splits_lines_and_keeps_streams_rotating_at_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let w: SharedWriter = Arc::new(Mutex::new(LogWriter::open(&path, 300, 3).unwrap()));
        let input: Vec<u8> = (0..20)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        pump(&input[..], Stream::Stdout, &w, None).unwrap();
        pump(&b"tail without newline"[..], Stream::Stderr, &w, None).unwrap();
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        for n in 0..3 {
            assert!(fs::metadata(rotated(&path, n)).unwrap().len() <= 300);
        }
        let all: Vec<LogEntry> =
            LogStream::open(&path, 3, LogOptions::default(), Box::new(|_| false))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let last = all.last().unwrap();
        assert_eq!(
            (last.stream, last.bytes.as_slice()),
            (Stream::Stderr, &b"tail without newline"[..])
        );
        let tail: Vec<Vec<u8>> = LogStream::open(
            &path,
            3,
            LogOptions {
                tail: Some(2),
                stderr: false,
                ..LogOptions::default()
            },
            Box::new(|_| false),
        )
        .unwrap()
        .map(|e| e.unwrap().bytes)
        .collect();
        assert_eq!(tail, vec![b"line 18\n".to_vec(), b"line 19\n".to_vec()]);
    }

    #[test]
    fn a_follower_several_rotations_behind_reads_every_file() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = LogWriter::open(&path, 300, 4).unwrap();
        let mut write = |range: std::ops::Range<usize>| {
            for i in range {
                w.write(&LogEntry {
                    stream: Stream::Stdout,
                    time: SystemTime::now(),
                    bytes: format!("line {i}\n").into_bytes(),
                })
                .unwrap();
            }
        };
        write(0..3);
        let running = Arc::new(AtomicBool::new(true));
        let still = running.clone();
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let mut stream = LogStream::open(
            &path,
            4,
            opts,
            Box::new(move |wait| {
                if still.load(Ordering::SeqCst) {
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                }
                still.load(Ordering::SeqCst)
            }),
        )
        .unwrap();
        let text = |e: Option<io::Result<LogEntry>>| String::from_utf8(e.unwrap().unwrap().bytes);
        let first: Vec<String> = (0..3).map(|_| text(stream.next()).unwrap()).collect();
        assert_eq!(first, ["line 0\n", "line 1\n", "line 2\n"]);
        // The reader sleeps while three rotations pass: its file is now .3.
        write(3..12);
        assert!(rotated(&path, 3).exists(), "want three rotations");
        running.store(false, Ordering::SeqCst);
        let rest: Vec<String> = stream
            .map(|e| String::from_utf8(e.unwrap().bytes).unwrap())
            .collect();
        let want: Vec<String> = (3..12).map(|i| format!("line {i}\n")).collect();
        assert_eq!(rest, want);
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let w: SharedWriter = Arc::new(Mutex::new(LogWriter::open(&path, 1 << 20, 1).unwrap()));
        let input = vec![b'x'; MAX_LINE + 10];
        pump(&input[..], Stream::Stdout, &w, None).unwrap();
        let sizes: Vec<usize> =
            LogStream::open(&path, 1, LogOptions::default(), Box::new(|_| false))
                .unwrap()
                .map(|e| e.unwrap().bytes.len())
                .collect();
        assert_eq!(sizes, vec![MAX_LINE, 10]);
    }
}
