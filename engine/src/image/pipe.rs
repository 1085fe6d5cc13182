//! A bounded in-process pipe of byte chunks between two threads, with the
//! chunk buffers handed back for reuse. Imports use it to overlap reading,
//! hashing and storing a blob with decompressing and extracting it.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Size of the chunks senders make.
pub(crate) const CHUNK: usize = 256 * 1024;

/// The writing end.
pub(crate) struct ChunkSender {
    tx: SyncSender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
}

/// The reading end: a `Read` that yields the chunks in order, then EOF once
/// the sender is dropped.
pub(crate) struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

/// A pipe holding at most `depth` chunks in flight.
pub(crate) fn pipe(depth: usize) -> (ChunkSender, ChunkReader) {
    let (tx, rx) = sync_channel(depth);
    let (back_tx, back_rx) = sync_channel(depth + 2);
    (
        ChunkSender { tx, back: back_rx },
        ChunkReader {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

impl ChunkSender {
    /// An empty buffer of `CHUNK` bytes, recycled when the reader gave one back.
    pub fn buffer(&self) -> Vec<u8> {
        let mut b = self.back.try_recv().unwrap_or_default();
        b.resize(CHUNK, 0);
        b
    }

    /// Sends a chunk; gives it back when the reader is gone.
    pub fn send(&self, chunk: Vec<u8>) -> Result<(), Vec<u8>> {
        self.tx.send(chunk).map_err(|e| e.0)
    }
}

/// Hands `chunk` to the reader of `tx` while it still reads, and returns a
/// buffer for the next chunk. A reader that went away (the unpacker
/// stopped: it failed) is dropped and its chunk returned: the caller keeps
/// storing the blob, and the unpacker's own result reports the failure.
pub(crate) fn feed(tx: &mut Option<ChunkSender>, chunk: Vec<u8>) -> Vec<u8> {
    let Some(t) = tx else { return chunk };
    match t.send(chunk) {
        Ok(()) => t.buffer(),
        Err(returned) => {
            *tx = None;
            returned
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    // Hand the buffer back for reuse; if the queue is full, drop it.
                    let _ = self.back.try_send(done);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or EOF; returns how much was read.
pub(crate) fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_chunks_and_recycles_buffers() {
        let (tx, mut rx) = pipe(4);
        let handle = std::thread::spawn(move || {
            for i in 0..10u8 {
                let mut b = tx.buffer();
                b.truncate(1000);
                b.fill(i);
                tx.send(b).unwrap();
            }
        });
        let mut all = Vec::new();
        rx.read_to_end(&mut all).unwrap();
        handle.join().unwrap();
        assert_eq!(all.len(), 10_000);
        assert_eq!(all[9_999], 9);
    }

    #[test]
    fn send_fails_once_the_reader_is_gone() {
        let (tx, rx) = pipe(1);
        drop(rx);
        assert!(tx.send(vec![1]).is_err());
    }
}
