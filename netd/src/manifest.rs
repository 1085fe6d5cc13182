//! Reading `berth-netd --config FILE`: a whole boot manifest or a file with
//! just a `[network]` table. Only the parts netd uses are read; the rest of
//! the manifest is init's to validate.

use std::path::Path;

use serde::Deserialize;

use crate::config::Config;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse; the message carries file:line:col.
    #[error("{path}:{line}:{col}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
}

/// What netd takes from the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetdConfig {
    /// The `[network]` table, if present.
    pub network: Option<Config>,
    /// `[system].hostname`, if the file sets one (then DHCP must not).
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
struct View {
    network: Option<Config>,
    system: Option<SystemView>,
}

#[derive(Deserialize)]
struct SystemView {
    hostname: Option<String>,
}

/// Parses `text`; `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<NetdConfig, ManifestError> {
    match toml::from_str::<View>(text) {
        Ok(v) => Ok(NetdConfig {
            network: v.network,
            hostname: v.system.and_then(|s| s.hostname),
        }),
        Err(e) => {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Err(ManifestError::Parse {
                path: origin.to_string(),
                line,
                col,
                message: e.message().trim().to_string(),
            })
        }
    }
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<NetdConfig, ManifestError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: origin.clone(),
        source,
    })?;
    parse(&text, &origin)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_manifest_or_network_only() {
        let whole = "[system]\nhostname = \"demo\"\n[network]\n[[network.interface]]\nname = \"eth0\"\ndhcp = true\n[workloads.web]\nimage = \"x\"\n";
        let c = parse(whole, "m.toml").unwrap();
        assert_eq!(c.hostname.as_deref(), Some("demo"));
        assert_eq!(
            c.network.unwrap().interface[0].name.as_deref(),
            Some("eth0")
        );
        let only = "[network]\ndns = [\"1.1.1.1\"]\n";
        let c = parse(only, "n.toml").unwrap();
        assert_eq!(c.network.unwrap().dns.len(), 1);
        assert_eq!(parse("", "e.toml").unwrap(), NetdConfig::default());
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let text = "[network]\n[[network.interface]]\nname = \"eth0\"\naddress = \"10.0.0.1\"\n";
        let err = parse(text, "m.toml").unwrap_err().to_string();
        assert!(err.starts_with("m.toml:4:11: "), "{err}");
        assert!(err.contains("expected address/prefix"), "{err}");
        let err = parse("[network]\nbogus = 1\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.toml:2:1: "), "{err}");
        let err = parse("[network\n", "m.toml").unwrap_err().to_string();
        assert!(err.starts_with("m.toml:1:"), "{err}");
    }
}
