//! The daemon over time: VmRSS and open descriptors sampled at a fixed
//! interval, and whether it is still running.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procfs;

/// One reading of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the sampler started.
    pub at: Duration,
    pub rss_kib: u64,
    pub descriptors: usize,
}

/// Samples taken so far, filled by a background task.
#[derive(Clone)]
pub struct Sampler {
    pid: i32,
    samples: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
}

impl Sampler {
    /// Samples `pid` every `every` from now on (on the caller's runtime).
    pub fn start(pid: i32, every: Duration) -> anyhow::Result<Self> {
        let sampler = Self {
            pid,
            samples: Arc::default(),
            started: Instant::now(),
        };
        sampler.sample()?;
        let background = sampler.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                // A daemon gone is reported by `alive`.
                if background.sample().is_err() {
                    break;
                }
            }
        });
        Ok(sampler)
    }

    /// Takes a sample now (also recorded with the periodic ones).
    pub fn sample(&self) -> anyhow::Result<Sample> {
        let sample = Sample {
            at: self.started.elapsed(),
            rss_kib: procfs::memory(self.pid)?.rss_kib,
            descriptors: descriptors(self.pid)?,
        };
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sample);
        Ok(sample)
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Time since the sampler started (the samples' clock).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the daemon is still running (not gone, not a zombie).
    pub fn alive(&self) -> bool {
        procfs::state(self.pid).is_ok_and(|state| state != 'Z' && state != 'X')
    }
}

/// Open descriptors of `pid`.
pub fn descriptors(pid: i32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("reading {path}"))?
        .count())
}

/// How VmRSS moved after warm-up: the mean of the first tenth of the
/// samples taken from `warm` on, against the mean of the last tenth.
#[derive(Debug, Clone, Copy)]
pub struct Drift {
    pub start_kib: f64,
    pub end_kib: f64,
    pub min_kib: u64,
    pub max_kib: u64,
    pub samples: usize,
}

impl Drift {
    /// `None` with fewer than two samples after `warm`.
    pub fn of(samples: &[Sample], warm: Duration, until: Duration) -> Option<Self> {
        let after: Vec<u64> = samples
            .iter()
            .filter(|s| s.at >= warm && s.at <= until)
            .map(|s| s.rss_kib)
            .collect();
        if after.len() < 2 {
            return None;
        }
        let tenth = (after.len() / 10).max(1);
        let mean = |values: &[u64]| values.iter().sum::<u64>() as f64 / values.len() as f64;
        Some(Self {
            start_kib: mean(&after[..tenth]),
            end_kib: mean(&after[after.len() - tenth..]),
            min_kib: after.iter().copied().min().unwrap_or(0),
            max_kib: after.iter().copied().max().unwrap_or(0),
            samples: after.len(),
        })
    }

    /// The change, as a fraction of the start (positive: growth).
    pub fn fraction(&self) -> f64 {
        (self.end_kib - self.start_kib) / self.start_kib
    }
}
