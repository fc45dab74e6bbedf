//! Reading a dataset's `readings.jsonl` (or `.jsonl.gz`) line by line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use eddy_core::reading::{read_line_within, Kept, LineSource, Position};

use crate::error::{Error, Result};

/// Counts the bytes read from the file (compressed bytes, for gzip).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A file of lines, optionally gzip-compressed (by the `.gz` extension).
pub struct FileLines {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    line_no: u64,
    count: Arc<AtomicU64>,
}

impl FileLines {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<FileLines> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let count = Arc::new(AtomicU64::new(0));
        let counting = Counting { inner: file, count: Arc::clone(&count) };
        let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::with_capacity(
                1 << 16,
                MultiGzDecoder::new(BufReader::with_capacity(1 << 16, counting)),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, counting))
        };
        Ok(FileLines { path: path.to_path_buf(), reader, line_no: 0, count })
    }
}

impl LineSource for FileLines {
    fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>> {
        Ok(self.next_line_within(buf, usize::MAX)?.map(|(pos, _)| pos))
    }

    /// Streams the line (plain or gzip alike): a line longer than `max` is
    /// read to its end without being held, and still counts as one line.
    fn next_line_within(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<(Position, Kept)>> {
        let Some(kept) = read_line_within(&mut self.reader, buf, max)? else { return Ok(None) };
        self.line_no += 1;
        Ok(Some((Position::line(self.line_no), kept)))
    }

    fn bytes_read(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_lines_with_positions_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("r.jsonl");
        std::fs::write(&plain, b"a\r\nb\n\nlast").unwrap();
        let gz = dir.path().join("r.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(b"a\r\nb\n\nlast").unwrap();
        enc.finish().unwrap();
        for p in [plain, gz] {
            let mut f = FileLines::open(&p).unwrap();
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            while let Some(pos) = f.next_line(&mut buf).unwrap() {
                lines.push((pos.offset, String::from_utf8(buf.clone()).unwrap()));
                buf.clear();
            }
            assert_eq!(lines, vec![(1, "a\r".into()), (2, "b".into()), (3, "".into()), (4, "last".into())]);
            assert!(f.bytes_read() > 0);
        }
    }

    /// A line longer than the limit, plain or gzip: its prefix and length,
    /// and the lines around it keep their numbers.
    #[test]
    fn a_line_longer_than_the_limit_is_cut_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let long = "y".repeat(300_000);
        let text = format!("a\n{long}\r\nb\n");
        let plain = dir.path().join("r.jsonl");
        std::fs::write(&plain, &text).unwrap();
        let gz = dir.path().join("r.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        for p in [plain, gz] {
            let mut f = FileLines::open(&p).unwrap();
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            while let Some((pos, kept)) = f.next_line_within(&mut buf, 100_000).unwrap() {
                lines.push((pos.offset, buf.len(), kept));
                buf.clear();
            }
            assert_eq!(
                lines,
                vec![(1, 1, Kept::Whole), (2, 1024, Kept::Prefix { len: 300_000 }), (3, 1, Kept::Whole)],
                "{}",
                p.display()
            );
        }
    }
}
