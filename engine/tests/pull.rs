//! Pulling from registries: Debian's `docker-registry` (distribution 2.8)
//! on 127.0.0.1, fed with `skopeo copy` from the busybox fixtures, and tiny
//! in-test HTTP servers for what a real registry will not do on demand
//! (errors, garbage, token auth, a wrong blob). Runs as root (layers hold
//! device nodes and chowned files).

mod image_fixtures;
mod registry;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::image::pull::{PullEvent, PullOptions};
use engine::image::{Digest, ImageError, ImageStore, PullError, Reference};
use image_fixtures::{chain, fixtures};
use registry::Registry;

fn new_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn quick() -> PullOptions {
    PullOptions {
        retries: 2,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(20),
        ..PullOptions::default()
    }
}

/// Asserts the store holds no image, no blob and no layer.
fn assert_empty(store: &ImageStore) {
    assert!(store.list().is_empty(), "{:?}", store.list());
    let blobs = store.root().join("blobs/sha256");
    let left: Vec<_> = fs::read_dir(&blobs).unwrap().collect();
    assert!(left.is_empty(), "blobs left behind: {left:?}");
    let layers = store.root().join("layers");
    let left: Vec<_> = fs::read_dir(&layers).unwrap().collect();
    assert!(left.is_empty(), "layers left behind: {left:?}");
}

fn layout_src() -> String {
    format!("oci:{}:latest", fixtures().layout.display())
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

fn layer_events(events: &[PullEvent]) -> (usize, usize, usize) {
    let done = events
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerDone { .. }))
        .count();
    let present = events
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerPresent { .. }))
        .count();
    let progress = events
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerProgress { .. }))
        .count();
    (done, present, progress)
}

/// The busybox fixture's rootfs, as the layers of a pulled image show it.
fn assert_busybox(store: &ImageStore, name: &str) {
    let image = store.resolve(name).unwrap();
    assert_eq!(image.layers.len(), 2);
    let bottom = &image.layers[0];
    let bb = fs::read(bottom.join("bin/busybox")).unwrap();
    assert_eq!(bb, fs::read("/bin/busybox").unwrap());
    assert_eq!(
        fs::read_to_string(bottom.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(
        fs::read_to_string(image.layers[1].join("opaque/c")).unwrap(),
        "c\n"
    );
}

#[test]
fn pull_by_tag_then_again_reuses_everything() {
    let reg = Registry::start();
    let pushed = reg.push(&layout_src(), "team/app:v1", &[]);
    let (_d, store) = new_store();
    let r = reference(&format!("{}/team/app:v1", reg.domain));

    let mut events = Vec::new();
    let img = store.pull_with(&r, &quick(), &mut events).unwrap();
    assert_eq!(img.manifest_digest, pushed);
    assert_eq!(img.tags, vec![r.clone()]);
    assert_eq!((img.layers_unpacked, img.layers_reused), (2, 0));
    assert_eq!(layer_events(&events).0, 2, "{events:?}");
    assert!(matches!(events.first(), Some(PullEvent::Resolving { .. })));
    assert!(matches!(events.last(), Some(PullEvent::Done { manifest, .. }) if *manifest == pushed));
    assert_busybox(&store, &r.to_string());
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tags, vec![r.clone()]);

    // Again: nothing is fetched but the manifest.
    let mut again = Vec::new();
    let img2 = store.pull_with(&r, &quick(), &mut again).unwrap();
    assert_eq!(img2.id, img.id);
    assert_eq!((img2.layers_unpacked, img2.layers_reused), (0, 2));
    assert_eq!(layer_events(&again), (0, 2, 0), "{again:?}");
    assert_eq!(store.list().len(), 1);
}

#[test]
fn pull_by_digest_and_docker_media_types() {
    let reg = Registry::start();
    // Docker's schema 2 media types (skopeo converts).
    let pushed = reg.push(&layout_src(), "team/docker:v1", &["--format", "v2s2"]);
    let (_d, store) = new_store();
    let by_digest = reference(&format!("{}/team/docker@{pushed}", reg.domain));
    let img = store
        .pull_with(&by_digest, &quick(), &mut Vec::new())
        .unwrap();
    assert_eq!(img.manifest_digest, pushed);
    assert!(img.tags.is_empty(), "{:?}", img.tags);
    assert_busybox(&store, &pushed.to_string());
    assert_busybox(&store, &by_digest.to_string());

    // The same image by tag: same record, now tagged.
    let by_tag = reference(&format!("{}/team/docker:v1", reg.domain));
    let img2 = store.pull_with(&by_tag, &quick(), &mut Vec::new()).unwrap();
    assert_eq!(img2.manifest_digest, pushed);
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.list()[0].tags, vec![by_tag]);
}

#[test]
fn zstd_layers() {
    let reg = Registry::start();
    let src = format!("oci:{}:latest", fixtures().zstd_layout.display());
    let pushed = reg.push(&src, "team/zstd:v1", &[]);
    let (_d, store) = new_store();
    let r = reference(&format!("{}/team/zstd:v1", reg.domain));
    let img = store.pull_with(&r, &quick(), &mut Vec::new()).unwrap();
    assert_eq!(img.manifest_digest, pushed);
    let blob = store.resolve(&r.to_string()).unwrap().manifest;
    assert!(
        blob.layers()
            .iter()
            .all(|l| l.media_type().to_string().ends_with("+zstd")),
        "{blob:?}"
    );
    assert_busybox(&store, &r.to_string());
}

fn put(url: &str, content_type: &str, body: &[u8]) {
    let resp = ureq::put(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert!(resp.status().is_success(), "PUT {url}: {}", resp.status());
}

fn get(url: &str, accept: &str) -> Vec<u8> {
    ureq::get(url)
        .header("Accept", accept)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_body()
        .read_to_vec()
        .unwrap()
}

#[test]
fn multi_arch_index_resolves_to_amd64() {
    let reg = Registry::start();
    let amd64 = reg.push(&layout_src(), "team/multi:amd64", &[]);
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let amd64_bytes = get(
        &reg.url(&format!("/v2/team/multi/manifests/{amd64}")),
        OCI_MANIFEST,
    );
    assert_eq!(Digest::of(&amd64_bytes), amd64);
    // A fake arm64 image: the same blobs, a different manifest.
    let mut arm: serde_json::Value = serde_json::from_slice(&amd64_bytes).unwrap();
    arm["annotations"] = serde_json::json!({"test": "arm64"});
    let arm_bytes = serde_json::to_vec(&arm).unwrap();
    let arm64 = Digest::of(&arm_bytes);
    put(
        &reg.url(&format!("/v2/team/multi/manifests/{arm64}")),
        OCI_MANIFEST,
        &arm_bytes,
    );
    let desc = |d: &Digest, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": size,
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc(&arm64, arm_bytes.len(), "arm64"), desc(&amd64, amd64_bytes.len(), "amd64")],
    }))
    .unwrap();
    put(
        &reg.url("/v2/team/multi/manifests/latest"),
        "application/vnd.oci.image.index.v1+json",
        &index,
    );

    let (_d, store) = new_store();
    let r = reference(&format!("{}/team/multi", reg.domain));
    let img = store.pull_with(&r, &quick(), &mut Vec::new()).unwrap();
    assert_eq!(img.manifest_digest, amd64);
    assert_eq!(
        img.tags,
        vec![reference(&format!("{}/team/multi:latest", reg.domain))]
    );
    assert_busybox(&store, &format!("{}/team/multi", reg.domain));

    // The index by digest resolves the same way.
    let (_d2, store2) = new_store();
    let by_index = reference(&format!("{}/team/multi@{}", reg.domain, Digest::of(&index)));
    let img = store2
        .pull_with(&by_index, &quick(), &mut Vec::new())
        .unwrap();
    assert_eq!(img.manifest_digest, amd64);
}

#[test]
fn unknown_tag_is_a_clear_404() {
    let reg = Registry::start();
    reg.push(&layout_src(), "team/app:v1", &[]);
    let (_d, store) = new_store();
    let r = reference(&format!("{}/team/app:v2", reg.domain));
    let err = store.pull_with(&r, &quick(), &mut Vec::new()).unwrap_err();
    assert_eq!(
        chain(&err),
        format!(
            "registry {} answered 404 for manifest team/app:v2: manifest unknown",
            reg.domain
        )
    );
    let r = reference(&format!("{}/team/nothing:v1", reg.domain));
    let err = store.pull_with(&r, &quick(), &mut Vec::new()).unwrap_err();
    assert!(
        chain(&err).starts_with(&format!(
            "registry {} answered 404 for manifest team/nothing:v1",
            reg.domain
        )),
        "{}",
        chain(&err)
    );
    assert_empty(&store);
}

// ---------------------------------------------------------------------------
// A scripted registry.

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct Req {
    path: String,
    query: String,
    headers: HashMap<String, String>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce the full length but send only this many bytes.
    cut_at: Option<usize>,
}

impl Resp {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_at: None,
        }
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

struct Fake {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    fn start(handler: impl Fn(&Req, SocketAddr) -> Resp + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(move |r: &Req| handler(r, addr));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let log = l2.clone();
                std::thread::spawn(move || serve(conn, &*handler, &log));
            }
        });
        Fake { addr, log }
    }

    fn domain(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self, path_prefix: &str) -> Vec<Req> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Req>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let req = Req {
        path,
        query,
        headers,
    };
    log.lock().unwrap().push(req.clone());
    let resp = handler(&req);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut conn = conn;
    let body = &resp.body[..resp.cut_at.unwrap_or(resp.body.len())];
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

/// The fixture's `latest` image, served as repository team/app.
struct Served {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    blobs: HashMap<String, Vec<u8>>,
    /// Layer digests, bottom first.
    layers: Vec<Digest>,
}

fn served() -> Arc<Served> {
    let layout = &fixtures().layout;
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .unwrap();
    let digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
    let blob = |d: &str| {
        fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest = blob(&digest.to_string());
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut blobs = HashMap::new();
    let config = m["config"]["digest"].as_str().unwrap().to_owned();
    blobs.insert(config.clone(), blob(&config));
    let mut layers = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap().to_owned();
        blobs.insert(d.clone(), blob(&d));
        layers.push(d.parse().unwrap());
    }
    Arc::new(Served {
        manifest,
        manifest_digest: digest,
        blobs,
        layers,
    })
}

/// What a well-behaved registry answers for team/app:latest.
fn answer(s: &Served, req: &Req) -> Resp {
    if req.path == "/v2/team/app/manifests/latest"
        || req.path == format!("/v2/team/app/manifests/{}", s.manifest_digest)
    {
        return Resp::new(200, s.manifest.clone())
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .header("Docker-Content-Digest", &s.manifest_digest.to_string());
    }
    if let Some(d) = req.path.strip_prefix("/v2/team/app/blobs/") {
        if let Some(b) = s.blobs.get(d) {
            return Resp::new(200, b.clone()).header("Content-Type", "application/octet-stream");
        }
    }
    Resp::new(
        404,
        r#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#,
    )
}

fn fake_ref(fake: &Fake) -> Reference {
    reference(&format!("{}/team/app:latest", fake.domain()))
}

#[test]
fn the_fake_registry_serves_a_good_image() {
    let s = served();
    let fake = Fake::start(move |r, _| answer(&s, r));
    let (_d, store) = new_store();
    let img = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap();
    assert_eq!(img.layers_unpacked, 2);
    assert_busybox(&store, &fake_ref(&fake).to_string());
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let fake = Fake::start(|_, _| Resp::new(500, "<html>internal\nerror</html>"));
    let (_d, store) = new_store();
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        chain(&err),
        format!(
            "registry {} answered 500 for manifest team/app:latest: <html>internal error</html>",
            fake.domain()
        )
    );
    assert_eq!(fake.requests("/v2/").len(), 3, "1 try + 2 retries");
    assert_empty(&store);
}

#[test]
fn a_transient_failure_is_retried_and_the_pull_succeeds() {
    let s = served();
    let first_layer = format!("/v2/team/app/blobs/{}", s.layers[0]);
    let count = Arc::new(Mutex::new(0));
    let fake = Fake::start(move |r, _| {
        if r.path == "/v2/team/app/manifests/latest" {
            let mut c = count.lock().unwrap();
            *c += 1;
            if *c == 1 {
                return Resp::new(503, "busy");
            }
        }
        let mut resp = answer(&s, r);
        // The first download of the first layer breaks off half-way.
        if r.path == first_layer && *count.lock().unwrap() == 2 {
            *count.lock().unwrap() += 1;
            resp.cut_at = Some(resp.body.len() / 2);
        }
        resp
    });
    let (_d, store) = new_store();
    let mut events = Vec::new();
    store
        .pull_with(&fake_ref(&fake), &quick(), &mut events)
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullEvent::LayerRetry { index: 0, .. })),
        "{events:?}"
    );
    assert_busybox(&store, &fake_ref(&fake).to_string());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    type Case = (&'static str, &'static str, &'static str);
    let cases: [Case; 4] = [
        (
            "application/vnd.oci.image.manifest.v1+json",
            "{not json",
            "it is not JSON",
        ),
        ("text/html", "<html>login</html>", "it is not JSON"),
        (
            "application/json",
            r#"{"hello":"world"}"#,
            "neither an image manifest nor an index",
        ),
        (
            "application/vnd.oci.image.manifest.v1+json",
            r#"{"schemaVersion":2,"config":{"digest":"sha256:zz"}}"#,
            "sent an invalid manifest",
        ),
    ];
    for (ct, body, expect) in cases {
        let fake = Fake::start(move |_, _| Resp::new(200, body).header("Content-Type", ct));
        let (_d, store) = new_store();
        let err = store
            .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
            .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains(expect) && text.contains(&fake.domain()),
            "{ct}: {text}"
        );
        assert_empty(&store);
    }

    // A truncated blob, every time: retried, then a clear error.
    let s = served();
    let fake = Fake::start(move |r, _| {
        let mut resp = answer(&s, r);
        if r.path.contains("/blobs/") {
            resp.cut_at = Some(resp.body.len() / 2);
        }
        resp
    });
    let (_d, store) = new_store();
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    let text = chain(&err);
    assert!(
        text.starts_with(&format!(
            "cannot read the config of image {}",
            fake_ref(&fake).familiar()
        )),
        "{text}"
    );
    assert_empty(&store);
}

#[test]
fn a_wrong_blob_is_refused_and_nothing_is_recorded() {
    let s = served();
    let second = s.layers[1];
    let fake = Fake::start(move |r, _| {
        let mut resp = answer(&s, r);
        if r.path.ends_with(&second.to_string()) {
            let last = resp.body.len() - 1;
            resp.body[last] ^= 0xff;
        }
        resp
    });
    let (_d, store) = new_store();
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Pull(PullError::Blob(_))),
        "{err:?}"
    );
    let text = chain(&err);
    assert!(
        text.starts_with("digest mismatch for layer 2 of image")
            && text.contains(&format!("expected {second}"))
            && text.contains(&fake.domain()),
        "{text}"
    );
    assert_empty(&store);

    // A manifest that is not what Docker-Content-Digest says.
    let s = served();
    let fake = Fake::start(move |r, _| {
        let mut resp = answer(&s, r);
        for (k, v) in &mut resp.headers {
            if k == "Docker-Content-Digest" {
                *v = Digest::of(b"other").to_string();
            }
        }
        resp
    });
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    assert!(
        chain(&err).starts_with("digest mismatch for manifest team/app:latest"),
        "{}",
        chain(&err)
    );
    assert_empty(&store);
}

/// A registry that wants `Bearer tok-123` from the realm it serves (the
/// realm wants basic credentials when `user` is set), and redirects blob
/// downloads to a storage path that refuses requests carrying credentials.
fn token_registry(user: Option<&'static str>) -> Fake {
    let s = served();
    Fake::start(move |r, addr| {
        if r.path == "/token" {
            if let Some(u) = user {
                let want = match u {
                    "user" => "Basic dXNlcjpwYXNz", // user:pass
                    _ => "?",
                };
                if r.headers.get("authorization").map(String::as_str) != Some(want) {
                    return Resp::new(401, r#"{"details":"bad credentials"}"#);
                }
            }
            return Resp::new(200, r#"{"token":"tok-123","expires_in":300}"#)
                .header("Content-Type", "application/json");
        }
        // Blob storage elsewhere, as Docker Hub's: it must not see the token.
        if let Some(d) = r.path.strip_prefix("/storage/") {
            if r.headers.contains_key("authorization") {
                return Resp::new(400, "the registry's token leaked to the storage");
            }
            return answer(
                &s,
                &Req {
                    path: format!("/v2/team/app/blobs/{d}"),
                    ..r.clone()
                },
            );
        }
        if r.headers.get("authorization").map(String::as_str) != Some("Bearer tok-123") {
            return Resp::new(
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
            .header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:team/app:pull""#
                ),
            );
        }
        if let Some(d) = r.path.strip_prefix("/v2/team/app/blobs/") {
            return Resp::new(307, "").header("Location", &format!("http://{addr}/storage/{d}"));
        }
        answer(&s, r)
    })
}

#[test]
fn bearer_token_auth() {
    let fake = token_registry(None);
    let (_d, store) = new_store();
    store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap();
    let tokens = fake.requests("/token");
    assert_eq!(tokens.len(), 1, "one token serves the whole pull");
    assert_eq!(fake.requests("/storage/").len(), 3, "config and 2 layers");
    assert_eq!(
        tokens[0].query,
        "service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull"
    );
    assert_busybox(&store, &fake_ref(&fake).to_string());

    // A realm that wants credentials.
    let fake = token_registry(Some("user"));
    let (_d, store) = new_store();
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    assert!(
        chain(&err).starts_with(&format!(
            "registry {} answered 401 for a token from http://{}/token",
            fake.domain(),
            fake.domain()
        )),
        "{}",
        chain(&err)
    );
    assert_empty(&store);
    let mut opts = quick();
    opts.credentials = Some(engine::image::pull::Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    store
        .pull_with(&fake_ref(&fake), &opts, &mut Vec::new())
        .unwrap();
}

#[test]
fn basic_auth() {
    let s = served();
    let fake = Fake::start(move |r, _| {
        if r.headers.get("authorization").map(String::as_str) != Some("Basic dXNlcjpwYXNz") {
            return Resp::new(401, "").header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        answer(&s, r)
    });
    let (_d, store) = new_store();
    let err = store
        .pull_with(&fake_ref(&fake), &quick(), &mut Vec::new())
        .unwrap_err();
    assert!(
        chain(&err).contains("asks for a user name and password"),
        "{}",
        chain(&err)
    );
    let mut opts = quick();
    opts.credentials = Some(engine::image::pull::Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    store
        .pull_with(&fake_ref(&fake), &opts, &mut Vec::new())
        .unwrap();
}

#[test]
fn https_with_a_private_ca() {
    // 127.0.0.2 is loopback too, but not a name berth reaches over HTTP.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    fs::write(p("ext"), "subjectAltName=IP:127.0.0.2\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=berth test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.2"][..],
            &ec,
            &["-keyout", "key.pem", "-out", "req.csr"],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
    ]);
    let reg = Registry::start_on("127.0.0.2", Some((&cert, &key)));
    reg.push(&layout_src(), "team/tls:v1", &[]);
    let r = reference(&format!("{}/team/tls:v1", reg.domain));

    let (_d, store) = new_store();
    let err = store.pull_with(&r, &quick(), &mut Vec::new()).unwrap_err();
    assert!(
        chain(&err).starts_with(&format!(
            "cannot fetch manifest team/tls:v1 from registry {}",
            reg.domain
        )),
        "{}",
        chain(&err)
    );
    let mut opts = quick();
    opts.ca_file = Some(ca.clone());
    store.pull_with(&r, &opts, &mut Vec::new()).unwrap();
    assert_busybox(&store, &r.to_string());
}
