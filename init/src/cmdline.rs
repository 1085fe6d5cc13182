//! The kernel command line (`/proc/cmdline`), parsed the way the kernel
//! splits it: words separated by whitespace, double quotes group spaces.

/// The path the kernel command line is read from at boot.
pub const CMDLINE_PATH: &str = "/proc/cmdline";

/// Key that names the manifest file to use (`berth.manifest=/path`).
pub const MANIFEST_KEY: &str = "berth.manifest";

/// Key that sets the console log level (`berth.log=debug`).
pub const LOG_KEY: &str = "berth.log";

/// Key that turns the instance metadata service lookup off (`berth.cloud=off`).
pub const CLOUD_KEY: &str = "berth.cloud";

/// A parsed kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    /// Parses the text of `/proc/cmdline`.
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        for word in split_words(text) {
            if word == "--" {
                // Everything after `--` is argv for init, not parameters.
                break;
            }
            match word.split_once('=') {
                Some((k, v)) => params.push((k.to_string(), Some(v.to_string()))),
                None => params.push((word, None)),
            }
        }
        Self { params }
    }

    /// The value of the last `key=value` for `key` (the kernel's "last wins").
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, v)| k == key && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` appears, as a bare flag or with a value.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// Whether init may ask the instance metadata service for a manifest
    /// (unless `berth.cloud=off`).
    pub fn cloud_lookup(&self) -> bool {
        self.get(CLOUD_KEY) != Some("off")
    }
}

fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_manifest_and_flags() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet berth.manifest=/etc/x.toml loglevel=4\n",
        );
        assert_eq!(c.get(MANIFEST_KEY), Some("/etc/x.toml"));
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert!(c.has("quiet"));
        assert_eq!(c.get("quiet"), None);
        assert_eq!(c.get("missing"), None);
    }

    #[test]
    fn quotes_group_spaces_and_last_wins() {
        let c = Cmdline::parse(r#"berth.manifest="/a b/m.toml" x=1 x=2 "y=3 4""#);
        assert_eq!(c.get(MANIFEST_KEY), Some("/a b/m.toml"));
        assert_eq!(c.get("x"), Some("2"));
        assert_eq!(c.get("y"), Some("3 4"));
    }

    #[test]
    fn cloud_lookup_unless_off() {
        assert!(Cmdline::parse("console=ttyS0").cloud_lookup());
        assert!(Cmdline::parse("berth.cloud=on").cloud_lookup());
        assert!(!Cmdline::parse("berth.cloud=off").cloud_lookup());
        assert!(Cmdline::parse("berth.cloud=off berth.cloud=on").cloud_lookup());
    }

    #[test]
    fn stops_at_double_dash_and_handles_empty() {
        let c = Cmdline::parse("a=1 -- berth.manifest=/nope");
        assert_eq!(c.get(MANIFEST_KEY), None);
        assert_eq!(Cmdline::parse("   \n"), Cmdline::default());
        assert_eq!(Cmdline::parse("k=").get("k"), Some(""));
    }
}
