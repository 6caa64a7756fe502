//! When to try again after a child could not be written: exponential backoff per
//! ModelDeployment, 5 s doubling to 5 minutes, reset by the first apply that goes through.
//!
//! Only a failed *retry* lengthens the backoff. A model's reconciles are also triggered by its
//! children's watch events (the Deployment written before a refused Service, its pods being
//! created, scheduled and started): a failure inside the current wait is the same failure seen
//! again, and counting it would push the next retry minutes out within seconds, so a fix
//! (a quota lifted) would go unnoticed for that long.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::vocabulary::per_model::forget_model;

const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// When the next try is due after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The streak's current wait, for the status: it stays the same between retries.
    pub backoff: Duration,
    /// From now until the retry is due: when to requeue.
    pub after: Duration,
}

#[derive(Debug)]
struct Streak {
    /// Retries that failed so far (the first failure counts as 1).
    failures: u32,
    due: Instant,
}

/// Consecutive failed applies per ModelDeployment (namespace, name).
#[derive(Debug, Default)]
pub struct ApplyRetries {
    streaks: Mutex<HashMap<(String, String), Streak>>,
}

impl ApplyRetries {
    /// Counts a failure and says when to try again.
    pub fn failed(&self, namespace: &str, name: &str) -> Retry {
        self.failed_at(namespace, name, Instant::now())
    }

    fn failed_at(&self, namespace: &str, name: &str, now: Instant) -> Retry {
        let mut streaks = self.streaks.lock().expect("apply retries lock");
        let key = (namespace.to_owned(), name.to_owned());
        let streak = streaks.entry(key).or_insert(Streak { failures: 0, due: now });
        if now < streak.due {
            // Within the wait: no new try failed, the scheduled one still stands.
            return Retry {
                backoff: backoff_after(streak.failures),
                after: streak.due - now,
            };
        }
        streak.failures = streak.failures.saturating_add(1);
        let backoff = backoff_after(streak.failures);
        streak.due = now + backoff;
        Retry {
            backoff,
            after: backoff,
        }
    }

    /// The models (namespace, name) with failures now.
    pub fn models(&self) -> Vec<(String, String)> {
        self.streaks
            .lock()
            .expect("apply retries lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The model's children went through (or the model is gone): start afresh.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.streaks.lock().expect("apply retries lock"), namespace, name);
    }
}

/// 5 s after the first failure, doubling with each failed retry, at most 5 minutes.
fn backoff_after(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails a retry each time it falls due and returns the waits.
    fn failing_retries(retries: &ApplyRetries, start: Instant, count: usize) -> Vec<u64> {
        let mut now = start;
        (0..count)
            .map(|_| {
                let retry = retries.failed_at("ml", "bert", now);
                now += retry.after;
                retry.backoff.as_secs()
            })
            .collect()
    }

    #[test]
    fn failed_retries_back_off_to_five_minutes_and_success_resets() {
        let retries = ApplyRetries::default();
        let start = Instant::now();
        let delays = failing_retries(&retries, start, 9);
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retries.failed_at("ml", "other", start).after.as_secs(), 5, "per model");
        retries.forget("ml", "bert");
        assert_eq!(retries.failed_at("ml", "bert", start).after.as_secs(), 5);
    }

    #[test]
    fn failures_between_retries_keep_the_scheduled_retry() {
        let retries = ApplyRetries::default();
        let start = Instant::now();
        assert_eq!(retries.failed_at("ml", "bert", start).after, Duration::from_secs(5));
        // Pods of the model's Deployment come and go: their events reconcile it, and it fails
        // again, within the first wait.
        for ms in [200, 900, 2_500, 4_999] {
            let retry = retries.failed_at("ml", "bert", start + Duration::from_millis(ms));
            assert_eq!(
                retry,
                Retry {
                    backoff: Duration::from_secs(5),
                    after: Duration::from_millis(5_000 - ms),
                },
                "at {ms} ms"
            );
        }
        // The retry itself fails: now the wait doubles.
        let retry = retries.failed_at("ml", "bert", start + Duration::from_secs(5));
        assert_eq!(retry.after, Duration::from_secs(10));
    }
}
