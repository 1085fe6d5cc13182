//! A minimal HTTP/1.0 client for checking what a guest serves through a
//! QEMU port forward (which accepts before the guest's server is up).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Why no page came.
#[derive(Debug, thiserror::Error)]
#[error("no page with {want:?} on 127.0.0.1:{port} within {timeout:?}; last: {last}")]
pub struct HttpError {
    /// The host port asked.
    pub port: u16,
    /// The text the page had to contain.
    pub want: String,
    /// How long it was tried.
    pub timeout: Duration,
    /// The last answer or error.
    pub last: String,
}

/// `GET /` on 127.0.0.1:`port` until the whole answer (status line,
/// headers and body) contains `want`, or `timeout` passes; the answer.
pub fn get_until(port: u16, want: &str, timeout: Duration) -> Result<String, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing tried");
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: berth\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if answer.contains(want) => return Ok(answer),
            Ok(answer) => last = format!("an answer without it: {answer:?}"),
            Err(e) => last = e.to_string(),
        }
        // The forward answers at once while nothing listens in the guest:
        // a short pause keeps the retries from spinning.
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(HttpError {
        port,
        want: want.to_owned(),
        timeout,
        last,
    })
}
