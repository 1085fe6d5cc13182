//! SHA-256 content digests (`sha256:<64 hex>`), the names of everything in
//! the image store, and a reader/writer pair that computes one while data
//! streams through.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Why a string is not a digest the store can use.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The text has no `algorithm:` prefix.
    #[error("\"{0}\" is not a digest (expected sha256:<64 hex digits>)")]
    Malformed(String),
    /// Only sha256 is stored; OCI allows others, berth does not (yet).
    #[error("digest \"{0}\" uses an unsupported algorithm (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
}

/// A SHA-256 digest. Displays and parses as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix (the name
    /// of the blob file and of the unpacked layer directory).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the bare 64-digit hex form (a blob file name).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestError> {
        if hex_digits.len() != 64 || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError::Malformed(hex_digits.to_owned()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits.to_ascii_lowercase(), &mut bytes)
            .map_err(|_| DigestError::Malformed(hex_digits.to_owned()))?;
        Ok(Digest(bytes))
    }

    /// The OCI form of this digest, for building descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        oci_spec::image::Sha256Digest::from_str(&self.hex())
            .map(Into::into)
            // A 64-digit lowercase hex string is always a valid sha256 digest.
            .unwrap_or_else(|_| unreachable!("sha256 hex is always valid"))
    }

    /// Converts an OCI descriptor's digest.
    pub fn from_oci(digest: &oci_spec::image::Digest) -> Result<Self, DigestError> {
        digest.as_ref().parse()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sha256", hex_digits)) => {
                Self::from_hex(hex_digits).map_err(|_| DigestError::Malformed(s.to_owned()))
            }
            Some((_, _)) => Err(DigestError::UnsupportedAlgorithm(s.to_owned())),
            None => Err(DigestError::Malformed(s.to_owned())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 that also counts bytes.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.sha.finalize().into())
    }
}

/// A reader that hashes (or only counts) everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    hash: bool,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self::with_hashing(inner, true)
    }

    /// Wraps `inner`; with `hash` false it only counts bytes (for data whose
    /// digest the caller already computes elsewhere).
    pub fn with_hashing(inner: R, hash: bool) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
            hash,
        }
    }

    /// Reads `inner` to its end (so the digest covers all of it) and returns
    /// the digest (None when not hashing) and length of everything read
    /// through this reader.
    pub fn drain_and_finish(mut self) -> io::Result<(Option<Digest>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        let digest = self.hash.then(|| self.hasher.finish());
        Ok((digest, len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hash {
            self.hasher.update(&buf[..n]);
        } else {
            self.hasher.len += n as u64;
        }
        Ok(n)
    }
}

/// A writer that hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// The wrapped writer, the digest and the length of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_round_trips() {
        let d = Digest::of(b"");
        let text = d.to_string();
        assert_eq!(
            text,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(text.parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::from_oci(&d.to_oci()).unwrap(), d);
    }

    #[test]
    fn refuses_other_algorithms_and_garbage() {
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!("sha256:xyz".parse::<Digest>().is_err());
        assert!(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn hashing_reader_matches_one_shot() {
        let data = vec![7u8; 100_000];
        let reader = HashingReader::new(&data[..]);
        let (d, n) = reader.drain_and_finish().unwrap();
        assert_eq!(n, 100_000);
        assert_eq!(d, Some(Digest::of(&data)));
        let counting = HashingReader::with_hashing(&data[..], false);
        assert_eq!(counting.drain_and_finish().unwrap(), (None, 100_000));
    }
}
