//! Image references as Docker spells them (`busybox`, `busybox:1.36`,
//! `registry:5000/a/b@sha256:...`), parsed and normalised the way Docker's
//! `reference.ParseNormalizedNamed` does: a name without a registry lives on
//! `docker.io`, and a one-part name there lives under `library/`.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// The registry of names that carry none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The tag of references that carry neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_MAX: usize = 255;

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("an image reference cannot be empty")]
    Empty,
    /// Repository names are lowercase (Docker's rule).
    #[error("invalid reference \"{0}\": repository name must be lowercase")]
    Uppercase(String),
    /// A path component does not match `[a-z0-9]+([._-]+[a-z0-9]+)*`.
    #[error("invalid reference \"{reference}\": \"{component}\" is not a valid repository name component")]
    BadComponent {
        /// The whole input.
        reference: String,
        /// The offending part.
        component: String,
    },
    /// The registry host or port is malformed.
    #[error("invalid reference \"{reference}\": \"{domain}\" is not a valid registry host[:port]")]
    BadDomain {
        /// The whole input.
        reference: String,
        /// The offending part.
        domain: String,
    },
    /// A tag must match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid reference \"{reference}\": \"{tag}\" is not a valid tag")]
    BadTag {
        /// The whole input.
        reference: String,
        /// The offending part.
        tag: String,
    },
    /// The part after `@` is not a usable digest.
    #[error("invalid reference \"{reference}\": {source}")]
    BadDigest {
        /// The whole input.
        reference: String,
        /// What is wrong with the digest.
        #[source]
        source: DigestError,
    },
    /// Docker refuses these because they read as image ids.
    #[error(
        "invalid reference \"{0}\": a 64-digit hex string is an image id, not a repository name"
    )]
    LooksLikeId(String),
    /// Longer than Docker allows.
    #[error("invalid reference \"{0}\": repository name must not be longer than 255 characters")]
    TooLong(String),
}

/// A normalised image reference: registry domain, repository path, and an
/// optional tag and/or digest. `Display` gives the full form
/// (`docker.io/library/busybox:latest`); [`Reference::familiar`] gives the
/// short form Docker prints (`busybox:latest`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse().map_err(|source| ReferenceError::BadDigest {
                    reference: text.to_owned(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        // A tag is a ':' after the last '/', so `host:5000/name` keeps its port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag {
                    reference: text.to_owned(),
                    tag: tag.to_owned(),
                });
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::LooksLikeId(text.to_owned()));
        }
        let (domain, path) = split_domain(name);
        for component in path.split('/') {
            if component.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ReferenceError::Uppercase(text.to_owned()));
            }
            if !valid_component(component) {
                return Err(ReferenceError::BadComponent {
                    reference: text.to_owned(),
                    component: component.to_owned(),
                });
            }
        }
        if !valid_domain(&domain) {
            return Err(ReferenceError::BadDomain {
                reference: text.to_owned(),
                domain,
            });
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_MAX {
            return Err(ReferenceError::TooLong(text.to_owned()));
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry `host[:port]`, e.g. `docker.io` or `registry:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path on the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// This reference with `tag` (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                reference: format!("{}:{tag}", self.repository()),
                tag: tag.to_owned(),
            });
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// The form tags are stored under: `repository:tag`, with `latest` when
    /// the reference has neither tag nor digest (Docker's `TagNameOnly`), or
    /// `repository@digest` for a digest-only reference.
    pub fn normalized(&self) -> Reference {
        let mut r = self.clone();
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_owned());
        }
        r
    }

    /// The short form Docker shows: `docker.io/` and `library/` dropped.
    pub fn familiar(&self) -> String {
        let mut name = if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_REPO_PREFIX)
                .filter(|p| !p.contains('/'))
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            self.repository()
        };
        self.push_suffix(&mut name);
        name
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.repository();
        self.push_suffix(&mut text);
        f.write_str(&text)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry when it
/// has a '.' or ':' or is `localhost` (or has uppercase letters, which a
/// repository cannot).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// host components `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` joined by '.',
/// or a bracketed IPv6 address, then an optional `:port`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, after)) => {
                if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => ("x", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(text: &str) -> String {
        Reference::parse(text).unwrap().normalized().to_string()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full("registry:5000/a/b:t"), "registry:5000/a/b:t");
        assert_eq!(full("quay.io/a/b/c"), "quay.io/a/b/c:latest");
        assert_eq!(full("[::1]:5000/app"), "[::1]:5000/app:latest");
        // `registry` alone is a repository on docker.io, not a host.
        assert_eq!(full("registry/a"), "docker.io/registry/a:latest");
    }

    #[test]
    fn digests_and_tags() {
        let r = Reference::parse(&format!("registry:5000/a/b@{D}")).unwrap();
        assert_eq!(r.domain(), "registry:5000");
        assert_eq!(r.path(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.normalized().to_string(), format!("registry:5000/a/b@{D}"));

        let r = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1.36@{D}"));
        assert_eq!(r.familiar(), format!("busybox:1.36@{D}"));
    }

    #[test]
    fn familiar_names() {
        let f = |t: &str| Reference::parse(t).unwrap().normalized().familiar();
        assert_eq!(f("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(f("user/app:v1"), "user/app:v1");
        assert_eq!(f("registry:5000/a/b:t"), "registry:5000/a/b:t");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/b/",
            "-a",
            "a..b",
            "a:5000x/b",
            "busybox@sha256:1234",
            "busybox@md5:1234",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "bad host/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("a/{}", "b".repeat(260));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong(_))
        ));
        assert!(matches!(
            Reference::parse("Foo"),
            Err(ReferenceError::Uppercase(_))
        ));
    }

    #[test]
    fn separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["a___b", "a._b", "_a", "a-", "a.-b"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }
}
