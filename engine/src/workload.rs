//! The `[workloads.<name>]` sections of the boot manifest.
//!
//! Every field is checked as it is read, so a bad value is reported by the
//! TOML parser with its line and column; checks that span workloads
//! (`depends_on` targets, cycles, clashing ports) are in [`check_workloads`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer};

use crate::units::{ByteSize, HumanDuration};

/// A string that carries the byte range it was read from.
pub type Spanned<T> = toml::Spanned<T>;

/// One workload: a container the appliance runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Image reference, e.g. `busybox:latest`.
    pub image: ImageRef,
    /// Replaces the image's `Cmd`.
    pub command: Option<Vec<String>>,
    /// Replaces the image's `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Environment added to (and overriding) the image's.
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Named volumes and bind mounts.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Workloads that must be running (or healthy, if they have a
    /// healthcheck) before this one starts.
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    /// Memory limit.
    pub memory: Option<ByteSize>,
    /// CPU limit in CPUs (0.5 = half a CPU).
    pub cpus: Option<Cpus>,
    /// Maximum number of processes.
    pub pids: Option<Pids>,
    /// `uid[:gid]` or `name[:group]`, resolved in the image.
    pub user: Option<User>,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Health check.
    pub healthcheck: Option<Healthcheck>,
    /// Working directory, replacing the image's.
    pub working_dir: Option<AbsPath>,
    /// Signal sent to stop it (default: the image's, else SIGTERM).
    pub stop_signal: Option<Signal>,
    /// How long to wait after the stop signal before SIGKILL (default 10s).
    pub stop_grace_period: Option<HumanDuration>,
    /// tmpfs mounts, `"/path"` or `"/path:size=64M,mode=1777"`.
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Deserialises through `FromStr`, so errors carry the value's position.
macro_rules! from_str_deserialize {
    ($t:ty, $what:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// An image reference: `[registry/]name[:tag][@sha256:digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(pub String);

impl FromStr for ImageRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || "._-/:@".contains(c)
                    || c.is_ascii_uppercase()
            })
            && !s.starts_with(['/', ':', '@', '.', '-']);
        // Repository names are lowercase; tags may hold uppercase.
        let repo = s.split(['@']).next().unwrap_or(s);
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        if !ok || repo.chars().any(|c| c.is_ascii_uppercase()) || repo.is_empty() {
            return Err(format!(
                "invalid image reference {s:?}: expected [registry/]name[:tag][@digest] with a lowercase name"
            ));
        }
        Ok(ImageRef(s.to_string()))
    }
}
from_str_deserialize!(ImageRef, "an image reference like \"busybox:latest\"");

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment variable name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvName(pub String);

impl FromStr for EnvName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.contains('=') || s.contains('\0') {
            return Err(format!("invalid environment variable name {s:?}"));
        }
        Ok(EnvName(s.to_string()))
    }
}
from_str_deserialize!(EnvName, "an environment variable name");

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `[ip:]host:container[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host address to bind, all when absent.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid port mapping {s:?}: {why}");
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let (host, container) = ports
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:container, like \"80:8080\""))?;
        let (host_ip, host_port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| bad("the host address is not an IP address"))?;
                (Some(ip), port)
            }
            None => (None, host),
        };
        let port = |p: &str, which: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!(
                    "the {which} port must be a number from 1 to 65535"
                ))),
                Ok(n) => Ok(n),
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port, "host")?,
            container_port: port(container, "container")?,
            protocol,
        })
    }
}
from_str_deserialize!(
    PortMapping,
    "a port mapping like \"80:8080\" or \"53:53/udp\""
);

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume kept under the engine's state directory.
    Named(String),
    /// A path on the host (the appliance).
    Bind(String),
}

/// `name:/path[:ro|rw]` or `/host:/path[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The source.
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl FromStr for VolumeMount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid volume {s:?}: {why}");
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, _] => return Err(bad("the mode must be ro or rw")),
            _ => {
                return Err(bad(
                    "expected name:/path or /host/path:/path, with an optional :ro",
                ))
            }
        };
        if !target.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let source = if source.starts_with('/') {
            VolumeSource::Bind(source.to_string())
        } else if valid_name(source) {
            VolumeSource::Named(source.to_string())
        } else {
            return Err(bad("a volume name uses letters, digits, '_', '.' and '-', and a bind mount source is an absolute path"));
        };
        Ok(VolumeMount {
            source,
            target: target.to_string(),
            read_only,
        })
    }
}
from_str_deserialize!(
    VolumeMount,
    "a volume like \"data:/var/lib/data\" or \"/srv:/srv:ro\""
);

/// Names of workloads and volumes: `[A-Za-z0-9][A-Za-z0-9_.-]*`, as Docker allows.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && s.len() <= 128
}

/// How a workload is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace on berth's bridge, with NAT.
    #[default]
    Bridge,
    /// The appliance's own network namespace.
    Host,
    /// Only a loopback interface.
    None,
}

/// When a workload is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a non-zero exit, at most `max_retries` times when given.
    OnFailure {
        /// Limit on consecutive restarts.
        max_retries: Option<u32>,
    },
    /// Always.
    Always,
    /// Always, unless it was stopped by hand.
    UnlessStopped,
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => RestartPolicy::OnFailure { max_retries: None },
            _ => match s.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => RestartPolicy::OnFailure { max_retries: Some(n) },
                _ => {
                    return Err(format!(
                        "invalid restart policy {s:?}: expected no, on-failure, on-failure:N, always or unless-stopped"
                    ))
                }
            },
        })
    }
}
from_str_deserialize!(RestartPolicy, "a restart policy like \"always\"");

/// A CPU limit, greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Cpus(pub f64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs like 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                if v.is_finite() && v > 0.0 && v <= 1024.0 {
                    Ok(Cpus(v))
                } else {
                    Err(E::custom(format!(
                        "cpus must be more than 0 and at most 1024, not {v}"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A limit on the number of processes, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids(pub u32);

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Pids(n)),
            _ => Err(de::Error::custom(format!(
                "pids must be a number from 1 to {}, not {n}",
                u32::MAX
            ))),
        }
    }
}

/// `uid[:gid]` or `name[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name or numeric id.
    pub user: String,
    /// Group name or numeric id.
    pub group: Option<String>,
}

impl FromStr for User {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if !ok(user) || group.is_some_and(|g| !ok(g)) {
            return Err(format!(
                "invalid user {s:?}: expected uid[:gid] or name[:group]"
            ));
        }
        Ok(User {
            user: user.to_string(),
            group: group.map(str::to_string),
        })
    }
}
from_str_deserialize!(User, "a user like \"1000:1000\" or \"nobody\"");

/// An absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub String);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') || s.contains('\0') {
            return Err(format!("{s:?} is not an absolute path"));
        }
        Ok(AbsPath(s.to_string()))
    }
}
from_str_deserialize!(AbsPath, "an absolute path");

/// Signal names a workload may be stopped with.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];

/// A signal, by name (`SIGTERM`, `TERM`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<i32>() {
            if (1..=64).contains(&n) {
                return Ok(Signal(n));
            }
        }
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, n)| Signal(n))
            .ok_or_else(|| {
                format!("unknown signal {s:?}: expected a name like SIGTERM or a number")
            })
    }
}
from_str_deserialize!(Signal, "a signal like \"SIGTERM\"");

/// A workload's health check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// Command run inside the container; healthy when it exits 0.
    pub command: Vec<String>,
    /// Time between checks (default 30s).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Time a check may take (default 30s).
    #[serde(default = "default_interval")]
    pub timeout: HumanDuration,
    /// Consecutive failures before unhealthy (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in this first period do not count (default 0s).
    #[serde(default)]
    pub start_period: Option<HumanDuration>,
}

fn default_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_retries() -> u32 {
    3
}

/// `/path` or `/path:size=64M,mode=1777`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path in the container.
    pub target: String,
    /// Size limit.
    pub size: Option<ByteSize>,
    /// Octal permission bits.
    pub mode: Option<u32>,
}

impl FromStr for TmpfsMount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid tmpfs {s:?}: {why}");
        let (target, options) = match s.split_once(':') {
            Some((t, o)) => (t, Some(o)),
            None => (s, None),
        };
        if !target.starts_with('/') {
            return Err(bad("the path must be absolute"));
        }
        let mut mount = TmpfsMount {
            target: target.to_string(),
            size: None,
            mode: None,
        };
        for option in options.into_iter().flat_map(|o| o.split(',')) {
            match option.split_once('=') {
                Some(("size", v)) => {
                    mount.size = Some(v.parse().map_err(|e| bad(&format!("{e}")))?)
                }
                Some(("mode", v)) => {
                    mount.mode = Some(
                        u32::from_str_radix(v, 8)
                            .map_err(|_| bad("mode must be octal, like 1777"))?,
                    )
                }
                _ => return Err(bad("options are size=SIZE and mode=OCTAL")),
            }
        }
        Ok(mount)
    }
}
from_str_deserialize!(TmpfsMount, "a tmpfs like \"/run\" or \"/tmp:size=64M\"");

/// A problem found by looking at all workloads together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CrossError {
    /// Byte range in the manifest the problem is best shown at.
    pub span: std::ops::Range<usize>,
    /// What is wrong.
    pub message: String,
}

/// Checks what no single workload can: names, `depends_on` targets and
/// cycles, and two workloads publishing the same host port.
///
/// `workloads` are keyed by name with the span of the name.
pub fn check_workloads(workloads: &BTreeMap<Spanned<String>, Workload>) -> Result<(), CrossError> {
    for name in workloads.keys() {
        if !valid_name(name.get_ref()) {
            return Err(CrossError {
                span: name.span(),
                message: format!(
                    "invalid workload name {:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit",
                    name.get_ref()
                ),
            });
        }
    }
    for (name, w) in workloads {
        for dep in &w.depends_on {
            if dep.get_ref() == name.get_ref() {
                return Err(CrossError {
                    span: dep.span(),
                    message: format!("workload {:?} depends on itself", name.get_ref()),
                });
            }
            if !workloads.contains_key(dep.get_ref().as_str()) {
                let known: Vec<&str> = workloads.keys().map(|k| k.get_ref().as_str()).collect();
                return Err(CrossError {
                    span: dep.span(),
                    message: format!(
                        "workload {:?} depends on {:?}, which is not declared (declared: {})",
                        name.get_ref(),
                        dep.get_ref(),
                        known.join(", ")
                    ),
                });
            }
        }
    }
    if let Some((cycle, span)) = find_cycle(workloads) {
        return Err(CrossError {
            span,
            message: format!("dependency cycle: {}", cycle.join(" -> ")),
        });
    }
    let mut published: BTreeMap<(Option<IpAddr>, u16, Protocol), &str> = BTreeMap::new();
    for (name, w) in workloads {
        if w.network == NetworkMode::None && !w.ports.is_empty() {
            return Err(CrossError {
                span: name.span(),
                message: format!(
                    "workload {:?} publishes ports but has network = \"none\"",
                    name.get_ref()
                ),
            });
        }
        for p in &w.ports {
            let clash = published
                .iter()
                .find(|((ip, port, proto), _)| {
                    *port == p.host_port
                        && *proto == p.protocol
                        && (ip.is_none() || p.host_ip.is_none() || *ip == p.host_ip)
                })
                .map(|(_, other)| *other);
            if let Some(other) = clash {
                return Err(CrossError {
                    span: name.span(),
                    message: format!(
                        "workloads {other:?} and {:?} both publish host port {}/{}",
                        name.get_ref(),
                        p.host_port,
                        p.protocol
                    ),
                });
            }
            published.insert((p.host_ip, p.host_port, p.protocol), name.get_ref());
        }
    }
    Ok(())
}

/// A dependency cycle as names (first repeated last) with the span of the
/// `depends_on` entry that closes it.
fn find_cycle(
    workloads: &BTreeMap<Spanned<String>, Workload>,
) -> Option<(Vec<String>, std::ops::Range<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let names: Vec<&str> = workloads.keys().map(|k| k.get_ref().as_str()).collect();
    let mut marks: BTreeMap<&str, Mark> = names.iter().map(|n| (*n, Mark::New)).collect();
    // Iterative DFS: (name, index of next dependency to look at).
    for start in &names {
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some((node, i)) = stack.pop() {
            let deps = &workloads[node].depends_on;
            if i < deps.len() {
                stack.push((node, i + 1));
                let dep = deps[i].get_ref().as_str();
                match marks.get(dep).copied() {
                    Some(Mark::Active) => {
                        let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(dep.to_string());
                        return Some((cycle, deps[i].span()));
                    }
                    Some(Mark::New) => {
                        marks.insert(dep, Mark::Active);
                        stack.push((dep, 0));
                    }
                    _ => {}
                }
            } else {
                marks.insert(node, Mark::Done);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p: PortMapping = "80:8080".parse().unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.protocol),
            (None, 80, 8080, Protocol::Tcp)
        );
        let p: PortMapping = "127.0.0.1:53:5353/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (53, 5353, Protocol::Udp)
        );
        for bad in ["80", "0:80", "80:70000", "80:80/sctp", "x:80:80", "a:b"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v: VolumeMount = "site:/www".parse().unwrap();
        assert_eq!(v.source, VolumeSource::Named("site".into()));
        assert!(!v.read_only);
        let v: VolumeMount = "/srv/x:/x:ro".parse().unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/srv/x".into()));
        assert!(v.read_only);
        for bad in ["site", "site:www", "../x:/x", "a:/b:rx", "a:/b:ro:x"] {
            assert!(bad.parse::<VolumeMount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_signals_users_tmpfs() {
        assert_eq!(
            "on-failure:3".parse(),
            Ok(RestartPolicy::OnFailure {
                max_retries: Some(3)
            })
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert_eq!("TERM".parse(), Ok(Signal(15)));
        assert_eq!("SIGKILL".parse(), Ok(Signal(9)));
        assert!("SIGFOO".parse::<Signal>().is_err());
        assert_eq!(
            "1000:1000".parse::<User>().unwrap().group.as_deref(),
            Some("1000")
        );
        assert!("bad user".parse::<User>().is_err());
        let t: TmpfsMount = "/run:size=64M,mode=1777".parse().unwrap();
        assert_eq!((t.size, t.mode), (Some(ByteSize(64 << 20)), Some(0o1777)));
        assert!("/run:size=lots".parse::<TmpfsMount>().is_err());
        assert!("busybox:latest".parse::<ImageRef>().is_ok());
        assert!("registry.local:5000/team/app@sha256:abc"
            .parse::<ImageRef>()
            .is_ok());
        assert!("Busybox".parse::<ImageRef>().is_err());
        assert!("".parse::<ImageRef>().is_err());
    }

    fn parse(text: &str) -> Result<(), CrossError> {
        #[derive(Deserialize)]
        struct Doc {
            workloads: BTreeMap<Spanned<String>, Workload>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        check_workloads(&doc.workloads)
    }

    #[test]
    fn cross_checks() {
        let ok =
            "[workloads.a]\nimage = \"x\"\ndepends_on = [\"b\"]\n[workloads.b]\nimage = \"x\"\n";
        assert_eq!(parse(ok), Ok(()));
        let missing = "[workloads.a]\nimage = \"x\"\ndepends_on = [\"c\"]\n";
        let err = parse(missing).unwrap_err();
        assert_eq!(&missing[err.span.clone()], "\"c\"");
        let cycle = "[workloads.a]\nimage = \"x\"\ndepends_on = [\"b\"]\n[workloads.b]\nimage = \"x\"\ndepends_on = [\"a\"]\n";
        let err = parse(cycle).unwrap_err();
        assert_eq!(err.message, "dependency cycle: a -> b -> a");
        let clash = "[workloads.a]\nimage = \"x\"\nports = [\"80:80\"]\n[workloads.b]\nimage = \"x\"\nports = [\"80:81\"]\n";
        assert!(parse(clash)
            .unwrap_err()
            .message
            .contains("both publish host port 80/tcp"));
        let udp = "[workloads.a]\nimage = \"x\"\nports = [\"53:53\"]\n[workloads.b]\nimage = \"x\"\nports = [\"53:53/udp\"]\n";
        assert_eq!(parse(udp), Ok(()));
        let name = "[workloads.\"bad name\"]\nimage = \"x\"\n";
        assert!(parse(name)
            .unwrap_err()
            .message
            .contains("invalid workload name"));
    }
}
