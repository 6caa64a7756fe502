//! A pod's earlier reads of its runtime's queue totals, and the mean queue time since a
//! baseline chosen among them.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::runtime_counters::QueueCounters;

/// A baseline younger than this is only used when there is no older one: a window of a few
/// seconds holds too few requests to say much (the HPA asks every 15 s by default).
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// Reads older than this are forgotten, and so are pods not read for this long.
pub(super) const MAX_AGE: Duration = Duration::from_secs(300);
/// Reads kept per pod, however often the API is asked.
const MAX_READS: usize = 32;

/// One read of a pod's totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    pub at: Instant,
    pub counters: QueueCounters,
}

/// The mean over the interval since the chosen baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mean {
    pub queue_us: f64,
    pub window: Duration,
}

/// A pod's earlier reads, oldest first.
#[derive(Debug, Default)]
pub struct PodReads {
    reads: VecDeque<Read>,
}

impl PodReads {
    /// Records `latest` and returns the mean since the newest earlier read at least
    /// [`MIN_WINDOW`] older (else the oldest earlier read). `None` on a pod's first read and
    /// after its runtime restarted (its totals went down), when `latest` becomes the baseline.
    pub fn record(&mut self, latest: Read) -> Option<Mean> {
        while self
            .reads
            .front()
            .is_some_and(|r| latest.at.duration_since(r.at) > MAX_AGE)
        {
            self.reads.pop_front();
        }
        let baseline = self
            .reads
            .iter()
            .rev()
            .find(|r| latest.at.duration_since(r.at) >= MIN_WINDOW)
            .or(self.reads.front())
            .copied();
        let mean = baseline.and_then(|base| {
            Some(Mean {
                queue_us: latest.counters.mean_since(&base.counters)?,
                window: latest.at.duration_since(base.at),
            })
        });
        if baseline.is_some() && mean.is_none() {
            self.reads.clear();
        }
        if self.reads.len() == MAX_READS {
            self.reads.pop_front();
        }
        self.reads.push_back(latest);
        mean
    }

    pub fn last_read(&self) -> Option<Instant> {
        self.reads.back().map(|r| r.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(queued_us: f64, requests: f64) -> QueueCounters {
        QueueCounters { queued_us, requests }
    }

    /// Reads of one pod at the given seconds after `start`.
    fn read_at(start: Instant, seconds: u64, counters: QueueCounters) -> Read {
        Read {
            at: start + Duration::from_secs(seconds),
            counters,
        }
    }

    #[test]
    fn the_first_read_is_a_baseline_and_later_ones_average_since_it() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        assert_eq!(pod.record(read_at(start, 0, totals(1_000.0, 10.0))), None);
        assert_eq!(
            pod.record(read_at(start, 15, totals(41_000.0, 20.0))),
            Some(Mean {
                queue_us: 4_000.0,
                window: Duration::from_secs(15)
            })
        );
        // Idle since: nothing waited.
        let idle = pod.record(read_at(start, 30, totals(41_000.0, 20.0))).unwrap();
        assert_eq!((idle.queue_us, idle.window), (0.0, Duration::from_secs(15)));
    }

    #[test]
    fn reads_closer_than_the_minimum_window_reach_back_further() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        pod.record(read_at(start, 0, totals(0.0, 0.0)));
        pod.record(read_at(start, 10, totals(10_000.0, 10.0)));
        // Two seconds after the last read: the baseline is the one before, twelve seconds back.
        let mean = pod.record(read_at(start, 12, totals(50_000.0, 20.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (2_500.0, Duration::from_secs(12)));
        // With only young reads, the oldest one serves.
        let mut young = PodReads::default();
        young.record(read_at(start, 0, totals(0.0, 0.0)));
        let mean = young.record(read_at(start, 2, totals(300.0, 3.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (100.0, Duration::from_secs(2)));
    }

    #[test]
    fn a_restarted_runtime_starts_a_new_baseline_and_old_reads_expire() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        pod.record(read_at(start, 0, totals(90_000.0, 90.0)));
        assert_eq!(
            pod.record(read_at(start, 15, totals(100.0, 1.0))),
            None,
            "totals went down"
        );
        let mean = pod.record(read_at(start, 30, totals(1_100.0, 2.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (1_000.0, Duration::from_secs(15)));
        // Ten minutes later everything kept is too old: a baseline again.
        assert_eq!(pod.record(read_at(start, 630, totals(5_000.0, 5.0))), None);
    }

    #[test]
    fn reads_kept_per_pod_are_bounded() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        for second in 0..100 {
            pod.record(read_at(start, second, totals(second as f64, second as f64)));
        }
        assert_eq!(pod.reads.len(), MAX_READS);
    }
}
