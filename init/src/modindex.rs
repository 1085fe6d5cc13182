//! The kernel module index that `berth-build` writes into the initramfs and
//! `berth-init` reads at boot.
//!
//! Debian's kernel ships no `modules.dep`, so the builder reads each module's
//! own `.modinfo` and writes this small text index: which modules are in the
//! image, where, what each depends on, and the device aliases each one
//! handles. It is pure data over text, so both sides share one definition and
//! it is tested without a kernel.
//!
//! ```text
//! release 6.1.0-56-amd64
//! module virtio_net kernel/drivers/net/virtio_net.ko net_failover virtio
//! alias virtio:d00000001v* virtio_net
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// Where the index lives inside the initramfs.
pub const INDEX_PATH: &str = "/lib/modules/berth.index";

/// Directory that module paths in the index are relative to.
pub const MODULES_DIR: &str = "/lib/modules";

/// A malformed index or an unresolvable module request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// A line of the index text could not be understood.
    #[error("module index line {line}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        message: String,
    },
    /// A module (asked for, or named as a dependency) is not in the index.
    #[error("module {name:?} is not in the image{}", needed_by.as_ref().map(|m| format!(" (needed by {m:?})")).unwrap_or_default())]
    Unknown {
        /// The missing module.
        name: String,
        /// The module that depends on it, if it was a dependency.
        needed_by: Option<String>,
    },
    /// Modules depend on each other in a loop.
    #[error("module dependency cycle through {0:?}")]
    Cycle(String),
}

/// One kernel module in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`-` replaced by `_`).
    pub name: String,
    /// Path of the `.ko` relative to [`MODULES_DIR`].
    pub path: String,
    /// Normalised names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

/// The index: a kernel release, its modules and their device aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIndex {
    release: String,
    modules: BTreeMap<String, Module>,
    /// (glob pattern, module name), kept sorted so rendering is stable.
    aliases: BTreeSet<(String, String)>,
}

/// Kernel module names treat `-` and `_` alike; the index uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// An empty index for the given kernel release (`uname -r`).
    pub fn new(kernel_release: &str) -> Self {
        Self {
            release: kernel_release.to_string(),
            modules: BTreeMap::new(),
            aliases: BTreeSet::new(),
        }
    }

    /// The kernel release the modules were built for.
    pub fn kernel_release(&self) -> &str {
        &self.release
    }

    /// Adds (or replaces) a module.
    pub fn add_module(&mut self, name: &str, path: &str, depends: Vec<String>) {
        let name = normalize(name);
        let mut depends: Vec<String> = depends
            .iter()
            .map(|d| normalize(d))
            .filter(|d| !d.is_empty())
            .collect();
        depends.sort();
        depends.dedup();
        self.modules.insert(
            name.clone(),
            Module {
                name,
                path: path.to_string(),
                depends,
            },
        );
    }

    /// Records that `module` handles devices whose modalias matches `pattern`.
    pub fn add_alias(&mut self, pattern: &str, module: &str) {
        self.aliases
            .insert((pattern.to_string(), normalize(module)));
    }

    /// All modules, sorted by name.
    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.modules.values()
    }

    /// A module by name (`-` and `_` alike).
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize(name))
    }

    /// The modules whose aliases match a device's modalias, sorted, deduplicated.
    pub fn modules_for_alias(&self, modalias: &str) -> Vec<&str> {
        let mut found: Vec<&str> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module.as_str())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The modules to load for `names`, each after its dependencies, each once.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<&Module>, IndexError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for name in names {
            self.visit(&normalize(name), None, &mut visiting, &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        needed_by: Option<&str>,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), IndexError> {
        if done.contains(name) {
            return Ok(());
        }
        let module = self.modules.get(name).ok_or_else(|| IndexError::Unknown {
            name: name.to_string(),
            needed_by: needed_by.map(str::to_string),
        })?;
        if !visiting.insert(name.to_string()) {
            return Err(IndexError::Cycle(name.to_string()));
        }
        for dep in &module.depends {
            self.visit(dep, Some(name), visiting, done, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push(module);
        Ok(())
    }

    /// The index as text; the same index always renders to the same bytes.
    pub fn render(&self) -> String {
        let mut out = format!("release {}\n", self.release);
        for m in self.modules.values() {
            out.push_str("module ");
            out.push_str(&m.name);
            out.push(' ');
            out.push_str(&m.path);
            for d in &m.depends {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        for (pattern, module) in &self.aliases {
            out.push_str(&format!("alias {pattern} {module}\n"));
        }
        out
    }

    /// Reads an index written by [`ModuleIndex::render`].
    pub fn parse(text: &str) -> Result<Self, IndexError> {
        let mut index = ModuleIndex::new("");
        let mut have_release = false;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let syntax = |message: &str| IndexError::Syntax {
                line,
                message: message.to_string(),
            };
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let mut words = raw.split_ascii_whitespace();
            match words.next() {
                Some("release") => {
                    let release = words.next().ok_or_else(|| syntax("release has no value"))?;
                    index.release = release.to_string();
                    have_release = true;
                }
                Some("module") => {
                    let name = words.next().ok_or_else(|| syntax("module has no name"))?;
                    let path = words.next().ok_or_else(|| syntax("module has no path"))?;
                    if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                        return Err(syntax("module path must stay under /lib/modules"));
                    }
                    index.add_module(name, path, words.map(str::to_string).collect());
                }
                Some("alias") => {
                    let pattern = words.next().ok_or_else(|| syntax("alias has no pattern"))?;
                    let module = words.next().ok_or_else(|| syntax("alias has no module"))?;
                    if words.next().is_some() {
                        return Err(syntax("alias has more than a pattern and a module"));
                    }
                    index.add_alias(pattern, module);
                }
                Some(other) => return Err(syntax(&format!("unknown record {other:?}"))),
                None => {}
            }
        }
        if !have_release {
            return Err(IndexError::Syntax {
                line: 1,
                message: "no release line".to_string(),
            });
        }
        Ok(index)
    }
}

/// fnmatch(3)-style matching as modprobe does it: `*`, `?` and `[...]`
/// classes (with ranges and `!`/`^` negation), no escapes.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with single-star backtracking: linear for the alias shapes
    // seen in practice and never recursive.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unterminated class is a literal '['.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the class at the start of `pattern` (which begins
/// with `[`). Returns whether it matched and the class's length, or `None` if
/// the class is not terminated.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModuleIndex {
        let mut index = ModuleIndex::new("6.1.0-56-amd64");
        index.add_module(
            "virtio_net",
            "kernel/drivers/net/virtio_net.ko",
            vec!["net_failover".into(), "virtio".into()],
        );
        index.add_module(
            "net_failover",
            "kernel/drivers/net/net_failover.ko",
            vec!["failover".into()],
        );
        index.add_module("failover", "kernel/net/core/failover.ko", vec![]);
        index.add_module("virtio", "kernel/drivers/virtio/virtio.ko", vec![]);
        index.add_module(
            "virtio-pci",
            "kernel/drivers/virtio/virtio_pci.ko",
            vec!["virtio".into()],
        );
        index.add_alias("virtio:d00000001v*", "virtio_net");
        index.add_alias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio-pci");
        index
    }

    #[test]
    fn render_parse_round_trip_is_exact() {
        let index = sample();
        let text = index.render();
        assert_eq!(
            text,
            "release 6.1.0-56-amd64\n\
             module failover kernel/net/core/failover.ko\n\
             module net_failover kernel/drivers/net/net_failover.ko failover\n\
             module virtio kernel/drivers/virtio/virtio.ko\n\
             module virtio_net kernel/drivers/net/virtio_net.ko net_failover virtio\n\
             module virtio_pci kernel/drivers/virtio/virtio_pci.ko virtio\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000001v* virtio_net\n"
        );
        assert_eq!(ModuleIndex::parse(&text), Ok(index));
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let index = sample();
        let order: Vec<&str> = index
            .load_order(&["virtio_net", "virtio-pci"])
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio",
                "virtio_net",
                "virtio_pci"
            ]
        );
    }

    #[test]
    fn unknown_and_cyclic_modules_are_errors() {
        let mut index = sample();
        assert_eq!(
            index.load_order(&["nope"]).unwrap_err(),
            IndexError::Unknown {
                name: "nope".into(),
                needed_by: None
            }
        );
        index.add_module("a", "a.ko", vec!["b".into()]);
        index.add_module("b", "b.ko", vec!["a".into()]);
        assert!(matches!(
            index.load_order(&["a"]),
            Err(IndexError::Cycle(_))
        ));
        index.add_module("c", "c.ko", vec!["gone".into()]);
        assert_eq!(
            index.load_order(&["c"]).unwrap_err().to_string(),
            "module \"gone\" is not in the image (needed by \"c\")"
        );
    }

    #[test]
    fn aliases_match_real_modaliases() {
        let index = sample();
        assert_eq!(
            index.modules_for_alias("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(
            index.modules_for_alias("virtio:d00000001v00001AF4"),
            ["virtio_net"]
        );
        assert!(index
            .modules_for_alias("virtio:d00000002v00001AF4")
            .is_empty());
    }

    #[test]
    fn glob_classes_and_wildcards() {
        assert!(glob_match(b"usb:v0BDAp8153d[0-2]*", b"usb:v0BDAp8153d1000"));
        assert!(!glob_match(
            b"usb:v0BDAp8153d[0-2]*",
            b"usb:v0BDAp8153d3000"
        ));
        assert!(glob_match(b"a[!x]c", b"abc"));
        assert!(!glob_match(b"a[!x]c", b"axc"));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(glob_match(b"*x*y*", b"__x__y"));
        assert!(!glob_match(b"*x*y", b"__x__y_"));
        assert!(glob_match(b"acpi*:LNXPWRBN:*", b"acpi:LNXPWRBN:"));
        assert!(glob_match(b"a[b", b"a[b"));
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(matches!(
            ModuleIndex::parse("module x\n"),
            Err(IndexError::Syntax { .. })
        ));
        assert!(matches!(
            ModuleIndex::parse("release r\nmodule x ../../etc/x.ko\n"),
            Err(IndexError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            ModuleIndex::parse("release r\nfrob x\n"),
            Err(IndexError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            ModuleIndex::parse(""),
            Err(IndexError::Syntax { .. })
        ));
    }
}
