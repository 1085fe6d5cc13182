//! The records a container leaves on disk, each written atomically
//! (temporary file, fsync, rename) by exactly one writer:
//!
//! - `config.json` ([`ContainerConfig`]): what was asked for; berthd, at create;
//! - `state.json` ([`StateRecord`]): status, restarts, health; berthd;
//! - `launch.json` ([`Launch`]): the resolved run; berthd, read by the monitor;
//! - `monitor.json` ([`MonitorRecord`]): the current run's pids and exit; the monitor.
//!
//! The workload types (ports, volumes, ...) are stored as the strings the
//! manifest and the CLI accept, so the files stay readable.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CreateSpec, Health, ManagerError, Status};
use crate::runtime::ProcessSpec;

/// What was asked for: `containers/<id>/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// When it was created.
    pub created: SystemTime,
    /// The image's id (`sha256:...`).
    pub image_id: String,
    /// The image's layers (diff_ids, `sha256:...`), bottom first.
    pub diff_ids: Vec<String>,
    /// The image's StopSignal, as a number, if it has one.
    pub image_stop_signal: Option<i32>,
    /// The request.
    pub spec: CreateSpec,
}

/// berthd's view of a container: `containers/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Lifecycle state.
    pub status: Status,
    /// Restarts done by the policy since the last manual start.
    pub restart_count: u32,
    /// Stopped by `stop`/`kill`: the policy must not restart it.
    pub manually_stopped: bool,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    /// Start of the last run.
    pub started_at: Option<SystemTime>,
    /// End of the last run.
    pub finished_at: Option<SystemTime>,
    /// Why the last start failed or the run ended abnormally.
    pub error: Option<String>,
    /// OOM-killed.
    pub oom_killed: bool,
    /// Health.
    pub health: Option<Health>,
    /// The command line of the last start.
    pub args: Vec<String>,
    /// Its bridge address while it runs.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
}

impl Default for StateRecord {
    fn default() -> Self {
        StateRecord {
            status: Status::Created,
            restart_count: 0,
            manually_stopped: false,
            exit_code: None,
            started_at: None,
            finished_at: None,
            error: None,
            oom_killed: false,
            health: None,
            args: Vec::new(),
            ip: None,
        }
    }
}

/// A mount of the resolved run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchMount {
    /// A bind mount (volumes, binds, hosts files).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Container path.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Container path.
        target: String,
        /// Size in bytes.
        size: Option<u64>,
        /// Mode bits.
        mode: Option<u32>,
    },
}

impl From<&LaunchMount> for crate::runtime::Mount {
    fn from(m: &LaunchMount) -> Self {
        match m.clone() {
            LaunchMount::Bind {
                source,
                target,
                read_only,
            } => crate::runtime::Mount::Bind {
                source,
                target,
                read_only,
            },
            LaunchMount::Tmpfs { target, size, mode } => {
                crate::runtime::Mount::Tmpfs { target, size, mode }
            }
        }
    }
}

/// Everything a monitor needs to run the container once:
/// `containers/<id>/launch.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// Container id.
    pub id: String,
    /// The image's layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The overlay's state directory (`upper/`, `work/`, `rootfs/`).
    pub fs_dir: PathBuf,
    /// What runs.
    pub process: ProcessSpec,
    /// Its hostname.
    pub hostname: String,
    /// The host's network namespace (`--network host`).
    pub host_network: bool,
    /// Mounts.
    pub mounts: Vec<LaunchMount>,
    /// Read-only root.
    pub read_only: bool,
    /// The cgroup directory, if any.
    pub cgroup: Option<PathBuf>,
    /// Memory limit.
    pub memory: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Process limit.
    pub pids: Option<u32>,
    /// The current log file.
    pub log_path: PathBuf,
    /// Rotation size.
    pub log_max_size: u64,
    /// Files kept.
    pub log_max_files: u32,
    /// Where the monitor records the run.
    pub monitor_path: PathBuf,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, 128 + signal when killed.
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// When.
    pub finished_at: SystemTime,
    /// A failure (set-up, lost contact) rather than a normal exit.
    pub error: Option<String>,
    /// The kernel's OOM killer killed a process of the container's cgroup.
    #[serde(default)]
    pub oom_killed: bool,
}

/// The monitor's record of the current run: `containers/<id>/monitor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// The monitor's pid.
    pub monitor_pid: u32,
    /// The monitor's start time (`/proc/<pid>/stat` field 22), against pid reuse.
    pub monitor_start: u64,
    /// The container's PID 1 in the host's pid namespace.
    pub container_pid: u32,
    /// When it started.
    pub started_at: SystemTime,
    /// The exit, once it happened (the logs are complete by then).
    pub exit: Option<ExitRecord>,
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ManagerError> {
    let io = |action| {
        move |source| ManagerError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        .map_err(io("encode"))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp).map_err(io("create"))?;
    f.write_all(&bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    fs::rename(&tmp, path).map_err(io("replace"))
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ManagerError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ManagerError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ManagerError::Io {
            action: "parse",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields from 3 on; starttime is field 22.
    rest.split(' ').nth(22 - 3)?.parse().ok()
}

/// Whether `pid` is alive and not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) {
        Some("Z") | Some("X") | None => false,
        Some(_) => true,
    }
}

macro_rules! string_list_serde {
    ($name:ident, $t:ty, $fmt:path) => {
        /// Stores the list as the strings the manifest accepts.
        pub mod $name {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            /// Serialises.
            pub fn serialize<S: Serializer>(v: &[$t], s: S) -> Result<S::Ok, S::Error> {
                v.iter().map($fmt).collect::<Vec<String>>().serialize(s)
            }

            /// Deserialises.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<$t>, D::Error> {
                Vec::<String>::deserialize(d)?
                    .iter()
                    .map(|s| s.parse().map_err(serde::de::Error::custom))
                    .collect()
            }
        }
    };
}

/// `[ip:]host:container/proto`, as the manifest writes it.
pub fn port_string(p: &crate::workload::PortMapping) -> String {
    let ip = match p.host_ip {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:"),
        Some(ip) => format!("{ip}:"),
        None => String::new(),
    };
    format!("{ip}{}:{}/{}", p.host_port, p.container_port, p.protocol)
}

/// `source:target[:ro]`, as the manifest writes it.
pub fn volume_string(v: &crate::workload::VolumeMount) -> String {
    let src = match &v.source {
        crate::workload::VolumeSource::Named(n) => n,
        crate::workload::VolumeSource::Bind(p) => p,
    };
    let ro = if v.read_only { ":ro" } else { "" };
    format!("{src}:{}{ro}", v.target)
}

/// `/path[:size=N,mode=OCTAL]`, as the manifest writes it.
pub fn tmpfs_string(t: &crate::workload::TmpfsMount) -> String {
    let mut opts = Vec::new();
    if let Some(s) = t.size {
        opts.push(format!("size={}", s.bytes()));
    }
    if let Some(m) = t.mode {
        opts.push(format!("mode={m:o}"));
    }
    if opts.is_empty() {
        t.target.clone()
    } else {
        format!("{}:{}", t.target, opts.join(","))
    }
}

/// The policy as the manifest writes it.
pub fn restart_string(p: &crate::workload::RestartPolicy) -> String {
    use crate::workload::RestartPolicy;
    match p {
        RestartPolicy::No => "no".into(),
        RestartPolicy::Always => "always".into(),
        RestartPolicy::UnlessStopped => "unless-stopped".into(),
        RestartPolicy::OnFailure { max_retries: None } => "on-failure".into(),
        RestartPolicy::OnFailure {
            max_retries: Some(n),
        } => format!("on-failure:{n}"),
    }
}

string_list_serde!(
    ports_serde,
    crate::workload::PortMapping,
    super::port_string
);
string_list_serde!(
    volumes_serde,
    crate::workload::VolumeMount,
    super::volume_string
);
string_list_serde!(
    tmpfs_serde,
    crate::workload::TmpfsMount,
    super::tmpfs_string
);

/// The network mode as `bridge`, `host` or `none`.
pub mod network_serde {
    use crate::workload::NetworkMode;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serialises.
    pub fn serialize<S: Serializer>(v: &NetworkMode, s: S) -> Result<S::Ok, S::Error> {
        match v {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
        .serialize(s)
    }

    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NetworkMode, D::Error> {
        match String::deserialize(d)?.as_str() {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(serde::de::Error::custom(format!(
                "unknown network mode {other:?}"
            ))),
        }
    }
}

/// The restart policy as the manifest writes it.
pub mod restart_serde {
    use crate::workload::RestartPolicy;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serialises.
    pub fn serialize<S: Serializer>(v: &RestartPolicy, s: S) -> Result<S::Ok, S::Error> {
        super::restart_string(v).serialize(s)
    }

    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RestartPolicy, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The health check as a plain struct.
pub mod health_serde {
    use std::time::Duration;

    use crate::units::HumanDuration;
    use crate::workload::Healthcheck;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Plain {
        command: Vec<String>,
        interval: Duration,
        timeout: Duration,
        retries: u32,
        start_period: Option<Duration>,
    }

    /// Serialises.
    pub fn serialize<S: Serializer>(v: &Option<Healthcheck>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|h| Plain {
                command: h.command.clone(),
                interval: h.interval.get(),
                timeout: h.timeout.get(),
                retries: h.retries,
                start_period: h.start_period.map(|p| p.get()),
            })
            .serialize(s)
    }

    /// Deserialises.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Healthcheck>, D::Error> {
        Ok(Option::<Plain>::deserialize(d)?.map(|p| Healthcheck {
            command: p.command,
            interval: HumanDuration(p.interval),
            timeout: HumanDuration(p.timeout),
            retries: p.retries,
            start_period: p.start_period.map(HumanDuration),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        let spec = CreateSpec {
            name: Some("web".into()),
            image: "busybox".into(),
            ports: vec![
                "127.0.0.1:8080:80/tcp".parse().unwrap(),
                "53:53/udp".parse().unwrap(),
            ],
            volumes: vec![
                "data:/data".parse().unwrap(),
                "/srv:/srv:ro".parse().unwrap(),
            ],
            tmpfs: vec!["/run:size=64M,mode=1777".parse().unwrap()],
            network: crate::workload::NetworkMode::None,
            restart: "on-failure:3".parse().unwrap(),
            healthcheck: Some(crate::workload::Healthcheck {
                command: vec!["true".into()],
                interval: crate::units::HumanDuration(std::time::Duration::from_millis(500)),
                timeout: crate::units::HumanDuration(std::time::Duration::from_secs(1)),
                retries: 2,
                start_period: None,
            }),
            ..CreateSpec::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"127.0.0.1:8080:80/tcp\""), "{json}");
        assert!(json.contains("\"on-failure:3\""), "{json}");
        let back: CreateSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn records_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(read_json::<StateRecord>(&p).unwrap(), None);
        let rec = StateRecord {
            restart_count: 2,
            ..StateRecord::default()
        };
        write_json(&p, &rec).unwrap();
        assert_eq!(read_json::<StateRecord>(&p).unwrap(), Some(rec));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(process_start_time(me).is_some());
        assert!(!process_alive(u32::MAX));
    }
}
