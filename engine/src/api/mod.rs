//! berthd's HTTP API: the Docker Engine API (v1.41) over a unix socket.
//!
//! [`serve`] accepts connections and runs each on the current tokio
//! runtime (berthd uses a current-thread runtime to stay small); every
//! call into the manager, which blocks, runs on tokio's blocking pool.
//! Paths are Docker's, with or without a `/v1.NN` prefix; every answer
//! carries `Api-Version`, and every error is `{"message": "..."}` with
//! the status [`ApiError::status`] decides.

pub mod client;
mod containers;
pub mod error;
mod exec;
mod images;
pub mod stream;
mod system;
pub mod time;
pub mod types;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

pub use error::ApiError;

use crate::manager::Manager;

/// The API version berth implements.
pub const API_VERSION: &str = "1.41";
/// The oldest version it accepts in a path prefix (as dockerd 20.10).
pub const MIN_API_VERSION: &str = "1.12";
/// Largest JSON request body accepted.
const MAX_JSON_BODY: usize = 4 << 20;

/// A response body: a whole buffer or a stream fed from a blocking task.
pub type Body = BoxBody<Bytes, io::Error>;
/// A route's result.
type Reply = Result<Response<Body>, ApiError>;

/// What the handlers share.
pub struct Api {
    manager: Arc<Manager>,
    execs: Mutex<HashMap<String, exec::ExecEntry>>,
    tmp_dir: PathBuf,
}

impl Api {
    /// The API over `manager`; uploads (image loads) are spooled in
    /// `tmp_dir`, which must be on a disk that can hold them.
    pub fn new(manager: Arc<Manager>, tmp_dir: PathBuf) -> Arc<Api> {
        Arc::new(Api {
            manager,
            execs: Mutex::new(HashMap::new()),
            tmp_dir,
        })
    }

    /// The manager behind the API.
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, api: Arc<Api>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("cannot accept a connection on the API socket: {e}");
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(api.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("API connection ended: {e}");
            }
        });
    }
}

/// Strips a `/v1.NN` prefix; `Err` for a version berth does not speak.
fn strip_version(path: &str) -> Result<&str, ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(path);
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (Some(v), Some(max), Some(min)) = (parse(ver), parse(API_VERSION), parse(MIN_API_VERSION))
    else {
        // Not a version prefix (e.g. `/version`).
        return Ok(path);
    };
    if v > max {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if v < min {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}"
        )));
    }
    Ok(tail)
}

/// Query parameters, percent-decoded. A key given twice keeps the last.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut map = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        Query(map)
    }

    /// The raw value.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Docker's booleans: `1`, `true`, `True` are true; absent is `default`.
    pub(crate) fn bool(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(v) => matches!(v, "1" | "true" | "True" | "TRUE" | "yes"),
        }
    }

    /// An integer, 400 when it does not parse.
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid value {v:?} for query parameter {key:?}: expected an integer"
                ))
            }),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(api: Arc<Api>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let full_path = req.uri().path().to_owned();
    let mut resp = match route(api, req).await {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                log::warn!("{method} {full_path}: {}", e.message());
            } else {
                log::debug!("{method} {full_path}: {}", e.message());
            }
            error_response(&e)
        }
    };
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert(
        "Server",
        HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    Ok(resp)
}

async fn route(api: Arc<Api>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let path = strip_version(&raw_path)?.to_owned();
    let q = Query::parse(req.uri().query());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => system::ping(&method),
        (&Method::GET, ["version"]) => system::version(),
        (&Method::GET, ["info"]) => system::info(&api).await,

        (&Method::GET, ["containers", "json"]) => containers::list(&api, &q).await,
        (&Method::POST, ["containers", "create"]) => containers::create(&api, &q, req).await,
        (&Method::GET, ["containers", id, "json"]) => containers::inspect(&api, id).await,
        (&Method::POST, ["containers", id, "start"]) => containers::start(&api, id).await,
        (&Method::POST, ["containers", id, "stop"]) => containers::stop(&api, id, &q).await,
        (&Method::POST, ["containers", id, "restart"]) => containers::restart(&api, id, &q).await,
        (&Method::POST, ["containers", id, "kill"]) => containers::kill(&api, id, &q).await,
        (&Method::POST, ["containers", id, "wait"]) => containers::wait(&api, id, &q).await,
        (&Method::DELETE, ["containers", id]) => containers::remove(&api, id, &q).await,
        (&Method::GET, ["containers", id, "logs"]) => containers::logs(&api, id, &q).await,
        (&Method::POST, ["containers", id, "attach"]) => {
            let id = id.to_string();
            containers::attach(&api, &id, &q, req).await
        }
        (&Method::POST, ["containers", id, "exec"]) => {
            let id = id.to_string();
            exec::create(&api, &id, req).await
        }
        (&Method::POST, ["exec", id, "start"]) => {
            let id = id.to_string();
            exec::start(&api, &id, req).await
        }
        (&Method::GET, ["exec", id, "json"]) => exec::inspect(&api, id),
        (&Method::POST, ["exec", _, "resize"]) | (&Method::POST, ["containers", _, "resize"]) => {
            Ok(empty(StatusCode::OK))
        }

        (&Method::GET, ["images", "json"]) => images::list(&api, &q).await,
        (&Method::POST, ["images", "load"]) => images::load(&api, &q, req).await,
        (&Method::POST, ["images", "create"]) => images::pull(&api, &q).await,
        (&Method::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            images::inspect(&api, &name.join("/")).await
        }
        (&Method::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            images::remove(&api, &name.join("/"), &q).await
        }
        _ => Err(ApiError::NotFound(format!(
            "page not found: berth does not implement {method} {raw_path}"
        ))),
    }
}

/// Runs a blocking manager call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("a worker task of berthd failed: {e}")))?
}

/// Reads a JSON request body (an empty body is `T::default()`).
pub(crate) async fn json_body<T>(req: Request<Incoming>) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default,
{
    let bytes = Limited::new(req.into_body(), MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON in the request body: {e}")))
}

/// A JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(format!("cannot encode the answer: {e}")))?;
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// An answer with no body.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = status;
    r
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = types::ErrorResponse {
        message: e.message(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"message\":\"error\"}".to_vec());
    let mut r = Response::new(full(bytes));
    *r.status_mut() = e.status();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(code) = e.exit_code() {
        r.headers_mut()
            .insert("Berth-Exit-Code", HeaderValue::from(code));
    }
    r
}

/// A body fed through a channel by a blocking task; ends when the sender
/// is dropped. A send fails once the client is gone, which tells the task
/// to stop.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub(crate) fn new() -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(16);
        (tx, ChannelBody { rx })
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The upgrade of a request whose client asked to hijack the connection
/// (`Upgrade: tcp`, as the docker CLI sends for attach and exec).
pub(crate) fn take_upgrade(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    let wants = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| !v.is_empty());
    wants.then(|| hyper::upgrade::on(req))
}

/// A stream answer: hijacked (101, then the raw connection) when the
/// client asked for an upgrade; else a 200 with a streamed body. The bytes
/// come from `rx`; on a hijacked connection what the client sends goes to
/// `stdin` when given.
pub(crate) fn stream_reply(
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    content_type: &'static str,
    rx: ChannelBody,
    stdin: Option<std::fs::File>,
) -> Response<Body> {
    let Some(on_upgrade) = upgrade else {
        let mut r = Response::new(rx.boxed());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        return r;
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                log::debug!("the client did not complete the upgrade: {e}");
                return;
            }
        };
        let io = TokioIo::new(upgraded);
        let (read_half, mut write_half) = tokio::io::split(io);
        if let Some(file) = stdin {
            tokio::spawn(pump_stdin(read_half, file));
        }
        let mut rx = rx.rx;
        while let Some(chunk) = rx.recv().await {
            if write_half.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write_half.shutdown().await;
    });
    let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(hyper::header::UPGRADE, HeaderValue::from_static("tcp"));
    r
}

/// Copies what the client sends on a hijacked connection to a process's
/// stdin pipe (written on a blocking thread); closes the pipe at EOF.
async fn pump_stdin(
    mut from: tokio::io::ReadHalf<TokioIo<hyper::upgrade::Upgraded>>,
    file: std::fs::File,
) {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = file;
        for chunk in rx {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Dropping the file closes the pipe: the process sees EOF.
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_stripped() {
        assert_eq!(
            strip_version("/v1.41/containers/json").unwrap(),
            "/containers/json"
        );
        assert_eq!(strip_version("/v1.24/_ping").unwrap(), "/_ping");
        assert_eq!(
            strip_version("/containers/json").unwrap(),
            "/containers/json"
        );
        assert_eq!(strip_version("/version").unwrap(), "/version");
        let e = strip_version("/v1.99/info").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("too new"));
    }

    #[test]
    fn queries_are_decoded() {
        let q = Query::parse(Some("fromImage=a%2Fb&tag=1.0&all=1&x=a+b&flag"));
        assert_eq!(q.get("fromImage"), Some("a/b"));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(q.bool("all", false));
        assert!(!q.bool("flag", true));
        assert!(q.bool("missing", true));
        assert_eq!(Query::parse(Some("t=5")).int("t").unwrap(), Some(5));
        assert!(Query::parse(Some("t=x")).int("t").is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
