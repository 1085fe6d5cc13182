//! The one-line readiness message a supervised daemon sends to init.
//!
//! init hands each daemon the write end of a pipe as fd [`READY_FD`] and sets
//! `BERTH_READY_FD` to that number. The daemon writes exactly one line when it
//! is ready (`READY`, optionally `READY workloads=<N>` from the engine) or
//! when it gives up (`NOTREADY <reason>`). Both ends use this module, so the
//! wire format is defined once.

/// The fd number a daemon finds its readiness pipe on.
pub const READY_FD: i32 = 3;

/// The environment variable that names [`READY_FD`] to the daemon.
pub const READY_FD_ENV: &str = "BERTH_READY_FD";

/// Longest line init reads before calling the message malformed.
pub const MAX_LINE: usize = 4096;

/// What a daemon says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The daemon is serving. The engine reports how many workloads it runs.
    Ready {
        /// Workloads running, when the sender knows (the engine does).
        workloads: Option<u32>,
    },
    /// The daemon cannot become ready; the reason is for the console.
    NotReady(String),
}

/// A readiness line that does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadinessError {
    /// The line is not `READY ...` or `NOTREADY ...`.
    #[error("readiness message {0:?} is neither READY nor NOTREADY")]
    UnknownVerb(String),
    /// A `key=value` field after `READY` is unknown or malformed.
    #[error("readiness field {0:?} is not understood (expected workloads=<N>)")]
    BadField(String),
    /// No newline within [`MAX_LINE`] bytes.
    #[error("readiness message is longer than {MAX_LINE} bytes")]
    TooLong,
}

/// The line (with its trailing newline) that announces `msg`.
pub fn encode(msg: &Readiness) -> String {
    match msg {
        Readiness::Ready { workloads: None } => "READY\n".to_string(),
        Readiness::Ready { workloads: Some(n) } => format!("READY workloads={n}\n"),
        Readiness::NotReady(reason) => {
            // One line on the wire, whatever the reason contains.
            let reason: String = reason
                .chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                .collect();
            format!("NOTREADY {}\n", reason.trim())
        }
    }
}

/// Reads one readiness line (with or without its newline).
pub fn decode(line: &str) -> Result<Readiness, ReadinessError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest),
        None => (line, ""),
    };
    match verb {
        "READY" => {
            let mut workloads = None;
            for field in rest.split_whitespace() {
                match field.split_once('=') {
                    Some(("workloads", n)) => {
                        workloads = Some(
                            n.parse()
                                .map_err(|_| ReadinessError::BadField(field.to_string()))?,
                        );
                    }
                    _ => return Err(ReadinessError::BadField(field.to_string())),
                }
            }
            Ok(Readiness::Ready { workloads })
        }
        "NOTREADY" => Ok(Readiness::NotReady(rest.trim().to_string())),
        _ => Err(ReadinessError::UnknownVerb(line.to_string())),
    }
}

/// Collects bytes from the readiness pipe until a full line arrives.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes read from the pipe; returns the decoded message once the
    /// first line is complete (later bytes are ignored).
    pub fn push(&mut self, bytes: &[u8]) -> Option<Result<Readiness, ReadinessError>> {
        self.buf.extend_from_slice(bytes);
        if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.clear();
            return Some(decode(&line));
        }
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
            return Some(Err(ReadinessError::TooLong));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_exact_bytes() {
        assert_eq!(encode(&Readiness::Ready { workloads: None }), "READY\n");
        assert_eq!(
            encode(&Readiness::Ready { workloads: Some(3) }),
            "READY workloads=3\n"
        );
        assert_eq!(
            encode(&Readiness::NotReady("no link\nat all".into())),
            "NOTREADY no link at all\n"
        );
    }

    #[test]
    fn round_trips() {
        for msg in [
            Readiness::Ready { workloads: None },
            Readiness::Ready { workloads: Some(0) },
            Readiness::Ready {
                workloads: Some(12),
            },
            Readiness::NotReady("dhcp timed out on eth0".into()),
        ] {
            assert_eq!(decode(&encode(&msg)), Ok(msg));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            decode("HELLO\n"),
            Err(ReadinessError::UnknownVerb("HELLO".into()))
        );
        assert_eq!(
            decode("READY workloads=x"),
            Err(ReadinessError::BadField("workloads=x".into()))
        );
        assert_eq!(
            decode("READY extra"),
            Err(ReadinessError::BadField("extra".into()))
        );
        assert_eq!(
            decode("READY\r\n"),
            Ok(Readiness::Ready { workloads: None })
        );
    }

    #[test]
    fn line_buffer_waits_for_newline() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"REA"), None);
        assert_eq!(b.push(b"DY workl"), None);
        assert_eq!(
            b.push(b"oads=2\nignored"),
            Some(Ok(Readiness::Ready { workloads: Some(2) }))
        );
        let mut b = LineBuffer::default();
        assert_eq!(
            b.push(&[b'x'; MAX_LINE + 1]),
            Some(Err(ReadinessError::TooLong))
        );
    }
}
