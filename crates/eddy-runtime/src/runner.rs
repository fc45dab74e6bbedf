//! The one runner loop every job runs under, and the commit protocol it
//! drives.
//!
//! A job's dataflow ends in sinks whose outputs a probe watches: the probe's
//! frontier passes `t` once every output record of every epoch before `t`
//! is durable, on every worker. [`drive`] steps the worker and hands that
//! frontier to the run's [`Commits`] after every step. The commit protocol
//! is the only thing the modes do differently:
//!
//! * embedded ([`Ledger`](crate::checkpoint::Ledger)): the input position of
//!   the committed epochs goes to `OUT/_checkpoint.json`;
//! * Kafka (`kafka::KafkaCommits`): the consumer offsets of the committed
//!   records, the job's checkpoint in `P.checkpoints` and watermark markers
//!   in its output topics.

use std::time::Duration;

use timely::dataflow::ProbeHandle;

use crate::error::Result;

/// What to do after a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep running until the dataflow completes.
    Run,
    /// Stop now: the protocol has made everything it will durable (a
    /// requested stop).
    Stop,
}

/// A run's commit protocol: told, after every step, how far the outputs
/// are durable.
pub trait Commits {
    /// Every output record below `frontier` is durable on every worker
    /// (`u64::MAX` once the probe has seen everything); `done` on the last
    /// call, after the dataflow completed. Returns whether to go on.
    fn committed(&mut self, frontier: u64, done: bool) -> Result<Next>;

    /// After the loop: make the last commit durable.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Steps `worker` until its dataflows complete or `commits` asks to stop,
/// parking at most `park` when idle, and reports the probe's frontier to
/// `commits` after every step.
pub fn drive(
    worker: &mut timely::worker::Worker,
    probe: &ProbeHandle<u64>,
    park: Duration,
    commits: &mut dyn Commits,
) -> Result<()> {
    drive_until(worker, probe, park, commits, None)
}

/// [`drive`], where the run is done once dataflow `main` has completed
/// (other dataflows, such as a control dataflow that never completes on its
/// own, are not waited for); every dataflow when `None`.
pub fn drive_until(
    worker: &mut timely::worker::Worker,
    probe: &ProbeHandle<u64>,
    park: Duration,
    commits: &mut dyn Commits,
    main: Option<usize>,
) -> Result<()> {
    let mut done = false;
    while !done {
        done = !worker.step_or_park(Some(park));
        if let Some(id) = main {
            done = done || !worker.installed_dataflows().contains(&id);
        }
        let frontier = probe.with_frontier(|f| f.iter().copied().min().unwrap_or(u64::MAX));
        if commits.committed(frontier, done)? == Next::Stop {
            break;
        }
    }
    commits.finish()
}

impl<C: Commits + ?Sized> Commits for Box<C> {
    fn committed(&mut self, frontier: u64, done: bool) -> Result<Next> {
        (**self).committed(frontier, done)
    }

    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
}

/// Commits nothing: for a worker that keeps no ledger.
pub struct NoCommits;

impl Commits for NoCommits {
    fn committed(&mut self, _frontier: u64, _done: bool) -> Result<Next> {
        Ok(Next::Run)
    }
}
