//! Telling a berth manifest from the other things clouds hand a machine as
//! user-data: cloud-init's `#cloud-config` YAML, scripts, MIME multipart
//! archives, gzip. Only a TOML document counts as a manifest; the rest is
//! named on the console and ignored, so a machine given cloud-init's
//! user-data still boots.

use std::fmt;

/// What a piece of user-data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// A TOML document: the manifest's text, for [`crate::manifest::Manifest::parse`].
    Manifest(String),
    /// Empty or only whitespace.
    Empty,
    /// Something else, described for the console.
    Other(Kind),
}

/// The kinds of user-data that are not a berth manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `#cloud-config` YAML.
    CloudConfig,
    /// `#cloud-config-archive`.
    CloudConfigArchive,
    /// `#cloud-boothook`.
    CloudBoothook,
    /// `#include` / `#include-once` URL lists.
    Include,
    /// `#part-handler`.
    PartHandler,
    /// `## template: jinja`.
    JinjaTemplate,
    /// A `#!` script.
    Script,
    /// A MIME multipart archive.
    Mime,
    /// gzip-compressed data.
    Gzip,
    /// Not UTF-8 text.
    Binary,
    /// Text that does not parse as TOML.
    NotToml {
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
}

impl fmt::Display for Kind {
    /// The rest of "user-data from SOURCE is ...".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NOT_OURS: &str = "not a berth manifest (TOML)";
        match self {
            Kind::CloudConfig => write!(f, "a #cloud-config document, {NOT_OURS}"),
            Kind::CloudConfigArchive => write!(f, "a #cloud-config-archive, {NOT_OURS}"),
            Kind::CloudBoothook => write!(f, "a #cloud-boothook script, {NOT_OURS}"),
            Kind::Include => write!(f, "an #include list, {NOT_OURS}"),
            Kind::PartHandler => write!(f, "a #part-handler, {NOT_OURS}"),
            Kind::JinjaTemplate => write!(f, "a Jinja template, {NOT_OURS}"),
            Kind::Script => write!(f, "a #! script, {NOT_OURS}"),
            Kind::Mime => write!(f, "a MIME multipart document, {NOT_OURS}"),
            Kind::Gzip => write!(f, "gzip-compressed, {NOT_OURS}"),
            Kind::Binary => write!(f, "binary data (not UTF-8 text), {NOT_OURS}"),
            Kind::NotToml {
                line,
                column,
                message,
            } => write!(
                f,
                "not TOML (line {line}, column {column}: {message}), so {NOT_OURS}"
            ),
        }
    }
}

/// The console line for user-data from `source` that is not used.
pub fn ignored_line(source: &dyn fmt::Display, data: &UserData) -> Option<String> {
    match data {
        UserData::Manifest(_) => None,
        UserData::Empty => Some(format!("user-data from {source} is empty; ignored")),
        UserData::Other(kind) => Some(format!("user-data from {source} is {kind}; ignored")),
    }
}

/// Classifies user-data by its first bytes, then by whether it parses as
/// TOML. A TOML document that is not a valid manifest is still
/// [`UserData::Manifest`]: its errors are the manifest's to report.
pub fn classify(bytes: &[u8]) -> UserData {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return UserData::Other(Kind::Gzip);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return UserData::Other(Kind::Binary);
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return UserData::Empty;
    }
    if let Some(kind) = by_first_line(text) {
        return UserData::Other(kind);
    }
    match text.parse::<toml::Table>() {
        Ok(_) => UserData::Manifest(text.to_string()),
        Err(e) => {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            UserData::Other(Kind::NotToml {
                line,
                column,
                message: e.message().trim().to_string(),
            })
        }
    }
}

/// cloud-init's user-data formats, by their first line (cloud-init's own
/// "starts with" table), and MIME by its headers.
fn by_first_line(text: &str) -> Option<Kind> {
    let first = text.lines().next().unwrap_or("").trim_end();
    let lower = first.to_ascii_lowercase();
    let kind = match () {
        () if lower.starts_with("#cloud-config-archive") => Kind::CloudConfigArchive,
        () if lower.starts_with("#cloud-config") => Kind::CloudConfig,
        () if lower.starts_with("#cloud-boothook") => Kind::CloudBoothook,
        () if lower.starts_with("#include") => Kind::Include,
        () if lower.starts_with("#part-handler") => Kind::PartHandler,
        () if lower.starts_with("## template:") => Kind::JinjaTemplate,
        () if first.starts_with("#!") => Kind::Script,
        () if lower.starts_with("content-type:") || lower.starts_with("mime-version:") => {
            Kind::Mime
        }
        () => return None,
    };
    Some(kind)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_document_is_a_manifest_even_if_invalid_as_one() {
        let text = "[system]\nhostname = \"from-cloud\"\n";
        assert_eq!(classify(text.as_bytes()), UserData::Manifest(text.into()));
        // Unknown keys are the manifest parser's to report, with line and column.
        let odd = "[system]\ncolour = \"blue\"\n";
        assert_eq!(classify(odd.as_bytes()), UserData::Manifest(odd.into()));
        // A comment first is TOML, not one of cloud-init's markers.
        let commented = "# berth manifest\n[system]\n";
        assert_eq!(
            classify(commented.as_bytes()),
            UserData::Manifest(commented.into())
        );
    }

    #[test]
    fn recognises_cloud_init_formats() {
        let cases: [(&[u8], Kind); 9] = [
            (b"#cloud-config\nhostname: x\n", Kind::CloudConfig),
            (b"#Cloud-Config\r\nusers: []\n", Kind::CloudConfig),
            (
                b"#cloud-config-archive\n- type: x\n",
                Kind::CloudConfigArchive,
            ),
            (b"#cloud-boothook\necho hi\n", Kind::CloudBoothook),
            (b"#include\nhttp://example.invalid/x\n", Kind::Include),
            (b"#!/bin/sh\necho hi\n", Kind::Script),
            (
                b"Content-Type: multipart/mixed; boundary=\"b\"\nMIME-Version: 1.0\n",
                Kind::Mime,
            ),
            (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", Kind::Gzip),
            (b"\xff\xfe\x00garbage", Kind::Binary),
        ];
        for (bytes, kind) in cases {
            assert_eq!(
                classify(bytes),
                UserData::Other(kind),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn text_that_is_not_toml_is_located() {
        let data = classify(b"[system]\nhostname: yaml-ish\n");
        let UserData::Other(Kind::NotToml { line, column, .. }) = &data else {
            panic!("expected NotToml, got {data:?}");
        };
        // The toml crate points past the key, at the value it could not take.
        assert_eq!((*line, *column), (2, 11));
        assert_eq!(classify(b" \n\t\n"), UserData::Empty);
    }

    #[test]
    fn console_lines_name_the_source_and_the_kind() {
        let source = "nocloud:/dev/vdb:/user-data";
        assert_eq!(
            ignored_line(&source, &classify(b"#cloud-config\n")).as_deref(),
            Some(
                "user-data from nocloud:/dev/vdb:/user-data is a #cloud-config document, \
                 not a berth manifest (TOML); ignored"
            )
        );
        assert_eq!(
            ignored_line(&"imds:ec2", &UserData::Empty).as_deref(),
            Some("user-data from imds:ec2 is empty; ignored")
        );
        assert_eq!(
            ignored_line(&source, &UserData::Manifest(String::new())),
            None
        );
        let line = ignored_line(&source, &classify(b"a = \n")).unwrap_or_default();
        assert!(
            line.starts_with(&format!(
                "user-data from {source} is not TOML (line 1, column 5: "
            )),
            "{line}"
        );
    }
}
