//! `/_ping`, `/version`, `/info`.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use serde_json::json;

use super::types::{Component, Platform, VersionResponse};
use super::{full, json, Api, Reply, API_VERSION, MIN_API_VERSION};
use crate::manager::Status;

/// `GET|HEAD /_ping`: `OK`, and the headers the client negotiates with.
pub(super) fn ping(method: &Method) -> Reply {
    let body = if method == Method::HEAD { "" } else { "OK" };
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert("Swarm", HeaderValue::from_static("inactive"));
    Ok(r)
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GET /version`.
pub(super) fn version() -> Reply {
    let v = env!("CARGO_PKG_VERSION").to_owned();
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let kernel = kernel_release();
    // The docker CLI prints a component's Details rather than the
    // top-level fields when Components is present.
    let details = [
        ("ApiVersion", API_VERSION),
        ("MinAPIVersion", MIN_API_VERSION),
        ("GitCommit", "berth"),
        ("GoVersion", "rust"),
        ("Os", "linux"),
        ("Arch", arch.as_str()),
        ("KernelVersion", kernel.as_str()),
        ("BuildTime", ""),
        ("Experimental", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    json(
        StatusCode::OK,
        &VersionResponse {
            platform: Platform {
                name: "berth".into(),
            },
            components: vec![Component {
                name: "Engine".into(),
                version: v.clone(),
                details,
            }],
            version: v,
            api_version: API_VERSION.into(),
            min_api_version: MIN_API_VERSION.into(),
            git_commit: "berth".into(),
            go_version: "rust".into(),
            os: "linux".into(),
            arch,
            kernel_version: kernel,
            build_time: String::new(),
        },
    )
}

/// `GET /info`: counts, and enough of dockerd's fields for `docker info`.
pub(super) async fn info(api: &Api) -> Reply {
    let m = api.manager().clone();
    let (containers, images) =
        super::blocking(move || Ok((m.list(true), m.images().list().len()))).await?;
    let count = |s: Status| containers.iter().filter(|c| c.state.status == s).count();
    let running = count(Status::Running);
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024);
    let root = m_root(api);
    let merged = merge(
        json!({
            "ID": "berth",
            "Containers": containers.len(),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": containers.len() - running,
            "Images": images,
            "Driver": "overlay2",
            "DriverStatus": [],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Log": ["json-file"]},
            "MemoryLimit": true,
            "SwapLimit": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "PidsLimit": true,
            "IPv4Forwarding": true,
            "Debug": false,
            "NFd": 0,
            "NGoroutines": 0,
            "SystemTime": super::time::rfc3339(Some(std::time::SystemTime::now())),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": "2",
        }),
        json!({
            "KernelVersion": kernel_release(),
            "OperatingSystem": "berth",
            "OSVersion": env!("CARGO_PKG_VERSION"),
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "NCPU": ncpu,
            "MemTotal": mem,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": [], "Mirrors": []},
            "DockerRootDir": root,
            "Name": hostname,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": {"berth": {"path": "berthd"}},
            "DefaultRuntime": "berth",
            "Swarm": {"LocalNodeState": "inactive", "ControlAvailable": false, "NodeID": "", "NodeAddr": "", "RemoteManagers": null},
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": "",
            "SecurityOptions": [],
            "Warnings": [],
        }),
    );
    json(StatusCode::OK, &merged)
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn m_root(api: &Api) -> String {
    api.manager()
        .images()
        .root()
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
