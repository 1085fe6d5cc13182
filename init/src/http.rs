//! A small HTTP/1.1 client over `std::net::TcpStream`, enough to ask an
//! instance metadata service for user-data: one request per connection
//! (`Connection: close`), bodies delimited by `Content-Length`, chunked
//! encoding or the end of the connection, a cap on the body's size and one
//! deadline for the whole exchange, so PID 1 never waits long.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest status line plus headers accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path, `/latest/user-data`.
    pub path: &'a str,
    /// Extra headers (`Host` and `Connection` are added).
    pub headers: &'a [(&'a str, &'a str)],
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for the TCP connection.
    pub connect: Duration,
    /// When the whole exchange must be over.
    pub deadline: Instant,
    /// Largest body accepted.
    pub max_body: usize,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No TCP connection (refused, unreachable, timed out).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed before the response was complete.
    #[error("no complete answer from {addr} within the time allowed")]
    Timeout {
        /// The server.
        addr: SocketAddr,
    },
    /// Sending or receiving failed.
    #[error("connection to {addr} failed")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP/1.x as this client reads it.
    #[error("bad HTTP response from {addr}: {problem}")]
    Malformed {
        /// The server.
        addr: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// The body is larger than allowed.
    #[error("the response from {addr} is larger than {limit} bytes")]
    TooLarge {
        /// The server.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
}

impl HttpError {
    /// Whether nothing answers at the address at all (as opposed to a
    /// server that answered badly or slowly).
    pub fn is_connect(&self) -> bool {
        matches!(self, HttpError::Connect { .. })
    }
}

/// Sends `request` to `addr` (naming `host` in the `Host` header) and reads
/// the whole response.
pub fn exchange(
    addr: SocketAddr,
    host: &str,
    request: &Request<'_>,
    limits: Limits,
) -> Result<Response, HttpError> {
    let remaining = limits.deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(HttpError::Timeout { addr });
    }
    let stream = TcpStream::connect_timeout(&addr, limits.connect.min(remaining))
        .map_err(|source| HttpError::Connect { addr, source })?;
    let mut conn = Conn {
        stream,
        addr,
        deadline: limits.deadline,
        buf: Vec::new(),
        eof: false,
    };
    conn.send(&encode(host, request))?;
    let (status, headers) = conn.read_head()?;
    let body = conn.read_body(&headers, limits.max_body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The bytes of a request with no body.
pub fn encode(host: &str, request: &Request<'_>) -> Vec<u8> {
    let mut text = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
        request.method, request.path
    );
    for (name, value) in request.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !matches!(request.method, "GET" | "HEAD") {
        text.push_str("Content-Length: 0\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    deadline: Instant,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    fn remaining(&self) -> Result<Duration, HttpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout { addr: self.addr });
        }
        Ok(left)
    }

    fn io_error(&self, source: std::io::Error) -> HttpError {
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                HttpError::Timeout { addr: self.addr }
            }
            _ => HttpError::Io {
                addr: self.addr,
                source,
            },
        }
    }

    fn malformed(&self, problem: impl Into<String>) -> HttpError {
        HttpError::Malformed {
            addr: self.addr,
            problem: problem.into(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        let left = self.remaining()?;
        self.stream
            .set_write_timeout(Some(left))
            .and_then(|()| self.stream.write_all(bytes))
            .map_err(|e| self.io_error(e))
    }

    /// Reads more bytes into `buf`; false at the end of the connection.
    fn fill(&mut self) -> Result<bool, HttpError> {
        if self.eof {
            return Ok(false);
        }
        let left = self.remaining()?;
        let mut chunk = [0u8; 8192];
        loop {
            let read = self
                .stream
                .set_read_timeout(Some(left))
                .and_then(|()| self.stream.read(&mut chunk));
            match read {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Takes bytes up to and including the first CRLF; `None` at the end of
    /// the connection. A line longer than `max` is malformed.
    fn line(&mut self, max: usize) -> Result<Option<String>, HttpError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| self.malformed("a header line is not UTF-8"));
            }
            if self.buf.len() > max {
                return Err(self.malformed(format!("a line is longer than {max} bytes")));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), HttpError> {
        let status_line = self
            .line(MAX_HEAD)?
            .ok_or_else(|| self.malformed("the connection closed before a status line"))?;
        let mut words = status_line.splitn(3, ' ');
        let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let status = match (version.starts_with("HTTP/1."), code.parse::<u16>()) {
            (true, Ok(status)) if (100..1000).contains(&status) => status,
            _ => return Err(self.malformed(format!("status line {status_line:?}"))),
        };
        let mut headers = Vec::new();
        let mut size = status_line.len();
        loop {
            let line = self
                .line(MAX_HEAD)?
                .ok_or_else(|| self.malformed("the connection closed inside the headers"))?;
            if line.is_empty() {
                break;
            }
            size += line.len() + 2;
            if size > MAX_HEAD {
                return Err(self.malformed(format!("headers longer than {MAX_HEAD} bytes")));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| self.malformed(format!("header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        // 1xx answers are interim: the real one follows.
        if (100..200).contains(&status) {
            return self.read_head();
        }
        Ok((status, headers))
    }

    fn read_body(
        &mut self,
        headers: &[(String, String)],
        max: usize,
    ) -> Result<Vec<u8>, HttpError> {
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            return self.read_chunked(max);
        }
        if let Some(length) = get("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| self.malformed(format!("Content-Length {length:?}")))?;
            if length > max {
                return Err(HttpError::TooLarge {
                    addr: self.addr,
                    limit: max,
                });
            }
            return self.take(length);
        }
        // Neither: the body runs to the end of the connection.
        while self.fill()? {
            if self.buf.len() > max {
                return Err(HttpError::TooLarge {
                    addr: self.addr,
                    limit: max,
                });
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, HttpError> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(self.malformed(format!(
                    "the connection closed after {} of {n} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_chunked(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line = self
                .line(1024)?
                .ok_or_else(|| self.malformed("the connection closed inside a chunked body"))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| self.malformed(format!("chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line (or the end).
                while let Some(trailer) = self.line(MAX_HEAD)? {
                    if trailer.is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            if body.len().saturating_add(size) > max {
                return Err(HttpError::TooLarge {
                    addr: self.addr,
                    limit: max,
                });
            }
            body.extend(self.take(size)?);
            if self.take(2)? != b"\r\n" {
                return Err(self.malformed("a chunk does not end with CRLF"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// A one-connection server: reads the request head, answers `reply`
    /// (in pieces, to exercise partial reads) and returns what it received.
    fn serve(reply: Vec<u8>) -> std::io::Result<(SocketAddr, JoinHandle<Vec<u8>>)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let handle = std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return Vec::new();
            };
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                got.push(byte[0]);
            }
            for piece in reply.chunks(7) {
                if conn.write_all(piece).is_err() {
                    break;
                }
            }
            got
        });
        Ok((addr, handle))
    }

    fn limits(max_body: usize) -> Limits {
        Limits {
            connect: Duration::from_secs(1),
            deadline: Instant::now() + Duration::from_secs(5),
            max_body,
        }
    }

    const GET: Request<'static> = Request {
        method: "GET",
        path: "/latest/user-data",
        headers: &[("X-Token", "abc")],
    };

    #[test]
    fn sends_the_exact_request_bytes() {
        assert_eq!(
            String::from_utf8_lossy(&encode("169.254.169.254", &GET)),
            "GET /latest/user-data HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             Connection: close\r\nX-Token: abc\r\n\r\n"
        );
        let put = Request {
            method: "PUT",
            path: "/t",
            headers: &[],
        };
        assert_eq!(
            String::from_utf8_lossy(&encode("h", &put)),
            "PUT /t HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn reads_a_content_length_body() -> Result<(), Box<dyn std::error::Error>> {
        let (addr, server) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n[system]\nextra"
                .to_vec(),
        )?;
        let response = exchange(addr, "h", &GET, limits(1024))?;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Content-Type"), Some("text/plain"));
        assert_eq!(response.body, b"[system]\n");
        let request = server.join().map_err(|_| "server panicked")?;
        assert!(request.starts_with(b"GET /latest/user-data HTTP/1.1\r\n"));
        Ok(())
    }

    #[test]
    fn reads_chunked_and_close_delimited_bodies() -> Result<(), Box<dyn std::error::Error>> {
        let (addr, _server) = serve(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nhost\r\n6\r\nname =\r\n0\r\nX-Trailer: y\r\n\r\n"
                .to_vec(),
        )?;
        assert_eq!(exchange(addr, "h", &GET, limits(1024))?.body, b"hostname =");

        let (addr, _server) = serve(b"HTTP/1.0 404 Not Found\r\n\r\nnot here".to_vec())?;
        let response = exchange(addr, "h", &GET, limits(1024))?;
        assert_eq!(
            (response.status, response.body),
            (404, b"not here".to_vec())
        );
        Ok(())
    }

    #[test]
    fn caps_the_body() -> Result<(), Box<dyn std::error::Error>> {
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n{}",
            "x".repeat(2000)
        );
        let (addr, _server) = serve(big.into_bytes())?;
        let e = exchange(addr, "h", &GET, limits(1000)).err();
        assert!(
            matches!(e, Some(HttpError::TooLarge { limit: 1000, .. })),
            "{e:?}"
        );

        let chunks = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
            "x".repeat(2000)
        );
        let (addr, _server) = serve(chunks.into_bytes())?;
        let e = exchange(addr, "h", &GET, limits(1000)).err();
        assert!(matches!(e, Some(HttpError::TooLarge { .. })), "{e:?}");
        Ok(())
    }

    #[test]
    fn reports_malformed_and_truncated_answers() -> Result<(), Box<dyn std::error::Error>> {
        for (reply, expect) in [
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "closed after 5 of 10",
            ),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (b"", "before a status line"),
        ] {
            let (addr, _server) = serve(reply.to_vec())?;
            let e = exchange(addr, "h", &GET, limits(1024)).err();
            let text = e.as_ref().map(ToString::to_string).unwrap_or_default();
            assert!(
                matches!(e, Some(HttpError::Malformed { .. })) && text.contains(expect),
                "{:?}: {e:?}",
                String::from_utf8_lossy(reply)
            );
        }
        Ok(())
    }

    #[test]
    fn a_silent_server_costs_only_the_deadline() -> Result<(), Box<dyn std::error::Error>> {
        // Accepts (the kernel does, from the backlog) and never answers.
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let start = Instant::now();
        let limits = Limits {
            connect: Duration::from_secs(1),
            deadline: start + Duration::from_millis(300),
            max_body: 1024,
        };
        let e = exchange(addr, "h", &GET, limits).err();
        assert!(matches!(e, Some(HttpError::Timeout { .. })), "{e:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(listener);
        Ok(())
    }

    #[test]
    fn nothing_listening_is_a_connect_error() -> Result<(), Box<dyn std::error::Error>> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // The listener is gone: the port refuses.
        let e = exchange(addr, "h", &GET, limits(1024)).err();
        assert!(e.as_ref().is_some_and(HttpError::is_connect), "{e:?}");
        Ok(())
    }
}
