//! Progress of a pull: the events, and a renderer for a terminal.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::image::digest::Digest;
use crate::image::reference::Reference;

/// Something that happened during a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// Asking the registry what the reference names.
    Resolving {
        /// The reference being pulled.
        reference: Reference,
    },
    /// The image manifest is known (after resolving any index).
    Resolved {
        /// Its digest.
        manifest: Digest,
        /// How many layers it has.
        layers: usize,
    },
    /// A layer is already in the store: nothing to fetch.
    LayerPresent {
        /// 0-based position, bottom first.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of a layer arrived.
    LayerProgress {
        /// 0-based position, bottom first.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// Bytes received so far.
        done: u64,
        /// The layer's size.
        total: u64,
    },
    /// A transient failure; the download starts again.
    LayerRetry {
        /// 0-based position, bottom first.
        index: usize,
        /// Which attempt comes next (1-based retry count).
        attempt: u32,
        /// What went wrong.
        reason: String,
    },
    /// A layer is fetched and verified.
    LayerDone {
        /// 0-based position, bottom first.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// The image is recorded and tagged.
    Done {
        /// The image id.
        id: Digest,
        /// The manifest digest.
        manifest: Digest,
    },
}

impl PullEvent {
    /// The event as a line of the Docker Engine API's `POST /images/create`
    /// JSON stream (what `docker pull` renders), or None for events Docker
    /// does not show. The final `Status: ...` line is the API's to add.
    pub fn docker_message(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            PullEvent::Resolving { reference } => json!({
                "status": format!("Pulling from {}", reference.path()),
                "id": reference
                    .digest()
                    .map(ToString::to_string)
                    .or_else(|| reference.tag().map(str::to_owned))
                    .unwrap_or_else(|| "latest".into()),
            }),
            PullEvent::Resolved { .. } => return None,
            PullEvent::LayerPresent { digest, .. } => json!({
                "status": "Already exists", "progressDetail": {}, "id": short(digest),
            }),
            PullEvent::LayerProgress {
                digest,
                done,
                total,
                ..
            } => json!({
                "status": "Downloading",
                "progressDetail": {"current": done, "total": total},
                "progress": format!("{} {}/{}", bar(*done, *total), human_size(*done), human_size(*total)),
                "id": short(digest),
            }),
            PullEvent::LayerRetry {
                attempt, reason, ..
            } => json!({
                "status": format!("Retrying ({attempt}): {reason}"), "progressDetail": {},
            }),
            PullEvent::LayerDone { digest, .. } => json!({
                "status": "Pull complete", "progressDetail": {}, "id": short(digest),
            }),
            PullEvent::Done { manifest, .. } => json!({"status": format!("Digest: {manifest}")}),
        })
    }
}

/// Receives [`PullEvent`]s.
pub trait PullProgress {
    /// Called for every event, on the pulling thread.
    fn event(&mut self, event: &PullEvent);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn event(&mut self, _event: &PullEvent) {}
}

/// Collects every event (for tests and API streaming).
impl PullProgress for Vec<PullEvent> {
    fn event(&mut self, event: &PullEvent) {
        self.push(event.clone());
    }
}

/// How often a terminal redraws while bytes arrive.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// Renders a pull as Docker does: one line per layer, redrawn in place when
/// the output is a terminal; plain lines (no byte counts) otherwise.
pub struct TerminalProgress<W: Write> {
    out: W,
    tty: bool,
    lines: Vec<String>,
    /// Lines drawn by the last redraw (to move the cursor back up).
    drawn: usize,
    last_draw: Option<Instant>,
}

impl TerminalProgress<io::Stderr> {
    /// Renders to stderr, redrawing when stderr is a terminal.
    pub fn stderr() -> Self {
        let tty = io::stderr().is_terminal();
        Self::new(io::stderr(), tty)
    }
}

impl<W: Write> TerminalProgress<W> {
    /// Renders to `out`; `tty` selects in-place redraws.
    pub fn new(out: W, tty: bool) -> Self {
        Self {
            out,
            tty,
            lines: Vec::new(),
            drawn: 0,
            last_draw: None,
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn set(&mut self, index: usize, text: String) {
        if self.lines.len() <= index {
            self.lines.resize(index + 1, String::new());
        }
        self.lines[index] = text;
    }

    fn redraw(&mut self, force: bool) {
        let now = Instant::now();
        if !force && self.last_draw.is_some_and(|t| now - t < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(now);
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for l in &self.lines {
            buf.push_str("\r\x1b[2K");
            buf.push_str(l);
            buf.push('\n');
        }
        self.drawn = self.lines.len();
        let _ = self.out.write_all(buf.as_bytes());
        let _ = self.out.flush();
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

/// `12.3MB` style sizes, as Docker prints them.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    let mut s = String::from("[");
    for i in 0..WIDTH {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    s
}

impl<W: Write> PullProgress for TerminalProgress<W> {
    fn event(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolving { reference } => {
                let tag = reference
                    .digest()
                    .map(ToString::to_string)
                    .or_else(|| reference.tag().map(str::to_owned))
                    .unwrap_or_else(|| "latest".into());
                self.line(&format!("{tag}: Pulling from {}", reference.path()));
            }
            PullEvent::Resolved { .. } => {}
            PullEvent::LayerPresent { index, digest, .. } => {
                let text = format!("{}: Already exists", short(digest));
                if self.tty {
                    self.set(*index, text);
                    self.redraw(true);
                } else {
                    self.line(&text);
                }
            }
            PullEvent::LayerProgress {
                index,
                digest,
                done,
                total,
            } => {
                if self.tty {
                    let text = format!(
                        "{}: Downloading {} {}/{}",
                        short(digest),
                        bar(*done, *total),
                        human_size(*done),
                        human_size(*total)
                    );
                    self.set(*index, text);
                    self.redraw(false);
                }
            }
            PullEvent::LayerRetry {
                index,
                attempt,
                reason,
            } => {
                let text = format!("layer {}: retrying ({attempt}): {reason}", index + 1);
                if self.tty {
                    self.set(*index, text);
                    self.redraw(true);
                } else {
                    self.line(&text);
                }
            }
            PullEvent::LayerDone {
                index,
                digest,
                size,
            } => {
                let text = format!("{}: Pull complete ({})", short(digest), human_size(*size));
                if self.tty {
                    self.set(*index, text);
                    self.redraw(true);
                } else {
                    self.line(&text);
                }
            }
            PullEvent::Done { manifest, .. } => {
                self.line(&format!("Digest: {manifest}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_has_one_line_per_event_and_no_escapes() {
        let mut p = TerminalProgress::new(Vec::new(), false);
        let d = Digest::of(b"layer");
        let r = Reference::parse("team/app:v1").unwrap();
        p.event(&PullEvent::Resolving { reference: r });
        p.event(&PullEvent::LayerProgress {
            index: 0,
            digest: d,
            done: 5,
            total: 10,
        });
        p.event(&PullEvent::LayerDone {
            index: 0,
            digest: d,
            size: 10,
        });
        p.event(&PullEvent::LayerPresent {
            index: 1,
            digest: d,
            size: 10,
        });
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert!(!text.contains('\x1b'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "v1: Pulling from team/app");
        assert!(lines[1].contains("Pull complete (10B)"), "{text}");
        assert!(lines[2].ends_with("Already exists"), "{text}");
    }

    #[test]
    fn tty_output_redraws_in_place() {
        let mut p = TerminalProgress::new(Vec::new(), true);
        let d = Digest::of(b"layer");
        p.event(&PullEvent::LayerPresent {
            index: 0,
            digest: d,
            size: 1,
        });
        p.event(&PullEvent::LayerDone {
            index: 1,
            digest: d,
            size: 2_500_000,
        });
        let text = String::from_utf8(p.into_inner()).unwrap();
        // The second draw moves up over the first line and redraws both.
        assert!(text.contains("\x1b[1A"), "{text:?}");
        assert!(text.contains("Pull complete (2.5MB)"), "{text:?}");
    }

    #[test]
    fn docker_json_messages() {
        let d = Digest::of(b"layer");
        let m = PullEvent::LayerProgress {
            index: 0,
            digest: d,
            done: 5,
            total: 10,
        }
        .docker_message()
        .unwrap();
        assert_eq!(m["status"], "Downloading");
        assert_eq!(m["id"], d.hex()[..12]);
        assert_eq!(m["progressDetail"]["current"], 5);
        assert_eq!(m["progressDetail"]["total"], 10);
        let r = Reference::parse("busybox").unwrap();
        let m = PullEvent::Resolving { reference: r }
            .docker_message()
            .unwrap();
        assert_eq!(m["status"], "Pulling from library/busybox");
        assert_eq!(m["id"], "latest");
    }

    #[test]
    fn sizes_and_bars() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.2MB");
        assert_eq!(bar(0, 10).len(), 32);
        assert!(bar(10, 10).starts_with("[=============================="));
        assert_eq!(bar(1, 0), format!("[{}]", "=".repeat(30)));
    }
}
