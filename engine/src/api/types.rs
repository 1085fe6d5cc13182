//! The JSON shapes of the Docker Engine API (v1.41) that berth speaks.
//!
//! Field names are Docker's (PascalCase). Request types accept `null` and
//! missing fields everywhere (the docker CLI sends both) and ignore unknown
//! fields, as dockerd does; response types are also deserialisable so the
//! `berth` CLI reads them with the same definitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /containers/create` body (Docker's `container.Config` plus
/// `HostConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateRequest {
    /// Container hostname.
    pub hostname: Option<String>,
    /// `uid[:gid]` or `name[:group]`.
    pub user: Option<String>,
    /// Allocate a pseudo-terminal.
    pub tty: Option<bool>,
    /// Keep stdin open.
    pub open_stdin: Option<bool>,
    /// `K=V` pairs.
    pub env: Option<Vec<String>>,
    /// Command (replaces the image's `Cmd`).
    pub cmd: Option<Vec<String>>,
    /// Entrypoint (replaces the image's).
    pub entrypoint: Option<Vec<String>>,
    /// Image reference.
    pub image: Option<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal name or number.
    pub stop_signal: Option<String>,
    /// Seconds to wait after the stop signal.
    pub stop_timeout: Option<i64>,
    /// Health check.
    pub healthcheck: Option<HealthConfig>,
    /// Host-side settings.
    pub host_config: Option<HostConfig>,
}

/// Docker's `container.HealthConfig` (durations in nanoseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    /// `["CMD", args...]`, `["CMD-SHELL", "cmd"]` or `["NONE"]`.
    pub test: Option<Vec<String>>,
    /// Nanoseconds between checks.
    pub interval: Option<i64>,
    /// Nanoseconds a check may take.
    pub timeout: Option<i64>,
    /// Failures before unhealthy.
    pub retries: Option<i64>,
    /// Nanoseconds of grace after start.
    pub start_period: Option<i64>,
}

/// Docker's `container.HostConfig`, the parts berth uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// `src:dst[:ro]`.
    pub binds: Option<Vec<String>>,
    /// `bridge`, `host`, `none` or `default`.
    pub network_mode: Option<String>,
    /// `"8080/tcp": [{"HostIp": "", "HostPort": "80"}]`.
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    /// Restart policy.
    pub restart_policy: Option<RestartPolicy>,
    /// Remove the container when it exits.
    pub auto_remove: Option<bool>,
    /// Memory limit in bytes (0 = none).
    pub memory: Option<i64>,
    /// CPU limit in billionths of a CPU (0 = none).
    pub nano_cpus: Option<i64>,
    /// Process limit (0 or -1 = none).
    pub pids_limit: Option<i64>,
    /// Read-only root filesystem.
    pub readonly_rootfs: Option<bool>,
    /// `path -> options`.
    pub tmpfs: Option<BTreeMap<String, String>>,
}

/// One host binding of a container port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// Host address ("" = all).
    pub host_ip: Option<String>,
    /// Host port, as a string.
    pub host_port: Option<String>,
}

/// Docker's `container.RestartPolicy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// `""`, `no`, `always`, `unless-stopped`, `on-failure`.
    pub name: Option<String>,
    /// Limit for `on-failure`.
    pub maximum_retry_count: Option<i64>,
}

/// `POST /containers/create` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateResponse {
    /// The new container's id.
    pub id: String,
    /// Always empty.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One port of `GET /containers/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Port {
    /// Host address.
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Container port.
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    /// Host port.
    #[serde(
        rename = "PublicPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_port: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(rename = "Type")]
    pub kind: String,
}

/// One line of `GET /containers/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// `["/name"]`.
    pub names: Vec<String>,
    /// The image as asked for.
    pub image: String,
    /// `sha256:...`.
    #[serde(rename = "ImageID")]
    pub image_id: String,
    /// Command line, joined.
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `created`, `running`, `exited`, ...
    pub state: String,
    /// `Up 5 seconds`, `Exited (0) 3 seconds ago`.
    pub status: String,
    /// `{"NetworkMode": "none"}`.
    pub host_config: SummaryHostConfig,
    /// Networks.
    pub network_settings: SummaryNetworkSettings,
    /// Mounts.
    pub mounts: Vec<MountPoint>,
}

/// `HostConfig` of a container summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryHostConfig {
    /// Network mode.
    pub network_mode: String,
}

/// `NetworkSettings` of a container summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryNetworkSettings {
    /// Keyed by network name.
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// A container's endpoint on a network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    /// Address.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// Gateway.
    pub gateway: String,
    /// MAC address.
    pub mac_address: String,
}

/// A mount of a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Volume name, for volumes.
    pub name: String,
    /// Host path.
    pub source: String,
    /// Container path.
    pub destination: String,
    /// Mount mode (`ro`, `rw`).
    pub mode: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    /// Full id.
    pub id: String,
    /// RFC 3339.
    pub created: String,
    /// Entrypoint's first word (or Cmd's).
    pub path: String,
    /// The remaining words.
    pub args: Vec<String>,
    /// State.
    pub state: ContainerStateJson,
    /// Image id.
    pub image: String,
    /// Log file.
    pub log_path: String,
    /// `/name`.
    pub name: String,
    /// Restarts so far.
    pub restart_count: u32,
    /// Always `berth`.
    pub driver: String,
    /// Always `linux`.
    pub platform: String,
    /// Host-side settings as created.
    pub host_config: HostConfig,
    /// Mounts.
    pub mounts: Vec<MountPoint>,
    /// The container's config.
    pub config: ContainerConfigJson,
    /// Networking.
    pub network_settings: NetworkSettingsJson,
}

/// `State` of `GET /containers/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStateJson {
    /// `created`, `running`, `restarting`, `exited`, `dead`, `removing`.
    pub status: String,
    /// Running.
    pub running: bool,
    /// Paused (never).
    pub paused: bool,
    /// Restarting.
    pub restarting: bool,
    /// Killed for lack of memory.
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    /// Dead.
    pub dead: bool,
    /// Host pid of its PID 1, or 0.
    pub pid: u32,
    /// Last exit code.
    pub exit_code: i32,
    /// Last error.
    pub error: String,
    /// RFC 3339, `0001-01-01T00:00:00Z` when never.
    pub started_at: String,
    /// RFC 3339, `0001-01-01T00:00:00Z` when never.
    pub finished_at: String,
    /// Health, when there is a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthJson>,
}

/// Health of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthJson {
    /// `starting`, `healthy`, `unhealthy`.
    pub status: String,
    /// Consecutive failures.
    pub failing_streak: u32,
    /// Last probes.
    pub log: Vec<HealthLogJson>,
}

/// One health probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLogJson {
    /// RFC 3339.
    pub start: String,
    /// RFC 3339.
    pub end: String,
    /// Exit code.
    pub exit_code: i32,
    /// Output.
    pub output: String,
}

/// `Config` of `GET /containers/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfigJson {
    /// Hostname.
    pub hostname: String,
    /// User.
    pub user: String,
    /// Tty.
    pub tty: bool,
    /// OpenStdin.
    pub open_stdin: bool,
    /// Env.
    pub env: Vec<String>,
    /// Cmd.
    pub cmd: Option<Vec<String>>,
    /// Image as asked for.
    pub image: String,
    /// Working dir.
    pub working_dir: String,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Stop timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// AttachStdout (for docker CLI compatibility).
    pub attach_stdout: bool,
    /// AttachStderr.
    pub attach_stderr: bool,
}

/// `NetworkSettings` of `GET /containers/{id}/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettingsJson {
    /// Address on the default network.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Published ports: `"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]`.
    pub ports: BTreeMap<String, Option<Vec<PortBinding>>>,
    /// Keyed by network name.
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// `POST /containers/{id}/wait` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    /// Exit code.
    pub status_code: i64,
    /// Set when waiting failed.
    #[serde(default)]
    pub error: Option<WaitError>,
}

/// Error of a wait.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitError {
    /// What went wrong.
    pub message: String,
}

/// One line of `GET /images/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummaryJson {
    /// `sha256:...` (config digest).
    pub id: String,
    /// Always empty.
    pub parent_id: String,
    /// `name:tag`.
    pub repo_tags: Vec<String>,
    /// `name@sha256:...`.
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Bytes.
    pub size: i64,
    /// Bytes (same as Size).
    pub virtual_size: i64,
    /// -1: not computed.
    pub shared_size: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// -1: not computed.
    pub containers: i64,
}

/// One entry of `DELETE /images/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDeleteItem {
    /// A tag removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    /// An image removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

/// A line of a JSON message stream (`/images/load`, `/images/create`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonMessage {
    /// Text for the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Status line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// What the status is about (a layer's short digest, a tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Bytes done of a download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<ProgressDetail>,
    /// An error that ended the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Same, structured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
}

/// `progressDetail` of a JSON message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressDetail {
    /// Bytes done.
    #[serde(default)]
    pub current: u64,
    /// Bytes in all.
    #[serde(default)]
    pub total: u64,
}

/// `errorDetail` of a JSON message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The message.
    pub message: String,
}

/// `{"message": "..."}`: every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// One sentence.
    pub message: String,
}

/// `POST /containers/{id}/exec` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecCreateRequest {
    /// Attach stdin.
    pub attach_stdin: Option<bool>,
    /// Attach stdout.
    pub attach_stdout: Option<bool>,
    /// Attach stderr.
    pub attach_stderr: Option<bool>,
    /// Tty.
    pub tty: Option<bool>,
    /// Command.
    pub cmd: Option<Vec<String>>,
    /// Extra environment.
    pub env: Option<Vec<String>>,
    /// User.
    pub user: Option<String>,
    /// Working directory.
    pub working_dir: Option<String>,
}

/// `POST /exec/{id}/start` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecStartRequest {
    /// Do not stream.
    pub detach: Option<bool>,
    /// Tty.
    pub tty: Option<bool>,
}

/// `{"Id": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdResponse {
    /// The id.
    pub id: String,
}

/// `GET /exec/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    /// Exec id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Still running.
    pub running: bool,
    /// Exit code, once it has exited.
    pub exit_code: Option<i32>,
    /// The container.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Stdin open.
    pub open_stdin: bool,
    /// Stdout attached.
    pub open_stdout: bool,
    /// Stderr attached.
    pub open_stderr: bool,
    /// Pid of the process (0 until started).
    pub pid: u32,
    /// The command.
    pub process_config: ExecProcessConfig,
}

/// `ProcessConfig` of an exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecProcessConfig {
    /// Program.
    pub entrypoint: String,
    /// Arguments.
    pub arguments: Vec<String>,
    /// Tty.
    pub tty: bool,
    /// User.
    pub user: String,
}

/// `GET /version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionResponse {
    /// `{"Name": "berth"}`.
    pub platform: Platform,
    /// Components.
    pub components: Vec<Component>,
    /// berth's version.
    pub version: String,
    /// `1.41`.
    pub api_version: String,
    /// `1.24`.
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    /// Build commit.
    pub git_commit: String,
    /// The Rust version... named as Docker names it.
    pub go_version: String,
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub arch: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// RFC 3339.
    pub build_time: String,
}

/// `Platform` of `/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Platform {
    /// Product name.
    pub name: String,
}

/// A component of `/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The fields `docker version` prints for the component (ApiVersion,
    /// MinAPIVersion, GitCommit, GoVersion, Os, Arch, KernelVersion, ...).
    pub details: std::collections::BTreeMap<String, String>,
}
