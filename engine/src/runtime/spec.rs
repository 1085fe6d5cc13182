//! What a container runs: the process (argv, env, user, workdir) resolved
//! from the image config and the caller's overrides with Docker's rules,
//! and the mounts, limits and network mode around it.
//!
//! Everything here is pure; [`super::ContainerBuilder`] consumes it.

use std::path::{Component, Path, PathBuf};

use oci_spec::image::Config;
use serde::{Deserialize, Serialize};

/// Docker's default `PATH`, added when the image and overrides set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Problems resolving what to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Entrypoint and Cmd are both empty after overrides.
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// An environment entry is malformed.
    #[error("invalid environment entry {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    /// A container path is not absolute or holds a NUL.
    #[error("invalid container path {0:?}: it must be absolute")]
    BadPath(String),
    /// A hostname the kernel would refuse.
    #[error("invalid hostname {0:?}: 1 to 64 characters of letters, digits, '-' and '.'")]
    BadHostname(String),
}

/// What the caller overrides on top of the image config (`docker run`'s flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--entrypoint`: `Some(vec![])` clears the image's Entrypoint. An
    /// entrypoint override also drops the image's Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// The command after the image name: replaces the image's Cmd (empty = none given).
    pub cmd: Vec<String>,
    /// `-e`: `KEY=VALUE`, or `KEY` alone to remove `KEY`.
    pub env: Vec<String>,
    /// `-u`: `uid[:gid]` or `name[:group]`.
    pub user: Option<String>,
    /// `-w`: absolute working directory.
    pub workdir: Option<String>,
    /// `-t`: a terminal (adds `TERM=xterm` like Docker).
    pub tty: bool,
}

/// The process to run, fully resolved except for the user, which is
/// resolved inside the container against its `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, in Docker's order; `HOME` is added in the
    /// container from the user's passwd entry when missing.
    pub env: Vec<String>,
    /// Absolute working directory (created when missing, for the container's init).
    pub cwd: String,
    /// `uid[:gid]` or `name[:group]`; empty means root (uid 0).
    pub user: String,
    /// Whether the process gets a terminal.
    pub tty: bool,
}

impl ProcessSpec {
    /// The `PATH` this process searches (Docker's default when unset).
    pub fn path_env(&self) -> &str {
        env_value(&self.env, "PATH").unwrap_or(DEFAULT_PATH)
    }
}

/// How the container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only `lo` (up); a bridge is wired by
    /// the caller between [`super::ContainerBuilder::create`] and
    /// [`super::Created::start`], using the pid.
    #[default]
    Private,
    /// The host's network namespace (`--network host`).
    Host,
}

/// A mount the caller adds on top of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host file or directory (bind mount or a named volume's directory).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Absolute path in the container.
        target: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A tmpfs (`--tmpfs /path:size=..,mode=..`): nosuid, nodev, noexec like Docker's.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
        /// Permission bits (default 1777).
        mode: Option<u32>,
    },
}

impl Mount {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// cgroup v2 limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// `memory.max` in bytes.
    pub memory: Option<u64>,
    /// CPUs (0.5 = half a CPU), written as `cpu.max`.
    pub cpus: Option<f64>,
    /// `pids.max`.
    pub pids: Option<u32>,
}

impl Resources {
    /// Whether any limit is asked for.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some() || self.pids.is_some()
    }
}

/// Resolves the process of a container from the image config and the
/// overrides, with Docker's rules:
///
/// - an entrypoint override replaces the image's Entrypoint and drops its
///   Cmd; a command override replaces Cmd;
/// - env is `PATH`, `HOSTNAME` (and `TERM=xterm` with a tty), then the
///   overrides, then the image's entries they do not override;
/// - the workdir is the override, else the image's, else `/`.
pub fn resolve_process(
    image: Option<&Config>,
    overrides: &Overrides,
    hostname: &str,
) -> Result<ProcessSpec, SpecError> {
    let empty = Vec::new();
    let image_entrypoint = image
        .and_then(|c| c.entrypoint().as_ref())
        .unwrap_or(&empty);
    let image_cmd = image.and_then(|c| c.cmd().as_ref()).unwrap_or(&empty);
    let image_env = image.and_then(|c| c.env().as_ref()).unwrap_or(&empty);
    let args = command_line(
        image_entrypoint,
        image_cmd,
        overrides.entrypoint.as_deref(),
        &overrides.cmd,
    )?;
    for entry in image_env.iter().chain(&overrides.env) {
        check_env_entry(entry)?;
    }
    let config_env = merge_user_env(&overrides.env, image_env);
    let mut defaults = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    if overrides.tty {
        defaults.push("TERM=xterm".to_string());
    }
    let env = replace_or_append_env(&defaults, &config_env);
    let cwd = working_dir(
        image.and_then(|c| c.working_dir().as_deref()),
        overrides.workdir.as_deref(),
    )?;
    let user = overrides
        .user
        .clone()
        .or_else(|| image.and_then(|c| c.user().clone()))
        .unwrap_or_default();
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        user,
        tty: overrides.tty,
    })
}

/// The process of an `exec` into a container whose own process is
/// `container`: its env plus `env` (Docker's `ReplaceOrAppendEnvValues`),
/// its user and workdir unless overridden.
pub fn exec_process(
    container: &ProcessSpec,
    args: Vec<String>,
    env: &[String],
    user: Option<String>,
    workdir: Option<String>,
    tty: bool,
) -> Result<ProcessSpec, SpecError> {
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    for entry in env {
        check_env_entry(entry)?;
    }
    let mut base = container.env.clone();
    if tty && env_value(&base, "TERM").is_none() {
        base.push("TERM=xterm".to_string());
    }
    let cwd = match workdir {
        Some(w) => working_dir(None, Some(&w))?,
        None => container.cwd.clone(),
    };
    Ok(ProcessSpec {
        args,
        env: replace_or_append_env(&base, env),
        cwd,
        user: user.unwrap_or_else(|| container.user.clone()),
        tty,
    })
}

/// Docker's entrypoint/cmd rules (`daemon/create.go` `merge`).
pub fn command_line(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&[String]>,
    cmd: &[String],
) -> Result<Vec<String>, SpecError> {
    let (entrypoint, cmd) = match entrypoint {
        Some(e) if !e.is_empty() => (e, cmd),
        // `--entrypoint ""` clears the image's entrypoint but keeps its Cmd.
        Some(e) => (e, if cmd.is_empty() { image_cmd } else { cmd }),
        None => (
            image_entrypoint,
            if cmd.is_empty() { image_cmd } else { cmd },
        ),
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn check_env_entry(entry: &str) -> Result<(), SpecError> {
    if env_key(entry).is_empty() || entry.contains('\0') {
        return Err(SpecError::BadEnv(entry.to_string()));
    }
    Ok(())
}

/// The value of `key` in `KEY=VALUE` entries.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The user's env followed by the image's entries it does not name
/// (Docker's create-time merge).
fn merge_user_env(user: &[String], image: &[String]) -> Vec<String> {
    let mut env = user.to_vec();
    for entry in image {
        if !user.iter().any(|u| env_key(u) == env_key(entry)) {
            env.push(entry.clone());
        }
    }
    env
}

/// Docker's `ReplaceOrAppendEnvValues`: an override replaces the default
/// with the same key in place, `KEY` without `=` removes it, anything else
/// is appended.
pub fn replace_or_append_env(defaults: &[String], overrides: &[String]) -> Vec<String> {
    let mut env: Vec<Option<String>> = defaults.iter().cloned().map(Some).collect();
    for entry in overrides {
        let key = env_key(entry);
        let found = env
            .iter()
            .position(|e| e.as_deref().is_some_and(|e| env_key(e) == key));
        match (found, entry.contains('=')) {
            (Some(i), true) => env[i] = Some(entry.clone()),
            (Some(i), false) => env[i] = None,
            (None, true) => env.push(Some(entry.clone())),
            (None, false) => {}
        }
    }
    env.into_iter().flatten().collect()
}

/// The working directory: the override, else the image's (relative ones
/// are taken from `/`), else `/`; cleaned lexically.
pub fn working_dir(image: Option<&str>, workdir: Option<&str>) -> Result<String, SpecError> {
    if let Some(w) = workdir {
        if !w.starts_with('/') {
            return Err(SpecError::BadPath(w.to_string()));
        }
    }
    match workdir.or(image).filter(|w| !w.is_empty()) {
        Some(w) => clean_path(&format!("/{w}")),
        None => Ok("/".to_string()),
    }
}

/// Cleans an absolute container path lexically (`//`, `.`, `..` clamped at `/`).
pub fn clean_path(path: &str) -> Result<String, SpecError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(SpecError::BadPath(path.to_string()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Finds `command` like `execvp` does: as given when it holds a `/`,
/// else the first entry of `path_env` for which `is_executable` holds.
pub fn lookup_command(
    command: &str,
    path_env: &str,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    path_env
        .split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| Path::new(dir).join(command))
        .find(|p| is_executable(p))
}

/// Checks a hostname the way the kernel and Docker accept it.
pub fn check_hostname(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadHostname(name.to_string()))
    }
}

/// Docker's default hostname: the first 12 characters of the container id.
pub fn default_hostname(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_override_replaces_cmd_keeps_entrypoint() {
        let args = command_line(&s(&["/ep"]), &s(&["a"]), None, &s(&["b", "c"])).unwrap();
        assert_eq!(args, s(&["/ep", "b", "c"]));
        let args = command_line(&s(&["/ep"]), &s(&["a"]), None, &[]).unwrap();
        assert_eq!(args, s(&["/ep", "a"]));
    }

    #[test]
    fn entrypoint_override_resets_cmd() {
        let args = command_line(&s(&["/ep"]), &s(&["a"]), Some(&s(&["/x"])), &[]).unwrap();
        assert_eq!(args, s(&["/x"]));
        let args = command_line(&s(&["/ep"]), &s(&["a"]), Some(&s(&["/x"])), &s(&["y"])).unwrap();
        assert_eq!(args, s(&["/x", "y"]));
        // --entrypoint "" clears the entrypoint; Cmd stays.
        let args = command_line(&s(&["/ep"]), &s(&["sh"]), Some(&[]), &[]).unwrap();
        assert_eq!(args, s(&["sh"]));
        assert_eq!(
            command_line(&s(&["/ep"]), &[], Some(&[]), &[]),
            Err(SpecError::NoCommand)
        );
        assert_eq!(command_line(&[], &[], None, &[]), Err(SpecError::NoCommand));
    }

    #[test]
    fn env_follows_dockers_order_and_overrides() {
        let config = ConfigBuilder::default()
            .env(s(&["PATH=/img/bin", "A=image", "B=image"]))
            .cmd(s(&["sh"]))
            .build()
            .unwrap();
        let ov = Overrides {
            env: s(&["B=user", "C=user"]),
            tty: true,
            ..Overrides::default()
        };
        let p = resolve_process(Some(&config), &ov, "web").unwrap();
        assert_eq!(
            p.env,
            s(&[
                "PATH=/img/bin",
                "HOSTNAME=web",
                "TERM=xterm",
                "B=user",
                "C=user",
                "A=image"
            ])
        );
        assert_eq!(p.path_env(), "/img/bin");
        assert_eq!(p.cwd, "/");
        assert_eq!(p.user, "");
    }

    #[test]
    fn env_without_path_gets_dockers_default() {
        let p = resolve_process(
            None,
            &Overrides {
                cmd: s(&["true"]),
                ..Overrides::default()
            },
            "h",
        )
        .unwrap();
        assert_eq!(p.env, s(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h"]));
    }

    #[test]
    fn replace_or_append_removes_bare_keys() {
        let env = replace_or_append_env(&s(&["A=1", "B=2", "C=3"]), &s(&["B", "A=9", "D=4", "E"]));
        assert_eq!(env, s(&["A=9", "C=3", "D=4"]));
    }

    #[test]
    fn bad_env_is_refused() {
        let ov = Overrides {
            cmd: s(&["x"]),
            env: s(&["=x"]),
            ..Overrides::default()
        };
        assert_eq!(
            resolve_process(None, &ov, "h"),
            Err(SpecError::BadEnv("=x".into()))
        );
    }

    #[test]
    fn user_and_workdir_from_image_or_override() {
        let config = ConfigBuilder::default()
            .user("nobody".to_string())
            .working_dir("app/../srv/".to_string())
            .cmd(s(&["sh"]))
            .build()
            .unwrap();
        let p = resolve_process(Some(&config), &Overrides::default(), "h").unwrap();
        assert_eq!((p.user.as_str(), p.cwd.as_str()), ("nobody", "/srv"));
        let ov = Overrides {
            user: Some("1000:50".into()),
            workdir: Some("/data".into()),
            ..Overrides::default()
        };
        let p = resolve_process(Some(&config), &ov, "h").unwrap();
        assert_eq!((p.user.as_str(), p.cwd.as_str()), ("1000:50", "/data"));
        assert!(working_dir(None, Some("rel")).is_err());
    }

    #[test]
    fn exec_inherits_container_process() {
        let base = ProcessSpec {
            args: s(&["sh"]),
            env: s(&["PATH=/bin", "A=1"]),
            cwd: "/srv".into(),
            user: "nobody".into(),
            tty: false,
        };
        let p = exec_process(&base, s(&["id"]), &s(&["A=2", "B=3"]), None, None, true).unwrap();
        assert_eq!(p.env, s(&["PATH=/bin", "A=2", "TERM=xterm", "B=3"]));
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "nobody"));
        let p = exec_process(
            &base,
            s(&["id"]),
            &[],
            Some("0".into()),
            Some("/".into()),
            false,
        )
        .unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/", "0"));
        assert!(exec_process(&base, vec![], &[], None, None, false).is_err());
    }

    #[test]
    fn lookup_searches_path_in_order() {
        let exists = |p: &Path| p == Path::new("/usr/bin/ls") || p == Path::new("/bin/ls");
        assert_eq!(
            lookup_command("ls", "/usr/local/bin:/usr/bin:/bin", exists),
            Some(PathBuf::from("/usr/bin/ls"))
        );
        assert_eq!(lookup_command("nope", "/bin", exists), None);
        assert_eq!(
            lookup_command("./x", "/bin", exists),
            Some(PathBuf::from("./x"))
        );
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("/a//b/./c/../d/").unwrap(), "/a/b/d");
        assert_eq!(clean_path("/../..").unwrap(), "/");
        assert!(clean_path("a").is_err());
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("web-1.local").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("a b").is_err());
        assert_eq!(default_hostname("0123456789abcdef"), "0123456789ab");
    }
}
