//! A writer on a thread of its own: [`Background`].
//!
//! Encoding a row group, compressing it, finishing a file and the fsyncs of
//! a publication take milliseconds (tens of them when the disk is slow).
//! Done on a dataflow worker, they hold up every other operator of that
//! worker and, through the progress protocol, every other worker waiting
//! for its frontier. [`Background`] moves all of it to a thread of its own:
//! the worker hands rows over a bounded channel and asks for commits; the
//! thread runs the writer's own `try_write` and `try_commit`, unchanged, in
//! the order asked.
//!
//! **What is durable.** The thread reports, after each commit, the frontier
//! through which the rows it was given are published, exactly as the writer
//! would have reported it synchronously ([`durable_after`]): `upto` once
//! nothing is left unpublished. Rows reach the thread in the order written
//! and a commit request follows every row written before it, so a claim of
//! `upto` covers every row at a time before `upto`. [`Background::commit`]
//! returns the latest claim the thread has made, which may lag the
//! frontier it is asked for (the sink operator asks again); so a claim is
//! never ahead of what is in the manifest. The committed rows of each writer
//! stay a prefix of the rows it was given, since the writer itself is
//! unchanged. The final commit (`upto == None`) waits for the thread.
//!
//! **Backpressure.** The channel holds a few batches; when the thread falls
//! behind, the worker waits on the channel, as it waited on the writer
//! before.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backup::BackupWriter;
use crate::config::durable_after;
use crate::error::{Error, Result};
use crate::raw::{RawArchiveWriter, RawRecord};

/// A writer [`Background`] can drive: the backup and the raw archive.
pub trait Writer: Send + 'static {
    /// The row type (`Sync` too: a batch may be shared with the worker's
    /// other consumers, see [`Background::write_shared`]).
    type Row: Send + Sync + 'static;
    /// Writes rows; see [`BackupWriter::try_write_rows`].
    fn try_write_rows(&mut self, rows: &[Self::Row]) -> Result<()>;
    /// Publishes what is due; see [`BackupWriter::try_commit`].
    fn try_commit(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>>;
    /// Publishes whatever is open, due or not.
    fn try_commit_now(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>>;
    /// Rows written and not yet published.
    fn uncommitted_rows(&self) -> u64;
    /// The writer id.
    fn writer_id(&self) -> &str;
    /// What the writer writes, as an error names it; see [`BackupWriter::output`].
    fn output(&self) -> String;
    /// The writer's [`BackupConfig::max_file_age`](crate::BackupConfig::max_file_age).
    fn max_file_age(&self) -> Duration;
}

impl Writer for BackupWriter {
    type Row = eddy_core::reading::Enriched;
    fn try_write_rows(&mut self, rows: &[Self::Row]) -> Result<()> {
        BackupWriter::try_write_rows(self, rows)
    }
    fn try_commit(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        BackupWriter::try_commit(self, upto)
    }
    fn try_commit_now(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        BackupWriter::try_commit_now(self, upto)
    }
    fn uncommitted_rows(&self) -> u64 {
        BackupWriter::uncommitted_rows(self)
    }
    fn writer_id(&self) -> &str {
        BackupWriter::writer_id(self)
    }
    fn output(&self) -> String {
        BackupWriter::output(self)
    }
    fn max_file_age(&self) -> Duration {
        self.config().max_file_age
    }
}

impl Writer for RawArchiveWriter {
    type Row = RawRecord;
    fn try_write_rows(&mut self, rows: &[RawRecord]) -> Result<()> {
        RawArchiveWriter::try_write_rows(self, rows)
    }
    fn try_commit(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        RawArchiveWriter::try_commit(self, upto)
    }
    fn try_commit_now(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        RawArchiveWriter::try_commit_now(self, upto)
    }
    fn uncommitted_rows(&self) -> u64 {
        RawArchiveWriter::uncommitted_rows(self)
    }
    fn writer_id(&self) -> &str {
        RawArchiveWriter::writer_id(self)
    }
    fn output(&self) -> String {
        RawArchiveWriter::output(self)
    }
    fn max_file_age(&self) -> Duration {
        self.config().max_file_age
    }
}

/// Rows gathered on the worker before they are handed over.
const HAND_OVER_ROWS: usize = 4096;
/// Commit requests go at most this often while the frontier moves (or
/// at an eighth of `max_file_age`, if less).
const REQUEST_EVERY: Duration = Duration::from_millis(50);
/// Messages the channel holds before the worker waits.
const CHANNEL_MESSAGES: usize = 8;

enum Msg<R> {
    Rows(Vec<R>),
    /// Batches shared with the worker's other consumers, in order.
    Shared(Vec<Arc<Vec<R>>>),
    Commit {
        upto: Option<u64>,
        seq: u64,
        /// Publish what is open, due or not.
        now: bool,
    },
}

/// What the thread has done, for the worker.
#[derive(Debug, Default)]
struct Status {
    /// The latest frontier through which every row is published (`None`:
    /// all of them), if any claim was made.
    durable: Option<Option<u64>>,
    /// Rows the thread had received when its last commit left nothing
    /// unpublished.
    clean_rows: u64,
    /// The last commit request done.
    done_seq: u64,
    /// The writer's first error.
    error: Option<Arc<Error>>,
    /// The thread has stopped (normally or not).
    exited: bool,
}

struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Status> {
        // A panic on the writer thread poisons nothing the worker relies on.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `a` is a later frontier than `b` (`None` is the latest).
fn later(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
    }
}

/// Marks the thread exited when it stops, even by a panic.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.lock().exited = true;
        self.0.changed.notify_all();
    }
}

/// A [`Writer`] run on a thread of its own (see the module documentation).
/// Dropping it lets the thread finish what it was given (without a final
/// commit: uncommitted rows are not published) and waits for it.
pub struct Background<W: Writer> {
    tx: Option<SyncSender<Msg<W::Row>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Rows given and not yet handed over. At most one of `buf` and
    /// `batches` holds anything, so the thread gets the rows in order.
    buf: Vec<W::Row>,
    /// Shared batches given and not yet handed over, and their rows.
    batches: Vec<Arc<Vec<W::Row>>>,
    batch_rows: usize,
    /// Rows handed to the thread so far.
    handed: u64,
    seq: u64,
    /// Commit requests are sent at most this often while the frontier
    /// moves (and always at the end of input).
    every: Duration,
    last_request: Option<Instant>,
    /// The last frontier a commit was requested through.
    requested: Option<Option<u64>>,
    /// The last frontier a commit of everything open was requested through.
    requested_now: Option<Option<u64>>,
}

impl<W: Writer> Background<W> {
    /// Starts a thread named `name` running `writer`. While the frontier
    /// moves, commits are requested at most every 50 ms, or every eighth of
    /// the writer's `max_file_age` if that is less (a commit publishes
    /// nothing sooner unless a file was rolled); at the end of input, always.
    pub fn spawn(writer: W, name: &str) -> Result<Background<W>> {
        let every = (writer.max_file_age() / 8).min(REQUEST_EVERY);
        let (tx, rx) = sync_channel(CHANNEL_MESSAGES);
        let shared = Arc::new(Shared { status: Mutex::new(Status::default()), changed: Condvar::new() });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(writer, rx, thread_shared))
            .map_err(|e| Error::io(&PathBuf::from(name), e))?;
        Ok(Background {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            buf: Vec::new(),
            batches: Vec::new(),
            batch_rows: 0,
            handed: 0,
            seq: 0,
            every,
            last_request: None,
            requested: None,
            requested_now: None,
        })
    }

    /// Takes the rows of `batch` (draining it). They are handed to the
    /// thread in batches of a few thousand, or at the next commit request.
    /// Returns the writer's error, if it has failed.
    pub fn write(&mut self, batch: &mut Vec<W::Row>) -> Result<()> {
        self.check()?;
        self.hand_over_batches()?;
        if self.buf.is_empty() && batch.len() >= HAND_OVER_ROWS {
            std::mem::swap(&mut self.buf, batch);
        } else {
            self.buf.append(batch);
        }
        if self.buf.len() >= HAND_OVER_ROWS {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Takes a batch that other consumers of the worker's stream share: the
    /// thread gets the batch itself, not a copy of its rows, and reads them
    /// in place. Handed over as [`Background::write`]'s rows are, in order
    /// with them. Returns the writer's error, if it has failed.
    pub fn write_shared(&mut self, batch: Arc<Vec<W::Row>>) -> Result<()> {
        self.check()?;
        self.hand_over()?;
        self.batch_rows += batch.len();
        self.batches.push(batch);
        if self.batch_rows >= HAND_OVER_ROWS {
            self.hand_over_batches()?;
        }
        Ok(())
    }

    /// Asks for a commit through `upto` (see the module documentation) and
    /// returns the frontier through which everything written is durable so
    /// far: `Some(0)` claims nothing. For `upto == None` (the end of input)
    /// it waits for the thread's commit. Returns the writer's error, if it
    /// has failed.
    pub fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>> {
        self.commit_with(upto, false)
    }

    /// [`Self::commit`], asking the thread to publish whatever is open
    /// through `upto` even if no file is due yet: a checkpoint's cut waits
    /// for it, while the frontier does not move.
    pub fn commit_now(&mut self, upto: Option<u64>) -> Result<Option<u64>> {
        self.commit_with(upto, true)
    }

    fn commit_with(&mut self, upto: Option<u64>, now: bool) -> Result<Option<u64>> {
        self.check()?;
        // Nothing handed over is unpublished: `upto` is durable as it stands.
        if self.buf.is_empty() && self.batches.is_empty() && self.shared.lock().clean_rows == self.handed {
            return Ok(upto);
        }
        let unasked = self.requested.is_none_or(|r| later(upto, r));
        let unasked_now = now && self.requested_now != Some(upto);
        let due = upto.is_none() || self.last_request.is_none_or(|t| t.elapsed() >= self.every);
        if (unasked && due) || unasked_now {
            self.hand_over()?;
            self.hand_over_batches()?;
            self.seq += 1;
            self.send(Msg::Commit { upto, seq: self.seq, now })?;
            self.requested = Some(upto);
            if now {
                self.requested_now = Some(upto);
            }
            self.last_request = Some(Instant::now());
        }
        if upto.is_none() {
            let mut s = self.shared.lock();
            while s.done_seq < self.seq && !s.exited {
                s = self.shared.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        self.check()?;
        Ok(self.shared.lock().durable.unwrap_or(Some(0)))
    }

    fn check(&self) -> Result<()> {
        let s = self.shared.lock();
        match (&s.error, s.exited) {
            (Some(e), _) => Err(Error::Failed(Arc::clone(e))),
            (None, true) => Err(Error::Stopped),
            (None, false) => Ok(()),
        }
    }

    fn hand_over(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buf);
        self.handed += rows.len() as u64;
        self.send(Msg::Rows(rows))
    }

    fn hand_over_batches(&mut self) -> Result<()> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.batches);
        self.handed += std::mem::take(&mut self.batch_rows) as u64;
        self.send(Msg::Shared(batches))
    }

    fn send(&mut self, msg: Msg<W::Row>) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if sent {
            Ok(())
        } else {
            // The thread's error, if it left one, says why it stopped.
            self.check()?;
            Err(Error::Stopped)
        }
    }
}

impl<W: Writer> Drop for Background<W> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // A panic there was already reported by the panic hook.
            let _ = t.join();
        }
    }
}

/// The thread: the writer's `try_write` and `try_commit`, in the order asked.
fn run<W: Writer>(mut writer: W, rx: Receiver<Msg<W::Row>>, shared: Arc<Shared>) {
    let _guard = ExitGuard(Arc::clone(&shared));
    let mut received = 0u64;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Rows(rows) => {
                received += rows.len() as u64;
                if let Err(e) = writer.try_write_rows(&rows) {
                    fail(&shared, e);
                }
            }
            Msg::Shared(batches) => {
                for rows in &batches {
                    received += rows.len() as u64;
                    if let Err(e) = writer.try_write_rows(rows) {
                        fail(&shared, e);
                    }
                }
            }
            Msg::Commit { upto, seq, now } => {
                let r = if now { writer.try_commit_now(upto) } else { writer.try_commit(upto) };
                let ok = r.is_ok();
                let claim = durable_after(ok, writer.uncommitted_rows(), upto);
                let mut s = shared.lock();
                if let Err(e) = r {
                    keep_first(&mut s, e);
                }
                if ok && writer.uncommitted_rows() == 0 {
                    s.clean_rows = received;
                }
                if claim != Some(0) && s.durable.is_none_or(|d| later(claim, d)) {
                    s.durable = Some(claim);
                }
                s.done_seq = seq;
                drop(s);
                shared.changed.notify_all();
            }
        }
    }
}

fn fail(shared: &Shared, e: Error) {
    keep_first(&mut shared.lock(), e);
}

/// Keeps the writer's first error (the writer returns it shared, as
/// `Failed`, every time after).
fn keep_first(s: &mut Status, e: Error) {
    if s.error.is_none() {
        s.error = Some(match e {
            Error::Failed(first) => first,
            e => Arc::new(e),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_backup, BackupConfig, Manifest};
    use eddy_core::reading::Enriched;

    fn reading(offset: u64) -> Enriched {
        crate::tests::reading("bg-dev", 1_767_225_600_000 + offset as i64, offset, &[("pm25", Some(offset as f64))])
    }

    fn writer(dir: &std::path::Path, age: Duration) -> Background<BackupWriter> {
        let cfg = BackupConfig { max_file_age: age, ..BackupConfig::default() };
        Background::spawn(BackupWriter::new(dir, "w0", cfg).unwrap(), "eddy-test").unwrap()
    }

    /// Asks for a commit through `upto` until the thread claims it.
    fn commit_until_claimed(w: &mut Background<BackupWriter>, upto: u64) {
        for _ in 0..1000 {
            if w.commit(Some(upto)).unwrap() == Some(upto) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the claim of {upto} never came");
    }

    #[test]
    fn claims_only_what_the_manifest_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Duration::ZERO);
        let mut batch: Vec<Enriched> = (1..=100).map(reading).collect();
        w.write(&mut batch).unwrap();
        assert!(batch.is_empty());
        // Every claim the writer makes is backed by the manifest.
        for _ in 0..1000 {
            let claim = w.commit(Some(10)).unwrap();
            let rows = Manifest::load(dir.path()).map(|m| m.rows()).unwrap_or(0);
            if claim == Some(10) {
                assert_eq!(rows, 100);
                break;
            }
            assert_eq!(claim, Some(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(Manifest::load(dir.path()).unwrap().rows(), 100);
        // Nothing written since: a later frontier is durable at once.
        assert_eq!(w.commit(Some(11)).unwrap(), Some(11));
        let mut more: Vec<Enriched> = (101..=150).map(reading).collect();
        w.write(&mut more).unwrap();
        commit_until_claimed(&mut w, 12);
        // The end of input waits for the thread.
        let mut last: Vec<Enriched> = (151..=160).map(reading).collect();
        w.write(&mut last).unwrap();
        assert_eq!(w.commit(None).unwrap(), None);
        drop(w);
        let rows = read_backup(dir.path()).unwrap();
        let offsets: Vec<u64> = rows.iter().map(|r| r.pos.offset).collect();
        assert_eq!(offsets, (1..=160).collect::<Vec<_>>());
    }

    #[test]
    fn shared_batches_and_owned_rows_reach_the_file_in_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Duration::ZERO);
        // Owned rows, shared batches (more than a hand-over's worth, so some
        // go before the commit asks), owned rows again, one more shared.
        let mut first: Vec<Enriched> = (1..=10).map(reading).collect();
        w.write(&mut first).unwrap();
        let shared: Vec<Arc<Vec<Enriched>>> =
            (0..5).map(|b| Arc::new((11 + b * 1000..11 + (b + 1) * 1000).map(reading).collect())).collect();
        for batch in &shared {
            w.write_shared(Arc::clone(batch)).unwrap();
        }
        let mut middle: Vec<Enriched> = (5011..=5020).map(reading).collect();
        w.write(&mut middle).unwrap();
        w.write_shared(Arc::new((5021..=5030).map(reading).collect())).unwrap();
        assert_eq!(w.commit(None).unwrap(), None);
        drop(w);
        // The worker's other consumers still hold their batches, unchanged.
        assert!(shared.iter().all(|b| b.len() == 1000));
        let offsets: Vec<u64> = read_backup(dir.path()).unwrap().iter().map(|r| r.pos.offset).collect();
        assert_eq!(offsets, (1..=5030).collect::<Vec<_>>());
    }

    #[test]
    fn rows_wait_for_max_file_age_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Duration::from_secs(3600));
        let mut batch: Vec<Enriched> = (1..=10).map(reading).collect();
        w.write(&mut batch).unwrap();
        for t in 1..20 {
            assert_eq!(w.commit(Some(t)).unwrap(), Some(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(Manifest::load(dir.path()).map(|m| m.rows()).unwrap_or(0) == 0);
        assert_eq!(w.commit(None).unwrap(), None);
        assert_eq!(Manifest::load(dir.path()).unwrap().rows(), 10);
    }

    #[test]
    fn dropped_without_a_final_commit_publishes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Duration::ZERO);
        let mut batch: Vec<Enriched> = (1..=10).map(reading).collect();
        w.write(&mut batch).unwrap();
        commit_until_claimed(&mut w, 5);
        let mut more: Vec<Enriched> = (11..=20).map(reading).collect();
        w.write(&mut more).unwrap();
        drop(w);
        assert_eq!(Manifest::load(dir.path()).unwrap().rows(), 10);
    }

    #[test]
    fn a_failed_writer_reports_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Duration::ZERO);
        // The writer cannot create its date directory: a file is in the way.
        std::fs::write(dir.path().join("date=2026-01-01"), b"").unwrap();
        let mut batch: Vec<Enriched> = (1..=10).map(reading).collect();
        w.write(&mut batch).unwrap();
        let mut failed = false;
        for _ in 0..1000 {
            if w.commit(Some(5)).is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(failed, "the error never surfaced");
        assert!(matches!(w.commit(None), Err(Error::Failed(_))));
    }
}
