//! A small client of berthd's API over its unix socket, for the `berth`
//! CLI (and tests). One connection per request, HTTP/1.1.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::ErrorResponse;
use super::API_VERSION;

/// The default socket.
pub const DEFAULT_SOCKET: &str = "/run/berth/berthd.sock";

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--host` is not `unix://PATH`.
    #[error("invalid host {0:?}: expected unix:///path/to/berthd.sock")]
    BadHost(String),
    /// The socket cannot be reached.
    #[error("cannot connect to berthd at {}: {source} (is berthd running?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("the connection to berthd failed: {0}")]
    Http(#[from] hyper::Error),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// The status.
        status: StatusCode,
        /// The daemon's message.
        message: String,
        /// For a start that failed for its command: 126 or 127.
        exit_code: Option<i32>,
    },
    /// The answer is not what was expected.
    #[error("cannot decode berthd's answer to {what}: {message}")]
    Decode {
        /// The request.
        what: String,
        /// Why.
        message: String,
    },
}

/// A request body.
pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// An empty request body.
pub fn no_body() -> ReqBody {
    Empty::new().map_err(|n| match n {}).boxed()
}

/// A JSON request body.
pub fn json_body<T: Serialize>(v: &T) -> ReqBody {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    Full::new(Bytes::from(bytes))
        .map_err(|n| match n {})
        .boxed()
}

/// The client: a socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// From `unix:///path` (or a bare path).
    pub fn from_host(host: &str) -> Result<Client, ClientError> {
        let path = match host.strip_prefix("unix://") {
            Some(p) => p,
            None if host.starts_with('/') => host,
            None => return Err(ClientError::BadHost(host.to_owned())),
        };
        if path.is_empty() {
            return Err(ClientError::BadHost(host.to_owned()));
        }
        Ok(Client {
            socket: PathBuf::from(path),
        })
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request to `/v1.41{path}`; any status is returned as is.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/v{API_VERSION}{path}"))
            .body(body)
            .map_err(|e| ClientError::Decode {
                what: path.to_owned(),
                message: e.to_string(),
            })?;
        let h = req.headers_mut();
        h.insert(HOST, HeaderValue::from_static("berthd"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("User-Agent", HeaderValue::from_static("berth-cli"));
        if upgrade {
            h.insert(
                hyper::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            );
            h.insert(hyper::header::UPGRADE, HeaderValue::from_static("tcp"));
        }
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request; an error status becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let resp = self.send(method, path, body, false).await?;
        check(resp).await
    }

    /// A call whose answer is JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
    ) -> Result<T, ClientError> {
        let resp = self.call(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Turns an error status into [`ClientError::Api`] with the daemon's message.
pub async fn check(resp: Response<Incoming>) -> Result<Response<Incoming>, ClientError> {
    let status = resp.status();
    if status.is_success()
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return Ok(resp);
    }
    let exit_code = resp
        .headers()
        .get("Berth-Exit-Code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = resp.into_body().collect().await?.to_bytes();
    let message = serde_json::from_slice::<ErrorResponse>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
    Err(ClientError::Api {
        status,
        message,
        exit_code,
    })
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
