//! A minimal QMP client: newline-delimited JSON over a unix socket that QEMU
//! connects to. The harness listens before QEMU starts, so no one has to poll
//! for a socket file to appear.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Binding the listening socket failed.
    #[error("cannot listen for QMP on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not connect to the QMP socket in time.
    #[error("QEMU did not connect to the QMP socket {path} within {timeout:?}")]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// Reading or writing the socket failed (QEMU may have exited).
    #[error("QMP socket I/O failed during {during}")]
    Io {
        /// What we were doing.
        during: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed before a reply arrived.
    #[error("QMP connection closed during {during} (QEMU exited?)")]
    Closed {
        /// What we were doing.
        during: String,
    },
    /// A line from QEMU was not JSON.
    #[error("QEMU sent a QMP line that is not JSON: {line:?}")]
    Json {
        /// The line as received.
        line: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// The process that should connect exited first.
    #[error("QEMU exited before connecting to QMP")]
    PeerExited,
    /// The first message was not the QMP greeting.
    #[error("QEMU's first QMP message is not a greeting: {0}")]
    Greeting(Value),
}

/// A QMP message as received: a reply to a command, or an asynchronous event.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"return": ...}`.
    Return(Value),
    /// `{"error": {"class": ..., "desc": ...}}`.
    Error {
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// `{"event": NAME, ...}`: the whole object.
    Event(Value),
    /// `{"QMP": ...}`: the greeting.
    Greeting(Value),
    /// Anything else.
    Other(Value),
}

/// Frames one command as QMP wants it: one JSON object and a newline.
pub fn encode_command(command: &str, arguments: Option<&Value>) -> String {
    let msg = match arguments {
        Some(args) => json!({ "execute": command, "arguments": args }),
        None => json!({ "execute": command }),
    };
    format!("{msg}\n")
}

/// Classifies one received line.
pub fn decode_line(line: &str) -> Result<Message, QmpError> {
    let value: Value = serde_json::from_str(line.trim()).map_err(|source| QmpError::Json {
        line: line.to_owned(),
        source,
    })?;
    Ok(if let Some(ret) = value.get("return") {
        Message::Return(ret.clone())
    } else if let Some(err) = value.get("error") {
        let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Message::Error {
            class: field("class"),
            desc: field("desc"),
        }
    } else if value.get("event").is_some() {
        Message::Event(value)
    } else if let Some(greeting) = value.get("QMP") {
        Message::Greeting(greeting.clone())
    } else {
        Message::Other(value)
    })
}

/// The QMP keys of Ctrl-Alt-Del, for `send-key`.
pub fn ctrl_alt_del_keys() -> Value {
    json!({ "keys": [
        { "type": "qcode", "data": "ctrl" },
        { "type": "qcode", "data": "alt" },
        { "type": "qcode", "data": "delete" },
    ]})
}

/// A listening QMP socket, before QEMU has connected.
#[derive(Debug)]
pub struct QmpListener {
    listener: UnixListener,
    path: PathBuf,
}

impl QmpListener {
    /// Listens on `path` (which must not exist yet).
    pub fn bind(path: &Path) -> Result<Self, QmpError> {
        let listener = UnixListener::bind(path).map_err(|source| QmpError::Listen {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// The socket path, for QEMU's `-chardev socket,path=...`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for QEMU to connect, then does the capabilities
    /// handshake.
    pub fn accept(&self, timeout: Duration) -> Result<Qmp, QmpError> {
        self.accept_or_exit(timeout, None)
    }

    /// Like [`QmpListener::accept`], but gives up with
    /// [`QmpError::PeerExited`] as soon as `exit` (a pidfd of QEMU) becomes
    /// readable, i.e. QEMU died before connecting.
    pub fn accept_or_exit(
        &self,
        timeout: Duration,
        exit: Option<BorrowedFd<'_>>,
    ) -> Result<Qmp, QmpError> {
        let mut fds = vec![libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(exit) = exit {
            fds.push(libc::pollfd {
                fd: exit.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let count = libc::nfds_t::try_from(fds.len()).unwrap_or(1);
        // SAFETY: `fds` is a live, initialised array of `count` pollfds that
        // the kernel may write `revents` into for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, ms) };
        if ready < 0 {
            return Err(QmpError::Io {
                during: "waiting for QEMU to connect".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        if ready == 0 {
            return Err(QmpError::ConnectTimeout {
                path: self.path.clone(),
                timeout,
            });
        }
        if fds[0].revents & libc::POLLIN == 0 {
            return Err(QmpError::PeerExited);
        }
        let (stream, _) = self.listener.accept().map_err(|source| QmpError::Io {
            during: "accepting QEMU's connection".into(),
            source,
        })?;
        Qmp::handshake(stream, timeout)
    }
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities on an open stream;
    /// every later read gives up after `timeout`.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        let io = |during: &str| {
            let during = during.to_owned();
            move |source| QmpError::Io { during, source }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("setting the read timeout"))?;
        let writer = stream.try_clone().map_err(io("cloning the socket"))?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        match qmp.read_message("the greeting")? {
            Message::Greeting(_) => {}
            Message::Other(v) | Message::Return(v) | Message::Event(v) => {
                return Err(QmpError::Greeting(v))
            }
            Message::Error { class, desc } => {
                return Err(QmpError::Greeting(json!({ "class": class, "desc": desc })))
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self, during: &str) -> Result<Message, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                during: during.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                during: during.to_owned(),
            });
        }
        decode_line(&line)
    }

    /// Runs one command and returns its `return` value; events that arrive
    /// meanwhile are kept for [`Qmp::events`].
    pub fn execute(&mut self, command: &str, arguments: Option<&Value>) -> Result<Value, QmpError> {
        let during = format!("command {command}");
        self.writer
            .write_all(encode_command(command, arguments).as_bytes())
            .map_err(|source| QmpError::Io {
                during: during.clone(),
                source,
            })?;
        let started = Instant::now();
        loop {
            match self.read_message(&during)? {
                Message::Return(v) => return Ok(v),
                Message::Error { class, desc } => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                Message::Event(e) => self.events.push(e),
                Message::Greeting(_) | Message::Other(_) => {}
            }
            // The read timeout bounds each line; this bounds a flood of events.
            if started.elapsed() > Duration::from_secs(60) {
                return Err(QmpError::Closed { during });
            }
        }
    }

    /// Events received so far (each the whole JSON object).
    pub fn events(&self) -> &[Value] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn commands_are_one_json_object_per_line() {
        assert_eq!(
            encode_command("system_powerdown", None),
            "{\"execute\":\"system_powerdown\"}\n"
        );
        let line = encode_command("send-key", Some(&ctrl_alt_del_keys()));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({ "execute": "send-key", "arguments": { "keys": [
                { "type": "qcode", "data": "ctrl" },
                { "type": "qcode", "data": "alt" },
                { "type": "qcode", "data": "delete" },
            ]}})
        );
    }

    #[test]
    fn lines_decode_by_kind() {
        assert_eq!(
            decode_line("{\"return\": {}}\r\n").unwrap(),
            Message::Return(json!({}))
        );
        assert_eq!(
            decode_line(r#"{"error": {"class": "GenericError", "desc": "nope"}}"#).unwrap(),
            Message::Error {
                class: "GenericError".into(),
                desc: "nope".into()
            }
        );
        assert!(matches!(
            decode_line(
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#
            )
            .unwrap(),
            Message::Event(_)
        ));
        assert!(matches!(
            decode_line(r#"{"QMP": {"version": {}, "capabilities": []}}"#).unwrap(),
            Message::Greeting(_)
        ));
        assert!(matches!(
            decode_line("not json"),
            Err(QmpError::Json { .. })
        ));
    }

    /// A fake QEMU on the other end of a socket pair: greets, then answers
    /// each command after an interleaved event.
    #[test]
    fn handshake_and_execute_skip_events() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            theirs
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line);
                theirs
                    .write_all(
                        b"{\"event\": \"POWERDOWN\", \"timestamp\": {}}\r\n{\"return\": {}}\r\n",
                    )
                    .unwrap();
            }
            let mut rest = String::new();
            reader.read_to_string(&mut rest).unwrap();
            seen
        });
        let mut qmp = Qmp::handshake(ours, Duration::from_secs(10)).unwrap();
        assert_eq!(qmp.execute("system_powerdown", None).unwrap(), json!({}));
        assert_eq!(qmp.events().len(), 2);
        drop(qmp);
        let seen = fake.join().unwrap();
        assert_eq!(seen[0], "{\"execute\":\"qmp_capabilities\"}\n");
        assert_eq!(seen[1], "{\"execute\":\"system_powerdown\"}\n");
    }

    #[test]
    fn command_errors_carry_class_and_description() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            theirs
                .write_all(b"{\"QMP\": {}}\n{\"return\": {}}\n")
                .unwrap();
            theirs
                .write_all(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command x has not been found\"}}\n")
                .unwrap();
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink);
        });
        let mut qmp = Qmp::handshake(ours, Duration::from_secs(10)).unwrap();
        let err = qmp.execute("x", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command x failed: CommandNotFound: The command x has not been found"
        );
    }

    #[test]
    fn accept_times_out_when_nobody_connects() {
        let dir = tempfile::tempdir().unwrap();
        let l = QmpListener::bind(&dir.path().join("qmp.sock")).unwrap();
        assert!(matches!(
            l.accept(Duration::from_millis(20)),
            Err(QmpError::ConnectTimeout { .. })
        ));
    }
}
