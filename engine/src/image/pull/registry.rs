//! A blocking client for the OCI distribution API (`/v2/...`) of one
//! repository: host and scheme selection, bearer-token and basic auth,
//! bounded retries of transient failures, and registry error bodies turned
//! into sentences.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use ureq::http::{HeaderMap, Response, StatusCode};
use ureq::Body;

use super::{PullError, PullOptions};
use crate::image::reference::Reference;

/// Where Docker Hub's registry API really is.
const DOCKER_HUB_DOMAIN: &str = "docker.io";
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// Manifests, indexes and tokens are small; refuse to buffer more.
const SMALL_MAX: u64 = 16 * 1024 * 1024;
/// How much of a non-JSON error body goes into a message.
const SNIPPET_MAX: usize = 120;

/// The media types a pull accepts for `GET /v2/<name>/manifests/<ref>`.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// How requests are authorised once the registry has said what it wants.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Bearer(String),
    Basic(String),
}

/// A response whose status was a success.
pub(crate) struct Ok200 {
    pub headers: HeaderMap,
    pub body: Body,
}

/// One repository on one registry.
#[derive(Clone)]
pub(crate) struct Registry {
    agent: ureq::Agent,
    /// `host[:port]` as the user wrote it (docker.io, 127.0.0.1:5000).
    pub domain: String,
    /// `scheme://host[:port]` really contacted.
    base: String,
    /// The repository path (library/busybox).
    pub path: String,
    credentials: Option<Credentials>,
    auth: Auth,
    retries: u32,
    backoff: Duration,
}

impl Registry {
    /// A client for the repository `reference` names.
    pub fn new(reference: &Reference, options: &PullOptions) -> Result<Self, PullError> {
        let domain = reference.domain().to_owned();
        let host = if domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_HOST.to_owned()
        } else {
            domain.clone()
        };
        let scheme = if options.is_insecure(&domain) {
            "http"
        } else {
            "https"
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| PullError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(PullError::Ca {
                            path: path.clone(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
            if certs.is_empty() {
                return Err(PullError::Ca {
                    path: path.clone(),
                    reason: "it holds no PEM certificate".into(),
                });
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(options.timeout))
            .timeout_recv_response(Some(options.timeout))
            .timeout_per_read(Some(options.timeout))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            agent,
            domain,
            base: format!("{scheme}://{host}"),
            path: reference.path().to_owned(),
            credentials: options.credentials.clone(),
            auth: Auth::None,
            retries: options.retries,
            backoff: options.backoff,
        })
    }

    /// `GET /v2/<name>/manifests/<reference>`.
    pub fn manifest(&mut self, reference: &str, what: &str) -> Result<Ok200, PullError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.path);
        self.get(&url, Some(MANIFEST_ACCEPT), what)
    }

    /// `GET /v2/<name>/blobs/<digest>` (redirects followed, without the
    /// registry's credentials).
    pub fn blob(&mut self, digest: &str, what: &str) -> Result<Ok200, PullError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.path);
        self.get(&url, None, what)
    }

    /// Sleeps before retry number `attempt` (1-based): doubling backoff.
    pub fn pause(&self, attempt: u32) {
        std::thread::sleep(self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1)));
    }

    /// How many times a transient failure is retried.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// A GET with authentication and retries of transient failures.
    fn get(&mut self, url: &str, accept: Option<&str>, what: &str) -> Result<Ok200, PullError> {
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let result = self.send(url, accept, what);
            let retry = match result {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let (parts, body) = resp.into_parts();
                        return Ok(Ok200 {
                            headers: parts.headers,
                            body,
                        });
                    }
                    if status == StatusCode::UNAUTHORIZED && !authenticated {
                        authenticated = true;
                        self.authenticate(resp.headers(), what)?;
                        continue;
                    }
                    let err = self.status_error(resp, what);
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(err);
                    }
                    err
                }
                Err(e) if transient(&e) => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            if attempt > self.retries {
                return Err(retry);
            }
            log::debug!(target: "engine::image::pull", "{retry}; retrying ({attempt}/{})", self.retries);
            self.pause(attempt);
        }
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>, PullError> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.header("Authorization", format!("Bearer {t}")),
            Auth::Basic(b) => req = req.header("Authorization", format!("Basic {b}")),
        }
        req.call().map_err(|source| PullError::Transport {
            registry: self.domain.clone(),
            what: what.to_owned(),
            source: Box::new(source),
        })
    }

    /// Answers a 401's `WWW-Authenticate` challenge.
    fn authenticate(&mut self, headers: &HeaderMap, what: &str) -> Result<(), PullError> {
        let auth_err = |reason: String| PullError::Auth {
            registry: self.domain.clone(),
            reason,
        };
        let Some(challenge) = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
        else {
            return Err(auth_err(format!(
                "it answered 401 for {what} without a WWW-Authenticate challenge"
            )));
        };
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| auth_err(format!("cannot parse its challenge \"{challenge}\"")))?;
        if scheme.eq_ignore_ascii_case("basic") {
            let c = self.credentials.as_ref().ok_or_else(|| {
                auth_err(
                    "it asks for a user name and password (set BERTH_REGISTRY_USER and \
                     BERTH_REGISTRY_PASSWORD)"
                        .into(),
                )
            })?;
            self.auth = Auth::Basic(base64(format!("{}:{}", c.username, c.password).as_bytes()));
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_err(format!(
                "it asks for {scheme} authentication, which berth does not support"
            )));
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let realm = param("realm")
            .ok_or_else(|| auth_err(format!("its challenge \"{challenge}\" has no realm")))?;
        let default_scope = format!("repository:{}:pull", self.path);
        let mut query = Vec::new();
        if let Some(s) = param("service") {
            query.push(format!("service={}", percent_encode(s)));
        }
        query.push(format!(
            "scope={}",
            percent_encode(param("scope").unwrap_or(&default_scope))
        ));
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{}", query.join("&"));
        let token_what = format!("a token from {realm}");
        let mut attempt = 0;
        let resp = loop {
            let mut req = self.agent.get(&url);
            if let Some(c) = &self.credentials {
                let basic = base64(format!("{}:{}", c.username, c.password).as_bytes());
                req = req.header("Authorization", format!("Basic {basic}"));
            }
            let err = match req.call() {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if !r.status().is_server_error() => {
                    return Err(self.status_error(r, &token_what))
                }
                Ok(r) => self.status_error(r, &token_what),
                Err(source) => PullError::Transport {
                    registry: self.domain.clone(),
                    what: token_what.clone(),
                    source: Box::new(source),
                },
            };
            attempt += 1;
            if attempt > self.retries {
                return Err(err);
            }
            self.pause(attempt);
        };
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let bytes = read_small(resp.into_body(), &self.domain, &token_what)?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|e| PullError::BadResponse {
            registry: self.domain.clone(),
            what: token_what.clone(),
            reason: format!("it is not a token document ({e})"),
        })?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PullError::BadResponse {
                registry: self.domain.clone(),
                what: token_what,
                reason: "it holds no token".into(),
            })?;
        self.auth = Auth::Bearer(token);
        Ok(())
    }

    /// The error for a non-success response, with the registry's own
    /// message when its body is a distribution error document.
    fn status_error(&self, resp: Response<Body>, what: &str) -> PullError {
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(64 * 1024)
            .read_to_end(&mut bytes);
        PullError::Status {
            registry: self.domain.clone(),
            what: what.to_owned(),
            status,
            message: error_message(&bytes),
        }
    }
}

/// Reads a small response body whole (manifests, configs, tokens).
pub(crate) fn read_small(body: Body, registry: &str, what: &str) -> Result<Vec<u8>, PullError> {
    let mut bytes = Vec::new();
    body.into_reader()
        .take(SMALL_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PullError::Read {
            registry: registry.to_owned(),
            what: what.to_owned(),
            source: e,
        })?;
    if bytes.len() as u64 > SMALL_MAX {
        return Err(PullError::BadResponse {
            registry: registry.to_owned(),
            what: what.to_owned(),
            reason: format!("it is larger than {SMALL_MAX} bytes"),
        });
    }
    Ok(bytes)
}

/// True for failures worth another attempt.
pub(crate) fn transient(e: &PullError) -> bool {
    match e {
        PullError::Transport { source, .. } => match source.as_ref() {
            // A certificate or TLS failure will not change on retry.
            ureq::Error::Io(io) => io.kind() != io::ErrorKind::InvalidData,
            ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::BodyStalled => {
                true
            }
            _ => false,
        },
        PullError::Read { .. } => true,
        PullError::Status { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// The `message`s of a distribution error body (`{"errors":[...]}`), or a
/// short printable snippet of any other body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Doc {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(doc) = serde_json::from_slice::<Doc>(body) {
        let msgs: Vec<String> = doc
            .errors
            .into_iter()
            .map(|e| {
                if e.message.is_empty() {
                    e.code.to_ascii_lowercase().replace('_', " ")
                } else {
                    e.message
                }
            })
            .filter(|m| !m.is_empty())
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut snippet: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(SNIPPET_MAX)
        .collect();
    if text.chars().count() > SNIPPET_MAX {
        snippet.push_str("...");
    }
    snippet
}

/// Parses `Bearer realm="...",service="...",scope="..."`.
pub(crate) fn parse_challenge(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let text = text.trim();
    let (scheme, mut rest) = match text.split_once(' ') {
        Some((s, r)) => (s, r.trim_start()),
        None => (text, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((name.to_owned(), value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_owned(), params))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Reads a header as text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An io::Error for a body that ended early or ran long.
pub(crate) fn size_error(got: u64, expected: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        if got < expected {
            format!("the body ended after {got} of {expected} bytes")
        } else {
            format!("the body is longer than the {expected} bytes announced")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="x\"y", charset=UTF-8"#).unwrap();
        assert_eq!(s, "Basic");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "x\"y".into()),
                ("charset".into(), "UTF-8".into())
            ]
        );
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn encodings() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            percent_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#),
            "manifest unknown"
        );
        assert_eq!(
            error_message(b"<html>\n  oops </html>"),
            "<html> oops </html>"
        );
        assert_eq!(error_message(b""), "");
    }
}
