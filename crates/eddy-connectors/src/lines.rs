//! Reading a dataset's `readings.jsonl` (or `.jsonl.gz`) line by line.

use std::fs::File;
use std::io::{BufReader, Read};
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
    /// Over the file's (decompressed) bytes, counted as they are pulled in.
    reader: BufReader<Counting<Box<dyn Read>>>,
    /// Decompressed bytes pulled into `reader` (and before, when opened at an offset).
    pulled: Arc<AtomicU64>,
    line_no: u64,
    count: Arc<AtomicU64>,
}

impl FileLines {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<FileLines> {
        FileLines::open_at(path, 0, 0)
    }

    /// Opens `path` after its first `lines` lines, which end at byte
    /// `offset` of its (decompressed) text: the next line read is line
    /// `lines + 1`. A plain file seeks there; a gzip file is decompressed up
    /// to it.
    pub fn open_at(path: &Path, lines: u64, offset: u64) -> Result<FileLines> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let count = Arc::new(AtomicU64::new(0));
        let gz = path.extension().is_some_and(|e| e == "gz");
        if !gz && offset > 0 {
            use std::io::{Seek, SeekFrom};
            let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            if offset > len {
                return Err(Error::io(
                    path,
                    std::io::Error::other(format!("is {len} bytes, shorter than the offset {offset} to resume at")),
                ));
            }
            file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(path, e))?;
        }
        let counting = Counting { inner: file, count: Arc::clone(&count) };
        let mut inner: Box<dyn Read> = if gz {
            Box::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 16, counting)))
        } else {
            Box::new(counting)
        };
        if gz && offset > 0 {
            let skipped =
                std::io::copy(&mut (&mut inner).take(offset), &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
            if skipped < offset {
                return Err(Error::io(
                    path,
                    std::io::Error::other(format!(
                        "holds {skipped} bytes, fewer than the offset {offset} to resume at"
                    )),
                ));
            }
        }
        let pulled = Arc::new(AtomicU64::new(offset));
        let reader = BufReader::with_capacity(1 << 16, Counting { inner, count: Arc::clone(&pulled) });
        Ok(FileLines { path: path.to_path_buf(), reader, pulled, line_no: lines, count })
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

    fn offset(&self) -> Option<u64> {
        Some(self.pulled.load(Ordering::Relaxed) - self.reader.buffer().len() as u64)
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

    /// Opened after its first lines at their end offset, plain or gzip, a
    /// file goes on with the next line and its number.
    #[test]
    fn opened_at_an_offset_it_goes_on_with_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"first\r\nsecond\nthird\nfourth";
        let plain = dir.path().join("r.jsonl");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("r.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text).unwrap();
        enc.finish().unwrap();
        for p in [plain, gz] {
            let mut f = FileLines::open(&p).unwrap();
            let mut buf = Vec::new();
            f.next_line(&mut buf).unwrap();
            buf.clear();
            f.next_line(&mut buf).unwrap();
            let offset = f.offset().unwrap();
            assert_eq!(offset, 14, "{}", p.display());
            let mut g = FileLines::open_at(&p, 2, offset).unwrap();
            buf.clear();
            assert_eq!(g.next_line(&mut buf).unwrap(), Some(Position::line(3)));
            assert_eq!(buf, b"third");
            assert!(FileLines::open_at(&p, 2, 1_000).is_err(), "past the end");
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
