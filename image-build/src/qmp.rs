//! The QMP connection `run` uses to press the guest's power button.
//!
//! berth-build listens on a private unix socket and QEMU connects to it as a
//! client at start-up (`-chardev socket,path=...`), so there is no race and no
//! polling: the connection waits in the listen backlog until Ctrl-C, and then
//! the greeting, `qmp_capabilities` and `system_powerdown` are exchanged.
//! Events QEMU sent meanwhile are read past.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long QEMU may take to answer one QMP command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// QMP failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be made.
    #[error("cannot create the QMP socket {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    /// QEMU never connected.
    #[error("QEMU has not connected to the QMP socket")]
    NotConnected,
    /// Talking to QEMU failed.
    #[error("QMP conversation with QEMU failed")]
    Io(#[from] std::io::Error),
    /// QEMU refused a command.
    #[error("QEMU refused {command}: {reply}")]
    Refused {
        /// The command.
        command: &'static str,
        /// QEMU's reply.
        reply: String,
    },
}

/// A listening QMP socket in a private directory, removed on drop.
pub struct Listener {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl Listener {
    /// Makes `berth-build-<pid>/qmp.sock` in the temp directory.
    pub fn new() -> Result<Self, QmpError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("berth-build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| QmpError::Listen(dir.clone(), e))?;
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).map_err(|e| QmpError::Listen(path.clone(), e))?;
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    /// The socket path QEMU connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes QEMU's connection and negotiates capabilities.
    pub fn accept(&self) -> Result<Session, QmpError> {
        self.listener.set_nonblocking(true)?;
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(QmpError::NotConnected)
            }
            Err(e) => return Err(e.into()),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut session = Session {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        session.reply_line()?; // the greeting
        session.execute("qmp_capabilities")?;
        Ok(session)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A QMP conversation with QEMU.
pub struct Session {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Session {
    /// Presses the guest's ACPI power button.
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown")
    }

    fn reply_line(&mut self) -> Result<String, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(line)
    }

    /// Sends a command and waits for its `return`, skipping events.
    fn execute(&mut self, command: &'static str) -> Result<(), QmpError> {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}")?;
        loop {
            let line = self.reply_line()?;
            if line.contains("\"return\"") {
                return Ok(());
            }
            if line.contains("\"error\"") {
                return Err(QmpError::Refused {
                    command,
                    reply: line.trim().to_string(),
                });
            }
        }
    }
}
