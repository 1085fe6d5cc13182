//! Docker's multiplexed stream format (logs and attach without a TTY):
//! frames of an 8-byte header `[stream, 0, 0, 0, size as big-endian u32]`
//! followed by `size` bytes of payload. Stream 0 is stdin, 1 stdout,
//! 2 stderr, 3 a system error that ends the stream.

/// Which stream a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// 0.
    Stdin,
    /// 1.
    Stdout,
    /// 2.
    Stderr,
    /// 3: an error message from the daemon.
    System,
}

impl StreamKind {
    fn byte(self) -> u8 {
        match self {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
            StreamKind::System => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => StreamKind::Stdin,
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            3 => StreamKind::System,
            _ => return None,
        })
    }
}

/// One frame: header and payload. Payloads over 4 GiB are split by the
/// caller (log lines never come close).
pub fn frame(kind: StreamKind, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[kind.byte(), 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    out
}

/// A malformed stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed multiplexed stream: unknown stream id {0} in a frame header")]
pub struct DemuxError(pub u8);

/// Splits a byte stream that arrives in arbitrary pieces back into frames.
#[derive(Debug, Default)]
pub struct Demuxer {
    buf: Vec<u8>,
}

impl Demuxer {
    /// A demuxer with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes; returns the frames now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(StreamKind, Vec<u8>)>, DemuxError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 8 {
                break;
            }
            let kind = StreamKind::from_byte(self.buf[0]).ok_or(DemuxError(self.buf[0]))?;
            let len =
                u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if self.buf.len() < 8 + len {
                break;
            }
            out.push((kind, self.buf[8..8 + len].to_vec()));
            self.buf.drain(..8 + len);
        }
        Ok(out)
    }

    /// Bytes of an unfinished frame still held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_byte_exact() {
        // stdout, 3 zero bytes, length 6 big-endian, "hello\n"
        let expected: &[u8] = &[1, 0, 0, 0, 0, 0, 0, 6, b'h', b'e', b'l', b'l', b'o', b'\n'];
        assert_eq!(frame(StreamKind::Stdout, b"hello\n"), expected);
        let err: &[u8] = &[2, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(&frame(StreamKind::Stderr, &[b'x'; 256])[..8], err);
    }

    #[test]
    fn demuxes_frames_split_anywhere() {
        let mut bytes = frame(StreamKind::Stdout, b"out\n");
        bytes.extend(frame(StreamKind::Stderr, b"err\n"));
        bytes.extend(frame(StreamKind::Stdout, b""));
        for cut in 0..bytes.len() {
            let mut d = Demuxer::new();
            let mut got = d.push(&bytes[..cut]).unwrap();
            got.extend(d.push(&bytes[cut..]).unwrap());
            assert_eq!(
                got,
                vec![
                    (StreamKind::Stdout, b"out\n".to_vec()),
                    (StreamKind::Stderr, b"err\n".to_vec()),
                    (StreamKind::Stdout, vec![]),
                ]
            );
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn rejects_unknown_stream_ids() {
        let mut d = Demuxer::new();
        assert_eq!(d.push(&[7, 0, 0, 0, 0, 0, 0, 0]), Err(DemuxError(7)));
    }
}
