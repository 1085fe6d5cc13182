//! The boot manifest: one TOML file that says what the appliance is and runs.
//!
//! init owns `[system]` and composes the sections the daemons own
//! (`[network]` → [`netd::Config`], `[workloads.*]` → [`engine::Workload`]).
//! Every error names the file, line and column, like rustc does.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use engine::workload::Spanned;
use serde::{de, Deserialize, Deserializer};

/// A parsed, validated boot manifest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    /// `[system]`.
    pub system: System,
    /// `[network]`; `None` means DHCP on every physical NIC.
    pub network: Option<netd::Config>,
    /// `[workloads.<name>]`, by name.
    pub workloads: BTreeMap<String, engine::Workload>,
}

/// The `[system]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Host name; `berth` when absent (or the one DHCP gives).
    pub hostname: Option<Hostname>,
    /// Kernel modules loaded in addition to coldplug.
    #[serde(default)]
    pub modules: Vec<ModuleName>,
    /// Kernel parameters, `"net.ipv4.ip_forward" = "1"`.
    #[serde(default)]
    pub sysctl: BTreeMap<SysctlKey, SysctlValue>,
    /// Mirror every workload's output to the console, prefixed with its name.
    #[serde(default)]
    pub console_logs: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    system: System,
    network: Option<netd::Config>,
    #[serde(default)]
    workloads: BTreeMap<Spanned<String>, engine::Workload>,
}

/// A manifest that could not be read, parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{origin}: cannot read the manifest: {message}")]
    Read {
        /// Where it was looked for.
        origin: String,
        /// The operating system's reason.
        message: String,
    },
    /// The text is not a valid manifest.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// File name (or other origin) of the text.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, as a sentence.
        message: String,
    },
}

impl Manifest {
    /// Parses and validates manifest text. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map(|s| s.start).unwrap_or(0));
            ManifestError::Invalid {
                origin: origin.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| invalid(e.span(), explain(e.message())))?;
        engine::workload::check_workloads(&raw.workloads)
            .map_err(|e| invalid(Some(e.span), e.message))?;
        Ok(Manifest {
            system: raw.system,
            network: raw.network,
            workloads: raw
                .workloads
                .into_iter()
                .map(|(name, w)| (name.into_inner(), w))
                .collect(),
        })
    }

    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ManifestError::Read {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, column) = line_column_bytes(e.as_bytes(), e.utf8_error().valid_up_to());
            ManifestError::Invalid {
                origin: origin.clone(),
                line,
                column,
                message: "the manifest is not valid UTF-8".into(),
            }
        })?;
        Manifest::parse(&text, &origin)
    }

    /// The host name to set: the manifest's, else `berth`.
    pub fn hostname(&self) -> &str {
        self.system
            .hostname
            .as_ref()
            .map(|h| h.0.as_str())
            .unwrap_or("berth")
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn line_column_bytes(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    (
        line,
        String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1,
    )
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a
/// sentence with a suggestion when one key is close.
fn explain(message: &str) -> String {
    let message = message.trim_end();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(field, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min();
    match best {
        Some((_, suggestion)) => format!("unknown key `{field}`; did you mean `{suggestion}`?"),
        None if candidates.is_empty() => format!("unknown key `{field}`"),
        None => format!(
            "unknown key `{field}`; expected one of {}",
            candidates.join(", ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserialises through a checking constructor, so errors carry the value's position.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map_err(de::Error::custom)?;
                Ok($name(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// An RFC 1123 host name.
    Hostname,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid hostname {s:?}: use letters, digits and '-' (labels separated by '.'), at most 64 characters"
            ))
        }
    }
);

checked_string!(
    /// A kernel module name.
    ModuleName,
    |s| {
        if !s.is_empty() && s.len() < 56 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            Ok(())
        } else {
            Err(format!("invalid module name {s:?}"))
        }
    }
);

checked_string!(
    /// A sysctl key in dotted form, `net.ipv4.ip_forward`.
    SysctlKey,
    |s| {
        let ok = !s.is_empty()
            && s.split(['.', '/']).all(|p| {
                !p.is_empty() && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-:+".contains(c))
            });
        if ok {
            Ok(())
        } else {
            Err(format!("invalid sysctl key {s:?}: expected a dotted name like net.ipv4.ip_forward"))
        }
    }
);

/// A sysctl value; written as a string or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue(u8::from(v).to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl SysctlKey {
    /// The file under /proc/sys that holds it.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.0.replace('.', "/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
[system]
hostname = "demo"
modules = ["overlay"]
sysctl = { "net.ipv4.ip_forward" = "1", "vm.swappiness" = 10 }

[network]
[[network.interface]]
name = "eth0"
dhcp = true
dns = ["10.0.2.3"]

[workloads.web]
image = "busybox:latest"
command = ["httpd", "-f", "-p", "8080", "-h", "/www"]
env = { GREETING = "hello" }
ports = ["80:8080"]
volumes = ["site:/www"]
network = "bridge"
restart = "always"
depends_on = ["db"]
memory = "64M"
cpus = 0.5
pids = 128
user = "1000:1000"
read_only = true
healthcheck = { command = ["wget", "-q", "-O-", "http://127.0.0.1:8080/"], interval = "2s", retries = 3 }

[workloads.db]
image = "busybox:latest"
"#;

    fn error(text: &str) -> (usize, usize, String) {
        match Manifest::parse(text, "m.toml") {
            Err(ManifestError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn design_example_parses() {
        let m = Manifest::parse(DEMO, "demo.toml").unwrap();
        assert_eq!(m.hostname(), "demo");
        assert_eq!(m.workloads.len(), 2);
        let web = &m.workloads["web"];
        assert_eq!(web.memory.unwrap().bytes(), 64 << 20);
        assert_eq!(web.depends_on[0].get_ref(), "db");
        assert_eq!(m.system.sysctl[&SysctlKey("vm.swappiness".into())].0, "10");
        assert_eq!(
            SysctlKey("net.ipv4.ip_forward".into()).proc_path(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert!(m.network.unwrap().interface[0].dhcp);
        assert_eq!(Manifest::parse("", "empty").unwrap(), Manifest::default());
    }

    #[test]
    fn console_logs_defaults_to_off_and_must_be_a_bool() {
        let m = Manifest::parse("[system]\nhostname = \"x\"\n", "m.toml").unwrap();
        assert!(!m.system.console_logs);
        let m = Manifest::parse("[system]\nconsole_logs = true\n", "m.toml").unwrap();
        assert!(m.system.console_logs);
        let m = Manifest::parse("[system]\nconsole_logs = false\n", "m.toml").unwrap();
        assert!(!m.system.console_logs);
        let (line, col, msg) = error("[system]\nconsole_logs = \"yes\"\n");
        assert_eq!((line, col), (2, 16));
        assert!(msg.contains("bool"), "{msg}");
        let (line, col, msg) = error("[system]\nconsole_log = true\n");
        assert_eq!((line, col), (2, 1));
        assert_eq!(
            msg,
            "unknown key `console_log`; did you mean `console_logs`?"
        );
    }

    #[test]
    fn unknown_key_points_at_it_and_suggests() {
        let (line, col, msg) =
            error("[system]\nhostname = \"x\"\n\n[workloads.web]\nimagee = \"busybox\"\n");
        assert_eq!((line, col), (5, 1));
        assert_eq!(msg, "unknown key `imagee`; did you mean `image`?");
        let (line, col, msg) = error("[sistem]\n");
        assert_eq!((line, col), (1, 2));
        assert!(msg.contains("did you mean `system`"), "{msg}");
    }

    #[test]
    fn wrong_types_and_bad_values_are_located() {
        let (line, col, msg) = error("[workloads.web]\nimage = \"busybox\"\nmemory = \"lots\"\n");
        assert_eq!((line, col), (3, 10));
        assert!(msg.contains("invalid size \"lots\""), "{msg}");
        let (line, _, msg) = error("[workloads.web]\nimage = \"busybox\"\nhealthcheck = { command = [\"true\"], interval = \"2\" }\n");
        assert_eq!(line, 3);
        assert!(msg.contains("invalid duration"), "{msg}");
        let (line, col, _) = error("[system]\nhostname = 5\n");
        assert_eq!((line, col), (2, 12));
        let (line, _, msg) = error("[system]\nhostname = \"-bad-\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("invalid hostname"), "{msg}");
    }

    #[test]
    fn duplicate_names_and_syntax_errors() {
        let (line, _, msg) =
            error("[workloads.web]\nimage = \"a\"\n[workloads.web]\nimage = \"b\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("duplicate"), "{msg}");
        let (line, _, _) = error("[system]\nhostname = \"x\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn cross_workload_errors_are_located() {
        let text = "[workloads.web]\nimage = \"a\"\ndepends_on = [\"db\"]\n";
        let (line, col, msg) = error(text);
        assert_eq!((line, col), (3, 15));
        assert!(
            msg.contains("depends on \"db\", which is not declared"),
            "{msg}"
        );
    }

    #[test]
    fn display_is_file_line_column_message() {
        let err = Manifest::parse("[system]\nbogus = 1\n", "/etc/berth/manifest.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/berth/manifest.toml:2:1: unknown key `bogus`; expected one of hostname, modules, sysctl, console_logs"
        );
    }

    #[test]
    fn non_utf8_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, b"[system]\nhostname = \"\xff\"\n").unwrap();
        let err = Manifest::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(":2:13: the manifest is not valid UTF-8"),
            "{err}"
        );
        let err = Manifest::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(err, ManifestError::Read { .. }));
    }
}
