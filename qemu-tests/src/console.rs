//! The serial console: a reader thread appends what the guest prints to a
//! shared buffer, and `expect` waits on a condition variable for a regex to
//! match past a cursor, so successive expectations move forward through the
//! output and nobody sleeps.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::{Regex, RegexBuilder};

/// How many bytes of console tail an error message carries.
const TAIL_BYTES: usize = 2000;

/// Why waiting for console output failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The pattern is not a valid regex.
    #[error("invalid console pattern {pattern:?}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What the regex compiler said.
        #[source]
        source: regex::Error,
    },
    /// Nothing matched before the deadline.
    #[error("console did not match {pattern:?} within {timeout:?}; console tail:\n{tail}")]
    Timeout {
        /// The pattern that was awaited.
        pattern: String,
        /// How long we waited.
        timeout: Duration,
        /// The last part of the console.
        tail: String,
    },
    /// The console closed (QEMU exited) before anything matched.
    #[error("console closed (QEMU exited) before matching {pattern:?}; console tail:\n{tail}")]
    Closed {
        /// The pattern that was awaited.
        pattern: String,
        /// The last part of the console.
        tail: String,
    },
}

/// What a successful `expect` matched: the whole match and its groups, owned
/// so they outlive the console lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    groups: Vec<Option<String>>,
    names: Vec<Option<String>>,
    /// Byte offset of the match's start in the whole console.
    pub start: usize,
    /// Byte offset just past the match in the whole console.
    pub end: usize,
}

impl Matched {
    /// The whole matched text.
    pub fn text(&self) -> &str {
        self.get(0).unwrap_or_default()
    }

    /// The `i`th capture group (0 is the whole match), if it took part.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.groups.get(i).and_then(|g| g.as_deref())
    }

    /// The capture group named `name`, if it exists and took part.
    pub fn name(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| n.as_deref() == Some(name))?;
        self.get(i)
    }

    /// The `i`th group parsed as a number (or any `FromStr`), `None` if it is
    /// missing or does not parse.
    pub fn parse<T: std::str::FromStr>(&self, i: usize) -> Option<T> {
        self.get(i)?.parse().ok()
    }
}

#[derive(Debug, Default)]
struct State {
    text: String,
    /// Bytes of an incomplete UTF-8 sequence waiting for the next read.
    pending: Vec<u8>,
    closed: bool,
}

impl State {
    fn append(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut rest: &[u8] = &std::mem::take(&mut self.pending);
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    push_without_cr(&mut self.text, s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 said these bytes are valid.
                    push_without_cr(&mut self.text, std::str::from_utf8(valid).unwrap_or(""));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                        Some(n) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
    }

    /// The part of the text a pattern may match: complete lines only, unless
    /// the stream is closed, so `uptime_ms=(\d+)` never matches half a number.
    fn searchable_end(&self) -> usize {
        if self.closed {
            self.text.len()
        } else {
            self.text.rfind('\n').map_or(0, |i| i + 1)
        }
    }
}

fn push_without_cr(text: &mut String, s: &str) {
    text.extend(s.chars().filter(|&c| c != '\r'));
}

/// The shared console buffer. Cloning gives another handle on the same buffer.
#[derive(Debug, Clone, Default)]
pub struct Console {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Console {
    /// An empty, open console.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the text inconsistent
        // (every update is a single push), so a poisoned lock is still usable.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends raw console bytes and wakes waiters.
    pub fn append(&self, bytes: &[u8]) {
        self.lock().append(bytes);
        self.inner.1.notify_all();
    }

    /// Marks the stream as ended (the writer is gone) and wakes waiters.
    pub fn close(&self) {
        {
            let mut state = self.lock();
            let pending = std::mem::take(&mut state.pending);
            state.text.push_str(&String::from_utf8_lossy(&pending));
            state.closed = true;
        }
        self.inner.1.notify_all();
    }

    /// Whether the writer has closed the stream.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// A copy of everything received so far.
    pub fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// The last `max_bytes` (roughly) of the console, cut at a line start.
    pub fn tail(&self, max_bytes: usize) -> String {
        tail_of(&self.lock().text, max_bytes).to_owned()
    }

    /// Spawns a thread that copies `reader` into this console until EOF,
    /// then closes it.
    pub fn spawn_reader<R: Read + Send + 'static>(&self, mut reader: R) -> JoinHandle<()> {
        let console = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => console.append(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            console.close();
        })
    }

    /// Waits until `pattern` matches text after `*cursor` (complete lines
    /// only), then moves the cursor past the match. `^` and `$` match at
    /// line boundaries. Fails at the deadline or as soon as the stream closes
    /// without a match.
    pub fn expect(
        &self,
        cursor: &mut usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Matched, ConsoleError> {
        let re = compile(pattern)?;
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let end = state.searchable_end();
            let from = (*cursor).min(end);
            if let Some(caps) = re.captures(&state.text[from..end]) {
                let whole = caps.get(0).map_or(0..0, |m| m.range());
                let matched = Matched {
                    groups: caps
                        .iter()
                        .map(|g| g.map(|m| m.as_str().to_owned()))
                        .collect(),
                    names: re.capture_names().map(|n| n.map(str::to_owned)).collect(),
                    start: from + whole.start,
                    end: from + whole.end,
                };
                *cursor = matched.end;
                return Ok(matched);
            }
            if state.closed {
                return Err(ConsoleError::Closed {
                    pattern: pattern.to_owned(),
                    tail: tail_of(&state.text, TAIL_BYTES).to_owned(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    pattern: pattern.to_owned(),
                    timeout,
                    tail: tail_of(&state.text, TAIL_BYTES).to_owned(),
                });
            }
            state = self
                .inner
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the stream closes (the writer exited), returning whether
    /// it did before the deadline.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .inner
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

fn compile(pattern: &str) -> Result<Regex, ConsoleError> {
    RegexBuilder::new(pattern)
        .multi_line(true)
        .build()
        .map_err(|source| ConsoleError::Pattern {
            pattern: pattern.to_owned(),
            source,
        })
}

/// The last `max_bytes` of `text`, starting at a line boundary when one is near.
pub fn tail_of(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    match tail.find('\n') {
        Some(i) if i + 1 < tail.len() => &tail[i + 1..],
        _ => tail,
    }
}

/// The `berth:` lines of a console, each starting at `berth:` (any log
/// prefix before it dropped), in order.
pub fn berth_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.find("berth: ").map(|i| &l[i..]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn expect_moves_forward_through_the_output() {
        let c = Console::new();
        c.append(b"berth: a 1\nberth: b 2\nberth: a 3\n");
        let mut cur = 0;
        assert_eq!(
            c.expect(&mut cur, r"a (\d)", LONG).unwrap().get(1),
            Some("1")
        );
        assert_eq!(
            c.expect(&mut cur, r"a (\d)", LONG).unwrap().get(1),
            Some("3")
        );
        assert!(matches!(
            c.expect(&mut cur, r"b (\d)", SHORT),
            Err(ConsoleError::Timeout { .. })
        ));
    }

    #[test]
    fn expect_wakes_when_a_writer_thread_appends() {
        let c = Console::new();
        let (tx, rx) = mpsc::channel::<&'static [u8]>();
        let writer = c.clone();
        let t = std::thread::spawn(move || {
            for chunk in rx {
                writer.append(chunk);
            }
            writer.close();
        });
        let mut cur = 0;
        tx.send(b"boot noise\nberth: ready uptime_ms=12").unwrap();
        // Half a line must not match: the number could still be growing.
        assert!(c.expect(&mut cur, r"ready uptime_ms=(\d+)", SHORT).is_err());
        tx.send(b"34 workloads=0\r\n").unwrap();
        let m = c
            .expect(
                &mut cur,
                r"ready uptime_ms=(?<up>\d+) workloads=(\d+)$",
                LONG,
            )
            .unwrap();
        assert_eq!(m.name("up"), Some("1234"));
        assert_eq!(m.parse::<u32>(2), Some(0));
        drop(tx);
        t.join().unwrap();
        assert!(matches!(
            c.expect(&mut cur, "never", LONG),
            Err(ConsoleError::Closed { .. })
        ));
    }

    #[test]
    fn closed_stream_fails_fast_but_still_matches_a_last_partial_line() {
        let c = Console::new();
        c.append(b"berth: power off");
        c.close();
        let start = Instant::now();
        let mut cur = 0;
        assert!(c.expect(&mut cur, "power off$", LONG).is_ok());
        assert!(c.expect(&mut cur, "reboot", LONG).is_err());
        assert!(start.elapsed() < LONG);
        assert!(c.wait_closed(SHORT));
    }

    #[test]
    fn reader_thread_copies_until_eof_and_joins_split_utf8() {
        let c = Console::new();
        let bytes = "über\r\nberth: ready\n".as_bytes().to_vec();
        // A reader that yields one byte at a time splits 'ü' in two.
        struct OneByte(std::vec::IntoIter<u8>);
        impl Read for OneByte {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                Ok(self.0.next().map_or(0, |b| {
                    buf[0] = b;
                    1
                }))
            }
        }
        c.spawn_reader(OneByte(bytes.into_iter())).join().unwrap();
        assert!(c.is_closed());
        assert_eq!(c.text(), "über\nberth: ready\n");
    }

    #[test]
    fn berth_lines_drop_log_prefixes() {
        let text = "noise\n[    0.81] berth: ready uptime_ms=1 workloads=0\nberth: power off\n";
        assert_eq!(
            berth_lines(text),
            ["berth: ready uptime_ms=1 workloads=0", "berth: power off"]
        );
    }

    #[test]
    fn tail_starts_at_a_line() {
        assert_eq!(tail_of("aaaa\nbbbb\ncc\n", 6), "cc\n");
        assert_eq!(tail_of("short", 100), "short");
    }

    #[test]
    fn bad_pattern_is_reported() {
        let c = Console::new();
        let mut cur = 0;
        assert!(matches!(
            c.expect(&mut cur, "(", SHORT),
            Err(ConsoleError::Pattern { .. })
        ));
    }
}
