//! `/containers/...`: create, start, stop, restart, kill, wait, remove,
//! list, inspect, logs, attach.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::stream::{frame, StreamKind};
use super::types::*;
use super::{
    blocking, empty, json, json_body, stream_reply, Api, ApiError, ChannelBody, Query, Reply,
};
use crate::manager::{
    ContainerInfo, CreateSpec, HealthStatus, LogOptions, Status, Stream, WaitCondition,
};
use crate::units::HumanDuration;
use crate::workload::{
    Healthcheck, NetworkMode, PortMapping, RestartPolicy as Policy, Signal, TmpfsMount,
    VolumeMount, VolumeSource,
};

/// Content type of a multiplexed stream (no TTY).
const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Docker's create body to berth's spec; every value checked, a bad one
/// is a 400 naming it.
pub(crate) fn spec_from_request(
    name: Option<&str>,
    r: CreateRequest,
) -> Result<CreateSpec, ApiError> {
    let image = r
        .image
        .filter(|i| !i.is_empty())
        .ok_or_else(|| bad("the container config has no Image"))?;
    let hc = r.host_config.unwrap_or_default();
    let network = match hc.network_mode.as_deref().unwrap_or("") {
        "" | "default" | "bridge" => NetworkMode::Bridge,
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        other => {
            return Err(bad(format!(
                "network mode {other:?} is not supported: use bridge, host or none"
            )))
        }
    };
    let restart = match hc.restart_policy {
        None => Policy::No,
        Some(p) => match p.name.as_deref().unwrap_or("") {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure {
                max_retries: match p.maximum_retry_count.unwrap_or(0) {
                    n if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                    _ => None,
                },
            },
            other => return Err(bad(format!("invalid restart policy {other:?}: expected no, on-failure, always or unless-stopped"))),
        },
    };
    let mut ports = Vec::new();
    for (key, bindings) in hc.port_bindings.unwrap_or_default() {
        let (port, proto) = key.split_once('/').unwrap_or((&key, "tcp"));
        for b in bindings.unwrap_or_default() {
            let host_port = b.host_port.unwrap_or_default();
            if host_port.is_empty() {
                return Err(bad(format!(
                    "port {key} has no host port: berth does not pick one, publish it as HOST:{port}"
                )));
            }
            let text = match b.host_ip.as_deref().filter(|i| !i.is_empty()) {
                Some(ip) if ip.contains(':') => format!("[{ip}]:{host_port}:{port}/{proto}"),
                Some(ip) => format!("{ip}:{host_port}:{port}/{proto}"),
                None => format!("{host_port}:{port}/{proto}"),
            };
            ports.push(PortMapping::from_str(&text).map_err(bad)?);
        }
    }
    let volumes = hc
        .binds
        .unwrap_or_default()
        .iter()
        .map(|b| VolumeMount::from_str(b).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let tmpfs = hc
        .tmpfs
        .unwrap_or_default()
        .iter()
        .map(|(path, opts)| {
            let text = if opts.is_empty() {
                path.clone()
            } else {
                format!("{path}:{opts}")
            };
            TmpfsMount::from_str(&text).map_err(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let positive = |v: Option<i64>| v.filter(|n| *n > 0);
    let stop_signal = match r.stop_signal.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(Signal::from_str(s).map_err(bad)?.0),
        None => None,
    };
    let healthcheck = match r.healthcheck {
        None => None,
        Some(h) => health_from_request(h)?,
    };
    Ok(CreateSpec {
        name: name.map(|n| n.trim_start_matches('/').to_owned()),
        image,
        cmd: r.cmd.filter(|c| !c.is_empty()),
        entrypoint: r.entrypoint.filter(|e| !e.is_empty()),
        env: r.env.unwrap_or_default(),
        working_dir: r.working_dir.filter(|w| !w.is_empty()),
        user: r.user.filter(|u| !u.is_empty()),
        hostname: r.hostname.filter(|h| !h.is_empty()),
        ports,
        volumes,
        tmpfs,
        network,
        restart,
        memory: positive(hc.memory).map(|m| m as u64),
        cpus: positive(hc.nano_cpus).map(|n| n as f64 / 1e9),
        pids: positive(hc.pids_limit).map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        read_only: hc.readonly_rootfs.unwrap_or(false),
        labels: r.labels.unwrap_or_default(),
        stop_signal,
        stop_timeout: r
            .stop_timeout
            .filter(|t| *t >= 0)
            .map(|t| Duration::from_secs(t as u64)),
        healthcheck,
        tty: r.tty.unwrap_or(false),
        open_stdin: r.open_stdin.unwrap_or(false),
        auto_remove: hc.auto_remove.unwrap_or(false),
    })
}

fn health_from_request(h: HealthConfig) -> Result<Option<Healthcheck>, ApiError> {
    let test = h.test.unwrap_or_default();
    let command = match test.split_first() {
        None => return Ok(None),
        Some((kind, rest)) => match kind.as_str() {
            "NONE" => return Ok(None),
            "CMD" if !rest.is_empty() => rest.to_vec(),
            "CMD-SHELL" if rest.len() == 1 => {
                vec!["/bin/sh".into(), "-c".into(), rest[0].clone()]
            }
            _ => {
                return Err(bad(
                    "invalid Healthcheck.Test: expected [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                ))
            }
        },
    };
    let dur = |ns: Option<i64>, default: u64| {
        HumanDuration(match ns.filter(|n| *n > 0) {
            Some(n) => Duration::from_nanos(n as u64),
            None => Duration::from_secs(default),
        })
    };
    Ok(Some(Healthcheck {
        command,
        interval: dur(h.interval, 30),
        timeout: dur(h.timeout, 30),
        retries: h.retries.filter(|r| *r > 0).map_or(3, |r| r as u32),
        start_period: h
            .start_period
            .filter(|n| *n > 0)
            .map(|n| HumanDuration(Duration::from_nanos(n as u64))),
    }))
}

fn network_name(n: NetworkMode) -> &'static str {
    match n {
        NetworkMode::Bridge => "bridge",
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
    }
}

fn command_line(c: &ContainerInfo) -> Vec<String> {
    if !c.args.is_empty() {
        return c.args.clone();
    }
    let mut v = c.spec.entrypoint.clone().unwrap_or_default();
    v.extend(c.spec.cmd.clone().unwrap_or_default());
    v
}

/// `docker ps`'s STATUS column.
fn status_text(c: &ContainerInfo) -> String {
    let s = &c.state;
    let ago = |t: Option<SystemTime>| {
        t.map_or_else(String::new, |t| super::time::human(super::time::since(t)))
    };
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let health = match s.health.as_ref().map(|h| h.status) {
                None => "",
                Some(HealthStatus::Starting) => " (health: starting)",
                Some(HealthStatus::Healthy) => " (healthy)",
                Some(HealthStatus::Unhealthy) => " (unhealthy)",
            };
            format!("Up {}{health}", ago(s.started_at))
        }
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code.unwrap_or(0),
            ago(s.finished_at)
        ),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            ago(s.finished_at)
        ),
        Status::Dead => "Dead".into(),
        Status::Removing => "Removal In Progress".into(),
    }
}

fn port_map(ports: &[PortMapping]) -> BTreeMap<String, Option<Vec<PortBinding>>> {
    let mut map: BTreeMap<String, Option<Vec<PortBinding>>> = BTreeMap::new();
    for p in ports {
        map.entry(format!("{}/{}", p.container_port, p.protocol))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(
                    p.host_ip
                        .map_or_else(|| "0.0.0.0".into(), |i| i.to_string()),
                ),
                host_port: Some(p.host_port.to_string()),
            });
    }
    map
}

fn mounts(spec: &CreateSpec) -> Vec<MountPoint> {
    let mut out: Vec<MountPoint> = spec
        .volumes
        .iter()
        .map(|v| {
            let (kind, name, source) = match &v.source {
                VolumeSource::Named(n) => ("volume", n.clone(), String::new()),
                VolumeSource::Bind(p) => ("bind", String::new(), p.clone()),
            };
            MountPoint {
                kind: kind.into(),
                name,
                source,
                destination: v.target.clone(),
                mode: if v.read_only { "ro" } else { "rw" }.into(),
                rw: !v.read_only,
            }
        })
        .collect();
    out.extend(spec.tmpfs.iter().map(|t| MountPoint {
        kind: "tmpfs".into(),
        destination: t.target.clone(),
        rw: true,
        ..Default::default()
    }));
    out
}

fn endpoint(c: &ContainerInfo) -> BTreeMap<String, EndpointSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        network_name(c.spec.network).to_owned(),
        EndpointSettings {
            ip_address: c.ip.map(|i| i.to_string()).unwrap_or_default(),
            ip_prefix_len: if c.ip.is_some() { 16 } else { 0 },
            ..Default::default()
        },
    );
    m
}

fn summary(c: &ContainerInfo) -> ContainerSummary {
    let running = c.state.status == Status::Running;
    ContainerSummary {
        id: c.id.clone(),
        names: vec![format!("/{}", c.name)],
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        command: command_line(c).join(" "),
        created: super::time::unix(Some(c.created)),
        ports: if running {
            c.spec
                .ports
                .iter()
                .map(|p| Port {
                    ip: Some(
                        p.host_ip
                            .map_or_else(|| "0.0.0.0".into(), |i| i.to_string()),
                    ),
                    private_port: p.container_port,
                    public_port: Some(p.host_port),
                    kind: p.protocol.to_string(),
                })
                .collect()
        } else {
            Vec::new()
        },
        labels: c.spec.labels.clone(),
        state: c.state.status.as_str().into(),
        status: status_text(c),
        host_config: SummaryHostConfig {
            network_mode: network_name(c.spec.network).into(),
        },
        network_settings: SummaryNetworkSettings {
            networks: endpoint(c),
        },
        mounts: mounts(&c.spec),
    }
}

fn restart_json(p: Policy) -> RestartPolicy {
    let (name, n) = match p {
        Policy::No => ("no", 0),
        Policy::Always => ("always", 0),
        Policy::UnlessStopped => ("unless-stopped", 0),
        Policy::OnFailure { max_retries } => ("on-failure", max_retries.unwrap_or(0)),
    };
    RestartPolicy {
        name: Some(name.into()),
        maximum_retry_count: Some(i64::from(n)),
    }
}

fn inspect_json(c: &ContainerInfo) -> ContainerInspect {
    let s = &c.state;
    let args = command_line(c);
    let spec = &c.spec;
    let health = s.health.as_ref().map(|h| HealthJson {
        status: h.status.as_str().into(),
        failing_streak: h.failing_streak,
        log: h
            .log
            .iter()
            .map(|l| HealthLogJson {
                start: super::time::rfc3339(Some(l.start)),
                end: super::time::rfc3339(Some(l.end)),
                exit_code: l.exit_code,
                output: l.output.clone(),
            })
            .collect(),
    });
    ContainerInspect {
        id: c.id.clone(),
        created: super::time::rfc3339(Some(c.created)),
        path: args.first().cloned().unwrap_or_default(),
        args: args.iter().skip(1).cloned().collect(),
        state: ContainerStateJson {
            status: s.status.as_str().into(),
            running: s.status == Status::Running,
            paused: false,
            restarting: s.status == Status::Restarting,
            oom_killed: s.oom_killed,
            dead: s.status == Status::Dead,
            pid: s.pid.unwrap_or(0),
            exit_code: s.exit_code.unwrap_or(0),
            error: s.error.clone().unwrap_or_default(),
            started_at: super::time::rfc3339(s.started_at),
            finished_at: super::time::rfc3339(s.finished_at),
            health,
        },
        image: c.image_id.clone(),
        log_path: c.log_path.display().to_string(),
        name: format!("/{}", c.name),
        restart_count: c.restart_count,
        driver: "overlay2".into(),
        platform: "linux".into(),
        host_config: HostConfig {
            binds: Some(
                spec.volumes
                    .iter()
                    .map(|v| {
                        let src = match &v.source {
                            VolumeSource::Named(n) | VolumeSource::Bind(n) => n,
                        };
                        let ro = if v.read_only { ":ro" } else { "" };
                        format!("{src}:{}{ro}", v.target)
                    })
                    .collect(),
            ),
            network_mode: Some(network_name(spec.network).into()),
            port_bindings: Some(port_map(&spec.ports)),
            restart_policy: Some(restart_json(spec.restart)),
            auto_remove: Some(spec.auto_remove),
            memory: Some(spec.memory.map_or(0, |m| m as i64)),
            nano_cpus: Some(spec.cpus.map_or(0, |c| (c * 1e9) as i64)),
            pids_limit: spec.pids.map(i64::from),
            readonly_rootfs: Some(spec.read_only),
            tmpfs: Some(
                spec.tmpfs
                    .iter()
                    .map(|t| (t.target.clone(), String::new()))
                    .collect(),
            ),
        },
        mounts: mounts(spec),
        config: ContainerConfigJson {
            hostname: spec
                .hostname
                .clone()
                .unwrap_or_else(|| c.id.chars().take(12).collect()),
            user: spec.user.clone().unwrap_or_default(),
            tty: spec.tty,
            open_stdin: spec.open_stdin,
            env: spec.env.clone(),
            cmd: spec.cmd.clone(),
            image: c.image.clone(),
            working_dir: spec.working_dir.clone().unwrap_or_default(),
            entrypoint: spec.entrypoint.clone(),
            labels: spec.labels.clone(),
            stop_signal: spec.stop_signal.map(|s| s.to_string()),
            stop_timeout: spec.stop_timeout.map(|t| t.as_secs() as i64),
            attach_stdout: true,
            attach_stderr: true,
        },
        network_settings: NetworkSettingsJson {
            ip_address: c.ip.map(|i| i.to_string()).unwrap_or_default(),
            ports: if s.status == Status::Running {
                port_map(&spec.ports)
            } else {
                BTreeMap::new()
            },
            networks: endpoint(c),
        },
    }
}

/// `GET /containers/json?all=`.
pub(super) async fn list(api: &Api, q: &Query) -> Reply {
    let all = q.bool("all", false);
    let limit = q.int("limit")?.filter(|n| *n > 0);
    let m = api.manager().clone();
    let mut list = blocking(move || Ok(m.list(all))).await?;
    if let Some(n) = limit {
        list.truncate(n as usize);
    }
    json(
        StatusCode::OK,
        &list.iter().map(summary).collect::<Vec<_>>(),
    )
}

/// `POST /containers/create?name=`.
pub(super) async fn create(api: &Api, q: &Query, req: Request<Incoming>) -> Reply {
    let body: CreateRequest = json_body(req).await?;
    let spec = spec_from_request(q.get("name").filter(|n| !n.is_empty()), body)?;
    let m = api.manager().clone();
    let id = blocking(move || Ok(m.create(spec)?)).await?;
    json(
        StatusCode::CREATED,
        &CreateResponse {
            id,
            warnings: Vec::new(),
        },
    )
}

/// `GET /containers/{id}/json`.
pub(super) async fn inspect(api: &Api, id: &str) -> Reply {
    let m = api.manager().clone();
    let id = id.to_owned();
    let info = blocking(move || Ok(m.inspect(&id)?)).await?;
    json(StatusCode::OK, &inspect_json(&info))
}

/// Runs `f` on the container, answering 204; 304 when `unchanged` says
/// the call had nothing to do (as dockerd for start/stop).
async fn simple<F>(api: &Api, id: &str, unchanged: Option<fn(Status) -> bool>, f: F) -> Reply
where
    F: FnOnce(&crate::manager::Manager, &str) -> Result<(), crate::manager::ManagerError>
        + Send
        + 'static,
{
    let m = api.manager().clone();
    let id = id.to_owned();
    let not_modified = blocking(move || {
        if let Some(check) = unchanged {
            if check(m.inspect(&id)?.state.status) {
                return Ok(true);
            }
        }
        f(&m, &id)?;
        Ok(false)
    })
    .await?;
    Ok(empty(if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::NO_CONTENT
    }))
}

fn timeout(q: &Query) -> Result<Option<Duration>, ApiError> {
    Ok(q.int("t")?.map(|t| Duration::from_secs(t.max(0) as u64)))
}

/// `POST /containers/{id}/start`.
pub(super) async fn start(api: &Api, id: &str) -> Reply {
    simple(api, id, Some(|s| s == Status::Running), |m, id| m.start(id)).await
}

/// `POST /containers/{id}/stop?t=`.
pub(super) async fn stop(api: &Api, id: &str, q: &Query) -> Reply {
    let t = timeout(q)?;
    simple(
        api,
        id,
        Some(|s| matches!(s, Status::Exited | Status::Created | Status::Dead)),
        move |m, id| m.stop(id, t),
    )
    .await
}

/// `POST /containers/{id}/restart?t=`.
pub(super) async fn restart(api: &Api, id: &str, q: &Query) -> Reply {
    let t = timeout(q)?;
    simple(api, id, None, move |m, id| m.restart(id, t)).await
}

/// `POST /containers/{id}/kill?signal=`.
pub(super) async fn kill(api: &Api, id: &str, q: &Query) -> Reply {
    let sig = match q.get("signal").filter(|s| !s.is_empty()) {
        None => libc::SIGKILL,
        Some(s) => Signal::from_str(s).map_err(bad)?.0,
    };
    simple(api, id, None, move |m, id| m.kill(id, sig)).await
}

/// `DELETE /containers/{id}?force=`.
pub(super) async fn remove(api: &Api, id: &str, q: &Query) -> Reply {
    let force = q.bool("force", false);
    simple(api, id, None, move |m, id| m.remove(id, force)).await
}

/// `POST /containers/{id}/wait?condition=`: the headers go out at once
/// (the docker CLI starts the container after sending this), the body
/// when the condition is met.
pub(super) async fn wait(api: &Api, id: &str, q: &Query) -> Reply {
    let condition = match q.get("condition").unwrap_or("") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => {
            return Err(bad(format!(
                "invalid wait condition {other:?}: expected not-running, next-exit or removed"
            )))
        }
    };
    let m = api.manager().clone();
    let id = id.to_owned();
    // Unknown containers are a 404 before anything is streamed.
    let id = {
        let m = m.clone();
        blocking(move || Ok(m.inspect(&id)?.id)).await?
    };
    let (tx, body) = ChannelBody::new();
    tokio::task::spawn_blocking(move || {
        // A client that went away (the docker CLI interrupted) frees the
        // thread instead of holding it until the container exits.
        let gone = tx.clone();
        let answer = match m.wait_cancellable(&id, condition, &move || gone.is_closed()) {
            Ok(code) => WaitResponse {
                status_code: i64::from(code),
                error: None,
            },
            Err(e) => WaitResponse {
                status_code: -1,
                error: Some(WaitError {
                    message: ApiError::from(e).message(),
                }),
            },
        };
        let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
        bytes.push(b'\n');
        let _ = tx.blocking_send(Bytes::from(bytes));
    });
    let mut r = hyper::Response::new(http_body_util::BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn log_options(q: &Query) -> Result<LogOptions, ApiError> {
    let tail = match q.get("tail").unwrap_or("all") {
        "all" | "" => None,
        n => Some(n.parse::<i64>().map_err(|_| {
            bad(format!(
                "invalid tail {n:?}: expected a number of lines or \"all\""
            ))
        })?),
    };
    let time = |key: &str| -> Result<Option<SystemTime>, ApiError> {
        match q.get(key).filter(|v| !v.is_empty() && *v != "0") {
            None => Ok(None),
            Some(v) => {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| bad(format!("invalid {key} {v:?}: expected unix seconds")))?;
                Ok(Some(
                    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)),
                ))
            }
        }
    };
    let stdout = q.bool("stdout", false);
    let stderr = q.bool("stderr", false);
    if !stdout && !stderr {
        return Err(bad(
            "you must choose at least one stream: stdout=1 or stderr=1",
        ));
    }
    Ok(LogOptions {
        follow: q.bool("follow", false),
        // A negative tail is "all", as in Docker.
        tail: tail.and_then(|n| usize::try_from(n).ok()),
        stdout,
        stderr,
        since: time("since")?,
        until: time("until")?,
        timestamps: q.bool("timestamps", false),
    })
}

/// Streams log entries, framed, into `tx` from a blocking task. Ends when
/// the entries do or the client goes away (noticed while following a
/// silent container too).
fn pump_logs(
    entries: crate::manager::LogStream,
    timestamps: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let gone = tx.clone();
    for entry in entries.cancel_when(move || gone.is_closed()) {
        let bytes = match entry {
            Ok(e) => {
                let kind = match e.stream {
                    Stream::Stdout => StreamKind::Stdout,
                    Stream::Stderr => StreamKind::Stderr,
                };
                let mut payload = Vec::with_capacity(e.bytes.len() + 32);
                if timestamps {
                    payload.extend(super::time::rfc3339(Some(e.time)).into_bytes());
                    payload.push(b' ');
                }
                payload.extend_from_slice(&e.bytes);
                frame(kind, &payload)
            }
            Err(err) => frame(
                StreamKind::System,
                format!("error reading the log: {err}\n").as_bytes(),
            ),
        };
        if tx.blocking_send(Bytes::from(bytes)).is_err() {
            return;
        }
    }
}

/// `GET /containers/{id}/logs`: a multiplexed stream (containers have no
/// TTY in berth).
pub(super) async fn logs(api: &Api, id: &str, q: &Query) -> Reply {
    let opts = log_options(q)?;
    let timestamps = opts.timestamps;
    let m = api.manager().clone();
    let id = id.to_owned();
    let stream = blocking(move || Ok(m.logs(&id, opts)?)).await?;
    let (tx, body) = ChannelBody::new();
    tokio::task::spawn_blocking(move || pump_logs(stream, timestamps, tx));
    let mut r = hyper::Response::new(http_body_util::BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(MULTIPLEXED),
    );
    Ok(r)
}

/// `POST /containers/{id}/attach`: the container's output from now on
/// until it stops, as a multiplexed stream; hijacked when the client asks
/// for an upgrade (the docker CLI does). Stdin is not attached.
pub(super) async fn attach(api: &Api, id: &str, q: &Query, mut req: Request<Incoming>) -> Reply {
    let want_stdout = q.bool("stdout", false);
    let want_stderr = q.bool("stderr", false);
    let (stdout, stderr) = if want_stdout || want_stderr {
        (want_stdout, want_stderr)
    } else {
        (true, true)
    };
    let logs_from_start = q.bool("logs", false);
    let upgrade = super::take_upgrade(&mut req);
    let m = api.manager().clone();
    let id = id.to_owned();
    // Opened before replying, so that a start right after this request
    // returns cannot run ahead of the reader.
    let stream = blocking(move || Ok(m.attach(&id, stdout, stderr, logs_from_start)?)).await?;
    let (tx, body) = ChannelBody::new();
    tokio::task::spawn_blocking(move || pump_logs(stream, false, tx));
    Ok(stream_reply(upgrade, MULTIPLEXED, body, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Protocol;

    #[test]
    fn docker_create_body_becomes_a_spec() {
        let body = r#"{"Image":"busybox","Cmd":["sh","-c","exit 3"],"Env":["A=1"],
            "Entrypoint":null,"Tty":false,"Labels":{"k":"v"},"StopSignal":"SIGINT",
            "HostConfig":{"NetworkMode":"none","Binds":["/srv:/srv:ro"],
              "PortBindings":{"8080/tcp":[{"HostIp":"","HostPort":"80"}]},
              "RestartPolicy":{"Name":"on-failure","MaximumRetryCount":2},
              "AutoRemove":true,"Memory":0,"NanoCpus":500000000,"PidsLimit":null,
              "Tmpfs":{"/run":""},"ReadonlyRootfs":true},
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":2000000000}}"#;
        let r: CreateRequest = serde_json::from_str(body).unwrap();
        let s = spec_from_request(Some("/web"), r).unwrap();
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(s.image, "busybox");
        assert_eq!(s.cmd, Some(vec!["sh".into(), "-c".into(), "exit 3".into()]));
        assert_eq!(s.entrypoint, None);
        assert_eq!(s.network, NetworkMode::None);
        assert_eq!(
            s.restart,
            Policy::OnFailure {
                max_retries: Some(2)
            }
        );
        assert_eq!(s.ports.len(), 1);
        assert_eq!(
            (s.ports[0].host_port, s.ports[0].container_port),
            (80, 8080)
        );
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert!(s.volumes[0].read_only);
        assert_eq!(s.tmpfs[0].target, "/run");
        assert_eq!(s.memory, None);
        assert_eq!(s.cpus, Some(0.5));
        assert_eq!(s.pids, None);
        assert!(s.read_only && s.auto_remove);
        assert_eq!(s.stop_signal, Some(2));
        let h = s.healthcheck.unwrap();
        assert_eq!(h.command, vec!["/bin/sh", "-c", "true"]);
        assert_eq!(h.interval.0, Duration::from_secs(2));
    }

    #[test]
    fn bad_create_bodies_are_400s_naming_the_value() {
        let cases = [
            (r#"{}"#, "no Image"),
            (
                r#"{"Image":"b","HostConfig":{"NetworkMode":"overlay"}}"#,
                "\"overlay\"",
            ),
            (
                r#"{"Image":"b","HostConfig":{"RestartPolicy":{"Name":"sometimes"}}}"#,
                "\"sometimes\"",
            ),
            (
                r#"{"Image":"b","HostConfig":{"Binds":["relative:x"]}}"#,
                "relative:x",
            ),
            (r#"{"Image":"b","StopSignal":"SIGNOPE"}"#, "SIGNOPE"),
            (
                r#"{"Image":"b","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":""}]}}}"#,
                "no host port",
            ),
        ];
        for (body, needle) in cases {
            let r: CreateRequest = serde_json::from_str(body).unwrap();
            let e = spec_from_request(None, r).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message().contains(needle), "{body}: {}", e.message());
        }
    }
}
